//! Engine-v2 promises over real sockets:
//! - a server's per-connection factory greets each peer before anything is read from it;
//! - a notification handler that calls its peer, which calls back before answering,
//!   completes; a chain of requests 100 deep across both sides completes;
//! - deadlines propagate along A -> B -> C -> D: every hop fails as a timeout within the
//!   first caller's deadline window, and each hop tells the next what is left;
//! - `AllowPeersLayer` refuses a TCP peer (no credentials) with `PEER_NOT_ALLOWED`.

mod support;

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diarrhoea::layer::{AllowPeersLayer, PEER_NOT_ALLOWED};
use diarrhoea::{serve, Connection, Error, Event, Request, Router, UnixListener};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::ServiceBuilder;

use support::{poll_once, server_router, temp_dir, within, RawPeer};

/// Aborts a server task when dropped, so a failing test leaves no server running.
struct Task(JoinHandle<Result<(), Error>>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `make` (a service or a per-connection factory) on a fresh Unix socket.
fn serve_unix<M, Marker>(dir: &Path, name: &str, make: M) -> (PathBuf, Task)
where
    M: diarrhoea::MakeConnectionService<Marker>,
    Marker: 'static,
{
    let path = dir.join(name);
    let listener = UnixListener::bind(&path).unwrap();
    (
        path,
        Task(tokio::spawn(serve(listener, make).into_future())),
    )
}

// --- 3. A factory greets each peer first ---------------------------------------------------

/// A factory that posts `hello(1234)` to every new connection, before serving it.
fn greeting_factory() -> impl FnMut(&Connection) -> Router + Send + 'static {
    let router = server_router();
    move |conn: &Connection| {
        conn.try_post_message("hello", (1234,)).unwrap();
        router.clone()
    }
}

/// A raw peer that has sent nothing gets the greeting as its first line, then is served.
async fn greeted<R, W>(mut peer: RawPeer<R, W>)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    assert_eq!(peer.recv_line().await, r#"["hello",[1234]]"#);
    peer.send(r#"["add",[1,2],7]"#).await;
    assert_eq!(peer.recv_line().await, "[7,3]");
}

#[tokio::test]
async fn a_factory_greets_each_unix_peer_before_reading_from_it() {
    let dir = temp_dir();
    let (path, _server) = serve_unix(dir.path(), "greet.sock", greeting_factory());
    for _ in 0..3 {
        let (read, write) = UnixStream::connect(&path).await.unwrap().into_split();
        greeted(RawPeer::new(read, write)).await;
    }
}

#[tokio::test]
async fn a_factory_greets_each_tcp_peer_before_reading_from_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = Task(tokio::spawn(
        serve(listener, greeting_factory()).into_future(),
    ));
    for _ in 0..3 {
        let (read, write) = TcpStream::connect(addr).await.unwrap().into_split();
        greeted(RawPeer::new(read, write)).await;
    }
}

// --- 4. Calls back and forth -------------------------------------------------------------

/// `down(n)`: 0 at the bottom, else the peer's `down(n - 1)` + 1, so a chain alternates
/// sides at every level.
async fn down(conn: Connection, n: u64) -> Result<u64, Error> {
    if n == 0 {
        return Ok(0);
    }
    Ok(conn.call::<u64>("down", (n - 1,)).await? + 1)
}

/// A on one side of a Unix socket, B (the server) on the other.
async fn a_and_b(dir: &Path, done: mpsc::UnboundedSender<i64>) -> (Connection, Task) {
    let b = Router::new()
        // A notification handler that calls A, whose handler calls B back before answering.
        .route("n", |conn: Connection| async move {
            let answer: i64 = conn.call("ask", ()).await?;
            conn.post_message("done", (answer,)).await
        })
        .route("cb", || async { 7 })
        .route("down", down);
    let (path, server) = serve_unix(dir, "b.sock", b);
    let a = Router::new()
        .route("ask", |conn: Connection| async move {
            let cb: i64 = conn.call("cb", ()).await?;
            Ok::<_, Error>(cb * 6)
        })
        .route("done", move |answer: i64| {
            let done = done.clone();
            async move {
                let _ = done.send(answer);
            }
        })
        .route("down", down);
    let conn = Connection::builder()
        .service(a)
        .connect(&path)
        .await
        .unwrap();
    (conn, server)
}

#[tokio::test]
async fn a_notification_handler_that_calls_its_peer_which_calls_back_completes() {
    let dir = temp_dir();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let (a, _server) = a_and_b(dir.path(), done_tx).await;
    let mut events = a.events();
    a.post_message("n", ()).await.unwrap();
    // The hang guard: before engine v2 this waited forever.
    assert_eq!(within("`done` from B", done.recv()).await, Some(42));
    // And notifications keep flowing afterwards, in order.
    for _ in 0..3 {
        a.post_message("n", ()).await.unwrap();
    }
    for _ in 0..3 {
        assert_eq!(within("`done` from B", done.recv()).await, Some(42));
    }
    assert_eq!(a.pending_calls(), 0);
    a.end();
    within("the connection to close", a.closed()).await;
    while let Some(event) = within("A's events", events.recv()).await {
        match event {
            Event::Error(e) | Event::Warning(e) => panic!("unexpected event: {e:?}"),
            Event::Close => break,
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_request_chain_100_deep_across_both_sides_completes() {
    let dir = temp_dir();
    let (done_tx, _done) = mpsc::unbounded_channel();
    let (a, _server) = a_and_b(dir.path(), done_tx).await;
    let depth: u64 = within("a chain of 100 calls", a.call("down", (100,)))
        .await
        .unwrap();
    assert_eq!(depth, 100);
    assert_eq!(a.pending_calls(), 0);
}

/// A notification that waits holds what it took from the stack (here the one permit of a
/// concurrency limit) while a request waits for that permit: the waiting notification must
/// still be driven, or the request waits forever.
#[tokio::test]
async fn a_request_waiting_for_a_permit_held_by_a_waiting_notification_completes() {
    let router = Router::new()
        .route("nap", |ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        })
        .route("add", |a: i64, b: i64| async move { a + b });
    let server =
        Connection::builder().service(ServiceBuilder::new().concurrency_limit(1).service(router));
    let (client, _server) = Connection::builder().pair(server).unwrap();
    client.post_message("nap", (50,)).await.unwrap();
    let sum: i64 = within(
        "a call behind a napping notification",
        client.call("add", (2, 3)),
    )
    .await
    .unwrap();
    assert_eq!(sum, 5);
}

// --- 5. Deadlines propagate along a chain ----------------------------------------------

/// The window within which every hop of a chain started with a 200 ms timeout must fail.
const DEADLINE: Duration = Duration::from_millis(200);
const WINDOW_END: Duration = Duration::from_millis(400);

/// How one hop's call ended: the calling node, when (since A's call started), the outcome,
/// and whether it was a timeout.
type HopEnd = (&'static str, Duration, Result<u64, String>, bool);

/// What each node saw and how each hop's call ended, in time since A's call started.
#[derive(Default)]
struct Chain {
    start: Mutex<Option<Instant>>,
    /// Node -> `meta.timeout_ms` of the request it received.
    received: Mutex<Vec<(&'static str, Option<u64>)>>,
    /// Hop (the calling node) -> when its call failed, and whether as a timeout.
    failed: Mutex<Vec<HopEnd>>,
    /// When D's handler was dropped (it never finishes by itself).
    d_dropped: Mutex<Option<Duration>>,
}

impl Chain {
    fn since_start(&self) -> Duration {
        self.start.lock().unwrap().expect("started").elapsed()
    }

    /// A layer-less way to see the wire: records the `meta.timeout_ms` each request carried.
    fn recorder(
        self: &Arc<Self>,
        node: &'static str,
        router: Router,
    ) -> impl tower::Service<
        Request,
        Response = diarrhoea::Response,
        Error = diarrhoea::BoxError,
        Future: Send,
    > + Clone
           + Send
           + Sync
           + 'static {
        let chain = self.clone();
        ServiceBuilder::new()
            .map_request(move |req: Request| {
                chain
                    .received
                    .lock()
                    .unwrap()
                    .push((node, req.meta().timeout_ms));
                req
            })
            .service(router)
    }

    fn record(&self, hop: &'static str, result: &Result<u64, Error>) {
        let when = self.since_start();
        let timeout = result.as_ref().is_err_and(Error::is_timeout);
        let result = result.as_ref().map(|v| *v).map_err(|e| format!("{e:?}"));
        self.failed
            .lock()
            .unwrap()
            .push((hop, when, result, timeout));
    }
}

/// Sets a flag with the time when dropped: tells when D's handler was given up on.
struct DroppedAt(Arc<Chain>);

impl Drop for DroppedAt {
    fn drop(&mut self) {
        let when = self.0.since_start();
        *self.0.d_dropped.lock().unwrap() = Some(when);
    }
}

/// D: `sleep` for 5 s (never finishes within the chain's deadline).
fn node_d(chain: &Arc<Chain>) -> Router {
    let chain = chain.clone();
    Router::new().route("sleep", move || {
        let flag = DroppedAt(chain.clone());
        async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(flag);
            5_000u64
        }
    })
}

/// A hop: `hop()` calls `method` on `next` and records how that call ended.
///
/// With `detach`, the call is polled once inside the handler (where it takes what is left of
/// the handler's deadline: the propagation under test), then finishes in a task of its own,
/// so that its outcome is seen even if the handler itself is dropped first (its own deadline
/// and the caller's `$/cancel` arrive at about the same moment as the call's timeout).
/// Without, the handler is the plain `next.call(method, ()).await`.
fn node_hop(
    chain: &Arc<Chain>,
    hop: &'static str,
    next: Connection,
    method: &'static str,
    detach: bool,
) -> Router {
    let chain = chain.clone();
    Router::new().route("hop", move || {
        let (chain, next) = (chain.clone(), next.clone());
        async move {
            if !detach {
                let result = next.call::<u64>(method, ()).await;
                chain.record(hop, &result);
                return result;
            }
            let mut call = Box::pin(async move { next.call::<u64>(method, ()).await });
            let first = poll_once(&mut call).await;
            tokio::spawn(async move {
                let result = match first {
                    Some(result) => result,
                    None => call.await,
                };
                chain.record(hop, &result);
                result
            })
            .await
            .expect("the hop task does not panic")
        }
    })
}

/// Starts B, C and D on Unix sockets, each hop connected to the next; returns A's
/// connection to B.
async fn chain_of_four(dir: &Path, chain: &Arc<Chain>, detach: bool) -> (Connection, Vec<Task>) {
    let (d_path, d) = serve_unix(dir, "d.sock", chain.recorder("D", node_d(chain)));
    let c_to_d = Connection::connect(&d_path).await.unwrap();
    let c_router = node_hop(chain, "C", c_to_d, "sleep", detach);
    let (c_path, c) = serve_unix(dir, "c.sock", chain.recorder("C", c_router));
    let b_to_c = Connection::connect(&c_path).await.unwrap();
    let b_router = node_hop(chain, "B", b_to_c, "hop", detach);
    let (b_path, b) = serve_unix(dir, "b.sock", chain.recorder("B", b_router));
    let a = Connection::connect(&b_path).await.unwrap();
    (a, vec![b, c, d])
}

/// A calls B with a 200 ms timeout; returns how long until A's call failed.
async fn run_chain(a: &Connection, chain: &Chain) -> Duration {
    let start = Instant::now();
    *chain.start.lock().unwrap() = Some(start);
    let result = within("A's call", a.call_with_timeout::<u64>("hop", (), DEADLINE)).await;
    let took = start.elapsed();
    let err = result.expect_err("the chain cannot answer in time");
    assert!(err.is_timeout(), "A: {err:?}");
    took
}

fn in_window(what: &str, when: Duration) {
    assert!(
        (DEADLINE..=WINDOW_END).contains(&when),
        "{what} at {when:?}, outside [{DEADLINE:?}, {WINDOW_END:?}] after A's call started"
    );
}

/// What each node was told on the wire: B exactly A's 200 ms, C and D no more than what was
/// left, each no more than the one before.
fn check_received(chain: &Chain) {
    let received = chain.received.lock().unwrap().clone();
    eprintln!(
        "told on the wire: {received:?}; hops failed: {:?}",
        chain.failed.lock().unwrap()
    );
    let told = |node: &str| {
        let seen: Vec<_> = received.iter().filter(|(n, _)| *n == node).collect();
        assert_eq!(seen.len(), 1, "{node} got one request: {received:?}");
        seen[0]
            .1
            .unwrap_or_else(|| panic!("{node} got no timeout_ms: {received:?}"))
    };
    let (b, c, d) = (told("B"), told("C"), told("D"));
    assert_eq!(b, 200, "{received:?}");
    // No more than what was left; not implausibly less (this is not a timing assertion: a
    // hop that took 100 ms to make one local call is a bug of its own).
    assert!(c <= b && c > 100, "C was told {c} ms: {received:?}");
    assert!(d <= c && d > 100, "D was told {d} ms: {received:?}");
}

async fn d_dropped_in_window(chain: &Chain) {
    let dropped = within("D's handler to be dropped", async {
        loop {
            if let Some(when) = *chain.d_dropped.lock().unwrap() {
                return when;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    in_window("D's handler dropped", dropped);
}

#[tokio::test]
async fn every_hop_of_a_chain_times_out_within_the_first_callers_deadline() {
    let dir = temp_dir();
    let chain = Arc::new(Chain::default());
    let (a, _servers) = chain_of_four(dir.path(), &chain, true).await;
    let took = run_chain(&a, &chain).await;
    in_window("A's call failed", took);
    // Each hop's own call fails as a timeout, in the same window.
    let failed = within("both hops to fail", async {
        loop {
            let failed = chain.failed.lock().unwrap().clone();
            if failed.len() == 2 {
                return failed;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    for hop in ["B", "C"] {
        let (_, when, result, timeout) = failed
            .iter()
            .find(|f| f.0 == hop)
            .unwrap_or_else(|| panic!("{hop} recorded nothing: {failed:?}"));
        assert!(timeout, "{hop}'s call: {result:?}");
        in_window(&format!("{hop}'s call failed"), *when);
    }
    check_received(&chain);
    d_dropped_in_window(&chain).await;
}

#[tokio::test]
async fn a_plain_chain_fails_within_the_first_callers_deadline_and_stops_its_work() {
    let dir = temp_dir();
    let chain = Arc::new(Chain::default());
    let (a, _servers) = chain_of_four(dir.path(), &chain, false).await;
    let took = run_chain(&a, &chain).await;
    in_window("A's call failed", took);
    check_received(&chain);
    // The last hop's work is given up on in the same window (its deadline, or a `$/cancel`).
    d_dropped_in_window(&chain).await;
    // Whatever each hop's handler saw before it was dropped was a timeout.
    for (hop, when, result, timeout) in chain.failed.lock().unwrap().iter() {
        assert!(timeout, "{hop}'s call: {result:?}");
        in_window(&format!("{hop}'s call failed"), *when);
    }
}

#[tokio::test]
async fn a_hop_tells_the_next_what_is_left_of_its_deadline_on_the_wire() {
    // B's handler calls C without a timeout of its own; C is a raw peer reading the line.
    let dir = temp_dir();
    let c_path = dir.path().join("c.sock");
    let c_listener = tokio::net::UnixListener::bind(&c_path).unwrap();
    let b_to_c = Connection::connect(&c_path).await.unwrap();
    let (c_stream, _) = c_listener.accept().await.unwrap();
    let (read, write) = c_stream.into_split();
    let mut c = RawPeer::new(read, write);
    let b = Router::new().route("hop", move || {
        let next = b_to_c.clone();
        async move { next.call::<u64>("work", ()).await }
    });
    let (b_path, _b) = serve_unix(dir.path(), "b.sock", b);
    let a = Connection::connect(&b_path).await.unwrap();

    let start = Instant::now();
    let call = tokio::spawn(async move { a.call_with_timeout::<u64>("hop", (), DEADLINE).await });
    let frame: Value = c.recv().await;
    let told = frame[3]["timeout_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no meta.timeout_ms: {frame}"));
    assert_eq!(frame[0], json!("work"), "{frame}");
    assert!(told <= 200 && told > 100, "C was told {told} ms: {frame}");
    let err = within("A's call", call).await.unwrap().unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    in_window("A's call failed", start.elapsed());
    // B gave up on C at its deadline: C is sent `$/cancel` for that id.
    let cancel = c.recv().await;
    assert_eq!(cancel, json!(["$/cancel", [frame[2].clone()]]));
}

// --- 8. The allow list refuses a TCP peer ----------------------------------------------

fn allow_same_user() -> AllowPeersLayer {
    AllowPeersLayer::same_user().unwrap()
}

#[tokio::test]
async fn allow_peers_refuses_a_tcp_peer_with_peer_not_allowed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stack = ServiceBuilder::new()
        .layer(allow_same_user())
        .service(server_router());
    let _server = Task(tokio::spawn(serve(listener, stack).into_future()));

    // A `Connection`: the call fails with the code, then the connection closes.
    let conn = Connection::connect_tcp(addr).await.unwrap();
    let mut events = conn.events();
    let err = conn.call::<i64>("add", (1, 2)).await.unwrap_err();
    assert_eq!(err.code(), Some(PEER_NOT_ALLOWED), "{err:?}");
    assert!(
        err.remote()
            .unwrap()
            .message
            .starts_with("peer not allowed"),
        "{err:?}"
    );
    within("the refused connection to close", conn.closed()).await;
    let mut told = false;
    while let Some(event) = within("the events", events.recv()).await {
        match event {
            Event::Error(e) if e.code() == Some(PEER_NOT_ALLOWED) => told = true,
            Event::Close => break,
            _ => {}
        }
    }
    assert!(
        told,
        "the connection error reached the client as an error event"
    );

    // On the wire: the error reply, then the connection error, then the end.
    let (read, write) = TcpStream::connect(addr).await.unwrap().into_split();
    let mut raw = RawPeer::new(read, write);
    raw.send(r#"["add",[1,2],1]"#).await;
    let reply = raw.recv().await;
    assert_eq!(
        (reply[0].clone(), reply[1].clone()),
        (json!(1), Value::Null)
    );
    assert_eq!(reply[2]["code"], json!(PEER_NOT_ALLOWED), "{reply}");
    let farewell = raw.recv().await;
    assert_eq!(
        (farewell[0].clone(), farewell[1].clone()),
        (Value::Null, Value::Null)
    );
    assert_eq!(farewell[2]["code"], json!(PEER_NOT_ALLOWED), "{farewell}");
}

#[tokio::test]
async fn allow_peers_admits_this_user_over_a_unix_socket() {
    // The control: the same stack admits a Unix peer running as this user.
    let dir = temp_dir();
    let stack = ServiceBuilder::new()
        .layer(allow_same_user())
        .service(server_router());
    let (path, _server) = serve_unix(dir.path(), "allow.sock", stack);
    let conn = Connection::connect(&path).await.unwrap();
    assert_eq!(conn.call::<i64>("add", (1, 2)).await.unwrap(), 3);
}

#[tokio::test]
async fn every_connection_has_its_own_id() {
    let (a, b) = Connection::pair().unwrap();
    let (c, d) = Connection::pair().unwrap();
    let ids: std::collections::HashSet<u64> = [a.id(), b.id(), c.id(), d.id()].into();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert_eq!(a.peer().connection_id, a.id());
}

#[tokio::test]
async fn a_peer_that_resets_the_connection_closes_it_without_an_error_event() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (ours, _) = listener.accept().await.unwrap();
    let conn = diarrhoea::serve_connection(ours, Router::new());
    let mut events = conn.events();
    // SO_LINGER 0: closing sends RST, so the read fails with ECONNRESET instead of ending.
    #[allow(deprecated)]
    peer.set_linger(Some(Duration::ZERO)).unwrap();
    drop(peer);
    let mut seen = Vec::new();
    loop {
        match within("the connection closes", events.recv()).await {
            Some(Event::Close) | None => break,
            Some(event) => seen.push(format!("{event:?}")),
        }
    }
    // A peer going away is not this side's error; other I/O errors are reported.
    assert!(seen.iter().all(|e| !e.starts_with("Error")), "{seen:?}");
}

/// A balancer over several connections drops one whose peer is gone when its caller says so;
/// before, a dead peer looked ready (and idle) until every task of its connection had ended.
#[tokio::test]
async fn a_caller_is_not_ready_once_its_peer_can_no_longer_reply() {
    let started = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let router = {
        let (started, release) = (started.clone(), release.clone());
        Router::new().route("hold", move || {
            let (started, release) = (started.clone(), release.clone());
            async move {
                started.notify_one();
                release.notified().await;
            }
        })
    };
    let (a, b) = Connection::builder()
        .service(router)
        .pair(Connection::builder())
        .unwrap();
    let mut events = a.events();
    let held = tokio::spawn({
        let b = b.clone();
        async move { b.call::<()>("hold", ()).await }
    });
    within("the handler starts", started.notified()).await;
    let mut caller = a.caller();
    within(
        "ready while the peer is there",
        std::future::poll_fn(|cx| tower::Service::poll_ready(&mut caller, cx)),
    )
    .await
    .expect("ready");
    drop(caller);

    // The peer finishes sending: `a` still answers its call, but can expect no reply.
    b.end();
    loop {
        match within("the peer's end", events.recv()).await {
            Some(Event::End) => break,
            Some(_) => continue,
            None => panic!("closed before the end was seen"),
        }
    }
    let mut caller = a.caller();
    let ready = within(
        "poll_ready",
        std::future::poll_fn(|cx| tower::Service::poll_ready(&mut caller, cx)),
    )
    .await;
    assert!(ready.is_err_and(|e| e.is_closed()));
    assert!(!a.is_closed(), "the connection is still answering");

    release.notify_one();
    within("the held call", held)
        .await
        .unwrap()
        .expect("answered after the peer's end");
}
