//! [`Config`]: per-connection limits and buffer sizes.

use std::time::Duration;

use tokio::sync::Semaphore;

use crate::codec::DEFAULT_MAX_FRAME_SIZE;
use crate::jsonrpc::Protocol;

/// Per-connection limits and buffer sizes, shared by clients and servers.
///
/// ```
/// let config = diarrhoea::Config::new()
///     .max_frame_size(1 << 20)
///     .max_concurrent_requests(64);
/// ```
///
/// # Limits
///
/// A server sits on a socket that other local processes can reach, so every resource a peer
/// can make it spend has a limit, each with a default, a setting, and a clear error when it
/// is hit. The settings here apply to one connection; a server gives the same `Config` to
/// every connection it accepts ([`Serve::config`](crate::Serve::config)).
///
/// | limit | default | setting | when it is hit |
/// | --- | --- | --- | --- |
/// | line length (one frame) | 8 MiB | [`max_frame_size`](Config::max_frame_size) | incoming: the line is discarded up to its `\n` without buffering it, error event -32003, the connection stays open; outgoing: the send fails locally with -32003 |
/// | outgoing queue, frames | 1024 | [`outgoing_queue`](Config::outgoing_queue) | senders wait (`post_message`, `call`, `poll_ready`): backpressure |
/// | outgoing queue, bytes | 8 MiB | [`outgoing_buffer`](Config::outgoing_buffer) | senders wait while it is spent (one frame may overshoot it); a peer that never reads costs about this much |
/// | inbound buffer (calls waiting for dispatch or running) | 4 MiB | [`inbound_buffer`](Config::inbound_buffer) | the reader stops reading the socket: backpressure |
/// | read chunks still held by incoming frames (their arguments and results are read where they arrived) | about the inbound buffer again: 128 chunks of at most 32 KiB | [`inbound_buffer`](Config::inbound_buffer) | frames are copied out of the read buffer, as small as they are, until frames let go of their chunks |
/// | concurrent requests per connection | 1024 | [`max_concurrent_requests`](Config::max_concurrent_requests) | further requests wait, in wire order |
/// | streams open at once per connection (calls answered with a [`StreamReply`](crate::StreamReply)) | 256 | [`max_streams`](Config::max_streams) | the stream is refused: error reply -32002, `data.limit` `"max_streams"` |
/// | a line left unfinished | 30 s without a byte | [`partial_frame_timeout`](Config::partial_frame_timeout) | connection error -32600 `partial frame timeout`, then close |
/// | a JSON-RPC message (line or `Content-Length` body) | 8 MiB | [`max_frame_size`](Config::max_frame_size) | error response -32003 with id `null`, the message discarded unread (a `Content-Length` over the limit is refused from its header), the connection stays open |
/// | request deadline | none | [`request_timeout`](Config::request_timeout), the peer's `meta.timeout_ms` (the earlier wins) | -32001; counts time waiting for a permit and for readiness |
/// | descriptors per frame (`Fd` arguments, Unix sockets only) | 16 | [`max_fds_per_frame`](Config::max_fds_per_frame) | incoming: the frame is refused (a call gets -32602, a notification an error event) and every descriptor that came with it is closed; outgoing: the send fails locally |
/// | connections per server | 1024 | [`Serve::max_connections`](crate::Serve::max_connections) | the next one gets `[null,null,{"code":-32002,...}]` and is closed |
/// | graceful shutdown | 10 s | [`Serve::shutdown_timeout`](crate::Serve::shutdown_timeout) | remaining connections are closed |
/// | out of descriptors (`EMFILE`, `ENFILE`) | - | - | accepting backs off 10 ms doubling to 1 s, logs at most once a second, recovers |
/// | socket file mode | `0600` | [`UnixListener::bind_with_mode`](crate::UnixListener::bind_with_mode) | other users' `connect` gets `EACCES` |
/// | WebSocket message (feature `axum`) | twice the line length (16 MiB) | `max_frame_size` given to `http::ws(..).config(..)` | the WebSocket is closed with 1009 "message too big" (a message is buffered whole); a line over the maximum inside a smaller message is dropped as above |
/// | WebSocket connections per endpoint (feature `axum`) | 1024 | `http::ws(..).max_connections(n)` | the upgrade is answered 503 with a -32002 body |
/// | HTTP call body (feature `axum`) | 8 MiB | `max_frame_size` given to `http::rest(..).config(..)` | 413 (-32003) from `Content-Length` before reading, or once a chunked body passes it; the rest is not read |
///
/// What bounds the memory a peer that does not read can cost: the inbound buffer (held by
/// each request until it is answered), the outgoing byte budget, and the replies of at most
/// `max_concurrent_requests` handlers being built. `tests/soak.rs` holds such a peer, 1,000
/// connections, peers killed mid-call and a server out of descriptors to these bounds.
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) max_frame_size: usize,
    pub(crate) outgoing_queue: usize,
    pub(crate) outgoing_buffer: usize,
    pub(crate) partial_frame_timeout: Duration,
    pub(crate) inbound_buffer: usize,
    pub(crate) max_concurrent_requests: usize,
    pub(crate) max_streams: usize,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) max_fds_per_frame: usize,
    pub(crate) protocol: Protocol,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            outgoing_queue: 1024,
            outgoing_buffer: 8 * 1024 * 1024,
            partial_frame_timeout: Duration::from_secs(30),
            inbound_buffer: 4 * 1024 * 1024,
            max_concurrent_requests: 1024,
            max_streams: 256,
            request_timeout: None,
            max_fds_per_frame: 16,
            protocol: Protocol::V1,
        }
    }
}

impl Config {
    /// The defaults: 8 MiB frames, 1024 queued outgoing frames holding at most 8 MiB, a 4 MiB
    /// inbound buffer, 1024 concurrent incoming requests per connection, 256 streams open at
    /// once per connection, 30 s for a peer to finish a line it started, no request timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// The longest line accepted (and sent). Longer incoming lines are discarded with an error
    /// event; longer outgoing frames fail with -32003 before they are written.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes.max(16);
        self
    }

    /// How many outgoing frames may wait for the writer; `post_message`, `call` and the
    /// [`Caller`](crate::Caller)/[`Poster`](crate::Poster) services wait (`poll_ready` is pending) while it is full.
    pub fn outgoing_queue(mut self, frames: usize) -> Self {
        self.outgoing_queue = frames.max(1);
        self
    }

    /// How many bytes of outgoing frames may wait for the writer (default 8 MiB); senders wait
    /// while it is spent, so a peer that stops reading costs at most this much memory here.
    /// A sender is let in while the queue is under the budget and is charged its whole
    /// frame, so the queue may exceed the budget by one frame, and a frame larger than the
    /// whole budget still gets through.
    pub fn outgoing_buffer(mut self, bytes: usize) -> Self {
        self.outgoing_buffer = bytes.clamp(1024, u32::MAX as usize);
        self
    }

    /// How long a peer may leave a line unfinished without sending another byte before the
    /// connection is closed (default 30 s), so a stalled half-frame cannot pin a connection.
    pub fn partial_frame_timeout(mut self, timeout: Duration) -> Self {
        self.partial_frame_timeout = timeout;
        self
    }

    /// How many bytes of incoming calls may be waiting for dispatch or running (a request
    /// keeps its share until it is answered) before the reader stops reading (backpressure).
    /// While there is room, the reader keeps reading, so replies to this side's own calls are
    /// never stuck behind inbound work. Default 4 MiB.
    ///
    /// The arguments and results of incoming frames are read where they arrived, in the
    /// connection's read buffer, which keeps each read chunk (at most 32 KiB) alive while a
    /// frame of it waits, runs or is yet to be read by its caller. The chunks frames hold are
    /// bounded by this amount too: past it, frames are copied out of the buffer instead.
    pub fn inbound_buffer(mut self, bytes: usize) -> Self {
        self.inbound_buffer = bytes.clamp(1024, u32::MAX as usize);
        self
    }

    /// How many incoming requests may run at once on one connection; further requests wait
    /// in wire order.
    pub fn max_concurrent_requests(mut self, n: usize) -> Self {
        self.max_concurrent_requests = n.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// How many streams (calls answered with a [`StreamReply`](crate::StreamReply)) may be
    /// open at once on one connection (default 256); one more is refused with -32002, its
    /// `data.limit` `"max_streams"`. A running stream counts here, not against
    /// [`max_concurrent_requests`](Config::max_concurrent_requests): it costs memory, not
    /// work, while its caller grants no credit.
    pub fn max_streams(mut self, n: usize) -> Self {
        self.max_streams = n;
        self
    }

    /// A deadline for every incoming request, counted from when its frame is read, so time
    /// spent waiting for a permit or for the service to be ready counts. A peer's
    /// `meta.timeout_ms` can only shorten it. Expired requests are answered -32001.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// How many descriptors ([`Fd`](crate::Fd) arguments) one frame may carry, in and out
    /// (default 16; at most 253, what the kernel allows in one message). An incoming frame
    /// with more is refused and every descriptor that came with it closed; 0 refuses every
    /// frame that brings descriptors. Only Unix socket connections carry descriptors.
    pub fn max_fds_per_frame(mut self, n: usize) -> Self {
        self.max_fds_per_frame = n.min(crate::fd::SCM_MAX_FD);
        self
    }

    /// The protocol the connection speaks (default [`Protocol::V1`]): JSON-RPC 2.0 over lines
    /// or `Content-Length` framing, or, for a server, whichever the peer's first bytes show
    /// ([`Protocol::Detect`]). The limits here hold for every protocol: a JSON-RPC message is a
    /// frame, bounded by [`max_frame_size`](Config::max_frame_size) (a `Content-Length` over
    /// it is refused from the header, before the body is read).
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }
}
