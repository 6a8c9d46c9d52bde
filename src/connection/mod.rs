//! One connection, the same machinery on both sides of the socket.
//!
//! ```text
//! read half -> reader (codec) -+-> reply  -> pending table -> the caller's future
//!                              +-> call   -> dispatcher -> bound service (your layers, Router)
//! handler result / post_message / call -> bounded queue -> writer -> write half
//! ```
//!
//! The reader never waits on inbound work while it still has room in the inbound buffer, so
//! replies to this side's calls get through even while the peer floods; the dispatcher runs
//! notifications one at a time in wire order and spawns calls (up to a limit).

mod bound;
mod dispatch;
mod in_flight;
mod outbox;
mod pending;
mod reader;
mod writer;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::unix::UCred;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::codec::DEFAULT_MAX_FRAME_SIZE;
use crate::error::{code, BoxError, Error, Kind, RpcError};
use crate::frame::{Args, Frame, Meta, MAX_ID};
use crate::request::Request;
use crate::response::Response;
use crate::router::Router;

use in_flight::InFlight;
use outbox::{Outbox, OutboxPoller};
use pending::Pending;

pub(crate) use bound::BoundService;

/// Erases a user's stack into the service a connection drives.
pub(crate) fn boxed<S>(service: S) -> BoundService
where
    S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    BoundService::new(service)
}

/// Per-connection limits and buffer sizes, shared by clients and servers.
///
/// ```
/// let config = diarrhoea::Config::new()
///     .max_frame_size(1 << 20)
///     .max_concurrent_requests(64);
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) max_frame_size: usize,
    pub(crate) outgoing_queue: usize,
    pub(crate) outgoing_buffer: usize,
    pub(crate) partial_frame_timeout: Duration,
    pub(crate) inbound_buffer: usize,
    pub(crate) max_concurrent_requests: usize,
    pub(crate) request_timeout: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            outgoing_queue: 1024,
            outgoing_buffer: 8 * 1024 * 1024,
            partial_frame_timeout: Duration::from_secs(30),
            inbound_buffer: 4 * 1024 * 1024,
            max_concurrent_requests: 1024,
            request_timeout: None,
        }
    }
}

impl Config {
    /// The defaults: 8 MiB frames, 1024 queued outgoing frames holding at most 8 MiB, a 4 MiB
    /// inbound buffer, 1024 concurrent incoming requests per connection, 30 s for a peer to
    /// finish a line it started, no request timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// The longest line accepted (and sent). Longer incoming lines are discarded with an error
    /// event; longer outgoing frames fail with -32003 before they are written.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes.max(16);
        self
    }

    /// How many outgoing frames may wait for the writer; `post_message`, `call` and the
    /// [`Caller`]/[`Notifier`] services wait (`poll_ready` is pending) while it is full.
    pub fn outgoing_queue(mut self, frames: usize) -> Self {
        self.outgoing_queue = frames.max(1);
        self
    }

    /// How many bytes of outgoing frames may wait for the writer (default 8 MiB); senders wait
    /// while it is spent, so a peer that stops reading costs at most this much memory here.
    /// A frame larger than the whole budget is charged the whole budget.
    pub fn outgoing_buffer(mut self, bytes: usize) -> Self {
        self.outgoing_buffer = bytes.clamp(1024, u32::MAX as usize);
        self
    }

    /// How long a peer may leave a line unfinished without sending another byte before the
    /// connection is closed (default 30 s), so a stalled half-frame cannot pin a connection.
    pub fn partial_frame_timeout(mut self, timeout: Duration) -> Self {
        self.partial_frame_timeout = timeout;
        self
    }

    /// How many bytes of incoming calls may be waiting for dispatch or running (a request
    /// keeps its share until it is answered) before the reader stops reading (backpressure).
    /// While there is room, the reader keeps reading, so replies to this side's own calls are
    /// never stuck behind inbound work. Default 4 MiB.
    pub fn inbound_buffer(mut self, bytes: usize) -> Self {
        self.inbound_buffer = bytes.clamp(1024, u32::MAX as usize);
        self
    }

    /// How many incoming requests may run at once on one connection; further requests wait
    /// in wire order.
    pub fn max_concurrent_requests(mut self, n: usize) -> Self {
        self.max_concurrent_requests = n.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// A deadline for every incoming request, counted from when its frame is read, so time
    /// spent waiting for a permit or for the service to be ready counts. A peer's
    /// `meta.timeout_ms` can only shorten it. Expired requests are answered -32001.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }
}

/// Who is on the other end of a connection; on every incoming request ([`Request::peer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerInfo {
    /// The process-unique id of the connection, as in logs.
    pub connection_id: u64,
    /// The peer's uid, gid and pid, read from the socket (`SO_PEERCRED`).
    pub cred: Option<UCred>,
}

impl PeerInfo {
    pub(crate) fn of(stream: &UnixStream) -> Self {
        PeerInfo {
            connection_id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            cred: stream.peer_cred().ok(),
        }
    }
}

/// When an incoming request must be answered by ([`Request::deadline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub tokio::time::Instant);

/// Something that happened on a connection: the Rust form of diarrhoea 1.1.0's `error`,
/// `end` and `close` events.
///
/// Every event is also logged with `tracing`, so nothing is lost when nobody subscribes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A frame was dropped (not JSON, too large, malformed), a notification handler failed,
    /// or the socket failed. The connection stays open unless the socket failed.
    Error(Arc<Error>),
    /// Something was ignored that may be a mistake: a notification for an unknown method, a
    /// reply with an unknown id.
    Warning(Arc<Error>),
    /// The peer has finished sending.
    End,
    /// The connection is closed; the last event.
    Close,
    /// This subscriber fell behind and missed this many events.
    Lagged(u64),
}

/// A subscription to a connection's [`Event`]s, from [`Connection::events`].
pub struct Events(broadcast::Receiver<Event>);

impl Events {
    /// The next event; `None` once the connection is closed and every event was seen.
    pub async fn recv(&mut self) -> Option<Event> {
        match self.0.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Event::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// State shared by a connection's tasks and every [`Connection`] handle.
pub(crate) struct Shared {
    id: u64,
    config: Config,
    /// Frames for the writer; bounded, so senders feel backpressure.
    outgoing: Outbox,
    pending: Arc<Pending>,
    next_call_id: AtomicU64,
    /// The peer's requests in flight here, to refuse a duplicate id and to cancel.
    in_flight: InFlight,
    events: broadcast::Sender<Event>,
    /// Replaces the bound service (`Connection::bind`).
    binding: watch::Sender<BoundService>,
    /// Cancelled by `end()`, or when inbound work is done: the writer flushes and shuts down.
    ending: CancellationToken,
    /// Cancelled to drop everything at once (`close()`, a socket error, a shutdown deadline).
    abort: CancellationToken,
    /// Cancelled by the server's graceful shutdown or `close_with_error`: refuse new calls,
    /// finish the ones in flight, say goodbye, end.
    draining: CancellationToken,
    /// The goodbye: `close_with_error`'s error, else -32004 "shutting down".
    farewell: std::sync::Mutex<Option<RpcError>>,
    /// Cancelled once every task of the connection has finished.
    closed: CancellationToken,
    peer: PeerInfo,
}

impl Shared {
    fn emit(&self, event: Event) {
        match &event {
            Event::Error(e) => tracing::warn!(connection = self.id, error = %e, "diarrhoea: error"),
            Event::Warning(e) => {
                tracing::warn!(connection = self.id, warning = %e, "diarrhoea: ignored")
            }
            Event::End => tracing::debug!(connection = self.id, "diarrhoea: peer ended"),
            Event::Close => tracing::debug!(connection = self.id, "diarrhoea: closed"),
            Event::Lagged(_) => {}
        }
        // No subscriber is fine: the event is logged above.
        let _ = self.events.send(event);
    }

    /// Why calls are refused while draining.
    fn farewell(&self) -> RpcError {
        let farewell = self
            .farewell
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        farewell.unwrap_or_else(|| RpcError::new(code::SHUTTING_DOWN, "shutting down"))
    }

    fn error(&self, error: Error) {
        self.emit(Event::Error(Arc::new(error)));
    }

    fn warning(&self, error: Error) {
        self.emit(Event::Warning(Arc::new(error)));
    }

    /// Refuses frames the peer would discard, before they take a place in the queue.
    fn check_size(&self, frame: &Frame) -> Result<(), Error> {
        self.check_len(frame.payload_len())
    }

    /// As [`Shared::check_size`], for an encoded line.
    fn check_line(&self, line: &[u8]) -> Result<(), Error> {
        // The terminator does not count, as on the receiving side.
        self.check_len(line.len().saturating_sub(1))
    }

    fn check_len(&self, len: usize) -> Result<(), Error> {
        let max = self.config.max_frame_size;
        if len > max {
            let message = format!("frame too large: {len} bytes, the maximum is {max}");
            return Err(Error::protocol(RpcError::new(
                code::FRAME_TOO_LARGE,
                message,
            )));
        }
        Ok(())
    }

    fn next_call_id(&self) -> u64 {
        // Ids wrap below 2^53; an id still in flight after 2^53 calls is not a practical case.
        self.next_call_id.fetch_add(1, Ordering::Relaxed) % MAX_ID + 1
    }

    /// Registers a call and builds its frame; the caller then queues the frame.
    ///
    /// A request whose `meta.timeout_ms` is set fails locally with a timeout error when that
    /// passes (and the peer, told the same deadline, gives up too).
    fn start_call(
        self: &Arc<Self>,
        timeout: Option<Duration>,
        encode: impl FnOnce(u64) -> Result<Vec<u8>, Error>,
    ) -> Result<(Vec<u8>, ResponseFuture), Error> {
        if self.ending.is_cancelled() {
            return Err(Error::closed());
        }
        let id = self.next_call_id();
        let line = encode(id)?;
        self.check_line(&line)?;
        let (tx, rx) = oneshot::channel();
        self.pending.insert(id, tx)?;
        // Inside an outgoing trace span, this ties the span to the call's id.
        tracing::debug!(connection = self.id, id, "diarrhoea: call");
        let guard = CallGuard {
            shared: self.clone(),
            id,
            armed: true,
        };
        let deadline = timeout.map(|t| Box::pin(tokio::time::sleep(t)));
        let reply = ResponseFuture {
            state: State::Waiting {
                rx,
                guard,
                deadline,
            },
        };
        Ok((line, reply))
    }

    /// [`Shared::start_call`] for a [`Request`].
    fn start_request(self: &Arc<Self>, req: Request) -> Result<(Vec<u8>, ResponseFuture), Error> {
        let timeout = req.meta().timeout_ms.map(Duration::from_millis);
        self.start_call(timeout, |id| Ok(req.into_call(id).to_line()))
    }
}

/// Forgets a call whose future is dropped (or timed out) before its reply came, and tells the
/// peer with `["$/cancel",[id]]` so it can stop working on it.
struct CallGuard {
    shared: Arc<Shared>,
    id: u64,
    armed: bool,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if !self.armed || !self.shared.pending.forget(self.id) || self.shared.ending.is_cancelled()
        {
            return;
        }
        let cancel = Frame::Notification {
            method: CANCEL_METHOD.into(),
            args: Args::new(&(self.id,)).expect("an id serializes"),
        };
        match self.shared.outgoing.try_send_control(cancel) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(cancel)) => {
                // Drop cannot wait; a full queue gets the cancel from a task.
                let outgoing = self.shared.outgoing.clone();
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move { outgoing.send_control(cancel).await });
                }
            }
        }
    }
}

/// The protocol's cancellation notification: `["$/cancel",[id]]`.
pub(crate) const CANCEL_METHOD: &str = "$/cancel";

/// Handle to one connection: post notifications, make calls, bind handlers, watch events.
///
/// Cheap to clone; every clone drives the same connection. A client gets one from
/// [`Client::connect`](crate::Client::connect), a server from
/// [`Server::accept`](crate::Server::accept), and a handler can take one as its first
/// parameter to talk back to the peer.
///
/// Dropping handles does not close the connection (a server keeps serving it): call
/// [`end`](Connection::end) or [`close`](Connection::close).
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

impl Connection {
    /// The token cancelled when the peer cancels its request `id`, made on first use.
    pub(crate) fn cancellation(&self, id: u64) -> CancellationToken {
        self.shared.in_flight.token(id)
    }

    /// Starts the tasks that drive `stream`, serving incoming calls with `service`.
    pub(crate) fn spawn(
        stream: UnixStream,
        peer: PeerInfo,
        service: BoundService,
        config: Config,
        parent: &Parent,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Self {
        ignore_sigpipe();
        let (read, write) = stream.into_split();
        let (outgoing, outgoing_rx) = Outbox::new(config.outgoing_queue, config.outgoing_buffer);
        let (binding, binding_rx) = watch::channel(service);
        let shared = Arc::new(Shared {
            id: peer.connection_id,
            outgoing,
            pending: Arc::default(),
            in_flight: InFlight::default(),
            next_call_id: AtomicU64::new(0),
            events: broadcast::channel(256).0,
            binding,
            ending: CancellationToken::new(),
            abort: parent.abort.child_token(),
            draining: parent.draining.child_token(),
            farewell: std::sync::Mutex::new(None),
            closed: CancellationToken::new(),
            peer,
            config,
        });
        let writer = parent
            .tracker
            .spawn(writer::run(write, outgoing_rx, shared.clone()));
        let driven = shared.clone();
        parent.tracker.spawn(async move {
            drive(read, binding_rx, driven, writer).await;
            // The connection's place in the server's limit is free again.
            drop(slot);
        });
        Connection { shared }
    }

    /// A process-unique id for this connection, as used in logs.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The connection id and the peer's credentials.
    pub fn peer(&self) -> PeerInfo {
        self.shared.peer
    }

    /// The peer's credentials (uid, gid, pid), read from the socket when it was accepted.
    pub fn peer_cred(&self) -> Option<UCred> {
        self.shared.peer.cred
    }

    /// Sends a notification `["method",[args...]]`; no reply comes back.
    ///
    /// `args` must serialize to a JSON array: a tuple such as `(x, time)`, `(x,)` for one
    /// argument, or `()` for none. Waits while the outgoing queue is full.
    pub async fn post_message(&self, method: &str, args: impl Serialize) -> Result<(), Error> {
        if self.shared.ending.is_cancelled() {
            return Err(Error::closed());
        }
        let line = crate::frame::call_line(method, &args, None, &Meta::default())?;
        self.shared.check_line(&line)?;
        self.shared.outgoing.send_line(line).await
    }

    /// Calls `method` on the peer and waits for its reply.
    ///
    /// Fails with [`Error::is_remote`] when the peer answers with an error reply, and with
    /// [`Error::is_closed`] when the connection closes first. For a deadline, wrap the
    /// [`caller`](Connection::caller) service in `tower::timeout::Timeout`, or the future in
    /// `tokio::time::timeout`.
    pub async fn call<R: DeserializeOwned>(
        &self,
        method: &str,
        args: impl Serialize,
    ) -> Result<R, Error> {
        let (line, reply) = self.shared.start_call(None, |id| {
            crate::frame::call_line(method, &args, Some(id), &Meta::default())
        })?;
        self.shared.outgoing.send_line(line).await?;
        reply.await?.deserialize()
    }

    /// As [`call`](Connection::call), with a deadline: the peer is told `timeout_ms`, and the
    /// call fails with [`Error::is_timeout`] when it passes (the peer is then sent
    /// `$/cancel`).
    pub async fn call_with_timeout<R: DeserializeOwned>(
        &self,
        method: &str,
        args: impl Serialize,
        timeout: Duration,
    ) -> Result<R, Error> {
        let meta = Meta {
            timeout_ms: Some(timeout.as_millis().try_into().unwrap_or(u64::MAX)),
        };
        let (line, reply) = self.shared.start_call(Some(timeout), |id| {
            crate::frame::call_line(method, &args, Some(id), &meta)
        })?;
        tokio::select! {
            sent = self.shared.outgoing.send_line(line) => sent?,
            _ = tokio::time::sleep(timeout) => return Err(Error::new(Kind::Timeout)),
        }
        reply.await?.deserialize()
    }

    /// Closes with a reason: new calls are refused with `error`, calls in flight are answered,
    /// then a connection error `[null,null,{code,message}]` carrying `error` is sent and the
    /// connection [`end`](Connection::end)s. How a server tells a peer why it is refused.
    pub fn close_with_error(&self, error: RpcError) {
        *self
            .shared
            .farewell
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(error);
        self.shared.draining.cancel();
    }

    /// Outgoing calls as a [`tower::Service`], to wrap in `Timeout`, `ConcurrencyLimit`,
    /// `RateLimit`, `Buffer` and the like.
    pub fn caller(&self) -> Caller {
        Caller {
            shared: self.shared.clone(),
            outgoing: self.shared.outgoing.poller(),
        }
    }

    /// Outgoing notifications as a [`tower::Service`].
    pub fn notifier(&self) -> Notifier {
        Notifier {
            shared: self.shared.clone(),
            outgoing: self.shared.outgoing.poller(),
        }
    }

    /// Replaces the service that handles the peer's calls, from the next frame on.
    ///
    /// ```no_run
    /// # async fn f(conn: diarrhoea::Connection) {
    /// conn.bind(diarrhoea::Router::new().route("hello", |name: String| async move {
    ///     format!("hello, {name}")
    /// }));
    /// # }
    /// ```
    pub fn bind<S>(&self, service: S)
    where
        S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.shared.binding.send_replace(boxed(service));
    }

    /// Subscribes to this connection's events from now on.
    pub fn events(&self) -> Events {
        Events(self.shared.events.subscribe())
    }

    /// Finishes sending: queued frames are written, then the write side is shut down. Incoming
    /// calls already received are still answered... until the peer closes its side.
    pub fn end(&self) {
        self.shared.ending.cancel();
    }

    /// Closes at once: pending calls fail, running handlers are dropped.
    pub fn close(&self) {
        self.shared.abort.cancel();
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Waits until the connection has closed.
    pub async fn closed(&self) {
        self.shared.closed.cancelled().await
    }

    /// How many of this side's calls are waiting for a reply.
    pub fn pending_calls(&self) -> usize {
        self.shared.pending.len()
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.shared.id)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// Tokens and task tracking a connection inherits from whoever started it.
pub(crate) struct Parent {
    pub(crate) abort: CancellationToken,
    pub(crate) draining: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

impl Parent {
    pub(crate) fn standalone() -> Self {
        Parent {
            abort: CancellationToken::new(),
            draining: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }
}

/// Runs the inbound side, then lets the writer finish, then reports the close.
async fn drive(
    read: tokio::net::unix::OwnedReadHalf,
    binding: watch::Receiver<BoundService>,
    shared: Arc<Shared>,
    writer: tokio::task::JoinHandle<()>,
) {
    let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(shared.config.inbound_buffer));
    let reader = reader::run(read, inbound_tx, budget, shared.clone());
    let dispatcher = async {
        dispatch::run(inbound_rx, binding, shared.clone()).await;
        if shared.draining.is_cancelled() {
            let _ = shared
                .outgoing
                .send_control(Frame::ConnectionError(shared.farewell()))
                .await;
        }
        shared.ending.cancel();
    };
    tokio::join!(reader, dispatcher);
    shared.ending.cancel();
    let _ = writer.await;
    shared.closed.cancel();
    shared.emit(Event::Close);
}

/// Writing to a peer that went away must return `EPIPE`, never kill the process.
///
/// Rust binaries ignore SIGPIPE already, but a host process (or `-Zon-broken-pipe`) may not;
/// a tokio signal listener installs a handler that stays for the life of the process.
fn ignore_sigpipe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Err(e) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe()) {
            tracing::warn!(error = %e, "diarrhoea: could not install a SIGPIPE handler");
        }
    });
}

/// Outgoing calls as a [`tower::Service`]: `poll_ready` waits for room in the outgoing queue.
///
/// ```no_run
/// use std::time::Duration;
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # async fn f(conn: diarrhoea::Connection) -> Result<(), tower::BoxError> {
/// let mut calls = ServiceBuilder::new()
///     .timeout(Duration::from_secs(1))
///     .concurrency_limit(64)
///     .service(conn.caller());
/// let reply = calls.ready().await?.call(diarrhoea::Request::new("echo", (1, 2))?).await?;
/// let (a, b): (i32, i32) = reply.deserialize()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Caller {
    shared: Arc<Shared>,
    outgoing: OutboxPoller,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("connection", &self.shared.id)
            .finish()
    }
}

impl Service<Request> for Caller {
    type Response = Response;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.outgoing.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> ResponseFuture {
        let (line, reply) = match self.shared.start_request(req) {
            Ok(started) => started,
            Err(e) => {
                self.outgoing.abort();
                return ResponseFuture::failed(e);
            }
        };
        match self.outgoing.send(line) {
            Ok(()) => reply,
            Err(_) => ResponseFuture::failed(Error::closed()),
        }
    }
}

/// Outgoing notifications as a [`tower::Service`]: `poll_ready` waits for room in the
/// outgoing queue; the response is `()` once the frame is queued.
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<Shared>,
    outgoing: OutboxPoller,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("connection", &self.shared.id)
            .finish()
    }
}

impl Service<Request> for Notifier {
    type Response = ();
    type Error = Error;
    type Future = std::future::Ready<Result<(), Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.outgoing.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let frame = req.into_notification();
        let result = if self.shared.ending.is_cancelled() {
            Err(Error::closed())
        } else {
            self.shared.check_size(&frame)
        };
        std::future::ready(match result {
            Ok(()) => self.outgoing.send(frame.to_line()),
            Err(e) => {
                self.outgoing.abort();
                Err(e)
            }
        })
    }
}

/// The reply to one outgoing call. Dropping it forgets the call.
pub struct ResponseFuture {
    state: State,
}

enum State {
    Waiting {
        rx: oneshot::Receiver<Result<Response, Error>>,
        guard: CallGuard,
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    Failed(Option<Error>),
}

impl ResponseFuture {
    fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Failed(Some(error)),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            State::Waiting {
                rx,
                guard,
                deadline,
            } => {
                if let Poll::Ready(result) = Pin::new(rx).poll(cx) {
                    // The entry was removed by whoever answered.
                    guard.armed = false;
                    return Poll::Ready(result.unwrap_or_else(|_| Err(Error::closed())));
                }
                // On timeout the guard stays armed: it forgets the call and cancels it at the peer.
                match deadline.as_mut().map(|sleep| sleep.as_mut().poll(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(Err(Error::new(Kind::Timeout))),
                    _ => Poll::Pending,
                }
            }
            State::Failed(error) => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// The service a connection serves before anything is bound: every call gets -32601.
pub(crate) fn unbound() -> BoundService {
    boxed(Router::new())
}

/// How long the server waits for in-flight requests when shutting down, by default.
pub(crate) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
