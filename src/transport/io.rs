//! Any `AsyncRead + AsyncWrite` stream, split with `tokio::io::split`.

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadHalf, WriteHalf};

use super::Transport;

/// Any `AsyncRead + AsyncWrite` stream as a [`Transport`]: a TLS stream, a stream of a crate
/// this one does not know. No peer identity, no hang-up check.
///
/// ```no_run
/// # async fn f(tls: tokio::io::DuplexStream) {
/// let conn = diarrhoea::Connection::builder().serve_connection(diarrhoea::transport::Io(tls));
/// # }
/// ```
#[derive(Debug)]
pub struct Io<T>(pub T);

impl<T> Transport for Io<T>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Read = ReadHalf<T>;
    type Write = WriteHalf<T>;

    fn split(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self.0)
    }
}

/// One end of an in-memory pipe (`tokio::io::duplex`).
impl Transport for DuplexStream {
    type Read = ReadHalf<DuplexStream>;
    type Write = WriteHalf<DuplexStream>;

    fn split(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}
