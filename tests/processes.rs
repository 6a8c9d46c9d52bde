//! Real processes: a server killed with SIGKILL, 20 servers racing for one path, the socket's
//! mode under umask 000 and against another uid, and SIGPIPE at its default disposition.
//!
//! The child processes are this test binary run again: `child_main` (ignored, so a normal run
//! skips it) does what `DIARRHOEA_CHILD` says when that is set, and nothing otherwise. A child
//! talks to its parent in lines starting with `CHILD `, exits when its stdin closes, and is
//! killed when its handle drops, so no child outlives a failed test; the parent reads children
//! asynchronously, every wait bounded, and the one thread a test starts stops when the test
//! ends, whether it passed or not.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use diarrhoea::{serve, Connection, UnixListener};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const ROLE: &str = "DIARRHOEA_CHILD";
const PATH: &str = "DIARRHOEA_CHILD_PATH";
const COUNT: &str = "DIARRHOEA_CHILD_COUNT";

// ---------------------------------------------------------------------------------------------
// The child side.
// ---------------------------------------------------------------------------------------------

/// Not a test: the entry point of the child processes (see the module docs).
#[test]
#[ignore = "a child process of the other tests in this file; does nothing when run alone"]
fn child_main() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let path = PathBuf::from(std::env::var_os(PATH).expect("DIARRHOEA_CHILD_PATH"));
    if role.starts_with("sigpipe") {
        // Before any other thread exists.
        default_sigpipe();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match role.as_str() {
        "server" => runtime.block_on(serve_until_stdin_closes(&path)),
        "race" => runtime.block_on(race(&path)),
        "churn" => runtime.block_on(churn(&path)),
        "connect" => connect(&path),
        "sigpipe-client" => runtime.block_on(sigpipe_client(&path)),
        "sigpipe-server" => runtime.block_on(sigpipe_server(&path)),
        "sigpipe-control" => sigpipe_control(&path),
        other => panic!("unknown child role {other}"),
    }
}

fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "CHILD {line}").unwrap();
    out.flush().unwrap();
}

/// Completes when the parent closes our stdin (or dies).
async fn stdin_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).unwrap_or(0) > 0 {}
        let _ = tx.send(());
    });
    let _ = rx.await;
}

/// Serves the test router until stdin closes, then shuts down (removing the socket file).
/// Says `ready bind_us=N`: how long the bind took, stale socket replaced included.
async fn serve_until_stdin_closes(path: &Path) {
    let binding = Instant::now();
    let listener = UnixListener::bind(path).unwrap();
    say(format!("ready bind_us={}", binding.elapsed().as_micros()));
    serve(listener, test_router())
        .with_graceful_shutdown(stdin_closed())
        .await
        .unwrap();
    say("stopped");
}

/// The server of the SIGPIPE test: the test router, plus `closed()` (how many connections
/// have closed) and `epipes()` (how many writes failed with EPIPE so far, from the crate's
/// debug log: the control that shows the peers really made the server's writes fail).
async fn sigpipe_server(path: &Path) {
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || LogSink(sink.clone()))
        .init();
    let listener = UnixListener::bind(path).unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    let router = test_router()
        .route("closed", {
            let closed = closed.clone();
            move || {
                let closed = closed.load(Ordering::SeqCst);
                async move { closed }
            }
        })
        .route("epipes", move || {
            let epipe = format!("os error {}", libc::EPIPE);
            let log = log.lock().unwrap();
            let n = log
                .lines()
                .filter(|l| l.contains("peer went away") && l.contains(&epipe))
                .count();
            async move { n }
        });
    say("ready");
    serve(listener, move |conn: &Connection| {
        let (conn, closed) = (conn.clone(), closed.clone());
        tokio::spawn(async move {
            conn.closed().await;
            closed.fetch_add(1, Ordering::SeqCst);
        });
        router.clone()
    })
    .with_graceful_shutdown(stdin_closed())
    .await
    .unwrap();
    say("stopped");
}

/// Keeps the child's log lines in memory.
struct LogSink(Arc<Mutex<String>>);

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits for a go line, binds, reports, and serves if it won.
async fn race(path: &Path) {
    say("ready");
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    match UnixListener::bind(path) {
        Ok(listener) => {
            say("won");
            serve(listener, test_router())
                .with_graceful_shutdown(stdin_closed())
                .await
                .unwrap();
        }
        Err(e) => say(format!("refused is_bind={} {e}", e.is_bind())),
    }
}

/// Binds and drops `COUNT` times, as fast as it can.
async fn churn(path: &Path) {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let umask = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    say(umask.split_whitespace().collect::<Vec<_>>().join(" "));
    let n: usize = std::env::var(COUNT).unwrap().parse().unwrap();
    for _ in 0..n {
        drop(UnixListener::bind(path).unwrap());
    }
    say(format!("done {n}"));
}

/// A plain connect, reporting the OS error.
fn connect(path: &Path) {
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => say("connected"),
        Err(e) => say(format!("refused errno={}", e.raw_os_error().unwrap_or(0))),
    }
}

/// Puts SIGPIPE back to SIG_DFL, as in a process whose host (a C program, a runtime built with
/// `-Zon-broken-pipe=kill`) did not ignore it, and checks the kernel agrees.
#[allow(unsafe_code)]
fn default_sigpipe() {
    // SAFETY: SIG_DFL is a valid disposition for SIGPIPE, and this runs before the child
    // starts threads of its own that could race on it.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    assert_ne!(previous, libc::SIG_ERR);
    assert!(!sigpipe_ignored(), "SIGPIPE is still ignored");
}

/// Whether this process ignores SIGPIPE, from the kernel's `SigIgn` mask.
fn sigpipe_ignored() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .unwrap()
        .trim();
    let mask = u64::from_str_radix(mask, 16).unwrap();
    mask & (1 << (libc::SIGPIPE - 1)) != 0
}

/// With SIGPIPE at SIG_DFL, posts to a peer that closed until the crate reports the failure.
async fn sigpipe_client(path: &Path) {
    let conn = Connection::connect(path).await.unwrap();
    // The crate's handler is installed now; the disposition is no longer SIG_DFL.
    let big = "x".repeat(64 * 1024);
    for i in 0..10_000 {
        if let Err(e) = conn.post_message("ping", (&big, i)).await {
            say(format!("survived after {i} posts: {e}"));
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("posting to a closed peer kept succeeding");
}

/// The control: without the crate, plain `write(2)`s to the same peer kill the process with
/// SIGPIPE. (Not through std's `UnixStream::write`, which never raises it; the crate's writer
/// uses `writev`, which does.)
fn sigpipe_control(path: &Path) {
    let stream = std::os::unix::net::UnixStream::connect(path).unwrap();
    let mut file = fs::File::from(std::os::fd::OwnedFd::from(stream));
    let big = vec![b'x'; 64 * 1024];
    let mut errors = std::collections::BTreeSet::new();
    for _ in 0..1000 {
        if let Err(e) = file.write_all(&big) {
            errors.insert(e.to_string());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    say(format!("no signal; write errors: {errors:?}"));
}

// ---------------------------------------------------------------------------------------------
// The parent side.
// ---------------------------------------------------------------------------------------------

/// The tests of this file take turns: each starts processes (up to 20 at once) or spins a
/// core, and the one that bounds how fast calls fail must not share the machine with them.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A child process, killed when dropped (`kill_on_drop`) so that a failing test leaves none
/// behind. Its output is read asynchronously, each wait bounded: nothing blocks a thread.
struct ChildProcess {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl ChildProcess {
    fn spawn(role: &str, path: &Path, env: &[(&str, &str)]) -> Self {
        Self::spawn_with(
            Command::new(std::env::current_exe().unwrap()),
            role,
            path,
            env,
        )
    }

    /// `command` must run this test binary, possibly through a wrapper (`sh`, `setpriv`).
    fn spawn_with(mut command: Command, role: &str, path: &Path, env: &[(&str, &str)]) -> Self {
        command
            .args([
                "--exact",
                "child_main",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE, role)
            .env(PATH, path)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = tokio::process::Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the child");
        let stdin = child.stdin.take();
        let stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        ChildProcess {
            child,
            stdin,
            stdout,
        }
    }

    /// The child's next `CHILD ` line, without the prefix; `None` if it exited first.
    async fn line(&mut self) -> Option<String> {
        within("a line from a child process", async {
            // libtest may have written `test child_main ... ` on the same line first.
            while let Some(line) = self.stdout.next_line().await.unwrap() {
                if let Some(at) = line.find("CHILD ") {
                    return Some(line[at + "CHILD ".len()..].trim_end().to_owned());
                }
            }
            None
        })
        .await
    }

    async fn expect(&mut self, what: &str) -> String {
        let Some(line) = self.line().await else {
            let status = within("the child to exit", self.child.wait())
                .await
                .unwrap();
            panic!("child exited ({status}) before saying {what:?}")
        };
        assert!(line.starts_with(what), "expected {what:?}, got {line:?}");
        line
    }

    async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Closes stdin, which asks the child to finish, and waits for it.
    async fn finish(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        within("the child to exit", self.child.wait())
            .await
            .unwrap()
    }

    /// Asks a serving child to shut down gracefully, and waits for it.
    async fn stop(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        self.expect("stopped").await;
        within("the child to exit", self.child.wait())
            .await
            .unwrap()
    }

    /// SIGKILL, and waits for it.
    async fn kill(&mut self) {
        within("the child to die", self.child.kill()).await.unwrap();
    }
}

/// Waits on blocking work without stalling the runtime. The work must end by itself (bound
/// its waits): a blocking thread cannot be cancelled, and the runtime waits for it.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    within("blocking work", tokio::task::spawn_blocking(f))
        .await
        .unwrap()
}

fn is_socket(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

// --- (7) A server killed with SIGKILL -------------------------------------------------------

/// "At once" (the connection docs: a killed peer's callers fail at once), with a wide margin
/// for a loaded machine.
const AT_ONCE: Duration = Duration::from_millis(200);

#[tokio::test]
async fn a_server_killed_with_sigkill_fails_calls_at_once_and_restarts_on_the_same_path() {
    let _serial = SERIAL.lock().await;
    let (_dir, path) = socket_path();
    let mut server = ChildProcess::spawn("server", &path, &[]);
    server.expect("ready").await;

    let clients: Vec<diarrhoea::Connection> = {
        let mut v = Vec::new();
        for _ in 0..8 {
            v.push(Connection::connect(&path).await.unwrap());
        }
        v
    };
    // A partial frame in flight too, from a raw peer.
    let mut raw = RawPeer::connect(&path).await;
    raw.send("[\"add\",[1,").await;
    assert_eq!(clients[0].call::<i64>("add", (1, 2)).await.unwrap(), 3);
    // Calls that will not be answered before the kill.
    let calls: Vec<_> = clients
        .iter()
        .flat_map(|c| {
            (0..4).map(move |_| {
                let c = c.clone();
                tokio::spawn(async move { c.call::<u64>("sleep", (60_000,)).await })
            })
        })
        .collect();
    within("the calls to be made", async {
        while !clients.iter().all(|c| c.pending_calls() == 4) {
            tokio::task::yield_now().await;
        }
    })
    .await;

    let killed = Instant::now();
    server.kill().await;
    for call in calls {
        let err = within("an in-flight call", call)
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.is_closed(), "{err}");
    }
    let failed_after = killed.elapsed();
    assert!(
        failed_after < AT_ONCE,
        "calls failed {failed_after:?} after SIGKILL"
    );
    for client in &clients {
        within("the connection to close", client.closed()).await;
        assert!(client
            .call::<i64>("add", (1, 1))
            .await
            .unwrap_err()
            .is_closed());
    }
    // The raw peer's connection ends too: an end of stream, or a reset if the server died
    // before reading the half frame.
    match within("the raw peer's end", raw.lines.next_line()).await {
        Ok(None) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the raw peer got {other:?}"),
    }

    // The dead server's socket file is left behind; a new server replaces it at once.
    assert!(is_socket(&path), "a killed server leaves its socket file");
    let restarted = Instant::now();
    let mut again = ChildProcess::spawn("server", &path, &[]);
    let ready = again.expect("ready").await;
    let spawn_to_ready = restarted.elapsed();
    let bind_us: u64 = ready
        .strip_prefix("ready bind_us=")
        .and_then(|us| us.parse().ok())
        .unwrap_or_else(|| panic!("{ready:?}"));
    let bind = Duration::from_micros(bind_us);
    assert!(
        bind < AT_ONCE,
        "the bind over the stale socket took {bind:?}"
    );
    let client = Connection::connect(&path).await.unwrap();
    assert_eq!(client.call::<i64>("add", (2, 3)).await.unwrap(), 5);
    client.close();
    // A graceful stop removes the file.
    let status = again.stop().await;
    assert!(status.success(), "{status}");
    assert!(!path.exists());
    println!(
        "calls failed {failed_after:?} after SIGKILL; the restart bound in {bind:?} \
         ({spawn_to_ready:?} from spawn to listening)"
    );
}

// --- (8) 20 servers at once on one path ------------------------------------------------------

/// Starts `n` children that bind `path` at the same moment; returns their answers, the
/// children still running (the winner serves until its stdin closes).
async fn race_for(path: &Path, n: usize) -> Vec<(String, ChildProcess)> {
    let mut children: Vec<ChildProcess> = (0..n)
        .map(|_| ChildProcess::spawn("race", path, &[]))
        .collect();
    for child in &mut children {
        child.expect("ready").await;
    }
    // Every child waits on its stdin: release them together.
    for child in &mut children {
        child.send("go").await;
    }
    let mut answers = Vec::with_capacity(n);
    for mut child in children {
        answers.push((child.line().await.expect("an answer"), child));
    }
    answers
}

fn winners(answers: &[(String, ChildProcess)]) -> usize {
    answers.iter().filter(|(a, _)| a == "won").count()
}

fn assert_refused_cleanly(answers: &[(String, ChildProcess)]) {
    for (answer, _) in answers.iter().filter(|(a, _)| a != "won") {
        assert!(answer.starts_with("refused is_bind=true "), "{answer}");
    }
}

#[tokio::test]
async fn twenty_servers_at_once_one_serves_and_a_live_one_is_never_disturbed() {
    const N: usize = 20;
    let _serial = SERIAL.lock().await;
    let (dir, path) = socket_path();
    for stale in [false, true] {
        if stale {
            // A killed server's leftover: the racers must replace it, and only one may.
            drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        }
        let mut answers = race_for(&path, N).await;
        assert_eq!(
            winners(&answers),
            1,
            "stale={stale}: {:?}",
            answers.iter().map(|a| &a.0).collect::<Vec<_>>()
        );
        assert_refused_cleanly(&answers);
        let client = Connection::connect(&path).await.unwrap();
        assert_eq!(client.call::<i64>("add", (1, 2)).await.unwrap(), 3);

        // A latecomer is refused and the live server keeps answering, on old and new
        // connections.
        let late = race_for(&path, 1).await;
        assert!(late[0].0.contains("live server"), "{}", late[0].0);
        assert_refused_cleanly(&late);
        assert_eq!(client.call::<i64>("add", (2, 2)).await.unwrap(), 4);
        let other = Connection::connect(&path).await.unwrap();
        assert_eq!(other.call::<i64>("add", (3, 3)).await.unwrap(), 6);
        assert_eq!(entries(dir.path()), ["test.sock"], "no staging leftovers");

        client.close();
        other.close();
        let winner = answers.iter().position(|(a, _)| a == "won").unwrap();
        let (_, winner) = answers.swap_remove(winner);
        let status = winner.finish().await;
        assert!(status.success(), "{status}");
        assert!(!path.exists());
        drop(answers);
    }
}

/// Everything in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn twenty_servers_never_touch_a_file_directory_or_symlink_at_the_path() {
    const N: usize = 20;
    let _serial = SERIAL.lock().await;
    let (dir, path) = socket_path();
    let target = dir.path().join("target.sock");
    let live = std::os::unix::net::UnixListener::bind(&target).unwrap();
    type Setup = fn(&Path, &Path);
    let cases: [(&str, Setup); 4] = [
        ("regular file", |p, _| fs::write(p, "precious").unwrap()),
        ("directory", |p, _| {
            fs::create_dir(p).unwrap();
            fs::write(p.join("inner"), "precious").unwrap();
        }),
        ("symlink to a live socket", |p, t| {
            std::os::unix::fs::symlink(t, p).unwrap()
        }),
        ("dangling symlink", |p, _| {
            std::os::unix::fs::symlink("/nonexistent/x.sock", p).unwrap()
        }),
    ];
    for (what, setup) in cases {
        setup(&path, &target);
        let before = describe(&path);
        let answers = race_for(&path, N).await;
        assert_eq!(winners(&answers), 0, "{what}");
        assert_refused_cleanly(&answers);
        drop(answers);
        assert_eq!(describe(&path), before, "{what} changed");
        assert_eq!(entries(dir.path()), ["target.sock", "test.sock"], "{what}");
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            fs::remove_dir_all(&path).unwrap();
        } else {
            fs::remove_file(&path).unwrap();
        }
    }
    drop(live);
}

/// Type, inode, and content of whatever is at `path`, to show it was not touched.
fn describe(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(path).unwrap();
    let content = if meta.is_file() {
        fs::read_to_string(path).unwrap()
    } else if meta.is_dir() {
        fs::read_to_string(path.join("inner")).unwrap()
    } else {
        fs::read_link(path).unwrap().display().to_string()
    };
    format!("{:?} ino={} {content}", meta.file_type(), meta.ino())
}

// --- (9) Permissions ---------------------------------------------------------------------------

/// What the poller saw: sockets and staging directories judged, modes looser than allowed.
#[derive(Debug, Default)]
struct Seen {
    polls: usize,
    sockets: usize,
    dirs: usize,
    bad: Vec<String>,
}

/// Stops the poller thread when dropped, whether the test passes or fails.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// 1,000 binds under umask 000 while this process polls the path (and the staging directories
/// beside it) as fast as it can: no mode looser than 0600 (0700 for a directory) is ever seen.
/// The poller must have seen both (the socket over 50 times, a staging directory at least
/// once), or it proved nothing: on a loaded machine it may miss a run, so runs repeat (up to
/// 10) until it has seen both.
#[tokio::test]
async fn under_umask_000_the_socket_never_appears_with_looser_permissions() {
    const STARTS: &str = "1000";
    const RUNS: usize = 10;
    let _serial = SERIAL.lock().await;
    let (dir, path) = socket_path();
    let done = Arc::new(AtomicBool::new(false));
    let _stop = StopOnDrop(done.clone());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let poller = std::thread::spawn({
        let (done, seen, dir, path) = (
            done.clone(),
            seen.clone(),
            dir.path().to_owned(),
            path.clone(),
        );
        move || {
            while !done.load(Ordering::Relaxed) {
                let seen = &mut *seen.lock().unwrap();
                seen.polls += 1;
                if let Ok(meta) = fs::symlink_metadata(&path) {
                    let mode = meta.permissions().mode() & 0o777;
                    seen.sockets += 1;
                    if mode & !0o600 != 0 {
                        seen.bad.push(format!("socket {mode:o}"));
                    }
                }
                for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let Ok(meta) = fs::symlink_metadata(entry.path()) else {
                        continue;
                    };
                    if meta.is_dir() {
                        seen.dirs += 1;
                        let mode = meta.permissions().mode() & 0o777;
                        if mode & !0o700 != 0 {
                            seen.bad.push(format!("staging directory {mode:o}"));
                        }
                    }
                }
            }
        }
    });
    within("the poller to start", async {
        while seen.lock().unwrap().polls == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let started = Instant::now();
    let mut runs = 0;
    while runs < RUNS {
        runs += 1;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg("umask 000 && exec \"$0\" \"$@\"")
            .arg(std::env::current_exe().unwrap());
        let mut child = ChildProcess::spawn_with(command, "churn", &path, &[(COUNT, STARTS)]);
        assert_eq!(child.expect("Umask:").await, "Umask: 0000");
        assert_eq!(child.expect("done").await, format!("done {STARTS}"));
        let status = child.finish().await;
        assert!(status.success(), "{status}");
        let seen = seen.lock().unwrap();
        if seen.sockets > 50 && seen.dirs > 0 {
            break;
        }
    }
    done.store(true, Ordering::Relaxed);
    within("the poller to stop", async {
        while !poller.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    poller.join().unwrap();
    let took = started.elapsed();
    let seen = seen.lock().unwrap();
    assert!(
        seen.bad.is_empty(),
        "looser than configured: {:?}",
        seen.bad
    );
    // The poller must have seen the files it judged, or it proved nothing.
    assert!(
        seen.sockets > 50,
        "the poller saw the socket only {} times in {runs} runs",
        seen.sockets
    );
    assert!(
        seen.dirs > 0,
        "the poller never saw a staging directory in {runs} runs"
    );
    println!(
        "{runs} x {STARTS} starts in {took:?}; socket seen {} times, staging dirs {} times",
        seen.sockets, seen.dirs
    );
}

/// Says that the test cannot run here, and why: a line on the terminal (not captured by the
/// harness) when skipped, a failure when `CI=true`, where it must run.
fn cannot_run(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{test} must run when CI=true, but cannot: {why}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// As root, a child running as `nobody` cannot connect to a socket of the default mode 0600,
/// and can to one of mode 0666 (so the refusal is the mode's doing).
#[tokio::test]
async fn another_uid_cannot_connect_with_the_default_mode() {
    const TEST: &str = "another_uid_cannot_connect_with_the_default_mode";
    if !running_as_root() {
        return cannot_run(TEST, "needs root to run a child as another uid (nobody)");
    }
    let Some(setpriv) = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        return cannot_run(TEST, "setpriv not found (util-linux)");
    };
    let exe = std::env::current_exe().unwrap();
    if !world_executable(&exe) {
        return cannot_run(
            TEST,
            &format!("{} is not reachable by nobody", exe.display()),
        );
    }
    let _serial = SERIAL.lock().await;
    let (dir, path) = socket_path();
    // The directory is open to all: only the socket's own mode can refuse.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    for (mode, expected) in [(None, "refused errno=13"), (Some(0o666), "connected")] {
        let server = match mode {
            None => UnixListener::bind(&path),
            Some(mode) => UnixListener::bind_with_mode(&path, mode),
        }
        .unwrap();
        let mut command = Command::new(setpriv);
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&exe);
        let mut child = ChildProcess::spawn_with(command, "connect", &path, &[]);
        let answer = child.line().await.expect("the child's answer");
        let status = child.finish().await;
        assert_eq!(answer, expected, "mode {mode:?} (None: the default, 0600)");
        assert!(status.success(), "{status}");
        drop(server);
    }
}

fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

/// Whether every directory above `exe` is searchable, and `exe` executable, by others.
fn world_executable(exe: &Path) -> bool {
    exe.ancestors()
        .all(|p| fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

// --- (10) SIGPIPE at its default disposition ---------------------------------------------------

/// The control first: a child with SIGPIPE at SIG_DFL that writes to a closed peer without the
/// crate dies of SIGPIPE. So the same child using the crate, surviving, proves something.
#[tokio::test]
async fn with_sigpipe_at_default_a_process_survives_writing_to_a_closed_peer() {
    let _serial = SERIAL.lock().await;
    let (_dir, path) = socket_path();
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::UnixListener::from_std(listener).unwrap();
    // Closes the reading side of every connection at once: from then on, every write to it is
    // EPIPE (a peer that closes with unread data would give ECONNRESET first, with no signal).
    // A task of this test: it ends with the test.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            let stream = stream.into_std().unwrap();
            stream.shutdown(std::net::Shutdown::Read).unwrap();
            held.push(stream);
        }
    });

    let control = ChildProcess::spawn("sigpipe-control", &path, &[])
        .finish()
        .await;
    assert_eq!(control.signal(), Some(libc::SIGPIPE), "control: {control}");

    let mut child = ChildProcess::spawn("sigpipe-client", &path, &[]);
    let said = child.line().await;
    let status = child.finish().await;
    assert_eq!(status.signal(), None, "killed by a signal: {status}");
    assert!(status.success(), "{status}");
    let said = said.expect("the child's report");
    assert!(said.starts_with("survived"), "{said}");
}

/// The same for a server: peers that send requests and close without reading the replies.
/// The control: the server's own log shows that its writes failed with EPIPE, the error that
/// comes with SIGPIPE, so surviving proves something.
#[tokio::test]
async fn with_sigpipe_at_default_a_server_survives_peers_that_close_before_the_reply() {
    const PEERS: usize = 20;
    let _serial = SERIAL.lock().await;
    let (_dir, path) = socket_path();
    let mut server = ChildProcess::spawn("sigpipe-server", &path, &[]);
    server.expect("ready").await;
    let p = path.clone();
    let served = blocking(move || {
        let big = "y".repeat(64 * 1024);
        for round in 0..PEERS {
            let Ok(mut peer) = std::os::unix::net::UnixStream::connect(&p) else {
                return round;
            };
            // Bounded, so that this thread ends by itself whatever the server does.
            peer.set_write_timeout(Some(PATIENCE)).unwrap();
            // Half the peers stop reading first (the server's writes get EPIPE), half just
            // close with replies unread (ECONNRESET).
            if round % 2 == 0 {
                peer.shutdown(std::net::Shutdown::Read).unwrap();
            }
            for id in 0..16 {
                let line = format!("[\"echo\",[\"{big}\"],{id}]\n");
                if peer.write_all(line.as_bytes()).is_err() {
                    break;
                }
            }
        }
        PEERS
    })
    .await;
    if served < PEERS {
        let status = within("the server to exit", server.child.wait())
            .await
            .unwrap();
        panic!("the server stopped accepting after {served} peers: it exited ({status})");
    }
    // The server has seen every peer go (rather than guessing how long that takes), and is
    // alive.
    let client = Connection::connect(&path).await.unwrap();
    within("the server to close all 20 peers", async {
        while client.call::<usize>("closed", ()).await.unwrap() < PEERS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(client.call::<i64>("add", (4, 5)).await.unwrap(), 9);
    let epipes: usize = client.call("epipes", ()).await.unwrap();
    assert!(
        epipes > 0,
        "no write of the server failed with EPIPE: the test proved nothing"
    );
    client.close();
    let status = server.stop().await;
    assert_eq!(status.signal(), None, "killed by a signal: {status}");
    assert!(status.success(), "{status}");
    println!("the server survived {epipes} writes that failed with EPIPE");
}
