//! [`Args`]: the positional arguments of a call, kept as raw JSON until a handler reads them.

use std::fmt;

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{truncate, Error, Kind};

/// The positional arguments of a call: JSON text that is always an array.
///
/// Arguments stay unparsed until a handler deserializes them straight into its own types.
#[derive(Clone)]
pub struct Args(Repr);

/// `[]` is common (calls without arguments, and what [`Request::take_args`] leaves behind), so
/// it costs no allocation.
///
/// [`Request::take_args`]: crate::Request::take_args
#[derive(Clone)]
enum Repr {
    Empty,
    /// JSON text of an array, valid by construction (serialized here, or checked where it
    /// was read).
    Json(Box<str>),
}

impl Args {
    /// No arguments: `[]`.
    pub fn empty() -> Self {
        Args(Repr::Empty)
    }

    /// Serializes `args`, which must serialize to a JSON array (a tuple, an array, a `Vec`),
    /// or to `null` (`()`), which means no arguments.
    ///
    /// ```
    /// let args = diarrhoea::Args::new(&("flood1", 1732400000000u64)).unwrap();
    /// assert_eq!(args.get(), r#"["flood1",1732400000000]"#);
    /// assert_eq!(diarrhoea::Args::new(&()).unwrap().get(), "[]");
    /// assert!(diarrhoea::Args::new(&5).is_err());
    /// ```
    pub fn new<T: Serialize + ?Sized>(args: &T) -> Result<Self, Error> {
        let raw = serde_json::value::to_raw_value(args)
            .map_err(|e| Error::new(Kind::Encode).with_source(e))?;
        match raw.get().as_bytes().first() {
            Some(b'[') => Ok(Args(Repr::Json(raw.into()))),
            _ if raw.get() == "null" => Ok(Args::empty()),
            _ => Err(Error::new(Kind::Encode).with_source(format!(
                "arguments must serialize to a JSON array (use a tuple such as `(x,)`), got `{}`",
                truncate(raw.get(), 40)
            ))),
        }
    }

    /// Wraps raw JSON that is already known to be an array.
    ///
    /// Pretty-printed JSON is fine: line breaks become spaces, so a frame stays one line.
    pub fn from_raw(raw: Box<RawValue>) -> Result<Self, Error> {
        if raw.get().starts_with('[') {
            Ok(Args(Repr::Json(one_line(raw).into())))
        } else {
            Err(Error::new(Kind::Encode).with_source("arguments must be a JSON array"))
        }
    }

    /// Deserializes the arguments, e.g. into a tuple `(String, u64)`.
    pub fn deserialize<'de, T: Deserialize<'de>>(&'de self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.get())
    }

    /// The JSON text of the array.
    pub fn get(&self) -> &str {
        match &self.0 {
            Repr::Empty => "[]",
            Repr::Json(text) => text,
        }
    }

    /// JSON read from a line, already checked to be valid and an array.
    pub(crate) fn from_wire(text: &str) -> Self {
        Args(Repr::Json(text.into()))
    }

    /// The raw JSON value.
    pub fn into_raw(self) -> Box<RawValue> {
        match self.0 {
            Repr::Empty => RawValue::from_string("[]".to_owned()),
            Repr::Json(text) => RawValue::from_string(text.into()),
        }
        .expect("arguments are valid JSON")
    }

    /// Moves the text out, for a [`Response`](crate::Response) that echoes the arguments.
    pub(crate) fn into_text(self) -> Box<str> {
        match self.0 {
            Repr::Empty => "[]".into(),
            Repr::Json(text) => text,
        }
    }
}

/// Raw JSON on one line: outside strings a line break is only whitespace (inside strings it
/// must be escaped), so replacing it with a space keeps the value and keeps a frame one line.
pub(crate) fn one_line(raw: Box<RawValue>) -> Box<RawValue> {
    if !raw.get().bytes().any(|b| b == b'\n' || b == b'\r') {
        return raw;
    }
    let flat = raw.get().replace(['\n', '\r'], " ");
    RawValue::from_string(flat).expect("whitespace changes keep JSON valid")
}

/// Writes `args` as the arguments array of a frame being encoded into `line`.
///
/// `null` (from `()`) becomes `[]`; anything else that is not an array is refused.
pub(crate) fn write_args<T: Serialize + ?Sized>(
    line: &mut BytesMut,
    args: &T,
) -> Result<(), Error> {
    let start = line.len();
    serde_json::to_writer((&mut *line).writer(), args)
        .map_err(|e| Error::new(Kind::Encode).with_source(e))?;
    match line.get(start) {
        Some(b'[') => Ok(()),
        _ if &line[start..] == b"null" => {
            line.truncate(start);
            line.extend_from_slice(b"[]");
            Ok(())
        }
        _ => {
            let got = String::from_utf8_lossy(&line[start..]).into_owned();
            Err(Error::new(Kind::Encode).with_source(format!(
                "arguments must serialize to a JSON array (use a tuple such as `(x,)`), got `{}`",
                truncate(&got, 40)
            )))
        }
    }
}

impl fmt::Debug for Args {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

impl PartialEq for Args {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for Args {}

impl Default for Args {
    fn default() -> Self {
        Args::empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_string()).unwrap()
    }

    #[test]
    fn arguments_are_equal_only_when_their_json_is() {
        assert_eq!(Args::new(&(1,)).unwrap(), Args::new(&(1,)).unwrap());
        assert_ne!(Args::new(&(1,)).unwrap(), Args::new(&(2,)).unwrap());
        assert_ne!(Args::new(&(1,)).unwrap(), Args::empty());
    }

    #[test]
    fn empty_arguments_read_as_an_empty_array_every_way() {
        let empty = Args::empty();
        assert_eq!(empty.get(), "[]");
        assert_eq!(empty, Args::new(&()).unwrap());
        assert_eq!(empty, Args::from_raw(raw("[]")).unwrap());
        assert_eq!(empty.deserialize::<Vec<u8>>().unwrap(), Vec::<u8>::new());
        assert_eq!(empty.clone().into_raw().get(), "[]");
        assert_eq!(Args::default(), empty);
    }

    #[test]
    fn a_value_on_one_line_is_kept_as_it_is() {
        let value = raw(r#"[1,"a b",{"k":null}]"#);
        let at = value.get().as_ptr();
        let kept = one_line(value);
        assert_eq!(kept.get(), r#"[1,"a b",{"k":null}]"#);
        assert_eq!(kept.get().as_ptr(), at, "not copied");
    }

    #[test]
    fn line_breaks_between_tokens_become_spaces() {
        let flat = one_line(raw("[1,\r\n  \"a\\nb\"\n]"));
        assert_eq!(flat.get(), "[1,    \"a\\nb\" ]");
    }
}
