//! HTTP calls (`diarrhoea::http::rest`) in a real axum server on loopback, with a real HTTP
//! client (hyper-util) and, where the test must see bytes on the wire, a raw TCP client:
//! calls, notifications (202), an error reply for every row of the status table, bodies that
//! are not JSON or not arrays, an unknown method, bodies over the limit (refused before they
//! are read), a 100 MiB upload cut off early, and the host's auth reaching handlers.
#![cfg(feature = "axum")]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use diarrhoea::{code, Config, PeerInfo, Router, RpcError, StreamReply};
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use support::within;

/// The maximum frame size of the test server: bodies over it are refused.
const MAX: usize = 64 * 1024;

#[derive(Clone, Debug)]
struct User(String);

/// Items the `endless` stream has made; one test uses it.
static ENDLESS_PRODUCED: AtomicU64 = AtomicU64::new(0);
/// Tells when an `endless` stream is dropped.
static ENDLESS_DROPPED: std::sync::LazyLock<tokio::sync::Notify> =
    std::sync::LazyLock::new(tokio::sync::Notify::new);

/// Held by an `endless` stream: tells its drop.
struct DropTell;

/// `add`, `echo`, `fail(code)` (an error reply with that code and data), `sleep(ms)`,
/// `panic()`, `note(x)` (records x), `whoami()`.
fn router(notes: mpsc::UnboundedSender<String>) -> Router {
    Router::new()
        .route("add", |a: i64, b: i64| async move { a + b })
        .route("echo", |args: diarrhoea::Args| async move { args })
        .route("fail", |code: i64| async move {
            Err::<(), _>(RpcError::new(code, "refused on purpose").with_data(json!({"code": code})))
        })
        .route("sleep", |ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ms
        })
        .route("panic", || async {
            if true {
                panic!("on purpose");
            }
        })
        .route("note", move |x: String| {
            let notes = notes.clone();
            async move {
                let _ = notes.send(x);
            }
        })
        .route("count", |n: u64| async move {
            StreamReply::new(futures_util::stream::iter(0..n)).trailer(n)
        })
        .route("fails_at", |n: u64| async move {
            StreamReply::try_new(futures_util::stream::iter(0..).map(move |i: u64| {
                if i == n {
                    Err(RpcError::new(4000, "failed on purpose"))
                } else {
                    Ok(i)
                }
            }))
        })
        .route("endless", || async {
            let guard = DropTell;
            StreamReply::new(futures_util::stream::iter(0u64..).map(move |n| {
                let _ = &guard;
                ENDLESS_PRODUCED.fetch_add(1, Ordering::SeqCst);
                n
            }))
        })
        .route("whoami", |peer: PeerInfo| async move {
            let http = peer.http().expect("an HTTP peer");
            json!({
                "user": http.get::<User>().map(|u| u.0.clone()),
                "in_extensions": http.http_extensions().get::<User>().is_some(),
                "loopback": http.addr().is_some_and(|a| a.ip().is_loopback()),
            })
        })
}

struct Server {
    addr: SocketAddr,
    notes: mpsc::UnboundedReceiver<String>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `/rpc/{method}` on 127.0.0.1:0, behind an auth middleware that inserts `User("ada")`.
async fn server() -> Server {
    let (tx, notes) = mpsc::unbounded_channel();
    let config = Config::new()
        .max_frame_size(MAX)
        .request_timeout(Duration::from_secs(5));
    let app = axum::Router::new().nest(
        "/rpc",
        diarrhoea::http::rest(router(tx)).config(config).router(),
    );
    let (addr, task) = support::serve_signed_in(app, User("ada".into())).await;
    Server { addr, notes, task }
}

/// POSTs `body` to `/rpc/{method}` with `headers`; the status and the body.
async fn post(
    addr: SocketAddr,
    method: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = hyper::Request::post(format!("http://{addr}/rpc/{method}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let res = within("the response", client.request(req)).await.unwrap();
    let status = res.status().as_u16();
    let body = within("the body", res.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// The error object of an error reply.
fn error_of(body: &str) -> RpcError {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not an error object ({e}): {body}"))
}

#[tokio::test]
async fn a_call_answers_200_with_the_result_as_json() {
    let s = server().await;
    assert_eq!(post(s.addr, "add", "[2,3]", &[]).await, (200, "5".into()));
    let (status, body) = post(s.addr, "echo", r#"["a", {"b": [1]}]"#, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!(["a", {"b": [1]}])
    );
    // A pretty-printed body is fine.
    assert_eq!(post(s.addr, "add", "[\n 2,\n 3\n]", &[]).await.0, 200);
}

#[tokio::test]
async fn a_notification_runs_and_answers_202() {
    let mut s = server().await;
    let (status, body) = post(s.addr, "note", r#"["hi"]"#, &[("X-Diarrhoea-Notify", "1")]).await;
    assert_eq!((status, body.as_str()), (202, ""));
    assert_eq!(within("the note", s.notes.recv()).await.unwrap(), "hi");
    // A notification that fails is answered as a call would be.
    let (status, body) = post(s.addr, "nope", "[]", &[("X-Diarrhoea-Notify", "1")]).await;
    assert_eq!(
        (status, error_of(&body).code),
        (404, code::METHOD_NOT_FOUND)
    );
    // `0` means a call; other values are refused rather than guessed.
    assert_eq!(
        post(s.addr, "add", "[1,1]", &[("X-Diarrhoea-Notify", "0")])
            .await
            .0,
        200
    );
    let (status, body) = post(s.addr, "add", "[1,1]", &[("X-Diarrhoea-Notify", "maybe")]).await;
    assert_eq!((status, error_of(&body).code), (400, code::INVALID_FRAME));
}

#[tokio::test]
async fn every_row_of_the_status_table() {
    let s = server().await;
    let table = [
        (code::PARSE_ERROR, 400),
        (code::INVALID_FRAME, 400),
        (code::INVALID_PARAMS, 400),
        (code::METHOD_NOT_FOUND, 404),
        (code::TIMEOUT, 504),
        (code::OVERLOADED, 503),
        (code::FRAME_TOO_LARGE, 413),
        (code::SHUTTING_DOWN, 503),
        (code::INTERNAL_ERROR, 500),
        (code::CANCELLED, 500),
        (4242, 500),
    ];
    for (code, status) in table {
        let (got, body) = post(s.addr, "fail", &format!("[{code}]"), &[]).await;
        assert_eq!(got, status, "code {code}: {body}");
        // The error object arrives as the handler made it.
        assert_eq!(
            error_of(&body),
            RpcError::new(code, "refused on purpose").with_data(json!({"code": code}))
        );
    }
}

/// method, body, headers, then the status and code expected.
type Case = (&'static str, &'static str, Headers, u16, i64);
type Headers = &'static [(&'static str, &'static str)];

#[tokio::test]
async fn errors_from_the_stack_itself_keep_their_codes() {
    let s = server().await;
    let cases: [Case; 6] = [
        ("add", "[2,3", &[], 400, code::PARSE_ERROR),
        ("add", r#"{"a":2}"#, &[], 400, code::INVALID_FRAME),
        ("add", r#"["x",3]"#, &[], 400, code::INVALID_PARAMS),
        ("nope", "[]", &[], 404, code::METHOD_NOT_FOUND),
        (
            "sleep",
            "[5000]",
            &[("X-Diarrhoea-Timeout-Ms", "100")],
            504,
            code::TIMEOUT,
        ),
        ("panic", "[]", &[], 500, code::INTERNAL_ERROR),
    ];
    for (method, body, headers, status, code) in cases {
        let (got, reply) = post(s.addr, method, body, headers).await;
        let error = error_of(&reply);
        assert_eq!(
            (got, error.code),
            (status, code),
            "{method} {body}: {reply}"
        );
    }
    // Not JSON at all, and JSON that is not an array.
    let (status, reply) = post(s.addr, "add", "hello", &[]).await;
    assert_eq!((status, error_of(&reply).code), (400, code::PARSE_ERROR));
    let (status, reply) = post(s.addr, "add", "5", &[]).await;
    let error = error_of(&reply);
    assert_eq!((status, error.code), (400, code::INVALID_FRAME));
    assert!(error.message.contains("JSON array"), "{}", error.message);
    // The protocol's own methods are not reachable over HTTP (`$/cancel`, percent-encoded).
    let (status, reply) = post(s.addr, "%24%2Fcancel", "[1]", &[]).await;
    assert_eq!(
        (status, error_of(&reply).code),
        (404, code::METHOD_NOT_FOUND)
    );
    // A bad timeout header is refused.
    let (status, reply) = post(s.addr, "add", "[1,1]", &[("X-Diarrhoea-Timeout-Ms", "-1")]).await;
    assert_eq!((status, error_of(&reply).code), (400, code::INVALID_FRAME));
    // Only POST.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let res = client
        .get(format!("http://{}/rpc/add", s.addr).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 405);
}

#[tokio::test]
async fn the_hosts_auth_and_the_peer_address_reach_handlers() {
    let s = server().await;
    let (status, body) = post(s.addr, "whoami", "[]", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"user": "ada", "in_extensions": true, "loopback": true})
    );
}

#[tokio::test]
async fn a_body_just_under_the_limit_is_taken_and_one_over_is_413() {
    let s = server().await;
    // `["xxx...x"]` of exactly MAX bytes.
    let fits = format!(r#"["{}"]"#, "x".repeat(MAX - 4));
    assert_eq!(fits.len(), MAX);
    assert_eq!(post(s.addr, "echo", &fits, &[]).await.0, 200);
    let over = format!(r#"["{}"]"#, "x".repeat(MAX - 3));
    let (status, body) = post(s.addr, "echo", &over, &[]).await;
    assert_eq!((status, error_of(&body).code), (413, code::FRAME_TOO_LARGE));
}

/// Reads an HTTP/1.1 response's status line and headers from a raw stream.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = within("the response head", stream.read(&mut byte))
            .await
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed before a response: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_the_body_is_sent() {
    let s = server().await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    // Declares 1 GiB and sends none of it: an answer proves nothing was waited for, let
    // alone buffered.
    stream
        .write_all(
            b"POST /rpc/echo HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
              Content-Length: 1073741824\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

#[tokio::test]
async fn a_100_mib_upload_is_cut_off_early() {
    const UPLOAD: u64 = 100 * 1024 * 1024;
    let s = server().await;
    let stream = TcpStream::connect(s.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    // Chunked, no length declared: the server must count as it reads.
    let sent = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let sent = sent.clone();
        async move {
            write
                .write_all(
                    b"POST /rpc/echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n",
                )
                .await?;
            write.write_all(b"10000\r\n[\"").await?;
            let chunk = vec![b'x'; 64 * 1024];
            let mut first = true;
            while sent.load(Ordering::SeqCst) < UPLOAD {
                if !first {
                    write.write_all(b"10000\r\n").await?;
                }
                let body = if first { &chunk[2..] } else { &chunk[..] };
                first = false;
                write.write_all(body).await?;
                write.write_all(b"\r\n").await?;
                sent.fetch_add(64 * 1024, Ordering::SeqCst);
            }
            write.write_all(b"0\r\n\r\n").await?;
            std::io::Result::Ok(())
        }
    });
    // The answer comes while the upload is still going: the server stopped at the limit.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = within("the response head", read.read(&mut byte))
            .await
            .unwrap();
        assert_eq!(n, 1, "closed before a response");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    // The server then closes the connection instead of reading the rest: the upload fails.
    let outcome = within("the upload to be cut off", writer).await.unwrap();
    assert!(outcome.is_err(), "the whole upload was taken");
    let at = sent.load(Ordering::SeqCst);
    assert!(at < UPLOAD / 4, "{at} bytes sent before the cut");
}

#[tokio::test]
async fn the_gateway_example_answers_on_its_socket_and_over_http_in_one_run() {
    use tokio::io::AsyncBufReadExt;
    let exe = tokio::task::spawn_blocking(|| support::example_exe("gateway"))
        .await
        .unwrap();
    let dir = support::temp_dir();
    let socket = dir.path().join("gw.sock");
    let mut child = tokio::process::Command::new(exe)
        .args(["--http", "127.0.0.1:0", "--socket"])
        .arg(&socket)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = within("the gateway to listen", lines.next_line())
        .await
        .unwrap()
        .expect("a line");
    // "listening on PATH and http://ADDR (...)"
    let addr: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));

    let conn = diarrhoea::Connection::connect(&socket).await.unwrap();
    assert_eq!(conn.call::<i64>("add", (2, 3)).await.unwrap(), 5);
    assert_eq!(post(addr, "add", "[2,3]", &[]).await, (200, "5".into()));
    let ws = diarrhoea::Connection::connect_ws(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    assert_eq!(ws.call::<i64>("add", (2, 3)).await.unwrap(), 5);
    // Each side says how the caller came in.
    let local: String = conn.call("whoami", ()).await.unwrap();
    assert!(local.contains("Unix socket"), "{local}");
    let (_, remote) = post(addr, "whoami", "[]", &[]).await;
    assert!(remote.contains("127.0.0.1"), "{remote}");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn each_http_call_gets_its_own_id() {
    // Handlers may read a call's id (`Request::id`); over HTTP the crate makes one per call.
    let echo_id = tower::service_fn(|request: diarrhoea::Request| async move {
        diarrhoea::Response::new(&request.id())
    });
    let app = axum::Router::new().nest("/rpc", diarrhoea::http::rest(echo_id).router());
    let (addr, task) = support::serve_signed_in(app, User("ada".into())).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, body) = post(addr, "id", "[]", &[]).await;
        assert_eq!(status, 200, "{body}");
        let id: Option<u64> = serde_json::from_str(&body).unwrap();
        ids.push(id.expect("a call has an id"));
    }
    task.abort();
    assert!(ids.iter().all(|&id| id < 1 << 53), "{ids:?}");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "the ids repeat: {ids:?}");
}

#[tokio::test]
async fn a_stream_answers_ndjson_or_server_sent_events_by_accept() {
    let s = server().await;
    let ndjson = [("accept", "application/x-ndjson")];
    let (status, body) = post(s.addr, "count", "[3]", &ndjson).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        "{\"item\":0}\n{\"item\":1}\n{\"item\":2}\n{\"trailer\":3}\n"
    );
    let sse = [("accept", "text/event-stream")];
    let (status, body) = post(s.addr, "count", "[2]", &sse).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        "event: item\ndata: 0\n\nevent: item\ndata: 1\n\nevent: trailer\ndata: 2\n\n"
    );
    // An error item ends the body with the error, after the items before it.
    let (status, body) = post(s.addr, "fails_at", "[1]", &ndjson).await;
    assert_eq!(status, 200);
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0], json!({"item": 0}));
    assert_eq!(lines[1]["error"]["code"], 4000);
    // A method that does not stream: its one reply as the end.
    let (status, body) = post(s.addr, "add", "[1,2]", &ndjson).await;
    assert_eq!((status, body.as_str()), (200, "{\"trailer\":3}\n"));
    // A method that streams, asked for JSON: refused.
    let (status, body) = post(s.addr, "count", "[3]", &[]).await;
    assert_eq!((status, error_of(&body).code), (400, code::INVALID_FRAME));
    // Errors before the stream starts keep their status.
    let (status, body) = post(s.addr, "count", "[\"x\"]", &ndjson).await;
    assert_eq!((status, error_of(&body).code), (400, code::INVALID_PARAMS));
}

#[tokio::test]
async fn an_http_client_that_stops_reading_stops_the_stream_and_one_that_leaves_drops_it() {
    let s = server().await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(
            b"POST /rpc/endless HTTP/1.1\r\nHost: test\r\nAccept: application/x-ndjson\r\n\
              Content-Length: 2\r\n\r\n[]",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Not reading: the socket buffers fill, hyper stops asking for chunks, and the stream
    // is no longer polled. Wait until the count holds still for 200 ms.
    let mut last = ENDLESS_PRODUCED.load(Ordering::SeqCst);
    let held = within("the producer to stop", async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = ENDLESS_PRODUCED.load(Ordering::SeqCst);
            if now == last && now > 0 {
                return now;
            }
            last = now;
        }
    })
    .await;
    // What the producer made is what the socket buffers and hyper's write buffer hold: a
    // bound in bytes (each item is about 20 on the wire), not a growing queue. 2 million
    // items would be 40 MB, far over any loopback socket's buffers.
    assert!(
        held < 2_000_000,
        "{held} items made for a client that does not read"
    );
    // Reading resumes it.
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..8 {
        within("more of the body", stream.read(&mut buf))
            .await
            .unwrap();
    }
    within("the producer to go on", async {
        while ENDLESS_PRODUCED.load(Ordering::SeqCst) == held {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Leaving drops the stream.
    let dropped = ENDLESS_DROPPED.notified();
    drop(stream);
    within("the stream to be dropped", dropped).await;
}

impl Drop for DropTell {
    fn drop(&mut self) {
        ENDLESS_DROPPED.notify_one();
    }
}

/// POSTs a JSON-RPC 2.0 body to `/rpc` itself; the status and the body.
async fn post_jsonrpc(addr: SocketAddr, body: &str) -> (u16, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = hyper::Request::post(format!("http://{addr}/rpc"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let res = within("the response", client.request(req)).await.unwrap();
    let status = res.status().as_u16();
    let body = within("the body", res.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn json_rpc_at_the_prefix_answers_200_and_204_for_notifications_only() {
    let mut s = server().await;
    let (status, body) = post_jsonrpc(
        s.addr,
        r#"{"jsonrpc":"2.0","method":"add","params":[2,3],"id":1}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"jsonrpc":"2.0","result":5,"id":1})
    );
    // A batch: one array, in any order, notifications left out; errors are answers too.
    let (status, body) = post_jsonrpc(
        s.addr,
        r#"[{"jsonrpc":"2.0","method":"add","params":[1,2],"id":"a"},
            {"jsonrpc":"2.0","method":"note","params":["in a batch"]},
            {"jsonrpc":"2.0","method":"fail","params":[7],"id":"b"},
            {"jsonrpc":"2.0","method":"nope","id":"c"}]"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut answers: Vec<Value> = serde_json::from_str(&body).unwrap();
    answers.sort_by_key(|a| a["id"].to_string());
    assert_eq!(answers[0], json!({"jsonrpc":"2.0","result":3,"id":"a"}));
    assert_eq!(answers[1]["error"]["code"], 7);
    assert_eq!(answers[1]["error"]["data"], json!({"code": 7}));
    assert_eq!(answers[2]["error"]["code"], code::METHOD_NOT_FOUND);
    assert_eq!(answers.len(), 3);
    assert_eq!(
        within("the note", s.notes.recv()).await.unwrap(),
        "in a batch"
    );
    // Only notifications: 204, and they ran.
    let (status, body) = post_jsonrpc(
        s.addr,
        r#"{"jsonrpc":"2.0","method":"note","params":["alone"]}"#,
    )
    .await;
    assert_eq!((status, body.as_str()), (204, ""));
    assert_eq!(within("the note", s.notes.recv()).await.unwrap(), "alone");
    // Bad input is a JSON-RPC answer, status 200, as the specification's examples.
    for (body, error) in [
        ("{nope", code::PARSE_ERROR),
        ("[]", code::INVALID_FRAME),
        (r#"{"jsonrpc":"2.0","method":1}"#, code::INVALID_FRAME),
    ] {
        let (status, answer) = post_jsonrpc(s.addr, body).await;
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(
            (status, &answer["error"]["code"]),
            (200, &json!(error)),
            "{body}"
        );
        assert_eq!(answer["id"], Value::Null);
    }
    // The body limit holds as for `POST {prefix}/{method}`.
    let big = format!(
        r#"{{"jsonrpc":"2.0","method":"echo","params":["{}"],"id":1}}"#,
        "x".repeat(MAX)
    );
    assert_eq!(post_jsonrpc(s.addr, &big).await.0, 413);
}
