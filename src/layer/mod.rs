//! The crate's own tower middleware, for both sides of a connection.
//!
//! | layer | what it does | where it goes |
//! | --- | --- | --- |
//! | [`TraceLayer`] | one `tracing` span per request: connection, direction, method, id, latency, outcome | outermost, so it sees every outcome |
//! | [`NameOverloadLayer`] | a `LoadShed` rejection becomes -32002 naming the limit | right outside the `LoadShed` it names |
//! | [`AllowPeersLayer`] | only listed uids/gids; others are refused and disconnected | outside the limits, so refused peers use none of them |
//!
//! Everything else comes from tower as it is: `Timeout`, `ConcurrencyLimit`,
//! `GlobalConcurrencyLimit`, `LoadShed`, `RateLimit`, `Retry`, `Buffer`. The crate docs'
//! [Order](crate#order) section tells which goes where, and why.
//!
//! Each layer is in four parts, like tower's: the layer (configuration), the service, a named
//! future, and the error it produces (an [`RpcError`](crate::RpcError), boxed).

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
