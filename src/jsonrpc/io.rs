//! [`Translated`]: a [`Transport`] whose halves speak JSON-RPC 2.0 on the stream and protocol
//! v1 to the connection that owns them, so a JSON-RPC connection runs the very reader, inbox,
//! dispatcher, outbox and writer of a v1 one.
//!
//! The read half detects the protocol (if asked to), splits the bytes into messages
//! ([`Deframer`]) and hands the connection's reader the v1 lines of each ([`Session`]); a
//! connection that turns out to speak v1 is then passed through untouched. The write half takes
//! the writer's v1 lines and writes their JSON-RPC messages; until the protocol is known, it
//! passes v1 through.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::detect::detect;
use super::framing::{Deframer, Piece};
use super::Framing;
use super::{Protocol, Session};
use crate::error::{code, RpcError};
use crate::peer::Identity;
use crate::transport::Transport;

const UNDETECTED: u8 = 0;
const V1: u8 = 1;
const LINES: u8 = 2;
const CONTENT_LENGTH: u8 = 3;

/// How much the read half asks of the stream at once.
const READ: usize = 16 * 1024;

/// A stream that speaks `protocol` (not [`Protocol::V1`], which needs no translation).
pub(crate) struct Translated<T> {
    inner: T,
    protocol: Protocol,
    max_frame_size: usize,
    partial_frame_timeout: Duration,
}

impl<T> Translated<T> {
    pub(crate) fn new(
        inner: T,
        protocol: Protocol,
        max_frame_size: usize,
        partial_frame_timeout: Duration,
    ) -> Self {
        Translated {
            inner,
            protocol,
            max_frame_size,
            partial_frame_timeout,
        }
    }
}

/// What both halves share: the protocol, once known, and the translation state.
struct Link {
    mode: AtomicU8,
    session: Session,
}

impl Link {
    fn mode(&self) -> u8 {
        self.mode.load(Ordering::Acquire)
    }
}

impl<T: Transport> Transport for Translated<T> {
    type Read = TranslatedRead<T::Read>;
    type Write = TranslatedWrite<T::Write>;

    fn identity(&self) -> Identity {
        self.inner.identity()
    }

    fn split(self) -> (Self::Read, Self::Write) {
        let mode = match self.protocol {
            Protocol::V1 => V1,
            Protocol::JsonRpc => LINES,
            Protocol::Lsp => CONTENT_LENGTH,
            Protocol::Detect => UNDETECTED,
        };
        let link = Arc::new(Link {
            mode: AtomicU8::new(mode),
            session: Session::new(self.max_frame_size),
        });
        let (read, write) = self.inner.split();
        let read = TranslatedRead {
            inner: read,
            link: link.clone(),
            deframer: None,
            passthrough: mode == V1,
            max: self.max_frame_size,
            timeout: self.partial_frame_timeout,
            stall: None,
            bytes: BytesMut::new(),
            lines: BytesMut::new(),
            scratch: Vec::new(),
            eof: false,
        };
        let write = TranslatedWrite {
            inner: write,
            link,
            partial: Vec::new(),
            out: Vec::new(),
            written: 0,
        };
        (read, write)
    }

    fn hung_up(read: &Self::Read) -> impl Future<Output = ()> + Send + '_ {
        T::hung_up(&read.inner)
    }

    fn readable(read: &Self::Read) -> impl Future<Output = ()> + Send + '_ {
        // In the middle of a message, the reader must wait inside `read`, where the partial
        // frame timeout runs.
        let ready = !read.lines.is_empty() || read.mid_message();
        let inner = T::readable(&read.inner);
        async move {
            if !ready {
                inner.await;
            }
        }
    }
}

/// The read half: the peer's messages, as v1 lines.
pub(crate) struct TranslatedRead<R> {
    inner: R,
    link: Arc<Link>,
    /// Made once the protocol is known to be a JSON-RPC one.
    deframer: Option<Deframer>,
    /// The protocol turned out to be v1: reads go straight to the stream.
    passthrough: bool,
    max: usize,
    timeout: Duration,
    /// Armed while the stream is quiet in the middle of a message.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes read, not yet a whole message.
    bytes: BytesMut,
    /// v1 lines for the connection's reader.
    lines: BytesMut,
    scratch: Vec<u8>,
    eof: bool,
}

impl<R: AsyncRead + Unpin> TranslatedRead<R> {
    /// Turns what has been read into lines, detecting the protocol first if need be.
    fn translate(&mut self) {
        if self.deframer.is_none() {
            let mode = match self.link.mode() {
                UNDETECTED => match detect(&self.bytes) {
                    Some(protocol) => {
                        let mode = match protocol {
                            Protocol::JsonRpc => LINES,
                            Protocol::Lsp => CONTENT_LENGTH,
                            _ => V1,
                        };
                        self.link.mode.store(mode, Ordering::Release);
                        mode
                    }
                    None if self.eof => V1,
                    None => return,
                },
                mode => mode,
            };
            let framing = match mode {
                LINES => Framing::Lines,
                CONTENT_LENGTH => Framing::ContentLength,
                _ => {
                    self.lines.extend_from_slice(&self.bytes.split());
                    self.passthrough = true;
                    return;
                }
            };
            self.deframer = Some(Deframer::new(framing, self.max));
        }
        let deframer = self.deframer.as_mut().expect("made above");
        let session = &self.link.session;
        while let Some(piece) = deframer.next(&mut self.bytes, self.eof) {
            match piece {
                Piece::Message(message) => session.incoming(&message, &mut self.lines),
                Piece::TooLarge(len) => {
                    let len =
                        len.map_or_else(|| format!("more than {}", self.max), |n| n.to_string());
                    let message =
                        format!("frame too large: {len} bytes, the maximum is {}", self.max);
                    session.refuse(
                        RpcError::new(code::FRAME_TOO_LARGE, message),
                        &mut self.lines,
                    );
                }
                Piece::BadHeader(why) => session.refuse(
                    RpcError::new(code::INVALID_FRAME, format!("invalid header: {why}")),
                    &mut self.lines,
                ),
            }
        }
    }

    fn mid_message(&self) -> bool {
        match &self.deframer {
            Some(deframer) => deframer.mid_message(&self.bytes),
            None => !self.bytes.is_empty(),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for TranslatedRead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.lines.is_empty() {
                let n = this.lines.len().min(buf.remaining());
                buf.put_slice(&this.lines.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.passthrough {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.scratch.is_empty() {
                this.scratch = vec![0; READ];
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(result) => {
                    result?;
                    this.stall = None;
                    let n = read.filled().len();
                    if n == 0 {
                        this.eof = true;
                    } else {
                        this.bytes.extend_from_slice(&this.scratch[..n]);
                    }
                    this.translate();
                }
                Poll::Pending => {
                    if !this.mid_message() {
                        this.stall = None;
                        return Poll::Pending;
                    }
                    // A peer that stops in the middle of a message, as v1's partial line.
                    let timeout = this.timeout;
                    let stall = this
                        .stall
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    ready!(stall.as_mut().poll(cx));
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "partial frame timeout: no byte for {timeout:?} in the middle of a \
                             message"
                        ),
                    )));
                }
            }
        }
    }
}

/// The write half: the connection's v1 lines, as the peer's messages.
pub(crate) struct TranslatedWrite<W> {
    inner: W,
    link: Arc<Link>,
    /// The start of a line whose end has not been handed over yet.
    partial: Vec<u8>,
    /// Messages to write, from `written` on.
    out: Vec<u8>,
    written: usize,
}

impl<W: AsyncWrite + Unpin> TranslatedWrite<W> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.out.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for TranslatedWrite<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        let framing = match this.link.mode() {
            LINES => Framing::Lines,
            CONTENT_LENGTH => Framing::ContentLength,
            // v1, or not known yet: v1 as it is.
            _ => return Pin::new(&mut this.inner).poll_write(cx, buf),
        };
        this.partial.extend_from_slice(buf);
        let mut start = 0;
        while let Some(at) = memchr::memchr(b'\n', &this.partial[start..]) {
            let end = start + at + 1;
            this.link
                .session
                .outgoing(&this.partial[start..end], framing, &mut this.out);
            start = end;
        }
        this.partial.drain(..start);
        // Started now; finished by the next write or the flush that follows.
        let _ = this.poll_drain(cx)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
