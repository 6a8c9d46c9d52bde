//! Not a test of its own: the worker program that tests/transports.rs spawns over stdio
//! (a `harness = false` target, so its stdout carries frames and nothing else; see
//! `support::worker_exe` for why and how it is found).
//!
//! `DIARRHOEA_STDIO_WORKER` picks what it does:
//! - `serve`: `diarrhoea::serve_stdio(support::server_router())`, then exits 0.
//! - `parent`: spawns itself as a `serve` worker with `Builder::spawn_child`, checks that it
//!   answers, prints the worker's pid on its own stdout (not a protocol stream here), then
//!   waits to be killed. With `parent-busy`, a call to the worker's `sleep(60000)` is left
//!   running first.
//! - unset (`cargo test` runs every test target): does nothing and exits 0.

mod support;

use std::time::Duration;

use diarrhoea::Connection;
use tokio::process::Command;

const MODE: &str = "DIARRHOEA_STDIO_WORKER";

fn main() {
    let Ok(mode) = std::env::var(MODE) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match mode.as_str() {
        "serve" => runtime.block_on(diarrhoea::serve_stdio(support::server_router())),
        "parent" => runtime.block_on(parent(false)),
        "parent-busy" => runtime.block_on(parent(true)),
        other => {
            eprintln!("stdio_worker: unknown {MODE}={other:?}");
            std::process::exit(2);
        }
    }
}

async fn parent(busy: bool) {
    let exe = std::env::current_exe().expect("current_exe");
    let (conn, child) = Connection::builder()
        .spawn_child(Command::new(exe).env(MODE, "serve"))
        .expect("spawn the worker");
    let pid: u64 = support::within("the worker's pid", conn.call("pid", ()))
        .await
        .expect("the worker answers");
    assert_eq!(
        Some(pid as u32),
        child.id(),
        "the worker is the spawned child"
    );
    if busy {
        // Polled once here, so its frame is queued before `add`'s: once `add` is answered,
        // the worker is running `sleep`.
        let caller = conn.clone();
        let mut sleep = Box::pin(async move { caller.call::<u64>("sleep", (60_000,)).await });
        assert!(support::poll_once(&mut sleep).await.is_none());
        tokio::spawn(sleep);
        let _ = support::within("the worker", conn.call::<i64>("add", (1, 2))).await;
    }
    println!("{pid}");
    // Killed by the test; never outlive it for long if it failed to.
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop((conn, child));
}
