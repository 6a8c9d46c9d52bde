//! Fast IPC/RPC between processes over Unix domain sockets (or any byte stream), as a
//! [`tower`] middleware stack.
//!
//! `diarrhoea` is the Rust successor of the Node.js library of the same name (1.1.0) and keeps
//! its wire format: one JSON array per line, `["method",[args]]`. A Node peer talks to a Rust
//! peer for notifications in both directions; Rust peers add request/response calls, both ways,
//! on one connection ([`protocol`] describes the wire format). Handlers are typed `async fn`s;
//! the stack that serves a connection and its outgoing calls are `tower::Service`s, so
//! timeouts, concurrency limits and load shedding are ordinary tower layers. A connection can
//! speak JSON-RPC 2.0 instead ([`Protocol`]), so any language's JSON-RPC client calls the
//! same handlers.
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
//! | `fd` | [`Fd`]: an open descriptor as an argument, a placeholder in the JSON beside the frame's `SCM_RIGHTS` |
//! | `args`, `response` | [`Args`] and [`Response`]: raw JSON, parsed only by the handler or caller that knows its type; [`StreamReply`], a response of many items |
//! | `frame` | [`Frame`]: the one place that knows the JSON shape, and the one encoder |
//! | [`codec`] | [`FrameCodec`](codec::FrameCodec): lines with a maximum length to frames |
//! | `peer`, `request` | [`PeerInfo`], [`Request`] and its [`Deadline`]: what flows through a stack |
//! | `handler`, `router` | [`Router`]: method name to typed async fn |
//! | [`transport`] | [`Transport`](transport::Transport): what a connection needs from a byte stream |
//! | [`jsonrpc`] | [`Protocol`]: JSON-RPC 2.0 on a connection, as a translating wrapper around its stream |
//! | [`connection`] | builder, reader, inbox, dispatcher, pending and in-flight tables, outbox, writer: both sides share it |
//! | [`layer`] | the crate's own middleware: tracing, naming overloads, an allow list of peers |
//! | `server` | [`serve`]: listeners, the accept loop, per-connection factories, graceful shutdown |
//! | [`pool`] | [`Pool`](pool::Pool): many worker connections behind one service, balanced, supervised, retried |
//! | [`typed`] (feature `macros`) | what `#[diarrhoea::service]`'s code stands on: typed clients over a connection, a pool or tower stacks |
//! | [`future`] | every public named future, in one place |
//! | `http` (feature `axum`) | WebSocket connections and HTTP calls mounted in an axum app; a WebSocket client |
//! | [`protocol`] | no code: the description of the wire format |
//!
//! # Where each topic is documented
//!
//! | topic | where |
//! | --- | --- |
//! | protocol v1: frames, ids, `meta`, error codes, bad input, Node.js interop | [`protocol`] |
//! | JSON-RPC 2.0: lines, `Content-Length` framing, detection, batches, by-name params, HTTP | [`protocol`](protocol#json-rpc-20), [`jsonrpc`], [`Protocol`] |
//! | handlers: typed parameters, context parameters, replies | [`Router`], [`Handler`], [`FromContext`] |
//! | typed services: a trait as routes and a typed client, and when to use one rather than a Router | [`service`], [`typed`] |
//! | a connection: notifications, calls, ordering, deadlines, flow control | [`connection`], [`Connection`] |
//! | streams: a call answered with many items, paced by the caller's credit | [`StreamReply`] (server), [`CallStream`] (client), [`protocol`]'s streams |
//! | serving: listeners, per-connection factories, graceful shutdown | [`serve`] |
//! | the socket file: stale sockets, permissions, removal | [`UnixListener`] |
//! | limits, their defaults and settings | [`Config`] |
//! | transports, and reaching peers beyond one machine (TCP, TLS, WebSocket, HTTP) | [`transport`] |
//! | tower layers, and the order they go in | [`layer`] |
//! | scaling out over worker processes | [`pool`] |
//! | handing open descriptors (connections, files, pipes) to a peer, Linux | [`Fd`], [`protocol`] |
//! | WebSocket and HTTP in an axum app | `http` (feature `axum`) |
//! | errors: this crate's, and the one in a reply | [`Error`], [`RpcError`], [`code`] |

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// In pipeline order, from the wire up; each module uses only those above it.
mod args;
pub mod codec;
pub mod connection;
mod error;
mod fd;
mod frame;
pub mod future;
mod handler;
pub mod jsonrpc;
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
// Above the pool: a typed client sends through a connection or a pool.
#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub mod typed;
mod wire;
// Above the server: it mounts connections and calls in an axum app.
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod http;

// Documentation only: docs/PROTOCOL.md, the one description of the wire format, whose code
// blocks are tested here too.
#[doc = include_str!("../docs/PROTOCOL.md")]
pub mod protocol {}

// `cargo test --doc` compiles the README's examples (one is a typed service).
#[cfg(all(doctest, feature = "macros"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use args::Args;
pub use connection::{
    serve_connection, serve_stdio, CallStream, Caller, Config, Connection, Event, Events, Poster,
};
pub use error::{code, BoxError, Error, RpcError};
pub use fd::Fd;
pub use frame::{Frame, InvalidFrame, Meta, MAX_ID};
pub use handler::{FromContext, Handler};
pub use jsonrpc::Protocol;
#[cfg(feature = "axum")]
pub use peer::HttpPeer;
pub use peer::{Credentials, Identity, PeerInfo};
pub use request::{Deadline, Extensions, Request};
pub use response::{IntoReply, Json, Response, StreamReply};
pub use router::Router;
#[cfg(feature = "macros")]
#[doc(hidden)]
pub use typed::__private;

/// Turns a trait of `async fn`s into a typed service: Router routes for the server and a typed
/// client `<Trait>Client`, on protocol v1's wire (a Node peer still calls it by name).
///
/// ```
/// use diarrhoea::{Connection, Router};
///
/// #[diarrhoea::service]
/// pub trait Calc {
///     /// Adds two numbers.
///     async fn add(&self, a: i64, b: i64) -> i64;
///     #[rpc(notification)]
///     async fn log(&self, line: String);
/// }
///
/// #[derive(Clone)]
/// struct MyCalc;
///
/// impl Calc for MyCalc {
///     async fn add(&self, a: i64, b: i64) -> i64 {
///         a + b
///     }
///     async fn log(&self, line: String) {
///         eprintln!("{line}");
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), diarrhoea::Error> {
/// let router: Router = MyCalc.into_router();
/// let (server, client) = Connection::pair()?;
/// server.set_service(router);
///
/// let calc = CalcClient::new(client.clone());
/// assert_eq!(calc.add(2, 3).await?, 5);           // ["add",[2,3],1] -> [1,5]
/// calc.log("hi".into()).await?;                    // ["log",["hi"]]
/// let sum: i64 = client.call("add", (2, 3)).await?; // the same wire, untyped
/// assert_eq!(sum, 5);
/// # Ok(()) }
/// ```
///
/// The rules (parameters, `#[context]`, results and errors, names, the client over a
/// connection, a pool or tower stacks, `$/methods`) are in [`typed`].
#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use diarrhoea_macros::service;
pub use server::{
    from_stream, serve, shutdown_signal, FromStream, Listener, MakeConnectionService, Serve,
    UnixListener, WithGracefulShutdown, DEFAULT_MAX_CONNECTIONS, DEFAULT_SHUTDOWN_TIMEOUT,
};
