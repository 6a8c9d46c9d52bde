//! One `Router`, three ways in: a Unix socket for local processes, and HTTP + WebSocket in an
//! axum app for other machines and for tools that only speak HTTP.
//!
//! ```text
//! cargo run --example gateway --features axum [-- --http 127.0.0.1:8080 --socket ./test.sock]
//!
//! curl -d '[2,3]' http://127.0.0.1:8080/rpc/add                  # 5
//! curl -H 'Accept: application/x-ndjson' -d '[3]' http://127.0.0.1:8080/rpc/count
//!                                   # {"item":0} {"item":1} {"item":2} {"trailer":3}, a line each
//! echo '["add",[2,3],1]' | websocat ws://127.0.0.1:8080/ws       # [1,5]
//! echo '["add",[2,3],1]' | socat - UNIX-CONNECT:./test.sock      # [1,5]
//! ```
//!
//! Bound: `add(a, b)`, `echo(...args)`, `whoami()`, which tells how the caller came in, and
//! `count(n)`, a stream of the items `0..n` (NDJSON or server-sent events over HTTP,
//! `call_stream` on the socket and the WebSocket).
//! The limits are the recommended ones on both sides: a 1 MiB frame (and HTTP body), a 5 s
//! deadline, 64 requests at once per connection (shed with -32002 beyond), 256 HTTP calls at
//! once in all, 1024 WebSocket connections. The HTTP side shows one tower-http layer,
//! `TraceLayer`: a line per HTTP request on stderr. HTTP has no encryption here: keep it on
//! loopback, or put TLS and authentication in front (a layer on the axum app).

mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use diarrhoea::layer::{AllowPeersLayer, NameOverloadLayer};
use diarrhoea::{Args, Config, Connection, Identity, PeerInfo, Router, StreamReply, UnixListener};
use tower::ServiceBuilder;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    about = "One Router on a Unix socket and on HTTP + WebSocket"
)]
struct Opts {
    /// Where HTTP (`/rpc/{method}`) and the WebSocket (`/ws`) listen; port 0 picks a free one
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// The Unix socket path
    #[arg(long, value_name = "PATH", default_value = "./test.sock")]
    socket: PathBuf,
}

async fn add(a: i64, b: i64) -> i64 {
    a + b
}

async fn echo(args: Args) -> Args {
    args
}

/// The items `0..n`, then `n`: paced by the caller's credit (socket, WebSocket) or by the
/// HTTP connection.
async fn count(n: u64) -> StreamReply<u64> {
    StreamReply::new(futures_util::stream::iter(0..n)).trailer(n)
}

/// How the caller came in: its uid on the socket, its address over HTTP and WebSocket.
async fn whoami(peer: PeerInfo) -> String {
    match &peer.identity {
        Identity::Unix(cred) => format!("uid {} on the Unix socket", cred.uid),
        Identity::Http(http) => match http.addr() {
            Some(addr) => format!("{addr} over HTTP or WebSocket"),
            None => "over HTTP or WebSocket".into(),
        },
        other => format!("{other:?}"),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    report::exit(run().await)
}

async fn run() -> Result<(), diarrhoea::BoxError> {
    let opts = Opts::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(Level::INFO)
        .init();

    let router = Router::new()
        .route("add", add)
        .route("echo", echo)
        .route("whoami", whoami)
        .route("count", count);
    let config = Config::new()
        .max_frame_size(1 << 20)
        .request_timeout(Duration::from_secs(5));

    // Per connection, socket or WebSocket: 64 requests at once, shed with -32002 beyond.
    let per_connection = {
        let router = router.clone();
        move |_conn: &Connection| {
            ServiceBuilder::new()
                .layer(NameOverloadLayer::new(
                    "per-connection concurrency limit (64)",
                ))
                .load_shed()
                .concurrency_limit(64)
                .service(router.clone())
        }
    };
    // The socket also admits only this user's processes (a WebSocket peer has no uid: the
    // HTTP side authenticates in the axum app instead).
    let allow = AllowPeersLayer::same_user()?;
    let local = {
        let per_connection = per_connection.clone();
        move |conn: &Connection| {
            ServiceBuilder::new()
                .layer(allow.clone())
                .service(per_connection(conn))
        }
    };
    // HTTP calls share one limit (a clone of a ConcurrencyLimit shares its semaphore).
    let http_calls = ServiceBuilder::new()
        .layer(NameOverloadLayer::new("HTTP concurrency limit (256)"))
        .load_shed()
        .concurrency_limit(256)
        .service(router.clone());

    // Kept to drain its connections at the end: axum's shutdown does not wait for them.
    let ws_endpoint = diarrhoea::http::ws(per_connection)
        .config(config.clone())
        .max_connections(1024);
    let app = axum::Router::new()
        .nest(
            "/rpc",
            diarrhoea::http::rest(http_calls)
                .config(config.clone())
                .router(),
        )
        .route("/ws", ws_endpoint.clone().route())
        // Any tower-http layer applies as to any route: here, a line per HTTP request.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        );

    let unix = UnixListener::bind(&opts.socket)?;
    let tcp = tokio::net::TcpListener::bind(opts.http).await?;
    let http_addr = tcp.local_addr()?;
    println!(
        "listening on {} and http://{http_addr} (POST /rpc/{{method}}, WebSocket /ws)",
        opts.socket.display()
    );

    let socket_side = async {
        diarrhoea::serve(unix, local)
            .config(config.clone())
            .with_graceful_shutdown(diarrhoea::shutdown_signal())
            .await
            .map_err(|e| -> diarrhoea::BoxError { Box::new(e) })
    };
    let http_side = async {
        axum::serve(tcp, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(diarrhoea::shutdown_signal())
            .await
            .map_err(|e| -> diarrhoea::BoxError { Box::new(e) })?;
        // Then the WebSocket connections: calls in flight finish, new ones get -32004.
        ws_endpoint
            .shutdown(diarrhoea::DEFAULT_SHUTDOWN_TIMEOUT)
            .await;
        Ok(())
    };
    tokio::try_join!(socket_side, http_side)?;
    println!("shut down, {} removed", opts.socket.display());
    Ok(())
}
