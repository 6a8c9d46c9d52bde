//! [`CallStream`]: this side's call that answers with a stream of items: the request with
//! `meta.stream`, the items as they come (from the pending table), credit granted as they
//! are taken, the trailer at the end, and `$/cancel` when dropped early.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_core::{FusedStream, Stream};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Serialize;

use super::caller::CallGuard;
use super::connection::Connection;
use super::deadline;
use super::outbox::OutboxPoller;
use super::outgoing_calls::StreamEvent;
use super::Shared;
use crate::args::Args;
use crate::error::{Error, Kind};
use crate::frame::{Frame, Meta, CREDIT_METHOD};
use crate::response::Response;

/// The credit window a [`CallStream`] starts with: items the peer may send ahead of the
/// consumer.
pub(crate) const DEFAULT_WINDOW: u32 = 256;

impl Connection {
    /// Calls `method`, which answers with a stream of items of type `T` (a handler that
    /// returns a [`StreamReply`](crate::StreamReply)), and returns the stream.
    ///
    /// Nothing is sent until the stream is first polled. The peer sends at most the credit
    /// window of items ahead of what is taken ([`CallStream::window`], default 256); credit
    /// is granted again as items are taken, so a slow consumer slows the producer and the
    /// items waiting here stay within the window. The stream ends after the last item;
    /// [`CallStream::trailer`] then holds the call's reply. An error reply ends it with one
    /// `Err` (an [`Error::is_remote`]); a connection that closes first, with an
    /// [`Error::is_closed`]. Dropped before its end, it sends the peer `$/cancel`, which
    /// stops the producer.
    ///
    /// A method that does not stream answers with its one reply: no items, and the reply
    /// as the trailer.
    ///
    /// ```no_run
    /// # async fn f(conn: diarrhoea::Connection) -> Result<(), diarrhoea::Error> {
    /// use std::future::poll_fn;
    /// use std::pin::Pin;
    ///
    /// use futures_core::Stream;
    ///
    /// let mut items = conn.call_stream::<u64>("count", (1000,)).window(64);
    /// while let Some(item) = poll_fn(|cx| Pin::new(&mut items).poll_next(cx)).await {
    ///     let n = item?;
    /// #   let _ = n;
    /// }
    /// let total: u64 = items.trailer_as().expect("the stream ended")?;
    /// # let _ = total;
    /// # Ok(()) }
    /// ```
    pub fn call_stream<T: DeserializeOwned>(
        &self,
        method: &str,
        args: impl Serialize,
    ) -> CallStream<T> {
        let target = Target::Connection(self.shared.clone(), self.shared.outgoing.poller());
        CallStream::new(target, method, Args::new(&args))
    }
}

/// The items of a stream call, from [`Connection::call_stream`] or
/// [`Pool::call_stream`](crate::pool::Pool::call_stream): a
/// [`Stream`] of `Result<T, Error>`.
///
/// Items come in order; an item that does not deserialize into `T` is an `Err` of its own
/// ([`Error::is_serde`]) and the stream goes on. Made while serving a request with a
/// deadline, the stream inherits what is left of it, as a call does.
#[must_use = "a CallStream sends nothing until it is polled"]
pub struct CallStream<T> {
    state: State,
    /// Items the peer may send ahead of the consumer.
    window: u64,
    timeout: Option<Duration>,
    /// Credit granted so far, less the items taken: what the peer may still send, plus what
    /// waits here to be taken.
    outstanding: u64,
    trailer: Option<Response>,
    _items: PhantomData<fn() -> T>,
}

enum State {
    /// Sent on the first poll. Boxed: it is left behind at once.
    Unsent(Box<Unsent>),
    Open {
        /// Sends `$/cancel` if the stream is dropped before its end.
        guard: CallGuard,
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    Done,
}

struct Unsent {
    target: Target,
    method: Box<str>,
    args: Result<Args, Error>,
}

/// Where the call goes.
pub(crate) enum Target {
    /// This connection, and a place in its outgoing queue.
    Connection(Arc<Shared>, OutboxPoller),
    /// The connection this future picks (a pool's worker).
    Pick(Pin<Box<dyn Future<Output = Result<Connection, Error>> + Send>>),
}

impl<T> CallStream<T> {
    fn new(target: Target, method: &str, args: Result<Args, Error>) -> Self {
        CallStream {
            state: State::Unsent(Box::new(Unsent {
                target,
                method: method.into(),
                args,
            })),
            window: u64::from(DEFAULT_WINDOW),
            timeout: None,
            outstanding: 0,
            trailer: None,
            _items: PhantomData,
        }
    }

    /// A stream that fails with `error` at its first poll, sending nothing.
    #[cfg(feature = "macros")]
    pub(crate) fn failed(error: Error) -> Self {
        CallStream::on_pick(std::future::ready(Err(error)), "", Ok(Args::empty()))
    }

    /// A stream call on the connection `pick` resolves to.
    pub(crate) fn on_pick<F>(pick: F, method: &str, args: Result<Args, Error>) -> Self
    where
        F: Future<Output = Result<Connection, Error>> + Send + 'static,
    {
        CallStream::new(Target::Pick(Box::pin(pick)), method, args)
    }

    /// Sets the credit window: how many items the peer may send ahead of the consumer
    /// (at least 1; default 256). The initial credit, `meta.stream`, is the window at the
    /// first poll; later, credit is granted again whenever half the window is taken.
    pub fn window(mut self, items: u32) -> Self {
        self.set_window(items);
        self
    }

    /// As [`window`](Self::window), at any time: grants from now on follow the new window.
    pub fn set_window(&mut self, items: u32) {
        self.window = u64::from(items.max(1));
    }

    /// A deadline for the whole stream, sent as `meta.timeout_ms`: when it passes, the
    /// stream ends with [`Error::is_timeout`] (and the peer stops too). Set it before the
    /// first poll.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The call's reply, once the stream has ended without an error: the trailer the
    /// handler set (`null` by default).
    pub fn trailer(&self) -> Option<&Response> {
        self.trailer.as_ref()
    }

    /// [`trailer`](Self::trailer), deserialized.
    pub fn trailer_as<R: DeserializeOwned>(&self) -> Option<Result<R, Error>> {
        self.trailer.as_ref().map(Response::deserialize)
    }

    /// Sends the request once there is room for it.
    fn poll_start(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let State::Unsent(unsent) = &mut self.state else {
            return Poll::Ready(Ok(()));
        };
        if let Target::Pick(pick) = &mut unsent.target {
            let conn = ready!(pick.as_mut().poll(cx))?;
            let poller = conn.shared.outgoing.poller();
            unsent.target = Target::Connection(conn.shared, poller);
        }
        let Target::Connection(shared, poller) = &mut unsent.target else {
            unreachable!("picked above");
        };
        if unsent.args.is_err() {
            let args = std::mem::replace(&mut unsent.args, Ok(Args::empty()));
            return Poll::Ready(args.map(drop));
        }
        if shared.pending.is_closed() || shared.lifecycle.is_ending() {
            return Poll::Ready(Err(Error::closed()));
        }
        ready!(poller.poll_ready(cx))?;
        let timeout = deadline::effective(self.timeout);
        if timeout == Some(Duration::ZERO) {
            poller.abort();
            return Poll::Ready(Err(Error::new(Kind::Timeout)));
        }
        let id = shared.next_call_id();
        if let Err(e) = shared.pending.insert_stream(id, self.window) {
            poller.abort();
            return Poll::Ready(Err(e));
        }
        let args = std::mem::replace(&mut unsent.args, Ok(Args::empty())).unwrap_or_default();
        let frame = Frame::Request {
            method: std::mem::take(&mut unsent.method).into(),
            args,
            id,
            meta: Meta {
                timeout_ms: timeout.map(deadline::to_millis),
                stream: Some(self.window),
            },
        };
        tracing::debug!(connection = shared.id(), id, "diarrhoea: stream call");
        let sent = poller.send(|buf| {
            shared.checked(buf, |buf| {
                frame.encode(buf);
                Ok(())
            })
        });
        if let Err(e) = sent {
            shared.pending.remove(id);
            return Poll::Ready(Err(e));
        }
        self.outstanding = self.window;
        self.state = State::Open {
            guard: CallGuard {
                shared: shared.clone(),
                id,
                armed: true,
            },
            deadline: timeout.map(|t| Box::pin(tokio::time::sleep(t))),
        };
        Poll::Ready(Ok(()))
    }
}

/// Grants the peer more credit once half the window is taken: tells the pending table
/// first (so the items it allows are not taken for an overrun), then the peer.
fn grant(shared: &Shared, id: u64, window: u64, outstanding: &mut u64) {
    if *outstanding > window / 2 {
        return;
    }
    let more = window.saturating_sub(*outstanding);
    if more == 0 {
        return;
    }
    shared.pending.grant(id, more);
    *outstanding += more;
    let credit = Frame::Notification {
        method: CREDIT_METHOD.into(),
        args: Args::new(&(id, more)).expect("two integers serialize"),
    };
    // A control frame: it cannot wait for room, and it is small and paced by the items
    // taken. It fails only once the writer is gone, and then no item can come anyway.
    let _ = shared.outgoing.send_control(credit);
}

impl<T: DeserializeOwned> Stream for CallStream<T> {
    type Item = Result<T, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let State::Unsent(_) = this.state {
            if let Err(e) = ready!(this.poll_start(cx)) {
                this.state = State::Done;
                return Poll::Ready(Some(Err(e)));
            }
        }
        let State::Open { guard, deadline } = &mut this.state else {
            return Poll::Ready(None);
        };
        match guard.shared.pending.poll_stream(guard.id, cx) {
            Poll::Ready(StreamEvent::Item(item)) => {
                this.outstanding = this.outstanding.saturating_sub(1);
                grant(&guard.shared, guard.id, this.window, &mut this.outstanding);
                let item = item
                    .parse::<(IgnoredAny, T)>()
                    .map(|(_, item)| item)
                    .map_err(|e| Error::new(Kind::Decode("stream item")).with_source(e));
                Poll::Ready(Some(item))
            }
            Poll::Ready(StreamEvent::End(end)) => {
                // The entry is gone with its end: nothing left to cancel.
                guard.armed = false;
                this.state = State::Done;
                match end {
                    Ok(trailer) => {
                        this.trailer = Some(trailer.detached());
                        Poll::Ready(None)
                    }
                    Err(e) => Poll::Ready(Some(Err(e))),
                }
            }
            Poll::Pending => match deadline.as_mut().map(|sleep| sleep.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => {
                    // Dropping the guard forgets the stream and cancels it at the peer.
                    this.state = State::Done;
                    Poll::Ready(Some(Err(Error::new(Kind::Timeout))))
                }
                _ => Poll::Pending,
            },
        }
    }
}

impl<T: DeserializeOwned> FusedStream for CallStream<T> {
    fn is_terminated(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

impl<T> fmt::Debug for CallStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Unsent(_) => "unsent",
            State::Open { .. } => "open",
            State::Done => "done",
        };
        f.debug_struct("CallStream")
            .field("state", &state)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}
