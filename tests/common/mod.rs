//! Shared fixtures: unique socket paths, a test router, a server whose accepted connections
//! the test can take ([`TestServer`]), and a raw line-level peer.
#![allow(dead_code, unreachable_pub)]

pub mod clients;
pub mod procfs;

use std::future::{Future, IntoFuture};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use diarrhoea::{
    Args, BoxError, Config, Connection, Event, Events, Request, Response, Router, RpcError,
    UnixListener,
};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::Service;

/// Nothing in these tests should take long; a hang fails instead of blocking CI.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A socket path in a fresh temporary directory, removed with the guard.
pub fn socket_path() -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("dh")
        .tempdir()
        .expect("temp dir");
    let path = dir.path().join("test.sock");
    (dir, path)
}

/// The methods the tests call.
pub fn test_router() -> Router {
    Router::new()
        .route(
            "ping",
            |peer: Connection, x: String, time: u64| async move {
                peer.post_message("pong", (x, time)).await
            },
        )
        .route("echo", |args: Args| async move { args })
        .route("add", |a: i64, b: i64| async move { a + b })
        .route("ask", |peer: Connection, n: i64| async move {
            peer.call::<i64>("double", (n,)).await
        })
        .route("sleep", |ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ms
        })
        .route("fail", || async {
            Err::<(), _>(RpcError::new(42, "as asked"))
        })
        .route("panic", || async {
            if true {
                panic!("handler blew up on purpose");
            }
        })
}

/// `test_router()` plus `started_sleep(ms)`: `sleep`, after telling the test (through the
/// returned `Notify`, one permit per call) that the handler runs, so a test can act while a
/// call is in flight without guessing how long it takes to get there.
pub fn test_router_telling_when_started() -> (Router, Arc<tokio::sync::Notify>) {
    let started = Arc::new(tokio::sync::Notify::new());
    let tell = started.clone();
    let router = test_router().route("started_sleep", move |ms: u64| {
        tell.notify_one();
        async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ms
        }
    });
    (router, started)
}

/// Waits for a future, failing the test instead of hanging.
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The next event, which must match `pred`: an event of another kind fails the test rather
/// than being skipped, so one cause's missing event cannot hide behind another's.
pub async fn next_event(events: &mut Events, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    let event = within(what, events.recv())
        .await
        .unwrap_or_else(|| panic!("events ended while waiting for {what}"));
    assert!(
        pred(&event),
        "waiting for {what}, got {}",
        describe_event(&event)
    );
    event
}

/// The event waiting now, which must match `pred`; fails at once if there is none. Call it
/// after a round trip that the server answered after handling whatever caused the event
/// (a connection reports what a line caused before it reads the next line).
pub async fn event_now(events: &mut Events, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    match poll_events(events).await {
        Poll::Ready(Some(event)) => {
            assert!(
                pred(&event),
                "expected {what}, got {}",
                describe_event(&event)
            );
            event
        }
        Poll::Ready(None) => panic!("events ended; expected {what}"),
        Poll::Pending => panic!("no event; expected {what}"),
    }
}

/// Fails if an event is waiting now (after a round trip, as for [`event_now`]).
pub async fn assert_no_event(events: &mut Events, after: &str) {
    if let Poll::Ready(Some(event)) = poll_events(events).await {
        panic!(
            "{after}: an event nobody expected: {}",
            describe_event(&event)
        );
    }
}

/// Polls for an event once, without waiting.
async fn poll_events(events: &mut Events) -> Poll<Option<Event>> {
    // `unconstrained`: a spent cooperative budget must not hide an event that is there.
    let mut recv = std::pin::pin!(tokio::task::unconstrained(events.recv()));
    std::future::poll_fn(|cx| Poll::Ready(recv.as_mut().poll(cx))).await
}

/// An event with its error's whole `source()` chain.
pub fn describe_event(event: &Event) -> String {
    match event {
        Event::Error(e) => format!("Error({})", error_chain(&**e)),
        Event::Warning(e) => format!("Warning({})", error_chain(&**e)),
        other => format!("{other:?}"),
    }
}

pub fn is_error_with_code(code: i64) -> impl Fn(&Event) -> bool {
    move |event| matches!(event, Event::Error(e) if e.code() == Some(code))
}

pub fn is_warning_with_code(code: i64) -> impl Fn(&Event) -> bool {
    move |event| matches!(event, Event::Warning(e) if e.code() == Some(code))
}

/// The read half of a [`RawPeer`]'s stream: a Unix socket or an in-memory pipe.
pub type RawRead = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a [`RawPeer`]'s stream.
pub type RawWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A peer that speaks lines by hand, to send what a well-behaved client never would.
pub struct RawPeer {
    pub lines: tokio::io::Lines<BufReader<RawRead>>,
    pub write: RawWrite,
}

impl RawPeer {
    /// Connected to a socket; dropping `write` ends this side's stream (a half-close).
    pub async fn connect(path: &std::path::Path) -> Self {
        let (read, write) = UnixStream::connect(path)
            .await
            .expect("connect")
            .into_split();
        Self::from_halves(Box::new(read), Box::new(write))
    }

    /// A raw peer on any stream (a Unix socket, one end of `tokio::io::duplex`).
    pub fn over<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> Self {
        let (read, write) = tokio::io::split(stream);
        Self::from_halves(Box::new(read), Box::new(write))
    }

    pub fn from_halves(read: RawRead, write: RawWrite) -> Self {
        RawPeer {
            lines: BufReader::new(read).lines(),
            write,
        }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.write.write_all(bytes.as_ref()).await.expect("write");
    }

    /// The next line, unparsed.
    pub async fn recv_line(&mut self) -> String {
        within("a line from the server", self.lines.next_line())
            .await
            .expect("read")
            .expect("server closed the connection")
    }

    /// The next line, parsed.
    pub async fn recv(&mut self) -> serde_json::Value {
        let line = self.recv_line().await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
    }
}

/// A connection serving `service` over an in-memory pipe, and a raw peer on the pipe's other
/// end. Nothing but wakers moves data between them (no socket, no I/O driver), so under
/// paused time (`start_paused`) the clock moves only when both sides wait for a timer: a
/// deadline test measures exact virtual time, whatever the machine's load.
pub fn in_memory<S>(config: Config, service: S) -> (Connection, RawPeer)
where
    S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let (near, far) = tokio::io::duplex(1 << 20);
    let conn = Connection::builder()
        .config(config)
        .service(service)
        .serve_connection(near);
    (conn, RawPeer::over(far))
}

/// `fut`'s output if it completes while every other task has many turns to make progress
/// (each `yield_now` lets the scheduler run everything ready and poll for I/O); `None` if it
/// is still pending after them. A count of scheduler turns, not a wall-clock wait: on a
/// current-thread runtime whatever can move in this process moves in between, so a loaded
/// machine gives the same answer, only slower.
pub async fn unless_stuck<F: Future>(mut fut: std::pin::Pin<&mut F>) -> Option<F::Output> {
    for _ in 0..200 {
        let polled = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        if let Poll::Ready(output) = polled {
            return Some(output);
        }
        tokio::task::yield_now().await;
    }
    None
}

/// An error with its whole `source()` chain, `: `-separated: `Error`'s own `Display` names
/// only itself.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A server run with `diarrhoea::serve` in a task of its own, whose factory hands every
/// connection it accepts to the test ([`TestServer::accept`]) and counts the open ones
/// ([`TestServer::connections`]). Dropping it starts a graceful shutdown in the background;
/// [`TestServer::shutdown`] does the same and waits for it.
pub struct TestServer {
    path: PathBuf,
    /// The temporary directory of the socket, when the server made it.
    dir: Option<TempDir>,
    accepted: mpsc::UnboundedReceiver<Connection>,
    open: Arc<AtomicUsize>,
    stop: CancellationToken,
    serving: Option<JoinHandle<Result<(), diarrhoea::Error>>>,
}

/// Options for a [`TestServer`]; from [`TestServer::builder`].
#[derive(Debug, Default)]
pub struct TestServerBuilder {
    config: Option<Config>,
    max_connections: Option<usize>,
    shutdown_timeout: Option<Duration>,
    mode: Option<u32>,
    forget_accepted: bool,
}

impl TestServerBuilder {
    /// Limits and buffer sizes for every accepted connection.
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = Some(n);
        self
    }

    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = Some(timeout);
        self
    }

    /// The socket file's permission bits (default 0600).
    pub fn socket_mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Does not keep accepted connections for [`TestServer::accept`]: for tests that make
    /// thousands of connections and must not hold on to them.
    pub fn forget_accepted(mut self) -> Self {
        self.forget_accepted = true;
        self
    }

    /// Binds a socket in a fresh temporary directory (removed with the server) and serves
    /// every connection with a clone of `service`.
    pub fn start<S>(self, service: S) -> TestServer
    where
        S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let (dir, path) = socket_path();
        let mut server = self.start_at(&path, service);
        server.dir = Some(dir);
        server
    }

    /// As [`TestServerBuilder::start`], binding `path`.
    pub fn start_at<S>(self, path: &Path, service: S) -> TestServer
    where
        S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let listener = match self.mode {
            Some(mode) => UnixListener::bind_with_mode(path, mode),
            None => UnixListener::bind(path),
        }
        .expect("bind the test server");
        let path = listener.path().to_owned();
        let (tx, accepted) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        let count = open.clone();
        let forget = self.forget_accepted;
        let make = move |conn: &Connection| {
            count.fetch_add(1, Ordering::SeqCst);
            let (closing, count) = (conn.clone(), count.clone());
            tokio::spawn(async move {
                closing.closed().await;
                count.fetch_sub(1, Ordering::SeqCst);
            });
            if !forget {
                // A test that no longer takes connections has dropped the receiver.
                let _ = tx.send(conn.clone());
            }
            service.clone()
        };
        let mut serve = diarrhoea::serve(listener, make);
        if let Some(config) = self.config {
            serve = serve.config(config);
        }
        if let Some(n) = self.max_connections {
            serve = serve.max_connections(n);
        }
        if let Some(timeout) = self.shutdown_timeout {
            serve = serve.shutdown_timeout(timeout);
        }
        let stop = CancellationToken::new();
        let serving = tokio::spawn(
            serve
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .into_future(),
        );
        TestServer {
            path,
            dir: None,
            accepted,
            open,
            stop,
            serving: Some(serving),
        }
    }
}

impl TestServer {
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder::default()
    }

    /// A server with default options in a fresh temporary directory, serving `service`.
    pub fn start<S>(service: S) -> TestServer
    where
        S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        Self::builder().start(service)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The server's side of the next connection it accepted (in the order accepted).
    pub async fn accept(&mut self) -> Connection {
        within("the server to accept a connection", self.accepted.recv())
            .await
            .expect("the server stopped")
    }

    /// How many accepted connections have not closed yet.
    pub fn connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Waits until `connections()` is `n`, failing the test instead of hanging.
    pub async fn wait_for_connections(&self, n: usize) {
        within(&format!("{n} open connections"), async {
            while self.connections() != n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    /// Shuts down gracefully (stop accepting, remove the socket file, drain the connections)
    /// and waits for `serve` to return; its result.
    pub async fn shutdown(mut self) -> Result<(), diarrhoea::Error> {
        self.stop.cancel();
        let serving = self.serving.take().expect("serving until shut down");
        serving.await.expect("the serve task panicked")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
