//! Typed services: a trait of `async fn`s, made by [`#[diarrhoea::service]`](crate::service)
//! into [`Router`] routes for the server and a typed client for callers, on protocol v1's wire.
//!
//! # A trait or a Router?
//!
//! Use a **service trait** when both ends are Rust and share a crate: the compiler checks
//! every method name, argument list and result at both ends, the client needs no strings,
//! and `$/methods` describes each method. Use a **[`Router`]** for handlers bound at run time,
//! variadic methods (`Args`), a catch-all (`fallback`), per-route tower layers
//! (`route_service`), or to speak to a peer that is not Rust (the Node demos do). The two
//! mix: a trait's `into_router()` is an ordinary Router, and [`Router::merge`] joins it with
//! others. The wire is the same either way, so a Node peer or `socat` calls a typed service
//! by name, and an untyped `conn.call("add", (2, 3))` still works.
//!
//! ```
//! use diarrhoea::{Connection, PeerInfo};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! pub enum DivError { ByZero }
//!
//! impl std::fmt::Display for DivError {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
//!         f.write_str("division by zero")
//!     }
//! }
//!
//! /// A calculator: this doc comment reaches `CalcClient` too.
//! #[diarrhoea::service]
//! pub trait Calc {
//!     /// Adds two numbers.
//!     async fn add(&self, a: i64, b: i64) -> i64;
//!     async fn div(&self, a: i64, b: i64) -> Result<i64, DivError>;
//!     #[rpc(notification)]
//!     async fn log(&self, line: String);
//!     #[rpc(name = "whoAmI")]
//!     async fn who_am_i(&self, #[context] peer: PeerInfo) -> Option<i32>;
//! }
//!
//! struct MyCalc;
//!
//! impl Calc for MyCalc {
//!     async fn add(&self, a: i64, b: i64) -> i64 { a + b }
//!     async fn div(&self, a: i64, b: i64) -> Result<i64, DivError> {
//!         if b == 0 { Err(DivError::ByZero) } else { Ok(a / b) }
//!     }
//!     async fn log(&self, line: String) { println!("{line}") }
//!     async fn who_am_i(&self, peer: PeerInfo) -> Option<i32> {
//!         peer.credentials().and_then(|c| c.pid)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), diarrhoea::Error> {
//! let (server, conn) = Connection::pair()?;
//! server.set_service(MyCalc.into_router());
//!
//! let calc = CalcClient::new(conn.clone());
//! assert_eq!(calc.add(2, 3).await?, 5);
//! assert_eq!(calc.div(1, 0).await?, Err(DivError::ByZero));
//! calc.log("hi".into()).await?;
//! assert_eq!(calc.who_am_i().await?, Some(std::process::id() as i32));
//! # Ok(()) }
//! ```
//!
//! # The trait
//!
//! Every method is an `async fn` taking `&self`. The macro declares each as
//! `fn m(&self, ..) -> impl Future<Output = T> + Send`, so an implementation writes a plain
//! `async fn` (no `async_trait`, no boxing) and its future runs on a multi-thread runtime; a
//! method may have a default body. It adds the provided method
//! `fn into_router(self) -> Router` (for `Self: Sized + Send + Sync + 'static`): one route
//! per method, so tower layers, deadlines, cancellation (`$/cancel` drops the method's future)
//! and every error reply (-32602 for arguments that do not fit, -32601 for unknown names)
//! behave as for a hand-written route.
//!
//! # Parameters
//!
//! Positional on the wire, in declaration order: `add(&self, a: i64, b: i64)` is
//! `["add",[a,b],id]`, and each type is `Serialize + Deserialize`. A parameter marked
//! `#[context]` is taken from the request instead, like a handler's context parameter
//! ([`FromContext`](crate::FromContext)): [`Connection`] (to call or post back),
//! [`PeerInfo`](crate::PeerInfo), [`Deadline`](crate::Deadline), `Option<Deadline>`, or
//! `CancellationToken`. It may stand anywhere in the list, is not sent, and is not a parameter
//! of the client's method. At most 4 context and 12 other parameters; a missing trailing
//! `Option` argument reads as `None`, as for handlers.
//!
//! # Results and errors
//!
//! - `-> T` (or nothing): the reply is `T` (`null`); the client's method returns
//!   `Result<T, diarrhoea::Error>`.
//! - `-> Result<T, E>` with `E: Serialize + DeserializeOwned + Display`: `Ok` is the reply;
//!   `Err(e)` is an ordinary error reply `[id,null,{"code":-32000,"message":"<e as Display>",
//!   "data":<e as JSON>}]` ([`code::SERVICE_ERROR`](crate::code::SERVICE_ERROR)), so a peer
//!   that is not Rust sees a conventional error. The client's method returns
//!   `Result<Result<T, E>, diarrhoea::Error>`: an error reply with the method's code whose data
//!   is an `E` becomes `Ok(Err(e))`; every other failure (the connection closed, a timeout,
//!   -32602, another code, data that is not an `E`) stays the outer [`Error`], unchanged.
//!   `#[rpc(code = N)]` chooses another code, outside the protocol's (-32768 to -32000, and
//!   -32800). The return type must be spelled `Result<T, E>` (any path ending in `Result`
//!   with two arguments); an alias such as `io::Result<T>` is a plain value.
//!
//! # Streams
//!
//! A method returning [`StreamReply<T>`](crate::StreamReply) streams (see the
//! [`protocol`](crate::protocol)'s streams): the route answers with its items, paced by the
//! caller's credit, and the client's method is not `async` but returns a
//! [`CallStream<T>`](crate::CallStream) at once, sent when first polled. `$/methods` describes
//! it with the kind `"stream"`. An error ends the stream through its items
//! ([`StreamReply::try_new`](crate::StreamReply::try_new)); `Result<StreamReply<T>, E>` does
//! not compile. A client made with `from_services` cannot stream (a stream needs the
//! connection's own table of calls): its stream fails at once with [`Error::is_config`].
//!
//! ```
//! use diarrhoea::StreamReply;
//! use futures_util::{stream, StreamExt};
//!
//! #[diarrhoea::service]
//! trait Counter {
//!     async fn count(&self, n: u64) -> StreamReply<u64>;
//! }
//!
//! struct MyCounter;
//!
//! impl Counter for MyCounter {
//!     async fn count(&self, n: u64) -> StreamReply<u64> {
//!         StreamReply::new(stream::iter(0..n)).trailer(n)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), diarrhoea::Error> {
//! let (server, conn) = diarrhoea::Connection::pair()?;
//! server.set_service(MyCounter.into_router());
//! let items: Vec<u64> = CounterClient::new(conn).count(3).map(|item| item.unwrap()).collect().await;
//! assert_eq!(items, [0, 1, 2]);
//! # Ok(()) }
//! ```
//!
//! # Names
//!
//! The wire name is the fn name; `#[rpc(name = "whoAmI")]` renames one method;
//! `#[diarrhoea::service(namespace = "calc")]` prefixes every name (`calc.add`,
//! `calc.whoAmI`). `#[rpc(notification)]` makes a method a notification (`["log",["hi"]]`,
//! never answered; the client's method returns once the frame is queued), and
//! `#[rpc(idempotent)]` lists it in the client's `IDEMPOTENT`, which
//! [`PoolBuilder::idempotent`](crate::pool::PoolBuilder::idempotent) takes, so a pool retries
//! it on another worker. These fail to compile, each with a message at the offending tokens:
//! a generic method (or trait), a method that is not `async`, a receiver other than `&self`,
//! a name starting with `$/`, two methods with one wire name, a notification with a return
//! type, a reserved `code`, and any item that is not a method.
//!
//! # The client
//!
//! `#[diarrhoea::service] trait Calc` also makes `CalcClient<R = Connection>`, with the
//! trait's visibility and docs: one method per trait method, taking `&self` and the
//! non-context parameters in order. It is `Clone` and cheap (it holds what it sends through).
//!
//! - `CalcClient::new(conn)` over a [`Connection`], `CalcClient::new(pool)` over a [`Pool`]:
//!   a call is exactly `conn.call(name, args)` (or `pool.call`), so it costs what they cost.
//! - `CalcClient::from_services(caller, poster)` over any tower stacks of [`Services`]: a
//!   `Timeout` around `conn.caller()`, a `ConcurrencyLimit` around `pool.caller()`.
//! - `CalcClient::METHODS` describes every method ([`MethodInfo`]: wire name, kind,
//!   parameter names); `CalcClient::IDEMPOTENT` lists the idempotent ones' names.
//!
//! # `$/methods`
//!
//! Every connection hands `["$/methods",[],id]` to its service. A [`Router`] answers with
//! the sorted list of the methods it routes (not its fallback): the name of each, or for a
//! method of a typed service its description, `{"name":"add","kind":"request",
//! "params":["a","b"]}`. A service of your own sees it as any other method name, and answers
//! -32601 if it does not know it. Other `$/` names stay the protocol's.
//!
//! # From Node
//!
//! The wire is protocol v1, so a Node peer calls a typed service by its wire names. The Node
//! library (diarrhoea 1.1.0) posts notifications, `client.post_message('log', 'hi')`; it has
//! no calls, so a Node program that wants replies writes frames itself (tests/service.rs runs
//! this against `Calc`):
//!
//! ```text
//! const sock = require('net').createConnection('./calc.sock')
//! require('readline').createInterface({ input: sock })
//!   .on('line', (line) => console.log(line))            // [1,5], then the error reply
//! sock.write(JSON.stringify(['log', ['from node']]) + '\n')  // a notification
//! sock.write(JSON.stringify(['add', [2, 3], 1]) + '\n')      // a call, answered [1,5]
//! sock.write(JSON.stringify(['div', [1, 0], 2]) + '\n')
//! // [2,null,{"code":-32000,"message":"division by zero","data":"ByZero"}]
//! ```

use std::fmt;
use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tower::{Service, ServiceExt};

use crate::connection::{CallStream, Connection};
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

    /// Calls `method`, which answers with a stream of items
    /// ([`Connection::call_stream`]).
    fn call_stream<T, A>(&self, method: &'static str, args: A) -> CallStream<T>
    where
        T: DeserializeOwned,
        A: Serialize;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::Connection {}
    impl Sealed for crate::pool::Pool {}
    impl<C, P> Sealed for super::Services<C, P> {}
}

/// A [`Connection`] and a [`Pool`] have the same three methods: a typed call is exactly theirs.
macro_rules! remote_by_its_own_methods {
    ($($remote:ty),*) => {$(
        impl Remote for $remote {
            fn call<R, A>(
                &self,
                method: &'static str,
                args: A,
            ) -> impl Future<Output = Result<R, Error>> + Send
            where
                R: DeserializeOwned,
                A: Serialize + Send,
            {
                <$remote>::call(self, method, args)
            }

            fn call_stream<T, A>(&self, method: &'static str, args: A) -> CallStream<T>
            where
                T: DeserializeOwned,
                A: Serialize,
            {
                <$remote>::call_stream(self, method, args)
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
    )*};
}

remote_by_its_own_methods!(Connection, Pool);

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

    /// A stream needs a connection's own table of calls, which a tower stack does not give:
    /// the stream fails at its first poll with [`Error::is_config`]. Stream through a
    /// client over a [`Connection`] or a [`Pool`].
    fn call_stream<T, A>(&self, method: &'static str, _args: A) -> CallStream<T>
    where
        T: DeserializeOwned,
        A: Serialize,
    {
        let refused = Error::config(format!(
            "`{method}` streams, and a client over tower services cannot stream: \
             make the client over a Connection or a Pool"
        ));
        CallStream::failed(refused)
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
