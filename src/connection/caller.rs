//! [`Caller`]: this side's calls as a tower service; the future of one call's reply; and how a
//! call is registered and forgotten (the id, the `$/cancel` a dropped call sends).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::Service;

use super::outbox::OutboxPoller;
use super::{deadline, Shared, CANCEL_METHOD};
use crate::args::Args;
use crate::error::{Error, Kind};
use crate::frame::Frame;
use crate::request::Request;
use crate::response::Response;

impl Shared {
    /// Registers a call: its id, and the future of its reply. The caller then queues the
    /// frame (registered first, so the reply cannot come before it), or gives the future up
    /// with [`ResponseFuture::unsent`].
    ///
    /// A call with a timeout fails locally with a timeout error when it passes (and the peer,
    /// told the same deadline as `meta.timeout_ms`, gives up too). A timeout that has passed
    /// already fails at once, before anything is sent.
    pub(super) fn start_call(
        self: &Arc<Self>,
        timeout: Option<Duration>,
    ) -> Result<(u64, ResponseFuture), Error> {
        if self.lifecycle.is_ending() {
            return Err(Error::closed());
        }
        if timeout == Some(Duration::ZERO) {
            return Err(Error::new(Kind::Timeout));
        }
        let id = self.next_call_id();
        self.pending.insert(id)?;
        // Inside an outgoing trace span, this ties the span to the call's id.
        tracing::debug!(connection = self.id(), id, "diarrhoea: call");
        let guard = CallGuard {
            shared: self.clone(),
            id,
            armed: true,
        };
        let deadline = timeout.map(|t| Box::pin(tokio::time::sleep(t)));
        let reply = ResponseFuture {
            state: State::Waiting { guard, deadline },
        };
        Ok((id, reply))
    }

    /// [`Shared::start_call`] for a [`Request`], whose `meta.timeout_ms` is the explicit
    /// timeout; an inherited deadline may shorten it.
    fn start_request(self: &Arc<Self>, mut req: Request) -> Result<(Frame, ResponseFuture), Error> {
        let explicit = req.meta().timeout_ms.map(Duration::from_millis);
        let timeout = deadline::effective(explicit);
        req.meta_mut().timeout_ms = timeout.map(deadline::to_millis);
        let (id, reply) = self.start_call(timeout)?;
        Ok((req.into_call(id), reply))
    }
}

/// Forgets a call whose future is dropped (or timed out) before its reply came, and tells the
/// peer with `["$/cancel",[id]]` so it can stop working on it. A reply that came but was not
/// taken goes with its entry, and nothing is sent: the peer is done with the call.
pub(super) struct CallGuard {
    pub(super) shared: Arc<Shared>,
    pub(super) id: u64,
    /// Cleared once nothing is left to forget (the reply was taken, or never asked for).
    pub(super) armed: bool,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if !self.armed || !self.shared.pending.forget(self.id) || self.shared.lifecycle.is_ending()
        {
            return;
        }
        self.shared.cancel_call(self.id);
    }
}

impl Shared {
    /// Tells the peer this side gave up on its call `id`: `["$/cancel",[id]]`.
    pub(super) fn cancel_call(&self, id: u64) {
        let cancel = Frame::Notification {
            method: CANCEL_METHOD.into(),
            args: Args::new(&(id,)).expect("an id serializes"),
        };
        // Not charged, so never refused for room: Drop cannot wait. It fails only once the
        // writer is gone, and then there is no peer to tell.
        let _ = self.outgoing.send_control(cancel);
    }
}

/// Outgoing calls as a [`tower::Service`]: `poll_ready` waits for room in the outgoing queue.
///
/// ```no_run
/// use std::time::Duration;
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # async fn f(conn: diarrhoea::Connection) -> Result<(), tower::BoxError> {
/// let mut calls = ServiceBuilder::new()
///     .timeout(Duration::from_secs(1))
///     .concurrency_limit(64)
///     .service(conn.caller());
/// let reply = calls.ready().await?.call(diarrhoea::Request::new("echo", (1, 2))?).await?;
/// let (a, b): (i32, i32) = reply.deserialize()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Caller {
    shared: Arc<Shared>,
    outgoing: OutboxPoller,
}

impl Caller {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        let outgoing = shared.outgoing.poller();
        Caller { shared, outgoing }
    }
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("connection", &self.shared.id())
            .finish()
    }
}

impl Service<Request> for Caller {
    type Response = Response;
    type Error = Error;
    type Future = ResponseFuture;

    /// Fails with [`Error::is_closed`] as soon as no reply can come (the peer's side ended or
    /// this side is ending), so a balancer drops a dead peer before it sends to it.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.shared.pending.is_closed() || self.shared.lifecycle.is_ending() {
            self.outgoing.abort();
            return Poll::Ready(Err(Error::closed()));
        }
        self.outgoing.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> ResponseFuture {
        let (frame, reply) = match self.shared.start_request(req) {
            Ok(started) => started,
            Err(e) => {
                self.outgoing.abort();
                return ResponseFuture::failed(e);
            }
        };
        let shared = &self.shared;
        let sent = self.outgoing.send(|buf| {
            shared.checked(buf, |buf| {
                frame.encode(buf);
                Ok(())
            })
        });
        match sent {
            Ok(()) => reply,
            Err(e) => {
                reply.unsent();
                ResponseFuture::failed(e)
            }
        }
    }
}

/// The reply to one outgoing call. Dropping it before the reply comes forgets the call (and
/// sends the peer `$/cancel`).
pub struct ResponseFuture {
    state: State,
}

enum State {
    Waiting {
        /// Holds the call's id, whose entry in the pending table is the call's slot.
        guard: CallGuard,
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    Failed(Option<Error>),
}

impl ResponseFuture {
    pub(super) fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Failed(Some(error)),
        }
    }

    /// Gives up a call whose frame was never queued: it is forgotten, with nothing to cancel
    /// at the peer.
    pub(super) fn unsent(mut self) {
        if let State::Waiting { guard, .. } = &mut self.state {
            guard.armed = false;
            guard.shared.pending.remove(guard.id);
        }
    }
}

impl ResponseFuture {
    /// The reply as it arrived, possibly still in the read buffer: for a caller that reads it
    /// at once and drops it (`Connection::call`), so it costs no copy.
    pub(super) fn poll_wire(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response, Error>> {
        match &mut self.state {
            State::Waiting { guard, deadline } => {
                if let Poll::Ready(result) = guard.shared.pending.poll_reply(guard.id, cx) {
                    // Taking the reply removed the entry: nothing left to forget.
                    guard.armed = false;
                    return Poll::Ready(result);
                }
                // On timeout the guard stays armed: it forgets the call and cancels it at the peer.
                match deadline.as_mut().map(|sleep| sleep.as_mut().poll(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(Err(Error::new(Kind::Timeout))),
                    _ => Poll::Pending,
                }
            }
            State::Failed(error) => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response, Error>;

    /// The reply is handed out whole, and may be kept: it is copied out of the read buffer.
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_wire(cx)
            .map(|reply| reply.map(Response::detached))
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
