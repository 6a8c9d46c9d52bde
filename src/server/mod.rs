//! The listening side: [`serve`] runs an accept loop over any [`Listener`], gives each
//! connection a service from a per-connection factory, and shuts down gracefully.

mod accept;
mod listener;
mod make;
mod socket_file;
mod unix;

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::connection::{launch, BoundService, Config, Parent};
use crate::error::Error;

use accept::Acceptor;

pub use listener::{from_stream, FromStream, Listener};
pub use make::MakeConnectionService;
pub use unix::UnixListener;

/// The default limit of open connections per server.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// How long a graceful shutdown waits for calls in flight, by default.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves every connection `listener` accepts with a service from `make`: axum's `serve`, for
/// this protocol, and the one way to serve. Await it to run the server; add
/// [`with_graceful_shutdown`](Serve::with_graceful_shutdown) to stop on a signal.
///
/// `make` is either a cloneable service (usually a [`Router`](crate::Router), perhaps inside
/// layers), cloned for every connection, or a factory `FnMut(&Connection) -> S` that sees
/// each new [`Connection`](crate::Connection) (its peer, a handle to greet it) before
/// anything is read from it: for per-connection state, such as a per-connection
/// `ConcurrencyLimit` (a cloned one shares its semaphore, so one built outside the factory is
/// server-wide). The factory can greet its peer, as diarrhoea 1.1.0's
/// `server.on('connection', s => s.post_message('hello', 1234))` does: a frame posted there is
/// the first one the peer reads.
///
/// ```no_run
/// use diarrhoea::{Connection, Router, UnixListener};
/// use tower::ServiceBuilder;
///
/// # async fn f() -> Result<(), diarrhoea::Error> {
/// let router = Router::new().route("add", |a: i64, b: i64| async move { a + b });
/// let listener = UnixListener::bind("./app.sock")?;
/// diarrhoea::serve(listener, move |conn: &Connection| {
///     let _ = conn.try_post_message("hello", (1234,));
///     ServiceBuilder::new().concurrency_limit(64).service(router.clone())
/// })
/// .max_connections(256)
/// .with_graceful_shutdown(diarrhoea::shutdown_signal())
/// .await
/// # }
/// ```
///
/// # Listeners
///
/// A [`Listener`] is a [`UnixListener`] (with its socket-file rules), a
/// `tokio::net::TcpListener` (`TCP_NODELAY` is set on every connection), tokio's own
/// `UnixListener`, or any stream of accepted connections ([`from_stream`]). They share one
/// accept loop: a connection limit ([`max_connections`](Serve::max_connections)), errors that
/// concern one incoming connection skipped, a back-off when file descriptors run out
/// (`EMFILE`, `ENFILE`: 10 ms doubling to 1 s, a warning at most once a second), graceful
/// shutdown, and connection ids. One stream without a listener:
/// [`serve_connection`](crate::serve_connection); a worker process's stdin and stdout:
/// [`serve_stdio`](crate::serve_stdio).
///
/// # Shutting down
///
/// With [`shutdown_signal`] (Ctrl-C or SIGTERM) or any future given to
/// [`with_graceful_shutdown`](Serve::with_graceful_shutdown), the server stops accepting
/// (a [`UnixListener`] removes its socket file), refuses new calls with -32004, waits for the
/// calls in flight up to [`shutdown_timeout`](Serve::shutdown_timeout) (10 s by default),
/// then closes the connections that are left.
pub fn serve<L, M, Marker>(listener: L, make: M) -> Serve<L, M, Marker>
where
    L: Listener,
    M: MakeConnectionService<Marker>,
{
    Serve {
        listener,
        make,
        options: Options::default(),
        _marker: PhantomData,
    }
}

/// The server [`serve`] returns; await it, or set options first.
#[must_use = "a server does nothing until awaited"]
pub struct Serve<L, M, Marker> {
    listener: L,
    make: M,
    options: Options,
    _marker: PhantomData<fn() -> Marker>,
}

#[derive(Debug, Clone)]
struct Options {
    config: Config,
    max_connections: usize,
    shutdown_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: Config::default(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        }
    }
}

impl<L, M, Marker> Serve<L, M, Marker>
where
    L: Listener,
    M: MakeConnectionService<Marker>,
{
    /// Limits and buffer sizes for every accepted connection.
    pub fn config(mut self, config: Config) -> Self {
        self.options.config = config;
        self
    }

    /// How many connections may be open at once (default 1024). The next one receives a
    /// connection error `[null,null,{"code":-32002,...}]` and is closed.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.options.max_connections = n.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// How long a graceful shutdown waits for calls in flight (default 10 s) before it
    /// closes the remaining connections.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.options.shutdown_timeout = timeout;
        self
    }

    /// Serves until `signal` completes, then shuts down in three steps: stops accepting (and
    /// removes a socket file), tells every connection to refuse new calls (-32004) and finish
    /// the ones in flight, and waits for them up to the shutdown timeout, after which the
    /// remaining connections are closed.
    pub fn with_graceful_shutdown<F>(self, signal: F) -> WithGracefulShutdown<L, M, Marker, F>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        WithGracefulShutdown {
            serve: self,
            signal,
        }
    }
}

impl<L, M, Marker> std::fmt::Debug for Serve<L, M, Marker> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// A boxed server future: one allocation per server, none per connection.
pub type ServeFuture = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

impl<L, M, Marker> IntoFuture for Serve<L, M, Marker>
where
    L: Listener,
    M: MakeConnectionService<Marker>,
    Marker: 'static,
{
    type Output = Result<(), Error>;
    type IntoFuture = ServeFuture;

    /// Serves until the listener fails.
    fn into_future(self) -> ServeFuture {
        Box::pin(run(self, std::future::pending()))
    }
}

/// A server that stops on a signal; from [`Serve::with_graceful_shutdown`].
#[must_use = "a server does nothing until awaited"]
pub struct WithGracefulShutdown<L, M, Marker, F> {
    serve: Serve<L, M, Marker>,
    signal: F,
}

impl<L, M, Marker, F> std::fmt::Debug for WithGracefulShutdown<L, M, Marker, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithGracefulShutdown")
            .field("serve", &self.serve)
            .finish_non_exhaustive()
    }
}

impl<L, M, Marker, F> IntoFuture for WithGracefulShutdown<L, M, Marker, F>
where
    L: Listener,
    M: MakeConnectionService<Marker>,
    Marker: 'static,
    F: Future<Output = ()> + Send + 'static,
{
    type Output = Result<(), Error>;
    type IntoFuture = ServeFuture;

    /// Serves until the signal, then shuts down gracefully; `Ok` unless the listener failed.
    fn into_future(self) -> ServeFuture {
        Box::pin(run(self.serve, self.signal))
    }
}

async fn run<L, M, Marker>(
    serve: Serve<L, M, Marker>,
    signal: impl Future<Output = ()> + Send,
) -> Result<(), Error>
where
    L: Listener,
    M: MakeConnectionService<Marker>,
{
    let Serve {
        listener,
        mut make,
        options,
        ..
    } = serve;
    let connections = Parent::standalone();
    let mut acceptor = Acceptor::new(listener, options.max_connections);
    let mut signal = std::pin::pin!(signal);
    let result = loop {
        tokio::select! {
            _ = &mut signal => break Ok(()),
            accepted = acceptor.next() => match accepted {
                Ok((io, slot)) => {
                    let config = options.config.clone();
                    launch(io, config, &connections, Some(slot), |conn| {
                        BoundService::new(make.make_service(conn))
                    });
                }
                Err(e) => break Err(e),
            },
        }
    };
    // 1. Stop accepting; a socket file goes with its listener.
    drop(acceptor);
    // Steps 2 and 3 of a graceful shutdown.
    connections.drain(options.shutdown_timeout, "server").await;
    result
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM: the usual signal for
/// [`Serve::with_graceful_shutdown`].
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
