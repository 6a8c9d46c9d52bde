//! [`Budget`]: a counted limit with one waiter, for the inbound buffer (the reader waits) and
//! the concurrent requests (the dispatcher waits).
//!
//! A semaphore would do, but tokio's takes a lock on every release to look for waiters; with
//! one waiter, a flag says whether anyone is waiting, and a release is one atomic subtraction.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Up to `limit` units, taken in [`Share`]s that give them back when dropped.
#[derive(Debug)]
pub(super) struct Budget {
    limit: usize,
    used: AtomicUsize,
    /// Set while the one waiter waits, so releases know to wake it.
    waiting: AtomicBool,
    wake: Notify,
}

/// Units taken from a [`Budget`], given back on drop.
#[derive(Debug)]
pub(super) struct Share {
    budget: Arc<Budget>,
    units: usize,
}

impl Budget {
    pub(super) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
            waiting: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    /// Takes `units` (at most the limit) if they are free now.
    pub(super) fn try_take(self: &Arc<Self>, units: usize) -> Option<Share> {
        debug_assert!(units <= self.limit);
        // SeqCst here and in `Share::drop`: with the `waiting` flag, either the waiter sees
        // the units given back, or the one giving them back sees the waiter.
        let mut used = self.used.load(Ordering::SeqCst);
        loop {
            if used + units > self.limit {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + units,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    return Some(Share {
                        budget: self.clone(),
                        units,
                    })
                }
                Err(now) => used = now,
            }
        }
    }

    /// Waits until `units` (at most the limit) are free, then takes them. One waiter at a
    /// time: the task that owns this budget.
    pub(super) async fn take(self: &Arc<Self>, units: usize) -> Share {
        loop {
            let wake = self.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            self.waiting.store(true, Ordering::SeqCst);
            if let Some(share) = self.try_take(units) {
                self.waiting.store(false, Ordering::Relaxed);
                return share;
            }
            wake.await;
        }
    }

    /// Units taken now.
    #[cfg(test)]
    fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.units, Ordering::SeqCst);
        if self.budget.waiting.swap(false, Ordering::SeqCst) {
            self.budget.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::bounded;
    use std::time::Duration;

    #[test]
    fn shares_are_taken_up_to_the_limit_and_given_back_on_drop() {
        let budget = Budget::new(10);
        let a = budget.try_take(6).unwrap();
        assert!(budget.try_take(5).is_none());
        let b = budget.try_take(4).unwrap();
        assert_eq!(budget.used(), 10);
        assert!(budget.try_take(1).is_none());
        drop(a);
        assert_eq!(budget.used(), 4);
        assert!(budget.try_take(6).is_some(), "dropped at once");
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_waiter_wakes_when_enough_is_given_back() {
        bounded(async {
            let budget = Budget::new(10);
            let first = budget.try_take(7).unwrap();
            let second = budget.try_take(3).unwrap();
            let waiter = tokio::spawn({
                let budget = budget.clone();
                async move { budget.take(5).await.units }
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(!waiter.is_finished());
            drop(second);
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(!waiter.is_finished(), "3 free is not enough for 5");
            drop(first);
            assert_eq!(waiter.await.unwrap(), 5);
            assert_eq!(
                budget.used(),
                0,
                "the waiter's share was dropped with its task"
            );
        })
        .await;
    }
}
