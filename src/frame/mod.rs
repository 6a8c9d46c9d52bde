//! The wire envelope: the one file that knows the JSON shape of a frame.
//!
//! Meaning (routing, pending calls) is added one layer up; a [`Frame`] only carries data.

use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::args::{write_args, Args};
use crate::error::{code, truncate, Error, RpcError};
use crate::response::Response;
use crate::wire::Line;

mod scan;

/// Request ids are unsigned integers below 2^53, so that any JSON peer (JavaScript included)
/// holds them exactly.
pub const MAX_ID: u64 = (1 << 53) - 1;

/// Optional per-request metadata, the fourth element of a request frame.
///
/// Unknown keys are ignored, so peers can add keys without breaking older receivers. Build
/// one with `..Default::default()`: keys may be added.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// A relative deadline in milliseconds, counted from when the receiver reads the frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The caller asks for a stream of items, and grants this many at first: its initial
    /// credit (see the [`protocol`](crate::protocol)'s streams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<u64>,
}

impl Meta {
    fn is_empty(&self) -> bool {
        self.timeout_ms.is_none() && self.stream.is_none()
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
        Frame::parse_with(line, None, None)
    }

    /// As [`Frame::parse`], sharing method names seen before instead of allocating each, and
    /// with `wire` (the bytes `line` lies in) leaving the arguments or result in the line
    /// instead of copying them.
    pub(crate) fn parse_with(
        line: &str,
        methods: Option<&mut MethodNames>,
        wire: Option<Line<'_>>,
    ) -> Result<Frame, InvalidFrame> {
        Frame::parse_bytes(line.as_bytes(), methods, wire)
    }

    /// As [`Frame::parse_with`], for a line not yet known to be UTF-8: a line the fast path
    /// takes whole and finds all ASCII needs no other check.
    pub(crate) fn parse_bytes(
        line: &[u8],
        methods: Option<&mut MethodNames>,
        wire: Option<Line<'_>>,
    ) -> Result<Frame, InvalidFrame> {
        if let Some(scanned) = scan::split(line) {
            if scanned.ascii || std::str::from_utf8(line).is_ok() {
                // Tests and fuzzing run with debug assertions: every line the scanner
                // takes is checked against serde_json's reading of it.
                debug_assert_eq!(
                    Some(&scanned.parts),
                    std::str::from_utf8(line)
                        .ok()
                        .and_then(|line| Parts::by_serde(line).ok())
                        .as_ref(),
                    "{}",
                    String::from_utf8_lossy(line)
                );
                return scanned.parts.into_frame(methods, wire, false);
            }
        }
        match std::str::from_utf8(line) {
            Ok(line) => Parts::by_serde(line)?.into_frame(methods, wire, true),
            Err(_) => Err(InvalidFrame::new(
                None,
                RpcError::new(code::PARSE_ERROR, "parse error: line is not valid UTF-8"),
            )),
        }
    }

    /// Appends the frame's line, terminator included, to `buf`: the one encoder of frames.
    /// A connection encodes straight into its write buffer, with no line of its own.
    pub fn encode<B: BufMut>(&self, buf: &mut B) {
        match self {
            Frame::Notification { method, args } => {
                open_call(buf, method);
                hand_over_fds(args);
                buf.put_slice(args.get().as_bytes());
                close_call(buf, None, &Meta::default());
            }
            Frame::Request {
                method,
                args,
                id,
                meta,
            } => {
                open_call(buf, method);
                hand_over_fds(args);
                buf.put_slice(args.get().as_bytes());
                close_call(buf, Some(*id), meta);
            }
            Frame::Reply { id, result } => {
                buf.put_u8(b'[');
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
                buf.put_slice(b"]\n");
            }
            Frame::ConnectionError(error) => {
                buf.put_slice(b"[null,null,");
                json(buf, error);
                buf.put_slice(b"]\n");
            }
        }
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
                method.len() + args.text_len()
            }
            Frame::Reply { result: Ok(v), .. } => v.text_len(),
            Frame::Reply { result: Err(e), .. } | Frame::ConnectionError(e) => e.message.len(),
        }
    }
}

/// Arguments with descriptors hand them to the connection encoding the frame, if any.
fn hand_over_fds(args: &Args) {
    if let Some(fds) = args.fds() {
        crate::fd::hand_over_all(fds);
    }
}

/// Serializes a `str`, an integer or the error struct into memory, which cannot fail.
fn json<B: BufMut, T: Serialize + ?Sized>(buf: &mut B, value: &T) {
    serde_json::to_writer(buf.writer(), value).expect("in-memory JSON serialization");
}

/// The notification that carries one item of a stream: `["$/item",[id,item]]`.
pub(crate) const ITEM_METHOD: &str = "$/item";
/// The notification that grants a stream more items: `["$/credit",[id,n]]`.
pub(crate) const CREDIT_METHOD: &str = "$/credit";

/// Encodes one item of stream `id`, `["$/item",[id,<item>]]`, whose JSON `write_item` appends.
pub(crate) fn encode_item<E>(
    buf: &mut BytesMut,
    id: u64,
    write_item: impl FnOnce(&mut BytesMut) -> Result<(), E>,
) -> Result<(), E> {
    buf.put_slice(b"[\"$/item\",[");
    json(buf, &id);
    buf.put_u8(b',');
    write_item(buf)?;
    buf.put_slice(b"]]\n");
    Ok(())
}

/// Encodes a notification `["method",[args...]]`, or with an id a request
/// `["method",[args...],id(,meta)]`: the one encoder of calls, used for typed arguments
/// straight from the caller (no intermediate `Args` or `Frame`) and for [`Frame::encode`].
pub(crate) fn encode_call<T: Serialize + ?Sized>(
    line: &mut BytesMut,
    method: &str,
    args: &T,
    id: Option<u64>,
    meta: &Meta,
) -> Result<(), Error> {
    open_call(line, method);
    write_args(line, args)?;
    close_call(line, id, meta);
    Ok(())
}

/// `["method",`: what comes before a call's arguments.
fn open_call<B: BufMut>(buf: &mut B, method: &str) {
    buf.put_u8(b'[');
    if scan::is_plain(method) {
        // Nothing to escape (the usual method name): no serializer for it.
        buf.put_u8(b'"');
        buf.put_slice(method.as_bytes());
        buf.put_u8(b'"');
    } else {
        json(buf, method);
    }
    buf.put_u8(b',');
}

/// What comes after a call's arguments: `]` for a notification, `,id(,meta)]` for a request.
fn close_call<B: BufMut>(buf: &mut B, id: Option<u64>, meta: &Meta) {
    if let Some(id) = id {
        buf.put_u8(b',');
        json(buf, &id);
        if !meta.is_empty() {
            buf.put_u8(b',');
            json(buf, meta);
        }
    }
    buf.put_slice(b"]\n");
}

/// The method names a connection saw last, shared by the frames that repeat them: a peer
/// usually calls few methods, and then a frame's name costs no allocation. Bounded in count
/// and in name length, whatever names a peer sends.
#[derive(Debug, Clone, Default)]
pub(crate) struct MethodNames {
    names: Vec<Arc<str>>,
    /// The slot the next new name replaces once all are taken.
    next: usize,
    /// The slot of the name found last, looked at first: frames often repeat a name.
    last: usize,
}

impl MethodNames {
    /// Names kept.
    const KEPT: usize = 16;
    /// Longer names are not kept: they are rarely repeated method names.
    const LONGEST: usize = 64;

    /// The name `name` spells, shared if seen before; `None` if it is not UTF-8.
    fn get(&mut self, name: &[u8]) -> Option<Arc<str>> {
        if let Some(seen) = self.names.get(self.last).filter(|seen| same(seen, name)) {
            return Some(seen.clone());
        }
        if let Some(at) = self.names.iter().position(|seen| same(seen, name)) {
            self.last = at;
            return Some(self.names[at].clone());
        }
        let name: Arc<str> = std::str::from_utf8(name).ok()?.into();
        if name.len() <= Self::LONGEST {
            if self.names.len() < Self::KEPT {
                self.names.push(name.clone());
            } else {
                self.names[self.next] = name.clone();
                self.next = (self.next + 1) % Self::KEPT;
            }
        }
        Some(name)
    }
}

/// Whether `seen` is spelt `name`: a loop, as names are short (no call to `memcmp`).
fn same(seen: &str, name: &[u8]) -> bool {
    seen.len() == name.len() && seen.bytes().zip(name).all(|(a, &b)| a == b)
}

/// The elements of a frame: the JSON text of the first four, borrowed from the line, and how
/// many there are. Bytes, because the line they lie in may not have been checked to be UTF-8
/// as a whole (see [`Frame::parse_bytes`]); each element is valid JSON.
#[derive(Debug, PartialEq)]
struct Parts<'a> {
    items: [Option<&'a [u8]>; 4],
    len: usize,
}

impl<'a> Parts<'a> {
    /// serde_json's reading of a line: any JSON, and the errors for what is not.
    fn by_serde(line: &'a str) -> Result<Self, InvalidFrame> {
        serde_json::from_str(line).map_err(|e| {
            let error = if e.is_data() {
                RpcError::invalid_frame(format!("not an array of 2 to 4 elements: {e}"))
            } else {
                RpcError::new(code::PARSE_ERROR, format!("parse error: {e}"))
            };
            InvalidFrame::new(None, error)
        })
    }
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
                        Some(item) => parts.items[parts.len] = Some(item.get().as_bytes()),
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
    fn get(&self, i: usize) -> &'a [u8] {
        self.items[i].unwrap_or(b"")
    }

    /// The frame; `escapes` says whether its strings may hold escapes (the fast path's
    /// never do).
    fn into_frame(
        self,
        methods: Option<&mut MethodNames>,
        wire: Option<Line<'_>>,
        escapes: bool,
    ) -> Result<Frame, InvalidFrame> {
        match self.get(0).first() {
            Some(b'"') => self.into_call(methods, wire, escapes),
            Some(b'0'..=b'9' | b'-') => self.into_reply(wire),
            Some(b'n') if self.len == 3 && self.get(1) == b"null" => {
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

    fn into_call(
        self,
        methods: Option<&mut MethodNames>,
        wire: Option<Line<'_>>,
        escapes: bool,
    ) -> Result<Frame, InvalidFrame> {
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
        let not_a_name = || invalid("method name is not a valid string");
        // Without escapes the name is the text between the quotes.
        let method: Arc<str> = if escapes && raw.contains(&b'\\') {
            let parsed: String = serde_json::from_slice(raw).map_err(|_| not_a_name())?;
            parsed.into()
        } else {
            let name = &raw[1..raw.len() - 1];
            match methods {
                Some(methods) => methods.get(name),
                None => std::str::from_utf8(name).ok().map(Arc::from),
            }
            .ok_or_else(not_a_name)?
        };
        let args = self.get(1);
        // An object is by-name arguments (from JSON-RPC 2.0): only a typed service's
        // routes know the names; every other handler answers -32602.
        if !args.starts_with(b"[") && !args.starts_with(b"{") {
            return Err(invalid(
                "args (element 1) must be an array (or an object of by-name arguments)",
            ));
        }
        let args = Args::from_wire(args, wire);
        let Some(id) = id else {
            return Ok(Frame::Notification { method, args });
        };
        let meta = match self.items[3] {
            None => Meta::default(),
            Some(raw) if raw.starts_with(b"{") => serde_json::from_slice(raw)
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

    fn into_reply(self, wire: Option<Line<'_>>) -> Result<Frame, InvalidFrame> {
        // A reply is never answered, so a malformed one carries no id to reply to.
        let id = parse_id(self.get(0)).map_err(|e| InvalidFrame::new(None, e))?;
        let result = match self.len {
            2 => Ok(Response::from_wire(self.get(1), wire)),
            3 if self.get(1) == b"null" => {
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

fn parse_id(raw: &[u8]) -> Result<u64, RpcError> {
    // The usual id, plain digits without a leading zero, read without serde_json; anything
    // else (`-0`, `1e3`, a leading zero, too many digits) takes serde_json's reading.
    let digits = raw;
    if (1..=15).contains(&digits.len())
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || digits.len() == 1)
    {
        return Ok(digits
            .iter()
            .fold(0, |id, digit| id * 10 + u64::from(digit - b'0')));
    }
    match serde_json::from_slice::<u64>(raw) {
        Ok(id) if id <= MAX_ID => Ok(id),
        _ => Err(RpcError::invalid_frame(format!(
            "id must be an unsigned integer below 2^53, got `{}`",
            truncate(&String::from_utf8_lossy(raw), 40)
        ))),
    }
}

fn parse_error_object(raw: &[u8]) -> Result<RpcError, RpcError> {
    serde_json::from_slice(raw).map_err(|e| RpcError::invalid_frame(format!("error object: {e}")))
}

#[cfg(test)]
mod tests;
