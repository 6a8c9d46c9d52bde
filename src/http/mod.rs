//! The same handlers over WebSocket and HTTP, mounted in an axum app, and a WebSocket client
//! (feature `axum`).
//!
//! ```text
//! GET  /ws (upgrade) -> [host layers] -> ws    -> WebSocket -> socket (Transport) -> connection -> your stack
//! POST /rpc/{method} -> [host layers] -> rest  -> Request   -----------------------------------> your stack
//! Builder::connect_ws(url) -> tokio-tungstenite -> socket (Transport) -> connection
//! ```
//!
//! | file | question it answers |
//! | --- | --- |
//! | `socket` | how WebSocket messages become the byte stream a connection reads and writes |
//! | `ws` | how an axum route upgrades a request and runs a connection over it |
//! | `client` | how a client connects to a `ws://` URL |
//! | `rest` | how `POST {prefix}/{method}` becomes one request through the stack, and its status |
//! | `stream_body` | how a stream reply goes out as NDJSON or server-sent events, paced by the HTTP connection |
//!
//! Because both are axum routes, the host server's tower-http layers (authentication, CORS,
//! compression, request limits, tracing) apply as to any route. What they learn about the
//! caller reaches handlers and layers: the request's extensions and remote address are the
//! peer's [`HttpPeer`](crate::HttpPeer) (`PeerInfo::http()`), on every request of a
//! WebSocket connection and on each HTTP call.
//!
//! ```no_run
//! use std::net::SocketAddr;
//!
//! use diarrhoea::{PeerInfo, Router};
//!
//! #[derive(Clone)]
//! struct User(String);
//!
//! async fn whoami(peer: PeerInfo) -> String {
//!     match peer.http().and_then(|http| http.get::<User>()) {
//!         Some(User(name)) => name.clone(),
//!         None => "anonymous".into(),
//!     }
//! }
//!
//! # async fn f() -> std::io::Result<()> {
//! let router = Router::new().route("whoami", whoami);
//! let app = axum::Router::new()
//!     .route("/ws", diarrhoea::http::ws(router.clone()).route())
//!     .nest("/rpc", diarrhoea::http::rest(router).router())
//!     // The host's authentication, as a middleware that puts the user in the extensions.
//!     .layer(axum::middleware::from_fn(
//!         |mut req: axum::extract::Request, next: axum::middleware::Next| async move {
//!             req.extensions_mut().insert(User("ada".into()));
//!             next.run(req).await
//!         },
//!     ));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
//! # }
//! ```
//!
//! The remote address is there when the app is served with
//! `into_make_service_with_connect_info::<SocketAddr>()`, as above.
//! [`AllowPeersLayer`](crate::layer::AllowPeersLayer) (Unix credentials) refuses WebSocket
//! and HTTP peers, as it does TCP ones: authenticate them in the axum app instead.
//!
//! WebSocket connections run in tasks of their own once upgraded: axum's graceful shutdown
//! does not wait for them. [`Ws::shutdown`] drains them as [`serve`](crate::serve) drains
//! its connections (calls in flight finish, new ones get -32004): keep a clone of the
//! endpoint and call it after axum's shutdown.
//!
//! How frames travel in WebSocket messages, and how HTTP calls map to statuses and headers,
//! is part of [the protocol](crate::protocol#over-websocket-and-http). Which way to choose
//! (TCP, TLS, WebSocket or HTTP) when peers are on other machines:
//! [beyond one machine](crate::transport#beyond-one-machine). `examples/gateway.rs` serves
//! one router on a Unix socket and on HTTP and WebSocket, with limits on both and
//! tower-http's `TraceLayer` on the HTTP side:
//!
//! ```text
//! cargo run --example gateway --features axum    # -- --http 127.0.0.1:8080 --socket ./test.sock
//! curl -d '[2,3]' http://127.0.0.1:8080/rpc/add
//! ```

mod client;
mod rest;
mod socket;
mod stream_body;
mod ws;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::RpcError;

pub use rest::{rest, status_of, Rest, NOTIFY_HEADER, TIMEOUT_HEADER};
pub use ws::{ws, Ws};

/// An error reply as an HTTP response: the `{code,message,data}` object as JSON.
fn error_response(status: StatusCode, error: &RpcError) -> Response {
    let body = serde_json::to_string(error).unwrap_or_else(|_| {
        format!(
            r#"{{"code":{},"message":"error could not be serialized"}}"#,
            error.code
        )
    });
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
