//! [`Ws`]: an axum route that upgrades to a WebSocket and runs a whole connection over it.
//!
//! ```text
//! GET /ws (upgrade) -> [host server's layers] -> Ws -> WebSocket -> WsTransport -> connection
//! ```

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use tokio::sync::Semaphore;

use super::socket::WsTransport;
use crate::connection::{launch, BoundService, Config, Parent};
use crate::error::{code, RpcError};
use crate::peer::{HttpPeer, Identity};
use crate::server::MakeConnectionService;

/// A WebSocket endpoint: each upgraded request becomes one [`Connection`](crate::Connection),
/// served by a service from `make`, exactly as [`serve`](crate::serve) serves a socket.
///
/// Made by [`ws`]; mount it with [`Ws::route`] on any path of an axum app.
///
/// A WebSocket has no half-close: a peer that ends its side (a close frame) is answered with
/// one at once, so replies to its calls still running here are not delivered (those calls
/// fail on the peer's side as closed). Peers should wait for their calls before ending.
pub struct Ws<M, Marker> {
    /// Shared by the route's clones: axum clones a handler per request.
    make: Arc<Mutex<M>>,
    config: Config,
    /// Open WebSocket connections, at most this many: `None` for no limit.
    slots: Option<Arc<Semaphore>>,
    /// Every connection this endpoint started, for [`Ws::shutdown`].
    connections: Arc<Parent>,
    _marker: PhantomData<fn() -> Marker>,
}

impl<M, Marker> Clone for Ws<M, Marker> {
    fn clone(&self) -> Self {
        Ws {
            make: self.make.clone(),
            config: self.config.clone(),
            slots: self.slots.clone(),
            connections: self.connections.clone(),
            _marker: PhantomData,
        }
    }
}

impl<M, Marker> std::fmt::Debug for Ws<M, Marker> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ws")
            .field("config", &self.config)
            .field(
                "free_connection_slots",
                &self.slots.as_ref().map(|s| s.available_permits()),
            )
            .finish_non_exhaustive()
    }
}

/// A WebSocket endpoint serving connections with a service from `make`: a cloneable service
/// (a [`Router`](crate::Router), perhaps in layers), or a factory
/// `|conn: &Connection| -> S` that sees each new connection first, as [`serve`](crate::serve)
/// takes.
///
/// ```no_run
/// # async fn f() -> std::io::Result<()> {
/// use std::net::SocketAddr;
/// let router = diarrhoea::Router::new().route("add", |a: i64, b: i64| async move { a + b });
/// let app = axum::Router::new().route("/ws", diarrhoea::http::ws(router).route());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
/// # }
/// ```
pub fn ws<M, Marker>(make: M) -> Ws<M, Marker>
where
    M: MakeConnectionService<Marker>,
    Marker: 'static,
{
    Ws {
        make: Arc::new(Mutex::new(make)),
        config: Config::default(),
        slots: Some(Arc::new(Semaphore::new(crate::DEFAULT_MAX_CONNECTIONS))),
        connections: Arc::new(Parent::standalone()),
        _marker: PhantomData,
    }
}

impl<M, Marker> Ws<M, Marker>
where
    M: MakeConnectionService<Marker>,
    Marker: 'static,
{
    /// Each connection's limits, as on a socket. The WebSocket refuses a message longer than
    /// twice [`Config::max_frame_size`] (room for a message of several lines) by closing with
    /// 1009 "message too big", since a message is buffered whole; a line longer than the
    /// maximum in a message within that is dropped with an error event, as on a socket.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// At most `n` WebSocket connections open at once (default
    /// [`DEFAULT_MAX_CONNECTIONS`](crate::DEFAULT_MAX_CONNECTIONS)); over it, the upgrade is
    /// answered 503 with a -32002 body.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.slots = Some(Arc::new(Semaphore::new(n)));
        self
    }

    /// The axum route: `GET` upgrades to a WebSocket and serves a connection over it. Mount
    /// it on any path: `axum::Router::new().route("/ws", ws(router).route())`.
    pub fn route<S>(self) -> MethodRouter<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        axum::routing::get(move |req: axum::extract::Request| self.clone().upgrade(req))
    }

    /// Shuts every connection of this endpoint down gracefully, as
    /// [`serve`](crate::serve)'s graceful shutdown does: new upgrades are refused (503,
    /// -32004), each connection refuses new calls with -32004 and finishes those in flight,
    /// and after `timeout` the rest are closed. Completes once all are closed.
    ///
    /// axum's own graceful shutdown does not wait for upgraded connections: call this after
    /// it, on a clone of the endpoint kept for the purpose.
    ///
    /// ```no_run
    /// # async fn f(listener: tokio::net::TcpListener, router: diarrhoea::Router) -> std::io::Result<()> {
    /// let endpoint = diarrhoea::http::ws(router);
    /// let app = axum::Router::new().route("/ws", endpoint.clone().route());
    /// axum::serve(listener, app)
    ///     .with_graceful_shutdown(diarrhoea::shutdown_signal())
    ///     .await?;
    /// endpoint.shutdown(diarrhoea::DEFAULT_SHUTDOWN_TIMEOUT).await;
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self, timeout: Duration) {
        self.connections.drain(timeout, "WebSocket").await;
    }

    /// Answers the upgrade, then runs the connection in tasks of its own.
    async fn upgrade(self, req: axum::extract::Request) -> Response {
        let (mut parts, _body) = req.into_parts();
        let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => upgrade,
            Err(rejection) => return rejection.into_response(),
        };
        if self.connections.draining.is_cancelled() {
            let closing = RpcError::new(code::SHUTTING_DOWN, "shutting down");
            return super::error_response(StatusCode::SERVICE_UNAVAILABLE, &closing);
        }
        let slot = match &self.slots {
            None => None,
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    let limit = RpcError::new(
                        code::OVERLOADED,
                        "overloaded: WebSocket connection limit reached",
                    );
                    return super::error_response(StatusCode::SERVICE_UNAVAILABLE, &limit);
                }
            },
        };
        // What the host server's layers put in the request (the upgrade itself is taken out
        // already), and its address.
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0);
        let identity = Identity::Http(HttpPeer::new(addr, parts.extensions));
        let limit = message_limit(&self.config);
        let Ws {
            make,
            config,
            connections,
            ..
        } = self;
        upgrade
            .max_message_size(limit)
            .max_frame_size(limit)
            .on_upgrade(move |socket| async move {
                let transport = WsTransport::new(socket, identity);
                launch(transport, config, &connections, slot, |conn| {
                    let mut make = make.lock().unwrap_or_else(|p| p.into_inner());
                    BoundService::new(make.make_service(conn))
                });
            })
    }
}

/// The largest WebSocket message (and frame) taken: twice the maximum frame size, so a
/// message of several lines fits, with room for the terminators.
pub(crate) fn message_limit(config: &Config) -> usize {
    config.max_frame_size.saturating_mul(2).saturating_add(2)
}
