//! The dispatcher: runs incoming calls through the bound service.
//!
//! Notifications run one at a time, in wire order: each completes before the next frame is
//! dispatched. Requests are dispatched in wire order and run concurrently in their own tasks,
//! up to `max_concurrent_requests`. Errors from the service become error replies (requests) or
//! error events (notifications) here, in one place.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::task::TaskTracker;
use tower::Service;

use super::reader::Inbound;
use super::{BoxedService, Shared};
use crate::error::{code, BoxError, Error, RpcError};
use crate::frame::Frame;
use crate::response::Response;

pub(super) async fn run(
    mut inbound: mpsc::UnboundedReceiver<Inbound>,
    mut binding: watch::Receiver<BoxedService>,
    in_flight: &TaskTracker,
    shared: Arc<Shared>,
) {
    let mut service = binding.borrow_and_update().clone();
    let limit = Arc::new(Semaphore::new(shared.config.max_concurrent_requests));
    loop {
        let (req, budget) = tokio::select! {
            biased;
            _ = shared.abort.cancelled() => return,
            next = inbound.recv() => match next {
                Some(next) => next,
                None => return,
            },
        };
        if binding.has_changed().unwrap_or(false) {
            service = binding.borrow_and_update().clone();
        }
        let method = req.method().to_owned();
        let Some(id) = req.id() else {
            let outcome = tokio::select! {
                biased;
                _ = shared.abort.cancelled() => return,
                outcome = call(&mut service, req) => outcome,
            };
            drop(budget);
            if let Err(error) = outcome {
                report_notification_error(&shared, &method, error);
            }
            continue;
        };
        let permit = tokio::select! {
            biased;
            _ = shared.abort.cancelled() => return,
            permit = limit.clone().acquire_owned() => permit.expect("never closed"),
        };
        let ready = tokio::select! {
            biased;
            _ = shared.abort.cancelled() => return,
            ready = std::future::poll_fn(|cx| service.poll_ready(cx)) => ready,
        };
        let response = match ready {
            Ok(()) => catch_unwind_call(&mut service, req),
            Err(e) => Started::Failed(Some(e)),
        };
        drop(budget);
        let shared = shared.clone();
        in_flight.spawn(async move {
            let outcome = tokio::select! {
                biased;
                _ = shared.abort.cancelled() => return,
                outcome = response => outcome,
            };
            let result = outcome.map_err(RpcError::from_box_error);
            send_reply(&shared, id, result).await;
            shared.inbound_ids.remove(id);
            drop(permit);
        });
    }
}

/// Readies the service and runs one request to completion, panics included.
async fn call(service: &mut BoxedService, req: crate::Request) -> Result<Response, BoxError> {
    std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
    match catch_unwind_call(service, req) {
        Started::Running(fut) => CatchUnwind(fut).await,
        Started::Failed(e) => Err(e.expect("fresh")),
    }
}

/// `call` itself may run user code before the future exists (a closure's body, a layer).
fn catch_unwind_call(service: &mut BoxedService, req: crate::Request) -> Started {
    match std::panic::catch_unwind(AssertUnwindSafe(|| service.call(req))) {
        Ok(fut) => Started::Running(fut),
        Err(panic) => Started::Failed(Some(panicked(panic))),
    }
}

type ServiceFuture = <BoxedService as Service<crate::Request>>::Future;

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
            connection = shared.id,
            id,
            "diarrhoea: reply not sent, connection ending"
        );
    }
}

fn report_notification_error(shared: &Shared, method: &str, error: BoxError) {
    let rpc = RpcError::from_box_error(error);
    let unknown = rpc.code == code::METHOD_NOT_FOUND;
    let error = Error::protocol(rpc).with_source(format!(
        "notification `{}`",
        crate::frame::truncate(method, 64)
    ));
    if unknown {
        shared.warning(error);
    } else {
        shared.error(error);
    }
}
