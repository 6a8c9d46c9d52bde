//! The frame parser over arbitrary lines, and the round trip.
//!
//! Properties, for any line without a `\n` (the codec never hands one over):
//! - parsing never panics or overflows the stack;
//! - a parsed frame encodes to exactly one line, which parses to the same frame and encodes
//!   to the same bytes again;
//! - a handler deserializing the arguments (serde_json's recursion limit) never overflows, and
//!   reads what serde_json reads (or fails as it fails).
#![no_main]

use bytes::BytesMut;
use diarrhoea::Frame;
use libfuzzer_sys::fuzz_target;

/// `Args::deserialize` (its own reader for the usual shapes) gives what serde_json gives; its
/// error carries serde_json's as its source.
macro_rules! agree {
    ($args:expr, $t:ty) => {
        match ($args.deserialize::<$t>(), serde_json::from_str::<$t>($args.get())) {
            (Ok(ours), Ok(serde)) => assert_eq!(ours, serde, "{:?}", $args),
            (Err(ours), Err(serde)) => assert_eq!(
                std::error::Error::source(&ours).map(ToString::to_string),
                Some(serde.to_string())
            ),
            (ours, serde) => panic!("{:?}: {ours:?} but serde_json {serde:?}", $args),
        }
    };
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let line = text.split('\n').next().unwrap_or_default();
    let frame = match Frame::parse(line) {
        Ok(frame) => frame,
        Err(invalid) => {
            let _ = invalid.to_string();
            return;
        }
    };
    let mut first = BytesMut::new();
    frame.encode(&mut first);
    let encoded = std::str::from_utf8(&first).expect("frames encode to UTF-8");
    let body = encoded.strip_suffix('\n').expect("a frame ends its line");
    assert!(!body.contains('\n'), "one line: {encoded:?}");
    let again = Frame::parse(body).unwrap_or_else(|e| panic!("{encoded:?} does not parse: {e}"));
    assert_eq!(again, frame, "{line:?} -> {encoded:?}");
    let mut second = BytesMut::new();
    again.encode(&mut second);
    assert_eq!(first, second);
    if let Frame::Notification { args, .. } | Frame::Request { args, .. } = &frame {
        agree!(args, serde_json::Value);
        agree!(args, (String, u64));
    }
});
