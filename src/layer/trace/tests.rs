//! TraceLayer with tower-test mocks and a recording subscriber.

use super::*;
use crate::layer::test_subscriber::Recorder;
use tower_test::mock;

fn request(method: &str, args: &str) -> Request {
    let raw = serde_json::value::RawValue::from_string(args.to_owned()).unwrap();
    Request::from_parts(method.to_owned(), crate::Args::from_raw(raw).unwrap())
}

#[test]
fn truncate_cuts_on_char_boundaries() {
    assert_eq!(truncate("abc", 3), "abc");
    assert_eq!(truncate("abcd", 3), "abc…(4 bytes)");
    // 'é' is two bytes: a byte-based cut at 3 would split it.
    assert_eq!(truncate("aéé", 2), "aé…(5 bytes)");
    assert_eq!(truncate("", 0), "");
}

#[test]
fn truncate_never_walks_deep_json() {
    // A million levels of nesting: a recursive walk would overflow the stack.
    let deep = format!("{}{}", "[".repeat(1_000_000), "]".repeat(1_000_000));
    let shown = truncate(&deep, DEFAULT_PAYLOAD_CHARS);
    assert!(shown.starts_with(&"[".repeat(256)));
    assert!(shown.ends_with("…(2000000 bytes)"));
}

#[tokio::test(start_paused = true)]
async fn records_method_latency_and_outcome_without_payloads() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());
    let (mut service, mut handle) =
        mock::spawn_layer::<Request, Response, _>(TraceLayer::outgoing().connection_id(7));

    assert!(service.poll_ready().is_ready());
    let fut = service.call(request("echo", r#"["secret"]"#));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.method(), "echo");
    tokio::time::advance(std::time::Duration::from_millis(5)).await;
    send.send_response(Response::new(&"also secret").unwrap());
    fut.await.unwrap();

    let spans = recorder.spans();
    assert_eq!(spans.len(), 1);
    let span = &spans[0];
    assert_eq!(span.name, "diarrhoea.request");
    assert_eq!(span.field("connection"), Some("7"));
    assert_eq!(span.field("direction"), Some("outgoing"));
    assert_eq!(span.field("method"), Some("echo"));
    assert_eq!(span.field("outcome"), Some("ok"));
    assert_eq!(span.field("latency_us"), Some("5000"));
    assert_eq!(span.field("args"), None);
    let events = recorder.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].field("outcome"), Some("ok"));
    assert!(!recorder.everything().contains("secret"));
}

#[tokio::test]
async fn records_error_codes() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());
    let (mut service, mut handle) =
        mock::spawn_layer::<Request, Response, _>(TraceLayer::incoming());

    assert!(service.poll_ready().is_ready());
    let fut = service.call(request("add", "[1]"));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(RpcError::invalid_params("needs 2 arguments, \"hunter2\""));
    let error = fut.await.unwrap_err();
    assert_eq!(code_of(&*error), Some(code::INVALID_PARAMS));

    assert!(service.poll_ready().is_ready());
    let fut = service.call(request("slow", "[]"));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(tower::timeout::error::Elapsed::new());
    fut.await.unwrap_err();

    assert!(service.poll_ready().is_ready());
    let fut = service.call(request("other", "[]"));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error("some middleware failed");
    fut.await.unwrap_err();

    let spans = recorder.spans();
    let codes: Vec<_> = spans.iter().map(|s| s.field("code")).collect();
    assert_eq!(codes, [Some("-32602"), Some("-32001"), Some("-32603")]);
    assert!(spans.iter().all(|s| s.field("outcome") == Some("error")));
    assert!(spans
        .iter()
        .all(|s| s.field("direction") == Some("incoming")));
    // Error messages may quote arguments: not shown by default.
    assert!(!recorder.everything().contains("hunter2"));
}

#[tokio::test]
async fn payloads_are_opt_in_and_truncated() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());
    let (mut service, mut handle) =
        mock::spawn_layer::<Request, Response, _>(TraceLayer::incoming().show_payloads(8));

    assert!(service.poll_ready().is_ready());
    let mut req = request("echo", r#"["ééééééééééé"]"#);
    req.set_peer(PeerInfo {
        connection_id: 42,
        identity: crate::peer::Identity::Unknown,
    });
    let fut = service.call(req);
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(
        req.args().get(),
        r#"["ééééééééééé"]"#,
        "the request passes unchanged"
    );
    send.send_response(Response::new(&"0123456789").unwrap());
    fut.await.unwrap();

    let span = &recorder.spans()[0];
    assert_eq!(span.field("connection"), Some("42"));
    assert_eq!(span.field("args"), Some("[\"éééééé…(26 bytes)"));
    assert_eq!(
        recorder.events()[0].field("result"),
        Some("\"0123456…(12 bytes)")
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_request_is_recorded_as_dropped() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());
    let (mut service, mut handle) =
        mock::spawn_layer::<Request, Response, _>(TraceLayer::incoming());
    assert!(service.poll_ready().is_ready());
    let fut = service.call(request("slow", "[]"));
    let _pending = handle.next_request().await.unwrap();
    // As the dispatcher does when a deadline passes.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), fut).await;
    let span = &recorder.spans()[0];
    assert_eq!(span.field("outcome"), Some("dropped"));
    assert_eq!(span.field("latency_us"), Some("1000000"));
    assert_eq!(recorder.events()[0].field("outcome"), Some("dropped"));
}

#[tokio::test]
async fn readiness_and_requests_pass_through() {
    let (mut service, mut handle) =
        mock::spawn_layer::<Request, Response, _>(TraceLayer::incoming());
    handle.allow(0);
    assert!(service.poll_ready().is_pending());
    handle.allow(1);
    assert!(service.poll_ready().is_ready());
    let fut = service.call(request("m", "[1,2]"));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!((req.method(), req.args().get()), ("m", "[1,2]"));
    send.send_response(Response::null());
    assert_eq!(fut.await.unwrap(), Response::null());
}

/// `show_payloads(256)`, the hostile table's setting, on arguments and a result nested
/// 100,000 levels deep: each recorded as its first 256 characters and its size, nothing more.
#[tokio::test]
async fn show_payloads_256_records_the_first_256_characters_of_a_deep_payload() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());
    let (mut service, mut handle) =
        mock::spawn_layer::<Request, Response, _>(TraceLayer::incoming().show_payloads(256));
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));

    assert!(service.poll_ready().is_ready());
    let fut = service.call(request("echo", &format!("[{deep}]")));
    let (_, send) = handle.next_request().await.unwrap();
    let raw = serde_json::value::RawValue::from_string(deep.clone()).unwrap();
    send.send_response(Response::from_raw(raw));
    fut.await.unwrap();

    let cut = |len: usize| format!("{}…({len} bytes)", "[".repeat(256));
    assert_eq!(
        recorder.spans()[0].field("args").map(str::to_owned),
        Some(cut(deep.len() + 2))
    );
    assert_eq!(
        recorder.events()[0].field("result").map(str::to_owned),
        Some(cut(deep.len()))
    );
    assert!(
        recorder.everything().len() < 4096,
        "more than the cut was recorded"
    );
}
