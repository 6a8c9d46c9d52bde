//! [`Builder`]: a byte stream plus a service become a running connection. The one way in, for
//! clients, servers and users alike (hyper's `serve_connection` is the model).

use std::path::Path;

use tokio::net::{TcpStream, ToSocketAddrs, UnixStream};
use tower::Service;

use super::driver::{launch, Parent};
use super::{BoundService, Config, Connection};
use crate::error::{BoxError, Error};
use crate::request::Request;
use crate::response::Response;
use crate::transport::{ChildStdio, Stdio, Transport};

/// Options for a connection: limits, and the service that answers the peer's calls.
///
/// ```no_run
/// use diarrhoea::{Config, Connection, Router};
///
/// # async fn f() -> Result<(), diarrhoea::Error> {
/// let conn = Connection::builder()
///     .config(Config::new().max_frame_size(1 << 20))
///     .service(Router::new().route("hello", |name: String| async move { format!("hi {name}") }))
///     .connect("./app.sock")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Default, Clone)]
pub struct Builder {
    config: Config,
    service: Option<BoundService>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("service", &self.service.is_some())
            .finish()
    }
}

impl Builder {
    /// Default limits; no service (every call from the peer gets -32601 until
    /// [`Connection::set_service`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Connection limits and buffer sizes.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The protocol this side speaks: [`Config::protocol`], e.g.
    /// `Connection::builder().protocol(Protocol::JsonRpc)` to call a JSON-RPC 2.0 server.
    pub fn protocol(mut self, protocol: crate::Protocol) -> Self {
        self.config = self.config.protocol(protocol);
        self
    }

    /// The limits set so far: transports that size their own buffers from them (the
    /// WebSocket client's message limit) read them here.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn config_ref(&self) -> &Config {
        &self.config
    }

    /// Serves the peer's calls with `service` (usually a [`Router`](crate::Router), perhaps
    /// inside layers) from the very first frame.
    pub fn service<S>(mut self, service: S) -> Self
    where
        S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.service = Some(BoundService::new(service));
        self
    }

    /// Runs the protocol over `io`, any [`Transport`]: a Unix or TCP socket, a child's pipes,
    /// an in-memory stream, or any `AsyncRead + AsyncWrite` stream in
    /// [`transport::Io`](crate::transport::Io). Must be called within a tokio runtime.
    pub fn serve_connection<T: Transport>(self, io: T) -> Connection {
        let service = self.service.unwrap_or_else(BoundService::unbound);
        launch(io, self.config, &Parent::standalone(), None, |_| service)
    }

    /// Connects to the Unix socket at `path`.
    pub async fn connect(self, path: impl AsRef<Path>) -> Result<Connection, Error> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| Error::io(e).with_context(format!("connect to {}", path.display())))?;
        Ok(self.serve_connection(stream))
    }

    /// Connects over TCP. TCP carries no encryption and no authentication: see
    /// [beyond one machine](crate::transport#beyond-one-machine).
    pub async fn connect_tcp(self, addr: impl ToSocketAddrs) -> Result<Connection, Error> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| Error::io(e).with_context("connect over TCP"))?;
        Ok(self.serve_connection(stream))
    }

    /// Spawns `command` as a worker process and connects to it over its stdin and stdout
    /// (both are set to piped; stderr is left as it is). The worker serves with
    /// [`serve_stdio`](crate::serve_stdio).
    ///
    /// The child is killed when the returned `Child` is dropped; when this process dies, the
    /// worker sees the end of its stdin and exits, so no worker outlives its parent.
    pub fn spawn_child(
        self,
        command: &mut tokio::process::Command,
    ) -> Result<(Connection, tokio::process::Child), Error> {
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::io(e).with_context("spawn worker"))?;
        let stdio = ChildStdio::take(&mut child).expect("both pipes were requested");
        Ok((self.serve_connection(stdio), child))
    }

    /// As [`spawn_child`](Builder::spawn_child), over one end of a Unix socket pair given to
    /// the worker as its stdin (stdout and stderr are left as they are): the connection
    /// then carries descriptors ([`Fd`](crate::Fd) arguments) both ways. The worker serves
    /// with [`serve_stdio`](crate::serve_stdio), which sees that its stdin is a socket.
    ///
    /// The child is killed when the returned `Child` is dropped; when this process dies,
    /// even by SIGKILL, the worker's socket reaches its end and the worker exits.
    pub fn spawn_child_socket(
        self,
        command: &mut tokio::process::Command,
    ) -> Result<(Connection, tokio::process::Child), Error> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(Error::io)?;
        let child = command
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
                theirs,
            )))
            .kill_on_drop(true)
            .spawn();
        // The command holds the worker's end until it is dropped or told otherwise: let go
        // of it, so the worker's death ends this side's reads.
        command.stdin(std::process::Stdio::null());
        let child = child.map_err(|e| Error::io(e).with_context("spawn worker"))?;
        ours.set_nonblocking(true).map_err(Error::io)?;
        let ours = UnixStream::from_std(ours).map_err(Error::io)?;
        Ok((self.serve_connection(ours), child))
    }

    /// A connection over this process's own stdin and stdout: the worker's side of
    /// [`spawn_child`](Builder::spawn_child). Log to stderr: stdout carries the frames. To
    /// serve until the parent closes the connection, [`serve_stdio`](crate::serve_stdio).
    ///
    /// When stdin is a Unix socket (a worker started with
    /// [`spawn_child_socket`](Builder::spawn_child_socket), or by an inetd-style launcher),
    /// the whole connection runs over that socket, descriptors included, and stdout is
    /// left free.
    pub fn stdio(self) -> Connection {
        match stdin_socket() {
            Some(socket) => self.serve_connection(socket),
            None => self.serve_connection(Stdio::new()),
        }
    }

    /// Two connected ends in this process, over a socket pair: for tests and benchmarks that
    /// need no path. `self` configures the first end, `other` the second.
    pub fn pair(self, other: Builder) -> Result<(Connection, Connection), Error> {
        let (a, b) = UnixStream::pair().map_err(Error::io)?;
        Ok((self.serve_connection(a), other.serve_connection(b)))
    }
}

/// This process's stdin as a tokio Unix socket, if it is one (a duplicate: stdin stays).
fn stdin_socket() -> Option<UnixStream> {
    use std::os::fd::AsFd;
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    let address = rustix::net::getsockname(fd).ok()?;
    if address.address_family() != rustix::net::AddressFamily::UNIX {
        return None;
    }
    let socket = std::os::unix::net::UnixStream::from(fd.try_clone_to_owned().ok()?);
    socket.set_nonblocking(true).ok()?;
    UnixStream::from_std(socket).ok()
}

impl Connection {
    /// Options for a new connection: limits, a service for the peer's calls.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// Connects to the Unix socket at `path`, with no service for the peer's calls (they
    /// get -32601 until [`Connection::set_service`]).
    pub async fn connect(path: impl AsRef<Path>) -> Result<Connection, Error> {
        Builder::new().connect(path).await
    }

    /// Connects over TCP with default options: see [`Builder::connect_tcp`].
    pub async fn connect_tcp(addr: impl ToSocketAddrs) -> Result<Connection, Error> {
        Builder::new().connect_tcp(addr).await
    }

    /// Two connected ends in this process with default options: see [`Builder::pair`].
    pub fn pair() -> Result<(Connection, Connection), Error> {
        Builder::new().pair(Builder::new())
    }
}

/// Runs the protocol over `io`, serving the peer's calls with `service`: shorthand for
/// [`Builder::serve_connection`].
pub fn serve_connection<T, S>(io: T, service: S) -> Connection
where
    T: Transport,
    S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    Builder::new().service(service).serve_connection(io)
}

/// Serves `service` over this process's stdin and stdout until the parent closes the
/// connection (or dies): the whole `main` of a worker spawned with
/// [`Builder::spawn_child`].
///
/// ```no_run
/// #[tokio::main]
/// async fn main() {
///     let router = diarrhoea::Router::new().route("add", |a: i64, b: i64| async move { a + b });
///     diarrhoea::serve_stdio(router).await;
/// }
/// ```
pub async fn serve_stdio<S>(service: S)
where
    S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    Builder::new().service(service).stdio().closed().await
}
