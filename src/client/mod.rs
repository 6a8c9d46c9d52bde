//! The connecting side: [`Client::connect`] gives a [`Connection`], the same handle a server gets.

use std::path::Path;

use tokio::net::UnixStream;
use tower::Service;

use crate::connection::{boxed, unbound, BoundService, Config, Connection, Parent, PeerInfo};
use crate::error::{BoxError, Error};
use crate::request::Request;
use crate::response::Response;

/// Connects to a diarrhoea server (or any peer that speaks protocol v1).
///
/// ```no_run
/// # async fn f() -> Result<(), diarrhoea::Error> {
/// let conn = diarrhoea::Client::connect("./test.sock").await?;
/// conn.post_message("ping", ("hello", 1)).await?;
/// let sum: i64 = conn.call("add", (2, 3)).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Client(());

impl Client {
    /// Connects to the socket at `path`, with no handlers bound: the peer's calls get -32601
    /// until [`Connection::bind`] is called.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Connection, Error> {
        Self::builder().connect(path).await
    }

    /// Options for connecting: handlers bound from the first frame, limits.
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            config: Config::default(),
            service: None,
        }
    }
}

/// Builds a client connection; from [`Client::builder`].
pub struct ClientBuilder {
    config: Config,
    service: Option<BoundService>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("config", &self.config)
            .field("bound", &self.service.is_some())
            .finish()
    }
}

impl ClientBuilder {
    /// Connection limits and buffer sizes.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Serves the peer's calls with `service` (usually a [`Router`](crate::Router), perhaps
    /// inside layers) from the very first frame.
    pub fn bind<S>(mut self, service: S) -> Self
    where
        S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.service = Some(boxed(service));
        self
    }

    /// Connects to the socket at `path`.
    pub async fn connect(self, path: impl AsRef<Path>) -> Result<Connection, Error> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).await.map_err(|e| {
            Error::io(std::io::Error::new(
                e.kind(),
                format!("connect to {}: {e}", path.display()),
            ))
        })?;
        Ok(self.start(stream))
    }

    /// Runs the protocol over an already connected stream (e.g. one end of
    /// `UnixStream::pair()`).
    pub fn start(self, stream: UnixStream) -> Connection {
        let service = self.service.unwrap_or_else(unbound);
        let peer = PeerInfo::of(&stream);
        Connection::spawn(
            stream,
            peer,
            service,
            self.config,
            &Parent::standalone(),
            None,
        )
    }
}
