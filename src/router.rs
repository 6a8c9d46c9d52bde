//! [`Router`]: method name to handler, the Rust form of diarrhoea 1.1.0's `bind(object)`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::Serialize;
use tower::{Service, ServiceExt};

use crate::args::Args;
use crate::error::{BoxError, Error, RpcError};
use crate::handler::{Erased, ErasedHandler, Handler, HandlerFuture};
use crate::request::Request;
use crate::response::Response;

type Route = Arc<dyn ErasedHandler>;

/// The one reserved method a connection hands to its service: a [`Router`] answers it with its
/// methods.
pub(crate) const METHODS_METHOD: &str = "$/methods";

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
/// It also answers `["$/methods",[],id]` with the sorted list of the methods it routes: each
/// a name, or for a method of a typed service its [`MethodInfo`] as an object
/// (`{"name":"add","kind":"request","params":["a","b"]}`).
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
    /// What `$/methods` says of the routes a typed service registered.
    described: Arc<BTreeMap<Box<str>, MethodInfo>>,
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

    /// The routes of both routers, to serve several services on one connection:
    /// `Calc::into_router(calc).merge(Files::into_router(files))?`.
    ///
    /// Fails with [`Error::is_config`] when both route one method, or both have a fallback:
    /// one router silently losing a route would answer a peer with the wrong handler.
    ///
    /// ```
    /// use diarrhoea::Router;
    ///
    /// let math = Router::new().route("add", |a: i64, b: i64| async move { a + b });
    /// let text = Router::new().route("upper", |s: String| async move { s.to_uppercase() });
    /// let both = math.clone().merge(text).unwrap();
    /// assert!(both.has_route("add") && both.has_route("upper"));
    /// assert!(both.merge(math).unwrap_err().is_config());
    /// ```
    pub fn merge(mut self, other: Router) -> Result<Router, Error> {
        let mut clashes: Vec<&str> = other
            .routes
            .keys()
            .filter(|method| self.routes.contains_key(&***method))
            .map(|method| &**method)
            .collect();
        if !clashes.is_empty() {
            clashes.sort_unstable();
            return Err(Error::config(format!(
                "both routers route {}",
                clashes
                    .iter()
                    .map(|method| format!("`{method}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if self.fallback.is_some() && other.fallback.is_some() {
            return Err(Error::config("both routers have a fallback"));
        }
        let routes = Arc::make_mut(&mut self.routes);
        for (method, route) in other.routes.iter() {
            routes.insert(method.clone(), route.clone());
        }
        let described = Arc::make_mut(&mut self.described);
        for (method, info) in other.described.iter() {
            described.insert(method.clone(), *info);
        }
        self.fallback = self.fallback.or(other.fallback);
        self.last = None;
        Ok(self)
    }

    /// Binds a typed service's method, described for `$/methods`.
    #[cfg(feature = "macros")]
    pub(crate) fn route_described<H: Handler<M>, M: 'static>(
        self,
        info: &MethodInfo,
        handler: H,
    ) -> Self {
        let route = ByName {
            info: *info,
            inner: Arc::new(Erased::new(handler)),
        };
        let mut router = self.insert(info.name, Arc::new(route));
        Arc::make_mut(&mut router.described).insert(info.name.into(), *info);
        router
    }

    /// The answer to `$/methods`: every routed method in name order, as its description
    /// where it has one, else as its name.
    fn methods(&self) -> Result<Response, RpcError> {
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Entry<'a> {
            Name(&'a str),
            Described(&'a MethodInfo),
        }
        let mut methods: Vec<&str> = self.routes.keys().map(|k| &**k).collect();
        methods.sort_unstable();
        let entries: Vec<Entry<'_>> = methods
            .into_iter()
            .map(|method| match self.described.get(method) {
                Some(info) => Entry::Described(info),
                None => Entry::Name(method),
            })
            .collect();
        Response::new(&entries)
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
        if self.described.contains_key(method) {
            Arc::make_mut(&mut self.described).remove(method);
        }
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
        if route.is_none() && req.method() == METHODS_METHOD && req.is_call() {
            return RouteFuture {
                inner: Err(Some(self.methods())),
            };
        }
        let route = route.or(self.fallback.as_ref());
        RouteFuture {
            inner: match route {
                Some(route) => Ok(route.call(req)),
                None => Err(Some(Err(RpcError::method_not_found(req.method())))),
            },
        }
    }
}

/// The future of [`Router`]'s `call`.
pub struct RouteFuture {
    /// A handler's future, or the answer given without one.
    inner: Result<HandlerFuture, Option<Result<Response, RpcError>>>,
}

impl Future for RouteFuture {
    type Output = Result<Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            Ok(fut) => fut.as_mut().poll(cx).map_err(BoxError::from),
            Err(answer) => Poll::Ready(
                answer
                    .take()
                    .expect("RouteFuture polled after completion")
                    .map_err(BoxError::from),
            ),
        }
    }
}

impl fmt::Debug for RouteFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteFuture").finish_non_exhaustive()
    }
}

/// A method of a service: its wire name, whether it is a call or a notification, and the
/// names of the parameters it takes from the wire, in order. A typed client's `METHODS` lists
/// them, and a [`Router`] answers `$/methods` with them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
#[cfg_attr(not(feature = "macros"), allow(dead_code, unreachable_pub))]
pub struct MethodInfo {
    /// The name on the wire (after any `namespace` and `#[rpc(name)]`).
    pub name: &'static str,
    /// A call (answered), a notification, or a stream.
    pub kind: MethodKind,
    /// The parameter names, in wire order; `#[context]` parameters are not on the wire.
    pub params: &'static [&'static str],
}

// Without feature `macros`, only `$/methods` reads them, and nothing makes them.
#[cfg_attr(not(feature = "macros"), allow(dead_code, unreachable_pub))]
impl MethodInfo {
    /// A method's description.
    pub const fn new(
        name: &'static str,
        kind: MethodKind,
        params: &'static [&'static str],
    ) -> Self {
        MethodInfo { name, kind, params }
    }
}

/// Whether a method is a call, a notification or a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
#[cfg_attr(not(feature = "macros"), allow(dead_code, unreachable_pub))]
pub enum MethodKind {
    /// Answered with a reply.
    Request,
    /// Never answered: `#[rpc(notification)]`.
    Notification,
    /// Answered with a stream of items, then a reply: a method returning
    /// [`StreamReply`](crate::StreamReply).
    Stream,
}

/// A typed service's route: by-name arguments (an object, from JSON-RPC 2.0's `params`) are
/// put in the order of the method's parameter names before its handler reads them.
#[cfg_attr(not(feature = "macros"), allow(dead_code))]
struct ByName {
    info: MethodInfo,
    inner: Route,
}

impl ErasedHandler for ByName {
    fn call(&self, mut req: Request) -> HandlerFuture {
        if req.args().get().starts_with('{') {
            match by_position(req.args(), &self.info) {
                Ok(args) => req.set_args(args),
                Err(error) => return Box::pin(std::future::ready(Err(error))),
            }
        }
        self.inner.call(req)
    }
}

/// By-name arguments in the order of `info`'s parameters; a missing one is `null` (an
/// `Option` parameter is then `None`), an unknown one is refused.
#[cfg_attr(not(feature = "macros"), allow(dead_code))]
fn by_position(args: &Args, info: &MethodInfo) -> Result<Args, RpcError> {
    let named: HashMap<String, &serde_json::value::RawValue> = serde_json::from_str(args.get())
        .map_err(|e| RpcError::invalid_params(format!("by-name arguments: {e}")))?;
    if let Some(unknown) = named
        .keys()
        .find(|name| !info.params.contains(&name.as_str()))
    {
        return Err(RpcError::invalid_params(format!(
            "`{}` has no parameter `{}`; its parameters are [{}]",
            info.name,
            crate::error::truncate(unknown, 40),
            info.params.join(", ")
        )));
    }
    let mut text = String::with_capacity(args.get().len());
    text.push('[');
    for (i, name) in info.params.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(named.get(*name).map_or("null", |value| value.get()));
    }
    text.push(']');
    let raw = serde_json::value::RawValue::from_string(text)
        .map_err(|e| RpcError::internal(format!("by-name arguments: {e}")))?;
    Args::from_raw(raw).map_err(|e| RpcError::internal(format!("by-name arguments: {e}")))
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
