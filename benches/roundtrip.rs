//! End-to-end round trips over a real socket pair, for this crate (`Builder::pair`) and for a
//! raw baseline measured in the same run (`UnixStream::pair()`): plain tokio + serde_json
//! exchanging the same NDJSON lines, without this crate. The last lines printed are each
//! figure and its ratio to the baseline (baseline time / our time, so 0.45 means 45% of the
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
//!
//! # Like with like
//!
//! The baseline is the least a hand-written peer needs to do the same job, built the way this
//! crate is built, so the ratio is the cost of what the crate adds (tower services, budgets,
//! deadlines, cancellation, events), not of a different workload:
//!
//! - **Tasks.** Each end of a pair, ours and raw, has a reader task and a writer task; the
//!   benchmark's own code (one loop, or the callers) runs beside them. The pipelined run
//!   spawns 256 caller tasks on both sides, each with one call in flight. That is the fairer
//!   of the two structures: it is how calls are made in practice (independent callers sharing
//!   a connection, each waiting for its own reply), the crate's `call` is built for it, and a
//!   single raw loop would match replies by their order and skip the routing of each reply to
//!   its caller (id table, wake-up) that the crate does for every call even from one loop.
//! - **Windows.** `notify` keeps at most 1024 pings unanswered on both sides, with the same
//!   semaphore given back by the pong handler; `call_pipelined` has 256 calls in flight.
//! - **Writes.** Every frame is encoded when it is produced and queued for the end's writer
//!   task (a bounded channel of 1024 frames, this crate's default `outgoing_queue`); the
//!   writer takes whatever is queued (up to 256 frames) and writes it in one write, as this
//!   crate's writer does. Nothing waits for a window to fill before it is written.
//! - **Reads.** A 16 KiB read buffer on both sides while the peer sends in bulk, split into
//!   lines as they are handled (the crate offers a read 512 bytes while its peer sends one
//!   small frame at a time; in these runs the peer floods).
//! - **JSON.** The same lines, byte for byte. Both parse the envelope first, leaving the
//!   arguments (or result) raw, then parse the arguments into the handler's types: the
//!   server's ping as `(String, u64)`, the client's pong as `(IgnoredAny, u64)`, a reply's
//!   result as `(IgnoredAny, u64)` by its caller; echo passes its arguments through unparsed
//!   on both sides. Replies go to their caller through an id table (a mutex around a
//!   `HashMap`) and a oneshot channel on both sides.
//!
//! # Samples
//!
//! Criterion calls `iter_custom` during its warm-up too (with 1, 2, 4, ... iterations), and
//! those calls are not part of its measurement. Every call is recorded with its iteration
//! count and time; the figures printed at the end come from the last [`SAMPLE_SIZE`] calls of
//! each benchmark only, which are exactly the measured samples: the warm-up calls all come
//! first, and the group sets the sample size itself, so `--sample-size` cannot change it.
//! (Criterion's `--quick` mode samples differently; its figures here are not comparable.) The
//! figure is the median over those samples of the time per round trip: the median of the
//! samples criterion saves in its `sample.json`. Criterion's own `time` line is a regression
//! slope over the same samples, which weighs the longest ones most; on a noisy machine the two
//! can differ, and the median is the less moved by a stretch that a neighbour slowed down.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use diarrhoea::{Args, Connection, Router};
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;

/// The string argument of every message, as long as Node's `"flood" + i`.
const PAYLOAD: &str = "flood12345";
/// Unanswered pings at most (notify).
const WINDOW: usize = 1024;
/// Calls waiting at once (call_pipelined), one per caller task.
const INFLIGHT: u64 = 256;
/// Measured samples per benchmark (criterion's default, set on the group).
const SAMPLE_SIZE: usize = 100;

/// The raw writer's queue in frames: this crate's default `outgoing_queue`.
const RAW_QUEUE: usize = 1024;
/// Frames the raw writer takes from its queue at once, as this crate's writer does.
const RAW_BATCH: usize = 256;
/// Bytes the raw writer gathers before a write, as this crate's writer does.
const RAW_WRITE_CHUNK: usize = 64 * 1024;
/// Bytes per read at most, as this crate's reader.
const RAW_READ_CHUNK: usize = 16 * 1024;

/// Every `iter_custom` call, warm-up included: (iterations, time), by benchmark name.
static CALLS: Mutex<BTreeMap<&'static str, Vec<(u64, Duration)>>> = Mutex::new(BTreeMap::new());

fn record(name: &'static str, iters: u64, elapsed: Duration) -> Duration {
    CALLS
        .lock()
        .unwrap()
        .entry(name)
        .or_default()
        .push((iters, elapsed));
    elapsed
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn wait_for(counter: &Semaphore, mut n: u64) {
    while n > 0 {
        let chunk = n.min(u32::MAX as u64) as u32;
        counter.acquire_many(chunk).await.expect("open").forget();
        n -= chunk as u64;
    }
}

/// Runs `calls(k)` round trips on each of `INFLIGHT` caller tasks, `iters` in all.
async fn callers<F, Fut>(iters: u64, caller: F)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    for k in 0..INFLIGHT.min(iters) {
        let calls = iters / INFLIGHT + u64::from(k < iters % INFLIGHT);
        tasks.spawn(caller(calls));
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("caller");
    }
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

    async fn call(conn: &Connection, seq: u64) {
        let (_, got): (IgnoredAny, u64) = conn.call("echo", (PAYLOAD, seq)).await.expect("reply");
        assert_eq!(got, seq);
    }

    async fn call_pipelined(&self, iters: u64) {
        callers(iters, |calls| {
            let conn = self.client.clone();
            async move {
                for seq in 0..calls {
                    Ours::call(&conn, seq).await;
                }
            }
        })
        .await
    }

    async fn call_sequential(&self, iters: u64) {
        for seq in 0..iters {
            Ours::call(&self.client, seq).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The raw baseline: tokio + serde_json, the same lines, no framework.

/// One end of a raw pair; both ends are the same code, as with this crate. The reader task
/// handles every line as it is read (answers a ping or an echo, counts a pong, hands a reply
/// to its caller); everything written goes through the writer task's queue.
struct Raw {
    out: mpsc::Sender<Vec<u8>>,
    /// Calls waiting for their replies, by id.
    waiting: Mutex<HashMap<u64, oneshot::Sender<Box<RawValue>>>>,
    next_id: AtomicU64,
    pongs: Semaphore,
    window: Semaphore,
}

impl Raw {
    /// The client end and the server end of a socket pair.
    fn pair(rt: &Runtime) -> (Arc<Raw>, Arc<Raw>) {
        rt.block_on(async {
            let (a, b) = UnixStream::pair().expect("socket pair");
            (Raw::launch(a), Raw::launch(b))
        })
    }

    fn launch(stream: UnixStream) -> Arc<Raw> {
        let (read, write) = stream.into_split();
        let (out, queue) = mpsc::channel(RAW_QUEUE);
        let raw = Arc::new(Raw {
            out,
            waiting: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            pongs: Semaphore::new(0),
            window: Semaphore::new(WINDOW),
        });
        tokio::spawn(raw_writer(write, queue));
        tokio::spawn(raw_reader(read, raw.clone()));
        raw
    }

    /// Encodes a frame and queues it for the writer.
    async fn send(&self, frame: &impl Serialize) {
        let mut line = Vec::with_capacity(64);
        serde_json::to_writer(&mut line, frame).expect("encode");
        line.push(b'\n');
        self.out.send(line).await.expect("writer");
    }

    /// What the reader does with one line.
    async fn handle(&self, line: &[u8]) {
        match serde_json::from_slice(line).expect("a frame") {
            Envelope::Call {
                method: "ping",
                args,
                id: None,
            } => {
                let (x, t): (String, u64) = serde_json::from_str(args.get()).expect("ping");
                self.send(&("pong", (x, t))).await;
            }
            Envelope::Call {
                method: "echo",
                args,
                id: Some(id),
            } => self.send(&(id, args)).await,
            Envelope::Call {
                method: "pong",
                args,
                id: None,
            } => {
                let (_x, _t): (IgnoredAny, u64) = serde_json::from_str(args.get()).expect("pong");
                self.pongs.add_permits(1);
                self.window.add_permits(1);
            }
            Envelope::Reply { id, result } => {
                let caller = self.waiting.lock().unwrap().remove(&id).expect("a call");
                let _ = caller.send(result.to_owned());
            }
            Envelope::Call { method, .. } => panic!("unexpected `{method}`"),
        }
    }

    async fn notify(&self, iters: u64) {
        for i in 0..iters {
            self.window.acquire().await.expect("open").forget();
            self.send(&("ping", (PAYLOAD, i))).await;
        }
        wait_for(&self.pongs, iters).await;
    }

    async fn call(&self, seq: u64) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(id, tx);
        self.send(&("echo", (PAYLOAD, seq), id)).await;
        let result = rx.await.expect("reply");
        let (_, got): (IgnoredAny, u64) = serde_json::from_str(result.get()).expect("result");
        assert_eq!(got, seq);
    }

    async fn call_pipelined(self: &Arc<Self>, iters: u64) {
        callers(iters, |calls| {
            let raw = self.clone();
            async move {
                for seq in 0..calls {
                    raw.call(seq).await;
                }
            }
        })
        .await
    }

    async fn call_sequential(&self, iters: u64) {
        for seq in 0..iters {
            self.call(seq).await;
        }
    }
}

/// Reads lines, up to 16 KiB per read, and handles each as it comes.
async fn raw_reader(read: OwnedReadHalf, raw: Arc<Raw>) {
    let mut read = BufReader::with_capacity(RAW_READ_CHUNK, read);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        match read.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => raw.handle(&line).await,
        }
    }
}

/// Takes whatever is queued and writes it in one write (64 KiB at most per write).
async fn raw_writer(mut write: OwnedWriteHalf, mut queue: mpsc::Receiver<Vec<u8>>) {
    let mut buf = Vec::with_capacity(RAW_WRITE_CHUNK);
    let mut batch = Vec::with_capacity(RAW_BATCH);
    while queue.recv_many(&mut batch, RAW_BATCH).await > 0 {
        for line in batch.drain(..) {
            buf.extend_from_slice(&line);
            if buf.len() >= RAW_WRITE_CHUNK {
                write.write_all(&buf).await.expect("write");
                buf.clear();
            }
        }
        if !buf.is_empty() {
            write.write_all(&buf).await.expect("write");
            buf.clear();
        }
    }
}

/// A line's envelope with the arguments (or the result) left raw: `["method",args]`,
/// `["method",args,id]` or `[id,result]`.
enum Envelope<'a> {
    Call {
        method: &'a str,
        args: &'a RawValue,
        id: Option<u64>,
    },
    Reply {
        id: u64,
        result: &'a RawValue,
    },
}

/// The first element of a frame: a method name, or the id of a reply.
enum Head<'a> {
    Method(&'a str),
    Id(u64),
}

impl<'de> Deserialize<'de> for Head<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeadVisitor;
        impl<'de> Visitor<'de> for HeadVisitor {
            type Value = Head<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a method name or an id")
            }
            fn visit_borrowed_str<E: de::Error>(self, method: &'de str) -> Result<Head<'de>, E> {
                Ok(Head::Method(method))
            }
            fn visit_u64<E: de::Error>(self, id: u64) -> Result<Head<'de>, E> {
                Ok(Head::Id(id))
            }
        }
        deserializer.deserialize_any(HeadVisitor)
    }
}

impl<'de> Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EnvelopeVisitor;
        impl<'de> Visitor<'de> for EnvelopeVisitor {
            type Value = Envelope<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a frame")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Envelope<'de>, A::Error> {
                let short = || de::Error::custom("frame too short");
                let head = seq.next_element::<Head<'de>>()?.ok_or_else(short)?;
                let body = seq.next_element::<&'de RawValue>()?.ok_or_else(short)?;
                let envelope = match head {
                    Head::Method(method) => Envelope::Call {
                        method,
                        args: body,
                        id: seq.next_element()?,
                    },
                    Head::Id(id) => Envelope::Reply { id, result: body },
                };
                match seq.next_element::<IgnoredAny>()? {
                    None => Ok(envelope),
                    Some(_) => Err(de::Error::custom("frame too long")),
                }
            }
        }
        deserializer.deserialize_seq(EnvelopeVisitor)
    }
}

// ---------------------------------------------------------------------------------------------

fn roundtrips(c: &mut Criterion) {
    let rt = runtime();
    let ours = Ours::start(&rt);
    let (raw, _raw_server) = Raw::pair(&rt);

    let mut group = c.benchmark_group("roundtrip");
    group.throughput(Throughput::Elements(1));
    group.sample_size(SAMPLE_SIZE);
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
            rt.block_on(raw.notify(iters));
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
            rt.block_on(raw.call_pipelined(iters));
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
            rt.block_on(raw.call_sequential(iters));
            record("call_sequential/raw", iters, start.elapsed())
        })
    });
    group.finish();
    black_box(&ours);
}

/// Nanoseconds per round trip: the median over the measured samples, the last
/// [`SAMPLE_SIZE`] calls (the warm-up's calls come before them).
fn figure(calls: &[(u64, Duration)]) -> Option<f64> {
    let measured = &calls[calls.len().saturating_sub(SAMPLE_SIZE)..];
    let mut per: Vec<f64> = measured
        .iter()
        .map(|&(iters, elapsed)| elapsed.as_nanos() as f64 / iters.max(1) as f64)
        .collect();
    per.sort_by(f64::total_cmp);
    per.get(per.len() / 2).copied()
}

/// Each figure next to the baseline from this run.
fn report() {
    let calls = CALLS.lock().unwrap();
    let figures: BTreeMap<&str, f64> = calls
        .iter()
        .filter_map(|(&name, calls)| Some((name, figure(calls)?)))
        .collect();
    if figures.is_empty() {
        return;
    }
    println!(
        "\nround trips (median of the measured samples, the last {SAMPLE_SIZE} calls; warm-up left \
         out; ratio = baseline time / our time):"
    );
    for bench in ["notify", "call_pipelined", "call_sequential"] {
        let ours = figures.get(format!("{bench}/diarrhoea").as_str());
        let raw = figures.get(format!("{bench}/raw").as_str());
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
