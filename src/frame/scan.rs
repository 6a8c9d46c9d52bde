//! The parser's fast path: a frame in the shape senders write (no whitespace, strings without
//! escapes or control characters, shallow nesting) is split into its elements here, without
//! serde_json. Anything else returns `None` and takes serde_json's path, which also words
//! every error, so this file only ever accepts valid JSON and never rejects a line.
//!
//! It reads bytes, and says whether they were all ASCII: then the line is UTF-8 without a
//! separate check, which would cost as much again as the scan.

use super::Parts;
use crate::wire::PLAIN;

/// Nesting kept on the fast path; serde_json's own limit (128) applies on the other.
const MAX_DEPTH: usize = 32;

/// The bytes that end the scanner's run through a string: [`PLAIN`]'s stops, and any byte
/// that is not ASCII, so the scanner learns whether the line is all ASCII at no extra cost.
static ASCII_PLAIN: [bool; 256] = {
    let mut ascii = PLAIN;
    let mut byte = 0x80;
    while byte < 0x100 {
        ascii[byte] = false;
        byte += 1;
    }
    ascii
};

/// Whether `text` goes into a JSON string as it is: serde_json escapes nothing else (it
/// writes non-ASCII characters unescaped).
#[inline]
pub(super) fn is_plain(text: &str) -> bool {
    text.bytes().all(|b| PLAIN[usize::from(b)])
}

/// A line split by the fast path.
#[derive(Debug)]
pub(super) struct Scanned<'a> {
    pub(super) parts: Parts<'a>,
    /// Every byte was ASCII, so the line is UTF-8.
    pub(super) ascii: bool,
}

/// The elements of `line` if it has the usual shape; `None` when serde_json must decide.
/// Bytes that are not ASCII are taken only inside strings, and are not checked here: a
/// caller that has not checked the line is UTF-8 must when `ascii` is false.
pub(super) fn split(line: &[u8]) -> Option<Scanned<'_>> {
    let mut scan = Scanner {
        bytes: line,
        at: 0,
        ascii: true,
    };
    scan.eat(b'[')?;
    let mut parts = Parts {
        items: [None; 4],
        len: 0,
    };
    if scan.eat(b']').is_none() {
        loop {
            let start = scan.at;
            scan.value()?;
            // More than four elements: serde_json counts them for the error.
            *parts.items.get_mut(parts.len)? = Some(&line[start..scan.at]);
            parts.len += 1;
            match scan.next()? {
                b',' => continue,
                b']' => break,
                _ => return None,
            }
        }
    }
    (scan.at == line.len()).then_some(Scanned {
        parts,
        ascii: scan.ascii,
    })
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
    /// No byte that is not ASCII seen so far.
    ascii: bool,
}

impl Scanner<'_> {
    fn next(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// One JSON value inside the frame's array. A loop, not recursion: the open arrays and
    /// objects are a count and a bit each (set for an object), which costs less per value
    /// than a call, and the fast path's nesting is bounded anyway.
    fn value(&mut self) -> Option<()> {
        let mut open = 0;
        let mut objects = 0u32;
        loop {
            match self.peek()? {
                b'"' => self.string()?,
                b'-' | b'0'..=b'9' => self.number()?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                // The frame's array is the first level.
                byte @ (b'[' | b'{') if open + 2 <= MAX_DEPTH => {
                    self.at += 1;
                    let object = byte == b'{';
                    if self.eat(if object { b'}' } else { b']' }).is_none() {
                        open += 1;
                        objects = objects << 1 | u32::from(object);
                        if object {
                            self.key()?;
                        }
                        continue;
                    }
                }
                _ => return None,
            }
            // A value ended: the next one in its array or object, or the end of those.
            loop {
                if open == 0 {
                    return Some(());
                }
                let object = objects & 1 == 1;
                match self.next()? {
                    b',' if object => {
                        self.key()?;
                        break;
                    }
                    b',' => break,
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                open -= 1;
                objects >>= 1;
            }
        }
    }

    /// An object's key and its colon.
    fn key(&mut self) -> Option<()> {
        self.string()?;
        self.eat(b':')
    }

    /// A string without escapes: printable bytes up to the closing quote.
    fn string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            let rest = self.bytes.get(self.at..)?;
            let len = rest.iter().position(|&b| !ASCII_PLAIN[usize::from(b)])?;
            self.at += len + 1;
            match rest[len] {
                b'"' => return Some(()),
                0x80.. => self.ascii = false,
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`; what follows is the caller's
    /// to check, so `01` fails there.
    fn number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        self.at += rest
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(rest.len());
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the fast path makes of `line`, checked against serde_json's reading.
    fn agrees(line: &str) -> bool {
        let fast = split(line.as_bytes());
        if let Some(scanned) = &fast {
            let serde = Parts::by_serde(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(scanned.parts, serde, "{line}");
            assert_eq!(scanned.ascii, line.is_ascii(), "{line}");
        }
        fast.is_some()
    }

    #[test]
    fn the_usual_shapes_take_the_fast_path() {
        for line in [
            r#"["ping",["flood1",1732400000000]]"#,
            r#"["echo",["0123456789",5],17]"#,
            r#"["m",[],1,{"timeout_ms":250}]"#,
            r#"[17,["0123456789",5]]"#,
            r#"[3,null]"#,
            r#"[4,{"a":[1,-2.5e-3,true,false,null,{}],"b":"ü"}]"#,
            r#"["m",[0,-0,1.0,1E+2,1e-2,"",[[]]]]"#,
            r#"[]"#,
            r#"["a","b","c","d"]"#,
        ] {
            assert!(agrees(line), "{line}");
        }
    }

    #[test]
    fn a_line_is_ascii_only_if_every_byte_is() {
        let line = |text: &str| split(text.as_bytes()).map(|scanned| scanned.ascii);
        assert_eq!(line(r#"["ping",["a",1]]"#), Some(true));
        assert_eq!(line(r#"["ping",["ü",1]]"#), Some(false));
        assert_eq!(line(r#"["püng",[]]"#), Some(false));
        assert_eq!(line(r#"["ping",[],1,{"ü":1}]"#), Some(false));
        // Past a byte that is not ASCII, the string still ends at its quote.
        assert_eq!(line(r#"["ping",["üa\n"]]"#), None);
        // Outside strings, such bytes are not JSON: serde_json words the error.
        assert_eq!(
            split("[\"ping\",[1]]\u{a0}".as_bytes()).map(|s| s.ascii),
            None
        );
        // Bytes that are not UTF-8 are taken, and flagged, for the caller to check.
        assert_eq!(
            split(b"[\"ping\",[\"\xff\"]]").map(|scanned| scanned.ascii),
            Some(false)
        );
    }

    #[test]
    fn anything_else_is_left_to_serde_json() {
        for line in [
            r#"[ "ping",[]]"#,
            r#"["ping",[] ]"#,
            r#"["ping",[]] "#,
            r#"["p\"ing",[]]"#,
            r#"["ping",["a\nb"]]"#,
            "[\"ping\",[\"\u{1}\"]]",
            r#"["ping",[01]]"#,
            r#"["ping",[1.]]"#,
            r#"["ping",[1e]]"#,
            r#"["ping",[-]]"#,
            r#"["ping",[tru]]"#,
            r#"["ping",[1,]]"#,
            r#"["ping",{"a" :1}]"#,
            r#"["ping",{1:1}]"#,
            r#"["ping",[]]]"#,
            r#"["ping",[]"#,
            r#"["a","b","c","d","e"]"#,
            r#"{}"#,
            "",
        ] {
            assert!(!agrees(line), "{line}");
        }
    }

    #[test]
    fn plain_text_is_what_serde_json_writes_unescaped() {
        for text in [
            "ping", "", "a b/c", "ü€", "x\u{7f}", "a\"b", "a\\b", "a\nb", "\u{1f}",
        ] {
            let escaped = serde_json::to_string(text).unwrap();
            assert_eq!(
                is_plain(text),
                escaped == format!("\"{text}\""),
                "{text:?} -> {escaped}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_left_to_serde_json() {
        let nested = |depth: usize| format!("[\"m\",{}{}]", "[".repeat(depth), "]".repeat(depth));
        assert!(agrees(&nested(MAX_DEPTH - 1)));
        assert!(!agrees(&nested(MAX_DEPTH)));
        // Objects count the same.
        let objects = |depth: usize| {
            format!(
                "[\"m\",[],1,{}1{}]",
                "{\"a\":".repeat(depth),
                "}".repeat(depth)
            )
        };
        assert!(agrees(&objects(MAX_DEPTH - 1)));
        assert!(!agrees(&objects(MAX_DEPTH)));
    }
}
