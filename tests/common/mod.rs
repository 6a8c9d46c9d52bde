//! Shared fixtures: unique socket paths, a test router, and a raw line-level peer.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::time::Duration;

use diarrhoea::{Args, Connection, Event, Events, Router, RpcError};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Nothing in these tests should take long; a hang fails instead of blocking CI.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A socket path in a fresh temporary directory, removed with the guard.
pub fn socket_path() -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("dh")
        .tempdir()
        .expect("temp dir");
    let path = dir.path().join("test.sock");
    (dir, path)
}

/// The methods the tests call.
pub fn test_router() -> Router {
    Router::new()
        .route(
            "ping",
            |peer: Connection, x: String, time: u64| async move {
                peer.post_message("pong", (x, time)).await
            },
        )
        .route("echo", |args: Args| async move { args })
        .route("add", |a: i64, b: i64| async move { a + b })
        .route("ask", |peer: Connection, n: i64| async move {
            peer.call::<i64>("double", (n,)).await
        })
        .route("sleep", |ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ms
        })
        .route("fail", || async {
            Err::<(), _>(RpcError::new(42, "as asked"))
        })
        .route("panic", || async {
            if true {
                panic!("handler blew up on purpose");
            }
        })
}

/// Waits for a future, failing the test instead of hanging.
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// The next event that is not `End`/`Close`-unrelated noise matching `pred`.
pub async fn next_event(events: &mut Events, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    within(what, async {
        loop {
            match events.recv().await {
                Some(event) if pred(&event) => return event,
                Some(_) => continue,
                None => panic!("events ended while waiting for {what}"),
            }
        }
    })
    .await
}

pub fn is_error_with_code(code: i64) -> impl Fn(&Event) -> bool {
    move |event| matches!(event, Event::Error(e) if e.code() == Some(code))
}

pub fn is_warning_with_code(code: i64) -> impl Fn(&Event) -> bool {
    move |event| matches!(event, Event::Warning(e) if e.code() == Some(code))
}

/// A peer that speaks lines by hand, to send what a well-behaved client never would.
pub struct RawPeer {
    pub lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    pub write: OwnedWriteHalf,
}

impl RawPeer {
    pub async fn connect(path: &std::path::Path) -> Self {
        let (read, write) = UnixStream::connect(path)
            .await
            .expect("connect")
            .into_split();
        RawPeer {
            lines: BufReader::new(read).lines(),
            write,
        }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.write.write_all(bytes.as_ref()).await.expect("write");
    }

    /// The next line, parsed.
    pub async fn recv(&mut self) -> serde_json::Value {
        let line = within("a line from the server", self.lines.next_line())
            .await
            .expect("read")
            .expect("server closed the connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
    }
}
