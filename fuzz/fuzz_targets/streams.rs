//! Stream frames, well and badly formed, against a live connection on each side.
//!
//! The input is a program of operations, each picked by a byte and given its operands by the
//! next bytes: stream requests whose `meta.stream` is a good or a bad credit, `$/credit` with
//! counts of every kind (negative, zero, fractional, huge, strings) and for any id, `$/item`
//! to a side that asked for no stream, `$/cancel`, plain calls to methods that stream, bad
//! argument shapes, and raw bytes. Ids come from a small range, so they meet streams that are
//! running, finished, not yet started, and each other (duplicates).
//!
//! - **Server side**: a connection serving stream methods gets the program from a raw peer.
//! - **Client side**: a connection with one `CallStream` open gets items, replies and error
//!   replies for its stream and for ids it never used, from a raw peer playing the server.
//!
//! Properties: nothing panics; everything a connection writes parses as a frame; a stream
//! never sends more items than the credit granted (server side); and afterwards each
//! connection still answers a call (its reply arrives within 10 s).
#![no_main]

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use diarrhoea::{Connection, Frame, Router, RpcError, StreamReply};
use futures_core::Stream;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, Lines, ReadHalf};

/// Credits and counts of every kind, good and bad.
const COUNTS: [&str; 12] = [
    "0",
    "1",
    "2",
    "16",
    "-1",
    "1.5",
    "1e400",
    "18446744073709551615",
    "18446744073709551616",
    "\"5\"",
    "null",
    "[1]",
];
/// Argument shapes for `$/credit` and `$/item` that are not `[id, n]`.
const BAD_ARGS: [&str; 6] = ["[]", "[3]", "\"x\"", "{}", "[3,1,2]", "[\"3\",1]"];

/// A stream of the items of an iterator.
struct Iter<I>(I);

impl<I: Iterator + Unpin> Stream for Iter<I> {
    type Item = I::Item;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<I::Item>> {
        Poll::Ready(self.0.next())
    }
}

fn router() -> Router {
    Router::new()
        .route("count", |n: u64| async move {
            StreamReply::new(Iter(0..n.min(200))).trailer(n)
        })
        .route("fails", |n: u64| async move {
            let n = n.min(200);
            StreamReply::try_new(Iter((0..=n).map(move |i| {
                if i == n {
                    Err(RpcError::new(4000, "failed"))
                } else {
                    Ok(i)
                }
            })))
        })
        .route("add", |a: i64, b: i64| async move { a.wrapping_add(b) })
}

/// Reads the fuzzer's bytes as operands.
struct Program<'a> {
    data: &'a [u8],
}

impl Program<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.data.split_first()?;
        self.data = rest;
        Some(first)
    }

    fn id(&mut self) -> u64 {
        u64::from(self.byte().unwrap_or(0) % 8)
    }

    fn count(&mut self) -> &'static str {
        COUNTS[usize::from(self.byte().unwrap_or(0)) % COUNTS.len()]
    }

    /// The next operation's line, aimed at a server; `None` when the program ends.
    fn server_op(&mut self) -> Option<String> {
        let op = self.byte()?;
        Some(match op % 8 {
            0 | 1 => {
                let method = if op % 8 == 0 { "count" } else { "fails" };
                let n = self.byte().unwrap_or(0);
                let id = self.id();
                format!("[\"{method}\",[{n}],{id},{{\"stream\":{}}}]", self.count())
            }
            2 | 3 => format!("[\"$/credit\",[{},{}]]", self.id(), self.count()),
            4 => format!("[\"$/item\",[{},{}]]", self.id(), self.count()),
            5 => format!("[\"$/cancel\",[{}]]", self.id()),
            6 => {
                let which = usize::from(self.byte().unwrap_or(0));
                let method = ["$/credit", "$/item", "count"][which % 3];
                let args = BAD_ARGS[which / 3 % BAD_ARGS.len()];
                match which % 2 {
                    0 => format!("[\"{method}\",{args}]"),
                    _ => format!("[\"{method}\",{args},{}]", self.id()),
                }
            }
            _ => self.raw(),
        })
    }

    /// The next operation's line, aimed at a client whose stream is `stream`.
    fn client_op(&mut self, stream: u64) -> Option<String> {
        let op = self.byte()?;
        let id = match self.byte().unwrap_or(0) % 4 {
            0 => self.id() + 100,
            _ => stream,
        };
        Some(match op % 6 {
            0 | 1 => format!("[\"$/item\",[{id},{}]]", self.count()),
            2 => format!("[{id},{}]", self.count()),
            3 => format!("[{id},null,{{\"code\":-32800,\"message\":\"x\"}}]"),
            4 => {
                let args = BAD_ARGS[usize::from(self.byte().unwrap_or(0)) % BAD_ARGS.len()];
                format!("[\"$/item\",{args}]")
            }
            _ => self.raw(),
        })
    }

    /// Up to 16 bytes as they are, cut at any `\n`.
    fn raw(&mut self) -> String {
        let n = usize::from(self.byte().unwrap_or(0) % 16).min(self.data.len());
        let (raw, rest) = self.data.split_at(n);
        self.data = rest;
        String::from_utf8_lossy(raw).replace('\n', " ")
    }
}

/// The raw peer's side: lines written, frames read.
struct Raw {
    lines: Lines<BufReader<ReadHalf<DuplexStream>>>,
    write: tokio::io::WriteHalf<DuplexStream>,
}

impl Raw {
    async fn send(&mut self, line: &str) {
        self.write.write_all(line.as_bytes()).await.expect("write");
        self.write.write_all(b"\n").await.expect("write");
    }

    /// The next frame the connection wrote; it must parse.
    async fn recv(&mut self) -> Frame {
        let line = self.lines.next_line().await.expect("read").expect("open");
        Frame::parse(&line).unwrap_or_else(|e| panic!("the connection wrote {line:?}: {e}"))
    }
}

fn raw_peer(stream: DuplexStream) -> Raw {
    let (read, write) = tokio::io::split(stream);
    Raw {
        lines: BufReader::new(read).lines(),
        write,
    }
}

/// Per id, every credit written for it (initial credits and grants, as the server would read
/// them) and every item sent under it. A grant the server ignores (no open stream) is counted
/// all the same, so the bound checked, items <= credit, may be loose but is never wrong.
#[derive(Default)]
struct Ledger(HashMap<u64, (u128, u128)>);

impl Ledger {
    /// Counts the credit a line the raw peer writes carries, if any.
    fn written(&mut self, line: &str) {
        match Frame::parse(line) {
            Ok(Frame::Request { id, meta, .. }) => {
                if let Some(credit) = meta.stream {
                    self.0.entry(id).or_default().0 += u128::from(credit);
                }
            }
            Ok(Frame::Notification { method, args }) if &*method == "$/credit" => {
                if let Ok((id, n)) = args.deserialize::<(u64, u64)>() {
                    self.0.entry(id).or_default().0 += u128::from(n);
                }
            }
            _ => {}
        }
    }

    /// Checks an item the connection sends against the credit written for its id.
    fn read(&mut self, frame: &Frame) {
        if let Frame::Notification { method, args } = frame {
            assert_eq!(&**method, "$/item", "the server sends no other notification");
            let (id, _): (u64, serde_json::Value) = args.deserialize().expect("[id,item]");
            let (granted, sent) = self.0.entry(id).or_default();
            *sent += 1;
            assert!(*sent <= *granted, "stream {id}: {sent} items for {granted} credit");
        }
    }
}

/// The final call's id: outside the program's ids.
const LAST: u64 = 1 << 32;

async fn server_side(data: &[u8]) {
    let (near, far) = tokio::io::duplex(1 << 16);
    let _conn = Connection::builder().service(router()).serve_connection(near);
    let (read, mut write) = tokio::io::split(far);
    let mut lines = BufReader::new(read).lines();
    let ledger = std::cell::RefCell::new(Ledger::default());
    let mut program = Program { data };
    let writer = async {
        while let Some(line) = program.server_op() {
            // Counted before it is written: the items it allows come after.
            ledger.borrow_mut().written(&line);
            write.write_all(line.as_bytes()).await.expect("write");
            write.write_all(b"\n").await.expect("write");
        }
        let last = format!("[\"add\",[1,2],{LAST}]\n");
        write.write_all(last.as_bytes()).await.expect("write");
    };
    // Reads while the program is written, so the connection never waits on this side.
    let reader = async {
        loop {
            let line = lines.next_line().await.expect("read").expect("open");
            let frame = Frame::parse(&line)
                .unwrap_or_else(|e| panic!("the connection wrote {line:?}: {e}"));
            ledger.borrow_mut().read(&frame);
            if let Frame::Reply { id: LAST, result } = frame {
                assert_eq!(result.expect("add answers").get(), "3");
                return;
            }
        }
    };
    tokio::join!(writer, reader);
}

async fn client_side(data: &[u8]) {
    let (near, far) = tokio::io::duplex(1 << 16);
    let conn = Connection::builder()
        .service(router())
        .serve_connection(near);
    let mut raw = raw_peer(far);
    let mut program = Program { data };
    let window = u32::from(program.byte().unwrap_or(0) % 8) + 1;
    let mut items = conn.call_stream::<u64>("count", (5,)).window(window);
    let taking = tokio::spawn(async move {
        while std::future::poll_fn(|cx| Pin::new(&mut items).poll_next(cx))
            .await
            .is_some()
        {}
    });
    let stream = match raw.recv().await {
        Frame::Request { id, meta, .. } => {
            assert_eq!(meta.stream, Some(u64::from(window)));
            id
        }
        other => panic!("expected the stream request, got {other:?}"),
    };
    while let Some(line) = program.client_op(stream) {
        raw.send(&line).await;
    }
    // The connection still answers: a call from the raw peer, whatever it wrote meanwhile
    // (credit, `$/cancel`) is read past.
    raw.send("[\"add\",[1,2],1]").await;
    loop {
        match raw.recv().await {
            Frame::Reply { id: 1, result } => {
                assert_eq!(result.expect("add answers").get(), "3");
                break;
            }
            _ => continue,
        }
    }
    taking.abort();
    drop(conn);
}

fuzz_target!(|data: &[u8]| {
    let Some((&side, program)) = data.split_first() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let run = async {
            if side % 2 == 0 {
                server_side(program).await
            } else {
                client_side(program).await
            }
        };
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the connection stopped answering");
    });
});
