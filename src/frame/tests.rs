//! Frame shapes, parsing and encoding, on plain strings.

use super::*;
use bytes::BytesMut;

fn encode(frame: &Frame) -> String {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    String::from_utf8(buf.to_vec()).unwrap()
}

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).unwrap()
}

#[test]
fn notifications_are_byte_identical_to_diarrhoea_1_1_0() {
    let args = Args::new(&("flood1", 1732400000000u64)).unwrap();
    let frame = Frame::Notification {
        method: "ping".into(),
        args,
    };
    assert_eq!(encode(&frame), "[\"ping\",[\"flood1\",1732400000000]]\n");
    let none = Frame::Notification {
        method: "ping".into(),
        args: Args::empty(),
    };
    assert_eq!(encode(&none), "[\"ping\",[]]\n");
}

#[test]
fn every_frame_round_trips() {
    let frames = [
        Frame::Notification {
            method: "a\"b\n".into(),
            args: Args::new(&(1, "x")).unwrap(),
        },
        Frame::Request {
            method: "echo".into(),
            args: Args::empty(),
            id: 7,
            meta: Meta::default(),
        },
        Frame::Request {
            method: "echo".into(),
            args: Args::new(&[1, 2]).unwrap(),
            id: MAX_ID,
            meta: Meta {
                timeout_ms: Some(250),
                stream: Some(16),
            },
        },
        Frame::Reply {
            id: 7,
            result: Ok(Response::from_raw(raw(r#"{"a":[1,2]}"#))),
        },
        Frame::Reply {
            id: 8,
            result: Err(RpcError::new(-1, "no")),
        },
        Frame::ConnectionError(RpcError::new(code::OVERLOADED, "server full")),
    ];
    for frame in frames {
        let line = encode(&frame);
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        assert_eq!(Frame::parse(line.trim_end()).unwrap(), frame, "{line}");
    }
}

#[test]
fn wire_shapes_match_the_spec() {
    let req = Frame::Request {
        method: "m".into(),
        args: Args::empty(),
        id: 3,
        meta: Meta {
            timeout_ms: Some(5),
            ..Meta::default()
        },
    };
    assert_eq!(encode(&req), "[\"m\",[],3,{\"timeout_ms\":5}]\n");
    let stream = Frame::Request {
        method: "count".into(),
        args: Args::new(&(1000,)).unwrap(),
        id: 7,
        meta: Meta {
            stream: Some(16),
            ..Meta::default()
        },
    };
    assert_eq!(encode(&stream), "[\"count\",[1000],7,{\"stream\":16}]\n");
    let err = Frame::Reply {
        id: 3,
        result: Err(RpcError::method_not_found("m")),
    };
    assert_eq!(
        encode(&err),
        "[3,null,{\"code\":-32601,\"message\":\"method not found: m\"}]\n"
    );
    let conn = Frame::ConnectionError(RpcError::new(-32004, "bye"));
    assert_eq!(
        encode(&conn),
        "[null,null,{\"code\":-32004,\"message\":\"bye\"}]\n"
    );
}

#[test]
fn meta_ignores_unknown_keys() {
    let frame = Frame::parse(r#"["m",[],1,{"trace":"x","timeout_ms":9}]"#).unwrap();
    assert!(matches!(
        frame,
        Frame::Request {
            meta: Meta {
                timeout_ms: Some(9),
                stream: None,
            },
            ..
        }
    ));
}

fn invalid(line: &str) -> InvalidFrame {
    Frame::parse(line).expect_err(line)
}

#[test]
fn malformed_lines_are_classified() {
    assert_eq!(invalid("not json").error.code, code::PARSE_ERROR);
    assert_eq!(invalid("[\"m\",[1]").error.code, code::PARSE_ERROR);
    for line in [
        "{}",
        "5",
        "[]",
        "[\"m\"]",
        "[true,[]]",
        "[\"m\",5]",
        "[\"m\",[],-1]",
        "[\"m\",[],1.5]",
        "[\"m\",[],9007199254740992]",
        "[1,2,3]",
        "[null,[]]",
        "[-1,5]",
    ] {
        let e = invalid(line);
        assert_eq!(e.error.code, code::INVALID_FRAME, "{line}");
        assert_eq!(e.id, None, "{line}");
    }
    // What the peer is told names what a frame must be.
    let e = invalid("{}");
    assert!(
        e.error.message.contains("expected a JSON array"),
        "{}",
        e.error.message
    );
}

#[test]
fn malformed_requests_keep_a_readable_id() {
    for line in [
        "[\"m\",5,7]",
        "[\"m\",null,7]",
        "[\"m\",[],7,[]]",
        "[\"m\",[],7,{\"timeout_ms\":-1}]",
        "[\"m\",[],7,{},1]",
        "[\"m\",[],7,2,3]",
        "[5,[],7]",
    ] {
        let e = Frame::parse(line);
        match e {
            Err(e) if line.starts_with("[5") => assert_eq!(e.id, None),
            Err(e) => assert_eq!(
                (e.id, e.error.code),
                (Some(7), code::INVALID_FRAME),
                "{line}"
            ),
            Ok(f) => panic!("{line} parsed as {f:?}"),
        }
    }
}

#[test]
fn malformed_error_replies_still_reach_the_caller() {
    let frame = Frame::parse("[4,null,\"oops\"]").unwrap();
    match frame {
        Frame::Reply {
            id: 4,
            result: Err(e),
        } => assert_eq!(e.code, code::INVALID_FRAME),
        other => panic!("{other:?}"),
    }
}

#[test]
fn deep_nesting_is_rejected_without_overflowing_the_stack() {
    let depth = 1_000_000;
    let line = format!("[\"m\",[{}{}]]", "[".repeat(depth), "]".repeat(depth));
    // Raw values are skipped iteratively, so this parses; handlers then hit serde_json's
    // recursion limit when they deserialize.
    let frame = Frame::parse(&line).unwrap();
    let Frame::Notification { args, .. } = frame else {
        panic!()
    };
    assert!(args.deserialize::<serde_json::Value>().is_err());
    let bad = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    assert!(Frame::parse(&bad).is_err());
}

#[test]
fn method_names_may_hold_escapes() {
    let frame = Frame::parse(r#"["a\u0000\n\"b",[]]"#).unwrap();
    assert!(matches!(frame, Frame::Notification { method, .. } if &*method == "a\0\n\"b"));
}

#[test]
fn an_invalid_frame_says_what_and_which_request() {
    let without_id = InvalidFrame::new(None, RpcError::new(code::INVALID_FRAME, "bad shape"));
    assert_eq!(without_id.to_string(), "bad shape (code -32600)");
    let with_id = InvalidFrame::new(Some(7), RpcError::new(code::INVALID_FRAME, "bad shape"));
    assert_eq!(
        with_id.to_string(),
        "bad shape (code -32600) (request id 7)"
    );
}

#[test]
fn repeated_method_names_are_shared_and_the_cache_stays_bounded() {
    let mut names = MethodNames::default();
    let first = names.get("ping".as_bytes()).unwrap();
    assert!(
        Arc::ptr_eq(&first, &names.get("ping".as_bytes()).unwrap()),
        "a repeat is shared"
    );
    for i in 0..100 {
        names.get(format!("m{i}").as_bytes()).unwrap();
    }
    assert_eq!(names.names.len(), MethodNames::KEPT);
    // The oldest was replaced; the most recent ones are kept.
    assert!(!Arc::ptr_eq(&first, &names.get("ping".as_bytes()).unwrap()));
    let recent = names.get("m99".as_bytes()).unwrap();
    assert!(Arc::ptr_eq(&recent, &names.get("m99".as_bytes()).unwrap()));

    let long = "x".repeat(MethodNames::LONGEST + 1);
    let a = names.get(long.as_bytes()).unwrap();
    assert_eq!(&*a, long);
    assert!(
        !Arc::ptr_eq(&a, &names.get(long.as_bytes()).unwrap()),
        "long names are not kept"
    );
    let longest = "y".repeat(MethodNames::LONGEST);
    let b = names.get(longest.as_bytes()).unwrap();
    assert!(Arc::ptr_eq(&b, &names.get(longest.as_bytes()).unwrap()));
}

#[test]
fn a_full_method_cache_replaces_its_oldest_names_in_turn() {
    let mut names = MethodNames::default();
    let kept: Vec<Arc<str>> = (0..MethodNames::KEPT)
        .map(|i| names.get(format!("m{i}").as_bytes()).unwrap())
        .collect();
    names.get("new1".as_bytes()).unwrap();
    names.get("new2".as_bytes()).unwrap();
    // The two oldest made room, one each; the third oldest is still shared.
    assert!(Arc::ptr_eq(&kept[2], &names.get("m2".as_bytes()).unwrap()));
    assert!(!Arc::ptr_eq(&kept[1], &names.get("m1".as_bytes()).unwrap()));
}

#[test]
fn ids_read_without_serde_json_read_as_serde_json_reads_them() {
    let by_serde = |raw: &str| match serde_json::from_str::<u64>(raw) {
        Ok(id) if id <= MAX_ID => Some(id),
        _ => None,
    };
    for raw in [
        "0",
        "7",
        "10",
        "999999999999999",
        "1000000000000000",
        "9007199254740991",
        "9007199254740992",
        "18446744073709551616",
        "01",
        "00",
        "-0",
        "-1",
        "1e3",
        "1.0",
        "\"1\"",
        "null",
        "",
    ] {
        assert_eq!(parse_id(raw.as_bytes()).ok(), by_serde(raw), "{raw:?}");
    }
}

#[test]
fn the_payload_length_counts_the_method_and_the_arguments() {
    let frame = Frame::Notification {
        method: "ping".into(),
        args: Args::new(&("abc",)).unwrap(),
    };
    assert_eq!(frame.payload_len(), "ping".len() + r#"["abc"]"#.len());
}

#[test]
fn only_null_null_error_is_a_connection_error() {
    let error = r#"{"code":-32600,"message":"x"}"#;
    assert!(matches!(
        Frame::parse(&format!("[null,null,{error}]")),
        Ok(Frame::ConnectionError(_))
    ));
    for line in [
        format!("[null,1,{error}]"),
        format!("[null,null,{error},1]"),
    ] {
        assert!(Frame::parse(&line).is_err(), "{line}");
    }
}
