//! Cost per message of the pieces, without a socket: frame encode and decode (through
//! [`FrameCodec`]), and router dispatch (`Router` driven with `oneshot`, handler included).
//!
//! ```text
//! cargo bench --bench frame_router
//! ```

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use diarrhoea::codec::FrameCodec;
use diarrhoea::{Args, Frame, Request, Response, Router};
use serde::de::IgnoredAny;
use tokio_util::codec::Decoder;
use tower::ServiceExt;

/// The lines of a flood: a Node-style ping, an echo call, and its reply.
const PING: &str = r#"["ping",["flood12345",1732400000000]]"#;
const ECHO: &str = r#"["echo",["flood12345",123456],42]"#;
const REPLY: &str = r#"[42,["flood12345",123456]]"#;

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Elements(1));
    for (name, line) in [("notification", PING), ("request", ECHO), ("reply", REPLY)] {
        let frame = Frame::parse(line).expect("valid line");
        let mut buf = BytesMut::with_capacity(4096);
        group.bench_function(format!("encode_{name}"), |b| {
            b.iter(|| {
                black_box(&frame).encode(&mut buf);
                buf.clear();
            })
        });

        let wire = format!("{line}\n");
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::with_capacity(4096);
        group.bench_function(format!("decode_{name}"), |b| {
            b.iter(|| {
                buf.extend_from_slice(wire.as_bytes());
                black_box(codec.decode(&mut buf).expect("no I/O").expect("a line"))
            })
        });
    }
    group.finish();
}

/// Drives a future that must be ready at once (no handler here waits on anything).
fn now<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the handler was expected to be ready at once"),
    }
}

fn router(c: &mut Criterion) {
    let router = Router::new()
        .route("ping", |_x: String, time: u64| async move { time })
        .route("echo", |args: Args| async move { args })
        .route("drop", |_x: IgnoredAny, _time: u64| async {});
    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(1));
    for (name, method, line) in [
        ("typed_string_u64", "ping", PING),
        ("args_passthrough", "echo", ECHO),
        ("ignored_u64", "drop", PING),
    ] {
        let (Frame::Notification { args, .. } | Frame::Request { args, .. }) =
            Frame::parse(line).expect("valid line")
        else {
            unreachable!("a call")
        };
        group.bench_function(format!("dispatch_{name}"), |b| {
            b.iter_batched(
                || Request::from_parts(method.to_owned(), args.clone()),
                |req| -> Response { now(router.clone().oneshot(req)).expect("handled") },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, frames, router);
criterion_main!(benches);
