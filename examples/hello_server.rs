//! The Node README example, ported: a server that greets, adds, and talks back.
//!
//! ```text
//! cargo run --example hello_server [-- PATH]   # then, in another terminal:
//! cargo run --example hello_client [-- PATH]
//! ```
//!
//! Stop it with Ctrl-C or SIGTERM: in-flight calls finish and the socket file is removed.

mod report;

use diarrhoea::{Connection, Router, UnixListener};

/// A notification handler: no reply goes back, but taking the `Connection` lets it post to
/// the peer, like `client.post_message(...)` in the Node example.
async fn hello(peer: Connection, name: String) -> Result<(), diarrhoea::Error> {
    println!("received hello from {name}");
    peer.post_message("pong", (format!("hello, {name}!"),))
        .await
}

/// A request handler: whatever it returns is the reply to `conn.call("add", (a, b))`.
async fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    report::exit(run().await)
}

async fn run() -> Result<(), diarrhoea::Error> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./test.sock".into());

    let router = Router::new().route("hello", hello).route("add", add);

    let listener = UnixListener::bind(&path)?;
    println!("listening on {path}");
    diarrhoea::serve(listener, router)
        .with_graceful_shutdown(diarrhoea::shutdown_signal())
        .await?;
    println!("shut down, {path} removed");
    Ok(())
}
