//! Prefork HTTP, the way Node's `cluster` does it: the parent accepts TCP connections and
//! hands each one, as an open descriptor ([`diarrhoea::Fd`]), to one of N worker processes
//! through a pool of socket-pair workers (balanced by load: the connections each worker is
//! still serving). Each worker serves HTTP/1.1 (hyper) on the connections it receives and
//! answers `GET /` with `hello from worker <pid>`; the parent never reads a byte of them.
//!
//! ```text
//! cargo run --release --features axum --example prefork -- --listen 127.0.0.1:8080 --workers 2
//! curl http://127.0.0.1:8080/            # hello from worker 12345
//! curl 'http://127.0.0.1:8080/?work=20000' # the same after counting the primes below 20000
//! ```
//!
//! Once a second the parent prints (stderr) the connections handed out to each worker so
//! far. Kill a worker with `SIGKILL` mid-run: the pool restarts it; the connections handed
//! to it and not answered yet are lost (their clients see the connection close), and new
//! ones go to the live workers. `--kill-after N` does that itself after N connections.
//!
//! With `--requests N` the program also runs the load itself, in the parent process: N
//! `GET /?work=K` requests, each on a fresh connection, `--concurrency C` at a time, then
//! one JSON line on stdout:
//!
//! ```text
//! {"concurrency":8,"failed":0,"ok":1000,"parent_fds_after":..,"parent_fds_before":..,
//!  "per_worker":{"<pid>":..},"requests":1000,"requests_per_s":..,"seconds":..,"work":0,"workers":2}
//! ```
//!
//! `parent_fds_*` count this process's open descriptors (`/proc/self/fd`, Linux; `null`
//! elsewhere) before the load and after every connection was answered and closed: equal
//! when the parent keeps nothing of the connections it handed out.

mod report;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use diarrhoea::pool::Pool;
use diarrhoea::{BoxError, Fd, Request, Router, RpcError};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tower::{Service, ServiceExt};

#[derive(Parser, Debug)]
#[command(about = "Hands accepted TCP connections to HTTP worker processes, as descriptors")]
struct Opts {
    /// Where to listen (with `--requests`, a free port on loopback by default).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Run N requests against the server, then print one JSON line and exit.
    #[arg(long, value_name = "N")]
    requests: Option<usize>,
    /// Requests in flight at once (with `--requests`).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// The `?work=K` of each request (with `--requests`): primes below K counted per request.
    #[arg(long, default_value_t = 0)]
    work: u64,
    /// SIGKILL worker 0 after this many connections were handed out.
    #[arg(long, value_name = "N")]
    kill_after: Option<u64>,
    /// Internal: run as a worker over the socket that is its stdin.
    #[arg(long, hide = true)]
    worker: bool,
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
        let router = Router::new().route("serve", |stream: Fd| async move {
            serve_http(stream).await.map_err(RpcError::internal)
        });
        runtime.block_on(diarrhoea::serve_stdio(router));
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(parent(opts))
}

/// The worker's whole job for one connection: HTTP/1.1 until the client closes it. The
/// reply goes back to the parent then, so its balancer counts open connections as load.
async fn serve_http(stream: Fd) -> Result<(), BoxError> {
    let stream = std::net::TcpStream::from(stream);
    stream.set_nonblocking(true)?;
    let stream = tokio::net::TcpStream::from_std(stream)?;
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), hyper::service::service_fn(hello))
        .await?;
    Ok(())
}

async fn hello(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let work = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("work=")))
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or(0);
    let primes = count_primes(work);
    let body = format!("hello from worker {} ({primes})\n", std::process::id());
    Ok(hyper::Response::new(Full::new(Bytes::from(body))))
}

/// Primes below `k`, by trial division: work that only a CPU can do.
fn count_primes(k: u64) -> u64 {
    (2..k)
        .filter(|&n| (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
        .count() as u64
}

async fn parent(opts: Opts) -> Result<(), BoxError> {
    let pool = Pool::builder()
        .spawn_self_socket(opts.workers, ["--worker"])
        .build()?;
    tokio::time::timeout(Duration::from_secs(30), pool.until_live(opts.workers))
        .await
        .map_err(|_| "the workers did not start within 30 s")?;
    let default = if opts.requests.is_some() {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:8080"
    };
    let listen = opts
        .listen
        .unwrap_or_else(|| default.parse().expect("an address"));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    eprintln!(
        "prefork: {} workers, listening on http://{addr}/",
        opts.workers
    );

    let handed = Arc::new(AtomicU64::new(0));
    tokio::spawn(hand_out(listener, pool.clone(), handed.clone()));
    tokio::spawn(meter(pool.clone()));
    if let Some(after) = opts.kill_after {
        tokio::spawn(kill_worker_0(pool.clone(), handed.clone(), after));
    }
    match opts.requests {
        None => {
            diarrhoea::shutdown_signal().await;
            pool.shutdown(Duration::from_secs(5)).await;
            Ok(())
        }
        Some(n) => load(&opts, &pool, addr, n).await,
    }
}

/// The accept loop: each connection goes to the pool as a `serve(fd)` call, on one balancer.
/// The request holds a duplicate of the descriptor until it is written; this process's own
/// copy is closed at once.
async fn hand_out(listener: tokio::net::TcpListener, pool: Pool, handed: Arc<AtomicU64>) {
    let mut caller = pool.caller();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("prefork: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let request = match Fd::try_from(stream).map(|fd| Request::new("serve", (fd,))) {
            Ok(Ok(request)) => request,
            Ok(Err(e)) => return eprintln!("prefork: {e}"),
            Err(e) => {
                eprintln!("prefork: {e}");
                continue;
            }
        };
        let reply = match caller.ready().await {
            Ok(ready) => ready.call(request),
            // The pool is shutting down.
            Err(_) => return,
        };
        handed.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            if let Err(e) = reply.await {
                // Its worker died with the connection still open: the client sees it close.
                eprintln!("prefork: a connection was lost with its worker: {e}");
            }
        });
    }
}

/// Once a second: connections handed out to each worker so far (its calls, ended or not).
async fn meter(pool: Pool) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let per_worker: Vec<String> = (pool.metrics().workers.iter())
            .map(|w| {
                let pid = w.pid.map_or("-".to_string(), |pid| pid.to_string());
                format!("{pid}: {}", w.completed + w.failed + w.in_flight as u64)
            })
            .collect();
        eprintln!("prefork: handed out {}", per_worker.join(", "));
    }
}

/// `--kill-after N`: SIGKILL worker 0 once N connections were handed out.
async fn kill_worker_0(pool: Pool, handed: Arc<AtomicU64>, after: u64) {
    while handed.load(Relaxed) < after {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let pid = pool.metrics().workers[0].pid;
    if let Some(pid) = pid.and_then(|pid| rustix::process::Pid::from_raw(pid as i32)) {
        eprintln!("prefork: SIGKILL worker {}", pid.as_raw_nonzero());
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// This process's open descriptors, where `/proc` tells.
fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

/// `--requests N`: N requests on fresh connections, then the JSON line.
async fn load(opts: &Opts, pool: &Pool, addr: SocketAddr, n: usize) -> Result<(), BoxError> {
    let fds_before = open_fds();
    let next = Arc::new(AtomicUsize::new(0));
    let per_pid = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let path: Arc<str> = format!("/?work={}", opts.work).into();
    let started = Instant::now();
    let clients: Vec<_> = (0..opts.concurrency.max(1))
        .map(|_| {
            let (next, per_pid, failed, path) =
                (next.clone(), per_pid.clone(), failed.clone(), path.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Relaxed) < n {
                    match get(addr, &path).await {
                        Ok(body) => {
                            let pid = body.split_whitespace().nth(3).unwrap_or("?").to_string();
                            *per_pid.lock().unwrap().entry(pid).or_default() += 1;
                        }
                        Err(e) => {
                            eprintln!("prefork: request failed: {e}");
                            failed.fetch_add(1, Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    // Every worker has answered its `serve` call: each connection is closed on its side.
    let until = Instant::now() + Duration::from_secs(10);
    while pool.metrics().workers.iter().any(|w| w.in_flight > 0) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fds_after = open_fds();
    pool.shutdown(Duration::from_secs(5)).await;
    let per_worker = per_pid.lock().unwrap().clone();
    let ok: u64 = per_worker.values().sum();
    println!(
        "{}",
        json!({
            "workers": opts.workers,
            "requests": n,
            "concurrency": opts.concurrency,
            "work": opts.work,
            "ok": ok,
            "failed": failed.load(Relaxed),
            "per_worker": per_worker,
            "seconds": seconds,
            "requests_per_s": ok as f64 / seconds,
            "parent_fds_before": fds_before,
            "parent_fds_after": fds_after,
        })
    );
    Ok(())
}

/// One `GET` on a fresh connection; the body.
async fn get(addr: SocketAddr, path: &str) -> Result<String, BoxError> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(conn);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(http_body_util::Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let body = response.into_body().collect().await?.to_bytes();
        // Closes the connection: the worker's `serve` call ends.
        drop(sender);
        driver.await??;
        Ok::<_, BoxError>(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer within 10 s")?
}
