//! The Node `bind_server.js` example, ported: answer each `ping` with a `pong` after a random
//! delay. Connections are accepted one by one, as with Node's `connection` event, so the
//! server can post to each connection it accepts.
//!
//! ```text
//! cargo run --example bind_server [-- PATH]   # then: cargo run --example bind_client
//! ```

use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, SystemTime};

use diarrhoea::{Connection, Router, Server};
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
async fn main() -> Result<(), diarrhoea::Error> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./test.sock".into());
    let router = Router::new().route("ping", ping);

    let server = Server::bind(&path)?;
    println!("listening on {path}");
    let mut shutdown = std::pin::pin!(diarrhoea::shutdown_signal());
    loop {
        let conn = tokio::select! {
            _ = &mut shutdown => break,
            conn = server.accept(router.clone()) => conn?,
        };
        println!("[{}] new connection", conn.id());
        // A connection's handle lives on after `accept`: greet it, and report when it ends.
        tokio::spawn(async move {
            if let Err(e) = conn.post_message("hello", (conn.id(),)).await {
                eprintln!("[{}] could not greet: {e}", conn.id());
            }
            conn.closed().await;
            println!("[{}] connection dropped", conn.id());
        });
    }
    // Refuse new work, let handlers finish, close the connections and remove the socket file.
    server.shutdown().await;
    println!("shut down");
    Ok(())
}
