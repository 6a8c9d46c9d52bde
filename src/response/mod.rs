//! [`Response`]: the result of a call, and [`IntoReply`] for what handlers may return;
//! [`StreamReply`], a result that is a stream of items.

use std::fmt;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::args::Args;
use crate::error::{Error, Kind, RpcError};
use crate::wire::{Line, WireText};

mod stream;

pub(crate) use stream::StreamBody;
pub use stream::StreamReply;

/// The result of a call, still as JSON: what a handler answered, or what a peer replied.
///
/// A reply a typed call (`Connection::call`) reads is deserialized where it arrived, in the
/// connection's read buffer; one handed out whole (by [`Caller`](crate::Caller)) is a copy
/// of its own, as is a `clone`.
///
/// A handler's [`StreamReply`] travels through the stack as a `Response` too
/// ([`Response::is_stream`]): its JSON text reads as `null`, and the connection runs the
/// stream when the response reaches it. A clone of it shares the one stream, which the first
/// to run it takes.
pub struct Response(Repr);

/// Three forms, so a `Response` is 40 bytes (see `Args`' representation).
enum Repr {
    /// Valid JSON text, by construction (serialized here, or checked where it was read);
    /// empty for `null`, by far the most common result (every notification handler's), which
    /// then costs no allocation.
    Json(Box<str>),
    /// Valid JSON text, checked where it was read, still in its line. It keeps the read chunk
    /// alive, so it never reaches code that may keep it (see [`Response::detached`]); the
    /// reader bounds the chunks such replies hold while their callers are yet to read them.
    Wire(WireText),
    /// A stream of items to run, taken once (a lock, so a `Response` stays `Sync`).
    Stream(Arc<Mutex<Option<StreamBody>>>),
}

impl Response {
    /// Serializes `value` as the result.
    pub fn new<T: Serialize + ?Sized>(value: &T) -> Result<Self, RpcError> {
        serde_json::value::to_raw_value(value)
            .map(|raw| Response::json(raw.into()))
            .map_err(|e| RpcError::internal(format!("result could not be serialized: {e}")))
    }

    /// `null`, the result of a handler that returns nothing.
    pub fn null() -> Self {
        Response(Repr::Json(Box::default()))
    }

    fn json(text: Box<str>) -> Self {
        Response(Repr::Json(text))
    }

    fn stream(body: StreamBody) -> Self {
        Response(Repr::Stream(Arc::new(Mutex::new(Some(body)))))
    }

    /// Whether this is a handler's [`StreamReply`], still to run.
    pub fn is_stream(&self) -> bool {
        matches!(self.0, Repr::Stream(_))
    }

    /// The stream to run (`Ok(None)` if a clone took it first), or the response itself if it
    /// is not a stream.
    pub(crate) fn into_stream(self) -> Result<Option<StreamBody>, Response> {
        match self.0 {
            Repr::Stream(body) => Ok(body.lock().unwrap_or_else(|p| p.into_inner()).take()),
            _ => Err(self),
        }
    }

    /// Wraps raw JSON.
    ///
    /// Pretty-printed JSON is fine: line breaks become spaces, so a reply stays one line.
    pub fn from_raw(raw: Box<RawValue>) -> Self {
        Response::json(crate::args::one_line(raw).into())
    }

    /// The length of the JSON text, without the UTF-8 check [`Response::get`] makes of text
    /// still in its line.
    pub(crate) fn text_len(&self) -> usize {
        self.as_bytes().len()
    }

    /// The JSON text as bytes, as the parsers read it: text still in its line is not checked
    /// for UTF-8 again, as [`Response::get`] checks it.
    fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Json(text) if text.is_empty() => b"null",
            Repr::Json(text) => text.as_bytes(),
            Repr::Wire(text) => text.as_bytes(),
            Repr::Stream(_) => b"null",
        }
    }

    /// Raw JSON read from a line, which cannot hold a line break: with the line's bytes,
    /// left where it is.
    pub(crate) fn from_wire(text: &[u8], line: Option<Line<'_>>) -> Self {
        match line {
            Some(line) => Response(Repr::Wire(line.text(text))),
            None => Response::json(crate::wire::to_text(text)),
        }
    }

    /// The result in memory of its own: text still in its line is copied out, so whoever
    /// keeps the result does not keep the read buffer.
    pub(crate) fn detached(self) -> Self {
        match self.0 {
            Repr::Wire(text) => Response::json(text.get().into()),
            _ => self,
        }
    }

    /// Whether the text is still in its line.
    #[cfg(test)]
    pub(crate) fn in_line(&self) -> bool {
        matches!(self.0, Repr::Wire(_))
    }

    /// Deserializes the result.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, Error> {
        crate::args::plain::deserialize(self.as_bytes())
            .map_err(|e| Error::new(Kind::Decode("reply")).with_source(e))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        match &self.0 {
            Repr::Json(text) if text.is_empty() => RawValue::NULL.get(),
            Repr::Json(text) => text,
            Repr::Wire(text) => text.get(),
            Repr::Stream(_) => RawValue::NULL.get(),
        }
    }

    /// The raw JSON value.
    pub fn into_raw(self) -> Box<RawValue> {
        match self.0 {
            Repr::Json(text) if text.is_empty() => RawValue::NULL.to_owned(),
            Repr::Stream(_) => RawValue::NULL.to_owned(),
            Repr::Json(text) => {
                RawValue::from_string(text.into()).expect("a response is valid JSON")
            }
            Repr::Wire(text) => {
                RawValue::from_string(text.get().to_owned()).expect("a response is valid JSON")
            }
        }
    }
}

/// A clone is its owner's to keep: a result still in its line is copied out of it, so a clone
/// never keeps the read buffer alive.
impl Clone for Response {
    fn clone(&self) -> Self {
        match &self.0 {
            Repr::Json(text) => Response::json(text.clone()),
            Repr::Wire(text) => Response::json(text.get().into()),
            Repr::Stream(body) => Response(Repr::Stream(body.clone())),
        }
    }
}

/// Equal JSON text; a stream equals only its clones.
impl PartialEq for Response {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Repr::Stream(a), Repr::Stream(b)) => Arc::ptr_eq(a, b),
            (Repr::Stream(_), _) | (_, Repr::Stream(_)) => false,
            _ => self.get() == other.get(),
        }
    }
}

impl Eq for Response {}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Repr::Stream(_) => f.write_str("Response(stream)"),
            _ => write!(f, "Response({} bytes)", self.get().len()),
        }
    }
}

/// What a handler may return: a value that becomes the reply, or an error reply.
///
/// Implemented for `()` (replies `null`), [`Response`], [`Args`], [`Json`], common value
/// types, and `Result<T, E>` where `T: IntoReply` and `E: Into<RpcError>` — so a handler can
/// use `?` on this crate's [`Error`] and on [`RpcError`]. Wrap any other serializable type in
/// [`Json`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be returned from a diarrhoea handler",
    note = "return a `Result<T, E>` with `E: Into<RpcError>`, or wrap a serializable value in `diarrhoea::Json`"
)]
pub trait IntoReply {
    /// Converts into the reply.
    fn into_reply(self) -> Result<Response, RpcError>;
}

/// Serializes any `T: Serialize` as a handler's result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json<T>(pub T);

impl<T: Serialize> IntoReply for Json<T> {
    fn into_reply(self) -> Result<Response, RpcError> {
        Response::new(&self.0)
    }
}

impl IntoReply for () {
    fn into_reply(self) -> Result<Response, RpcError> {
        Ok(Response::null())
    }
}

impl IntoReply for Response {
    fn into_reply(self) -> Result<Response, RpcError> {
        Ok(self)
    }
}

impl IntoReply for Args {
    fn into_reply(self) -> Result<Response, RpcError> {
        Ok(Response::json(self.into_text()))
    }
}

impl IntoReply for Box<RawValue> {
    fn into_reply(self) -> Result<Response, RpcError> {
        Ok(Response::from_raw(self))
    }
}

impl<T: IntoReply, E: Into<RpcError>> IntoReply for Result<T, E> {
    fn into_reply(self) -> Result<Response, RpcError> {
        self.map_err(Into::into).and_then(IntoReply::into_reply)
    }
}

macro_rules! serialize_reply {
    ($($ty:ty),* $(,)?) => {$(
        impl IntoReply for $ty {
            fn into_reply(self) -> Result<Response, RpcError> {
                Response::new(&self)
            }
        }
    )*};
}

serialize_reply!(
    bool,
    i8,
    i16,
    i32,
    i64,
    u8,
    u16,
    u32,
    u64,
    usize,
    isize,
    f32,
    f64,
    String,
    &'static str,
    serde_json::Value,
);

impl<T: Serialize> IntoReply for Vec<T> {
    fn into_reply(self) -> Result<Response, RpcError> {
        Response::new(&self)
    }
}

impl<T: Serialize> IntoReply for Option<T> {
    fn into_reply(self) -> Result<Response, RpcError> {
        Response::new(&self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_equal_when_their_json_is() {
        assert_eq!(
            Response::new(&(1, "a")).unwrap(),
            Response::new(&(1, "a")).unwrap()
        );
        assert_ne!(Response::new(&1).unwrap(), Response::new(&2).unwrap());
        assert_ne!(Response::null(), Response::new(&0).unwrap());
        assert_eq!(Response::null(), Response::new(&()).unwrap());
    }

    #[test]
    fn a_result_in_its_line_reads_as_any_other_and_copies_are_its_own() {
        let text = r#"[7,{"a":[1]}]"#;
        let bytes = bytes::Bytes::from_static(text.as_bytes());
        let chunk = crate::wire::ChunkMark::default();
        let watch = chunk.watch();
        let wire = Line {
            bytes: &bytes,
            chunk: &chunk,
        };
        let reply = Response::from_wire(&text.as_bytes()[3..12], Some(wire));
        drop(chunk);
        assert!(reply.in_line());
        let same = Response::new(&serde_json::json!({"a": [1]})).unwrap();
        assert_eq!(reply, same);
        assert_eq!(reply.get(), r#"{"a":[1]}"#);
        assert_eq!((reply.text_len(), Response::null().text_len()), (9, 4));
        assert_eq!(format!("{reply:?}"), "Response(9 bytes)");
        let parsed: serde_json::Value = reply.deserialize().unwrap();
        assert_eq!(parsed["a"][0], 1);
        let clone = reply.clone();
        assert!(!clone.in_line() && clone == reply);
        assert!(watch.is_held());
        let detached = reply.detached();
        assert!(!detached.in_line() && !watch.is_held());
        assert_eq!(detached.into_raw().get(), r#"{"a":[1]}"#);
        assert!(!Response::from_wire(b"1", None).in_line());
        assert!(!Response::null().detached().in_line());
    }

    #[test]
    fn null_reads_as_null_every_way() {
        let null = Response::null();
        assert_eq!(null.get(), "null");
        assert_eq!(null.deserialize::<Option<u8>>().unwrap(), None);
        assert_eq!(null.clone().into_raw().get(), "null");
        assert_eq!(format!("{null:?}"), "Response(4 bytes)");
    }
}
