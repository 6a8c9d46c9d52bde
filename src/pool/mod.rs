//! A pool of workers behind one [`tower::Service`]: calls spread over several processes (or
//! servers) by load, workers supervised and restarted, failed idempotent calls retried.
//!
//! Each handle balances by power of two choices (calls in flight per worker, as tower's
//! `p2c::Balance`, without its ready cache: see [Balancing](#balancing)), and a
//! [`PoolCaller`] retries idempotent methods with [`tower::retry::Retry`] and
//! [`RetryIdempotent`]. Handles are tower services, so every tower layer works around them,
//! and every worker is an ordinary connection: its handlers are a
//! [`Router`](crate::Router), and it may call back into the parent, whose handlers are the
//! pool's [`service`](PoolBuilder::service).
//!
//! ```no_run
//! use std::time::Duration;
//! use diarrhoea::pool::Pool;
//! use diarrhoea::Router;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), diarrhoea::Error> {
//!     if std::env::args().any(|a| a == "--worker") {
//!         // The worker: an ordinary router over stdin and stdout.
//!         let router = Router::new().route("square", |x: u64| async move { x * x });
//!         diarrhoea::serve_stdio(router).await;
//!         return Ok(());
//!     }
//!     // The parent: four copies of this binary, restarted when they die.
//!     let pool = Pool::builder()
//!         .spawn_self(4, ["--worker"])
//!         .idempotent(["square"])
//!         .build()?;
//!     let nine: u64 = pool.call("square", (3,)).await?;
//!     assert_eq!(nine, 9);
//!     pool.shutdown(Duration::from_secs(5)).await;
//!     Ok(())
//! }
//! ```
//!
//! The pool starts its workers itself (the same binary with a flag,
//! [`spawn_self`](PoolBuilder::spawn_self), or another program, over their stdin and stdout)
//! or connects to servers on Unix or TCP sockets. Its caller is a tower service like any
//! other, so it goes inside layers:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use diarrhoea::pool::Pool;
//! use diarrhoea::Request;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # async fn f(pool: Pool) -> Result<(), tower::BoxError> {
//! let mut calls = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(5))
//!     .concurrency_limit(256)
//!     .service(pool.caller());
//! let reply = calls.ready().await?.call(Request::new("square", (12,))?).await?;
//! println!("{}", reply.deserialize::<u64>()?);
//! println!("{:?}", pool.metrics()); // per worker: in flight, completed, failed, restarts
//! # Ok(()) }
//! ```
//!
//! `examples/pool.rs` floods a CPU-bound method through a pool of copies of itself, and can
//! kill a worker mid-run (`--kill-after`) or measure the pool's own cost (`--trivial`).
//!
//! # Balancing
//! Each [`PoolCaller`] balances on its own (no lock, no task between it and the workers); the
//! load it compares, calls in flight per worker, is shared by all of them. `poll_ready` picks
//! two live workers at random and reserves room in the less loaded one's outgoing queue (or
//! the other's); it waits while none is live. Keep a caller per task: a clone starts its own
//! balancer on first use.
//!
//! Why not tower's `p2c::Balance`: it moves each call's endpoint out of its ready cache (a
//! hashed map, and a set of futures making endpoints ready) and back, which made a pooled
//! call cost the parent half again what a direct call does. Here the list of endpoints is
//! plain, and a connection's readiness (room in its queue) needs no cache. A call to a
//! method not marked idempotent goes straight to the balancer, without `Retry`. The pool's
//! cost against a direct connection is in BENCHMARKS.md (`examples/pool.rs --trivial`).
//!
//! # Descriptors
//! Workers started with [`spawn_socket`](PoolBuilder::spawn_socket) (or
//! [`spawn_self_socket`](PoolBuilder::spawn_self_socket)) talk over a Unix socket pair, so
//! calls and notifications carry open descriptors ([`Fd`](crate::Fd)) to them: the parent
//! accepts connections and hands each to a worker, as Node's `cluster` does
//! (`examples/prefork.rs`). Over pipes ([`spawn`](PoolBuilder::spawn)) sending one fails
//! before anything is written.
//!
//! # Supervision
//! A worker that exits, closes its connection, or does not answer a `$/ping` probe (answered
//! by its connection itself, no handler runs; every second by default, within 10 s:
//! [`health_check`](PoolBuilder::health_check)) leaves the balance at once. It is started
//! again (or reconnected) after 100 ms, doubling with jitter up to 5 s
//! ([`restart_backoff`](PoolBuilder::restart_backoff)), so a worker that crashes in a loop
//! costs a few starts per second at most, and rejoins once it answers its first probe.
//!
//! # Failures are honest
//! Calls in flight on a worker that dies fail with [`Error::is_closed`]. Only methods marked
//! [`idempotent`](PoolBuilder::idempotent) are sent again, to another worker
//! ([`RetryIdempotent`], a `tower::retry::Policy`, with a `TpsBudget`: by default 20% of the
//! calls of the last 10 s, at least 10 per second), and every retry is counted in
//! `metrics().retried`. Use [`RetryIdempotent`] with tower's `Retry` to put retries elsewhere
//! in a stack.
//!
//! # Notifications and calls back
//! A notification goes to one worker ([`Pool::post_message`], [`Pool::poster`]), or to every
//! live worker with [`Pool::broadcast`]. Workers can call back into the parent: give the pool
//! a router with [`PoolBuilder::service`].
//!
//! # Shutdown
//! [`Pool::shutdown`]`(timeout)` refuses new calls, lets calls in flight finish within
//! `timeout`, then ends and reaps every worker. Dropping the last handle ends them too, and a
//! worker started by the pool reads its requests from stdin and exits at its end, so none
//! outlives the pool's process, even when that process is killed with `SIGKILL`.
//!
//! # Every call resolves
//! A call made through a pool ends, with a reply or an error, as soon as its worker's
//! connection is gone: it fails with [`Error::is_closed`], or, if it is retried, ends as
//! soon as its last attempt does. No call waits on a worker that no longer exists. A call
//! made while no worker is live waits for one to join (wrap the caller in a tower `Timeout`
//! to bound that wait); [`Pool::shutdown`] fails every call still waiting and returns by its
//! timeout whatever the calls do.

mod balance;
mod metrics;
mod retry;
mod roster;
mod supervise;
mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tower::retry::backoff::ExponentialBackoffMaker;
use tower::retry::budget::TpsBudget;
use tower::retry::Retry;
use tower::util::rng::HasherRng;
use tower::{Service, ServiceExt};

use self::balance::{Balanced, Counted};
use self::metrics::SlotStats;
use self::roster::Roster;
use self::worker::{Health, Source};
use crate::connection::{Builder, CallStream, Caller, Config, Connection, Poster};
use crate::error::{BoxError, Error};
use crate::request::Request;
use crate::response::Response;

pub use self::metrics::{PoolMetrics, WorkerMetrics};
pub use self::retry::RetryIdempotent;

/// How long a worker has to answer its first probe after it was started (or connected to).
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a worker the pool no longer needs has to exit on its own before it is killed.
const GRACE: Duration = Duration::from_secs(1);

/// Options for a [`Pool`]: where its workers come from, and how they are treated.
pub struct PoolBuilder {
    sources: Vec<Source>,
    connection: Builder,
    idempotent: Vec<Box<str>>,
    budget: Option<TpsBudget>,
    health: Option<Health>,
    backoff: (Duration, Duration),
    start_timeout: Duration,
    error: Option<Error>,
}

impl std::fmt::Debug for PoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("sources", &self.sources)
            .field("idempotent", &self.idempotent)
            .field("health", &self.health)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            sources: Vec::new(),
            connection: Builder::new(),
            idempotent: Vec::new(),
            budget: None,
            health: Some(Health {
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(10),
            }),
            backoff: (Duration::from_millis(100), Duration::from_secs(5)),
            start_timeout: START_TIMEOUT,
            error: None,
        }
    }
}

impl PoolBuilder {
    /// Starts `count` worker processes, each made by `command(index)`, and talks to them over
    /// their stdin and stdout (the worker serves with [`serve_stdio`](crate::serve_stdio);
    /// stdin and stdout are set to piped, stderr is left as it is).
    pub fn spawn<F>(mut self, count: usize, command: F) -> Self
    where
        F: Fn(usize) -> Command + Send + Sync + 'static,
    {
        let command: worker::MakeCommand = Arc::new(command);
        self.sources
            .extend((0..count).map(|_| Source::Spawn(command.clone())));
        self
    }

    /// As [`spawn`](Self::spawn), over one end of a Unix socket pair as each worker's stdin
    /// (stdout and stderr are left as they are), so calls carry descriptors ([`Fd`](crate::Fd)
    /// arguments): hand a worker an accepted connection, a file, a pipe. The worker serves
    /// with [`serve_stdio`](crate::serve_stdio), as over pipes. Supervision and the
    /// no-orphan guarantee are the same: a worker whose parent dies, even by SIGKILL, reads
    /// the end of its socket and exits.
    pub fn spawn_socket<F>(mut self, count: usize, command: F) -> Self
    where
        F: Fn(usize) -> Command + Send + Sync + 'static,
    {
        let command: worker::MakeCommand = Arc::new(command);
        self.sources
            .extend((0..count).map(|_| Source::SpawnSocket(command.clone())));
        self
    }

    /// Starts `count` copies of this very program, with `args`: the usual way to scale a
    /// binary out, with a flag that makes it a worker.
    pub fn spawn_self<I, A>(self, count: usize, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<std::ffi::OsString>,
    {
        self.spawn_self_with(count, args, false)
    }

    /// As [`spawn_self`](Self::spawn_self), over socket pairs as
    /// [`spawn_socket`](Self::spawn_socket).
    pub fn spawn_self_socket<I, A>(self, count: usize, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<std::ffi::OsString>,
    {
        self.spawn_self_with(count, args, true)
    }

    fn spawn_self_with<I, A>(self, count: usize, args: I, socket: bool) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<std::ffi::OsString>,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                return Self {
                    error: Some(Error::io(e).with_context("find this program to start workers")),
                    ..self
                }
            }
        };
        let command = move |_| {
            let mut command = Command::new(&exe);
            command.args(&args);
            command
        };
        if socket {
            self.spawn_socket(count, command)
        } else {
            self.spawn(count, command)
        }
    }

    /// Adds a worker served on the Unix socket at `path`: the pool connects, and reconnects
    /// whenever the connection is lost.
    pub fn connect(mut self, path: impl Into<PathBuf>) -> Self {
        self.sources.push(Source::Unix(path.into()));
        self
    }

    /// Adds a worker served over TCP at `addr`, reconnected as [`connect`](Self::connect).
    pub fn connect_tcp(mut self, addr: SocketAddr) -> Self {
        self.sources.push(Source::Tcp(addr));
        self
    }

    /// Limits and buffer sizes of every worker connection.
    pub fn config(mut self, config: Config) -> Self {
        self.connection = self.connection.config(config);
        self
    }

    /// Serves the workers' calls back to the parent with `service` (usually a
    /// [`Router`](crate::Router)); without one they get -32601.
    pub fn service<S>(mut self, service: S) -> Self
    where
        S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.connection = self.connection.service(service);
        self
    }

    /// Marks `methods` as safe to run twice: their calls are retried on another worker when
    /// theirs goes away before replying. Calls of other methods are never retried.
    pub fn idempotent<I, M>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = M>,
        M: AsRef<str>,
    {
        self.idempotent
            .extend(methods.into_iter().map(|method| method.as_ref().into()));
        self
    }

    /// The budget retries are paid from (default: 20% of the calls of the last 10 s, and at
    /// least 10 per second).
    pub fn retry_budget(mut self, budget: TpsBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Probes each worker every `interval` with a `$/ping` call, which its connection answers
    /// without running a handler; a worker that does not answer within `timeout` is taken out
    /// of the balance and restarted. Default: every second, within 10 s.
    pub fn health_check(mut self, interval: Duration, timeout: Duration) -> Self {
        self.health = Some(Health { interval, timeout });
        self
    }

    /// No liveness probe: a worker leaves only when it exits or its connection closes.
    pub fn no_health_check(mut self) -> Self {
        self.health = None;
        self
    }

    /// The back-off between restarts of one worker: from `min`, doubling with jitter, up to
    /// `max` (default: 100 ms to 5 s). It starts again from `min` once a worker stayed up for
    /// 10 s.
    pub fn restart_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max);
        self
    }

    /// How long a new worker has to answer its first probe before it counts as failed to
    /// start (default: 10 s).
    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Starts the pool: one supervisor task per worker. Returns at once; workers join the
    /// balance as they come up ([`Pool::until_live`] waits for them).
    ///
    /// Fails when no worker was configured, the back-off is invalid, or this program could
    /// not be found for [`spawn_self`](Self::spawn_self).
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn build(self) -> Result<Pool, Error> {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.sources.is_empty() {
            return Err(Error::config("a pool needs at least one worker"));
        }
        let (min, max) = self.backoff;
        let backoff = ExponentialBackoffMaker::new(min, max, 1.0, HasherRng::default())
            .map_err(|e| Error::config(format!("restart back-off: {e}")))?;
        let mut retry = RetryIdempotent::new(self.idempotent);
        if let Some(budget) = self.budget {
            retry = retry.with_budget(budget);
        }
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            slots: self.sources.iter().map(|_| Arc::default()).collect(),
            sources: self.sources,
            roster: Roster::new(),
            connection: self.connection,
            retry,
            health: self.health,
            backoff,
            start_timeout: self.start_timeout,
            grace: GRACE,
            end_by: std::sync::OnceLock::new(),
            closing: stop.child_token(),
            closing_now: std::sync::atomic::AtomicBool::new(false),
            stop: stop.clone(),
            keys: AtomicU64::new(0),
            tracker: TaskTracker::new(),
        });
        for slot in 0..shared.slots.len() {
            shared
                .tracker
                .spawn(supervise::supervise(slot, shared.clone()));
        }
        shared.tracker.close();
        Ok(Pool {
            inner: Arc::new(PoolRef {
                shared,
                _stop_on_drop: stop.drop_guard(),
            }),
        })
    }
}

/// What the supervisors and the handles share.
struct Shared {
    sources: Vec<Source>,
    slots: Vec<Arc<SlotStats>>,
    roster: Roster,
    connection: Builder,
    retry: RetryIdempotent,
    health: Option<Health>,
    backoff: ExponentialBackoffMaker,
    start_timeout: Duration,
    grace: Duration,
    /// Set by [`Pool::shutdown`]: the workers' grace ends by then, whatever is left of it.
    end_by: std::sync::OnceLock<Instant>,
    /// No new calls, no restarts: set by shutdown (and by `stop`).
    closing: CancellationToken,
    /// Set by shutdown with `closing`, for the handles' checks.
    closing_now: std::sync::atomic::AtomicBool,
    /// Ends the workers and the supervisors.
    stop: CancellationToken,
    keys: AtomicU64,
    tracker: TaskTracker,
}

impl Shared {
    /// Whether calls are refused: read on every `poll_ready`, so a flag rather than the
    /// token (a child token's check takes its tree's lock). Only [`Pool::shutdown`] closes
    /// the pool while a handle lives.
    fn is_closing(&self) -> bool {
        self.closing_now.load(std::sync::atomic::Ordering::Acquire)
    }

    /// How long a worker the pool no longer needs may take to exit on its own before it is
    /// killed: [`GRACE`], cut short by a shutdown's deadline.
    fn grace(&self) -> Duration {
        match self.end_by.get() {
            Some(end_by) => self
                .grace
                .min(end_by.saturating_duration_since(Instant::now())),
            None => self.grace,
        }
    }

    fn next_key(&self) -> u64 {
        self.keys.fetch_add(1, Relaxed)
    }
}

/// What the handles hold: when the last one is dropped, the workers are ended.
struct PoolRef {
    shared: Arc<Shared>,
    _stop_on_drop: DropGuard,
}

/// A pool of workers: see the [module docs](self). Cheap to clone; when the last clone (and
/// the last [`PoolCaller`] and [`PoolPoster`]) is dropped, the workers are ended.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolRef>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.inner.shared.slots.len())
            .field("live", &self.inner.shared.roster.len())
            .finish()
    }
}

impl Pool {
    /// Options for a new pool.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// Calls as a [`tower::Service`], balanced over the live workers and retried for
    /// idempotent methods. Each caller balances on its own (a clone starts a new balancer on
    /// first use), so keep one per task rather than one per call.
    pub fn caller(&self) -> PoolCaller {
        let policy = self.inner.shared.retry.clone();
        PoolCaller {
            inner: Retry::new(policy.clone(), Balanced::new(self.inner.clone())),
            policy,
        }
    }

    /// Notifications as a [`tower::Service`], each sent to one live worker, balanced as calls.
    pub fn poster(&self) -> PoolPoster {
        PoolPoster {
            inner: Balanced::new(self.inner.clone()),
        }
    }

    /// Calls `method` on one worker and waits for its reply; see [`Connection::call`].
    /// Waits while no worker is live. For many calls, keep a [`caller`](Self::caller).
    pub async fn call<R: DeserializeOwned>(
        &self,
        method: &str,
        args: impl Serialize,
    ) -> Result<R, Error> {
        let request = Request::new(method, args)?;
        self.caller().oneshot(request).await?.deserialize()
    }

    /// Calls `method`, which answers with a stream of items, on one worker, and returns the
    /// stream; see [`Connection::call_stream`]. The worker is picked on the first poll (the
    /// live one with the fewest calls in flight, waiting while none is live), and the stream
    /// stays on it: if that worker dies, the stream ends with an [`Error::is_closed`] error,
    /// and is not retried elsewhere mid-stream. The workers' in-flight counts (balancing,
    /// [`metrics`](Self::metrics), [`shutdown`](Self::shutdown)'s wait) do not count streams.
    pub fn call_stream<T: DeserializeOwned>(
        &self,
        method: &str,
        args: impl Serialize,
    ) -> CallStream<T> {
        let pool = self.inner.clone();
        let pick = async move {
            let shared = &pool.shared;
            loop {
                if shared.is_closing() {
                    return Err(Error::closed());
                }
                let live = shared.roster.live();
                let least_busy = live.iter().min_by_key(|worker| worker.stats.in_flight());
                if let Some(worker) = least_busy {
                    return Ok(worker.conn.clone());
                }
                tokio::select! {
                    _ = shared.roster.until(|live| live > 0) => {}
                    _ = shared.closing.cancelled() => {}
                }
            }
        };
        CallStream::on_pick(pick, method, crate::args::Args::new(&args))
    }

    /// Sends a notification to one worker.
    pub async fn post_message(&self, method: &str, args: impl Serialize) -> Result<(), Error> {
        let request = Request::new(method, args)?;
        self.poster().oneshot(request).await
    }

    /// Sends a notification to every live worker; returns how many it was sent to.
    pub async fn broadcast(&self, method: &str, args: impl Serialize) -> Result<usize, Error> {
        if self.inner.shared.is_closing() {
            return Err(Error::closed());
        }
        let mut sent = 0;
        for worker in self.inner.shared.roster.live() {
            if worker.conn.post_message(method, &args).await.is_ok() {
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// The connections of the live workers, to reach one of them directly.
    pub fn connections(&self) -> Vec<Connection> {
        let live = self.inner.shared.roster.live();
        live.iter().map(|w| w.conn.clone()).collect()
    }

    /// How many workers are live now.
    pub fn live(&self) -> usize {
        self.inner.shared.roster.len()
    }

    /// Waits until at least `n` workers are live.
    pub async fn until_live(&self, n: usize) {
        self.inner.shared.roster.until(|live| live >= n).await;
    }

    /// The pool's counters now.
    pub fn metrics(&self) -> PoolMetrics {
        let shared = &self.inner.shared;
        PoolMetrics {
            live: shared.roster.len(),
            retried: shared.retry.retried(),
            workers: (shared.slots.iter().enumerate())
                .map(|(index, stats)| stats.snapshot(index))
                .collect(),
        }
    }

    /// Shuts down gracefully, and returns by `timeout` whatever the calls do: new calls fail
    /// with [`Error::is_closed`] at once, calls in flight get until the deadline to finish,
    /// then every worker is ended (a process gets up to a second, but never past the deadline,
    /// to exit on its own before it is killed) and reaped. Calls still waiting then fail with
    /// [`Error::is_closed`].
    pub async fn shutdown(&self, timeout: Duration) {
        let shared = &self.inner.shared;
        let deadline = Instant::now() + timeout;
        shared
            .closing_now
            .store(true, std::sync::atomic::Ordering::Release);
        shared.closing.cancel();
        shared.roster.clear();
        'wait: for stats in &shared.slots {
            loop {
                let idle = stats.idle().notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if stats.in_flight() == 0 {
                    break;
                }
                if tokio::time::timeout_at(deadline, idle).await.is_err() {
                    break 'wait;
                }
            }
        }
        // Only the first shutdown's deadline counts.
        let _ = shared.end_by.set(deadline);
        shared.stop.cancel();
        shared.tracker.wait().await;
    }
}

/// Calls balanced over a [`Pool`]'s workers, as a [`tower::Service`]: from
/// [`Pool::caller`]. `poll_ready` is ready when some live worker has room for the call, and
/// waits while none is live.
#[derive(Clone, Debug)]
pub struct PoolCaller {
    inner: Retry<RetryIdempotent, Balanced<Caller>>,
    /// Tells the calls that may be retried: the others skip `Retry` (and its copy of the
    /// request, its future around the reply), straight to the balancer.
    policy: RetryIdempotent,
}

impl Service<Request> for PoolCaller {
    type Response = Response;
    type Error = Error;
    type Future = PoolResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> PoolResponseFuture {
        let attempts = if self.policy.is_idempotent(req.method()) {
            Attempts::Retrying {
                reply: Box::pin(self.inner.call(req)),
            }
        } else {
            // `Retry::poll_ready` is the balancer's: it is ready for this call.
            Attempts::Once {
                reply: self.inner.get_mut().call(req),
            }
        };
        PoolResponseFuture { inner: attempts }
    }
}

pin_project_lite::pin_project! {
    /// The reply to a call made through a [`PoolCaller`].
    pub struct PoolResponseFuture {
        #[pin]
        inner: Attempts,
    }
}

pin_project_lite::pin_project! {
    #[project = AttemptsProj]
    enum Attempts {
        /// A call that is never sent twice.
        Once { #[pin] reply: Counted },
        /// An idempotent call, sent again if its worker goes away. Boxed: `Retry`'s future
        /// holds a copy of the request, and every call's future would be that large.
        Retrying {
            reply: Pin<Box<tower::retry::future::ResponseFuture<RetryIdempotent, Balanced<Caller>, Request>>>,
        },
    }
}

impl Future for PoolResponseFuture {
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            AttemptsProj::Once { reply } => reply.poll(cx),
            AttemptsProj::Retrying { reply } => reply.as_mut().poll(cx),
        }
    }
}

/// Notifications balanced over a [`Pool`]'s workers, as a [`tower::Service`]: from
/// [`Pool::poster`].
#[derive(Clone, Debug)]
pub struct PoolPoster {
    inner: Balanced<Poster>,
}

impl Service<Request> for PoolPoster {
    type Response = ();
    type Error = Error;
    type Future = PoolPostFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> PoolPostFuture {
        PoolPostFuture {
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// Completes once a notification sent through a [`PoolPoster`] is queued.
    pub struct PoolPostFuture {
        #[pin]
        inner: std::future::Ready<Result<(), Error>>,
    }
}

impl Future for PoolPostFuture {
    type Output = Result<(), Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}
