//! One-command pool flood: this program starts N copies of itself as workers, spreads a
//! CPU-bound method over them through a [`diarrhoea::pool::Pool`], and ends with one JSON line.
//!
//! ```text
//! cargo run --release --example pool -- [--workers N] [--work K] [--seconds S]
//!     [--inflight K] [--kill-after S2] [--kill-every S3] [--trivial]
//! ```
//!
//! - `--workers N`: worker processes (default: the number of cores). Each serves
//!   `count_primes(k)` (how many primes are below `k`, by trial division: plain CPU work) and
//!   `noop()` over its stdin and stdout, on a single-threaded runtime, so one worker uses at
//!   most one core.
//! - `--work K`: the `k` of every call (default 20000); `--seconds S` (default 5);
//!   `--inflight K`: calls kept waiting for their replies, one task each (default 256).
//! - `--kill-after S2`: `SIGKILL`s worker 0 `S2` seconds in. The pool takes it out of the
//!   balance, retries its calls on the others (`count_primes` is marked idempotent) and
//!   restarts it; `rejoin_ms` is the time from the kill to the first call the restarted worker
//!   answered (read from the pool's per-worker counters, polled every millisecond).
//! - `--kill-every S3`: `SIGKILL`s a random live worker every `S3` seconds (a fraction is
//!   fine: `0.5`) for the whole run, to show the pool under churn: `kills` counts them.
//! - `--trivial`: floods `noop()` instead, to show the pool's own cost, and before that
//!   floods worker 0 over its single connection directly (the same loop, without the pool)
//!   for the same time: `direct_calls_per_s`. Compare with `--workers 1`. `noop` is not
//!   marked idempotent, so no call is copied for a retry: the cost is the balancing.
//! - `--calls N` (for a profiler): each flood stops after about N calls instead of after
//!   `--seconds`; `--only direct|pool` (with `--trivial`) runs one of the two floods. The
//!   pool's own cost per call, in instructions, is then the difference of two callgrind runs
//!   of this (parent) process:
//!
//!   ```text
//!   valgrind --tool=callgrind target/release/examples/pool --workers 1 --trivial --only direct --calls 20000
//!   valgrind --tool=callgrind target/release/examples/pool --workers 1 --trivial --only pool --calls 20000
//!   ```
//!
//! Every second a meter line goes to stderr, with each worker's share; the last line on stdout:
//!
//! ```text
//! {"calls_per_s":..,"failed":0,"kills":0,"lost":0,"p50_us":..,"p99_us":..,"per_worker":[..],
//!  "received":..,"rejoin_ms":null,"restarts":0,"retried":0,"seconds":5,"sent":..,"stuck":0,
//!  "workers":2}
//! ```
//!
//! `sent` counts calls made, `received` calls answered with the right result, `failed` calls
//! that ended in an error, and `lost = sent - received`. When the flood ends (and the kills
//! with it), calls still in flight get [`DRAIN`] to resolve. Then the pool shuts down, which
//! fails every call still waiting (for a worker to come back, say) with `is_closed()`; a call
//! that has not resolved a second after that is counted as `stuck` (the pool promises every
//! call resolves, so it must be 0), and the program goes on to its report instead of waiting
//! forever. No worker outlives the run: the pool ends them at its
//! shutdown, and if this process is killed, each worker sees the end of its stdin and exits.

mod report;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use diarrhoea::pool::{Pool, PoolMetrics};
use diarrhoea::{BoxError, Request, Response, Router};
use hdrhistogram::Histogram;
use serde_json::json;
use tower::{Service, ServiceExt};

#[derive(Parser, Debug, Clone)]
#[command(about = "Floods a pool of worker processes; one JSON line of figures at the end")]
struct Opts {
    /// Worker processes (default: the number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// The argument of every `count_primes` call: primes below it are counted.
    #[arg(long, default_value_t = 20_000)]
    work: u64,
    /// How long to flood.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Calls kept in flight, one task each.
    #[arg(long, default_value_t = 256)]
    inflight: usize,
    /// SIGKILL worker 0 this many seconds in.
    #[arg(long)]
    kill_after: Option<u64>,
    /// SIGKILL a random live worker every this many seconds, for the whole run.
    #[arg(long, value_parser = positive_seconds)]
    kill_every: Option<f64>,
    /// Flood `noop()`, and a direct connection to one worker first, to show the pool's cost.
    #[arg(long)]
    trivial: bool,
    /// Stop each flood after about N calls instead of after `--seconds` (for a profiler).
    #[arg(long, value_name = "N")]
    calls: Option<u64>,
    /// With `--trivial`: run only the direct flood, or only the pool's.
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Internal: run as a worker over stdin and stdout.
    #[arg(long, hide = true)]
    worker: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Only {
    Direct,
    Pool,
}

/// How long a flood goes on: `seconds`, or until about `calls` were made (at most `seconds`).
#[derive(Clone, Copy)]
struct Length {
    seconds: Duration,
    calls: Option<u64>,
}

/// How long calls still in flight when the flood ends get to resolve before they count as
/// stuck.
const DRAIN: Duration = Duration::from_secs(5);

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Ok(s),
        _ => Err(format!("`{text}` is not a positive number of seconds")),
    }
}

fn main() -> std::process::ExitCode {
    report::exit(run())
}

fn run() -> Result<(), BoxError> {
    let opts = Opts::parse();
    if opts.worker {
        // One thread: a worker is one core's worth of work.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(diarrhoea::serve_stdio(worker_router()));
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(parent(opts))
}

/// What a worker serves. `noop` stays unmarked: `--trivial` shows the cost of balancing
/// itself; an idempotent method adds the copy of each request that a retry would send.
#[diarrhoea::service]
trait Work {
    /// Primes below `k`: CPU-bound work.
    #[rpc(idempotent)]
    async fn count_primes(&self, k: u64) -> u64;
    /// Nothing at all: the cost of a call itself.
    async fn noop(&self);
}

struct Worker;

impl Work for Worker {
    async fn count_primes(&self, k: u64) -> u64 {
        count_primes(k)
    }

    async fn noop(&self) {}
}

fn worker_router() -> Router {
    Worker.into_router()
}

/// Primes below `k`, by trial division: work that only a CPU can do.
fn count_primes(k: u64) -> u64 {
    (2..k)
        .filter(|&n| (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
        .count() as u64
}

/// What the flood tasks count.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    received: AtomicU64,
    failed: AtomicU64,
}

async fn parent(opts: Opts) -> Result<(), BoxError> {
    let workers = opts
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let pool = Pool::builder()
        .spawn_self(workers, ["--worker"])
        .idempotent(WorkClient::IDEMPOTENT)
        .build()?;
    tokio::time::timeout(Duration::from_secs(30), pool.until_live(workers))
        .await
        .map_err(|_| "the workers did not start within 30 s")?;

    let (method, args, expected) = if opts.trivial {
        ("noop", Request::new("noop", ())?, "null".to_string())
    } else {
        let args = Request::new("count_primes", (opts.work,))?;
        ("count_primes", args, count_primes(opts.work).to_string())
    };
    let args = args.args().clone();
    let seconds = Duration::from_secs(opts.seconds);

    let direct_calls_per_s = if opts.trivial && opts.only != Some(Only::Pool) {
        let conn = pool.connections().swap_remove(0);
        let (counts, _, elapsed, _) = flood(
            |_| conn.caller(),
            method,
            &args,
            &expected,
            opts.inflight,
            Length {
                seconds,
                calls: opts.calls,
            },
            None,
        )
        .await;
        Some(counts.received.load(Relaxed) as f64 / elapsed.as_secs_f64())
    } else {
        None
    };
    if opts.only == Some(Only::Direct) {
        let direct = direct_calls_per_s.unwrap_or_default().round();
        println!(
            "{}",
            json!({ "workers": workers, "direct_calls_per_s": direct })
        );
        pool.shutdown(Duration::from_secs(5)).await;
        return Ok(());
    }

    let start = pool.metrics();
    let rejoin_ms = Arc::new(AtomicU64::new(u64::MAX));
    if let Some(after) = opts.kill_after {
        tokio::spawn(kill_one(
            pool.clone(),
            Duration::from_secs(after),
            rejoin_ms.clone(),
        ));
    }
    let kills = Arc::new(AtomicU64::new(0));
    let killing = opts.kill_every.map(|every| {
        tokio::spawn(kill_every(
            pool.clone(),
            Duration::from_secs_f64(every),
            Duration::from_secs(opts.seconds),
            kills.clone(),
        ))
    });
    let metered = pool.clone();
    let (counts, histogram, elapsed, stuck) = flood(
        |_| pool.caller(),
        method,
        &args,
        &expected,
        opts.inflight,
        Length {
            seconds,
            calls: opts.calls,
        },
        Some(metered),
    )
    .await;
    if let Some(killing) = killing {
        killing.abort();
    }
    let end = pool.metrics();
    pool.shutdown(Duration::from_secs(5)).await;

    let sent = counts.sent.load(Relaxed);
    let received = counts.received.load(Relaxed);
    let per_worker: Vec<u64> = (end.workers.iter().zip(&start.workers))
        .map(|(end, start)| end.completed - start.completed)
        .collect();
    let rejoin = rejoin_ms.load(Relaxed);
    let mut result = json!({
        "workers": workers,
        "seconds": opts.seconds,
        "calls_per_s": (received as f64 / elapsed.as_secs_f64()).round(),
        "p50_us": histogram.value_at_quantile(0.5),
        "p99_us": histogram.value_at_quantile(0.99),
        "sent": sent,
        "received": received,
        "lost": sent - received,
        "failed": counts.failed.load(Relaxed),
        "stuck": stuck,
        "kills": kills.load(Relaxed),
        "retried": end.retried - start.retried,
        "restarts": end.workers.iter().map(|w| w.restarts).sum::<u64>(),
        "per_worker": per_worker,
        "rejoin_ms": (rejoin != u64::MAX).then_some(rejoin),
    });
    if let Some(direct) = direct_calls_per_s {
        result["direct_calls_per_s"] = json!(direct.round());
    }
    println!("{result}");
    Ok(())
}

/// Keeps `inflight` calls of `method` going for `seconds` (or until about `calls` were made),
/// each task through its own service
/// made by `service(task)`; then waits up to [`DRAIN`] for the answers still on their way.
/// Calls still unresolved then get a second more after `pool` (if any) is shut down; returns
/// how many had not resolved even then (their tasks are aborted).
async fn flood<S, F>(
    service: F,
    method: &'static str,
    args: &diarrhoea::Args,
    expected: &str,
    inflight: usize,
    Length { seconds, calls }: Length,
    pool: Option<Pool>,
) -> (Arc<Counts>, Histogram<u64>, Duration, usize)
where
    F: Fn(usize) -> S,
    S: Service<Request, Response = Response, Error = diarrhoea::Error> + Send + 'static,
    S::Future: Send,
{
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..inflight)
        .map(|task| {
            let mut service = service(task);
            let (counts, stop, args) = (counts.clone(), stop.clone(), args.clone());
            let expected = expected.to_string();
            tokio::spawn(async move {
                let mut histogram = Histogram::<u64>::new(3).expect("3 significant digits");
                while !stop.load(Relaxed) {
                    let request = Request::from_parts(method, args.clone());
                    let sent = Instant::now();
                    if counts.sent.fetch_add(1, Relaxed) >= calls.unwrap_or(u64::MAX) {
                        counts.sent.fetch_sub(1, Relaxed);
                        break;
                    }
                    let reply = match service.ready().await {
                        Ok(ready) => ready.call(request).await,
                        Err(e) => Err(e),
                    };
                    match reply {
                        Ok(reply) if reply.get() == expected => {
                            counts.received.fetch_add(1, Relaxed);
                            let _ = histogram.record(sent.elapsed().as_micros() as u64);
                        }
                        Ok(_) | Err(_) => {
                            counts.failed.fetch_add(1, Relaxed);
                        }
                    }
                }
                histogram
            })
        })
        .collect();
    let metering = pool.clone().map(|pool| tokio::spawn(print_meter(pool)));
    if calls.is_some() {
        // Until the tasks have made their calls (at most `seconds` still). Looked at rarely:
        // under a profiler, each look would count against the calls.
        let until = tokio::time::Instant::now() + seconds;
        while tasks.iter().any(|task| !task.is_finished()) && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    } else {
        tokio::time::sleep(seconds).await;
    }
    stop.store(true, Relaxed);
    let elapsed = started.elapsed();
    let mut histogram = Histogram::<u64>::new(3).expect("3 significant digits");
    // Each task has at most one call in flight: a task still running is a call unresolved.
    let drain_until = tokio::time::Instant::now() + DRAIN;
    let mut unresolved = Vec::new();
    for mut task in tasks {
        match tokio::time::timeout_at(drain_until, &mut task).await {
            Ok(done) => add(&mut histogram, done),
            Err(_) => unresolved.push(task),
        }
    }
    let mut stuck = 0;
    if !unresolved.is_empty() {
        if let Some(pool) = &pool {
            pool.shutdown(Duration::ZERO).await;
        }
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        for mut task in unresolved {
            match tokio::time::timeout_at(until, &mut task).await {
                Ok(done) => add(&mut histogram, done),
                Err(_) => {
                    task.abort();
                    stuck += 1;
                }
            }
        }
    }
    if let Some(metering) = metering {
        metering.abort();
    }
    (counts, histogram, elapsed, stuck)
}

/// Adds a finished flood task's latencies.
fn add(histogram: &mut Histogram<u64>, done: Result<Histogram<u64>, tokio::task::JoinError>) {
    match done {
        Ok(done) => histogram.add(done).expect("same precision"),
        Err(failed) => eprintln!("a flood task failed: {failed}"),
    }
}

/// A line a second on stderr: calls answered in that second, and each worker's share.
async fn print_meter(pool: Pool) {
    let mut last = pool.metrics();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    for second in 1.. {
        tick.tick().await;
        let now = pool.metrics();
        eprintln!("{}", meter_line(second, &last, &now));
        last = now;
    }
}

fn meter_line(second: u64, last: &PoolMetrics, now: &PoolMetrics) -> String {
    let done: Vec<u64> = (now.workers.iter().zip(&last.workers))
        .map(|(now, last)| now.completed - last.completed)
        .collect();
    let total: u64 = done.iter().sum();
    let shares: Vec<String> = (done.iter().enumerate())
        .map(|(i, n)| format!("w{i} {:.0}%", 100.0 * *n as f64 / total.max(1) as f64))
        .collect();
    format!(
        "t={second}s calls/s={total} live={} {}",
        now.live,
        shares.join(" ")
    )
}

/// SIGKILLs a random live worker every `every` for `run`, counting the kills.
async fn kill_every(pool: Pool, every: Duration, run: Duration, kills: Arc<AtomicU64>) {
    // Which worker: a small generator seeded from the clock is random enough here.
    let mut seed = u64::from(
        std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .unwrap_or_default()
            .subsec_nanos(),
    ) | 1;
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval_at(start + every, every);
    loop {
        if tick.tick().await >= start + run {
            return;
        }
        let live: Vec<u32> = (pool.metrics().workers.iter())
            .filter(|w| w.live)
            .filter_map(|w| w.pid)
            .collect();
        if live.is_empty() {
            continue;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let pid = live[(seed % live.len() as u64) as usize];
        if kill9(pid) {
            kills.fetch_add(1, Relaxed);
        }
    }
}

/// Sends SIGKILL to `pid`; `false` if it was gone already.
fn kill9(pid: u32) -> bool {
    rustix::process::Pid::from_raw(pid as i32).is_some_and(|pid| {
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok()
    })
}

/// Kills worker 0 after `after`, then records when its restarted successor answers a call.
async fn kill_one(pool: Pool, after: Duration, rejoin_ms: Arc<AtomicU64>) {
    tokio::time::sleep(after).await;
    let before = pool.metrics().workers[0].clone();
    let Some(pid) = before.pid else { return };
    let killed = Instant::now();
    let killed_it = kill9(pid);
    eprintln!("killed worker 0 (pid {pid}): {killed_it}");
    let deadline = killed + Duration::from_secs(10);
    let mut restarted_at: Option<u64> = None;
    while Instant::now() < deadline {
        let now = pool.metrics().workers[0].clone();
        if now.restarts > before.restarts {
            // Calls it completes from here on are the new worker's.
            let baseline = *restarted_at.get_or_insert(now.completed);
            if now.completed > baseline {
                let ms = killed.elapsed().as_millis() as u64;
                rejoin_ms.store(ms, Relaxed);
                eprintln!("worker 0 answers again, {ms} ms after the kill");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
