//! Streams over real Unix sockets: a call answered with many items, paced by the caller's
//! credit, then one reply.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use diarrhoea::{code, Config, Connection, Router, RpcError, StreamReply};
use futures_util::{stream, StreamExt};
use serde_json::json;
use tokio::sync::Notify;

/// Counts what a stream produced, and tells when it is dropped.
#[derive(Clone, Default)]
struct Watch {
    produced: Arc<AtomicU64>,
    dropped: Arc<Notify>,
}

impl Watch {
    fn produced(&self) -> u64 {
        self.produced.load(Ordering::SeqCst)
    }

    /// Items `0..`, for ever, each counted as it is produced; the drop is told.
    fn endless(&self) -> StreamReply<u64> {
        let produced = self.produced.clone();
        let guard = DropTell(self.dropped.clone());
        StreamReply::new(stream::iter(0u64..).map(move |n| {
            let _ = &guard;
            produced.fetch_add(1, Ordering::SeqCst);
            n
        }))
    }
}

struct DropTell(Arc<Notify>);

impl Drop for DropTell {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

fn stream_router(watch: &Watch) -> Router {
    let endless = watch.clone();
    test_router()
        .route("count", |n: u64| async move {
            StreamReply::new(stream::iter(0..n)).trailer(n)
        })
        .route("endless", move || {
            let reply = endless.endless();
            async move { reply }
        })
        .route("fails_at", |n: u64| async move {
            StreamReply::try_new(stream::iter(0..).map(move |i: u64| {
                if i == n {
                    Err(RpcError::new(4000, format!("item {i} failed")))
                } else {
                    Ok(i)
                }
            }))
        })
}

async fn setup(config: Config) -> (TestServer, Connection, Watch) {
    let watch = Watch::default();
    let server = TestServer::builder()
        .config(config)
        .start(stream_router(&watch));
    let conn = within("connect", Connection::connect(server.path()))
        .await
        .unwrap();
    (server, conn, watch)
}

#[tokio::test]
async fn items_arrive_in_order_and_exactly_n_of_them_then_the_trailer() {
    let (_server, conn, _) = setup(Config::new()).await;
    for (n, window) in [(0, 1), (1, 1), (1000, 16), (10_000, 256)] {
        let mut items = conn.call_stream::<u64>("count", (n,)).window(window);
        let mut seen = 0;
        while let Some(item) = within("the next item", items.next()).await {
            assert_eq!(item.unwrap(), seen, "in order");
            seen += 1;
        }
        assert_eq!(seen, n);
        assert_eq!(items.trailer_as::<u64>().unwrap().unwrap(), n);
        assert!(within("the end again", items.next()).await.is_none());
    }
    assert_eq!(conn.pending_calls(), 0);
}

#[tokio::test]
async fn a_peer_granting_no_credit_gets_exactly_its_credit_and_a_grant_resumes_it() {
    let watch = Watch::default();
    let server = TestServer::start(stream_router(&watch));
    let mut peer = RawPeer::connect(server.path()).await;
    peer.send("[\"endless\",[],7,{\"stream\":16}]\n").await;
    for n in 0..16 {
        assert_eq!(peer.recv().await, json!(["$/item", [7, n]]));
    }
    // A round trip after the 16th item, then a pause: the producer has not been polled for
    // a 17th (it is polled only while credit is left), so none can be on its way.
    peer.send("[\"add\",[1,2],8]\n").await;
    assert_eq!(peer.recv().await, json!([8, 3]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(watch.produced(), 16);
    peer.send("[\"add\",[2,2],9]\n").await;
    assert_eq!(peer.recv().await, json!([9, 4]), "no item before the reply");
    // More credit, more items: exactly as many.
    peer.send("[\"$/credit\",[7,5]]\n").await;
    for n in 16..21 {
        assert_eq!(peer.recv().await, json!(["$/item", [7, n]]));
    }
    peer.send("[\"add\",[3,2],10]\n").await;
    assert_eq!(peer.recv().await, json!([10, 5]));
    assert_eq!(watch.produced(), 21);
    peer.send("[\"$/cancel\",[7]]\n").await;
    let cancelled = peer.recv().await;
    assert_eq!(cancelled[0], 7);
    assert_eq!(cancelled[2]["code"], code::CANCELLED);
    within("the producer to be dropped", watch.dropped.notified()).await;
}

#[tokio::test]
async fn dropping_the_stream_stops_the_producer_within_the_credit_outstanding() {
    let (_server, conn, watch) = setup(Config::new()).await;
    let window = 8;
    let mut items = conn.call_stream::<u64>("endless", ()).window(window);
    for n in 0..100 {
        assert_eq!(within("an item", items.next()).await.unwrap().unwrap(), n);
    }
    let taken = 100;
    drop(items);
    within("the producer to be dropped", watch.dropped.notified()).await;
    // What the producer made beyond what was taken is what the credit outstanding at the
    // drop allowed: at most the window.
    let beyond = watch.produced() - taken;
    assert!(
        beyond <= window as u64,
        "{beyond} items produced after the drop"
    );
    // The connection goes on.
    assert_eq!(conn.call::<i64>("add", (1, 2)).await.unwrap(), 3);
    assert_eq!(conn.pending_calls(), 0);
}

#[tokio::test]
async fn an_err_item_ends_the_stream_with_its_error_reply() {
    let (_server, conn, _) = setup(Config::new()).await;
    let mut items = conn.call_stream::<u64>("fails_at", (3,));
    for n in 0..3 {
        assert_eq!(within("an item", items.next()).await.unwrap().unwrap(), n);
    }
    let error = within("the error", items.next())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(error.remote().unwrap().code, 4000, "{error}");
    assert!(within("the end", items.next()).await.is_none());
    assert!(items.trailer().is_none());
}

#[tokio::test]
async fn the_deadline_covers_the_whole_stream() {
    let (_server, conn, watch) = setup(Config::new()).await;
    // The caller's deadline, sent as meta.timeout_ms: both sides stop.
    let mut items = conn
        .call_stream::<u64>("endless", ())
        .window(4)
        .timeout(Duration::from_millis(200));
    assert_eq!(within("an item", items.next()).await.unwrap().unwrap(), 0);
    // Not taking the items: the stream waits for credit until the deadline passes.
    let error = within("the timeout", async {
        loop {
            match items.next().await {
                Some(Ok(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                Some(Err(e)) => return e,
                None => panic!("the stream ended without an error"),
            }
        }
    })
    .await;
    assert!(error.is_timeout(), "{error}");
    within("the producer to be dropped", watch.dropped.notified()).await;

    // The server's own request timeout, answered -32001.
    let (_server, conn, watch) =
        setup(Config::new().request_timeout(Duration::from_millis(200))).await;
    let mut items = conn.call_stream::<u64>("endless", ()).window(1);
    assert_eq!(within("an item", items.next()).await.unwrap().unwrap(), 0);
    within("the producer to be dropped", watch.dropped.notified()).await;
    let error = within("the timeout", items.next()).await.unwrap();
    let error = match error {
        Ok(1) => within("the timeout", items.next())
            .await
            .unwrap()
            .unwrap_err(),
        other => other.unwrap_err(),
    };
    assert_eq!(error.remote().unwrap().code, code::TIMEOUT, "{error}");
}

#[tokio::test]
async fn a_closing_connection_ends_the_stream_on_both_sides() {
    // The caller closes: the producer is dropped.
    let (_server, conn, watch) = setup(Config::new()).await;
    let mut items = conn.call_stream::<u64>("endless", ()).window(4);
    within("an item", items.next()).await.unwrap().unwrap();
    conn.close();
    within("the producer to be dropped", watch.dropped.notified()).await;
    // The caller's stream ends with a closed error once the items already come are taken.
    let error = within("the end", async {
        loop {
            match items.next().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return e,
                None => panic!("ended without an error"),
            }
        }
    })
    .await;
    assert!(error.is_closed(), "{error}");

    // The server closes: the caller's stream ends with a closed error.
    let (mut server, conn, watch) = setup(Config::new()).await;
    let mut items = conn.call_stream::<u64>("endless", ()).window(4);
    within("an item", items.next()).await.unwrap().unwrap();
    server.accept().await.close();
    within("the producer to be dropped", watch.dropped.notified()).await;
    let error = within("the end", async {
        loop {
            match items.next().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return e,
                None => panic!("ended without an error"),
            }
        }
    })
    .await;
    assert!(error.is_closed(), "{error}");
}

#[tokio::test]
async fn the_stream_limit_refuses_one_more_with_32002() {
    let (_server, conn, _) = setup(Config::new().max_streams(2)).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut items = conn.call_stream::<u64>("endless", ()).window(1);
        within("an item", items.next()).await.unwrap().unwrap();
        open.push(items);
    }
    let mut refused = conn.call_stream::<u64>("endless", ());
    let error = within("the refusal", refused.next())
        .await
        .unwrap()
        .unwrap_err();
    let rpc = error.remote().unwrap();
    assert_eq!(rpc.code, code::OVERLOADED, "{error}");
    assert_eq!(rpc.data.as_ref().unwrap()["limit"], "max_streams");
    // A stream that ends gives its place back.
    drop(open.pop());
    let mut again = within("a place", async {
        loop {
            let mut items = conn.call_stream::<u64>("endless", ()).window(1);
            match items.next().await.unwrap() {
                Ok(_) => return items,
                Err(e) if e.remote().map(|r| r.code) == Some(code::OVERLOADED) => {
                    // The cancel of the dropped stream is on its way.
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    assert_eq!(within("an item", again.next()).await.unwrap().unwrap(), 1);
}

#[tokio::test]
async fn plain_calls_are_answered_while_a_stream_floods() {
    // The bound: every call made while the stream floods is answered before the stream has
    // ended, and the stream never ends (it is endless), so a call that waited behind it would
    // fail the test at PATIENCE (10 s) instead of passing late. It cannot flake: the reply
    // does not wait for the stream at all. Items only fill half the outgoing queue
    // (`Outbox::send_item`), so a reply always finds room at once, behind at most the items
    // already queued; the reader handles the call frame without waiting on the stream (its
    // credit frames are handled in the reader too); and the stream runs in a task of its
    // own, giving its thread back at each spent cooperative budget.
    let (_server, conn, watch) = setup(Config::new()).await;
    let mut items = conn.call_stream::<u64>("endless", ()).window(1024);
    let consumer = tokio::spawn(async move {
        let mut taken = 0u64;
        while let Some(item) = items.next().await {
            assert_eq!(item.unwrap(), taken);
            taken += 1;
        }
        panic!("the endless stream ended after {taken} items");
    });
    for i in 0..100 {
        let sum: i64 = within("a plain call's reply", conn.call("add", (i, 1)))
            .await
            .unwrap();
        assert_eq!(sum, i + 1);
    }
    assert!(watch.produced() > 0);
    consumer.abort();
    let _ = consumer.await;
    within("the producer to be dropped", watch.dropped.notified()).await;
}

#[tokio::test]
async fn a_stream_request_to_a_method_that_does_not_stream_gets_its_one_reply() {
    let (_server, conn, _) = setup(Config::new()).await;
    let mut items = conn.call_stream::<u64>("add", (2, 3));
    assert!(within("the end", items.next()).await.is_none());
    assert_eq!(items.trailer_as::<i64>().unwrap().unwrap(), 5);
    // And the other way round: a plain call to a method that streams is refused.
    let error = conn.call::<u64>("count", (3,)).await.unwrap_err();
    let rpc = error.remote().unwrap();
    assert_eq!(rpc.code, code::INVALID_FRAME, "{error}");
    assert!(rpc.message.contains("meta.stream"), "{}", rpc.message);
}

// Hostile input: each frame gets the answer docs/PROTOCOL.md gives it, and the connection
// goes on.

/// A raw peer on a stream server, the server side's events, and the producer's watch.
async fn raw_setup() -> (TestServer, RawPeer, diarrhoea::Events, Watch) {
    let watch = Watch::default();
    let mut server = TestServer::start(stream_router(&watch));
    let peer = RawPeer::connect(server.path()).await;
    let events = server.accept().await.events();
    (server, peer, events, watch)
}

/// A round trip: everything the peer sent before has been handled when it returns.
async fn round_trip(peer: &mut RawPeer, id: u64) {
    peer.send(format!("[\"add\",[1,1],{id}]\n")).await;
    assert_eq!(peer.recv().await, json!([id, 2]));
}

#[tokio::test]
async fn credit_that_is_not_an_unsigned_integer_is_ignored_with_a_warning() {
    let (_server, mut peer, mut events, watch) = raw_setup().await;
    peer.send("[\"endless\",[],7,{\"stream\":1}]\n").await;
    assert_eq!(peer.recv().await, json!(["$/item", [7, 0]]));
    for bad in [
        "-1",
        "1.5",
        "18446744073709551616",
        "1e400",
        "\"5\"",
        "null",
    ] {
        peer.send(format!("[\"$/credit\",[7,{bad}]]\n")).await;
        round_trip(&mut peer, 100).await;
        event_now(&mut events, bad, is_warning_with_code(code::INVALID_PARAMS)).await;
    }
    for bad in ["[7]", "[]", "[7,1,2]", "[\"7\",1]"] {
        peer.send(format!("[\"$/credit\",{bad}]\n")).await;
        round_trip(&mut peer, 101).await;
        event_now(&mut events, bad, is_warning_with_code(code::INVALID_PARAMS)).await;
    }
    // None of them granted anything.
    assert_eq!(watch.produced(), 1);
    // Zero is a grant of nothing: no event, no item.
    peer.send("[\"$/credit\",[7,0]]\n").await;
    round_trip(&mut peer, 102).await;
    assert_no_event(&mut events, "a zero grant").await;
    assert_eq!(watch.produced(), 1);
    // As a request, it is reserved: -32601.
    peer.send("[\"$/credit\",[7,1],9]\n").await;
    let refused = peer.recv().await;
    assert_eq!(
        (refused[0].clone(), refused[2]["code"].clone()),
        (json!(9), json!(code::METHOD_NOT_FOUND))
    );
    assert_eq!(watch.produced(), 1);
}

#[tokio::test]
async fn a_huge_grant_means_no_limit() {
    let (_server, mut peer, _events, _watch) = raw_setup().await;
    peer.send("[\"endless\",[],7,{\"stream\":0}]\n").await;
    round_trip(&mut peer, 100).await;
    // u64::MAX, twice: the credit saturates, it does not wrap.
    for _ in 0..2 {
        peer.send("[\"$/credit\",[7,18446744073709551615]]\n").await;
    }
    for n in 0..10_000 {
        assert_eq!(peer.recv().await, json!(["$/item", [7, n]]));
    }
    peer.send("[\"$/cancel\",[7]]\n").await;
    // Items already queued may come before the -32800.
    loop {
        let line = peer.recv().await;
        if line[0] == "$/item" {
            continue;
        }
        assert_eq!(
            (line[0].clone(), line[2]["code"].clone()),
            (json!(7), json!(code::CANCELLED))
        );
        break;
    }
}

#[tokio::test]
async fn credit_for_no_open_stream_is_ignored_quietly() {
    let (_server, mut peer, mut events, watch) = raw_setup().await;
    // Before the stream starts: not kept for it.
    peer.send("[\"$/credit\",[7,5]]\n").await;
    peer.send("[\"endless\",[],7,{\"stream\":1}]\n").await;
    assert_eq!(peer.recv().await, json!(["$/item", [7, 0]]));
    round_trip(&mut peer, 100).await;
    assert_eq!(watch.produced(), 1, "the early credit did not count");
    // An unknown id.
    peer.send("[\"$/credit\",[12345,5]]\n").await;
    round_trip(&mut peer, 101).await;
    // A request in flight that is not a stream.
    peer.send("[\"sleep\",[100],8]\n").await;
    peer.send("[\"$/credit\",[8,5]]\n").await;
    assert_eq!(peer.recv().await, json!([8, 100]));
    // A finished stream.
    peer.send("[\"count\",[2],9,{\"stream\":5}]\n").await;
    assert_eq!(peer.recv().await, json!(["$/item", [9, 0]]));
    assert_eq!(peer.recv().await, json!(["$/item", [9, 1]]));
    assert_eq!(peer.recv().await, json!([9, 2]));
    peer.send("[\"$/credit\",[9,5]]\n").await;
    round_trip(&mut peer, 102).await;
    assert_no_event(&mut events, "credit for no open stream").await;
    assert_eq!(watch.produced(), 1);
}

#[tokio::test]
async fn a_stream_request_whose_meta_stream_is_not_an_unsigned_integer_is_invalid() {
    let (_server, mut peer, _events, watch) = raw_setup().await;
    for (id, bad) in [
        "\"16\"",
        "-1",
        "1.5",
        "1e400",
        "18446744073709551616",
        "null",
        "[16]",
    ]
    .iter()
    .enumerate()
    {
        peer.send(format!("[\"endless\",[],{id},{{\"stream\":{bad}}}]\n"))
            .await;
        let reply = peer.recv().await;
        assert_eq!(reply[0], json!(id), "{bad}");
        assert_eq!(
            reply[2]["code"],
            json!(code::INVALID_FRAME),
            "{bad}: {reply}"
        );
    }
    round_trip(&mut peer, 100).await;
    assert_eq!(watch.produced(), 0);
}

#[tokio::test]
async fn an_item_for_a_call_that_asked_for_no_stream_is_dropped_with_a_warning() {
    let (conn, mut peer) = in_memory(Config::new(), Router::new());
    let mut events = conn.events();
    // For no call at all.
    peer.send("[\"$/item\",[5,\"stray\"]]\n").await;
    // For a plain call: dropped, and the call still gets its reply.
    let call = tokio::spawn({
        let conn = conn.clone();
        async move { conn.call::<u64>("add", (1, 2)).await }
    });
    let request = peer.recv().await;
    let id = request[2].as_u64().unwrap();
    peer.send(format!("[\"$/item\",[{id},1]]\n[{id},3]\n"))
        .await;
    assert_eq!(within("the reply", call).await.unwrap().unwrap(), 3);
    for what in ["an item for no call", "an item for a plain call"] {
        next_event(&mut events, what, is_warning_with_code(code::INVALID_FRAME)).await;
    }
    // Malformed: not [id, item].
    for bad in ["[]", "[\"5\",1]", "5", "[-1,1]"] {
        peer.send(format!("[\"$/item\",{bad}]\n")).await;
        next_event(&mut events, bad, |e| {
            is_warning_with_code(code::INVALID_PARAMS)(e)
                || is_error_with_code(code::INVALID_FRAME)(e)
        })
        .await;
    }
    // As a request, reserved.
    peer.send("[\"$/item\",[5,1],77]\n").await;
    let refused = peer.recv().await;
    assert_eq!(refused[2]["code"], json!(code::METHOD_NOT_FOUND));
}

#[tokio::test]
async fn items_beyond_the_credit_end_the_stream_and_cancel_it() {
    let (conn, mut peer) = in_memory(Config::new(), Router::new());
    let mut events = conn.events();
    let mut items = conn.call_stream::<u64>("count", (10,)).window(2);
    let taking = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(item) = items.next().await {
            got.push(item);
        }
        got
    });
    let request = peer.recv().await;
    assert_eq!(request[3], json!({"stream": 2}));
    let id = request[2].as_u64().unwrap();
    peer.send(format!(
        "[\"$/item\",[{id},0]]\n[\"$/item\",[{id},1]]\n[\"$/item\",[{id},2]]\n"
    ))
    .await;
    next_event(
        &mut events,
        "the overrun",
        is_error_with_code(code::INVALID_FRAME),
    )
    .await;
    // The peer is told to stop.
    let cancel = loop {
        let line = peer.recv().await;
        if line[0] == "$/cancel" {
            break line;
        }
        assert_eq!(line[0], "$/credit", "{line}");
    };
    assert_eq!(cancel, json!(["$/cancel", [id]]));
    let got = within("the stream's end", taking).await.unwrap();
    let error = got.last().unwrap().as_ref().unwrap_err();
    assert!(error.is_protocol(), "{error}");
}

/// A service trait method declared to stream (`#[diarrhoea::service]`).
#[cfg(feature = "macros")]
mod typed {
    use super::*;

    /// Counts.
    #[diarrhoea::service]
    pub trait Counter {
        /// The items `0..n`, then `n`.
        async fn count(&self, n: u64) -> StreamReply<u64>;
        async fn add(&self, a: i64, b: i64) -> i64;
    }

    struct MyCounter;

    impl Counter for MyCounter {
        async fn count(&self, n: u64) -> StreamReply<u64> {
            StreamReply::new(stream::iter(0..n)).trailer(n)
        }

        async fn add(&self, a: i64, b: i64) -> i64 {
            a + b
        }
    }

    #[tokio::test]
    async fn a_typed_client_streams_a_method_declared_to_stream() {
        let server = TestServer::start(MyCounter.into_router());
        let conn = within("connect", Connection::connect(server.path()))
            .await
            .unwrap();
        let counter = CounterClient::new(conn.clone());
        let mut items = counter.count(1000).window(16);
        let mut seen = 0;
        while let Some(item) = within("an item", items.next()).await {
            assert_eq!(item.unwrap(), seen);
            seen += 1;
        }
        assert_eq!(
            (seen, items.trailer_as::<u64>().unwrap().unwrap()),
            (1000, 1000)
        );
        assert_eq!(counter.add(2, 3).await.unwrap(), 5);
        // `$/methods` says which methods stream.
        let methods: serde_json::Value = conn.call("$/methods", ()).await.unwrap();
        assert_eq!(
            methods,
            json!([
                {"name": "add", "kind": "request", "params": ["a", "b"]},
                {"name": "count", "kind": "stream", "params": ["n"]},
            ])
        );
        // Over tower stacks there is no table of calls to stream with: a clear error.
        let over_services = CounterClient::from_services(conn.caller(), conn.poster());
        let error = within("the refusal", over_services.count(3).next())
            .await
            .unwrap()
            .unwrap_err();
        assert!(error.is_config(), "{error}");
    }
}

#[tokio::test]
async fn a_caller_that_half_closes_gets_the_items_it_granted_then_32800() {
    let (_server, mut peer, _events, watch) = raw_setup().await;
    peer.send("[\"endless\",[],7,{\"stream\":3}]\n").await;
    // No more credit can come once the caller's side has ended.
    tokio::io::AsyncWriteExt::shutdown(&mut peer.write)
        .await
        .unwrap();
    for n in 0..3 {
        assert_eq!(peer.recv().await, json!(["$/item", [7, n]]));
    }
    let end = peer.recv().await;
    assert_eq!(
        (end[0].clone(), end[2]["code"].clone()),
        (json!(7), json!(code::CANCELLED))
    );
    within("the producer to be dropped", watch.dropped.notified()).await;
    assert_eq!(watch.produced(), 3);
}
