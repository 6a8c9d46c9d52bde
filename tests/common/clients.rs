//! Load clients shared by `tests/soak.rs` and `examples/soak.rs` (which includes this file
//! with `#[path]`; tests include nothing from `examples/`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use diarrhoea::Connection;

/// Clients that keep trying to connect and call `add` until `stop`; `served` counts the calls
/// answered. With `churn`, a served client leaves after 200 ms and comes back.
pub async fn persistent_clients(
    path: PathBuf,
    n: usize,
    churn: bool,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (path, stop, served) = (path.clone(), stop.clone(), served.clone());
        tasks.spawn(async move {
            let mut held: Option<Connection> = None;
            while !stop.load(Relaxed) {
                if let Some(conn) = &held {
                    tokio::time::sleep(Duration::from_millis(if churn { 200 } else { 20 })).await;
                    if churn {
                        conn.close();
                        held = None;
                    }
                    continue;
                }
                let Ok(Ok(conn)) =
                    tokio::time::timeout(Duration::from_secs(1), Connection::connect(&path)).await
                else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let call = conn.call::<i64>("add", (i as i64, 1));
                match tokio::time::timeout(Duration::from_millis(500), call).await {
                    Ok(Ok(_)) => {
                        served.fetch_add(1, Relaxed);
                        held = Some(conn);
                    }
                    _ => conn.close(),
                }
            }
            if let Some(conn) = held {
                conn.close();
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
