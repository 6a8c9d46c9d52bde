//! The listening side: the socket file, the accept loop, and graceful shutdown.

mod socket_file;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tower::Service;

use crate::connection::{
    boxed, BoundService, Config, Connection, Parent, PeerInfo, DEFAULT_SHUTDOWN_TIMEOUT,
};
use crate::error::{code, BoxError, Error, RpcError};
use crate::frame::Frame;
use crate::request::Request;
use crate::response::Response;

use socket_file::SocketFile;

/// A server listening on a Unix socket path.
///
/// Binding proves that an existing socket file is stale before replacing it, never touches
/// anything at the path that is not a socket, and creates the socket with mode `0600`
/// (configurable) with no moment at which it is reachable with looser permissions. The file
/// is removed when the server shuts down or is dropped, if it is still this server's.
///
/// ```no_run
/// use diarrhoea::{Connection, Router, Server};
///
/// # async fn f() -> Result<(), diarrhoea::Error> {
/// let router = Router::new().route("ping", |peer: Connection, x: String, time: u64| async move {
///     peer.post_message("pong", (x, time)).await
/// });
/// Server::bind("./test.sock")?
///     .serve_with_shutdown(router, diarrhoea::shutdown_signal())
///     .await
/// # }
/// ```
pub struct Server {
    listener: UnixListener,
    /// `None` once the file has been removed.
    socket_file: Option<SocketFile>,
    config: Config,
    shutdown_timeout: Duration,
    /// Back-off and log state of the accept loop.
    pressure: std::sync::Mutex<Pressure>,
    /// One permit per open connection, up to `max_connections`.
    slots: Arc<Semaphore>,
    max_connections: usize,
    /// Shared with every accepted connection: graceful and hard stop, and their tasks.
    connections: Parent,
}

impl Server {
    /// Listens on `path` with the default options. Must be called within a tokio runtime.
    pub fn bind(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::builder().bind(path)
    }

    /// Options: socket mode, limits, shutdown deadline.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            config: Config::default(),
            mode: 0o600,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }

    /// The socket path, while the server still owns it.
    pub fn path(&self) -> Option<&Path> {
        self.socket_file.as_ref().map(SocketFile::path)
    }

    /// Accepts the next connection and serves its calls with `service`: the Rust form of
    /// diarrhoea 1.1.0's `connection` event followed by `socket.bind(...)`.
    ///
    /// Errors that concern one incoming connection are skipped; when the process runs out of
    /// file descriptors, accepting backs off (10 ms doubling to 1 s) and logs at most once a
    /// second, then recovers. Only a listener that can no longer accept is an error.
    pub async fn accept<S>(&self, service: S) -> Result<Connection, Error>
    where
        S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.accept_with(|_| boxed(service)).await
    }

    /// Accepts the next connection, building its service from the peer's identity.
    async fn accept_with(
        &self,
        make: impl FnOnce(&PeerInfo) -> BoundService,
    ) -> Result<Connection, Error> {
        let mut make = Some(make);
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    // Descriptors are available again: the next shortage starts at 10 ms.
                    self.pressure
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .backoff = Duration::ZERO;
                    let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                        self.refuse_full(stream);
                        continue;
                    };
                    let peer = PeerInfo::of(&stream);
                    let make = make.take().expect("only the accepted connection takes it");
                    let (config, parent) = (self.config.clone(), &self.connections);
                    let service = make(&peer);
                    return Ok(Connection::spawn(
                        stream,
                        peer,
                        service,
                        config,
                        parent,
                        Some(slot),
                    ));
                }
                Err(e) if is_per_connection(&e) => {
                    tracing::debug!(error = %e, "diarrhoea: accept failed for one connection");
                }
                Err(e) if is_out_of_descriptors(&e) => {
                    let backoff = self
                        .pressure
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .out_of_descriptors(&e);
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => return Err(Error::io(e)),
            }
        }
    }

    /// Tells a connection over the limit why, then closes it; never waits on it.
    fn refuse_full(&self, stream: tokio::net::UnixStream) {
        let limit = self.max_connections;
        let full = RpcError::new(
            code::OVERLOADED,
            format!("overloaded: server full ({limit} connections)"),
        );
        let mut line = bytes::BytesMut::new();
        Frame::ConnectionError(full).encode(&mut line);
        // A fresh socket's send buffer has room for one short line; if not, closing says enough.
        let _ = stream.try_write(&line);
        let mut pressure = self.pressure.lock().unwrap_or_else(|p| p.into_inner());
        if every_second(&mut pressure.full_logged) {
            tracing::warn!(
                limit,
                "diarrhoea: connection limit reached, refusing connections"
            );
        }
    }

    /// How many connections are open now.
    pub fn connections(&self) -> usize {
        self.max_connections - self.slots.available_permits()
    }

    /// Accepts and serves connections until the listener fails; each connection gets a clone
    /// of `service`.
    pub async fn serve<S>(self, service: S) -> Result<(), Error>
    where
        S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.serve_with_shutdown(service, std::future::pending())
            .await
    }

    /// As [`Server::serve`], until `signal` completes; then shuts down gracefully (see
    /// [`Server::shutdown`]).
    pub async fn serve_with_shutdown<S, F>(self, service: S, signal: F) -> Result<(), Error>
    where
        S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        F: Future<Output = ()> + Send,
    {
        let service = boxed(service);
        self.serve_each_with_shutdown(move |_| service.clone(), signal)
            .await
    }

    /// As [`Server::serve_with_shutdown`], with a fresh service for every connection, built by
    /// `make` from the peer's identity: for layers that must hold state per connection, such
    /// as a per-connection `ConcurrencyLimit` or `RateLimit` (a cloned `ConcurrencyLimit`
    /// shares its semaphore with the original, so one built outside `make` is server-wide).
    ///
    /// ```no_run
    /// use tower::ServiceBuilder;
    /// # async fn f(router: diarrhoea::Router) -> Result<(), diarrhoea::Error> {
    /// diarrhoea::Server::bind("./test.sock")?
    ///     .serve_each_with_shutdown(
    ///         move |_peer| ServiceBuilder::new().concurrency_limit(64).service(router.clone()),
    ///         diarrhoea::shutdown_signal(),
    ///     )
    ///     .await
    /// # }
    /// ```
    pub async fn serve_each_with_shutdown<M, S, F>(
        self,
        mut make: M,
        signal: F,
    ) -> Result<(), Error>
    where
        M: FnMut(&PeerInfo) -> S + Send,
        S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        F: Future<Output = ()> + Send,
    {
        let mut signal = std::pin::pin!(signal);
        let result = loop {
            tokio::select! {
                _ = &mut signal => break Ok(()),
                accepted = self.accept_with(|peer| boxed(make(peer))) => {
                    if let Err(e) = accepted {
                        break Err(e);
                    }
                }
            }
        };
        self.shutdown().await;
        result
    }

    /// Shuts down in three steps: stops accepting (and removes the socket file), tells every
    /// connection to refuse new calls (-32004) and finish the ones in flight, and waits for
    /// them up to the shutdown timeout, after which the remaining connections are closed.
    pub async fn shutdown(mut self) {
        if let Some(file) = self.socket_file.take() {
            file.remove();
        }
        let Server {
            listener,
            connections,
            shutdown_timeout,
            ..
        } = self;
        drop(listener);
        connections.draining.cancel();
        connections.tracker.close();
        if tokio::time::timeout(shutdown_timeout, connections.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?shutdown_timeout,
                "diarrhoea: shutdown deadline passed, closing connections"
            );
            connections.abort.cancel();
            connections.tracker.wait().await;
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("path", &self.path())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What the accept loop remembers between accepts, so that back-off and rate-limited logs
/// hold across connections that come and go.
#[derive(Debug, Default)]
struct Pressure {
    backoff: Duration,
    descriptors_logged: Option<Instant>,
    full_logged: Option<Instant>,
}

impl Pressure {
    /// The next back-off after EMFILE and friends: 10 ms doubling to 1 s, starting over after
    /// an accept succeeds. The warning is logged at most once a second however often that is.
    fn out_of_descriptors(&mut self, e: &std::io::Error) -> Duration {
        self.backoff = (self.backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        if every_second(&mut self.descriptors_logged) {
            tracing::warn!(error = %e, backoff = ?self.backoff, "diarrhoea: out of file descriptors, accept backs off");
        }
        self.backoff
    }
}

/// `true` at most once a second: for logs that a flood of events must not flood.
fn every_second(last: &mut Option<Instant>) -> bool {
    if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
        return false;
    }
    *last = Some(Instant::now());
    true
}

/// Errors that concern only the connection being accepted.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || e.raw_os_error() == Some(71) // EPROTO
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: resources that come back when connections close.
fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

/// Builds a [`Server`]; from [`Server::builder`].
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    config: Config,
    mode: u32,
    shutdown_timeout: Duration,
    max_connections: usize,
}

/// The default limit of open connections per server.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

impl ServerBuilder {
    /// Limits and buffer sizes for every accepted connection.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Permission bits of the socket file (default `0o600`: only this user may connect).
    pub fn socket_mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o777;
        self
    }

    /// How many connections may be open at once (default 1024). The next one receives a
    /// connection error `[null,null,{"code":-32002,...}]` and is closed.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// How long [`Server::shutdown`] waits for in-flight requests (default 10 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Binds `path`. Must be called within a tokio runtime.
    pub fn bind(self, path: impl AsRef<Path>) -> Result<Server, Error> {
        let (listener, socket_file) = socket_file::bind(path.as_ref(), self.mode)?;
        let listener = UnixListener::from_std(listener).map_err(Error::io)?;
        Ok(Server {
            listener,
            socket_file: Some(socket_file),
            config: self.config,
            shutdown_timeout: self.shutdown_timeout,
            pressure: std::sync::Mutex::default(),
            slots: Arc::new(Semaphore::new(self.max_connections)),
            max_connections: self.max_connections,
            connections: Parent::standalone(),
        })
    }
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM: the usual signal for
/// [`Server::serve_with_shutdown`].
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "diarrhoea: cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
