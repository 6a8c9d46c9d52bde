//! One-command flood: one server process and N client processes, then one JSON line with the
//! figures. The clients reach the server over a Unix socket (default), TCP on loopback, TLS
//! over TCP on loopback, a WebSocket on loopback (feature `axum`), or a server child's stdin
//! and stdout.
//!
//! ```text
//! cargo run --release --example flood -- [--transport unix|tcp|tls|ws|stdio] [--mode notify|call|stream]
//!     [--protocol v1|jsonrpc|lsp] [--clients N] [--seconds S] [--inflight K] [--payload BYTES] [--server-threads T]
//!     [--timeout-ms N] [--concurrency N] [--global-concurrency N] [--load-shed] [--rate N]
//! ```
//!
//! The example re-runs itself (`std::env::current_exe()`) with a hidden `--role server|client`
//! flag, so the server and every client are separate OS processes, as with the Node library's
//! `flood_server.js` / `flood_client.js`. Each side prints a meter line a second on stderr;
//! the last line on stdout is the result:
//!
//! ```text
//! {"clients":2,"inflight":1024,"limits":{..},"lost":0,"mode":"notify","msgs_per_s":..,
//!  "p50_us":..,"p99_us":..,"payload":10,"received":..,"rejected":0,"seconds":10,"sent":..,
//!  "server_rss_end_kb":..,"server_rss_kb":..,"server_threads":0,"transport":"unix"}
//! ```
//!
//! - `--transport unix` (default): one server process listens on a socket in a fresh temporary
//!   directory; `tcp`: one server process listens on 127.0.0.1, on a free port it binds
//!   (port 0) and reports to the parent on its `ready` line. TCP has no encryption and no
//!   authentication: loopback only. `tls`: the same over TLS (tokio-rustls, ring provider):
//!   the parent makes a self-signed certificate for `localhost` (rcgen) in the temporary
//!   directory, the server completes each handshake beside its accept loop, and the clients
//!   trust that certificate and no other; each side's stream is a `transport::Io`. `ws`: TCP
//!   again, with an axum server whose `/ws` route is `diarrhoea::http::ws` and clients that
//!   `connect_ws`; needs `--features axum`.
//! - `--transport stdio`: a pipe has exactly one peer, so **each client process spawns its own
//!   server process** (`Builder::spawn_child`; the server side is `serve_stdio`) and talks to
//!   it over that child's stdin and stdout. N clients then mean N server processes, each with
//!   one connection, where the others have one server process for all N. For figures that
//!   compare stdio with the others use `--clients 1` (one client and one server process
//!   in every case); with more clients, stdio spreads the server's work over N processes and
//!   `server_rss_kb` is the sum of their peaks. The stdio servers print their meter lines on
//!   stderr (their stdout carries the frames), relayed by their client.
//! - `--mode notify` (default): each client posts `ping(x, t)` notifications and the server
//!   answers each with a `pong(x, t)` notification; `t` is the client's clock when it sent the
//!   ping, so every pong carries its own round-trip time. `--inflight K` bounds the pings a
//!   client has sent but not yet seen answered (default 1024; 0 = only the connection's own
//!   backpressure bounds them).
//! - `--mode call`: each client keeps K `echo(x, seq)` calls waiting for their replies (default
//!   256). `--clients 1 --inflight 1 --mode call` measures sequential latency.
//! - `--mode stream`: each client opens one stream, `count(n)` with an `n` it never reaches
//!   (`Connection::call_stream`), takes its items `0, 1, 2, ...` as fast as they come for the
//!   flood's duration, then drops the stream (which cancels it). `--inflight K` is the
//!   stream's credit window (default 256, the crate's default). The line has `items_per_s`
//!   (items taken per second over all clients) instead of `msgs_per_s`; `sent` is the items
//!   the server sent up to the last one taken (the last item + 1), `lost` the items missing
//!   from the sequence, and there is no latency (`p50_us`, `p99_us` are null).
//! - `--protocol v1` (default): protocol v1; `jsonrpc`: JSON-RPC 2.0 objects, one per line;
//!   `lsp`: JSON-RPC 2.0 with `Content-Length` framing. The server speaks what the clients
//!   speak (set, not detected, so v1 runs on the stream as it is); the same pings, pongs and
//!   echo calls, so the rows compare the codecs. Over unix, tcp and tls; not with
//!   `--mode stream` (streams are protocol v1's).
//! - `--payload BYTES`: the length of the string `x` (default 10, like Node's `"flood12345"`).
//! - Limit flags wrap the server's router in stock tower layers, built per connection:
//!   `--timeout-ms` (Timeout), `--concurrency` (ConcurrencyLimit per connection),
//!   `--global-concurrency` (one limit across all connections of a server process),
//!   `--load-shed` (LoadShed: refuse instead of wait when a limit is full), `--rate` (Buffer +
//!   RateLimit per connection, innermost, as `flood_server` builds it: over the rate requests
//!   wait, or with `--load-shed` and no `--concurrency` a `NameOverloadLayer` + `LoadShed` in
//!   front of the Buffer refuses what arrives while it holds a second's worth).
//!
//! `msgs_per_s` counts completed round trips per second over all clients while they flood;
//! `p50_us`/`p99_us` are round-trip latencies (`hdrhistogram`, 3 significant digits);
//! `lost = sent - received - rejected`, and `rejected` counts work a limit refused (error
//! replies -32001/-32002 for calls, notifications the server's layers refused). After the
//! flood stops each client waits up to 5 s for the answers still on their way.
//! `server_rss_kb` is the server process's peak resident set (`VmHWM`).
//!
//! No process outlives the run: the parent stops the server by closing its stdin, and a killed
//! parent closes the stdin of every child it started, which ends the server and makes each
//! client stop at once; a stdio server is its client's child, killed when the client drops it
//! (`kill_on_drop`), and it ends by itself at the end of its stdin when its client dies.

mod report;

// One copy, kept with the tests (which include nothing from `examples/`).
#[allow(dead_code, unreachable_pub)]
#[path = "../tests/common/procfs.rs"]
mod procfs;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clap::{value_parser, Parser, ValueEnum};
use diarrhoea::layer::NameOverloadLayer;
use diarrhoea::{Args, Config, Connection, Request, Response, Router, UnixListener};
use hdrhistogram::Histogram;
use serde::de::IgnoredAny;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tower::buffer::BufferLayer;
use tower::limit::RateLimitLayer;
use tower::{Service, ServiceBuilder};

/// How long a client waits, after it stops flooding, for the answers still on their way.
const DRAIN: Duration = Duration::from_secs(5);

/// The command line. The hidden flags are how the parent starts its children.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "flood",
    about = "One server process and N client processes flooding it; one JSON line of figures",
    after_help = "Meter lines go to stderr; the final JSON line goes to stdout."
)]
struct Opts {
    /// Ping/pong notifications, echo calls, or one stream of items per client
    #[arg(long, value_enum, default_value_t = Mode::Notify)]
    mode: Mode,
    /// How clients reach the server: a Unix socket, TCP on 127.0.0.1 (a free port), TLS over
    /// TCP on 127.0.0.1 (a self-signed certificate made for the run), a WebSocket on 127.0.0.1
    /// (feature `axum`), or a server child's stdin/stdout (each client spawns its own server
    /// process)
    #[arg(long, value_enum, default_value_t = Transport::Unix)]
    transport: Transport,
    /// What the clients speak (the server speaks the same): protocol v1, JSON-RPC 2.0 lines,
    /// or JSON-RPC 2.0 with Content-Length framing (unix, tcp and tls transports)
    #[arg(long, value_enum, default_value_t = WireProtocol::V1)]
    protocol: WireProtocol,
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
    /// Per client: pings unanswered (notify, default 1024, 0 = unbounded), calls waiting
    /// (call, default 256), or the stream's credit window (stream, default 256)
    #[arg(long, value_name = "K")]
    inflight: Option<usize>,
    /// Length of the string argument
    #[arg(long, value_name = "BYTES", default_value_t = 10)]
    payload: usize,
    /// Server runtime worker threads (0 = current-thread runtime)
    #[arg(long, value_name = "T", default_value_t = 0)]
    server_threads: usize,
    /// Server: tower Timeout around the router
    #[arg(long, value_name = "N")]
    timeout_ms: Option<u64>,
    /// Server: ConcurrencyLimit per connection
    #[arg(long, value_name = "N", value_parser = positive)]
    concurrency: Option<usize>,
    /// Server: one ConcurrencyLimit across all connections
    #[arg(long, value_name = "N", value_parser = positive)]
    global_concurrency: Option<usize>,
    /// Server: LoadShed, refuse (-32002) instead of waiting on a limit
    #[arg(long)]
    load_shed: bool,
    /// Server: at most N requests per second per connection (Buffer + RateLimit); with
    /// --load-shed and no --concurrency, a burst beyond N is refused (-32002) instead of waiting
    #[arg(long, value_name = "N", value_parser = value_parser!(u64).range(1..))]
    rate: Option<u64>,
    #[arg(long, value_enum, hide = true, default_value_t = Role::Parent)]
    role: Role,
    /// The server's address: a socket path, or HOST:PORT for TCP (127.0.0.1:0 for the server).
    #[arg(long, hide = true, default_value = "")]
    socket: String,
    #[arg(long, hide = true, default_value_t = 0)]
    index: usize,
    /// TLS: the run's certificate (DER), which the server presents and the clients trust.
    #[arg(long, hide = true)]
    tls_cert: Option<String>,
    /// TLS: the certificate's private key (PKCS #8, DER); the server's only.
    #[arg(long, hide = true)]
    tls_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Notify,
    Call,
    Stream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WireProtocol {
    V1,
    Jsonrpc,
    Lsp,
}

impl WireProtocol {
    fn protocol(self) -> diarrhoea::Protocol {
        match self {
            WireProtocol::V1 => diarrhoea::Protocol::V1,
            WireProtocol::Jsonrpc => diarrhoea::Protocol::JsonRpc,
            WireProtocol::Lsp => diarrhoea::Protocol::Lsp,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    Unix,
    Tcp,
    Tls,
    Ws,
    Stdio,
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
    fn call_mode(&self) -> bool {
        self.mode == Mode::Call
    }

    /// Pings or calls a client keeps unanswered, or its stream's window; 0 means unbounded
    /// (notify mode only).
    fn inflight(&self) -> usize {
        match (self.inflight, self.mode) {
            (Some(k), Mode::Notify) => k,
            (Some(k), Mode::Call | Mode::Stream) => k.max(1),
            (None, Mode::Call | Mode::Stream) => 256,
            (None, Mode::Notify) => 1024,
        }
    }

    /// The flags a child needs, with its role.
    fn child_args(&self, role: Role, socket: &str, index: usize) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--role".into(),
            name(role),
            "--transport".into(),
            name(self.transport),
            "--protocol".into(),
            name(self.protocol),
            "--socket".into(),
            socket.into(),
            "--index".into(),
            index.to_string(),
            "--mode".into(),
            name(self.mode),
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
        push("--tls-cert", self.tls_cert.clone());
        push(
            "--tls-key",
            self.tls_key.clone().filter(|_| role == Role::Server),
        );
        if self.load_shed {
            args.push("--load-shed".into());
        }
        args
    }
}

fn main() -> std::process::ExitCode {
    let opts = Opts::parse();
    if opts.protocol != WireProtocol::V1
        && (matches!(opts.transport, Transport::Ws | Transport::Stdio) || opts.mode == Mode::Stream)
    {
        eprintln!(
            "flood: --protocol {} runs over unix, tcp or tls, in notify or call mode",
            name(opts.protocol)
        );
        return std::process::ExitCode::from(2);
    }
    let result = match opts.role {
        Role::Parent => parent(&opts),
        Role::Server => server(&opts),
        Role::Client => client(&opts),
    };
    // Parent and children share a terminal: the line says whose it is.
    report::exit(result.map_err(|e| format!("flood ({}): {}", name(opts.role), report::chain(&*e))))
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A child's line to the parent, on stdout. A parent that is gone is no reason to panic: the
/// child sees the end of its stdin and stops.
fn say(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

// ---------------------------------------------------------------------------------------------
// Parent: starts the processes, relays their meter lines, gathers their results.

/// A child process and the thread that relays its output.
struct Started {
    child: Child,
    relay: std::thread::JoinHandle<Option<Value>>,
}

/// Starts `exe args`, relays its meter lines to stderr with `label`, and returns its final
/// `result {json}` line from the relay thread. `ready` is told the rest of the child's `ready`
/// line (the address a TCP server listens on).
fn start(
    label: String,
    args: Vec<String>,
    ready: Option<std::sync::mpsc::Sender<String>>,
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
            } else if let Some(rest) = line
                .strip_prefix("ready")
                .filter(|rest| rest.is_empty() || rest.starts_with(' '))
            {
                if let Some(ready) = &ready {
                    let _ = ready.send(rest.trim().to_owned());
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

/// Starts the server process (every transport but stdio) and waits until it listens; returns
/// it and the address for the clients.
fn start_server(opts: &Opts, socket: &str) -> Result<(Started, String), BoxError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut server = start(
        "server".into(),
        opts.child_args(Role::Server, socket, 0),
        Some(ready_tx),
    )?;
    let listening = match ready_rx.recv_timeout(Duration::from_secs(10)) {
        // Every server but a Unix socket's binds a free port and reports it.
        Ok(addr) if opts.transport != Transport::Unix => addr,
        Ok(_) => socket.to_owned(),
        Err(_) => {
            let _ = server.child.kill();
            let _ = server.child.wait();
            return Err("the server did not start".into());
        }
    };
    Ok((server, listening))
}

fn parent(opts: &Opts) -> Result<(), BoxError> {
    #[cfg(not(feature = "axum"))]
    if opts.transport == Transport::Ws {
        return Err(WITHOUT_AXUM.into());
    }
    let dir = tempfile::Builder::new().prefix("flood").tempdir()?;
    // tls: a certificate for this run only, in its directory.
    let mut opts = opts.clone();
    if opts.transport == Transport::Tls {
        let (cert, key) = tls::self_signed(dir.path())?;
        (opts.tls_cert, opts.tls_key) = (Some(cert), Some(key));
    }
    let opts = &opts;
    // Children that hang are killed: the flood, the drain, and some slack to start and end.
    let deadline = Instant::now() + Duration::from_secs(opts.seconds) + DRAIN * 4;

    // One server process for all the clients; stdio: each client starts its own.
    let server = match opts.transport {
        Transport::Unix => {
            let socket = dir.path().join("flood.sock");
            let socket = socket.to_str().ok_or("temp path is not UTF-8")?;
            Some(start_server(opts, socket)?)
        }
        // Port 0: the server binds a free port and reports it.
        Transport::Tcp | Transport::Tls | Transport::Ws => Some(start_server(opts, "127.0.0.1:0")?),
        Transport::Stdio => None,
    };
    let address = server.as_ref().map_or("", |(_, addr)| addr.as_str());

    let mut clients = Vec::with_capacity(opts.clients);
    for i in 0..opts.clients {
        clients.push(start(
            format!("client{i}"),
            opts.child_args(Role::Client, address, i),
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

    // The servers' own counts and memory: one server here, or one per client (stdio), each
    // measured by its client.
    let servers: Vec<Value> = match server {
        Some((mut server, _)) => {
            // Peak RSS while the server is still alive, then ask it to stop: it prints its
            // own counts.
            let memory = procfs::memory(server.child.id());
            drop(server.child.stdin.take());
            if let Err(e) = reap(&mut server, Instant::now() + DRAIN * 2) {
                failures.push(e.to_string());
            }
            let mut result = server.relay.join().ok().flatten().unwrap_or(Value::Null);
            result["hwm_kb"] = json!(memory.hwm_kb);
            result["rss_kb"] = json!(memory.rss_kb);
            vec![result]
        }
        None => results.iter().map(|r| r["server"].clone()).collect(),
    };
    let server_sum = |key: &str| -> u64 { servers.iter().filter_map(|r| r[key].as_u64()).sum() };

    let sum = |key: &str| -> u64 { results.iter().filter_map(|r| r[key].as_u64()).sum() };
    let (sent, received) = (sum("sent"), sum("received"));
    // A refused call comes back to its client as an error reply and is counted there; a
    // refused notification is seen only by the server.
    let rejected = if opts.call_mode() {
        sum("rejected")
    } else {
        server_sum("rejected")
    };
    let rate: f64 = results
        .iter()
        .filter_map(|r| Some(r["in_window"].as_f64()? / r["window_s"].as_f64()?))
        .sum();
    let mut histogram = new_histogram();
    for r in &results {
        merge_sparse(&mut histogram, &r["histogram"]);
    }
    let stream = opts.mode == Mode::Stream;
    // A stream has no round trips to time.
    let quantile_us =
        |q: f64| (!stream).then(|| round2(histogram.value_at_quantile(q) as f64 / 1e3));
    let rate_key = if stream { "items_per_s" } else { "msgs_per_s" };
    let mut summary = json!({
        "mode": name(opts.mode),
        "transport": name(opts.transport),
        "protocol": name(opts.protocol),
        "clients": opts.clients,
        "seconds": opts.seconds,
        "inflight": opts.inflight(),
        "payload": opts.payload,
        "p50_us": quantile_us(0.50),
        "p99_us": quantile_us(0.99),
        "sent": sent,
        "received": received,
        "rejected": rejected,
        "lost": sent.saturating_sub(received + rejected),
        "server_rss_kb": server_sum("hwm_kb"),
        "server_rss_end_kb": server_sum("rss_kb"),
        "server_threads": opts.server_threads,
        "limits": {
            "timeout_ms": opts.timeout_ms,
            "concurrency": opts.concurrency,
            "global_concurrency": opts.global_concurrency,
            "load_shed": opts.load_shed,
            "rate": opts.rate,
        },
    });
    summary[rate_key] = json!(rate.round() as u64);
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
// Server: ping -> pong, echo -> reply, behind the limit layers; stops when stdin closes, or
// when its one connection ends (stdio).

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

fn server(opts: &Opts) -> Result<(), BoxError> {
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

/// The items `0..n`, counted as the server sends them, then the trailer `n`.
async fn count(n: u64) -> diarrhoea::StreamReply<u64> {
    let items = futures_util::StreamExt::inspect(futures_util::stream::iter(0..n), |_| {
        SERVER_RECEIVED.fetch_add(1, Relaxed);
    });
    diarrhoea::StreamReply::new(items).trailer(n)
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

/// The router in the limit layers the flags ask for; built per connection, since a cloned
/// ConcurrencyLimit would share its semaphore (`global` is the one shared on purpose).
fn stack(
    opts: &Opts,
    router: &Router,
    global: Option<&Arc<Semaphore>>,
) -> impl Service<Request, Response = Response, Error = BoxError, Future: Send + 'static>
       + Clone
       + Send
       + Sync
       + 'static {
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
    ServiceBuilder::new()
        .map_err(count_rejection)
        .option_layer(
            opts.timeout_ms
                .map(|ms| tower::timeout::TimeoutLayer::new(Duration::from_millis(ms))),
        )
        .option_layer(opts.load_shed.then(tower::load_shed::LoadShedLayer::new))
        .option_layer(
            global
                .cloned()
                .map(tower::limit::GlobalConcurrencyLimitLayer::with_semaphore),
        )
        .option_layer(
            opts.concurrency
                .map(tower::limit::ConcurrencyLimitLayer::new),
        )
        // RateLimit is not Clone: a Buffer in front of it, per connection.
        .option_layer(shed_rate)
        .option_layer(opts.rate.map(|n| {
            ServiceBuilder::new()
                .layer(BufferLayer::<Request>::new(rate_buffer))
                .layer(RateLimitLayer::new(n, Duration::from_secs(1)))
        }))
        .service(router.clone())
}

async fn serve(opts: &Opts) -> Result<(), BoxError> {
    let router = Router::new()
        .route("ping", ping)
        .route("echo", echo)
        .route("count", count);
    let global = opts.global_concurrency.map(|n| Arc::new(Semaphore::new(n)));
    // Over stdio, stdout carries the frames: everything else goes to stderr.
    let stdio = opts.transport == Transport::Stdio;
    tokio::spawn(meter("receive", "msg", &SERVER_RECEIVED, stdio));
    match opts.transport {
        Transport::Unix => {
            let listener = UnixListener::bind(&opts.socket)?;
            say("ready");
            serve_until_stdin_closes(listener, opts, router, global).await?;
        }
        Transport::Tcp => {
            let listener = tokio::net::TcpListener::bind(&opts.socket).await?;
            say(format_args!("ready {}", listener.local_addr()?));
            serve_until_stdin_closes(listener, opts, router, global).await?;
        }
        Transport::Tls => {
            let listener = tls::Listener::bind(opts).await?;
            say(format_args!("ready {}", listener.local_addr()?));
            serve_until_stdin_closes(listener, opts, router, global).await?;
        }
        Transport::Ws => serve_ws(opts, router, global).await?,
        // One connection, over stdin and stdout, until the client ends it (or dies).
        Transport::Stdio => diarrhoea::serve_stdio(stack(opts, &router, global.as_ref())).await,
    }
    let result = json!({
        "received": SERVER_RECEIVED.load(Relaxed),
        "rejected": SERVER_REJECTED.load(Relaxed),
    });
    if stdio {
        eprintln!("result {result}");
    } else {
        say(format_args!("result {result}"));
    }
    Ok(())
}

/// Serves every connection `listener` accepts until the parent closes our stdin (or dies),
/// then shuts down gracefully.
async fn serve_until_stdin_closes<L: diarrhoea::Listener>(
    listener: L,
    opts: &Opts,
    router: Router,
    global: Option<Arc<Semaphore>>,
) -> Result<(), diarrhoea::Error> {
    let stdin_closed = async {
        let _ = tokio::task::spawn_blocking(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        })
        .await;
    };
    let opts = opts.clone();
    let config = Config::new().protocol(opts.protocol.protocol());
    diarrhoea::serve(listener, move |_: &Connection| {
        stack(&opts, &router, global.as_ref())
    })
    .config(config)
    .with_graceful_shutdown(stdin_closed)
    .await
}

/// An axum server on `opts.socket` (127.0.0.1:0) with the WebSocket endpoint at `/ws`, each
/// connection with the same stack as on a socket, until the parent closes our stdin.
#[cfg(feature = "axum")]
async fn serve_ws(
    opts: &Opts,
    router: Router,
    global: Option<Arc<Semaphore>>,
) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind(&opts.socket).await?;
    say(format_args!("ready {}", listener.local_addr()?));
    let stdin_closed = async {
        let _ = tokio::task::spawn_blocking(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        })
        .await;
    };
    let opts_for_stack = opts.clone();
    let endpoint =
        diarrhoea::http::ws(move |_: &Connection| stack(&opts_for_stack, &router, global.as_ref()));
    let app = axum::Router::new().route("/ws", endpoint.route());
    axum::serve(listener, app)
        .with_graceful_shutdown(stdin_closed)
        .await?;
    Ok(())
}

#[cfg(not(feature = "axum"))]
async fn serve_ws(_: &Opts, _: Router, _: Option<Arc<Semaphore>>) -> Result<(), BoxError> {
    Err(WITHOUT_AXUM.into())
}

#[cfg(feature = "axum")]
async fn connect_ws(
    builder: diarrhoea::connection::Builder,
    addr: &str,
) -> Result<Connection, BoxError> {
    Ok(builder.connect_ws(format!("ws://{addr}/ws")).await?)
}

#[cfg(not(feature = "axum"))]
async fn connect_ws(_: diarrhoea::connection::Builder, _: &str) -> Result<Connection, BoxError> {
    Err(WITHOUT_AXUM.into())
}

/// What `--transport ws` says in a build without the feature.
#[cfg(not(feature = "axum"))]
const WITHOUT_AXUM: &str =
    "--transport ws needs the axum feature: cargo run --release --features axum --example flood";

/// `--transport tls`: TLS over TCP on loopback, as `tests/tls.rs` runs it (tokio-rustls with
/// the ring provider, a self-signed certificate made by rcgen, the stream in `transport::Io`).
mod tls {
    use std::io;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use diarrhoea::transport::Io;
    use diarrhoea::Connection;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinSet;
    use tokio::time::{error::Elapsed, timeout};
    use tokio_rustls::rustls::crypto::ring;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
    use tokio_rustls::{server::TlsStream, TlsAcceptor, TlsConnector};

    use super::{BoxError, Opts};

    /// The name the certificate is for, and the one the clients ask for.
    const NAME: &str = "localhost";
    /// How long a peer has to complete its handshake.
    const HANDSHAKE: Duration = Duration::from_secs(10);

    /// Makes a self-signed certificate for [`NAME`] and writes it and its key (DER) into
    /// `dir`; returns their paths.
    pub(super) fn self_signed(dir: &Path) -> Result<(String, String), BoxError> {
        let made = rcgen::generate_simple_self_signed(vec![NAME.to_owned()])?;
        let (cert, key) = (dir.join("cert.der"), dir.join("key.der"));
        std::fs::write(&cert, made.cert.der())?;
        std::fs::write(&key, made.signing_key.serialize_der())?;
        let utf8 = |path: &Path| {
            path.to_str()
                .map(str::to_owned)
                .ok_or("temp path is not UTF-8")
        };
        Ok((utf8(&cert)?, utf8(&key)?))
    }

    fn certificate(opts: &Opts) -> Result<CertificateDer<'static>, BoxError> {
        let path = opts.tls_cert.as_deref().ok_or("--tls-cert is missing")?;
        Ok(std::fs::read(path)?.into())
    }

    /// Accepts TCP on `opts.socket` and completes each handshake in a task of its own, so a
    /// slow peer holds up no other; a failed handshake is reported and skipped.
    pub(super) struct Listener {
        tcp: TcpListener,
        acceptor: TlsAcceptor,
        /// Handshakes under way, each with its deadline.
        handshakes: JoinSet<Result<io::Result<TlsStream<TcpStream>>, Elapsed>>,
    }

    impl Listener {
        pub(super) async fn bind(opts: &Opts) -> Result<Self, BoxError> {
            let key = opts.tls_key.as_deref().ok_or("--tls-key is missing")?;
            let key = PrivatePkcs8KeyDer::from(std::fs::read(key)?);
            let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(vec![certificate(opts)?], key.into())?;
            Ok(Listener {
                tcp: TcpListener::bind(&opts.socket).await?,
                acceptor: TlsAcceptor::from(Arc::new(config)),
                handshakes: JoinSet::new(),
            })
        }

        pub(super) fn local_addr(&self) -> io::Result<SocketAddr> {
            self.tcp.local_addr()
        }
    }

    impl diarrhoea::Listener for Listener {
        type Io = Io<TlsStream<TcpStream>>;

        // Both branches are cancel-safe: `serve` may drop this future at shutdown.
        async fn accept(&mut self) -> io::Result<Self::Io> {
            loop {
                tokio::select! {
                    accepted = self.tcp.accept() => {
                        let (tcp, _) = accepted?;
                        // As the crate does for a plain TcpStream: `Io` knows nothing of TCP.
                        let _ = tcp.set_nodelay(true);
                        self.handshakes.spawn(timeout(HANDSHAKE, self.acceptor.accept(tcp)));
                    }
                    Some(done) = self.handshakes.join_next() => match done {
                        Ok(Ok(Ok(tls))) => return Ok(Io(tls)),
                        Ok(Ok(Err(e))) => eprintln!("flood (server): TLS handshake: {e}"),
                        Ok(Err(_)) => eprintln!("flood (server): TLS handshake timed out"),
                        Err(e) => eprintln!("flood (server): TLS handshake task: {e}"),
                    },
                }
            }
        }
    }

    /// Connects to `opts.socket` over TLS, trusting the run's certificate and no other.
    pub(super) async fn connect(
        builder: diarrhoea::connection::Builder,
        opts: &Opts,
    ) -> Result<Connection, BoxError> {
        let mut roots = RootCertStore::empty();
        roots.add(certificate(opts)?)?;
        let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(opts.socket.as_str()).await?;
        tcp.set_nodelay(true)?;
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(NAME)?, tcp)
            .await?;
        Ok(builder.serve_connection(Io(tls)))
    }
}

/// Prints `label N unit / second` once a second from a counter it resets, on stdout (relayed
/// by the parent) or stderr.
async fn meter(label: &'static str, unit: &'static str, counter: &'static AtomicU64, stderr: bool) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = Instant::now();
    loop {
        tick.tick().await;
        let count = counter.swap(0, Relaxed);
        let line = format!(
            "{label} {:.0} {unit} / second",
            count as f64 / last.elapsed().as_secs_f64()
        );
        if stderr {
            eprintln!("{line}");
        } else {
            say(line);
        }
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
    /// Round-trip times in nanoseconds. Uncontended: a client runs on one thread.
    latency: Mutex<Histogram<u64>>,
}

static CLIENT_METER: AtomicU64 = AtomicU64::new(0);

impl Stats {
    fn answered(&self, sent_at_ns: u64) {
        let rtt = now_ns().saturating_sub(sent_at_ns);
        self.latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .saturating_record(rtt);
        self.received.fetch_add(1, Relaxed);
        self.meter.fetch_add(1, Relaxed);
    }
}

/// Nanoseconds on this process's monotonic clock; pings carry it to time their pongs.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn client(opts: &Opts) -> Result<(), BoxError> {
    // The parent holds our stdin open while it waits for us: its end means the parent is gone,
    // and so should we be (a stdio server child then sees the end of its own stdin).
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        eprintln!("flood (client): the parent is gone, stopping");
        std::process::exit(1);
    });
    runtime(0)?.block_on(flood(opts))
}

/// A stdio server: this client's own child process, and the task relaying its stderr (meter
/// lines, and its `result` line at the end).
struct ServerChild {
    child: tokio::process::Child,
    relay: tokio::task::JoinHandle<Option<Value>>,
}

impl ServerChild {
    /// Starts the server as a child and connects to it over its stdin and stdout.
    fn spawn(
        opts: &Opts,
        builder: diarrhoea::connection::Builder,
    ) -> Result<(Connection, Self), BoxError> {
        let mut command = tokio::process::Command::new(std::env::current_exe()?);
        command
            .args(opts.child_args(Role::Server, "", opts.index))
            .stderr(Stdio::piped());
        // Killed when `child` drops (kill_on_drop); ends by itself at the end of its stdin.
        let (conn, mut child) = builder.spawn_child(&mut command)?;
        let stderr = child.stderr.take().ok_or("stderr is piped")?;
        let label = format!("server{}", opts.index);
        let relay = tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            let mut result = None;
            while let Ok(Some(line)) = lines.next_line().await {
                match line.strip_prefix("result ") {
                    Some(json) => result = serde_json::from_str(json).ok(),
                    None => eprintln!("{label:>8} | {line}"),
                }
            }
            result
        });
        Ok((conn, ServerChild { child, relay }))
    }

    /// After the connection has ended: waits for the server to exit (killing it if it does
    /// not), and returns its counts with the memory measured before the end.
    async fn finish(mut self, memory: procfs::Memory) -> Value {
        match tokio::time::timeout(DRAIN, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => eprintln!("flood (client): the server exited with {status}"),
            Ok(Err(e)) => eprintln!("flood (client): waiting for the server: {e}"),
            Err(_) => {
                eprintln!("flood (client): the server did not exit, killing it");
                let _ = self.child.kill().await;
            }
        }
        let mut result = tokio::time::timeout(DRAIN, self.relay)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .unwrap_or_else(|| json!({}));
        result["hwm_kb"] = json!(memory.hwm_kb);
        result["rss_kb"] = json!(memory.rss_kb);
        result
    }
}

async fn flood(opts: &Opts) -> Result<(), BoxError> {
    let stats = Arc::new(Stats {
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        meter: &CLIENT_METER,
        latency: Mutex::new(new_histogram()),
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
    let builder = Connection::builder()
        .protocol(opts.protocol.protocol())
        .service(router);
    let (conn, server) = match opts.transport {
        Transport::Unix => (builder.connect(&opts.socket).await?, None),
        Transport::Tcp => (builder.connect_tcp(opts.socket.as_str()).await?, None),
        Transport::Tls => (tls::connect(builder, opts).await?, None),
        Transport::Ws => (connect_ws(builder, &opts.socket).await?, None),
        Transport::Stdio => {
            let (conn, server) = ServerChild::spawn(opts, builder)?;
            (conn, Some(server))
        }
    };
    let payload: Arc<str> = "x".repeat(opts.payload).into();
    let flood_for = Duration::from_secs(opts.seconds);
    let meter = tokio::spawn(meter("round trips", "msg", &CLIENT_METER, false));

    let started = Instant::now();
    let (in_window, window_s) = match opts.mode {
        Mode::Call => flood_calls(&conn, &stats, &payload, inflight, flood_for).await,
        Mode::Notify => flood_notify(&conn, &stats, &payload, &window, flood_for).await?,
        Mode::Stream => flood_stream(&conn, &stats, inflight, flood_for).await?,
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
    // A stdio server's peak memory, while it is still there.
    let server_memory = server
        .as_ref()
        .and_then(|s| s.child.id())
        .map(procfs::memory)
        .unwrap_or_default();
    // Ending closes a stdio server's stdin, and it exits.
    conn.end();
    let _ = tokio::time::timeout(DRAIN, conn.closed()).await;
    conn.close();
    let server = match server {
        Some(server) => server.finish(server_memory).await,
        None => Value::Null,
    };

    let histogram = to_sparse(&stats.latency.lock().unwrap_or_else(|p| p.into_inner()));
    let result = json!({
        "sent": stats.sent.load(Relaxed),
        "received": stats.received.load(Relaxed),
        "rejected": stats.rejected.load(Relaxed),
        "in_window": in_window,
        "window_s": window_s,
        "elapsed_s": started.elapsed().as_secs_f64(),
        "histogram": histogram,
        "server": server,
    });
    say(format_args!("result {result}"));
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

/// Takes the items of one `count` stream until the time is up, then drops it; returns the
/// items taken while flooding and the flood's duration. `sent` is the last item + 1, so
/// items missing from the sequence count as lost.
async fn flood_stream(
    conn: &Connection,
    stats: &Stats,
    window: usize,
    flood_for: Duration,
) -> Result<(u64, f64), diarrhoea::Error> {
    use futures_util::StreamExt;

    let window = u32::try_from(window).unwrap_or(u32::MAX);
    let mut items = conn.call_stream::<u64>("count", (u64::MAX,)).window(window);
    let started = Instant::now();
    let mut taken = 0u64;
    while let Some(item) = items.next().await {
        let item = item?;
        if item < taken {
            eprintln!("stream item {item} out of order after {taken} items");
        }
        stats.sent.store(item + 1, Relaxed);
        stats.received.fetch_add(1, Relaxed);
        stats.meter.fetch_add(1, Relaxed);
        taken += 1;
        // Checking the clock every item costs more than the check is worth.
        if taken.is_multiple_of(1024) && started.elapsed() >= flood_for {
            break;
        }
    }
    // Dropping the stream cancels it; nothing is left to drain.
    drop(items);
    Ok((taken, started.elapsed().as_secs_f64()))
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
// Latency histograms: each client records into an `hdrhistogram` and sends it to the parent as
// `[[value, count], ...]`; the parent merges them.

/// Nanoseconds from 1 ns to an hour (longer ones count as an hour), to 3 significant
/// digits. Fixed bounds, so recording never allocates and histograms merge as they are.
fn new_histogram() -> Histogram<u64> {
    const HOUR_NS: u64 = 3_600 * 1_000_000_000;
    Histogram::new_with_bounds(1, HOUR_NS, 3).expect("valid bounds")
}

/// The recorded values and their counts, each value the highest of its bucket: recorded again
/// into a histogram of the same precision, it lands in the same bucket.
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
    use std::future::IntoFuture;

    use super::*;

    fn parse(line: &str) -> Result<Opts, clap::Error> {
        Opts::try_parse_from(std::iter::once("flood").chain(line.split_whitespace()))
    }

    #[test]
    fn options() {
        let o = parse("--mode call --clients 1 --inflight 1").unwrap();
        assert!(o.call_mode() && o.clients == 1 && o.inflight() == 1);
        let o = parse("").unwrap();
        assert_eq!(
            (o.inflight(), o.transport, o.role),
            (1024, Transport::Unix, Role::Parent)
        );
        assert!(parse("--bogus").is_err());
        assert!(parse("--clients").is_err());
        assert!(parse("--clients 0").is_err());
        assert!(parse("--seconds 0").is_err());
        assert!(parse("--concurrency 0").is_err());
        assert!(parse("--rate 0").is_err());
        assert!(parse("--transport pipe").is_err());
        let o = parse("--rate 1000 --load-shed --transport stdio --mode call").unwrap();
        assert_eq!(o.rate, Some(1000));
        let args = o.child_args(Role::Server, "s", 3);
        assert!(args.windows(2).any(|w| w == ["--rate", "1000"]));
        // What a child is given parses back to the same run.
        let child = Opts::try_parse_from(std::iter::once("flood".to_owned()).chain(args)).unwrap();
        assert_eq!(child.role, Role::Server);
        assert_eq!(
            (child.transport, child.mode),
            (Transport::Stdio, Mode::Call)
        );
        assert_eq!((child.socket.as_str(), child.index), ("s", 3));
        assert_eq!(
            (child.rate, child.load_shed, child.inflight()),
            (Some(1000), true, 256)
        );
    }

    #[test]
    fn the_key_goes_to_the_server_only() {
        let mut o = parse("--transport tls").unwrap();
        (o.tls_cert, o.tls_key) = (Some("c.der".into()), Some("k.der".into()));
        let child = |role| {
            let args = o.child_args(role, "127.0.0.1:1", 0);
            Opts::try_parse_from(std::iter::once("flood".to_owned()).chain(args)).unwrap()
        };
        let server = child(Role::Server);
        assert_eq!(server.transport, Transport::Tls);
        assert_eq!(
            (server.tls_cert.as_deref(), server.tls_key.as_deref()),
            (Some("c.der"), Some("k.der"))
        );
        let client = child(Role::Client);
        assert_eq!(
            (client.tls_cert.as_deref(), client.tls_key),
            (Some("c.der"), None)
        );
    }

    /// The server and client halves of `--transport tls`, in one process: a call over the
    /// run's certificate, and a client that trusts another certificate is refused.
    #[tokio::test]
    async fn calls_go_over_tls() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = tls::self_signed(dir.path()).unwrap();
        let mut o = parse("--transport tls --socket 127.0.0.1:0").unwrap();
        (o.tls_cert, o.tls_key) = (Some(cert), Some(key));
        let listener = tls::Listener::bind(&o).await.unwrap();
        o.socket = listener.local_addr().unwrap().to_string();
        let router = Router::new().route("echo", echo);
        let server = tokio::spawn(diarrhoea::serve(listener, router).into_future());

        let conn = tls::connect(Connection::builder(), &o).await.unwrap();
        let echoed: (String, u64) = conn.call("echo", ("over TLS", 7)).await.unwrap();
        assert_eq!(echoed, ("over TLS".to_owned(), 7));

        // Another certificate: the handshake fails, and the server goes on serving.
        let other = tempfile::tempdir().unwrap();
        o.tls_cert = Some(tls::self_signed(other.path()).unwrap().0);
        assert!(tls::connect(Connection::builder(), &o).await.is_err());
        let echoed: (String, u64) = conn.call("echo", ("still", 8)).await.unwrap();
        assert_eq!(echoed.1, 8);
        server.abort();
    }

    #[test]
    fn histograms_merge_through_json() {
        let (mut a, mut b, mut all) = (new_histogram(), new_histogram(), new_histogram());
        for v in (1..=100_000u64).map(|v| v * 1009) {
            all.record(v).unwrap();
            if v % 2 == 0 { a.record(v) } else { b.record(v) }.unwrap();
        }
        let mut merged = new_histogram();
        merge_sparse(&mut merged, &to_sparse(&a));
        let json = serde_json::to_string(&to_sparse(&b)).unwrap();
        merge_sparse(&mut merged, &serde_json::from_str(&json).unwrap());
        assert_eq!(merged.len(), all.len());
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(
                merged.value_at_quantile(q),
                all.value_at_quantile(q),
                "q {q}"
            );
        }
        // Within 0.1% of the true median (50,000 x 1009 ns).
        let p50 = merged.value_at_quantile(0.5) as f64;
        assert!((p50 / 50_450_000.0 - 1.0).abs() <= 1e-3, "{p50}");
    }
}
