//! The client half of the Node README example: post a notification, make a call, and
//! handle what the server posts back. It calls the service trait `Hello`
//! (examples/hello/mod.rs) through its typed client.
//!
//! ```text
//! cargo run --example hello_client [-- PATH]
//! ```

mod hello;
mod report;

use diarrhoea::{Connection, Router};
use hello::HelloClient;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    report::exit(run().await)
}

async fn run() -> Result<(), diarrhoea::Error> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./test.sock".into());

    // Set before connecting, so a message the server posts right away is never missed.
    let handlers = Router::new().route("pong", |msg: String| async move {
        println!("received pong: {msg}");
    });
    let conn = Connection::builder()
        .service(handlers)
        .connect(&path)
        .await?;

    let greeter = HelloClient::new(conn.clone());

    // A notification, as in diarrhoea 1.1.0: `["hello",["rust"]]`, no reply.
    greeter.hello("rust".into()).await?;

    // A call: `["add",[2,3],1]`, answered by `[1,5]`.
    let sum = greeter.add(2, 3).await?;
    println!("add(2, 3) = {sum}");

    // Stop sending: the server finishes what it received and closes its side; `closed()`
    // returns once everything that arrived here, the pong included, has been handled.
    conn.end();
    conn.closed().await;
    println!("socket closed!");
    Ok(())
}
