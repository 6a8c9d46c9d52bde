//! A worker process over stdin and stdout: this example spawns itself as a worker, calls it,
//! prints the answer and exits; the worker exits when its stdin closes.
//!
//! ```text
//! cargo run --example stdio_worker
//! ```
//!
//! No socket, no path, no port: the pipes belong to the two processes alone. If the parent
//! dies, the worker sees the end of its stdin and exits too.

mod report;

use diarrhoea::{Connection, Router};
use tokio::process::Command;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    report::exit(run().await)
}

async fn run() -> Result<(), diarrhoea::BoxError> {
    if std::env::args().nth(1).as_deref() == Some("worker") {
        // The worker's whole side. Its stdout carries the frames: log to stderr only.
        let router = Router::new().route("add", |a: i64, b: i64| async move { a + b });
        diarrhoea::serve_stdio(router).await;
        eprintln!("worker: stdin closed, exiting");
        return Ok(());
    }

    // The parent: start this same program as the worker, connected to its stdin and stdout.
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("worker");
    let (conn, mut worker) = Connection::builder().spawn_child(&mut command)?;

    let sum: i64 = conn.call("add", (2, 3)).await?;
    println!("the worker says add(2, 3) = {sum}");

    // Ending closes the worker's stdin; it finishes and exits.
    conn.end();
    conn.closed().await;
    println!("worker exited: {}", worker.wait().await?);
    Ok(())
}
