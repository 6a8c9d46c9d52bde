//! Typed `async fn`s as handlers: positional arguments deserialize straight from the frame's
//! JSON array into the function's parameter types.
//!
//! A handler is any `Fn(C1, .., Ck, A1, .., An) -> impl Future<Output = impl IntoReply>`:
//! up to 4 context parameters ([`FromContext`]: the `Connection` the request came on, its
//! `CancellationToken`, the [`PeerInfo`], the [`Deadline`], or the raw [`Args`]), in any
//! order, then up to 12 positional arguments that are `Deserialize`.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use serde::de::DeserializeOwned;

use crate::args::Args;
use crate::error::RpcError;
use crate::peer::PeerInfo;
use crate::request::{Deadline, Request};
use crate::response::{IntoReply, Response};

/// The future a type-erased handler returns.
pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<Response, RpcError>> + Send>>;

/// An async function that can be bound to a method name with [`Router::route`].
///
/// A handler takes up to 4 context parameters, in any order ([`FromContext`]: the
/// `Connection` the request came on, to post or call back; the request's
/// `CancellationToken`, cancelled by the peer's `$/cancel`; its [`PeerInfo`]; its
/// [`Deadline`] or `Option<Deadline>`; or all arguments unparsed as [`Args`]), then up to 12
/// positional parameters of any `Deserialize` type, read from the frame's argument array.
/// Missing trailing arguments are read as `null`, so trailing `Option<T>` parameters are
/// optional; arguments that do not fit are answered -32602. It returns anything
/// [`IntoReply`]: `()`, a value, [`Json`](crate::Json)`(T)` for any `Serialize` type, or a
/// `Result` whose error converts into [`RpcError`] (the error reply).
///
/// ```
/// use diarrhoea::{Connection, Deadline, Router, RpcError};
///
/// async fn greet(peer: Connection, name: String, times: Option<u32>) -> Result<(), diarrhoea::Error> {
///     for _ in 0..times.unwrap_or(1) {
///         peer.post_message("greeting", (format!("hello, {name}"),)).await?;
///     }
///     Ok(())
/// }
///
/// async fn divide(_deadline: Option<Deadline>, a: i64, b: i64) -> Result<i64, RpcError> {
///     a.checked_div(b).ok_or_else(|| RpcError::new(4000, "division by zero"))
/// }
///
/// let router = Router::new().route("greet", greet).route("divide", divide);
/// ```
///
/// `M` only tells the implementations apart (the context and positional parameter types);
/// callers never name it.
///
/// [`Router::route`]: crate::Router::route
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a diarrhoea handler",
    label = "not an async fn of deserializable arguments",
    note = "a handler is an `async fn(A1, .., An) -> R` where every `Ai: Deserialize` and `R: IntoReply`",
    note = "context parameters (`Connection`, `CancellationToken`, `PeerInfo`, `Deadline`, `Args`) come first, at most 4"
)]
pub trait Handler<M>: Clone + Send + Sync + 'static {
    /// Runs the handler on a request.
    fn call(
        &self,
        req: Request,
    ) -> impl Future<Output = Result<Response, RpcError>> + Send + 'static;
}

/// Values a handler can take as context parameters (before its positional arguments), taken
/// from the request rather than from its arguments.
///
/// Implemented here for [`Args`], [`PeerInfo`], [`Deadline`] and `Option<Deadline>`; the
/// connection module adds `Connection` and `CancellationToken`.
pub trait FromContext: Sized + Send + 'static {
    /// Extracts the value.
    fn from_request(req: &mut Request) -> Result<Self, RpcError>;
}

/// Who sent the request.
impl FromContext for PeerInfo {
    fn from_request(req: &mut Request) -> Result<Self, RpcError> {
        req.peer()
            .cloned()
            .ok_or_else(|| RpcError::internal("handler needs PeerInfo but the request has none"))
    }
}

/// When the request must be answered by: [`Config::request_timeout`](crate::Config) or the
/// peer's `meta.timeout_ms`. A request without either fails with -32603: take
/// `Option<Deadline>` where a deadline is optional.
impl FromContext for Deadline {
    fn from_request(req: &mut Request) -> Result<Self, RpcError> {
        req.deadline()
            .ok_or_else(|| RpcError::internal("handler needs a Deadline but the request has none"))
    }
}

/// When the request must be answered by, if it has a deadline.
impl FromContext for Option<Deadline> {
    fn from_request(req: &mut Request) -> Result<Self, RpcError> {
        Ok(req.deadline())
    }
}

/// All positional arguments, unparsed: for variadic handlers such as `echo(...args)`.
impl FromContext for Args {
    fn from_request(req: &mut Request) -> Result<Self, RpcError> {
        Ok(req.take_args())
    }
}

/// Marks a handler by its context parameter types `C` and positional parameter types `A`.
#[doc(hidden)]
#[derive(Debug)]
pub struct Params<C, A>(PhantomData<(C, A)>);

/// By-name arguments (JSON-RPC 2.0's `params` object) given to a handler that has no names
/// for its parameters: only a typed service's routes do.
pub(crate) fn by_name_refused() -> RpcError {
    RpcError::invalid_params(
        "by-name params are not accepted here: positional arguments (a JSON array) are \
         expected; only a typed service (#[diarrhoea::service]) maps parameter names",
    )
}

/// Arguments that fit no parameter list become -32602, never a dropped connection.
///
/// Missing trailing arguments are read as `null` (Node passes them as `undefined`), so trailing
/// `Option` parameters are optional; any other parameter still needs its argument.
fn parse_args<T: DeserializeOwned>(args: &Args, arity: usize) -> Result<T, RpcError> {
    if args.fds().is_some() {
        return parse_args_with_fds(args, arity);
    }
    let error = match args.parse() {
        Ok(parsed) => return Ok(parsed),
        Err(e) => e,
    };
    if args.get().starts_with('{') {
        return Err(by_name_refused());
    }
    let given: Vec<&serde_json::value::RawValue> =
        serde_json::from_str(args.get()).map_err(|_| RpcError::invalid_params(&error))?;
    if given.len() >= arity {
        return Err(RpcError::invalid_params(error));
    }
    serde_json::from_str(&padded(&given, arity)).map_err(|_| RpcError::invalid_params(error))
}

/// As [`parse_args`], for arguments with descriptors: padded first, then read once, as
/// reading an `Fd` takes its descriptor (a first try that failed would have taken some).
#[cold]
fn parse_args_with_fds<T: DeserializeOwned>(args: &Args, arity: usize) -> Result<T, RpcError> {
    let given: Vec<&serde_json::value::RawValue> =
        serde_json::from_str(args.get()).map_err(RpcError::invalid_params)?;
    let parsed = if given.len() < arity {
        args.parse_text(&padded(&given, arity))
    } else {
        args.parse()
    };
    parsed.map_err(RpcError::invalid_params)
}

/// The arguments `given`, with `null`s after them up to `arity`.
fn padded(given: &[&serde_json::value::RawValue], arity: usize) -> String {
    let mut padded =
        String::with_capacity(given.iter().map(|a| a.get().len() + 1).sum::<usize>() + 5 * arity);
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
    padded
}

/// Zero-argument handlers accept only `[]`.
#[derive(serde::Deserialize)]
struct NoArgs([(); 0]);

macro_rules! impl_handler {
    ([$($ctx:ident),*], [$($arg:ident),*]) => {
        impl<F, Fut, R, $($ctx,)* $($arg,)*> Handler<Params<($($ctx,)*), ($($arg,)*)>> for F
        where
            F: Fn($($ctx,)* $($arg),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            R: IntoReply,
            $($ctx: FromContext,)*
            ($($arg,)*): Positional,
        {
            #[allow(non_snake_case, unused_mut, unused_variables)]
            fn call(&self, mut req: Request) -> impl Future<Output = Result<Response, RpcError>> + Send + 'static {
                let called = (|| {
                    $(let $ctx = <$ctx as FromContext>::from_request(&mut req)?;)*
                    let ($($arg,)*) = <($($arg,)*) as Positional>::parse(&req, <[&str]>::len(&[$(stringify!($ctx)),*]))?;
                    Ok::<_, RpcError>(self($($ctx,)* $($arg),*))
                })();
                async move { called?.await.into_reply() }
            }
        }
    };
}

/// The positional parameters of a handler, read from the request's arguments.
#[doc(hidden)]
pub trait Positional: Sized {
    /// Reads the arguments; `contexts` is how many context parameters come before them.
    fn parse(req: &Request, contexts: usize) -> Result<Self, RpcError>;
}

/// No positional parameters: only `[]`, unless the handler takes context parameters (one of
/// them may be `Args`, which sees every argument itself).
impl Positional for () {
    fn parse(req: &Request, contexts: usize) -> Result<Self, RpcError> {
        if contexts > 0 {
            return Ok(());
        }
        parse_args::<NoArgs>(req.args(), 0).map(|_| ())
    }
}

macro_rules! impl_positional {
    ($($arg:ident),+) => {
        impl<$($arg,)+> Positional for ($($arg,)+)
        where
            ($($arg,)+): DeserializeOwned,
        {
            fn parse(req: &Request, _contexts: usize) -> Result<Self, RpcError> {
                parse_args::<($($arg,)+)>(req.args(), [$(stringify!($arg)),+].len())
            }
        }
    };
}

impl_positional!(A1);
impl_positional!(A1, A2);
impl_positional!(A1, A2, A3);
impl_positional!(A1, A2, A3, A4);
impl_positional!(A1, A2, A3, A4, A5);
impl_positional!(A1, A2, A3, A4, A5, A6);
impl_positional!(A1, A2, A3, A4, A5, A6, A7);
impl_positional!(A1, A2, A3, A4, A5, A6, A7, A8);
impl_positional!(A1, A2, A3, A4, A5, A6, A7, A8, A9);
impl_positional!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10);
impl_positional!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11);
impl_positional!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12);

impl_handler!([], []);
impl_handler!([], [A1]);
impl_handler!([], [A1, A2]);
impl_handler!([], [A1, A2, A3]);
impl_handler!([], [A1, A2, A3, A4]);
impl_handler!([], [A1, A2, A3, A4, A5]);
impl_handler!([], [A1, A2, A3, A4, A5, A6]);
impl_handler!([], [A1, A2, A3, A4, A5, A6, A7]);
impl_handler!([], [A1, A2, A3, A4, A5, A6, A7, A8]);
impl_handler!([], [A1, A2, A3, A4, A5, A6, A7, A8, A9]);
impl_handler!([], [A1, A2, A3, A4, A5, A6, A7, A8, A9, A10]);
impl_handler!([], [A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11]);
impl_handler!([], [A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12]);
impl_handler!([C1], []);
impl_handler!([C1], [A1]);
impl_handler!([C1], [A1, A2]);
impl_handler!([C1], [A1, A2, A3]);
impl_handler!([C1], [A1, A2, A3, A4]);
impl_handler!([C1], [A1, A2, A3, A4, A5]);
impl_handler!([C1], [A1, A2, A3, A4, A5, A6]);
impl_handler!([C1], [A1, A2, A3, A4, A5, A6, A7]);
impl_handler!([C1], [A1, A2, A3, A4, A5, A6, A7, A8]);
impl_handler!([C1], [A1, A2, A3, A4, A5, A6, A7, A8, A9]);
impl_handler!([C1], [A1, A2, A3, A4, A5, A6, A7, A8, A9, A10]);
impl_handler!([C1], [A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11]);
impl_handler!([C1], [A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12]);
impl_handler!([C1, C2], []);
impl_handler!([C1, C2], [A1]);
impl_handler!([C1, C2], [A1, A2]);
impl_handler!([C1, C2], [A1, A2, A3]);
impl_handler!([C1, C2], [A1, A2, A3, A4]);
impl_handler!([C1, C2], [A1, A2, A3, A4, A5]);
impl_handler!([C1, C2], [A1, A2, A3, A4, A5, A6]);
impl_handler!([C1, C2], [A1, A2, A3, A4, A5, A6, A7]);
impl_handler!([C1, C2], [A1, A2, A3, A4, A5, A6, A7, A8]);
impl_handler!([C1, C2], [A1, A2, A3, A4, A5, A6, A7, A8, A9]);
impl_handler!([C1, C2], [A1, A2, A3, A4, A5, A6, A7, A8, A9, A10]);
impl_handler!([C1, C2], [A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11]);
impl_handler!(
    [C1, C2],
    [A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12]
);
impl_handler!([C1, C2, C3], []);
impl_handler!([C1, C2, C3], [A1]);
impl_handler!([C1, C2, C3], [A1, A2]);
impl_handler!([C1, C2, C3], [A1, A2, A3]);
impl_handler!([C1, C2, C3], [A1, A2, A3, A4]);
impl_handler!([C1, C2, C3], [A1, A2, A3, A4, A5]);
impl_handler!([C1, C2, C3], [A1, A2, A3, A4, A5, A6]);
impl_handler!([C1, C2, C3], [A1, A2, A3, A4, A5, A6, A7]);
impl_handler!([C1, C2, C3], [A1, A2, A3, A4, A5, A6, A7, A8]);
impl_handler!([C1, C2, C3], [A1, A2, A3, A4, A5, A6, A7, A8, A9]);
impl_handler!([C1, C2, C3], [A1, A2, A3, A4, A5, A6, A7, A8, A9, A10]);
impl_handler!([C1, C2, C3], [A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11]);
impl_handler!(
    [C1, C2, C3],
    [A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12]
);
impl_handler!([C1, C2, C3, C4], []);
impl_handler!([C1, C2, C3, C4], [A1]);
impl_handler!([C1, C2, C3, C4], [A1, A2]);
impl_handler!([C1, C2, C3, C4], [A1, A2, A3]);
impl_handler!([C1, C2, C3, C4], [A1, A2, A3, A4]);
impl_handler!([C1, C2, C3, C4], [A1, A2, A3, A4, A5]);
impl_handler!([C1, C2, C3, C4], [A1, A2, A3, A4, A5, A6]);
impl_handler!([C1, C2, C3, C4], [A1, A2, A3, A4, A5, A6, A7]);
impl_handler!([C1, C2, C3, C4], [A1, A2, A3, A4, A5, A6, A7, A8]);
impl_handler!([C1, C2, C3, C4], [A1, A2, A3, A4, A5, A6, A7, A8, A9]);
impl_handler!([C1, C2, C3, C4], [A1, A2, A3, A4, A5, A6, A7, A8, A9, A10]);
impl_handler!(
    [C1, C2, C3, C4],
    [A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11]
);
impl_handler!(
    [C1, C2, C3, C4],
    [A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12]
);

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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;
    use crate::wire::{ChunkMark, Line};

    /// A typed handler parses its arguments when called and drops the request before its
    /// future runs: a slow handler does not keep the read buffer its call arrived in.
    #[tokio::test]
    async fn a_typed_handler_lets_go_of_the_request_before_it_runs() {
        let text = r#"["m",["a",1]]"#;
        let bytes = bytes::Bytes::from_static(text.as_bytes());
        let chunk = ChunkMark::default();
        let watch = chunk.watch();
        let line = Line {
            bytes: &bytes,
            chunk: &chunk,
        };
        let req = Request::from_parts("m", Args::from_wire(&text.as_bytes()[5..12], Some(line)));
        drop(chunk);
        let go = Arc::new(Notify::new());
        let handler = {
            let go = go.clone();
            move |x: String, i: u64| {
                let go = go.clone();
                async move {
                    go.notified().await;
                    format!("{x}{i}")
                }
            }
        };
        let running = Handler::<Params<(), (String, u64)>>::call(&handler, req);
        assert!(
            !watch.is_held(),
            "the request is gone before the handler runs"
        );
        go.notify_one();
        assert_eq!(running.await.unwrap().get(), r#""a1""#);
    }

    #[test]
    fn missing_trailing_arguments_read_as_null() {
        let args = Args::new(&(1,)).unwrap();
        let (a, b): (i64, Option<i64>) = parse_args(&args, 2).unwrap();
        assert_eq!((a, b), (1, None));
        let args = Args::new(&(1, 2)).unwrap();
        assert!(
            parse_args::<(i64,)>(&args, 1).is_err(),
            "one argument too many"
        );
    }

    #[test]
    fn no_positional_parameters_take_only_an_empty_array_unless_a_context_reads_them() {
        let empty = Request::new("m", ()).unwrap();
        let one = Request::new("m", (1,)).unwrap();
        assert!(<() as Positional>::parse(&empty, 0).is_ok());
        assert!(
            <() as Positional>::parse(&one, 0).is_err(),
            "[1] for no parameters"
        );
        // One context parameter (`Args`, say) sees the arguments itself.
        assert!(<() as Positional>::parse(&one, 1).is_ok());
    }

    #[tokio::test]
    async fn an_optional_deadline_is_the_requests_own() {
        let mut req = Request::new("m", ()).unwrap();
        assert_eq!(<Option<Deadline>>::from_request(&mut req).unwrap(), None);
        let deadline = Deadline(tokio::time::Instant::now() + Duration::from_secs(60));
        req.set_deadline(deadline);
        assert_eq!(
            <Option<Deadline>>::from_request(&mut req).unwrap(),
            Some(deadline)
        );
        assert!(deadline.remaining() > Duration::from_secs(30));
    }
}
