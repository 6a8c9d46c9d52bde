//! The JSON-RPC 2.0 object decoder: one message (an object, a batch, or anything else) as a
//! connection's translator reads it.
//!
//! Properties:
//! - translating never panics;
//! - every line it hands the connection's reader is a valid protocol v1 frame (the reader
//!   never sees a line of the translator's that it would refuse);
//! - every request line, answered, becomes one JSON-RPC 2.0 response (or one batch array of
//!   them) that is valid JSON, each with `"jsonrpc":"2.0"` and an `id`.
#![no_main]

use diarrhoea::jsonrpc::fuzzing::translate;
use diarrhoea::Frame;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let (lines, answers) = translate(data);
    for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let line = std::str::from_utf8(line).expect("v1 lines are UTF-8");
        if let Err(e) = Frame::parse(line) {
            panic!("the translator wrote a line the reader refuses: {line:?}: {e}");
        }
    }
    for answer in answers.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let value: Value = serde_json::from_slice(answer).expect("an answer is JSON");
        let each = match &value {
            Value::Array(items) => items.iter().collect::<Vec<_>>(),
            one => vec![one],
        };
        for response in each {
            assert_eq!(response["jsonrpc"], "2.0", "{value}");
            assert!(response.get("id").is_some(), "{value}");
            assert!(
                response.get("result").is_some() != response.get("error").is_some(),
                "{value}"
            );
        }
    }
});
