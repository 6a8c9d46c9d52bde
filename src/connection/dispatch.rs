//! The dispatcher: runs incoming calls through the bound service.
//!
//! - **Notifications** run one at a time, in wire order among themselves: each completes
//!   before the next notification starts. Most complete at once and run inline; one that
//!   waits (say, for a call to the peer) moves to the notification lane, a task of its own,
//!   and the notifications after it queue there behind it.
//! - **Requests** are dispatched in wire order and run concurrently, up to
//!   `max_concurrent_requests`: each is polled once here, answered at once if it is ready
//!   (most are), and otherwise finishes in a task of its own. A request is never held behind
//!   a running notification, so a notification handler that calls the peer, which calls back
//!   before answering, completes.
//!
//! Errors from the service become error replies (requests) or error events (notifications)
//! here, in one place. A request's future runs with its deadline in scope, so calls it makes
//! inherit the deadline.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::Service;

use super::deadline::Serving;
use super::inbox::Inbound;
use super::{BoundService, Shared};
use crate::error::{code, truncate, BoxError, Error, RpcError};
use crate::frame::Frame;
use crate::request::Request;
use crate::response::Response;

pub(super) async fn run(
    mut inbound: mpsc::UnboundedReceiver<Inbound>,
    mut binding: watch::Receiver<BoundService>,
    shared: Arc<Shared>,
) {
    let mut service = binding.borrow_and_update().clone();
    let limit = Arc::new(Semaphore::new(shared.config.max_concurrent_requests));
    // Requests still running after their first poll, and the notification lane; dropping the
    // set aborts them.
    let mut tasks = JoinSet::new();
    let mut lane = Lane::default();
    // One registration for the life of the loop, rather than one per frame.
    let abort = shared.lifecycle.aborted_owned();
    tokio::pin!(abort);
    loop {
        while tasks.try_join_next().is_some() {}
        // Under load the next call is already queued: take it without building a wait.
        let (req, budget) = match inbound.try_recv() {
            Ok(next) => next,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => tokio::select! {
                biased;
                _ = &mut abort => return,
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
            lane.notify(req, budget, &mut service, &shared, &mut tasks)
                .await;
            continue;
        };
        let deadline = req.deadline().map(|d| d.0);
        // Waiting for a permit and for readiness counts against the deadline.
        let permit = match limit.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::select! {
                biased;
                _ = &mut abort => return,
                _ = expiry(deadline) => {
                    answer_unstarted(&shared, id, timed_out()).await;
                    continue;
                }
                permit = limit.clone().acquire_owned() => permit.expect("never closed"),
            },
        };
        let ready = match poll_once(|cx| service.poll_ready(cx)).await {
            Poll::Ready(ready) => ready,
            Poll::Pending => tokio::select! {
                biased;
                _ = &mut abort => return,
                _ = expiry(deadline) => {
                    answer_unstarted(&shared, id, timed_out()).await;
                    continue;
                }
                ready = std::future::poll_fn(|cx| service.poll_ready(cx)) => ready,
            },
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
            tokio::select! {
                biased;
                _ = &mut abort => return,
                _ = answer(&shared, id, outcome.map_err(RpcError::from_box_error)) => {}
            }
            drop((permit, budget));
            continue;
        }
        let task_shared = shared.clone();
        let task = tasks.spawn(async move {
            let outcome = match deadline {
                None => response.await.map_err(RpcError::from_box_error),
                Some(deadline) => match tokio::time::timeout_at(deadline, response).await {
                    Ok(outcome) => outcome.map_err(RpcError::from_box_error),
                    Err(_) => Err(timed_out()),
                },
            };
            answer(&task_shared, id, outcome).await;
            drop((permit, budget));
        });
        shared.in_flight.set_task(id, task);
    }
    // The inbound side is done: the lane finishes what it holds, then ends; requests in
    // flight finish too, unless torn down.
    drop(lane);
    loop {
        tokio::select! {
            biased;
            _ = &mut abort => return,
            next = tasks.join_next() => if next.is_none() { return },
        }
    }
}

/// Notifications in wire order. Idle, a notification runs inline; one that does not finish
/// at once moves to the lane task, and every notification after it follows it there until
/// the lane has caught up.
#[derive(Default)]
struct Lane {
    /// The lane task's queue, once a notification has needed it.
    queue: Option<mpsc::UnboundedSender<Queued>>,
    /// Notifications sent to the lane task and not finished yet.
    behind: Arc<AtomicUsize>,
}

enum Queued {
    /// Started inline, still running.
    Running(Notification),
    /// Not started: the lane readies `service` and calls it.
    Waiting {
        req: Request,
        budget: OwnedSemaphorePermit,
        service: BoundService,
    },
}

/// A running notification, its method name for error reports, and its share of the
/// inbound buffer.
struct Notification {
    method: Arc<str>,
    started: Started,
    budget: OwnedSemaphorePermit,
}

impl Lane {
    async fn notify(
        &mut self,
        req: Request,
        budget: OwnedSemaphorePermit,
        service: &mut BoundService,
        shared: &Arc<Shared>,
        tasks: &mut JoinSet<()>,
    ) {
        if self.behind.load(Ordering::Acquire) > 0 {
            let service = service.clone();
            return self.send(
                Queued::Waiting {
                    req,
                    budget,
                    service,
                },
                shared,
                tasks,
            );
        }
        let method = req.method_arc().clone();
        let started = match poll_once(|cx| service.poll_ready(cx)).await {
            Poll::Ready(Ok(())) => catch_unwind_call(service, req),
            Poll::Ready(Err(e)) => Started::Failed(Some(e)),
            // Not ready: wait for it in the lane, not here, so requests keep flowing.
            Poll::Pending => {
                let service = service.clone();
                return self.send(
                    Queued::Waiting {
                        req,
                        budget,
                        service,
                    },
                    shared,
                    tasks,
                );
            }
        };
        let mut running = Notification {
            method,
            started,
            budget,
        };
        match poll_once(|cx| Pin::new(&mut running.started).poll(cx)).await {
            Poll::Ready(outcome) => running.finish(outcome, shared),
            Poll::Pending => self.send(Queued::Running(running), shared, tasks),
        }
    }

    fn send(&mut self, queued: Queued, shared: &Arc<Shared>, tasks: &mut JoinSet<()>) {
        let queue = self.queue.get_or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tasks.spawn(lane(rx, self.behind.clone(), shared.clone()));
            tx
        });
        self.behind.fetch_add(1, Ordering::AcqRel);
        // The lane task ends only when this sender is dropped, or on abort.
        let _ = queue.send(queued);
    }
}

/// The lane task: runs queued notifications one after the other.
async fn lane(
    mut queue: mpsc::UnboundedReceiver<Queued>,
    behind: Arc<AtomicUsize>,
    shared: Arc<Shared>,
) {
    while let Some(queued) = queue.recv().await {
        let (outcome, running) = match queued {
            Queued::Running(mut running) => ((&mut running.started).await, running),
            Queued::Waiting {
                req,
                budget,
                mut service,
            } => {
                let method = req.method_arc().clone();
                let started = match std::future::poll_fn(|cx| service.poll_ready(cx)).await {
                    Ok(()) => catch_unwind_call(&mut service, req),
                    Err(e) => Started::Failed(Some(e)),
                };
                let mut running = Notification {
                    method,
                    started,
                    budget,
                };
                ((&mut running.started).await, running)
            }
        };
        running.finish(outcome, &shared);
        behind.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Notification {
    fn finish(self, outcome: Result<Response, BoxError>, shared: &Shared) {
        drop(self.budget);
        if let Err(error) = outcome {
            report_notification_error(shared, &self.method, error);
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

type ServiceFuture = Serving<super::bound::BoundFuture>;

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
