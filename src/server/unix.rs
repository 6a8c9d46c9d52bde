//! [`UnixListener`]: tokio's Unix listener, with every rule of the socket file.

use std::io;
use std::path::Path;

use tokio::net::UnixStream;

use super::listener::Listener;
use super::socket_file::{self, SocketFile};
use crate::error::Error;

/// A Unix socket bound at a path, following the socket-file rules.
///
/// Binding proves that an existing socket file is stale before replacing it, never touches
/// anything at the path that is not a socket, and creates the socket with mode `0600` (or the
/// mode given) with no moment at which it is reachable with looser permissions. The file is
/// removed when the listener is dropped (a server drops it when it stops accepting), if it is
/// still this listener's.
///
/// ```no_run
/// # async fn f(router: diarrhoea::Router) -> Result<(), diarrhoea::Error> {
/// let listener = diarrhoea::UnixListener::bind("./app.sock")?;
/// diarrhoea::serve(listener, router).await
/// # }
/// ```
#[derive(Debug)]
pub struct UnixListener {
    listener: tokio::net::UnixListener,
    file: SocketFile,
}

impl UnixListener {
    /// Binds `path` with mode `0600` (only this user may connect). Must be called within a
    /// tokio runtime.
    pub fn bind(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::bind_with_mode(path, 0o600)
    }

    /// Binds `path` with the permission bits `mode` (e.g. `0o660` for a group).
    pub fn bind_with_mode(path: impl AsRef<Path>, mode: u32) -> Result<Self, Error> {
        let (listener, file) = socket_file::bind(path.as_ref(), mode & 0o777)?;
        let listener = tokio::net::UnixListener::from_std(listener).map_err(Error::io)?;
        Ok(UnixListener { listener, file })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

impl Listener for UnixListener {
    type Io = UnixStream;

    async fn accept(&mut self) -> io::Result<UnixStream> {
        self.listener.accept().await.map(|(stream, _)| stream)
    }
}
