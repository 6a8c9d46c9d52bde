//! The HTTP body of a stream reply: NDJSON or server-sent events, chosen by `Accept`.
//!
//! The body yields one chunk per item, and polls the handler's stream for the next item only
//! when hyper asks for the next chunk, which it does once the last one is written: the HTTP
//! connection's own backpressure paces the producer, and a client that stops reading stops
//! it. A client that disconnects drops the body, and the stream with it.
//!
//! | format | an item | the end |
//! | --- | --- | --- |
//! | NDJSON (`application/x-ndjson`) | `{"item":<item>}` | `{"trailer":<trailer>}` or `{"error":{code,message,data}}` |
//! | SSE (`text/event-stream`) | `event: item`, `data: <item>` | `event: trailer` or `event: error`, with its data |

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use bytes::{BufMut, Bytes, BytesMut};
use futures_core::Stream;
use tokio::time::Instant;

use crate::error::{code, RpcError};
use crate::response::{Response, StreamBody};

/// How a stream goes over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// `application/x-ndjson`: one JSON object per line.
    Ndjson,
    /// `text/event-stream`: server-sent events.
    Sse,
}

impl Format {
    /// The format `Accept` asks for, if it asks for a stream.
    pub(super) fn accepted(headers: &HeaderMap) -> Option<Format> {
        let accept = headers.get_all(header::ACCEPT);
        let types = accept
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|kind| kind.split(';').next().unwrap_or("").trim());
        for kind in types {
            if kind.eq_ignore_ascii_case("application/x-ndjson") {
                return Some(Format::Ndjson);
            }
            if kind.eq_ignore_ascii_case("text/event-stream") {
                return Some(Format::Sse);
            }
        }
        None
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Ndjson => "application/x-ndjson",
            Format::Sse => "text/event-stream",
        }
    }

    /// What comes before an item, or before the end's value (`trailer` or `error`).
    fn open(self, buf: &mut BytesMut, what: &str) {
        match self {
            Format::Ndjson => {
                buf.put_slice(b"{\"");
                buf.put_slice(what.as_bytes());
                buf.put_slice(b"\":");
            }
            Format::Sse => {
                buf.put_slice(b"event: ");
                buf.put_slice(what.as_bytes());
                buf.put_slice(b"\ndata: ");
            }
        }
    }

    fn close(self, buf: &mut BytesMut) {
        match self {
            Format::Ndjson => buf.put_slice(b"}\n"),
            Format::Sse => buf.put_slice(b"\n\n"),
        }
    }

    /// The end of the stream: its trailer, or its error.
    fn end(self, end: Result<Response, RpcError>) -> Bytes {
        let mut buf = BytesMut::new();
        match end {
            Ok(trailer) => {
                self.open(&mut buf, "trailer");
                buf.put_slice(trailer.get().as_bytes());
            }
            Err(error) => {
                self.open(&mut buf, "error");
                let json = serde_json::to_vec(&error).unwrap_or_else(|_| {
                    format!(r#"{{"code":{},"message":"error"}}"#, error.code).into_bytes()
                });
                buf.put_slice(&json);
            }
        }
        self.close(&mut buf);
        buf.freeze()
    }
}

/// The `200` answer that streams `body`, ending by `deadline` if there is one.
pub(super) fn response(
    format: Format,
    body: StreamBody,
    deadline: Option<Instant>,
) -> HttpResponse {
    let chunks = Chunks {
        format,
        body: Some(body),
        deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
    };
    http_response(format, axum::body::Body::from_stream(chunks))
}

/// The answer of a method that does not stream, to a caller that asked for a stream: its one
/// reply as the end, without items.
pub(super) fn single(format: Format, reply: Response) -> HttpResponse {
    http_response(format, axum::body::Body::from(format.end(Ok(reply))))
}

fn http_response(format: Format, body: axum::body::Body) -> HttpResponse {
    let headers = [
        (header::CONTENT_TYPE, format.content_type()),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (StatusCode::OK, headers, body).into_response()
}

/// The chunks of the body: one per item, then the end.
struct Chunks {
    format: Format,
    /// `None` once the end is sent.
    body: Option<StreamBody>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Chunks {
    fn next_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let Some(body) = &mut self.body else {
            return Poll::Ready(None);
        };
        if let Some(deadline) = &mut self.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                self.body = None;
                let late = RpcError::new(code::TIMEOUT, "timeout: request deadline passed");
                return Poll::Ready(Some(self.format.end(Err(late))));
            }
        }
        let items = &mut body.items;
        // A panicking stream ends with -32603, as a panicking handler does.
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| items.as_mut().poll_item(cx)))
            .unwrap_or_else(|_| Poll::Ready(Some(Err(RpcError::internal("stream panicked")))));
        let end = match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(()))) => {
                let mut buf = BytesMut::new();
                self.format.open(&mut buf, "item");
                let written = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    items.as_mut().write_item(&mut buf)
                }))
                .unwrap_or_else(|_| Err(RpcError::internal("item serialization panicked")));
                match written {
                    Ok(()) => {
                        self.format.close(&mut buf);
                        return Poll::Ready(Some(buf.freeze()));
                    }
                    Err(error) => Err(error),
                }
            }
            Poll::Ready(Some(Err(error))) => Err(error),
            Poll::Ready(None) => Ok(()),
        };
        let body = self.body.take().expect("checked above");
        let end = end.and_then(|()| body.into_trailer());
        Poll::Ready(Some(self.format.end(end)))
    }
}

impl Stream for Chunks {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().next_chunk(cx).map(|chunk| chunk.map(Ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_picks_the_format() {
        let headers = |accept: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, accept.parse().unwrap());
            headers
        };
        assert_eq!(
            Format::accepted(&headers("application/x-ndjson")),
            Some(Format::Ndjson)
        );
        assert_eq!(
            Format::accepted(&headers("text/html, text/event-stream;q=0.9")),
            Some(Format::Sse)
        );
        assert_eq!(Format::accepted(&headers("application/json")), None);
        assert_eq!(Format::accepted(&HeaderMap::new()), None);
    }

    #[test]
    fn ends_are_written_in_each_format() {
        let trailer = Response::new(&5).unwrap();
        assert_eq!(
            &Format::Ndjson.end(Ok(trailer.clone()))[..],
            b"{\"trailer\":5}\n"
        );
        assert_eq!(
            &Format::Sse.end(Ok(trailer))[..],
            b"event: trailer\ndata: 5\n\n"
        );
        let error = RpcError::new(4000, "no");
        assert_eq!(
            &Format::Ndjson.end(Err(error))[..],
            b"{\"error\":{\"code\":4000,\"message\":\"no\"}}\n"
        );
    }
}
