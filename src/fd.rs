//! [`Fd`]: an open file descriptor as an argument, sent beside the frame's bytes.
//!
//! On the wire an `Fd` is a placeholder, `{"$fd":N}`: the index of a descriptor among those
//! sent with the frame as `SCM_RIGHTS` (Unix sockets only; see [`protocol`](crate::protocol)).
//! Serializing one inside an outgoing frame hands a duplicate of it to the connection, which
//! sends it with that frame's bytes; deserializing one inside an incoming call's arguments
//! takes the descriptor that arrived with the frame. Both happen through serde, so an `Fd`
//! is a parameter like any other: in a handler's typed parameters, in a tuple of arguments.
//! The two ends find their frame through a thread-local set around the one place that
//! encodes a frame and the one that reads arguments; outside them an `Fd` refuses to be
//! serialized or deserialized, with an error that says so.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Mutex, PoisonError};

use serde::de::Error as _;
use serde::ser::{Error as _, SerializeMap};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most descriptors one Unix-socket message may carry (Linux's `SCM_MAX_FD`).
pub(crate) const SCM_MAX_FD: usize = 253;

/// The key of a placeholder: `{"$fd":N}`.
const KEY: &str = "$fd";

/// An open file descriptor passed as an argument: a socket, a file, a pipe end.
///
/// A caller passes one like any argument, and a handler takes one like any typed parameter;
/// the descriptor travels beside the frame's bytes (`SCM_RIGHTS`), so this works over a Unix
/// socket connection only (a socket pair, a listener's connection, a pool worker started
/// with [`spawn_socket`](crate::pool::PoolBuilder::spawn_socket)). Over any other transport
/// the send fails before anything is written.
///
/// ```no_run
/// use diarrhoea::{Connection, Fd, Router};
/// use std::io::Write;
///
/// # async fn f() -> Result<(), diarrhoea::BoxError> {
/// // The handler writes into the file it was given.
/// let router = Router::new().route("log_to", |file: Fd, line: String| async move {
///     let mut file = std::fs::File::from(file);
///     file.write_all(line.as_bytes()).is_ok()
/// });
/// # let _ = router;
/// let conn = Connection::connect("./worker.sock").await?;
/// let file = std::fs::File::create("./out.log")?;
/// let ok: bool = conn.call("log_to", (Fd::from(file), "hello\n")).await?;
/// # let _ = ok;
/// # Ok(()) }
/// ```
///
/// Sending duplicates the descriptor into the frame: the sender's own copy stays open until
/// the sender drops it. A handler takes the descriptor that arrived; descriptors of a frame
/// that no handler takes are closed when the request is dropped.
pub struct Fd(OwnedFd);

impl Fd {
    /// The descriptor, to make a `File`, a `TcpStream`, a `UnixStream` of it.
    pub fn into_owned_fd(self) -> OwnedFd {
        self.0
    }

    /// A second descriptor for the same open file (`dup`, close-on-exec).
    pub fn try_clone(&self) -> std::io::Result<Fd> {
        self.0.try_clone().map(Fd)
    }
}

impl fmt::Debug for Fd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Fd").field(&self.0.as_raw_fd()).finish()
    }
}

impl AsFd for Fd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

macro_rules! conversions {
    ($($ty:ty),* $(,)?) => {$(
        impl From<$ty> for Fd {
            fn from(value: $ty) -> Self {
                Fd(OwnedFd::from(value))
            }
        }

        impl From<Fd> for $ty {
            fn from(fd: Fd) -> Self {
                <$ty>::from(fd.0)
            }
        }
    )*};
}

conversions!(
    std::fs::File,
    std::net::TcpStream,
    std::net::TcpListener,
    std::os::unix::net::UnixStream,
    std::os::unix::net::UnixListener,
    std::io::PipeReader,
    std::io::PipeWriter,
);

impl From<OwnedFd> for Fd {
    fn from(fd: OwnedFd) -> Self {
        Fd(fd)
    }
}

impl From<Fd> for OwnedFd {
    fn from(fd: Fd) -> Self {
        fd.0
    }
}

/// A tokio socket goes back to blocking std form first (the runtime lets go of it).
impl TryFrom<tokio::net::TcpStream> for Fd {
    type Error = std::io::Error;

    fn try_from(stream: tokio::net::TcpStream) -> std::io::Result<Self> {
        Ok(Fd::from(stream.into_std()?))
    }
}

/// A tokio socket goes back to blocking std form first (the runtime lets go of it).
impl TryFrom<tokio::net::UnixStream> for Fd {
    type Error = std::io::Error;

    fn try_from(stream: tokio::net::UnixStream) -> std::io::Result<Self> {
        Ok(Fd::from(stream.into_std()?))
    }
}

thread_local! {
    /// While a frame is encoded for a connection: 1 + where its descriptors start in
    /// `HANDED`; 0 outside. A plain const-initialized `Cell`, as `COUNT`: every frame sent
    /// enters and leaves an encoding, and that must cost next to nothing.
    static OPEN: Cell<usize> = const { Cell::new(0) };
    /// How many descriptors `HANDED` holds.
    static COUNT: Cell<usize> = const { Cell::new(0) };
    /// The descriptors the `Fd`s of the frames being encoded handed over.
    static HANDED: RefCell<Vec<OwnedFd>> = const { RefCell::new(Vec::new()) };
    /// Set while an incoming call's arguments are read: the descriptors that came with it.
    static RECEIVING: RefCell<Option<std::sync::Arc<Received>>> = const { RefCell::new(None) };
}

/// An encoding of one frame, entered: the descriptors its `Fd`s hand over are collected
/// until it is dropped (after a panic too: then the outer encoding is open again, and
/// nothing collected stays behind). Nests: an encoding inside collects its own.
pub(crate) struct Encoding {
    outer: usize,
    count: usize,
}

impl Encoding {
    #[inline]
    pub(crate) fn enter() -> Self {
        let count = COUNT.get();
        Encoding {
            outer: OPEN.replace(count + 1),
            count,
        }
    }

    /// Whether an `Fd` handed over a descriptor since `enter`.
    #[inline]
    pub(crate) fn handed_any(&self) -> bool {
        COUNT.get() != self.count
    }

    /// The descriptors handed over since `enter`, in placeholder order.
    #[cold]
    pub(crate) fn take(&self) -> Vec<OwnedFd> {
        let fds = HANDED.with(|fds| fds.borrow_mut().split_off(self.count));
        COUNT.set(self.count);
        fds
    }
}

impl Drop for Encoding {
    #[inline]
    fn drop(&mut self) {
        OPEN.set(self.outer);
        if self.handed_any() {
            drop(self.take());
        }
    }
}

/// Runs `encode` (the encoding of one frame) and returns the descriptors its `Fd`s handed
/// over, in placeholder order: [`Encoding`] around a closure.
pub(crate) fn collect<R>(encode: impl FnOnce() -> R) -> (R, Vec<OwnedFd>) {
    let encoding = Encoding::enter();
    let result = encode();
    let fds = if encoding.handed_any() {
        encoding.take()
    } else {
        Vec::new()
    };
    (result, fds)
}

/// Hands `fd` (a duplicate the caller made) to the frame being encoded; its index among the
/// frame's descriptors, or `None` outside an encoding.
fn hand_over(fd: OwnedFd) -> Option<usize> {
    let base = OPEN.get().checked_sub(1)?;
    HANDED.with(|fds| fds.borrow_mut().push(fd));
    let count = COUNT.get() + 1;
    COUNT.set(count);
    Some(count - 1 - base)
}

/// Hands duplicates of the descriptors of `received` (arguments made with `Fd`s, or a
/// received request sent on) to the frame being encoded, in order: their placeholders
/// count from the frame's first descriptor. Outside an encoding, or for a descriptor
/// already taken, nothing is handed over and the peer refuses the placeholder.
pub(crate) fn hand_over_all(received: &Received) {
    let Ok(fds) = received.duplicate() else {
        return;
    };
    for fd in fds {
        if hand_over(fd).is_none() {
            return;
        }
    }
}

/// The descriptors that arrived with one frame: each taken at most once, the rest closed
/// when the frame's arguments are dropped.
pub(crate) struct Received {
    fds: Mutex<Vec<Option<OwnedFd>>>,
}

impl Received {
    pub(crate) fn new(fds: Vec<OwnedFd>) -> Self {
        Received {
            fds: Mutex::new(fds.into_iter().map(Some).collect()),
        }
    }

    fn take(&self, index: usize) -> Result<OwnedFd, String> {
        let mut fds = self.fds.lock().unwrap_or_else(PoisonError::into_inner);
        let arrived = fds.len();
        match fds.get_mut(index) {
            Some(slot) => slot
                .take()
                .ok_or_else(|| format!("descriptor {index} of this frame was already taken")),
            None => Err(format!(
                "the frame claims descriptor {index}, but {arrived} arrived with it"
            )),
        }
    }

    /// Duplicates of the descriptors not taken yet, to send them on (a received request
    /// forwarded as it is); `Err` if one was taken.
    pub(crate) fn duplicate(&self) -> std::io::Result<Vec<OwnedFd>> {
        let fds = self.fds.lock().unwrap_or_else(PoisonError::into_inner);
        fds.iter()
            .map(|fd| match fd {
                Some(fd) => fd.try_clone(),
                None => Err(std::io::Error::other(
                    "a descriptor of these arguments was already taken",
                )),
            })
            .collect()
    }
}

/// Runs `read` (the reading of one call's arguments) with `received` as the descriptors its
/// `Fd`s take from.
pub(crate) fn receiving<R>(received: &std::sync::Arc<Received>, read: impl FnOnce() -> R) -> R {
    struct Restore(Option<std::sync::Arc<Received>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let before = self.0.take();
            RECEIVING.with(|r| *r.borrow_mut() = before);
        }
    }
    let _restore = Restore(RECEIVING.with(|r| r.borrow_mut().replace(received.clone())));
    read()
}

/// Outside [`receiving`]: the error an `Fd` reports.
const NOT_RECEIVING: &str =
    "no descriptor arrived with these arguments (descriptors come only with a call over a Unix socket)";

/// Outside [`collect`]: the error an `Fd` reports.
const NOT_SENDING: &str =
    "an Fd is sent only as an argument of a call or notification on a connection";

impl Serialize for Fd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let copy = self.0.try_clone().map_err(S::Error::custom)?;
        let index = hand_over(copy).ok_or_else(|| S::Error::custom(NOT_SENDING))?;
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(KEY, &index)?;
        map.end()
    }
}

/// The placeholder as it is read: `{"$fd":N}`, nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Placeholder {
    #[serde(rename = "$fd")]
    index: usize,
}

impl<'de> Deserialize<'de> for Fd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Placeholder { index } = Placeholder::deserialize(deserializer)?;
        RECEIVING.with(|r| match &*r.borrow() {
            Some(received) => received.take(index).map(Fd).map_err(D::Error::custom),
            None => Err(D::Error::custom(NOT_RECEIVING)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let (r, w) = std::io::pipe().unwrap();
        (r.into(), w.into())
    }

    #[test]
    fn outside_a_frame_an_fd_refuses_both_ways() {
        let (r, _w) = pipe();
        let error = serde_json::to_string(&Fd::from(r)).unwrap_err();
        assert!(error.to_string().contains("only as an argument"), "{error}");
        let error = serde_json::from_str::<Fd>(r#"{"$fd":0}"#).unwrap_err();
        assert!(
            error.to_string().contains("no descriptor arrived"),
            "{error}"
        );
    }

    #[test]
    fn encoding_collects_duplicates_in_placeholder_order() {
        let (r, w) = pipe();
        let (a, b) = (Fd::from(r), Fd::from(w));
        let (json, fds) = collect(|| serde_json::to_string(&(1, &a, "x", &b)).unwrap());
        assert_eq!(json, r#"[1,{"$fd":0},"x",{"$fd":1}]"#);
        assert_eq!(fds.len(), 2);
        assert_ne!(fds[0].as_raw_fd(), a.as_raw_fd(), "a duplicate");
        // Nested encodings collect their own, counting from 0; a failed one leaves nothing
        // behind.
        let ((), outer) = collect(|| {
            let (json, inner) = collect(|| serde_json::to_string(&a).unwrap());
            assert_eq!((json.as_str(), inner.len()), (r#"{"$fd":0}"#, 1));
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                collect(|| {
                    serde_json::to_string(&b).unwrap();
                    panic!("an encoder that panics")
                })
            }));
        });
        assert!(outer.is_empty());
        assert_eq!((OPEN.get(), COUNT.get()), (0, 0));
        assert!(HANDED.with(|fds| fds.borrow().is_empty()));
    }

    #[test]
    fn reading_takes_each_descriptor_once_and_says_what_is_missing() {
        let (r, w) = pipe();
        let received = std::sync::Arc::new(Received::new(vec![r, w]));
        let (a, b): (Fd, Fd) = receiving(&received, || {
            serde_json::from_str(r#"[{"$fd":1},{"$fd":0}]"#).unwrap()
        });
        assert!(a.as_raw_fd() != b.as_raw_fd());
        let again = receiving(&received, || serde_json::from_str::<Fd>(r#"{"$fd":0}"#));
        assert!(again.unwrap_err().to_string().contains("already taken"));
        let missing = receiving(&received, || serde_json::from_str::<Fd>(r#"{"$fd":2}"#));
        let missing = missing.unwrap_err().to_string();
        assert!(
            missing.contains("claims descriptor 2, but 2 arrived"),
            "{missing}"
        );
        let extra = receiving(&received, || {
            serde_json::from_str::<Fd>(r#"{"$fd":0,"x":1}"#)
        });
        assert!(extra.is_err());
        assert!(RECEIVING.with(|r| r.borrow().is_none()), "restored");
    }
}
