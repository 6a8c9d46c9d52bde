//! Shared by the engine-v2 tests (transports, stdio_worker, chains, tls, interop_tcp) and the
//! pool tests: the server's router, bounded waits, temp dirs, process guards, a raw line peer,
//! and the harness-less programs they start.
//!
//! Kept apart from `tests/common` so these tests depend on nothing another change migrates.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diarrhoea::{Args, Connection, Deadline, Error, Router, RpcError};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// A bound on every wait that only guards against a hang: nothing here should take long.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The application error code `fail` answers with.
pub const APP_CODE: i64 = 4242;

/// Waits for `fut`, failing the test instead of hanging.
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {PATIENCE:?} waiting for {what}"))
}

/// Polls `check` every 10 ms until it holds, for at most `limit`; `false` if it never did.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `fut` once: its output if it finished at once, `None` if it is pending.
pub async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *fut).poll(cx) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

/// A fresh directory for sockets, removed with the guard. Short prefix: `sun_path` is small.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("dv2")
        .tempdir()
        .expect("temp dir")
}

/// What the server side of the end-to-end tests remembers, so that a test can ask it (over
/// the connection, so this works as well in a child process).
#[derive(Default)]
struct Seen {
    /// Tags of `slow` calls whose `CancellationToken` was cancelled.
    cancelled: Mutex<HashSet<String>>,
    /// Tags of `slow` calls whose handler future was dropped before it finished.
    dropped: Mutex<HashSet<String>>,
}

/// Records a tag when dropped, unless disarmed: tells a handler dropped mid-way.
struct DropFlag {
    seen: Arc<Seen>,
    tag: Option<String>,
}

impl Drop for DropFlag {
    fn drop(&mut self) {
        if let Some(tag) = self.tag.take() {
            self.seen.dropped.lock().unwrap().insert(tag);
        }
    }
}

/// The server side of the end-to-end body (tests/transports.rs), the same in this process
/// and in the stdio worker:
///
/// - `note(x)` (notification): posts `noted(x)` back.
/// - `add(a, b)`.
/// - `nested(n)`: calls the client's `double(n)` while answering, replies with it + 1.
/// - `call_me_later(n)`: answers at once, then (outside any handler) calls the client's
///   `double(n)` and posts `doubled(result)`.
/// - `fail()`: error reply `{code: 4242, message: "refused on purpose", data}`.
/// - `slow(tag)`: posts `started(tag)`, then sleeps 60 s; records whether its
///   `CancellationToken` was cancelled and whether its future was dropped.
/// - `was_cancelled(tag)` -> `[token cancelled, future dropped]`.
/// - `sleep(ms)` -> ms; `deadline_left()` (takes `Deadline`) -> ms left;
///   `has_deadline()` (takes `Option<Deadline>`) -> bool.
/// - `pid()` -> this process's id.
pub fn server_router() -> Router {
    let seen = Arc::new(Seen::default());
    let seen_slow = seen.clone();
    Router::new()
        .route("note", |conn: Connection, x: String| async move {
            conn.post_message("noted", (x,)).await
        })
        .route("add", |a: i64, b: i64| async move { a + b })
        .route("nested", |conn: Connection, n: i64| async move {
            conn.call::<i64>("double", (n,)).await.map(|d| d + 1)
        })
        .route("call_me_later", |conn: Connection, n: i64| async move {
            tokio::spawn(async move {
                let doubled = conn.call::<i64>("double", (n,)).await.ok();
                let _ = conn.post_message("doubled", (doubled,)).await;
            });
        })
        .route("fail", || async {
            Err::<(), _>(
                RpcError::new(APP_CODE, "refused on purpose")
                    .with_data(serde_json::json!({"why": "the test asked"})),
            )
        })
        .route(
            "slow",
            move |conn: Connection, token: CancellationToken, tag: String| {
                let seen = seen_slow.clone();
                async move {
                    // Watches the token from a task of its own: the handler's future may be
                    // dropped before it could see the token itself.
                    let watch = (seen.clone(), tag.clone());
                    tokio::spawn(async move {
                        if tokio::time::timeout(PATIENCE, token.cancelled())
                            .await
                            .is_ok()
                        {
                            watch.0.cancelled.lock().unwrap().insert(watch.1);
                        }
                    });
                    let mut flag = DropFlag {
                        seen,
                        tag: Some(tag.clone()),
                    };
                    conn.post_message("started", (tag,)).await?;
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    flag.tag = None;
                    Ok::<_, Error>("finished")
                }
            },
        )
        .route("was_cancelled", move |tag: String| {
            let seen = seen.clone();
            async move {
                vec![
                    seen.cancelled.lock().unwrap().contains(&tag),
                    seen.dropped.lock().unwrap().contains(&tag),
                ]
            }
        })
        .route("sleep", |ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ms
        })
        .route("deadline_left", |deadline: Deadline| async move {
            deadline.remaining().as_millis() as u64
        })
        .route("has_deadline", |deadline: Option<Deadline>| async move {
            deadline.is_some()
        })
        .route("echo", |args: Args| async move { args })
        .route("pid", || async { std::process::id() as u64 })
}

/// Whether process `pid` has exited: no such process, or a zombie nobody has reaped yet
/// (an orphan's new parent may be slow to reap, or never do it).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => match stat.rsplit_once(')') {
            Some((_, rest)) => matches!(rest.trim_start().chars().next(), Some('Z' | 'X')),
            None => false,
        },
        Err(_) => true,
    }
}

/// Kills process `pid` with SIGKILL when dropped, so that a failing test leaves no process
/// behind (for processes this test did not spawn itself, such as a grandchild).
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !process_gone(self.0) {
            if let Some(pid) = rustix::process::Pid::from_raw(self.0 as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// The stdio worker program, `tests/stdio_worker.rs` (a `harness = false` test target):
/// see [`harnessless_exe`]. A run limited with `--test` must name it too:
/// `cargo test --test transports --test stdio_worker`.
pub fn worker_exe() -> PathBuf {
    harnessless_exe("stdio_worker", "transports")
}

/// The program of the `harness = false` test target `target`, for tests (in the test file
/// `tests`) that start it as a child process.
///
/// Why a program of its own rather than the test binary run again: a libtest binary prints
/// `running 1 test` on stdout before any test code runs, and on a worker's stdout that line
/// would reach the parent as a garbage frame. A harness-less target prints nothing but
/// frames. Cargo gives its path only to `[[bin]]` targets (`CARGO_BIN_EXE_*`), and the
/// library gets no `[[bin]]`, so it is found next to this test binary in `target/*/deps` as
/// `<target>-<hash>`, the newest if there are several. Cargo builds it with every
/// `cargo test`; a run limited with `--test` must name it too. A program older than the
/// library's sources is refused rather than silently tested.
pub fn harnessless_exe(target: &str, tests: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("the test binary lives in a directory");
    let prefix = format!("{target}-");
    let newest = std::fs::read_dir(deps)
        .expect("read target/*/deps")
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix(&prefix)
                .is_some_and(|hash| !hash.is_empty() && hash.chars().all(|c| c.is_ascii_hexdigit()))
        })
        .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
        .max();
    let rebuild = format!("`cargo test --test {tests} --test {target}` (or plain `cargo test`)");
    let Some((built, path)) = newest else {
        panic!(
            "{target} is not built next to {}: run {rebuild}",
            exe.display()
        )
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![
        root.join(format!("tests/{target}.rs")),
        root.join("tests/support/mod.rs"),
        root.join("tests/support/calc.rs"),
    ];
    collect_rs(&root.join("src"), &mut sources);
    for source in sources {
        let changed = std::fs::metadata(&source).and_then(|m| m.modified());
        if changed.is_ok_and(|changed| changed > built) {
            panic!(
                "{} is older than {}: rebuild it with {rebuild}",
                path.display(),
                source.display()
            );
        }
    }
    path
}

/// How long building an example may take: nothing when `cargo test` has built the examples
/// already, one example and the library's dev build otherwise.
pub const BUILD_PATIENCE: Duration = Duration::from_secs(300);

/// The example `name`, built for this test with the test's own profile and features (a no-op
/// when it is up to date, as after `cargo test`): `target/<profile dir>/examples/<name>`.
/// Blocks: call it from `spawn_blocking`.
pub fn example_exe(name: &str) -> PathBuf {
    // target/<profile dir>/deps/<test>-<hash> -> target/<profile dir>/examples/<name>
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = std::process::Command::new(cargo);
    build
        .args(["build", "--quiet", "--profile", profile, "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    // The features this test was built with, so the library is not rebuilt without them.
    if cfg!(feature = "axum") {
        build.args(["--features", "axum"]);
    }
    // What cargo sets for this test process, not for a build: build scripts that watch these
    // (ring's) would see a change and rebuild, and again at the next plain build.
    for (var, _) in std::env::vars_os() {
        let var = var.to_string_lossy();
        let test_only = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_", "CARGO_CFG_"]
            .iter()
            .any(|prefix| var.starts_with(prefix))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&&*var);
        if test_only {
            build.env_remove(&*var);
        }
    }
    let mut cargo = build.spawn().expect("run cargo build");
    let deadline = std::time::Instant::now() + BUILD_PATIENCE;
    let status = loop {
        if let Some(status) = cargo.try_wait().expect("wait for cargo build") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = cargo.kill();
            let _ = cargo.wait();
            panic!("building the {name} example took over {BUILD_PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "building the {name} example failed");
    profile_dir.join("examples").join(name)
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A peer that speaks lines by hand over any stream: sees exactly what is on the wire.
pub struct RawPeer<R, W> {
    lines: tokio::io::Lines<BufReader<R>>,
    write: W,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> RawPeer<R, W> {
    pub fn new(read: R, write: W) -> Self {
        RawPeer {
            lines: BufReader::new(read).lines(),
            write,
        }
    }

    pub async fn send(&mut self, line: &str) {
        self.write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write");
    }

    /// The next line as it came, without its `\n`.
    pub async fn recv_line(&mut self) -> String {
        within("a line from the peer", self.lines.next_line())
            .await
            .expect("read")
            .expect("the peer closed the connection")
    }

    /// The next line, parsed.
    pub async fn recv(&mut self) -> Value {
        let line = self.recv_line().await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
    }
}

/// A self-signed certificate for `localhost`, made now, and the two TLS ends that use it: an
/// acceptor holding its key, and a connector trusting exactly that certificate (tokio-rustls,
/// ring provider).
pub fn tls_configs() -> (tokio_rustls::TlsAcceptor, tokio_rustls::TlsConnector) {
    use tokio_rustls::rustls::crypto::ring;
    use tokio_rustls::rustls::pki_types::PrivatePkcs8KeyDer;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};

    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = PrivatePkcs8KeyDer::from(made.signing_key.serialize_der());
    let cert = made.cert.der().clone();
    let provider = Arc::new(ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.into())
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        tokio_rustls::TlsConnector::from(Arc::new(client)),
    )
}

/// Serves `app` on a free port of 127.0.0.1 with the remote address recorded (axum's
/// `ConnectInfo`), behind a stand-in for the host's authentication: a middleware that puts
/// `user` in every request's extensions. The address, and the task to abort.
#[cfg(feature = "axum")]
pub async fn serve_signed_in<U: Clone + Send + Sync + 'static>(
    app: axum::Router,
    user: U,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    use std::future::IntoFuture;

    let app = app.layer(axum::middleware::from_fn(
        move |mut req: axum::extract::Request, next: axum::middleware::Next| {
            req.extensions_mut().insert(user.clone());
            next.run(req)
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    (addr, tokio::spawn(axum::serve(listener, app).into_future()))
}
