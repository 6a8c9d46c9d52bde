//! `flood --mode call`, rebuilt on tarpc: the baseline that the crate's `flood` example is
//! compared with, measured in the same run (`perf/run.py` runs the two one after the other).
//!
//! ```text
//! cargo run --release --manifest-path perf/tarpc_flood/Cargo.toml -- [--codec json|bincode]
//!     [--clients N] [--inflight K] [--seconds S] [--payload BYTES] [--server-threads T]
//! ```
//!
//! What it keeps from `cargo run --release --example flood -- --mode call` (Unix transport):
//!
//! - one server process and N client processes (default 2): the program re-runs itself
//!   (`std::env::current_exe()`) with a hidden `--role server|client`, and the clients reach
//!   the server over a Unix socket in a fresh temporary directory;
//! - each client keeps K calls `echo(x, seq)` waiting (default 256): K tasks on one
//!   connection, each with one call in flight at a time; `x` is a string of `--payload` bytes
//!   (default 10), `seq` the task's counter; the server returns its arguments and the client
//!   checks `seq`;
//! - the server and each client run a current-thread tokio runtime (`--server-threads T`
//!   gives the server T worker threads, as flood's flag does);
//! - `msgs_per_s` counts completed calls per second over all clients while they flood;
//!   `p50_us`/`p99_us` are round-trip latencies (`hdrhistogram`, 3 significant digits); after
//!   the flood each client waits up to 5 s for the calls still under way;
//!   `lost = sent - received - rejected`, where `rejected` counts calls that missed tarpc's
//!   deadline (10 s from `context::current()`); `server_rss_kb` is the server's peak resident
//!   set (`VmHWM`).
//!
//! What is tarpc's own: its serde transport (`tarpc::serde_transport`: length-delimited
//! frames, each one JSON document through `tokio_serde::formats::Json`, or bincode with
//! `--codec bincode`), its default client and server configuration, and its usual server loop
//! (`BaseChannel::execute`, a task per request). Its API takes the string by value, so each
//! call clones it, where flood's borrows it: that is part of what is measured.
//!
//! Meter lines go to stderr; the last line on stdout is the result, with flood's keys plus
//! `impl` and `codec`:
//!
//! ```text
//! {"clients":2,"codec":"json","impl":"tarpc","inflight":256,"lost":0,"mode":"call",
//!  "msgs_per_s":..,"p50_us":..,"p99_us":..,"payload":10,"received":..,"rejected":0,
//!  "seconds":10,"sent":..,"server_rss_end_kb":..,"server_rss_kb":..,"server_threads":0,
//!  "transport":"unix"}
//! ```
//!
//! No process outlives the run: the parent holds each child's stdin open, and every child
//! stops at the end of its stdin, which comes when the parent ends, however it ends; a parent
//! that fails kills the children it started.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clap::{value_parser, Parser, ValueEnum};
use futures::{Future, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tarpc::client::{self, RpcError};
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::{Bincode, Json};
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tarpc::{context, serde_transport, ClientMessage, Response};
use tokio::net::UnixStream;

/// How long a client waits, after it stops flooding, for the calls still under way.
const DRAIN: Duration = Duration::from_secs(5);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one method: flood's server answers `echo(...args)` with its arguments.
#[tarpc::service]
trait Flood {
    /// Returns its arguments.
    async fn echo(x: String, seq: u64) -> (String, u64);
}

/// Calls the server has answered since the last meter line, and in all.
static SERVER_RECEIVED: AtomicU64 = AtomicU64::new(0);
static SERVER_TOTAL: AtomicU64 = AtomicU64::new(0);

#[derive(Clone)]
struct EchoServer;

impl Flood for EchoServer {
    async fn echo(self, _: context::Context, x: String, seq: u64) -> (String, u64) {
        SERVER_RECEIVED.fetch_add(1, Relaxed);
        SERVER_TOTAL.fetch_add(1, Relaxed);
        (x, seq)
    }
}

/// The command line. The hidden flags are how the parent starts its children.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "tarpc_flood",
    about = "flood --mode call on tarpc: one server process, N client processes, echo calls \
             over a Unix socket; one JSON line of figures",
    after_help = "Meter lines go to stderr; the final JSON line goes to stdout."
)]
struct Opts {
    /// The tokio-serde format inside tarpc's length-delimited frames
    #[arg(long, value_enum, default_value_t = Codec::Json)]
    codec: Codec,
    /// Client processes
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = positive)]
    clients: usize,
    /// Flood duration in seconds
    #[arg(
        long,
        value_name = "S",
        default_value_t = 10,
        value_parser = value_parser!(u64).range(1..)
    )]
    seconds: u64,
    /// Calls each client keeps waiting
    #[arg(long, value_name = "K", default_value_t = 256, value_parser = positive)]
    inflight: usize,
    /// Length of the string argument
    #[arg(long, value_name = "BYTES", default_value_t = 10)]
    payload: usize,
    /// Server runtime worker threads (0 = current-thread runtime)
    #[arg(long, value_name = "T", default_value_t = 0)]
    server_threads: usize,
    #[arg(long, value_enum, hide = true, default_value_t = Role::Parent)]
    role: Role,
    /// The server's socket path.
    #[arg(long, hide = true, default_value = "")]
    socket: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Codec {
    Json,
    Bincode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    Parent,
    Server,
    Client,
}

/// The name a value has on the command line (and in the JSON line).
fn name(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .expect("no variant is skipped")
        .get_name()
        .to_owned()
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}")),
    }
}

impl Opts {
    /// The flags a child needs, with its role.
    fn child_args(&self, role: Role, socket: &str) -> Vec<String> {
        vec![
            "--role".into(),
            name(role),
            "--socket".into(),
            socket.into(),
            "--codec".into(),
            name(self.codec),
            "--seconds".into(),
            self.seconds.to_string(),
            "--inflight".into(),
            self.inflight.to_string(),
            "--payload".into(),
            self.payload.to_string(),
            "--server-threads".into(),
            self.server_threads.to_string(),
        ]
    }
}

fn main() {
    let opts = Opts::parse();
    let result = match opts.role {
        Role::Parent => parent(&opts),
        Role::Server => server(&opts),
        Role::Client => client(&opts),
    };
    if let Err(e) = result {
        eprintln!("tarpc_flood ({}): {e}", name(opts.role));
        std::process::exit(1);
    }
}

/// A child's line to the parent, on stdout. A parent that is gone is no reason to panic: the
/// child sees the end of its stdin and stops.
fn say(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

/// Completes when this process's stdin ends: the parent closed it, or is gone.
async fn stdin_closed() {
    let _ = tokio::task::spawn_blocking(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    })
    .await;
}

/// Prints `label N calls / second` once a second from a counter it resets (relayed to stderr
/// by the parent).
async fn meter(label: &'static str, counter: &'static AtomicU64) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = Instant::now();
    loop {
        tick.tick().await;
        let count = counter.swap(0, Relaxed);
        say(format_args!(
            "{label} {:.0} calls / second",
            count as f64 / last.elapsed().as_secs_f64()
        ));
        last = Instant::now();
    }
}

// ---------------------------------------------------------------------------------------------
// Parent: starts the processes, relays their meter lines, gathers their results.

/// A child process and the thread that relays its output. Dropped while the child still
/// runs (the parent failed), it kills the child.
struct Started {
    child: Child,
    relay: Option<std::thread::JoinHandle<Option<Value>>>,
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Started {
    /// The child's `result {json}` line, once its output has ended.
    fn result(&mut self) -> Option<Value> {
        self.relay.take()?.join().ok().flatten()
    }
}

/// Starts this program as `args`, relays its meter lines to stderr with `label`, keeps its
/// final `result {json}` line, and tells `ready` when it prints `ready`.
fn start(
    label: String,
    args: Vec<String>,
    ready: Option<mpsc::Sender<()>>,
) -> Result<Started, BoxError> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
        // Held open until the child is reaped; closed when this process ends, however it
        // ends: every child stops at the end of its stdin.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let relay = std::thread::spawn(move || {
        let mut result = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(json) = line.strip_prefix("result ") {
                result = serde_json::from_str(json).ok();
            } else if line == "ready" {
                if let Some(ready) = &ready {
                    let _ = ready.send(());
                }
            } else {
                eprintln!("{label:>8} | {line}");
            }
        }
        result
    });
    Ok(Started {
        child,
        relay: Some(relay),
    })
}

/// Waits for a child to exit; kills it after `deadline`.
fn reap(started: &mut Started, deadline: Instant) -> Result<(), BoxError> {
    loop {
        if let Some(status) = started.child.try_wait()? {
            return if status.success() {
                Ok(())
            } else {
                Err(format!("child {} exited with {status}", started.child.id()).into())
            };
        }
        if Instant::now() >= deadline {
            let _ = started.child.kill();
            let _ = started.child.wait();
            return Err(format!("child {} did not finish in time", started.child.id()).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Resident memory of a process in KiB: now (`VmRSS`) and at its peak (`VmHWM`).
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn parent(opts: &Opts) -> Result<(), BoxError> {
    let dir = tempfile::Builder::new().prefix("tarpc_flood").tempdir()?;
    let socket = dir.path().join("flood.sock");
    let socket = socket.to_str().ok_or("temp path is not UTF-8")?;
    // Children that hang are killed: the flood, the drain, and some slack to start and end.
    let deadline = Instant::now() + Duration::from_secs(opts.seconds) + DRAIN * 4;

    let (ready_tx, ready_rx) = mpsc::channel();
    let mut server = start(
        "server".into(),
        opts.child_args(Role::Server, socket),
        Some(ready_tx),
    )?;
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "the server did not start")?;

    let mut clients = (0..opts.clients)
        .map(|i| {
            start(
                format!("client{i}"),
                opts.child_args(Role::Client, socket),
                None,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut failures = Vec::new();
    for client in &mut clients {
        if let Err(e) = reap(client, deadline) {
            failures.push(e.to_string());
        }
    }
    let mut results = Vec::new();
    for client in &mut clients {
        match client.result() {
            Some(result) => results.push(result),
            None => failures.push("a client printed no result".into()),
        }
    }

    // Memory while the server is still there, then ask it to stop: it prints its own count.
    let (rss_kb, hwm_kb) = memory(server.child.id());
    drop(server.child.stdin.take());
    if let Err(e) = reap(&mut server, Instant::now() + DRAIN * 2) {
        failures.push(e.to_string());
    }
    let served = server
        .result()
        .and_then(|r| r["received"].as_u64())
        .unwrap_or(0);

    let sum = |key: &str| -> u64 { results.iter().filter_map(|r| r[key].as_u64()).sum() };
    let (sent, received, rejected) = (sum("sent"), sum("received"), sum("rejected"));
    let rate: f64 = results
        .iter()
        .filter_map(|r| Some(r["in_window"].as_f64()? / r["window_s"].as_f64()?))
        .sum();
    let mut histogram = new_histogram();
    for r in &results {
        merge_sparse(&mut histogram, &r["histogram"]);
    }
    let quantile_us = |q: f64| round2(histogram.value_at_quantile(q) as f64 / 1e3);
    let summary = json!({
        "impl": "tarpc",
        "codec": name(opts.codec),
        "mode": "call",
        "transport": "unix",
        "clients": opts.clients,
        "seconds": opts.seconds,
        "inflight": opts.inflight,
        "payload": opts.payload,
        "msgs_per_s": rate.round() as u64,
        "p50_us": quantile_us(0.50),
        "p99_us": quantile_us(0.99),
        "sent": sent,
        "received": received,
        "rejected": rejected,
        "lost": sent.saturating_sub(received + rejected),
        "server_received": served,
        "server_rss_kb": hwm_kb,
        "server_rss_end_kb": rss_kb,
        "server_threads": opts.server_threads,
    });
    drop(dir);
    for failure in &failures {
        eprintln!("tarpc_flood: {failure}");
    }
    println!("{summary}");
    std::io::stdout().flush()?;
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{} failure(s)", failures.len()).into())
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

// ---------------------------------------------------------------------------------------------
// Server: tarpc's usual loop, a task per request, on every connection it accepts, until the
// parent closes its stdin.

fn server(opts: &Opts) -> Result<(), BoxError> {
    runtime(opts.server_threads)?.block_on(serve(opts))
}

async fn serve(opts: &Opts) -> Result<(), BoxError> {
    let listener = tokio::net::UnixListener::bind(&opts.socket)?;
    say("ready");
    tokio::spawn(meter("receive", &SERVER_RECEIVED));
    let codec = opts.codec;
    let accept = async move {
        loop {
            let (io, _) = listener.accept().await?;
            tokio::spawn(serve_connection(io, codec));
        }
    };
    tokio::select! {
        result = accept => return result,
        () = stdin_closed() => {}
    }
    say(format_args!(
        "result {}",
        json!({ "received": SERVER_TOTAL.load(Relaxed) })
    ));
    Ok(())
}

/// One connection in tarpc's serde transport with `codec`, until the client goes.
async fn serve_connection(io: UnixStream, codec: Codec) {
    let framed = LengthDelimitedCodec::builder().new_framed(io);
    match codec {
        Codec::Json => serve_transport(serde_transport::new(framed, Json::default())).await,
        Codec::Bincode => serve_transport(serde_transport::new(framed, Bincode::default())).await,
    }
}

/// One connection, served as tarpc's examples serve one: `execute` yields a future per
/// request, and each is spawned.
fn serve_transport<T>(transport: T) -> impl Future<Output = ()>
where
    T: tarpc::Transport<Response<FloodResponse>, ClientMessage<FloodRequest>> + Send + 'static,
{
    BaseChannel::with_defaults(transport)
        .execute(EchoServer.serve())
        .for_each(|request| async {
            tokio::spawn(request);
        })
}

// ---------------------------------------------------------------------------------------------
// Client: floods for the given seconds, drains, prints its counts and latency histogram.

/// What one client counts; shared by its tasks.
struct Stats {
    sent: AtomicU64,
    received: AtomicU64,
    rejected: AtomicU64,
    /// Round-trip times in nanoseconds. Uncontended: a client runs on one thread.
    latency: Mutex<Histogram<u64>>,
}

/// Round trips since the last meter line.
static CLIENT_METER: AtomicU64 = AtomicU64::new(0);

impl Stats {
    fn answered(&self, sent_at_ns: u64) {
        let rtt = now_ns().saturating_sub(sent_at_ns);
        self.latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .saturating_record(rtt);
        self.received.fetch_add(1, Relaxed);
        CLIENT_METER.fetch_add(1, Relaxed);
    }
}

/// Nanoseconds on this process's monotonic clock.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn client(opts: &Opts) -> Result<(), BoxError> {
    // The parent holds our stdin open while it waits for us: its end means the parent is gone,
    // and so should we be.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        eprintln!("tarpc_flood (client): the parent is gone, stopping");
        std::process::exit(1);
    });
    runtime(0)?.block_on(flood(opts))
}

/// A client over `io` in tarpc's serde transport with `codec`, with tarpc's default
/// configuration; its dispatch task is spawned on the current runtime.
fn connect(io: UnixStream, codec: Codec) -> FloodClient {
    let framed = LengthDelimitedCodec::builder().new_framed(io);
    let config = client::Config::default();
    match codec {
        Codec::Json => {
            FloodClient::new(config, serde_transport::new(framed, Json::default())).spawn()
        }
        Codec::Bincode => {
            FloodClient::new(config, serde_transport::new(framed, Bincode::default())).spawn()
        }
    }
}

async fn flood(opts: &Opts) -> Result<(), BoxError> {
    let client = connect(UnixStream::connect(&opts.socket).await?, opts.codec);
    let stats = Arc::new(Stats {
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        latency: Mutex::new(new_histogram()),
    });
    let payload = "x".repeat(opts.payload);
    let meter = tokio::spawn(meter("round trips", &CLIENT_METER));

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..opts.inflight {
        let (client, stats, payload, stop) =
            (client.clone(), stats.clone(), payload.clone(), stop.clone());
        callers.spawn(async move {
            for seq in 0u64.. {
                if stop.load(Relaxed) {
                    break;
                }
                stats.sent.fetch_add(1, Relaxed);
                let sent_at = now_ns();
                match client.echo(context::current(), payload.clone(), seq).await {
                    Ok((_, echoed)) if echoed == seq => stats.answered(sent_at),
                    Ok((_, echoed)) => {
                        eprintln!("echo mismatch: sent {seq}, got {echoed}");
                        // Counted as lost: never received.
                    }
                    Err(RpcError::DeadlineExceeded) => {
                        stats.rejected.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        eprintln!("call failed: {e}");
                        break;
                    }
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(opts.seconds)).await;
    stop.store(true, Relaxed);
    let (in_window, window_s) = (
        stats.received.load(Relaxed),
        started.elapsed().as_secs_f64(),
    );
    // Each caller finishes its last call, bounded.
    let _ = tokio::time::timeout(DRAIN, async {
        while callers.join_next().await.is_some() {}
    })
    .await;
    meter.abort();

    let histogram = to_sparse(&stats.latency.lock().unwrap_or_else(|p| p.into_inner()));
    let result = json!({
        "sent": stats.sent.load(Relaxed),
        "received": stats.received.load(Relaxed),
        "rejected": stats.rejected.load(Relaxed),
        "in_window": in_window,
        "window_s": window_s,
        "elapsed_s": started.elapsed().as_secs_f64(),
        "histogram": histogram,
    });
    say(format_args!("result {result}"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Latency histograms, as flood's: each client sends `[[value, count], ...]`, the parent merges.

/// Nanoseconds from 1 ns to an hour, to 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    const HOUR_NS: u64 = 3_600 * 1_000_000_000;
    Histogram::new_with_bounds(1, HOUR_NS, 3).expect("valid bounds")
}

/// The recorded values and their counts, each value the highest of its bucket.
fn to_sparse(histogram: &Histogram<u64>) -> Value {
    let pairs: Vec<(u64, u64)> = histogram
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    json!(pairs)
}

fn merge_sparse(histogram: &mut Histogram<u64>, sparse: &Value) {
    for pair in sparse.as_array().into_iter().flatten() {
        if let (Some(value), Some(count)) = (pair[0].as_u64(), pair[1].as_u64()) {
            histogram.saturating_record_n(value, count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Opts, clap::Error> {
        Opts::try_parse_from(std::iter::once("tarpc_flood").chain(line.split_whitespace()))
    }

    #[test]
    fn options() {
        let o = parse("").unwrap();
        assert_eq!(
            (o.codec, o.clients, o.inflight, o.seconds, o.payload, o.role),
            (Codec::Json, 2, 256, 10, 10, Role::Parent)
        );
        assert!(parse("--clients 0").is_err());
        assert!(parse("--inflight 0").is_err());
        assert!(parse("--seconds 0").is_err());
        assert!(parse("--codec cbor").is_err());
        // What a child is given parses back to the same run.
        let o = parse("--codec bincode --seconds 3 --inflight 7").unwrap();
        let args = o.child_args(Role::Client, "/tmp/s.sock");
        let child =
            Opts::try_parse_from(std::iter::once("tarpc_flood".to_owned()).chain(args)).unwrap();
        assert_eq!(
            (child.role, child.codec, child.seconds, child.inflight),
            (Role::Client, Codec::Bincode, 3, 7)
        );
        assert_eq!(child.socket, "/tmp/s.sock");
    }

    /// Both codecs, end to end in one process: a server on a socket and a client calling it.
    #[tokio::test]
    async fn echo_over_both_codecs() {
        let dir = tempfile::tempdir().unwrap();
        for codec in [Codec::Json, Codec::Bincode] {
            let path = dir.path().join(format!("{}.sock", name(codec)));
            let listener = tokio::net::UnixListener::bind(&path).unwrap();
            let server = tokio::spawn(async move {
                let (io, _) = listener.accept().await.unwrap();
                serve_connection(io, codec).await;
            });
            let client = connect(UnixStream::connect(&path).await.unwrap(), codec);
            let echoed = client
                .echo(context::current(), "flood12345".into(), 42)
                .await
                .unwrap();
            assert_eq!(echoed, ("flood12345".to_owned(), 42));
            drop(client);
            server.await.unwrap();
        }
    }
}
