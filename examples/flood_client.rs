//! The Node `flood_client.js` example, ported: every second, post a burst of 40000
//! `ping("flood" + i, now_ms)` notifications and print how many `pong`s came back per second.
//!
//! With `--mode call`, flood `echo` calls instead, keeping at most `--inflight K` (default 256)
//! waiting for their replies, and print completed calls per second.
//!
//! ```text
//! cargo run --release --example flood_client [-- [PATH] [--mode notify|call] [--inflight K] [--seconds S] [FLAGS]]
//! ```
//!
//! Runs until Ctrl-C, or for S seconds, then prints a summary.
//!
//! The limit flags are `flood_server`'s, with their calling-side meaning (see `--help`). In
//! call mode they wrap `conn.caller()` in the order the crate docs' "Order" section gives for
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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diarrhoea::layer::{NameOverloadLayer, TraceLayer};
use diarrhoea::{BoxError, Client, Connection, Request, Response, Router, RpcError};
use tower::limit::{ConcurrencyLimitLayer, RateLimitLayer};
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};

const USAGE: &str = "\
usage: flood_client [PATH] [--mode notify|call] [--inflight K] [--seconds S]
                    [--timeout-ms N] [--concurrency N] [--global-concurrency N]
                    [--load-shed] [--rate N] [--trace]

  PATH                    socket path (default ./test.sock)
  --mode notify|call      ping/pong notifications, 40000 a second (default), or echo calls
  --inflight K            call mode: workers, each with one call waiting (default 256)
  --seconds S             stop after S seconds (default: run until Ctrl-C)

The limit flags are flood_server's, applied to this client's outgoing calls (call mode):
  --timeout-ms N          deadline per call (tower Timeout, waits for the limits included);
                          the peer is told what is left of it as meta.timeout_ms; a call
                          past it counts as timed out (here, or -32001 from the peer)
  --concurrency N         at most N calls waiting for their replies at once (ConcurrencyLimit)
  --global-concurrency N  the same as --concurrency: for one client, all of its calls are
                          on one connection (if both are given, the smaller wins)
  --load-shed             over a limit, fail the call at once (counted as shed here)
                          instead of waiting for the limit
  --rate N                at most N calls per second (Buffer + RateLimit)
  --trace                 print a span per call (TraceLayer::outgoing) to stderr
In notify mode only --rate (at most N pings a second: RateLimit around the Notifier, bursts
of N) and --trace (a span per ping) apply; the others are refused.
  --help                  print this message";
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

/// The command line; `None` for a limit means no layer for it.
#[derive(Debug)]
struct Options {
    path: String,
    call_mode: bool,
    inflight: usize,
    seconds: Option<u64>,
    timeout_ms: Option<u64>,
    /// `--concurrency` and `--global-concurrency`, the smaller of the two.
    concurrency: Option<usize>,
    load_shed: bool,
    rate: Option<u64>,
    trace: bool,
}

/// `Ok(None)` for `--help`.
fn options(args: impl IntoIterator<Item = String>) -> Result<Option<Options>, String> {
    let mut opts = Options {
        path: "./test.sock".into(),
        call_mode: false,
        inflight: 256,
        seconds: None,
        timeout_ms: None,
        concurrency: None,
        load_shed: false,
        rate: None,
        trace: false,
    };
    // Call-mode-only flags given, to refuse them in notify mode.
    let mut call_only = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        // A positive number: a limit of 0 would refuse everything, or hang.
        let mut number = |name: &str| -> Result<u64, String> {
            let value = value(name)?;
            match value.parse() {
                Ok(0) => Err(format!("{name}: must be at least 1")),
                Ok(n) => Ok(n),
                Err(e) => Err(format!("{name} {value}: {e}")),
            }
        };
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
            "--timeout-ms" => {
                opts.timeout_ms = Some(number("--timeout-ms")?);
                call_only.push("--timeout-ms");
            }
            flag @ ("--concurrency" | "--global-concurrency") => {
                let n = number(flag)? as usize;
                opts.concurrency = Some(opts.concurrency.map_or(n, |m| m.min(n)));
                call_only.push(if flag == "--concurrency" {
                    "--concurrency"
                } else {
                    "--global-concurrency"
                });
            }
            "--load-shed" => {
                opts.load_shed = true;
                call_only.push("--load-shed");
            }
            "--rate" => opts.rate = Some(number("--rate")?),
            "--trace" => opts.trace = true,
            "--help" | "-h" => return Ok(None),
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            path => opts.path = path.into(),
        }
    }
    if !opts.call_mode && !call_only.is_empty() {
        return Err(format!(
            "{} only apply to calls (--mode call): notifications have no reply to wait for, \
             time out or shed; in notify mode use --rate to slow the pings",
            call_only.join(", ")
        ));
    }
    opts.inflight = opts.inflight.max(1);
    Ok(Some(opts))
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
/// of N through a `RateLimit` around the `Notifier`; with `--trace`, a span per ping.
async fn flood_notify(conn: &Connection, opts: &Options) {
    let burst = opts.rate.map_or(FLOODING, |n| n.min(FLOODING));
    let mut notifier = ServiceBuilder::new()
        .option_layer(
            opts.trace
                .then(|| TraceLayer::outgoing().connection_id(conn.id())),
        )
        .option_layer(
            opts.rate
                .map(|n| RateLimitLayer::new(n, Duration::from_secs(1))),
        )
        .service(conn.notifier());
    meter(conn, "receive", opts.seconds, async || {
        let now = now_ms();
        for i in 0..burst {
            let ping = Request::new("ping", (format!("flood{i}"), now))?;
            // Waits while the outgoing queue is full (and for the rate): a burst never
            // buffers without bound.
            notifier.ready().await?.call(ping).await?;
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
fn call_stack(conn: &Connection, opts: &Options) -> Calls {
    // Boxed errors throughout: the layers below (LoadShed, NameOverload) box theirs, and an
    // `option_layer`'s two branches must fail with the same type.
    let caller = ServiceBuilder::new()
        .map_err(BoxError::from)
        .map_request(tell_deadline)
        .service(conn.caller());
    let limited: Calls = if opts.concurrency.is_some() || opts.rate.is_some() {
        let shed = |limit: String| {
            opts.load_shed.then(|| {
                ServiceBuilder::new()
                    .layer(NameOverloadLayer::new(limit))
                    .load_shed()
            })
        };
        let limits = ServiceBuilder::new()
            .option_layer(
                opts.concurrency
                    .and_then(|n| shed(format!("client concurrency limit ({n})"))),
            )
            .option_layer(opts.concurrency.map(ConcurrencyLimitLayer::new))
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
async fn flood_calls(conn: &Connection, opts: &Options) {
    let calls = call_stack(conn, opts);
    let timeout = opts.timeout_ms.map(Duration::from_millis);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..opts.inflight {
        let (mut calls, stop) = (calls.clone(), stop.clone());
        workers.spawn(async move {
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
                let reply = match calls.ready().await {
                    Ok(calls) => calls.call(req).await,
                    Err(e) => Err(e),
                };
                match reply.map(|r| r.deserialize::<(usize, u64)>()) {
                    Ok(Ok(reply)) if reply == (worker, seq) => {
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
            Ok::<_, diarrhoea::Error>(())
        });
    }
    meter(conn, "calls", opts.seconds, async || Ok(())).await;
    stop.store(true, Relaxed);

    // A peer that cannot reply (a diarrhoea 1.1.0 Node server) would keep workers waiting.
    let drained = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(done) = workers.join_next().await {
            if let Ok(Err(e)) = done {
                eprintln!("worker failed: {e}");
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

fn print_limits(opts: &Options) {
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
    if let Some(n) = opts.concurrency {
        lines.push(format!(
            "concurrency limit: {n} calls waiting for replies; calls over it {over}"
        ));
    }
    if let Some(n) = opts.rate {
        let unit = if opts.call_mode { "calls" } else { "pings" };
        let over = if opts.call_mode { over } else { "wait" };
        lines.push(format!("rate limit: {n} {unit}/s; {unit} over it {over}"));
    }
    if opts.load_shed && opts.concurrency.is_none() && opts.rate.is_none() {
        lines.push("--load-shed: no limit to shed for".to_owned());
    }
    for line in lines {
        println!("  {line}");
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let opts = match options(std::env::args().skip(1)) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            println!("{USAGE}");
            return Ok(());
        }
        Err(e) => {
            eprintln!("flood_client: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    if opts.trace {
        // The TraceLayer's spans are at DEBUG; printed to stderr, leaving stdout to the meter.
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_target(false)
            .with_writer(std::io::stderr)
            .init();
    }
    let handlers = Router::new().route("pong", pong);
    let conn = Client::builder().bind(handlers).connect(&opts.path).await?;
    print_limits(&opts);

    let started = Instant::now();
    if opts.call_mode {
        flood_calls(&conn, &opts).await;
    } else {
        flood_notify(&conn, &opts).await;
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
    if opts.call_mode {
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
    Ok(())
}
