//! The stages of a connection, as tokens its tasks wait on.
//!
//! ```text
//! running -> draining (refuse new calls, answer the rest) -> ending (flush, shut the write side)
//!         -> closed
//! any stage -> aborted (drop everything at once) -> closed
//! ```

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::Parent;

pub(super) struct Lifecycle {
    /// Cancelled by `end()`, or when inbound work is done: the writer flushes and shuts down.
    ending: CancellationToken,
    /// `ending` as a flag, set before it is cancelled: every outgoing frame asks, and a
    /// token's own check takes a lock.
    ended: AtomicBool,
    /// Cancelled to drop everything at once (`close()`, a stream error, a shutdown deadline);
    /// a child of the server's, so a server can abort all its connections.
    abort: CancellationToken,
    /// Cancelled by a server's graceful shutdown or `close_with_error`: refuse new calls,
    /// finish the ones in flight, say goodbye, end. A child of the server's.
    draining: CancellationToken,
    /// Cancelled once every task of the connection has finished.
    closed: CancellationToken,
}

impl Lifecycle {
    pub(super) fn new(parent: &Parent) -> Self {
        Lifecycle {
            ending: CancellationToken::new(),
            ended: AtomicBool::new(false),
            abort: parent.abort.child_token(),
            draining: parent.draining.child_token(),
            closed: CancellationToken::new(),
        }
    }

    pub(super) fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.ending.cancel();
    }

    pub(super) fn is_ending(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    pub(super) fn ended(&self) -> WaitForCancellationFuture<'_> {
        self.ending.cancelled()
    }

    pub(super) fn abort(&self) {
        self.abort.cancel();
    }

    pub(super) fn aborted(&self) -> WaitForCancellationFuture<'_> {
        self.abort.cancelled()
    }

    /// As [`Lifecycle::aborted`], owning its token: for loops that register once.
    pub(super) fn aborted_owned(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.abort.clone().cancelled_owned()
    }

    pub(super) fn drain(&self) {
        self.draining.cancel();
    }

    pub(super) fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    pub(super) fn draining(&self) -> WaitForCancellationFuture<'_> {
        self.draining.cancelled()
    }

    pub(super) fn close(&self) {
        self.closed.cancel();
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    pub(super) fn closed(&self) -> WaitForCancellationFuture<'_> {
        self.closed.cancelled()
    }
}
