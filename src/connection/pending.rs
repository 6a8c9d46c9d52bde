//! The pending table: this side's calls waiting for their replies, keyed by id.
//!
//! A caller that drops its future removes its entry (see `CallGuard`); a connection that
//! ends fails every waiter with a closed error, so nothing waits forever.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::error::Error;
use crate::response::Response;

pub(crate) type ReplySender = oneshot::Sender<Result<Response, Error>>;

#[derive(Default)]
pub(crate) struct Pending {
    inner: Mutex<Inner>,
    /// `Inner::closed`, readable without the lock: callers check it before every call.
    closed: AtomicBool,
}

#[derive(Default)]
struct Inner {
    calls: HashMap<u64, ReplySender, OwnIds>,
    /// Calls given up on (dropped, timed out) whose reply may still be on its way: such a
    /// reply is expected, not a peer's mistake. Bounded, oldest forgotten first.
    forgotten: HashSet<u64, OwnIds>,
    forgotten_order: VecDeque<u64>,
    /// Set once the reader has stopped: no reply can arrive any more.
    closed: bool,
}

/// Hashes this side's own call ids. They count up from 1 and only this side adds them (a
/// peer's reply ids are only looked up), so no peer can flood a bucket: one multiplication
/// (Fibonacci hashing) spreads them over the table instead of a keyed SipHash.
type OwnIds = BuildHasherDefault<IdHasher>;

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; any other input still hashes, byte by byte.
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0 ^ id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// How many given-up call ids are remembered.
const FORGOTTEN: usize = 4096;

/// What became of a reply.
pub(crate) enum Delivery {
    /// A caller was waiting for it.
    Delivered,
    /// Its caller had given up: dropped quietly.
    Late,
    /// No call of this side has that id.
    Unknown,
}

impl Pending {
    /// Registers a call; fails if the connection can no longer receive replies.
    pub(crate) fn insert(&self, id: u64, tx: ReplySender) -> Result<(), Error> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.closed {
            return Err(Error::closed());
        }
        inner.calls.insert(id, tx);
        Ok(())
    }

    /// Delivers a reply to its waiting caller.
    pub(crate) fn complete(&self, id: u64, result: Result<Response, Error>) -> Delivery {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.calls.remove(&id) {
            Some(tx) => {
                drop(inner);
                // A caller that gave up in the meantime has dropped its receiver: that is fine.
                let _ = tx.send(result);
                Delivery::Delivered
            }
            None if inner.forgotten.remove(&id) => Delivery::Late,
            None => Delivery::Unknown,
        }
    }

    /// Removes a call whose frame was never sent: no reply can come for it.
    pub(crate) fn remove(&self, id: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.calls.remove(&id);
    }

    /// Gives up on a call; `true` if it was still waiting.
    pub(crate) fn forget(&self, id: u64) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.calls.remove(&id).is_none() {
            return false;
        }
        if inner.forgotten_order.len() == FORGOTTEN {
            if let Some(oldest) = inner.forgotten_order.pop_front() {
                inner.forgotten.remove(&oldest);
            }
        }
        inner.forgotten.insert(id);
        inner.forgotten_order.push_back(id);
        true
    }

    /// Fails every waiting call and refuses new ones.
    pub(crate) fn close(&self) {
        let calls = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.closed = true;
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut inner.calls)
        };
        for (_, tx) in calls {
            let _ = tx.send(Err(Error::closed()));
        }
    }

    /// Whether no reply can arrive any more (the reader has stopped).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// How many calls are waiting.
    pub(crate) fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .calls
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_ids_hash_apart_and_other_input_still_hashes() {
        use std::hash::BuildHasher;
        let hashes: HashSet<u64> = (1..=1000u64)
            .map(|id| OwnIds::default().hash_one(id))
            .collect();
        assert_eq!(hashes.len(), 1000);
        let bytes = |input: &[u8]| {
            let mut hasher = IdHasher::default();
            hasher.write(input);
            hasher.finish()
        };
        assert_ne!(bytes(&[1, 2]), bytes(&[2, 1]));
    }

    fn waiting(pending: &Pending, id: u64) -> oneshot::Receiver<Result<Response, Error>> {
        let (tx, rx) = oneshot::channel();
        pending.insert(id, tx).unwrap();
        rx
    }

    #[test]
    fn replies_reach_their_caller_once() {
        let pending = Pending::default();
        let mut rx = waiting(&pending, 1);
        assert_eq!(pending.len(), 1);
        assert!(matches!(
            pending.complete(1, Ok(Response::null())),
            Delivery::Delivered
        ));
        assert_eq!(rx.try_recv().unwrap().unwrap(), Response::null());
        assert!(matches!(
            pending.complete(1, Ok(Response::null())),
            Delivery::Unknown
        ));
    }

    #[test]
    fn every_call_given_up_on_is_remembered_up_to_the_bound() {
        let pending = Pending::default();
        let ids = 1..=(FORGOTTEN as u64 + 1);
        for id in ids.clone() {
            let _rx = waiting(&pending, id);
            assert!(pending.forget(id));
            assert!(!pending.forget(id), "forgotten once");
        }
        // The oldest is dropped from memory first; every other late reply is expected.
        assert!(matches!(
            pending.complete(1, Ok(Response::null())),
            Delivery::Unknown
        ));
        for id in 2..=(FORGOTTEN as u64 + 1) {
            assert!(
                matches!(pending.complete(id, Ok(Response::null())), Delivery::Late),
                "id {id}"
            );
        }
        // A late reply is expected once.
        assert!(matches!(
            pending.complete(2, Ok(Response::null())),
            Delivery::Unknown
        ));
    }

    #[test]
    fn closing_fails_every_waiter_and_refuses_new_calls() {
        let pending = Pending::default();
        let mut rx = waiting(&pending, 7);
        pending.close();
        assert!(rx.try_recv().unwrap().unwrap_err().is_closed());
        let (tx, _rx) = oneshot::channel();
        assert!(pending.insert(8, tx).unwrap_err().is_closed());
        assert_eq!(pending.len(), 0);
    }
}
