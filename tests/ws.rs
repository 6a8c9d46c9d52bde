//! The WebSocket endpoint (`diarrhoea::http::ws`) in a real axum server on loopback, driven by
//! tokio-tungstenite as a raw client (frames as text messages, by hand) and by
//! `Builder::connect_ws`: what the host's auth layer puts in the request reaches handlers;
//! several lines in one message, a message without a newline; binary and garbage messages
//! (error events, the connection stays open); a protocol violation (an error event, a close
//! without 1009); an oversized line, and an oversized message sent
//! to the client (its own `max_frame_size` holds: close 1009); a peer that never reads
//! (the server's writes wait: bounded memory, nothing lost); the connection limit; a
//! `wss://` URL without TLS, and `wss://` over a TLS stream of the caller's own. The end-to-end body over WebSocket is in tests/transports.rs.
#![cfg(feature = "axum")]

mod support;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diarrhoea::{Args, Config, Connection, Event, PeerInfo, Router};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use support::within;

/// What the host server's authentication middleware inserts.
#[derive(Clone, Debug, PartialEq)]
struct User(String);

async fn whoami(peer: PeerInfo) -> Value {
    let http = peer.http().expect("an HTTP peer");
    json!({
        "user": http.get::<User>().map(|u| u.0.clone()),
        "loopback": http.addr().is_some_and(|a| a.ip().is_loopback()),
    })
}

fn router() -> Router {
    Router::new()
        .route("add", |a: i64, b: i64| async move { a + b })
        .route("echo", |args: Args| async move { args })
        .route("whoami", whoami)
        .route("count", |n: u64| async move {
            diarrhoea::StreamReply::new(futures_util::stream::iter(0..n)).trailer(n)
        })
        .route("sleep", |ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ms
        })
}

/// A server on 127.0.0.1:0 with the endpoint at `/ws` behind an auth middleware that puts
/// `User("ada")` in every request; every new server-side connection is sent to the channel.
struct Server {
    addr: SocketAddr,
    conns: mpsc::UnboundedReceiver<Connection>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn server(config: Config, max_connections: usize) -> Server {
    let (tx, conns) = mpsc::unbounded_channel();
    let router = router();
    let make = move |conn: &Connection| {
        let _ = tx.send(conn.clone());
        router.clone()
    };
    let endpoint = diarrhoea::http::ws(make)
        .config(config)
        .max_connections(max_connections);
    let app = axum::Router::new().route("/ws", endpoint.route());
    let (addr, task) = support::serve_signed_in(app, User("ada".into())).await;
    Server { addr, conns, task }
}

impl Server {
    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    async fn next_conn(&mut self) -> Connection {
        within("the server's connection", self.conns.recv())
            .await
            .expect("the server is running")
    }
}

type Raw =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw_client(url: &str) -> Raw {
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// The next text message; panics on anything else.
async fn recv_text(ws: &mut Raw) -> String {
    loop {
        match within("a message", ws.next()).await {
            Some(Ok(Message::Text(text))) => return text.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

async fn recv_json(ws: &mut Raw) -> Value {
    let text = recv_text(ws).await;
    assert!(!text.contains('\n'), "one line per message: {text:?}");
    serde_json::from_str(&text).unwrap()
}

/// The next error or warning event, skipping nothing else.
async fn next_fault(events: &mut diarrhoea::Events) -> (bool, String) {
    match within("an event", events.recv()).await {
        Some(Event::Error(e)) => (true, format!("{e}")),
        Some(Event::Warning(e)) => (false, format!("{e}")),
        other => panic!("expected an error or warning event, got {other:?}"),
    }
}

#[tokio::test]
async fn the_hosts_auth_and_the_peer_address_reach_handlers() {
    let mut server = server(Config::new(), 16).await;
    let client = Connection::connect_ws(server.url()).await.unwrap();
    let conn = server.next_conn().await;
    assert_eq!(
        conn.peer().http().and_then(|h| h.get::<User>()),
        Some(&User("ada".into()))
    );
    let me: Value = client.call("whoami", ()).await.unwrap();
    assert_eq!(me, json!({"user": "ada", "loopback": true}));
    client.end();
    within("the client to close", client.closed()).await;
    within("the server's side to close", conn.closed()).await;
}

#[tokio::test]
async fn a_message_may_hold_several_lines_and_needs_no_newline() {
    let server = server(Config::new(), 16).await;
    let mut ws = raw_client(&server.url()).await;
    ws.send(Message::text(r#"["add",[1,2],1]"#)).await.unwrap();
    assert_eq!(recv_json(&mut ws).await, json!([1, 3]));
    ws.send(Message::text("[\"add\",[3,4],2]\n[\"echo\",[\"x\"],3]\n"))
        .await
        .unwrap();
    // One reply per message, in either order (requests run concurrently).
    let mut replies = vec![recv_json(&mut ws).await, recv_json(&mut ws).await];
    replies.sort_by_key(|r| r[0].as_u64());
    assert_eq!(replies, [json!([2, 7]), json!([3, ["x"]])]);
    // A message with CRLF and an empty line.
    ws.send(Message::text("\r\n[\"add\",[5,5],4]\r\n"))
        .await
        .unwrap();
    assert_eq!(recv_json(&mut ws).await, json!([4, 10]));
}

#[tokio::test]
async fn binary_and_garbage_messages_are_error_events_and_the_connection_stays_open() {
    let mut server = server(Config::new().max_frame_size(1024), 16).await;
    let mut ws = raw_client(&server.url()).await;
    let conn = server.next_conn().await;
    let mut events = conn.events();

    ws.send(Message::binary(vec![0u8, 159, 146, 150]))
        .await
        .unwrap();
    let (error, text) = next_fault(&mut events).await;
    assert!(error, "{text}");
    assert!(
        text.contains("binary WebSocket message of 4 bytes"),
        "{text}"
    );

    // A binary message holding a valid frame is refused all the same: frames are text.
    ws.send(Message::binary(&br#"["add",[1,1],9]"#[..]))
        .await
        .unwrap();
    let (error, text) = next_fault(&mut events).await;
    assert!(error && text.contains("binary"), "{text}");

    ws.send(Message::text("this is not JSON")).await.unwrap();
    let (error, text) = next_fault(&mut events).await;
    assert!(error && text.contains("-32700"), "{text}");

    // A line over the maximum frame size inside a message the WebSocket takes.
    let long = format!(r#"["echo",["{}"],10]"#, "y".repeat(1500));
    ws.send(Message::text(long)).await.unwrap();
    let (error, text) = next_fault(&mut events).await;
    assert!(error && text.contains("-32003"), "{text}");

    // Still open and answering, and the bad messages were answered with nothing.
    ws.send(Message::text(r#"["add",[20,22],11]"#))
        .await
        .unwrap();
    assert_eq!(recv_json(&mut ws).await, json!([11, 42]));
    assert!(!conn.is_closed());
}

#[tokio::test]
async fn a_message_over_twice_the_frame_size_closes_with_message_too_big() {
    let mut server = server(Config::new().max_frame_size(1024), 16).await;
    let mut ws = raw_client(&server.url()).await;
    let conn = server.next_conn().await;
    let huge = format!(r#"["echo",["{}"],1]"#, "z".repeat(4096));
    ws.send(Message::text(huge)).await.unwrap();
    match within("the close", ws.next()).await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1009),
        other => panic!("expected a close frame 1009, got {other:?}"),
    }
    within("the server's side to close", conn.closed()).await;
}

#[tokio::test]
async fn a_protocol_violation_is_reported_and_closes_without_the_too_big_code() {
    // 1009 says the message was too big; any other fault in what the peer sent (here a frame
    // without the mask a client must set) is an error event and a plain close.
    let mut server = server(Config::new().max_frame_size(1024), 16).await;
    let mut ws = raw_client(&server.url()).await;
    let conn = server.next_conn().await;
    let mut events = conn.events();
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_mut() else {
        panic!("a ws:// URL is plain TCP");
    };
    // FIN, text, unmasked, 2 bytes of payload.
    tcp.write_all(&[0x81, 0x02, b'[', b']']).await.unwrap();
    let (error, message) = next_fault(&mut events).await;
    assert!(error, "{message}");
    match within("the close", ws.next()).await {
        Some(Ok(Message::Close(frame))) => assert!(
            frame.as_ref().is_none_or(|f| u16::from(f.code) != 1009),
            "{frame:?}"
        ),
        other => panic!("expected a close frame, got {other:?}"),
    }
    within("the server's side to close", conn.closed()).await;
}

#[tokio::test]
async fn the_clients_max_frame_size_bounds_the_messages_it_accepts() {
    // A raw WebSocket server sends the client a message far over its limit (twice the frame
    // size): the client closes with 1009 as the server side does, instead of taking the message
    // whole (the default limit is megabytes) and only then dropping the long line.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let raw = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio_tungstenite::accept_async(tcp).await.unwrap()
    });
    let client = Connection::builder()
        .config(Config::new().max_frame_size(1024))
        .connect_ws(url)
        .await
        .unwrap();
    let mut ws = within("the raw server's handshake", raw).await.unwrap();
    let huge = format!(r#"["echo",["{}"],1]"#, "z".repeat(4096));
    ws.send(Message::text(huge)).await.unwrap();
    // Had the client taken the message, it would answer this call (-32601: no service).
    ws.send(Message::text(r#"["add",[1,2],2]"#)).await.unwrap();
    loop {
        match within("the close", ws.next()).await {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1009);
                break;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a close frame 1009, got {other:?}"),
        }
    }
    within("the client to close", client.closed()).await;
}

#[tokio::test]
async fn a_peer_that_never_reads_holds_the_servers_writes_back_and_loses_nothing() {
    // A small outgoing budget, so the server's queue fills quickly.
    let config = Config::new().outgoing_buffer(256 * 1024);
    let mut server = server(config, 16).await;
    let mut ws = raw_client(&server.url()).await;
    let conn = server.next_conn().await;

    // The server posts 64 KiB notifications to a client that reads nothing, up to 256 MiB.
    let payload: Arc<str> = "p".repeat(64 * 1024).into();
    let posted = Arc::new(AtomicU64::new(0));
    let (blocked_tx, mut blocked) = mpsc::unbounded_channel();
    let poster = tokio::spawn({
        let (conn, posted, payload) = (conn.clone(), posted.clone(), payload.clone());
        async move {
            for i in 0..4096u64 {
                let post = conn.post_message("blob", (i, &*payload));
                // Waiting this long for room means the writer is held back by the peer.
                match tokio::time::timeout(Duration::from_secs(2), post).await {
                    Ok(result) => result.unwrap(),
                    Err(_) => {
                        let _ = blocked_tx.send(posted.load(Ordering::SeqCst));
                        // Then wait for room as a sender does.
                        conn.post_message("blob", (i, &*payload)).await.unwrap();
                    }
                }
                posted.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let held_at = within("the server's writes to wait", blocked.recv())
        .await
        .expect("the poster reports");
    let held_bytes = held_at * 64 * 1024;
    // Held back long before the 256 MiB it meant to send: what it got out is the outgoing
    // budget, the WebSocket's write buffer and the sockets' buffers.
    assert!(
        held_bytes < 48 * 1024 * 1024,
        "posted {held_bytes} bytes before waiting"
    );
    eprintln!("held back after {held_bytes} bytes");
    assert!(!poster.is_finished());
    // Reading again releases the writer, and every message arrives, in order.
    poster.abort();
    let _ = poster.await;
    let expected = posted.load(Ordering::SeqCst);
    for i in 0..expected {
        let msg = recv_json(&mut ws).await;
        assert_eq!(msg[0], "blob");
        assert_eq!(msg[1][0], i);
        assert_eq!(msg[1][1].as_str().map(str::len), Some(64 * 1024));
    }
    assert!(!conn.is_closed());
}

#[tokio::test]
async fn over_the_connection_limit_the_upgrade_is_refused_with_503() {
    let mut server = server(Config::new(), 1).await;
    let first = Connection::connect_ws(server.url()).await.unwrap();
    let first_server = server.next_conn().await;
    let err = Connection::connect_ws(server.url()).await.unwrap_err();
    assert!(err.is_io(), "{err:?}");
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("503"), "{chain}");
    // The slot comes back when the first connection closes.
    first.end();
    within("the first to close", first_server.closed()).await;
    let again = Connection::connect_ws(server.url()).await.unwrap();
    assert_eq!(again.call::<i64>("add", (1, 2)).await.unwrap(), 3);
}

#[tokio::test]
async fn wss_without_tls_says_how_to_bring_a_stream() {
    let server = server(Config::new(), 16).await;
    let err = Connection::connect_ws(format!("wss://{}/ws", server.addr))
        .await
        .unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("connect_ws_stream"), "{chain}");
}

#[tokio::test]
async fn connect_ws_stream_runs_over_a_stream_of_your_own() {
    let server = server(Config::new(), 16).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let conn = Connection::builder()
        .connect_ws_stream(server.url(), tcp)
        .await
        .unwrap();
    assert_eq!(conn.call::<i64>("add", (2, 3)).await.unwrap(), 5);
}

#[tokio::test]
async fn the_factorys_layers_run_per_websocket_connection() {
    use diarrhoea::layer::NameOverloadLayer;
    use tower::ServiceBuilder;
    // `hold` reports that it started, then waits until the test releases it.
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let router = Router::new()
        .route("add", |a: i64, b: i64| async move { a + b })
        .route("hold", {
            let release = release.clone();
            move || {
                let (started_tx, release) = (started_tx.clone(), release.clone());
                async move {
                    let _ = started_tx.send(());
                    release.acquire().await.unwrap().forget();
                }
            }
        });
    // One request at once per connection, shed beyond: built per connection by the factory.
    let make = move |_: &Connection| {
        ServiceBuilder::new()
            .layer(NameOverloadLayer::new(
                "per-connection concurrency limit (1)",
            ))
            .load_shed()
            .concurrency_limit(1)
            .service(router.clone())
    };
    let app = axum::Router::new().route("/ws", diarrhoea::http::ws(make).route());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(axum::serve(listener, app).into_future());
    let url = format!("ws://{addr}/ws");
    let a = Connection::connect_ws(&url).await.unwrap();
    let b = Connection::connect_ws(&url).await.unwrap();

    let held = tokio::spawn({
        let a = a.clone();
        async move { a.call::<()>("hold", ()).await }
    });
    within("hold to start", started.recv()).await.unwrap();
    // `a`'s connection is at its limit; `b`'s has a permit of its own.
    let err = a.call::<i64>("add", (1, 2)).await.unwrap_err();
    assert_eq!(err.code(), Some(diarrhoea::code::OVERLOADED), "{err:?}");
    assert!(
        err.remote().unwrap().message.contains("per-connection"),
        "{err:?}"
    );
    assert_eq!(b.call::<i64>("add", (1, 2)).await.unwrap(), 3);
    release.add_permits(1);
    within("hold to finish", held).await.unwrap().unwrap();
    assert_eq!(a.call::<i64>("add", (1, 2)).await.unwrap(), 3);
    task.abort();
}

#[tokio::test]
async fn ending_a_websocket_fails_the_calls_still_running_instead_of_hanging() {
    // A WebSocket has no half-close: the close frame `end()` sends is answered with one, and
    // the server cannot send the reply of a call still running. The call fails; nothing hangs.
    let mut server = server(Config::new(), 16).await;
    let client = Connection::connect_ws(server.url()).await.unwrap();
    let conn = server.next_conn().await;
    let mut events = conn.events();
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.call::<u64>("sleep", (200,)).await }
    });
    // The request is queued before the end, so it reaches the server first.
    while client.pending_calls() == 0 {
        tokio::task::yield_now().await;
    }
    client.end();
    let err = within("the call to fail", call).await.unwrap().unwrap_err();
    assert!(err.is_closed(), "{err:?}");
    within("the client to close", client.closed()).await;
    within("the server's side to close", conn.closed()).await;
    // The server saw the end; whatever it then failed to write was not an error to report.
    while let Some(event) = within("the server's events", events.recv()).await {
        match event {
            Event::Error(e) => panic!("error event: {e:?}"),
            Event::Close => break,
            _ => {}
        }
    }
}

/// `wss://` through `connect_ws_stream`: the client's own TLS stream (tokio-rustls, a
/// certificate made at test time), an axum server behind a TLS listener.
mod wss {
    use axum::serve::Listener;
    use tokio_rustls::rustls::pki_types::ServerName;
    use tokio_rustls::{server, TlsAcceptor};

    use super::*;

    /// Accepts TCP and completes the TLS handshake; failed handshakes are skipped.
    struct TlsListener {
        tcp: TcpListener,
        acceptor: TlsAcceptor,
    }

    impl Listener for TlsListener {
        type Io = server::TlsStream<tokio::net::TcpStream>;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, SocketAddr) {
            loop {
                let Ok((tcp, addr)) = self.tcp.accept().await else {
                    continue;
                };
                if let Ok(tls) = self.acceptor.accept(tcp).await {
                    return (tls, addr);
                }
            }
        }

        fn local_addr(&self) -> std::io::Result<SocketAddr> {
            self.tcp.local_addr()
        }
    }

    #[tokio::test]
    async fn wss_runs_over_a_tls_stream_of_your_own() {
        let (acceptor, connector) = support::tls_configs();

        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = TlsListener { tcp, acceptor };
        let app = axum::Router::new().route("/ws", diarrhoea::http::ws(router()).route());
        let task = tokio::spawn(axum::serve(listener, app).into_future());

        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake");
        let conn = Connection::builder()
            .connect_ws_stream(format!("wss://localhost:{}/ws", addr.port()), tls)
            .await
            .unwrap();
        assert_eq!(conn.call::<i64>("add", (2, 3)).await.unwrap(), 5);
        // A frame far larger than a TLS record.
        let big = "x".repeat(1 << 20);
        let echoed: (String,) = conn.call("echo", (&big,)).await.unwrap();
        assert_eq!(echoed.0, big);
        conn.end();
        within("the connection to close", conn.closed()).await;
        task.abort();
    }
}

#[tokio::test]
async fn shutdown_finishes_calls_in_flight_refuses_new_ones_then_closes() {
    let endpoint = diarrhoea::http::ws(router());
    let app = axum::Router::new().route("/ws", endpoint.clone().route());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(axum::serve(listener, app).into_future());
    let url = format!("ws://{addr}/ws");
    let client = Connection::connect_ws(&url).await.unwrap();
    assert_eq!(client.call::<i64>("add", (1, 2)).await.unwrap(), 3);

    let running = tokio::spawn({
        let client = client.clone();
        async move { client.call::<u64>("sleep", (300,)).await }
    });
    while client.pending_calls() == 0 {
        tokio::task::yield_now().await;
    }
    let shutdown = tokio::spawn({
        let endpoint = endpoint.clone();
        async move { endpoint.shutdown(Duration::from_secs(10)).await }
    });
    // New calls are refused while the one in flight finishes.
    let refused = within("a call to be refused", async {
        loop {
            match client.call::<i64>("add", (1, 2)).await {
                Ok(_) => tokio::task::yield_now().await,
                Err(e) => break e,
            }
        }
    })
    .await;
    assert_eq!(
        refused.code(),
        Some(diarrhoea::code::SHUTTING_DOWN),
        "{refused:?}"
    );
    assert_eq!(
        within("the call in flight", running)
            .await
            .unwrap()
            .unwrap(),
        300
    );
    within("the shutdown", shutdown).await.unwrap();
    within("the client to close", client.closed()).await;
    // New upgrades are refused.
    let err = Connection::connect_ws(&url).await.unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("503"), "{chain}");
    task.abort();
}

#[tokio::test]
async fn a_stream_over_websocket_speaks_the_same_protocol() {
    let server = server(Config::new(), 16).await;
    // The client's stream, credit and all.
    let client = Connection::connect_ws(server.url()).await.unwrap();
    let mut items = client.call_stream::<u64>("count", (1000,)).window(8);
    let mut seen = 0;
    while let Some(item) = within("an item", items.next()).await {
        assert_eq!(item.unwrap(), seen);
        seen += 1;
    }
    assert_eq!(
        (seen, items.trailer_as::<u64>().unwrap().unwrap()),
        (1000, 1000)
    );
    // The frames themselves.
    let mut ws = raw_client(&server.url()).await;
    ws.send(Message::text(r#"["count",[5],1,{"stream":2}]"#))
        .await
        .unwrap();
    assert_eq!(recv_json(&mut ws).await, json!(["$/item", [1, 0]]));
    assert_eq!(recv_json(&mut ws).await, json!(["$/item", [1, 1]]));
    ws.send(Message::text(r#"["$/credit",[1,10]]"#))
        .await
        .unwrap();
    for n in 2..5 {
        assert_eq!(recv_json(&mut ws).await, json!(["$/item", [1, n]]));
    }
    assert_eq!(recv_json(&mut ws).await, json!([1, 5]));
}
