//! [`WireText`]: JSON text that stays in the line it was read in, for the arguments and
//! results of incoming frames, so they cost no copy.
//!
//! The text keeps the whole read chunk it lies in alive. The reader decides which chunks
//! frames may refer to and counts those they still hold (through [`ChunkMark`]); what hands
//! such text to user code that may keep it copies it out first.
//!
//! Also here: [`PLAIN`], the bytes a JSON string holds as they are, for both readers of text.

use std::fmt;
use std::sync::{Arc, Weak};

use bytes::Bytes;

/// The bytes a JSON string holds as they are: anything but `"`, `\\` and control characters.
/// A table, so a loop over a string is one load and one test per byte: the frame scanner's
/// (`frame::scan`) and the arguments reader's (`args::plain`).
pub(crate) static PLAIN: [bool; 256] = {
    let mut plain = [true; 256];
    let mut byte = 0;
    while byte < 0x20 {
        plain[byte] = false;
        byte += 1;
    }
    plain[b'"' as usize] = false;
    plain[b'\\' as usize] = false;
    plain
};

/// Shared by every frame that refers to one chunk of the read buffer, so the reader can tell
/// whether frames still hold the chunk without holding it itself.
#[derive(Clone, Default)]
pub(crate) struct ChunkMark(Arc<()>);

impl ChunkMark {
    /// Watches the chunk without holding it.
    pub(crate) fn watch(&self) -> ChunkWatch {
        ChunkWatch(Arc::downgrade(&self.0))
    }

    /// Whether anything besides this mark refers to the chunk.
    pub(crate) fn is_shared(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }
}

/// A chunk left behind by the reader, watched until the last frame referring to it is gone.
#[derive(Debug)]
pub(crate) struct ChunkWatch(Weak<()>);

impl ChunkWatch {
    /// Whether some frame still refers to the chunk.
    pub(crate) fn is_held(&self) -> bool {
        self.0.strong_count() > 0
    }
}

/// A line split off the read buffer whose text frames may refer to.
#[derive(Clone, Copy)]
pub(crate) struct Line<'a> {
    pub(crate) bytes: &'a Bytes,
    pub(crate) chunk: &'a ChunkMark,
}

impl Line<'_> {
    /// `text`, which must lie within the line and be UTF-8, without copying it.
    pub(crate) fn text(&self, text: &[u8]) -> WireText {
        WireText {
            bytes: self.bytes.slice_ref(text),
            _chunk: self.chunk.clone(),
        }
    }
}

/// Text read from a line and checked there to be UTF-8, in memory of its own. (Safe code
/// cannot skip the check; nothing is replaced, as the text is UTF-8.)
pub(crate) fn to_text(text: &[u8]) -> Box<str> {
    String::from_utf8_lossy(text).into()
}

/// Valid UTF-8 JSON text inside a line of the read buffer. Not `Clone`: what copies it
/// copies the text out (`Args::clone`, `Response::clone`).
pub(crate) struct WireText {
    /// Checked to be UTF-8 where the line was read.
    bytes: Bytes,
    /// Counts this text among the frames holding its chunk.
    _chunk: ChunkMark,
}

impl WireText {
    /// The text. Safe code cannot skip the check that the bytes are UTF-8; it is repeated
    /// here, which is cheap next to parsing the JSON (and the text is short: long lines are
    /// never shared).
    pub(crate) fn get(&self) -> &str {
        std::str::from_utf8(&self.bytes).expect("checked where the line was read")
    }

    /// The text as bytes, for parsers that take them (no UTF-8 check).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for WireText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_refers_to_its_line_and_marks_the_chunk_held() {
        let bytes = Bytes::from_static(br#"["m",[1,"a"]]"#);
        let chunk = ChunkMark::default();
        let watch = chunk.watch();
        let line = Line {
            bytes: &bytes,
            chunk: &chunk,
        };
        let full = std::str::from_utf8(&bytes).unwrap();
        let (args, first) = (
            line.text(&full.as_bytes()[5..12]),
            line.text(&full.as_bytes()[6..7]),
        );
        assert_eq!(args.get(), r#"[1,"a"]"#);
        assert_eq!(args.as_bytes().as_ptr(), bytes[5..].as_ptr(), "not copied");
        assert_eq!(format!("{first:?}"), "1");
        assert!(chunk.is_shared());
        drop(chunk);
        assert!(watch.is_held(), "the text holds the chunk");
        drop(args);
        assert!(watch.is_held(), "as long as any text of it is kept");
        drop(first);
        assert!(!watch.is_held());
    }
}
