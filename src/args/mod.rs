//! [`Args`]: the positional arguments of a call, kept as raw JSON until a handler reads them.

use std::fmt;

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::error::{truncate, Error, Kind};
use crate::fd::{self, Received};
use crate::wire::{Line, WireText};

pub(crate) mod plain;

/// The positional arguments of a call: JSON text that is always an array.
///
/// Arguments stay unparsed until a handler deserializes them straight into its own types.
///
/// The arguments of an incoming call stay in the connection's read buffer until its handler
/// has read them, so they cost no copy. Whatever may keep them longer gets a copy of its
/// own: [`Request::take_args`] (and so a handler taking `Args`), and `clone`.
///
/// [`Request::take_args`]: crate::Request::take_args
pub struct Args(Repr);

/// Two forms, so `Args` is 40 bytes: a request larger than 128 bytes is moved by a call to
/// `memcpy` (LLVM's limit for inline copies), and a request is moved many times. A third
/// variant would need a tag of its own (neither form has a second spare bit pattern), so
/// arguments with descriptors are one kind of [`Own`].
///
/// [`Request::take_args`]: crate::Request::take_args
enum Repr {
    /// Arguments in memory of their own.
    Json(Own),
    /// JSON text of an array, checked where it was read, still in its line. It keeps the
    /// read chunk alive, so it never reaches code that may keep it (see [`Args::detached`]):
    /// while its call waits or runs, the reader bounds the chunks such frames hold.
    Wire(WireText),
}

/// 16 bytes, as the `Box<str>` alone: the second variant fits beside the pointer's null.
enum Own {
    /// JSON text of an array, valid by construction (serialized here, or checked where it
    /// was read); empty for `[]`, which is common (calls without arguments, and what
    /// [`Request::take_args`] leaves behind) and then costs no allocation.
    Text(Box<str>),
    /// Arguments with descriptors: those that arrived with the frame, or those to send with
    /// it. Boxed: rare.
    Fds(Box<WithFds>),
}

struct WithFds {
    /// The JSON text of the array, in memory of its own (a frame's line is not kept: the
    /// frame is rare, its copy cheap, and `Repr` stays free of recursion).
    text: Box<str>,
    /// Shared by clones: whoever reads an `Fd` first takes it.
    fds: Arc<Received>,
}

impl Repr {
    fn text(text: Box<str>) -> Self {
        Repr::Json(Own::Text(text))
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Repr::Json(Own::Text(text)) if text.is_empty() => b"[]",
            Repr::Json(Own::Text(text)) => text.as_bytes(),
            Repr::Wire(text) => text.as_bytes(),
            Repr::Json(Own::Fds(with)) => with.text.as_bytes(),
        }
    }

    fn get(&self) -> &str {
        match self {
            Repr::Json(Own::Text(text)) if text.is_empty() => "[]",
            Repr::Json(Own::Text(text)) => text,
            Repr::Wire(text) => text.get(),
            Repr::Json(Own::Fds(with)) => &with.text,
        }
    }

    fn detached(self) -> Self {
        match self {
            Repr::Wire(text) => Repr::text(text.get().into()),
            json => json,
        }
    }

    fn into_text(self) -> Box<str> {
        match self {
            Repr::Json(Own::Text(text)) if text.is_empty() => "[]".into(),
            Repr::Json(Own::Text(text)) => text,
            Repr::Wire(text) => text.get().into(),
            Repr::Json(Own::Fds(with)) => with.text,
        }
    }

    fn with_fds(&self) -> Option<&WithFds> {
        match self {
            Repr::Json(Own::Fds(with)) => Some(with),
            _ => None,
        }
    }
}

impl Args {
    /// No arguments: `[]`.
    pub fn empty() -> Self {
        Args(Repr::text(Box::default()))
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
        // `Fd`s among the arguments hand over duplicates, sent with the frame.
        let (raw, fds) = fd::collect(|| serde_json::value::to_raw_value(args));
        let raw = raw.map_err(|e| Error::new(Kind::Encode).with_source(e))?;
        match raw.get().as_bytes().first() {
            Some(b'[') if fds.is_empty() => Ok(Args(Repr::text(raw.into()))),
            Some(b'[') => Ok(Args(Repr::text(raw.into())).with_fds(fds)),
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
            Ok(Args(Repr::text(one_line(raw).into())))
        } else {
            Err(Error::new(Kind::Encode).with_source("arguments must be a JSON array"))
        }
    }

    /// Deserializes the arguments, e.g. into a tuple `(String, u64)`.
    ///
    /// The result is what `serde_json::from_str` gives for [`Args::get`]; an error is one of
    /// the crate's, [`Error::is_serde`], with serde_json's error as its `source()`, as
    /// [`Response::deserialize`](crate::Response::deserialize) fails.
    pub fn deserialize<'de, T: Deserialize<'de>>(&'de self) -> Result<T, Error> {
        self.parse().map_err(|e| {
            let error = Error::new(Kind::Decode("arguments")).with_source(e);
            if self.get().starts_with('{') {
                // By-name arguments from JSON-RPC 2.0: say what is expected instead.
                error.with_context("by-name params given; positional arguments are expected")
            } else {
                error
            }
        })
    }

    /// As [`Args::deserialize`], with serde_json's own error: handlers answer -32602 with its
    /// message.
    #[inline]
    pub(crate) fn parse<'de, T: Deserialize<'de>>(&'de self) -> Result<T, serde_json::Error> {
        match self.0.with_fds() {
            Some(with) => parse_with_fds(with),
            None => plain::deserialize(self.as_bytes()),
        }
    }

    /// Reads `text` (these arguments, rewritten: padded with `null`s) with this frame's
    /// descriptors.
    pub(crate) fn parse_text<T: serde::de::DeserializeOwned>(
        &self,
        text: &str,
    ) -> Result<T, serde_json::Error> {
        match self.0.with_fds() {
            Some(with) => fd::receiving(&with.fds, || serde_json::from_str(text)),
            None => serde_json::from_str(text),
        }
    }

    /// The same arguments with `fds`, the descriptors that arrived with their frame or are
    /// to be sent with it (in placeholder order).
    pub(crate) fn with_fds(self, fds: Vec<OwnedFd>) -> Self {
        Args(Repr::Json(Own::Fds(Box::new(WithFds {
            text: self.0.into_text(),
            fds: Arc::new(Received::new(fds)),
        }))))
    }

    /// The descriptors that came with the arguments (or go with them), if any.
    pub(crate) fn fds(&self) -> Option<&Arc<Received>> {
        self.0.with_fds().map(|with| &with.fds)
    }

    /// The JSON text as bytes, as the parsers read it: text still in its line is not checked
    /// for UTF-8 again, as [`Args::get`] checks it.
    #[inline]
    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The JSON text of the array.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The length of the JSON text, without the UTF-8 check [`Args::get`] makes of text
    /// still in its line: the inbound budget charges every call its length.
    pub(crate) fn text_len(&self) -> usize {
        self.as_bytes().len()
    }

    /// JSON read from a line, already checked to be valid UTF-8 and an array: with the
    /// line's bytes, left where it is.
    pub(crate) fn from_wire(text: &[u8], line: Option<Line<'_>>) -> Self {
        match line {
            Some(line) => Args(Repr::Wire(line.text(text))),
            None => Args(Repr::text(crate::wire::to_text(text))),
        }
    }

    /// The arguments in memory of their own: text still in its line is copied out, so
    /// whoever keeps the result does not keep the read buffer.
    pub(crate) fn detached(self) -> Self {
        Args(self.0.detached())
    }

    /// Whether the text is still in its line.
    #[cfg(test)]
    pub(crate) fn in_line(&self) -> bool {
        matches!(self.0, Repr::Wire(_))
    }

    /// The raw JSON value.
    pub fn into_raw(self) -> Box<RawValue> {
        RawValue::from_string(self.into_text().into()).expect("arguments are valid JSON")
    }

    /// Moves the text out, for a [`Response`](crate::Response) that echoes the arguments.
    pub(crate) fn into_text(self) -> Box<str> {
        self.0.into_text()
    }
}

/// One reading only, by serde_json: an `Fd` read takes its descriptor, so a first attempt
/// (the plain reader's) that fails half way must not have taken any.
#[cold]
fn parse_with_fds<'de, T: Deserialize<'de>>(with: &'de WithFds) -> Result<T, serde_json::Error> {
    fd::receiving(&with.fds, || serde_json::from_str(&with.text))
}

/// A clone is its owner's to keep: arguments still in their line are copied out of it, so a
/// clone never keeps the read buffer alive. Descriptors are shared: whichever copy reads an
/// [`Fd`](crate::Fd) first takes it.
impl Clone for Args {
    fn clone(&self) -> Self {
        Args(match &self.0 {
            Repr::Json(Own::Text(text)) => Repr::text(text.clone()),
            Repr::Wire(text) => Repr::text(text.get().into()),
            Repr::Json(Own::Fds(with)) => Repr::Json(Own::Fds(Box::new(WithFds {
                text: with.text.clone(),
                fds: with.fds.clone(),
            }))),
        })
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
    use bytes::Bytes;

    use super::*;
    use crate::wire::ChunkMark;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_string()).unwrap()
    }

    /// Arguments left in `line` (whose `text` they are), and the chunk's mark.
    fn in_line(line: &'static str, text: std::ops::Range<usize>) -> (Args, ChunkMark) {
        let bytes = Bytes::from_static(line.as_bytes());
        let chunk = ChunkMark::default();
        let wire = Line {
            bytes: &bytes,
            chunk: &chunk,
        };
        (Args::from_wire(&line.as_bytes()[text], Some(wire)), chunk)
    }

    #[test]
    fn arguments_that_do_not_fit_fail_as_a_reply_does() {
        let args = Args::new(&("a", 1)).unwrap();
        let error = args.deserialize::<(u8, u8)>().unwrap_err();
        let serde = serde_json::from_str::<(u8, u8)>(args.get()).unwrap_err();
        assert!(error.is_serde(), "{error}");
        assert!(error.to_string().starts_with("arguments "), "{error}");
        let source = std::error::Error::source(&error).map(ToString::to_string);
        assert_eq!(source, Some(serde.to_string()));
    }

    #[test]
    fn arguments_in_their_line_read_as_any_others() {
        let (args, _chunk) = in_line(r#"["m",["a",1]]"#, 5..12);
        assert!(args.in_line());
        let same = Args::new(&("a", 1)).unwrap();
        assert_eq!(args.get(), r#"["a",1]"#);
        assert_eq!(args, same);
        assert_ne!(args, Args::empty());
        assert_eq!(args.deserialize::<(String, u8)>().unwrap(), ("a".into(), 1));
        assert_eq!(format!("{args:?}"), format!("{same:?}"));
        assert_eq!(args.text_len(), args.get().len());
        assert_eq!(Args::empty().text_len(), 2);
        assert_eq!(args.into_raw().get(), r#"["a",1]"#);
        let (args, _chunk) = in_line(r#"["m",["a",1]]"#, 5..12);
        assert_eq!(&*args.into_text(), r#"["a",1]"#);
    }

    #[test]
    fn arguments_read_from_a_line_are_copied_unless_given_it() {
        let args = Args::from_wire(b"[1]", None);
        assert!(!args.in_line());
        assert_eq!(args.get(), "[1]");
    }

    #[test]
    fn a_clone_or_a_detached_copy_does_not_hold_the_line() {
        let (args, chunk) = in_line(r#"["m",[2]]"#, 5..8);
        let watch = chunk.watch();
        drop(chunk);
        let clone = args.clone();
        assert!(!clone.in_line());
        assert_eq!(clone, args);
        let detached = args.detached();
        assert!(!watch.is_held(), "neither copy holds the chunk");
        assert!(!detached.in_line());
        assert_eq!((clone.get(), detached.get()), ("[2]", "[2]"));
        assert!(!Args::empty().detached().in_line());
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
