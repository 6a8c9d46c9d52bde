//! Hostile input: the codec under any chunking (a property test), regressions found by fuzzing
//! (`fuzz/`), and the hostile-frames table of docs/PROTOCOL.md run against a real server.
//!
//! Every table row checks three things: the documented outcome, no panic or stack overflow
//! anywhere (logging included: a subscriber formats every event at `TRACE`), and that the
//! connection still answers afterwards.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

use bytes::BytesMut;
use common::*;
use diarrhoea::codec::{Decoded, FrameCodec};
use diarrhoea::layer::TraceLayer;
use diarrhoea::{code, Args, Config, Connection, Frame, Json, Meta, Response, Router, RpcError};
use diarrhoea::{Event, Events, MAX_ID};
use serde_json::{json, Value};
use tokio_util::codec::Decoder;
use tower::ServiceBuilder;

// ---------------------------------------------------------------------------------------------
// Property: any split of a byte stream into chunks decodes to the same items.
// ---------------------------------------------------------------------------------------------

/// xorshift64*: deterministic, so a failure names the seed that reproduces it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// Characters that stress escaping and UTF-8: quotes, backslashes, controls, multi-byte, the
/// JavaScript line separators.
const CHARS: &[char] = &[
    'a', 'z', '0', ' ', '"', '\\', '/', '\n', '\r', '\t', '\0', '\u{1b}', '\u{7f}', 'é', '€',
    '\u{2028}', '😀', '[', ']', ',',
];

fn string(rng: &mut Rng) -> String {
    (0..rng.below(12))
        .map(|_| CHARS[rng.below(CHARS.len() as u64) as usize])
        .collect()
}

fn value(rng: &mut Rng, depth: u32) -> Value {
    let kinds = if depth >= 3 { 5 } else { 7 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => match rng.below(4) {
            0 => json!(rng.next()),
            1 => json!(rng.next() as i64),
            2 => json!(i64::MIN),
            _ => json!(rng.below(1000)),
        },
        // Few digits: serde_json parses these exactly (longer ones may be off by one ulp, see
        // `error_data_floats_survive_the_trip_exactly`).
        3 => json!((rng.next() as i16) as f64 / 16.0),
        4 => Value::String(string(rng)),
        5 => Value::Array((0..rng.below(4)).map(|_| value(rng, depth + 1)).collect()),
        _ => Value::Object(
            (0..rng.below(4))
                .map(|_| (string(rng), value(rng, depth + 1)))
                .collect(),
        ),
    }
}

fn args(rng: &mut Rng) -> Args {
    let items: Vec<Value> = (0..rng.below(5)).map(|_| value(rng, 1)).collect();
    Args::new(&items).unwrap()
}

fn id(rng: &mut Rng) -> u64 {
    match rng.below(4) {
        0 => 0,
        1 => MAX_ID,
        _ => rng.below(MAX_ID + 1),
    }
}

fn rpc_error(rng: &mut Rng) -> RpcError {
    let error = RpcError::new(rng.next() as i64, string(rng));
    match value(rng, 0) {
        // `"data":null` reads back as no data, the same error on the wire.
        Value::Null => error,
        data => error.with_data(data),
    }
}

fn frame(rng: &mut Rng) -> Frame {
    match rng.below(6) {
        0 => Frame::Notification {
            method: string(rng).into(),
            args: args(rng),
        },
        1 | 2 => Frame::Request {
            method: string(rng).into(),
            args: args(rng),
            id: id(rng),
            meta: Meta {
                timeout_ms: rng.one_in(2).then(|| rng.next()),
                stream: rng.one_in(2).then(|| rng.next()),
            },
        },
        3 => Frame::Reply {
            id: id(rng),
            result: Ok(Response::new(&value(rng, 0)).unwrap()),
        },
        4 => Frame::Reply {
            id: id(rng),
            result: Err(rpc_error(rng)),
        },
        _ => Frame::ConnectionError(rpc_error(rng)),
    }
}

/// Appends `frame`'s line, sometimes with `\r\n`, sometimes after an empty line.
fn write_line(rng: &mut Rng, wire: &mut Vec<u8>, frame: &Frame) {
    if rng.one_in(6) {
        wire.extend_from_slice(if rng.one_in(2) { b"\n" } else { b"\r\n" });
    }
    let mut line = BytesMut::new();
    frame.encode(&mut line);
    if rng.one_in(4) {
        line.truncate(line.len() - 1);
        line.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(&line);
}

/// Decodes `wire` fed in random pieces, then the end of the stream.
fn decode_in_pieces(rng: &mut Rng, wire: &[u8], max_frame_size: usize) -> Vec<Decoded> {
    let mut codec = FrameCodec::new(max_frame_size);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let largest = [1, 2, 7, 64, 4096, wire.len().max(1)][rng.below(6) as usize];
    let mut rest = wire;
    while !rest.is_empty() {
        let n = (1 + rng.below(largest as u64) as usize).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        while let Some(item) = codec.decode(&mut buf).unwrap() {
            out.push(item);
        }
    }
    while let Some(item) = codec.decode_eof(&mut buf).unwrap() {
        out.push(item);
    }
    assert!(buf.is_empty(), "the codec keeps nothing after the end");
    out
}

/// Names the first item that differs, rather than printing two long lists.
fn assert_same(got: &[Decoded], expected: &[Decoded], what: &str) {
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!(g == e, "{what}: item {i} differs:\n got {g:?}\nwant {e:?}");
    }
    assert_eq!(got.len(), expected.len(), "{what}: number of items");
}

#[test]
fn any_chunking_of_a_valid_stream_decodes_to_the_same_frames() {
    for seed in 1..=200u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let frames: Vec<Frame> = (0..rng.below(30)).map(|_| frame(&mut rng)).collect();
        let mut wire = Vec::new();
        for f in &frames {
            write_line(&mut rng, &mut wire, f);
        }
        if rng.one_in(3) {
            wire.extend_from_slice(b"\r\n\n");
        }
        let expected: Vec<Decoded> = frames.iter().cloned().map(Ok).collect();
        for chunking in 0..25 {
            let got = decode_in_pieces(&mut rng, &wire, diarrhoea::codec::DEFAULT_MAX_FRAME_SIZE);
            assert_same(
                &got,
                &expected,
                &format!("seed {seed}, chunking {chunking}"),
            );
        }
    }
}

/// The same with faults mixed in: lines that are not JSON, not UTF-8, not a frame, too long,
/// and a line cut off by the end of the stream. Faults are items too, in the same places.
#[test]
fn any_chunking_of_a_stream_with_faults_gives_the_same_items() {
    const MAX: usize = 512;
    for seed in 1..=200u64 {
        let mut rng = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03));
        let mut wire = Vec::new();
        let mut frames = Vec::new();
        let mut faults = 0;
        for _ in 0..rng.below(30) {
            let bad: &[u8] = match rng.below(8) {
                0 => b"not json\n",
                1 => b"[\"echo\",[\"\xff\xfe\"],1]\n",
                2 => b"{\"an\":\"object\"}\r\n",
                3 => b"[\"echo\",5,7]\n",
                4 => &[b'['; MAX + 100],
                _ => {
                    let f = frame(&mut rng);
                    let mut line = BytesMut::new();
                    f.encode(&mut line);
                    if line.len() <= MAX {
                        write_line(&mut rng, &mut wire, &f);
                        frames.push(f);
                    }
                    continue;
                }
            };
            wire.extend_from_slice(bad);
            if bad.last() != Some(&b'\n') {
                wire.push(b'\n');
            }
            faults += 1;
        }
        if rng.one_in(2) {
            wire.extend_from_slice(b"[\"cut\",[1,");
            faults += 1;
        }
        let reference = decode_in_pieces(&mut Rng(1), &wire, MAX);
        let ok: Vec<&Frame> = reference.iter().filter_map(|i| i.as_ref().ok()).collect();
        let expected: Vec<Decoded> = frames.iter().cloned().map(Ok).collect();
        let ok: Vec<Decoded> = ok.into_iter().cloned().map(Ok).collect();
        assert_same(&ok, &expected, &format!("seed {seed}"));
        assert_eq!(reference.len() - ok.len(), faults, "seed {seed}");
        for chunking in 0..25 {
            let got = decode_in_pieces(&mut rng, &wire, MAX);
            assert_same(
                &got,
                &reference,
                &format!("seed {seed}, chunking {chunking}"),
            );
        }
    }
}

/// An error reply's `data` is parsed into a `serde_json::Value`; without serde_json's
/// `float_roundtrip` feature, a float with 16 or more significant digits can come back one ulp
/// off. Arguments and results are raw JSON and keep their text exactly.
#[test]
fn error_data_floats_survive_the_trip_exactly() {
    let x = 995712.8193359375; // = 1019609927 / 1024, exact in binary
    let frame = Frame::Reply {
        id: 1,
        result: Err(RpcError::new(1, "x").with_data(json!([x]))),
    };
    let mut line = BytesMut::new();
    frame.encode(&mut line);
    let parsed = Frame::parse(std::str::from_utf8(&line).unwrap().trim_end()).unwrap();
    assert_eq!(parsed, frame, "{line:?}");
    // Found by the `parse` fuzz target: parsed, encoded and parsed again, it changes.
    let found =
        r#"[null,null,{"code":-32004,"message":"m","data":[0.222292222222222222211111111111112]}]"#;
    let first = Frame::parse(found).unwrap();
    let mut line = BytesMut::new();
    first.encode(&mut line);
    let second = Frame::parse(std::str::from_utf8(&line).unwrap().trim_end()).unwrap();
    assert_eq!(second, first, "{line:?}");
}

// ---------------------------------------------------------------------------------------------
// The encoder: whatever a frame holds, it is written as exactly one line.
// ---------------------------------------------------------------------------------------------

/// Raw JSON may hold newlines as whitespace (pretty-printed output). Written as is, they would
/// split the frame into several lines: the peer would drop the pieces as parse errors, and a
/// reply would never reach its caller.
#[test]
fn raw_json_with_newlines_still_encodes_to_one_line() {
    let pretty = "[\n  1,\n  {\n    \"a\": \"x\"\n  }\r\n]";
    let raw = || serde_json::value::RawValue::from_string(pretty.to_owned()).unwrap();
    let frames = [
        Frame::Notification {
            method: "m".into(),
            args: Args::from_raw(raw()).unwrap(),
        },
        Frame::Request {
            method: "m".into(),
            args: Args::from_raw(raw()).unwrap(),
            id: 1,
            meta: Meta::default(),
        },
        Frame::Reply {
            id: 2,
            result: Ok(Response::from_raw(raw())),
        },
    ];
    for frame in frames {
        let mut line = BytesMut::new();
        frame.encode(&mut line);
        let text = std::str::from_utf8(&line).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
        let parsed = Frame::parse(text.trim_end()).unwrap();
        let get = |f: &Frame| -> Value {
            match f {
                Frame::Notification { args, .. } | Frame::Request { args, .. } => {
                    serde_json::from_str(args.get()).unwrap()
                }
                Frame::Reply { result: Ok(r), .. } => serde_json::from_str(r.get()).unwrap(),
                _ => unreachable!(),
            }
        };
        assert_eq!(get(&parsed), get(&frame));
    }
}

/// End to end: a handler that answers with pretty-printed raw JSON.
#[tokio::test]
async fn a_pretty_printed_raw_reply_reaches_the_caller() {
    let router = Router::new().route("pretty", || async {
        serde_json::value::RawValue::from_string("{\n  \"a\": 1\n}".to_owned()).unwrap()
    });
    let (_server, _conn, _events, mut peer) = setup(router).await;
    peer.send("[\"pretty\",[],1]\n").await;
    assert_eq!(peer.recv().await, json!([1, {"a": 1}]));
}

// ---------------------------------------------------------------------------------------------
// The hostile-frames table, against a real server.
// ---------------------------------------------------------------------------------------------

/// Formats every event and span the crate emits, at every level: logging must survive hostile
/// input as well. Lines about the `deep_echo` method are kept ([`traced_lines`]); the rest go
/// nowhere.
fn log_everything() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(|| Capture)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
}

/// The formatted log lines that mention `deep_echo`, the method only the traced nesting test
/// calls.
static TRACED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The fmt subscriber's writer: it writes each formatted line with one `write` call.
struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = String::from_utf8_lossy(buf);
        if line.contains("deep_echo") {
            TRACED.lock().unwrap().push(line.into_owned());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn traced_lines() -> Vec<String> {
    TRACED.lock().unwrap().clone()
}

fn hostile_router() -> Router {
    test_router()
        // serde_json's recursion limit (128) is what protects this one.
        .route("value", |v: Value| async move { Json(v) })
        .route("count", |n: u64| async move { n })
        .route("deep_echo", |args: Args| async move { args })
}

/// A server connection (serving `router` behind `TraceLayer::incoming().show_payloads(256)`
/// when `traced`) and a raw peer, events subscribed before the peer writes.
async fn setup_with(router: Router, traced: bool) -> (TestServer, Connection, Events, RawPeer) {
    log_everything();
    let options = TestServer::builder().config(Config::new());
    let mut server = if traced {
        let stack = ServiceBuilder::new()
            .layer(TraceLayer::incoming().show_payloads(256))
            .service(router);
        options.start(stack)
    } else {
        options.start(router)
    };
    let peer = RawPeer::connect(server.path()).await;
    let accepted = server.accept().await;
    let events = accepted.events();
    (server, accepted, events, peer)
}

async fn setup(router: Router) -> (TestServer, Connection, Events, RawPeer) {
    setup_with(router, false).await
}

/// The next line, unparsed (some replies hold numbers `serde_json::Value` cannot).
async fn recv_raw(peer: &mut RawPeer) -> String {
    peer.recv_line().await
}

/// A round trip after a row: the next line must be its reply, so the row's line got no reply
/// it should not have. The server reads lines in order and reports what each caused before
/// reading the next, so after this reply the row's events are all there.
async fn round_trip(peer: &mut RawPeer, row: &str) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1 << 40);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    peer.send(format!("[\"add\",[{id},1],{id}]\n")).await;
    let reply = peer.recv().await;
    assert_eq!(reply, json!([id, id + 1]), "{row}: a line nobody expected");
}

/// After a row whose replies were read: no line and no event beyond them.
async fn nothing_more(peer: &mut RawPeer, events: &mut Events, row: &str) {
    round_trip(peer, row).await;
    assert_no_event(events, row).await;
}

/// The last row: the connection still answers, and nothing is left over.
async fn still_answers(peer: &mut RawPeer, events: &mut Events) {
    nothing_more(peer, events, "the end").await;
}

/// Sends `line` and expects the error reply `[id,null,{"code":code,...}]` and, besides it,
/// exactly `event` (or no event); returns the reply's message.
async fn expect_error_reply(
    peer: &mut RawPeer,
    events: &mut Events,
    line: &str,
    id: u64,
    code: i64,
    event: Option<&dyn Fn(&Event) -> bool>,
) -> String {
    let row = row_name(line);
    peer.send(format!("{line}\n")).await;
    let reply = peer.recv().await;
    assert_eq!(reply[0], json!(id), "{row}: {reply}");
    assert_eq!(reply[1], Value::Null, "{row}: {reply}");
    assert_eq!(reply[2]["code"], json!(code), "{row}: {reply}");
    round_trip(peer, &row).await;
    if let Some(event) = event {
        event_now(events, &format!("the event of {row}"), event).await;
    }
    assert_no_event(events, &row).await;
    reply[2]["message"].as_str().unwrap().to_owned()
}

/// Sends `line`, which gets no reply, and expects exactly the one event it causes.
async fn expect_event(
    peer: &mut RawPeer,
    events: &mut Events,
    line: &str,
    what: &str,
    pred: impl Fn(&Event) -> bool,
) {
    let row = row_name(line);
    peer.send(format!("{line}\n")).await;
    round_trip(peer, &row).await;
    event_now(events, &format!("{what} ({row})"), pred).await;
    assert_no_event(events, &row).await;
}

/// A row's line for messages: the start of it (some are megabytes long).
fn row_name(line: &str) -> String {
    let shown: String = line.chars().take(60).collect();
    if shown.len() < line.len() {
        format!("row `{shown}...` ({} bytes)", line.len())
    } else {
        format!("row `{shown}`")
    }
}

fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

const DEEP: usize = 1_000_000;

/// 1,000,000 levels of nesting in every position of a frame. Raw values are skipped
/// iteratively by serde_json, so only a handler that deserializes into a tree meets the
/// nesting, and serde_json's recursion limit (128) turns it into -32602. Worker threads (2 MiB
/// stacks) run it, with the trace layer recording payloads.
async fn deep_nesting(traced: bool) {
    let (_server, conn, mut events, mut peer) = setup_with(hostile_router(), traced).await;
    let deep = nested(DEEP);

    // A handler deserializing into serde_json::Value: -32602 from the recursion limit.
    let message = expect_error_reply(
        &mut peer,
        &mut events,
        &format!("[\"value\",[{deep}],1]"),
        1,
        code::INVALID_PARAMS,
        None,
    )
    .await;
    assert!(message.contains("recursion limit"), "{message}");
    // A handler taking `Args` answers with them, unparsed.
    peer.send(format!("[\"echo\",[{deep}],2]\n")).await;
    let reply = recv_raw(&mut peer).await;
    assert_eq!(reply, format!("[2,[{deep}]]"));
    nothing_more(&mut peer, &mut events, "echo of deep args").await;
    // A notification whose handler fails to deserialize: an error event.
    expect_event(
        &mut peer,
        &mut events,
        &format!("[\"value\",[{deep}]]"),
        "invalid params",
        is_error_with_code(code::INVALID_PARAMS),
    )
    .await;
    // In meta (unknown keys are skipped, iteratively): ignored.
    peer.send(format!("[\"echo\",[],3,{{\"x\":{deep}}}]\n"))
        .await;
    assert_eq!(peer.recv().await, json!([3, []]));
    nothing_more(&mut peer, &mut events, "deep meta").await;
    // In a reply, and in an error reply's data, for ids nobody waits for: warnings.
    for line in [
        format!("[99,{deep}]"),
        format!("[98,null,{{\"code\":1,\"message\":\"m\",\"data\":{deep}}}]"),
    ] {
        expect_event(
            &mut peer,
            &mut events,
            &line,
            "unknown reply id",
            is_warning_with_code(code::INVALID_FRAME),
        )
        .await;
    }
    // In a connection error's data: an error event.
    expect_event(
        &mut peer,
        &mut events,
        &format!("[null,null,{{\"code\":1,\"message\":\"m\",\"data\":{deep}}}]"),
        "connection error",
        |e| matches!(e, Event::Error(_)),
    )
    .await;
    // As the whole line, or as the method: not a frame.
    for line in [deep.clone(), format!("[{deep},[],4]")] {
        expect_event(
            &mut peer,
            &mut events,
            &line,
            "invalid frame",
            is_error_with_code(code::INVALID_FRAME),
        )
        .await;
    }
    // Opened and never closed: not JSON.
    expect_event(
        &mut peer,
        &mut events,
        &"[".repeat(DEEP),
        "parse error",
        is_error_with_code(code::PARSE_ERROR),
    )
    .await;
    // A reply to this side's own call: the caller's decode fails; nothing overflows.
    let call = tokio::spawn({
        let conn = conn.clone();
        async move { conn.call::<Value>("question", ()).await }
    });
    let request = peer.recv().await;
    assert_eq!(request[0], "question");
    let id = request[2].as_u64().unwrap();
    peer.send(format!("[{id},{deep}]\n")).await;
    let err = within("the call", call).await.unwrap().unwrap_err();
    assert!(
        err.is_serde() && err.to_string().contains("decoded"),
        "{}",
        error_chain(&err)
    );
    nothing_more(&mut peer, &mut events, "deep reply to a call").await;
    if traced {
        // The trace layer records the arguments and the result cut to 256 characters, with
        // the full size, rather than 2 MB of brackets per line.
        peer.send(format!("[\"deep_echo\",[{deep}],5]\n")).await;
        assert_eq!(recv_raw(&mut peer).await, format!("[5,[{deep}]]"));
        let cut = format!("{}…(2000002 bytes)", "[".repeat(256));
        let lines = traced_lines();
        let finished: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("request finished"))
            .collect();
        assert_eq!(finished.len(), 1, "{lines:#?}");
        let line = finished[0];
        assert!(
            line.len() < 2048,
            "a {} byte log line: payloads not cut",
            line.len()
        );
        assert!(
            line.contains(&format!("args=\"{cut}\"")),
            "arguments not cut to 256 characters: {line}"
        );
        assert!(
            line.contains(&format!("result={cut}")),
            "result not cut to 256 characters: {line}"
        );
    }
    still_answers(&mut peer, &mut events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nesting_a_million_levels_deep_overflows_nothing() {
    deep_nesting(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nesting_a_million_levels_deep_overflows_nothing_with_payload_tracing() {
    deep_nesting(true).await;
}

#[tokio::test]
async fn numbers_that_overflow() {
    let (_server, _conn, mut events, mut peer) = setup(hostile_router()).await;
    let (peer, events) = (&mut peer, &mut events);
    // Typed parameters refuse what they cannot hold.
    for (i, arg) in ["18446744073709551616", "1e400", "-1", "1.5"]
        .iter()
        .enumerate()
    {
        let line = format!("[\"count\",[{arg}],{i}]");
        expect_error_reply(peer, events, &line, i as u64, code::INVALID_PARAMS, None).await;
    }
    expect_error_reply(
        peer,
        events,
        "[\"add\",[9223372036854775808,1],10]",
        10,
        code::INVALID_PARAMS,
        None,
    )
    .await;
    // So does serde_json::Value, for a number no f64 holds.
    expect_error_reply(
        peer,
        events,
        "[\"value\",[1e400],11]",
        11,
        code::INVALID_PARAMS,
        None,
    )
    .await;
    // Unparsed arguments keep the text exactly.
    let odd = "[1e400,18446744073709551616,-0,1E-400,123456789012345678901234567890]";
    peer.send(format!("[\"echo\",{odd},12]\n")).await;
    assert_eq!(recv_raw(peer).await, format!("[12,{odd}]"));
    nothing_more(peer, events, "odd numbers echoed").await;
    // A deadline of u64::MAX milliseconds is merely far away.
    peer.send("[\"sleep\",[1],13,{\"timeout_ms\":18446744073709551615}]\n")
        .await;
    assert_eq!(peer.recv().await, json!([13, 1]));
    nothing_more(peer, events, "a far deadline").await;
    // A deadline that is not a u64 makes the request malformed; its id is still answered,
    // and the frame dropped with an error event.
    for (i, ms) in ["1e400", "-1", "1.5", "18446744073709551616"]
        .iter()
        .enumerate()
    {
        let id = 20 + i as u64;
        let line = format!("[\"sleep\",[1],{id},{{\"timeout_ms\":{ms}}}]");
        expect_error_reply(
            peer,
            events,
            &line,
            id,
            code::INVALID_FRAME,
            Some(&is_error_with_code(code::INVALID_FRAME)),
        )
        .await;
    }
    still_answers(peer, events).await;
}

#[tokio::test]
async fn ids_at_and_beyond_two_to_the_53() {
    let (_server, _conn, mut events, mut peer) = setup(hostile_router()).await;
    // The largest id is answered.
    peer.send(format!("[\"echo\",[],{MAX_ID}]\n")).await;
    assert_eq!(peer.recv().await, json!([MAX_ID, []]));
    nothing_more(&mut peer, &mut events, "the largest id").await;
    // An id that is not an unsigned integer below 2^53 cannot be answered: an error event.
    for id in [
        "9007199254740992",
        "18446744073709551616",
        "-1",
        "-0",
        "1.5",
        "1.0",
        "1e2",
        "\"7\"",
        "null",
        "true",
        "[]",
    ] {
        expect_event(
            &mut peer,
            &mut events,
            &format!("[\"echo\",[],{id}]"),
            "invalid id",
            is_error_with_code(code::INVALID_FRAME),
        )
        .await;
        // A reply carrying such an id answers nothing: an error event too.
        expect_event(
            &mut peer,
            &mut events,
            &format!("[{id},5]"),
            "invalid reply id",
            |e| matches!(e, Event::Error(e) if e.code() == Some(code::INVALID_FRAME)),
        )
        .await;
    }
    still_answers(&mut peer, &mut events).await;
}

#[tokio::test]
async fn method_names_that_are_huge_empty_or_full_of_control_characters() {
    let (_server, _conn, mut events, mut peer) = setup(hostile_router()).await;
    let (peer, events) = (&mut peer, &mut events);
    // 1 MiB: unknown, answered -32601 quoting the first 64 characters and the size; as a
    // notification, a warning.
    let pattern = "abcdefghijklmnopqrstuvwxyz0123456789";
    let huge: String = pattern.chars().cycle().take(1 << 20).collect();
    let message = expect_error_reply(
        peer,
        events,
        &format!("[\"{huge}\",[],1]"),
        1,
        code::METHOD_NOT_FOUND,
        None,
    )
    .await;
    assert_eq!(
        message,
        format!("method not found: {}…(1048576 bytes)", &huge[..64])
    );
    expect_event(
        peer,
        events,
        &format!("[\"{huge}\",[]]"),
        "unknown method warning",
        is_warning_with_code(code::METHOD_NOT_FOUND),
    )
    .await;
    // Longer than the maximum frame (8 MiB): discarded unread, -32003.
    let too_long = "m".repeat(9 << 20);
    expect_event(
        peer,
        events,
        &format!("[\"{too_long}\",[],2]"),
        "frame too large",
        is_error_with_code(code::FRAME_TOO_LARGE),
    )
    .await;
    // Empty: unknown.
    expect_error_reply(peer, events, "[\"\",[],3]", 3, code::METHOD_NOT_FOUND, None).await;
    expect_event(
        peer,
        events,
        "[\"\",[]]",
        "empty method warning",
        is_warning_with_code(code::METHOD_NOT_FOUND),
    )
    .await;
    // Escaped control characters: unknown, and sent back escaped.
    let controls = r#""\u0000\u001b[2J\r\n\t\u007f\u2028""#;
    let message = expect_error_reply(
        peer,
        events,
        &format!("[{controls},[],4]"),
        4,
        code::METHOD_NOT_FOUND,
        None,
    )
    .await;
    assert!(
        message.ends_with("\0\u{1b}[2J\r\n\t\u{7f}\u{2028}"),
        "{message:?}"
    );
    // Raw control characters inside a string are not JSON.
    expect_event(
        peer,
        events,
        "[\"a\u{1}b\",[],5]",
        "parse error",
        is_error_with_code(code::PARSE_ERROR),
    )
    .await;
    // A lone surrogate is not a string Rust can hold: malformed, answered by id.
    expect_error_reply(
        peer,
        events,
        r#"["\ud800",[],6]"#,
        6,
        code::INVALID_FRAME,
        Some(&is_error_with_code(code::INVALID_FRAME)),
    )
    .await;
    // A method that is not a string: not a frame.
    expect_event(
        peer,
        events,
        "[true,[],7]",
        "invalid frame",
        is_error_with_code(code::INVALID_FRAME),
    )
    .await;
    still_answers(peer, events).await;
}

#[tokio::test]
async fn reserved_methods_that_do_not_exist() {
    let (_server, _conn, mut events, mut peer) = setup(hostile_router()).await;
    let (peer, events) = (&mut peer, &mut events);
    expect_error_reply(
        peer,
        events,
        "[\"$/nope\",[],1]",
        1,
        code::METHOD_NOT_FOUND,
        None,
    )
    .await;
    expect_error_reply(
        peer,
        events,
        "[\"$/\",[],2]",
        2,
        code::METHOD_NOT_FOUND,
        None,
    )
    .await;
    // `$/cancel` is a notification; as a request it is an unknown method.
    expect_error_reply(
        peer,
        events,
        "[\"$/cancel\",[1],3]",
        3,
        code::METHOD_NOT_FOUND,
        None,
    )
    .await;
    expect_event(
        peer,
        events,
        "[\"$/nope\",[1]]",
        "unknown reserved notification",
        is_warning_with_code(code::METHOD_NOT_FOUND),
    )
    .await;
    for line in [
        "[\"$/cancel\",[\"x\"]]",
        "[\"$/cancel\",[]]",
        "[\"$/cancel\",[-1]]",
    ] {
        expect_event(
            peer,
            events,
            line,
            "bad cancel",
            is_warning_with_code(code::INVALID_PARAMS),
        )
        .await;
    }
    // Cancelling what is not in flight is ignored (logged at debug): no reply, no event.
    peer.send("[\"$/cancel\",[12345]]\n").await;
    still_answers(peer, events).await;
}

#[tokio::test]
async fn args_that_are_null_or_not_an_array() {
    let (_server, _conn, mut events, mut peer) = setup(hostile_router()).await;
    let (peer, events) = (&mut peer, &mut events);
    // `{}` is by-name arguments (see tests/jsonrpc.rs), not a bad frame.
    for (i, args) in ["null", "\"x\"", "5", "true"].iter().enumerate() {
        let id = i as u64 + 1;
        let message = expect_error_reply(
            peer,
            events,
            &format!("[\"echo\",{args},{id}]"),
            id,
            code::INVALID_FRAME,
            Some(&is_error_with_code(code::INVALID_FRAME)),
        )
        .await;
        assert!(message.contains("must be an array"), "{message}");
    }
    expect_event(
        peer,
        events,
        "[\"echo\",null]",
        "invalid notification",
        is_error_with_code(code::INVALID_FRAME),
    )
    .await;
    still_answers(peer, events).await;
}

#[tokio::test]
async fn lines_that_are_not_arrays() {
    let (_server, _conn, mut events, mut peer) = setup(hostile_router()).await;
    for line in [
        "{}",
        "{\"method\":\"echo\"}",
        "5",
        "\"echo\"",
        "null",
        "true",
        "[]",
        "[[]]",
    ] {
        expect_event(
            &mut peer,
            &mut events,
            line,
            "invalid frame",
            is_error_with_code(code::INVALID_FRAME),
        )
        .await;
    }
    for line in [
        "nul",
        "[",
        "]",
        "[\"echo\",[],1] x",
        "[\"echo\",[],1][\"echo\",[],2]",
    ] {
        expect_event(
            &mut peer,
            &mut events,
            line,
            "parse error",
            is_error_with_code(code::PARSE_ERROR),
        )
        .await;
    }
    still_answers(&mut peer, &mut events).await;
}

/// Everything at once, fast, on one connection: nothing a peer writes stops it answering.
#[tokio::test]
async fn a_burst_of_hostile_lines_leaves_the_connection_answering() {
    let (_server, _conn, _events, mut peer) = setup_with(hostile_router(), true).await;
    let mut burst = String::new();
    for line in [
        "[\"value\",[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        "[\"count\",[1e400]]",
        "[\"echo\",[],-1]",
        "[\"\",[]]",
        "[\"$/x\",[]]",
        "[\"echo\",null]",
        "{}",
        "\u{0}\u{1}\u{2}",
        "\r",
        "[1,2,3,4,5]",
        "[null,null,5]",
        "[null,null,{\"code\":\"x\"}]",
    ] {
        for _ in 0..50 {
            burst.push_str(line);
            burst.push('\n');
        }
    }
    // The burst, then a request on the same stream: its reply comes after the server has
    // read (and dropped) every line of the burst.
    peer.send(burst).await;
    peer.send("[\"add\",[1,1],1]\n").await;
    assert_eq!(peer.recv().await, json!([1, 2]));
}
