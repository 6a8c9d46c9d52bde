//! The translation between JSON-RPC 2.0 messages and protocol v1 lines, both ways, for one
//! connection.
//!
//! Incoming: each request gets a v1 id of this side's choosing, and the session remembers the
//! peer's own id (a string, a number or `null`) to answer with; a by-name `params` object goes
//! through as the v1 arguments (a typed service maps it to its parameters); `$/cancelRequest`
//! becomes `$/cancel`. A message that is not a valid request still gets its error response
//! through the connection's own machinery: it becomes a *stand-in*, a call of a reserved
//! method the connection answers at once, whose answer the session replaces with the error.
//! So every response, errors included, leaves in wire order through the one writer.
//!
//! Outgoing: v1 notifications and requests become JSON-RPC ones (ids are this side's
//! numbers), replies become responses with the peer's id, and the replies to a batch's members
//! wait here until the last one, then leave as one array.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use super::framing::Framing;
use crate::error::{code, truncate, RpcError};
use crate::frame::{Frame, MAX_ID};

/// LSP's cancellation: `{"method":"$/cancelRequest","params":{"id":..}}`.
const CANCEL_REQUEST: &str = "$/cancelRequest";
/// The method of a stand-in line. Reserved (`$/`), so the connection answers it -32601
/// without routing it; the session puts the real error in that answer's place.
const STAND_IN: &str = "$/jsonrpc.refused";
/// Protocol v1's cancellation, `["$/cancel",[id]]`.
const CANCEL: &str = "$/cancel";

/// One connection's translation state, shared by its read and write halves.
#[derive(Debug)]
pub(crate) struct Session {
    state: Mutex<State>,
}

impl Default for Session {
    fn default() -> Self {
        Session::new(crate::codec::DEFAULT_MAX_FRAME_SIZE)
    }
}

#[derive(Debug, Default)]
struct State {
    /// The most a batch's answer may hold (`Config::max_frame_size`): past it, the rest of
    /// its members are answered -32003, so a batch never holds more memory than a frame.
    max_batch_answer: usize,
    /// The peer's requests waiting for their answers, by the v1 id given to each.
    answers: HashMap<u64, Answer>,
    next_id: u64,
    /// Batches with answers still to come.
    batches: HashMap<u64, Batch>,
    next_batch: u64,
}

#[derive(Debug)]
struct Answer {
    /// The peer's id, as it sent it.
    id: Box<RawValue>,
    batch: Option<u64>,
    /// For a stand-in: the error to answer instead.
    error: Option<RpcError>,
}

#[derive(Debug, Default)]
struct Batch {
    waiting: usize,
    /// The answers so far, comma-separated.
    answers: Vec<u8>,
}

/// A JSON-RPC object's members; each kept as its JSON text, `null` included.
#[derive(Deserialize)]
struct Object<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    jsonrpc: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    params: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    error: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    meta: Option<&'a RawValue>,
}

/// A member that is there, even as `null` (which `Option` alone would read as absent).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).expect("null is JSON")
}

impl Session {
    /// A session whose batch answers hold at most `max_frame_size` bytes.
    pub(crate) fn new(max_frame_size: usize) -> Self {
        Session {
            state: Mutex::new(State {
                max_batch_answer: max_frame_size,
                ..State::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends the v1 lines for one incoming JSON-RPC message (an object or a batch, a line's
    /// or a body's bytes) to `out`.
    pub(crate) fn incoming(&self, message: &[u8], out: &mut bytes::BytesMut) {
        let mut state = self.lock();
        let mut lines = Vec::new();
        state.message(message, &mut lines);
        out.extend_from_slice(&lines);
    }

    /// Appends the v1 lines for a fault of the framing (an over-long message, a bad header):
    /// an error response with id `null`.
    pub(crate) fn refuse(&self, error: RpcError, out: &mut bytes::BytesMut) {
        let mut lines = Vec::new();
        self.lock().refuse(None, None, error, &mut lines);
        out.extend_from_slice(&lines);
    }

    /// Appends the JSON-RPC message for one outgoing v1 line (its terminator included) to
    /// `out`, framed: nothing while it is the answer to a batch member with others to come.
    pub(crate) fn outgoing(&self, line: &[u8], framing: Framing, out: &mut Vec<u8>) {
        let mut message = Vec::with_capacity(line.len() + 40);
        if self.lock().outgoing(line, &mut message) {
            frame(&message, framing, out);
        }
    }
}

impl State {
    fn message(&mut self, message: &[u8], out: &mut Vec<u8>) {
        let Ok(text) = std::str::from_utf8(message) else {
            let error = RpcError::new(code::PARSE_ERROR, "parse error: not valid UTF-8");
            return self.refuse(None, None, error, out);
        };
        if !text.trim_start().starts_with('[') {
            return match serde_json::from_str::<Object<'_>>(text) {
                Ok(object) => self.object(object, None, out),
                Err(e) if e.is_data() => {
                    let error = invalid("a request must be a JSON object or an array of them");
                    self.refuse(None, None, error, out)
                }
                Err(e) => self.refuse(None, None, parse_error(&e), out),
            };
        }
        let items = match serde_json::from_str::<Vec<&RawValue>>(text) {
            Ok(items) => items,
            Err(e) => return self.refuse(None, None, parse_error(&e), out),
        };
        if items.is_empty() {
            return self.refuse(None, None, invalid("an empty batch"), out);
        }
        if items[0].get().starts_with('"') {
            // `["method",[args],id]`: protocol v1, on a connection that spoke JSON-RPC first.
            let error = invalid(
                "a protocol v1 frame on a connection that speaks JSON-RPC 2.0: a connection \
                 keeps the protocol of its first message",
            );
            return self.refuse(None, None, error, out);
        }
        self.next_batch = self.next_batch.wrapping_add(1);
        let batch = self.next_batch;
        self.batches.insert(batch, Batch::default());
        for item in items {
            match serde_json::from_str::<Object<'_>>(item.get()) {
                Ok(object) => self.object(object, Some(batch), out),
                Err(_) => {
                    let error = invalid("a batch member must be a request object");
                    self.refuse(None, Some(batch), error, out)
                }
            }
        }
        if self.batches.get(&batch).is_some_and(|b| b.waiting == 0) {
            // Only notifications: nothing is answered.
            self.batches.remove(&batch);
        }
    }

    fn object(&mut self, object: Object<'_>, batch: Option<u64>, out: &mut Vec<u8>) {
        let id_ok = object.id.is_none_or(|id| is_id(id.get()));
        if object.method.is_none() && (object.result.is_some() || object.error.is_some()) {
            return response(&object, out);
        }
        let answer_id = object.id.filter(|_| id_ok);
        let mut refuse = |state: &mut State, why: &str| {
            state.refuse(answer_id, batch, invalid(why), out);
        };
        if object.jsonrpc.map(RawValue::get) != Some("\"2.0\"") {
            return refuse(self, "`jsonrpc` must be \"2.0\"");
        }
        let Some(method) = object
            .method
            .and_then(|m| serde_json::from_str::<String>(m.get()).ok())
        else {
            return refuse(self, "`method` must be a string");
        };
        if !id_ok {
            return refuse(self, "`id` must be a string, a number or null");
        }
        let params = match object.params {
            None => "[]",
            Some(p) if p.get().starts_with(['[', '{']) => p.get(),
            Some(_) => return refuse(self, "`params` must be an array or an object"),
        };
        let meta = match object.meta {
            None => None,
            Some(m) if m.get().starts_with('{') => Some(m.get()),
            Some(_) => return refuse(self, "`meta` must be an object"),
        };
        if method == CANCEL_REQUEST && object.id.is_none() {
            return self.cancel(params, out);
        }
        out.push(b'[');
        json(out, &method);
        out.push(b',');
        one_line(out, params);
        if let Some(id) = object.id {
            let local = self.answer(id.to_owned(), batch, None);
            out.push(b',');
            json(out, &local);
            if let Some(meta) = meta {
                out.push(b',');
                one_line(out, meta);
            }
        }
        out.extend_from_slice(b"]\n");
    }

    /// `$/cancelRequest` with `{"id":..}`: `$/cancel` for the request the peer gave that id,
    /// if it is still waiting for its answer.
    fn cancel(&mut self, params: &str, out: &mut Vec<u8>) {
        #[derive(Deserialize)]
        struct Params<'a> {
            #[serde(borrow)]
            id: &'a RawValue,
        }
        let Ok(Params { id }) = serde_json::from_str::<Params<'_>>(params) else {
            tracing::debug!("diarrhoea: $/cancelRequest without an id ignored");
            return;
        };
        let local = self
            .answers
            .iter()
            .find(|(_, answer)| answer.error.is_none() && answer.id.get() == id.get())
            .map(|(local, _)| *local);
        if let Some(local) = local {
            out.extend_from_slice(b"[\"$/cancel\",[");
            json(out, &local);
            out.extend_from_slice(b"]]\n");
        }
    }

    /// A stand-in line: the connection answers it, and the answer leaves as `error`.
    fn refuse(
        &mut self,
        id: Option<&RawValue>,
        batch: Option<u64>,
        error: RpcError,
        out: &mut Vec<u8>,
    ) {
        tracing::debug!(error = %error, "diarrhoea: JSON-RPC message refused");
        let id = id.map_or_else(null, ToOwned::to_owned);
        let local = self.answer(id, batch, Some(error));
        out.extend_from_slice(b"[\"");
        out.extend_from_slice(STAND_IN.as_bytes());
        out.extend_from_slice(b"\",[],");
        json(out, &local);
        out.extend_from_slice(b"]\n");
    }

    /// Remembers an answer to give, under a new v1 id.
    fn answer(&mut self, id: Box<RawValue>, batch: Option<u64>, error: Option<RpcError>) -> u64 {
        let local = loop {
            self.next_id = self.next_id % MAX_ID + 1;
            if !self.answers.contains_key(&self.next_id) {
                break self.next_id;
            }
        };
        if let Some(batch) = batch.and_then(|b| self.batches.get_mut(&b)) {
            batch.waiting += 1;
        }
        self.answers.insert(local, Answer { id, batch, error });
        local
    }

    /// Writes the message for one v1 line into `out`; `false` when there is nothing to send
    /// (yet).
    fn outgoing(&mut self, line: &[u8], out: &mut Vec<u8>) -> bool {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let frame = match std::str::from_utf8(line).map(Frame::parse) {
            Ok(Ok(frame)) => frame,
            _ => {
                tracing::warn!("diarrhoea: an outgoing line that is not a frame was not sent");
                return false;
            }
        };
        out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",");
        match frame {
            Frame::Notification { method, args } if &*method == CANCEL => {
                let Ok((id,)) = args.deserialize::<(u64,)>() else {
                    return false;
                };
                out.extend_from_slice(b"\"method\":\"$/cancelRequest\",\"params\":{\"id\":");
                json(out, &id);
                out.push(b'}');
            }
            Frame::Notification { method, args } => {
                call(out, &method, args.get());
            }
            Frame::Request {
                method,
                args,
                id,
                meta,
            } => {
                call(out, &method, args.get());
                out.extend_from_slice(b",\"id\":");
                json(out, &id);
                if meta != crate::frame::Meta::default() {
                    out.extend_from_slice(b",\"meta\":");
                    json(out, &meta);
                }
            }
            Frame::Reply { id, result } => {
                let Some(answer) = self.answers.remove(&id) else {
                    tracing::warn!(id, "diarrhoea: a reply to no request of the peer's");
                    return false;
                };
                match answer.error.map_or(result, Err) {
                    Ok(result) => {
                        out.extend_from_slice(b"\"result\":");
                        out.extend_from_slice(result.get().as_bytes());
                    }
                    Err(error) => {
                        out.extend_from_slice(b"\"error\":");
                        json(out, &error);
                    }
                }
                out.extend_from_slice(b",\"id\":");
                out.extend_from_slice(answer.id.get().as_bytes());
                out.push(b'}');
                if let Some(batch) = answer.batch {
                    return self.batch_answer(batch, &answer.id, out);
                }
                return true;
            }
            Frame::ConnectionError(error) => {
                out.extend_from_slice(b"\"error\":");
                json(out, &error);
                out.extend_from_slice(b",\"id\":null");
            }
        }
        out.push(b'}');
        true
    }

    /// Adds one answer (in `out`) to its batch; the whole batch, as an array, into `out` once
    /// it is complete.
    fn batch_answer(&mut self, batch: u64, id: &RawValue, out: &mut Vec<u8>) -> bool {
        let max = self.max_batch_answer;
        let Some(waiting) = self.batches.get_mut(&batch) else {
            return true;
        };
        if waiting.answers.len() + out.len() + 2 > max {
            let error = RpcError::new(
                code::FRAME_TOO_LARGE,
                format!(
                    "frame too large: the batch's answer would pass the maximum of {max} bytes"
                ),
            );
            out.clear();
            out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"error\":");
            json(out, &error);
            out.extend_from_slice(b",\"id\":");
            out.extend_from_slice(id.get().as_bytes());
            out.push(b'}');
        }
        if !waiting.answers.is_empty() {
            waiting.answers.push(b',');
        }
        waiting.answers.append(out);
        waiting.waiting -= 1;
        if waiting.waiting > 0 {
            return false;
        }
        let done = self.batches.remove(&batch).expect("looked up above");
        out.push(b'[');
        out.extend_from_slice(&done.answers);
        out.push(b']');
        true
    }
}

/// A response to one of this side's calls, as a v1 reply line.
fn response(object: &Object<'_>, out: &mut Vec<u8>) {
    let id = object.id.map_or("null", RawValue::get);
    let local = match id {
        "null" => None,
        id => match id.parse::<u64>() {
            Ok(local) if local <= MAX_ID => Some(local),
            _ => {
                tracing::warn!(
                    id = %truncate(id, 40),
                    "diarrhoea: a JSON-RPC response to no call of this side's, ignored"
                );
                return;
            }
        },
    };
    out.push(b'[');
    match (local, object.error, object.result) {
        (Some(local), Some(error), _) => {
            json(out, &local);
            out.extend_from_slice(b",null,");
            one_line(out, error.get());
        }
        (Some(local), None, Some(result)) => {
            json(out, &local);
            out.push(b',');
            one_line(out, result.get());
        }
        (None, Some(error), _) => {
            out.extend_from_slice(b"null,null,");
            one_line(out, error.get());
        }
        _ => {
            out.pop();
            tracing::warn!("diarrhoea: a JSON-RPC response with id null and no error, ignored");
            return;
        }
    }
    out.extend_from_slice(b"]\n");
}

/// `"method":..,"params":..` of a request or notification.
fn call(out: &mut Vec<u8>, method: &str, params: &str) {
    out.extend_from_slice(b"\"method\":");
    json(out, method);
    out.extend_from_slice(b",\"params\":");
    out.extend_from_slice(params.as_bytes());
}

/// A message as its framing sends it.
fn frame(message: &[u8], framing: Framing, out: &mut Vec<u8>) {
    match framing {
        Framing::Lines => {
            out.extend_from_slice(message);
            out.push(b'\n');
        }
        Framing::ContentLength => {
            out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", message.len()).as_bytes());
            out.extend_from_slice(message);
        }
    }
}

/// Whether a JSON text is an id JSON-RPC allows: a string, a number or `null`.
fn is_id(text: &str) -> bool {
    text == "null" || text.starts_with(['"', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9'])
}

fn invalid(why: &str) -> RpcError {
    RpcError::new(code::INVALID_FRAME, format!("invalid request: {why}"))
}

fn parse_error(e: &serde_json::Error) -> RpcError {
    RpcError::new(code::PARSE_ERROR, format!("parse error: {e}"))
}

/// JSON text as one line: a message read from a Content-Length body (or a pretty-printed
/// batch member) may hold line breaks between its tokens, never inside a string.
fn one_line(out: &mut Vec<u8>, text: &str) {
    let start = out.len();
    out.extend_from_slice(text.as_bytes());
    for byte in &mut out[start..] {
        if matches!(*byte, b'\n' | b'\r') {
            *byte = b' ';
        }
    }
}

fn json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    serde_json::to_writer(out, value).expect("in-memory JSON serialization");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(session: &Session, message: &str) -> Vec<String> {
        let mut out = bytes::BytesMut::new();
        session.incoming(message.as_bytes(), &mut out);
        String::from_utf8(out.to_vec())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn answer(session: &Session, line: &str) -> String {
        let mut out = Vec::new();
        session.outgoing(format!("{line}\n").as_bytes(), Framing::Lines, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_request_gets_a_v1_id_and_its_answer_the_peers_id_back() {
        let session = Session::default();
        let got = lines(
            &session,
            r#"{"jsonrpc":"2.0","method":"add","params":[2,3],"id":"x-1","meta":{"timeout_ms":5}}"#,
        );
        assert_eq!(got, [r#"["add",[2,3],1,{"timeout_ms":5}]"#]);
        assert_eq!(
            answer(&session, "[1,5]"),
            "{\"jsonrpc\":\"2.0\",\"result\":5,\"id\":\"x-1\"}\n"
        );
        // Answered once: a second reply to the same id is not sent.
        assert_eq!(answer(&session, "[1,5]"), "");
    }

    #[test]
    fn notifications_by_name_params_and_cancel_request() {
        let session = Session::default();
        assert_eq!(
            lines(
                &session,
                r#"{"jsonrpc":"2.0","method":"log","params":{"line":"a"}}"#
            ),
            [r#"["log",{"line":"a"}]"#]
        );
        assert_eq!(
            lines(&session, r#"{"jsonrpc":"2.0","method":"slow","id":7}"#),
            [r#"["slow",[],1]"#]
        );
        assert_eq!(
            lines(
                &session,
                r#"{"jsonrpc":"2.0","method":"$/cancelRequest","params":{"id":7}}"#
            ),
            [r#"["$/cancel",[1]]"#]
        );
        // An id not waiting for its answer: nothing to cancel.
        assert!(lines(
            &session,
            r#"{"jsonrpc":"2.0","method":"$/cancelRequest","params":{"id":8}}"#
        )
        .is_empty());
    }

    #[test]
    fn bad_input_becomes_a_stand_in_whose_answer_is_the_error() {
        let session = Session::default();
        let got = lines(&session, r#"{"jsonrpc":"1.0","method":"add","id":3}"#);
        assert_eq!(got, [format!(r#"["{STAND_IN}",[],1]"#)]);
        let sent = answer(&session, r#"[1,null,{"code":-32601,"message":"whatever"}]"#);
        let sent: serde_json::Value = serde_json::from_str(&sent).unwrap();
        assert_eq!(sent["id"], 3);
        assert_eq!(sent["error"]["code"], code::INVALID_FRAME);
    }

    #[test]
    fn a_batch_is_answered_once_all_its_requests_are() {
        let session = Session::default();
        let got = lines(
            &session,
            r#"[{"jsonrpc":"2.0","method":"a","id":1},{"jsonrpc":"2.0","method":"n"},{"jsonrpc":"2.0","method":"b","id":2}]"#,
        );
        assert_eq!(got, [r#"["a",[],1]"#, r#"["n",[]]"#, r#"["b",[],2]"#]);
        assert_eq!(answer(&session, "[2,\"b\"]"), "");
        let sent = answer(&session, "[1,\"a\"]");
        let sent: serde_json::Value = serde_json::from_str(&sent).unwrap();
        assert_eq!(
            sent,
            serde_json::json!([
                {"jsonrpc":"2.0","result":"b","id":2},
                {"jsonrpc":"2.0","result":"a","id":1}
            ])
        );
    }

    #[test]
    fn this_sides_calls_and_the_peers_responses() {
        let session = Session::default();
        assert_eq!(
            answer(&session, r#"["add",[1,2],9,{"timeout_ms":100}]"#),
            "{\"jsonrpc\":\"2.0\",\"method\":\"add\",\"params\":[1,2],\"id\":9,\"meta\":{\"timeout_ms\":100}}\n"
        );
        assert_eq!(
            answer(&session, r#"["$/cancel",[9]]"#),
            "{\"jsonrpc\":\"2.0\",\"method\":\"$/cancelRequest\",\"params\":{\"id\":9}}\n"
        );
        assert_eq!(
            lines(&session, r#"{"jsonrpc":"2.0","result":{"a":[1,2]},"id":9}"#),
            [r#"[9,{"a":[1,2]}]"#]
        );
        assert_eq!(
            lines(
                &session,
                r#"{"jsonrpc":"2.0","error":{"code":-1,"message":"no"},"id":9}"#
            ),
            [r#"[9,null,{"code":-1,"message":"no"}]"#]
        );
        assert_eq!(
            lines(
                &session,
                r#"{"jsonrpc":"2.0","error":{"code":-32700,"message":"x"},"id":null}"#
            ),
            [r#"[null,null,{"code":-32700,"message":"x"}]"#]
        );
        // Not one of ours: ignored.
        assert!(lines(&session, r#"{"jsonrpc":"2.0","result":1,"id":"zz"}"#).is_empty());
    }

    #[test]
    fn a_batch_answer_stays_within_the_maximum_frame_size() {
        let session = Session::new(200);
        lines(
            &session,
            r#"[{"jsonrpc":"2.0","method":"a","id":1},{"jsonrpc":"2.0","method":"b","id":2}]"#,
        );
        let big = |id: u64| format!("[{id},\"{}\"]", "x".repeat(80));
        assert_eq!(answer(&session, &big(1)), "");
        let sent = answer(&session, &big(2));
        let sent: serde_json::Value = serde_json::from_str(&sent).unwrap();
        assert_eq!(sent[0]["result"].as_str().map(str::len), Some(80));
        assert_eq!(sent[1]["error"]["code"], code::FRAME_TOO_LARGE);
        assert_eq!(sent[1]["id"], 2);
    }

    #[test]
    fn content_length_framing_of_an_answer() {
        let session = Session::default();
        let mut out = Vec::new();
        session.outgoing(b"[\"n\",[]]\n", Framing::ContentLength, &mut out);
        let body = r#"{"jsonrpc":"2.0","method":"n","params":[]}"#;
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("Content-Length: {}\r\n\r\n{body}", body.len())
        );
    }
}
