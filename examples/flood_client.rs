//! The Node `flood_client.js` example, ported: every second, post a burst of 40000
//! `ping("flood" + i, now_ms)` notifications and print how many `pong`s came back per second.
//!
//! With `--mode call`, flood `echo` calls instead, keeping at most `--inflight K` (default 256)
//! waiting for their replies, and print completed calls per second.
//!
//! ```text
//! cargo run --release --example flood_client [-- [PATH] [--mode notify|call] [--inflight K] [--seconds S] [FLAGS]]
//! cargo run --release --example flood_client -- --tcp 7000 [...]     # 127.0.0.1:7000
//! cargo run --release --features axum --example flood_client -- --ws ws://127.0.0.1:8080/ws
//! ```
//!
//! Connects to the Unix socket at PATH (default `./test.sock`), or with `--tcp [HOST:]PORT`
//! over TCP (`HOST` defaults to 127.0.0.1), or with `--ws URL` to a WebSocket endpoint (the
//! `gateway` example's `/ws`; feature `axum`). Runs until Ctrl-C, or for S seconds, then prints a
//! summary; in call mode with the calls' latency percentiles.
//!
//! The limit flags are `flood_server`'s, with their calling-side meaning (see `--help`). In
//! call mode they wrap `conn.caller()` in the order the `layer` docs' "Order" section gives for
//! the calling side (outermost first):
//!
//! ```text
//! TraceLayer::outgoing()                                   --trace
//! Timeout (counts the waits below: the Buffer moves them into `call`)   --timeout-ms N
//! Buffer (Clone, and moves waiting for the limits out of poll_ready)  with a limit
//! NameOverloadLayer + LoadShed                             --load-shed with --concurrency
//! ConcurrencyLimit                                         --concurrency N (or --global-concurrency N)
//! NameOverloadLayer + LoadShed                             --load-shed with --rate
//! RateLimit                                                --rate N
//! meta.timeout_ms = what is left of the deadline           --timeout-ms N (the peer is told)
//! conn.caller()
//! ```
//!
//! Calls shed here, shed by the server (-32002), timed out (here or by the server, -32001)
//! and failed otherwise are counted apart in the summary, as is anything unaccounted for.

mod report;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{value_parser, CommandFactory, Parser, ValueEnum};
use diarrhoea::layer::{NameOverloadLayer, TraceLayer};
use diarrhoea::{BoxError, Connection, Request, Response, Router, RpcError};
use hdrhistogram::Histogram;
use tower::limit::{ConcurrencyLimitLayer, RateLimitLayer};
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};

/// Pings per burst, as in `flood_client.js`.
const FLOODING: u64 = 40000;

/// Messages sent; replies (pongs or completed calls) since the last meter line, and in total.
static SENT: AtomicU64 = AtomicU64::new(0);
static RECEIVED: AtomicU64 = AtomicU64::new(0);
static TOTAL: AtomicU64 = AtomicU64::new(0);
/// Calls that did not complete, by why: shed by this client's `LoadShed`, refused by the
/// server (-32002), past their deadline (here, or -32001 from the server), anything else.
static SHED_HERE: AtomicU64 = AtomicU64::new(0);
static SHED_BY_PEER: AtomicU64 = AtomicU64::new(0);
static TIMED_OUT: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

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

/// The command line; `None` for a limit means no layer for it. Limits are positive: a limit
/// of 0 would refuse everything, or hang.
#[derive(Debug, Parser)]
#[command(
    name = "flood_client",
    about = "Floods a flood_server with ping notifications or echo calls; prints replies a second",
    after_help = "The limit flags are flood_server's, applied to this client's outgoing calls \
                  (call mode). In notify mode only --rate (at most N pings a second: RateLimit \
                  around the Poster, bursts of N) and --trace (a span per ping) apply; the \
                  others are refused."
)]
struct Opts {
    /// Unix socket path
    #[arg(default_value = "./test.sock", conflicts_with_all = ["tcp", "ws"])]
    path: String,
    /// Connect over TCP instead, to [HOST:]PORT (HOST defaults to 127.0.0.1)
    #[arg(long, value_name = "[HOST:]PORT", value_parser = tcp_addr, conflicts_with = "ws")]
    tcp: Option<String>,
    /// Connect to a WebSocket endpoint instead, e.g. ws://127.0.0.1:8080/ws (feature `axum`)
    #[arg(long, value_name = "URL")]
    ws: Option<String>,
    /// Ping/pong notifications, 40000 a second, or echo calls
    #[arg(long, value_enum, default_value_t = Mode::Notify)]
    mode: Mode,
    /// Call mode: workers, each with one call waiting
    #[arg(long, value_name = "K", default_value_t = 256)]
    inflight: usize,
    /// Stop after S seconds (default: run until Ctrl-C)
    #[arg(long, value_name = "S")]
    seconds: Option<u64>,
    /// Deadline per call (tower Timeout, waits for the limits included); the peer is told
    /// what is left of it as meta.timeout_ms; a call past it counts as timed out (here, or
    /// -32001 from the peer)
    #[arg(long, value_name = "N", value_parser = value_parser!(u64).range(1..))]
    timeout_ms: Option<u64>,
    /// At most N calls waiting for their replies at once (ConcurrencyLimit)
    #[arg(long, value_name = "N", value_parser = positive)]
    concurrency: Option<usize>,
    /// The same as --concurrency: for one client, all of its calls are on one connection (if
    /// both are given, the smaller wins)
    #[arg(long, value_name = "N", value_parser = positive)]
    global_concurrency: Option<usize>,
    /// Over a limit, fail the call at once (counted as shed here) instead of waiting for the
    /// limit
    #[arg(long)]
    load_shed: bool,
    /// At most N calls per second (Buffer + RateLimit)
    #[arg(long, value_name = "N", value_parser = value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// Print a span per call (TraceLayer::outgoing) to stderr
    #[arg(long)]
    trace: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Notify,
    Call,
}

impl Opts {
    /// Parses the command line, then refuses the call-only flags in notify mode.
    fn try_parse_checked<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut opts = Opts::try_parse_from(args)?;
        let call_only: Vec<&str> = [
            ("--timeout-ms", opts.timeout_ms.is_some()),
            ("--concurrency", opts.concurrency.is_some()),
            ("--global-concurrency", opts.global_concurrency.is_some()),
            ("--load-shed", opts.load_shed),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect();
        if opts.mode == Mode::Notify && !call_only.is_empty() {
            return Err(Opts::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "{} only apply to calls (--mode call): notifications have no reply to wait \
                     for, time out or shed; in notify mode use --rate to slow the pings",
                    call_only.join(", ")
                ),
            ));
        }
        opts.inflight = opts.inflight.max(1);
        Ok(opts)
    }

    fn call_mode(&self) -> bool {
        self.mode == Mode::Call
    }

    /// `--concurrency` and `--global-concurrency`, the smaller of the two.
    fn concurrency(&self) -> Option<usize> {
        match (self.concurrency, self.global_concurrency) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}")),
    }
}

#[cfg(feature = "axum")]
async fn connect_ws(
    builder: diarrhoea::connection::Builder,
    url: &str,
) -> Result<Connection, diarrhoea::Error> {
    builder.connect_ws(url).await
}

#[cfg(not(feature = "axum"))]
async fn connect_ws(
    _: diarrhoea::connection::Builder,
    _: &str,
) -> Result<Connection, diarrhoea::BoxError> {
    Err(
        "--ws needs the axum feature: cargo run --release --features axum --example flood_client"
            .into(),
    )
}

/// `[HOST:]PORT` as `HOST:PORT`, the host 127.0.0.1 unless given.
fn tcp_addr(s: &str) -> Result<String, String> {
    let port = s.rsplit_once(':').map_or(s, |(_, port)| port);
    port.parse::<u16>()
        .map_err(|e| format!("port {port:?}: {e}"))?;
    Ok(match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => format!("{host}:{port}"),
        _ => format!("127.0.0.1:{port}"),
    })
}

/// Runs `on_tick` once a second, and prints the replies counted since the last line, until
/// the deadline, Ctrl-C, or the peer closes the connection.
async fn meter(
    conn: &Connection,
    label: &str,
    seconds: Option<u64>,
    mut on_tick: impl AsyncFnMut() -> Result<(), BoxError>,
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

/// Notification mode: a burst a second, each ping answered by a pong. With `--rate N`, bursts
/// of N through a `RateLimit` around the `Poster`; with `--trace`, a span per ping.
async fn flood_notify(conn: &Connection, opts: &Opts) {
    let burst = opts.rate.map_or(FLOODING, |n| n.min(FLOODING));
    let mut poster = ServiceBuilder::new()
        .option_layer(
            opts.trace
                .then(|| TraceLayer::outgoing().connection_id(conn.id())),
        )
        .option_layer(
            opts.rate
                .map(|n| RateLimitLayer::new(n, Duration::from_secs(1))),
        )
        .service(conn.poster());
    meter(conn, "receive", opts.seconds, async || {
        let now = now_ms();
        for i in 0..burst {
            let ping = Request::new("ping", (format!("flood{i}"), now))?;
            // Waits while the outgoing queue is full (and for the rate): a burst never
            // buffers without bound.
            poster.ready().await?.call(ping).await?;
            SENT.fetch_add(1, Relaxed);
        }
        Ok(())
    })
    .await;
}

/// The deadline of a call, put in its extensions by the worker when `--timeout-ms` is set.
#[derive(Clone, Copy)]
struct CallDeadline(tokio::time::Instant);

/// Tells the peer what is left of the call's deadline, as `meta.timeout_ms` (at least 1 ms):
/// the innermost layer, so time spent waiting for the limits is taken off.
fn tell_deadline(mut req: Request) -> Request {
    if let Some(CallDeadline(deadline)) = req.extensions().get::<CallDeadline>().copied() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        req.meta_mut().timeout_ms = Some((left.as_millis() as u64).max(1));
    }
    req
}

type Calls = BoxCloneService<Request, Response, BoxError>;

/// `conn.caller()` in the layers the flags ask for (see the module docs for the order).
fn call_stack(conn: &Connection, opts: &Opts) -> Calls {
    // Boxed errors throughout: the layers below (LoadShed, NameOverload) box theirs, and an
    // `option_layer`'s two branches must fail with the same type.
    let caller = ServiceBuilder::new()
        .map_err(BoxError::from)
        .map_request(tell_deadline)
        .service(conn.caller());
    let limited: Calls = if opts.concurrency().is_some() || opts.rate.is_some() {
        let shed = |limit: String| {
            opts.load_shed.then(|| {
                ServiceBuilder::new()
                    .layer(NameOverloadLayer::new(limit))
                    .load_shed()
            })
        };
        let limits = ServiceBuilder::new()
            .option_layer(
                opts.concurrency()
                    .and_then(|n| shed(format!("client concurrency limit ({n})"))),
            )
            .option_layer(opts.concurrency().map(ConcurrencyLimitLayer::new))
            .option_layer(
                opts.rate
                    .and_then(|n| shed(format!("client rate limit ({n} calls/s)"))),
            )
            .option_layer(
                opts.rate
                    .map(|n| RateLimitLayer::new(n, Duration::from_secs(1))),
            )
            .service(caller);
        // Room for every worker's call: the Buffer itself never makes one wait, so a call
        // waits only for the limits (or, with --load-shed, is shed right outside them).
        BoxCloneService::new(ServiceBuilder::new().buffer(opts.inflight).service(limits))
    } else {
        BoxCloneService::new(caller)
    };
    let stack = ServiceBuilder::new()
        .option_layer(
            opts.trace
                .then(|| TraceLayer::outgoing().connection_id(conn.id())),
        )
        .option_layer(
            opts.timeout_ms
                .map(|ms| tower::timeout::TimeoutLayer::new(Duration::from_millis(ms))),
        )
        .service(limited);
    BoxCloneService::new(stack)
}

/// Counts a call that did not complete; `false` if the worker should stop (the connection is
/// gone or something unexpected happened).
fn count_failure(error: BoxError) -> bool {
    if error.is::<tower::timeout::error::Elapsed>() {
        TIMED_OUT.fetch_add(1, Relaxed);
        return true;
    }
    if error.is::<tower::load_shed::error::Overloaded>() {
        SHED_HERE.fetch_add(1, Relaxed);
        return true;
    }
    // A NameOverloadLayer names the limit that shed the call: it is ours.
    if let Some(rpc) = error.downcast_ref::<RpcError>() {
        if rpc.code == diarrhoea::code::OVERLOADED {
            SHED_HERE.fetch_add(1, Relaxed);
            return true;
        }
    }
    if let Some(e) = error.downcast_ref::<diarrhoea::Error>() {
        if e.is_timeout() || e.code() == Some(diarrhoea::code::TIMEOUT) {
            TIMED_OUT.fetch_add(1, Relaxed);
            return true;
        }
        if e.is_remote() && e.code() == Some(diarrhoea::code::OVERLOADED) {
            SHED_BY_PEER.fetch_add(1, Relaxed);
            return true;
        }
    }
    FAILED.fetch_add(1, Relaxed);
    eprintln!("call failed: {error}");
    false
}

/// Call mode: `inflight` workers, each with one `echo` call waiting for its reply at a time.
/// Returns the latency of the completed calls, in nanoseconds.
async fn flood_calls(conn: &Connection, opts: &Opts) -> Histogram<u64> {
    let calls = call_stack(conn, opts);
    let timeout = opts.timeout_ms.map(Duration::from_millis);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..opts.inflight {
        let (mut calls, stop) = (calls.clone(), stop.clone());
        workers.spawn(async move {
            // One per worker, merged at the end: nothing shared on the hot path.
            let mut latency = new_histogram();
            for seq in 0u64.. {
                if stop.load(Relaxed) {
                    break;
                }
                let mut req = Request::new("echo", (worker, seq))?;
                if let Some(timeout) = timeout {
                    let deadline = tokio::time::Instant::now() + timeout;
                    req.extensions_mut().insert(CallDeadline(deadline));
                }
                SENT.fetch_add(1, Relaxed);
                let sent_at = Instant::now();
                let reply = match calls.ready().await {
                    Ok(calls) => calls.call(req).await,
                    Err(e) => Err(e),
                };
                match reply.map(|r| r.deserialize::<(usize, u64)>()) {
                    Ok(Ok(reply)) if reply == (worker, seq) => {
                        latency.saturating_record(sent_at.elapsed().as_nanos() as u64);
                        count_reply();
                    }
                    Ok(reply) => {
                        FAILED.fetch_add(1, Relaxed);
                        eprintln!("echo mismatch: sent {:?}, got {reply:?}", (worker, seq));
                    }
                    Err(e) => {
                        if !count_failure(e) {
                            break;
                        }
                    }
                }
            }
            Ok::<_, diarrhoea::Error>(latency)
        });
    }
    meter(conn, "calls", opts.seconds, async || Ok(())).await;
    stop.store(true, Relaxed);

    // A peer that cannot reply (a diarrhoea 1.1.0 Node server) would keep workers waiting.
    let mut latency = new_histogram();
    let drained = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(done) = workers.join_next().await {
            match done {
                Ok(Ok(mine)) => latency.add(mine).expect("histograms of the same bounds"),
                Ok(Err(e)) => eprintln!("worker failed: {e}"),
                Err(_) => {}
            }
        }
    })
    .await;
    if drained.is_err() {
        let waiting = conn.pending_calls();
        eprintln!("{waiting} calls never answered: does the peer support calls?");
        conn.close();
    }
    latency
}

/// Latencies in nanoseconds from 1 ns to an hour (longer ones count as an hour), to 3 significant
/// digits. Fixed bounds, so recording never allocates and histograms merge as they are.
fn new_histogram() -> Histogram<u64> {
    const HOUR_NS: u64 = 3_600 * 1_000_000_000;
    Histogram::new_with_bounds(1, HOUR_NS, 3).expect("valid bounds")
}

fn print_limits(opts: &Opts) {
    let mut lines = Vec::new();
    if opts.trace {
        lines.push("trace: a span per outgoing message on stderr".to_owned());
    }
    if let Some(ms) = opts.timeout_ms {
        lines.push(format!(
            "call deadline: {ms} ms, waits for the limits included; the peer is told what is left"
        ));
    }
    let over = if opts.load_shed {
        "are shed here"
    } else {
        "wait"
    };
    if let Some(n) = opts.concurrency() {
        lines.push(format!(
            "concurrency limit: {n} calls waiting for replies; calls over it {over}"
        ));
    }
    if let Some(n) = opts.rate {
        let unit = if opts.call_mode() { "calls" } else { "pings" };
        let over = if opts.call_mode() { over } else { "wait" };
        lines.push(format!("rate limit: {n} {unit}/s; {unit} over it {over}"));
    }
    if opts.load_shed && opts.concurrency().is_none() && opts.rate.is_none() {
        lines.push("--load-shed: no limit to shed for".to_owned());
    }
    for line in lines {
        println!("  {line}");
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    report::exit(run().await)
}

async fn run() -> Result<(), diarrhoea::BoxError> {
    let opts = Opts::try_parse_checked(std::env::args_os()).unwrap_or_else(|e| e.exit());
    if opts.trace {
        // The TraceLayer's spans are at DEBUG; printed to stderr, leaving stdout to the meter.
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_target(false)
            .with_writer(std::io::stderr)
            .init();
    }
    let handlers = Router::new().route("pong", pong);
    let builder = Connection::builder().service(handlers);
    let conn = match (&opts.tcp, &opts.ws) {
        (Some(addr), _) => builder.connect_tcp(addr.as_str()).await?,
        (None, Some(url)) => connect_ws(builder, url).await?,
        (None, None) => builder.connect(&opts.path).await?,
    };
    print_limits(&opts);

    let started = Instant::now();
    let latency = if opts.call_mode() {
        Some(flood_calls(&conn, &opts).await)
    } else {
        flood_notify(&conn, &opts).await;
        None
    };

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
    if opts.call_mode() {
        let shed_here = SHED_HERE.load(Relaxed);
        let shed_by_peer = SHED_BY_PEER.load(Relaxed);
        let timed_out = TIMED_OUT.load(Relaxed);
        let failed = FAILED.load(Relaxed);
        let accounted = received + shed_here + shed_by_peer + timed_out + failed;
        println!(
            "calls: rejected {} (shed here {shed_here}, by the server {shed_by_peer}), \
             timed out {timed_out}, failed {failed}, unanswered {}",
            shed_here + shed_by_peer,
            sent.saturating_sub(accounted)
        );
    }
    if let Some(latency) = latency.filter(|h| !h.is_empty()) {
        let us = |q: f64| latency.value_at_quantile(q) as f64 / 1e3;
        println!(
            "latency of completed calls: p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us",
            us(0.5),
            us(0.99),
            us(0.999),
            latency.max() as f64 / 1e3
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Opts, clap::Error> {
        Opts::try_parse_checked(std::iter::once("flood_client").chain(line.split_whitespace()))
    }

    #[test]
    fn options() {
        let o = parse("").unwrap();
        assert_eq!((o.path.as_str(), o.tcp.as_deref()), ("./test.sock", None));
        assert_eq!((o.mode, o.inflight, o.seconds), (Mode::Notify, 256, None));
        let tcp = |line: &str| parse(line).unwrap().tcp;
        assert_eq!(tcp("--tcp 7000").as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(tcp("--tcp :7000").as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(tcp("--tcp [::1]:7000").as_deref(), Some("[::1]:7000"));
        assert!(parse("--tcp 127.0.0.1:x").is_err());
        assert!(parse("./a.sock --tcp 7000").is_err());
        let o = parse("--ws ws://127.0.0.1:8080/ws").unwrap();
        assert_eq!(o.ws.as_deref(), Some("ws://127.0.0.1:8080/ws"));
        assert!(parse("./a.sock --ws ws://h/ws").is_err());
        assert!(parse("--tcp 7000 --ws ws://h/ws").is_err());
        // Only --rate and --trace apply to notifications.
        assert!(parse("--concurrency 4").is_err());
        assert!(parse("--rate 10 --trace").is_ok());
        let o = parse("--mode call --concurrency 8 --global-concurrency 4 --inflight 0").unwrap();
        assert_eq!((o.concurrency(), o.inflight), (Some(4), 1));
        assert!(parse("--mode call --rate 0").is_err());
        assert!(parse("--mode call --timeout-ms 0").is_err());
        assert!(parse("--mode cal").is_err());
    }
}
