//! The outgoing queue: bounded in frames (a channel) and in bytes (a semaphore), so a peer that
//! stops reading holds its senders back instead of growing memory.
//!
//! A frame is charged `min(its payload, the byte budget)` until the writer has encoded it.

use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::{PollSemaphore, PollSender};

use crate::error::{Error, Kind};
use crate::frame::Frame;

/// An encoded frame in the queue, with its share of the byte budget. Frames are encoded by
/// their senders, so the writer only gathers bytes.
pub(crate) struct Queued {
    pub(crate) line: Vec<u8>,
    /// Released when the writer has encoded the frame.
    _bytes: Option<OwnedSemaphorePermit>,
}

/// The writer's end of the queue, and where it gives back the line buffers it is done with.
pub(crate) struct Receiver {
    pub(crate) queue: mpsc::Receiver<Queued>,
    pub(crate) spare: SpareLines,
}

#[derive(Clone)]
pub(crate) struct Outbox {
    slots: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    budget: usize,
    spare: SpareLines,
}

impl Outbox {
    pub(crate) fn new(frames: usize, budget: usize) -> (Self, Receiver) {
        let (slots, queue) = mpsc::channel(frames);
        let spare = SpareLines::default();
        (
            Outbox {
                slots,
                bytes: Arc::new(Semaphore::new(budget)),
                budget,
                spare: spare.clone(),
            },
            Receiver { queue, spare },
        )
    }

    /// An empty buffer to encode a frame into: one the writer gave back when there is one.
    pub(crate) fn line_buffer(&self) -> Vec<u8> {
        self.spare.take()
    }

    /// Frees the spare line buffers: for a connection gone quiet.
    pub(crate) fn release_memory(&self) {
        self.spare.clear();
    }

    /// The frame's line, in a buffer of the writer's when there is one.
    pub(crate) fn encode(&self, frame: &Frame) -> Vec<u8> {
        let mut line = self.line_buffer();
        frame.write(&mut line);
        line
    }

    fn cost(&self, line: &[u8]) -> u32 {
        line.len().clamp(1, self.budget) as u32
    }

    /// Queues a frame, waiting for room in bytes and then in frames.
    pub(crate) async fn send(&self, frame: Frame) -> Result<(), Error> {
        self.send_line(self.encode(&frame)).await
    }

    /// Queues an encoded frame, waiting for room in bytes and then in frames.
    pub(crate) async fn send_line(&self, line: Vec<u8>) -> Result<(), Error> {
        let bytes = self
            .bytes
            .clone()
            .acquire_many_owned(self.cost(&line))
            .await;
        let bytes = bytes.map_err(|_| Error::closed())?;
        let queued = Queued {
            line,
            _bytes: Some(bytes),
        };
        self.slots.send(queued).await.map_err(|_| Error::closed())
    }

    /// Queues an encoded frame if there is room now, in bytes and in frames.
    pub(crate) fn try_send_line(&self, line: Vec<u8>) -> Result<(), Error> {
        let full = || Error::new(Kind::Full);
        let bytes = match self.bytes.clone().try_acquire_many_owned(self.cost(&line)) {
            Ok(bytes) => bytes,
            Err(TryAcquireError::Closed) => return Err(Error::closed()),
            Err(TryAcquireError::NoPermits) => return Err(full()),
        };
        let queued = Queued {
            line,
            _bytes: Some(bytes),
        };
        self.slots.try_send(queued).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => full(),
            mpsc::error::TrySendError::Closed(_) => Error::closed(),
        })
    }

    /// Queues a small control frame (`$/cancel`, a connection error) without waiting; it is
    /// not charged, so it cannot be starved by the budget.
    pub(crate) fn try_send_control(
        &self,
        frame: Frame,
    ) -> Result<(), mpsc::error::TrySendError<Frame>> {
        match self.slots.try_reserve() {
            Ok(slot) => {
                slot.send(Queued {
                    line: self.encode(&frame),
                    _bytes: None,
                });
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(())) => Err(mpsc::error::TrySendError::Full(frame)),
            Err(mpsc::error::TrySendError::Closed(())) => {
                Err(mpsc::error::TrySendError::Closed(frame))
            }
        }
    }

    /// As [`Outbox::try_send_control`], waiting for a frame slot.
    pub(crate) async fn send_control(&self, frame: Frame) -> Result<(), Error> {
        let queued = Queued {
            line: self.encode(&frame),
            _bytes: None,
        };
        self.slots.send(queued).await.map_err(|_| Error::closed())
    }

    pub(crate) fn poller(&self) -> OutboxPoller {
        OutboxPoller {
            slots: PollSender::new(self.slots.clone()),
            bytes: PollSemaphore::new(self.bytes.clone()),
            held: None,
            budget: self.budget,
        }
    }
}

/// Line buffers the writer has copied out, kept for the next frames so that most frames cost
/// no allocation. Small ones only, so a connection keeps at most `KEPT * LARGEST` (8 KiB)
/// here, and only after it was busy.
#[derive(Clone, Default)]
pub(crate) struct SpareLines(Arc<Mutex<Vec<Vec<u8>>>>);

impl SpareLines {
    const KEPT: usize = 64;
    /// Buffers that grew larger (a big frame) are freed instead.
    const LARGEST: usize = 128;
    /// The capacity of a new buffer: room for a typical small frame.
    const NEW: usize = 96;

    fn take(&self) -> Vec<u8> {
        let spare = self.0.lock().unwrap_or_else(PoisonError::into_inner).pop();
        spare.unwrap_or_else(|| Vec::with_capacity(Self::NEW))
    }

    fn clear(&self) {
        let spare = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        drop(spare);
    }

    /// Keeps `line`, emptied, if it is small and there is room; frees it otherwise.
    pub(crate) fn give_back(&self, mut line: Vec<u8>) {
        if line.capacity() > Self::LARGEST {
            return;
        }
        let mut spare = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.len() < Self::KEPT {
            line.clear();
            spare.push(line);
        }
    }
}

/// The queue as `poll_ready`/`call` for tower services.
///
/// `poll_ready` waits until the byte budget has room and a frame slot is free; `send` then
/// charges the frame, taking what is left of the budget if the frame is larger than that: the
/// budget may be exceeded by the one frame each ready service holds.
pub(crate) struct OutboxPoller {
    slots: PollSender<Queued>,
    bytes: PollSemaphore,
    held: Option<OwnedSemaphorePermit>,
    budget: usize,
}

impl Clone for OutboxPoller {
    fn clone(&self) -> Self {
        OutboxPoller {
            slots: self.slots.clone(),
            bytes: self.bytes.clone(),
            held: None,
            budget: self.budget,
        }
    }
}

impl OutboxPoller {
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.held.is_none() {
            match ready!(self.bytes.poll_acquire(cx)) {
                Some(permit) => self.held = Some(permit),
                None => return Poll::Ready(Err(Error::closed())),
            }
        }
        self.slots.poll_reserve(cx).map_err(|_| Error::closed())
    }

    pub(crate) fn send(&mut self, line: Vec<u8>) -> Result<(), Error> {
        let mut bytes = self.held.take().ok_or_else(Error::closed)?;
        let want = line.len().clamp(1, self.budget) - 1;
        let semaphore = self.bytes.clone_inner();
        let more = want.min(semaphore.available_permits()) as u32;
        if let Ok(extra) = semaphore.try_acquire_many_owned(more) {
            bytes.merge(extra);
        }
        let queued = Queued {
            line,
            _bytes: Some(bytes),
        };
        self.slots.send_item(queued).map_err(|_| Error::closed())
    }

    pub(crate) fn abort(&mut self) {
        self.held = None;
        self.slots.abort_send();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    const BUDGET: usize = 4096;

    #[tokio::test]
    async fn a_frame_is_charged_its_bytes_until_the_writer_takes_it() {
        let (outbox, mut rx) = Outbox::new(8, BUDGET);
        let mut poller = outbox.poller();
        poll_fn(|cx| poller.poll_ready(cx)).await.unwrap();
        poller.send(vec![b'x'; 3000]).unwrap();
        assert_eq!(outbox.bytes.available_permits(), BUDGET - 3000);
        let queued = rx.queue.recv().await.unwrap();
        assert_eq!(queued.line.len(), 3000);
        drop(queued);
        assert_eq!(outbox.bytes.available_permits(), BUDGET);
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_takes_what_is_left() {
        let (outbox, _rx) = Outbox::new(8, BUDGET);
        let mut poller = outbox.poller();
        poll_fn(|cx| poller.poll_ready(cx)).await.unwrap();
        poller.send(vec![b'x'; 3 * BUDGET]).unwrap();
        assert_eq!(outbox.bytes.available_permits(), 0);
    }

    #[tokio::test]
    async fn abort_gives_back_what_poll_ready_reserved() {
        let (outbox, _rx) = Outbox::new(1, BUDGET);
        let mut poller = outbox.poller();
        poll_fn(|cx| poller.poll_ready(cx)).await.unwrap();
        assert_eq!(outbox.bytes.available_permits(), BUDGET - 1);
        poller.abort();
        assert_eq!(outbox.bytes.available_permits(), BUDGET);
        // The one frame slot is free again: another sender gets it.
        outbox.try_send_line(b"x\n".to_vec()).unwrap();
    }

    #[tokio::test]
    async fn try_send_refuses_when_frames_or_bytes_are_spent() {
        let (outbox, mut rx) = Outbox::new(2, BUDGET);
        outbox.try_send_line(vec![b'x'; 10]).unwrap();
        outbox.try_send_line(vec![b'x'; 10]).unwrap();
        assert!(outbox
            .try_send_line(vec![b'x'; 10])
            .unwrap_err()
            .is_overloaded());
        rx.queue.recv().await.unwrap();
        rx.queue.recv().await.unwrap();
        outbox.try_send_line(vec![b'x'; BUDGET]).unwrap();
        assert!(outbox
            .try_send_line(vec![b'x'; 1])
            .unwrap_err()
            .is_overloaded());
        drop(rx);
        assert!(outbox.try_send_line(vec![b'x'; 1]).is_err());
    }

    #[test]
    fn spare_lines_come_back_empty_small_and_few() {
        let spare = SpareLines::default();
        spare.give_back(Vec::with_capacity(SpareLines::LARGEST + 1));
        assert_eq!(spare.0.lock().unwrap().len(), 0, "a large buffer is freed");
        for _ in 0..SpareLines::KEPT + 10 {
            spare.give_back(b"[\"ping\",[]]\n".to_vec());
        }
        assert_eq!(spare.0.lock().unwrap().len(), SpareLines::KEPT);
        let line = spare.take();
        assert!(
            line.is_empty() && line.capacity() > 0,
            "a kept buffer, emptied"
        );
        for _ in 1..SpareLines::KEPT {
            spare.take();
        }
        assert_eq!(
            spare.take().capacity(),
            SpareLines::NEW,
            "a new one once none is left"
        );
        spare.give_back(Vec::with_capacity(8));
        spare.clear();
        assert_eq!(
            spare.0.lock().unwrap().capacity(),
            0,
            "a quiet connection keeps none"
        );
    }
}
