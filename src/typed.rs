//! What the code of [`#[diarrhoea::service]`](crate::service) stands on: the [`Remote`] a
//! typed client sends through, and the [`MethodInfo`] each method is described by.
//!
//! A typed client (`CalcClient` for `trait Calc`) is generic over a [`Remote`]: a
//! [`Connection`], a [`Pool`], or [`Services`], any tower stacks of calls and notifications.
//! Over a `Connection` or a `Pool` a typed call is exactly [`Connection::call`] or
//! [`Pool::call`] with the arguments as a tuple, so it costs what they cost.

use std::fmt;
use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tower::{Service, ServiceExt};

use crate::connection::Connection;
use crate::error::{BoxError, Error, RpcError};
use crate::handler::Handler;
use crate::pool::Pool;
use crate::request::Request;
use crate::response::{Json, Response};
use crate::router::Router;
pub use crate::router::{MethodInfo, MethodKind};

/// What a typed client sends its calls and notifications through: a [`Connection`], a
/// [`Pool`], or [`Services`] over tower stacks.
///
/// Sealed: those three cover every transport and every tower stack.
pub trait Remote: Clone + Send + Sync + 'static + sealed::Sealed {
    /// Calls `method` with `args` (a tuple, serialized as the JSON array of arguments) and
    /// deserializes the reply.
    fn call<R, A>(
        &self,
        method: &'static str,
        args: A,
    ) -> impl Future<Output = Result<R, Error>> + Send
    where
        R: DeserializeOwned,
        A: Serialize + Send;

    /// Sends `method` with `args` as a notification: no reply comes.
    fn notify<A>(
        &self,
        method: &'static str,
        args: A,
    ) -> impl Future<Output = Result<(), Error>> + Send
    where
        A: Serialize + Send;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::Connection {}
    impl Sealed for crate::pool::Pool {}
    impl<C, P> Sealed for super::Services<C, P> {}
}

impl Remote for Connection {
    fn call<R, A>(
        &self,
        method: &'static str,
        args: A,
    ) -> impl Future<Output = Result<R, Error>> + Send
    where
        R: DeserializeOwned,
        A: Serialize + Send,
    {
        Connection::call(self, method, args)
    }

    fn notify<A>(
        &self,
        method: &'static str,
        args: A,
    ) -> impl Future<Output = Result<(), Error>> + Send
    where
        A: Serialize + Send,
    {
        self.post_message(method, args)
    }
}

impl Remote for Pool {
    fn call<R, A>(
        &self,
        method: &'static str,
        args: A,
    ) -> impl Future<Output = Result<R, Error>> + Send
    where
        R: DeserializeOwned,
        A: Serialize + Send,
    {
        Pool::call(self, method, args)
    }

    fn notify<A>(
        &self,
        method: &'static str,
        args: A,
    ) -> impl Future<Output = Result<(), Error>> + Send
    where
        A: Serialize + Send,
    {
        self.post_message(method, args)
    }
}

/// Two tower stacks as a [`Remote`]: `caller` for calls, `poster` for notifications. Made by a
/// typed client's `from_services`.
///
/// ```no_run
/// use std::time::Duration;
/// use tower::ServiceBuilder;
///
/// #[diarrhoea::service]
/// trait Echo {
///     async fn echo(&self, text: String) -> String;
/// }
///
/// # async fn f(conn: diarrhoea::Connection) -> Result<(), diarrhoea::Error> {
/// let caller = ServiceBuilder::new()
///     .timeout(Duration::from_secs(1))
///     .service(conn.caller());
/// let echo = EchoClient::from_services(caller, conn.poster());
/// assert_eq!(echo.echo("hi".into()).await?, "hi");
/// # Ok(()) }
/// ```
///
/// A layer's own error becomes this crate's [`Error`]: tower's `Elapsed` one that
/// [`is_timeout`](Error::is_timeout), `Overloaded` one that
/// [`is_overloaded`](Error::is_overloaded), an [`RpcError`] one that
/// [`is_remote`](Error::is_remote); anything else keeps its error as the `source()`.
#[derive(Clone, Debug)]
pub struct Services<C, P> {
    caller: C,
    poster: P,
}

impl<C, P> Services<C, P> {
    /// Calls go through `caller`, notifications through `poster`.
    pub fn new(caller: C, poster: P) -> Self {
        Services { caller, poster }
    }
}

impl<C, P> Remote for Services<C, P>
where
    C: Service<Request, Response = Response> + Clone + Send + Sync + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send,
    P: Service<Request, Response = ()> + Clone + Send + Sync + 'static,
    P::Error: Into<BoxError>,
    P::Future: Send,
{
    fn call<R, A>(
        &self,
        method: &'static str,
        args: A,
    ) -> impl Future<Output = Result<R, Error>> + Send
    where
        R: DeserializeOwned,
        A: Serialize + Send,
    {
        let caller = self.caller.clone();
        async move {
            let request = Request::new(method, args)?;
            let reply = caller
                .oneshot(request)
                .await
                .map_err(|e| Error::from_layer(e.into()))?;
            reply.deserialize()
        }
    }

    fn notify<A>(
        &self,
        method: &'static str,
        args: A,
    ) -> impl Future<Output = Result<(), Error>> + Send
    where
        A: Serialize + Send,
    {
        let poster = self.poster.clone();
        async move {
            let request = Request::new(method, args)?;
            poster
                .oneshot(request)
                .await
                .map_err(|e| Error::from_layer(e.into()))
        }
    }
}

/// What the generated code calls; not a public API.
#[doc(hidden)]
pub mod __private {
    use super::*;

    pub use crate::handler::Params;

    /// Routes one method of a service, with its description.
    pub fn route<H: Handler<M>, M: 'static>(
        router: Router,
        info: &'static MethodInfo,
        handler: H,
    ) -> Router {
        router.route_described(info, handler)
    }

    /// A `Result` method's reply: `Ok` as the value, `Err` as an error reply with `code`, the
    /// error's `Display` as its message and the error itself as its data.
    pub fn reply_result<T: Serialize, E: Serialize + fmt::Display>(
        result: Result<T, E>,
        code: i64,
    ) -> Result<Json<T>, RpcError> {
        result.map(Json).map_err(|error| {
            let message = error.to_string();
            match serde_json::to_value(&error) {
                Ok(data) => RpcError::new(code, message).with_data(data),
                Err(_) => RpcError::new(code, message),
            }
        })
    }

    /// The client's side of [`reply_result`]: an error reply with `code` whose data is an `E`
    /// is the method's `Err`; every other error stays a [`crate::Error`], unchanged.
    pub fn split_result<T, E: DeserializeOwned>(
        reply: Result<T, Error>,
        code: i64,
    ) -> Result<Result<T, E>, Error> {
        match reply {
            Ok(value) => Ok(Ok(value)),
            Err(error) => {
                let method_error = error
                    .remote()
                    .filter(|rpc| rpc.code == code)
                    .and_then(|rpc| rpc.data.as_ref())
                    .and_then(|data| E::deserialize(data).ok());
                match method_error {
                    Some(method_error) => Ok(Err(method_error)),
                    None => Err(error),
                }
            }
        }
    }
}
