//! [`FrameCodec`]: bytes from the stream to [`Frame`]s. Encoding is [`Frame::encode`]'s.
//!
//! Line splitting, the length bound and discarding of oversized lines are tokio-util's
//! [`LinesCodec`]; this codec adds the frame shape on top and turns every per-frame fault into
//! an item instead of an error, because `FramedRead` ends the stream after any decoder error
//! and one bad line must never close a connection.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, LinesCodec, LinesCodecError};

use crate::error::{code, RpcError};
use crate::frame::{Frame, InvalidFrame};

/// The default maximum length of one line, terminator excluded: 8 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 8 * 1024 * 1024;

/// Decodes protocol v1 lines.
///
/// Each decoded item is `Ok(frame)` or `Err(InvalidFrame)` for a line that was dropped (not
/// JSON, not UTF-8, not a known shape, longer than the maximum, or cut off by the end of the
/// stream); the decoder's own `Err` is reserved for I/O errors. Empty lines are skipped.
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
    lines: LinesCodec,
    max_frame_size: usize,
}

impl FrameCodec {
    /// A codec that discards lines longer than `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> Self {
        FrameCodec {
            lines: LinesCodec::new_with_max_length(max_frame_size),
            max_frame_size,
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
        loop {
            return match self.lines.decode(buf) {
                Ok(Some(line)) if line.is_empty() => continue,
                Ok(Some(line)) => Ok(Some(Frame::parse(&line))),
                Ok(None) => Ok(None),
                Err(LinesCodecError::MaxLineLengthExceeded) => Ok(Some(Err(self.too_large()))),
                // LinesCodec has consumed the line before checking its encoding.
                Err(LinesCodecError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                    Ok(Some(Err(InvalidFrame::new(
                        None,
                        RpcError::new(code::PARSE_ERROR, "parse error: line is not valid UTF-8"),
                    ))))
                }
                Err(LinesCodecError::Io(e)) => Err(e),
            };
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, std::io::Error> {
        if let Some(item) = self.decode(buf)? {
            return Ok(Some(item));
        }
        // A line without its terminator is never dispatched: the peer died mid-frame.
        let rest = buf.len();
        buf.clear();
        // LinesCodec remembers how far it searched; start afresh with the buffer.
        self.lines = LinesCodec::new_with_max_length(self.max_frame_size);
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
    fn any_split_of_a_stream_decodes_to_the_same_frames() {
        let mut wire = BytesMut::new();
        let frames: Vec<Frame> = (0..20).map(ping).collect();
        for f in &frames {
            f.encode(&mut wire);
        }
        for chunk in [1, 2, 3, 7, 64, wire.len()] {
            let mut codec = FrameCodec::new(64);
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                got.extend(
                    decode_all(&mut codec, &mut buf)
                        .into_iter()
                        .map(Result::unwrap),
                );
            }
            assert_eq!(got, frames, "chunk size {chunk}");
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
    fn partial_frame_at_eof_is_never_dispatched() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from("[\"ping\",[5]]\n[\"ping\",[6]]");
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), Some(Ok(ping(5))));
        let cut = codec.decode_eof(&mut buf).unwrap().unwrap().unwrap_err();
        assert!(cut.error.message.contains("mid-frame"), "{cut}");
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    }
}
