//! A probe for the cost of one message: N round trips of one kind in one process, both ends
//! over a socket pair (or an in-memory stream), with every allocation counted.
//!
//! ```text
//! cargo run --release --example perfprobe -- --mode notify|call|seq --n N [--over socketpair|duplex]
//! ```
//!
//! - `notify`: `ping(x, i)` notifications, each answered by a `pong(x, i)` notification, with
//!   up to 1024 pings unanswered (as `flood --mode notify`).
//! - `call`: `echo(x, i)` calls from 256 tasks, one call in flight each.
//! - `seq`: `echo(x, i)` calls one after another.
//! - `seq-typed` and `seq-route`: the cost of a typed service: `probe.twice(x, i)` through the
//!   typed client of the service trait `Probe`, against `conn.call("twice_route", (x, i))` to
//!   a hand-written route of the same parameters; `x` is a `String` made for each call in both.
//!
//! One JSON line on stdout: `mode`, `n`, `allocs_per_rt`, `bytes_allocated_per_rt` (allocations
//! made while the round trips ran, both ends, divided by N) and `secs`.
//!
//! Instructions per round trip come from two runs under callgrind, so the start-up cost cancels:
//!
//! ```text
//! cargo build --release --example perfprobe
//! for n in 10240 20480; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$n target/release/examples/perfprobe --mode notify --n $n
//! done
//! # (instructions of the 20480 run - those of the 10240 run) / 10240, from the "summary:" lines
//! ```

mod report;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use diarrhoea::{Args, Connection, Router};
use serde::de::IgnoredAny;
use tokio::sync::Semaphore;

/// Counts every allocation of the process; the probe reads the counts around its loop.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// A global allocator can only be written with `unsafe`: this one adds two counters to the
// system allocator and changes nothing else.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`, as the caller promises.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(new_size as u64, Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Parser, Debug)]
#[command(
    about = "Counts the allocations (and, under callgrind, the instructions) of N round trips"
)]
struct Opts {
    /// What kind of round trip.
    #[arg(long, value_enum, default_value_t = Mode::Notify)]
    mode: Mode,
    /// How many round trips.
    #[arg(long, default_value_t = 20_480)]
    n: u64,
    /// What connects the two ends.
    #[arg(long, value_enum, default_value_t = Over::Socketpair)]
    over: Over,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum Mode {
    Notify,
    Call,
    Seq,
    SeqTyped,
    SeqRoute,
}

/// The typed side of `seq-typed`.
#[diarrhoea::service]
trait Probe {
    /// Its arguments back.
    async fn twice(&self, x: String, i: u64) -> (String, u64);
}

struct Prober;

impl Probe for Prober {
    async fn twice(&self, x: String, i: u64) -> (String, u64) {
        (x, i)
    }
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum Over {
    /// `Connection::pair()`: a Unix socket pair.
    Socketpair,
    /// `tokio::io::duplex`: in memory, no system calls.
    Duplex,
}

/// Pings a client may have unanswered, as `flood --mode notify`.
const WINDOW: usize = 1024;
/// Caller tasks in `call` mode, one call in flight each.
const CALLERS: u64 = 256;

fn main() -> std::process::ExitCode {
    report::exit(run())
}

fn run() -> Result<(), diarrhoea::BoxError> {
    let opts = Opts::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(probe(opts))
}

async fn probe(opts: Opts) -> Result<(), diarrhoea::BoxError> {
    let pongs = Arc::new(Semaphore::new(0));
    let window = Arc::new(Semaphore::new(WINDOW));
    let client_router = {
        let (pongs, window) = (pongs.clone(), window.clone());
        Router::new().route("pong", move |_x: IgnoredAny, _i: u64| {
            pongs.add_permits(1);
            window.add_permits(1);
            std::future::ready(())
        })
    };
    let server_router = Router::new()
        .route("ping", |peer: Connection, x: String, i: u64| async move {
            peer.post_message("pong", (x, i)).await
        })
        .route("echo", |args: Args| async move { args })
        .route("twice_route", |x: String, i: u64| async move {
            diarrhoea::Json((x, i))
        })
        .merge(Prober.into_router())?;
    let client = Connection::builder().service(client_router);
    let server = Connection::builder().service(server_router);
    let (client, _server) = match opts.over {
        Over::Socketpair => client.pair(server)?,
        Over::Duplex => {
            let (a, b) = tokio::io::duplex(64 * 1024);
            (client.serve_connection(a), server.serve_connection(b))
        }
    };
    // One round trip first, so lazily made state is not counted.
    let _: (String, u64) = client.call("echo", ("0123456789", 0)).await?;

    let n = opts.n;
    let (allocs, bytes) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
    let started = Instant::now();
    match opts.mode {
        Mode::Notify => {
            for i in 0..n {
                window.acquire().await?.forget();
                client.post_message("ping", ("0123456789", i)).await?;
            }
            pongs.acquire_many(u32::try_from(n)?).await?.forget();
        }
        Mode::Seq => {
            for i in 0..n {
                let _: (String, u64) = client.call("echo", ("0123456789", i)).await?;
            }
        }
        Mode::SeqTyped => {
            let probe = ProbeClient::new(client.clone());
            for i in 0..n {
                let _: (String, u64) = probe.twice("0123456789".to_owned(), i).await?;
            }
        }
        Mode::SeqRoute => {
            for i in 0..n {
                let _: (String, u64) = client
                    .call("twice_route", ("0123456789".to_owned(), i))
                    .await?;
            }
        }
        Mode::Call => {
            let mut callers = tokio::task::JoinSet::new();
            for task in 0..CALLERS {
                let client = client.clone();
                // Spread n over the tasks; the first ones take the remainder.
                let calls = n / CALLERS + u64::from(task < n % CALLERS);
                callers.spawn(async move {
                    for i in 0..calls {
                        let _: (String, u64) = client.call("echo", ("0123456789", i)).await?;
                    }
                    Ok::<_, diarrhoea::Error>(())
                });
            }
            while let Some(done) = callers.join_next().await {
                done??;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let allocs = ALLOCS.load(Relaxed) - allocs;
    let bytes = BYTES.load(Relaxed) - bytes;
    let mode = opts
        .mode
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_owned());
    let per = |x: u64| (x as f64 / n as f64 * 100.0).round() / 100.0;
    println!(
        "{}",
        serde_json::json!({
            "mode": mode,
            "n": n,
            "over": format!("{:?}", opts.over).to_lowercase(),
            "allocs_per_rt": per(allocs),
            "bytes_allocated_per_rt": per(bytes),
            "secs": (secs * 1e4).round() / 1e4,
        })
    );
    Ok(())
}
