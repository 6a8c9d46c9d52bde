//! The service `hello_server` serves and `hello_client` calls: defined once, checked by the
//! compiler at both ends. On the wire it is the Node README example's: `["hello",[name]]` (a
//! notification) and `["add",[a,b],id]`, so a Node peer still talks to either program.

use diarrhoea::Connection;

/// Greets and adds.
#[diarrhoea::service]
pub trait Hello {
    /// A notification: no reply goes back, but the server posts `["pong",[greeting]]` to
    /// the peer on the connection it came on, like `client.post_message(...)` in Node.
    #[rpc(notification)]
    async fn hello(&self, #[context] peer: Connection, name: String);

    /// A call: answered with `a + b`.
    async fn add(&self, a: i64, b: i64) -> i64;
}
