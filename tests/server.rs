//! Server lifecycle: the socket file rules and graceful shutdown, over real sockets.

mod common;

use std::future::IntoFuture;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::{Duration, Instant};

use common::*;
use diarrhoea::{code, serve, Connection, UnixListener};

#[tokio::test]
async fn the_socket_file_is_0600_by_default_and_configurable() {
    let (_dir, path) = socket_path();
    let server = UnixListener::bind(&path).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    drop(server);

    let server = UnixListener::bind_with_mode(&path, 0o660).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o660
    );
    drop(server);
}

#[tokio::test]
async fn a_live_server_is_never_taken_over() {
    let (_dir, path) = socket_path();
    let first = UnixListener::bind(&path).unwrap();
    let err = UnixListener::bind(&path).unwrap_err();
    assert!(err.is_bind(), "{err}");
    assert!(err.to_string().contains("live"), "{}", error_chain(&err));
    // The first server still serves.
    tokio::spawn(serve(first, test_router()).into_future());
    let client = Connection::connect(&path).await.unwrap();
    assert_eq!(client.call::<i64>("add", (1, 2)).await.unwrap(), 3);
}

#[tokio::test]
async fn a_stale_socket_is_replaced() {
    let (_dir, path) = socket_path();
    // A socket file nobody listens on, as left by a killed process.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = UnixListener::bind(&path).unwrap();
    tokio::spawn(serve(server, test_router()).into_future());
    let client = Connection::connect(&path).await.unwrap();
    assert_eq!(client.call::<i64>("add", (2, 2)).await.unwrap(), 4);
}

#[tokio::test]
async fn files_directories_and_symlinks_at_the_path_are_never_touched() {
    let (dir, path) = socket_path();
    std::fs::write(&path, b"precious").unwrap();
    let err = UnixListener::bind(&path).unwrap_err();
    assert!(err.is_bind(), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    std::fs::remove_file(&path).unwrap();

    std::fs::create_dir(&path).unwrap();
    assert!(UnixListener::bind(&path).unwrap_err().is_bind());
    assert!(path.is_dir());
    std::fs::remove_dir(&path).unwrap();

    let target = dir.path().join("target");
    std::os::unix::fs::symlink(&target, &path).unwrap();
    assert!(UnixListener::bind(&path).unwrap_err().is_bind());
    assert_eq!(std::fs::read_link(&path).unwrap(), target);
}

#[tokio::test]
async fn a_path_too_long_for_sun_path_is_refused_before_binding() {
    let (dir, _) = socket_path();
    let long = dir.path().join("s".repeat(120));
    let err = UnixListener::bind(&long).unwrap_err();
    assert!(err.is_bind(), "{err}");
    assert!(err.to_string().contains("long"), "{}", error_chain(&err));
    assert!(!long.exists());
}

#[tokio::test]
async fn shutdown_finishes_in_flight_calls_refuses_new_ones_and_removes_the_file() {
    let (_dir, path) = socket_path();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = UnixListener::bind(&path).unwrap();
    let (router, started) = test_router_telling_when_started();
    let serving = tokio::spawn(
        serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );
    let client = Connection::connect(&path).await.unwrap();
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.call::<u64>("started_sleep", (300,)).await }
    });
    within("the call to start", started.notified()).await;
    stop.send(()).unwrap();
    // Not accepting any more, and the file is gone.
    within("the socket file to go", async {
        while path.exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(Connection::connect(&path).await.is_err());
    // A call made during the drain is refused with -32004.
    let refused = client.call::<i64>("add", (1, 1)).await.unwrap_err();
    assert_eq!(refused.code(), Some(code::SHUTTING_DOWN), "{refused}");
    // The call in flight completes.
    assert_eq!(within("in-flight call", slow).await.unwrap().unwrap(), 300);
    within("serve to return", serving).await.unwrap().unwrap();
    within("client closed", client.closed()).await;
}

#[tokio::test]
async fn shutdown_closes_what_does_not_finish_by_the_deadline() {
    let (_dir, path) = socket_path();
    let (router, started) = test_router_telling_when_started();
    let mut server = TestServer::builder()
        .shutdown_timeout(Duration::from_millis(100))
        .start_at(&path, router);
    let client = Connection::connect(&path).await.unwrap();
    let _accepted = server.accept().await;
    let stuck = tokio::spawn({
        let client = client.clone();
        async move { client.call::<u64>("started_sleep", (60_000,)).await }
    });
    within("the call to start", started.notified()).await;
    // The call would run for a minute: the shutdown waits 100 ms for it, not the default
    // 10 s, then closes the connection.
    let shutting_down = Instant::now();
    // A wide margin for a loaded machine, far below the 10 s default.
    tokio::time::timeout(Duration::from_secs(2), server.shutdown())
        .await
        .expect("shutdown took over 2 s with a 100 ms shutdown timeout")
        .unwrap();
    let took = shutting_down.elapsed();
    assert!(
        took >= Duration::from_millis(100),
        "shutdown did not wait for the call in flight: {took:?}"
    );
    assert!(within("stuck call", stuck)
        .await
        .unwrap()
        .unwrap_err()
        .is_closed());
}

#[tokio::test]
async fn writing_to_a_peer_that_went_away_fails_and_closes() {
    // This test process ignores SIGPIPE like every Rust binary; a child with SIGPIPE at its
    // default is tests/processes.rs's job.
    let (_dir, path) = socket_path();
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (accepted, client) = tokio::join!(listener.accept(), Connection::connect(&path));
    drop(accepted.unwrap());
    let client = client.unwrap();
    let mut failed = false;
    for _ in 0..1000 {
        if client
            .post_message("ping", ("x".repeat(4096), 1))
            .await
            .is_err()
        {
            failed = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(failed, "posting to a dead peer kept succeeding");
    within("closed", client.closed()).await;
}

#[tokio::test]
async fn an_accept_error_for_one_connection_does_not_stop_the_server() {
    use futures_util::StreamExt;
    let (near, far) = tokio::net::UnixStream::pair().unwrap();
    // The first accept fails for that connection alone (the peer gave up), the next succeeds.
    let accepted = futures_util::stream::iter([
        Err(std::io::Error::from(std::io::ErrorKind::ConnectionAborted)),
        Ok(near),
    ])
    .chain(futures_util::stream::pending());
    let server = tokio::spawn(serve(diarrhoea::from_stream(accepted), test_router()).into_future());
    let client = Connection::builder().serve_connection(far);
    let sum: i64 = within("a call through the server", client.call("add", (1, 2)))
        .await
        .unwrap();
    assert_eq!(sum, 3);
    server.abort();
}
