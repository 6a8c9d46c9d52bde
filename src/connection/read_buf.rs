//! The reader's buffer: bytes are read into chunks, and the frames decoded from a chunk refer
//! to it for their arguments and results instead of copying them out.
//!
//! A frame that refers to a chunk keeps the whole chunk alive, however small the frame. So
//! only small chunks are shared, the chunks frames still hold are counted, and past a bound
//! (about the inbound buffer's worth) frames are copied out of their line as before, until
//! frames let go. A chunk no frame refers to any more is read into again.

use bytes::BytesMut;

use crate::wire::{ChunkMark, ChunkWatch};

/// Bytes offered to a read while the peer sends a lot (the last read brought at least
/// [`READ_SMALL`]).
pub(super) const READ_CHUNK: usize = 16_384;
/// Bytes offered to a read while the peer sends little: one frame at a time, say.
pub(super) const READ_SMALL: usize = 512;

/// The largest chunk frames may refer to: a busy read with a partial line before it. A
/// longer line grows its chunk further; frames from such a chunk are copied, so a big chunk
/// is never held by the small frames read after the big one.
const SHARED_CHUNK: usize = 2 * READ_CHUNK;

/// A chunk larger than this (a big frame grew it) is not kept once empty.
const GROWN: usize = 4 * READ_CHUNK;

pub(super) struct ReadBuf {
    /// What has been read and not decoded yet, and the room after it.
    buf: BytesMut,
    /// The size of the chunk `buf` lies in: `buf.capacity()` counts only what is left after
    /// the lines split off before it.
    chunk: usize,
    /// Set while frames decoded from the current chunk may refer to it; they share the mark.
    mark: Option<ChunkMark>,
    /// The chunk left behind last while frames referred to it, with its mark: read into
    /// again once they let go, so a busy connection takes turns with two chunks rather than
    /// taking a new one (three allocations) whenever frames still hold the current one.
    spare: Option<Spare>,
    /// The other chunks left behind that frames still referred to, watched without holding
    /// them.
    held: Vec<ChunkWatch>,
    /// How many chunks frames may hold before frames are copied instead.
    max_held: usize,
}

struct Spare {
    /// Empty; the frames that referred to the chunk share the rest of it.
    buf: BytesMut,
    mark: ChunkMark,
}

impl ReadBuf {
    /// A buffer whose frames hold at most about `budget` bytes of chunks besides the current
    /// one (the connection's inbound buffer: as much again as the calls it counts).
    pub(super) fn new(budget: usize) -> Self {
        ReadBuf {
            buf: BytesMut::new(),
            chunk: 0,
            mark: None,
            spare: None,
            held: Vec::new(),
            max_held: budget / SHARED_CHUNK,
        }
    }

    /// The bytes read and not decoded yet.
    pub(super) fn get(&self) -> &BytesMut {
        &self.buf
    }

    /// The buffer, to read into (after [`ReadBuf::make_room`]), and the mark frames decoded
    /// from it share if they may refer to it.
    pub(super) fn get_mut(&mut self) -> (&mut BytesMut, Option<&ChunkMark>) {
        (&mut self.buf, self.mark.as_ref())
    }

    /// Makes room for a read of `offer` bytes. A tail of at least a quarter of that is read
    /// into as it is: the frames before it may still refer to the chunk, which then could not
    /// be reused. Otherwise the chunk is reused if nothing refers to it any more, or a new one
    /// is taken (twice the unfinished line, if that is more: a long line arriving in pieces is
    /// copied a bounded number of times).
    pub(super) fn make_room(&mut self, offer: usize) {
        let spare = self.buf.capacity() - self.buf.len();
        if spare > 0 && spare >= offer / 4 {
            return;
        }
        if !self.buf.try_reclaim(offer) {
            let len = self.buf.len();
            let (mut next, mark) = match self.take_free_spare(len + offer) {
                Some(spare) => (spare.buf, Some(spare.mark)),
                None => (BytesMut::with_capacity((len + offer).max(2 * len)), None),
            };
            next.extend_from_slice(&self.buf);
            self.retire(next, mark);
        }
        let share = self.chunk <= SHARED_CHUNK && self.held_now() < self.max_held;
        match (&self.mark, share) {
            (None, true) => self.mark = Some(ChunkMark::default()),
            // The chunk was reclaimed: nothing refers to it, so its mark can be dropped or
            // kept for the frames to come.
            (Some(_), false) => self.mark = None,
            _ => {}
        }
    }

    /// A big frame may have grown the chunk: once the buffer is empty, do not keep that
    /// memory, however busy the peer (a peer sending in bulk would otherwise keep up to
    /// `max_frame_size` here). Frames never hold such a chunk (they are copied out of it).
    pub(super) fn shrink_if_grown(&mut self) {
        if self.buf.is_empty() && self.chunk > GROWN {
            self.retire(BytesMut::new(), None);
        }
    }

    /// Whether the chunk is larger than `quiet`, what a quiet connection needs (a busy spell
    /// or a big frame grew it).
    pub(super) fn is_larger_than(&self, quiet: usize) -> bool {
        self.chunk > quiet
    }

    /// The peer went quiet: keep no chunk, and no room to watch chunks if none is held.
    pub(super) fn give_back(&mut self) {
        self.retire(BytesMut::new(), None);
        if let Some(spare) = self.spare.take() {
            self.watch(spare.mark);
        }
        self.held.retain(ChunkWatch::is_held);
        if self.held.is_empty() {
            self.held = Vec::new();
        }
    }

    /// Replaces the chunk with `next` (and `mark`, the mark of a spare read into again). The
    /// old chunk becomes the spare if frames still refer to it; the spare before it is only
    /// watched from then on.
    fn retire(&mut self, next: BytesMut, mark: Option<ChunkMark>) {
        let mut old = std::mem::replace(&mut self.buf, next);
        self.chunk = self.buf.capacity();
        let Some(old_mark) = std::mem::replace(&mut self.mark, mark) else {
            return;
        };
        if old_mark.is_shared() {
            // What is left of it was copied to `next`.
            old.clear();
            let spare = Spare {
                buf: old,
                mark: old_mark,
            };
            if let Some(before) = self.spare.replace(spare) {
                self.watch(before.mark);
            }
        }
    }

    /// The spare, if no frame refers to it any more and it has room for `len` bytes.
    fn take_free_spare(&mut self, len: usize) -> Option<Spare> {
        let mut spare = self.spare.take()?;
        if !spare.mark.is_shared() && spare.buf.try_reclaim(len) {
            return Some(spare);
        }
        self.spare = Some(spare);
        None
    }

    /// Counts a chunk left behind among those frames hold, while they do.
    fn watch(&mut self, mark: ChunkMark) {
        if mark.is_shared() {
            self.held.push(mark.watch());
        }
    }

    /// How many chunks left behind frames still refer to (chunks they let go of are
    /// forgotten first).
    fn held_now(&mut self) -> usize {
        self.held.retain(ChunkWatch::is_held);
        self.held.len()
            + usize::from(
                self.spare
                    .as_ref()
                    .is_some_and(|spare| spare.mark.is_shared()),
            )
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    /// Reads `bytes` as a read would, after making room for `offer`.
    fn read(buf: &mut ReadBuf, offer: usize, bytes: &[u8]) {
        buf.make_room(offer);
        let room = buf.get().capacity() - buf.get().len();
        assert!(bytes.len() <= room, "{} bytes offered {room}", bytes.len());
        buf.get_mut().0.extend_from_slice(bytes);
    }

    /// Splits a line off as the codec does when frames may refer to the chunk: what a frame
    /// keeps.
    fn line(buf: &mut ReadBuf, len: usize) -> (Bytes, ChunkMark) {
        let (bytes, mark) = buf.get_mut();
        let mark = mark.expect("frames may refer to the chunk").clone();
        (bytes.split_to(len).freeze(), mark)
    }

    #[test]
    fn a_chunk_nothing_refers_to_is_read_into_again() {
        let mut buf = ReadBuf::new(1 << 20);
        read(&mut buf, READ_SMALL, &[b'x'; 400]);
        let at = buf.get().as_ptr();
        drop(line(&mut buf, 400));
        // Room for 112 bytes is less than a quarter of the offer: the chunk is reclaimed.
        read(&mut buf, READ_SMALL, b"y");
        assert_eq!(buf.get().as_ptr(), at, "the same chunk");
        assert_eq!(buf.chunk, READ_SMALL);
        assert_eq!(buf.held_now(), 0);
    }

    #[test]
    fn a_tail_worth_a_read_is_read_into_while_frames_refer_to_the_chunk() {
        let mut buf = ReadBuf::new(1 << 20);
        read(&mut buf, READ_SMALL, &[b'x'; 100]);
        let frame = line(&mut buf, 100);
        let at = buf.get().as_ptr();
        read(&mut buf, READ_SMALL, b"y");
        assert_eq!(
            buf.get().as_ptr(),
            at,
            "read after the frame, in the same chunk"
        );
        assert_eq!(buf.held_now(), 0, "the chunk is still the current one");
        drop(frame);
    }

    #[test]
    fn a_chunk_frames_refer_to_is_left_to_them_and_counted_until_they_let_go() {
        let mut buf = ReadBuf::new(1 << 20);
        read(&mut buf, READ_SMALL, &[b'x'; 500]);
        let frame = line(&mut buf, 499);
        // The unfinished line moves to a new chunk; the old one stays with the frame.
        read(&mut buf, READ_SMALL, b"y");
        assert_eq!(&buf.get()[..], b"xy");
        assert_eq!(buf.held_now(), 1);
        assert_eq!(&frame.0[..], &[b'x'; 499][..]);
        drop(frame);
        assert_eq!(buf.held_now(), 0, "given back when the frame is dropped");
    }

    #[test]
    fn a_busy_connection_takes_turns_with_two_chunks() {
        let mut buf = ReadBuf::new(1 << 20);
        read(&mut buf, READ_SMALL, &[b'x'; 500]);
        let first = buf.get().as_ptr();
        let frame = line(&mut buf, 500);
        // The first chunk is held: a second one is taken.
        read(&mut buf, READ_SMALL, &[b'y'; 500]);
        let second = buf.get().as_ptr();
        assert_ne!(second, first);
        assert_eq!(buf.held_now(), 1);
        drop(frame);
        let frame = line(&mut buf, 500);
        // The second is held now, and the first let go: it is read into again.
        read(&mut buf, READ_SMALL, b"z");
        assert_eq!(buf.get().as_ptr(), first, "the first chunk again");
        assert_eq!(&buf.get()[..], b"z");
        assert_eq!(buf.held_now(), 1);
        drop(frame);
        assert_eq!(buf.held_now(), 0);
        // Both held: a third chunk is taken, and both earlier ones are counted.
        let mut frames = vec![line(&mut buf, 1)];
        read(&mut buf, READ_SMALL, &[b'w'; 500]);
        frames.push(line(&mut buf, 500));
        read(&mut buf, READ_SMALL, b"v");
        assert_eq!(buf.get().as_ptr(), second, "the second chunk again");
        frames.push(line(&mut buf, 1));
        read(&mut buf, READ_SMALL, &[b'u'; 500]);
        frames.push(line(&mut buf, 500));
        read(&mut buf, READ_SMALL, b"t");
        assert!(![first, second].contains(&buf.get().as_ptr()));
        assert_eq!(buf.held_now(), 2);
        drop(frames);
        assert_eq!(buf.held_now(), 0);
    }

    #[test]
    fn frames_are_copied_once_they_hold_the_budget() {
        let mut buf = ReadBuf::new(2 * SHARED_CHUNK);
        let mut frames = Vec::new();
        for _ in 0..2 {
            read(&mut buf, READ_CHUNK, &[b'x'; READ_CHUNK]);
            frames.push(line(&mut buf, READ_CHUNK));
        }
        read(&mut buf, READ_CHUNK, &[b'x'; READ_CHUNK]);
        assert_eq!(buf.held_now(), 2);
        assert!(
            buf.get_mut().1.is_none(),
            "two chunks held: frames are copied"
        );
        // Copied lines are only skipped in the buffer.
        bytes::Buf::advance(buf.get_mut().0, READ_CHUNK);
        frames.pop();
        read(&mut buf, READ_CHUNK, b"x");
        assert!(
            buf.get_mut().1.is_some(),
            "one let go: frames refer to their chunk again"
        );
        assert_eq!(buf.held_now(), 1);
    }

    #[test]
    fn a_grown_chunk_is_given_back_once_empty_even_while_the_peer_is_busy() {
        let mut buf = ReadBuf::new(1 << 20);
        // A long line arriving in pieces grows the chunk; frames never hold such a chunk.
        while buf.get().len() <= GROWN {
            read(&mut buf, READ_CHUNK, &[b'x'; READ_CHUNK]);
        }
        assert!(buf.chunk > GROWN && buf.mark.is_none());
        buf.shrink_if_grown();
        assert!(buf.chunk > GROWN, "a buffer holding bytes is kept");
        buf.get_mut().0.clear();
        buf.shrink_if_grown();
        assert_eq!((buf.chunk, buf.get().capacity()), (0, 0));
        // Up to four reads' worth is kept.
        read(&mut buf, READ_CHUNK, &[b'x'; READ_CHUNK]);
        read(&mut buf, READ_CHUNK, &[b'x'; READ_CHUNK]);
        buf.get_mut().0.clear();
        assert!(
            buf.chunk > READ_CHUNK && buf.chunk <= GROWN,
            "{}",
            buf.chunk
        );
        buf.shrink_if_grown();
        assert!(buf.chunk > READ_CHUNK);
    }

    #[test]
    fn a_chunk_grown_to_exactly_the_limit_is_kept() {
        let mut buf = ReadBuf::new(1 << 20);
        // An unfinished line of half the limit, then room for a busy read: the new chunk is
        // twice the line, the limit itself, and only a chunk beyond it is given back.
        read(&mut buf, GROWN / 2, &vec![b'x'; GROWN / 2]);
        buf.make_room(READ_CHUNK);
        assert_eq!(buf.chunk, GROWN);
        buf.get_mut().0.clear();
        buf.shrink_if_grown();
        assert_eq!(buf.chunk, GROWN);
    }

    #[test]
    fn giving_back_keeps_no_chunk_and_still_counts_what_frames_hold() {
        let mut buf = ReadBuf::new(1 << 20);
        read(&mut buf, READ_SMALL, b"[1]\n");
        let frame = line(&mut buf, 4);
        buf.give_back();
        assert_eq!((buf.chunk, buf.get().capacity()), (0, 0));
        assert_eq!(buf.held_now(), 1);
        drop(frame);
        assert_eq!(buf.held_now(), 0);
        buf.give_back();
        assert_eq!(buf.held.capacity(), 0, "no room kept to watch chunks");
    }
}
