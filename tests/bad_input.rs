//! Each row of the bad-input table: what a peer sends, what it gets, and that the connection
//! survives. The peer is a raw socket writing lines by hand.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use common::*;
use diarrhoea::{code, Config, Connection, Event, Events, Router};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

/// A server connection and a raw peer on it, with the server's events subscribed before the
/// peer writes anything. The server serves as long as the test keeps it.
async fn setup(
    router: Router,
    config: Config,
) -> (TestServer, Connection, diarrhoea::Events, RawPeer) {
    let mut server = TestServer::builder().config(config).start(router);
    let peer = RawPeer::connect(server.path()).await;
    let accepted = server.accept().await;
    let events = accepted.events();
    (server, accepted, events, peer)
}

/// A round trip: the next line must be its reply (so nothing sent before got a reply it
/// should not have). The server reports what a line caused before it reads the next one, so
/// afterwards every event of the lines before is there to be checked with `event_now`.
async fn round_trip(peer: &mut RawPeer, id: u64) {
    peer.send(format!("[\"add\",[{id},1],{id}]\n")).await;
    assert_eq!(peer.recv().await, json!([id, id + 1]));
}

/// The connection still answers, and no event is left that the test did not expect.
async fn still_answers(peer: &mut RawPeer, events: &mut Events, id: u64) {
    round_trip(peer, id).await;
    assert_no_event(events, "the rows").await;
}

#[tokio::test]
async fn a_line_that_is_not_json_is_dropped_with_an_error_event() {
    let (_server, _conn, mut events, mut peer) = setup(test_router(), Config::new()).await;
    peer.send("this is not json\n").await;
    round_trip(&mut peer, 100).await;
    event_now(
        &mut events,
        "parse error",
        is_error_with_code(code::PARSE_ERROR),
    )
    .await;
    assert_no_event(&mut events, "not JSON").await;
    peer.send("{\"an\":\"object\"}\n[1,2,3,4]\n").await;
    round_trip(&mut peer, 101).await;
    for what in ["invalid frame (an object)", "invalid frame (4 numbers)"] {
        event_now(&mut events, what, is_error_with_code(code::INVALID_FRAME)).await;
    }
    still_answers(&mut peer, &mut events, 1).await;
}

#[tokio::test]
async fn a_malformed_request_with_a_readable_id_gets_invalid_frame() {
    let (_server, _conn, mut events, mut peer) = setup(test_router(), Config::new()).await;
    peer.send("[\"echo\",5,6]\n").await;
    let reply = peer.recv().await;
    assert_eq!(reply[0], 6);
    assert_eq!(reply[1], serde_json::Value::Null);
    assert_eq!(reply[2]["code"], code::INVALID_FRAME);
    round_trip(&mut peer, 100).await;
    event_now(
        &mut events,
        "invalid frame",
        is_error_with_code(code::INVALID_FRAME),
    )
    .await;
    assert_no_event(&mut events, "args not an array").await;
    peer.send("[\"echo\",[],7,\"not an object\"]\n").await;
    assert_eq!(peer.recv().await[2]["code"], code::INVALID_FRAME);
    round_trip(&mut peer, 101).await;
    event_now(
        &mut events,
        "invalid frame (meta)",
        is_error_with_code(code::INVALID_FRAME),
    )
    .await;
    still_answers(&mut peer, &mut events, 8).await;
}

#[tokio::test]
async fn unknown_methods() {
    let (_server, _conn, mut events, mut peer) = setup(test_router(), Config::new()).await;
    // A request gets -32601, and no event: it was answered.
    peer.send("[\"nope\",[],1]\n").await;
    assert_eq!(peer.recv().await[2]["code"], code::METHOD_NOT_FOUND);
    round_trip(&mut peer, 100).await;
    assert_no_event(&mut events, "an unknown method called").await;
    // A notification without a fallback is a warning event.
    peer.send("[\"nope\",[1]]\n").await;
    round_trip(&mut peer, 101).await;
    event_now(
        &mut events,
        "warning",
        is_warning_with_code(code::METHOD_NOT_FOUND),
    )
    .await;
    assert_no_event(&mut events, "an unknown method notified").await;
    // Reserved `$/` methods are never routed; unknown ones are refused the same way.
    peer.send("[\"$/nope\",[],2]\n").await;
    assert_eq!(peer.recv().await[2]["code"], code::METHOD_NOT_FOUND);
    still_answers(&mut peer, &mut events, 3).await;
}

#[tokio::test]
async fn unknown_notifications_reach_the_catch_all() {
    let caught = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = caught.clone();
    let router = test_router().fallback(move |req_args: diarrhoea::Args| {
        let sink = sink.clone();
        async move { sink.lock().unwrap().push(req_args.get().to_owned()) }
    });
    let (_server, _conn, _events, mut peer) = setup(router, Config::new()).await;
    peer.send("[\"anything\",[1,\"two\"]]\n").await;
    // A request to an unknown method reaches the fallback too, and gets its reply.
    peer.send("[\"other\",[],4]\n").await;
    assert_eq!(peer.recv().await, json!([4, null]));
    assert_eq!(
        *caught.lock().unwrap(),
        vec!["[1,\"two\"]".to_owned(), "[]".to_owned()]
    );
}

#[tokio::test]
async fn args_that_do_not_fit_the_handler() {
    let (_server, _conn, mut events, mut peer) = setup(test_router(), Config::new()).await;
    for (i, args) in ["[\"x\",3]", "[1]", "[1,2,3]", "[1.5,2]", "[]"]
        .iter()
        .enumerate()
    {
        peer.send(format!("[\"add\",{args},{i}]\n")).await;
        let reply = peer.recv().await;
        assert_eq!(
            (reply[0].as_u64(), reply[2]["code"].as_i64()),
            (Some(i as u64), Some(code::INVALID_PARAMS)),
            "{args}"
        );
    }
    // Zero-argument handlers refuse arguments too.
    peer.send("[\"fail\",[1],9]\n").await;
    assert_eq!(peer.recv().await[2]["code"], code::INVALID_PARAMS);
    // Answered requests cause no event; a notification with bad args is an error event.
    round_trip(&mut peer, 100).await;
    assert_no_event(&mut events, "requests with bad args").await;
    peer.send("[\"ping\",[1,2]]\n").await;
    round_trip(&mut peer, 101).await;
    event_now(
        &mut events,
        "invalid params event",
        is_error_with_code(code::INVALID_PARAMS),
    )
    .await;
    still_answers(&mut peer, &mut events, 10).await;
}

#[tokio::test]
async fn a_line_longer_than_the_maximum_is_discarded() {
    let config = Config::new().max_frame_size(64 * 1024);
    let (_server, _conn, mut events, mut peer) = setup(test_router(), config).await;
    // Three times the limit in pieces, then the end of the line: one frame discarded.
    let piece = vec![b'['; 32 * 1024];
    for _ in 0..6 {
        peer.send(&piece).await;
    }
    peer.send("]\n").await;
    round_trip(&mut peer, 100).await;
    event_now(
        &mut events,
        "frame too large",
        is_error_with_code(code::FRAME_TOO_LARGE),
    )
    .await;
    still_answers(&mut peer, &mut events, 1).await;
    // A long request that fits is still served.
    let ok = format!("[\"echo\",[\"{}\"],2]\n", "y".repeat(60 * 1024));
    peer.send(ok).await;
    assert_eq!(peer.recv().await[1][0].as_str().unwrap().len(), 60 * 1024);
    still_answers(&mut peer, &mut events, 3).await;
}

#[tokio::test]
async fn invalid_utf8_is_dropped_with_an_error_event() {
    let (_server, _conn, mut events, mut peer) = setup(test_router(), Config::new()).await;
    peer.send(b"[\"echo\",[\"\xff\xfe\"],1]\n").await;
    round_trip(&mut peer, 100).await;
    event_now(
        &mut events,
        "utf-8 error",
        is_error_with_code(code::PARSE_ERROR),
    )
    .await;
    still_answers(&mut peer, &mut events, 2).await;
}

#[tokio::test]
async fn replies_with_unknown_ids_and_duplicate_request_ids() {
    let (_server, _conn, mut events, mut peer) = setup(test_router(), Config::new()).await;
    peer.send("[12345,\"nobody asked\"]\n[6,null,{\"code\":1,\"message\":\"x\"}]\n")
        .await;
    round_trip(&mut peer, 100).await;
    for what in ["unknown reply id 12345", "unknown error reply id 6"] {
        event_now(&mut events, what, is_warning_with_code(code::INVALID_FRAME)).await;
    }
    assert_no_event(&mut events, "two unknown replies").await;

    // The first request with id 7 is still running when the second arrives.
    peer.send("[\"sleep\",[300],7]\n[\"echo\",[],7]\n").await;
    assert_eq!(peer.recv().await[2]["code"], code::INVALID_FRAME);
    round_trip(&mut peer, 101).await;
    event_now(
        &mut events,
        "duplicate id",
        is_error_with_code(code::INVALID_FRAME),
    )
    .await;
    assert_eq!(peer.recv().await, json!([7, 300]));
    // Once answered, the id is free again.
    peer.send("[\"echo\",[],7]\n").await;
    assert_eq!(peer.recv().await, json!([7, []]));
    still_answers(&mut peer, &mut events, 8).await;
}

#[tokio::test]
async fn a_handler_that_panics_gets_an_internal_error_and_everything_survives() {
    let (server, _conn, mut events, mut peer) = setup(test_router(), Config::new()).await;
    peer.send("[\"panic\",[],1]\n").await;
    let reply = peer.recv().await;
    assert_eq!(reply[2]["code"], code::INTERNAL_ERROR);
    assert!(
        reply[2]["message"].as_str().unwrap().contains("blew up"),
        "{reply}"
    );
    round_trip(&mut peer, 100).await;
    assert_no_event(&mut events, "a request whose handler panicked").await;
    // A panicking notification handler is an error event, and the connection goes on.
    peer.send("[\"panic\",[]]\n").await;
    round_trip(&mut peer, 101).await;
    let event = event_now(
        &mut events,
        "the panic's error event",
        is_error_with_code(code::INTERNAL_ERROR),
    )
    .await;
    assert!(
        describe_event(&event).contains("blew up"),
        "{}",
        describe_event(&event)
    );
    still_answers(&mut peer, &mut events, 2).await;
    // And the server still accepts: a new connection is served.
    let mut other = RawPeer::connect(server.path()).await;
    other.send("[\"add\",[20,22],1]\n").await;
    assert_eq!(other.recv().await, json!([1, 42]));
}

#[tokio::test]
async fn a_peer_that_closes_mid_frame_never_gets_it_dispatched() {
    let calls = Arc::new(AtomicU32::new(0));
    let count = calls.clone();
    let router = Router::new().route("ping", move |_x: String| {
        let count = count.clone();
        async move { count.fetch_add(1, Ordering::SeqCst) }
    });
    let (_server, conn, mut events, mut peer) = setup(router, Config::new()).await;
    peer.send("[\"ping\",[\"complete\"]]\n[\"ping\",[\"cut of")
        .await;
    drop(peer);
    // Exactly: the error, the end, the close.
    next_event(
        &mut events,
        "mid-frame error",
        |e| matches!(e, Event::Error(e) if error_chain(&**e).contains("mid-frame")),
    )
    .await;
    next_event(&mut events, "end", |e| matches!(e, Event::End)).await;
    next_event(&mut events, "close", |e| matches!(e, Event::Close)).await;
    assert!(conn.is_closed());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_killed_peer_process_fails_pending_calls_and_nothing_hangs() {
    let mut server = TestServer::start(test_router());
    let path = server.path().to_owned();
    // A real process connects, writes half a frame, reads the server's call (so that it dies
    // with nothing unread: its end of stream is then an end, not a reset), and is killed
    // with SIGKILL; `kill_on_drop` kills it too should the test fail before.
    let script = format!(
        "import socket,sys,time\ns=socket.socket(socket.AF_UNIX)\ns.connect({:?})\n\
         s.sendall(b'[\"ping\",[\"half')\nline=s.recv(4096)\nprint('got', line, flush=True)\n\
         time.sleep(60)\n",
        path.to_str().unwrap()
    );
    let mut child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut said = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let conn = server.accept().await;
    let mut events = conn.events();
    // The server calls the peer, which will never answer.
    let call = tokio::spawn({
        let conn = conn.clone();
        async move { conn.call::<i64>("double", (1,)).await }
    });
    let got = within("the peer to read the call", said.next_line())
        .await
        .unwrap()
        .expect("the peer's report");
    assert!(got.contains("double"), "{got}");
    child.kill().await.unwrap();
    let err = within("pending call", call).await.unwrap().unwrap_err();
    assert!(err.is_closed(), "{err}");
    // Exactly: the half frame reported, the end, the close.
    next_event(
        &mut events,
        "mid-frame error",
        |e| matches!(e, Event::Error(e) if error_chain(&**e).contains("mid-frame")),
    )
    .await;
    next_event(&mut events, "end", |e| matches!(e, Event::End)).await;
    next_event(&mut events, "close", |e| matches!(e, Event::Close)).await;
    drop(server);
}

#[tokio::test]
async fn missing_trailing_arguments_fill_option_parameters() {
    let router = test_router().route("opt", |x: String, time: Option<u64>| async move {
        diarrhoea::Json((x, time))
    });
    let (_server, _conn, mut events, mut peer) = setup(router, Config::new()).await;
    // As diarrhoea 1.x's flood_client sends its first ping: one argument of two.
    peer.send("[\"opt\",[\"Hello world!\"],1]\n[\"opt\",[\"a\",5],2]\n[\"opt\",[],3]\n")
        .await;
    assert_eq!(peer.recv().await, json!([1, ["Hello world!", null]]));
    assert_eq!(peer.recv().await, json!([2, ["a", 5]]));
    // A required parameter still needs its argument.
    assert_eq!(peer.recv().await[2]["code"], code::INVALID_PARAMS);
    still_answers(&mut peer, &mut events, 4).await;
}
