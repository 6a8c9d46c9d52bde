//! The calls the reader hands to the dispatcher, in wire order.
//!
//! A deque under a lock rather than a channel: a quiet connection keeps no buffer (a channel
//! allocates a block of slots up front and keeps it), and a frame costs one short lock at each
//! end instead of a channel's atomic operations. How much may wait is bounded by the inbound
//! budget each item carries, not here.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use super::budget::Share;
use crate::request::Request;

/// What the dispatcher receives: a call, and its share of the inbound buffer.
pub(super) type Inbound = (Request, Share);

/// A queue whose sender is the inbox and whose receiver is the dispatcher.
pub(super) fn channel() -> (Sender, Receiver) {
    let shared = Arc::new(Queue {
        state: Mutex::new(State {
            items: VecDeque::new(),
            closed: false,
        }),
        ready: Notify::new(),
    });
    (
        Sender {
            queue: shared.clone(),
        },
        Receiver { queue: shared },
    )
}

struct Queue {
    state: Mutex<State>,
    /// Wakes the receiver; a wake-up sent while it is not waiting is kept for its next wait.
    ready: Notify,
}

struct State {
    items: VecDeque<Inbound>,
    /// Either end is gone.
    closed: bool,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }
}

pub(super) struct Sender {
    queue: Arc<Queue>,
}

impl Sender {
    /// Queues a call; `false` (and the call dropped, its budget given back) if the
    /// dispatcher is gone.
    pub(super) fn send(&self, item: Inbound) -> bool {
        let mut state = self.queue.lock();
        if state.closed {
            return false;
        }
        let was_empty = state.items.is_empty();
        state.items.push_back(item);
        drop(state);
        // The receiver waits only after finding the queue empty, and the wake-up is kept
        // if it is not waiting yet: one for the first item is enough.
        if was_empty {
            self.queue.ready.notify_one();
        }
        true
    }

    /// Gives back the deque's memory if nothing is queued: for a connection gone quiet.
    pub(super) fn release_memory(&self) {
        let mut state = self.queue.lock();
        if state.items.is_empty() && state.items.capacity() > 0 {
            state.items = VecDeque::new();
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// Why [`Receiver::try_recv`] returned nothing.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Empty {
    /// Nothing queued now.
    Now,
    /// Nothing queued, and the sender is gone: nothing ever will be.
    ForGood,
}

pub(super) struct Receiver {
    queue: Arc<Queue>,
}

/// Capacity an empty deque may keep while the connection is busy; a burst that grew it
/// beyond this gives it back once drained.
const KEEP: usize = 256;

impl Receiver {
    pub(super) fn try_recv(&mut self) -> Result<Inbound, Empty> {
        let mut state = self.queue.lock();
        if let Some(item) = state.items.pop_front() {
            return Ok(item);
        }
        if state.items.capacity() > KEEP {
            state.items = VecDeque::new();
        }
        Err(if state.closed {
            Empty::ForGood
        } else {
            Empty::Now
        })
    }

    /// The next call; `None` once the sender is gone and everything queued was taken.
    pub(super) async fn recv(&mut self) -> Option<Inbound> {
        loop {
            match self.try_recv() {
                Ok(item) => return Some(item),
                Err(Empty::ForGood) => return None,
                Err(Empty::Now) => self.queue.ready.notified().await,
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.queue.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::budget::Budget;
    use crate::test_util::bounded;
    use std::time::Duration;

    fn call(i: u64) -> Inbound {
        let budget = Budget::new(1 << 20);
        let share = budget.try_take(1).unwrap();
        (Request::new("m", (i,)).unwrap(), share)
    }

    fn arg(item: Inbound) -> u64 {
        item.0.args().deserialize::<(u64,)>().unwrap().0
    }

    #[test]
    fn calls_come_out_in_order_across_batches() {
        let (tx, mut rx) = channel();
        for i in 0..3 {
            assert!(tx.send(call(i)));
        }
        assert_eq!(arg(rx.try_recv().unwrap()), 0);
        assert!(tx.send(call(3)));
        let rest: Vec<u64> = (0..3).map(|_| arg(rx.try_recv().unwrap())).collect();
        assert_eq!(rest, [1, 2, 3]);
        assert_eq!(rx.try_recv().unwrap_err(), Empty::Now);
        drop(tx);
        assert_eq!(rx.try_recv().unwrap_err(), Empty::ForGood);
    }

    #[test]
    fn what_was_queued_before_the_sender_went_is_still_taken() {
        let (tx, mut rx) = channel();
        assert!(tx.send(call(7)));
        drop(tx);
        assert_eq!(arg(rx.try_recv().unwrap()), 7);
        assert_eq!(rx.try_recv().unwrap_err(), Empty::ForGood);
    }

    #[test]
    fn a_send_after_the_receiver_went_is_refused_and_its_budget_given_back() {
        let (tx, rx) = channel();
        drop(rx);
        let budget = Budget::new(10);
        let share = budget.try_take(10).unwrap();
        assert!(!tx.send((Request::new("m", (5,)).unwrap(), share)));
        assert!(
            budget.try_take(10).is_some(),
            "the refused call's share was dropped"
        );
    }

    #[test]
    fn a_burst_does_not_keep_its_memory_and_a_quiet_queue_keeps_none() {
        let (tx, mut rx) = channel();
        for i in 0..1000 {
            assert!(tx.send(call(i)));
        }
        for _ in 0..1000 {
            rx.try_recv().unwrap();
        }
        assert_eq!(rx.try_recv().unwrap_err(), Empty::Now);
        assert_eq!(
            tx.queue.lock().items.capacity(),
            0,
            "a big burst's deque is freed"
        );
        assert!(tx.send(call(1)));
        tx.release_memory();
        assert_eq!(arg(rx.try_recv().unwrap()), 1, "nothing queued is dropped");
        assert!(
            tx.queue.lock().items.capacity() > 0,
            "a small deque is kept while busy"
        );
        tx.release_memory();
        assert_eq!(tx.queue.lock().items.capacity(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_receiver_takes_every_call_of_a_burst_and_waits_again() {
        bounded(async {
            let (tx, mut rx) = channel();
            let (got, mut seen) = tokio::sync::mpsc::unbounded_channel();
            let receiver = tokio::spawn(async move {
                while let Some(item) = rx.recv().await {
                    got.send(arg(item)).unwrap();
                }
            });
            for round in 0..3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                // Only the first send of a burst wakes the receiver.
                for i in 0..3 {
                    assert!(tx.send(call(round * 10 + i)));
                }
                for i in 0..3 {
                    assert_eq!(seen.recv().await, Some(round * 10 + i));
                }
            }
            drop(tx);
            receiver.await.unwrap();
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn recv_waits_for_a_send_and_ends_with_the_sender() {
        bounded(async {
            let (tx, mut rx) = channel();
            let receiver = tokio::spawn(async move {
                let first = rx.recv().await.map(arg);
                (first, rx.recv().await.is_none())
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(!receiver.is_finished());
            assert!(tx.send(call(9)));
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(tx);
            assert_eq!(receiver.await.unwrap(), (Some(9), true));
        })
        .await;
    }
}
