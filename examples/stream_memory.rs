//! Server memory with streams: starts `flood_server` as a child process (its `count(n)` is a
//! stream of the items `0..n`) and reads its resident set (`VmRSS`) while:
//!
//! 1. **idle streams**: `--streams N` (default 1,000) streams are open, over connections of
//!    `--per-connection` streams each (default 250; the server's limit is 256 a connection),
//!    each asked with an initial credit of `--credit` items (default 16) that the client takes
//!    and then never grants more: every stream waits for credit, for ever;
//! 2. **a slow consumer**: one `count(--count)` stream (default 10,000,000) taken at
//!    `--slow-items-per-s` (default 20,000) with a window of 256, granting credit as it goes,
//!    for `--slow-seconds` (default 10), the server's memory sampled every 100 ms;
//! 3. **a slow socket**: the same stream granted all the credit there is
//!    (`{"stream":18446744073709551615}`) and read at `--slow-bytes-per-s` (default 1 MB/s):
//!    only the socket paces it, and the server's outgoing queue takes up the difference (its
//!    byte budget bounds it, 8 MiB by default, half of it for items).
//!
//! ```text
//! cargo build --release --example flood_server --example stream_memory
//! target/release/examples/stream_memory [--streams N] [--slow-seconds S] [--server PATH]
//! ```
//!
//! The last line on stdout is the result, memory in KiB:
//!
//! ```text
//! {"streams":1000,"rss_idle_kb":..,"rss_streams_kb":..,"per_stream_bytes":..,"rss_closed_kb":..,
//!  "slow":{"rss_before_kb":..,"rss_max_kb":..,"growth_kb":..,"items":..},
//!  "slow_socket":{"rss_before_kb":..,"rss_max_kb":..,"growth_kb":..,"bytes":..}}
//! ```
//!
//! Each part has a fresh server, so memory one part freed cannot hide another's growth. The
//! connections are plain blocking sockets (no client library in this process). The servers
//! end with this program (a guard kills each).

mod report;

// One copy, kept with the tests (which include nothing from `examples/`).
#[allow(dead_code, unreachable_pub)]
#[path = "../tests/common/procfs.rs"]
mod procfs;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::{value_parser, Parser};
use serde_json::{json, Value};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long any one read may take before the run fails.
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "stream_memory",
    about = "Resident memory of a flood_server with idle streams, a slow consumer and a slow socket; one JSON line",
    after_help = "Build both first: cargo build --release --example flood_server --example stream_memory"
)]
struct Opts {
    /// Streams to hold open without granting credit
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = value_parser!(u64).range(1..))]
    streams: u64,
    /// Streams per connection (the server allows 256)
    #[arg(long, value_name = "N", default_value_t = 250, value_parser = value_parser!(u64).range(1..=256))]
    per_connection: u64,
    /// Initial credit of each idle stream
    #[arg(long, value_name = "N", default_value_t = 16)]
    credit: u64,
    /// The slow stream's `count(n)`
    #[arg(long, value_name = "N", default_value_t = 10_000_000)]
    count: u64,
    /// The slow consumer's pace
    #[arg(long, value_name = "N", default_value_t = 20_000, value_parser = value_parser!(u64).range(1..))]
    slow_items_per_s: u64,
    /// The slow socket's pace
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = value_parser!(u64).range(1..))]
    slow_bytes_per_s: u64,
    /// How long each slow run lasts
    #[arg(long, value_name = "S", default_value_t = 10, value_parser = value_parser!(u64).range(1..))]
    slow_seconds: u64,
    /// Quiet time before each memory reading, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    settle_ms: u64,
    /// The flood_server program (default: the one beside this program)
    #[arg(long, value_name = "PATH")]
    server: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    report::exit(run(&Opts::parse()))
}

fn run(opts: &Opts) -> Result<(), BoxError> {
    let settle = Duration::from_millis(opts.settle_ms);
    let program = match &opts.server {
        Some(path) => path.clone(),
        None => {
            let path = std::env::current_exe()?.with_file_name("flood_server");
            if !path.is_file() {
                return Err(format!(
                    "{} not found: cargo build --release --example flood_server, or --server PATH",
                    path.display()
                )
                .into());
            }
            path
        }
    };
    let dir = tempfile::Builder::new().prefix("stream_memory").tempdir()?;
    // A fresh server for each part: memory one part freed would hide another's growth.
    let socket = dir.path().join("streams.sock");
    let server = Server::start(&program, &socket)?;

    // 1. Idle streams.
    let connections = opts.streams.div_ceil(opts.per_connection);
    let mut conns = Vec::new();
    for _ in 0..connections {
        conns.push(Conn::open(&socket)?);
    }
    std::thread::sleep(settle);
    let rss_idle = server.rss_kb()?;
    let mut left = opts.streams;
    for conn in &mut conns {
        let here = left.min(opts.per_connection);
        left -= here;
        for id in 1..=here {
            conn.send(&format!(
                "[\"count\",[18446744073709551615],{id},{{\"stream\":{}}}]\n",
                opts.credit
            ))?;
        }
        // Every stream sends its credit's worth, then waits.
        for _ in 0..here * opts.credit {
            let frame = conn.recv()?;
            if frame[0] != "$/item" {
                return Err(format!("expected an item, got {frame}").into());
            }
        }
    }
    std::thread::sleep(settle);
    let rss_streams = server.rss_kb()?;
    drop(conns);
    std::thread::sleep(settle);
    let rss_closed = server.rss_kb()?;
    let per_stream = (rss_streams as f64 - rss_idle as f64) * 1024.0 / opts.streams as f64;

    drop(server);

    // 2. A slow consumer, granting credit as it takes items.
    let socket = dir.path().join("slow.sock");
    let server = Server::start(&program, &socket)?;
    let slow = slow_consumer(opts, &server, &socket, settle)?;
    drop(server);
    // 3. A slow socket, all credit granted.
    let socket = dir.path().join("slow_socket.sock");
    let server = Server::start(&program, &socket)?;
    let slow_socket = slow_socket(opts, &server, &socket, settle)?;
    drop(server);

    let result = json!({
        "streams": opts.streams,
        "connections": connections,
        "credit": opts.credit,
        "settle_ms": opts.settle_ms,
        "rss_idle_kb": rss_idle,
        "rss_streams_kb": rss_streams,
        "per_stream_bytes": per_stream.round(),
        "rss_closed_kb": rss_closed,
        "slow": slow,
        "slow_socket": slow_socket,
    });
    println!("{result}");
    Ok(())
}

/// Takes one `count` stream at the slow pace for the slow seconds, granting credit as it goes;
/// the server's memory before and at its highest meanwhile.
fn slow_consumer(
    opts: &Opts,
    server: &Server,
    socket: &Path,
    settle: Duration,
) -> Result<Value, BoxError> {
    const WINDOW: u64 = 256;
    let mut conn = Conn::open(socket)?;
    std::thread::sleep(settle);
    let before = server.rss_kb()?;
    let mut max = before;
    conn.send(&format!(
        "[\"count\",[{}],1,{{\"stream\":{WINDOW}}}]\n",
        opts.count
    ))?;
    let started = Instant::now();
    let run_for = Duration::from_secs(opts.slow_seconds);
    let (mut items, mut taken_since_grant, mut sampled) = (0u64, 0u64, Instant::now());
    while started.elapsed() < run_for && items < opts.count {
        let frame = conn.recv()?;
        if frame[0] != "$/item" {
            return Err(format!("expected an item, got {frame}").into());
        }
        items += 1;
        taken_since_grant += 1;
        if taken_since_grant == WINDOW / 2 {
            conn.send(&format!("[\"$/credit\",[1,{taken_since_grant}]]\n"))?;
            taken_since_grant = 0;
        }
        // Hold the pace: no faster than the slow rate.
        let due = Duration::from_secs_f64(items as f64 / opts.slow_items_per_s as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        if sampled.elapsed() >= Duration::from_millis(100) {
            max = max.max(server.rss_kb()?);
            sampled = Instant::now();
        }
    }
    max = max.max(server.rss_kb()?);
    Ok(json!({
        "rss_before_kb": before,
        "rss_max_kb": max,
        "growth_kb": max.saturating_sub(before),
        "items": items,
        "items_per_s": opts.slow_items_per_s,
        "seconds": opts.slow_seconds,
    }))
}

/// The same stream with all credit granted, read at the slow byte rate: only the socket and
/// the server's outgoing queue hold the producer back.
fn slow_socket(
    opts: &Opts,
    server: &Server,
    socket: &Path,
    settle: Duration,
) -> Result<Value, BoxError> {
    let mut conn = Conn::open(socket)?;
    std::thread::sleep(settle);
    let before = server.rss_kb()?;
    let mut max = before;
    conn.send(&format!(
        "[\"count\",[{}],1,{{\"stream\":18446744073709551615}}]\n",
        opts.count
    ))?;
    let started = Instant::now();
    let run_for = Duration::from_secs(opts.slow_seconds);
    let mut buf = vec![0u8; 4096];
    let (mut bytes, mut sampled) = (0u64, Instant::now());
    while started.elapsed() < run_for {
        let n = conn.reader.get_mut().read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        let due = Duration::from_secs_f64(bytes as f64 / opts.slow_bytes_per_s as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        if sampled.elapsed() >= Duration::from_millis(100) {
            max = max.max(server.rss_kb()?);
            sampled = Instant::now();
        }
    }
    max = max.max(server.rss_kb()?);
    Ok(json!({
        "rss_before_kb": before,
        "rss_max_kb": max,
        "growth_kb": max.saturating_sub(before),
        "bytes": bytes,
        "bytes_per_s": opts.slow_bytes_per_s,
        "seconds": opts.slow_seconds,
    }))
}

/// A blocking connection that writes lines and reads frames as JSON values.
struct Conn {
    write: UnixStream,
    reader: BufReader<UnixStream>,
    line: String,
}

impl Conn {
    fn open(socket: &Path) -> Result<Conn, BoxError> {
        let write = UnixStream::connect(socket)?;
        let read = write.try_clone()?;
        read.set_read_timeout(Some(PATIENCE))?;
        Ok(Conn {
            write,
            reader: BufReader::new(read),
            line: String::new(),
        })
    }

    fn send(&mut self, line: &str) -> Result<(), BoxError> {
        Ok(self.write.write_all(line.as_bytes())?)
    }

    fn recv(&mut self) -> Result<Value, BoxError> {
        self.line.clear();
        if self.reader.read_line(&mut self.line)? == 0 {
            return Err("the server closed the connection".into());
        }
        Ok(serde_json::from_str(&self.line)?)
    }
}

/// The `flood_server` child; killed when dropped.
struct Server {
    child: Child,
}

impl Server {
    fn start(program: &Path, socket: &Path) -> Result<Server, BoxError> {
        let child = Command::new(program)
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", program.display()))?;
        let mut server = Server { child };
        let stdout = server.child.stdout.take().expect("piped");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("listening on ") {
                    let _ = ready_tx.send(());
                } else if !line.starts_with("receive ") {
                    eprintln!("server | {line}");
                }
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            return Err(format!("{} did not start listening", program.display()).into());
        }
        Ok(server)
    }

    fn rss_kb(&self) -> Result<u64, BoxError> {
        match procfs::memory(self.child.id()).rss_kb {
            0 => Err("the server has exited".into()),
            rss => Ok(rss),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
