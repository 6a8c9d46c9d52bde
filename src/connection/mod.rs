//! One connection, the same machinery on both sides of the stream.
//!
//! ```text
//! read half -> reader (read_buf, codec) -+-> reply -> outgoing_calls -> the caller's future
//!                                        +-> call  -> inbox (policy) -> inbound_queue -> dispatch -> bound_service
//! handler result / post_message / call -> outbox (bounded) -> writer -> write half
//! ```
//!
//! Each file is named for what it holds, in the order of the flow:
//!
//! | file | holds |
//! | --- | --- |
//! | `builder` | [`Builder`]: a stream and a service become a connection; `Connection::connect` and the other shortcuts |
//! | `driver` | the tasks that run a built connection, and what they inherit from a server |
//! | `connection` | [`Connection`], the handle: post, call, serve, close |
//! | `caller`, `poster` | [`Caller`] and [`Poster`], outgoing calls and notifications as tower services; [`ResponseFuture`] |
//! | `config`, `events`, `lifecycle` | the limits; what is reported; the stages of a connection |
//! | `reader`, `read_buf` | bytes to frames, replies to `outgoing_calls`, calls to the inbox; the chunks read into |
//! | `inbox` | the request policy: `$/cancel`, reserved names, duplicate ids, deadlines, budget |
//! | `inbound_queue` | the calls waiting for the dispatcher, in wire order |
//! | `budget` | the counted limits the reader and the dispatcher wait on |
//! | `dispatch`, `bound_service` | runs calls through the service bound to the connection |
//! | `deadline` | the deadline of the request being served, inherited by calls made meanwhile |
//! | `outgoing_calls`, `incoming_calls` | this side's calls waiting for replies; the peer's requests running here |
//! | `call_stream`, `streaming`, `credit` | this side's stream calls ([`CallStream`]); the peer's streams running here, paced by their credit |
//! | `outbox`, `writer` | the bounded outgoing queue; the one task that writes |
//!
//! The reader never waits on inbound work while it still has room in the inbound buffer, so
//! replies to this side's calls get through even while the peer floods.
//!
//! # Ordering and flow control
//!
//! Per connection, notifications are handled in wire order among themselves: each handler's
//! future completes before the next notification's starts. Requests are dispatched in wire
//! order and run concurrently, up to [`Config::max_concurrent_requests`], and are never held
//! behind a running notification: a notification handler that calls its peer, which calls
//! back before answering, completes. (A request that arrives after a notification may
//! therefore run before that notification has finished.)
//!
//! Replies to this side's own calls go straight from the reader to the waiting caller and
//! never queue behind inbound work, as long as the inbound buffer
//! ([`Config::inbound_buffer`]) has room; when it is full, the reader stops reading
//! (backpressure). A request or notification keeps its share of that buffer until it is
//! done, so slow handlers hold the reader back instead of letting work pile up. Outgoing
//! frames wait in a queue bounded in frames and bytes ([`Config::outgoing_queue`],
//! [`Config::outgoing_buffer`]), so [`Connection::post_message`], [`Connection::call`], and
//! the `poll_ready` of [`Caller`] and [`Poster`] wait while the peer does not read.
//!
//! # Deadlines
//!
//! An incoming request's deadline is the earlier of [`Config::request_timeout`] and the
//! peer's `meta.timeout_ms`, counted from when its frame was read, so time spent waiting for
//! a permit or for the service to be ready counts; past it, the request is answered -32001
//! and its handler dropped.
//!
//! Deadlines propagate, as tarpc's context does: a call made while serving a request (with
//! [`Connection::call`], or a [`Caller`] called from the handler's task) inherits what is left
//! of that request's deadline and tells its peer as `meta.timeout_ms`, so a chain
//! A -> B -> C fails at every hop when A's deadline passes (`tests/engine_v2.rs` runs such a
//! chain over four nodes). An explicit shorter timeout still wins. A call moved to another
//! task (inside a `Buffer`, or a `tokio::spawn`) does not inherit: give it its timeout
//! explicitly.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use diarrhoea::{Connection, Router};
//!
//! # async fn f(c: Connection) -> Result<(), diarrhoea::Error> {
//! // B: answers `lookup` by asking C; that call inherits what is left of the caller's deadline.
//! let router = Router::new().route("lookup", move |key: String| {
//!     let c = c.clone();
//!     async move { c.call::<String>("lookup", (key,)).await }
//! });
//! # let _ = router;
//! // A: gives the whole chain 200 ms. If C is slow, A, B and C all see a timeout.
//! let b = Connection::connect("./b.sock").await?;
//! let value: String = b
//!     .call_with_timeout("lookup", ("key",), Duration::from_millis(200))
//!     .await?;
//! # let _ = value;
//! # Ok(()) }
//! ```
//!
//! # When the peer goes away
//!
//! - Every call waiting for a reply fails with [`Error::is_closed`](crate::Error::is_closed)
//!   as soon as the connection closes: a killed peer's callers are failed at once, not at
//!   their deadline (`tests/processes.rs` kills a server with SIGKILL mid-call).
//! - A peer killed while its calls still run here does not keep them running: after the end
//!   of its stream, the connection checks every 100 ms whether the peer is still there (on
//!   transports that can tell: see [`transport`](crate::transport)) and drops its calls once
//!   it is gone. A peer that only half-closed still gets its replies.
//! - Writing to a peer that went away is an error, never the death of the process: the first
//!   connection installs a SIGPIPE handler (`tests/processes.rs` runs a client and a server
//!   with SIGPIPE at its default and sees their writes fail with `EPIPE`).

mod arrived_fds;
mod bound_service;
mod budget;
mod builder;
mod call_stream;
mod caller;
mod config;
// Private, and re-exported: users only ever see `connection::Connection`.
#[allow(clippy::module_inception)]
mod connection;
mod credit;
mod deadline;
mod dispatch;
mod driver;
mod events;
mod inbound_queue;
mod inbox;
mod incoming_calls;
mod lifecycle;
mod outbox;
mod outgoing_calls;
mod poster;
mod read_buf;
mod reader;
mod streaming;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use tokio::sync::{broadcast, watch};

use crate::error::{code, Error, RpcError};
use crate::frame::{Frame, MAX_ID};
use crate::peer::PeerInfo;

pub(crate) use bound_service::BoundService;
pub use builder::{serve_connection, serve_stdio, Builder};
pub use call_stream::CallStream;
pub use caller::{Caller, ResponseFuture};
pub use config::Config;
pub use connection::Connection;
pub(crate) use driver::{launch, Parent};
pub use events::{Event, Events};
pub use poster::Poster;
#[cfg(feature = "axum")]
pub(crate) use streaming::not_asked;

use incoming_calls::InFlight;
use lifecycle::Lifecycle;
use outbox::Outbox;
use outgoing_calls::Pending;
use streaming::OpenStreams;

/// The protocol's cancellation notification: `["$/cancel",[id]]`.
const CANCEL_METHOD: &str = "$/cancel";

/// State shared by a connection's tasks and every [`Connection`] handle.
pub(crate) struct Shared {
    config: Config,
    peer: PeerInfo,
    /// Frames for the writer, encoded into its buffer; bounded, so senders feel backpressure.
    outgoing: Outbox,
    /// This side's calls waiting for replies.
    pending: Pending,
    next_call_id: AtomicU64,
    /// The peer's requests in flight here, to refuse a duplicate id and to cancel.
    in_flight: InFlight,
    /// The peer's streams running here, against `Config::max_streams`.
    open_streams: OpenStreams,
    /// Made by the first subscriber: most connections have none, and the channel's ring of
    /// 256 events is most of an idle connection's memory.
    events: OnceLock<broadcast::Sender<Event>>,
    /// Replaces the bound service (`Connection::set_service`).
    binding: watch::Sender<BoundService>,
    lifecycle: Lifecycle,
    /// The goodbye: `close_with_error`'s error, else -32004 "shutting down".
    farewell: std::sync::Mutex<Option<RpcError>>,
}

impl Shared {
    fn new(
        config: Config,
        peer: PeerInfo,
        service: BoundService,
        parent: &Parent,
        fd_limit: Option<usize>,
    ) -> (Arc<Self>, outbox::Receiver, watch::Receiver<BoundService>) {
        let (outgoing, outgoing_rx) =
            Outbox::with_fd_limit(config.outgoing_queue, config.outgoing_buffer, fd_limit);
        let (binding, binding_rx) = watch::channel(service);
        let shared = Arc::new(Shared {
            outgoing,
            pending: Pending::default(),
            in_flight: InFlight::default(),
            open_streams: OpenStreams::default(),
            next_call_id: AtomicU64::new(0),
            events: OnceLock::new(),
            binding,
            lifecycle: Lifecycle::new(parent),
            farewell: std::sync::Mutex::new(None),
            peer,
            config,
        });
        (shared, outgoing_rx, binding_rx)
    }

    fn id(&self) -> u64 {
        self.peer.connection_id
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events
            .get_or_init(|| broadcast::channel(256).0)
            .subscribe()
    }

    fn emit(&self, event: Event) {
        let id = self.id();
        match &event {
            Event::Error(e) => {
                tracing::warn!(connection = id, error = %ErrorChain(e), "diarrhoea: error")
            }
            Event::Warning(e) => {
                tracing::warn!(connection = id, warning = %ErrorChain(e), "diarrhoea: ignored")
            }
            Event::End => tracing::debug!(connection = id, "diarrhoea: peer ended"),
            Event::Close => tracing::debug!(connection = id, "diarrhoea: closed"),
            Event::Lagged(_) => {}
        }
        // No subscriber is fine: the event is logged above.
        if let Some(events) = self.events.get() {
            let _ = events.send(event);
        }
    }

    fn error(&self, error: Error) {
        self.emit(Event::Error(Arc::new(error)));
    }

    fn warning(&self, error: Error) {
        self.emit(Event::Warning(Arc::new(error)));
    }

    /// Why calls are refused while draining.
    fn farewell(&self) -> RpcError {
        let farewell = self
            .farewell
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        farewell.unwrap_or_else(|| RpcError::new(code::SHUTTING_DOWN, "shutting down"))
    }

    fn set_farewell(&self, error: RpcError) {
        *self.farewell.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    }

    /// Refuses frames the peer would discard, before they take a place in the queue.
    fn check_size(&self, frame: &Frame) -> Result<(), Error> {
        self.check_len(frame.payload_len())
    }

    /// As [`Shared::check_size`], for an encoded line.
    #[inline]
    fn check_line(&self, line: &[u8]) -> Result<(), Error> {
        // The terminator does not count, as on the receiving side.
        self.check_len(line.len().saturating_sub(1))
    }

    /// Appends the line `encode` writes to `buf`, refusing one the peer would discard (the
    /// outbox then takes it out again).
    fn checked(
        &self,
        buf: &mut BytesMut,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let start = buf.len();
        encode(buf)?;
        self.check_line(&buf[start..])
    }

    fn check_len(&self, len: usize) -> Result<(), Error> {
        let max = self.config.max_frame_size;
        if len > max {
            let message = format!("frame too large: {len} bytes, the maximum is {max}");
            return Err(Error::protocol(RpcError::new(
                code::FRAME_TOO_LARGE,
                message,
            )));
        }
        Ok(())
    }

    fn next_call_id(&self) -> u64 {
        // Ids wrap below 2^53; an id still in flight after 2^53 calls is not a practical case.
        self.next_call_id.fetch_add(1, Ordering::Relaxed) % MAX_ID + 1
    }
}

impl crate::request::Origin for Shared {
    fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

/// An error with its `source()` chain, for logs: `Error`'s own `Display` names only itself.
struct ErrorChain<'a>(&'a Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = std::error::Error::source(self.0);
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_error_names_its_whole_chain() {
        let inner = std::io::Error::other("disk on fire");
        let error = Error::io(inner).with_context("reading");
        let logged = ErrorChain(&error).to_string();
        assert!(logged.starts_with(&error.to_string()), "{logged}");
        assert!(logged.ends_with(": disk on fire"), "{logged}");
    }
}
