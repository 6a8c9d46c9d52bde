//! [`Event`]s: what happened on a connection, for whoever subscribes.

use std::fmt;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::error::Error;

/// Something that happened on a connection: the Rust form of diarrhoea 1.1.0's `error`,
/// `end` and `close` events.
///
/// Every event is also logged with `tracing`, so nothing is lost when nobody subscribes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A frame was dropped (not JSON, too large, malformed), a notification handler failed,
    /// or the socket failed. The connection stays open unless the socket failed.
    Error(Arc<Error>),
    /// Something was ignored that may be a mistake: a notification for an unknown method, a
    /// reply with an unknown id.
    Warning(Arc<Error>),
    /// The peer has finished sending.
    End,
    /// The connection is closed; the last event.
    Close,
    /// This subscriber fell behind and missed this many events.
    Lagged(u64),
}

/// A subscription to a connection's [`Event`]s, from [`Connection::events`](crate::Connection::events).
pub struct Events(pub(super) broadcast::Receiver<Event>);

impl Events {
    /// The next event; `None` once the connection is closed and every event was seen.
    pub async fn recv(&mut self) -> Option<Event> {
        match self.0.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Event::Lagged(n)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}
