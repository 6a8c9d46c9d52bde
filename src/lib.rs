//! Fast IPC/RPC between processes over Unix domain sockets (or any byte stream), as a
//! [`tower`] middleware stack.
//!
//! `diarrhoea` is the Rust successor of the Node.js library of the same name (1.1.0) and keeps
//! its wire format: one JSON array per line, `["method",[args]]`. A Node peer talks to a Rust
//! peer for notifications in both directions; Rust peers add request/response calls, both ways,
//! on one connection.
//!
//! ```no_run
//! use std::future::IntoFuture;
//!
//! use diarrhoea::{Connection, Router, UnixListener};
//!
//! # async fn f() -> Result<(), diarrhoea::Error> {
//! // Server: bind handlers by method name; positional args deserialize into typed params.
//! let router = Router::new()
//!     .route("ping", |peer: Connection, x: String, time: u64| async move {
//!         peer.post_message("pong", (x, time)).await
//!     })
//!     .route("add", |a: i64, b: i64| async move { a + b });
//! let listener = UnixListener::bind("./test.sock")?;
//! let server = diarrhoea::serve(listener, router).with_graceful_shutdown(diarrhoea::shutdown_signal());
//! tokio::spawn(server.into_future());
//!
//! // Client: notifications and calls; the server can call the client back the same way.
//! let conn = Connection::connect("./test.sock").await?;
//! conn.post_message("ping", ("hello", 1)).await?;
//! let sum: i64 = conn.call("add", (2, 3)).await?;
//! assert_eq!(sum, 5);
//! conn.end();
//! # Ok(()) }
//! ```
//!
//! # Data flow and layout
//!
//! ```text
//! read half -> codec (bytes -> Frame) -> Frame -+-> reply -> pending table -> the caller's future
//!                                               +-> call  -> inbox (policy) -> Request -> [your tower layers] -> Router -> handler
//! handler result -> reply Frame -> encoded into the bounded outbox's buffer -> one writer task -> write half
//! caller -> Caller (a tower::Service) -> pending table (id) -> encoded into the outbox -> writer
//! ```
//!
//! Modules, from the wire up; each uses only those above it (no cycles):
//!
//! | module | role |
//! | --- | --- |
//! | `error` | [`Error`] (this crate's failures), [`RpcError`] (the error in a reply), the one map from tower errors to codes |
//! | `wire` | the text of incoming frames, left in the read buffer's chunk it arrived in (no copy) |
//! | `args`, `response` | [`Args`] and [`Response`]: raw JSON, parsed only by the handler or caller that knows its type |
//! | `frame` | [`Frame`]: the one place that knows the JSON shape, and the one encoder |
//! | [`codec`] | [`FrameCodec`](codec::FrameCodec): lines with a maximum length to frames |
//! | `peer`, `request` | [`PeerInfo`], [`Request`] and its [`Deadline`]: what flows through a stack |
//! | `handler`, `router` | [`Router`]: method name to typed async fn |
//! | [`transport`] | [`Transport`](transport::Transport): what a connection needs from a byte stream |
//! | [`connection`] | builder, reader, inbox, dispatcher, pending and in-flight tables, outbox, writer: both sides share it |
//! | [`layer`] | the crate's own middleware: tracing, naming overloads, an allow list of peers |
//! | `server` | [`serve`]: listeners, the accept loop, per-connection factories, graceful shutdown |
//! | [`pool`] | [`Pool`](pool::Pool): many worker connections behind one service, balanced, supervised, retried |
//! | [`future`] | every public named future, in one place |
//! | `http` (feature `axum`) | WebSocket connections and HTTP calls mounted in an axum app; a WebSocket client |
//!
//! # Transports
//!
//! A connection runs over any byte stream ([`transport`]): a Unix socket (the peer's uid, gid
//! and pid on every request), TCP ([`Connection::connect_tcp`],
//! a `tokio::net::TcpListener` given to [`serve`]), a child process's stdin and stdout
//! ([`spawn_child`](connection::Builder::spawn_child) and [`serve_stdio`]), an in-process pair
//! ([`Connection::pair`]), or any `AsyncRead + AsyncWrite` stream in
//! [`transport::Io`] (a TLS stream, say). With feature `axum`, a WebSocket: `http::ws` mounts
//! the server side in an axum app, `Builder::connect_ws` is the client, and `http::rest`
//! answers single calls over plain HTTP. TCP brings no encryption and no authentication:
//! wrap it in TLS, and note that [`AllowPeersLayer`](layer::AllowPeersLayer) refuses every
//! peer without Unix credentials, so the recommended stack never silently opens up over TCP.
//!
//! # Serving
//!
//! One way: [`serve`]`(listener, make)`, awaited, optionally
//! [`with_graceful_shutdown`](Serve::with_graceful_shutdown). `make` is a cloneable service
//! or a factory `|conn: &Connection| -> S` that sees each new connection before anything is
//! read from it (to greet it with [`Connection::try_post_message`], or to build
//! per-connection limits). Any single stream: [`serve_connection`].
//!
//! # Protocol v1
//!
//! Every frame is one compact JSON array on one line of UTF-8, terminated by `\n` (`\r\n` is
//! accepted on input; empty lines are ignored).
//!
//! | frame | shape |
//! | --- | --- |
//! | notification | `["method",[args...]]` (byte-identical to diarrhoea 1.1.0) |
//! | request | `["method",[args...],id]` or `["method",[args...],id,meta]` |
//! | reply | `[id,result]` |
//! | error reply | `[id,null,{"code":int,"message":string,"data":any?}]` |
//! | connection error | `[null,null,{"code":int,"message":string}]`, not tied to a request, sent before closing |
//!
//! - A string in position 0 means a call, a number means a reply.
//! - `id` is an unsigned integer below 2^53, chosen by the side that sends the request and
//!   unique among its own requests in flight on that connection; each direction has its own id
//!   space. A request whose id is already in flight gets a -32600 error reply.
//! - `meta` is an optional object; `timeout_ms` (a relative deadline in milliseconds) is its
//!   first key; unknown keys are ignored.
//! - Methods starting with `$/` are reserved for the protocol. Unknown `$/` methods get -32601
//!   (requests) or are ignored with a warning (notifications).
//! - Error codes: -32700 parse error, -32600 invalid frame, -32601 method not found, -32602
//!   invalid params, -32603 internal error, -32001 timeout, -32002 overloaded, -32003 frame too
//!   large, -32004 shutting down, -32800 cancelled. Handlers may use any other code.
//! - A line that is not JSON, not UTF-8, not a frame of a known shape, or longer than the
//!   receiver's maximum frame size (default 8 MiB) is dropped and reported on the receiving side;
//!   the connection stays open. If such a line is a request whose id can be read, the sender
//!   gets a -32600 error reply.
//! - Arguments are positional: a handler of two parameters accepts exactly two arguments.
//!
//! A diarrhoea 1.x (Node) peer knows only notifications, and reads elements 0 and 1 of every
//! array: a request for a method it has bound runs that handler as a notification and is never
//! answered (so give calls to a Node peer a deadline: [`Connection::call_with_timeout`]); a
//! reply or a request for a method it has not bound only logs a warning there. Notifications
//! interoperate in both directions.
//!
//! # Ordering and flow control
//!
//! Per connection, notifications are handled in wire order among themselves: each handler's
//! future completes before the next notification's starts. Requests are dispatched in wire
//! order and run concurrently, up to [`Config::max_concurrent_requests`], and are never held
//! behind a running notification: a notification handler that calls its peer, which calls
//! back before answering, completes. (A request that arrives after a notification may
//! therefore run before that notification has finished.) Replies to this side's own calls go
//! straight from the reader to the waiting caller and never queue behind inbound work, as long
//! as the inbound buffer ([`Config::inbound_buffer`]) has room; when it is full, the reader
//! stops reading (backpressure); a request or notification keeps its share of that buffer
//! until it is done. Outgoing frames wait in a queue bounded in frames and bytes
//! ([`Config::outgoing_queue`], [`Config::outgoing_buffer`]), so `post_message`, `call`, and
//! [`Caller`]/[`Poster`]'s `poll_ready` wait while the peer does not read.
//!
//! # Deadlines
//!
//! An incoming request's deadline is the earlier of [`Config::request_timeout`] and the peer's
//! `meta.timeout_ms`, counted from when its frame was read; past it, the request is answered
//! -32001 and its handler dropped. Deadlines propagate: a call made while serving a request
//! (with [`Connection::call`], or a [`Caller`] called from the handler's task) inherits what
//! is left of that request's deadline and tells its peer as `meta.timeout_ms`, so a chain
//! A -> B -> C fails at every hop when A's deadline passes, as tarpc's context does. An
//! explicit shorter timeout still wins. A call moved to another task (inside a `Buffer`, or a
//! `tokio::spawn`) does not inherit: pass its timeout explicitly.
//!
//! # Order
//!
//! Layers run outermost first. The recommended server stack, built per connection by the
//! factory given to [`serve`], so that per-connection limits are per connection:
//!
//! ```no_run
//! use std::time::Duration;
//! use diarrhoea::layer::{AllowPeersLayer, NameOverloadLayer, TraceLayer};
//! use tower::limit::GlobalConcurrencyLimitLayer;
//! use tower::ServiceBuilder;
//!
//! # async fn f(router: diarrhoea::Router) -> Result<(), Box<dyn std::error::Error>> {
//! let allow = AllowPeersLayer::same_user()?;
//! // One semaphore for the whole server: the layer is built once and cloned per connection.
//! let global = GlobalConcurrencyLimitLayer::new(1024);
//! let listener = diarrhoea::UnixListener::bind("./app.sock")?;
//! diarrhoea::serve(listener, move |_conn: &diarrhoea::Connection| {
//!     ServiceBuilder::new()
//!         .layer(TraceLayer::incoming()) // 1. sees every outcome
//!         .layer(allow.clone()) // 2. refused peers take no permit
//!         .layer(NameOverloadLayer::new("per-connection concurrency limit (64)"))
//!         .load_shed() // 3. right outside the limit it sheds for
//!         .concurrency_limit(64)
//!         .layer(NameOverloadLayer::new("server-wide concurrency limit (1024)"))
//!         .load_shed()
//!         .layer(global.clone())
//!         .service(router.clone())
//! })
//! // The deadline: enforced by the dispatcher around permit, readiness and call.
//! .config(diarrhoea::Config::new().request_timeout(Duration::from_secs(5)))
//! .with_graceful_shutdown(diarrhoea::shutdown_signal())
//! .await?;
//! # Ok(()) }
//! ```
//!
//! Why this order:
//! - **[`TraceLayer`](layer::TraceLayer) outermost**, so it sees every outcome: refusals,
//!   shed requests, handler errors. Requests that the dispatcher gives up on (deadline passed,
//!   `$/cancel`, connection closed) drop the stack's future; the span then records `dropped`.
//! - **The deadline is not a tower `Timeout`.** tower's `Timeout` starts its timer in `call`,
//!   so time spent waiting in `poll_ready` for a concurrency permit or a rate-limit slot does
//!   not count (tower-rs/tower#648). Use [`Config::request_timeout`] (and the peer's
//!   `meta.timeout_ms`): the dispatcher enforces the earlier of the two around waiting for the
//!   per-connection permit, `poll_ready` and `call`, and answers -32001. A tower `Timeout`
//!   inside the limits, around the router, can still bound handler time alone.
//! - **[`AllowPeersLayer`](layer::AllowPeersLayer) before the limits**, so a refused peer
//!   uses up no permit and no rate.
//! - **`LoadShed` right outside the limit it sheds for**, with a
//!   [`NameOverloadLayer`](layer::NameOverloadLayer) right outside it: `LoadShed` rejects when
//!   the service *directly below* it is not ready; any layer in between that is always ready,
//!   or waits on its own (a `Buffer`), hides the limit from it. Without `LoadShed` a limit makes
//!   callers wait, which is backpressure: the dispatcher stops, the inbound buffer fills, and
//!   the reader stops reading from the socket.
//! - **`ConcurrencyLimit` holds its permit from `poll_ready` until the response future
//!   completes.** The dispatcher readies the stack only for the request it is about to call,
//!   so no permit sits idle; but a handler that awaits a nested call to the peer keeps its
//!   permit while it waits, so a chain of calls back and forth needs a limit at least as deep
//!   as the chain's share on each side, or shedding.
//! - A `ConcurrencyLimit` in a stack given to [`serve`] as a plain service is shared by
//!   every connection (clones share its semaphore): build the stack in the factory for a
//!   per-connection limit, and share one `GlobalConcurrencyLimitLayer` for a server-wide one.
//! - tower's `RateLimit` is not `Clone`: put a `Buffer` right outside it (per connection);
//!   requests over the rate then wait (backpressure). A `LoadShed` outside that `Buffer` sheds
//!   whenever the buffer is full, which also happens for a moment while its worker task
//!   catches up: give the buffer at least as much room as the concurrency limit above it.
//!
//! On the calling side, around [`Connection::caller`]:
//!
//! ```no_run
//! use std::time::Duration;
//! use diarrhoea::layer::TraceLayer;
//! use tower::ServiceBuilder;
//!
//! # fn f(conn: diarrhoea::Connection) {
//! let calls = ServiceBuilder::new()
//!     .layer(TraceLayer::outgoing().connection_id(conn.id()))
//!     .timeout(Duration::from_secs(2)) // counts the wait below: it happens inside `call`
//!     .buffer(1024) // Clone, and moves waiting for the limits out of `poll_ready`
//!     .concurrency_limit(64)
//!     .service(conn.caller());
//! # }
//! ```
//!
//! Here the `Buffer` is what makes the `Timeout` count the time spent waiting for a permit:
//! the buffer's worker waits for the limit, after the `Timeout`'s `call` has started its
//! timer. A `Retry` (idempotent methods only) goes between `Timeout` and `Buffer`, so the
//! deadline covers every attempt. A [`Request`] whose `meta.timeout_ms` is set also tells the
//! peer the deadline, and the [`Caller`] fails it locally when it passes.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// In pipeline order, from the wire up; each module uses only those above it.
mod args;
pub mod codec;
pub mod connection;
mod error;
mod frame;
pub mod future;
mod handler;
pub mod layer;
mod peer;
pub mod pool;
mod request;
mod response;
mod router;
mod server;
#[cfg(test)]
mod test_util;
pub mod transport;
mod wire;
// Above the server: it mounts connections and calls in an axum app.
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod http;

pub use args::Args;
pub use connection::{
    serve_connection, serve_stdio, Caller, Config, Connection, Event, Events, Poster,
};
pub use error::{code, BoxError, Error, RpcError};
pub use frame::{Frame, InvalidFrame, Meta, MAX_ID};
pub use handler::{FromContext, Handler};
#[cfg(feature = "axum")]
pub use peer::HttpPeer;
pub use peer::{Credentials, Identity, PeerInfo};
pub use request::{Deadline, Extensions, Request};
pub use response::{IntoReply, Json, Response};
pub use router::Router;
pub use server::{
    from_stream, serve, shutdown_signal, FromStream, Listener, MakeConnectionService, Serve,
    UnixListener, WithGracefulShutdown, DEFAULT_MAX_CONNECTIONS, DEFAULT_SHUTDOWN_TIMEOUT,
};
