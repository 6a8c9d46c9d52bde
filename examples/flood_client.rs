//! The Node `flood_client.js` example, ported: every second, post a burst of 40000
//! `ping("flood" + i, now_ms)` notifications and print how many `pong`s came back per second.
//!
//! With `--mode call`, flood `echo` calls instead, keeping at most `--inflight K` (default 256)
//! waiting for their replies, and print completed calls per second.
//!
//! ```text
//! cargo run --release --example flood_client [-- [PATH] [--mode notify|call] [--inflight K] [--seconds S]]
//! ```
//!
//! Runs until Ctrl-C, or for S seconds, then prints a summary.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diarrhoea::{Client, Connection, Router};

/// Pings per burst, as in `flood_client.js`.
const FLOODING: u64 = 40000;

/// Messages sent; replies (pongs or completed calls) since the last meter line, and in total.
static SENT: AtomicU64 = AtomicU64::new(0);
static RECEIVED: AtomicU64 = AtomicU64::new(0);
static TOTAL: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn count_reply() -> u64 {
    RECEIVED.fetch_add(1, Relaxed);
    TOTAL.fetch_add(1, Relaxed) + 1
}

async fn pong(_x: String, time: u64) {
    // Like Node: one round-trip time sample per burst.
    if count_reply().is_multiple_of(FLOODING) {
        println!("RTT {} ms", now_ms().saturating_sub(time));
    }
}

struct Options {
    path: String,
    call_mode: bool,
    inflight: usize,
    seconds: Option<u64>,
}

fn options() -> Result<Options, String> {
    let mut opts = Options {
        path: "./test.sock".into(),
        call_mode: false,
        inflight: 256,
        seconds: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--mode" => {
                opts.call_mode = match value("--mode")?.as_str() {
                    "call" => true,
                    "notify" => false,
                    other => return Err(format!("unknown mode {other}: use notify or call")),
                }
            }
            "--inflight" => {
                opts.inflight = value("--inflight")?
                    .parse()
                    .map_err(|e| format!("--inflight: {e}"))?
            }
            "--seconds" => {
                opts.seconds = Some(
                    value("--seconds")?
                        .parse()
                        .map_err(|e| format!("--seconds: {e}"))?,
                )
            }
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            path => opts.path = path.into(),
        }
    }
    opts.inflight = opts.inflight.max(1);
    Ok(opts)
}

/// Runs `on_tick` once a second, and prints the replies counted since the last line, until
/// the deadline, Ctrl-C, or the peer closes the connection.
async fn meter(
    conn: &Connection,
    label: &str,
    seconds: Option<u64>,
    mut on_tick: impl AsyncFnMut() -> Result<(), diarrhoea::Error>,
) {
    let deadline = seconds.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    let mut last: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c => return,
            () = conn.closed() => return eprintln!("the peer closed the connection"),
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => return,
        }
        // The first tick is immediate: there is nothing to report yet.
        if let Some(last) = last {
            let count = RECEIVED.swap(0, Relaxed);
            println!(
                "{label} {:.0} msg / second",
                count as f64 / last.elapsed().as_secs_f64()
            );
        }
        last = Some(Instant::now());
        if let Err(e) = on_tick().await {
            return eprintln!("stopping: {e}");
        }
    }
}

/// Notification mode: a burst a second, each ping answered by a pong.
async fn flood_notify(conn: &Connection, seconds: Option<u64>) {
    meter(conn, "receive", seconds, async || {
        let now = now_ms();
        for i in 0..FLOODING {
            // Waits while the outgoing queue is full: a burst never buffers without bound.
            conn.post_message("ping", (format!("flood{i}"), now))
                .await?;
            SENT.fetch_add(1, Relaxed);
        }
        Ok(())
    })
    .await;
}

/// Call mode: `inflight` workers, each with one `echo` call waiting for its reply at a time.
async fn flood_calls(conn: &Connection, inflight: usize, seconds: Option<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..inflight {
        let (conn, stop) = (conn.clone(), stop.clone());
        workers.spawn(async move {
            for seq in 0u64.. {
                if stop.load(Relaxed) {
                    break;
                }
                SENT.fetch_add(1, Relaxed);
                let reply: (usize, u64) = conn.call("echo", (worker, seq)).await?;
                if reply != (worker, seq) {
                    eprintln!("echo mismatch: sent {:?}, got {reply:?}", (worker, seq));
                }
                count_reply();
            }
            Ok::<_, diarrhoea::Error>(())
        });
    }
    meter(conn, "calls", seconds, async || Ok(())).await;
    stop.store(true, Relaxed);

    // A peer that cannot reply (a diarrhoea 1.1.0 Node server) would keep workers waiting.
    let drained = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(done) = workers.join_next().await {
            if let Ok(Err(e)) = done {
                eprintln!("call failed: {e}");
            }
        }
    })
    .await;
    if drained.is_err() {
        let waiting = conn.pending_calls();
        eprintln!("{waiting} calls never answered: does the peer support calls?");
        conn.close();
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let opts = options()?;
    let handlers = Router::new().route("pong", pong);
    let conn = Client::builder().bind(handlers).connect(&opts.path).await?;

    let started = Instant::now();
    if opts.call_mode {
        flood_calls(&conn, opts.inflight, opts.seconds).await;
    } else {
        flood_notify(&conn, opts.seconds).await;
    }

    // Ending lets the server answer everything already sent before it closes its side.
    conn.end();
    if tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .is_err()
    {
        conn.close();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (sent, received) = (SENT.load(Relaxed), TOTAL.load(Relaxed));
    println!(
        "summary: sent {sent}, received {received} in {elapsed:.1} s: {:.0} msg / second",
        received as f64 / elapsed
    );
    Ok(())
}
