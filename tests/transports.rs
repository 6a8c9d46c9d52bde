//! One end-to-end body, run over every transport: a Unix socket (`UnixListener` + `serve`),
//! TCP on loopback (`TcpListener` + `serve`), the in-process socket pair (`Builder::pair`),
//! an in-memory `tokio::io::duplex`, and a child process's stdin/stdout (`spawn_child` +
//! `serve_stdio`), and with feature `axum` a WebSocket (`diarrhoea::http::ws` in an axum app,
//! `Builder::connect_ws`). Then the stdio worker's life: it exits within 1 s of its parent's SIGKILL
//! (idle, or running a call), it still answers a parent that only ended its side, and a
//! parent's calls fail at once when its worker is killed.
//!
//! The body proves, on each: notifications both ways, calls both ways (one made outside any
//! handler), a nested call back while answering, an application error reply, `$/cancel` from
//! a dropped call future and from a call's timeout (the server's handler is dropped and, for
//! `$/cancel`, sees its `CancellationToken` cancelled), a deadline (`call_with_timeout` ->
//! `is_timeout()`; a handler taking `Deadline` sees it; `Option<Deadline>` is `None` without
//! one), and a clean end on both sides with no error or warning event.

mod support;

use std::any::Any;
use std::future::{Future, IntoFuture};
use std::time::Duration;

use diarrhoea::connection::Builder;
use diarrhoea::{serve, Args, Connection, Event, Identity, Router, UnixListener};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use support::{
    eventually, process_gone, server_router, temp_dir, within, worker_exe, KillOnDrop, APP_CODE,
    PATIENCE,
};

/// The worker program's mode switch (see tests/stdio_worker.rs).
const WORKER_MODE: &str = "DIARRHOEA_STDIO_WORKER";

/// What the client's router was sent, in order: (method, args).
type Inbox = mpsc::UnboundedReceiver<(String, Value)>;

/// Two connected ends, the client's with `client_router`, the server's with `server_router`.
struct Ends {
    client: Connection,
    /// The server's handle, when the server runs in this process.
    server: Option<Connection>,
    /// The worker, for the stdio transport (killed on drop).
    child: Option<tokio::process::Child>,
    /// What must live as long as the connection: a server task, a temp dir (in drop order).
    _keep: Vec<Box<dyn Any + Send>>,
}

/// Aborts a server task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `double(n)`, and every notification the server sends, into the inbox.
fn client_router(tx: mpsc::UnboundedSender<(String, Value)>) -> Router {
    let into_inbox = |method: &'static str| {
        let tx = tx.clone();
        move |args: Args| {
            let tx = tx.clone();
            async move {
                let args: Value = serde_json::from_str(args.get()).expect("args are JSON");
                let _ = tx.send((method.to_owned(), args));
            }
        }
    };
    Router::new()
        .route("double", |n: i64| async move { 2 * n })
        .route("noted", into_inbox("noted"))
        .route("started", into_inbox("started"))
        .route("doubled", into_inbox("doubled"))
}

async fn next(inbox: &mut Inbox) -> (String, Value) {
    within("a notification from the server", inbox.recv())
        .await
        .expect("the client's router is gone")
}

fn note(method: &str, args: Value) -> (String, Value) {
    (method.to_owned(), args)
}

/// Asks the server what became of `slow(tag)`, until it reports `want` = [token cancelled,
/// future dropped] (bounded).
async fn slow_call_ends(client: &Connection, tag: &str, want: fn(&[bool]) -> bool) -> Vec<bool> {
    let mut last = Vec::new();
    let until = Instant::now() + PATIENCE;
    while Instant::now() < until {
        last = client
            .call::<Vec<bool>>("was_cancelled", (tag,))
            .await
            .expect("was_cancelled");
        if want(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("slow({tag}) on the server: [token cancelled, dropped] = {last:?} after {PATIENCE:?}")
}

/// The body: everything a connection promises, over whatever `setup` connects.
async fn exercise<F, Fut>(setup: F)
where
    F: FnOnce(Builder) -> Fut,
    Fut: Future<Output = Ends>,
{
    let (tx, mut inbox) = mpsc::unbounded_channel();
    let ends = setup(Connection::builder().service(client_router(tx))).await;
    let client = ends.client.clone();
    let mut events = client.events();

    // Notifications both ways: the server's `note` handler posts `noted` back.
    client.post_message("note", ("hello",)).await.unwrap();
    assert_eq!(next(&mut inbox).await, note("noted", json!(["hello"])));

    // Calls both ways.
    assert_eq!(client.call::<i64>("add", (2, 3)).await.unwrap(), 5);
    // The server calls the client back while answering.
    assert_eq!(client.call::<i64>("nested", (21,)).await.unwrap(), 43);
    // The server calls the client outside any handler, then notifies the result.
    client.call::<()>("call_me_later", (5,)).await.unwrap();
    assert_eq!(next(&mut inbox).await, note("doubled", json!([10])));
    if let Some(server) = &ends.server {
        assert_eq!(server.call::<i64>("double", (4,)).await.unwrap(), 8);
        server
            .post_message("noted", ("from the server",))
            .await
            .unwrap();
        assert_eq!(
            next(&mut inbox).await,
            note("noted", json!(["from the server"]))
        );
    }

    // An application error reply: code, message and data arrive as sent.
    let err = client.call::<()>("fail", ()).await.unwrap_err();
    assert!(err.is_remote(), "{err:?}");
    assert_eq!(err.code(), Some(APP_CODE));
    let remote = err.remote().expect("an error reply");
    assert_eq!(remote.message, "refused on purpose");
    assert_eq!(remote.data, Some(json!({"why": "the test asked"})));

    // `$/cancel` from a dropped call future: once the handler has started, drop the call.
    {
        let slow = client.call::<String>("slow", ("dropped",));
        tokio::select! {
            reply = slow => panic!("slow answered: {reply:?}"),
            started = next(&mut inbox) => assert_eq!(started, note("started", json!(["dropped"]))),
        }
    }
    assert_eq!(client.pending_calls(), 0, "a dropped call is forgotten");
    // The handler's token is cancelled and its future dropped.
    slow_call_ends(&client, "dropped", |s| s == [true, true]).await;

    // `$/cancel` from a call's timeout. The server has the same deadline (`meta.timeout_ms`):
    // whichever comes first there, the `$/cancel` or its own deadline, drops the handler (the
    // token is cancelled only by a `$/cancel`, so it is not checked here).
    let started = Instant::now();
    let err = client
        .call_with_timeout::<String>("slow", ("timed out",), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        next(&mut inbox).await,
        note("started", json!(["timed out"]))
    );
    slow_call_ends(&client, "timed out", |s| s[1]).await;

    // Deadlines: a call to a handler that takes longer fails as a timeout, at its deadline.
    let started = Instant::now();
    let err = client
        .call_with_timeout::<u64>("sleep", (5_000,), Duration::from_millis(200))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(err.is_timeout(), "{err:?}");
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // A handler taking `Deadline` sees the caller's.
    let left = client
        .call_with_timeout::<u64>("deadline_left", (), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(left > 0 && left <= 5_000, "{left} ms left");
    assert!(!client.call::<bool>("has_deadline", ()).await.unwrap());
    assert!(client
        .call_with_timeout::<bool>("has_deadline", (), Duration::from_secs(5))
        .await
        .unwrap());

    // Still healthy, nothing left waiting, nothing unexpected received.
    assert_eq!(client.call::<i64>("add", (40, 2)).await.unwrap(), 42);
    assert_eq!(client.pending_calls(), 0);
    assert!(inbox.try_recv().is_err(), "no stray notification");

    // A clean end: the client finishes, the server sees the end and closes too.
    client.end();
    within("the client to close", client.closed()).await;
    if let Some(server) = &ends.server {
        within("the server's connection to close", server.closed()).await;
    }
    if let Some(mut child) = ends.child {
        let status = within("the worker to exit", child.wait()).await.unwrap();
        assert!(status.success(), "worker: {status}");
    }
    loop {
        match within("the client's events", events.recv()).await {
            None | Some(Event::Close) => break,
            Some(Event::Error(e)) => panic!("error event: {e:?}"),
            Some(Event::Warning(e)) => panic!("warning event: {e:?}"),
            Some(_) => {}
        }
    }
    drop(ends._keep);
}

/// A factory for `serve` that hands out the first connection's handle.
fn capturing_factory() -> (
    impl FnMut(&Connection) -> Router + Send + 'static,
    oneshot::Receiver<Connection>,
) {
    let (tx, rx) = oneshot::channel();
    let mut tx = Some(tx);
    let router = server_router();
    let make = move |conn: &Connection| {
        if let Some(tx) = tx.take() {
            let _ = tx.send(conn.clone());
        }
        router.clone()
    };
    (make, rx)
}

async fn unix_socket(client: Builder) -> Ends {
    let dir = temp_dir();
    let path = dir.path().join("s.sock");
    let (make, server) = capturing_factory();
    let listener = UnixListener::bind(&path).unwrap();
    let task = tokio::spawn(serve(listener, make).into_future());
    let client = client.connect(&path).await.unwrap();
    let server = within("the server's connection", server).await.unwrap();
    // Both ends know who is on the other side: this very process.
    let me = Some(std::process::id() as i32);
    assert_eq!(client.peer().credentials().map(|c| c.pid), Some(me));
    assert_eq!(server.peer().credentials().map(|c| c.pid), Some(me));
    Ends {
        client,
        server: Some(server),
        child: None,
        _keep: vec![Box::new(AbortOnDrop(task)), Box::new(dir)],
    }
}

async fn tcp_loopback(client: Builder) -> Ends {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (make, server) = capturing_factory();
    let task = tokio::spawn(serve(listener, make).into_future());
    let client = client.connect_tcp(addr).await.unwrap();
    let server = within("the server's connection", server).await.unwrap();
    assert_eq!(client.peer().identity, Identity::Tcp(addr));
    assert!(server.peer().addr().is_some_and(|a| a.ip().is_loopback()));
    assert_eq!(server.peer().credentials(), None, "TCP has no credentials");
    Ends {
        client,
        server: Some(server),
        child: None,
        _keep: vec![Box::new(AbortOnDrop(task))],
    }
}

async fn socket_pair(client: Builder) -> Ends {
    let (server, client) = Connection::builder()
        .service(server_router())
        .pair(client)
        .unwrap();
    Ends {
        client,
        server: Some(server),
        child: None,
        _keep: Vec::new(),
    }
}

async fn in_memory_duplex(client: Builder) -> Ends {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = diarrhoea::serve_connection(a, server_router());
    let client = client.serve_connection(b);
    assert_eq!(client.peer().identity, Identity::Unknown);
    Ends {
        client,
        server: Some(server),
        child: None,
        _keep: Vec::new(),
    }
}

/// An axum app on loopback serving the WebSocket endpoint; the client connects to its URL.
#[cfg(feature = "axum")]
async fn websocket(client: Builder) -> Ends {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (make, server) = capturing_factory();
    let app = axum::Router::new().route("/ws", diarrhoea::http::ws(make).route());
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let task = tokio::spawn(axum::serve(listener, app).into_future());
    let client = client.connect_ws(format!("ws://{addr}/ws")).await.unwrap();
    let server = within("the server's connection", server).await.unwrap();
    assert_eq!(client.peer().addr(), Some(addr));
    let seen = server.peer().http().expect("a WebSocket peer");
    assert!(seen.addr().is_some_and(|a| a.ip().is_loopback()));
    assert_eq!(
        server.peer().credentials(),
        None,
        "a WebSocket has no credentials"
    );
    Ends {
        client,
        server: Some(server),
        child: None,
        _keep: vec![Box::new(AbortOnDrop(task))],
    }
}

async fn child_stdio(client: Builder) -> Ends {
    let mut command = Command::new(worker_exe());
    command.env(WORKER_MODE, "serve");
    let (client, child) = client.spawn_child(&mut command).unwrap();
    assert_eq!(client.peer().identity, Identity::Unknown);
    let pid: u64 = client.call("pid", ()).await.unwrap();
    assert_eq!(Some(pid as u32), child.id(), "served by the child");
    Ends {
        client,
        server: None,
        child: Some(child),
        _keep: Vec::new(),
    }
}

#[tokio::test]
async fn over_a_unix_socket() {
    exercise(unix_socket).await;
}

#[tokio::test]
async fn over_tcp_loopback() {
    exercise(tcp_loopback).await;
}

#[tokio::test]
async fn over_a_socket_pair() {
    exercise(socket_pair).await;
}

#[tokio::test]
async fn over_an_in_memory_duplex() {
    exercise(in_memory_duplex).await;
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn over_a_websocket() {
    exercise(websocket).await;
}

#[tokio::test]
async fn over_a_child_process_stdio() {
    exercise(child_stdio).await;
}

/// The parent's pid of process `pid`, from `/proc`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Starts the worker program as a parent (`mode`), which spawns a stdio worker and prints its
/// pid; kills the parent with SIGKILL; measures how long the worker outlives it.
async fn worker_outlives_a_killed_parent_by(mode: &str) -> Duration {
    let mut parent = Command::new(worker_exe())
        .env(WORKER_MODE, mode)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the parent");
    let parent_pid = parent.id().expect("running");
    let mut lines = BufReader::new(parent.stdout.take().unwrap()).lines();
    let worker: u32 = within("the worker's pid", lines.next_line())
        .await
        .unwrap()
        .expect("the parent printed the worker's pid")
        .trim()
        .parse()
        .expect("a pid");
    // Killed whatever happens below.
    let _worker = KillOnDrop(worker);
    assert!(!process_gone(worker), "the worker runs");
    assert_eq!(
        parent_of(worker),
        Some(parent_pid),
        "the worker is the parent's child"
    );

    parent.start_kill().expect("SIGKILL the parent");
    let killed = Instant::now();
    within("the parent to die", parent.wait()).await.unwrap();
    let gone = eventually(
        Duration::from_secs(5),
        || async move { process_gone(worker) },
    )
    .await;
    let took = killed.elapsed();
    assert!(
        gone,
        "worker {worker} still runs {took:?} after its parent's SIGKILL"
    );
    took
}

#[tokio::test]
async fn an_idle_stdio_worker_exits_within_1s_of_its_parents_sigkill() {
    let took = worker_outlives_a_killed_parent_by("parent").await;
    assert!(
        took < Duration::from_secs(1),
        "the worker lived {took:?} on"
    );
}

#[tokio::test]
async fn a_busy_stdio_worker_exits_within_1s_of_its_parents_sigkill() {
    // The worker is running a 60 s `sleep` for the parent when the parent dies.
    let took = worker_outlives_a_killed_parent_by("parent-busy").await;
    assert!(
        took < Duration::from_secs(1),
        "the worker lived {took:?} on"
    );
}

#[tokio::test]
async fn a_stdio_worker_still_answers_a_parent_that_only_ended_its_side() {
    // The counterpart of the hang-up check: the end of stdin alone is no hang-up.
    let mut command = Command::new(worker_exe());
    command.env(WORKER_MODE, "serve");
    let (conn, mut child) = Connection::builder().spawn_child(&mut command).unwrap();
    let caller = conn.clone();
    let mut sleep = Box::pin(async move { caller.call::<u64>("sleep", (500,)).await });
    assert!(support::poll_once(&mut sleep).await.is_none(), "queued");
    let mut add = Box::pin(async { conn.call::<i64>("add", (1, 2)).await });
    assert!(support::poll_once(&mut add).await.is_none(), "queued");
    conn.end();
    assert_eq!(within("add", add).await.unwrap(), 3);
    assert_eq!(within("sleep", sleep).await.unwrap(), 500);
    let status = within("the worker to exit", child.wait()).await.unwrap();
    assert!(status.success(), "worker: {status}");
    within("the connection to close", conn.closed()).await;
}

#[tokio::test]
async fn a_parents_calls_fail_at_once_when_its_stdio_worker_is_killed() {
    let mut command = Command::new(worker_exe());
    command.env(WORKER_MODE, "serve");
    let (conn, mut child) = Connection::builder().spawn_child(&mut command).unwrap();
    let caller = conn.clone();
    let mut sleep = Box::pin(async move { caller.call::<u64>("sleep", (60_000,)).await });
    assert!(support::poll_once(&mut sleep).await.is_none(), "queued");
    assert_eq!(conn.call::<i64>("add", (1, 2)).await.unwrap(), 3);
    child.start_kill().unwrap();
    let err = within("the call to fail", sleep).await.unwrap_err();
    assert!(err.is_closed(), "{err:?}");
    within("the connection to close", conn.closed()).await;
    within("the worker to be reaped", child.wait())
        .await
        .unwrap();
}
