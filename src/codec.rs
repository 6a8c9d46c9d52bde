//! [`FrameCodec`]: bytes from the stream to [`Frame`]s. Encoding is [`Frame::encode`]'s.
//!
//! Each line is parsed where it lies in the read buffer (no copy, no `String` per line), then
//! the buffer moves past it. A connection's own reader goes further: it splits each line off
//! its buffer, and the frame's arguments or result stay in it (see `connection::read_buf`);
//! frames decoded through [`Decoder`] copy them, so they never keep the caller's buffer.
//! Every per-frame fault is an item instead of an error, because `FramedRead` ends the
//! stream after any decoder error and one bad line must never close a connection.

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

use crate::error::{code, RpcError};
use crate::frame::{Frame, InvalidFrame, MethodNames};
use crate::wire::{ChunkMark, Line};

/// The default maximum length of one line, terminator excluded: 8 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 8 * 1024 * 1024;

/// Decodes protocol v1 lines.
///
/// Each decoded item is `Ok(frame)` or `Err(InvalidFrame)` for a line that was dropped (not
/// JSON, not UTF-8, not a known shape, longer than the maximum, or cut off by the end of the
/// stream); the decoder's own `Err` is never returned. Empty lines are skipped.
///
/// ```
/// use bytes::BytesMut;
/// use diarrhoea::{codec::FrameCodec, Frame};
/// use tokio_util::codec::Decoder;
///
/// let mut codec = FrameCodec::new(1024);
/// let mut buf = BytesMut::from("\n[\"ping\",[1]]\r\nnot json\n[\"po");
/// assert!(matches!(codec.decode(&mut buf), Ok(Some(Ok(Frame::Notification { .. })))));
/// assert!(matches!(codec.decode(&mut buf), Ok(Some(Err(_)))));
/// assert!(matches!(codec.decode(&mut buf), Ok(None))); // waits for the rest of the line
/// ```
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame_size: usize,
    /// How far the unfinished line at the front of the buffer has been searched for its end,
    /// so a long line arriving in pieces is scanned once.
    searched: usize,
    /// Skipping an oversized line up to its end.
    discarding: bool,
    /// Recent method names, so a repeated name costs no allocation.
    methods: MethodNames,
}

impl FrameCodec {
    /// A codec that discards lines longer than `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> Self {
        FrameCodec {
            max_frame_size,
            searched: 0,
            discarding: false,
            methods: MethodNames::default(),
        }
    }

    /// The maximum line length this codec accepts.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    fn too_large(&self) -> InvalidFrame {
        InvalidFrame::new(
            None,
            RpcError::new(
                code::FRAME_TOO_LARGE,
                format!(
                    "frame too large: line longer than {} bytes discarded",
                    self.max_frame_size
                ),
            ),
        )
    }

    /// Parses one line without its `\n`; `None` for an empty line. With `wire` (the bytes
    /// `line` lies in), the frame's arguments or result stay in them.
    fn parse_line(&mut self, line: &[u8], wire: Option<Line<'_>>) -> Option<Decoded> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return None;
        }
        Some(Frame::parse_bytes(line, Some(&mut self.methods), wire))
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME_SIZE)
    }
}

/// One decoded line: a frame, or the reason the line was dropped.
pub type Decoded = Result<Frame, InvalidFrame>;

impl Decoder for FrameCodec {
    type Item = Decoded;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, std::io::Error> {
        self.decode_from(buf, None)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, std::io::Error> {
        self.decode_eof_from(buf, None)
    }
}

impl FrameCodec {
    /// As [`Decoder::decode`]; with `chunk`, each line is split off `buf` and the frame's
    /// arguments or result stay in it, marked as held with `chunk` (the reader's count of the
    /// chunks frames hold).
    pub(crate) fn decode_from(
        &mut self,
        buf: &mut BytesMut,
        chunk: Option<&ChunkMark>,
    ) -> Result<Option<Decoded>, std::io::Error> {
        loop {
            // A line of `max_frame_size` bytes has its `\n` one byte further.
            let read_to = buf.len().min(self.max_frame_size.saturating_add(1));
            let end =
                memchr::memchr(b'\n', &buf[self.searched..read_to]).map(|at| self.searched + at);
            match (self.discarding, end) {
                (true, Some(end)) => {
                    buf.advance(end + 1);
                    self.discarding = false;
                    self.searched = 0;
                }
                (true, None) => {
                    // Drop what arrived of the oversized line, so it is never held.
                    buf.advance(read_to);
                    self.searched = 0;
                    if buf.is_empty() {
                        return Ok(None);
                    }
                }
                (false, Some(end)) => {
                    self.searched = 0;
                    let item = match chunk {
                        Some(chunk) => {
                            let bytes = buf.split_to(end + 1).freeze();
                            self.parse_line(
                                &bytes[..end],
                                Some(Line {
                                    bytes: &bytes,
                                    chunk,
                                }),
                            )
                        }
                        None => {
                            let item = self.parse_line(&buf[..end], None);
                            buf.advance(end + 1);
                            item
                        }
                    };
                    if let Some(item) = item {
                        return Ok(Some(item));
                    }
                }
                (false, None) if buf.len() > self.max_frame_size => {
                    self.discarding = true;
                    self.searched = 0;
                    return Ok(Some(Err(self.too_large())));
                }
                (false, None) => {
                    self.searched = read_to;
                    return Ok(None);
                }
            }
        }
    }

    /// As [`Decoder::decode_eof`], with `chunk` as for [`FrameCodec::decode_from`].
    pub(crate) fn decode_eof_from(
        &mut self,
        buf: &mut BytesMut,
        chunk: Option<&ChunkMark>,
    ) -> Result<Option<Decoded>, std::io::Error> {
        if let Some(item) = self.decode_from(buf, chunk)? {
            return Ok(Some(item));
        }
        // A line without its terminator is never dispatched: the peer died mid-frame.
        let rest = buf.len();
        buf.clear();
        self.searched = 0;
        self.discarding = false;
        if rest == 0 {
            return Ok(None);
        }
        Ok(Some(Err(InvalidFrame::new(
            None,
            RpcError::new(
                code::PARSE_ERROR,
                format!("connection closed mid-frame: {rest} bytes without a line end dropped"),
            ),
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Args;

    fn decode_all(codec: &mut FrameCodec, buf: &mut BytesMut) -> Vec<Decoded> {
        let mut out = Vec::new();
        while let Some(item) = codec.decode(buf).unwrap() {
            out.push(item);
        }
        out
    }

    fn ping(i: u64) -> Frame {
        Frame::Notification {
            method: "ping".into(),
            args: Args::new(&(i,)).unwrap(),
        }
    }

    #[test]
    fn a_line_of_exactly_max_frame_size_may_wait_for_its_newline() {
        // The line's bytes arrive first, its `\n` in a later read: it is not too large yet.
        let line = br#"["ping",[1]]"#;
        let mut codec = FrameCodec::new(line.len());
        let mut buf = BytesMut::from(&line[..]);
        assert!(decode_all(&mut codec, &mut buf).is_empty());
        buf.extend_from_slice(b"\n");
        let got = decode_all(&mut codec, &mut buf);
        assert_eq!(got.len(), 1);
        assert!(got[0].is_ok(), "{got:?}");
    }

    #[test]
    fn any_split_of_a_stream_decodes_to_the_same_frames() {
        let mut wire = BytesMut::new();
        let frames: Vec<Frame> = (0..20).map(ping).collect();
        for f in &frames {
            f.encode(&mut wire);
        }
        // Copying the arguments out of the buffer, and leaving them in it.
        let mark = ChunkMark::default();
        for shared in [None, Some(&mark)] {
            for chunk in [1, 2, 3, 7, 64, wire.len()] {
                let mut codec = FrameCodec::new(64);
                let mut buf = BytesMut::new();
                let mut got = Vec::new();
                for piece in wire.chunks(chunk) {
                    buf.extend_from_slice(piece);
                    while let Some(item) = codec.decode_from(&mut buf, shared).unwrap() {
                        got.push(item.unwrap());
                    }
                }
                assert_eq!(
                    got,
                    frames,
                    "chunk size {chunk}, shared {}",
                    shared.is_some()
                );
            }
        }
    }

    #[test]
    fn a_codec_shares_the_names_it_decodes() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from("[\"ping\",[1]]\n[\"ping\",[2]]\n");
        let method = |item: Option<Decoded>| match item {
            Some(Ok(Frame::Notification { method, .. })) => method,
            other => panic!("{other:?}"),
        };
        let a = method(codec.decode(&mut buf).unwrap());
        let b = method(codec.decode(&mut buf).unwrap());
        assert!(std::sync::Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn with_a_chunk_arguments_and_results_stay_in_their_line() {
        let mut codec = FrameCodec::default();
        let chunk = ChunkMark::default();
        let watch = chunk.watch();
        let mut buf = BytesMut::from("[\"ping\",[1]]\r\n\n[3,{\"r\":2}]\n[\"po");
        let start = buf.as_ptr() as usize;
        let within = |text: &str| (start..start + 40).contains(&(text.as_ptr() as usize));
        let args = match codec.decode_from(&mut buf, Some(&chunk)).unwrap() {
            Some(Ok(Frame::Notification { args, .. })) => args,
            other => panic!("{other:?}"),
        };
        assert!(args.in_line() && within(args.get()), "not copied");
        assert_eq!(args, Args::new(&(1,)).unwrap());
        let result = match codec.decode_from(&mut buf, Some(&chunk)).unwrap() {
            Some(Ok(Frame::Reply { result, .. })) => result.unwrap(),
            other => panic!("{other:?}"),
        };
        assert!(result.in_line() && within(result.get()));
        assert_eq!(result.get(), r#"{"r":2}"#);
        assert!(codec.decode_from(&mut buf, Some(&chunk)).unwrap().is_none());
        assert_eq!(&buf[..], b"[\"po", "the unfinished line stays");
        drop(chunk);
        drop(args);
        assert!(watch.is_held(), "the result holds the chunk");
        drop(result);
        assert!(!watch.is_held());
    }

    #[test]
    fn without_a_chunk_frames_keep_nothing_of_the_buffer() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from("[\"ping\",[1]]\n");
        match codec.decode(&mut buf).unwrap() {
            Some(Ok(Frame::Notification { args, .. })) => assert!(!args.in_line()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_maximum_is_the_one_given() {
        assert_eq!(FrameCodec::new(100).max_frame_size(), 100);
        assert_eq!(
            FrameCodec::default().max_frame_size(),
            DEFAULT_MAX_FRAME_SIZE
        );
    }

    #[test]
    fn crlf_and_empty_lines() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from("\r\n\n[\"ping\",[1]]\r\n\n");
        let got = decode_all(&mut codec, &mut buf);
        assert_eq!(got, vec![Ok(ping(1))]);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_line_is_discarded_and_decoding_resumes() {
        let mut codec = FrameCodec::new(16);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[b'x'; 40]);
        let first = codec.decode(&mut buf).unwrap().unwrap().unwrap_err();
        assert_eq!(first.error.code, code::FRAME_TOO_LARGE);
        // The buffer does not hold the oversized line while it keeps arriving.
        buf.extend_from_slice(&[b'x'; 40]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.len() <= 17, "buffer kept {} bytes", buf.len());
        buf.extend_from_slice(b"xx\n[\"ping\",[2]]\n");
        assert_eq!(decode_all(&mut codec, &mut buf), vec![Ok(ping(2))]);
    }

    #[test]
    fn oversized_line_arriving_whole_is_discarded() {
        let mut codec = FrameCodec::new(16);
        let mut buf = BytesMut::from(
            format!("[\"ping\",[\"{}\"]]\n[\"ping\",[3]]\n", "y".repeat(50)).as_str(),
        );
        let got = decode_all(&mut codec, &mut buf);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].as_ref().unwrap_err().error.code,
            code::FRAME_TOO_LARGE
        );
        assert_eq!(got[1], Ok(ping(3)));
    }

    #[test]
    fn invalid_utf8_is_dropped_and_decoding_resumes() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&b"[\"p\xffng\",[]]\n[\"ping\",[4]]\n"[..]);
        let got = decode_all(&mut codec, &mut buf);
        assert_eq!(got[0].as_ref().unwrap_err().error.code, code::PARSE_ERROR);
        assert_eq!(got[1], Ok(ping(4)));
    }

    #[test]
    fn bytes_that_are_not_utf8_are_caught_inside_strings_too() {
        // The fast path takes these lines' shape; the line must still be UTF-8 to be taken.
        let mark = ChunkMark::default();
        for shared in [None, Some(&mark)] {
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::from(
                &b"[\"ping\",[\"\xff\"]]\n[\"ping\",[\"\xc3\xbc\xe2\x82\"]]\n[\"p\xc3\xbcng\",[\"\xc3\xbc\"]]\n"[..],
            );
            let mut got = Vec::new();
            while let Some(item) = codec.decode_from(&mut buf, shared).unwrap() {
                got.push(item);
            }
            assert_eq!(got.len(), 3);
            for bad in &got[..2] {
                let error = &bad.as_ref().unwrap_err().error;
                assert_eq!(error.code, code::PARSE_ERROR);
                assert!(error.message.contains("UTF-8"), "{error}");
            }
            match &got[2] {
                Ok(Frame::Notification { method, args }) => {
                    assert_eq!((&**method, args.get()), ("p\u{fc}ng", "[\"\u{fc}\"]"));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn partial_frame_at_eof_is_never_dispatched() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from("[\"ping\",[5]]\n[\"ping\",[6]]");
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), Some(Ok(ping(5))));
        let cut = codec.decode_eof(&mut buf).unwrap().unwrap().unwrap_err();
        assert!(cut.error.message.contains("mid-frame"), "{cut}");
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    }
}
