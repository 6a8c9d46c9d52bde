//! Typed `async fn`s as handlers: positional arguments deserialize straight from the frame's
//! JSON array into the function's parameter types.
//!
//! A handler is any `Fn(A1, .., An) -> impl Future<Output = impl IntoReply>` (up to 12
//! arguments) whose parameters are `Deserialize`, optionally preceded by one context parameter
//! ([`FromContext`]: the [`Connection`] the request came on, or the raw [`Args`]).

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use serde::de::DeserializeOwned;

use crate::connection::Connection;
use crate::error::RpcError;
use crate::frame::Args;
use crate::request::Request;
use crate::response::{IntoReply, Response};

/// The future a type-erased handler returns.
pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<Response, RpcError>> + Send>>;

/// An async function that can be bound to a method name with [`Router::route`].
///
/// `M` only tells the implementations apart (plain or with a context parameter, and the
/// parameter types); callers never name it.
///
/// [`Router::route`]: crate::Router::route
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a diarrhoea handler",
    label = "not an async fn of deserializable arguments",
    note = "a handler is an `async fn(A1, .., An) -> R` where every `Ai: Deserialize` and `R: IntoReply`",
    note = "an optional first parameter may be `Connection` or `Args`"
)]
pub trait Handler<M>: Clone + Send + Sync + 'static {
    /// Runs the handler on a request.
    fn call(
        &self,
        req: Request,
    ) -> impl Future<Output = Result<Response, RpcError>> + Send + 'static;
}

/// Values a handler can take as its first parameter, taken from the request rather than from
/// its positional arguments.
pub trait FromContext: Sized + Send + 'static {
    /// Extracts the value.
    fn from_request(req: &mut Request) -> Result<Self, RpcError>;
}

impl FromContext for Connection {
    fn from_request(req: &mut Request) -> Result<Self, RpcError> {
        req.connection().cloned().ok_or_else(|| {
            RpcError::internal("handler needs a Connection but the request has none")
        })
    }
}

/// The token cancelled when the peer sends `$/cancel` for this request, for handlers that
/// want to stop cooperatively (the handler's future is dropped either way). Never cancelled
/// for notifications.
impl FromContext for tokio_util::sync::CancellationToken {
    fn from_request(req: &mut Request) -> Result<Self, RpcError> {
        Ok(match (req.connection(), req.id()) {
            (Some(conn), Some(id)) => conn.cancellation(id),
            _ => Self::new(),
        })
    }
}

/// Who sent the request.
impl FromContext for crate::connection::PeerInfo {
    fn from_request(req: &mut Request) -> Result<Self, RpcError> {
        req.peer()
            .copied()
            .ok_or_else(|| RpcError::internal("handler needs PeerInfo but the request has none"))
    }
}

/// All positional arguments, unparsed: for variadic handlers such as `echo(...args)`.
impl FromContext for Args {
    fn from_request(req: &mut Request) -> Result<Self, RpcError> {
        Ok(req.take_args())
    }
}

/// Marks handlers whose parameters are all positional arguments.
#[doc(hidden)]
#[derive(Debug)]
pub struct Positional<T>(PhantomData<T>);

/// Marks handlers whose first parameter is a [`FromContext`] value.
#[doc(hidden)]
#[derive(Debug)]
pub struct WithContext<C, T>(PhantomData<(C, T)>);

/// Arguments that fit no parameter list become -32602, never a dropped connection.
///
/// Missing trailing arguments are read as `null` (Node passes them as `undefined`), so trailing
/// `Option` parameters are optional; any other parameter still needs its argument.
fn parse_args<T: DeserializeOwned>(args: &Args, arity: usize) -> Result<T, RpcError> {
    let error = match args.deserialize() {
        Ok(parsed) => return Ok(parsed),
        Err(e) => e,
    };
    let given: Vec<&serde_json::value::RawValue> =
        serde_json::from_str(args.get()).map_err(|_| RpcError::invalid_params(&error))?;
    if given.len() >= arity {
        return Err(RpcError::invalid_params(error));
    }
    let mut padded = String::with_capacity(args.get().len() + 5 * arity);
    padded.push('[');
    for (i, arg) in given
        .iter()
        .map(|a| a.get())
        .chain(std::iter::repeat("null"))
        .take(arity)
        .enumerate()
    {
        if i > 0 {
            padded.push(',');
        }
        padded.push_str(arg);
    }
    padded.push(']');
    serde_json::from_str(&padded).map_err(|_| RpcError::invalid_params(error))
}

/// Zero-argument handlers accept only `[]`.
#[derive(serde::Deserialize)]
struct NoArgs([(); 0]);

macro_rules! impl_handler {
    ($($arg:ident),*) => {
        impl<F, Fut, R, $($arg,)*> Handler<Positional<($($arg,)*)>> for F
        where
            F: Fn($($arg),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoReply,
            ($($arg,)*): DeserializeOwned,
        {
            #[allow(non_snake_case)]
            fn call(&self, req: Request) -> impl Future<Output = Result<Response, RpcError>> + Send + 'static {
                let called = parse_args::<($($arg,)*)>(req.args(), [$(stringify!($arg)),*].len()).map(|($($arg,)*)| self($($arg),*));
                async move { called?.await.into_reply() }
            }
        }

        impl<F, Fut, R, C, $($arg,)*> Handler<WithContext<C, ($($arg,)*)>> for F
        where
            F: Fn(C, $($arg),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoReply,
            C: FromContext,
            ($($arg,)*): DeserializeOwned,
        {
            #[allow(non_snake_case)]
            fn call(&self, mut req: Request) -> impl Future<Output = Result<Response, RpcError>> + Send + 'static {
                let called = C::from_request(&mut req).and_then(|ctx| {
                    parse_args::<($($arg,)*)>(req.args(), [$(stringify!($arg)),*].len()).map(|($($arg,)*)| self(ctx, $($arg),*))
                });
                async move { called?.await.into_reply() }
            }
        }
    };
}

impl<F, Fut, R> Handler<Positional<()>> for F
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoReply,
{
    fn call(
        &self,
        req: Request,
    ) -> impl Future<Output = Result<Response, RpcError>> + Send + 'static {
        let called = parse_args::<NoArgs>(req.args(), 0).map(|_| self());
        async move { called?.await.into_reply() }
    }
}

impl<F, Fut, R, C> Handler<WithContext<C, ()>> for F
where
    F: Fn(C) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoReply,
    C: FromContext,
{
    fn call(
        &self,
        mut req: Request,
    ) -> impl Future<Output = Result<Response, RpcError>> + Send + 'static {
        // A context-only handler (e.g. taking `Args`) sees all arguments itself.
        let called = C::from_request(&mut req).map(self);
        async move { called?.await.into_reply() }
    }
}

impl_handler!(A1);
impl_handler!(A1, A2);
impl_handler!(A1, A2, A3);
impl_handler!(A1, A2, A3, A4);
impl_handler!(A1, A2, A3, A4, A5);
impl_handler!(A1, A2, A3, A4, A5, A6);
impl_handler!(A1, A2, A3, A4, A5, A6, A7);
impl_handler!(A1, A2, A3, A4, A5, A6, A7, A8);
impl_handler!(A1, A2, A3, A4, A5, A6, A7, A8, A9);
impl_handler!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10);
impl_handler!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11);
impl_handler!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12);

/// A handler with its marker erased, so routes of different types fit in one table.
pub(crate) trait ErasedHandler: Send + Sync + 'static {
    fn call(&self, req: Request) -> HandlerFuture;
}

pub(crate) struct Erased<H, M> {
    handler: H,
    _marker: PhantomData<fn() -> M>,
}

impl<H, M> Erased<H, M> {
    pub(crate) fn new(handler: H) -> Self {
        Erased {
            handler,
            _marker: PhantomData,
        }
    }
}

impl<H: Handler<M>, M: 'static> ErasedHandler for Erased<H, M> {
    fn call(&self, req: Request) -> HandlerFuture {
        Box::pin(self.handler.call(req))
    }
}
