//! The recommended middleware stack, on both sides, in one process.
//!
//! A server serves a `Router` behind tracing, a concurrency limit that sheds (answering -32002
//! naming the limit) and a rate limit that makes requests wait,
//! with a deadline from `Config`; a client
//! calls it through a layered caller (tracing, timeout, buffer, concurrency limit).
//!
//! ```text
//! cargo run --example middleware
//! ```
//!
//! Runs against a socket in a fresh temporary directory, prints what happens, and exits.

mod report;

use std::future::IntoFuture;
use std::time::Duration;

use diarrhoea::layer::{NameOverloadLayer, TraceLayer};
use diarrhoea::{Config, Connection, Error, Request, Router, UnixListener};
use tokio::task::JoinSet;
use tower::{BoxError, ServiceBuilder, ServiceExt};

const RATE: u64 = 20;
const CONCURRENCY: usize = 4;

fn router() -> Router {
    Router::new()
        .route("add", |a: i64, b: i64| async move { a + b })
        .route("sleep", |ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ms
        })
}

/// What a call's outcome looks like to a person.
fn outcome<T: std::fmt::Debug>(result: &Result<T, Error>) -> String {
    match result {
        Ok(value) => format!("ok {value:?}"),
        Err(e) => match e.remote() {
            Some(rpc) => format!("error {}: {}", rpc.code, rpc.message),
            None => format!("error: {e}"),
        },
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    report::exit(run().await)
}

async fn run() -> Result<(), diarrhoea::BoxError> {
    // Spans of the crate's TraceLayer, printed to stderr (RUST_LOG-style filtering is left out
    // to keep the example's dependencies small).
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();

    let dir = std::env::temp_dir().join(format!("diarrhoea-middleware-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("app.sock");

    // The server: a stack built per connection, so the limits are per connection.
    let listener = UnixListener::bind(&path)?;
    let stack = |_conn: &Connection| {
        ServiceBuilder::new()
            // Outermost: sees every outcome, including the limits' rejections.
            .layer(TraceLayer::incoming())
            // Sheds when all permits are taken, instead of queueing: LoadShed right
            // outside the limit, and a name for the peer.
            .layer(NameOverloadLayer::new(format!(
                "per-connection concurrency limit ({CONCURRENCY})"
            )))
            .load_shed()
            .concurrency_limit(CONCURRENCY)
            // Over the rate, requests wait (backpressure), at most CONCURRENCY of them:
            // the limit above bounds the queue. RateLimit is not Clone; the Buffer makes
            // the stack Clone.
            .buffer(CONCURRENCY)
            .rate_limit(RATE, Duration::from_secs(1))
            .service(router())
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(
        diarrhoea::serve(listener, stack)
            // The deadline is enforced by the connection around waiting for a permit,
            // readiness and the call: tower's Timeout would not count the wait
            // (tower-rs/tower#648).
            .config(Config::new().request_timeout(Duration::from_secs(5)))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );

    let conn = Connection::connect(&path).await?;
    println!("connected to {}", path.display());

    // 1. A plain call.
    let sum: Result<i64, _> = conn.call("add", (2, 3)).await;
    println!("add(2, 3)                  -> {}", outcome(&sum));

    // 2. Ten slow calls at once against a concurrency limit of 4: the rest are shed.
    let mut calls = JoinSet::new();
    for _ in 0..10 {
        let conn = conn.clone();
        calls.spawn(async move { conn.call::<u64>("sleep", (200,)).await });
    }
    let mut shed = 0;
    let mut served = 0;
    while let Some(result) = calls.join_next().await {
        let result = result?;
        match &result {
            Ok(_) => served += 1,
            Err(_) => {
                if shed == 0 {
                    println!("sleep(200) x10, one shed   -> {}", outcome(&result));
                }
                shed += 1;
            }
        }
    }
    println!("sleep(200) x10 at once     -> {served} served, {shed} shed");

    // 3. Thirty quick calls in a row: beyond the rate, they wait (backpressure).
    tokio::time::sleep(Duration::from_secs(1)).await; // a fresh rate window
    let start = std::time::Instant::now();
    let mut served = 0;
    for i in 0..30 {
        if conn.call::<i64>("add", (i, 1)).await.is_ok() {
            served += 1;
        }
    }
    println!(
        "add x30 in a row           -> {served} served in {:.1} s: the rate ({RATE}/s) made them wait",
        start.elapsed().as_secs_f64()
    );

    // 4. The calling side: a layered caller.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let caller = ServiceBuilder::new()
        .layer(TraceLayer::outgoing().connection_id(conn.id()))
        // Counts the wait for the concurrency permit below: the Buffer moves that wait into
        // `call`, after the timer has started.
        .timeout(Duration::from_millis(300))
        .buffer(64)
        .concurrency_limit(2)
        .service(conn.caller());
    let reply = caller
        .clone()
        .oneshot(Request::new("sleep", (50,))?)
        .await
        .and_then(|r| Ok(r.deserialize::<u64>()?));
    println!("layered sleep(50)          -> {}", show(&reply));
    let reply = caller
        .clone()
        .oneshot(Request::new("sleep", (1000,))?)
        .await
        .and_then(|r| Ok(r.deserialize::<u64>()?));
    println!("layered sleep(1000), 300ms -> {}", show(&reply));

    // 5. A deadline the peer is told about: `meta.timeout_ms`.
    let result = conn
        .call_with_timeout::<u64>("sleep", (1000,), Duration::from_millis(200))
        .await;
    println!(
        "call_with_timeout 200ms    -> {} (a timeout: {})",
        outcome(&result),
        result
            .as_ref()
            .is_err_and(|e| e.is_timeout() || e.code() == Some(diarrhoea::code::TIMEOUT))
    );

    conn.end();
    let _ = stop.send(());
    serving.await??;
    let _ = std::fs::remove_dir_all(&dir);
    println!("done");
    Ok(())
}

fn show(result: &Result<u64, BoxError>) -> String {
    match result {
        Ok(ms) => format!("ok {ms}"),
        Err(e) if e.is::<tower::timeout::error::Elapsed>() => "timed out locally".to_owned(),
        Err(e) => format!("error: {e}"),
    }
}
