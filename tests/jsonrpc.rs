//! JSON-RPC 2.0 (`Protocol::JsonRpc`, `Protocol::Lsp`, `Protocol::Detect`) over real Unix
//! sockets: every example of the specification's section 7 sent to a Router-backed server
//! (lines and Content-Length framing), detection of each first-frame shape and refusal of a
//! switch, the Content-Length limit, by-name params reaching a typed service, cancellation,
//! deadlines, and this crate's client calling and being called by a JSON-RPC 2.0 server that
//! is not this crate (tests/interop/jsonrpc_peer.py, Python's standard library only).

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::time::Duration;

use diarrhoea::{code, Args, Config, Connection, Json, Protocol, Router, UnixListener};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

const PATIENCE: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {PATIENCE:?} waiting for {what}"))
}

/// The specification's own example method, as a typed service: it has parameter names.
#[diarrhoea::service]
pub trait Arith {
    /// `subtract(minuend, subtrahend)`, by position or by name.
    async fn subtract(&self, minuend: i64, subtrahend: i64) -> i64;
}

#[derive(Clone)]
struct MyArith;

impl Arith for MyArith {
    async fn subtract(&self, minuend: i64, subtrahend: i64) -> i64 {
        minuend - subtrahend
    }
}

/// The specification's section 7 methods: `subtract` from a typed service, the rest plain
/// routes (no parameter names).
fn spec_router() -> Router {
    Router::new()
        .route("sum", |args: Args| async move {
            args.deserialize::<Vec<i64>>().unwrap().iter().sum::<i64>()
        })
        .route("notify_hello", |_: i64| async {})
        .route("update", |_: Args| async {})
        .route("get_data", || async { Json(json!(["hello", 5])) })
        .route("slow", || async {
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .route("add", |a: i64, b: i64| async move { a + b })
        .merge(MyArith.into_router())
        .unwrap()
}

struct Server {
    _dir: tempfile::TempDir,
    path: PathBuf,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn start(protocol: Protocol, config: Config) -> Server {
    let dir = tempfile::Builder::new().prefix("djr").tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let signal = stop.clone().cancelled_owned();
    let server = diarrhoea::serve(listener, spec_router())
        .config(config.protocol(protocol))
        .with_graceful_shutdown(signal);
    tokio::spawn(server.into_future());
    Server {
        _dir: dir,
        path,
        stop,
    }
}

/// A raw client that frames as `framing` says.
struct Raw {
    read: BufReader<tokio::net::unix::OwnedReadHalf>,
    write: tokio::net::unix::OwnedWriteHalf,
    lsp: bool,
}

impl Raw {
    async fn connect(path: &Path, lsp: bool) -> Raw {
        let (read, write) = within("connect", UnixStream::connect(path))
            .await
            .unwrap()
            .into_split();
        Raw {
            read: BufReader::new(read),
            write,
            lsp,
        }
    }

    async fn send(&mut self, text: &str) {
        if self.lsp {
            let header = format!("Content-Length: {}\r\n\r\n", text.len());
            self.write.write_all(header.as_bytes()).await.unwrap();
            self.write.write_all(text.as_bytes()).await.unwrap();
        } else {
            // The specification's examples are laid out over several lines; a message on a
            // lines connection is one (no JSON string holds a raw line break).
            let line = text.replace('\n', " ");
            self.write.write_all(line.as_bytes()).await.unwrap();
            self.write.write_all(b"\n").await.unwrap();
        }
    }

    async fn recv(&mut self) -> Value {
        within("a response", async {
            if self.lsp {
                let mut len = None;
                loop {
                    let mut line = String::new();
                    assert!(self.read.read_line(&mut line).await.unwrap() > 0, "closed");
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    let (name, value) = line.split_once(':').expect("a header line");
                    assert!(name.eq_ignore_ascii_case("content-length"), "{line}");
                    len = Some(value.trim().parse::<usize>().unwrap());
                }
                let mut body = vec![0; len.expect("Content-Length")];
                self.read.read_exact(&mut body).await.unwrap();
                serde_json::from_slice(&body).unwrap()
            } else {
                let mut line = String::new();
                assert!(self.read.read_line(&mut line).await.unwrap() > 0, "closed");
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
            }
        })
        .await
    }

    /// Sends a request that must be answered, so that whatever came before it and was not
    /// answered is known to have had no answer.
    async fn sentinel(&mut self) {
        self.send(r#"{"jsonrpc":"2.0","method":"add","params":[1,1],"id":"sentinel"}"#)
            .await;
        let answer = self.recv().await;
        assert_eq!(answer, json!({"jsonrpc":"2.0","result":2,"id":"sentinel"}));
    }
}

/// The specification's answers name the error messages of its examples ("Method not found");
/// this crate's say why ("method not found: foo.get"). Compared: everything but the message,
/// which must be a non-empty string; `data` must be absent where the example has none.
fn normalized(mut value: Value) -> Value {
    match &mut value {
        Value::Array(items) => {
            let mut items: Vec<Value> = items.drain(..).map(normalized).collect();
            // Any order: sorted by their text.
            items.sort_by_key(|v| v.to_string());
            Value::Array(items)
        }
        Value::Object(object) => {
            if let Some(Value::Object(error)) = object.get_mut("error") {
                let message = error.get("message").and_then(Value::as_str);
                assert!(message.is_some_and(|m| !m.is_empty()), "{error:?}");
                error.insert("message".into(), json!("…"));
            }
            value
        }
        _ => value,
    }
}

/// Section 7 of the JSON-RPC 2.0 specification: each request and its answer (`None`: no
/// answer at all).
fn spec_examples() -> Vec<(&'static str, &'static str, Option<Value>)> {
    vec![
        (
            "positional parameters",
            r#"{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}"#,
            Some(json!({"jsonrpc": "2.0", "result": 19, "id": 1})),
        ),
        (
            "positional parameters, reversed",
            r#"{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}"#,
            Some(json!({"jsonrpc": "2.0", "result": -19, "id": 2})),
        ),
        (
            "named parameters",
            r#"{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}"#,
            Some(json!({"jsonrpc": "2.0", "result": 19, "id": 3})),
        ),
        (
            "named parameters, reordered",
            r#"{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, "id": 4}"#,
            Some(json!({"jsonrpc": "2.0", "result": 19, "id": 4})),
        ),
        (
            "a notification",
            r#"{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}"#,
            None,
        ),
        (
            "a notification without params",
            r#"{"jsonrpc": "2.0", "method": "foobar"}"#,
            None,
        ),
        (
            "a non-existent method",
            r#"{"jsonrpc": "2.0", "method": "foobar", "id": "1"}"#,
            Some(
                json!({"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"}),
            ),
        ),
        (
            "invalid JSON",
            r#"{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]"#,
            Some(
                json!({"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}),
            ),
        ),
        (
            "an invalid Request object",
            r#"{"jsonrpc": "2.0", "method": 1, "params": "bar"}"#,
            Some(
                json!({"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}),
            ),
        ),
        (
            "a batch, invalid JSON",
            r#"[
  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
  {"jsonrpc": "2.0", "method"
]"#,
            Some(
                json!({"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}),
            ),
        ),
        (
            "an empty array",
            "[]",
            Some(
                json!({"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}),
            ),
        ),
        (
            "an invalid batch, but not empty",
            "[1]",
            Some(
                json!([{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}]),
            ),
        ),
        (
            "an invalid batch",
            "[1,2,3]",
            Some(json!([
                {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
                {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
                {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}
            ])),
        ),
        (
            "a batch",
            r#"[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
    ]"#,
            Some(json!([
                {"jsonrpc": "2.0", "result": 7, "id": "1"},
                {"jsonrpc": "2.0", "result": 19, "id": "2"},
                {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
                {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
                {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}
            ])),
        ),
        (
            "a batch of notifications",
            r#"[
        {"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}
    ]"#,
            None,
        ),
    ]
}

async fn every_spec_example_gets_the_specified_answer(protocol: Protocol) {
    let lsp = protocol == Protocol::Lsp;
    for server_protocol in [protocol, Protocol::Detect] {
        let server = start(server_protocol, Config::new());
        let mut peer = Raw::connect(&server.path, lsp).await;
        for (what, request, answer) in spec_examples() {
            peer.send(request).await;
            match answer {
                Some(answer) => {
                    let got = peer.recv().await;
                    assert_eq!(
                        normalized(got.clone()),
                        normalized(answer),
                        "{what} ({server_protocol:?}): {got}"
                    );
                }
                None => peer.sentinel().await,
            }
        }
    }
}

#[tokio::test]
async fn every_spec_example_over_lines() {
    every_spec_example_gets_the_specified_answer(Protocol::JsonRpc).await;
}

#[tokio::test]
async fn every_spec_example_over_content_length() {
    every_spec_example_gets_the_specified_answer(Protocol::Lsp).await;
}

#[tokio::test]
async fn detection_picks_the_codec_of_each_first_frame_and_refuses_a_switch() {
    let server = start(Protocol::Detect, Config::new());
    // v1 first: answered in v1; a JSON-RPC object afterwards is a bad v1 frame.
    let mut v1 = Raw::connect(&server.path, false).await;
    v1.write.write_all(b"[\"add\",[2,3],7]\n").await.unwrap();
    assert_eq!(v1.recv().await, json!([7, 5]));
    v1.send(r#"{"jsonrpc":"2.0","method":"add","params":[2,3],"id":8}"#)
        .await;
    v1.write.write_all(b"[\"add\",[1,1],9]\n").await.unwrap();
    assert_eq!(
        v1.recv().await,
        json!([9, 2]),
        "the object got no answer, the connection went on in v1"
    );

    // JSON-RPC lines first: a v1 frame afterwards is refused with an error response.
    let mut lines = Raw::connect(&server.path, false).await;
    lines
        .send(r#"{"jsonrpc":"2.0","method":"add","params":[2,3],"id":1}"#)
        .await;
    assert_eq!(
        lines.recv().await,
        json!({"jsonrpc":"2.0","result":5,"id":1})
    );
    lines.send(r#"["add",[2,3],2]"#).await;
    let refused = lines.recv().await;
    assert_eq!(refused["error"]["code"], code::INVALID_FRAME, "{refused}");
    assert_eq!(refused["id"], Value::Null);
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("protocol v1"), "{message}");
    lines.send("Content-Length: 2").await;
    assert_eq!(lines.recv().await["error"]["code"], code::PARSE_ERROR);
    lines.sentinel().await;

    // A batch first is JSON-RPC lines too.
    let mut batch = Raw::connect(&server.path, false).await;
    batch
        .send(r#"[{"jsonrpc":"2.0","method":"add","params":[2,3],"id":1}]"#)
        .await;
    assert_eq!(
        batch.recv().await,
        json!([{"jsonrpc":"2.0","result":5,"id":1}])
    );

    // Content-Length first: a bare line afterwards is refused, framing goes on.
    let mut lsp = Raw::connect(&server.path, true).await;
    lsp.send(r#"{"jsonrpc":"2.0","method":"add","params":[2,3],"id":1}"#)
        .await;
    assert_eq!(lsp.recv().await, json!({"jsonrpc":"2.0","result":5,"id":1}));
    lsp.write
        .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"add\",\"params\":[2,3],\"id\":2}\n")
        .await
        .unwrap();
    let refused = lsp.recv().await;
    assert_eq!(refused["error"]["code"], code::INVALID_FRAME, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Content-Length"),
        "{refused}"
    );
    lsp.sentinel().await;
}

#[tokio::test]
async fn a_content_length_over_the_limit_is_refused_before_its_body_is_read() {
    let server = start(Protocol::Lsp, Config::new().max_frame_size(1024));
    let mut peer = Raw::connect(&server.path, true).await;
    // Only the header: the answer comes without a byte of the body.
    peer.write
        .write_all(b"Content-Length: 1000000000\r\n\r\n")
        .await
        .unwrap();
    let refused = peer.recv().await;
    assert_eq!(refused["error"]["code"], code::FRAME_TOO_LARGE, "{refused}");
    assert_eq!(refused["id"], Value::Null);
    // A line over the limit on a lines connection: the same, and the connection goes on.
    let server = start(Protocol::JsonRpc, Config::new().max_frame_size(1024));
    let mut peer = Raw::connect(&server.path, false).await;
    let long = format!(
        r#"{{"jsonrpc":"2.0","method":"add","params":["{}"],"id":1}}"#,
        "x".repeat(2000)
    );
    peer.send(&long).await;
    assert_eq!(peer.recv().await["error"]["code"], code::FRAME_TOO_LARGE);
    peer.sentinel().await;
}

#[tokio::test]
async fn by_name_params_reach_a_typed_service_and_only_it() {
    let server = start(Protocol::JsonRpc, Config::new());
    let mut peer = Raw::connect(&server.path, false).await;
    peer.send(
        r#"{"jsonrpc":"2.0","method":"subtract","params":{"minuend":5,"subtrahend":2},"id":1}"#,
    )
    .await;
    assert_eq!(peer.recv().await["result"], 3);
    peer.send(r#"{"jsonrpc":"2.0","method":"subtract","params":{"minuend":5,"x":2},"id":2}"#)
        .await;
    let unknown = peer.recv().await;
    assert_eq!(unknown["error"]["code"], code::INVALID_PARAMS, "{unknown}");
    assert!(unknown["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`x`"));
    // A plain route has no names.
    peer.send(r#"{"jsonrpc":"2.0","method":"add","params":{"a":1,"b":2},"id":3}"#)
        .await;
    let refused = peer.recv().await;
    assert_eq!(refused["error"]["code"], code::INVALID_PARAMS, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("positional arguments"),
        "{refused}"
    );
    assert_eq!(refused["id"], 3);
}

#[tokio::test]
async fn cancel_request_and_deadlines_map_to_the_connections_own() {
    let server = start(Protocol::JsonRpc, Config::new());
    let mut peer = Raw::connect(&server.path, false).await;
    peer.send(r#"{"jsonrpc":"2.0","method":"slow","id":"long one"}"#)
        .await;
    peer.send(r#"{"jsonrpc":"2.0","method":"$/cancelRequest","params":{"id":"long one"}}"#)
        .await;
    let cancelled = peer.recv().await;
    assert_eq!(
        (cancelled["id"].clone(), cancelled["error"]["code"].as_i64()),
        (json!("long one"), Some(code::CANCELLED)),
        "{cancelled}"
    );
    peer.send(r#"{"jsonrpc":"2.0","method":"slow","id":7,"meta":{"timeout_ms":50}}"#)
        .await;
    let late = peer.recv().await;
    assert_eq!(late["error"]["code"], code::TIMEOUT, "{late}");
    assert_eq!(late["id"], 7);
}

/// This crate's client against a JSON-RPC 2.0 server that is not this crate: a Python
/// script (standard library only) that answers calls and calls back.
async fn python_server(lsp: bool) {
    let dir = tempfile::Builder::new().prefix("djp").tempdir().unwrap();
    let path = dir.path().join("py.sock");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/jsonrpc_peer.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&path)
        .args(lsp.then_some("--lsp"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 must be installed to run the JSON-RPC interop test");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let ready = within("the Python server to listen", lines.next_line())
        .await
        .unwrap();
    assert_eq!(ready.as_deref(), Some("listening"));

    let (notes_tx, mut notes) = tokio::sync::mpsc::unbounded_channel::<String>();
    let router = Router::new()
        .route("double", |n: i64| async move { n * 2 })
        .route("note", move |text: String| {
            let notes_tx = notes_tx.clone();
            async move {
                let _ = notes_tx.send(text);
            }
        });
    let protocol = if lsp {
        Protocol::Lsp
    } else {
        Protocol::JsonRpc
    };
    let conn = Connection::builder()
        .protocol(protocol)
        .service(router)
        .connect(&path)
        .await
        .unwrap();
    let sum: i64 = within("add", conn.call("add", (2, 3))).await.unwrap();
    assert_eq!(sum, 5);
    // The server calls back (`double`, with a string id) before it answers.
    let asked: i64 = within("ask", conn.call("ask", (21,))).await.unwrap();
    assert_eq!(asked, 42);
    // The server's error object arrives as a remote error.
    let missing = within("missing", conn.call::<Value>("missing", ()))
        .await
        .unwrap_err();
    assert!(missing.is_remote(), "{missing}");
    // A notification both ways.
    conn.post_message("notify_me", ("hi",)).await.unwrap();
    assert_eq!(within("a note", notes.recv()).await.as_deref(), Some("hi"));
    conn.end();
    let status = within("the Python server to exit", child.wait())
        .await
        .unwrap();
    let rest: Vec<String> = {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = within("its report", lines.next_line()).await {
            rest.push(line);
        }
        rest
    };
    assert!(status.success(), "{rest:?}");
    assert_eq!(rest.last().map(String::as_str), Some("ok"), "{rest:?}");
}

#[tokio::test]
async fn a_client_calls_a_foreign_json_rpc_server_over_lines() {
    python_server(false).await;
}

#[tokio::test]
async fn a_client_calls_a_foreign_json_rpc_server_over_content_length() {
    python_server(true).await;
}

#[tokio::test]
async fn a_message_left_unfinished_closes_the_connection_after_the_partial_frame_timeout() {
    for (protocol, partial) in [
        (Protocol::JsonRpc, &b"{\"jsonrpc\":\"2.0\",\"meth"[..]),
        (
            Protocol::Lsp,
            &b"Content-Length: 40\r\n\r\n{\"jsonrpc\""[..],
        ),
        (Protocol::Lsp, &b"Content-Len"[..]),
    ] {
        let config = Config::new().partial_frame_timeout(Duration::from_millis(200));
        let server = start(protocol, config);
        let mut peer = Raw::connect(&server.path, protocol == Protocol::Lsp).await;
        peer.write.write_all(partial).await.unwrap();
        let mut rest = Vec::new();
        let read = within("the server to close", peer.read.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "{protocol:?} {partial:?}: {read:?}");
    }
}
