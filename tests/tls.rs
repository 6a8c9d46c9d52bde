//! Any byte stream carries a connection: TLS (tokio-rustls, ring provider) over TCP loopback,
//! with a self-signed certificate made at test time, in `transport::Io`.
//!
//! The server accepts TCP, completes the TLS handshake and hands each stream to `serve`
//! through `from_stream`; the client wraps its TLS stream in `Io` and serves it with
//! `Builder::serve_connection`. Calls and notifications then go both ways.

mod support;

use std::future::IntoFuture;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use diarrhoea::transport::Io;
use diarrhoea::{from_stream, serve, Connection, Router};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::server;

use support::{server_router, tls_configs, within, APP_CODE};

/// Connections accepted (and handshaken) elsewhere, as a `Stream` for `from_stream`.
struct Accepted(mpsc::Receiver<io::Result<Io<server::TlsStream<TcpStream>>>>);

impl futures_core::Stream for Accepted {
    type Item = io::Result<Io<server::TlsStream<TcpStream>>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[tokio::test]
async fn calls_and_notifications_go_both_ways_over_tls() {
    let (acceptor, connector) = tls_configs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    // Server: TCP accept -> TLS handshake -> `serve` over a stream of TLS connections.
    let (accepted_tx, accepted_rx) = mpsc::channel(4);
    let handshakes = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await?;
            let tls = acceptor.accept(tcp).await.map(Io);
            if accepted_tx.send(tls).await.is_err() {
                return Ok::<_, io::Error>(());
            }
        }
    });
    let server =
        tokio::spawn(serve(from_stream(Accepted(accepted_rx)), server_router()).into_future());

    // Client: TCP connect -> TLS handshake (verifies the certificate) -> a connection.
    let (notes_tx, mut notes) = mpsc::unbounded_channel();
    let client_router = Router::new()
        .route("double", |n: i64| async move { 2 * n })
        .route("noted", move |x: String| {
            let notes_tx = notes_tx.clone();
            async move {
                let _ = notes_tx.send(x);
            }
        });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let conn = Connection::builder()
        .service(client_router)
        .serve_connection(Io(tls));

    // Notifications both ways.
    conn.post_message("note", ("over TLS",)).await.unwrap();
    assert_eq!(
        within("`noted`", notes.recv()).await.as_deref(),
        Some("over TLS")
    );
    // Calls both ways: the server calls the client back while answering.
    assert_eq!(conn.call::<i64>("add", (2, 3)).await.unwrap(), 5);
    assert_eq!(conn.call::<i64>("nested", (21,)).await.unwrap(), 43);
    // An error reply.
    let err = conn.call::<()>("fail", ()).await.unwrap_err();
    assert_eq!(err.code(), Some(APP_CODE), "{err:?}");
    // A frame far larger than a TLS record (16 KiB) survives the trip.
    let big = "x".repeat(1 << 20);
    let echoed: (String,) = conn.call("echo", (&big,)).await.unwrap();
    assert_eq!(echoed.0, big);
    // Many calls in flight at once over the one TLS stream.
    let calls: Vec<_> = (0..200i64)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move { conn.call::<i64>("add", (i, i)).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        let sum = within("200 calls", call).await.unwrap().unwrap();
        assert_eq!(sum, 2 * i as i64);
    }

    conn.end();
    within("the connection to close", conn.closed()).await;
    server.abort();
    handshakes.abort();
}
