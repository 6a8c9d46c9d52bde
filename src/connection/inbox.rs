//! The inbox: the request policy, in one place. Every call the reader decodes comes here,
//! and either is answered at once or goes to the dispatcher with its share of the inbound
//! buffer.
//!
//! - `["$/cancel",[id]]` takes effect here, ahead of queued work.
//! - Streams: `["$/credit",[id,n]]` adds to the credit of the peer's stream `id`; an item of
//!   this side's stream, `["$/item",[id,item]]`, goes to the pending table as a reply does.
//! - Other `$/` methods are reserved: -32601 (requests) or a warning (notifications).
//! - A request whose id is in flight already gets -32600.
//! - A request's deadline is the earlier of `Config::request_timeout` and the peer's
//!   `meta.timeout_ms`, counted from now (when its frame was read).
//! - While the connection drains, calls are refused with the farewell error.
//! - A call waits for room in the inbound buffer (backpressure on the reader).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::budget::{Budget, Share};
use super::inbound_queue;
use super::incoming_calls::{Cancelled, Granted};
use super::outgoing_calls::ItemDelivery;
use super::{Shared, CANCEL_METHOD};
use crate::args::Args;
use crate::error::{code, Error, RpcError};
use crate::frame::{Frame, CREDIT_METHOD, ITEM_METHOD};
use crate::request::{Deadline, Request};
use crate::router::METHODS_METHOD;

/// A frame's cost in the inbound buffer beyond its payload, for the request's own fields.
const FRAME_OVERHEAD: usize = 128;

/// What a call needs beyond [`Inbox::try_submit`].
pub(super) enum Later {
    /// `["$/cancel",[id]]`, handled ahead of queued work.
    Cancel(Request),
    /// Refused (a reserved method, or the connection drains): an error reply for a request,
    /// an event for a notification.
    Refuse(Option<u64>, RpcError),
    /// An error reply to this request id (a duplicate).
    Reply(u64, RpcError),
    /// Waits for this much room in the inbound buffer.
    Room(Request, usize),
}

pub(super) struct Inbox {
    /// `None` once the connection drains: calls are refused with `refusal`.
    dispatcher: Option<inbound_queue::Sender>,
    refusal: Option<RpcError>,
    budget: Arc<Budget>,
    shared: Arc<Shared>,
}

impl Inbox {
    pub(super) fn new(
        dispatcher: inbound_queue::Sender,
        budget: Arc<Budget>,
        shared: Arc<Shared>,
    ) -> Self {
        Inbox {
            dispatcher: Some(dispatcher),
            refusal: None,
            budget,
            shared,
        }
    }

    pub(super) fn is_open(&self) -> bool {
        self.dispatcher.is_some()
    }

    /// The peer went quiet: keep no memory for calls that are not there.
    pub(super) fn release_memory(&self) {
        if let Some(dispatcher) = &self.dispatcher {
            dispatcher.release_memory();
        }
    }

    /// Stops dispatching: from now on, calls are refused with `why`.
    pub(super) fn close(&mut self, why: RpcError) {
        self.dispatcher = None;
        self.refusal = Some(why);
    }

    /// Takes one call if that needs no wait, as most do: `Ok(false)` when the connection is
    /// going away, and what is left to do ([`Inbox::finish`]) when the call must wait for
    /// room or be answered here. Not `async`, so the common path builds no future.
    // `Later` holds the request: boxing it would cost an allocation where a call waits.
    #[allow(clippy::result_large_err)]
    pub(super) fn try_submit(&mut self, call: Frame) -> Result<bool, Later> {
        let shared = &self.shared;
        let call = match call {
            // A stream's frames take effect here, at once, whatever waits to be dispatched.
            Frame::Notification { method, args } if method.starts_with("$/") => match &*method {
                ITEM_METHOD => return Ok(self.item(args)),
                CREDIT_METHOD => return Ok(self.credit(&args)),
                _ => Frame::Notification { method, args },
            },
            call => call,
        };
        let cost = (call.payload_len() + FRAME_OVERHEAD).min(shared.config.inbound_buffer);
        let Some(mut req) = Request::incoming(call, shared.clone()) else {
            return Ok(true);
        };
        if req.method() == CANCEL_METHOD && !req.is_call() {
            return Err(Later::Cancel(req));
        }
        let refusal = if let Some(why) = &self.refusal {
            Some(why.clone())
        } else if req.method().starts_with("$/")
            && !(req.method() == METHODS_METHOD && req.is_call())
        {
            // Reserved for the protocol; never routed to user handlers or the fallback. A
            // `$/methods` call goes to the service: a Router answers it.
            Some(RpcError::method_not_found(req.method()))
        } else {
            None
        };
        if let Some(error) = refusal {
            return Err(Later::Refuse(req.id(), error));
        }
        if let Some(id) = req.id() {
            if !shared.in_flight.insert(id, req.meta().stream) {
                let dup = RpcError::invalid_frame(format!(
                    "duplicate id {id}: a request with this id is in flight"
                ));
                shared.error(Error::protocol(dup.clone()));
                return Err(Later::Reply(id, dup));
            }
            if let Some(timeout) = deadline_of(shared.config.request_timeout, &req) {
                // Counted from now, before any wait for the inbound budget.
                req.set_deadline(Deadline(Instant::now() + timeout));
            }
        }
        // Under load the budget usually has room: take it without building a wait.
        match self.budget.try_take(cost) {
            Some(permit) => Ok(self.dispatch(req, permit)),
            None => Err(Later::Room(req, cost)),
        }
    }

    /// Does what [`Inbox::try_submit`] left; `false` when the connection is going away. The
    /// answers given here are boxed: they are rare, and kept out of this future, whose size
    /// is part of every connection's memory.
    pub(super) async fn finish(&mut self, later: Later) -> bool {
        match later {
            Later::Cancel(req) => Box::pin(self.cancel(&req)).await,
            Later::Refuse(id, error) => Box::pin(self.refuse(id, error)).await,
            Later::Reply(id, error) => Box::pin(self.reply_error(id, error)).await,
            Later::Room(req, cost) => {
                let permit = tokio::select! {
                    biased;
                    _ = self.shared.lifecycle.aborted() => return false,
                    permit = self.budget.take(cost) => permit,
                };
                self.dispatch(req, permit)
            }
        }
    }

    /// Hands a call to the dispatcher, which only goes away when the connection does.
    fn dispatch(&self, req: Request, permit: Share) -> bool {
        self.dispatcher
            .as_ref()
            .is_some_and(|tx| tx.send((req, permit)))
    }

    /// Answers a call that will not be dispatched: an error reply, or an event for a
    /// notification.
    async fn refuse(&self, id: Option<u64>, error: RpcError) -> bool {
        match id {
            Some(id) => self.reply_error(id, error).await,
            None if error.code == code::METHOD_NOT_FOUND => {
                self.shared.warning(Error::protocol(error));
                true
            }
            None => {
                self.shared
                    .error(Error::protocol(error).with_context("notification dropped"));
                true
            }
        }
    }

    /// `["$/cancel",[id]]`: handled here, ahead of queued work, so it takes effect at once.
    async fn cancel(&self, req: &Request) -> bool {
        let shared = &self.shared;
        let Ok((id,)) = req.args().deserialize::<(u64,)>() else {
            shared.warning(Error::protocol(RpcError::invalid_params(
                "$/cancel takes one request id",
            )));
            return true;
        };
        match shared.in_flight.cancel(id) {
            Cancelled::Queued | Cancelled::Running => self.reply_error(id, cancelled()).await,
            Cancelled::Unknown => {
                tracing::debug!(
                    connection = shared.id(),
                    id,
                    "diarrhoea: cancel for a request not in flight"
                );
                true
            }
        }
    }

    /// `["$/item",[id,item]]`: an item of one of this side's streams.
    fn item(&self, args: Args) -> bool {
        let shared = &self.shared;
        let Some(id) = item_id(args.get().as_bytes()) else {
            shared.warning(Error::protocol(RpcError::invalid_params(
                "$/item takes a stream id and an item",
            )));
            return true;
        };
        let ignored = match shared.pending.item(id, args) {
            ItemDelivery::Delivered | ItemDelivery::Late => return true,
            ItemDelivery::Unknown => format!("item for unknown stream id {id} ignored"),
            ItemDelivery::NotStream => {
                format!("item for call {id}, which is not an open stream, ignored")
            }
            ItemDelivery::Overrun => {
                shared.error(Error::protocol(RpcError::invalid_frame(format!(
                    "stream {id}: more items than the credit granted; the stream is cancelled"
                ))));
                shared.cancel_call(id);
                return true;
            }
        };
        shared.warning(Error::protocol(RpcError::invalid_frame(ignored)));
        true
    }

    /// `["$/credit",[id,n]]`: the peer grants its stream `id` `n` more items.
    fn credit(&self, args: &Args) -> bool {
        let shared = &self.shared;
        let Ok((id, n)) = args.deserialize::<(u64, u64)>() else {
            shared.warning(Error::protocol(RpcError::invalid_params(
                "$/credit takes a stream id and a count (an unsigned integer)",
            )));
            return true;
        };
        match shared.in_flight.grant(id, n) {
            Granted::Stream => {}
            Granted::NotStream | Granted::Unknown => tracing::debug!(
                connection = shared.id(),
                id,
                "diarrhoea: credit for a request that is not an open stream"
            ),
        }
        true
    }

    /// Queues an error reply; `false` if the connection is being torn down.
    pub(super) async fn reply_error(&self, id: u64, error: RpcError) -> bool {
        let frame = Frame::Reply {
            id,
            result: Err(error),
        };
        tokio::select! {
            biased;
            _ = self.shared.lifecycle.aborted() => false,
            // A writer that is gone means the connection is ending; keep reading replies.
            _ = self.shared.outgoing.send(frame) => true,
        }
    }
}

/// How long a request may take: the earlier of this side's limit and the peer's.
fn deadline_of(local: Option<Duration>, req: &Request) -> Option<Duration> {
    let remote = req.meta().timeout_ms.map(Duration::from_millis);
    match (local, remote) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The stream id of a `$/item`'s arguments, `[id,item]`: read directly in the usual form
/// (`[` and digits), else by serde_json. The item is read by its consumer.
fn item_id(args: &[u8]) -> Option<u64> {
    let digits = args.get(1..)?;
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if (1..=15).contains(&len) && digits.get(len) == Some(&b',') && (digits[0] != b'0' || len == 1)
    {
        return Some(
            digits[..len]
                .iter()
                .fold(0, |id, d| id * 10 + u64::from(d - b'0')),
        );
    }
    let (id, _): (u64, serde::de::IgnoredAny) = serde_json::from_slice(args).ok()?;
    (id <= crate::frame::MAX_ID).then_some(id)
}

fn cancelled() -> RpcError {
    RpcError::new(code::CANCELLED, "cancelled by the caller")
}
