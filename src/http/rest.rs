//! [`Rest`]: `POST {prefix}/{method}` with a JSON array of arguments, through the same
//! service stack as a connection's calls.
//!
//! ```text
//! POST /rpc/add [2,3] -> [host server's layers] -> Content-Length check -> body (limited)
//!   -> Args -> Request -> [your tower layers] -> Router -> handler -> 200 5
//!                                                       error -> RpcError -> status + {code,message,data}
//! ```

use std::any::Any;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response as HttpResponse};
use futures_util::FutureExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::value::RawValue;
use tower::{Service, ServiceExt};

use super::stream_body::{self, Format};
use crate::args::Args;
use crate::connection::{not_asked, Config};
use crate::error::{code, BoxError, RpcError};
use crate::frame::{Frame, Meta, MAX_ID};
use crate::jsonrpc::{Framing, Session};
use crate::peer::{HttpPeer, Identity, PeerInfo};
use crate::request::{Deadline, Origin, Request};
use crate::response::Response;

/// The header that makes a call a notification: `X-Diarrhoea-Notify: 1`.
pub const NOTIFY_HEADER: &str = "x-diarrhoea-notify";

/// The header that sets a call's deadline in milliseconds, as `meta.timeout_ms` does on a
/// socket: `X-Diarrhoea-Timeout-Ms: 500`.
pub const TIMEOUT_HEADER: &str = "x-diarrhoea-timeout-ms";

/// HTTP calls: `POST /{method}` with a JSON array of positional arguments runs a request
/// through `service` and answers with its result.
///
/// Made by [`rest`]; mount it with [`Rest::router`], nested under a prefix.
#[derive(Debug, Clone)]
pub struct Rest<S> {
    service: S,
    config: Config,
}

/// HTTP calls into `service` (a [`Router`](crate::Router), perhaps in layers), cloned per
/// request, so a `ConcurrencyLimit` in it is shared by every HTTP call.
///
/// | request | answer |
/// | --- | --- |
/// | `POST /add` body `[2,3]` | `200`, body `5` (`application/json`) |
/// | the same with `X-Diarrhoea-Notify: 1` | the handler runs as a notification (no id), then `202`, empty body; a failure is answered as a call's |
/// | handler or layer error | the `{code,message,data}` object, status by code (below) |
/// | `Content-Length` over [`Config::max_frame_size`] | `413` (-32003) at once, the body unread |
/// | a body that grows over it | `413` (-32003) once the limit is passed; the rest is never read |
/// | a body that is not JSON | `400` (-32700) |
/// | JSON that is not an array | `400` (-32600) |
/// | `Accept: application/x-ndjson` or `text/event-stream`, to a method that streams ([`StreamReply`](crate::StreamReply)) | `200`, one item per NDJSON line or server-sent event, then the trailer or the error; paced by the HTTP connection |
/// | the same, to a method that does not stream | `200` in that format: no item, its one reply as the trailer |
/// | a method that streams, without such an `Accept` | `400` (-32600) |
///
/// Any `Content-Type` is taken (`curl -d` sends a form type); the body is read as JSON.
///
/// The status by error code, and the headers, are part of
/// [the protocol](crate::protocol#over-websocket-and-http).
///
/// A request's deadline is the earlier of [`Config::request_timeout`] and the
/// `X-Diarrhoea-Timeout-Ms` header; past it the answer is 504 (-32001). Handlers that take
/// the [`Connection`](crate::Connection) fail with -32603 here (there is no connection to
/// call back on); [`PeerInfo`] carries the request's address and extensions
/// ([`HttpPeer`]).
///
/// ```no_run
/// # async fn f() -> std::io::Result<()> {
/// use std::net::SocketAddr;
/// let router = diarrhoea::Router::new().route("add", |a: i64, b: i64| async move { a + b });
/// let app = axum::Router::new().nest("/rpc", diarrhoea::http::rest(router).router());
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
/// // curl -d '[2,3]' http://127.0.0.1:8080/rpc/add   ->   5
/// # }
/// ```
pub fn rest<S>(service: S) -> Rest<S>
where
    S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    Rest {
        service,
        config: Config::default(),
    }
}

impl<S> Rest<S>
where
    S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    /// The limits: [`Config::max_frame_size`] bounds the body, [`Config::request_timeout`]
    /// the time to answer. Other settings are for connections and do not apply.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// An axum router with the one route `POST /{method}`: nest it under a prefix,
    /// `.nest("/rpc", rest(router).router())`.
    pub fn router<St>(self) -> axum::Router<St>
    where
        St: Clone + Send + Sync + 'static,
    {
        let rest = Arc::new(self);
        let jsonrpc = rest.clone();
        axum::Router::new()
            .route(
                "/{method}",
                axum::routing::post(
                    move |Path(method): Path<String>, req: axum::extract::Request| {
                        let rest = rest.clone();
                        async move { rest.call(method, req).await }
                    },
                ),
            )
            .route(
                "/",
                axum::routing::post(move |req: axum::extract::Request| {
                    let rest = jsonrpc.clone();
                    async move { rest.jsonrpc(req).await }
                }),
            )
    }

    /// `POST {prefix}` with a JSON-RPC 2.0 request or batch as the body: 200 with the
    /// response (or the batch's array), 204 when only notifications were sent. Each request
    /// runs as on a connection that speaks JSON-RPC: the same translation, so the same
    /// answers to bad input.
    async fn jsonrpc(&self, req: axum::extract::Request) -> HttpResponse {
        let (parts, body) = req.into_parts();
        let body = match self.read_body(&parts.headers, body).await {
            Ok(body) => body,
            Err(error) => return super::error_response(status_of(error.code), &error),
        };
        let timeout = match header_ms(&parts.headers, TIMEOUT_HEADER) {
            Ok(timeout) => timeout,
            Err(error) => return super::error_response(status_of(error.code), &error),
        };
        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0);
        let peer = PeerInfo::new(Identity::Http(HttpPeer::new(addr, parts.extensions)));
        let session = Session::new(self.config.max_frame_size);
        let mut lines = bytes::BytesMut::new();
        session.incoming(&body, &mut lines);
        let calls = lines[..]
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .filter_map(|line| {
                std::str::from_utf8(line)
                    .ok()
                    .and_then(|l| Frame::parse(l).ok())
            })
            .map(|frame| {
                let peer = peer.clone();
                async move {
                    let id = match &frame {
                        Frame::Request { id, .. } => Some(*id),
                        _ => None,
                    };
                    let result = match &frame {
                        // Stand-ins for bad input (their answer is the session's), and the
                        // protocol's own methods, which HTTP has no use for.
                        Frame::Request { method, .. } | Frame::Notification { method, .. }
                            if method.starts_with("$/") =>
                        {
                            Err(RpcError::method_not_found(method))
                        }
                        _ => self
                            .run(frame, timeout, peer)
                            .await
                            .map(|(response, _)| response),
                    };
                    id.map(|id| Frame::Reply { id, result })
                }
            });
        let mut answers = Vec::new();
        for reply in futures_util::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
        {
            session.outgoing(&reply.to_line(), Framing::Lines, &mut answers);
        }
        if answers.is_empty() {
            return StatusCode::NO_CONTENT.into_response();
        }
        answers.pop();
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            answers,
        )
            .into_response()
    }

    /// The request body, up to [`Config::max_frame_size`] and no further.
    async fn read_body(
        &self,
        headers: &HeaderMap,
        body: axum::body::Body,
    ) -> Result<bytes::Bytes, RpcError> {
        let max = self.config.max_frame_size;
        // Refused before a byte of the body is read.
        if let Some(len) = content_length(headers) {
            if len > max as u64 {
                return Err(too_large(&format!("{len} bytes"), max));
            }
        }
        // Read up to the limit and no further: a body without a length (chunked) that grows
        // past it is cut off there.
        match Limited::new(body, max).collect().await {
            Ok(body) => Ok(body.to_bytes()),
            Err(e) if e.is::<LengthLimitError>() => {
                Err(too_large(&format!("more than {max} bytes"), max))
            }
            Err(e) => Err(RpcError::invalid_frame(format!(
                "the request body could not be read: {e}"
            ))),
        }
    }

    async fn call(&self, method: String, req: axum::extract::Request) -> HttpResponse {
        let streaming = Format::accepted(req.headers());
        let (response, deadline) = match self.try_call(method, req).await {
            Ok((Some(response), deadline)) => (response, deadline),
            Ok((None, _)) => return StatusCode::ACCEPTED.into_response(),
            Err(error) => return super::error_response(status_of(error.code), &error),
        };
        let error = match (response.into_stream(), streaming) {
            (Ok(Some(body)), Some(format)) => return stream_body::response(format, body, deadline),
            (Ok(Some(_)), None) => not_asked(),
            (Ok(None), _) => RpcError::internal("the stream of this reply was run already"),
            (Err(reply), Some(format)) => return stream_body::single(format, reply),
            (Err(reply), None) => {
                return (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    reply.get().to_owned(),
                )
                    .into_response()
            }
        };
        super::error_response(status_of(error.code), &error)
    }

    /// The result of a call (`Some`) or of a notification (`None`) and the deadline of what
    /// is left to do (a stream), or the error to answer.
    async fn try_call(
        &self,
        method: String,
        req: axum::extract::Request,
    ) -> Result<(Option<Response>, Option<tokio::time::Instant>), RpcError> {
        let (parts, body) = req.into_parts();
        if let Some(len) = content_length(&parts.headers) {
            let max = self.config.max_frame_size;
            if len > max as u64 {
                return Err(too_large(&format!("{len} bytes"), max));
            }
        }
        let notify = flag(&parts.headers, NOTIFY_HEADER)?;
        let timeout = header_ms(&parts.headers, TIMEOUT_HEADER)?;
        let body = self.read_body(&parts.headers, body).await?;
        let args = parse_args(&body)?;
        if method.starts_with("$/") {
            // Reserved for the protocol, which HTTP has no use for.
            return Err(RpcError::method_not_found(&method));
        }

        let addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0);
        let peer = PeerInfo::new(Identity::Http(HttpPeer::new(addr, parts.extensions)));
        let frame = if notify {
            Frame::Notification {
                method: method.into(),
                args,
            }
        } else {
            Frame::Request {
                method: method.into(),
                args,
                id: next_id(),
                meta: Meta {
                    timeout_ms: timeout,
                    ..Meta::default()
                },
            }
        };
        let (response, deadline) = self.run(frame, timeout, peer).await?;
        Ok(((!notify).then_some(response), deadline))
    }

    /// Runs one call or notification through the service, within its deadline: the earlier
    /// of [`Config::request_timeout`], `timeout` (the header's) and the frame's
    /// `meta.timeout_ms`. Returns the deadline too, for what is left to do (a stream).
    async fn run(
        &self,
        frame: Frame,
        timeout: Option<u64>,
        peer: PeerInfo,
    ) -> Result<(Response, Option<tokio::time::Instant>), RpcError> {
        let meta_timeout = match &frame {
            Frame::Request { meta, .. } => meta.timeout_ms,
            _ => None,
        };
        let origin: Arc<dyn Origin> = Arc::new(HttpOrigin { peer });
        let mut request = Request::incoming(frame, origin)
            .ok_or_else(|| RpcError::internal("not a call frame"))?;
        let timeout = [
            self.config.request_timeout,
            timeout.map(Duration::from_millis),
            meta_timeout.map(Duration::from_millis),
        ]
        .into_iter()
        .flatten()
        .min();
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        if let Some(deadline) = deadline {
            request.set_deadline(Deadline(deadline));
        }

        let service = self.service.clone();
        let run = async move {
            service
                .oneshot(request)
                .await
                .map_err(|e| RpcError::from_box_error(e.into()))
        };
        // A panicking handler answers -32603, as on a socket, instead of dropping the HTTP
        // connection.
        let run = AssertUnwindSafe(run).catch_unwind();
        let outcome = match deadline {
            None => run.await,
            Some(deadline) => match tokio::time::timeout_at(deadline, run).await {
                Ok(outcome) => outcome,
                Err(_) => Ok(Err(RpcError::new(
                    code::TIMEOUT,
                    "timeout: request deadline passed",
                ))),
            },
        };
        let response = outcome.unwrap_or_else(|panic| Err(panicked(panic)))?;
        Ok((response, deadline))
    }
}

/// Where an HTTP request came from: a peer, and no connection to call back on.
struct HttpOrigin {
    peer: PeerInfo,
}

impl Origin for HttpOrigin {
    fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

/// Ids for HTTP calls, which handlers may read: unique in this process, below 2^53.
fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed) % MAX_ID + 1
}

/// The status an error reply is answered with.
pub fn status_of(error_code: i64) -> StatusCode {
    match error_code {
        code::PARSE_ERROR | code::INVALID_FRAME | code::INVALID_PARAMS => StatusCode::BAD_REQUEST,
        code::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        code::TIMEOUT => StatusCode::GATEWAY_TIMEOUT,
        code::OVERLOADED | code::SHUTTING_DOWN => StatusCode::SERVICE_UNAVAILABLE,
        code::FRAME_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The body as positional arguments: a JSON array, or a 400 error saying what it is instead.
fn parse_args(body: &[u8]) -> Result<Args, RpcError> {
    let raw: Box<RawValue> = serde_json::from_slice(body).map_err(|e| {
        RpcError::new(
            code::PARSE_ERROR,
            format!("parse error: the body is not JSON: {e}"),
        )
    })?;
    Args::from_raw(raw).map_err(|_| {
        RpcError::invalid_frame("the body must be a JSON array of positional arguments")
    })
}

fn too_large(what: &str, max: usize) -> RpcError {
    RpcError::new(
        code::FRAME_TOO_LARGE,
        format!("frame too large: the body has {what}, the maximum is {max}"),
    )
}

fn panicked(panic: Box<dyn Any + Send>) -> RpcError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned());
    RpcError::internal(format!("handler panicked: {what}"))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A yes/no header: absent, `0` or `false` is no; `1` or `true` is yes; anything else is
/// refused rather than guessed.
fn flag(headers: &HeaderMap, name: &str) -> Result<bool, RpcError> {
    let Some(value) = headers.get(name) else {
        return Ok(false);
    };
    match value.to_str().map(str::trim) {
        Ok("1") => Ok(true),
        Ok("0") => Ok(false),
        Ok(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Ok(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(RpcError::invalid_frame(format!(
            "header {name} must be 1 or 0"
        ))),
    }
}

/// A header of whole milliseconds.
fn header_ms(headers: &HeaderMap, name: &str) -> Result<Option<u64>, RpcError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    match value.to_str().ok().and_then(|v| v.trim().parse().ok()) {
        Some(ms) => Ok(Some(ms)),
        None => Err(RpcError::invalid_frame(format!(
            "header {name} must be whole milliseconds"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_must_be_json_arrays() {
        assert_eq!(parse_args(b" [2, 3] ").unwrap().get(), "[2, 3]");
        assert_eq!(parse_args(b"[1,\n2]").unwrap().get(), "[1, 2]");
        assert_eq!(parse_args(b"{}").unwrap_err().code, code::INVALID_FRAME);
        assert_eq!(parse_args(b"5").unwrap_err().code, code::INVALID_FRAME);
        assert_eq!(parse_args(b"nope").unwrap_err().code, code::PARSE_ERROR);
        assert_eq!(parse_args(b"").unwrap_err().code, code::PARSE_ERROR);
        assert_eq!(parse_args(b"[1] [2]").unwrap_err().code, code::PARSE_ERROR);
    }
}
