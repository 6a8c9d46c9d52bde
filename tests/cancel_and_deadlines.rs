//! `$/cancel` and deadlines, both ways, over real sockets.

mod common;

use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use diarrhoea::{code, Config, Connection, PeerInfo, Request, Router};
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

async fn raw_setup(config: Config, router: Router) -> (TestServer, RawPeer) {
    let server = TestServer::builder().config(config).start(router);
    let peer = RawPeer::connect(server.path()).await;
    (server, peer)
}

#[tokio::test]
async fn a_running_request_is_cancelled_by_the_peer() {
    let (router, started) = test_router_telling_when_started();
    let (_server, mut peer) = raw_setup(Config::new(), router).await;
    peer.send("[\"started_sleep\",[60000],1]\n").await;
    within("the handler to start", started.notified()).await;
    peer.send("[\"$/cancel\",[1]]\n").await;
    assert_eq!(
        peer.recv().await,
        json!([1, null, {"code": code::CANCELLED, "message": "cancelled by the caller"}])
    );
    // Cancelling it again, or an id never seen, is ignored.
    peer.send("[\"$/cancel\",[1]]\n[\"$/cancel\",[999]]\n[\"add\",[1,1],2]\n")
        .await;
    assert_eq!(peer.recv().await, json!([2, 2]));
}

#[tokio::test]
async fn a_queued_request_is_answered_cancelled_at_once() {
    let config = Config::new().max_concurrent_requests(1);
    let (router, started) = test_router_telling_when_started();
    let (_server, mut peer) = raw_setup(config, router).await;
    // Request 1 holds the only permit; request 2 waits behind it. Both are read (and request
    // 2 queued) before the `$/cancel` that follows them on the wire.
    peer.send("[\"started_sleep\",[60000],1]\n[\"add\",[1,2],2]\n")
        .await;
    within("request 1 to start", started.notified()).await;
    peer.send("[\"$/cancel\",[2]]\n").await;
    let reply = peer.recv().await;
    assert_eq!(
        (reply[0].as_u64(), reply[2]["code"].as_i64()),
        (Some(2), Some(code::CANCELLED))
    );
    peer.send("[\"$/cancel\",[1]]\n").await;
    assert_eq!(peer.recv().await[2]["code"], code::CANCELLED);
    // Request 2 was never run: the next reply is for request 3.
    peer.send("[\"add\",[2,2],3]\n").await;
    assert_eq!(peer.recv().await, json!([3, 4]));
}

/// Sets a flag when the handler's future is dropped, and sees the token fire for work that
/// outlives it.
struct OnDrop(Arc<AtomicBool>, CancellationToken, Arc<AtomicBool>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
        self.2.store(self.1.is_cancelled(), Ordering::SeqCst);
    }
}

/// A router whose `wait` handler never finishes on its own; `started` gets a permit each time
/// one starts.
fn waiting_router(
    dropped: Arc<AtomicBool>,
    token_fired: Arc<AtomicBool>,
    started: Arc<Notify>,
) -> Router {
    test_router().route("wait", move |token: CancellationToken| {
        let guard = OnDrop(dropped.clone(), token, token_fired.clone());
        started.notify_one();
        async move {
            let _guard = guard;
            std::future::pending::<()>().await
        }
    })
}

async fn eventually(what: &str, flag: &AtomicBool) {
    within(what, async {
        while !flag.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

#[tokio::test]
async fn dropping_a_call_cancels_the_handler_at_the_peer() {
    let (dropped, token_fired, started) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(Notify::new()),
    );
    let server = TestServer::start(waiting_router(
        dropped.clone(),
        token_fired.clone(),
        started.clone(),
    ));
    let client = Connection::connect(server.path()).await.unwrap();
    {
        let mut call = pin!(client.call::<()>("wait", ()));
        // Dropped once the handler runs (dropped earlier, the `$/cancel` would find it queued
        // and it would never be built).
        within("the handler to start", async {
            tokio::select! {
                reply = &mut call => panic!("`wait` answered: {reply:?}"),
                _ = started.notified() => {}
            }
        })
        .await;
    }
    eventually("the handler's future to be dropped", &dropped).await;
    assert!(
        token_fired.load(Ordering::SeqCst),
        "the handler's token was not cancelled"
    );
    assert_eq!(client.pending_calls(), 0);
}

#[tokio::test]
async fn the_peers_timeout_ms_is_honoured() {
    let (_server, mut peer) = raw_setup(Config::new(), test_router()).await;
    peer.send("[\"sleep\",[60000],1,{\"timeout_ms\":50}]\n")
        .await;
    assert_eq!(peer.recv().await[2]["code"], code::TIMEOUT);
    // A generous remote deadline does not stretch a short local one, and vice versa.
    peer.send("[\"sleep\",[10],2,{\"timeout_ms\":60000}]\n")
        .await;
    assert_eq!(peer.recv().await, json!([2, 10]));
}

/// In memory with paused time: the two frames are read at the same virtual instant, so both
/// deadlines are the same instant (over a socket, frames read in different timer ticks get
/// different deadlines, and request 1 could time out first, free the permit, and let request
/// 2 run).
#[tokio::test(start_paused = true)]
async fn time_waiting_for_a_permit_counts_against_the_deadline() {
    let config = Config::new()
        .max_concurrent_requests(1)
        .request_timeout(Duration::from_millis(200));
    let (_conn, mut peer) = in_memory(config, test_router());
    let sent = Instant::now();
    // The first request holds the permit past its own deadline: both expire, the second while
    // it is still waiting for the permit.
    peer.send("[\"sleep\",[60000],1]\n[\"add\",[1,1],2]\n")
        .await;
    let mut codes = [peer.recv().await, peer.recv().await];
    let waited = sent.elapsed();
    codes.sort_by_key(|r| r[0].as_u64());
    assert_eq!(codes[0][2]["code"], code::TIMEOUT, "{}", codes[0]);
    assert_eq!(codes[1][2]["code"], code::TIMEOUT, "{}", codes[1]);
    // Virtual time: exact, whatever the machine's load.
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_millis(250),
        "answered after {waited:?}"
    );
    // The service keeps working.
    peer.send("[\"add\",[1,1],3]\n").await;
    assert_eq!(peer.recv().await, json!([3, 2]));
}

/// A request's deadline is the earlier of `Config::request_timeout` and the peer's
/// `meta.timeout_ms`, whichever of the two is the shorter (paused time: exact).
#[tokio::test(start_paused = true)]
async fn the_earlier_of_request_timeout_and_timeout_ms_wins() {
    let config = Config::new().request_timeout(Duration::from_secs(1));
    let (_conn, mut peer) = in_memory(config, test_router());
    let cases = [
        // The peer's deadline is the earlier.
        ("{\"timeout_ms\":100}", Duration::from_millis(100)),
        // This side's is.
        ("{\"timeout_ms\":10000}", Duration::from_secs(1)),
        // Only this side's.
        ("{}", Duration::from_secs(1)),
    ];
    for (id, (meta, deadline)) in cases.into_iter().enumerate() {
        let sent = Instant::now();
        peer.send(format!("[\"sleep\",[60000],{id},{meta}]\n"))
            .await;
        let reply = peer.recv().await;
        let waited = sent.elapsed();
        assert_eq!(reply[0], id, "{meta}: {reply}");
        assert_eq!(reply[2]["code"], code::TIMEOUT, "{meta}: {reply}");
        assert!(
            waited >= deadline && waited < deadline + Duration::from_millis(50),
            "meta {meta}: answered after {waited:?}, expected {deadline:?}"
        );
    }
    // Within both deadlines, the request is answered.
    peer.send("[\"sleep\",[10],9,{\"timeout_ms\":60000}]\n")
        .await;
    assert_eq!(peer.recv().await, json!([9, 10]));
}

/// The deadline of an outgoing call is on the wire as `meta.timeout_ms`: an explicit timeout,
/// one set on a `Caller` request, and one inherited from the request being served (paused
/// time, so nothing of it is spent before it is sent).
#[tokio::test(start_paused = true)]
async fn a_calls_deadline_reaches_the_peer_as_timeout_ms() {
    let relay = Router::new().route("relay", |conn: Connection| async move {
        conn.call::<i64>("m", ()).await
    });
    let (client, mut peer) = in_memory(Config::new(), relay);
    // Answers the next call `m` with 1; returns its `meta` (null when absent).
    async fn answer_m(peer: &mut RawPeer) -> serde_json::Value {
        let request = peer.recv().await;
        assert_eq!(request[0], "m", "{request}");
        let id = request[2].as_u64().unwrap();
        peer.send(format!("[{id},1]\n")).await;
        request.get(3).cloned().unwrap_or(json!(null))
    }

    let call = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .call_with_timeout::<i64>("m", (), Duration::from_millis(250))
                .await
        }
    });
    assert_eq!(answer_m(&mut peer).await, json!({"timeout_ms": 250}));
    assert_eq!(within("the call", call).await.unwrap().unwrap(), 1);

    let mut req = Request::new("m", ()).unwrap();
    req.meta_mut().timeout_ms = Some(30);
    let call = tokio::spawn(client.caller().oneshot(req));
    assert_eq!(answer_m(&mut peer).await, json!({"timeout_ms": 30}));
    within("the Caller call", call).await.unwrap().unwrap();

    // No deadline: no meta.
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.call::<i64>("m", ()).await }
    });
    assert_eq!(answer_m(&mut peer).await, json!(null));
    within("the call", call).await.unwrap().unwrap();

    // Inherited: the peer calls `relay` with 800 ms; `relay` calls `m` with what is left.
    peer.send("[\"relay\",[],7,{\"timeout_ms\":800}]\n").await;
    assert_eq!(answer_m(&mut peer).await, json!({"timeout_ms": 800}));
    assert_eq!(peer.recv().await, json!([7, 1]));
}

#[tokio::test]
async fn a_call_with_a_timeout_fails_locally_and_tells_the_peer() {
    let (dropped, token_fired) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let server = TestServer::start(waiting_router(
        dropped.clone(),
        token_fired,
        Arc::new(Notify::new()),
    ));
    let client = Connection::connect(server.path()).await.unwrap();
    let err = client
        .call_with_timeout::<()>("wait", (), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(err.code(), Some(code::TIMEOUT));
    assert_eq!(client.pending_calls(), 0);
    // The peer got timeout_ms too: its deadline or the $/cancel, whichever came first, ended it.
    eventually("the peer to drop the handler", &dropped).await;

    // The Caller service honours meta.timeout_ms the same way.
    let mut req = Request::new("sleep", (60_000,)).unwrap();
    req.meta_mut().timeout_ms = Some(30);
    let err = client.caller().oneshot(req).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // And a call that beats its deadline succeeds.
    assert_eq!(
        client
            .call_with_timeout::<i64>("add", (1, 2), Duration::from_secs(5))
            .await
            .unwrap(),
        3
    );
}

#[tokio::test]
async fn requests_carry_the_peers_identity() {
    let router = Router::new().route("whoami", |peer: PeerInfo| async move {
        let cred = peer
            .credentials()
            .expect("credentials of a Unix socket peer");
        diarrhoea::Json((cred.uid, cred.pid))
    });
    let server = TestServer::start(router);
    let client = Connection::connect(server.path()).await.unwrap();
    let (uid, pid): (u32, Option<i32>) = client.call("whoami", ()).await.unwrap();
    let me = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    assert_eq!(uid, me);
    assert_eq!(pid, Some(std::process::id() as i32));
}

#[tokio::test]
async fn a_late_reply_to_a_call_given_up_on_is_not_a_warning() {
    let (_dir, path) = socket_path();
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (accepted, client) = tokio::join!(listener.accept(), Connection::connect(&path));
    let mut peer = RawPeer::over(accepted.unwrap().0);
    let client = client.unwrap();
    let mut events = client.events();
    let err = client
        .call_with_timeout::<i64>("slow", (), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let request = peer.recv().await;
    let id = request[2].as_u64().unwrap();
    assert_eq!(peer.recv().await, json!(["$/cancel", [id]]));
    // The reply crosses the cancel: expected, so no warning. An id never used is one, and
    // it is the first event (`next_event` skips nothing).
    peer.send(format!("[{id},1]\n[999999,1]\n")).await;
    let event = next_event(&mut events, "a warning", |e| {
        matches!(e, diarrhoea::Event::Warning(_))
    })
    .await;
    assert!(
        describe_event(&event).contains("999999"),
        "{}",
        describe_event(&event)
    );
}

#[tokio::test]
async fn a_call_dropped_after_its_reply_came_sends_no_cancel() {
    let (_dir, path) = socket_path();
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (accepted, client) = tokio::join!(listener.accept(), Connection::connect(&path));
    let mut peer = RawPeer::over(accepted.unwrap().0);
    let client = client.unwrap();
    let mut caller = client.caller();
    let reply = caller
        .ready()
        .await
        .unwrap()
        .call(Request::new("m", ()).unwrap());
    let request = peer.recv().await;
    let id = request[2].as_u64().unwrap();
    peer.send(format!("[{id},1]\n")).await;
    // The reply is stored for the call (no longer waiting), never taken.
    within("the reply to arrive", async {
        while client.pending_calls() != 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    drop(reply);
    // The peer answered: nothing to cancel. The next line it reads is this notification.
    client.post_message("after", ()).await.unwrap();
    assert_eq!(peer.recv().await, json!(["after", []]));
}

#[tokio::test]
async fn a_call_never_sent_sends_no_cancel() {
    let (_dir, path) = socket_path();
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let client = Connection::builder().config(Config::new().max_frame_size(64));
    let (accepted, client) = tokio::join!(listener.accept(), client.connect(&path));
    let mut peer = RawPeer::over(accepted.unwrap().0);
    let client = client.unwrap();
    // Too large to send: it fails here, and the peer never hears of it.
    let err = client
        .call::<()>("m", ("x".repeat(100),))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(diarrhoea::code::FRAME_TOO_LARGE), "{err}");
    assert_eq!(client.pending_calls(), 0);
    client.post_message("after", ()).await.unwrap();
    assert_eq!(peer.recv().await, json!(["after", []]));
}
