//! The roster: the workers taking calls now, which each balancer watches.

use std::sync::Arc;

use tokio::sync::watch;

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

    /// The live workers now, then every change.
    pub(super) fn subscribe(&self) -> watch::Receiver<Live> {
        let mut rx = self.live.subscribe();
        rx.mark_changed();
        rx
    }

    /// Waits until the number of live workers satisfies `enough`.
    pub(super) async fn until(&self, enough: impl Fn(usize) -> bool) {
        let mut rx = self.live.subscribe();
        // The sender lives as long as the roster, which outlives this borrow.
        let _ = rx.wait_for(|live| enough(live.len())).await;
    }
}

#[cfg(test)]
mod tests {
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

    #[tokio::test]
    async fn a_subscriber_sees_the_workers_already_live_then_every_change() {
        bounded(async {
            let roster = Roster::new();
            roster.join(worker(1));
            let mut rx = roster.subscribe();
            assert!(rx.has_changed().unwrap(), "what is live now counts as news");
            assert_eq!(rx.borrow_and_update().len(), 1);
            roster.join(worker(2));
            roster.leave(1);
            rx.changed().await.unwrap();
            let keys: Vec<u64> = rx.borrow_and_update().iter().map(|w| w.key).collect();
            assert_eq!(keys, [2]);
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
