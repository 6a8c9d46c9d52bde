//! The peer's requests on this side, by id: to refuse a duplicate id, and to find a request
//! that the peer cancels.
//!
//! A request is answered exactly once: whoever removes a not-yet-started entry (a `$/cancel`,
//! an expired deadline) answers it; once started, its task answers it.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub(crate) struct InFlight(Mutex<HashMap<u64, Entry>>);

struct Entry {
    cancel: CancellationToken,
    started: bool,
}

/// What a `$/cancel` found.
pub(crate) enum Cancelled {
    /// No such request (unknown, or already answered): ignored.
    Unknown,
    /// Queued, not started: removed; the canceller answers -32800.
    Queued,
    /// Running: its token is cancelled; its task answers -32800.
    Running,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a request; `None` if the id is already in flight.
    pub(crate) fn insert(&self, id: u64) -> Option<CancellationToken> {
        let mut map = self.lock();
        if map.contains_key(&id) {
            return None;
        }
        let cancel = CancellationToken::new();
        map.insert(
            id,
            Entry {
                cancel: cancel.clone(),
                started: false,
            },
        );
        Some(cancel)
    }

    /// Marks a request as running; `false` if it was answered while it waited.
    pub(crate) fn start(&self, id: u64) -> bool {
        self.lock().get_mut(&id).map(|e| e.started = true).is_some()
    }

    /// Removes a request that has not started; `true` if the caller must now answer it.
    pub(crate) fn remove_unstarted(&self, id: u64) -> bool {
        let mut map = self.lock();
        match map.get(&id) {
            Some(e) if !e.started => {
                map.remove(&id);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn cancel(&self, id: u64) -> Cancelled {
        let mut map = self.lock();
        match map.get(&id) {
            None => Cancelled::Unknown,
            Some(e) if e.started => {
                e.cancel.cancel();
                Cancelled::Running
            }
            Some(_) => {
                if let Some(e) = map.remove(&id) {
                    e.cancel.cancel();
                }
                Cancelled::Queued
            }
        }
    }

    pub(crate) fn finish(&self, id: u64) {
        self.lock().remove(&id);
    }
}
