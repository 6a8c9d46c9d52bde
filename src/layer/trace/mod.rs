//! [`Trace`]: one `tracing` span per request, with its latency and outcome.
//!
//! In four parts, like tower's own middleware: [`TraceLayer`] (the configuration, applied with
//! `ServiceBuilder::layer`), [`Trace`] (the service), [`TraceFuture`] (the named future that
//! records the outcome) and [`Direction`].
//!
//! Each request gets a span named `diarrhoea.request` with the fields
//!
//! | field | value |
//! | --- | --- |
//! | `connection` | the connection id ([`PeerInfo`](crate::PeerInfo), or the request's [`Connection`](crate::Connection), or the id given with [`TraceLayer::connection_id`]) |
//! | `direction` | `incoming` (a peer's request, around a server stack) or `outgoing` (around [`Connection::caller`](crate::Connection::caller) or [`Connection::poster`](crate::Connection::poster)) |
//! | `method` | the method name (truncated to 128 characters) |
//! | `id` | the request id when it is known (incoming calls; an outgoing call gets its id only inside [`Caller`](crate::Caller)) |
//! | `latency_us` | microseconds from `call` to the response |
//! | `outcome` | `ok`, `error`, or `dropped` (the future was dropped unfinished: the deadline passed, the peer sent `$/cancel`, or the connection closed) |
//! | `code` | the error code, when the error maps to one |
//!
//! and, when the future completes, one event `diarrhoea: request finished` inside that span
//! with `latency_us`, `outcome` and `code`.
//!
//! Arguments, results and error messages are **not** recorded by default: they may hold
//! secrets (serde's messages for arguments that do not fit quote the argument). With
//! [`TraceLayer::show_payloads`] they are recorded as fields `args`, `result` and `error`,
//! truncated on a character boundary. Truncation works on the raw JSON text and never walks
//! the JSON, so deeply nested input costs no stack.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};
use tracing::field::Empty;
use tracing::{Level, Span};

use crate::error::{code, code_of, truncate, BoxError, Error, RpcError};
#[cfg(test)]
use crate::peer::PeerInfo;
use crate::request::Request;
use crate::response::Response;

/// The payload length shown by [`TraceLayer::show_payloads`] unless told otherwise.
pub const DEFAULT_PAYLOAD_CHARS: usize = 256;

/// Method names longer than this are cut in spans: a method name comes from the peer.
const METHOD_CHARS: usize = 128;

/// Which way a traced request travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A request from the peer, handled here (around a server or client's bound stack).
    Incoming,
    /// A request to the peer (around [`Connection::caller`](crate::Connection::caller) or [`Connection::poster`](crate::Connection::poster)).
    Outgoing,
}

impl Direction {
    /// `"incoming"` or `"outgoing"`, as recorded in spans.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Incoming => "incoming",
            Direction::Outgoing => "outgoing",
        }
    }
}

/// Traces every request with a span; see the [module docs](self).
///
/// ```
/// use diarrhoea::layer::TraceLayer;
/// use tower::ServiceBuilder;
///
/// // Around the handlers: incoming requests, no payloads.
/// let server_stack = ServiceBuilder::new()
///     .layer(TraceLayer::incoming())
///     .service(diarrhoea::Router::new());
/// // Debugging: show arguments and results, cut at 64 characters.
/// let verbose = TraceLayer::incoming().show_payloads(64);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TraceLayer {
    direction: Direction,
    /// The level of spans and of the completion event.
    level: Level,
    /// `Some(max_chars)` when arguments, results and error messages are recorded.
    payloads: Option<usize>,
    /// For outgoing requests, which carry no connection of their own.
    connection_id: Option<u64>,
}

impl TraceLayer {
    /// Traces requests travelling in `direction`, at `DEBUG` level, without payloads.
    pub const fn new(direction: Direction) -> Self {
        TraceLayer {
            direction,
            level: Level::DEBUG,
            payloads: None,
            connection_id: None,
        }
    }

    /// Traces a peer's requests: put it outermost around the service a connection serves.
    pub const fn incoming() -> Self {
        Self::new(Direction::Incoming)
    }

    /// Traces this side's requests: put it outermost around [`Connection::caller`](crate::Connection::caller) or
    /// [`Connection::poster`](crate::Connection::poster), with [`connection_id`](Self::connection_id) set.
    pub const fn outgoing() -> Self {
        Self::new(Direction::Outgoing)
    }

    /// The connection id to record when the request does not say (outgoing requests).
    pub const fn connection_id(mut self, id: u64) -> Self {
        self.connection_id = Some(id);
        self
    }

    /// The level of spans and events (default `DEBUG`).
    pub const fn level(mut self, level: Level) -> Self {
        self.level = level;
        self
    }

    /// Opt-in: records arguments, results and error messages, each cut to `max_chars`
    /// characters (see [`DEFAULT_PAYLOAD_CHARS`]). They may hold secrets.
    pub const fn show_payloads(mut self, max_chars: usize) -> Self {
        self.payloads = Some(max_chars);
        self
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Trace<S> {
        Trace {
            inner,
            config: *self,
        }
    }
}

/// The service of [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
    config: TraceLayer,
}

impl<S> Trace<S> {
    /// Wraps `inner`, tracing as `layer` says.
    pub const fn new(inner: S, layer: TraceLayer) -> Self {
        Trace {
            inner,
            config: layer,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Creates a span at a level only known at run time (callsites need a constant level).
macro_rules! span_at {
    ($level:expr, $($rest:tt)*) => {
        match $level {
            Level::ERROR => tracing::span!(Level::ERROR, $($rest)*),
            Level::WARN => tracing::span!(Level::WARN, $($rest)*),
            Level::INFO => tracing::span!(Level::INFO, $($rest)*),
            Level::DEBUG => tracing::span!(Level::DEBUG, $($rest)*),
            _ => tracing::span!(Level::TRACE, $($rest)*),
        }
    };
}

macro_rules! event_at {
    ($level:expr, $($rest:tt)*) => {
        match $level {
            Level::ERROR => tracing::event!(Level::ERROR, $($rest)*),
            Level::WARN => tracing::event!(Level::WARN, $($rest)*),
            Level::INFO => tracing::event!(Level::INFO, $($rest)*),
            Level::DEBUG => tracing::event!(Level::DEBUG, $($rest)*),
            _ => tracing::event!(Level::TRACE, $($rest)*),
        }
    };
}

impl<S> Service<Request> for Trace<S>
where
    S: Service<Request>,
    S::Response: 'static,
    S::Error: fmt::Display + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> TraceFuture<S::Future> {
        let config = self.config;
        let method = truncate(req.method(), METHOD_CHARS);
        let span = span_at!(
            config.level,
            "diarrhoea.request",
            connection = Empty,
            direction = config.direction.as_str(),
            method = &*method,
            id = Empty,
            args = Empty,
            latency_us = Empty,
            outcome = Empty,
            code = Empty,
        );
        if !span.is_disabled() {
            let connection = req
                .peer()
                .map(|peer| peer.connection_id)
                .or_else(|| req.connection().map(|conn| conn.id()))
                .or(config.connection_id);
            if let Some(connection) = connection {
                span.record("connection", connection);
            }
            if let Some(id) = req.id() {
                span.record("id", id);
            }
            if let Some(max) = config.payloads {
                span.record("args", &*truncate(req.args().get(), max));
            }
        }
        let inner = span.in_scope(|| self.inner.call(req));
        TraceFuture {
            inner,
            span,
            start: Instant::now(),
            level: config.level,
            payloads: config.payloads,
            done: false,
        }
    }
}

pin_project! {
    /// The future of [`Trace`]: polls the inner future inside the request's span and records
    /// the outcome when it completes. Dropping it (a cancelled request) records nothing more.
    pub struct TraceFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        start: Instant,
        level: Level,
        payloads: Option<usize>,
        // Set once the outcome is recorded; a future dropped before that records `dropped`.
        done: bool,
    }

    impl<F> PinnedDrop for TraceFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.done || this.span.is_disabled() {
                return;
            }
            // Dropped unfinished: the deadline passed, the peer cancelled, or the connection
            // closed (the dispatcher enforces those outside the whole stack).
            let latency_us = micros(this.start.elapsed());
            this.span.record("latency_us", latency_us);
            this.span.record("outcome", "dropped");
            let _entered = this.span.enter();
            event_at!(*this.level, latency_us, outcome = "dropped", "diarrhoea: request dropped unfinished");
        }
    }
}

fn micros(elapsed: std::time::Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

impl<F, T, E> Future for TraceFuture<F>
where
    F: Future<Output = Result<T, E>>,
    T: 'static,
    E: fmt::Display + 'static,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = ready!(this.inner.poll(cx));
        *this.done = true;
        if this.span.is_disabled() {
            return Poll::Ready(result);
        }
        let latency_us = micros(this.start.elapsed());
        this.span.record("latency_us", latency_us);
        match &result {
            Ok(response) => {
                this.span.record("outcome", "ok");
                match this.payloads {
                    Some(max) => {
                        let shown = show_response(response, *max);
                        event_at!(*this.level, latency_us, outcome = "ok", result = %shown, "diarrhoea: request finished");
                    }
                    None => {
                        event_at!(
                            *this.level,
                            latency_us,
                            outcome = "ok",
                            "diarrhoea: request finished"
                        );
                    }
                }
            }
            Err(error) => {
                this.span.record("outcome", "error");
                let code = error_code(error);
                if let Some(code) = code {
                    this.span.record("code", code);
                }
                match this.payloads {
                    Some(max) => {
                        let message = error.to_string();
                        let shown = truncate(&message, *max);
                        event_at!(*this.level, latency_us, outcome = "error", code, error = %shown, "diarrhoea: request finished");
                    }
                    None => {
                        event_at!(
                            *this.level,
                            latency_us,
                            outcome = "error",
                            code,
                            "diarrhoea: request finished"
                        );
                    }
                }
            }
        }
        Poll::Ready(result)
    }
}

impl<F> fmt::Debug for TraceFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceFuture")
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}

/// The result's JSON text when the response is a [`Response`]; `()` for notifications.
fn show_response(response: &dyn Any, max: usize) -> Cow<'_, str> {
    match response.downcast_ref::<Response>() {
        Some(response) => truncate(response.get(), max),
        None => Cow::Borrowed("()"),
    }
}

/// The protocol code an error stands for: what the peer sees (incoming) or was told
/// (outgoing). `None` for failures without one, such as a closed connection.
fn error_code(error: &dyn Any) -> Option<i64> {
    if let Some(error) = error.downcast_ref::<BoxError>() {
        return code_of(&**error).or(Some(code::INTERNAL_ERROR));
    }
    if let Some(error) = error.downcast_ref::<RpcError>() {
        return Some(error.code);
    }
    if let Some(error) = error.downcast_ref::<Error>() {
        return error.code();
    }
    None
}

#[cfg(test)]
mod tests;
