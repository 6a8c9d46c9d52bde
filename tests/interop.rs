//! A peer written in Python from the protocol text alone drives a Rust server.

mod common;

use std::process::Stdio;

use common::*;

#[tokio::test]
async fn an_independent_python_peer_speaks_protocol_v1() {
    let server = TestServer::start(test_router());
    let path = server.path().to_owned();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/peer.py");
    // Killed (by `kill_on_drop`) if it hangs and the wait gives up, or the test fails.
    let peer = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 must be installed to run the interop test");
    let out = within("the Python peer", peer.wait_with_output())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "peer failed:\n{stdout}\n{stderr}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        10,
        "{stdout}"
    );
}
