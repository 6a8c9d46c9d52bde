//! Load and soak, long versions (issue 5, items 4, 5, 6, 11 and 12), with figures.
//!
//! ```text
//! cargo run --release --example soak -- <scenario> [--seconds N] [options]
//!
//!   slow-reader  a peer floods `echo` with 64 KiB arguments and never reads, while 100 other
//!                connections call `add` every 10 ms (default 60 s)
//!   many         1,000 connections call `add` every 100 ms each (default 60 s)
//!   kill         1,000 peer processes, in batches of 100, each with a `sleep` call running and
//!                half a frame sent, killed with SIGKILL (`--sleep-ms 0`: half a frame only)
//!   fd-limit     the server under `ulimit -n 64`, 200 clients (default 10 s saturated);
//!                `--churn`: served clients leave after 200 ms and come back
//!   churn        10,000 connect-and-close cycles (half raw connect/close, half call then close)
//!
//! options: --seconds N, --connections N, --interval-ms N, --peers N, --batch N, --sleep-ms N,
//!          --cycles N, --churn, --method echo|slow_echo, --payload N
//! ```
//!
//! The server is a separate process: this example re-run (`std::env::current_exe()`) with a
//! hidden `--role server` flag, so its figures (`VmRSS`/`VmHWM`, `/proc/<pid>/fd`, CPU time
//! from `/proc/<pid>/stat`, its `tracing` warnings on stderr) are its own. Killed peers are the
//! example re-run with `--role victim`. Every child is killed by its handle at the end. Each
//! scenario prints its figures, then one JSON line (`result {...}`), and exits non-zero when a
//! target is missed.
//!
//! The client side opens as many descriptors as connections: `many` needs `ulimit -n` above
//! 1,000 (check it; `sh -c 'ulimit -n 4096; exec cargo run ...'` raises the soft limit).

mod report;

// One copy each, kept with the tests (which include nothing from `examples/`).
#[allow(dead_code, unreachable_pub)]
#[path = "../tests/common/clients.rs"]
mod clients;
#[allow(dead_code, unreachable_pub)]
#[path = "../tests/common/procfs.rs"]
mod procfs;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use diarrhoea::{Args, Connection, Router, UnixListener};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use clients::persistent_clients;
use procfs::{cpu_ticks, fd_count, memory, Memory};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long anything that should be quick may take before the run fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(10);

/// The command line. The hidden flags are how the parent starts its children.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "soak",
    about = "Load and soak scenarios against a server in its own process, with figures"
)]
struct Opts {
    /// The scenario to run
    #[arg(value_enum, required_unless_present = "role")]
    scenario: Option<Scenario>,
    /// How long the load runs (slow-reader, many: 60; fd-limit: 10)
    #[arg(long, value_name = "N")]
    seconds: Option<u64>,
    /// Callers (slow-reader: 100, many: 1000, fd-limit: 200)
    #[arg(long, value_name = "N")]
    connections: Option<usize>,
    /// Each caller calls `add` this often (slow-reader: 10, many: 100)
    #[arg(long, value_name = "N")]
    interval_ms: Option<u64>,
    /// kill: peer processes
    #[arg(long, value_name = "N", default_value_t = 1000)]
    peers: usize,
    /// kill: peers started and killed together
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = positive)]
    batch: usize,
    /// kill: how long each peer's call sleeps on the server (0 = none)
    #[arg(long, value_name = "N", default_value_t = 60_000)]
    sleep_ms: u64,
    /// churn: connect-and-close cycles
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    cycles: usize,
    /// fd-limit: served clients leave after 200 ms and come back
    #[arg(long)]
    churn: bool,
    /// slow-reader: what the peer floods, echo (answered inline) or slow_echo (answered from a
    /// task after 1 ms)
    #[arg(long, value_name = "M", default_value = "echo", value_parser = ["echo", "slow_echo"])]
    method: String,
    /// slow-reader, many: callers call `echo` with an N-byte string instead of `add`
    #[arg(long, value_name = "N", default_value_t = 0)]
    payload: usize,
    #[arg(long, value_enum, hide = true)]
    role: Option<Role>,
    #[arg(long, hide = true, required_if_eq_any = [("role", "server"), ("role", "victim")])]
    socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// A peer floods `echo` with 64 KiB arguments and never reads, while other connections
    /// call `add`
    SlowReader,
    /// Many connections call `add` on a schedule
    Many,
    /// Peer processes with a call running and half a frame sent, killed with SIGKILL
    Kill,
    /// The server under `ulimit -n 64` with more clients than that
    FdLimit,
    /// Connect-and-close cycles
    Churn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    Server,
    Victim,
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}")),
    }
}

impl Opts {
    fn seconds(&self, default: u64) -> Duration {
        Duration::from_secs(self.seconds.unwrap_or(default).max(1))
    }
}

fn main() -> std::process::ExitCode {
    let opts = Opts::parse();
    let socket = opts.socket.clone().unwrap_or_default();
    let result = match (opts.role, opts.scenario) {
        (Some(Role::Server), _) => server(&socket),
        (Some(Role::Victim), _) => victim(&socket, opts.sleep_ms),
        (None, Some(Scenario::SlowReader)) => slow_reader(&opts),
        (None, Some(Scenario::Many)) => many(&opts),
        (None, Some(Scenario::Kill)) => kill(&opts),
        (None, Some(Scenario::FdLimit)) => fd_limit(&opts),
        (None, Some(Scenario::Churn)) => churn(&opts),
        (None, None) => unreachable!("clap requires a scenario without --role"),
    };
    report::exit(result)
}

// ---------------------------------------------------------------------------------------------
// Children: the server and the peers that get killed.

/// Serves `add`, `echo`, `sleep` and `stats` (open connections) until stdin closes; prints
/// `ready` once bound. Warnings go to stderr, where the parent counts them.
fn server(path: &Path) -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = UnixListener::bind(path)?;
        // Open connections, for `stats`: the factory below sees each one come and go.
        let open = Arc::new(AtomicUsize::new(0));
        let router = Router::new()
            .route("add", |a: i64, b: i64| async move { a + b })
            .route("echo", |args: Args| async move { args })
            // As `echo`, but answered from a task of its own rather than inline.
            .route("slow_echo", |args: Args| async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                args
            })
            .route("sleep", |ms: u64| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                ms
            })
            .route("stats", {
                let open = open.clone();
                move || std::future::ready(open.load(Relaxed))
            });
        let each_connection = move |conn: &Connection| {
            open.fetch_add(1, Relaxed);
            let (conn, open) = (conn.clone(), open.clone());
            tokio::spawn(async move {
                conn.closed().await;
                open.fetch_sub(1, Relaxed);
            });
            router.clone()
        };
        println!("ready");
        std::io::stdout().flush()?;
        let stdin_closed = async {
            let _ = tokio::task::spawn_blocking(|| {
                let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            })
            .await;
        };
        diarrhoea::serve(listener, each_connection)
            // The parent waits 2 s for the server to stop before it kills it.
            .shutdown_timeout(Duration::from_secs(1))
            .with_graceful_shutdown(stdin_closed)
            .await?;
        Ok(())
    })
}

/// Starts a `sleep` call (unless `sleep_ms` is 0), sends half a frame, says `ready` and waits
/// to be killed; leaves by itself after two minutes.
fn victim(path: &Path, sleep_ms: u64) -> Result<(), BoxError> {
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    if sleep_ms > 0 {
        stream.write_all(format!("[\"sleep\",[{sleep_ms}],1]\n").as_bytes())?;
    }
    stream.write_all(b"[\"echo\",[\"half a fr")?;
    println!("ready");
    std::io::stdout().flush()?;
    std::thread::sleep(Duration::from_secs(120));
    Ok(())
}

/// A child process, killed (by its handle) and reaped when dropped.
struct ChildGuard {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl ChildGuard {
    /// This example re-run with `args`; `fd_limit` lowers its descriptor limit.
    fn spawn(args: &[String], fd_limit: Option<u32>, stderr: Stdio) -> Result<Self, BoxError> {
        let exe = std::env::current_exe()?;
        let mut command = match fd_limit {
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(exe);
                sh
            }
            None => Command::new(exe),
        };
        let mut child = command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(ChildGuard { child, stdout })
    }

    fn wait_ready(&mut self) -> Result<(), BoxError> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line)? == 0 {
                return Err("a child exited before it was ready".into());
            }
            if line.trim() == "ready" {
                return Ok(());
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server child, with its stderr lines (and when each arrived) collected.
struct ServerChild {
    guard: ChildGuard,
    pid: u32,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl ServerChild {
    fn start(fd_limit: Option<u32>) -> Result<Self, BoxError> {
        let dir = tempfile::Builder::new().prefix("soak").tempdir()?;
        let path = dir.path().join("soak.sock");
        let args = [
            "--role".into(),
            "server".into(),
            "--socket".into(),
            path.display().to_string(),
        ];
        let mut guard = ChildGuard::spawn(&args, fd_limit, Stdio::piped())?;
        let stderr = guard.child.stderr.take().ok_or("no stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        guard.wait_ready()?;
        let pid = guard.child.id();
        Ok(ServerChild {
            guard,
            pid,
            log,
            _dir: dir,
            path,
        })
    }

    fn log_count(&self, needle: &str, from: Instant, to: Instant) -> usize {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(at, line)| *at >= from && *at < to && line.contains(needle))
            .count()
    }

    /// Arrival times of the log lines containing `needle`.
    fn log_times(&self, needle: &str) -> Vec<Instant> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(_, line)| line.contains(needle))
            .map(|(at, _)| *at)
            .collect()
    }

    fn fds(&self) -> usize {
        fd_count(self.pid)
    }

    fn memory(&self) -> Memory {
        memory(self.pid)
    }

    /// Asks the server to stop (stdin closes); killed when the guard drops if it does not.
    fn stop(mut self) {
        drop(self.guard.child.stdin.take());
        let _ = wait_until(Duration::from_secs(2), || {
            matches!(self.guard.child.try_wait(), Ok(Some(_)))
        });
    }
}

// ---------------------------------------------------------------------------------------------
// What /proc says, and small statistics.

fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    check().then(|| started.elapsed())
}

/// Durations in nanoseconds from 1 ns to an hour (longer ones count as an hour), to 3 significant
/// digits. Fixed bounds, so recording never allocates and histograms merge as they are.
fn new_histogram() -> Histogram<u64> {
    const HOUR_NS: u64 = 3_600 * 1_000_000_000;
    Histogram::new_with_bounds(1, HOUR_NS, 3).expect("valid bounds")
}

fn record(histogram: &mut Histogram<u64>, d: Duration) {
    histogram.saturating_record(d.as_nanos() as u64);
}

/// A value of a histogram of nanoseconds (`value_at_quantile`, `max`), in milliseconds.
fn ns_ms(ns: u64) -> f64 {
    ms(Duration::from_nanos(ns))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

fn runtime() -> Result<tokio::runtime::Runtime, BoxError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Prints the result line and turns missed targets into an error.
fn report(scenario: &str, mut figures: Value, missed: Vec<String>) -> Result<(), BoxError> {
    figures["scenario"] = json!(scenario);
    figures["missed"] = json!(missed);
    println!("result {figures}");
    if missed.is_empty() {
        Ok(())
    } else {
        Err(format!("{scenario}: missed {}", missed.join("; ")).into())
    }
}

// ---------------------------------------------------------------------------------------------
// Callers: connections calling `add` on a schedule.

struct Calls {
    /// The calls answered, by latency.
    latency: Histogram<u64>,
    failures: Vec<String>,
    sent: u64,
}

/// `n` connections each call `add` every `every` until `stop`; every call must come back with
/// the right sum. Latency is measured from the scheduled time (no coordinated omission beyond
/// one call in flight per connection).
async fn callers(
    path: PathBuf,
    n: usize,
    every: Duration,
    payload: usize,
    stop: Arc<AtomicBool>,
) -> Calls {
    let payload: Arc<str> = "x".repeat(payload).into();
    let latency = Arc::new(Mutex::new(new_histogram()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        match tokio::time::timeout(PATIENCE, Connection::connect(&path)).await {
            Ok(Ok(conn)) => conns.push(conn),
            other => failures.lock().unwrap().push(format!("connect: {other:?}")),
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, conn) in conns.iter().cloned().enumerate() {
        let (latency, failures, sent, stop) = (
            latency.clone(),
            failures.clone(),
            sent.clone(),
            stop.clone(),
        );
        let payload = payload.clone();
        tasks.spawn(async move {
            // Spread the connections over the interval.
            let offset = every.mul_f64(i as f64 / n as f64);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut mine = new_histogram();
            let mut seq = 0i64;
            while !stop.load(Relaxed) {
                let scheduled = tick.tick().await;
                seq += 1;
                sent.fetch_add(1, Relaxed);
                let call = if payload.is_empty() {
                    call_add(&conn, i as i64, seq).await
                } else {
                    call_echo(&conn, &payload, seq).await
                };
                match call {
                    Ok(()) => record(&mut mine, scheduled.elapsed()),
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
            latency
                .lock()
                .unwrap()
                .add(mine)
                .expect("histograms of the same bounds");
        });
    }
    while tasks.join_next().await.is_some() {}
    for conn in conns {
        conn.close();
    }
    let latency = std::mem::replace(&mut *latency.lock().unwrap(), new_histogram());
    let failures = std::mem::take(&mut *failures.lock().unwrap());
    Calls {
        latency,
        failures,
        sent: sent.load(Relaxed),
    }
}

async fn call_add(conn: &Connection, a: i64, b: i64) -> Result<(), String> {
    match tokio::time::timeout(PATIENCE, conn.call::<i64>("add", (a, b))).await {
        Ok(Ok(sum)) if sum == a + b => Ok(()),
        Ok(Ok(sum)) => Err(format!("add({a}, {b}) = {sum}")),
        Ok(Err(e)) => Err(format!("add: {e}")),
        Err(_) => Err("add: no reply within 10 s".into()),
    }
}

async fn call_echo(conn: &Connection, payload: &str, seq: i64) -> Result<(), String> {
    let call = conn.call::<(serde::de::IgnoredAny, i64)>("echo", (payload, seq));
    match tokio::time::timeout(PATIENCE, call).await {
        Ok(Ok((_, echoed))) if echoed == seq => Ok(()),
        Ok(Ok((_, echoed))) => Err(format!("echo {seq} came back as {echoed}")),
        Ok(Err(e)) => Err(format!("echo: {e}")),
        Err(_) => Err("echo: no reply within 10 s".into()),
    }
}

fn latency_figures(calls: &Calls) -> Value {
    let l = &calls.latency;
    json!({
        "calls": l.len(),
        "sent": calls.sent,
        "failed": calls.failures.len(),
        "lost": calls.sent - l.len(),
        "p50_ms": ns_ms(l.value_at_quantile(0.50)),
        "p99_ms": ns_ms(l.value_at_quantile(0.99)),
        "p999_ms": ns_ms(l.value_at_quantile(0.999)),
        "max_ms": ns_ms(l.max()),
    })
}

/// Samples a value once a second until `stop`.
fn sampler<T: Send + 'static>(
    stop: Arc<AtomicBool>,
    mut sample: impl FnMut() -> T + Send + 'static,
) -> std::thread::JoinHandle<Vec<T>> {
    std::thread::spawn(move || {
        let mut samples = Vec::new();
        loop {
            std::thread::sleep(Duration::from_secs(1));
            // Checked after the sleep: no sample once the load has stopped.
            if stop.load(Relaxed) {
                break;
            }
            samples.push(sample());
        }
        samples
    })
}

// ---------------------------------------------------------------------------------------------
// 4. slow-reader

fn slow_reader(opts: &Opts) -> Result<(), BoxError> {
    let seconds = opts.seconds(60);
    let n = opts.connections.unwrap_or(100);
    let every = Duration::from_millis(opts.interval_ms.unwrap_or(10));
    let server = ServerChild::start(None)?;
    let pid = server.pid;

    // The peer that never reads: `echo` requests with a 64 KiB argument, as fast as the socket
    // takes them.
    let mut stream = std::os::unix::net::UnixStream::connect(&server.path)?;
    stream.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let method = opts.method.clone();
    let flooder = {
        let (stop, written) = (stop.clone(), written.clone());
        std::thread::spawn(move || {
            let arg = "x".repeat(64 * 1024);
            let (mut frame, mut offset, mut id) = (Vec::new(), 0, 0u64);
            let mut last_progress = Instant::now();
            while !stop.load(Relaxed) {
                if offset == frame.len() {
                    id += 1;
                    frame = format!("[\"{method}\",[\"{arg}\"],{id}]\n").into_bytes();
                    offset = 0;
                }
                match std::io::Write::write(&mut stream, &frame[offset..]) {
                    Ok(n) => {
                        offset += n;
                        written.fetch_add(n as u64, Relaxed);
                        last_progress = Instant::now();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(format!("the flooding peer's write failed: {e}")),
                }
            }
            Ok((stream, last_progress, id))
        })
    };
    let samples = sampler(stop.clone(), {
        let written = written.clone();
        move || (memory(pid).rss_kb, written.load(Relaxed))
    });
    let rt = runtime()?;
    let load = rt.spawn(callers(
        server.path.clone(),
        n,
        every,
        opts.payload,
        stop.clone(),
    ));
    let started = Instant::now();
    std::thread::sleep(seconds);
    let hwm = server.memory().hwm_kb;
    stop.store(true, Relaxed);
    let calls = rt.block_on(load)?;
    let samples = samples.join().map_err(|_| "sampler panicked")?;
    let (mut stream, last_progress, frames) = flooder.join().map_err(|_| "flooder panicked")??;
    let stalled = last_progress.elapsed();
    let written = written.load(Relaxed);

    // Once it reads, its requests are answered, in order.
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    let answered = BufReader::new(&mut stream)
        .lines()
        .take(10)
        .map_while(Result::ok)
        .filter(|line| line.starts_with('['))
        .count();

    let max_rss = samples.iter().map(|s| s.0).max().unwrap_or(0);
    println!(
        "slow-reader: {:.0} s; the peer wrote {:.1} MiB ({frames} frames started) and then \
         nothing for the last {:.1} s; server RSS max {max_rss} KiB (peak VmHWM {hwm} KiB)",
        started.elapsed().as_secs_f64(),
        written as f64 / (1 << 20) as f64,
        stalled.as_secs_f64()
    );
    let lat = latency_figures(&calls);
    println!("slow-reader: {n} other connections calling every {every:?}: {lat}");
    let mut missed = Vec::new();
    if hwm >= 64 * 1024 {
        missed.push(format!("server VmHWM {hwm} KiB >= 64 MiB"));
    }
    if stalled < seconds / 2 {
        missed.push(format!("the peer still wrote {stalled:?} before the end"));
    }
    if lat["p99_ms"].as_f64().unwrap_or(f64::MAX) >= 20.0 {
        missed.push(format!("p99 {} ms >= 20 ms", lat["p99_ms"]));
    }
    if !calls.failures.is_empty() {
        missed.push(format!(
            "{} failed calls: {:?}",
            calls.failures.len(),
            &calls.failures[..1]
        ));
    }
    if answered < 10 {
        missed.push(format!(
            "only {answered} of 10 replies read once the peer read"
        ));
    }
    server.stop();
    report(
        "slow-reader",
        json!({
            "seconds": seconds.as_secs(), "connections": n, "interval_ms": every.as_millis() as u64, "payload": opts.payload,
            "method": opts.method, "peer_written_kib": written / 1024, "peer_stalled_s": ms(stalled) / 1e3,
            "server_rss_max_kib": max_rss, "server_hwm_kib": hwm, "others": lat,
            "rss_kib_written_kib_per_s": samples.iter().map(|s| (s.0, s.1 / 1024)).collect::<Vec<_>>(),
        }),
        missed,
    )
}

// ---------------------------------------------------------------------------------------------
// 5. many

fn many(opts: &Opts) -> Result<(), BoxError> {
    let seconds = opts.seconds(60);
    let n = opts.connections.unwrap_or(1000);
    let every = Duration::from_millis(opts.interval_ms.unwrap_or(100));
    let server = ServerChild::start(None)?;
    let pid = server.pid;
    let baseline = server.fds();
    let stop = Arc::new(AtomicBool::new(false));
    let rt = runtime()?;
    let load = rt.spawn(callers(
        server.path.clone(),
        n,
        every,
        opts.payload,
        stop.clone(),
    ));
    wait_until(PATIENCE * 3, || fd_count(pid) >= baseline + n).ok_or_else(|| {
        format!(
            "only {} of {n} connections accepted",
            fd_count(pid) - baseline
        )
    })?;
    let sampling = Arc::new(AtomicBool::new(false));
    let samples = sampler(sampling.clone(), move || {
        (fd_count(pid), memory(pid).rss_kb)
    });
    let started = Instant::now();
    std::thread::sleep(seconds);
    sampling.store(true, Relaxed);
    let hwm = server.memory().hwm_kb;
    stop.store(true, Relaxed);
    let calls = rt.block_on(load)?;
    let samples = samples.join().map_err(|_| "sampler panicked")?;
    let closed = wait_until(PATIENCE, || fd_count(pid) <= baseline);
    let fds: Vec<usize> = samples.iter().map(|s| s.0).collect();
    let (fd_min, fd_max) = (
        fds.iter().min().copied().unwrap_or(0),
        fds.iter().max().copied().unwrap_or(0),
    );
    let lat = latency_figures(&calls);
    println!(
        "many: {n} connections x `add` every {every:?} for {:.0} s: {lat}",
        started.elapsed().as_secs_f64()
    );
    println!(
        "many: server descriptors {fd_min}..{fd_max} (baseline {baseline} + {n}), back to \
         baseline {closed:?} after the clients left; RSS max {} KiB, VmHWM {hwm} KiB",
        samples.iter().map(|s| s.1).max().unwrap_or(0)
    );
    let mut missed = Vec::new();
    if lat["lost"] != 0 || !calls.failures.is_empty() {
        missed.push(format!(
            "lost {} / failed {:?}",
            lat["lost"],
            calls.failures.first()
        ));
    }
    if lat["p99_ms"].as_f64().unwrap_or(f64::MAX) >= 10.0 {
        missed.push(format!("p99 {} ms >= 10 ms", lat["p99_ms"]));
    }
    if hwm >= 100 * 1024 {
        missed.push(format!("server VmHWM {hwm} KiB >= 100 MiB"));
    }
    if fd_min != fd_max || fd_max != baseline + n {
        missed.push(format!(
            "descriptors {fd_min}..{fd_max}, expected {}",
            baseline + n
        ));
    }
    if closed.is_none() {
        missed.push("descriptors not back to baseline".into());
    }
    server.stop();
    report(
        "many",
        json!({
            "seconds": seconds.as_secs(), "connections": n, "interval_ms": every.as_millis() as u64, "payload": opts.payload,
            "calls": lat, "fd_baseline": baseline, "fd_min": fd_min, "fd_max": fd_max,
            "server_hwm_kib": hwm,
        }),
        missed,
    )
}

// ---------------------------------------------------------------------------------------------
// 6. kill

fn kill(opts: &Opts) -> Result<(), BoxError> {
    let server = ServerChild::start(None)?;
    let baseline = server.fds();
    let args = [
        "--role".into(),
        "victim".into(),
        "--socket".into(),
        server.path.display().to_string(),
        "--sleep-ms".into(),
        opts.sleep_ms.to_string(),
    ];
    let mut released = Vec::new();
    let mut killed = 0;
    let rt = runtime()?;
    let started = Instant::now();
    while killed < opts.peers {
        let batch = opts.batch.min(opts.peers - killed);
        let mut victims = (0..batch)
            .map(|_| ChildGuard::spawn(&args, None, Stdio::null()))
            .collect::<Result<Vec<_>, _>>()?;
        for victim in &mut victims {
            victim.wait_ready()?;
        }
        wait_until(PATIENCE, || server.fds() >= baseline + batch)
            .ok_or("the server did not accept every peer")?;
        // Let the calls start and the half frames arrive.
        std::thread::sleep(Duration::from_millis(100));
        for victim in &mut victims {
            victim.child.kill()?;
        }
        let killed_at = Instant::now();
        for victim in &mut victims {
            victim.child.wait()?;
        }
        let back = wait_until(Duration::from_secs(3), || server.fds() <= baseline)
            .map(|_| killed_at.elapsed());
        released.push(back);
        killed += batch;
        // It keeps serving.
        rt.block_on(async {
            let conn = tokio::time::timeout(PATIENCE, Connection::connect(&server.path)).await??;
            let answer = call_add(&conn, killed as i64, 1).await;
            conn.close();
            answer.map_err(BoxError::from)
        })?;
        if back.is_none() {
            // Descriptors held past the wait: report and stop, they would pile up.
            eprintln!(
                "kill: {} descriptors still open 3 s after killing a batch of {batch} (baseline {baseline})",
                server.fds()
            );
            break;
        }
    }
    let mut times = new_histogram();
    for &t in released.iter().flatten() {
        record(&mut times, t);
    }
    let held = released.iter().filter(|r| r.is_none()).count();
    println!(
        "kill: {killed} peers (calls sleeping {} ms, half a frame) in batches of {}: descriptors \
         back to baseline {baseline} after median {} ms, max {} ms; {held} batch(es) not back \
         within 3 s; {:.0} s in all",
        opts.sleep_ms,
        opts.batch,
        ns_ms(times.value_at_quantile(0.5)),
        ns_ms(times.max()),
        started.elapsed().as_secs_f64()
    );
    let mut missed = Vec::new();
    if held > 0 || times.max() >= Duration::from_secs(1).as_nanos() as u64 {
        missed.push("descriptors not back to baseline within 1 s".into());
    }
    let fds_end = server.fds();
    server.stop();
    report(
        "kill",
        json!({
            "peers": killed, "batch": opts.batch, "sleep_ms": opts.sleep_ms,
            "fd_baseline": baseline, "fd_end": fds_end,
            "release_ms_median": ns_ms(times.value_at_quantile(0.5)),
            "release_ms_max": ns_ms(times.max()),
            "batches_held": held,
        }),
        missed,
    )
}

// ---------------------------------------------------------------------------------------------
// 11. fd-limit

fn fd_limit(opts: &Opts) -> Result<(), BoxError> {
    const WARNING: &str = "out of file descriptors";
    let seconds = opts.seconds(10);
    let n = opts.connections.unwrap_or(200);
    let server = ServerChild::start(Some(64))?;
    let pid = server.pid;
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let rt = runtime()?;
    let clients = rt.spawn(persistent_clients(
        server.path.clone(),
        n,
        opts.churn,
        stop.clone(),
        served.clone(),
    ));
    wait_until(PATIENCE, || !server.log_times(WARNING).is_empty())
        .ok_or("the server never ran out of descriptors")?;
    let (from, ticks) = (Instant::now(), cpu_ticks(pid));
    let served_before = served.load(Relaxed);
    std::thread::sleep(seconds);
    let (to, busy) = (Instant::now(), cpu_ticks(pid) - ticks);
    let served_during = served.load(Relaxed) - served_before;
    let fds = server.fds();
    let window = (to - from).as_secs_f64();
    let cpu = busy as f64 / 100.0 / window;
    let warnings = server.log_count(WARNING, from, to);
    // The most warnings in any one second.
    let times: Vec<Instant> = server
        .log_times(WARNING)
        .into_iter()
        .filter(|t| *t >= from && *t < to)
        .collect();
    let burst = times
        .iter()
        .map(|t| {
            times
                .iter()
                .filter(|u| **u >= *t && **u < *t + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    stop.store(true, Relaxed);
    rt.block_on(clients)?;
    let left = Instant::now();
    let recovered = rt.block_on(async {
        while left.elapsed() < PATIENCE {
            if let Ok(Ok(conn)) = tokio::time::timeout(
                Duration::from_millis(500),
                Connection::connect(&server.path),
            )
            .await
            {
                let call = conn.call::<i64>("add", (1, 1));
                let ok = matches!(
                    tokio::time::timeout(Duration::from_millis(500), call).await,
                    Ok(Ok(2))
                );
                conn.close();
                if ok {
                    return Some(left.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    });
    println!(
        "fd-limit: ulimit -n 64, {n} clients{}: {} served ({served_during} in the window), {fds} \
         descriptors open; over {window:.1} s: CPU {:.1}% of a core, {warnings} warnings (at \
         most {burst} in any second); served again {recovered:?} after the clients left",
        if opts.churn { " (churning)" } else { "" },
        served.load(Relaxed),
        cpu * 100.0
    );
    let mut missed = Vec::new();
    if cpu >= 0.10 {
        missed.push(format!("CPU {:.1}% while out of descriptors", cpu * 100.0));
    }
    if burst > 2 || warnings as f64 > window + 1.0 {
        missed.push(format!(
            "{warnings} warnings in {window:.1} s, {burst} in one second"
        ));
    }
    if recovered.is_none_or(|t| t >= Duration::from_secs(2)) {
        missed.push(format!("recovery after {recovered:?}"));
    }
    server.stop();
    report(
        "fd-limit",
        json!({
            "seconds": window, "clients": n, "churn": opts.churn,
            "served": served.load(Relaxed), "served_in_window": served_during,
            "cpu_percent": (cpu * 1000.0).round() / 10.0, "warnings": warnings,
            "warnings_max_per_s": burst,
            "recovery_ms": recovered.map(ms),
        }),
        missed,
    )
}

// ---------------------------------------------------------------------------------------------
// 12. churn

fn churn(opts: &Opts) -> Result<(), BoxError> {
    let server = ServerChild::start(None)?;
    let rt = runtime()?;
    let path = server.path.clone();
    let cycles = |n: usize| {
        let path = path.clone();
        async move {
            for i in 0..n {
                if i % 2 == 0 {
                    drop(tokio::net::UnixStream::connect(&path).await?);
                } else {
                    let conn = Connection::connect(&path).await?;
                    call_add(&conn, i as i64, 1).await?;
                    conn.close();
                }
            }
            Ok::<_, BoxError>(())
        }
    };
    let stats = |path: PathBuf| async move {
        let conn = Connection::connect(&path).await?;
        let open: usize = conn.call("stats", ()).await?;
        conn.close();
        Ok::<_, BoxError>(open)
    };
    // Warm up: allocator arenas, lazily created runtime parts.
    rt.block_on(cycles(1000))?;
    wait_until(PATIENCE, || server.fds() <= 10_000);
    std::thread::sleep(Duration::from_millis(200));
    let (fds, rss) = (server.fds(), server.memory().rss_kb);
    let started = Instant::now();
    rt.block_on(cycles(opts.cycles))?;
    let elapsed = started.elapsed();
    let settled = wait_until(PATIENCE, || server.fds() <= fds);
    std::thread::sleep(Duration::from_millis(200));
    let (
        fds_after,
        Memory {
            rss_kb: rss_after,
            hwm_kb: hwm,
        },
    ) = (server.fds(), server.memory());
    // The stats call's own connection is the one open.
    let open = rt.block_on(stats(path.clone()))?;
    println!(
        "churn: {} cycles in {:.1} s; server descriptors {fds} -> {fds_after} (settled {settled:?}), \
         connections open {} (besides the one asking), RSS {rss} -> {rss_after} KiB (VmHWM {hwm})",
        opts.cycles,
        elapsed.as_secs_f64(),
        open - 1
    );
    let mut missed = Vec::new();
    if fds_after > fds {
        missed.push(format!("descriptors {fds} -> {fds_after}"));
    }
    if open != 1 {
        missed.push(format!("{} connections still open", open - 1));
    }
    if rss_after > rss + 2048 {
        missed.push(format!("RSS {rss} -> {rss_after} KiB"));
    }
    server.stop();
    report(
        "churn",
        json!({
            "cycles": opts.cycles, "seconds": ms(elapsed) / 1e3, "fd_before": fds,
            "fd_after": fds_after, "connections_after": open - 1, "rss_kib_before": rss,
            "rss_kib_after": rss_after, "hwm_kib": hwm,
        }),
        missed,
    )
}
