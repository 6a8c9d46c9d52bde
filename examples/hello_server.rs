//! The Node README example, ported: a server that greets, adds, and talks back. Its methods
//! are the service trait `Hello` (examples/hello/mod.rs), which `hello_client` calls.
//!
//! ```text
//! cargo run --example hello_server [-- PATH]   # then, in another terminal:
//! cargo run --example hello_client [-- PATH]
//! ```
//!
//! Stop it with Ctrl-C or SIGTERM: in-flight calls finish and the socket file is removed.

mod hello;
mod report;

use diarrhoea::{Connection, UnixListener};
use hello::Hello;

struct Greeter;

impl Hello for Greeter {
    async fn hello(&self, peer: Connection, name: String) {
        println!("received hello from {name}");
        // A notification has no reply to carry an error: say it here.
        if let Err(e) = peer
            .post_message("pong", (format!("hello, {name}!"),))
            .await
        {
            eprintln!("could not answer {name}: {e}");
        }
    }

    async fn add(&self, a: i64, b: i64) -> i64 {
        a + b
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    report::exit(run().await)
}

async fn run() -> Result<(), diarrhoea::Error> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./test.sock".into());

    let listener = UnixListener::bind(&path)?;
    println!("listening on {path}");
    diarrhoea::serve(listener, Greeter.into_router())
        .with_graceful_shutdown(diarrhoea::shutdown_signal())
        .await?;
    println!("shut down, {path} removed");
    Ok(())
}
