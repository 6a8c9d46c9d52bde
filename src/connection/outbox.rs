//! The outgoing queue: one write buffer that senders encode their frames into, under a short
//! lock, and that the writer takes whole, leaving an empty one in its place. A frame is encoded
//! once, in wire order, and never copied before it is written.
//!
//! The buffer is bounded in frames and in bytes, so a peer that stops reading holds its
//! senders back instead of growing memory. A sender is let in while the buffer is under both
//! limits and is then charged its whole frame: the buffer may overshoot the byte budget by one
//! frame, which lets a frame larger than the budget through without starving it behind small
//! ones. The charge ends when the writer takes the buffer, except for what a large buffer holds
//! beyond one write ([`WRITE_CHUNK`]), which stays charged until it is written: the bytes
//! waiting for the peer stay about the budget, as they were with a queue of lines.
//!
//! Encoding runs under the lock (that is what keeps it to one copy): the arguments' `Serialize`
//! must not send on the same connection, and a large frame holds the writer back while it is
//! encoded, as its copy did before.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;

use crate::error::{Error, Kind};
use crate::fd;
use crate::frame::Frame;

/// The most the writer hands the stream at once; a taken buffer larger than this stays
/// charged beyond it until written.
pub(super) const WRITE_CHUNK: usize = 65_536;
/// A buffer that grew beyond this is freed once written instead of kept for the next frames,
/// so a connection that was busy once does not keep the memory (1,000 connections x a large
/// buffer adds up).
const KEEP: usize = 16_384;

/// The senders' end: cheap to clone, one per connection in `Shared`.
#[derive(Clone)]
pub(crate) struct Outbox {
    queue: Arc<Queue>,
}

/// The writer's end. Dropping it (the writer is gone) fails every send from then on.
pub(crate) struct Receiver {
    queue: Arc<Queue>,
}

struct Queue {
    state: Mutex<State>,
    /// Woken when room may have freed (the writer took the buffer, a reservation was given
    /// back) or the writer is gone; only when a sender is waiting (`State::waited`).
    room: Arc<Notify>,
    /// `Config::outgoing_queue`.
    frames: usize,
    /// `Config::outgoing_buffer`.
    budget: usize,
    /// The most descriptors one frame may carry (`Config::max_fds_per_frame`); `None` when
    /// the transport cannot carry any.
    fd_limit: Option<usize>,
}

/// A frame in the writer's buffer that carries descriptors: written with them, on its own.
pub(crate) struct FdFrame {
    /// Where the frame's line starts and ends in the buffer.
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// Duplicates, closed once sent (the peer has its own then).
    pub(crate) fds: Vec<std::os::fd::OwnedFd>,
}

#[derive(Default)]
struct State {
    /// Encoded frames waiting for the writer, in the order they were sent.
    buf: BytesMut,
    /// An empty buffer the writer gave back, put in place of `buf` when the writer takes it:
    /// the two alternate, so a busy connection encodes without allocating.
    spare: BytesMut,
    /// Charged frames in `buf`; control frames are not counted.
    frames: usize,
    /// Bytes of the charged frames in `buf`.
    bytes: usize,
    /// The frames in `buf` that carry descriptors, in order.
    fds: Vec<FdFrame>,
    /// Bytes the writer has taken but not written, beyond one write.
    held: usize,
    /// Frames reserved by ready pollers, one frame and one byte each.
    reserved: usize,
    /// Set when the writer ends or is gone: sends fail from then on.
    closed: bool,
    /// A sender found no room since room last freed: whoever frees room wakes `Queue::room`.
    waited: bool,
    /// The writer, waiting for frames.
    writer: Option<std::task::Waker>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing is left half done under the lock: a panicking encoder's line is taken out.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a sender may add a frame now: `Ok(false)` when over a limit, `Err` once the
    /// writer is gone. Stream items see half of each limit, so however fast streams flood,
    /// the other half is left for replies and other frames, which are never queued behind
    /// more than the items already in the buffer.
    fn has_room(&self, state: &State, share: Share) -> Result<bool, Error> {
        if state.closed {
            return Err(Error::closed());
        }
        let (frames, budget) = match share {
            Share::Whole => (self.frames, self.budget),
            Share::Half => (self.frames.div_ceil(2), self.budget / 2),
        };
        Ok(state.frames + state.reserved < frames
            && state.bytes + state.held + state.reserved < budget)
    }

    /// Unlocks, then wakes the senders waiting for room, if any.
    fn room_freed(&self, mut state: MutexGuard<'_, State>) {
        let waited = std::mem::take(&mut state.waited);
        drop(state);
        if waited {
            self.room.notify_waiters();
        }
    }

    /// Locks the state once there is room for a frame; `Err` once the writer is gone.
    async fn room(&self, share: Share) -> Result<MutexGuard<'_, State>, Error> {
        loop {
            if let Some(state) = self.admit(false, share)? {
                return Ok(state);
            }
            // Made before the second look, so room freed after that look wakes it.
            let notified = self.room.notified();
            if let Some(state) = self.admit(true, share)? {
                return Ok(state);
            }
            notified.await;
        }
    }

    /// The state, locked, if there is room for a frame now; if not and `wait`, asks for a
    /// wake-up when room frees.
    fn admit(&self, wait: bool, share: Share) -> Result<Option<MutexGuard<'_, State>>, Error> {
        let mut state = self.lock();
        if self.has_room(&state, share)? {
            return Ok(Some(state));
        }
        state.waited |= wait;
        Ok(None)
    }

    /// Whether a frame may carry `count` descriptors: refused locally, before anything is
    /// written, over a transport that cannot carry them or past the limit.
    fn may_carry(&self, count: usize) -> Result<(), Error> {
        let Some(limit) = self.fd_limit else {
            return Err(Error::new(Kind::Encode).with_source(
                "descriptors (`Fd` arguments) can only be sent over a Unix socket; this connection's transport cannot carry them",
            ));
        };
        if count > limit {
            return Err(Error::new(Kind::Encode).with_source(format!(
                "{count} descriptors in one frame; the limit is {limit} (`Config::max_fds_per_frame`)"
            )));
        }
        Ok(())
    }

    /// Appends one line to the buffer, under the lock (so frames keep their order), and wakes
    /// the writer. A line that `encode` fails on (or panics in) is taken out again.
    fn append(
        &self,
        mut state: MutexGuard<'_, State>,
        charged: bool,
        line_of: Line,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let start = state.buf.len();
        let line = Unfinished {
            buf: &mut state.buf,
            start,
        };
        let fds = match line_of {
            Line::Reply => {
                encode(line.buf)?;
                None
            }
            Line::Call => {
                // `Fd`s among the arguments hand over their descriptors while they are
                // encoded.
                let encoding = fd::Encoding::enter();
                encode(line.buf)?;
                if encoding.handed_any() {
                    let fds = encoding.take();
                    self.may_carry(fds.len())?;
                    Some(fds)
                } else {
                    None
                }
            }
        };
        std::mem::forget(line);
        if let Some(fds) = fds {
            let end = state.buf.len();
            state.fds.push(FdFrame { start, end, fds });
        }
        if charged {
            state.frames += 1;
            state.bytes += state.buf.len() - start;
        }
        let writer = state.writer.take();
        drop(state);
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok(())
    }
}

/// How much of the queue's limits a frame may fill.
#[derive(Clone, Copy)]
enum Share {
    Whole,
    /// Stream items: half, so they cannot crowd out replies.
    Half,
}

/// What a line being queued is: a call or notification may carry descriptors (its
/// arguments' `Fd`s); a reply, a stream item or a control frame never does, and skips
/// looking for them.
#[derive(Clone, Copy)]
enum Line {
    Call,
    Reply,
}

/// A line being encoded into the buffer: taken out again unless finished (`mem::forget`), so
/// an encoding error or a panicking `Serialize` leaves no broken frame for the writer.
struct Unfinished<'a> {
    buf: &'a mut BytesMut,
    start: usize,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        self.buf.truncate(self.start);
    }
}

impl Outbox {
    #[cfg(test)]
    pub(crate) fn new(frames: usize, budget: usize) -> (Self, Receiver) {
        Self::with_fd_limit(frames, budget, None)
    }

    /// A queue of at most `frames` frames and about `budget` bytes, whose frames may carry
    /// up to `fd_limit` descriptors each (`None`: the transport cannot carry them).
    pub(crate) fn with_fd_limit(
        frames: usize,
        budget: usize,
        fd_limit: Option<usize>,
    ) -> (Self, Receiver) {
        let queue = Arc::new(Queue {
            state: Mutex::default(),
            room: Arc::new(Notify::new()),
            frames,
            budget,
            fd_limit,
        });
        let receiver = Receiver {
            queue: queue.clone(),
        };
        (Outbox { queue }, receiver)
    }

    /// Frees the buffers while nothing is queued: for a connection gone quiet.
    pub(crate) fn release_memory(&self) {
        let mut state = self.queue.lock();
        if state.buf.is_empty() {
            state.buf = BytesMut::new();
        }
        state.spare = BytesMut::new();
    }

    /// Queues a frame, waiting for room.
    pub(crate) fn send(&self, frame: Frame) -> impl Future<Output = Result<(), Error>> + '_ {
        let line = match frame {
            Frame::Notification { .. } | Frame::Request { .. } => Line::Call,
            Frame::Reply { .. } | Frame::ConnectionError(_) => Line::Reply,
        };
        self.send_within(Share::Whole, line, move |buf| {
            frame.encode(buf);
            Ok(())
        })
    }

    /// Queues the one line `encode` appends, waiting for room; nothing is queued if it fails.
    pub(crate) fn send_with<'a>(
        &'a self,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), Error> + 'a,
    ) -> impl Future<Output = Result<(), Error>> + 'a {
        self.send_within(Share::Whole, Line::Call, encode)
    }

    /// As [`Outbox::send_with`], for a stream's item: it waits while the queue is half full,
    /// so replies and other frames always find room beside a flooding stream.
    pub(crate) fn send_item<'a>(
        &'a self,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), Error> + 'a,
    ) -> impl Future<Output = Result<(), Error>> + 'a {
        self.send_within(Share::Half, Line::Reply, encode)
    }

    async fn send_within(
        &self,
        share: Share,
        line: Line,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if let Some(state) = self.queue.admit(false, share)? {
            return self.queue.append(state, true, line, encode);
        }
        // Boxed: waiting for room is the rare path, and its state would make every sender's
        // future (a handler's, say, which is moved into a box of its own) larger.
        Box::pin(async move {
            let state = self.queue.room(share).await?;
            self.queue.append(state, true, line, encode)
        })
        .await
    }

    /// As [`Outbox::send_with`] if there is room now; [`Kind::Full`] if not.
    pub(crate) fn try_send_with(
        &self,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), Error>,
    ) -> Result<(), Error> {
        match self.queue.admit(false, Share::Whole)? {
            Some(state) => self.queue.append(state, true, Line::Call, encode),
            None => Err(Error::new(Kind::Full)),
        }
    }

    /// Queues a small control frame (`$/cancel`, a connection error) at once: it is not
    /// charged, so neither limit can starve it. Fails only once the writer is gone.
    pub(crate) fn send_control(&self, frame: Frame) -> Result<(), Error> {
        let state = self.queue.lock();
        if state.closed {
            return Err(Error::closed());
        }
        self.queue.append(state, false, Line::Reply, |buf| {
            frame.encode(buf);
            Ok(())
        })
    }

    pub(crate) fn poller(&self) -> OutboxPoller {
        OutboxPoller {
            queue: self.queue.clone(),
            held: false,
            waiting: None,
        }
    }
}

impl Receiver {
    /// Gives back `buf`, the writer's buffer once written, and puts the frames queued since in
    /// it, waiting for some; `fds` gets those of them that carry descriptors.
    pub(crate) async fn take(&self, buf: &mut BytesMut, fds: &mut Vec<FdFrame>) {
        poll_fn(|cx| self.poll_take(cx, buf, fds)).await
    }

    fn poll_take(
        &self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        fds: &mut Vec<FdFrame>,
    ) -> Poll<()> {
        let mut state = self.queue.lock();
        give_back(&mut state, buf);
        if state.buf.is_empty() {
            match &mut state.writer {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                writer => *writer = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        self.take_locked(&mut state, buf, fds);
        self.queue.room_freed(state);
        Poll::Ready(())
    }

    /// Swaps the queued frames into `buf` (empty), and those carrying descriptors into `fds`;
    /// their charge ends.
    fn take_locked(&self, state: &mut State, buf: &mut BytesMut, fds: &mut Vec<FdFrame>) {
        let spare = std::mem::take(&mut state.spare);
        *buf = std::mem::replace(&mut state.buf, spare);
        if !state.fds.is_empty() {
            std::mem::swap(fds, &mut state.fds);
        }
        state.frames = 0;
        state.bytes = 0;
        state.held = buf.len().saturating_sub(WRITE_CHUNK);
    }

    /// The writer has written all but `left` bytes of what it took: the charge of what it
    /// holds beyond one write shrinks with it.
    pub(crate) fn written(&self, left: usize) {
        let mut state = self.queue.lock();
        let held = left.saturating_sub(WRITE_CHUNK);
        if held < state.held {
            state.held = held;
            self.queue.room_freed(state);
        }
    }

    /// Ending: refuses further frames and puts those queued in `buf` (empty), to be written
    /// last.
    pub(crate) fn close(&self, buf: &mut BytesMut, fds: &mut Vec<FdFrame>) {
        let mut state = self.queue.lock();
        state.closed = true;
        // Senders waiting for room now fail.
        state.waited = true;
        if !state.buf.is_empty() {
            self.take_locked(&mut state, buf, fds);
        }
        self.queue.room_freed(state);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        state.closed = true;
        state.waited = true;
        // Nothing will write what is left.
        state.buf = BytesMut::new();
        state.spare = BytesMut::new();
        state.fds = Vec::new();
        self.queue.room_freed(state);
    }
}

/// Keeps the writer's emptied buffer for the next frames, unless a big write grew it or both
/// places are taken.
fn give_back(state: &mut State, buf: &mut BytesMut) {
    let mut buf = std::mem::take(buf);
    if buf.capacity() == 0 || buf.capacity() > KEEP {
        return;
    }
    buf.clear();
    if state.buf.capacity() == 0 {
        state.buf = buf;
    } else if state.spare.capacity() == 0 {
        state.spare = buf;
    }
}

/// The queue as `poll_ready`/`call` for tower services.
///
/// `poll_ready` waits until there is room and reserves one frame (and one byte of the
/// budget); `send` then queues the frame whatever its size: the limits may be exceeded by the
/// one frame each ready service holds. Clones start with nothing reserved; dropping a ready
/// poller gives its reservation back.
pub(crate) struct OutboxPoller {
    queue: Arc<Queue>,
    /// Whether `poll_ready` reserved a frame that `send` has not used yet.
    held: bool,
    /// Woken when room may have freed; boxed only by a poller that had to wait.
    waiting: Option<Pin<Box<OwnedNotified>>>,
}

impl Clone for OutboxPoller {
    fn clone(&self) -> Self {
        OutboxPoller {
            queue: self.queue.clone(),
            held: false,
            waiting: None,
        }
    }
}

impl OutboxPoller {
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.held {
            return Poll::Ready(Ok(()));
        }
        if let Some(waiting) = &mut self.waiting {
            ready!(waiting.as_mut().poll(cx));
            self.waiting = None;
        }
        if self.try_reserve(false)? {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Made before the second look, so room freed after that look wakes this poller.
            let mut notified = Box::pin(self.queue.room.clone().notified_owned());
            if self.try_reserve(true)? {
                return Poll::Ready(Ok(()));
            }
            if notified.as_mut().poll(cx).is_pending() {
                self.waiting = Some(notified);
                return Poll::Pending;
            }
        }
    }

    /// Reserves a frame if there is room now (see [`Queue::admit`]).
    fn try_reserve(&mut self, wait: bool) -> Result<bool, Error> {
        let Some(mut state) = self.queue.admit(wait, Share::Whole)? else {
            return Ok(false);
        };
        state.reserved += 1;
        self.held = true;
        Ok(true)
    }

    /// Queues the one line `encode` appends, using the frame `poll_ready` reserved.
    pub(crate) fn send(
        &mut self,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if !self.held {
            return Err(Error::closed());
        }
        self.held = false;
        let mut state = self.queue.lock();
        state.reserved -= 1;
        if state.closed {
            return Err(Error::closed());
        }
        self.queue.append(state, true, Line::Call, encode)
    }

    /// Gives back what `poll_ready` reserved, if anything.
    pub(crate) fn abort(&mut self) {
        if std::mem::take(&mut self.held) {
            let mut state = self.queue.lock();
            state.reserved -= 1;
            self.queue.room_freed(state);
        }
    }
}

impl Drop for OutboxPoller {
    fn drop(&mut self) {
        self.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::bounded;

    const BUDGET: usize = 4096;

    impl Receiver {
        /// Bytes the writer has taken and not written, beyond one write, still charged.
        pub(crate) fn held(&self) -> usize {
            self.queue.lock().held
        }
    }

    fn line(len: usize) -> impl FnOnce(&mut BytesMut) -> Result<(), Error> {
        move |buf| {
            buf.extend_from_slice(&vec![b'x'; len - 1]);
            buf.extend_from_slice(b"\n");
            Ok(())
        }
    }

    fn charged(outbox: &Outbox) -> (usize, usize) {
        let state = outbox.queue.lock();
        (
            state.frames + state.reserved,
            state.bytes + state.held + state.reserved,
        )
    }

    #[tokio::test]
    async fn a_frame_is_charged_its_bytes_until_the_writer_takes_it() {
        bounded(async {
            let (outbox, rx) = Outbox::new(8, BUDGET);
            let mut poller = outbox.poller();
            poll_fn(|cx| poller.poll_ready(cx)).await.unwrap();
            assert_eq!(charged(&outbox), (1, 1));
            poller.send(line(3000)).unwrap();
            assert_eq!(charged(&outbox), (1, 3000));
            let mut buf = BytesMut::new();
            rx.take(&mut buf, &mut Vec::new()).await;
            assert_eq!(buf.len(), 3000);
            assert_eq!(charged(&outbox), (0, 0));
        })
        .await;
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_gets_in_while_there_is_room() {
        bounded(async {
            let (outbox, rx) = Outbox::new(8, BUDGET);
            outbox.try_send_with(line(100)).unwrap();
            outbox.try_send_with(line(3 * BUDGET)).unwrap();
            assert!(outbox.try_send_with(line(1)).unwrap_err().is_overloaded());
            let mut buf = BytesMut::new();
            rx.take(&mut buf, &mut Vec::new()).await;
            assert_eq!(buf.len(), 100 + 3 * BUDGET);
            // Taken, but mostly beyond one write: charged until written.
            assert_eq!(charged(&outbox).1, 0);
            let mut big = BytesMut::new();
            outbox.try_send_with(line(3 * WRITE_CHUNK)).unwrap();
            rx.take(&mut big, &mut Vec::new()).await;
            assert_eq!(charged(&outbox), (0, 2 * WRITE_CHUNK));
            assert!(outbox.try_send_with(line(1)).unwrap_err().is_overloaded());
            rx.written(WRITE_CHUNK + 10);
            assert_eq!(charged(&outbox), (0, 10));
            outbox.try_send_with(line(1)).unwrap();
        })
        .await;
    }

    #[tokio::test]
    async fn a_waiting_sender_is_woken_when_the_writer_takes_the_buffer() {
        bounded(async {
            let (outbox, rx) = Outbox::new(1, BUDGET);
            outbox.try_send_with(line(10)).unwrap();
            let second = tokio::spawn({
                let outbox = outbox.clone();
                async move { outbox.send_with(line(20)).await }
            });
            tokio::task::yield_now().await;
            assert!(!second.is_finished());
            let mut buf = BytesMut::new();
            rx.take(&mut buf, &mut Vec::new()).await;
            second.await.unwrap().unwrap();
            buf.clear();
            rx.take(&mut buf, &mut Vec::new()).await;
            assert_eq!(buf.len(), 20);
        })
        .await;
    }

    #[tokio::test]
    async fn abort_gives_back_what_poll_ready_reserved() {
        bounded(async {
            let (outbox, _rx) = Outbox::new(1, BUDGET);
            let mut poller = outbox.poller();
            poll_fn(|cx| poller.poll_ready(cx)).await.unwrap();
            assert_eq!(charged(&outbox), (1, 1));
            assert!(outbox.try_send_with(line(2)).unwrap_err().is_overloaded());
            // A clone has nothing reserved.
            let mut clone = poller.clone();
            assert!(clone.send(line(2)).is_err());
            poller.abort();
            assert_eq!(charged(&outbox), (0, 0));
            // The one frame is free again: another sender gets it.
            outbox.try_send_with(line(2)).unwrap();
            // A poller dropped while ready gives its frame back too.
            let (outbox, _rx) = Outbox::new(1, BUDGET);
            let mut poller = outbox.poller();
            poll_fn(|cx| poller.poll_ready(cx)).await.unwrap();
            drop(poller);
            assert_eq!(charged(&outbox), (0, 0));
        })
        .await;
    }

    #[tokio::test]
    async fn try_send_refuses_when_frames_or_bytes_are_spent() {
        bounded(async {
            let (outbox, rx) = Outbox::new(2, BUDGET);
            outbox.try_send_with(line(10)).unwrap();
            outbox.try_send_with(line(10)).unwrap();
            assert!(outbox.try_send_with(line(10)).unwrap_err().is_overloaded());
            // Control frames are not charged.
            outbox
                .send_control(Frame::ConnectionError(crate::RpcError::internal("x")))
                .unwrap();
            let mut buf = BytesMut::new();
            rx.take(&mut buf, &mut Vec::new()).await;
            assert!(buf.ends_with(b"]\n") && buf.starts_with(&[b'x'; 9]));
            outbox.try_send_with(line(BUDGET)).unwrap();
            assert!(outbox.try_send_with(line(1)).unwrap_err().is_overloaded());
            buf.clear();
            rx.take(&mut buf, &mut Vec::new()).await;
            outbox.try_send_with(line(1)).unwrap();
            drop(rx);
            assert!(outbox.try_send_with(line(1)).unwrap_err().is_closed());
            assert!(outbox.send_with(line(1)).await.unwrap_err().is_closed());
        })
        .await;
    }

    #[tokio::test]
    async fn each_frame_is_charged_its_own_length_beside_a_reservation() {
        bounded(async {
            let (outbox, _rx) = Outbox::new(8, BUDGET);
            let mut poller = outbox.poller();
            poll_fn(|cx| poller.poll_ready(cx)).await.unwrap();
            // Room is judged with the reservation counted in, whatever is queued.
            outbox.try_send_with(line(10)).unwrap();
            outbox.try_send_with(line(20)).unwrap();
            assert_eq!(charged(&outbox), (3, 31));
        })
        .await;
    }

    #[tokio::test]
    async fn closing_hands_the_writer_what_is_queued_and_refuses_the_rest() {
        bounded(async {
            let (outbox, rx) = Outbox::new(8, BUDGET);
            outbox.try_send_with(line(10)).unwrap();
            let mut buf = BytesMut::new();
            rx.close(&mut buf, &mut Vec::new());
            assert_eq!(buf.len(), 10, "the queued frame is written last");
            assert!(outbox.try_send_with(line(1)).unwrap_err().is_closed());
            // Closing with nothing queued hands over nothing.
            let (outbox, rx) = Outbox::new(8, BUDGET);
            let mut buf = BytesMut::new();
            rx.close(&mut buf, &mut Vec::new());
            assert!(buf.is_empty());
            assert!(outbox.try_send_with(line(1)).unwrap_err().is_closed());
        })
        .await;
    }

    #[tokio::test]
    async fn stream_items_fill_half_the_queue_and_leave_the_rest_to_replies() {
        bounded(async {
            let (outbox, rx) = Outbox::new(4, BUDGET);
            outbox.send_item(line(10)).await.unwrap();
            outbox.send_item(line(10)).await.unwrap();
            // Half the frames are items: the next item waits, a reply gets in at once.
            let third = tokio::spawn({
                let outbox = outbox.clone();
                async move { outbox.send_item(line(30)).await }
            });
            tokio::task::yield_now().await;
            assert!(!third.is_finished());
            outbox.try_send_with(line(20)).unwrap();
            let mut buf = BytesMut::new();
            rx.take(&mut buf, &mut Vec::new()).await;
            assert_eq!(buf.len(), 40, "two items, then the reply");
            third.await.unwrap().unwrap();
            // Half the bytes too.
            let (outbox, _rx) = Outbox::new(64, BUDGET);
            outbox.send_item(line(BUDGET / 2)).await.unwrap();
            let waiting = outbox.send_item(line(1));
            tokio::pin!(waiting);
            assert!(futures_poll(waiting.as_mut()).is_pending());
            outbox.try_send_with(line(100)).unwrap();
        })
        .await;
    }

    fn futures_poll<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
        fut.poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[test]
    fn a_written_buffer_of_up_to_keep_bytes_is_kept() {
        let (outbox, _rx) = Outbox::new(8, BUDGET);
        let mut kept = BytesMut::with_capacity(KEEP);
        assert_eq!(kept.capacity(), KEEP);
        give_back(&mut outbox.queue.lock(), &mut kept);
        assert_eq!(outbox.queue.lock().buf.capacity(), KEEP);
    }

    #[test]
    fn a_failed_encoding_leaves_nothing_queued() {
        let (outbox, _rx) = Outbox::new(8, BUDGET);
        outbox.try_send_with(line(4)).unwrap();
        let failed = outbox.try_send_with(|buf| {
            buf.extend_from_slice(b"[\"half");
            Err(Error::new(Kind::Encode))
        });
        assert!(failed.is_err());
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            outbox.try_send_with(|buf| {
                buf.extend_from_slice(b"[\"half");
                panic!("a Serialize that panics")
            })
        }));
        assert!(panicked.is_err());
        let state = outbox.queue.lock();
        assert_eq!((&state.buf[..], state.frames), (&b"xxx\n"[..], 1));
    }

    #[tokio::test]
    async fn buffers_alternate_and_a_quiet_connection_keeps_none() {
        bounded(async {
            let (outbox, rx) = Outbox::new(8, BUDGET);
            let mut buf = BytesMut::new();
            outbox.try_send_with(line(10)).unwrap();
            rx.take(&mut buf, &mut Vec::new()).await;
            let first = buf.as_ptr();
            outbox.try_send_with(line(10)).unwrap();
            // Given back and taken again at once: the writer holds the second buffer.
            rx.take(&mut buf, &mut Vec::new()).await;
            assert_ne!(buf.as_ptr(), first);
            outbox.try_send_with(line(10)).unwrap();
            assert_eq!(outbox.queue.lock().buf.as_ptr(), first, "no allocation");
            // A buffer that grew beyond KEEP is freed once written.
            let mut grown = BytesMut::with_capacity(KEEP + 1);
            give_back(&mut outbox.queue.lock(), &mut grown);
            assert_eq!(outbox.queue.lock().spare.capacity(), 0);
            rx.take(&mut buf, &mut Vec::new()).await;
            drop(std::mem::take(&mut buf));
            outbox.release_memory();
            let state = outbox.queue.lock();
            assert_eq!((state.buf.capacity(), state.spare.capacity()), (0, 0));
        })
        .await;
    }
}
