//! [`Connection`]: the handle to one connection, on either side.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::{deadline, BoundService, Caller, Events, Poster, Shared};
use crate::error::{BoxError, Error, Kind, RpcError};
use crate::frame::{encode_call, Meta};
use crate::handler::FromContext;
use crate::peer::PeerInfo;
use crate::request::Request;
use crate::response::Response;

/// Handle to one connection: post notifications, make calls, serve the peer's calls, watch
/// events. The same type on both sides: a client gets one from
/// [`Connection::connect`] (or any [`Builder`](super::Builder) method), a server's
/// per-connection factory gets one for each peer, and a handler can take one as a context
/// parameter to talk back to the peer.
///
/// Cheap to clone; every clone drives the same connection. Dropping handles does not close
/// the connection (a server keeps serving it): call [`end`](Connection::end) or
/// [`close`](Connection::close).
#[derive(Clone)]
pub struct Connection {
    pub(super) shared: Arc<Shared>,
}

impl Connection {
    /// A process-unique id for this connection, as used in logs.
    pub fn id(&self) -> u64 {
        self.shared.id()
    }

    /// The connection id and what the transport knows of the peer.
    pub fn peer(&self) -> &PeerInfo {
        &self.shared.peer
    }

    /// Sends a notification `["method",[args...]]`; no reply comes back.
    ///
    /// `args` must serialize to a JSON array: a tuple such as `(x, time)`, `(x,)` for one
    /// argument, or `()` for none. Waits while the outgoing queue is full.
    pub async fn post_message(&self, method: &str, args: impl Serialize) -> Result<(), Error> {
        let notification = self.notification(method, args)?;
        self.shared.outgoing.send_with(notification).await
    }

    /// As [`post_message`](Connection::post_message), without waiting: fails with
    /// [`Error::is_overloaded`] when the outgoing queue is full. For code that cannot await,
    /// such as a server's per-connection factory greeting a new peer before anything is read
    /// from it.
    pub fn try_post_message(&self, method: &str, args: impl Serialize) -> Result<(), Error> {
        let notification = self.notification(method, args)?;
        self.shared.outgoing.try_send_with(notification)
    }

    /// What encodes the notification into the outgoing buffer (it owns `args`, so a future
    /// that holds it needs only `args: Send`).
    fn notification<'a, T: Serialize + 'a>(
        &'a self,
        method: &'a str,
        args: T,
    ) -> Result<impl FnOnce(&mut BytesMut) -> Result<(), Error> + 'a, Error> {
        if self.shared.lifecycle.is_ending() {
            return Err(Error::closed());
        }
        Ok(move |buf: &mut BytesMut| {
            self.shared.checked(buf, |buf| {
                encode_call(buf, method, &args, None, &Meta::default())
            })
        })
    }

    /// Calls `method` on the peer and waits for its reply.
    ///
    /// Fails with [`Error::is_remote`] when the peer answers with an error reply, and with
    /// [`Error::is_closed`] when the connection closes first. Made while serving a request
    /// that has a deadline, the call inherits what is left of it (the peer is told, as
    /// `meta.timeout_ms`) and fails with [`Error::is_timeout`] when it passes.
    pub async fn call<R: DeserializeOwned>(
        &self,
        method: &str,
        args: impl Serialize,
    ) -> Result<R, Error> {
        self.call_within(method, args, None).await
    }

    /// As [`call`](Connection::call), with a deadline: the peer is told `timeout_ms`, and the
    /// call fails with [`Error::is_timeout`] when it passes (the peer is then sent
    /// `$/cancel`). An inherited deadline that is earlier still wins.
    pub async fn call_with_timeout<R: DeserializeOwned>(
        &self,
        method: &str,
        args: impl Serialize,
        timeout: Duration,
    ) -> Result<R, Error> {
        self.call_within(method, args, Some(timeout)).await
    }

    async fn call_within<R: DeserializeOwned>(
        &self,
        method: &str,
        args: impl Serialize,
        explicit: Option<Duration>,
    ) -> Result<R, Error> {
        let timeout = deadline::effective(explicit);
        let meta = Meta {
            timeout_ms: timeout.map(deadline::to_millis),
            ..Meta::default()
        };
        let (id, reply) = self.shared.start_call(timeout)?;
        let send = self.shared.outgoing.send_with(move |buf| {
            self.shared
                .checked(buf, |buf| encode_call(buf, method, &args, Some(id), &meta))
        });
        let sent = match timeout {
            None => send.await,
            Some(timeout) => tokio::select! {
                sent = send => sent,
                _ = tokio::time::sleep(timeout) => Err(Error::new(Kind::Timeout)),
            },
        };
        // A frame never queued (no room before the deadline, too large, the connection
        // ended) needs no `$/cancel`.
        if let Err(e) = sent {
            reply.unsent();
            return Err(e);
        }
        let mut reply = reply;
        // Read where it arrived: the reply is dropped once deserialized.
        std::future::poll_fn(|cx| reply.poll_wire(cx))
            .await?
            .deserialize()
    }

    /// Closes with a reason: new calls are refused with `error`, calls in flight are answered,
    /// then a connection error `[null,null,{code,message}]` carrying `error` is sent and the
    /// connection [`end`](Connection::end)s. How a server tells a peer why it is refused.
    pub fn close_with_error(&self, error: RpcError) {
        self.shared.set_farewell(error);
        self.shared.lifecycle.drain();
    }

    /// Outgoing calls as a [`tower::Service`], to wrap in `Timeout`, `ConcurrencyLimit`,
    /// `RateLimit`, `Buffer` and the like.
    pub fn caller(&self) -> Caller {
        Caller::new(self.shared.clone())
    }

    /// Outgoing notifications as a [`tower::Service`], to wrap in tower layers; for one
    /// notification, [`post_message`](Connection::post_message).
    pub fn poster(&self) -> Poster {
        Poster::new(self.shared.clone())
    }

    /// Replaces the service that handles the peer's calls, from the next frame on.
    ///
    /// ```no_run
    /// # async fn f(conn: diarrhoea::Connection) {
    /// conn.set_service(diarrhoea::Router::new().route("hello", |name: String| async move {
    ///     format!("hello, {name}")
    /// }));
    /// # }
    /// ```
    pub fn set_service<S>(&self, service: S)
    where
        S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.shared.binding.send_replace(BoundService::new(service));
    }

    /// Subscribes to this connection's events from now on.
    pub fn events(&self) -> Events {
        Events(self.shared.subscribe())
    }

    /// Finishes sending: queued frames are written, then the write side is shut down.
    /// Incoming calls already received are still answered, until the peer closes its side.
    pub fn end(&self) {
        self.shared.lifecycle.end();
    }

    /// Closes at once: pending calls fail, running handlers are dropped.
    pub fn close(&self) {
        self.shared.lifecycle.abort();
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.shared.lifecycle.is_closed()
    }

    /// Waits until the connection has closed.
    pub async fn closed(&self) {
        self.shared.lifecycle.closed().await
    }

    /// How many of this side's calls are waiting for a reply.
    pub fn pending_calls(&self) -> usize {
        self.shared.pending.len()
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Request {
    /// The connection an incoming request arrived on: a handle to answer or call the peer.
    pub fn connection(&self) -> Option<Connection> {
        let shared = self
            .origin()?
            .clone()
            .into_any()
            .downcast::<Shared>()
            .ok()?;
        Some(Connection { shared })
    }
}

/// The connection the request came on, to post to or call the peer.
impl FromContext for Connection {
    fn from_request(req: &mut Request) -> Result<Self, RpcError> {
        req.connection().ok_or_else(|| {
            RpcError::internal("handler needs a Connection but the request has none")
        })
    }
}

/// The token cancelled when the peer sends `$/cancel` for this request, for handlers that
/// want to stop cooperatively (the handler's future is dropped either way). Never cancelled
/// for notifications.
impl FromContext for CancellationToken {
    fn from_request(req: &mut Request) -> Result<Self, RpcError> {
        Ok(match (req.connection(), req.id()) {
            (Some(conn), Some(id)) => conn.shared.in_flight.token(id),
            _ => CancellationToken::new(),
        })
    }
}
