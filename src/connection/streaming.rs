//! The peer's stream calls running here: a handler's [`StreamReply`](crate::StreamReply)
//! becomes `["$/item",[id,item]]` notifications, each within the caller's credit, then the
//! call's one ordinary reply.
//!
//! A stream runs in its request's task, so what stops a request stops it too, at once: a
//! `$/cancel` aborts the task (and closes the credit), the deadline covers the whole stream,
//! and the connection's teardown drops it. The stream is polled only while credit is left,
//! and its items take at most half the outgoing queue (`Outbox::send_item`), so replies on
//! the same connection are never stuck behind them.

use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use super::credit::Credit;
use super::Shared;
use crate::error::{code, Error, Kind, RpcError};
use crate::frame::encode_item;
use crate::response::{Response, StreamBody};

/// What a finished request answers.
pub(super) enum Answer {
    /// Its one reply.
    Reply(Result<Response, RpcError>),
    /// A stream of items to run first; its end is the reply.
    Stream(Running),
}

/// A stream about to run, with what it needs.
pub(super) struct Running {
    body: StreamBody,
    credit: Arc<Credit>,
    /// Holds its place among the connection's open streams.
    _open: OpenStream,
}

/// The count of a connection's open streams, against `Config::max_streams`.
#[derive(Default)]
pub(super) struct OpenStreams(AtomicUsize);

/// One place among the open streams, given back on drop.
struct OpenStream(Arc<Shared>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open_streams.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Answer {
    /// What a request whose handler finished with `outcome` answers: its reply, or a stream
    /// to run. A stream the caller did not ask for (no `meta.stream`), or one over the
    /// connection's limit, is answered with an error reply instead.
    pub(super) fn of(shared: &Arc<Shared>, id: u64, outcome: Result<Response, RpcError>) -> Self {
        let response = match outcome {
            Ok(response) if response.is_stream() => response,
            other => return Answer::Reply(other),
        };
        let body =
            match response.into_stream() {
                Ok(Some(body)) => body,
                Ok(None) => return Answer::Reply(Err(RpcError::internal(
                    "the stream of this reply was run already (a clone of it was answered first)",
                ))),
                Err(response) => return Answer::Reply(Ok(response)),
            };
        let Some(credit) = shared.in_flight.credit(id) else {
            return Answer::Reply(Err(not_asked()));
        };
        let max = shared.config.max_streams;
        let open = &shared.open_streams.0;
        if open.fetch_add(1, Ordering::AcqRel) >= max {
            open.fetch_sub(1, Ordering::AcqRel);
            let refused = RpcError::new(
                code::OVERLOADED,
                format!("overloaded: {max} streams are open on this connection"),
            )
            .with_data(serde_json::json!({ "limit": "max_streams" }));
            return Answer::Reply(Err(refused));
        }
        Answer::Stream(Running {
            body,
            credit,
            _open: OpenStream(shared.clone()),
        })
    }
}

/// The error reply to a plain call of a method that streams.
pub(crate) fn not_asked() -> RpcError {
    RpcError::invalid_frame(
        "this method answers with a stream: call it with meta.stream, the initial credit",
    )
}

/// Sends the stream's items as credit allows; returns the call's reply: the trailer, or the
/// error the stream ends with.
pub(super) async fn run(shared: &Shared, id: u64, running: Running) -> Result<Response, RpcError> {
    let Running {
        mut body, credit, ..
    } = running;
    loop {
        if credit.available().await.is_err() {
            // Cancelled (already answered), or the caller's side ended and can grant no more.
            return Err(RpcError::new(
                code::CANCELLED,
                "stream stopped: the caller's side ended, and its credit is spent",
            ));
        }
        // A panicking stream ends with -32603, as a panicking handler does.
        let next = poll_fn(|cx| {
            let items = &mut body.items;
            std::panic::catch_unwind(AssertUnwindSafe(|| items.as_mut().poll_item(cx)))
                .unwrap_or_else(|_| Poll::Ready(Some(Err(RpcError::internal("stream panicked")))))
        });
        match next.await {
            None => break,
            Some(Err(error)) => return Err(error),
            Some(Ok(())) => {}
        }
        let items = &mut body.items;
        let mut failed = None;
        let sent = shared
            .outgoing
            .send_item(|buf| {
                let start = buf.len();
                let write = |buf: &mut _| {
                    std::panic::catch_unwind(AssertUnwindSafe(|| items.as_mut().write_item(buf)))
                        .unwrap_or_else(|_| Err(RpcError::internal("item serialization panicked")))
                };
                encode_item(buf, id, write).map_err(|error| {
                    failed = Some(error);
                    Error::new(Kind::Encode)
                })?;
                shared.check_line(&buf[start..]).inspect_err(|too_large| {
                    failed = Some(RpcError::new(
                        code::FRAME_TOO_LARGE,
                        format!("stream item {too_large}"),
                    ));
                })
            })
            .await;
        if let Err(error) = sent {
            // Not sent: the item's own fault ends the stream with it; a connection that is
            // ending takes no reply either.
            return Err(failed.unwrap_or_else(|| RpcError::internal(error)));
        }
        credit.spend();
        // A stream with credit and items always ready never waits: give the other tasks of
        // this thread their turn.
        tokio::task::consume_budget().await;
    }
    body.into_trailer()
}
