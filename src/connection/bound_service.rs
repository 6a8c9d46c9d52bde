//! The service a connection drives: a [`Router`] as it is, anything else boxed.
//!
//! Most connections serve a plain `Router`; driving it directly saves a box and a dynamic call
//! per request.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use crate::error::BoxError;
use crate::request::Request;
use crate::response::Response;
use crate::router::{RouteFuture, Router};

#[derive(Clone)]
pub(crate) enum BoundService {
    Router(Router),
    Boxed(BoxCloneSyncService<Request, Response, BoxError>),
}

impl BoundService {
    /// What a connection serves before anything is set: every call gets -32601.
    pub(crate) fn unbound() -> Self {
        BoundService::Router(Router::new())
    }

    /// Erases a user's stack, mapping its error into [`BoxError`].
    pub(crate) fn new<S>(service: S) -> Self
    where
        S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let any: Box<dyn Any> = Box::new(service);
        match any.downcast::<Router>() {
            Ok(router) => BoundService::Router(*router),
            Err(any) => {
                let service = *any.downcast::<S>().expect("the type it was made from");
                BoundService::Boxed(BoxCloneSyncService::new(service.map_err(Into::into)))
            }
        }
    }
}

impl Service<Request> for BoundService {
    type Response = Response;
    type Error = BoxError;
    type Future = BoundFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            BoundService::Router(router) => router.poll_ready(cx),
            BoundService::Boxed(service) => service.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Request) -> BoundFuture {
        match self {
            BoundService::Router(router) => BoundFuture::Router(router.call(req)),
            BoundService::Boxed(service) => BoundFuture::Boxed(service.call(req)),
        }
    }
}

type BoxedFuture = Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>;

pub(crate) enum BoundFuture {
    Router(RouteFuture),
    Boxed(BoxedFuture),
}

impl Future for BoundFuture {
    type Output = Result<Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            BoundFuture::Router(fut) => Pin::new(fut).poll(cx),
            BoundFuture::Boxed(fut) => fut.as_mut().poll(cx),
        }
    }
}
