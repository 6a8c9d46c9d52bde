//! The reader: bytes from the stream become frames; replies go straight to the pending
//! table, calls to the inbox. It makes no decision about calls.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use super::arrived_fds::ArrivedFds;
use super::inbox::{Inbox, Later};
use super::outgoing_calls::Delivery;
use super::read_buf::{ReadBuf, READ_CHUNK, READ_SMALL};
use super::{Event, Shared};
use crate::codec::{Decoded, FrameCodec};
use crate::error::{code, Error, Kind, RpcError};
use crate::frame::Frame;
use crate::transport::Transport;

/// How much to offer the next read, from what the last one brought.
fn next_read(last: usize) -> usize {
    if last >= READ_SMALL {
        READ_CHUNK
    } else {
        READ_SMALL
    }
}

/// Whether to give the buffer back if the next read has to wait: it holds no partial line,
/// it is larger than a quiet connection needs (a busy spell or a big frame grew it), and the
/// peer has gone quiet (the next read is offered [`READ_SMALL`]). A busy peer keeps its
/// buffer, so it is not taken again for every read.
fn give_back_before_waiting(buf: &ReadBuf, offer: usize) -> bool {
    offer == READ_SMALL && buf.get().is_empty() && buf.is_larger_than(READ_SMALL)
}

/// Reads until the stream ends or the connection goes away. Returns the read half after the
/// peer's end of stream, for the hang-up check; `None` when the connection is going away.
///
/// The buffer is taken when bytes arrive: while the connection is idle it holds at most a
/// small one (a peer sending one frame at a time keeps it, so it is not taken again per
/// frame), or none after a busy spell.
pub(super) async fn run<T: Transport>(
    mut read: T::Read,
    mut inbox: Inbox,
    shared: &Shared,
) -> Option<T::Read> {
    let mut codec = FrameCodec::new(shared.config.max_frame_size);
    // Frames refer to the chunks they were read in while their calls wait or run, or until
    // the caller reads the reply: as much again as the inbound buffer at most, however the
    // peer spreads its frames over chunks (see `read_buf`).
    let mut buf = ReadBuf::new(shared.config.inbound_buffer);
    let mut offer = READ_SMALL;
    // Whether the last byte read left a line unfinished (a partial frame, or an oversized one
    // being discarded).
    let mut mid_line = false;
    // Descriptors that came with bytes not decoded yet (Unix sockets only; empty otherwise).
    let mut arrived = ArrivedFds::default();
    let mut fds = Vec::new();
    let max_fds = shared.config.max_fds_per_frame;
    let ended = 'reading: loop {
        while let Some(item) = next(&mut codec, &mut buf, false, &mut arrived, shared) {
            // Most frames are handled without a wait, and without a future.
            let go_on = match handle_now(item, &mut inbox, shared) {
                Ok(go_on) => go_on,
                Err(later) => inbox.finish(later).await,
            };
            if !go_on {
                break 'reading false;
            }
        }
        buf.shrink_if_grown();
        if give_back_before_waiting(&buf, offer) {
            let mut readable = std::pin::pin!(T::readable(&read));
            // Bytes already there (a busy peer): read them into the buffer at hand.
            let waiting =
                std::future::poll_fn(|cx| Poll::Ready(readable.as_mut().poll(cx).is_pending()))
                    .await;
            if waiting {
                buf.give_back();
                inbox.release_memory();
                shared.outgoing.release_memory();
                let ready = tokio::select! {
                    biased;
                    _ = shared.lifecycle.aborted() => false,
                    _ = shared.lifecycle.draining(), if inbox.is_open() => {
                        inbox.close(shared.farewell());
                        true
                    }
                    _ = readable => true,
                };
                if !ready {
                    break false;
                }
            }
        }
        buf.make_room(offer);
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
            // Mid-line, as much as there is room for: a long line arrives in few reads.
            r = T::read_with_fds(&mut read, buf.get_mut().0, if mid_line { usize::MAX } else { offer }, &mut fds, max_fds) => r,
        };
        if !fds.is_empty() {
            // They came with the bytes just read: with the line holding the last of them.
            let at = buf.get().len().saturating_sub(1);
            arrived.arrived(at, std::mem::take(&mut fds), max_fds);
        }
        match read_result {
            Ok(0) => {
                while let Some(item) = next(&mut codec, &mut buf, true, &mut arrived, shared) {
                    if !handle(item, &mut inbox, shared).await {
                        break;
                    }
                }
                shared.emit(Event::End);
                break true;
            }
            Ok(n) => {
                offer = next_read(n);
                mid_line = buf.get().last() != Some(&b'\n');
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::ConnectionReset {
                    shared.error(Error::io(e));
                }
                break false;
            }
        }
    };
    // No reply can arrive any more, nor credit for the peer's streams.
    shared.pending.close();
    shared.in_flight.last_grants();
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
    let _ = shared.outgoing.send_control(Frame::ConnectionError(why));
}

/// The next decoded line, with the descriptors that came with it, if any.
#[inline]
fn next(
    codec: &mut FrameCodec,
    buf: &mut ReadBuf,
    eof: bool,
    arrived: &mut ArrivedFds,
    shared: &Shared,
) -> Option<Decoded> {
    if arrived.is_empty() {
        return decode(codec, buf, eof, shared);
    }
    next_with_fds(codec, buf, eof, arrived, shared)
}

#[cold]
fn next_with_fds(
    codec: &mut FrameCodec,
    buf: &mut ReadBuf,
    eof: bool,
    arrived: &mut ArrivedFds,
    shared: &Shared,
) -> Option<Decoded> {
    let before = buf.get().len();
    let item = decode(codec, buf, eof, shared);
    let consumed = before - buf.get().len();
    let Some(line) = arrived.consumed(consumed) else {
        return item;
    };
    let (item, warning) = match item {
        Some(item) => {
            let (item, warning) = line.attach(item, shared.config.max_fds_per_frame);
            (Some(item), warning)
        }
        None => (None, Some(line.unclaimed())),
    };
    if let Some(why) = warning {
        shared.warning(Error::protocol(RpcError::new(code::INVALID_PARAMS, why)));
    }
    item
}

fn decode(
    codec: &mut FrameCodec,
    buf: &mut ReadBuf,
    eof: bool,
    shared: &Shared,
) -> Option<Decoded> {
    let (buf, chunk) = buf.get_mut();
    let result = if eof {
        codec.decode_eof_from(buf, chunk)
    } else {
        codec.decode_from(buf, chunk)
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
    match handle_now(item, inbox, shared) {
        Ok(go_on) => go_on,
        Err(later) => inbox.finish(later).await,
    }
}

/// Handles one decoded line if that needs no wait: `Ok(false)` when the connection is going
/// away; what is left to do otherwise.
#[allow(clippy::result_large_err)] // As `Inbox::try_submit`, whose `Later` this passes on.
fn handle_now(item: Decoded, inbox: &mut Inbox, shared: &Shared) -> Result<bool, Later> {
    match item {
        Err(invalid) => {
            shared.error(Error::protocol(invalid.error.clone()));
            match invalid.id {
                Some(id) => Err(Later::Reply(id, invalid.error)),
                None => Ok(true),
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
            Ok(true)
        }
        Ok(Frame::ConnectionError(e)) => {
            shared.error(Error::protocol(e).with_context("the peer sent a connection error"));
            Ok(true)
        }
        Ok(call) => inbox.try_submit(call),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Args, Connection, Request, Router};

    /// End to end: where the arguments and results of incoming frames are read in the buffer,
    /// and where they are copied for code that may keep them.
    #[tokio::test]
    async fn frames_are_read_in_the_buffer_and_copied_where_they_may_be_kept() {
        use tower::{Service, ServiceExt};
        let server = Router::new()
            .route("typed", |x: String| async move { x })
            .route("args", |args: Args| async move { args.in_line() })
            .fallback_service(tower::service_fn(|req: Request| async move {
                Ok::<_, std::convert::Infallible>(
                    crate::Response::new(&req.args().in_line()).unwrap(),
                )
            }));
        let (client, _server) = Connection::builder()
            .pair(Connection::builder().service(server))
            .unwrap();
        let echoed: String = client.call("typed", ("x",)).await.unwrap();
        assert_eq!(echoed, "x");
        let kept: bool = client.call("args", (1,)).await.unwrap();
        assert!(!kept, "a handler taking Args gets a copy");
        let seen: bool = client.call("other", (1,)).await.unwrap();
        assert!(
            seen,
            "a service reads the request's arguments in the buffer"
        );
        let mut caller = client.caller();
        let reply = caller
            .ready()
            .await
            .unwrap()
            .call(Request::new("typed", ("y",)).unwrap())
            .await
            .unwrap();
        assert!(!reply.in_line(), "a reply handed out is a copy");
        assert_eq!(reply.deserialize::<String>().unwrap(), "y");
    }

    #[test]
    fn reads_are_offered_what_the_last_one_suggests() {
        assert_eq!(next_read(0), READ_SMALL);
        assert_eq!(next_read(READ_SMALL - 1), READ_SMALL);
        assert_eq!(next_read(READ_SMALL), READ_CHUNK);
        assert_eq!(next_read(READ_CHUNK), READ_CHUNK);
    }

    #[test]
    fn only_a_quiet_peers_empty_buffer_larger_than_a_quiet_one_is_given_back() {
        let quiet = READ_SMALL;
        // A buffer in a chunk of `size` bytes.
        let chunk = |size: usize| {
            let mut buf = ReadBuf::new(1 << 20);
            buf.make_room(size);
            buf
        };
        let mut buf = chunk(READ_CHUNK);
        assert!(give_back_before_waiting(&buf, quiet));
        assert!(
            !give_back_before_waiting(&buf, READ_CHUNK),
            "a busy peer keeps it"
        );
        buf.get_mut().0.extend_from_slice(b"[\"partial");
        assert!(
            !give_back_before_waiting(&buf, quiet),
            "a partial line is kept"
        );
        assert!(!give_back_before_waiting(&chunk(READ_SMALL), quiet));
        assert!(give_back_before_waiting(&chunk(READ_SMALL + 1), quiet));
        assert!(!give_back_before_waiting(&chunk(0), quiet));
        // What counts is the chunk, not the room left in it after the frames split off.
        let mut buf = chunk(READ_CHUNK);
        buf.get_mut().0.extend_from_slice(&[b'x'; READ_CHUNK]);
        drop(buf.get_mut().0.split_to(READ_CHUNK));
        assert_eq!(buf.get().capacity(), 0);
        assert!(give_back_before_waiting(&buf, quiet));
    }
}
