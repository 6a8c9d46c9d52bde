//! [`Config`]: per-connection limits and buffer sizes.

use std::time::Duration;

use tokio::sync::Semaphore;

use crate::codec::DEFAULT_MAX_FRAME_SIZE;

/// Per-connection limits and buffer sizes, shared by clients and servers.
///
/// ```
/// let config = diarrhoea::Config::new()
///     .max_frame_size(1 << 20)
///     .max_concurrent_requests(64);
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) max_frame_size: usize,
    pub(crate) outgoing_queue: usize,
    pub(crate) outgoing_buffer: usize,
    pub(crate) partial_frame_timeout: Duration,
    pub(crate) inbound_buffer: usize,
    pub(crate) max_concurrent_requests: usize,
    pub(crate) request_timeout: Option<Duration>,
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
            request_timeout: None,
        }
    }
}

impl Config {
    /// The defaults: 8 MiB frames, 1024 queued outgoing frames holding at most 8 MiB, a 4 MiB
    /// inbound buffer, 1024 concurrent incoming requests per connection, 30 s for a peer to
    /// finish a line it started, no request timeout.
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

    /// A deadline for every incoming request, counted from when its frame is read, so time
    /// spent waiting for a permit or for the service to be ready counts. A peer's
    /// `meta.timeout_ms` can only shorten it. Expired requests are answered -32001.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }
}
