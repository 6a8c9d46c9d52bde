//! JSON-RPC framing over arbitrary bytes cut at arbitrary places: `Content-Length` headers
//! (split reads, bad headers, lengths that lie) and, for comparison, lines.
//!
//! Input: byte 0 picks the framing (low bit) and the maximum message size, bytes 1..9 seed
//! the chunk lengths, the rest is the stream. Properties:
//! - deframing never panics and never hands out a message over the maximum;
//! - the stream in one piece and in chunks give the same pieces (messages, refusals);
//! - the bytes kept between reads stay bounded (a header is refused past 8 KiB; a message
//!   past the maximum is refused and skipped, not buffered).
#![no_main]

use bytes::BytesMut;
use diarrhoea::jsonrpc::fuzzing::{Deframer, Framing, Piece};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let framing = if data[0] & 1 == 0 {
        Framing::ContentLength
    } else {
        Framing::Lines
    };
    let lines = framing == Framing::Lines;
    let max = 16 + usize::from(data[0] >> 1) * 8;
    let mut seed = u64::from_le_bytes(data[1..9].try_into().unwrap()) | 1;
    let stream = &data[9..];

    let whole = {
        let mut deframer = Deframer::new(framing, max);
        let mut buf = BytesMut::from(stream);
        let mut out = Vec::new();
        drain(&mut deframer, &mut buf, false, &mut out, max, lines);
        drain(&mut deframer, &mut buf, true, &mut out, max, lines);
        out
    };

    let chunked = {
        let mut deframer = Deframer::new(framing, max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut rest = stream;
        while !rest.is_empty() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = if seed % 8 == 0 { seed >> 3 } else { seed % 5 } as usize;
            let n = (n % rest.len()) + 1;
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            drain(&mut deframer, &mut buf, false, &mut out, max, lines);
            // What waits for more bytes: at most a header, or a message within the maximum.
            assert!(
                buf.len() <= max.max(8 * 1024) + 4,
                "{} bytes kept",
                buf.len()
            );
        }
        drain(&mut deframer, &mut buf, true, &mut out, max, lines);
        out
    };
    assert_eq!(whole, chunked);
});

fn drain(
    deframer: &mut Deframer,
    buf: &mut BytesMut,
    eof: bool,
    out: &mut Vec<Piece>,
    max: usize,
    lines: bool,
) {
    while let Some(piece) = deframer.next(buf, eof) {
        let piece = match piece {
            Piece::Message(message) => {
                assert!(message.len() <= max, "a message of {} bytes", message.len());
                Piece::Message(message)
            }
            // A line refused before its end is known has no length; one seen whole has.
            Piece::TooLarge(_) if lines => Piece::TooLarge(None),
            other => other,
        };
        out.push(piece);
    }
}
