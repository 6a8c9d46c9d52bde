//! Each `Config` setting takes effect: a test per setting that fails when the setting is
//! ignored (run with the default in its place, each of these passes far more frames).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diarrhoea::transport::Io;
use diarrhoea::{Config, Connection, Router};

/// A bound for waits that guard against a hang, never a measurement.
const HANG_GUARD: Duration = Duration::from_secs(10);

/// `outgoing_queue`: with the writer stuck on a peer that never reads, exactly that many
/// frames wait in the queue; the next post is refused (`try_post_message`) or waits.
/// In memory, with paused time: the wait below ends only once nothing else can move.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn outgoing_queue_bounds_the_frames_waiting() {
    // A 64-byte pipe whose far end never reads: the writer blocks on the first large frame.
    let (near, _far) = tokio::io::duplex(64);
    let conn = Connection::builder()
        .config(Config::new().outgoing_queue(4))
        .serve_connection(Io(near));
    conn.try_post_message("big", (vec![0u8; 1024],)).unwrap();
    // On this single-threaded runtime the writer runs only when this task yields: let it
    // take the big frame and block on the pipe.
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
    let mut queued = 0;
    while conn.try_post_message("small", (1,)).is_ok() {
        queued += 1;
        assert!(queued <= 1024, "the queue takes more than its setting");
    }
    assert_eq!(queued, 4);
    // `post_message` waits instead of failing.
    let waits = tokio::time::timeout(Duration::from_millis(50), conn.post_message("w", ()));
    assert!(waits.await.is_err(), "post_message should wait for room");
}

/// `inbound_buffer`: requests keep their share of the buffer while they run, so with
/// handlers that never finish the reader admits only as many as fit, then stops reading.
/// In memory, with paused time: the clock moves only when every task waits, so the wait
/// below gives a reader that ignored the budget every chance to admit more, whatever the
/// machine's load.
#[tokio::test(start_paused = true)]
async fn inbound_buffer_bounds_the_requests_admitted() {
    let started = Arc::new(AtomicUsize::new(0));
    let counter = started.clone();
    let router = Router::new().route("hang", move |_pad: String| {
        counter.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<()>()
    });
    let (near, far) = tokio::io::duplex(1 << 20);
    let _server = Connection::builder()
        .config(Config::new().inbound_buffer(2048))
        .service(router)
        .serve_connection(far);
    let client = Connection::builder().serve_connection(near);
    // Each request costs its payload (~200 bytes) plus 128 bytes of overhead: 6 fit in 2048.
    let pad = "p".repeat(200);
    let mut calls = Vec::new();
    for _ in 0..100 {
        let client = client.clone();
        let pad = pad.clone();
        calls.push(tokio::spawn(async move {
            let _ = client.call::<()>("hang", (pad,)).await;
        }));
    }
    tokio::time::timeout(HANG_GUARD, async {
        while started.load(Ordering::SeqCst) < 6 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the first requests start");
    // Give a reader that ignored the budget every chance to admit more (with the default
    // 4 MiB all 100 start): paused time passes only once nothing else can move.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(started.load(Ordering::SeqCst), 6);
    client.close();
    for call in calls {
        call.abort();
    }
}
