//! Deadlines propagate: a call made while serving a request inherits what is left of that
//! request's deadline, so a chain A -> B -> C shares one deadline (as tarpc's context does).
//!
//! The dispatcher polls a request's future with its deadline in a task-local; the calling
//! side reads it. A shorter explicit timeout still wins.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;

tokio::task_local! {
    static SERVING: Instant;
}

/// The deadline of the request being served by the current task, if it has one.
pub(super) fn inherited() -> Option<Instant> {
    SERVING.try_with(|deadline| *deadline).ok()
}

/// The timeout of an outgoing call: the earlier of `explicit` and what is left of the
/// inherited deadline. `Some(ZERO)` means the deadline has passed already.
pub(super) fn effective(explicit: Option<Duration>) -> Option<Duration> {
    let inherited = inherited().map(|d| d.saturating_duration_since(Instant::now()));
    match (explicit, inherited) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A timeout in whole milliseconds for `meta.timeout_ms`, rounded up so that a deadline a
/// fraction of a millisecond away is not sent as already passed.
pub(super) fn to_millis(timeout: Duration) -> u64 {
    let micros = timeout.as_micros();
    micros.div_ceil(1000).try_into().unwrap_or(u64::MAX)
}

pin_project! {
    /// A request's future, polled with the request's deadline in scope.
    pub(super) struct Serving<F> {
        deadline: Option<Instant>,
        #[pin]
        inner: F,
    }
}

impl<F> Serving<F> {
    pub(super) fn new(deadline: Option<Instant>, inner: F) -> Self {
        Serving { deadline, inner }
    }
}

impl<F: Future> Future for Serving<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        match *this.deadline {
            Some(deadline) => SERVING.sync_scope(deadline, || this.inner.poll(cx)),
            None => this.inner.poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_up() {
        assert_eq!(to_millis(Duration::from_micros(1)), 1);
        assert_eq!(to_millis(Duration::from_millis(200)), 200);
        assert_eq!(to_millis(Duration::from_micros(200_001)), 201);
        assert_eq!(to_millis(Duration::ZERO), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_earlier_deadline_wins() {
        assert_eq!(effective(None), None);
        let soon = Instant::now() + Duration::from_millis(100);
        let outer = Serving::new(Some(soon), async {
            (
                effective(None),
                effective(Some(Duration::from_millis(50))),
                effective(Some(Duration::from_secs(5))),
            )
        });
        let (none, shorter, longer) = outer.await;
        assert_eq!(none, Some(Duration::from_millis(100)));
        assert_eq!(shorter, Some(Duration::from_millis(50)));
        assert_eq!(longer, Some(Duration::from_millis(100)));
    }
}
