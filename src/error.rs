//! The crate's one opaque error type, and the error that travels in a reply.
//!
//! Three kinds of error are kept apart:
//! - [`Error`]: this crate's own failures (I/O, a closed connection, a remote error reply, a
//!   result that did not decode). Opaque, with `is_*` checks and a `source()` chain.
//! - [`RpcError`]: plain serializable data, the `{code, message, data}` object of an error reply.
//! - Middleware errors travel as [`BoxError`] (e.g. `tower::timeout::error::Elapsed`); they are
//!   turned into an [`RpcError`] in one place before a reply is written.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A type-erased error, as used by tower middleware.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Error codes of protocol v1, carried in [`RpcError::code`].
///
/// Codes from -32768 to -32000, and -32800 ([`CANCELLED`](crate::code::CANCELLED)), belong
/// to the protocol; handlers may use any other code.
pub mod code {
    /// The line is not valid JSON (or not valid UTF-8).
    pub const PARSE_ERROR: i64 = -32700;
    /// The JSON is not a frame of a known shape.
    pub const INVALID_FRAME: i64 = -32600;
    /// No handler is bound for the method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// The arguments do not fit the handler's parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The handler failed without a code of its own, or panicked.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// A deadline passed before the reply was ready.
    pub const TIMEOUT: i64 = -32001;
    /// A limit rejected the request.
    pub const OVERLOADED: i64 = -32002;
    /// A typed service method returned `Err`: the message is the error's `Display`, the data
    /// the error itself (`#[rpc(code = N)]` chooses another code).
    pub const SERVICE_ERROR: i64 = -32000;
    /// The frame is larger than the receiver's maximum frame size.
    pub const FRAME_TOO_LARGE: i64 = -32003;
    /// The receiver is shutting down.
    pub const SHUTTING_DOWN: i64 = -32004;
    /// The caller cancelled the request.
    pub const CANCELLED: i64 = -32800;
}

/// The error object of an error reply: `{"code":int,"message":string,"data":any?}`.
///
/// Handlers return it (or anything that converts into it) to answer a request with an error.
///
/// ```
/// use diarrhoea::RpcError;
/// let e = RpcError::new(42, "no such user").with_data(serde_json::json!({"user": 7}));
/// assert_eq!(serde_json::to_string(&e).unwrap(),
///            r#"{"code":42,"message":"no such user","data":{"user":7}}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    /// One of [`code`] or an application code.
    pub code: i64,
    /// A short human-readable description.
    pub message: String,
    /// Optional structured detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl RpcError {
    /// An error with a code and a message.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// Attaches structured detail.
    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.data = Some(data);
        self
    }

    /// -32601 for `method`.
    pub fn method_not_found(method: &str) -> Self {
        Self::new(
            code::METHOD_NOT_FOUND,
            format!("method not found: {}", truncate(method, 64)),
        )
    }

    /// -32602 with the reason the arguments did not fit.
    pub fn invalid_params(reason: impl fmt::Display) -> Self {
        Self::new(code::INVALID_PARAMS, format!("invalid params: {reason}"))
    }

    /// -32603 with a message.
    pub fn internal(message: impl fmt::Display) -> Self {
        Self::new(code::INTERNAL_ERROR, format!("internal error: {message}"))
    }

    /// -32600 with the reason the frame was rejected.
    pub fn invalid_frame(reason: impl fmt::Display) -> Self {
        Self::new(code::INVALID_FRAME, format!("invalid frame: {reason}"))
    }

    /// Maps a middleware error to the error a peer sees.
    ///
    /// An [`RpcError`] passes through; tower's `Elapsed` becomes -32001, `Overloaded` -32002,
    /// this crate's [`Error`] keeps its remote error or becomes -32603, anything else -32603.
    pub fn from_box_error(error: BoxError) -> Self {
        match error.downcast::<RpcError>() {
            Ok(rpc) => *rpc,
            Err(error) => match Known::of(&*error) {
                Known::Rpc(rpc) => rpc.clone(),
                Known::Elapsed => Self::new(code::TIMEOUT, "timeout: request deadline passed"),
                Known::Overloaded => Self::new(
                    code::OVERLOADED,
                    "overloaded: service not ready (load shed)",
                ),
                Known::Crate(e) => match &e.kind {
                    Kind::Remote(rpc) => rpc.clone(),
                    Kind::Timeout => {
                        Self::new(code::TIMEOUT, "timeout: a nested call's deadline passed")
                    }
                    _ => Self::internal(e),
                },
                Known::Other => Self::internal(error),
            },
        }
    }
}

/// The errors [`RpcError::from_box_error`] knows, recognised without taking the error: the one
/// map from a tower error to a protocol code.
enum Known<'a> {
    Rpc(&'a RpcError),
    Elapsed,
    Overloaded,
    Crate(&'a Error),
    Other,
}

impl<'a> Known<'a> {
    fn of(error: &'a (dyn StdError + 'static)) -> Self {
        if let Some(rpc) = error.downcast_ref::<RpcError>() {
            Known::Rpc(rpc)
        } else if error.is::<tower::timeout::error::Elapsed>() {
            Known::Elapsed
        } else if error.is::<tower::load_shed::error::Overloaded>() {
            Known::Overloaded
        } else if let Some(e) = error.downcast_ref::<Error>() {
            Known::Crate(e)
        } else {
            Known::Other
        }
    }
}

/// The protocol code a middleware error becomes, as [`RpcError::from_box_error`] maps it,
/// without taking the error; `None` for failures without one, such as a closed connection.
pub(crate) fn code_of(error: &(dyn StdError + 'static)) -> Option<i64> {
    match Known::of(error) {
        Known::Rpc(rpc) => Some(rpc.code),
        Known::Elapsed => Some(code::TIMEOUT),
        Known::Overloaded => Some(code::OVERLOADED),
        Known::Crate(e) => e.code(),
        Known::Other => None,
    }
}

/// At most `max_chars` characters of untrusted `text`, cut on a character boundary, with a
/// note of the full length when cut: for messages and logs. Looks at the text only; it never
/// parses or walks JSON.
pub(crate) fn truncate(text: &str, max_chars: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        None => Cow::Borrowed(text),
        Some((cut, _)) => Cow::Owned(format!("{}…({} bytes)", &text[..cut], text.len())),
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for RpcError {}

impl From<Error> for RpcError {
    fn from(e: Error) -> Self {
        RpcError::from_box_error(Box::new(e))
    }
}

impl From<serde_json::Error> for RpcError {
    fn from(e: serde_json::Error) -> Self {
        RpcError::internal(e)
    }
}

impl From<std::convert::Infallible> for RpcError {
    fn from(e: std::convert::Infallible) -> Self {
        match e {}
    }
}

/// This crate's error: what failed, and why.
///
/// Use the `is_*` methods to branch, [`Error::remote`] to read a peer's error reply, and
/// `source()` for the underlying cause.
pub struct Error {
    kind: Kind,
    /// What was being done, e.g. `connect to ./app.sock`.
    context: Option<Box<str>>,
    source: Option<BoxError>,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// The connection is closed, or closed before the reply came.
    Closed,
    /// The peer answered with an error reply.
    Remote(RpcError),
    /// A call's deadline passed before its reply came.
    Timeout,
    /// The outgoing queue was full and the caller would not wait.
    Full,
    /// Arguments could not be serialized into a JSON array.
    Encode,
    /// A reply, or arguments (named here), could not be deserialized into the expected type.
    Decode(&'static str),
    /// The peer sent something this side could not accept (bad frame, unknown reply id...).
    Protocol(RpcError),
    /// The socket path cannot be used (too long, occupied by a non-socket, live server).
    Bind(&'static str),
    /// An I/O error on the byte stream.
    Io,
    /// Options that cannot work together (e.g. a pool without workers).
    Config(Box<str>),
    /// A tower layer around a typed client's caller failed the call (its error is the source).
    #[cfg_attr(not(feature = "macros"), allow(dead_code))]
    Layer,
}

impl Error {
    pub(crate) fn new(kind: Kind) -> Self {
        Error {
            kind,
            context: None,
            source: None,
        }
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Says what was being done when the error happened.
    pub(crate) fn with_context(mut self, context: impl Into<String>) -> Self {
        self.context = Some(context.into().into_boxed_str());
        self
    }

    pub(crate) fn closed() -> Self {
        Self::new(Kind::Closed)
    }

    pub(crate) fn io(e: std::io::Error) -> Self {
        Self::new(Kind::Io).with_source(e)
    }

    pub(crate) fn config(what: impl Into<String>) -> Self {
        Self::new(Kind::Config(what.into().into_boxed_str()))
    }

    pub(crate) fn protocol(rpc: RpcError) -> Self {
        Self::new(Kind::Protocol(rpc))
    }

    /// A layer's error, from a stack of calls: this crate's errors pass through, a timeout
    /// or an error reply keeps its meaning, anything else is kept as the source.
    #[cfg(feature = "macros")]
    pub(crate) fn from_layer(error: BoxError) -> Self {
        let error = match error.downcast::<Error>() {
            Ok(error) => return *error,
            Err(error) => error,
        };
        match error.downcast::<RpcError>() {
            Ok(rpc) => Self::new(Kind::Remote(*rpc)),
            Err(error) if error.is::<tower::timeout::error::Elapsed>() => {
                Self::new(Kind::Timeout).with_source(error)
            }
            Err(error) => Self::new(Kind::Layer).with_source(error),
        }
    }

    pub(crate) fn bind(what: &'static str, source: impl Into<BoxError>) -> Self {
        Self::new(Kind::Bind(what)).with_source(source)
    }

    /// The connection was closed (by either side) before the operation completed.
    pub fn is_closed(&self) -> bool {
        matches!(self.kind, Kind::Closed)
    }

    /// The peer answered with an error reply; see [`Error::remote`].
    pub fn is_remote(&self) -> bool {
        matches!(self.kind, Kind::Remote(_))
    }

    /// A call's deadline passed: locally, or at the peer, which answered -32001 first (a call
    /// with a deadline sends it to the peer, so either side may notice first).
    pub fn is_timeout(&self) -> bool {
        matches!(&self.kind, Kind::Timeout)
            || matches!(&self.kind, Kind::Remote(rpc) if rpc.code == code::TIMEOUT)
    }

    /// The outgoing queue was full (from methods that do not wait for room, such as
    /// [`Connection::try_post_message`](crate::Connection::try_post_message)), or a load
    /// shedding layer around a typed client's caller refused the call.
    pub fn is_overloaded(&self) -> bool {
        match &self.kind {
            Kind::Full => true,
            Kind::Layer => self
                .source
                .as_ref()
                .is_some_and(|e| e.is::<tower::load_shed::error::Overloaded>()),
            _ => false,
        }
    }

    /// Arguments could not be serialized, or a reply or arguments could not be deserialized.
    pub fn is_serde(&self) -> bool {
        matches!(self.kind, Kind::Encode | Kind::Decode(_))
    }

    /// The peer broke protocol v1 (a malformed frame, an oversized line, an unknown reply id).
    pub fn is_protocol(&self) -> bool {
        matches!(self.kind, Kind::Protocol(_))
    }

    /// The socket path could not be bound.
    pub fn is_bind(&self) -> bool {
        matches!(self.kind, Kind::Bind(_))
    }

    /// An I/O error on the byte stream.
    pub fn is_io(&self) -> bool {
        matches!(self.kind, Kind::Io)
    }

    /// Options given to a builder cannot work (e.g. a pool without workers).
    pub fn is_config(&self) -> bool {
        matches!(self.kind, Kind::Config(_))
    }

    /// The peer's error reply, or for a protocol error the error this side found.
    pub fn remote(&self) -> Option<&RpcError> {
        match &self.kind {
            Kind::Remote(rpc) => Some(rpc),
            _ => None,
        }
    }

    /// The protocol error code this error maps to, if any (remote and protocol errors).
    pub fn code(&self) -> Option<i64> {
        match &self.kind {
            Kind::Remote(rpc) | Kind::Protocol(rpc) => Some(rpc.code),
            Kind::Timeout => Some(code::TIMEOUT),
            _ => None,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("diarrhoea::Error");
        d.field("kind", &self.kind);
        if let Some(context) = &self.context {
            d.field("context", context);
        }
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(context) = &self.context {
            // An I/O error's cause says what went wrong ("No such file or directory"): after
            // what was being done, "I/O error" would add nothing.
            if matches!(self.kind, Kind::Io) && self.source.is_some() {
                return f.write_str(context);
            }
            write!(f, "{context}: ")?;
        }
        match &self.kind {
            Kind::Closed => f.write_str("connection closed")?,
            Kind::Timeout => f.write_str("deadline passed before the reply came")?,
            Kind::Full => f.write_str("outgoing queue full")?,
            Kind::Remote(rpc) => write!(f, "peer answered with an error: {rpc}")?,
            Kind::Encode => f.write_str("arguments could not be encoded as a JSON array")?,
            Kind::Decode(what) => write!(f, "{what} could not be decoded into the expected type")?,
            Kind::Protocol(rpc) => write!(f, "protocol error: {rpc}")?,
            Kind::Bind(what) => write!(f, "cannot bind socket path: {what}")?,
            Kind::Io => f.write_str("I/O error")?,
            Kind::Config(what) => write!(f, "invalid options: {what}")?,
            Kind::Layer => f.write_str("a layer failed the call")?,
        }
        // The cause is `source()`, not repeated here: an error reporter prints the whole
        // chain, `error: connect to ./app.sock: No such file or directory (os error 2)`.
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_codes_are_the_wire_contract() {
        // Peers (the Python interop peer, Node users) match on these numbers.
        let codes = [
            (code::PARSE_ERROR, -32700),
            (code::INVALID_FRAME, -32600),
            (code::METHOD_NOT_FOUND, -32601),
            (code::INVALID_PARAMS, -32602),
            (code::INTERNAL_ERROR, -32603),
            (code::TIMEOUT, -32001),
            (code::OVERLOADED, -32002),
            (code::FRAME_TOO_LARGE, -32003),
            (code::SHUTTING_DOWN, -32004),
            (code::CANCELLED, -32800),
        ];
        for (constant, wire) in codes {
            assert_eq!(constant, wire);
        }
    }

    #[test]
    fn each_kind_answers_only_its_own_question() {
        let rpc = || RpcError::internal("x");
        let errors = [
            Error::closed(),
            Error::new(Kind::Remote(rpc())),
            Error::new(Kind::Timeout),
            Error::new(Kind::Full),
            Error::new(Kind::Encode),
            Error::new(Kind::Decode("reply")),
            Error::protocol(rpc()),
            Error::bind("in use", "x"),
            Error::io(std::io::Error::other("x")),
            Error::config("x"),
        ];
        for (i, error) in errors.iter().enumerate() {
            let answers = [
                error.is_closed(),
                error.is_remote(),
                error.is_timeout(),
                error.is_overloaded(),
                // Encode and Decode are both `is_serde`: each row checks it, but the column
                // of the other serde kind is left out.
                error.is_serde() && i != 5,
                error.is_serde() && i != 4,
                error.is_protocol(),
                error.is_bind(),
                error.is_io(),
                error.is_config(),
            ];
            let yes: Vec<usize> = (0..answers.len()).filter(|&j| answers[j]).collect();
            assert_eq!(yes, [i], "{error:?}");
        }
    }

    #[test]
    fn display_names_the_error_itself_and_source_the_cause() {
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        let error = Error::io(missing).with_context("connect to ./app.sock");
        assert_eq!(error.to_string(), "connect to ./app.sock");
        let cause = error.source().map(ToString::to_string);
        assert_eq!(
            cause,
            Some(std::io::Error::from(std::io::ErrorKind::NotFound).to_string())
        );
        // Without context, the kind says what failed; other kinds keep it after the context.
        assert_eq!(
            Error::io(std::io::Error::other("x")).to_string(),
            "I/O error"
        );
        let closed = Error::closed().with_context("call add");
        assert_eq!(closed.to_string(), "call add: connection closed");
    }

    #[test]
    fn a_crate_error_in_a_box_keeps_its_code() {
        let remote = RpcError::new(7, "the peer's own error");
        let boxed: BoxError = Box::new(Error::new(Kind::Remote(remote.clone())));
        assert_eq!(RpcError::from_box_error(boxed), remote);
        let boxed: BoxError = Box::new(Error::new(Kind::Timeout));
        let rpc = RpcError::from_box_error(boxed);
        assert_eq!(rpc.code, code::TIMEOUT, "{rpc}");
        assert!(rpc.message.contains("nested call"), "{rpc}");
    }
}
