//! The independent Python peer (tests/interop/peer.py, written from the protocol text alone)
//! drives a Rust server over TCP loopback, and, as the control, over a Unix socket: the
//! protocol is the same on every transport.

mod common;
mod support;

use std::future::IntoFuture;
use std::time::Duration;

use diarrhoea::{serve, UnixListener};
use tokio::net::TcpListener;

/// Runs peer.py with `args` (bounded: it gives up after 10 s per frame itself, and is killed
/// after a minute); asserts it passed all its checks.
async fn python_peer(args: Vec<String>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/peer.py");
    let child = tokio::process::Command::new("python3")
        .arg(script)
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 must be installed to run the interop test");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("peer.py did not finish within a minute")
        .unwrap();
    let (status, stdout, stderr) = (
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        status.success(),
        "peer {args:?} failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        10,
        "{stdout}"
    );
}

#[tokio::test]
async fn the_python_peer_passes_over_tcp() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener, common::test_router()).into_future());
    python_peer(vec!["--tcp".to_owned(), addr.to_string()]).await;
    server.abort();
}

#[tokio::test]
async fn the_python_peer_passes_over_a_unix_socket() {
    let dir = support::temp_dir();
    let path = dir.path().join("interop.sock");
    let server = tokio::spawn(
        serve(UnixListener::bind(&path).unwrap(), common::test_router()).into_future(),
    );
    python_peer(vec![path.to_str().unwrap().to_owned()]).await;
    server.abort();
}
