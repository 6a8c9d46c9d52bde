//! The Node `flood_server.js` example, ported: answer every `ping(x, time)` with
//! `pong(x, time)` and print how many messages arrive per second. Also answers `echo(...args)`
//! calls, for `flood_client --mode call`.
//!
//! ```text
//! cargo run --release --example flood_server [-- PATH]   # then: cargo run --release --example flood_client
//! ```

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use diarrhoea::{Args, Connection, Router, Server};

/// Messages received since the last meter line; a counter shared by all connections.
static RECEIVED: AtomicU64 = AtomicU64::new(0);

async fn ping(peer: Connection, x: String, time: u64) -> Result<(), diarrhoea::Error> {
    RECEIVED.fetch_add(1, Relaxed);
    peer.post_message("pong", (x, time)).await
}

/// Variadic, like `echo(...args)`: `Args` takes the arguments unparsed, and returning them
/// makes them the reply.
async fn echo(args: Args) -> Args {
    RECEIVED.fetch_add(1, Relaxed);
    args
}

#[tokio::main]
async fn main() -> Result<(), diarrhoea::Error> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./test.sock".into());
    let router = Router::new().route("ping", ping).route("echo", echo);

    // The meter, like Node's `Meter`: one line a second, even when idle.
    tokio::spawn(async {
        let mut last = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let count = RECEIVED.swap(0, Relaxed);
            println!(
                "receive {:.0} msg / second",
                count as f64 / last.elapsed().as_secs_f64()
            );
            last = Instant::now();
        }
    });

    let server = Server::bind(&path)?;
    println!("listening on {path}");
    server
        .serve_with_shutdown(router, diarrhoea::shutdown_signal())
        .await
}
