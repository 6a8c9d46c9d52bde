//! The Node `bind_client.js` example, ported: send `ping`s at random intervals and print the
//! server's `pong`s; stop after a number of exchanges (default 5) or on Ctrl-C. Node's
//! `client.bind(handlers)` is `Connection::builder().service(handlers)` here, before
//! connecting (or `Connection::set_service` on a live connection).
//!
//! ```text
//! cargo run --example bind_client [-- PATH [EXCHANGES]]
//! ```

mod report;

use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, SystemTime};

use diarrhoea::{Connection, Router};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{sleep, Instant};

/// A random number below `max`, without a `rand` dependency.
fn random(max: u64) -> u64 {
    RandomState::new().hash_one(SystemTime::now()) % max
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    report::exit(run().await)
}

async fn run() -> Result<(), diarrhoea::Error> {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| "./test.sock".into());
    let exchanges: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(5);

    // Handlers run on the connection's task; a channel hands the pongs to `main`, which
    // decides when to stop.
    let (pongs_tx, mut pongs) = mpsc::channel::<Value>(16);
    let handlers = Router::new()
        .route("pong", move |y: Value| {
            let pongs_tx = pongs_tx.clone();
            // `main` stops listening at the end; a late pong is then just dropped.
            async move {
                pongs_tx.send(y).await.ok();
            }
        })
        .route("hello", |id: u64| async move {
            println!("server says hello: connection {id}")
        });
    let conn = Connection::builder()
        .service(handlers)
        .connect(&path)
        .await?;

    conn.post_message("ping", ("Hello world!",)).await?;
    let mut next_ping = std::pin::pin!(sleep(Duration::from_millis(200 + random(1300))));
    // Created once: a Ctrl-C between two turns of the loop is not lost.
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut received = 0;
    while received < exchanges {
        tokio::select! {
            Some(y) = pongs.recv() => {
                received += 1;
                println!("received pong {y} ({received}/{exchanges})");
            }
            () = &mut next_ping => {
                let ping = random(111111);
                println!("sending ping {ping}");
                conn.post_message("ping", (ping,)).await?;
                next_ping.as_mut().reset(Instant::now() + Duration::from_millis(200 + random(1300)));
            }
            _ = &mut ctrl_c => break,
            () = conn.closed() => {
                println!("server closed the connection");
                return Ok(());
            }
        }
    }
    drop(pongs);
    // Flush what is queued and close the write side; the server then closes too.
    conn.end();
    conn.closed().await;
    println!("socket closed after {received} exchanges");
    Ok(())
}
