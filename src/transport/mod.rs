//! [`Transport`]: what a connection needs from its byte stream, and the ways to reach a peer.
//!
//! A connection runs over any `AsyncRead + AsyncWrite` stream. Reading and writing are all it
//! needs; what only some streams have sits behind this one trait: who the peer is, whether a
//! peer that has ended its side is still there to read replies (the hang-up check, which
//! lets a connection drop the calls of a peer that died), and whether there is something to
//! read before a read buffer is taken (so a connection whose peer went quiet gives its read
//! buffer back while it waits).
//!
//! | transport | client side | server side | peer identity | hang-up check |
//! | --- | --- | --- | --- | --- |
//! | Unix socket | [`Connection::connect`](crate::Connection::connect)`(path)` | [`UnixListener::bind`](crate::UnixListener::bind)`(path)` | [`Identity::Unix`]: uid, gid, pid (`SO_PEERCRED`) | yes |
//! | TCP | [`Connection::connect_tcp`](crate::Connection::connect_tcp)`(addr)` | `tokio::net::TcpListener` given to [`serve`](crate::serve) | [`Identity::Tcp`]: the peer's address | yes |
//! | a child's stdin and stdout | [`Builder::spawn_child`](crate::connection::Builder::spawn_child)`(&mut command)` ([`ChildStdio`]) | [`serve_stdio`](crate::serve_stdio)`(service)` in the child ([`Stdio`]) | none | in the child (stdout's reader is gone) |
//! | in-process pair | [`Connection::pair`](crate::Connection::pair), [`Builder::pair`](crate::connection::Builder::pair) (a socket pair) | - | uid, gid, pid | yes |
//! | WebSocket (feature `axum`) | `Connection::connect_ws(url)` | `http::ws(make).route()` in an axum app | `Identity::Http`: the remote address and the HTTP request's extensions | no |
//! | anything else: TLS, `tokio::io::duplex` | [`Builder::serve_connection`](crate::connection::Builder::serve_connection)`(`[`Io`]`(stream))` | [`serve_connection`](crate::serve_connection), [`from_stream`](crate::from_stream) | none | no |
//!
//! # Descriptors
//!
//! A Unix socket carries open descriptors beside its bytes ([`Fd`](crate::Fd) arguments,
//! `SCM_RIGHTS`): a listener's connections, [`Connection::pair`](crate::Connection::pair),
//! [`Builder::spawn_child_socket`](crate::connection::Builder::spawn_child_socket) and the
//! pool's [`spawn_socket`](crate::pool::PoolBuilder::spawn_socket) workers. No other
//! transport does ([`Transport::carries_fds`]): sending an `Fd` over one fails before
//! anything is written. Linux only in practice (see [`protocol`](crate::protocol)).
//!
//! # Child processes
//!
//! [`Builder::spawn_child`](crate::connection::Builder::spawn_child) pipes the child's stdin
//! and stdout and kills the child when the returned `Child` is dropped;
//! [`serve_stdio`](crate::serve_stdio) is the worker's whole `main`. When the parent dies,
//! even by SIGKILL, the worker reads the end of its stdin and exits, and a worker still
//! running calls notices that nobody reads its stdout any more and drops them: no worker
//! outlives its parent (`tests/transports.rs` checks both within 1 s). Workers log to
//! stderr: stdout carries the frames. `examples/stdio_worker.rs` is one file that is both;
//! for many workers behind one service, see [`pool`](crate::pool).
//!
//! ```no_run
//! #[tokio::main]
//! async fn main() -> Result<(), diarrhoea::BoxError> {
//!     if std::env::args().any(|a| a == "--worker") {
//!         let router = diarrhoea::Router::new().route("add", |a: i64, b: i64| async move { a + b });
//!         diarrhoea::serve_stdio(router).await;
//!         return Ok(());
//!     }
//!     let mut command = tokio::process::Command::new(std::env::current_exe()?);
//!     command.arg("--worker");
//!     let (conn, _child) = diarrhoea::Connection::builder().spawn_child(&mut command)?;
//!     let sum: i64 = conn.call("add", (2, 3)).await?;
//!     assert_eq!(sum, 5);
//!     Ok(())
//! }
//! ```
//!
//! # Beyond one machine
//!
//! When peers outgrow one machine, the network side is tokio's, hyper's and axum's, which
//! already run at internet scale; this crate brings the protocol. Four ways to be reached
//! from elsewhere:
//!
//! | way | what it gives | what it does not |
//! | --- | --- | --- |
//! | **TCP** (`TcpListener`, [`Connection::connect_tcp`](crate::Connection::connect_tcp)) | the whole protocol, both ways, the lowest cost off the machine | encryption, authentication: keep it on loopback or a private network |
//! | **TLS** (`tokio-rustls` in [`Io`]) | TCP's protocol, encrypted, the server (and with client certificates the client) authenticated | HTTP infrastructure: proxies, browsers, the host server's auth layers |
//! | **WebSocket** (feature `axum`: `http::ws`, `connect_ws`; `wss://` with your TLS stream in `connect_ws_stream`) | the whole protocol, both ways (calls back, `$/cancel`, deadlines, the per-connection factory), on an axum route: the host server's TLS, auth, CORS and tracing layers apply, and it passes HTTP proxies and load balancers | half-close: a WebSocket has none, so a peer that `end()`s stops hearing replies to its calls still running; wait for them first |
//! | **HTTP** (feature `axum`: `http::rest`) | one call per `POST {prefix}/{method}`, from curl, a browser or any language, through the same tower stack | calls from the server back to the caller, ordering between calls, `$/cancel` (closing the request drops the handler) |
//!
//! TCP listens where you say and sets `TCP_NODELAY`. It gives reachability and nothing else:
//! **no encryption and no authentication**. [`AllowPeersLayer`](crate::layer::AllowPeersLayer)
//! refuses every peer without Unix credentials (a TCP or WebSocket peer included) with its
//! usual -31001, so putting the recommended stack on TCP never silently opens it. For
//! encryption, put a TLS stream in [`Io`] (`tests/tls.rs` runs calls over tokio-rustls with a
//! certificate made at test time); authenticate in a layer, or in the axum app for
//! WebSocket and HTTP peers (see `http`, feature `axum`). `examples/tcp_pair.rs` is a server
//! and a client over loopback; `examples/gateway.rs` serves one router on a Unix socket and on
//! HTTP and WebSocket.
//!
//! ```no_run
//! use diarrhoea::{Connection, Router};
//!
//! # async fn f() -> Result<(), diarrhoea::BoxError> {
//! let router = Router::new().route("add", |a: i64, b: i64| async move { a + b });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7000").await?;
//! tokio::spawn(async move { diarrhoea::serve(listener, router).await });
//!
//! let conn = Connection::connect_tcp("127.0.0.1:7000").await?;
//! let sum: i64 = conn.call("add", (2, 3)).await?;
//! # let _ = sum;
//! # Ok(()) }
//! ```

mod io;
mod stdio;
mod tcp;
mod unix;

use std::future::Future;
use std::os::fd::OwnedFd;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::peer::Identity;

pub use io::Io;
pub use stdio::{ChildStdio, Stdio};

/// A byte stream a connection can run over, split into a read half and a write half that the
/// connection's reader and writer own (no lock between them where the stream allows it).
///
/// Implemented for Unix and TCP sockets, pipes, `DuplexStream`; wrap any other
/// `AsyncRead + AsyncWrite` stream in [`Io`].
pub trait Transport: Send + 'static {
    /// The half the reader owns.
    type Read: AsyncRead + Send + Unpin + 'static;
    /// The half the writer owns.
    type Write: AsyncWrite + Send + Unpin + 'static;

    /// What the stream tells about the peer; [`Identity::Unknown`] by default.
    fn identity(&self) -> Identity {
        Identity::Unknown
    }

    /// Splits the stream into its two halves.
    fn split(self) -> (Self::Read, Self::Write);

    /// After the peer's end of stream, completes once the peer is known to be gone entirely
    /// (it closed both sides, or died), so its calls still running can be dropped instead of
    /// holding the connection open. A peer that only half-closed still reads its replies.
    /// Never completes by default: such a stream cannot tell.
    fn hung_up(read: &Self::Read) -> impl Future<Output = ()> + Send + '_ {
        let _ = read;
        std::future::pending()
    }

    /// Completes when the read half has something to read (bytes, its end, or an error), so
    /// an idle connection waits without holding a read buffer. A wake-up with nothing to read
    /// is harmless. Completes at once by default: the reader then waits inside `read`, with
    /// its buffer.
    fn readable(read: &Self::Read) -> impl Future<Output = ()> + Send + '_ {
        let _ = read;
        std::future::ready(())
    }

    /// Whether the stream carries descriptors beside its bytes (`SCM_RIGHTS`): Unix sockets
    /// do. `false` by default: sending an [`Fd`](crate::Fd) then fails before anything is
    /// written.
    fn carries_fds() -> bool {
        false
    }

    /// Reads into the spare capacity of `buf` as `read_buf` does (about `want` bytes are
    /// expected: a hint), and puts the descriptors that arrived with those bytes into
    /// `fds`, at most `max_fds + 1` of them (more tell the caller the limit was passed; the
    /// rest are closed). Returns the bytes read, 0 at the end of the stream. By default a
    /// plain read: no descriptors.
    ///
    /// A read that brought descriptors may be short without the stream being drained (Linux
    /// stops a read after a message with descriptors): it must not count as drained.
    fn read_with_fds<'a>(
        read: &'a mut Self::Read,
        buf: &'a mut BytesMut,
        want: usize,
        fds: &'a mut Vec<OwnedFd>,
        max_fds: usize,
    ) -> impl Future<Output = std::io::Result<usize>> + Send + 'a {
        let _ = (want, fds, max_fds);
        read.read_buf(buf)
    }

    /// Writes a prefix of `bytes`, at least one byte, with `fds` attached to it (only called
    /// when [`Transport::carries_fds`]); returns how many bytes were written. Unsupported by
    /// default.
    fn write_with_fds<'a>(
        write: &'a mut Self::Write,
        bytes: &'a [u8],
        fds: &'a [OwnedFd],
    ) -> impl Future<Output = std::io::Result<usize>> + Send + 'a {
        let _ = (write, bytes, fds);
        std::future::ready(Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this transport cannot carry descriptors",
        )))
    }
}

/// How often a connection whose peer has ended checks that the peer is still there.
const HANGUP_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// Completes once a socket reports its write side closed (the peer is gone entirely),
/// checking every [`HANGUP_CHECK`]: the hang-up check of Unix and TCP sockets.
async fn until_write_closed<F, R>(ready: F)
where
    F: Fn() -> R,
    R: Future<Output = std::io::Result<tokio::io::Ready>>,
{
    loop {
        tokio::time::sleep(HANGUP_CHECK).await;
        match ready().await {
            Ok(ready) if !ready.is_write_closed() => {}
            _ => return,
        }
    }
}
