//! End-to-end round trips over a real socket pair, for this crate (`Builder::pair`) and for a
//! raw baseline measured in the same run (`UnixStream::pair()`): plain tokio + serde_json
//! echoing the same NDJSON lines, without this crate. The last lines printed are each figure
//! and its ratio to the baseline (baseline time / our time, so 0.45 means 45% of the
//! baseline's throughput).
//!
//! ```text
//! cargo bench --bench roundtrip
//! ```
//!
//! Both ends of each pair run on one current-thread tokio runtime, so a figure is the cost of
//! both sides of a round trip on one core.
//!
//! - `notify`: `["ping",[x,t]]` answered by `["pong",[x,t]]`, at most 1024 unanswered.
//! - `call_pipelined`: `["echo",[x,seq],id]` answered by `[id,[x,seq]]`, 256 in flight.
//! - `call_sequential`: the same, one call at a time (the round-trip latency).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use diarrhoea::{Args, Connection, Router};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::UnixStream;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

/// The string argument of every message, as long as Node's `"flood" + i`.
const PAYLOAD: &str = "flood12345";
/// Unanswered pings at most (notify).
const WINDOW: usize = 1024;
/// Calls waiting at once (call_pipelined).
const INFLIGHT: u64 = 256;

/// Nanoseconds per round trip of every sample, by benchmark name.
static SAMPLES: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

fn record(name: &str, iters: u64, elapsed: Duration) -> Duration {
    let per = elapsed.as_nanos() as f64 / iters.max(1) as f64;
    SAMPLES
        .lock()
        .unwrap()
        .entry(name.to_owned())
        .or_default()
        .push(per);
    elapsed
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

// ---------------------------------------------------------------------------------------------
// This crate.

/// Both ends of a pair: the "server" end answers pings and echoes, the "client" end counts
/// pongs.
struct Ours {
    client: Connection,
    _server: Connection,
    pongs: Arc<Semaphore>,
    window: Arc<Semaphore>,
}

impl Ours {
    fn start(rt: &Runtime) -> Self {
        rt.block_on(async {
            let server = Router::new()
                .route(
                    "ping",
                    |peer: Connection, x: String, time: u64| async move {
                        peer.post_message("pong", (x, time)).await
                    },
                )
                .route("echo", |args: Args| async move { args });
            let pongs = Arc::new(Semaphore::new(0));
            let window = Arc::new(Semaphore::new(WINDOW));
            let client = Router::new().route("pong", {
                let (pongs, window) = (pongs.clone(), window.clone());
                move |_x: IgnoredAny, _time: u64| {
                    pongs.add_permits(1);
                    window.add_permits(1);
                    std::future::ready(())
                }
            });
            // Over a socket pair, as the raw baseline below.
            let (client, server) = Connection::builder()
                .service(client)
                .pair(Connection::builder().service(server))
                .expect("socket pair");
            Ours {
                client,
                _server: server,
                pongs,
                window,
            }
        })
    }

    async fn notify(&self, iters: u64) {
        for i in 0..iters {
            self.window.acquire().await.expect("open").forget();
            self.client
                .post_message("ping", (PAYLOAD, i))
                .await
                .expect("posted");
        }
        wait_for(&self.pongs, iters).await;
    }

    async fn call_pipelined(&self, iters: u64) {
        let mut callers = tokio::task::JoinSet::new();
        for k in 0..INFLIGHT.min(iters) {
            let conn = self.client.clone();
            let calls = iters / INFLIGHT + u64::from(k < iters % INFLIGHT);
            callers.spawn(async move {
                for seq in 0..calls {
                    let (_, got): (IgnoredAny, u64) =
                        conn.call("echo", (PAYLOAD, seq)).await.expect("reply");
                    assert_eq!(got, seq);
                }
            });
        }
        while let Some(done) = callers.join_next().await {
            done.expect("caller");
        }
    }

    async fn call_sequential(&self, iters: u64) {
        for seq in 0..iters {
            let (_, got): (IgnoredAny, u64) = self
                .client
                .call("echo", (PAYLOAD, seq))
                .await
                .expect("reply");
            assert_eq!(got, seq);
        }
    }
}

async fn wait_for(counter: &Semaphore, mut n: u64) {
    while n > 0 {
        let chunk = n.min(u32::MAX as u64) as u32;
        counter.acquire_many(chunk).await.expect("open").forget();
        n -= chunk as u64;
    }
}

// ---------------------------------------------------------------------------------------------
// The raw baseline: tokio + serde_json, the same lines, no framework.

/// A line-echo server: reads lines, answers each with `answer`, flushes when no input is left.
async fn raw_server(stream: UnixStream, answer: fn(&[u8], &mut Vec<u8>)) {
    let (read, write) = stream.into_split();
    let mut read = BufReader::with_capacity(64 * 1024, read);
    let mut write = BufWriter::with_capacity(64 * 1024, write);
    let (mut line, mut out) = (Vec::with_capacity(256), Vec::with_capacity(256));
    loop {
        line.clear();
        match read.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        out.clear();
        answer(&line, &mut out);
        if write.write_all(&out).await.is_err() {
            return;
        }
        if read.buffer().is_empty() && write.flush().await.is_err() {
            return;
        }
    }
}

/// `["ping",[x,t]]` -> `["pong",[x,t]]`, through typed values as a handler would see them.
fn raw_pong(line: &[u8], out: &mut Vec<u8>) {
    let (_method, (x, t)): (&str, (String, u64)) = serde_json::from_slice(line).expect("ping");
    serde_json::to_writer(&mut *out, &("pong", (x, t))).expect("pong");
    out.push(b'\n');
}

/// `["echo",args,id]` -> `[id,args]`, the arguments passed through unparsed.
fn raw_echo(line: &[u8], out: &mut Vec<u8>) {
    let (_method, args, id): (&str, &RawValue, u64) = serde_json::from_slice(line).expect("echo");
    serde_json::to_writer(&mut *out, &(id, args)).expect("reply");
    out.push(b'\n');
}

/// The client end of a raw pair: a writer and a reader of lines.
struct Raw {
    write: tokio::sync::Mutex<BufWriter<tokio::net::unix::OwnedWriteHalf>>,
    read: tokio::sync::Mutex<BufReader<tokio::net::unix::OwnedReadHalf>>,
}

impl Raw {
    fn start(rt: &Runtime, answer: fn(&[u8], &mut Vec<u8>)) -> Self {
        rt.block_on(async {
            let (a, b) = UnixStream::pair().expect("socket pair");
            tokio::spawn(raw_server(b, answer));
            let (read, write) = a.into_split();
            Raw {
                write: tokio::sync::Mutex::new(BufWriter::with_capacity(64 * 1024, write)),
                read: tokio::sync::Mutex::new(BufReader::with_capacity(64 * 1024, read)),
            }
        })
    }

    /// Sends `iters` lines made by `line`, at most `window` unanswered, and reads as many
    /// answers, checking each with `check`.
    async fn pipelined(
        &self,
        iters: u64,
        window: usize,
        line: fn(u64, &mut Vec<u8>),
        check: fn(&[u8]),
    ) {
        let room = Semaphore::new(window);
        let writer = async {
            let mut write = self.write.lock().await;
            let mut buf = Vec::with_capacity(256);
            for i in 0..iters {
                // Flush before waiting for room, or the answers that make room never come.
                let permit = match room.try_acquire() {
                    Ok(permit) => permit,
                    Err(_) => {
                        write.flush().await.expect("flush");
                        room.acquire().await.expect("open")
                    }
                };
                permit.forget();
                buf.clear();
                line(i, &mut buf);
                write.write_all(&buf).await.expect("write");
            }
            write.flush().await.expect("flush");
        };
        let reader = async {
            let mut read = self.read.lock().await;
            let mut buf = Vec::with_capacity(256);
            for _ in 0..iters {
                buf.clear();
                read.read_until(b'\n', &mut buf).await.expect("read");
                check(&buf);
                room.add_permits(1);
            }
        };
        tokio::join!(writer, reader);
    }

    async fn sequential(&self, iters: u64) {
        let mut write = self.write.lock().await;
        let mut read = self.read.lock().await;
        let (mut out, mut buf) = (Vec::with_capacity(256), Vec::with_capacity(256));
        for seq in 0..iters {
            out.clear();
            echo_line(seq, &mut out);
            write.write_all(&out).await.expect("write");
            write.flush().await.expect("flush");
            buf.clear();
            read.read_until(b'\n', &mut buf).await.expect("read");
            check_reply(&buf);
        }
    }
}

fn ping_line(i: u64, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, &("ping", (PAYLOAD, i))).expect("ping");
    out.push(b'\n');
}

fn check_pong(line: &[u8]) {
    let (_method, (_x, _t)): (&str, (IgnoredAny, u64)) =
        serde_json::from_slice(line).expect("pong");
}

fn echo_line(seq: u64, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, &("echo", (PAYLOAD, seq), seq)).expect("echo");
    out.push(b'\n');
}

fn check_reply(line: &[u8]) {
    let (id, (_x, seq)): (u64, (IgnoredAny, u64)) = serde_json::from_slice(line).expect("reply");
    assert_eq!(id, seq);
}

// ---------------------------------------------------------------------------------------------

fn roundtrips(c: &mut Criterion) {
    let rt = runtime();
    let ours = Ours::start(&rt);
    let raw_ping = Raw::start(&rt, raw_pong);
    let raw_echo_pair = Raw::start(&rt, raw_echo);

    let mut group = c.benchmark_group("roundtrip");
    group.throughput(Throughput::Elements(1));
    group.bench_function("notify/diarrhoea", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            rt.block_on(ours.notify(iters));
            record("notify/diarrhoea", iters, start.elapsed())
        })
    });
    group.bench_function("notify/raw", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            rt.block_on(raw_ping.pipelined(iters, WINDOW, ping_line, check_pong));
            record("notify/raw", iters, start.elapsed())
        })
    });
    group.bench_function("call_pipelined/diarrhoea", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            rt.block_on(ours.call_pipelined(iters));
            record("call_pipelined/diarrhoea", iters, start.elapsed())
        })
    });
    group.bench_function("call_pipelined/raw", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            rt.block_on(raw_echo_pair.pipelined(iters, INFLIGHT as usize, echo_line, check_reply));
            record("call_pipelined/raw", iters, start.elapsed())
        })
    });
    group.bench_function("call_sequential/diarrhoea", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            rt.block_on(ours.call_sequential(iters));
            record("call_sequential/diarrhoea", iters, start.elapsed())
        })
    });
    group.bench_function("call_sequential/raw", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            rt.block_on(raw_echo_pair.sequential(iters));
            record("call_sequential/raw", iters, start.elapsed())
        })
    });
    group.finish();
    black_box(&ours);
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Each figure next to the baseline from this run.
fn report() {
    let mut samples = SAMPLES.lock().unwrap();
    let mut medians = BTreeMap::new();
    for (name, values) in samples.iter_mut() {
        if !values.is_empty() {
            medians.insert(name.clone(), median(values));
        }
    }
    if medians.is_empty() {
        return;
    }
    println!("\nround trips (median of the samples; ratio = baseline time / our time):");
    for bench in ["notify", "call_pipelined", "call_sequential"] {
        let ours = medians.get(&format!("{bench}/diarrhoea"));
        let raw = medians.get(&format!("{bench}/raw"));
        let line = |ns: f64| format!("{:>9.0}/s {:>8.2} us", 1e9 / ns, ns / 1e3);
        match (ours, raw) {
            (Some(&ours), Some(&raw)) => println!(
                "  {bench:<16} diarrhoea {}   raw {}   ratio {:.2}",
                line(ours),
                line(raw),
                raw / ours
            ),
            (Some(&ours), None) => println!("  {bench:<16} diarrhoea {}", line(ours)),
            (None, Some(&raw)) => println!("  {bench:<16} raw {}", line(raw)),
            (None, None) => {}
        }
    }
}

criterion_group!(benches, roundtrips);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report();
}
