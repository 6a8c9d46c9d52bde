//! [`NameOverload`]: tells the peer *which* limit rejected its request.
//!
//! tower's `LoadShed` fails a request with `Overloaded` when the service below it is not ready,
//! and the connection answers that with -32002 `overloaded: service not ready (load shed)`.
//! With several limits in a stack (a rate limit, a per-connection and a server-wide
//! concurrency limit) the peer cannot tell them apart. Put a [`NameOverloadLayer`] right
//! outside each `LoadShed`, naming the limit that `LoadShed` sheds for:
//!
//! ```
//! use std::time::Duration;
//! use diarrhoea::layer::NameOverloadLayer;
//! use tower::ServiceBuilder;
//!
//! let stack = ServiceBuilder::new()
//!     .layer(NameOverloadLayer::new("per-connection concurrency limit (64)"))
//!     .load_shed()
//!     .concurrency_limit(64)
//!     .service(diarrhoea::Router::new());
//! // A shed request is answered:
//! // {"code":-32002,"message":"overloaded: per-connection concurrency limit (64) reached",
//! //  "data":{"limit":"per-connection concurrency limit (64)"}}
//! ```
//!
//! tower's `RateLimit` never rejects by itself: it makes callers wait in `poll_ready`. To
//! reject requests over the rate instead, shed right in front of it and name it the same way.
//! In a stack that must be `Clone` there is a `Buffer` between them, and the `LoadShed` then
//! sheds when the buffer is full rather than exactly when the rate is used up.
//!
//! Errors other than `Overloaded` pass through untouched (boxed), so an inner layer's name is
//! kept when an outer one sees the error.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower::load_shed::error::Overloaded;
use tower::{Layer, Service};

use crate::error::{code, BoxError, RpcError};

/// Names the limit behind the next `LoadShed`; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct NameOverloadLayer {
    limit: Arc<str>,
}

impl NameOverloadLayer {
    /// `limit` is what the peer reads: "overloaded: {limit} reached". Say which limit and its
    /// value, e.g. `"rate limit (100 requests/s per connection)"`.
    pub fn new(limit: impl Into<Cow<'static, str>>) -> Self {
        NameOverloadLayer {
            limit: Arc::from(limit.into().as_ref()),
        }
    }
}

impl<S> Layer<S> for NameOverloadLayer {
    type Service = NameOverload<S>;

    fn layer(&self, inner: S) -> NameOverload<S> {
        NameOverload {
            inner,
            limit: self.limit.clone(),
        }
    }
}

/// The service of [`NameOverloadLayer`]: turns `Overloaded` into -32002 naming the limit.
#[derive(Debug, Clone)]
pub struct NameOverload<S> {
    inner: S,
    limit: Arc<str>,
}

impl<S> NameOverload<S> {
    /// Wraps `inner`; rejections are reported as coming from `limit`.
    pub fn new(inner: S, limit: impl Into<Cow<'static, str>>) -> Self {
        NameOverloadLayer::new(limit).layer(inner)
    }

    /// The name given to the limit.
    pub fn limit(&self) -> &str {
        &self.limit
    }
}

impl<S, Req> Service<Req> for NameOverload<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = NameOverloadFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let limit = &self.limit;
        self.inner
            .poll_ready(cx)
            .map_err(|e| name_overload(e.into(), limit))
    }

    fn call(&mut self, req: Req) -> NameOverloadFuture<S::Future> {
        NameOverloadFuture {
            inner: self.inner.call(req),
            limit: self.limit.clone(),
        }
    }
}

pin_project! {
    /// The future of [`NameOverload`].
    pub struct NameOverloadFuture<F> {
        #[pin]
        inner: F,
        limit: Arc<str>,
    }
}

impl<F, T, E> Future for NameOverloadFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        Poll::Ready(result.map_err(|e| name_overload(e.into(), this.limit)))
    }
}

impl<F> fmt::Debug for NameOverloadFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NameOverloadFuture")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

fn name_overload(error: BoxError, limit: &str) -> BoxError {
    if error.is::<Overloaded>() {
        Box::new(overloaded(limit))
    } else {
        error
    }
}

/// The -32002 error a peer gets when `limit` rejects its request.
///
/// ```
/// let e = diarrhoea::layer::overloaded("global concurrency limit (1000)");
/// assert_eq!(e.code, -32002);
/// assert_eq!(e.message, "overloaded: global concurrency limit (1000) reached");
/// ```
pub fn overloaded(limit: &str) -> RpcError {
    RpcError::new(code::OVERLOADED, format!("overloaded: {limit} reached"))
        .with_data(serde_json::json!({ "limit": limit }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::bounded;
    use std::time::Duration;
    use tower::{ServiceBuilder, ServiceExt};
    use tower_test::mock;

    #[test]
    fn the_limit_keeps_its_name() {
        let named = NameOverload::new((), "global concurrency limit (8)");
        assert_eq!(named.limit(), "global concurrency limit (8)");
    }

    #[tokio::test]
    async fn load_shed_rejections_name_the_limit() {
        bounded(async {
            let (mock, mut handle) = mock::pair::<&'static str, &'static str>();
            let mut service = ServiceBuilder::new()
                .layer(NameOverloadLayer::new(
                    "per-connection concurrency limit (1)",
                ))
                .load_shed()
                .concurrency_limit(1)
                .service(mock);

            // The first request takes the only permit.
            handle.allow(1);
            let first = service.ready().await.unwrap().call("one");
            // The second is shed at once, and says by which limit.
            let error = service
                .ready()
                .await
                .unwrap()
                .call("two")
                .await
                .unwrap_err();
            let rpc = RpcError::from_box_error(error);
            assert_eq!(rpc.code, code::OVERLOADED);
            assert_eq!(
                rpc.message,
                "overloaded: per-connection concurrency limit (1) reached"
            );
            assert_eq!(
                rpc.data,
                Some(serde_json::json!({"limit": "per-connection concurrency limit (1)"}))
            );

            // Once the permit is back, requests go through again.
            let (req, send) = handle.next_request().await.unwrap();
            assert_eq!(req, "one");
            send.send_response("ok");
            assert_eq!(first.await.unwrap(), "ok");
            handle.allow(1);
            let third = service.ready().await.unwrap().call("three");
            handle.next_request().await.unwrap().1.send_response("ok");
            assert_eq!(third.await.unwrap(), "ok");
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn shed_rate_limit_is_named_too() {
        bounded(async {
            let (mock, mut handle) = mock::pair::<&'static str, &'static str>();
            handle.allow(100);
            let mut service = ServiceBuilder::new()
                .layer(NameOverloadLayer::new("rate limit (2 requests/s)"))
                .load_shed()
                .rate_limit(2, Duration::from_secs(1))
                .service(mock);
            let mut outcomes = Vec::new();
            for _ in 0..3 {
                let fut = service.ready().await.unwrap().call("r");
                outcomes.push(fut);
            }
            let third = outcomes.pop().unwrap().await.unwrap_err();
            assert_eq!(
                RpcError::from_box_error(third).message,
                "overloaded: rate limit (2 requests/s) reached"
            );
            // A second later the rate allows requests again.
            tokio::time::advance(Duration::from_secs(1)).await;
            let fut = service.ready().await.unwrap().call("later");
            drop(outcomes);
            while let Some((req, send)) = handle.next_request().await {
                send.send_response("ok");
                if req == "later" {
                    break;
                }
            }
            assert_eq!(fut.await.unwrap(), "ok");
        })
        .await;
    }

    #[tokio::test]
    async fn other_errors_and_inner_names_pass_through() {
        bounded(async {
            let (mock, mut handle) = mock::pair::<&'static str, &'static str>();
            let mut service = ServiceBuilder::new()
                .layer(NameOverloadLayer::new("outer"))
                .layer(NameOverloadLayer::new("inner"))
                .service(mock);
            handle.allow(2);
            let fut = service.ready().await.unwrap().call("a");
            handle
                .next_request()
                .await
                .unwrap()
                .1
                .send_error(Overloaded::new());
            let rpc = RpcError::from_box_error(fut.await.unwrap_err());
            assert_eq!(rpc.message, "overloaded: inner reached");

            let fut = service.ready().await.unwrap().call("b");
            handle
                .next_request()
                .await
                .unwrap()
                .1
                .send_error(RpcError::new(42, "mine"));
            let rpc = RpcError::from_box_error(fut.await.unwrap_err());
            assert_eq!((rpc.code, rpc.message.as_str()), (42, "mine"));
        })
        .await;
    }
}
