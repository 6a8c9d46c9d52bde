//! The limits that protect a server from peers: connections, stalled frames, unread output.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use diarrhoea::{code, Config, Connection, Event, RpcError};
use serde_json::json;
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn connections_over_the_limit_get_a_connection_error_and_are_closed() {
    let mut server = TestServer::builder()
        .max_connections(2)
        .start(test_router());
    let path = server.path().to_owned();
    let first = Connection::connect(&path).await.unwrap();
    let _a = server.accept().await;
    let _second = Connection::connect(&path).await.unwrap();
    let _b = server.accept().await;
    assert_eq!(server.connections(), 2);

    // The third is refused by the accept loop itself.
    let mut third = RawPeer::connect(&path).await;
    let refusal = third.recv().await;
    assert_eq!(refusal[0], serde_json::Value::Null);
    assert_eq!(refusal[2]["code"], code::OVERLOADED);
    assert!(
        refusal[2]["message"]
            .as_str()
            .unwrap()
            .contains("2 connections"),
        "{refusal}"
    );
    assert!(within("EOF", third.lines.next_line())
        .await
        .unwrap()
        .is_none());
    assert_eq!(server.connections(), 2, "the refused one was never served");

    // A connection that leaves frees its place.
    first.close();
    within("first closed", first.closed()).await;
    // The server's side closes too; on this single-threaded runtime its place in the limit is
    // given back before the count drops.
    server.wait_for_connections(1).await;
    let fourth = Connection::connect(&path).await.unwrap();
    let _d = server.accept().await;
    assert_eq!(fourth.call::<i64>("add", (1, 1)).await.unwrap(), 2);
    assert_eq!(server.connections(), 2);
}

/// In memory with paused time: the idle wait and the stall are virtual time, exact and
/// instant, whatever the machine's load.
#[tokio::test(start_paused = true)]
async fn a_peer_that_stalls_mid_line_is_closed() {
    let config = Config::new().partial_frame_timeout(Duration::from_millis(200));
    let (conn, mut peer) = in_memory(config, test_router());
    let mut events = conn.events();
    // Idle between lines is fine, for any time.
    peer.send("[\"add\",[1,1],1]\n").await;
    assert_eq!(peer.recv().await, json!([1, 2]));
    tokio::time::sleep(Duration::from_secs(60)).await;
    peer.send("[\"add\",[2,2],2]\n").await;
    assert_eq!(peer.recv().await, json!([2, 4]));
    // Half a line, then silence: closed after the timeout, not before.
    let stalled = tokio::time::Instant::now();
    peer.send("[\"add\",[3,").await;
    let bye = peer.recv().await;
    let waited = stalled.elapsed();
    assert_eq!(bye[0], serde_json::Value::Null, "{bye}");
    assert_eq!(bye[2]["code"], code::INVALID_FRAME);
    assert!(
        bye[2]["message"]
            .as_str()
            .unwrap()
            .contains("partial frame timeout"),
        "{bye}"
    );
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_millis(250),
        "closed {waited:?} after the stall"
    );
    next_event(
        &mut events,
        "the partial frame timeout",
        |e| matches!(e, Event::Error(e) if e.code() == Some(code::INVALID_FRAME)),
    )
    .await;
    next_event(&mut events, "close", |e| matches!(e, Event::Close)).await;
    assert!(within("EOF", peer.lines.next_line())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn close_with_error_answers_calls_in_flight_first() {
    let (router, started) = test_router_telling_when_started();
    let mut server = TestServer::start(router);
    let client = Connection::connect(server.path()).await.unwrap();
    let conn = server.accept().await;
    let mut events = client.events();
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.call::<u64>("started_sleep", (200,)).await }
    });
    within("the call to start", started.notified()).await;
    conn.close_with_error(RpcError::new(7, "go away"));
    // New calls are refused with the reason; the one in flight is answered.
    let refused = client.call::<i64>("add", (1, 1)).await.unwrap_err();
    assert_eq!(refused.code(), Some(7), "{refused}");
    assert_eq!(within("in-flight call", slow).await.unwrap().unwrap(), 200);
    next_event(
        &mut events,
        "the connection error",
        |e| matches!(e, Event::Error(e) if e.code() == Some(7)),
    )
    .await;
    within("closed", client.closed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_with_error_refuses_new_calls_while_the_call_in_flight_still_runs() {
    // The refusal comes from the draining connection at once, not from the connection error
    // sent once it ends: the call in flight is held until the refusal has arrived.
    let started = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let router = test_router().route("hold", {
        let (started, release) = (started.clone(), release.clone());
        move || {
            started.notify_one();
            let release = release.clone();
            async move {
                release.notified().await;
                1
            }
        }
    });
    let mut server = TestServer::start(router);
    let client = Connection::connect(server.path()).await.unwrap();
    let conn = server.accept().await;
    let held = tokio::spawn({
        let client = client.clone();
        async move { client.call::<u64>("hold", ()).await }
    });
    within("the call to start", started.notified()).await;
    conn.close_with_error(RpcError::new(7, "go away"));
    let refused = within("the refusal", client.call::<i64>("add", (1, 1)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(7), "{refused}");
    assert!(!held.is_finished(), "the call in flight is still held");
    release.notify_one();
    assert_eq!(within("the held call", held).await.unwrap().unwrap(), 1);
    within("closed", client.closed()).await;
}

#[tokio::test]
async fn a_peer_that_does_not_read_holds_senders_back_by_bytes() {
    let (_dir, path) = socket_path();
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    // Plenty of frame slots: only the byte budget can stop the sender early.
    let config = Config::new().outgoing_queue(4096).outgoing_buffer(1 << 20);
    let client = Connection::builder().config(config).connect(&path);
    let (accepted, client) = tokio::join!(listener.accept(), client);
    let (mut silent, client) = (accepted.unwrap().0, client.unwrap());
    let big = "x".repeat(64 * 1024);
    let mut sent = 0;
    while sent < 1000 {
        // Held back: the post is still waiting after the writer (on this runtime) has had
        // every chance to move frames to the socket, which only the peer reading frees.
        let post = std::pin::pin!(client.post_message("big", (&big,)));
        match unless_stuck(post).await {
            Some(posted) => posted.unwrap(),
            None => break,
        }
        sent += 1;
    }
    // 1 MiB of budget, the writer's buffer and the socket's: far below 4096 frames of 64 KiB.
    assert!(
        sent < 100,
        "{sent} frames of 64 KiB queued for a peer that does not read"
    );
    let mut sink = vec![0u8; 1 << 20];
    let drain = tokio::spawn(async move { while silent.read(&mut sink).await.unwrap_or(0) > 0 {} });
    within(
        "room again once the peer reads",
        client.post_message("big", (&big,)),
    )
    .await
    .unwrap();
    client.close();
    drain.abort();
}
