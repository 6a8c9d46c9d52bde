//! The limits that protect a server from peers: connections, stalled frames, unread output.

mod common;

use std::time::Duration;

use common::*;
use diarrhoea::{code, Client, Config, Event, RpcError, Server};
use serde_json::json;
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn connections_over_the_limit_get_a_connection_error_and_are_closed() {
    let (_dir, path) = socket_path();
    let server = Server::builder().max_connections(2).bind(&path).unwrap();
    let first = Client::connect(&path);
    let (a, first) = tokio::join!(server.accept(test_router()), first);
    let second = Client::connect(&path);
    let (b, second) = tokio::join!(server.accept(test_router()), second);
    let (_a, _b, first, _second) = (a.unwrap(), b.unwrap(), first.unwrap(), second.unwrap());
    assert_eq!(server.connections(), 2);

    // The third is refused by the accept loop itself.
    let accepting = tokio::spawn(async move {
        let conn = server.accept(test_router()).await;
        (server, conn)
    });
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

    // A connection that leaves frees its place.
    first.close();
    within("first closed", first.closed()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fourth = Client::connect(&path).await.unwrap();
    let (server, accepted) = within("accept after a place freed", accepting)
        .await
        .unwrap();
    accepted.unwrap();
    assert_eq!(fourth.call::<i64>("add", (1, 1)).await.unwrap(), 2);
    drop(server);
}

#[tokio::test]
async fn a_peer_that_stalls_mid_line_is_closed() {
    let (_dir, path) = socket_path();
    let config = Config::new().partial_frame_timeout(Duration::from_millis(200));
    let server = Server::builder().config(config).bind(&path).unwrap();
    let (conn, peer) = tokio::join!(server.accept(test_router()), RawPeer::connect(&path));
    let (conn, mut peer) = (conn.unwrap(), peer);
    let mut events = conn.events();
    // Idle between lines is fine.
    peer.send("[\"add\",[1,1],1]\n").await;
    assert_eq!(peer.recv().await, json!([1, 2]));
    tokio::time::sleep(Duration::from_millis(400)).await;
    peer.send("[\"add\",[2,2],2]\n").await;
    assert_eq!(peer.recv().await, json!([2, 4]));
    // Half a line, then silence.
    peer.send("[\"add\",[3,").await;
    let bye = peer.recv().await;
    assert_eq!(bye[2]["code"], code::INVALID_FRAME);
    assert!(
        bye[2]["message"]
            .as_str()
            .unwrap()
            .contains("partial frame timeout"),
        "{bye}"
    );
    next_event(&mut events, "close", |e| matches!(e, Event::Close)).await;
}

#[tokio::test]
async fn close_with_error_answers_calls_in_flight_first() {
    let (_dir, path) = socket_path();
    let server = Server::bind(&path).unwrap();
    let (conn, client) = tokio::join!(server.accept(test_router()), Client::connect(&path));
    let (conn, client) = (conn.unwrap(), client.unwrap());
    let mut events = client.events();
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.call::<u64>("sleep", (200,)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
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

#[tokio::test]
async fn a_peer_that_does_not_read_holds_senders_back_by_bytes() {
    let (_dir, path) = socket_path();
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    // Plenty of frame slots: only the byte budget can stop the sender early.
    let config = Config::new().outgoing_queue(4096).outgoing_buffer(1 << 20);
    let client = Client::builder().config(config).connect(&path);
    let (accepted, client) = tokio::join!(listener.accept(), client);
    let (mut silent, client) = (accepted.unwrap().0, client.unwrap());
    let big = "x".repeat(64 * 1024);
    let mut sent = 0;
    while sent < 1000 {
        let post = client.post_message("big", (&big,));
        if tokio::time::timeout(Duration::from_millis(200), post)
            .await
            .is_err()
        {
            break;
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
