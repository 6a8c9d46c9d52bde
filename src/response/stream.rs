//! [`StreamReply`]: what a handler returns to answer a call with a stream of items, then a
//! trailer; and [`StreamBody`], the same with its item type erased, as it travels in a
//! [`Response`] through the tower stack to the connection (or the HTTP route) that runs it.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{BufMut, BytesMut};
use futures_core::Stream;
use pin_project_lite::pin_project;
use serde::Serialize;

use super::{IntoReply, Response};
use crate::error::RpcError;

/// A handler's answer as a stream of items of type `T`, then a trailer: the call's one
/// ordinary reply, after the last item.
///
/// The caller asks for a stream with `meta.stream` (see the [`protocol`](crate::protocol));
/// each item goes out as `["$/item",[id,<item>]]`, never more than the credit the caller has
/// granted, and the stream is polled only while credit is left. It is dropped as soon as the
/// call is cancelled, its deadline passes (a deadline covers the whole stream) or the
/// connection closes. Over HTTP (feature `axum`) the items are NDJSON lines or server-sent
/// events, paced by the HTTP connection.
///
/// Each stream counts against [`Config::max_streams`](crate::Config::max_streams) while it
/// runs, not against `max_concurrent_requests`. A plain call (without `meta.stream`) to a
/// method that streams is answered -32600.
///
/// ```
/// use diarrhoea::{Router, RpcError, StreamReply};
///
/// async fn count(n: u64) -> StreamReply<u64> {
///     // Any `futures_core::Stream`; here one made of an iterator.
///     StreamReply::new(Iter(0..n)).trailer(n)
/// }
///
/// async fn lines(names: Vec<String>) -> StreamReply<String> {
///     // Items that can fail: the first `Err` ends the stream with an error reply.
///     let items = names.into_iter().map(|name| {
///         if name.is_empty() {
///             Err(RpcError::new(4000, "empty name"))
///         } else {
///             Ok(format!("hello, {name}"))
///         }
///     });
///     StreamReply::try_new(Iter(items))
/// }
///
/// let router = Router::new().route("count", count).route("lines", lines);
/// # struct Iter<I>(I);
/// # impl<I: Iterator + Unpin> futures_core::Stream for Iter<I> {
/// #     type Item = I::Item;
/// #     fn poll_next(
/// #         mut self: std::pin::Pin<&mut Self>,
/// #         _: &mut std::task::Context<'_>,
/// #     ) -> std::task::Poll<Option<I::Item>> {
/// #         std::task::Poll::Ready(self.0.next())
/// #     }
/// # }
/// ```
#[must_use = "a StreamReply does nothing until a handler returns it"]
pub struct StreamReply<T> {
    body: StreamBody,
    _items: PhantomData<fn() -> T>,
}

impl<T: Serialize + Send + 'static> StreamReply<T> {
    /// Items that cannot fail.
    pub fn new<S>(items: S) -> Self
    where
        S: Stream<Item = T> + Send + 'static,
    {
        Self::from_source(Source {
            items,
            held: None,
            map: Ok,
        })
    }

    /// Items that can fail: the first `Err` ends the stream with an error reply (no trailer).
    pub fn try_new<S, E>(items: S) -> Self
    where
        S: Stream<Item = Result<T, E>> + Send + 'static,
        E: Into<RpcError> + 'static,
    {
        Self::from_source(Source {
            items,
            held: None,
            map: |item: Result<T, E>| item.map_err(Into::into),
        })
    }

    fn from_source<S, I>(source: Source<S, I, T>) -> Self
    where
        S: Stream<Item = I> + Send + 'static,
        I: 'static,
    {
        StreamReply {
            body: StreamBody {
                items: Box::pin(source),
                trailer: Trailer::Ready(Ok(Response::null())),
            },
            _items: PhantomData,
        }
    }
}

impl<T> StreamReply<T> {
    /// The value of the ending reply, `[id,<trailer>]`, sent after the last item (default
    /// `null`). A trailer that does not serialize ends the stream with -32603.
    pub fn trailer(mut self, trailer: impl Serialize) -> Self {
        self.body.trailer = Trailer::Ready(Response::new(&trailer));
        self
    }

    /// As [`trailer`](Self::trailer), computed after the last item (say, a count kept by the
    /// stream); not called when the stream ends early.
    pub fn trailer_with<F, R>(mut self, trailer: F) -> Self
    where
        F: FnOnce() -> R + Send + 'static,
        R: IntoReply,
    {
        self.body.trailer = Trailer::Later(Box::new(move || trailer().into_reply()));
        self
    }
}

impl<T> fmt::Debug for StreamReply<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamReply").finish_non_exhaustive()
    }
}

impl<T> IntoReply for StreamReply<T> {
    fn into_reply(self) -> Result<Response, RpcError> {
        Ok(Response::stream(self.body))
    }
}

/// A stream reply with its item type erased: what a [`Response`] carries.
pub(crate) struct StreamBody {
    /// Boxed once per stream; the items themselves are not boxed.
    pub(crate) items: Pin<Box<dyn ItemSource>>,
    trailer: Trailer,
}

impl StreamBody {
    /// The ending reply, once the items are done.
    pub(crate) fn into_trailer(self) -> Result<Response, RpcError> {
        match self.trailer {
            Trailer::Ready(trailer) => trailer,
            Trailer::Later(trailer) => trailer(),
        }
    }
}

enum Trailer {
    Ready(Result<Response, RpcError>),
    Later(Box<dyn FnOnce() -> Result<Response, RpcError> + Send>),
}

/// A stream of items of some type, polled one at a time and written as JSON where it goes,
/// with no copy of its own (into the outgoing buffer, or an HTTP body's chunk).
pub(crate) trait ItemSource: Send {
    /// The next item, held for [`ItemSource::write_item`]; `None` once the stream ends, an
    /// error if it ends with one.
    fn poll_item(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<(), RpcError>>>;

    /// Appends the held item's JSON to `buf`, on one line. On error, `buf` may hold part of
    /// it: the caller takes it out.
    fn write_item(self: Pin<&mut Self>, buf: &mut BytesMut) -> Result<(), RpcError>;
}

pin_project! {
    struct Source<S, I, T> {
        #[pin]
        items: S,
        held: Option<T>,
        map: fn(I) -> Result<T, RpcError>,
    }
}

impl<S, I, T> ItemSource for Source<S, I, T>
where
    S: Stream<Item = I> + Send,
    T: Serialize + Send,
{
    fn poll_item(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<(), RpcError>>> {
        let this = self.project();
        let Some(item) = ready!(this.items.poll_next(cx)) else {
            return Poll::Ready(None);
        };
        Poll::Ready(Some((this.map)(item).map(|item| *this.held = Some(item))))
    }

    fn write_item(self: Pin<&mut Self>, buf: &mut BytesMut) -> Result<(), RpcError> {
        let Some(item) = self.project().held.take() else {
            return Err(RpcError::internal("no stream item to write"));
        };
        let start = buf.len();
        serde_json::to_writer(buf.writer(), &item)
            .map_err(|e| RpcError::internal(format!("item could not be serialized: {e}")))?;
        // Compact JSON has no line break, but a `RawValue` item keeps its own: outside
        // strings (where JSON allows none) a space means the same.
        let written = &mut buf[start..];
        if memchr::memchr(b'\n', written).is_some() {
            written
                .iter_mut()
                .filter(|b| **b == b'\n')
                .for_each(|b| *b = b' ');
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Iter<I>(I);

    impl<I: Iterator + Unpin> Stream for Iter<I> {
        type Item = I::Item;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<I::Item>> {
            Poll::Ready(self.0.next())
        }
    }

    fn drain(body: &mut StreamBody) -> (Vec<String>, Option<RpcError>) {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut items = Vec::new();
        loop {
            match body.items.as_mut().poll_item(&mut cx) {
                Poll::Ready(Some(Ok(()))) => {
                    let mut buf = BytesMut::new();
                    body.items.as_mut().write_item(&mut buf).unwrap();
                    items.push(String::from_utf8(buf.to_vec()).unwrap());
                }
                Poll::Ready(Some(Err(e))) => return (items, Some(e)),
                Poll::Ready(None) => return (items, None),
                Poll::Pending => panic!("an iterator is always ready"),
            }
        }
    }

    fn body<T>(reply: StreamReply<T>) -> StreamBody {
        let response = reply.into_reply().unwrap();
        assert!(response.is_stream());
        response.into_stream().ok().flatten().expect("a stream")
    }

    #[test]
    fn items_are_written_as_json_and_the_trailer_comes_last() {
        let mut b = body(StreamReply::new(Iter(0..3u64)).trailer("done"));
        assert_eq!(
            drain(&mut b),
            (vec!["0".into(), "1".into(), "2".into()], None)
        );
        assert_eq!(b.into_trailer().unwrap().get(), r#""done""#);
        let b = body(StreamReply::new(Iter(0..0u64)));
        assert_eq!(b.into_trailer().unwrap(), Response::null());
    }

    #[test]
    fn an_err_item_ends_the_stream_with_its_error() {
        let items = vec![Ok("a"), Err(RpcError::new(4000, "bad")), Ok("c")];
        let mut b = body(StreamReply::try_new(Iter(items.into_iter())));
        let (written, error) = drain(&mut b);
        assert_eq!(written, vec![r#""a""#.to_string()]);
        assert_eq!(error.unwrap().code, 4000);
    }

    #[test]
    fn a_trailer_made_later_and_raw_items_with_line_breaks() {
        let raw = serde_json::value::RawValue::from_string("[1,\n2]".into()).unwrap();
        let mut b = body(StreamReply::new(Iter(std::iter::once(raw))).trailer_with(|| 7u64));
        assert_eq!(drain(&mut b).0, vec!["[1, 2]".to_string()]);
        assert_eq!(b.into_trailer().unwrap().get(), "7");
    }
}
