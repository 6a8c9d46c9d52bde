//! Messages out of bytes: one per line, or each after a `Content-Length` header (the LSP base
//! protocol). Both are bounded by the connection's maximum frame size, and both report a fault
//! as a [`Piece`] and go on with the next message: nothing here ends the stream.

use bytes::{Buf, BytesMut};

/// How messages are delimited on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One message per line (`\n`, an optional `\r` before it); blank lines are skipped.
    Lines,
    /// `Content-Length: N\r\n\r\n` then N bytes; other headers are read and ignored.
    ContentLength,
}

/// The most header bytes read before a header is refused as too long.
const MAX_HEADER: usize = 8 * 1024;

/// What the next bytes hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// One message's bytes.
    Message(BytesMut),
    /// A message longer than the maximum: its length, or `None` for a line still going. Its
    /// bytes are discarded as they arrive, unread.
    TooLarge(Option<u64>),
    /// A header that could not be read; its bytes up to the next blank line are discarded.
    BadHeader(String),
}

/// Splits bytes into [`Piece`]s, keeping what it knows between reads.
#[derive(Debug)]
pub struct Deframer {
    framing: Framing,
    max: usize,
    state: State,
    /// Where to look for the next delimiter, so a long line is not searched again per read.
    scanned: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At a message's start (a line, or a header).
    Start,
    /// A Content-Length body of this many bytes.
    Body(usize),
    /// Discarding this many more bytes of an over-long body.
    Skip(u64),
    /// Discarding the rest of an over-long line.
    SkipLine,
    /// Discarding a bad header up to its blank line.
    SkipHeader,
}

impl Deframer {
    /// A deframer for messages of at most `max` bytes.
    pub fn new(framing: Framing, max: usize) -> Self {
        Deframer {
            framing,
            max,
            state: State::Start,
            scanned: 0,
        }
    }

    /// Whether the bytes so far leave a message unfinished.
    pub fn mid_message(&self, buf: &BytesMut) -> bool {
        self.state != State::Start || !buf.is_empty()
    }

    /// The next piece `buf` holds, taken out of it; `None` when more bytes are needed. At the
    /// end of the stream (`eof`), an unterminated last line is a message.
    pub fn next(&mut self, buf: &mut BytesMut, eof: bool) -> Option<Piece> {
        loop {
            match self.state {
                State::Start => {
                    return match self.framing {
                        Framing::Lines => self.line(buf, eof),
                        Framing::ContentLength => self.header(buf),
                    }
                }
                State::Body(len) => {
                    if buf.len() < len {
                        return None;
                    }
                    self.state = State::Start;
                    return Some(Piece::Message(buf.split_to(len)));
                }
                State::Skip(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    buf.advance(n);
                    let left = left - n as u64;
                    if left > 0 {
                        self.state = State::Skip(left);
                        return None;
                    }
                    self.state = State::Start;
                }
                State::SkipLine => match memchr::memchr(b'\n', buf) {
                    Some(at) => {
                        buf.advance(at + 1);
                        self.state = State::Start;
                    }
                    None => {
                        buf.clear();
                        return None;
                    }
                },
                State::SkipHeader => match find(buf, b"\r\n\r\n", 0) {
                    Some(at) => {
                        buf.advance(at + 4);
                        self.state = State::Start;
                    }
                    None => {
                        // Keep what could start the blank line.
                        let keep = buf.len().min(3);
                        buf.advance(buf.len() - keep);
                        return None;
                    }
                },
            }
        }
    }

    fn line(&mut self, buf: &mut BytesMut, eof: bool) -> Option<Piece> {
        loop {
            let end = match memchr::memchr(b'\n', &buf[self.scanned.min(buf.len())..]) {
                Some(at) => self.scanned + at,
                None if eof && !buf.is_empty() => buf.len(),
                None => {
                    // `+ 1`: a line of the maximum length may still end in `\r\n`.
                    if buf.len() > self.max + 1 {
                        buf.clear();
                        self.scanned = 0;
                        self.state = State::SkipLine;
                        return Some(Piece::TooLarge(None));
                    }
                    self.scanned = buf.len();
                    return None;
                }
            };
            self.scanned = 0;
            let mut line = buf.split_to(end);
            if !buf.is_empty() {
                buf.advance(1);
            }
            if line.last() == Some(&b'\r') {
                line.truncate(line.len() - 1);
            }
            if line.len() > self.max {
                return Some(Piece::TooLarge(Some(line.len() as u64)));
            }
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                if buf.is_empty() {
                    return None;
                }
                continue;
            }
            return Some(Piece::Message(line));
        }
    }

    fn header(&mut self, buf: &mut BytesMut) -> Option<Piece> {
        // Blank lines between messages are tolerated.
        let blank = buf
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        buf.advance(blank);
        if buf.is_empty() {
            return None;
        }
        if matches!(buf[0], b'{' | b'[') {
            // A message without its header: a peer that switched framing, refused at once
            // rather than after 8 KiB of waiting for a blank line.
            self.scanned = 0;
            self.state = State::SkipLine;
            return Some(Piece::BadHeader(
                "a JSON message without a Content-Length header: this connection frames \
                 every message with one (LSP base protocol), as its first message did"
                    .to_owned(),
            ));
        }
        let Some(end) = find(buf, b"\r\n\r\n", self.scanned.saturating_sub(3)) else {
            if buf.len() > MAX_HEADER {
                self.scanned = 0;
                self.state = State::SkipHeader;
                return Some(Piece::BadHeader(format!(
                    "a header longer than {MAX_HEADER} bytes"
                )));
            }
            self.scanned = buf.len();
            return None;
        };
        self.scanned = 0;
        let header = buf.split_to(end + 4);
        match content_length(&header[..end]) {
            Ok(len) if len > self.max as u64 => {
                self.state = State::Skip(len);
                Some(Piece::TooLarge(Some(len)))
            }
            Ok(len) => {
                self.state = State::Body(len as usize);
                self.next(buf, false)
            }
            Err(why) => Some(Piece::BadHeader(why)),
        }
    }
}

/// The `Content-Length` of a header (its lines, without the blank line), or why it has none.
fn content_length(header: &[u8]) -> Result<u64, String> {
    let mut length = None;
    for line in header.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(format!(
                "expected `Name: value` header lines (this connection frames its messages with \
                 Content-Length headers), got `{}`",
                crate::error::truncate(&String::from_utf8_lossy(line), 40)
            ));
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            let value = std::str::from_utf8(value).unwrap_or("").trim();
            let parsed = (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
                .then(|| value.parse::<u64>().ok())
                .flatten();
            match (parsed, length) {
                (Some(n), None) => length = Some(n),
                (Some(_), Some(_)) => return Err("two Content-Length headers".to_owned()),
                (None, _) => {
                    return Err(format!(
                        "Content-Length must be a whole number of bytes, got `{}`",
                        crate::error::truncate(value, 24)
                    ))
                }
            }
        }
    }
    length.ok_or_else(|| "a header without Content-Length".to_owned())
}

/// Where `needle` first occurs in `haystack` at or after `from`.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let from = from.min(haystack.len());
    memchr::memmem::find(&haystack[from..], needle).map(|at| from + at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(framing: Framing, max: usize, input: &[u8], chunk: usize) -> Vec<Piece> {
        let mut deframer = Deframer::new(framing, max);
        let mut buf = BytesMut::new();
        let mut pieces = Vec::new();
        for part in input.chunks(chunk.max(1)) {
            buf.extend_from_slice(part);
            while let Some(piece) = deframer.next(&mut buf, false) {
                pieces.push(piece);
            }
        }
        while let Some(piece) = deframer.next(&mut buf, true) {
            pieces.push(piece);
        }
        pieces
    }

    fn message(text: &str) -> Piece {
        Piece::Message(BytesMut::from(text))
    }

    #[test]
    fn lines_split_anywhere_give_the_same_messages() {
        let input = b"{\"a\":1}\r\n\n  \n{\"b\":2}\n{\"c\":3}";
        for chunk in 1..input.len() {
            assert_eq!(
                all(Framing::Lines, 64, input, chunk),
                vec![
                    message("{\"a\":1}"),
                    message("{\"b\":2}"),
                    message("{\"c\":3}")
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn an_over_long_line_is_reported_once_and_skipped() {
        let input = b"0123456789abcdef\n{}\n";
        for chunk in [1, 3, 40] {
            let pieces = all(Framing::Lines, 8, input, chunk);
            assert_eq!(pieces.len(), 2, "chunk {chunk}: {pieces:?}");
            assert!(matches!(pieces[0], Piece::TooLarge(_)));
            assert_eq!(pieces[1], message("{}"));
        }
    }

    #[test]
    fn content_length_split_anywhere_gives_the_same_messages() {
        let input =
            b"Content-Length: 7\r\n\r\n{\"a\":1}content-type: x\r\ncontent-length:2\r\n\r\n{}";
        for chunk in 1..input.len() {
            assert_eq!(
                all(Framing::ContentLength, 64, input, chunk),
                vec![message("{\"a\":1}"), message("{}")],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn a_length_over_the_maximum_is_refused_from_the_header_and_its_body_skipped() {
        let mut deframer = Deframer::new(Framing::ContentLength, 10);
        let mut buf = BytesMut::from("Content-Length: 1000000\r\n\r\n");
        assert_eq!(
            deframer.next(&mut buf, false),
            Some(Piece::TooLarge(Some(1_000_000)))
        );
        buf.extend_from_slice(&[b'x'; 999_999]);
        assert_eq!(deframer.next(&mut buf, false), None);
        assert!(buf.is_empty());
        buf.extend_from_slice(b"xContent-Length: 2\r\n\r\n{}");
        assert_eq!(deframer.next(&mut buf, false), Some(message("{}")));
    }

    #[test]
    fn bad_headers_are_reported_and_skipped_to_their_blank_line() {
        for bad in [
            "Content-Length: x\r\n\r\n",
            "Content-Length: -1\r\n\r\n",
            "Content-Type: y\r\n\r\n",
            "X-Other: {\"jsonrpc\":\"2.0\"}\r\n\r\n",
            "Content-Length: 1\r\nContent-Length: 1\r\n\r\n",
        ] {
            let input = format!("{bad}Content-Length: 2\r\n\r\n{{}}");
            let pieces = all(Framing::ContentLength, 64, input.as_bytes(), 5);
            assert!(
                matches!(pieces[0], Piece::BadHeader(_)),
                "{bad:?}: {pieces:?}"
            );
            assert_eq!(pieces[1..], [message("{}")], "{bad:?}");
        }
        let pieces = all(
            Framing::ContentLength,
            64,
            b"{\"jsonrpc\":\"2.0\"}\nContent-Length: 2\r\n\r\n{}",
            3,
        );
        assert!(matches!(pieces[0], Piece::BadHeader(_)), "{pieces:?}");
        assert_eq!(pieces[1..], [message("{}")]);
        let long = format!("X: {}", "y".repeat(MAX_HEADER + 10));
        let pieces = all(Framing::ContentLength, 64, long.as_bytes(), 1000);
        assert!(matches!(pieces[..], [Piece::BadHeader(_)]), "{pieces:?}");
    }
}
