//! Spreading calls: power of two choices over the roster, per handle.
//!
//! Each handle ([`PoolCaller`], [`PoolPoster`]) builds its own balancer the first time it is
//! polled, so a handle needs no lock and no task between it and the workers; the load they
//! compare (calls in flight per worker) is shared by all of them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio_util::sync::ReusableBoxFuture;
use tower::Service;

use super::metrics::SlotStats;
use super::roster::Worker;
use super::PoolRef;
use crate::connection::{Caller, Poster};
use crate::error::Error;
use crate::request::Request;
use crate::response::Response;

/// One worker as the balancer sees it: its connection's caller or poster, and its load.
pub(super) struct Endpoint<S> {
    service: S,
    stats: Arc<SlotStats>,
}

impl<S> Endpoint<S> {
    /// Calls in flight on its worker, from every handle.
    fn load(&self) -> usize {
        self.stats.in_flight()
    }
}

impl Service<Request> for Endpoint<Caller> {
    type Response = Response;
    type Error = Error;
    type Future = Counted;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Counted {
        self.stats.call_started();
        Counted {
            reply: self.service.call(req),
            stats: Some(self.stats.clone()),
        }
    }
}

impl Service<Request> for Endpoint<Poster> {
    type Response = ();
    type Error = Error;
    type Future = std::future::Ready<Result<(), Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        self.service.call(req)
    }
}

/// A call's reply, counted against its worker's load until it ends or is dropped.
pub(crate) struct Counted {
    reply: crate::connection::ResponseFuture,
    stats: Option<Arc<SlotStats>>,
}

impl Future for Counted {
    type Output = Result<Response, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(Pin::new(&mut self.reply).poll(cx));
        if let Some(stats) = self.stats.take() {
            stats.call_ended(Some(result.is_ok()));
        }
        Poll::Ready(result)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(stats) = self.stats.take() {
            stats.call_ended(None);
        }
    }
}

/// How a balancer turns a live worker into an endpoint.
pub(super) trait FromWorker: Sized {
    fn from_worker(worker: &Worker) -> Endpoint<Self>;
}

impl FromWorker for Caller {
    fn from_worker(worker: &Worker) -> Endpoint<Self> {
        Endpoint {
            service: worker.conn.caller(),
            stats: worker.stats.clone(),
        }
    }
}

impl FromWorker for Poster {
    fn from_worker(worker: &Worker) -> Endpoint<Self> {
        Endpoint {
            service: worker.conn.poster(),
            stats: worker.stats.clone(),
        }
    }
}

/// A handle's balancer over the pool's live workers: power of two choices by calls in
/// flight, as tower's `p2c::Balance`, without its ready cache.
///
/// tower's balancer keeps every endpoint in a ready cache (an `IndexMap` keyed by a
/// SipHash, and a `FuturesUnordered` of endpoints being made ready): each call moves its
/// endpoint out of the ready set and back, which cost a pooled call half again what a
/// direct call costs (`examples/pool.rs --trivial`). Here the endpoints are a plain list,
/// rebuilt when the roster changes; `poll_ready` samples two, and polls the less loaded
/// (then the other): a connection's readiness is only room in its outgoing queue, so there
/// is nothing to cache.
pub(super) struct Balanced<S: FromWorker> {
    pool: Arc<PoolRef>,
    /// The roster as this balancer last read it.
    roster: watch::Receiver<Vec<Arc<Worker>>>,
    /// An endpoint per live worker, made on first use.
    endpoints: Vec<Endpoint<S>>,
    /// Read the roster on the next `poll_ready` (made, or a worker failed here).
    stale: bool,
    /// The endpoint `poll_ready` found ready (its outgoing slot is reserved).
    ready: Option<usize>,
    /// Waits for the roster to change while no worker is live here.
    changed: Option<ReusableBoxFuture<'static, ()>>,
    /// xorshift64: the two choices.
    rng: u64,
}

impl<S: FromWorker> Balanced<S> {
    pub(super) fn new(pool: Arc<PoolRef>) -> Self {
        let roster = pool.shared.roster.subscribe();
        // Any odd seed, different per handle.
        let rng = tower::util::rng::Rng::next_u64(&mut tower::util::rng::HasherRng::default()) | 1;
        Balanced {
            pool,
            roster,
            endpoints: Vec::new(),
            stale: true,
            ready: None,
            changed: None,
            rng,
        }
    }

    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// The endpoints again, from the roster as it is now.
    fn refresh(&mut self) {
        self.ready = None;
        let live = self.roster.borrow_and_update();
        self.endpoints = live.iter().map(|worker| S::from_worker(worker)).collect();
        self.stale = false;
    }

    /// Two different endpoints at random (the same one twice when there is only one), the
    /// less loaded first.
    fn two_choices(&mut self) -> [usize; 2] {
        let len = self.endpoints.len();
        if len == 1 {
            return [0, 0];
        }
        let a = (self.next_random() % len as u64) as usize;
        let b = (a + 1 + (self.next_random() % (len as u64 - 1)) as usize) % len;
        if self.endpoints[b].load() < self.endpoints[a].load() {
            [b, a]
        } else {
            [a, b]
        }
    }
}

impl<S: FromWorker> Clone for Balanced<S> {
    /// A clone shares the pool and the workers' load, and balances on its own.
    fn clone(&self) -> Self {
        Balanced::new(self.pool.clone())
    }
}

impl<S: FromWorker> fmt::Debug for Balanced<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balanced")
            .field("live", &self.pool.shared.roster.len())
            .finish_non_exhaustive()
    }
}

impl<S> Service<Request> for Balanced<S>
where
    S: FromWorker,
    Endpoint<S>: Service<Request, Error = Error>,
{
    type Response = <Endpoint<S> as Service<Request>>::Response;
    type Error = Error;
    type Future = <Endpoint<S> as Service<Request>>::Future;

    /// Ready when some live worker has room in its outgoing queue; waits while none is live;
    /// fails with [`Error::is_closed`] once the pool is shutting down.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            if self.pool.shared.is_closing() {
                return Poll::Ready(Err(Error::closed()));
            }
            if self.stale || self.roster.has_changed().unwrap_or(false) {
                self.refresh();
            }
            if self.ready.is_some() {
                return Poll::Ready(Ok(()));
            }
            if self.endpoints.is_empty() {
                // Woken by the next change of the roster (shutdown changes it too).
                let mut roster = self.roster.clone();
                let changed = self
                    .changed
                    .get_or_insert_with(|| ReusableBoxFuture::new(std::future::pending()));
                changed.set(async move {
                    let _ = roster.changed().await;
                });
                if changed.poll(cx).is_pending() {
                    return Poll::Pending;
                }
                continue;
            }
            let choices = self.two_choices();
            let mut failed = false;
            for i in choices {
                match self.endpoints[i].poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        self.ready = Some(i);
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Pending => {}
                    // Its connection is going away: the roster will say so soon; until then
                    // this worker takes nothing from here.
                    Poll::Ready(Err(_)) => failed = true,
                }
                if choices[0] == choices[1] {
                    break;
                }
            }
            if !failed {
                // Both have their queues full: woken when either has room.
                return Poll::Pending;
            }
            self.endpoints.retain_mut(|endpoint| {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                !matches!(endpoint.poll_ready(&mut cx), Poll::Ready(Err(_)))
            });
        }
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let i = self
            .ready
            .take()
            .expect("poll_ready must be called before call");
        self.endpoints[i].call(req)
    }
}
