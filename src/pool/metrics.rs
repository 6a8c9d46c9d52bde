//! What a pool counts: per worker slot, and a snapshot users can read.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

use tokio::sync::Notify;

/// The counters of one worker slot, shared by the supervisor, the balancers and the calls in
/// flight. A slot keeps its counters across restarts.
#[derive(Debug, Default)]
pub(super) struct SlotStats {
    in_flight: AtomicUsize,
    completed: AtomicU64,
    failed: AtomicU64,
    restarts: AtomicU64,
    live: AtomicBool,
    /// 0 when unknown (an endpoint the pool did not start).
    pid: AtomicU32,
    /// Woken when the last call in flight ends, so shutdown can wait for it.
    idle: Notify,
}

impl SlotStats {
    /// The load the balancer compares: calls sent to this slot and not yet answered.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    pub(super) fn call_started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// Ends a call; `ok` is `None` when its caller gave up before the reply.
    pub(super) fn call_ended(&self, ok: Option<bool>) {
        match ok {
            Some(true) => self.completed.fetch_add(1, Relaxed),
            Some(false) => self.failed.fetch_add(1, Relaxed),
            None => 0,
        };
        // Only the last call out wakes a shutdown waiting for none in flight: a wake-up per
        // call would take the notice's lock on every call.
        if self.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Notified each time the calls in flight drop to none: register (`enable`) before
    /// checking [`in_flight`](Self::in_flight), so no wake-up is missed.
    pub(super) fn idle(&self) -> &Notify {
        &self.idle
    }

    pub(super) fn up(&self, pid: Option<u32>) {
        self.pid.store(pid.unwrap_or(0), Relaxed);
        self.live.store(true, Relaxed);
    }

    pub(super) fn down(&self) {
        self.live.store(false, Relaxed);
    }

    pub(super) fn restarted(&self) {
        self.restarts.fetch_add(1, Relaxed);
    }

    pub(super) fn snapshot(&self, index: usize) -> WorkerMetrics {
        let pid = self.pid.load(Relaxed);
        WorkerMetrics {
            index,
            live: self.live.load(Relaxed),
            pid: (pid != 0).then_some(pid),
            in_flight: self.in_flight(),
            completed: self.completed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            restarts: self.restarts.load(Relaxed),
        }
    }
}

/// A snapshot of a pool's counters, from [`Pool::metrics`](super::Pool::metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolMetrics {
    /// Workers connected and taking calls now.
    pub live: usize,
    /// Calls sent again after failing on a worker that went away (idempotent methods only).
    pub retried: u64,
    /// One entry per worker slot, in the order they were configured.
    pub workers: Vec<WorkerMetrics>,
}

/// The counters of one worker slot. A restarted worker keeps its slot and its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerMetrics {
    /// The slot's position, from 0.
    pub index: usize,
    /// Whether the slot's worker is connected and in the balance now.
    pub live: bool,
    /// The process id of the slot's current (or last) worker, when the pool started it.
    pub pid: Option<u32>,
    /// Calls sent to it and not answered yet.
    pub in_flight: usize,
    /// Calls it answered with a result.
    pub completed: u64,
    /// Calls that failed on it: an error reply, or no reply (it went away, or the call
    /// timed out).
    pub failed: u64,
    /// How many times its worker was started again (or reconnected) after going away.
    pub restarts: u64,
}
