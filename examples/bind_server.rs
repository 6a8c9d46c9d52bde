//! The Node `bind_server.js` example, ported: answer each `ping` with a `pong` after a random
//! delay. Node's `bind(handlers)` is the service `diarrhoea::serve` gives each connection
//! here (`Builder::service` on a client, `Connection::set_service` on a live connection: in
//! this crate `bind` only means binding a socket); Node's `connection` event is the
//! per-connection factory, which greets each peer before anything is read from it.
//!
//! ```text
//! cargo run --example bind_server [-- PATH]   # then: cargo run --example bind_client
//! ```

mod report;

use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, SystemTime};

use diarrhoea::{Connection, Router, UnixListener};
use serde_json::Value;

/// A random number below `max`, without a `rand` dependency: every `RandomState` is seeded
/// afresh, and hashing the clock spreads the seed.
fn random(max: u64) -> u64 {
    RandomState::new().hash_one(SystemTime::now()) % max
}

/// `x` is any JSON value, as in JavaScript: Node's `bind_client.js` sends a string first,
/// then numbers.
async fn ping(peer: Connection, x: Value) -> Result<(), diarrhoea::Error> {
    println!("[{}] received ping {x}", peer.id());
    // Notifications on one connection run in order, so this delay also paces its peer.
    tokio::time::sleep(Duration::from_millis(random(1000))).await;
    let pong = random(99999);
    println!("[{}] sending pong {pong}", peer.id());
    peer.post_message("pong", (pong,)).await
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    report::exit(run().await)
}

async fn run() -> Result<(), diarrhoea::Error> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./test.sock".into());
    let router = Router::new().route("ping", ping);

    let listener = UnixListener::bind(&path)?;
    println!("listening on {path}");
    // Called for each new connection, like Node's `server.on('connection', ...)`.
    let on_connection = move |conn: &Connection| {
        println!("[{}] new connection", conn.id());
        if let Err(e) = conn.try_post_message("hello", (conn.id(),)) {
            eprintln!("[{}] could not greet: {e}", conn.id());
        }
        let conn = conn.clone();
        tokio::spawn(async move {
            conn.closed().await;
            println!("[{}] connection dropped", conn.id());
        });
        router.clone()
    };
    // On Ctrl-C: refuse new work, let handlers finish, close the connections, remove the file.
    diarrhoea::serve(listener, on_connection)
        .with_graceful_shutdown(diarrhoea::shutdown_signal())
        .await?;
    println!("shut down");
    Ok(())
}
