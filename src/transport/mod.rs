//! [`Transport`]: what a connection needs from its byte stream.
//!
//! A connection runs over any `AsyncRead + AsyncWrite` stream. Reading and writing are all it
//! needs; what only some streams have sits behind this one trait: who the peer is, and
//! whether a peer that has ended its side is still there to read replies.
//!
//! | stream | identity | hang-up check |
//! | --- | --- | --- |
//! | `tokio::net::UnixStream` | [`Identity::Unix`] (uid, gid, pid) | yes |
//! | `tokio::net::TcpStream` | [`Identity::Tcp`] (the peer's address) | yes |
//! | [`ChildStdio`] (pipes to a child) | none | no |
//! | [`Stdio`] (this process's own stdin and stdout) | none | yes (stdout's reader is gone) |
//! | `tokio::io::DuplexStream`, or any stream in [`Io`] (TLS, ...) | none | no |

mod io;
mod stdio;
mod tcp;
mod unix;

use std::future::Future;

use tokio::io::{AsyncRead, AsyncWrite};

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
