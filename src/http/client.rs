//! The WebSocket client: `Builder::connect_ws(url)` returns the same [`Connection`] handle
//! as a socket.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::socket::WsTransport;
use super::ws::message_limit;
use crate::connection::{Builder, Config, Connection};
use crate::error::Error;
use crate::peer::{HttpPeer, Identity};

impl Builder {
    /// Connects to a WebSocket endpoint ([`ws`](super::ws)) at a `ws://` URL, over TCP.
    ///
    /// `wss://` needs a TLS stream of your own: connect it (`tokio-rustls`,
    /// `tokio-native-tls`) and pass it to [`connect_ws_stream`](Builder::connect_ws_stream).
    /// A `wss://` URL here fails with an error saying so. `url` may also be an
    /// `http::Request` with headers of your own (an `Authorization` header, say).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), diarrhoea::Error> {
    /// let conn = diarrhoea::Connection::builder().connect_ws("ws://127.0.0.1:8080/ws").await?;
    /// let sum: i64 = conn.call("add", (2, 3)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_ws<R>(self, url: R) -> Result<Connection, Error>
    where
        R: IntoClientRequest + Unpin,
    {
        let ws_config = ws_config(self.config_ref());
        let (socket, _response) =
            tokio_tungstenite::connect_async_with_config(url, Some(ws_config), true)
                .await
                .map_err(|e| Error::io(ws_error(e)).with_context("connect over WebSocket"))?;
        let addr = match socket.get_ref() {
            tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.peer_addr().ok(),
            _ => None,
        };
        let identity = Identity::Http(HttpPeer::new(addr, Default::default()));
        Ok(self.serve_connection(WsTransport::new(socket, identity)))
    }

    /// Runs the WebSocket handshake for `url` over a stream you connected (TLS for `wss://`,
    /// a proxy tunnel, a Unix socket), then the protocol over the WebSocket.
    pub async fn connect_ws_stream<R, S>(self, url: R, stream: S) -> Result<Connection, Error>
    where
        R: IntoClientRequest + Unpin,
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let ws_config = ws_config(self.config_ref());
        let (socket, _response) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config))
                .await
                .map_err(|e| Error::io(ws_error(e)).with_context("WebSocket handshake"))?;
        let identity = Identity::Http(HttpPeer::new(None, Default::default()));
        Ok(self.serve_connection(WsTransport::new(socket, identity)))
    }
}

impl Connection {
    /// Connects to a WebSocket endpoint at a `ws://` URL with default options: see
    /// [`Builder::connect_ws`].
    pub async fn connect_ws<R>(url: R) -> Result<Connection, Error>
    where
        R: IntoClientRequest + Unpin,
    {
        Builder::new().connect_ws(url).await
    }
}

/// The same message limit as the server side.
fn ws_config(config: &Config) -> WebSocketConfig {
    let limit = message_limit(config);
    WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
}

/// A handshake failure as an I/O error whose message says what went wrong (a refused
/// connection, an HTTP status instead of an upgrade, a `wss://` URL without TLS).
fn ws_error(error: tokio_tungstenite::tungstenite::Error) -> std::io::Error {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match error {
        WsError::Io(e) => e,
        WsError::Http(response) => std::io::Error::other(format!(
            "the server answered {} instead of upgrading",
            response.status()
        )),
        WsError::Url(e) => std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{e} (for wss://, connect TLS yourself: Builder::connect_ws_stream)"),
        ),
        other => std::io::Error::other(other),
    }
}
