//! Spreading calls: a `tower::balance::p2c::Balance` over the roster, per handle.
//!
//! Each handle ([`PoolCaller`], [`PoolPoster`]) builds its own balancer the first time it is
//! polled, so a handle needs no lock and no task between it and the workers; the load they
//! compare (calls in flight per worker) is shared by all of them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::balance::p2c::Balance;
use tower::load::Load;
use tower::Service;

use super::metrics::SlotStats;
use super::roster::{Discovery, Worker};
use super::PoolRef;
use crate::connection::{Caller, Poster};
use crate::error::{BoxError, Error};
use crate::request::Request;
use crate::response::Response;

/// One worker as the balancer sees it: its connection's caller or poster, and its load.
pub(super) struct Endpoint<S> {
    service: S,
    stats: Arc<SlotStats>,
}

impl<S> Load for Endpoint<S> {
    type Metric = usize;

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
pub(super) struct Counted {
    reply: crate::future::ResponseFuture,
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

/// A handle's balancer over the pool's live workers, made on first use.
pub(super) struct Balanced<S: FromWorker> {
    pool: Arc<PoolRef>,
    balance: Option<Balance<Discovery<Endpoint<S>>, Request>>,
}

impl<S: FromWorker> Balanced<S> {
    pub(super) fn new(pool: Arc<PoolRef>) -> Self {
        Balanced {
            pool,
            balance: None,
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

/// Balance's errors are boxed: give back the connection's own error.
fn unbox(error: BoxError) -> Error {
    match error.downcast::<Error>() {
        Ok(error) => *error,
        Err(other) => Error::closed().with_source(other),
    }
}

impl<S> Service<Request> for Balanced<S>
where
    S: FromWorker,
    Endpoint<S>: Service<Request, Error = Error>,
{
    type Response = <Endpoint<S> as Service<Request>>::Response;
    type Error = Error;
    type Future = Balancing<BalanceFuture<S>>;

    /// Ready when some live worker has room in its outgoing queue; waits while none is live;
    /// fails with [`Error::is_closed`] once the pool is shutting down.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.pool.shared.is_closing() {
            return Poll::Ready(Err(Error::closed()));
        }
        let roster = &self.pool.shared.roster;
        self.balance
            .get_or_insert_with(|| Balance::new(roster.discover(S::from_worker)))
            .poll_ready(cx)
            .map_err(unbox)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let balance = self
            .balance
            .as_mut()
            .expect("poll_ready must be called before call");
        Balancing {
            inner: balance.call(req),
        }
    }
}

/// What tower's balancer returns for one call.
pub(super) type BalanceFuture<S> =
    <Balance<Discovery<Endpoint<S>>, Request> as Service<Request>>::Future;

pin_project_lite::pin_project! {
    /// The reply of a balanced call or notification.
    pub(super) struct Balancing<F> {
        #[pin]
        inner: F,
    }
}

impl<F, T> Future for Balancing<F>
where
    F: Future<Output = Result<T, BoxError>>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map_err(unbox)
    }
}
