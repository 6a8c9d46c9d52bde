//! The reader: bytes from the socket become frames; replies go straight to the pending table,
//! calls go to the dispatcher.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::Decoder;

use super::in_flight::Cancelled;
use super::pending::Delivery;
use super::{Deadline, Event, Shared, CANCEL_METHOD};
use crate::codec::{Decoded, FrameCodec};
use crate::error::{code, Error, Kind, RpcError};
use crate::frame::Frame;
use crate::request::Request;

/// What the dispatcher receives: a call, and its share of the inbound buffer.
pub(super) type Inbound = (Request, OwnedSemaphorePermit);

/// Bytes read per `read` call at most; also the buffer size kept between frames.
const READ_CHUNK: usize = 16 * 1024;
/// How often a connection whose peer has ended checks that the peer is still there.
const HANGUP_CHECK: Duration = Duration::from_millis(100);
/// A frame's cost in the inbound buffer beyond its payload, for the request's own fields.
const FRAME_OVERHEAD: usize = 128;

pub(super) async fn run(
    mut read: OwnedReadHalf,
    inbound: mpsc::UnboundedSender<Inbound>,
    budget: Arc<Semaphore>,
    shared: Arc<Shared>,
) {
    let mut codec = FrameCodec::new(shared.config.max_frame_size);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut inbound = Some(inbound);
    let connection = super::Connection {
        shared: shared.clone(),
    };
    // Whether the last byte read left a line unfinished (a partial frame, or an oversized one
    // being discarded).
    let mut mid_line = false;
    loop {
        while let Some(item) = decode(&mut codec, &mut buf, false, &shared) {
            if !handle(item, &mut inbound, &budget, &connection).await {
                return finish(&shared);
            }
        }
        // A big frame may have grown the buffer; do not keep that memory per connection.
        if buf.is_empty() && buf.capacity() > 4 * READ_CHUNK {
            buf = BytesMut::with_capacity(READ_CHUNK);
        }
        buf.reserve(READ_CHUNK);
        let read_result = tokio::select! {
            biased;
            _ = shared.abort.cancelled() => return finish(&shared),
            _ = shared.draining.cancelled(), if inbound.is_some() => {
                // Stop dispatching; keep reading so replies to our calls still arrive.
                inbound = None;
                continue;
            }
            _ = tokio::time::sleep(shared.config.partial_frame_timeout), if mid_line => {
                stalled(&shared);
                return finish(&shared);
            }
            r = read.read_buf(&mut buf) => r,
        };
        match read_result {
            Ok(0) => {
                while let Some(item) = decode(&mut codec, &mut buf, true, &shared) {
                    if !handle(item, &mut inbound, &budget, &connection).await {
                        break;
                    }
                }
                shared.emit(Event::End);
                finish(&shared);
                drop(inbound);
                return watch_for_hangup(&read, &shared).await;
            }
            Ok(_) => mid_line = buf.last() != Some(&b'\n'),
            Err(e) => {
                if e.kind() != std::io::ErrorKind::ConnectionReset {
                    shared.error(Error::io(e));
                }
                return finish(&shared);
            }
        }
    }
}

/// A peer that stopped in the middle of a line: say why, then stop reading (the connection
/// closes once the work in flight is answered).
fn stalled(shared: &Shared) {
    let timeout = shared.config.partial_frame_timeout;
    let why = RpcError::invalid_frame(format!(
        "partial frame timeout: no byte for {timeout:?} in the middle of a line"
    ));
    shared.error(Error::protocol(why.clone()));
    let _ = shared
        .outgoing
        .try_send_control(Frame::ConnectionError(why));
}

/// After the peer's end of stream, calls already read may still be running. A peer that only
/// half-closed still reads their replies; one that went away entirely (killed, closed) never
/// will, so its connection is torn down at once instead of holding a descriptor until the
/// handlers finish.
async fn watch_for_hangup(read: &OwnedReadHalf, shared: &Shared) {
    let socket: &tokio::net::UnixStream = read.as_ref();
    loop {
        tokio::select! {
            biased;
            _ = shared.abort.cancelled() => return,
            _ = shared.ending.cancelled() => return,
            _ = tokio::time::sleep(HANGUP_CHECK) => {}
        }
        match socket.ready(Interest::WRITABLE).await {
            Ok(ready) if !ready.is_write_closed() => {}
            _ => {
                tracing::debug!(
                    connection = shared.id,
                    "diarrhoea: peer hung up, dropping its calls"
                );
                shared.abort.cancel();
                return;
            }
        }
    }
}

fn finish(shared: &Shared) {
    // No reply can arrive any more.
    shared.pending.close();
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
async fn handle(
    item: Decoded,
    inbound: &mut Option<mpsc::UnboundedSender<Inbound>>,
    budget: &Arc<Semaphore>,
    connection: &super::Connection,
) -> bool {
    let shared = &connection.shared;
    match item {
        Err(invalid) => {
            shared.error(Error::protocol(invalid.error.clone()));
            match invalid.id {
                Some(id) => reply_error(shared, id, invalid.error).await,
                None => true,
            }
        }
        Ok(Frame::Reply { id, result }) => {
            let result = result.map_err(|rpc| Error::new(Kind::Remote(rpc)));
            match shared.pending.complete(id, result) {
                Delivery::Delivered => {}
                Delivery::Late => {
                    tracing::debug!(
                        connection = shared.id,
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
            shared.error(Error::protocol(e).with_source("the peer sent a connection error"));
            true
        }
        Ok(call) => dispatch(call, inbound.as_ref(), budget, connection).await,
    }
}

/// Queues a call for the dispatcher, or answers it here when it cannot be dispatched.
async fn dispatch(
    call: Frame,
    inbound: Option<&mpsc::UnboundedSender<Inbound>>,
    budget: &Arc<Semaphore>,
    connection: &super::Connection,
) -> bool {
    let shared = &connection.shared;
    let arrived = Instant::now();
    let cost = (call.payload_len() + FRAME_OVERHEAD).min(shared.config.inbound_buffer);
    let mut req = Request::incoming(call, connection.clone()).expect("only calls reach dispatch");
    if req.method() == CANCEL_METHOD && !req.is_call() {
        return cancel(shared, &req).await;
    }
    let refusal = if inbound.is_none() {
        Some(shared.farewell())
    } else if req.method().starts_with("$/") {
        // Reserved for the protocol; never routed to user handlers or the fallback.
        Some(RpcError::method_not_found(req.method()))
    } else {
        None
    };
    if let Some(error) = refusal {
        return refuse(shared, req.id(), error).await;
    }
    if let Some(id) = req.id() {
        if !shared.in_flight.insert(id) {
            let dup = RpcError::invalid_frame(format!(
                "duplicate id {id}: a request with this id is in flight"
            ));
            shared.error(Error::protocol(dup.clone()));
            return reply_error(shared, id, dup).await;
        }
        let remote = req.meta().timeout_ms.map(Duration::from_millis);
        let timeout = match (shared.config.request_timeout, remote) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(timeout) = timeout {
            req.set_deadline(Deadline(arrived + timeout));
        }
    }
    // Under load the budget usually has room: take it without building a wait.
    let permit = match budget.clone().try_acquire_many_owned(cost as u32) {
        Ok(permit) => permit,
        Err(_) => tokio::select! {
            biased;
            _ = shared.abort.cancelled() => return false,
            permit = budget.clone().acquire_many_owned(cost as u32) => permit.expect("never closed"),
        },
    };
    // The dispatcher only goes away when the connection does.
    inbound.is_some_and(|tx| tx.send((req, permit)).is_ok())
}

/// Answers a call that will not be dispatched: an error reply, or an event for a notification.
async fn refuse(shared: &Shared, id: Option<u64>, error: RpcError) -> bool {
    match id {
        Some(id) => reply_error(shared, id, error).await,
        None if error.code == code::METHOD_NOT_FOUND => {
            shared.warning(Error::protocol(error));
            true
        }
        None => {
            shared.error(Error::protocol(error).with_source("notification dropped"));
            true
        }
    }
}

/// `["$/cancel",[id]]`: handled here, ahead of queued work, so it takes effect at once.
async fn cancel(shared: &Shared, req: &Request) -> bool {
    let Ok((id,)) = req.args().deserialize::<(u64,)>() else {
        shared.warning(Error::protocol(RpcError::invalid_params(
            "$/cancel takes one request id",
        )));
        return true;
    };
    match shared.in_flight.cancel(id) {
        Cancelled::Queued | Cancelled::Running => reply_error(shared, id, cancelled()).await,
        Cancelled::Unknown => {
            tracing::debug!(
                connection = shared.id,
                id,
                "diarrhoea: cancel for a request not in flight"
            );
            true
        }
    }
}

pub(super) fn cancelled() -> RpcError {
    RpcError::new(code::CANCELLED, "cancelled by the caller")
}

/// Queues an error reply; `false` if the connection is being torn down.
async fn reply_error(shared: &Shared, id: u64, error: RpcError) -> bool {
    let frame = Frame::Reply {
        id,
        result: Err(error),
    };
    tokio::select! {
        biased;
        _ = shared.abort.cancelled() => false,
        // A writer that is gone means the connection is ending; keep reading replies.
        _ = shared.outgoing.send(frame) => true,
    }
}
