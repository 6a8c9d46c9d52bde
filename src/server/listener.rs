//! [`Listener`]: where a server's connections come from.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Context;

use futures_core::Stream;
use tokio::net::{TcpListener, TcpStream, UnixStream};

use crate::transport::Transport;

/// A source of accepted connections for [`serve`](crate::serve): a Unix socket
/// ([`UnixListener`](crate::UnixListener), or tokio's), a `tokio::net::TcpListener`, or any
/// stream of connected byte streams ([`from_stream`]).
///
/// Errors that concern one incoming connection (a peer that reset before it was accepted)
/// are skipped by the server; running out of file descriptors makes it back off; any other
/// error ends [`serve`](crate::serve) with that error.
pub trait Listener: Send + 'static {
    /// The accepted byte stream.
    type Io: Transport;

    /// Accepts the next connection.
    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// TCP: listens where the user says. No encryption, no authentication: see
/// [beyond one machine](crate::transport#beyond-one-machine).
impl Listener for TcpListener {
    type Io = TcpStream;

    async fn accept(&mut self) -> io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(stream, _)| stream)
    }
}

/// tokio's Unix listener as it is, without the socket-file rules of
/// [`UnixListener`](crate::UnixListener).
impl Listener for tokio::net::UnixListener {
    type Io = UnixStream;

    async fn accept(&mut self) -> io::Result<UnixStream> {
        tokio::net::UnixListener::accept(self)
            .await
            .map(|(stream, _)| stream)
    }
}

/// Any stream of accepted connections as a [`Listener`]; from [`from_stream`].
#[derive(Debug)]
pub struct FromStream<S>(S);

/// A listener over a stream of connected byte streams: socketpairs handed over by another
/// task, connections accepted elsewhere. When the stream ends, `serve` ends with an error of
/// kind `NotConnected` (after its graceful shutdown).
pub fn from_stream<S, T>(stream: S) -> FromStream<S>
where
    S: Stream<Item = io::Result<T>> + Send + Unpin + 'static,
    T: Transport,
{
    FromStream(stream)
}

impl<S, T> Listener for FromStream<S>
where
    S: Stream<Item = io::Result<T>> + Send + Unpin + 'static,
    T: Transport,
{
    type Io = T;

    async fn accept(&mut self) -> io::Result<T> {
        std::future::poll_fn(|cx: &mut Context<'_>| Pin::new(&mut self.0).poll_next(cx))
            .await
            .unwrap_or_else(|| {
                Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the stream of connections ended",
                ))
            })
    }
}
