//! The wire envelope: the one file that knows the JSON shape of a frame.
//!
//! Meaning (routing, pending calls) is added one layer up; a [`Frame`] only carries data.

use std::fmt;
use std::sync::Arc;

use bytes::BufMut;
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{code, Error, Kind, RpcError};
use crate::response::Response;

/// Request ids are unsigned integers below 2^53, so that any JSON peer (JavaScript included)
/// holds them exactly.
pub const MAX_ID: u64 = (1 << 53) - 1;

/// The positional arguments of a call: JSON text that is always an array.
///
/// Arguments stay unparsed until a handler deserializes them straight into its own types.
#[derive(Clone)]
pub struct Args(Box<RawValue>);

impl Args {
    /// No arguments: `[]`.
    pub fn empty() -> Self {
        Args(RawValue::from_string("[]".to_owned()).expect("`[]` is JSON"))
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
            Some(b'[') => Ok(Args(raw)),
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
            Ok(Args(one_line(raw)))
        } else {
            Err(Error::new(Kind::Encode).with_source("arguments must be a JSON array"))
        }
    }

    /// Deserializes the arguments, e.g. into a tuple `(String, u64)`.
    pub fn deserialize<'de, T: Deserialize<'de>>(&'de self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// The JSON text of the array.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The raw JSON value.
    pub fn into_raw(self) -> Box<RawValue> {
        self.0
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
fn write_args<T: Serialize + ?Sized>(line: &mut Vec<u8>, args: &T) -> Result<(), Error> {
    let start = line.len();
    serde_json::to_writer(&mut *line, args).map_err(|e| Error::new(Kind::Encode).with_source(e))?;
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

/// Encodes a notification `["method",[args...]]`, or with an id a request
/// `["method",[args...],id(,meta)]`, straight into its line: no intermediate `Args` or
/// `Frame`, one allocation.
pub(crate) fn call_line<T: Serialize + ?Sized>(
    method: &str,
    args: &T,
    id: Option<u64>,
    meta: &Meta,
) -> Result<Vec<u8>, Error> {
    let encode = |e| Error::new(Kind::Encode).with_source(e);
    let mut line = Vec::with_capacity(method.len() + 64);
    line.push(b'[');
    serde_json::to_writer(&mut line, method).map_err(encode)?;
    line.push(b',');
    write_args(&mut line, args)?;
    if let Some(id) = id {
        line.push(b',');
        serde_json::to_writer(&mut line, &id).map_err(encode)?;
        if !meta.is_empty() {
            line.push(b',');
            serde_json::to_writer(&mut line, meta).map_err(encode)?;
        }
    }
    line.extend_from_slice(b"]\n");
    Ok(line)
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

/// Optional per-request metadata, the fourth element of a request frame.
///
/// Unknown keys are ignored, so peers can add keys without breaking older receivers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// A relative deadline in milliseconds, counted from when the receiver reads the frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl Meta {
    fn is_empty(&self) -> bool {
        self.timeout_ms.is_none()
    }
}

/// One line of protocol v1.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `["method",[args...]]`: no reply is expected (diarrhoea 1.1.0's only frame).
    Notification {
        /// The method name.
        method: Arc<str>,
        /// The positional arguments.
        args: Args,
    },
    /// `["method",[args...],id]` or `["method",[args...],id,meta]`.
    Request {
        /// The method name.
        method: Arc<str>,
        /// The positional arguments.
        args: Args,
        /// Chosen by the sender, unique among its requests in flight on the connection.
        id: u64,
        /// Metadata; empty meta is not written.
        meta: Meta,
    },
    /// `[id,result]` or `[id,null,{"code":..,"message":..}]`.
    Reply {
        /// The id of the request this answers.
        id: u64,
        /// The result, or the error object.
        result: Result<Response, RpcError>,
    },
    /// `[null,null,{"code":..,"message":..}]`: not tied to a request, sent before closing.
    ConnectionError(RpcError),
}

/// A line that is not a valid frame.
///
/// `id` is set when the line was a request whose id could be read: the receiver answers it
/// with an error reply instead of dropping it silently.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidFrame {
    /// The id of the malformed request, if it could be read.
    pub id: Option<u64>,
    /// What was wrong, as the error the peer would see.
    pub error: RpcError,
}

impl InvalidFrame {
    pub(crate) fn new(id: Option<u64>, error: RpcError) -> Self {
        InvalidFrame { id, error }
    }
}

impl fmt::Display for InvalidFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.id {
            Some(id) => write!(f, "{} (request id {id})", self.error),
            None => fmt::Display::fmt(&self.error, f),
        }
    }
}

impl std::error::Error for InvalidFrame {}

impl Frame {
    /// Parses one line (without its terminator).
    ///
    /// ```
    /// use diarrhoea::Frame;
    /// let frame = Frame::parse(r#"["ping",["flood1",1732400000000]]"#).unwrap();
    /// assert!(matches!(frame, Frame::Notification { ref method, .. } if &**method == "ping"));
    /// let bad = Frame::parse(r#"["echo",5,7]"#).unwrap_err();
    /// assert_eq!((bad.id, bad.error.code), (Some(7), -32600));
    /// ```
    pub fn parse(line: &str) -> Result<Frame, InvalidFrame> {
        let parts: Parts<'_> = serde_json::from_str(line).map_err(|e| {
            let error = if e.is_data() {
                RpcError::invalid_frame(format!("not an array of 2 to 4 elements: {e}"))
            } else {
                RpcError::new(code::PARSE_ERROR, format!("parse error: {e}"))
            };
            InvalidFrame::new(None, error)
        })?;
        parts.into_frame()
    }

    /// Appends the frame's line, terminator included, to `buf`.
    pub fn encode<B: BufMut>(&self, buf: &mut B) {
        // Serializing a `str`, an integer or our own error struct into memory cannot fail.
        fn json<B: BufMut, T: Serialize + ?Sized>(buf: &mut B, value: &T) {
            serde_json::to_writer(buf.writer(), value).expect("in-memory JSON serialization");
        }
        buf.put_u8(b'[');
        match self {
            Frame::Notification { method, args } => {
                json(buf, &**method);
                buf.put_u8(b',');
                buf.put_slice(args.get().as_bytes());
            }
            Frame::Request {
                method,
                args,
                id,
                meta,
            } => {
                json(buf, &**method);
                buf.put_u8(b',');
                buf.put_slice(args.get().as_bytes());
                buf.put_u8(b',');
                json(buf, id);
                if !meta.is_empty() {
                    buf.put_u8(b',');
                    json(buf, meta);
                }
            }
            Frame::Reply { id, result } => {
                json(buf, id);
                match result {
                    Ok(value) => {
                        buf.put_u8(b',');
                        buf.put_slice(value.get().as_bytes());
                    }
                    Err(error) => {
                        buf.put_slice(b",null,");
                        json(buf, error);
                    }
                }
            }
            Frame::ConnectionError(error) => {
                buf.put_slice(b"null,null,");
                json(buf, error);
            }
        }
        buf.put_slice(b"]\n");
    }

    /// The frame's line, terminator included, in a buffer of its own.
    pub(crate) fn to_line(&self) -> Vec<u8> {
        let mut line = Vec::with_capacity(self.payload_len() + 48);
        self.encode(&mut line);
        line
    }

    /// The encoded length of the frame's payload, an upper bound used to refuse frames a
    /// peer would discard.
    pub(crate) fn payload_len(&self) -> usize {
        match self {
            Frame::Notification { method, args } | Frame::Request { method, args, .. } => {
                method.len() + args.get().len()
            }
            Frame::Reply { result: Ok(v), .. } => v.get().len(),
            Frame::Reply { result: Err(e), .. } | Frame::ConnectionError(e) => e.message.len(),
        }
    }
}

/// The elements of a frame, borrowed from the line, parsed without allocating.
struct Parts<'a> {
    items: [Option<&'a RawValue>; 4],
    len: usize,
}

impl<'de: 'a, 'a> Deserialize<'de> for Parts<'a> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PartsVisitor;
        impl<'de> Visitor<'de> for PartsVisitor {
            type Value = Parts<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parts<'de>, A::Error> {
                let mut parts = Parts {
                    items: [None; 4],
                    len: 0,
                };
                while parts.len < 4 {
                    match seq.next_element::<&'de RawValue>()? {
                        Some(item) => parts.items[parts.len] = Some(item),
                        None => return Ok(parts),
                    }
                    parts.len += 1;
                }
                // Count the rest without keeping it; the frame is invalid anyway.
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    parts.len += 1;
                }
                Ok(parts)
            }
        }
        deserializer.deserialize_seq(PartsVisitor)
    }
}

impl<'a> Parts<'a> {
    fn get(&self, i: usize) -> &'a str {
        self.items[i].map_or("", RawValue::get)
    }

    fn into_frame(self) -> Result<Frame, InvalidFrame> {
        match self.get(0).as_bytes().first() {
            Some(b'"') => self.into_call(),
            Some(b'0'..=b'9' | b'-') => self.into_reply(),
            Some(b'n') if self.len == 3 && self.get(1) == "null" => {
                let error =
                    parse_error_object(self.get(2)).map_err(|e| InvalidFrame::new(None, e))?;
                Ok(Frame::ConnectionError(error))
            }
            _ => Err(InvalidFrame::new(
                None,
                RpcError::invalid_frame("element 0 must be a method name or a reply id"),
            )),
        }
    }

    fn into_call(self) -> Result<Frame, InvalidFrame> {
        let id = if self.len >= 3 {
            Some(parse_id(self.get(2)).map_err(|e| InvalidFrame::new(None, e))?)
        } else {
            None
        };
        let invalid = |reason: &str| InvalidFrame::new(id, RpcError::invalid_frame(reason));
        if !(2..=4).contains(&self.len) {
            return Err(invalid("a call has 2 to 4 elements"));
        }
        let raw = self.get(0);
        // Without escapes the name is the text between the quotes, already validated.
        let method: Arc<str> = if raw.contains('\\') {
            let parsed: String = serde_json::from_str(raw)
                .map_err(|_| invalid("method name is not a valid string"))?;
            parsed.into()
        } else {
            raw[1..raw.len() - 1].into()
        };
        let args = self.items[1].expect("len >= 2");
        if !args.get().starts_with('[') {
            return Err(invalid("args (element 1) must be an array"));
        }
        let args = Args(args.to_owned());
        let Some(id) = id else {
            return Ok(Frame::Notification { method, args });
        };
        let meta = match self.items[3] {
            None => Meta::default(),
            Some(raw) if raw.get().starts_with('{') => serde_json::from_str(raw.get())
                .map_err(|e| invalid(&format!("meta (element 3): {e}")))?,
            Some(_) => return Err(invalid("meta (element 3) must be an object")),
        };
        Ok(Frame::Request {
            method,
            args,
            id,
            meta,
        })
    }

    fn into_reply(self) -> Result<Frame, InvalidFrame> {
        // A reply is never answered, so a malformed one carries no id to reply to.
        let id = parse_id(self.get(0)).map_err(|e| InvalidFrame::new(None, e))?;
        let result = match self.len {
            2 => Ok(Response::from_wire(
                self.items[1].expect("len == 2").to_owned(),
            )),
            3 if self.get(1) == "null" => {
                Err(parse_error_object(self.get(2)).unwrap_or_else(|e| {
                    RpcError::invalid_frame(format!("malformed error reply: {e}"))
                }))
            }
            _ => {
                return Err(InvalidFrame::new(
                    None,
                    RpcError::invalid_frame(format!(
                        "reply {id}: expected [id,result] or [id,null,error]"
                    )),
                ))
            }
        };
        Ok(Frame::Reply { id, result })
    }
}

fn parse_id(raw: &str) -> Result<u64, RpcError> {
    match serde_json::from_str::<u64>(raw) {
        Ok(id) if id <= MAX_ID => Ok(id),
        _ => Err(RpcError::invalid_frame(format!(
            "id must be an unsigned integer below 2^53, got `{}`",
            truncate(raw, 40)
        ))),
    }
}

fn parse_error_object(raw: &str) -> Result<RpcError, RpcError> {
    serde_json::from_str(raw).map_err(|e| RpcError::invalid_frame(format!("error object: {e}")))
}

/// Shortens untrusted text for messages and logs, on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn encode(frame: &Frame) -> String {
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        String::from_utf8(buf.to_vec()).unwrap()
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn notifications_are_byte_identical_to_diarrhoea_1_1_0() {
        let args = Args::new(&("flood1", 1732400000000u64)).unwrap();
        let frame = Frame::Notification {
            method: "ping".into(),
            args,
        };
        assert_eq!(encode(&frame), "[\"ping\",[\"flood1\",1732400000000]]\n");
        let none = Frame::Notification {
            method: "ping".into(),
            args: Args::empty(),
        };
        assert_eq!(encode(&none), "[\"ping\",[]]\n");
    }

    #[test]
    fn every_frame_round_trips() {
        let frames = [
            Frame::Notification {
                method: "a\"b\n".into(),
                args: Args::new(&(1, "x")).unwrap(),
            },
            Frame::Request {
                method: "echo".into(),
                args: Args::empty(),
                id: 7,
                meta: Meta::default(),
            },
            Frame::Request {
                method: "echo".into(),
                args: Args::new(&[1, 2]).unwrap(),
                id: MAX_ID,
                meta: Meta {
                    timeout_ms: Some(250),
                },
            },
            Frame::Reply {
                id: 7,
                result: Ok(Response::from_raw(raw(r#"{"a":[1,2]}"#))),
            },
            Frame::Reply {
                id: 8,
                result: Err(RpcError::new(-1, "no")),
            },
            Frame::ConnectionError(RpcError::new(code::OVERLOADED, "server full")),
        ];
        for frame in frames {
            let line = encode(&frame);
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            assert_eq!(Frame::parse(line.trim_end()).unwrap(), frame, "{line}");
        }
    }

    #[test]
    fn wire_shapes_match_the_spec() {
        let req = Frame::Request {
            method: "m".into(),
            args: Args::empty(),
            id: 3,
            meta: Meta {
                timeout_ms: Some(5),
            },
        };
        assert_eq!(encode(&req), "[\"m\",[],3,{\"timeout_ms\":5}]\n");
        let err = Frame::Reply {
            id: 3,
            result: Err(RpcError::method_not_found("m")),
        };
        assert_eq!(
            encode(&err),
            "[3,null,{\"code\":-32601,\"message\":\"method not found: m\"}]\n"
        );
        let conn = Frame::ConnectionError(RpcError::new(-32004, "bye"));
        assert_eq!(
            encode(&conn),
            "[null,null,{\"code\":-32004,\"message\":\"bye\"}]\n"
        );
    }

    #[test]
    fn meta_ignores_unknown_keys() {
        let frame = Frame::parse(r#"["m",[],1,{"trace":"x","timeout_ms":9}]"#).unwrap();
        assert!(matches!(
            frame,
            Frame::Request {
                meta: Meta {
                    timeout_ms: Some(9)
                },
                ..
            }
        ));
    }

    fn invalid(line: &str) -> InvalidFrame {
        Frame::parse(line).expect_err(line)
    }

    #[test]
    fn malformed_lines_are_classified() {
        assert_eq!(invalid("not json").error.code, code::PARSE_ERROR);
        assert_eq!(invalid("[\"m\",[1]").error.code, code::PARSE_ERROR);
        for line in [
            "{}",
            "5",
            "[]",
            "[\"m\"]",
            "[true,[]]",
            "[\"m\",5]",
            "[\"m\",[],-1]",
            "[\"m\",[],1.5]",
            "[\"m\",[],9007199254740992]",
            "[1,2,3]",
            "[null,[]]",
            "[-1,5]",
        ] {
            let e = invalid(line);
            assert_eq!(e.error.code, code::INVALID_FRAME, "{line}");
            assert_eq!(e.id, None, "{line}");
        }
    }

    #[test]
    fn malformed_requests_keep_a_readable_id() {
        for line in [
            "[\"m\",5,7]",
            "[\"m\",null,7]",
            "[\"m\",[],7,[]]",
            "[\"m\",[],7,{\"timeout_ms\":-1}]",
            "[\"m\",[],7,{},1]",
            "[\"m\",[],7,2,3]",
            "[5,[],7]",
        ] {
            let e = Frame::parse(line);
            match e {
                Err(e) if line.starts_with("[5") => assert_eq!(e.id, None),
                Err(e) => assert_eq!(
                    (e.id, e.error.code),
                    (Some(7), code::INVALID_FRAME),
                    "{line}"
                ),
                Ok(f) => panic!("{line} parsed as {f:?}"),
            }
        }
    }

    #[test]
    fn malformed_error_replies_still_reach_the_caller() {
        let frame = Frame::parse("[4,null,\"oops\"]").unwrap();
        match frame {
            Frame::Reply {
                id: 4,
                result: Err(e),
            } => assert_eq!(e.code, code::INVALID_FRAME),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deep_nesting_is_rejected_without_overflowing_the_stack() {
        let depth = 1_000_000;
        let line = format!("[\"m\",[{}{}]]", "[".repeat(depth), "]".repeat(depth));
        // Raw values are skipped iteratively, so this parses; handlers then hit serde_json's
        // recursion limit when they deserialize.
        let frame = Frame::parse(&line).unwrap();
        let Frame::Notification { args, .. } = frame else {
            panic!()
        };
        assert!(args.deserialize::<serde_json::Value>().is_err());
        let bad = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(Frame::parse(&bad).is_err());
    }

    #[test]
    fn method_names_may_hold_escapes() {
        let frame = Frame::parse(r#"["a\u0000\n\"b",[]]"#).unwrap();
        assert!(matches!(frame, Frame::Notification { method, .. } if &*method == "a\0\n\"b"));
    }
}
