//! [`Response`]: the result of a call, and [`IntoReply`] for what handlers may return.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::args::Args;
use crate::error::{Error, Kind, RpcError};

/// The result of a call, still as JSON: what a handler answered, or what a peer replied.
#[derive(Clone)]
pub struct Response(Repr);

/// `null` is by far the most common result (every notification handler's), so it costs no
/// allocation.
#[derive(Clone)]
enum Repr {
    Null,
    /// Valid JSON text, by construction (serialized here, or checked where it was read).
    Json(Box<str>),
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
        Response(Repr::Null)
    }

    fn json(text: Box<str>) -> Self {
        Response(Repr::Json(text))
    }

    /// Wraps raw JSON.
    ///
    /// Pretty-printed JSON is fine: line breaks become spaces, so a reply stays one line.
    pub fn from_raw(raw: Box<RawValue>) -> Self {
        Response::json(crate::args::one_line(raw).into())
    }

    /// Raw JSON read from a line, which cannot hold a line break.
    pub(crate) fn from_wire(text: &str) -> Self {
        Response::json(text.into())
    }

    /// Deserializes the result.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_str(self.get()).map_err(|e| Error::new(Kind::Decode).with_source(e))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        match &self.0 {
            Repr::Null => RawValue::NULL.get(),
            Repr::Json(text) => text,
        }
    }

    /// The raw JSON value.
    pub fn into_raw(self) -> Box<RawValue> {
        match self.0 {
            Repr::Null => RawValue::NULL.to_owned(),
            Repr::Json(text) => {
                RawValue::from_string(text.into()).expect("a response is valid JSON")
            }
        }
    }
}

impl PartialEq for Response {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for Response {}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Response({} bytes)", self.get().len())
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
    fn null_reads_as_null_every_way() {
        let null = Response::null();
        assert_eq!(null.get(), "null");
        assert_eq!(null.deserialize::<Option<u8>>().unwrap(), None);
        assert_eq!(null.clone().into_raw().get(), "null");
        assert_eq!(format!("{null:?}"), "Response(4 bytes)");
    }
}
