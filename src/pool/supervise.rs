//! Supervision: one task per worker slot keeps a worker up, and takes it out of the balance
//! the moment it goes away.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower::retry::backoff::{Backoff, MakeBackoff};

use super::roster::Worker;
use super::Shared;

/// A worker that stayed up this long starts its next restart from the shortest back-off.
const STABLE: Duration = Duration::from_secs(10);

/// Keeps slot `slot`'s worker up until the pool stops.
pub(super) async fn supervise(slot: usize, shared: Arc<Shared>) {
    let stats = shared.slots[slot].clone();
    let source = &shared.sources[slot];
    let mut backoff = shared.backoff.clone().make_backoff();
    let mut started_before = false;
    loop {
        let start = source.start(slot, shared.connection.clone(), shared.start_timeout);
        let started = tokio::select! {
            started = start => started,
            () = shared.stop.cancelled() => return,
        };
        match started {
            Ok(mut running) => {
                if started_before {
                    stats.restarted();
                }
                started_before = true;
                let pid = running.pid();
                let key = shared.next_key();
                stats.up(pid);
                shared.roster.join(Arc::new(Worker {
                    key,
                    conn: running.conn.clone(),
                    stats: stats.clone(),
                }));
                tracing::info!(
                    slot,
                    ?pid,
                    live = shared.roster.len(),
                    "worker joined the pool"
                );
                let up = Instant::now();
                let down = tokio::select! {
                    down = running.until_down(shared.health) => Some(down),
                    () = shared.stop.cancelled() => None,
                };
                shared.roster.leave(key);
                stats.down();
                let Some(why) = down else {
                    running.end(shared.grace()).await;
                    return;
                };
                tracing::warn!(
                    slot,
                    ?pid,
                    ?why,
                    live = shared.roster.len(),
                    "worker left the pool"
                );
                running.kill().await;
                if up.elapsed() >= STABLE {
                    backoff = shared.backoff.clone().make_backoff();
                }
            }
            Err(error) => {
                tracing::warn!(slot, ?source, %error, "worker failed to start");
            }
        }
        tokio::select! {
            () = backoff.next_backoff() => {}
            () = shared.stop.cancelled() => return,
        }
    }
}
