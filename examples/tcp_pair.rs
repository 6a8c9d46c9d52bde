//! A server and a client over TCP on loopback, in one process: one call each way, then a
//! graceful shutdown.
//!
//! ```text
//! cargo run --example tcp_pair
//! ```
//!
//! TCP has no encryption and no authentication: anyone who can reach the port can call. Keep
//! it on 127.0.0.1, or put TLS around the stream (`diarrhoea::transport::Io`).

mod report;

use std::future::IntoFuture;

use diarrhoea::{Connection, Router};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    report::exit(run().await)
}

async fn run() -> Result<(), diarrhoea::BoxError> {
    // Port 0: the system picks a free port.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("listening on {addr}");

    // The server's `greet` calls the client back (`whoami`) before it answers.
    let server = Router::new().route("greet", |client: Connection| async move {
        let name: String = client.call("whoami", ()).await?;
        let from = client.peer().addr().map_or("?".into(), |a| a.to_string());
        Ok::<_, diarrhoea::Error>(format!("hello, {name} at {from}"))
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(
        diarrhoea::serve(listener, server)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );

    // The client answers `whoami`, and calls `greet`.
    let conn = Connection::builder()
        .service(Router::new().route("whoami", || async { "tcp_pair's client" }))
        .connect_tcp(addr)
        .await?;
    let greeting: String = conn.call("greet", ()).await?;
    println!("{greeting}");

    // Graceful shutdown: the client ends, then the server stops accepting, finishes what is in
    // flight and returns.
    conn.end();
    conn.closed().await;
    let _ = stop.send(());
    serving.await??;
    println!("shut down");
    Ok(())
}
