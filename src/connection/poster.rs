//! [`Poster`]: this side's notifications as a tower service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::Service;

use super::outbox::OutboxPoller;
use super::Shared;
use crate::error::Error;
use crate::request::Request;

/// Outgoing notifications as a [`tower::Service`] (what [`Connection::post_message`] sends,
/// as a service for tower layers): `poll_ready` waits for room in the outgoing queue; the
/// response is `()` once the frame is queued.
///
/// [`Connection::post_message`]: crate::Connection::post_message
#[derive(Clone)]
pub struct Poster {
    shared: Arc<Shared>,
    outgoing: OutboxPoller,
}

impl Poster {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        let outgoing = shared.outgoing.poller();
        Poster { shared, outgoing }
    }
}

impl fmt::Debug for Poster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poster")
            .field("connection", &self.shared.id())
            .finish()
    }
}

impl Service<Request> for Poster {
    type Response = ();
    type Error = Error;
    type Future = std::future::Ready<Result<(), Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.outgoing.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let frame = req.into_notification();
        let result = if self.shared.lifecycle.is_ending() {
            Err(Error::closed())
        } else {
            self.shared.check_size(&frame)
        };
        std::future::ready(match result {
            Ok(()) => self.outgoing.send(|buf| {
                frame.encode(buf);
                Ok(())
            }),
            Err(e) => {
                self.outgoing.abort();
                Err(e)
            }
        })
    }
}
