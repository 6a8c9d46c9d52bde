//! The frame decoder over arbitrary bytes cut at arbitrary places.
//!
//! Input: byte 0 picks the maximum frame size, bytes 1..9 seed the chunk lengths, the rest is
//! the stream. Properties:
//! - decoding never fails with an I/O error and never panics;
//! - the stream decoded in one piece and decoded in chunks give the same items;
//! - every frame decoded re-encodes to one line that decodes to the same frame.
#![no_main]

use bytes::BytesMut;
use diarrhoea::codec::{Decoded, FrameCodec};
use diarrhoea::Frame;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let max = match data[0] {
        255 => diarrhoea::codec::DEFAULT_MAX_FRAME_SIZE,
        n => 16 + usize::from(n) * 4,
    };
    let mut seed = u64::from_le_bytes(data[1..9].try_into().unwrap()) | 1;
    let stream = &data[9..];

    let whole = {
        let mut codec = FrameCodec::new(max);
        let mut buf = BytesMut::from(stream);
        let mut out = Vec::new();
        drain(&mut codec, &mut buf, &mut out);
        finish(&mut codec, &mut buf, &mut out);
        out
    };

    let chunked = {
        let mut codec = FrameCodec::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut rest = stream;
        while !rest.is_empty() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Mostly short pieces, sometimes long ones.
            let n = if seed % 8 == 0 { seed >> 3 } else { seed % 5 } as usize;
            let n = (n % rest.len()) + 1;
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            drain(&mut codec, &mut buf, &mut out);
        }
        finish(&mut codec, &mut buf, &mut out);
        out
    };
    assert_eq!(whole, chunked);

    for frame in whole.iter().filter_map(|item| item.as_ref().ok()) {
        let mut line = BytesMut::new();
        frame.encode(&mut line);
        let text = std::str::from_utf8(&line).expect("frames encode to UTF-8");
        let body = text.strip_suffix('\n').expect("a frame ends its line");
        assert!(
            !body.contains('\n'),
            "a frame encodes to one line: {text:?}"
        );
        assert_eq!(&Frame::parse(body).expect(body), frame, "{text}");
    }
});

fn drain(codec: &mut FrameCodec, buf: &mut BytesMut, out: &mut Vec<Decoded>) {
    while let Some(item) = codec.decode(buf).expect("no I/O error from a buffer") {
        out.push(item);
    }
}

fn finish(codec: &mut FrameCodec, buf: &mut BytesMut, out: &mut Vec<Decoded>) {
    while let Some(item) = codec.decode_eof(buf).expect("no I/O error from a buffer") {
        out.push(item);
    }
    assert!(buf.is_empty());
}
