//! JSON-RPC 2.0, the second protocol a connection can speak: the same handlers, tower stack
//! and limits, for any language's ordinary JSON-RPC 2.0 client.
//!
//! A connection that speaks JSON-RPC runs the very machinery of protocol v1: its byte stream
//! is wrapped in a translator, which turns the peer's JSON-RPC messages into v1 lines for the
//! connection's reader and the v1 lines of its writer into JSON-RPC messages. Protocol v1's own
//! path is not touched: a connection configured for v1 (the default) has no translator at all.
//!
//! ```text
//! bytes -> framing (lines | Content-Length) -> session: JSON-RPC message -> v1 lines -> reader ...
//! ... writer -> v1 lines -> session: v1 line -> JSON-RPC message -> framing -> bytes
//! ```
//!
//! | file | holds |
//! | --- | --- |
//! | `detect` | which protocol a connection speaks, from its first bytes |
//! | `framing` | messages out of bytes: one per line, or each after a `Content-Length` header |
//! | `session` | the translation both ways: ids, batches, by-name params, cancellation |
//! | `io` | the [`Transport`](crate::transport::Transport) wrapper that runs the three |
//!
//! Which [`Protocol`] a connection speaks is set by [`Config::protocol`](crate::Config::protocol)
//! (a client's builder: [`Builder::protocol`](crate::connection::Builder::protocol)); the wire format of
//! each is in [the protocol](crate::protocol#json-rpc-20).

mod detect;
mod framing;
pub(crate) mod io;
mod session;

pub(crate) use framing::Framing;
pub(crate) use session::Session;

/// The protocol a connection speaks.
///
/// [`Protocol::V1`] is the default for every connection, server side included: a server
/// answers JSON-RPC 2.0 only when its [`Config`](crate::Config) says so. Detection
/// ([`Protocol::Detect`]) costs a v1 connection nothing per frame, but it does change what a
/// v1 server does with a first line that is not v1 (it answers it in JSON-RPC instead of
/// reporting a bad frame), and it puts a wrapper on every connection's stream; a server opts
/// in to that. `flood_server` does, to answer all three on one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Protocol {
    /// Protocol v1: one JSON array per line (diarrhoea 1.1.0's wire format, and more).
    #[default]
    V1,
    /// JSON-RPC 2.0 objects (and batches), one per line.
    JsonRpc,
    /// JSON-RPC 2.0 objects, each after a `Content-Length: N\r\n\r\n` header (the base
    /// protocol of LSP).
    Lsp,
    /// Whichever of the three the peer's first bytes show: `[` with a string, number or
    /// `null` next is v1; `{`, `[{` or `[]` is JSON-RPC lines; a header name (`Content-Length`)
    /// is LSP framing. Until the peer has sent something, this side writes v1, so a server
    /// that greets its peers first should not detect. A connection keeps the protocol it
    /// detected: a frame of another refuses with an error reply (see
    /// [the protocol](crate::protocol#json-rpc-20)).
    Detect,
}

/// The decoders, for the fuzz targets in `fuzz/`: not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::framing::{Deframer, Framing, Piece};

    /// Translates one JSON-RPC message (a line's or a body's bytes) into protocol v1 lines,
    /// as a connection's reader would see them, and returns those lines; then answers each
    /// request as the connection would (echoing its params), translated back, so both
    /// directions run.
    pub fn translate(message: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let session = super::Session::default();
        let mut lines = bytes::BytesMut::new();
        session.incoming(message, &mut lines);
        let mut answers = Vec::new();
        for line in lines[..].split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if let Ok(crate::Frame::Request { id, args, .. }) =
                crate::Frame::parse(std::str::from_utf8(line).expect("v1 lines are UTF-8"))
            {
                let reply = crate::Frame::Reply {
                    id,
                    result: Ok(crate::Response::from_raw(
                        serde_json::value::RawValue::from_string(args.get().to_owned())
                            .expect("args are JSON"),
                    )),
                };
                session.outgoing(&reply.to_line(), Framing::Lines, &mut answers);
            }
        }
        (lines.to_vec(), answers)
    }
}
