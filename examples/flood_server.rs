//! The Node `flood_server.js` example, ported: answer every `ping(x, time)` with
//! `pong(x, time)` and print how many messages arrive per second. Also answers `echo(...args)`
//! calls, for `flood_client --mode call`; `sleep(ms)`, which sleeps, then returns `ms`; and
//! `count(n)`, a stream of the items `0..n` with the trailer `n` (call it with
//! `Connection::call_stream`), each item counted as a message.
//!
//! ```text
//! cargo run --release --example flood_server [-- [PATH] [FLAGS]]   # then: cargo run --release --example flood_client
//! cargo run --release --example flood_server -- --tcp 7000          # then: ... flood_client -- --tcp 7000
//! ```
//!
//! It listens on a Unix socket at PATH (default `./test.sock`), or with `--tcp [HOST:]PORT` on
//! TCP (`HOST` defaults to 127.0.0.1; port 0 picks a free one, printed at startup). TCP has no
//! encryption and no authentication: keep it on loopback.
//!
//! Every connection speaks what its first bytes show: protocol v1, JSON-RPC 2.0 objects one
//! per line, or JSON-RPC 2.0 with `Content-Length` headers (`--protocol detect`, the default
//! here, not the crate's: see `Protocol`). `--protocol v1|jsonrpc|lsp` fixes one instead
//! (`v1` then runs on the stream as it is, with no detection). `examples/clients/` calls it
//! from Python and Node with ordinary JSON-RPC 2.0 clients.
//!
//! Flags put tower layers around the handlers, so the limits can be tried from the command
//! line (see `--help`, and the `layer` docs' "Order" section for why the stack is in this order):
//!
//! ```text
//! TraceLayer::incoming()                                   --trace
//! NameOverloadLayer + LoadShed                             --load-shed with --concurrency
//! ConcurrencyLimit (per connection)                        --concurrency N
//! NameOverloadLayer + LoadShed                             --load-shed with --rate, without --concurrency
//! Buffer + RateLimit (per connection)                      --rate N
//! NameOverloadLayer + LoadShed                             --load-shed with --global-concurrency
//! GlobalConcurrencyLimit (one for the whole server)        --global-concurrency N
//! Router: ping, echo, sleep, count
//! ```
//!
//! `--timeout-ms N` is not a layer: it is `Config::request_timeout`, which the connection
//! enforces from the moment a request's frame is read, waits for permits and rate included.
//! Nor is `--max-connections N`: it is the server's `max_connections` (default
//! `DEFAULT_MAX_CONNECTIONS`, 1024), raised for runs with many connections such as
//! `examples/idle_conns.rs`.

mod report;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use clap::{value_parser, Parser};
use diarrhoea::layer::{NameOverloadLayer, TraceLayer};
use diarrhoea::{
    Args, Config, Connection, Listener, MakeConnectionService, Protocol, Request, Router,
    StreamReply, UnixListener, DEFAULT_MAX_CONNECTIONS,
};
use futures_util::StreamExt;
use tower::buffer::BufferLayer;
use tower::limit::{ConcurrencyLimitLayer, GlobalConcurrencyLimitLayer, RateLimitLayer};
use tower::ServiceBuilder;

/// Messages received since the last meter line; a counter shared by all connections.
static RECEIVED: AtomicU64 = AtomicU64::new(0);

async fn ping(peer: Connection, x: String, time: u64) -> Result<(), diarrhoea::Error> {
    RECEIVED.fetch_add(1, Relaxed);
    peer.post_message("pong", (x, time)).await
}

/// Variadic, like `echo(...args)`: `Args` takes the arguments unparsed, and returning them
/// makes them the reply.
async fn echo(args: Args) -> Args {
    RECEIVED.fetch_add(1, Relaxed);
    args
}

/// Sleeps `ms` milliseconds, then returns `ms`: for trying timeouts and limits.
async fn sleep(ms: u64) -> u64 {
    RECEIVED.fetch_add(1, Relaxed);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

/// The items `0..n`, then the trailer `n`: a stream paced by the caller's credit.
async fn count(n: u64) -> StreamReply<u64> {
    let items = futures_util::stream::iter(0..n).inspect(|_| {
        RECEIVED.fetch_add(1, Relaxed);
    });
    StreamReply::new(items).trailer(n)
}

/// The command line; `None` for a limit means no layer for it. Limits are positive: a limit
/// of 0 would refuse everything, or hang.
#[derive(Debug, Parser)]
#[command(
    name = "flood_server",
    about = "Answers ping with pong, echo with its arguments, sleep(ms) after ms; \
             prints messages received per second"
)]
struct Opts {
    /// Unix socket path
    #[arg(default_value = "./test.sock", conflicts_with = "tcp")]
    path: String,
    /// Listen on TCP instead, at [HOST:]PORT (HOST defaults to 127.0.0.1; port 0 picks a free
    /// one). No encryption, no authentication: keep it on loopback
    #[arg(long, value_name = "[HOST:]PORT", value_parser = tcp_addr)]
    tcp: Option<String>,
    /// Deadline per request, counted from when its frame is read, so waiting for a permit or
    /// the rate counts; a peer's meta.timeout_ms can shorten it; expired requests are answered
    /// -32001
    #[arg(long, value_name = "N", value_parser = value_parser!(u64).range(1..))]
    timeout_ms: Option<u64>,
    /// At most N requests per connection run at once
    #[arg(long, value_name = "N", value_parser = positive)]
    concurrency: Option<usize>,
    /// At most N requests run at once across all connections
    #[arg(long, value_name = "N", value_parser = positive)]
    global_concurrency: Option<usize>,
    /// Over a limit, answer -32002 naming the limit instead of waiting
    #[arg(long)]
    load_shed: bool,
    /// At most N requests per second per connection; over it, requests wait (with
    /// --load-shed and no --concurrency: shed once N wait)
    #[arg(long, value_name = "N", value_parser = value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// At most N connections open at once; the next one is refused (-32002) and closed
    #[arg(
        long,
        value_name = "N",
        default_value_t = DEFAULT_MAX_CONNECTIONS,
        value_parser = positive
    )]
    max_connections: usize,
    /// Print a span per request (TraceLayer) to stderr
    #[arg(long)]
    trace: bool,
    /// What connections speak: detected from each one's first bytes, or one protocol
    #[arg(long, value_enum, default_value_t = WireProtocol::Detect)]
    protocol: WireProtocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum WireProtocol {
    Detect,
    V1,
    Jsonrpc,
    Lsp,
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}")),
    }
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

/// What a limit does to requests over it.
fn over(shed: bool) -> &'static str {
    if shed {
        "shed with -32002"
    } else {
        "wait"
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    report::exit(run().await)
}

async fn run() -> Result<(), diarrhoea::BoxError> {
    let opts = Opts::parse();
    if opts.trace {
        // The TraceLayer's spans are at DEBUG; printed to stderr, leaving stdout to the meter.
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_target(false)
            .with_writer(std::io::stderr)
            .init();
    }
    let router = Router::new()
        .route("ping", ping)
        .route("echo", echo)
        .route("sleep", sleep)
        .route("count", count);

    // What each limit's LoadShed names in its -32002 reply (`data.limit`).
    let conn_limit = opts
        .concurrency
        .map(|n| format!("per-connection concurrency limit ({n})"));
    let rate_limit = opts
        .rate
        .map(|n| format!("per-connection rate limit ({n} requests/s)"));
    let global_limit = opts
        .global_concurrency
        .map(|n| format!("server-wide concurrency limit ({n})"));
    // A LoadShed in front of the rate limit's Buffer sheds when the buffer is full. The buffer
    // has room for as many requests as the concurrency limit above it lets through, so with
    // `--concurrency` that LoadShed would never shed: the concurrency limit sheds instead, and
    // the layer is left out. Without it, the buffer has room for a second's worth (N): the
    // LoadShed sheds whatever arrives while it is full, so a burst is cut at about N.
    let rate_buffer = opts
        .concurrency
        .unwrap_or_else(|| opts.rate.unwrap_or(1) as usize);
    let rate_sheds = opts.load_shed && opts.concurrency.is_none();

    let shed = |limit: &Option<String>, on: bool| {
        let limit = limit.clone().filter(|_| on && opts.load_shed)?;
        Some(
            ServiceBuilder::new()
                .layer(NameOverloadLayer::new(limit))
                .load_shed(),
        )
    };
    let trace = opts.trace.then(TraceLayer::incoming);
    let shed_conn = shed(&conn_limit, true);
    let shed_rate = shed(&rate_limit, rate_sheds);
    let shed_global = shed(&global_limit, true);
    // Built once: every connection's stack shares its semaphore.
    let global = opts
        .global_concurrency
        .map(GlobalConcurrencyLimitLayer::new);
    let (concurrency, rate) = (opts.concurrency, opts.rate);

    // A fresh stack per connection, so the concurrency limit, the rate and the Buffer's worker
    // are per connection. Each flag's layer is an `option_layer`: absent flags cost a match.
    let stack = move |_conn: &Connection| {
        ServiceBuilder::new()
            // Outermost: sees every outcome, the limits' -32002 included.
            .option_layer(trace)
            // Each LoadShed right outside the limit it sheds for, named for the peer.
            .option_layer(shed_conn.clone())
            .option_layer(concurrency.map(ConcurrencyLimitLayer::new))
            // The per-connection limits come before the server-wide one, so a request waiting
            // for its connection's rate holds no server-wide permit. RateLimit is not Clone:
            // the Buffer makes the stack Clone, and its worker waits for the rate.
            .option_layer(shed_rate.clone())
            .option_layer(rate.map(|n| {
                ServiceBuilder::new()
                    .layer(BufferLayer::<Request>::new(rate_buffer))
                    .layer(RateLimitLayer::new(n, Duration::from_secs(1)))
            }))
            .option_layer(shed_global.clone())
            .option_layer(global.clone())
            .service(router.clone())
    };

    // The meter, like Node's `Meter`: one line a second, even when idle.
    tokio::spawn(async {
        let mut last = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            let count = RECEIVED.swap(0, Relaxed);
            println!(
                "receive {:.0} msg / second",
                count as f64 / last.elapsed().as_secs_f64()
            );
            last = Instant::now();
        }
    });

    // Not a tower Timeout, which would not count the wait for a permit (tower-rs/tower#648).
    let mut config = Config::new().protocol(match opts.protocol {
        WireProtocol::Detect => Protocol::Detect,
        WireProtocol::V1 => Protocol::V1,
        WireProtocol::Jsonrpc => Protocol::JsonRpc,
        WireProtocol::Lsp => Protocol::Lsp,
    });
    if let Some(ms) = opts.timeout_ms {
        config = config.request_timeout(Duration::from_millis(ms));
    }
    match &opts.tcp {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("listen on {addr}: {e}"))?;
            let addr = listener.local_addr()?;
            println!("listening on tcp {addr}");
            print_limits(&opts, rate_buffer, rate_sheds);
            Ok(serve_until_signal(listener, stack, config, opts.max_connections).await?)
        }
        None => {
            let listener = UnixListener::bind(&opts.path)?;
            println!("listening on {}", opts.path);
            print_limits(&opts, rate_buffer, rate_sheds);
            Ok(serve_until_signal(listener, stack, config, opts.max_connections).await?)
        }
    }
}

/// Serves until Ctrl-C or SIGTERM, then shuts down gracefully.
async fn serve_until_signal<L, M, Marker>(
    listener: L,
    stack: M,
    config: Config,
    max_connections: usize,
) -> Result<(), diarrhoea::Error>
where
    L: Listener,
    M: MakeConnectionService<Marker>,
    Marker: 'static,
{
    diarrhoea::serve(listener, stack)
        .config(config)
        .max_connections(max_connections)
        .with_graceful_shutdown(diarrhoea::shutdown_signal())
        .await
}

fn print_limits(opts: &Opts, rate_buffer: usize, shed_rate: bool) {
    let mut lines = Vec::new();
    if opts.trace {
        lines.push("trace: a span per request on stderr".to_owned());
    }
    if opts.max_connections != DEFAULT_MAX_CONNECTIONS {
        lines.push(format!(
            "max connections: {}; connections over it are refused (-32002)",
            opts.max_connections
        ));
    }
    if let Some(ms) = opts.timeout_ms {
        lines.push(format!(
            "request timeout: {ms} ms from frame arrival, waits included (-32001)"
        ));
    }
    if let Some(n) = opts.concurrency {
        let over = over(opts.load_shed);
        lines.push(format!(
            "per-connection concurrency limit: {n}; requests over it {over}"
        ));
    }
    if let Some(n) = opts.rate {
        let over = if shed_rate {
            format!(
                "queue up to {rate_buffer}, more are shed with -32002 (a burst fills the queue)"
            )
        } else if opts.concurrency.is_some() {
            "wait, holding their concurrency permit".to_owned()
        } else {
            format!("wait (up to {rate_buffer}, then reading stops)")
        };
        lines.push(format!(
            "per-connection rate limit: {n} requests/s; requests over it {over}"
        ));
    }
    if let Some(n) = opts.global_concurrency {
        let over = over(opts.load_shed);
        lines.push(format!(
            "server-wide concurrency limit: {n}; requests over it {over}"
        ));
    }
    let limits = [
        opts.concurrency,
        opts.global_concurrency,
        opts.rate.map(|n| n as usize),
    ];
    if opts.load_shed && limits.iter().all(Option::is_none) {
        lines.push("--load-shed: no limit to shed for".to_owned());
    }
    if lines.is_empty() {
        println!("no limits (see --help)");
    }
    for line in lines {
        println!("  {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let parse = |line: &str| {
            Opts::try_parse_from(std::iter::once("flood_server").chain(line.split_whitespace()))
        };
        let o = parse("").unwrap();
        assert_eq!(
            (o.path.as_str(), o.tcp, o.load_shed),
            ("./test.sock", None, false)
        );
        assert_eq!(
            parse("--tcp 0").unwrap().tcp.as_deref(),
            Some("127.0.0.1:0")
        );
        assert_eq!(
            parse("--tcp localhost:7000").unwrap().tcp.as_deref(),
            Some("localhost:7000")
        );
        assert!(parse("--tcp 70000").is_err());
        let o = parse("./x.sock --concurrency 4 --rate 100 --load-shed").unwrap();
        assert_eq!(
            (o.concurrency, o.rate, o.path.as_str()),
            (Some(4), Some(100), "./x.sock")
        );
        assert!(parse("--concurrency 0").is_err());
        assert!(parse("--global-concurrency 0").is_err());
        assert_eq!(o.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(
            parse("--max-connections 10016").unwrap().max_connections,
            10_016
        );
        assert!(parse("--max-connections 0").is_err());
        assert!(parse("--bogus").is_err());
    }
}
