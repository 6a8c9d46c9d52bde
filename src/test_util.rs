//! Helpers shared by the unit tests.

/// Fails a test whose waits never end, instead of hanging it (a broken queue, say).
pub(crate) async fn bounded<F: std::future::Future>(test: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(10), test)
        .await
        .expect("the test waited 10 s for something that never happened")
}
