//! Descriptors as arguments (`diarrhoea::Fd`) over real Unix sockets: a TCP stream, a file
//! and a pipe end reach a handler that uses them; over TCP the send fails before anything
//! is written. The refusals and the open-descriptor count are in tests/fd_hostile.rs (a
//! binary of its own: it counts this process's descriptors).

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use diarrhoea::{Connection, Fd, Router, UnixListener};
use support::{temp_dir, within};

/// A server on a fresh socket with handlers that use the descriptors they are given.
///
/// - `greet(stream, text)`: writes `text` on a TCP stream, answers its length.
/// - `append(file, text)`: appends `text` to the file, answers `true`.
/// - `pipe(writer, text)` (a notification or a call): writes `text` into the pipe.
/// - `count(a, b?)`: answers how many descriptors it was given.
fn serve(dir: &Path) -> PathBuf {
    let path = dir.join("fd.sock");
    let router = Router::new()
        .route("greet", |stream: Fd, text: String| async move {
            let mut stream = std::net::TcpStream::from(stream);
            stream.write_all(text.as_bytes()).unwrap();
            text.len()
        })
        .route("append", |file: Fd, text: String| async move {
            let mut file = std::fs::File::from(file);
            file.write_all(text.as_bytes()).is_ok()
        })
        .route("pipe", |writer: Fd, text: String| async move {
            let mut writer = std::io::PipeWriter::from(writer);
            writer.write_all(text.as_bytes()).unwrap();
        })
        .route("count", |_a: Fd, b: Option<Fd>| async move {
            1 + usize::from(b.is_some())
        });
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(diarrhoea::serve(listener, router).into_future());
    path
}

use std::future::IntoFuture;

#[tokio::test]
async fn a_tcp_stream_a_file_and_a_pipe_end_work_on_the_other_side() {
    let dir = temp_dir();
    let path = serve(dir.path());
    let conn = within("connect", Connection::connect(&path)).await.unwrap();

    // A TCP connection accepted here, answered there.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = std::net::TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
    let (accepted, _) = tcp.accept().unwrap();
    let n: usize = within("greet", conn.call("greet", (Fd::from(accepted), "hello")))
        .await
        .unwrap();
    assert_eq!(n, 5);
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut got = [0u8; 5];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");

    // A file written by the handler.
    let file_path = dir.path().join("out.txt");
    let file = std::fs::File::create(&file_path).unwrap();
    let ok: bool = within("append", conn.call("append", (Fd::from(file), "line\n")))
        .await
        .unwrap();
    assert!(ok);
    assert_eq!(std::fs::read_to_string(&file_path).unwrap(), "line\n");

    // A pipe's write end, by notification: what the handler writes comes out here.
    let (mut reader, writer) = std::io::pipe().unwrap();
    conn.post_message("pipe", (Fd::from(writer), "through the pipe"))
        .await
        .unwrap();
    let read = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        // Every write end is closed once the handler drops it: the read ends.
        reader.read_to_string(&mut text).map(|_| text)
    });
    let text = within("the pipe's text", read).await.unwrap().unwrap();
    assert_eq!(text, "through the pipe");

    // A trailing `Option<Fd>` may be left out, as any trailing optional parameter.
    let (r0, _w0) = std::io::pipe().unwrap();
    let one: usize = within("count one", conn.call("count", (Fd::from(r0),)))
        .await
        .unwrap();
    assert_eq!(one, 1);

    // Two in one frame, and one through `Request::new` (the Caller service).
    let (r1, w1) = std::io::pipe().unwrap();
    let two: usize = within(
        "count",
        conn.call("count", (Fd::from(r1), Some(Fd::from(w1)))),
    )
    .await
    .unwrap();
    assert_eq!(two, 2);
    let (r2, _w2) = std::io::pipe().unwrap();
    let req = diarrhoea::Request::new("count", (Fd::from(r2), None::<Fd>)).unwrap();
    let reply = within(
        "count by Caller",
        tower::ServiceExt::oneshot(conn.caller(), req),
    )
    .await
    .unwrap();
    assert_eq!(reply.deserialize::<usize>().unwrap(), 1);
}

#[tokio::test]
async fn an_fd_over_tcp_fails_locally_and_nothing_is_written() {
    let router = Router::new()
        .route("count", |_a: Fd| async move { 1 })
        .route("ping", || async move { "pong" });
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(diarrhoea::serve(tcp, router).into_future());
    let conn = within("connect", Connection::connect_tcp(addr))
        .await
        .unwrap();
    let file = std::fs::File::open("/dev/null").unwrap();
    let error = within("refusal", conn.call::<usize>("count", (Fd::from(file),)))
        .await
        .unwrap_err();
    assert!(!error.is_remote(), "refused here, not by the peer: {error}");
    let chain = format!("{error}: {:?}", std::error::Error::source(&error));
    assert!(chain.contains("only be sent over a Unix socket"), "{chain}");
    // The connection is fine, and the next frame is the first the peer sees.
    let pong: String = within("ping", conn.call("ping", ())).await.unwrap();
    assert_eq!(pong, "pong");
}

#[tokio::test]
async fn a_descriptor_claimed_twice_or_missing_is_an_invalid_params_reply() {
    let dir = temp_dir();
    let path = serve(dir.path());
    let conn = within("connect", Connection::connect(&path)).await.unwrap();
    // `count` takes up to two; sending one descriptor twice is one descriptor, claimed
    // twice (serde writes each `Fd` by its own index, so this needs a raw placeholder).
    let (r, _w) = std::io::pipe().unwrap();
    let fd = Fd::from(r);
    let raw = serde_json::value::RawValue::from_string(r#"{"$fd":0}"#.into()).unwrap();
    let error = within("claimed twice", conn.call::<usize>("count", (&fd, raw)))
        .await
        .unwrap_err();
    let rpc = error.remote().expect("a reply");
    assert_eq!(rpc.code, diarrhoea::code::INVALID_PARAMS);
    assert!(rpc.message.contains("already taken"), "{rpc}");
}

/// A typed service (`#[diarrhoea::service]`) takes an `Fd` as any parameter, and its
/// generated client sends one: no code of its own for descriptors.
#[diarrhoea::service]
pub trait Sink {
    /// Writes `text` into the file it is given; answers how many bytes.
    async fn write_into(&self, file: Fd, text: String) -> usize;
}

#[derive(Clone)]
struct FileSink;

impl Sink for FileSink {
    async fn write_into(&self, file: Fd, text: String) -> usize {
        let mut file = std::fs::File::from(file);
        file.write_all(text.as_bytes()).unwrap();
        text.len()
    }
}

#[tokio::test]
async fn a_typed_method_takes_a_descriptor() {
    let (client, _server) = Connection::builder()
        .pair(Connection::builder().service(FileSink.into_router()))
        .unwrap();
    let sink = SinkClient::new(client);
    let (mut reader, writer) = std::io::pipe().unwrap();
    let n = within(
        "write_into",
        sink.write_into(Fd::from(writer), "typed".into()),
    )
    .await
    .unwrap();
    assert_eq!(n, 5);
    let mut text = [0u8; 5];
    reader.read_exact(&mut text).unwrap();
    assert_eq!(&text, b"typed");
}
