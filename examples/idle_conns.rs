//! Server memory per idle connection: starts `flood_server` as a child process, opens N
//! Unix-socket connections to it from this process, and reads the server's resident set
//! (`VmRSS` in `/proc/PID/status`) three times:
//!
//! 1. before: the server listens, with no connection;
//! 2. idle: all N connections accepted, nothing sent on any of them;
//! 3. after one call: one `echo` call sent on each connection and every reply read.
//!
//! ```text
//! cargo build --release --example flood_server --example idle_conns
//! target/release/examples/idle_conns [--connections N] [--settle-ms MS] [--server PATH]
//! ```
//!
//! The last line on stdout is the result, memory in KiB:
//!
//! ```text
//! {"connections":1000,"per_conn_after_call_kb":..,"per_idle_conn_kb":..,"rss_after_call_kb":..,
//!  "rss_before_kb":..,"rss_idle_kb":..,"server_fds_idle":..,"settle_ms":1000}
//! ```
//!
//! `per_idle_conn_kb` is `(rss_idle_kb - rss_before_kb) / N`, `per_conn_after_call_kb` the
//! same from `rss_after_call_kb`. Each reading is taken after `--settle-ms` (default 1000) of
//! quiet, and the idle one only once the server holds a descriptor for every connection.
//!
//! - The server is `flood_server` from the same build (`target/release/examples/`, beside this
//!   program; `--server PATH` for another), started as `flood_server SOCKET --max-connections
//!   N`, so the server's connection limit (default 1024) lets all N in. The socket is in a
//!   fresh temporary directory.
//! - The connections are plain blocking sockets, no client library, so this process adds
//!   nothing to what the server sees: each call is one `Frame::Request` line written whole,
//!   each reply one line parsed with `Frame::parse`.
//! - Each connection takes a descriptor here and one in the server. This program raises its
//!   soft `RLIMIT_NOFILE` to the hard limit when N needs it (the server inherits the raised
//!   limit), and stops with an error naming the limit when N connections cannot be opened.
//! - The server ends with this program: a guard kills it when the program returns or fails,
//!   and Ctrl-C reaches both (one process group). Only a `kill -9` of this program alone
//!   leaves it running.

mod report;

// One copy, kept with the tests (which include nothing from `examples/`).
#[allow(dead_code, unreachable_pub)]
#[path = "../tests/common/procfs.rs"]
mod procfs;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::{value_parser, Parser};
use diarrhoea::{Args, Frame, Meta};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use serde_json::json;

/// Descriptors this program needs besides its connections: stdio, the pipe from the server,
/// and some slack for the runtime and libraries.
const SPARE_FDS: u64 = 64;
/// How long the server has to start listening, and to accept every connection.
const STARTUP: Duration = Duration::from_secs(10);
const ACCEPT: Duration = Duration::from_secs(60);
/// How long a reply may take.
const REPLY: Duration = Duration::from_secs(30);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "idle_conns",
    about = "Resident memory of a flood_server before, with N idle connections, and after one \
             echo call on each; one JSON line",
    after_help = "Build both first: cargo build --release --example flood_server --example idle_conns"
)]
struct Opts {
    /// Connections to open
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1000,
        value_parser = value_parser!(u64).range(1..)
    )]
    connections: u64,
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
    let n = opts.connections;
    let settle = Duration::from_millis(opts.settle_ms);
    raise_nofile(n + SPARE_FDS)?;
    let program = match &opts.server {
        Some(path) => path.clone(),
        None => beside_this_program("flood_server")?,
    };
    let dir = tempfile::Builder::new().prefix("idle_conns").tempdir()?;
    let socket = dir.path().join("idle.sock");
    let server = Server::start(&program, &socket, n)?;

    std::thread::sleep(settle);
    let before = server.rss_kb()?;
    let fds_before = procfs::fd_count(server.pid());

    let mut conns = Vec::with_capacity(n as usize);
    for i in 0..n {
        let conn = UnixStream::connect(&socket).map_err(|e| {
            let hint = if e.raw_os_error() == Some(rustix::io::Errno::MFILE.raw_os_error()) {
                " (out of descriptors: see RLIMIT_NOFILE, ulimit -n)"
            } else {
                ""
            };
            format!("opened {i} of {n} connections: {e}{hint}")
        })?;
        conns.push(conn);
    }
    // Every connection accepted: the server holds a descriptor for each. While the count
    // stands still, look for connections the server refused (over its limit).
    let accepted_by = Instant::now() + ACCEPT;
    let wanted = fds_before + n as usize;
    let (mut held, mut moved) = (0, Instant::now());
    loop {
        let now = procfs::fd_count(server.pid());
        if now >= wanted {
            break;
        }
        if now != held {
            (held, moved) = (now, Instant::now());
        } else if moved.elapsed() >= Duration::from_secs(1) {
            if let Some(refused) = first_refused(&conns) {
                return Err(refused.into());
            }
            moved = Instant::now();
        }
        if Instant::now() >= accepted_by {
            let held = now.saturating_sub(fds_before);
            return Err(
                format!("the server holds {held} of {n} connections after {ACCEPT:?}").into(),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(settle);
    let idle = server.rss_kb()?;
    let fds_idle = procfs::fd_count(server.pid());

    call_each(&conns)?;
    std::thread::sleep(settle);
    let after = server.rss_kb()?;

    let per_conn = |rss: u64| round2((rss as f64 - before as f64) / n as f64);
    let result = json!({
        "connections": n,
        "settle_ms": opts.settle_ms,
        "rss_before_kb": before,
        "rss_idle_kb": idle,
        "rss_after_call_kb": after,
        "per_idle_conn_kb": per_conn(idle),
        "per_conn_after_call_kb": per_conn(after),
        "server_fds_idle": fds_idle,
    });
    drop(conns);
    drop(server);
    println!("{result}");
    Ok(())
}

/// Sends one `echo` call on every connection, then reads every reply.
fn call_each(conns: &[UnixStream]) -> Result<(), BoxError> {
    for (id, mut conn) in (0u64..).zip(conns) {
        let mut line = Vec::new();
        Frame::Request {
            method: "echo".into(),
            args: Args::new(&("idle", id))?,
            id,
            meta: Meta::default(),
        }
        .encode(&mut line);
        conn.write_all(&line)
            .map_err(|e| format!("connection {id}: sending the call: {e}"))?;
    }
    for (id, conn) in (0u64..).zip(conns) {
        match read_frame(conn).map_err(|e| format!("connection {id}: {e}"))? {
            Frame::Reply {
                id: got,
                result: Ok(_),
            } if got == id => {}
            frame => return Err(format!("connection {id}: {}", unexpected(&frame)).into()),
        }
    }
    Ok(())
}

/// The first connection the server has refused or closed, if any, and what it said.
fn first_refused(conns: &[UnixStream]) -> Option<String> {
    for (i, mut conn) in conns.iter().enumerate() {
        // A connection the server took in says nothing: reading it finds nothing to read.
        let mut buf = [0; 512];
        let read = conn
            .set_nonblocking(true)
            .and_then(|()| conn.read(&mut buf));
        let _ = conn.set_nonblocking(false);
        let said = match read {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => e.to_string(),
            Ok(0) => "closed by the server".to_owned(),
            Ok(len) => {
                let text = String::from_utf8_lossy(&buf[..len]);
                let line = text.lines().next().unwrap_or_default();
                match Frame::parse(line) {
                    Ok(frame) => unexpected(&frame),
                    Err(e) => format!("{e}: {line:?}"),
                }
            }
        };
        return Some(format!("connection {i}: {said}"));
    }
    None
}

/// Reads one frame, waiting for it at most [`REPLY`].
fn read_frame(conn: &UnixStream) -> Result<Frame, String> {
    conn.set_read_timeout(Some(REPLY))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(conn)
        .read_line(&mut line)
        .map_err(|e| format!("reading: {e}"))?;
    if line.is_empty() {
        return Err("closed by the server".into());
    }
    Frame::parse(line.trim_end()).map_err(|e| format!("{e}: {line:?}"))
}

/// What a frame that is not the expected reply means.
fn unexpected(frame: &Frame) -> String {
    match frame {
        Frame::ConnectionError(e) => format!("refused by the server: {e}"),
        Frame::Reply { result: Err(e), .. } => format!("error reply: {e}"),
        other => format!("unexpected frame {other:?}"),
    }
}

/// Raises the soft limit on open descriptors to the hard limit if it is under `needed`.
fn raise_nofile(needed: u64) -> Result<(), BoxError> {
    let limit = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    let (soft, hard) = (
        limit.current.unwrap_or(u64::MAX),
        limit.maximum.unwrap_or(u64::MAX),
    );
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        return Err(format!(
            "{needed} descriptors are needed here, and as many in the server, but RLIMIT_NOFILE's \
             hard limit is {hard}: raise it (ulimit -Hn, as root) or open fewer connections"
        )
        .into());
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    )
    .map_err(|e| format!("raising RLIMIT_NOFILE from {soft} to {hard}: {e}"))?;
    Ok(())
}

/// `name` in the directory of this program (`target/<profile>/examples/`).
fn beside_this_program(name: &str) -> Result<PathBuf, BoxError> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.is_file() {
        return Err(format!(
            "{} not found: build it first (cargo build --release --example {name}) or give \
             --server PATH",
            path.display()
        )
        .into());
    }
    Ok(path)
}

/// The `flood_server` child; killed when dropped.
struct Server {
    child: Child,
}

impl Server {
    /// Starts `program SOCKET --max-connections N` and waits until it listens. Its output is
    /// drained by a thread; lines other than its meter's go to stderr.
    fn start(program: &Path, socket: &Path, max_connections: u64) -> Result<Server, BoxError> {
        let child = Command::new(program)
            .arg(socket)
            .arg("--max-connections")
            .arg(max_connections.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", program.display()))?;
        // From here on, any early return kills the child.
        let mut server = Server { child };
        let stdout = server.child.stdout.take().expect("piped");
        let (ready_tx, ready_rx) = mpsc::channel();
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
        if ready_rx.recv_timeout(STARTUP).is_err() {
            let status = server.child.try_wait()?;
            return Err(match status {
                Some(status) => format!("{} exited with {status}", program.display()),
                None => format!("{} did not start listening", program.display()),
            }
            .into());
        }
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident set in KiB; an error if it has exited.
    fn rss_kb(&self) -> Result<u64, BoxError> {
        match procfs::memory(self.pid()).rss_kb {
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

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let parse = |line: &str| {
            Opts::try_parse_from(std::iter::once("idle_conns").chain(line.split_whitespace()))
        };
        let o = parse("").unwrap();
        assert_eq!((o.connections, o.settle_ms, o.server), (1000, 1000, None));
        let o = parse("--connections 10000 --settle-ms 200 --server /x/flood_server").unwrap();
        assert_eq!(
            (o.connections, o.settle_ms, o.server),
            (10_000, 200, Some(PathBuf::from("/x/flood_server")))
        );
        assert!(parse("--connections 0").is_err());
    }

    #[test]
    fn a_limit_already_high_enough_is_left_alone() {
        let limit = getrlimit(Resource::Nofile);
        raise_nofile(1).unwrap();
        assert_eq!(getrlimit(Resource::Nofile), limit);
    }
}
