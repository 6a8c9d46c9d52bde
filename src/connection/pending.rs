//! The pending table: this side's calls waiting for their replies, keyed by id.
//!
//! A caller that drops its future removes its entry (see `CallGuard`); a connection that
//! ends fails every waiter with a closed error, so nothing waits forever.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::error::Error;
use crate::response::Response;

pub(crate) type ReplySender = oneshot::Sender<Result<Response, Error>>;

#[derive(Default)]
pub(crate) struct Pending {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    calls: HashMap<u64, ReplySender>,
    /// Set once the reader has stopped: no reply can arrive any more.
    closed: bool,
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

    /// Delivers a reply; `false` if no call with that id is waiting.
    pub(crate) fn complete(&self, id: u64, result: Result<Response, Error>) -> bool {
        let tx = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .calls
            .remove(&id);
        match tx {
            // A caller that gave up in the meantime has dropped its receiver: that is fine.
            Some(tx) => {
                let _ = tx.send(result);
                true
            }
            None => false,
        }
    }

    pub(crate) fn remove(&self, id: u64) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .calls
            .remove(&id)
            .is_some()
    }

    /// Fails every waiting call and refuses new ones.
    pub(crate) fn close(&self) {
        let calls = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.closed = true;
            std::mem::take(&mut inner.calls)
        };
        for (_, tx) in calls {
            let _ = tx.send(Err(Error::closed()));
        }
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
