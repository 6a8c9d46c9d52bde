//! One-command flood: one server process and N client processes over a Unix socket, then one
//! JSON line with the figures.
//!
//! ```text
//! cargo run --release --example flood -- [--mode notify|call] [--clients N] [--seconds S]
//!     [--inflight K] [--payload BYTES] [--server-threads T]
//!     [--timeout-ms N] [--concurrency N] [--global-concurrency N] [--load-shed] [--rate N]
//! ```
//!
//! The example re-runs itself (`std::env::current_exe()`) with a hidden `--role server|client`
//! flag, so the server and every client are separate OS processes, as with the Node library's
//! `flood_server.js` / `flood_client.js`. Each side prints a meter line a second on stderr;
//! the last line on stdout is the result:
//!
//! ```text
//! {"mode":"notify","clients":2,"seconds":10,"inflight":1024,"payload":10,"msgs_per_s":..,
//!  "p50_us":..,"p99_us":..,"sent":..,"received":..,"rejected":0,"lost":0,"server_rss_kb":..}
//! ```
//!
//! - `--mode notify` (default): each client posts `ping(x, t)` notifications and the server
//!   answers each with a `pong(x, t)` notification; `t` is the client's clock when it sent the
//!   ping, so every pong carries its own round-trip time. `--inflight K` bounds the pings a
//!   client has sent but not yet seen answered (default 1024; 0 = only the connection's own
//!   backpressure bounds them).
//! - `--mode call`: each client keeps K `echo(x, seq)` calls waiting for their replies (default
//!   256). `--clients 1 --inflight 1 --mode call` measures sequential latency.
//! - `--payload BYTES`: the length of the string `x` (default 10, like Node's `"flood12345"`).
//! - Limit flags wrap the server's router in stock tower layers, built per connection:
//!   `--timeout-ms` (Timeout), `--concurrency` (ConcurrencyLimit per connection),
//!   `--global-concurrency` (one limit across all connections), `--load-shed` (LoadShed:
//!   refuse instead of wait when a limit is full), `--rate` (Buffer + RateLimit per
//!   connection, innermost, as `flood_server` builds it: over the rate requests wait, or with
//!   `--load-shed` and no `--concurrency` a `NameOverloadLayer` + `LoadShed` in front of the
//!   Buffer refuses what arrives while it holds a second's worth).
//!
//! `msgs_per_s` counts completed round trips per second over all clients while they flood;
//! `p50_us`/`p99_us` are round-trip latencies (a log-linear histogram, within 1.6%);
//! `lost = sent - received - rejected`, and `rejected` counts work a limit refused (error
//! replies -32001/-32002 for calls, notifications the server's layers refused). After the
//! flood stops each client waits up to 5 s for the answers still on their way.
//! `server_rss_kb` is the server process's peak resident set (`VmHWM`).

#[path = "support/procfs.rs"]
mod procfs;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use diarrhoea::layer::NameOverloadLayer;
use diarrhoea::{Args, Client, Connection, Request, Router, Server};
use serde::de::IgnoredAny;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tower::buffer::BufferLayer;
use tower::limit::RateLimitLayer;
use tower::ServiceBuilder;

const USAGE: &str = "\
usage: cargo run --release --example flood -- [options]

  --mode notify|call        ping/pong notifications (default) or echo calls
  --clients N               client processes (default 2)
  --seconds S               flood duration (default 10)
  --inflight K              per client: pings unanswered (notify, default 1024, 0 = unbounded)
                            or calls waiting (call, default 256)
  --payload BYTES           length of the string argument (default 10)
  --server-threads T        server runtime worker threads (default 0 = current-thread runtime)
  --timeout-ms N            server: tower Timeout around the router
  --concurrency N           server: ConcurrencyLimit per connection
  --global-concurrency N    server: one ConcurrencyLimit across all connections
  --load-shed               server: LoadShed, refuse (-32002) instead of waiting on a limit
  --rate N                  server: at most N requests per second per connection (Buffer +
                            RateLimit); with --load-shed and no --concurrency, a burst
                            beyond N is refused (-32002) instead of waiting
  -h, --help                this text

Meter lines go to stderr; the final JSON line goes to stdout.";

/// How long a client waits, after it stops flooding, for the answers still on their way.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Parent,
    Server,
    Client,
}

#[derive(Debug, Clone)]
struct Options {
    role: Role,
    socket: String,
    index: usize,
    call_mode: bool,
    clients: usize,
    seconds: u64,
    inflight: Option<usize>,
    payload: usize,
    server_threads: usize,
    timeout_ms: Option<u64>,
    concurrency: Option<usize>,
    global_concurrency: Option<usize>,
    load_shed: bool,
    rate: Option<u64>,
}

impl Options {
    fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut opts = Options {
            role: Role::Parent,
            socket: String::new(),
            index: 0,
            call_mode: false,
            clients: 2,
            seconds: 10,
            inflight: None,
            payload: 10,
            server_threads: 0,
            timeout_ms: None,
            concurrency: None,
            global_concurrency: None,
            load_shed: false,
            rate: None,
        };
        fn num<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T, String>
        where
            T::Err: std::fmt::Display,
        {
            let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
            value.parse().map_err(|e| format!("{flag} {value}: {e}"))
        }
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            match flag.as_str() {
                "--mode" => {
                    opts.call_mode = match args.next().as_deref() {
                        Some("call") => true,
                        Some("notify") => false,
                        other => {
                            return Err(format!(
                                "--mode {}: use notify or call",
                                other.unwrap_or("")
                            ))
                        }
                    }
                }
                "--clients" => opts.clients = num(&flag, args.next())?,
                "--seconds" => opts.seconds = num(&flag, args.next())?,
                "--inflight" => opts.inflight = Some(num(&flag, args.next())?),
                "--payload" => opts.payload = num(&flag, args.next())?,
                "--server-threads" => opts.server_threads = num(&flag, args.next())?,
                "--timeout-ms" => opts.timeout_ms = Some(num(&flag, args.next())?),
                "--concurrency" => opts.concurrency = Some(num(&flag, args.next())?),
                "--global-concurrency" => opts.global_concurrency = Some(num(&flag, args.next())?),
                "--load-shed" => opts.load_shed = true,
                "--rate" => opts.rate = Some(num(&flag, args.next())?),
                // Hidden: how the parent starts its children.
                "--role" => {
                    opts.role = match args.next().as_deref() {
                        Some("server") => Role::Server,
                        Some("client") => Role::Client,
                        _ => return Err("--role: server or client".into()),
                    }
                }
                "--socket" => opts.socket = args.next().ok_or("--socket needs a value")?,
                "--index" => opts.index = num(&flag, args.next())?,
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown option {other}")),
            }
        }
        if opts.clients == 0 || opts.seconds == 0 {
            return Err("--clients and --seconds must be at least 1".into());
        }
        if opts.concurrency == Some(0) || opts.global_concurrency == Some(0) {
            return Err("a concurrency limit must be at least 1".into());
        }
        if opts.rate == Some(0) {
            return Err("--rate must be at least 1".into());
        }
        Ok(opts)
    }

    /// Pings or calls a client keeps unanswered; 0 means unbounded (notify mode only).
    fn inflight(&self) -> usize {
        match (self.inflight, self.call_mode) {
            (Some(k), true) => k.max(1),
            (Some(k), false) => k,
            (None, true) => 256,
            (None, false) => 1024,
        }
    }

    /// The flags a child needs, with its role.
    fn child_args(&self, role: &str, socket: &str, index: usize) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--role".into(),
            role.into(),
            "--socket".into(),
            socket.into(),
            "--index".into(),
            index.to_string(),
            "--mode".into(),
            if self.call_mode { "call" } else { "notify" }.into(),
            "--seconds".into(),
            self.seconds.to_string(),
            "--inflight".into(),
            self.inflight().to_string(),
            "--payload".into(),
            self.payload.to_string(),
            "--server-threads".into(),
            self.server_threads.to_string(),
        ];
        let mut push = |flag: &str, value: Option<String>| {
            if let Some(value) = value {
                args.push(flag.into());
                args.push(value);
            }
        };
        push("--timeout-ms", self.timeout_ms.map(|v| v.to_string()));
        push("--concurrency", self.concurrency.map(|v| v.to_string()));
        push(
            "--global-concurrency",
            self.global_concurrency.map(|v| v.to_string()),
        );
        push("--rate", self.rate.map(|v| v.to_string()));
        if self.load_shed {
            args.push("--load-shed".into());
        }
        args
    }
}

fn main() {
    let opts = match Options::parse(std::env::args().skip(1)) {
        Ok(opts) => opts,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return;
        }
        Err(e) => {
            eprintln!("flood: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let result = match opts.role {
        Role::Parent => parent(&opts),
        Role::Server => server(&opts),
        Role::Client => client(&opts),
    };
    if let Err(e) = result {
        eprintln!("flood ({:?}): {e}", opts.role);
        std::process::exit(1);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------------------------
// Parent: starts the processes, relays their meter lines, gathers their results.

/// A child process and the thread that relays its output.
struct Started {
    child: Child,
    relay: std::thread::JoinHandle<Option<Value>>,
}

/// Starts `exe args`, relays its meter lines to stderr with `label`, and returns its final
/// `result {json}` line from the relay thread. `ready` is told when the child prints `ready`.
fn start(
    label: String,
    args: Vec<String>,
    ready: Option<std::sync::mpsc::Sender<()>>,
) -> Result<Started, BoxError> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(args)
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
    Ok(Started { child, relay })
}

/// Waits for a child to exit; kills it (our own child, by its handle) after `deadline`.
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

fn parent(opts: &Options) -> Result<(), BoxError> {
    let dir = tempfile::Builder::new().prefix("flood").tempdir()?;
    let socket = dir.path().join("flood.sock");
    let socket = socket.to_str().ok_or("temp path is not UTF-8")?.to_owned();
    // Children that hang are killed: the flood, the drain, and some slack to start and end.
    let deadline = Instant::now() + Duration::from_secs(opts.seconds) + DRAIN * 2 + DRAIN;

    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut server = start(
        "server".into(),
        opts.child_args("server", &socket, 0),
        Some(ready_tx),
    )?;
    if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
        let _ = server.child.kill();
        let _ = server.child.wait();
        return Err("the server did not start".into());
    }
    let server_pid = server.child.id();

    let mut clients = Vec::with_capacity(opts.clients);
    for i in 0..opts.clients {
        clients.push(start(
            format!("client{i}"),
            opts.child_args("client", &socket, i),
            None,
        )?);
    }
    let mut failures = Vec::new();
    let mut results = Vec::new();
    for client in &mut clients {
        if let Err(e) = reap(client, deadline) {
            failures.push(e.to_string());
        }
    }
    for client in clients {
        match client.relay.join().ok().flatten() {
            Some(result) => results.push(result),
            None => failures.push("a client printed no result".into()),
        }
    }

    // Peak RSS while the server is still alive, then ask it to stop: it prints its own counts.
    let procfs::Memory {
        hwm_kb: server_hwm_kb,
        rss_kb: server_rss_now_kb,
    } = procfs::memory(server_pid);
    drop(server.child.stdin.take());
    if let Err(e) = reap(&mut server, Instant::now() + DRAIN * 2) {
        failures.push(e.to_string());
    }
    let server_result = server.relay.join().ok().flatten().unwrap_or(Value::Null);

    let sum = |key: &str| -> u64 { results.iter().filter_map(|r| r[key].as_u64()).sum() };
    let (sent, received) = (sum("sent"), sum("received"));
    // A refused call comes back to its client as an error reply and is counted there; a
    // refused notification is seen only by the server.
    let rejected = if opts.call_mode {
        sum("rejected")
    } else {
        server_result["rejected"].as_u64().unwrap_or(0)
    };
    let rate: f64 = results
        .iter()
        .filter_map(|r| Some(r["in_window"].as_f64()? / r["window_s"].as_f64()?))
        .sum();
    let mut histogram = Histogram::new();
    for r in &results {
        histogram.merge_sparse(&r["histogram"]);
    }
    let summary = json!({
        "mode": if opts.call_mode { "call" } else { "notify" },
        "clients": opts.clients,
        "seconds": opts.seconds,
        "inflight": opts.inflight(),
        "payload": opts.payload,
        "msgs_per_s": rate.round() as u64,
        "p50_us": round2(histogram.quantile(0.50) as f64 / 1e3),
        "p99_us": round2(histogram.quantile(0.99) as f64 / 1e3),
        "sent": sent,
        "received": received,
        "rejected": rejected,
        "lost": sent.saturating_sub(received + rejected),
        "server_rss_kb": server_hwm_kb,
        "server_rss_end_kb": server_rss_now_kb,
        "server_threads": opts.server_threads,
        "limits": {
            "timeout_ms": opts.timeout_ms,
            "concurrency": opts.concurrency,
            "global_concurrency": opts.global_concurrency,
            "load_shed": opts.load_shed,
            "rate": opts.rate,
        },
    });
    drop(dir);
    for failure in &failures {
        eprintln!("flood: {failure}");
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
// Server: ping -> pong, echo -> reply, behind the limit layers; stops when stdin closes.

static SERVER_RECEIVED: AtomicU64 = AtomicU64::new(0);
static SERVER_REJECTED: AtomicU64 = AtomicU64::new(0);

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

fn server(opts: &Options) -> Result<(), BoxError> {
    runtime(opts.server_threads)?.block_on(serve(opts))
}

async fn ping(peer: Connection, x: String, time: u64) -> Result<(), diarrhoea::Error> {
    SERVER_RECEIVED.fetch_add(1, Relaxed);
    peer.post_message("pong", (x, time)).await
}

async fn echo(args: Args) -> Args {
    SERVER_RECEIVED.fetch_add(1, Relaxed);
    args
}

/// Counts the work the limit layers refused, then passes the error on (it becomes -32001 or
/// -32002 for a call, an error event for a notification).
fn count_rejection(error: BoxError) -> BoxError {
    // The rate limit's LoadShed is named (NameOverloadLayer): its refusals are -32002 already.
    let named_overload = error
        .downcast_ref::<diarrhoea::RpcError>()
        .is_some_and(|e| e.code == diarrhoea::code::OVERLOADED);
    if error.is::<tower::timeout::error::Elapsed>()
        || error.is::<tower::load_shed::error::Overloaded>()
        || named_overload
    {
        SERVER_REJECTED.fetch_add(1, Relaxed);
    }
    error
}

async fn serve(opts: &Options) -> Result<(), BoxError> {
    let router = Router::new().route("ping", ping).route("echo", echo);
    let global = opts.global_concurrency.map(|n| Arc::new(Semaphore::new(n)));
    // As flood_server: the rate limit's Buffer has room for what the concurrency limit above it
    // lets through, or a second's worth; its own LoadShed only without --concurrency (with it,
    // the outer LoadShed sheds at the concurrency limit and the Buffer never fills).
    let rate_buffer = opts
        .concurrency
        .unwrap_or_else(|| opts.rate.unwrap_or(1) as usize);
    let shed_rate = opts
        .rate
        .filter(|_| opts.load_shed && opts.concurrency.is_none())
        .map(|n| {
            ServiceBuilder::new()
                .layer(NameOverloadLayer::new(format!(
                    "per-connection rate limit ({n} requests/s)"
                )))
                .load_shed()
        });
    let server = Server::bind(&opts.socket)?;
    println!("ready");

    tokio::spawn(meter("receive", "msg", &SERVER_RECEIVED));
    // The parent closes our stdin to stop us.
    let mut stdin_closed = tokio::task::spawn_blocking(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    });
    loop {
        // Built per connection: a cloned ConcurrencyLimit would share its semaphore.
        let stack = ServiceBuilder::new()
            .map_err(count_rejection)
            .option_layer(
                opts.timeout_ms
                    .map(|ms| tower::timeout::TimeoutLayer::new(Duration::from_millis(ms))),
            )
            .option_layer(opts.load_shed.then(tower::load_shed::LoadShedLayer::new))
            .option_layer(
                global
                    .clone()
                    .map(tower::limit::GlobalConcurrencyLimitLayer::with_semaphore),
            )
            .option_layer(
                opts.concurrency
                    .map(tower::limit::ConcurrencyLimitLayer::new),
            )
            // RateLimit is not Clone: a Buffer in front of it, per connection.
            .option_layer(shed_rate.clone())
            .option_layer(opts.rate.map(|n| {
                ServiceBuilder::new()
                    .layer(BufferLayer::<Request>::new(rate_buffer))
                    .layer(RateLimitLayer::new(n, Duration::from_secs(1)))
            }))
            .service(router.clone());
        tokio::select! {
            _ = &mut stdin_closed => break,
            accepted = server.accept(stack) => { accepted?; }
        }
    }
    server.shutdown().await;
    let result = json!({
        "received": SERVER_RECEIVED.load(Relaxed),
        "rejected": SERVER_REJECTED.load(Relaxed),
    });
    println!("result {result}");
    Ok(())
}

/// Prints `label N unit / second` once a second from a counter it resets.
async fn meter(label: &'static str, unit: &'static str, counter: &'static AtomicU64) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = Instant::now();
    loop {
        tick.tick().await;
        let count = counter.swap(0, Relaxed);
        println!(
            "{label} {:.0} {unit} / second",
            count as f64 / last.elapsed().as_secs_f64()
        );
        last = Instant::now();
    }
}

// ---------------------------------------------------------------------------------------------
// Client: floods for the given seconds, drains, prints its counts and latency histogram.

/// What one client counts; shared by its tasks and its handlers.
struct Stats {
    sent: AtomicU64,
    received: AtomicU64,
    rejected: AtomicU64,
    /// Round trips since the last meter line.
    meter: &'static AtomicU64,
    latency: Histogram,
}

static CLIENT_METER: AtomicU64 = AtomicU64::new(0);

impl Stats {
    fn answered(&self, sent_at_ns: u64) {
        self.latency.record(now_ns().saturating_sub(sent_at_ns));
        self.received.fetch_add(1, Relaxed);
        self.meter.fetch_add(1, Relaxed);
    }
}

/// Nanoseconds on this process's monotonic clock; pings carry it to time their pongs.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn client(opts: &Options) -> Result<(), BoxError> {
    runtime(0)?.block_on(flood(opts))
}

async fn flood(opts: &Options) -> Result<(), BoxError> {
    let stats = Arc::new(Stats {
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        meter: &CLIENT_METER,
        latency: Histogram::new(),
    });
    // The window of unanswered pings (notify mode): every pong gives one place back.
    let inflight = opts.inflight();
    let window = Arc::new(Semaphore::new(if inflight == 0 {
        Semaphore::MAX_PERMITS
    } else {
        inflight
    }));
    let router = Router::new().route("pong", {
        let (stats, window) = (stats.clone(), window.clone());
        move |_x: IgnoredAny, time: u64| {
            stats.answered(time);
            window.add_permits(1);
            std::future::ready(())
        }
    });
    let conn = Client::builder().bind(router).connect(&opts.socket).await?;
    let payload: Arc<str> = "x".repeat(opts.payload).into();
    let flood_for = Duration::from_secs(opts.seconds);
    let meter = tokio::spawn(meter("round trips", "msg", &CLIENT_METER));

    let started = Instant::now();
    let (in_window, window_s) = if opts.call_mode {
        flood_calls(&conn, &stats, &payload, inflight, flood_for).await
    } else {
        flood_notify(&conn, &stats, &payload, &window, flood_for).await?
    };

    // Answers still on their way: wait for them, bounded.
    let drain_until = Instant::now() + DRAIN;
    while stats.sent.load(Relaxed) > stats.received.load(Relaxed) + stats.rejected.load(Relaxed)
        && Instant::now() < drain_until
        && !conn.is_closed()
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    meter.abort();
    conn.end();
    let _ = tokio::time::timeout(DRAIN, conn.closed()).await;
    conn.close();

    let result = json!({
        "sent": stats.sent.load(Relaxed),
        "received": stats.received.load(Relaxed),
        "rejected": stats.rejected.load(Relaxed),
        "in_window": in_window,
        "window_s": window_s,
        "elapsed_s": started.elapsed().as_secs_f64(),
        "histogram": stats.latency.to_sparse(),
    });
    println!("result {result}");
    Ok(())
}

/// Posts pings until the time is up, at most `window` unanswered; returns the pongs counted
/// while flooding and the flood's duration.
async fn flood_notify(
    conn: &Connection,
    stats: &Stats,
    payload: &str,
    window: &Semaphore,
    flood_for: Duration,
) -> Result<(u64, f64), diarrhoea::Error> {
    let started = Instant::now();
    let mut i = 0u64;
    loop {
        // Checking the clock every message costs more than the check is worth.
        if i.is_multiple_of(64) && started.elapsed() >= flood_for {
            break;
        }
        i += 1;
        window.acquire().await.expect("never closed").forget();
        conn.post_message("ping", (payload, now_ns())).await?;
        stats.sent.fetch_add(1, Relaxed);
    }
    Ok((
        stats.received.load(Relaxed),
        started.elapsed().as_secs_f64(),
    ))
}

/// Runs `inflight` callers, each with one `echo` call waiting at a time, until the time is up.
async fn flood_calls(
    conn: &Connection,
    stats: &Arc<Stats>,
    payload: &Arc<str>,
    inflight: usize,
    flood_for: Duration,
) -> (u64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..inflight {
        let (conn, stats, payload, stop) =
            (conn.clone(), stats.clone(), payload.clone(), stop.clone());
        callers.spawn(async move {
            for seq in 0u64.. {
                if stop.load(Relaxed) {
                    break;
                }
                stats.sent.fetch_add(1, Relaxed);
                let sent_at = now_ns();
                match conn
                    .call::<(IgnoredAny, u64)>("echo", (&*payload, seq))
                    .await
                {
                    Ok((_, echoed)) if echoed == seq => stats.answered(sent_at),
                    Ok((_, echoed)) => {
                        eprintln!("echo mismatch: sent {seq}, got {echoed}");
                        // Counted as lost: never received.
                    }
                    Err(e) if matches!(e.code(), Some(-32001 | -32002)) => {
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
    let started = Instant::now();
    tokio::time::sleep(flood_for).await;
    stop.store(true, Relaxed);
    let result = (
        stats.received.load(Relaxed),
        started.elapsed().as_secs_f64(),
    );
    // Each caller finishes its last call; bounded by the drain that follows.
    let _ = tokio::time::timeout(DRAIN, async {
        while callers.join_next().await.is_some() {}
    })
    .await;
    result
}

// ---------------------------------------------------------------------------------------------
// A log-linear latency histogram: fixed memory, values within 1/64 (1.6%).

/// Values below `2^(SUB_BITS + 1)` are exact; above, each power of two has `2^SUB_BITS` buckets.
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
const EXACT: usize = 2 * SUB;
const BUCKETS: usize = EXACT + (64 - SUB_BITS as usize - 1) * SUB;

struct Histogram {
    counts: Box<[AtomicU64]>,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn index(v: u64) -> usize {
        if v < EXACT as u64 {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros(); // >= SUB_BITS + 1
        let sub = (v >> (exp - SUB_BITS)) as usize & (SUB - 1);
        EXACT + (exp - SUB_BITS - 1) as usize * SUB + sub
    }

    /// The middle of a bucket.
    fn value(index: usize) -> u64 {
        if index < EXACT {
            return index as u64;
        }
        let exp = ((index - EXACT) / SUB) as u32 + SUB_BITS + 1;
        let sub = ((index - EXACT) % SUB) as u64;
        let low = (SUB as u64 + sub) << (exp - SUB_BITS);
        low + (1u64 << (exp - SUB_BITS)) / 2
    }

    fn record(&self, v: u64) {
        self.counts[Self::index(v)].fetch_add(1, Relaxed);
    }

    fn to_sparse(&self) -> Value {
        let pairs: Vec<(usize, u64)> = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.load(Relaxed)))
            .filter(|&(_, c)| c > 0)
            .collect();
        json!(pairs)
    }

    fn merge_sparse(&mut self, sparse: &Value) {
        for pair in sparse.as_array().into_iter().flatten() {
            if let (Some(i), Some(c)) = (pair[0].as_u64(), pair[1].as_u64()) {
                if let Some(slot) = self.counts.get(i as usize) {
                    slot.fetch_add(c, Relaxed);
                }
            }
        }
    }

    /// The value below which a fraction `q` of the samples fall; 0 without samples.
    fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.counts.iter().map(|c| c.load(Relaxed)).sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Relaxed);
            if seen >= rank {
                return Self::value(i);
            }
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_within_two_percent() {
        for v in [
            0u64,
            1,
            127,
            128,
            129,
            1000,
            18_000,
            55_000,
            1 << 40,
            u64::MAX / 2,
        ] {
            let got = Histogram::value(Histogram::index(v));
            let err = (got as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err <= 1.0 / 64.0, "{v} -> {got}");
        }
        assert!(Histogram::index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles() {
        let h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 50);
        assert_eq!(h.quantile(0.99), 99);
    }

    #[test]
    fn options() {
        let parse = |s: &str| Options::parse(s.split_whitespace().map(String::from));
        let o = parse("--mode call --clients 1 --inflight 1").unwrap();
        assert!(o.call_mode && o.clients == 1 && o.inflight() == 1);
        assert_eq!(parse("").unwrap().inflight(), 1024);
        assert!(parse("--bogus").is_err());
        assert!(parse("--clients").is_err());
        let o = parse("--rate 1000 --load-shed").unwrap();
        assert_eq!(o.rate, Some(1000));
        let args = o.child_args("server", "s", 0);
        assert!(args.windows(2).any(|w| w == ["--rate", "1000"]));
        assert!(parse("--rate 0").is_err());
    }
}
