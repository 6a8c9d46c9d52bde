//! A WebSocket as a [`Transport`]: messages in, bytes out to the reader; lines in from the
//! writer, messages out.
//!
//! ```text
//! text message -> its lines (a `\n` added if missing) -> reader -> codec -> frames
//! writer -> lines -> one text message per line (without the `\n`) -> sink (awaited)
//! ```
//!
//! The same adapter serves axum's server-side `WebSocket` and tokio-tungstenite's client
//! stream, through [`Socket`].

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite;

use crate::error::{code, RpcError};
use crate::frame::Frame;
use crate::peer::Identity;
use crate::transport::Transport;

/// What arrived in one WebSocket message, as far as the protocol cares.
pub(crate) enum Incoming {
    /// A text message: one or more frame lines.
    Text(Bytes),
    /// A binary message of this many bytes: refused, the protocol is text.
    Binary(usize),
    /// The peer's close frame: the end of its stream.
    Close,
    /// Ping and pong: answered by the WebSocket library, nothing for the protocol.
    Control,
}

/// A WebSocket message stream and sink: axum's `WebSocket` or a tokio-tungstenite stream.
pub(crate) trait Socket:
    Stream<Item = Result<Self::Message, Self::Failure>>
    + Sink<Self::Message, Error = Self::Failure>
    + Send
    + Unpin
    + 'static
{
    /// The library's message type.
    type Message: Send + 'static;
    /// The library's error type.
    type Failure: std::error::Error + Send + Sync + 'static;

    /// One outgoing line (valid UTF-8: a JSON frame) as a text message.
    fn text(line: Bytes) -> Self::Message;

    /// What an incoming message is.
    fn incoming(message: Self::Message) -> Incoming;

    /// The error as the reader or writer reports it.
    fn io_error(error: Self::Failure) -> io::Error;

    /// A close message: 1009 "message too big" after a message over the size limit.
    fn too_big() -> Self::Message;
}

impl Socket for axum::extract::ws::WebSocket {
    type Message = axum::extract::ws::Message;
    type Failure = axum::Error;

    fn text(line: Bytes) -> Self::Message {
        use axum::extract::ws::Utf8Bytes;
        // Lines are JSON, split at `\n`: always UTF-8. Lossy rather than a panic all the same.
        let text = Utf8Bytes::try_from(line.clone())
            .unwrap_or_else(|_| Utf8Bytes::from(String::from_utf8_lossy(&line).into_owned()));
        axum::extract::ws::Message::Text(text)
    }

    fn incoming(message: Self::Message) -> Incoming {
        use axum::extract::ws::Message;
        match message {
            Message::Text(text) => Incoming::Text(Bytes::from(text)),
            Message::Binary(data) => Incoming::Binary(data.len()),
            Message::Close(_) => Incoming::Close,
            Message::Ping(_) | Message::Pong(_) => Incoming::Control,
        }
    }

    fn io_error(error: Self::Failure) -> io::Error {
        // axum wraps tungstenite's error: look inside to tell a reset from a failure.
        match error.into_inner().downcast::<tungstenite::Error>() {
            Ok(ws) => ws_io_error(*ws),
            Err(other) => io::Error::other(other),
        }
    }

    fn too_big() -> Self::Message {
        axum::extract::ws::Message::Close(Some(axum::extract::ws::CloseFrame {
            code: axum::extract::ws::close_code::SIZE,
            reason: TOO_BIG.into(),
        }))
    }
}

impl<S> Socket for tokio_tungstenite::WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Message = tungstenite::Message;
    type Failure = tungstenite::Error;

    fn text(line: Bytes) -> Self::Message {
        use tungstenite::Utf8Bytes;
        // Lines are JSON, split at `\n`: always UTF-8. Lossy rather than a panic all the same.
        let text = Utf8Bytes::try_from(line.clone())
            .unwrap_or_else(|_| Utf8Bytes::from(String::from_utf8_lossy(&line).into_owned()));
        tungstenite::Message::Text(text)
    }

    fn incoming(message: Self::Message) -> Incoming {
        use tungstenite::Message;
        match message {
            Message::Text(text) => Incoming::Text(Bytes::from(text)),
            Message::Binary(data) => Incoming::Binary(data.len()),
            Message::Close(_) => Incoming::Close,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Incoming::Control,
        }
    }

    fn io_error(error: Self::Failure) -> io::Error {
        ws_io_error(error)
    }

    fn too_big() -> Self::Message {
        use tungstenite::protocol::frame::coding::CloseCode;
        tungstenite::Message::Close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Size,
            reason: TOO_BIG.into(),
        }))
    }
}

/// The reason sent with close code 1009.
const TOO_BIG: &str = "message too big";

/// Whether a read failed on a message over the size limit.
fn is_too_big(error: &io::Error) -> bool {
    error
        .get_ref()
        .and_then(|e| e.downcast_ref::<tungstenite::Error>())
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}

/// A peer that went away without the closing handshake, or that closed the WebSocket while
/// replies were still on their way (it has no half-close), is a reset, as on a socket: quiet.
/// Anything else (a message over the size limit, a protocol violation) is reported.
fn ws_io_error(error: tungstenite::Error) -> io::Error {
    use tungstenite::error::ProtocolError;
    match error {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed
        | tungstenite::Error::Protocol(
            ProtocolError::ResetWithoutClosingHandshake | ProtocolError::SendAfterClosing,
        ) => io::Error::new(io::ErrorKind::ConnectionReset, error),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

/// A WebSocket as a connection's byte stream, with what the HTTP request told of the peer.
pub(crate) struct WsTransport<S> {
    socket: S,
    identity: Identity,
}

impl<S: Socket> WsTransport<S> {
    pub(crate) fn new(socket: S, identity: Identity) -> Self {
        WsTransport { socket, identity }
    }
}

impl<S: Socket> Transport for WsTransport<S> {
    type Read = WsRead<S>;
    type Write = WsWrite<S>;

    fn identity(&self) -> Identity {
        self.identity.clone()
    }

    fn split(self) -> (Self::Read, Self::Write) {
        let (sink, stream) = self.socket.split();
        let too_big = Arc::new(AtomicBool::new(false));
        (
            WsRead {
                stream,
                buf: Bytes::new(),
                newline: false,
                ended: false,
                too_big: too_big.clone(),
            },
            WsWrite {
                sink,
                pending: BytesMut::new(),
                too_big,
            },
        )
    }
}

/// The read half: each text message's bytes, then a `\n` if it did not end with one, so
/// every message ends on a line boundary.
pub(crate) struct WsRead<S: Socket> {
    stream: SplitStream<S>,
    /// What is left of the current message.
    buf: Bytes,
    /// A `\n` is owed after `buf`.
    newline: bool,
    ended: bool,
    /// Set when a message over the limit ended the stream: the writer says why as it closes.
    too_big: Arc<AtomicBool>,
}

impl<S: Socket> AsyncRead for WsRead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.buf.is_empty() {
                let n = this.buf.len().min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.newline {
                if out.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                out.put_slice(b"\n");
                this.newline = false;
                return Poll::Ready(Ok(()));
            }
            if this.ended {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.stream.poll_next_unpin(cx)) {
                None => this.ended = true,
                Some(Err(e)) => {
                    let e = S::io_error(e);
                    if is_too_big(&e) {
                        this.too_big.store(true, Ordering::Relaxed);
                    }
                    return Poll::Ready(Err(e));
                }
                Some(Ok(message)) => match S::incoming(message) {
                    Incoming::Text(text) => {
                        this.newline = !text.ends_with(b"\n");
                        this.buf = text;
                    }
                    Incoming::Binary(len) => {
                        // Reported as the receiver reports any frame it drops: an error event,
                        // and the connection stays open. The reader reports a connection error
                        // line as an error event and carries on; this is that line.
                        let why = RpcError::new(
                            code::INVALID_FRAME,
                            format!(
                                "binary WebSocket message of {len} bytes dropped: \
                                 frames travel as text messages"
                            ),
                        );
                        let mut line = BytesMut::new();
                        Frame::ConnectionError(why).encode(&mut line);
                        this.buf = line.freeze();
                    }
                    Incoming::Close => this.ended = true,
                    Incoming::Control => {}
                },
            }
        }
    }
}

/// The write half: complete lines become text messages, sent as the sink takes them. It
/// holds at most what the writer handed it since the sink last took every complete line, so
/// a peer that does not read stops the writer, as a full socket buffer does.
pub(crate) struct WsWrite<S: Socket> {
    sink: SplitSink<S, S::Message>,
    /// Bytes from the writer not yet sent: complete lines waiting for the sink, then at most
    /// one unfinished line.
    pending: BytesMut,
    /// Set by the reader: close with 1009 rather than a bare close.
    too_big: Arc<AtomicBool>,
}

impl<S: Socket> WsWrite<S> {
    /// Sends every complete line in `pending`; ready once none is left.
    fn poll_send_lines(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            if end == 0 {
                self.pending.advance(1);
                continue;
            }
            ready!(self.sink.poll_ready_unpin(cx)).map_err(S::io_error)?;
            let mut line = self.pending.split_to(end + 1).freeze();
            line.truncate(end);
            self.sink
                .start_send_unpin(S::text(line))
                .map_err(S::io_error)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: Socket> AsyncWrite for WsWrite<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // Take more only once the sink has taken every complete line: bounded memory.
        ready!(this.poll_send_lines(cx))?;
        this.pending.extend_from_slice(buf);
        // Move the new lines on without waiting; the next write or flush waits for them.
        if let Poll::Ready(Err(e)) = this.poll_send_lines(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_send_lines(cx))?;
        this.sink.poll_flush_unpin(cx).map_err(S::io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_send_lines(cx))?;
        if this.too_big.swap(false, Ordering::Relaxed) {
            // Best effort: the close below ends the stream either way.
            if let Poll::Ready(Ok(())) = this.sink.poll_ready_unpin(cx) {
                let _ = this.sink.start_send_unpin(S::too_big());
            }
        }
        // The closing handshake: a close frame, then flush.
        this.sink.poll_close_unpin(cx).map_err(S::io_error)
    }
}
