//! The dispatcher: runs incoming calls through the bound service.
//!
//! - **Notifications** run one at a time, in wire order among themselves: each completes
//!   before the next notification starts. Most complete at once; one that waits (say, for a
//!   call to the peer, or for room in the outgoing queue) stays in the notification lane,
//!   polled by this loop alongside everything else, and the notifications after it queue
//!   there behind it.
//! - **Requests** are dispatched in wire order and run concurrently, up to
//!   `max_concurrent_requests`: each is polled once here, answered at once if it is ready
//!   (most are), and otherwise finishes in a task of its own. A request is never held behind
//!   a running notification, so a notification handler that calls the peer, which calls back
//!   before answering, completes.
//!
//! Errors from the service become error replies (requests) or error events (notifications)
//! here, in one place. A request's future runs with its deadline in scope, so calls it makes
//! inherit the deadline.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tower::Service;

use super::budget::{Budget, Share};
use super::deadline::Serving;
use super::inbound_queue::{self, Empty};
use super::streaming::{self, Answer};
use super::{BoundService, Shared};
use crate::error::{code, truncate, BoxError, Error, RpcError};
use crate::frame::Frame;
use crate::request::Request;
use crate::response::Response;

pub(super) async fn run(
    mut inbound: inbound_queue::Receiver,
    mut binding: watch::Receiver<BoundService>,
    shared: Arc<Shared>,
) {
    let mut service = binding.borrow_and_update().clone();
    let limit = Budget::new(shared.config.max_concurrent_requests);
    // Requests still running after their first poll; dropping the set aborts them.
    let mut tasks = JoinSet::new();
    let mut lane = Lane::default();
    // One registration for the life of the loop, rather than one per frame.
    let abort = shared.lifecycle.aborted_owned();
    tokio::pin!(abort);
    'dispatch: loop {
        // Most requests finish inline and the set is empty: no look (it takes a lock).
        while !tasks.is_empty() && tasks.try_join_next().is_some() {}
        if lane.is_busy() {
            // Progress without waiting, so a stream of requests cannot starve the lane.
            let _ = poll_once(|cx| lane.poll_drive(cx, &mut service, &shared)).await;
        }
        // Under load the next call is already queued: take it without building a wait.
        let (req, budget) = match inbound.try_recv() {
            Ok(next) => next,
            Err(Empty::ForGood) => break,
            Err(Empty::Now) => tokio::select! {
                biased;
                _ = &mut abort => return,
                _ = std::future::poll_fn(|cx| lane.poll_drive(cx, &mut service, &shared)),
                    if lane.is_busy() => continue,
                next = inbound.recv() => match next {
                    Some(next) => next,
                    None => break,
                },
            },
        };
        if binding.has_changed().unwrap_or(false) {
            service = binding.borrow_and_update().clone();
        }
        let Some(id) = req.id() else {
            if lane.is_busy() {
                lane.push(req, budget);
            } else {
                let mut next = Some((req, budget));
                std::future::poll_fn(|cx| {
                    let (req, budget) = next.take().expect("polled once");
                    lane.start(cx, req, budget, &mut service, &shared);
                    Poll::Ready(())
                })
                .await;
            }
            continue;
        };
        let deadline = req.deadline().map(|d| d.0);
        // A permit, then readiness: each taken at once when it can be, else waited for.
        let permit = match limit.try_take(1) {
            Some(permit) => permit,
            None => {
                let take = limit.take(1);
                tokio::pin!(take);
                let waited = wait_to_start(
                    |cx| take.as_mut().poll(cx),
                    abort.as_mut(),
                    deadline,
                    &mut lane,
                    &shared,
                );
                match waited.await {
                    Waited::Ready(permit) => permit,
                    Waited::Aborted => return,
                    Waited::Expired => {
                        // Boxed: rare, and kept out of the dispatcher's future.
                        Box::pin(answer_unstarted(&shared, id, timed_out())).await;
                        continue 'dispatch;
                    }
                }
            }
        };
        let ready = match poll_once(|cx| service.poll_ready(cx)).await {
            Poll::Ready(ready) => ready,
            Poll::Pending => {
                let waited = wait_to_start(
                    |cx| service.poll_ready(cx),
                    abort.as_mut(),
                    deadline,
                    &mut lane,
                    &shared,
                );
                match waited.await {
                    Waited::Ready(ready) => ready,
                    Waited::Aborted => return,
                    Waited::Expired => {
                        Box::pin(answer_unstarted(&shared, id, timed_out())).await;
                        continue 'dispatch;
                    }
                }
            }
        };
        // The request keeps its share of the inbound buffer until it is answered, so slow
        // handlers hold the reader back instead of piling up requests and their replies.
        if !shared.in_flight.start(id) {
            // Cancelled while it waited: already answered.
            continue;
        }
        let mut response = match ready {
            Ok(()) => catch_unwind_call(&mut service, req),
            Err(e) => Started::Failed(Some(e)),
        };
        // Most handlers finish at once: answer inline, without a task of their own.
        if let Poll::Ready(outcome) = poll_once(|cx| Pin::new(&mut response).poll(cx)).await {
            let outcome = outcome.map_err(RpcError::from_box_error);
            match Answer::of(&shared, id, outcome) {
                Answer::Reply(result) => {
                    tokio::select! {
                        biased;
                        _ = &mut abort => return,
                        _ = answer(&shared, id, result) => {}
                    }
                }
                Answer::Stream(running) => {
                    // A stream runs in a task of its own; it holds no permit and no share
                    // of the inbound buffer (`Config::max_streams` bounds streams).
                    let task_shared = shared.clone();
                    let task = tasks.spawn(async move {
                        let stream =
                            Serving::new(deadline, streaming::run(&task_shared, id, running));
                        let result = within(deadline, stream).await;
                        answer(&task_shared, id, result).await;
                    });
                    shared.in_flight.set_task(id, task);
                }
            }
            drop((permit, budget));
            continue;
        }
        let task_shared = shared.clone();
        let task = tasks.spawn(async move {
            let mut held = Some((permit, budget));
            let work = async {
                let outcome = response.await.map_err(RpcError::from_box_error);
                match Answer::of(&task_shared, id, outcome) {
                    Answer::Reply(result) => result,
                    Answer::Stream(running) => {
                        held = None;
                        Serving::new(deadline, streaming::run(&task_shared, id, running)).await
                    }
                }
            };
            // The deadline covers a stream too, to its last item.
            let outcome = within(deadline, work).await;
            answer(&task_shared, id, outcome).await;
            drop(held);
        });
        shared.in_flight.set_task(id, task);
    }
    // The inbound side is done: the lane and the requests in flight finish, unless torn down.
    while lane.is_busy() || !tasks.is_empty() {
        tokio::select! {
            biased;
            _ = &mut abort => return,
            _ = std::future::poll_fn(|cx| lane.poll_drive(cx, &mut service, &shared)),
                if lane.is_busy() => {}
            _ = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// Notifications in wire order: the one running, and the ones waiting behind it. Driven by
/// the dispatcher's own loop, so the common case (a handler that finishes at once) costs no
/// task and no channel.
#[derive(Default)]
struct Lane {
    running: Option<Notification>,
    waiting: VecDeque<(Request, Share)>,
}

/// A running notification, its method name for error reports, and its share of the
/// inbound buffer.
struct Notification {
    method: Arc<str>,
    started: Started,
    budget: Share,
}

impl Lane {
    fn is_busy(&self) -> bool {
        self.running.is_some() || !self.waiting.is_empty()
    }

    fn is_running(&self) -> bool {
        self.running.is_some()
    }

    fn push(&mut self, req: Request, budget: Share) {
        self.waiting.push_back((req, budget));
    }

    /// Runs a notification on an idle lane: inline, the common case, when it finishes at
    /// once; otherwise it stays running (or waiting, if the service is not ready).
    fn start(
        &mut self,
        cx: &mut Context<'_>,
        req: Request,
        budget: Share,
        service: &mut BoundService,
        shared: &Shared,
    ) {
        debug_assert!(!self.is_busy());
        let method = req.method_arc().clone();
        let started = match service.poll_ready(cx) {
            Poll::Ready(Ok(())) => catch_unwind_call(service, req),
            Poll::Ready(Err(e)) => Started::Failed(Some(e)),
            Poll::Pending => return self.push(req, budget),
        };
        self.running = Some(Notification {
            method,
            started,
            budget,
        });
        let _ = self.poll_running(cx, shared);
    }

    /// Runs notifications in order until one has to wait (`Pending`) or none is left.
    fn poll_drive(
        &mut self,
        cx: &mut Context<'_>,
        service: &mut BoundService,
        shared: &Shared,
    ) -> Poll<()> {
        loop {
            ready!(self.poll_running(cx, shared));
            let Some((req, budget)) = self.waiting.pop_front() else {
                return Poll::Ready(());
            };
            let method = req.method_arc().clone();
            let started = match service.poll_ready(cx) {
                Poll::Ready(Ok(())) => catch_unwind_call(service, req),
                Poll::Ready(Err(e)) => Started::Failed(Some(e)),
                Poll::Pending => {
                    self.waiting.push_front((req, budget));
                    return Poll::Pending;
                }
            };
            self.running = Some(Notification {
                method,
                started,
                budget,
            });
        }
    }

    /// Polls the running notification, if any; `Ready` once none is running.
    fn poll_running(&mut self, cx: &mut Context<'_>, shared: &Shared) -> Poll<()> {
        if let Some(running) = &mut self.running {
            let outcome = ready!(Pin::new(&mut running.started).poll(cx));
            let done = self.running.take().expect("just polled");
            drop(done.budget);
            if let Err(error) = outcome {
                report_notification_error(shared, &done.method, error);
            }
        }
        Poll::Ready(())
    }
}

/// How a request's wait to start ended.
enum Waited<T> {
    Ready(T),
    /// The connection was torn down.
    Aborted,
    /// The request's deadline passed first: it is answered -32001 without starting.
    Expired,
}

/// The dispatcher's one wait for a request that is yet to start (for a permit, then for the
/// service to be ready), entered once a first try found it not ready. Waiting counts against
/// the request's deadline. A notification running meanwhile is still polled: it may hold
/// what the request waits for (a permit of a concurrency limit in the stack, say); each time
/// it finishes, `poll` is tried again at once.
async fn wait_to_start<T>(
    mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    mut abort: Pin<&mut WaitForCancellationFutureOwned>,
    deadline: Option<Instant>,
    lane: &mut Lane,
    shared: &Shared,
) -> Waited<T> {
    loop {
        tokio::select! {
            biased;
            _ = abort.as_mut() => return Waited::Aborted,
            _ = expiry(deadline) => return Waited::Expired,
            _ = std::future::poll_fn(|cx| lane.poll_running(cx, shared)),
                if lane.is_running() => {}
            ready = std::future::poll_fn(&mut poll) => return Waited::Ready(ready),
        }
        if let Poll::Ready(ready) = poll_once(&mut poll).await {
            return Waited::Ready(ready);
        }
    }
}

/// Polls once with the task's context: `Ready` or `Pending`, never a wait.
async fn poll_once<T>(mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
    std::future::poll_fn(|cx| Poll::Ready(poll(cx))).await
}

/// Replies to a finished request, unless a `$/cancel` has answered it already.
async fn answer(shared: &Shared, id: u64, result: Result<Response, RpcError>) {
    if shared.in_flight.finish(id) {
        send_reply(shared, id, result).await;
    }
}

/// Runs `work` until the deadline, if there is one: past it, -32001.
async fn within(
    deadline: Option<Instant>,
    work: impl Future<Output = Result<Response, RpcError>>,
) -> Result<Response, RpcError> {
    match deadline {
        None => work.await,
        Some(deadline) => tokio::time::timeout_at(deadline, work)
            .await
            .unwrap_or_else(|_| Err(timed_out())),
    }
}

/// Completes at the deadline; never without one.
async fn expiry(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn timed_out() -> RpcError {
    RpcError::new(code::TIMEOUT, "timeout: request deadline passed")
}

/// Answers a request that never started, unless a `$/cancel` answered it first.
async fn answer_unstarted(shared: &Shared, id: u64, error: RpcError) {
    if shared.in_flight.remove_unstarted(id) {
        send_reply(shared, id, Err(error)).await;
    }
}

/// `call` itself may run user code before the future exists (a closure's body, a layer).
fn catch_unwind_call(service: &mut BoundService, req: Request) -> Started {
    let deadline = req.deadline().map(|d| d.0);
    match std::panic::catch_unwind(AssertUnwindSafe(|| service.call(req))) {
        Ok(fut) => Started::Running(Serving::new(deadline, fut)),
        Err(panic) => Started::Failed(Some(panicked(panic))),
    }
}

type ServiceFuture = Serving<super::bound_service::BoundFuture>;

enum Started {
    Running(ServiceFuture),
    Failed(Option<BoxError>),
}

impl Future for Started {
    type Output = Result<Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            Started::Running(fut) => Pin::new(&mut CatchUnwind(fut)).poll(cx),
            Started::Failed(e) => {
                Poll::Ready(Err(e.take().expect("Started polled after completion")))
            }
        }
    }
}

/// A handler that panics answers -32603; the connection and the server carry on.
struct CatchUnwind<F>(F);

impl<F: Future<Output = Result<Response, BoxError>> + Unpin> Future for CatchUnwind<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => Poll::Ready(Err(panicked(panic))),
        }
    }
}

fn panicked(panic: Box<dyn std::any::Any + Send>) -> BoxError {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    Box::new(RpcError::internal(format!("handler panicked: {what}")))
}

async fn send_reply(shared: &Shared, id: u64, result: Result<Response, RpcError>) {
    let mut frame = Frame::Reply { id, result };
    if let Err(too_large) = shared.check_size(&frame) {
        let rpc = too_large.code().map_or_else(
            || RpcError::internal("reply too large"),
            |_| RpcError::new(code::FRAME_TOO_LARGE, format!("reply {too_large}")),
        );
        frame = Frame::Reply {
            id,
            result: Err(rpc),
        };
    }
    if shared.outgoing.send(frame).await.is_err() {
        tracing::debug!(
            connection = shared.id(),
            id,
            "diarrhoea: reply not sent, connection ending"
        );
    }
}

fn report_notification_error(shared: &Shared, method: &str, error: BoxError) {
    let rpc = RpcError::from_box_error(error);
    let unknown = rpc.code == code::METHOD_NOT_FOUND;
    let error =
        Error::protocol(rpc).with_context(format!("notification `{}`", truncate(method, 64)));
    if unknown {
        shared.warning(error);
    } else {
        shared.error(error);
    }
}
