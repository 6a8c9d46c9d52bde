//! The crate's own tower middleware, for both sides of a connection.
//!
//! | layer | what it does | where it goes |
//! | --- | --- | --- |
//! | [`TraceLayer`] | one `tracing` span per request: connection, direction, method, id, latency, outcome | outermost, so it sees every outcome |
//! | [`NameOverloadLayer`] | a `LoadShed` rejection becomes -32002 naming the limit | right outside the `LoadShed` it names |
//! | [`AllowPeersLayer`] | only listed uids/gids; others are refused and disconnected | outside the limits, so refused peers use none of them |
//!
//! Everything else comes from tower as it is: `Timeout`, `ConcurrencyLimit`,
//! `GlobalConcurrencyLimit`, `LoadShed`, `RateLimit`, `Retry`, `Buffer`. The stack a
//! connection serves with is any tower service over [`Request`](crate::Request) (a
//! [`Router`](crate::Router) is one), and its outgoing calls are one too
//! ([`Connection::caller`](crate::Connection::caller)), so both are wrapped with
//! `ServiceBuilder`. Errors from layers become error replies: -32001 for a passed deadline,
//! -32002 for a shed request, -32603 for anything without a code of its own.
//!
//! Each layer is in four parts, like tower's: the layer (configuration), the service, a named
//! future, and the error it produces (an [`RpcError`](crate::RpcError), boxed).
//!
//! # Order
//!
//! Layers run outermost first. The recommended server stack, built per connection by the
//! factory given to [`serve`](crate::serve), so that per-connection limits are per connection
//! (`cargo run --example middleware` runs it on both sides and shows what each limit does):
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use diarrhoea::layer::{AllowPeersLayer, NameOverloadLayer, TraceLayer};
//! use tower::limit::GlobalConcurrencyLimitLayer;
//! use tower::ServiceBuilder;
//!
//! # async fn f(router: diarrhoea::Router) -> Result<(), Box<dyn std::error::Error>> {
//! let allow = AllowPeersLayer::same_user()?;
//! // One semaphore for the whole server: the layer is built once and cloned per connection.
//! let global = GlobalConcurrencyLimitLayer::new(1024);
//! let listener = diarrhoea::UnixListener::bind("./app.sock")?;
//! diarrhoea::serve(listener, move |_conn: &diarrhoea::Connection| {
//!     ServiceBuilder::new()
//!         .layer(TraceLayer::incoming()) // 1. sees every outcome
//!         .layer(allow.clone()) // 2. refused peers take no permit
//!         .layer(NameOverloadLayer::new("per-connection concurrency limit (64)"))
//!         .load_shed() // 3. right outside the limit it sheds for
//!         .concurrency_limit(64)
//!         .layer(NameOverloadLayer::new("server-wide concurrency limit (1024)"))
//!         .load_shed()
//!         .layer(global.clone())
//!         .service(router.clone())
//! })
//! // The deadline: enforced by the dispatcher around permit, readiness and call.
//! .config(diarrhoea::Config::new().request_timeout(Duration::from_secs(5)))
//! .with_graceful_shutdown(diarrhoea::shutdown_signal())
//! .await?;
//! # Ok(()) }
//! ```
//!
//! Why this order:
//! - **[`TraceLayer`] outermost**, so it sees every outcome: refusals, shed requests, handler
//!   errors. Requests that the dispatcher gives up on (deadline passed, `$/cancel`, connection
//!   closed) drop the stack's future; the span then records `dropped`.
//! - **The deadline is not a tower `Timeout`.** tower's `Timeout` starts its timer in `call`,
//!   so time spent waiting in `poll_ready` for a concurrency permit or a rate-limit slot does
//!   not count (tower-rs/tower#648). Use [`Config::request_timeout`](crate::Config::request_timeout)
//!   (and the peer's `meta.timeout_ms`): the dispatcher enforces the earlier of the two around
//!   waiting for the per-connection permit, `poll_ready` and `call`, and answers -32001. A
//!   tower `Timeout` inside the limits, around the router, can still bound handler time alone.
//! - **[`AllowPeersLayer`] before the limits**, so a refused peer uses up no permit and no
//!   rate.
//! - **`LoadShed` right outside the limit it sheds for**, with a [`NameOverloadLayer`] right
//!   outside it: `LoadShed` rejects when the service *directly below* it is not ready; any
//!   layer in between that is always ready, or waits on its own (a `Buffer`), hides the limit
//!   from it. Without `LoadShed` a limit makes callers wait, which is backpressure: the
//!   dispatcher stops, the inbound buffer fills, and the reader stops reading from the socket.
//! - **`ConcurrencyLimit` holds its permit from `poll_ready` until the response future
//!   completes.** The dispatcher readies the stack only for the request it is about to call,
//!   so no permit sits idle; but a handler that awaits a nested call to the peer keeps its
//!   permit while it waits, so a chain of calls back and forth needs a limit at least as deep
//!   as the chain's share on each side, or shedding.
//! - A `ConcurrencyLimit` in a stack given to [`serve`](crate::serve) as a plain service is
//!   shared by every connection (clones share its semaphore): build the stack in the factory
//!   for a per-connection limit, and share one `GlobalConcurrencyLimitLayer` for a
//!   server-wide one.
//! - tower's `RateLimit` is not `Clone`: put a `Buffer` right outside it (per connection);
//!   requests over the rate then wait (backpressure). A `LoadShed` outside that `Buffer` sheds
//!   whenever the buffer is full, which also happens for a moment while its worker task
//!   catches up: give the buffer at least as much room as the concurrency limit above it.
//!
//! On the calling side, around [`Connection::caller`](crate::Connection::caller) (and
//! [`Connection::poster`](crate::Connection::poster) for notifications):
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use diarrhoea::layer::TraceLayer;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # async fn f(conn: diarrhoea::Connection) -> Result<(), tower::BoxError> {
//! let mut calls = ServiceBuilder::new()
//!     .layer(TraceLayer::outgoing().connection_id(conn.id()))
//!     .timeout(Duration::from_secs(2)) // counts the wait below: it happens inside `call`
//!     .buffer(1024) // Clone, and moves waiting for the limits out of `poll_ready`
//!     .concurrency_limit(64) // at most 64 of these calls waiting for a reply
//!     .service(conn.caller());
//! let reply = calls.ready().await?.call(diarrhoea::Request::new("add", (2, 3))?).await?;
//! let sum: i64 = reply.deserialize()?;
//! # let _ = sum;
//! # Ok(()) }
//! ```
//!
//! Here the `Buffer` is what makes the `Timeout` count the time spent waiting for a permit:
//! the buffer's worker waits for the limit, after the `Timeout`'s `call` has started its
//! timer. A `Retry` (idempotent methods only) goes between `Timeout` and `Buffer`, so the
//! deadline covers every attempt. A [`Request`](crate::Request) whose `meta.timeout_ms` is
//! set also tells the peer the deadline, and the [`Caller`](crate::Caller) fails it locally
//! when it passes.

pub mod allow_peers;
pub mod overload;
pub mod trace;

pub use allow_peers::{
    current_uid, AllowPeers, AllowPeersFuture, AllowPeersLayer, PEER_NOT_ALLOWED,
};
pub use overload::{overloaded, NameOverload, NameOverloadFuture, NameOverloadLayer};
pub use trace::{Direction, Trace, TraceFuture, TraceLayer, DEFAULT_PAYLOAD_CHARS};

/// A `tracing` subscriber that records spans and events, for the layers' tests.
#[cfg(test)]
pub(crate) mod test_subscriber {
    use std::fmt;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    /// A span or event: its name and fields, in the order recorded.
    #[derive(Debug, Clone)]
    pub(crate) struct Recorded {
        pub(crate) name: &'static str,
        fields: Vec<(&'static str, String)>,
    }

    impl Recorded {
        /// The field's last recorded value.
        pub(crate) fn field(&self, name: &str) -> Option<&str> {
            self.fields
                .iter()
                .rev()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    struct Fields<'a>(&'a mut Vec<(&'static str, String)>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            self.0.push((field.name(), format!("{value:?}")));
        }

        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.push((field.name(), value.to_owned()));
        }
    }

    #[derive(Default)]
    struct Log {
        spans: Vec<Recorded>,
        events: Vec<Recorded>,
    }

    /// Records everything; clone it to read what was recorded.
    #[derive(Clone, Default)]
    pub(crate) struct Recorder(Arc<Mutex<Log>>);

    impl Recorder {
        pub(crate) fn spans(&self) -> Vec<Recorded> {
            self.0.lock().unwrap().spans.clone()
        }

        pub(crate) fn events(&self) -> Vec<Recorded> {
            self.0.lock().unwrap().events.clone()
        }

        /// Every recorded value, to check that something was never recorded.
        pub(crate) fn everything(&self) -> String {
            let log = self.0.lock().unwrap();
            format!("{:?} {:?}", log.spans, log.events)
        }
    }

    impl Subscriber for Recorder {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }

        fn new_span(&self, span: &Attributes<'_>) -> Id {
            let mut fields = Vec::new();
            span.record(&mut Fields(&mut fields));
            let mut log = self.0.lock().unwrap();
            log.spans.push(Recorded {
                name: span.metadata().name(),
                fields,
            });
            Id::from_u64(log.spans.len() as u64)
        }

        fn record(&self, span: &Id, values: &Record<'_>) {
            let mut log = self.0.lock().unwrap();
            let index = span.into_u64() as usize - 1;
            values.record(&mut Fields(&mut log.spans[index].fields));
        }

        fn record_follows_from(&self, _: &Id, _: &Id) {}

        fn event(&self, event: &Event<'_>) {
            let mut fields = Vec::new();
            event.record(&mut Fields(&mut fields));
            self.0.lock().unwrap().events.push(Recorded {
                name: event.metadata().name(),
                fields,
            });
        }

        fn enter(&self, _: &Id) {}

        fn exit(&self, _: &Id) {}
    }
}
