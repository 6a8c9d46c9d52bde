//! Middleware and flow control end to end, over real sockets: the liveness and ordering
//! list, the crate's own layers in a running server, and tower's layers on the calling side.

mod common;

use std::future::{Future, IntoFuture};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use common::*;
use diarrhoea::layer::{AllowPeersLayer, NameOverloadLayer, TraceLayer, PEER_NOT_ALLOWED};
use diarrhoea::{code, serve, Config, Connection, Error, Request, Response, Router, UnixListener};
use serde_json::json;
use tower::limit::RateLimit;
use tower::retry::{Policy, Retry};
use tower::{Service, ServiceBuilder, ServiceExt};

/// How many handlers run at once, and the most that ever did.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    fn enter(self: &Arc<Self>) -> GaugeGuard {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        GaugeGuard(self.clone())
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

struct GaugeGuard(Arc<Gauge>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `down(n)`: 0 for n = 0, else one more than the peer's `down(n - 1)`.
fn down_router(gauge: Arc<Gauge>) -> Router {
    Router::new().route("down", move |peer: Connection, n: u64| {
        let guard = gauge.enter();
        async move {
            let _guard = guard;
            if n == 0 {
                return Ok(0);
            }
            peer.call::<u64>("down", (n - 1,)).await.map(|d| d + 1)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_calls_1000_deep_across_both_sides_saturate_both_limits_without_deadlock() {
    // A handler that awaits a nested call keeps its permit while it waits. A chain 1,000 deep
    // in total puts 500 handlers on each side at its deepest point, so each side's limit must
    // be at least 500 or the 501st nested call would wait forever for a permit held by a
    // handler waiting for it. Exactly 500 on each side: the chain saturates both limits.
    const DEPTH: u64 = 1000;
    const LIMIT: usize = (DEPTH / 2) as usize;
    let (_dir, path) = socket_path();
    let server_gauge = Arc::new(Gauge::default());
    let client_gauge = Arc::new(Gauge::default());

    let listener = UnixListener::bind(&path).unwrap();
    let router = down_router(server_gauge.clone());
    tokio::spawn(
        serve(listener, move |_: &Connection| {
            ServiceBuilder::new()
                .layer(TraceLayer::incoming())
                .concurrency_limit(LIMIT)
                .service(router.clone())
        })
        .into_future(),
    );
    let conn = Connection::builder()
        .service(
            ServiceBuilder::new()
                .layer(TraceLayer::incoming())
                .concurrency_limit(LIMIT)
                .service(down_router(client_gauge.clone())),
        )
        .connect(&path)
        .await
        .unwrap();

    // The test's own call starts the chain: handlers run for n = 999 (server), 998 (client),
    // ..., 0 (client): 500 on each side, 1,000 in total.
    let depth: u64 = within("the nested chain", conn.call("down", (DEPTH - 1,)))
        .await
        .unwrap();
    assert_eq!(depth, DEPTH - 1);
    assert_eq!(
        server_gauge.max(),
        LIMIT,
        "the server's limit was saturated"
    );
    assert_eq!(
        client_gauge.max(),
        LIMIT,
        "the client's limit was saturated"
    );
    // And everything still works afterwards, in both directions.
    let again: u64 = within("a short chain", conn.call("down", (3,)))
        .await
        .unwrap();
    assert_eq!(again, 3);
    assert_eq!(conn.pending_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_100000_notifications_is_handled_in_wire_order_through_layers() {
    const N: u64 = 100_000;
    let (_dir, path) = socket_path();
    let last = Arc::new(AtomicU64::new(0));
    let out_of_order = Arc::new(AtomicU64::new(0));
    let router = {
        let (seen, out_of_order) = (last.clone(), out_of_order.clone());
        Router::new()
            .route("seq", move |n: u64| {
                let last = &seen;
                let previous = last.swap(n, Ordering::SeqCst);
                if previous + 1 != n {
                    out_of_order.fetch_add(1, Ordering::SeqCst);
                }
                async {}
            })
            .route("last", {
                let last = last.clone();
                move || {
                    let last = last.load(Ordering::SeqCst);
                    async move { last }
                }
            })
    };
    let stack = ServiceBuilder::new()
        .layer(TraceLayer::incoming())
        .timeout(Duration::from_secs(10))
        .concurrency_limit(8)
        .service(router);
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(
        serve(listener, stack)
            .config(Config::new().request_timeout(Duration::from_secs(10)))
            .into_future(),
    );
    let conn = Connection::connect(&path).await.unwrap();

    let mut poster = ServiceBuilder::new()
        .layer(TraceLayer::outgoing().connection_id(conn.id()))
        .service(conn.poster());
    within("sending the burst", async {
        for n in 1..=N {
            poster
                .ready()
                .await
                .unwrap()
                .call(Request::new("seq", (n,)).unwrap())
                .await
                .unwrap();
        }
    })
    .await;
    // Notifications complete before the next frame is dispatched, so this call runs last.
    let seen: u64 = within("the last notification", conn.call("last", ()))
        .await
        .unwrap();
    assert_eq!(seen, N);
    assert_eq!(out_of_order.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_1s_deadline_counts_the_wait_for_the_only_permit_and_the_service_keeps_working() {
    let (_dir, path) = socket_path();
    let stack = ServiceBuilder::new()
        .layer(TraceLayer::incoming())
        .concurrency_limit(1)
        .service(test_router());
    tokio::spawn(serve(UnixListener::bind(&path).unwrap(), stack).into_future());
    let mut peer = RawPeer::connect(&path).await;

    // Request 1 holds the only permit until it is cancelled; request 2 has a 1 s deadline
    // and waits for the permit in `poll_ready`, where tower's `Timeout` would not count the
    // time. Wire order puts request 1 on the permit first.
    peer.send("[\"sleep\",[60000],1]\n").await;
    let sent = Instant::now();
    peer.send("[\"add\",[1,2],2,{\"timeout_ms\":1000}]\n").await;
    let reply = peer.recv().await;
    let waited = sent.elapsed();
    // Not early: at the deadline or after (counted from when the server read the frame,
    // which is after `sent`).
    assert!(
        waited >= Duration::from_millis(1000),
        "the deadline fired after {waited:?}"
    );
    // Not late either, without a wall-clock bound that a busy machine would break: the
    // permit is still held (request 1 runs until cancelled), so only the deadline can have
    // answered request 2.
    assert_eq!(reply[0], 2, "{reply}");
    assert_eq!(reply[2]["code"], code::TIMEOUT, "{reply}");
    // The permit holder is cancelled, and the service keeps working.
    peer.send("[\"$/cancel\",[1]]\n").await;
    let cancelled = peer.recv().await;
    assert_eq!(
        (cancelled[0].as_u64(), cancelled[2]["code"].as_i64()),
        (Some(1), Some(code::CANCELLED)),
        "{cancelled}"
    );
    peer.send("[\"add\",[2,2],3,{\"timeout_ms\":1000}]\n").await;
    assert_eq!(peer.recv().await, json!([3, 4]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_calls_against_a_shed_limit_of_64_each_get_a_reply() {
    const CALLS: usize = 10_000;
    const LIMIT: usize = 64;
    let (_dir, path) = socket_path();
    // Handlers hold their permit until the test has seen a request shed: the limit is full
    // for as long as it takes, whatever the machine's speed, so shedding must happen.
    let (open, gate) = tokio::sync::watch::channel(false);
    let gauge = Arc::new(Gauge::default());
    let router = {
        let gauge = gauge.clone();
        Router::new().route("work", move || {
            let (guard, mut gate) = (gauge.enter(), gate.clone());
            async move {
                let _guard = guard;
                gate.wait_for(|open| *open).await.unwrap();
            }
        })
    };
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(
        serve(listener, move |_: &Connection| {
            ServiceBuilder::new()
                .layer(TraceLayer::incoming())
                .layer(NameOverloadLayer::new(
                    "per-connection concurrency limit (64)",
                ))
                .load_shed()
                .concurrency_limit(LIMIT)
                .service(router.clone())
        })
        .into_future(),
    );
    let conn = Connection::connect(&path).await.unwrap();

    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..CALLS {
        let conn = conn.clone();
        calls.spawn(async move { conn.call::<()>("work", ()).await });
    }
    let (mut ok, mut shed) = (0, 0);
    within("10,000 replies (and a first one shed)", async {
        while let Some(outcome) = calls.join_next().await {
            match outcome.unwrap() {
                Ok(()) => ok += 1,
                Err(e) => {
                    let rpc = e.remote().unwrap_or_else(|| panic!("not a reply: {e}"));
                    assert_eq!(rpc.code, code::OVERLOADED);
                    assert_eq!(
                        rpc.message,
                        "overloaded: per-connection concurrency limit (64) reached"
                    );
                    shed += 1;
                    open.send_replace(true);
                }
            }
        }
    })
    .await;
    eprintln!("{ok} served, {shed} shed, at most {} at once", gauge.max());
    assert_eq!(ok + shed, CALLS, "every call got a reply");
    assert!(shed > 0, "nothing was shed");
    assert!(ok >= LIMIT, "{ok} served");
    // The limit held: never more handlers at once than it allows, and it was reached.
    assert_eq!(gauge.max(), LIMIT, "handlers running at once");
    assert_eq!(conn.pending_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_call_then_drop_cycles_leave_no_pending_call() {
    let (_dir, path) = socket_path();
    let router = test_router().route("hang", std::future::pending::<()>);
    // Few permits: unless dropped calls free theirs (by `$/cancel`), the last call would wait.
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(
        serve(listener, router)
            .config(Config::new().max_concurrent_requests(16))
            .into_future(),
    );
    let conn = Connection::connect(&path).await.unwrap();

    for _ in 0..10_000 {
        let mut call = pin!(conn.call::<()>("hang", ()));
        // One poll queues the frame; then the call is dropped (and `$/cancel` sent).
        std::future::poll_fn(|cx| {
            assert!(call.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
    }
    assert_eq!(conn.pending_calls(), 0);
    // The server got the calls and the cancellations: its permits are free again.
    let sum: i64 = within("a call after the drops", conn.call("add", (2, 3)))
        .await
        .unwrap();
    assert_eq!(sum, 5);
    assert_eq!(conn.pending_calls(), 0);
}

#[tokio::test]
async fn a_peer_not_on_the_allow_list_is_refused_and_disconnected() {
    let (_dir, path) = socket_path();
    let own = diarrhoea::layer::current_uid().unwrap();
    let stack = ServiceBuilder::new()
        .layer(AllowPeersLayer::none().uid(own.wrapping_add(1)))
        .service(test_router());
    tokio::spawn(serve(UnixListener::bind(&path).unwrap(), stack).into_future());

    let mut peer = RawPeer::connect(&path).await;
    peer.send("[\"add\",[1,2],1]\n").await;
    let mut saw_connection_error = false;
    // The error reply comes first when it wins the race with the close; the connection
    // error always comes, then the end of the stream.
    while let Ok(Some(line)) = within("the refusal", peer.lines.next_line()).await {
        let frame: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(frame[2]["code"], PEER_NOT_ALLOWED, "{frame}");
        assert!(frame[0] == 1 || frame[0].is_null(), "{frame}");
        saw_connection_error |= frame[0].is_null();
    }
    assert!(saw_connection_error);

    // The own uid (the default policy) is admitted.
    let (_dir2, path2) = socket_path();
    let stack = ServiceBuilder::new()
        .layer(AllowPeersLayer::same_user().unwrap())
        .service(test_router());
    tokio::spawn(serve(UnixListener::bind(&path2).unwrap(), stack).into_future());
    let conn = Connection::connect(&path2).await.unwrap();
    let sum: i64 = conn.call("add", (1, 2)).await.unwrap();
    assert_eq!(sum, 3);
}

/// Retries idempotent methods that were shed or timed out, up to `attempts` more times.
#[derive(Clone)]
struct RetryIdempotent {
    idempotent: &'static [&'static str],
    attempts: usize,
}

impl Policy<Request, Response, Error> for RetryIdempotent {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        req: &mut Request,
        result: &mut Result<Response, Error>,
    ) -> Option<Self::Future> {
        let transient =
            matches!(result, Err(e) if matches!(e.code(), Some(code::OVERLOADED | code::TIMEOUT)));
        if transient && self.attempts > 0 && self.idempotent.contains(&req.method()) {
            self.attempts -= 1;
            Some(std::future::ready(()))
        } else {
            None
        }
    }

    fn clone_request(&mut self, req: &Request) -> Option<Request> {
        let mut copy = Request::from_parts(req.method().to_owned(), req.args().clone());
        *copy.meta_mut() = req.meta().clone();
        Some(copy)
    }
}

/// What the fixture's `note(task, i)` notifications delivered, per task, in arrival order.
type Notes = Arc<Mutex<Vec<Vec<u32>>>>;

/// A server whose `flaky` and `charge` methods are shed twice, then succeed, and whose
/// `note(task, i)` notifications are recorded.
async fn client_side_fixture() -> (tempfile::TempDir, Connection, Arc<Gauge>, Notes) {
    let (dir, path) = socket_path();
    let gauge = Arc::new(Gauge::default());
    let notes: Notes = Arc::new(Mutex::new(vec![Vec::new(); 8]));
    let failures = Arc::new(Mutex::new(std::collections::HashMap::<String, u32>::new()));
    let shed_twice = move |method: &'static str| {
        let failures = failures.clone();
        move || {
            let mut failures = failures.lock().unwrap();
            let count = failures.entry(method.to_owned()).or_default();
            *count += 1;
            let result = if *count <= 2 {
                Err(diarrhoea::layer::overloaded("test limit"))
            } else {
                Ok(*count)
            };
            async move { result }
        }
    };
    let router = {
        let (gauge, notes) = (gauge.clone(), notes.clone());
        test_router()
            .route("note", move |t: usize, i: u32| {
                notes.lock().unwrap()[t].push(i);
                async {}
            })
            .route("flaky", shed_twice("flaky"))
            .route("charge", shed_twice("charge"))
            .route("slow", move |ms: u64| {
                let guard = gauge.enter();
                async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    drop(guard);
                    ms
                }
            })
    };
    tokio::spawn(serve(UnixListener::bind(&path).unwrap(), router).into_future());
    let conn = Connection::connect(&path).await.unwrap();
    (dir, conn, gauge, notes)
}

#[tokio::test]
async fn client_side_timeout_and_retry_for_idempotent_methods() {
    let (_dir, conn, _, _) = client_side_fixture().await;

    // Timeout: the call fails locally with tower's `Elapsed`.
    let err = ServiceBuilder::new()
        .timeout(Duration::from_millis(100))
        .service(conn.caller())
        .oneshot(Request::new("sleep", (60_000,)).unwrap())
        .await
        .unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");

    // Retry: an idempotent method is retried until it succeeds...
    let policy = RetryIdempotent {
        idempotent: &["flaky"],
        attempts: 3,
    };
    let reply = Retry::new(policy.clone(), conn.caller())
        .oneshot(Request::new("flaky", ()).unwrap())
        .await
        .unwrap();
    assert_eq!(reply.deserialize::<u32>().unwrap(), 3, "third attempt");
    // ...a method that is not idempotent is not.
    let err = Retry::new(policy, conn.caller())
        .oneshot(Request::new("charge", ()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(code::OVERLOADED));
    assert_eq!(conn.pending_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_concurrency_limit_rate_limit_and_buffer() {
    let (_dir, conn, gauge, notes) = client_side_fixture().await;

    // ConcurrencyLimit behind a Buffer, shared by 40 tasks: at most 4 calls in flight.
    let calls = ServiceBuilder::new()
        .layer(TraceLayer::outgoing().connection_id(conn.id()))
        .buffer(64)
        .concurrency_limit(4)
        .service(conn.caller());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let calls = calls.clone();
        tasks.spawn(calls.oneshot(Request::new("slow", (5,)).unwrap()));
    }
    while let Some(reply) = within("40 limited calls", tasks.join_next()).await {
        assert_eq!(reply.unwrap().unwrap().deserialize::<u64>().unwrap(), 5);
    }
    assert!(gauge.max() <= 4, "{} calls in flight", gauge.max());

    // RateLimit: 5 calls a minute, then `poll_ready` waits.
    let mut limited = RateLimit::new(
        conn.caller(),
        tower::limit::rate::Rate::new(5, Duration::from_secs(60)),
    );
    for i in 0..5 {
        let reply = limited
            .ready()
            .await
            .unwrap()
            .call(Request::new("add", (i, 1)).unwrap())
            .await
            .unwrap();
        assert_eq!(reply.deserialize::<i64>().unwrap(), i + 1);
    }
    let sixth = std::future::poll_fn(|cx| Poll::Ready(limited.poll_ready(cx).is_pending())).await;
    assert!(sixth, "the sixth call must wait for the rate");

    // Buffer around the poster: many tasks, one ordered stream of notifications per task.
    let poster = ServiceBuilder::new().buffer(16).service(conn.poster());
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8usize {
        let poster = poster.clone();
        tasks.spawn(async move {
            for i in 0..100u32 {
                poster
                    .clone()
                    .oneshot(Request::new("note", (t, i)).unwrap())
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(done) = within("buffered notifications", tasks.join_next()).await {
        done.unwrap();
    }
    // Notifications are handled in wire order before a later call: after this reply, the
    // server has seen all 800.
    let sum: i64 = conn.call("add", (20, 22)).await.unwrap();
    assert_eq!(sum, 42);
    let notes = notes.lock().unwrap();
    for (t, seen) in notes.iter().enumerate() {
        assert!(
            seen.iter().copied().eq(0..100),
            "task {t}'s notifications arrived as {seen:?}"
        );
    }
}
