//! [`UnixListener`]: tokio's Unix listener, with every rule of the socket file.

use std::io;
use std::path::Path;

use tokio::net::UnixStream;

use super::listener::Listener;
use super::socket_file::{self, SocketFile};
use crate::error::Error;

/// A Unix socket bound at a path, following the socket-file rules.
///
/// Deleting whatever sits at the socket path before binding (as the Node library does) can
/// evict a live server or destroy a file. [`bind`](UnixListener::bind) instead:
///
/// - replaces an existing socket file only after a connect to it is refused (a stale
///   socket, such as one a killed server left behind);
/// - never takes over a live server's socket: binding fails instead, and the live server
///   keeps answering on its old and new connections;
/// - never touches anything at the path that is not a socket (a regular file, a directory, a
///   symlink, even one to a live socket or a dangling one): binding fails instead;
/// - checks the path's length first: at most 107 bytes (the `sun_path` limit), refused up
///   front rather than truncated;
/// - creates the socket with mode `0600`, so only this user may connect (other users'
///   `connect` gets `EACCES`; [`bind_with_mode`](UnixListener::bind_with_mode) to change
///   it), with no moment at which it is reachable with looser permissions: the socket is
///   bound in a private `0700` directory beside the path, given its mode there, and
///   hard-linked into place, whatever the process's umask;
/// - removes the file when the listener is dropped (a server drops it when it stops
///   accepting), if it is still this listener's.
///
/// So one path has one server: of many processes binding one free path, or one holding a
/// stale socket, at once, exactly one serves and the others fail with a bind error, and no
/// staging files are left behind. `tests/processes.rs` races 20 real processes for each of
/// these cases and watches the path's mode while binding.
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
