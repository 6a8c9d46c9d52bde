//! [`Request`]: an incoming or outgoing call, as it travels through a tower stack.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::args::Args;
use crate::error::Error;
use crate::frame::{Frame, Meta};
use crate::peer::PeerInfo;

/// Where an incoming request came from: the connection, seen from below it, so that requests
/// sit below connections. The connection module reads it back (`Request::connection`).
pub(crate) trait Origin: Send + Sync + 'static {
    /// Who is on the other end.
    fn peer(&self) -> &PeerInfo;

    /// The origin as `Any`, to downcast to the connection's own type.
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

/// When an incoming request must be answered by ([`Request::deadline`]); calls made while
/// serving it inherit what is left of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub tokio::time::Instant);

impl Deadline {
    /// How long is left; zero once it has passed.
    pub fn remaining(&self) -> std::time::Duration {
        self.0
            .saturating_duration_since(tokio::time::Instant::now())
    }
}

/// [`Request::id`] of a notification.
const NO_ID: u64 = u64::MAX;

/// A call or notification: the value that goes through a [`tower::Service`] stack.
///
/// On the receiving side the connection builds one from every incoming call and hands it to the
/// bound service; on the calling side [`Caller`](crate::Caller) and
/// [`Poster`](crate::Poster) take one and write it to the peer.
///
/// The arguments of an incoming request stay in the connection's read buffer, and keep a
/// chunk of it (at most 32 KiB) alive as long as the request lives. A service that keeps
/// arguments beyond its call should keep [`Request::take_args`] (a copy), not the request.
pub struct Request {
    /// Shared, so error reports can keep the name without copying it.
    method: Arc<str>,
    args: Args,
    /// The id of a call that expects a reply; [`NO_ID`] for a notification. Not an `Option`:
    /// 8 bytes less keep a request within the 128 bytes that are moved without a call to
    /// `memcpy` (ids are below 2^53).
    id: u64,
    /// Boxed, and `None` when empty (most requests): `Meta` is 32 bytes, and a request stays
    /// within the 128 bytes moved without a call to `memcpy`.
    meta: Option<Box<Meta>>,
    /// The connection a request arrived on, so handlers can answer or call back.
    origin: Option<Arc<dyn Origin>>,
    /// Who sent the request, when set explicitly ([`Request::set_peer`]); otherwise the
    /// origin knows. Boxed: most requests never set it, and a request is moved often.
    peer: Option<Box<PeerInfo>>,
    /// When an incoming request must be answered by.
    deadline: Option<Deadline>,
    extensions: Extensions,
}

impl Request {
    /// A request for `method` with `args`, which must serialize to a JSON array (a tuple,
    /// an array, a `Vec`, or `()` for none).
    ///
    /// ```
    /// let req = diarrhoea::Request::new("echo", ("a", 1)).unwrap();
    /// assert_eq!(req.args().get(), r#"["a",1]"#);
    /// ```
    pub fn new(method: impl Into<Arc<str>>, args: impl Serialize) -> Result<Self, Error> {
        Ok(Self::from_parts(method, Args::new(&args)?))
    }

    /// A request from already-encoded arguments.
    pub fn from_parts(method: impl Into<Arc<str>>, args: Args) -> Self {
        let method = method.into();
        Request {
            method,
            args,
            id: NO_ID,
            meta: None,
            origin: None,
            peer: None,
            deadline: None,
            extensions: Extensions::default(),
        }
    }

    #[inline]
    pub(crate) fn incoming(frame: Frame, origin: Arc<dyn Origin>) -> Option<Self> {
        let (method, args, id, meta) = match frame {
            Frame::Notification { method, args } => (method, args, NO_ID, Meta::default()),
            Frame::Request {
                method,
                args,
                id,
                meta,
            } => (method, args, id, meta),
            Frame::Reply { .. } | Frame::ConnectionError(_) => return None,
        };
        Some(Request {
            method,
            args,
            id,
            meta: (meta != Meta::default()).then(|| Box::new(meta)),
            peer: None,
            origin: Some(origin),
            deadline: None,
            extensions: Extensions::default(),
        })
    }

    /// The method name.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The method name, shared.
    pub fn method_arc(&self) -> &Arc<str> {
        &self.method
    }

    /// The positional arguments, still as JSON.
    pub fn args(&self) -> &Args {
        &self.args
    }

    /// Takes the arguments out, leaving `[]`.
    ///
    /// They are the caller's to keep: the arguments of an incoming call are copied out of
    /// the connection's read buffer here (reading them through [`Request::args`] costs no
    /// copy).
    pub fn take_args(&mut self) -> Args {
        std::mem::take(&mut self.args).detached()
    }

    /// Replaces the arguments (by-name ones put in order by a typed service's route).
    #[cfg_attr(not(feature = "macros"), allow(dead_code))]
    pub(crate) fn set_args(&mut self, args: Args) {
        self.args = args;
    }

    /// The id of an incoming call; `None` for a notification (and for an outgoing request
    /// before it is sent).
    pub fn id(&self) -> Option<u64> {
        (self.id != NO_ID).then_some(self.id)
    }

    /// Whether the sender expects a reply.
    pub fn is_call(&self) -> bool {
        self.id != NO_ID
    }

    /// Request metadata (`timeout_ms`, `stream`).
    pub fn meta(&self) -> &Meta {
        static EMPTY: Meta = Meta {
            timeout_ms: None,
            stream: None,
        };
        self.meta.as_deref().unwrap_or(&EMPTY)
    }

    /// Mutable request metadata, e.g. to set `timeout_ms` on an outgoing call.
    pub fn meta_mut(&mut self) -> &mut Meta {
        self.meta.get_or_insert_with(Box::default)
    }

    pub(crate) fn origin(&self) -> Option<&Arc<dyn Origin>> {
        self.origin.as_ref()
    }

    /// Who sent an incoming request: the connection id and what the transport knows of the
    /// peer.
    pub fn peer(&self) -> Option<&PeerInfo> {
        match &self.peer {
            Some(peer) => Some(peer),
            None => self.origin.as_deref().map(Origin::peer),
        }
    }

    /// When an incoming request must be answered by: the earlier of
    /// [`Config::request_timeout`](crate::Config::request_timeout) and the peer's
    /// `meta.timeout_ms`, counted from when the frame was read. After it, the request is
    /// answered -32001 and its handler dropped.
    pub fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }

    /// Sets who sent the request: for proxies, and for testing layers without a socket.
    pub fn set_peer(&mut self, peer: PeerInfo) {
        self.peer = Some(Box::new(peer));
    }

    pub(crate) fn set_deadline(&mut self, deadline: Deadline) {
        self.deadline = Some(deadline);
    }

    /// Per-request values that layers pass to the layers and handlers below them.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Mutable per-request values.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }

    pub(crate) fn into_notification(self) -> Frame {
        Frame::Notification {
            method: self.method,
            args: self.args,
        }
    }

    pub(crate) fn into_call(self, id: u64) -> Frame {
        Frame::Request {
            method: self.method,
            args: self.args,
            id,
            meta: self.meta.map(|meta| *meta).unwrap_or_default(),
        }
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Arguments may hold secrets: they are not printed.
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("id", &self.id())
            .field("meta", self.meta())
            .field("args_len", &self.args.text_len())
            .finish_non_exhaustive()
    }
}

/// A type map for per-request values, allocated only when something is inserted.
#[derive(Default)]
pub struct Extensions {
    // Boxed so a request without extensions carries one pointer, not a whole map.
    #[allow(clippy::box_collection)]
    map: Option<Box<HashMap<TypeId, Box<dyn Any + Send + Sync>>>>,
}

impl Extensions {
    /// Inserts a value, returning the previous value of the same type.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) -> Option<T> {
        self.map
            .get_or_insert_with(Default::default)
            .insert(TypeId::of::<T>(), Box::new(value))
            .and_then(|old| old.downcast().ok().map(|b| *b))
    }

    /// The value of type `T`, if any.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.map.as_ref()?.get(&TypeId::of::<T>())?.downcast_ref()
    }

    /// The value of type `T`, mutably.
    pub fn get_mut<T: Send + Sync + 'static>(&mut self) -> Option<&mut T> {
        self.map
            .as_mut()?
            .get_mut(&TypeId::of::<T>())?
            .downcast_mut()
    }

    /// Removes and returns the value of type `T`.
    pub fn remove<T: Send + Sync + 'static>(&mut self) -> Option<T> {
        self.map
            .as_mut()?
            .remove(&TypeId::of::<T>())?
            .downcast()
            .ok()
            .map(|b| *b)
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extensions")
            .field("len", &self.map.as_ref().map_or(0, |m| m.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_set_by_a_layer_are_read_below_it() {
        #[derive(Debug, PartialEq)]
        struct User(&'static str);
        let mut req = Request::new("m", ()).unwrap();
        assert!(req.extensions().get::<User>().is_none());
        req.extensions_mut().insert(User("ada"));
        assert_eq!(req.extensions().get::<User>(), Some(&User("ada")));
    }

    #[test]
    fn taken_arguments_are_a_copy_of_their_own() {
        let text = r#"["m",[1,2]]"#;
        let bytes = bytes::Bytes::from_static(text.as_bytes());
        let chunk = crate::wire::ChunkMark::default();
        let watch = chunk.watch();
        let line = crate::wire::Line {
            bytes: &bytes,
            chunk: &chunk,
        };
        let mut req =
            Request::from_parts("m", Args::from_wire(&text.as_bytes()[5..10], Some(line)));
        drop(chunk);
        assert!(req.args().in_line(), "read where they are");
        let args = req.take_args();
        assert!(!args.in_line() && !watch.is_held());
        assert_eq!((args.get(), req.args().get()), ("[1,2]", "[]"));
    }

    #[test]
    fn a_request_is_moved_without_a_call_to_memcpy() {
        // LLVM copies up to 128 bytes inline; a request is moved many times on its way from
        // the reader to its handler (and a notification's id is no `Option` for this).
        assert!(std::mem::size_of::<Request>() <= 128);
        assert_eq!(std::mem::size_of::<Args>(), 40);
        let mut req = Request::new("m", ()).unwrap();
        assert_eq!((req.id(), req.is_call()), (None, false));
        req.id = 7;
        assert_eq!((req.id(), req.is_call()), (Some(7), true));
    }

    #[test]
    fn extensions_hold_one_value_per_type() {
        let mut ext = Extensions::default();
        assert_eq!(ext.get::<u32>(), None);
        assert_eq!(ext.insert(5u32), None);
        assert_eq!(ext.insert(6u32), Some(5));
        ext.insert("s");
        *ext.get_mut::<u32>().unwrap() += 1;
        assert_eq!(ext.get::<u32>(), Some(&7));
        assert_eq!(ext.remove::<&str>(), Some("s"));
        assert_eq!(ext.get::<&str>(), None);
    }
}
