//! The reader: bytes from the stream become frames; replies go straight to the pending
//! table, calls to the inbox. It makes no decision about calls.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::codec::Decoder;

use super::inbox::Inbox;
use super::pending::Delivery;
use super::{Event, Shared};
use crate::codec::{Decoded, FrameCodec};
use crate::error::{code, Error, Kind, RpcError};
use crate::frame::Frame;

/// Bytes read per `read` call at most; also the buffer size kept between frames.
const READ_CHUNK: usize = 16_384;

/// A big frame may have grown the buffer: once it is empty, do not keep that memory per
/// connection.
fn shrink_if_grown(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > 4 * READ_CHUNK {
        *buf = BytesMut::with_capacity(READ_CHUNK);
    }
}

/// Reads until the stream ends or the connection goes away. Returns the read half after the
/// peer's end of stream, for the hang-up check; `None` when the connection is going away.
pub(super) async fn run<R: AsyncRead + Unpin>(
    mut read: R,
    mut inbox: Inbox,
    shared: &Shared,
) -> Option<R> {
    let mut codec = FrameCodec::new(shared.config.max_frame_size);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    // Whether the last byte read left a line unfinished (a partial frame, or an oversized one
    // being discarded).
    let mut mid_line = false;
    let ended = 'reading: loop {
        while let Some(item) = decode(&mut codec, &mut buf, false, shared) {
            if !handle(item, &mut inbox, shared).await {
                break 'reading false;
            }
        }
        shrink_if_grown(&mut buf);
        buf.reserve(READ_CHUNK);
        let read_result = tokio::select! {
            biased;
            _ = shared.lifecycle.aborted() => break false,
            _ = shared.lifecycle.draining(), if inbox.is_open() => {
                // Stop dispatching; keep reading so replies to our calls still arrive.
                inbox.close(shared.farewell());
                continue;
            }
            _ = tokio::time::sleep(shared.config.partial_frame_timeout), if mid_line => {
                stalled(shared);
                break false;
            }
            r = read.read_buf(&mut buf) => r,
        };
        match read_result {
            Ok(0) => {
                while let Some(item) = decode(&mut codec, &mut buf, true, shared) {
                    if !handle(item, &mut inbox, shared).await {
                        break;
                    }
                }
                shared.emit(Event::End);
                break true;
            }
            Ok(_) => mid_line = buf.last() != Some(&b'\n'),
            Err(e) => {
                if e.kind() != std::io::ErrorKind::ConnectionReset {
                    shared.error(Error::io(e));
                }
                break false;
            }
        }
    };
    // No reply can arrive any more.
    shared.pending.close();
    drop(inbox);
    ended.then_some(read)
}

/// A peer that stopped in the middle of a line: say why, then stop reading (the connection
/// closes once the work in flight is answered).
fn stalled(shared: &Shared) {
    let timeout: Duration = shared.config.partial_frame_timeout;
    let why = RpcError::invalid_frame(format!(
        "partial frame timeout: no byte for {timeout:?} in the middle of a line"
    ));
    shared.error(Error::protocol(why.clone()));
    let _ = shared
        .outgoing
        .try_send_control(Frame::ConnectionError(why));
}

fn decode(
    codec: &mut FrameCodec,
    buf: &mut BytesMut,
    eof: bool,
    shared: &Shared,
) -> Option<Decoded> {
    let result = if eof {
        codec.decode_eof(buf)
    } else {
        codec.decode(buf)
    };
    match result {
        Ok(item) => item,
        // The codec reports only per-frame faults as items; an Err here is unexpected.
        Err(e) => {
            shared.error(Error::io(e));
            buf.clear();
            None
        }
    }
}

/// Handles one decoded line; `false` when the connection is going away.
async fn handle(item: Decoded, inbox: &mut Inbox, shared: &Shared) -> bool {
    match item {
        Err(invalid) => {
            shared.error(Error::protocol(invalid.error.clone()));
            match invalid.id {
                Some(id) => inbox.reply_error(id, invalid.error).await,
                None => true,
            }
        }
        Ok(Frame::Reply { id, result }) => {
            let result = result.map_err(|rpc| Error::new(Kind::Remote(rpc)));
            match shared.pending.complete(id, result) {
                Delivery::Delivered => {}
                Delivery::Late => {
                    tracing::debug!(
                        connection = shared.id(),
                        id,
                        "diarrhoea: reply to a call given up on"
                    );
                }
                Delivery::Unknown => shared.warning(Error::protocol(RpcError::new(
                    code::INVALID_FRAME,
                    format!("reply with unknown id {id} ignored"),
                ))),
            }
            true
        }
        Ok(Frame::ConnectionError(e)) => {
            shared.error(Error::protocol(e).with_context("the peer sent a connection error"));
            true
        }
        Ok(call) => inbox.submit(call).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grown_buffer_is_given_back_once_empty() {
        let mut buf = BytesMut::with_capacity(4 * READ_CHUNK + 1);
        buf.extend_from_slice(b"partial");
        shrink_if_grown(&mut buf);
        assert_eq!(&buf[..], b"partial", "a buffer holding bytes is kept");
        buf.clear();
        shrink_if_grown(&mut buf);
        assert!(buf.capacity() < 4 * READ_CHUNK, "{}", buf.capacity());

        let mut kept = BytesMut::with_capacity(4 * READ_CHUNK);
        let before = kept.capacity();
        shrink_if_grown(&mut kept);
        assert_eq!(kept.capacity(), before, "up to four reads' worth is kept");
        let mut small = BytesMut::with_capacity(READ_CHUNK);
        shrink_if_grown(&mut small);
        assert_eq!(small.capacity(), READ_CHUNK);
    }
}
