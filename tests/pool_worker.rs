//! Not a test of its own: the worker program that tests/pool.rs starts (a `harness = false`
//! target, so its stdout carries frames and nothing else; see `pool_worker_exe` in
//! tests/pool.rs for how it is found).
//!
//! What it does:
//! - with the argument `--serve`, or `DIARRHOEA_POOL_WORKER=serve`: serves [`router`] over its
//!   stdin and stdout on a current-thread runtime (so `freeze` stops everything, the
//!   connection's own answers to the pool's probes too), then exits 0. With
//!   `DIARRHOEA_POOL_WORKER_CRASH_AFTER_MS=n` it exits with status 3 `n` ms after it started;
//!   with `DIARRHOEA_POOL_WORKER_FREEZE_AT_START_MS=n` it blocks for `n` ms before it serves;
//!   with `DIARRHOEA_POOL_WORKER_FAREWELL=path` it takes 100 ms after its input ends, then
//!   creates the file at `path` and exits (what a worker given time to exit on its own does).
//! - `DIARRHOEA_POOL_WORKER=parent`: builds a pool of two copies of itself
//!   (`spawn_self(2, ["--serve"])`, or over socket pairs, `spawn_self_socket`, with
//!   `DIARRHOEA_POOL_WORKER_SOCKET=1`), waits until both are live, prints their pids on one line
//!   of its own stdout (not a protocol stream here), then waits to be killed.
//! - `DIARRHOEA_POOL_WORKER=listen`: serves [`router`] on the Unix socket at
//!   `DIARRHOEA_POOL_WORKER_PATH` (a stale socket file left there by a killed predecessor is
//!   replaced) until its stdin ends: its parent keeps the other end, so it never outlives it.
//! - neither (`cargo test` runs every test target): does nothing and exits 0.

#[allow(unused_imports, unreachable_pub)]
#[rustfmt::skip]
#[path = "support/calc.rs"]
mod calc;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diarrhoea::pool::Pool;
use diarrhoea::{Connection, Router};
use tokio::sync::watch;

const MODE: &str = "DIARRHOEA_POOL_WORKER";
const CRASH_AFTER_MS: &str = "DIARRHOEA_POOL_WORKER_CRASH_AFTER_MS";
const FREEZE_AT_START_MS: &str = "DIARRHOEA_POOL_WORKER_FREEZE_AT_START_MS";
const PATH: &str = "DIARRHOEA_POOL_WORKER_PATH";
const FAREWELL: &str = "DIARRHOEA_POOL_WORKER_FAREWELL";
const SOCKET: &str = "DIARRHOEA_POOL_WORKER_SOCKET";

fn main() {
    let mode = if std::env::args().skip(1).any(|a| a == "--serve") {
        "serve".to_owned()
    } else {
        match std::env::var(MODE) {
            Ok(mode) => mode,
            Err(_) => return,
        }
    };
    match mode.as_str() {
        "serve" => current_thread().block_on(serve()),
        "listen" => current_thread().block_on(listen()),
        "parent" => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(parent());
        }
        other => {
            eprintln!("pool_worker: unknown {MODE}={other:?}");
            std::process::exit(2);
        }
    }
}

/// One thread: `freeze` then stops everything the worker does, its probes' answers too.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn listen() {
    let path = std::env::var(PATH).expect("DIARRHOEA_POOL_WORKER_PATH names the socket");
    let listener = diarrhoea::UnixListener::bind(&path).expect("bind");
    let parent_gone = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while tokio::io::AsyncReadExt::read(&mut stdin, &mut buf)
            .await
            .is_ok_and(|n| n > 0)
        {}
    };
    let serving = diarrhoea::serve(listener, router()).with_graceful_shutdown(parent_gone);
    std::future::IntoFuture::into_future(serving)
        .await
        .expect("served");
}

async fn serve() {
    if let Some(ms) = std::env::var(FREEZE_AT_START_MS)
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        // Blocks the only runtime thread: the worker answers nothing, not even its first probe.
        std::thread::sleep(Duration::from_millis(ms));
    }
    if let Some(ms) = std::env::var(CRASH_AFTER_MS)
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            std::process::exit(3);
        });
    }
    diarrhoea::serve_stdio(router()).await;
    if let Ok(path) = std::env::var(FAREWELL) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(path, b"bye").expect("write the farewell file");
    }
}

/// The worker's methods:
///
/// - `pid()` -> this process's id.
/// - `sleep(ms)` and `nap(ms)` -> pid, after sleeping `ms` (without blocking the runtime):
///   one body under two names, one of which the churn tests mark idempotent.
/// - `hold()` and `hold_once()` -> pid, once a `release` notification has come (at once if one
///   came before): the same body under two names, one of which the tests mark idempotent.
/// - `release` (notification): lets every `hold` return, now and later.
/// - `note(x)` (notification): counted; `count()` -> how many came so far. The count goes up
///   when the frame is dispatched, so a call on the same connection answered after it sees it.
/// - `ask_parent(n)` -> the parent's `double(n)`, called back over the same connection.
/// - `freeze(ms)`: blocks this (single) runtime thread for `ms`: the worker stops answering
///   everything, probes included.
/// - `write_to(fd, text)` -> pid, after writing `text` into the descriptor it was given
///   (a worker over a socket pair).
/// - the typed service `Calc` of tests/support/calc.rs (`add`, `div`, `log`, `whoAmI`), for
///   tests/service.rs.
fn router() -> Router {
    let (release_tx, release_rx) = watch::channel(false);
    let release_tx = Arc::new(release_tx);
    let notes = Arc::new(AtomicU64::new(0));
    let counted = notes.clone();
    let hold = move || {
        let mut released = release_rx.clone();
        async move {
            // The sender lives in the router as long as this worker serves.
            let _ = released.wait_for(|released| *released).await;
            std::process::id()
        }
    };
    Router::new()
        .route("pid", || async { std::process::id() })
        .route("sleep", |ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            std::process::id()
        })
        .route("nap", |ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            std::process::id()
        })
        .route("hold", hold.clone())
        .route("hold_once", hold)
        .route("release", move || {
            release_tx.send_replace(true);
            async {}
        })
        .route("note", move |_x: u64| {
            notes.fetch_add(1, Ordering::SeqCst);
            async {}
        })
        .route("count", move || {
            let n = counted.load(Ordering::SeqCst);
            async move { n }
        })
        // A stream of this worker's pid, for ever.
        .route("pids", || async {
            diarrhoea::StreamReply::new(futures_util::stream::repeat(std::process::id()))
        })
        .route("ask_parent", |conn: Connection, n: i64| async move {
            conn.call::<i64>("double", (n,)).await
        })
        .route("freeze", |ms: u64| async move {
            std::thread::sleep(Duration::from_millis(ms));
            std::process::id()
        })
        .route("write_to", |fd: diarrhoea::Fd, text: String| async move {
            let mut file = std::fs::File::from(fd);
            std::io::Write::write_all(&mut file, text.as_bytes())
                .map(|()| std::process::id())
                .map_err(diarrhoea::RpcError::internal)
        })
        .merge(calc::my_calc().0)
        .expect("the typed service's names are free")
}

async fn parent() {
    let builder = if std::env::var_os(SOCKET).is_some() {
        Pool::builder().spawn_self_socket(2, ["--serve"])
    } else {
        Pool::builder().spawn_self(2, ["--serve"])
    };
    let pool = builder.build().expect("build the pool");
    tokio::time::timeout(Duration::from_secs(10), pool.until_live(2))
        .await
        .expect("two live workers");
    let pids: Vec<String> = pool
        .metrics()
        .workers
        .iter()
        .map(|w| w.pid.expect("a started worker has a pid").to_string())
        .collect();
    println!("{}", pids.join(" "));
    // Killed by the test; never outlive it for long if it failed to.
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop(pool);
}
