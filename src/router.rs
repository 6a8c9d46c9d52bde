//! [`Router`]: method name to handler, the Rust form of diarrhoea 1.1.0's `bind(object)`.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Service, ServiceExt};

use crate::error::{BoxError, RpcError};
use crate::handler::{Erased, ErasedHandler, Handler, HandlerFuture};
use crate::request::Request;
use crate::response::Response;

type Route = Arc<dyn ErasedHandler>;

/// Method name to route. The names are the app's and few; a peer only looks them up and never
/// adds one, so a keyed hash (against collision flooding) buys nothing, and FNV-1a is cheaper
/// for short names.
type Routes = HashMap<Box<str>, Route, BuildHasherDefault<Fnv1a>>;

struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Routes requests by method name to handlers, with an optional catch-all.
///
/// A `Router` is a [`tower::Service`] that is always ready, cheap to clone, and fails only with
/// an [`RpcError`] (boxed): -32601 for an unknown method without a fallback, -32602 for
/// arguments that do not fit, or the handler's own error. The connection turns those into error
/// replies (for calls) or error events (for notifications).
///
/// ```
/// use diarrhoea::{Connection, Router};
///
/// async fn ping(peer: Connection, x: String, time: u64) -> Result<(), diarrhoea::Error> {
///     peer.post_message("pong", (x, time)).await
/// }
///
/// let router = Router::new()
///     .route("ping", ping)
///     .route("add", |a: i64, b: i64| async move { a + b })
///     .route("echo", |args: diarrhoea::Args| async move { args });
/// ```
#[derive(Clone, Default)]
pub struct Router {
    routes: Arc<Routes>,
    fallback: Option<Route>,
    /// The method routed last and its route. A connection's router is its own clone, and a
    /// peer usually repeats a method: its name is then the same shared string (the reader
    /// keeps recent names), found by pointer without hashing it.
    last: Option<(Arc<str>, Route)>,
}

impl Router {
    /// A router with no routes: every call gets -32601.
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds `method` to a typed async function.
    ///
    /// # Panics
    /// If `method` is empty or starts with `$/` (reserved for the protocol). A method bound
    /// twice keeps the last handler.
    pub fn route<H: Handler<M>, M: 'static>(self, method: &str, handler: H) -> Self {
        self.insert(method, Arc::new(Erased::new(handler)))
    }

    /// Binds `method` to any tower service, e.g. a handler wrapped in its own layers.
    ///
    /// The service is cloned for each request and driven with `oneshot`.
    ///
    /// # Panics
    /// As [`Router::route`].
    pub fn route_service<S>(self, method: &str, service: S) -> Self
    where
        S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.insert(method, Arc::new(ServiceRoute(service)))
    }

    /// Handles every method that has no route: the Rust form of the `rpc` catch-all event.
    pub fn fallback<H: Handler<M>, M: 'static>(mut self, handler: H) -> Self {
        self.fallback = Some(Arc::new(Erased::new(handler)));
        self
    }

    /// As [`Router::fallback`], with any tower service.
    pub fn fallback_service<S>(mut self, service: S) -> Self
    where
        S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.fallback = Some(Arc::new(ServiceRoute(service)));
        self
    }

    /// Whether `method` has a route of its own (the fallback does not count).
    pub fn has_route(&self, method: &str) -> bool {
        self.routes.contains_key(method)
    }

    fn insert(mut self, method: &str, route: Route) -> Self {
        assert!(
            !method.is_empty(),
            "diarrhoea: a method name cannot be empty"
        );
        assert!(
            !method.starts_with("$/"),
            "diarrhoea: method `{method}` starts with `$/`, which is reserved for the protocol"
        );
        Arc::make_mut(&mut self.routes).insert(method.into(), route);
        self.last = None;
        self
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut methods: Vec<&str> = self.routes.keys().map(|k| &**k).collect();
        methods.sort_unstable();
        f.debug_struct("Router")
            .field("methods", &methods)
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl Service<Request> for Router {
    type Response = Response;
    type Error = BoxError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> RouteFuture {
        if let Some((method, route)) = &self.last {
            if Arc::ptr_eq(method, req.method_arc()) {
                return RouteFuture {
                    inner: Ok(route.call(req)),
                };
            }
        }
        let route = self.routes.get(req.method());
        if let Some(route) = route {
            self.last = Some((req.method_arc().clone(), route.clone()));
        }
        let route = route.or(self.fallback.as_ref());
        RouteFuture {
            inner: match route {
                Some(route) => Ok(route.call(req)),
                None => Err(Some(RpcError::method_not_found(req.method()))),
            },
        }
    }
}

/// The future of [`Router`]'s `call`.
pub struct RouteFuture {
    inner: Result<HandlerFuture, Option<RpcError>>,
}

impl Future for RouteFuture {
    type Output = Result<Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            Ok(fut) => fut.as_mut().poll(cx).map_err(BoxError::from),
            Err(error) => Poll::Ready(Err(error
                .take()
                .expect("RouteFuture polled after completion")
                .into())),
        }
    }
}

impl fmt::Debug for RouteFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteFuture").finish_non_exhaustive()
    }
}

struct ServiceRoute<S>(S);

impl<S> ErasedHandler for ServiceRoute<S>
where
    S: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    fn call(&self, req: Request) -> HandlerFuture {
        let service = self.0.clone();
        Box::pin(async move {
            service
                .oneshot(req)
                .await
                .map_err(|e| RpcError::from_box_error(e.into()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;
    use tower::ServiceExt;

    /// The method it was called with, as a tower service would answer.
    fn echo_method() -> tower::util::BoxCloneSyncService<Request, Response, BoxError> {
        tower::util::BoxCloneSyncService::new(tower::service_fn(|req: Request| async move {
            Ok::<_, BoxError>(Response::new(req.method()).expect("a string serializes"))
        }))
    }

    async fn answer(router: &Router, method: &str) -> Result<String, i64> {
        match router
            .clone()
            .oneshot(Request::new(method, ()).unwrap())
            .await
        {
            Ok(reply) => Ok(reply.get().to_owned()),
            Err(e) => Err(RpcError::from_box_error(e).code),
        }
    }

    #[tokio::test]
    async fn each_kind_of_route_answers_its_methods_and_only_those() {
        let router = Router::new()
            .route("typed", || async { 7 })
            .route_service("service", echo_method());
        assert!(router.has_route("typed") && router.has_route("service"));
        assert!(!router.has_route("other"));
        assert_eq!(answer(&router, "typed").await, Ok("7".to_owned()));
        assert_eq!(
            answer(&router, "service").await,
            Ok(r#""service""#.to_owned())
        );
        assert_eq!(answer(&router, "other").await, Err(code::METHOD_NOT_FOUND));

        let handler_fallback = router.clone().fallback(|| async { "fallback" });
        assert!(
            !handler_fallback.has_route("other"),
            "a fallback is no route"
        );
        assert_eq!(
            answer(&handler_fallback, "other").await,
            Ok(r#""fallback""#.to_owned())
        );
        let service_fallback = router.fallback_service(echo_method());
        assert_eq!(
            answer(&service_fallback, "other").await,
            Ok(r#""other""#.to_owned())
        );
        assert_eq!(answer(&service_fallback, "typed").await, Ok("7".to_owned()));
    }

    #[tokio::test]
    async fn a_repeated_method_finds_its_route_and_a_rebound_one_its_new_route() {
        let mut router = Router::new()
            .route("a", || async { 1 })
            .route("b", || async { 2 });
        // The same shared name each time, as the reader hands them out.
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let answer = |router: &mut Router, method: &Arc<str>| {
            let fut = router.call(Request::from_parts(method.clone(), crate::Args::empty()));
            async move { fut.await.map(|reply| reply.get().to_owned()).ok() }
        };
        for (method, expected) in [(&a, "1"), (&a, "1"), (&b, "2"), (&a, "1")] {
            assert_eq!(answer(&mut router, method).await.as_deref(), Some(expected));
        }
        let mut rebound = router.clone().route("a", || async { 3 });
        assert_eq!(answer(&mut rebound, &a).await.as_deref(), Some("3"));
        assert_eq!(answer(&mut router, &a).await.as_deref(), Some("1"));
    }

    #[test]
    fn fnv1a_matches_the_published_vectors() {
        let hash = |bytes: &[u8]| {
            let mut h = Fnv1a::default();
            h.write(bytes);
            h.finish()
        };
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
