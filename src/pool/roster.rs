//! The roster: the workers taking calls now, and the [`Discover`](tower::discover::Discover)
//! stream each balancer reads it through.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio_util::sync::ReusableBoxFuture;
use tower::discover::Change;

use super::metrics::SlotStats;
use crate::connection::Connection;

/// One live worker: a slot's current connection.
pub(super) struct Worker {
    /// Unique for the pool's life: a restarted worker gets a new key, so a balancer never
    /// mistakes it for the one it replaced.
    pub(super) key: u64,
    pub(super) conn: Connection,
    pub(super) stats: Arc<SlotStats>,
}

type Live = Vec<Arc<Worker>>;

/// The live workers, published to every balancer.
pub(super) struct Roster {
    live: watch::Sender<Live>,
}

impl Roster {
    pub(super) fn new() -> Self {
        Roster {
            live: watch::Sender::new(Vec::new()),
        }
    }

    pub(super) fn join(&self, worker: Arc<Worker>) {
        self.live.send_modify(|live| live.push(worker));
    }

    pub(super) fn leave(&self, key: u64) {
        self.live.send_if_modified(|live| {
            let before = live.len();
            live.retain(|w| w.key != key);
            live.len() != before
        });
    }

    /// Takes every worker out of the balance (calls already sent go on).
    pub(super) fn clear(&self) {
        self.live.send_modify(Vec::clear);
    }

    pub(super) fn live(&self) -> Live {
        self.live.borrow().clone()
    }

    pub(super) fn len(&self) -> usize {
        self.live.borrow().len()
    }

    /// Waits until the number of live workers satisfies `enough`.
    pub(super) async fn until(&self, enough: impl Fn(usize) -> bool) {
        let mut rx = self.live.subscribe();
        // The sender lives as long as the roster, which outlives this borrow.
        let _ = rx.wait_for(|live| enough(live.len())).await;
    }

    /// A new balancer's view: the workers live now, then every change.
    pub(super) fn discover<S>(&self, make: fn(&Worker) -> S) -> Discovery<S> {
        let mut rx = self.live.subscribe();
        rx.mark_changed();
        Discovery {
            changed: ReusableBoxFuture::new(changed(rx)),
            known: HashSet::new(),
            queue: VecDeque::new(),
            make,
        }
    }
}

/// The next change of the roster (`false` once the roster is gone).
async fn changed(mut rx: watch::Receiver<Live>) -> (bool, watch::Receiver<Live>) {
    let open = rx.changed().await.is_ok();
    (open, rx)
}

/// The roster as a stream of [`Change`]s: what a `tower::balance::p2c::Balance` discovers
/// its endpoints from. Each change of the roster is turned into removals and insertions.
pub(super) struct Discovery<S> {
    /// The next change, polled on every poll of the stream, never skipped: its wake-up may
    /// come for a change already read (the roster's version goes up before its waiters are
    /// told), and only a poll registers it again. A balancer that skipped it while "nothing
    /// changed" missed every later join, and its calls waited forever with workers live.
    changed: ReusableBoxFuture<'static, (bool, watch::Receiver<Live>)>,
    known: HashSet<u64>,
    queue: VecDeque<Change<u64, S>>,
    make: fn(&Worker) -> S,
}

impl<S> Discovery<S> {
    fn sync(&mut self, live: &[Arc<Worker>]) {
        let now: HashSet<u64> = live.iter().map(|w| w.key).collect();
        for gone in self.known.difference(&now) {
            self.queue.push_back(Change::Remove(*gone));
        }
        for worker in live.iter().filter(|w| !self.known.contains(&w.key)) {
            self.queue
                .push_back(Change::Insert(worker.key, (self.make)(worker)));
        }
        self.known = now;
    }
}

impl<S> futures_core::Stream for Discovery<S> {
    type Item = Result<Change<u64, S>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(change) = self.queue.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            let (open, mut rx) = std::task::ready!(self.changed.poll(cx));
            let live = rx.borrow_and_update().clone();
            // Once the roster is gone this is ready at once, with `false` again.
            self.changed.set(changed(rx));
            if !open {
                return Poll::Ready(None);
            }
            self.sync(&live);
        }
    }
}

impl<S> Unpin for Discovery<S> {}

#[cfg(test)]
mod tests {
    use std::future::{poll_fn, Future};
    use std::pin::Pin;

    use futures_core::Stream;

    use super::*;
    use crate::test_util::bounded;

    fn worker(key: u64) -> Arc<Worker> {
        let (conn, _peer) = Connection::pair().expect("socket pair");
        Arc::new(Worker {
            key,
            conn,
            stats: Arc::default(),
        })
    }

    /// Worker `key` on `conn`: many workers may share one connection where none is used.
    fn worker_on(conn: &Connection, key: u64) -> Arc<Worker> {
        Arc::new(Worker {
            key,
            conn: conn.clone(),
            stats: Arc::default(),
        })
    }

    async fn next(discovery: &mut Discovery<u64>) -> Change<u64, u64> {
        let item = poll_fn(|cx| Pin::new(&mut *discovery).poll_next(cx)).await;
        item.expect("the roster is alive").expect("infallible")
    }

    fn now_ready(discovery: &mut Discovery<u64>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        Pin::new(discovery).poll_next(&mut cx).is_ready()
    }

    fn key_of(change: &Change<u64, u64>) -> (bool, u64) {
        match change {
            Change::Insert(key, made) => {
                assert_eq!(key, made, "the endpoint is made from its own worker");
                (true, *key)
            }
            Change::Remove(key) => (false, *key),
        }
    }

    #[tokio::test]
    async fn a_balancer_sees_the_workers_already_live_then_every_change() {
        bounded(async {
            let roster = Roster::new();
            roster.join(worker(1));
            roster.join(worker(2));
            let mut discovery = roster.discover(|w| w.key);
            let mut first = vec![
                key_of(&next(&mut discovery).await),
                key_of(&next(&mut discovery).await),
            ];
            first.sort();
            assert_eq!(first, [(true, 1), (true, 2)]);
            assert!(!now_ready(&mut discovery), "nothing changed since");

            roster.leave(1);
            assert_eq!(key_of(&next(&mut discovery).await), (false, 1));
            roster.join(worker(3));
            assert_eq!(key_of(&next(&mut discovery).await), (true, 3));
            roster.leave(42);
            assert!(
                !now_ready(&mut discovery),
                "leaving with an unknown key changes nothing"
            );
            assert_eq!(roster.len(), 2);

            roster.clear();
            let mut gone = vec![
                key_of(&next(&mut discovery).await),
                key_of(&next(&mut discovery).await),
            ];
            gone.sort();
            assert_eq!(gone, [(false, 2), (false, 3)]);
            assert_eq!(roster.len(), 0);
        })
        .await;
    }

    #[tokio::test]
    async fn a_change_wakes_a_balancer_waiting_for_one() {
        bounded(async {
            let roster = Roster::new();
            let mut discovery = roster.discover(|w| w.key);
            let waiting = tokio::spawn(async move { key_of(&next(&mut discovery).await) });
            // It finds no worker and waits, its waker registered.
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            assert!(!waiting.is_finished());
            roster.join(worker(7));
            let change = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
                .await
                .expect("woken by the join")
                .expect("no panic");
            assert_eq!(change, (true, 7));
        })
        .await;
    }

    /// tokio's watch channel gives up its poll without registering for the change when the
    /// task has spent its scheduling budget (and asks for another poll): a balancer must poll
    /// it again then, not take "pending" to mean "registered", or it sleeps through every
    /// later join while workers are live.
    #[tokio::test]
    async fn a_change_wakes_a_balancer_that_ran_out_of_budget() {
        bounded(async {
            let roster = Roster::new();
            let mut discovery = roster.discover(|w| w.key);
            assert!(!now_ready(&mut discovery), "no worker yet");
            roster.join(worker(1));
            // The balancer's task: it finds the join, spends the rest of its budget, as a
            // busy flood task does, and asks for the next change; from then on it runs only
            // when woken.
            let waiting = tokio::spawn(async move {
                let mut first = true;
                poll_fn(|cx| {
                    if std::mem::take(&mut first) {
                        let joined = Pin::new(&mut discovery).poll_next(cx);
                        assert!(matches!(
                            joined,
                            Poll::Ready(Some(Ok(Change::Insert(1, 1))))
                        ));
                        while std::pin::pin!(tokio::task::consume_budget())
                            .poll(cx)
                            .is_ready()
                        {}
                    }
                    Pin::new(&mut discovery).poll_next(cx)
                })
                .await
            });
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
            assert!(!waiting.is_finished(), "nothing new to find yet");
            roster.join(worker(7));
            let change = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
                .await
                .expect("woken by the join")
                .expect("no panic");
            let change = change.expect("the roster is alive").expect("infallible");
            assert_eq!(key_of(&change), (true, 7));
        })
        .await;
    }

    /// The other lost wake-up behind calls that hung under churn: a join or leave that a
    /// balancer has already read can still wake its next notice (the roster's version goes up
    /// before the waiters are told), and a balancer that then took "nothing changed" to mean
    /// "still registered" slept through every later change. Many balancers wait while the
    /// roster changes quickly on other threads; then one more worker joins, and every balancer
    /// must hear of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_balancer_hears_of_the_last_join_after_a_burst_of_changes() {
        bounded(async {
            let roster = Arc::new(Roster::new());
            let (conn, _peer) = Connection::pair().expect("socket pair");
            let last = 1_000_000;
            let balancers: Vec<_> = (0..64)
                .map(|_| {
                    let mut discovery = roster.discover(|w| w.key);
                    tokio::spawn(async move {
                        loop {
                            if let Change::Insert(key, _) = next(&mut discovery).await {
                                if key == last {
                                    return;
                                }
                            }
                        }
                    })
                })
                .collect();
            let churn = std::thread::spawn({
                let (roster, conn) = (roster.clone(), conn.clone());
                move || {
                    for key in 0..20_000 {
                        roster.join(worker_on(&conn, key));
                        roster.leave(key);
                    }
                }
            });
            tokio::task::spawn_blocking(move || churn.join().expect("no panic"))
                .await
                .expect("joined");
            roster.join(worker_on(&conn, last));
            for balancer in balancers {
                tokio::time::timeout(std::time::Duration::from_secs(5), balancer)
                    .await
                    .expect("every balancer hears of the last join")
                    .expect("no panic");
            }
        })
        .await;
    }

    #[tokio::test]
    async fn the_stream_ends_with_the_roster() {
        bounded(async {
            let roster = Roster::new();
            let mut discovery = roster.discover(|w| w.key);
            drop(roster);
            let item = poll_fn(|cx| Pin::new(&mut discovery).poll_next(cx)).await;
            assert!(item.is_none());
        })
        .await;
    }

    #[tokio::test]
    async fn until_waits_for_enough_live_workers() {
        bounded(async {
            let roster = Arc::new(Roster::new());
            let waiting = tokio::spawn({
                let roster = roster.clone();
                async move { roster.until(|n| n >= 2).await }
            });
            roster.join(worker(1));
            tokio::task::yield_now().await;
            assert!(!waiting.is_finished());
            roster.join(worker(2));
            tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
                .await
                .expect("woken by the second join")
                .expect("no panic");
        })
        .await;
    }
}
