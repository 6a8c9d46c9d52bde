//! Calls and notifications in both directions over real Unix sockets.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use diarrhoea::{Config, Connection, Request, Router};
use tokio::sync::{mpsc, Notify};
use tower::{Service, ServiceExt};

#[tokio::test]
async fn notification_ping_gets_a_pong_notification() {
    let server = TestServer::start(test_router());
    let path = server.path();

    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = Connection::builder()
        .service(Router::new().route("pong", move |x: String, time: u64| {
            let tx = tx.clone();
            async move { tx.send((x, time)).unwrap() }
        }))
        .connect(path)
        .await
        .unwrap();
    client
        .post_message("ping", ("flood1", 1732400000000u64))
        .await
        .unwrap();
    let pong = within("pong", rx.recv()).await.unwrap();
    assert_eq!(pong, ("flood1".to_owned(), 1732400000000));
}

#[tokio::test]
async fn calls_return_results_and_typed_errors() {
    let server = TestServer::start(test_router());
    let path = server.path();
    let client = Connection::connect(path).await.unwrap();

    assert_eq!(client.call::<i64>("add", (2, 3)).await.unwrap(), 5);
    let echoed: (String, Vec<u8>, Option<bool>) = client
        .call("echo", ("a", [1, 2], None::<bool>))
        .await
        .unwrap();
    assert_eq!(echoed, ("a".to_owned(), vec![1, 2], None));

    let err = client.call::<()>("fail", ()).await.unwrap_err();
    assert!(err.is_remote(), "{err}");
    assert_eq!(err.remote().unwrap().code, 42);
    assert_eq!(err.remote().unwrap().message, "as asked");

    // The result exists but is not of the type asked for.
    let err = client.call::<String>("add", (1, 1)).await.unwrap_err();
    assert!(err.is_serde(), "{err}");
}

#[tokio::test]
async fn the_server_calls_the_client_back_on_the_same_connection() {
    let server = TestServer::start(test_router());
    let path = server.path();
    let client = Connection::builder()
        .service(Router::new().route("double", |n: i64| async move { n * 2 }))
        .connect(path)
        .await
        .unwrap();
    assert_eq!(client.call::<i64>("ask", (21,)).await.unwrap(), 42);
}

#[tokio::test]
async fn a_server_posts_and_calls_on_a_connection_it_accepted() {
    let mut server = TestServer::start(Router::new());
    let client = Connection::builder()
        .service(Router::new().route("whoami", || async { "client" }))
        .connect(server.path())
        .await
        .unwrap();
    let accepted = server.accept().await;
    assert_eq!(
        accepted.call::<String>("whoami", ()).await.unwrap(),
        "client"
    );

    // Node parity: bind per connection, after the fact.
    accepted.set_service(Router::new().route("late", || async { 7 }));
    assert_eq!(client.call::<i32>("late", ()).await.unwrap(), 7);
    assert!(accepted.peer().credentials().is_some());
}

#[tokio::test]
async fn ten_thousand_notifications_are_handled_in_wire_order() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let router = Router::new().route("n", move |i: u32| {
        let record = record.clone();
        async move {
            // Yield so that a dispatcher that ran notifications concurrently would reorder.
            if i.is_multiple_of(3) {
                tokio::task::yield_now().await;
            }
            record.lock().unwrap().push(i);
        }
    });
    let server = TestServer::start(router);
    let path = server.path();
    let client = Connection::connect(path).await.unwrap();
    for i in 0..10_000u32 {
        client.post_message("n", (i,)).await.unwrap();
    }
    // A call after the burst: the notifications before it were dispatched first.
    client.call::<()>("nope", ()).await.unwrap_err();
    within("all notifications", async {
        while seen.lock().unwrap().len() < 10_000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(seen.lock().unwrap().iter().copied().eq(0..10_000));
}

#[tokio::test]
async fn replies_reach_a_handler_while_the_peer_floods() {
    // Each `slow` notification takes at least a millisecond, in wire order: the server's
    // dispatcher is busy for seconds with the flood below.
    let handled = Arc::new(Mutex::new(0u32));
    let count = handled.clone();
    let router = test_router().route("slow", move || {
        let count = count.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            *count.lock().unwrap() += 1;
        }
    });
    let server = TestServer::start(router);
    let path = server.path();
    // The client answers `double` only once the flood is on the wire ahead of its reply.
    let (asked, flooded) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let client = Connection::builder()
        .service(Router::new().route("double", {
            let (asked, flooded) = (asked.clone(), flooded.clone());
            move |n: i64| {
                let (asked, flooded) = (asked.clone(), flooded.clone());
                async move {
                    asked.notify_one();
                    flooded.notified().await;
                    n * 2
                }
            }
        }))
        .connect(path)
        .await
        .unwrap();
    let ask = tokio::spawn({
        let client = client.clone();
        async move { client.call::<i64>("ask", (21,)).await }
    });
    within("the server to call `double`", asked.notified()).await;
    for _ in 0..5_000 {
        client.post_message("slow", ()).await.unwrap();
    }
    flooded.notify_one();
    assert_eq!(
        within("ask during the flood", ask).await.unwrap().unwrap(),
        42
    );
    // The reply overtook the queued notifications instead of waiting behind them.
    let handled = *handled.lock().unwrap();
    assert!(
        handled < 5_000,
        "the reply waited for all {handled} notifications"
    );
    client.close();
}

#[tokio::test]
async fn many_calls_in_flight_on_one_connection() {
    let server = TestServer::start(test_router());
    let path = server.path();
    let client = Connection::connect(path).await.unwrap();
    let calls = (0..2_000i64).map(|i| {
        let client = client.clone();
        tokio::spawn(async move { client.call::<i64>("add", (i, i)).await.unwrap() == 2 * i })
    });
    for call in calls {
        assert!(call.await.unwrap());
    }
    assert_eq!(client.pending_calls(), 0);
}

#[tokio::test]
async fn caller_and_poster_are_tower_services() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let router = test_router().route("note", move |s: String| {
        let tx = tx.clone();
        async move { tx.send(s).unwrap() }
    });
    let server = TestServer::start(router);
    let path = server.path();
    let client = Connection::connect(path).await.unwrap();

    let mut caller = tower::ServiceBuilder::new()
        .timeout(Duration::from_secs(5))
        .concurrency_limit(4)
        .service(client.caller());
    let reply = caller
        .ready()
        .await
        .unwrap()
        .call(Request::new("add", (40, 2)).unwrap())
        .await
        .unwrap();
    assert_eq!(reply.deserialize::<i64>().unwrap(), 42);

    // A deadline shorter than the handler: tower's Timeout fails the call locally.
    let mut impatient = tower::timeout::Timeout::new(client.caller(), Duration::from_millis(20));
    let err = impatient
        .ready()
        .await
        .unwrap()
        .call(Request::new("sleep", (60_000,)).unwrap())
        .await
        .unwrap_err();
    assert!(err.is::<tower::timeout::error::Elapsed>());

    client
        .poster()
        .oneshot(Request::new("note", ("hi",)).unwrap())
        .await
        .unwrap();
    assert_eq!(within("note", rx.recv()).await.unwrap(), "hi");
}

#[tokio::test]
async fn poll_ready_is_pending_while_the_outgoing_queue_is_full() {
    let (_dir, path) = socket_path();
    // A peer that accepts and never reads.
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let client = Connection::builder()
        .config(Config::new().outgoing_queue(2))
        .connect(&path);
    let (accepted, client) = tokio::join!(listener.accept(), client);
    let (mut silent_peer, client) = (accepted.unwrap().0, client.unwrap());

    let mut poster = client.poster();
    let big = "x".repeat(64 * 1024);
    let mut blocked_after = None;
    for sent in 0..2_000 {
        // Blocked: still pending after the writer (on this runtime) has had every chance
        // to move frames to the socket, which only the peer reading could make room in.
        let Some(ready) = unless_stuck(std::pin::pin!(poster.ready())).await else {
            blocked_after = Some(sent);
            break;
        };
        ready
            .unwrap()
            .call(Request::new("big", (&big,)).unwrap())
            .await
            .unwrap();
    }
    let sent = blocked_after.expect("poll_ready never became pending");
    // Socket buffers hold some frames; the queue holds two more; nothing beyond that.
    assert!(
        sent < 200,
        "queued {sent} frames of 64 KiB before backpressure"
    );

    // Once the peer reads, readiness comes back.
    let drain = tokio::spawn(async move {
        let mut sink = vec![0u8; 1 << 20];
        use tokio::io::AsyncReadExt;
        while silent_peer.read(&mut sink).await.unwrap_or(0) > 0 {}
    });
    within("readiness after the peer reads", poster.ready())
        .await
        .unwrap();
    client.close();
    drain.abort();
}

#[tokio::test]
async fn end_flushes_queued_frames_then_closes_both_sides() {
    let seen = Arc::new(Mutex::new(0u32));
    let count = seen.clone();
    let router = Router::new().route("n", move || {
        let count = count.clone();
        async move { *count.lock().unwrap() += 1 }
    });
    let mut server = TestServer::start(router);
    let client = Connection::connect(server.path()).await.unwrap();
    let accepted = server.accept().await;
    for _ in 0..1000 {
        client.post_message("n", ()).await.unwrap();
    }
    client.end();
    assert!(client.post_message("n", ()).await.unwrap_err().is_closed());
    within("server side closed", accepted.closed()).await;
    within("client side closed", client.closed()).await;
    assert_eq!(*seen.lock().unwrap(), 1000);
}

#[tokio::test]
async fn pending_calls_fail_with_closed_when_the_peer_goes_away() {
    let (router, started) = test_router_telling_when_started();
    let mut server = TestServer::start(router);
    let client = Connection::connect(server.path()).await.unwrap();
    let accepted = server.accept().await;
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.call::<u64>("started_sleep", (60_000,)).await }
    });
    within("the call to start", started.notified()).await;
    assert_eq!(client.pending_calls(), 1);
    accepted.close();
    let err = within("the pending call", call).await.unwrap().unwrap_err();
    assert!(err.is_closed(), "{err}");
    assert_eq!(client.pending_calls(), 0);
    within("client closed", client.closed()).await;
    assert!(client
        .call::<u64>("add", (1, 1))
        .await
        .unwrap_err()
        .is_closed());
}

#[tokio::test]
async fn dropping_a_call_forgets_it() {
    let server = TestServer::start(test_router());
    let path = server.path();
    let client = Connection::connect(path).await.unwrap();
    for _ in 0..100 {
        let call = client.call::<u64>("sleep", (10_000,));
        assert!(tokio::time::timeout(Duration::from_millis(1), call)
            .await
            .is_err());
    }
    assert_eq!(client.pending_calls(), 0);
}

#[tokio::test]
async fn oversized_outgoing_frames_fail_before_they_are_sent() {
    let server = TestServer::start(test_router());
    let path = server.path();
    let client = Connection::builder()
        .config(Config::new().max_frame_size(1024))
        .connect(path)
        .await
        .unwrap();
    let err = client
        .call::<()>("echo", ("x".repeat(2048),))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(diarrhoea::code::FRAME_TOO_LARGE), "{err}");
    let err = client
        .post_message("echo", ("x".repeat(2048),))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(diarrhoea::code::FRAME_TOO_LARGE), "{err}");
    assert_eq!(
        client.pending_calls(),
        0,
        "a call never sent is not waiting"
    );
    assert_eq!(client.call::<i64>("add", (1, 2)).await.unwrap(), 3);
}

#[tokio::test]
async fn a_reply_or_a_poster_frame_too_large_for_the_peer_is_refused() {
    // The server sends frames of at most 1024 bytes: a longer reply becomes an error reply.
    let router = Router::new().route("big", |n: usize| async move { "x".repeat(n) });
    let (client, _server) = Connection::builder()
        .pair(
            Connection::builder()
                .config(Config::new().max_frame_size(1024))
                .service(router),
        )
        .unwrap();
    let err = client.call::<String>("big", (2048,)).await.unwrap_err();
    assert_eq!(err.code(), Some(diarrhoea::code::FRAME_TOO_LARGE), "{err}");
    assert!(error_chain(&err).contains("reply"), "{err}");
    assert_eq!(client.call::<String>("big", (10,)).await.unwrap().len(), 10);

    // The poster service refuses before anything is queued.
    let (small, _peer) = Connection::builder()
        .config(Config::new().max_frame_size(1024))
        .pair(Connection::builder())
        .unwrap();
    let mut poster = small.poster();
    let err = poster
        .ready()
        .await
        .unwrap()
        .call(Request::new("m", ("x".repeat(2048),)).unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(diarrhoea::code::FRAME_TOO_LARGE), "{err}");
}

#[tokio::test]
async fn call_ids_count_up_from_one() {
    let (near, far) = tokio::net::UnixStream::pair().unwrap();
    let client = Connection::builder().serve_connection(near);
    let mut peer = RawPeer::over(far);
    for expected in 1..=3 {
        let call = tokio::spawn({
            let client = client.clone();
            async move { client.call::<u64>("m", ()).await }
        });
        let line = peer.recv().await;
        assert_eq!(line[2], expected, "{line}");
        peer.send(format!("[{expected},{expected}]\n")).await;
        assert_eq!(call.await.unwrap().unwrap(), expected);
    }
}

#[tokio::test]
async fn a_frame_of_exactly_the_maximum_size_is_sent() {
    let server = TestServer::start(test_router());
    let client = Connection::builder()
        .config(Config::new().max_frame_size(1024))
        .connect(server.path())
        .await
        .unwrap();
    // `["echo",["` + x + `"]]`: 13 bytes around the string.
    client
        .post_message("echo", ("x".repeat(1024 - 13),))
        .await
        .expect("exactly the maximum is allowed");
    let err = client
        .post_message("echo", ("x".repeat(1024 - 12),))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(diarrhoea::code::FRAME_TOO_LARGE), "{err}");
}

#[tokio::test]
async fn args_must_be_an_array() {
    let server = TestServer::start(test_router());
    let path = server.path();
    let client: Connection = Connection::connect(path).await.unwrap();
    let err = client.post_message("ping", 5).await.unwrap_err();
    assert!(err.is_serde(), "{err}");
}
