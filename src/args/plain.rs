//! The fast attempt at reading a handler's arguments: a `serde::Deserializer` for JSON in the
//! shape senders write (no whitespace, strings without escapes, integers that fit), which
//! reads such text without serde_json's general machinery.
//!
//! Whatever it reads, it reads as serde_json would: the same visitor calls with the same
//! values. Any other value is "delegated": its extent is found and serde_json reads it with
//! the same method. On any error (a shape it does not take, or the visitor's own), the caller
//! reads the whole text again with serde_json, so every error is serde_json's.
//!
//! An error is final even when a `Deserialize` impl swallows it (a default on error, say):
//! after an error this reader and serde_json may stand at different places in the text, so
//! what follows could differ. Every error passing through here marks the attempt failed.

use serde::de::{self, DeserializeSeed, Visitor};
use serde::Deserialize;
use serde_json::de::SliceRead;
use serde_json::Error;

use crate::wire::PLAIN;

/// serde_json's recursion limit: nesting that reaches it fails there, so it fails here too
/// (counted the same way, including inside delegated values, which serde_json reads with a
/// fresh limit of its own).
const DEPTH: u32 = 128;

/// Reads `text` as serde_json does: in the usual shape here, anything else, and every
/// error, with serde_json. What `Args::parse` (and so `Args::deserialize`) and
/// `Response::deserialize` call.
pub(crate) fn deserialize<'de, T: Deserialize<'de>>(text: &'de [u8]) -> Result<T, Error> {
    from_slice(text).or_else(|_| serde_json::from_slice(text))
}

/// Reads `text` as one value of type `T`; an error means "ask serde_json", never a verdict.
pub(crate) fn from_slice<'de, T: Deserialize<'de>>(text: &'de [u8]) -> Result<T, Error> {
    let mut de = Plain {
        text,
        at: 0,
        depth: DEPTH,
        failed: false,
    };
    let value = T::deserialize(&mut de)?;
    if de.at == text.len() && !de.failed {
        Ok(value)
    } else {
        Err(not_plain())
    }
}

/// The text is not in the shape read here; serde_json reads it instead (and says what is
/// wrong with it, if anything). The caller drops this error.
#[cold]
fn not_plain() -> Error {
    de::Error::custom("not plain JSON")
}

/// The reader: the text and where it stands in it.
struct Plain<'de> {
    text: &'de [u8],
    /// The next byte to read.
    at: usize,
    /// Nesting still allowed, as serde_json counts it (`remaining_depth`).
    depth: u32,
    /// An error has passed through, even if something swallowed it.
    failed: bool,
}

/// An integer serde_json reads into a `u64` or an `i64`, with those values.
enum Integer {
    Unsigned(u64),
    Signed(i64),
}

impl<'de> Plain<'de> {
    /// Marks the attempt failed if `result` is an error.
    fn watch<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    /// Takes `word` if it is next.
    fn literal(&mut self, word: &[u8]) -> bool {
        let end = self.at + word.len();
        let found = self.text.get(self.at..end) == Some(word);
        if found {
            self.at = end;
        }
        found
    }

    /// An integer serde_json reads exactly (`parse_integer`): `0` or up to 19 digits without
    /// a leading zero, or `-` and up to 18 digits not starting with `0` (`-0` is a float
    /// there), followed by neither a fraction nor an exponent. Taken only if it is one.
    fn integer(&mut self) -> Option<Integer> {
        let text = self.text;
        let negative = self.peek() == Some(b'-');
        let start = self.at + usize::from(negative);
        let digits = text.get(start..)?;
        let mut value = 0u64;
        let mut len = 0;
        for &byte in digits {
            let digit = byte.wrapping_sub(b'0');
            if digit > 9 {
                break;
            }
            // Wraps only past 19 digits, which are refused below.
            value = value.wrapping_mul(10).wrapping_add(u64::from(digit));
            len += 1;
        }
        let most = if negative { 18 } else { 19 };
        if len == 0 || len > most || (digits[0] == b'0' && (len > 1 || negative)) {
            return None;
        }
        if matches!(digits.get(len), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        self.at = start + len;
        Some(if negative {
            Integer::Signed(-(value as i64))
        } else {
            Integer::Unsigned(value)
        })
    }

    /// A string without escapes or control characters, borrowed as serde_json borrows it.
    /// Taken only if it is one.
    fn string(&mut self) -> Option<&'de str> {
        let start = self.at;
        let string = std::str::from_utf8(self.plain_string()?).ok();
        if string.is_none() {
            self.at = start;
        }
        string
    }

    /// The bytes of a string without escapes or control characters, not checked to be
    /// UTF-8 (neither does serde_json check a string it skips). Taken only if it is one.
    fn plain_string(&mut self) -> Option<&'de [u8]> {
        let text = self.text;
        let rest = text.get(self.at + 1..)?;
        let len = plain_len(rest)?;
        if rest[len] != b'"' {
            return None;
        }
        self.at += len + 2;
        Some(&rest[..len])
    }

    /// An array, its elements read here.
    fn seq<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, Error> {
        // Never below 1: after an error (`failed`) the depth is not given back, and reading
        // may go on if something swallows the error; it must still be bounded.
        if self.depth <= 1 {
            return Err(not_plain());
        }
        self.depth -= 1;
        self.at += 1;
        let value = visitor.visit_seq(Seq {
            de: self,
            first: true,
        })?;
        self.depth += 1;
        if self.peek() != Some(b']') {
            return Err(not_plain());
        }
        self.at += 1;
        Ok(value)
    }

    /// Hands the next value to serde_json: `read` calls the same method on a serde_json
    /// deserializer over just that value's text, which must read all of it.
    fn delegate<T>(
        &mut self,
        read: impl FnOnce(&mut serde_json::Deserializer<SliceRead<'de>>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let (text, start) = (self.text, self.at);
        self.skip().ok_or_else(not_plain)?;
        let mut de = serde_json::Deserializer::from_slice(&text[start..self.at]);
        let value = read(&mut de)?;
        de.end()?;
        Ok(value)
    }

    /// Skips one value of any kind, within the nesting still allowed; whether it is plain
    /// (no escapes in its strings). `None` for anything but JSON without whitespace.
    fn skip(&mut self) -> Option<bool> {
        self.skip_value(self.depth)
    }

    fn skip_value(&mut self, depth: u32) -> Option<bool> {
        let close = match self.peek()? {
            b'"' => return self.skip_string(),
            b't' => return self.literal(b"true").then_some(true),
            b'f' => return self.literal(b"false").then_some(true),
            b'n' => return self.literal(b"null").then_some(true),
            b'-' | b'0'..=b'9' => return self.skip_number().then_some(true),
            b'[' => b']',
            b'{' => b'}',
            _ => return None,
        };
        if depth <= 1 {
            return None;
        }
        let depth = depth - 1;
        self.at += 1;
        if self.peek()? == close {
            self.at += 1;
            return Some(true);
        }
        let mut plain = true;
        loop {
            if close == b'}' {
                if self.peek()? != b'"' {
                    return None;
                }
                plain &= self.skip_string()?;
                if self.peek()? != b':' {
                    return None;
                }
                self.at += 1;
            }
            plain &= self.skip_value(depth)?;
            let next = self.peek()?;
            self.at += 1;
            match next {
                b',' => continue,
                _ if next == close => return Some(plain),
                _ => return None,
            }
        }
    }

    /// Skips a string, escapes included (their validity is serde_json's to check); whether
    /// it had none.
    fn skip_string(&mut self) -> Option<bool> {
        let text = self.text;
        let mut plain = true;
        self.at += 1;
        loop {
            let rest = text.get(self.at..)?;
            let len = plain_len(rest)?;
            self.at += len + 1;
            match rest[len] {
                b'"' => return Some(plain),
                b'\\' => {
                    plain = false;
                    self.at += 1;
                }
                _ => return None,
            }
        }
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, as serde_json takes it.
    fn skip_number(&mut self) -> bool {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.skip_digits(),
            _ => return false,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !self.skip_some_digits() {
                return false;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if !self.skip_some_digits() {
                return false;
            }
        }
        true
    }

    fn skip_digits(&mut self) {
        let rest = self.text.get(self.at..).unwrap_or_default();
        self.at += rest
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(rest.len());
    }

    fn skip_some_digits(&mut self) -> bool {
        let start = self.at;
        self.skip_digits();
        self.at > start
    }
}

/// Where the first byte that ends a run of plain string text lies: `"`, `\\` or a control
/// character. Eight bytes at a time while eight are left, then byte by byte with the table.
fn plain_len(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        // The high bit of each byte below 0x20, then of each zero byte after `^`; a borrow
        // only runs upwards from a byte that matches, so the lowest mark is the first match.
        let control = word.wrapping_sub(ONES * 0x20);
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        let stops = (control & !word)
            | (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash);
        let stops = stops & HIGH;
        if stops != 0 {
            return Some(at + stops.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let rest = chunks.remainder();
    Some(at + rest.iter().position(|&b| !PLAIN[usize::from(b)])?)
}

/// Methods that take an integer here and leave anything else to serde_json, which reads
/// every one of them through `deserialize_number` (and so visits integers alike).
macro_rules! numbers {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let value = match self.integer() {
                Some(Integer::Unsigned(value)) => visitor.visit_u64(value),
                Some(Integer::Signed(value)) => visitor.visit_i64(value),
                None => self.delegate(|de| de.$method(visitor)),
            };
            self.watch(value)
        }
    )*};
}

/// Methods left to serde_json entirely.
macro_rules! delegated {
    ($($method:ident($($arg:ident: $ty:ty),*))*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, Error> {
            let value = self.delegate(|de| de.$method($($arg,)* visitor));
            self.watch(value)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for &mut Plain<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let value = match self.peek() {
            Some(b'n') if self.literal(b"null") => visitor.visit_unit(),
            Some(b't') if self.literal(b"true") => visitor.visit_bool(true),
            Some(b'f') if self.literal(b"false") => visitor.visit_bool(false),
            Some(b'"') => match self.string() {
                Some(string) => visitor.visit_borrowed_str(string),
                None => self.delegate(|de| de.deserialize_any(visitor)),
            },
            Some(b'[') => self.seq(visitor),
            // With its `arbitrary_precision` feature serde_json still visits these integers
            // so (`parse_any_number`); only other numbers become maps.
            Some(b'-' | b'0'..=b'9') => match self.integer() {
                Some(Integer::Unsigned(value)) => visitor.visit_u64(value),
                Some(Integer::Signed(value)) => visitor.visit_i64(value),
                None => self.delegate(|de| de.deserialize_any(visitor)),
            },
            _ => self.delegate(|de| de.deserialize_any(visitor)),
        };
        self.watch(value)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let value = if self.literal(b"true") {
            visitor.visit_bool(true)
        } else if self.literal(b"false") {
            visitor.visit_bool(false)
        } else {
            self.delegate(|de| de.deserialize_bool(visitor))
        };
        self.watch(value)
    }

    numbers! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_f32 deserialize_f64
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let string = match self.peek() {
            Some(b'"') => self.string(),
            _ => None,
        };
        let value = match string {
            Some(string) => visitor.visit_borrowed_str(string),
            None => self.delegate(|de| de.deserialize_str(visitor)),
        };
        self.watch(value)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let value = match self.peek() {
            Some(b'n') if self.literal(b"null") => visitor.visit_none(),
            Some(b'n') => Err(not_plain()),
            _ => visitor.visit_some(&mut *self),
        };
        self.watch(value)
    }

    /// serde_json reads a newtype as its inner value, except its own `RawValue`, which it
    /// marks by a name in its private namespace.
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        let value = if name.starts_with("$serde_json::") {
            self.delegate(|de| de.deserialize_newtype_struct(name, visitor))
        } else {
            visitor.visit_newtype_struct(&mut *self)
        };
        self.watch(value)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let value = match self.peek() {
            Some(b'[') => self.seq(visitor),
            _ => self.delegate(|de| de.deserialize_seq(visitor)),
        };
        self.watch(value)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        let value = match self.peek() {
            Some(b'[') => self.seq(visitor),
            _ => self.delegate(|de| de.deserialize_tuple(len, visitor)),
        };
        self.watch(value)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        let value = match self.peek() {
            Some(b'[') => self.seq(visitor),
            _ => self.delegate(|de| de.deserialize_tuple_struct(name, len, visitor)),
        };
        self.watch(value)
    }

    /// serde_json skips the value and visits a unit.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let start = self.at;
        // A string, the usual thing to ignore, without the general skipper.
        let skipped = match self.peek() {
            Some(b'"') if self.plain_string().is_some() => Some(true),
            _ => self.skip(),
        };
        let value = match skipped {
            Some(true) => visitor.visit_unit(),
            // Escapes, which serde_json checks, or no value at all.
            _ => {
                self.at = start;
                self.delegate(|de| de.deserialize_ignored_any(visitor))
            }
        };
        self.watch(value)
    }

    delegated! {
        deserialize_i128() deserialize_u128() deserialize_char() deserialize_bytes()
        deserialize_byte_buf() deserialize_unit() deserialize_map() deserialize_identifier()
        deserialize_unit_struct(name: &'static str)
        deserialize_struct(name: &'static str, fields: &'static [&'static str])
        deserialize_enum(name: &'static str, variants: &'static [&'static str])
    }
}

/// The elements of an array, read as serde_json's `SeqAccess` reads them, without whitespace.
struct Seq<'a, 'de> {
    de: &'a mut Plain<'de>,
    first: bool,
}

impl<'de> de::SeqAccess<'de> for Seq<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        // As serde_json's `has_next_element`: after the first element, a comma and a value.
        match self.de.peek() {
            Some(b']') => return Ok(None),
            Some(_) if self.first => self.first = false,
            Some(b',') if !matches!(self.de.text.get(self.de.at + 1), Some(b']') | None) => {
                self.de.at += 1;
            }
            _ => {
                self.de.failed = true;
                return Err(not_plain());
            }
        }
        seed.deserialize(&mut *self.de).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::fmt::Debug;

    use serde::de::IgnoredAny;
    use serde_json::value::RawValue;
    use serde_json::Value;

    use super::*;
    use crate::args::{Args, Repr};

    #[derive(Debug, PartialEq, Deserialize)]
    struct Fields {
        a: u64,
        b: String,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    enum Choice {
        A,
        B(u64),
        C(u64, String),
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(i64),
        Text(String),
        Pair(u8, bool),
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Id(u64);

    #[derive(Debug, PartialEq, Deserialize)]
    struct NoArgs([(); 0]);

    /// Swallows its value's errors, as "default on error" helpers do: where a reader stands
    /// after an error then decides what follows.
    #[derive(Debug, PartialEq)]
    struct Lenient<T>(Option<T>);

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            Ok(Lenient(T::deserialize(d).ok()))
        }
    }

    /// Texts in the plain shape and out of it, valid and not.
    fn texts() -> Vec<String> {
        let mut texts: Vec<String> = [
            r#"["0123456789",5]"#,
            r#"["a",0]"#,
            r#"["",18446744073709551615]"#,
            r#"["x",18446744073709551616]"#,
            r#"["x",9999999999999999999]"#,
            r#"["x",99999999999999999999]"#,
            r#"["x",-1]"#,
            r#"["x",5.0]"#,
            r#"["x",5e0]"#,
            r#"["x",1E2]"#,
            r#"["x",-0]"#,
            r#"["x",-0.0]"#,
            r#"["x",01]"#,
            r#"["x",00]"#,
            r#"["x",-]"#,
            r#"["x",-01]"#,
            r#"["x",1.]"#,
            r#"["x",1e]"#,
            "[0]",
            "[-999999999999999999]",
            "[-9999999999999999999]",
            "[-9223372036854775808]",
            "[-9223372036854775809]",
            "[255]",
            "[256]",
            "[-128]",
            "[-129]",
            "[1.5]",
            "[0.1]",
            "[3.141592653589793]",
            "[1e400]",
            "[-1e-400]",
            "[1e38]",
            "[1e39]",
            "[16777217]",
            "[340282366920938463463374607431768211455]",
            "[-170141183460469231731687303715884105728]",
            r#"["a\"b",1]"#,
            r#"["a\\b",1]"#,
            r#"["\u00e9",1]"#,
            r#"["\ud800",1]"#,
            r#"["\x",1]"#,
            "[\"a\u{1}b\",1]",
            "[\"a\tb\",1]",
            r#"["é ü 日本",2]"#,
            r#"["é"]"#,
            r#"["x"]"#,
            r#"["xy"]"#,
            r#"[""]"#,
            r#"[ "a",1]"#,
            r#"["a", 1]"#,
            r#"["a",1 ]"#,
            r#"["a",1] "#,
            " [1]",
            "[1]\n",
            "[1,\n2]",
            r#"["a",1,2]"#,
            r#"["a"]"#,
            "[]",
            "[[]]",
            "[1,]",
            "[,1]",
            "[1",
            "[1,",
            r#"["a",1]]"#,
            r#"["a",1],"#,
            "",
            "[",
            "]",
            "null",
            "[null]",
            "[null,null]",
            "[1,null]",
            "[1,2]",
            "[nul]",
            "[nulll]",
            r#"[true,"x"]"#,
            r#"[false,""]"#,
            r#"[tru,"x"]"#,
            "[true]",
            "[[]]",
            "[[],[]]",
            "[[[]]]",
            r#"[[1,"a"],[2,"b"]]"#,
            r#"[[[1,"a"],[2,"b"]]]"#,
            r#"[[[1,"a"],[2,"b\n"]]]"#,
            r#"[[[1,"a",3]]]"#,
            r#"[[[1 ,"a"]]]"#,
            r#"[[1,"a",[true,null,{"k":[1,2]}]]]"#,
            r#"[{"a":1,"b":"x"}]"#,
            r#"[{"a":"x","b":"y"}]"#,
            r#"[{"a":"x","b":2},{"a":1,"b":"x"}]"#,
            r#"{"a":1,"b":"x"}"#,
            r#"{"a":1,"b":"x\u0041"}"#,
            r#"{"a":1}"#,
            r#"[{"1":"x","2":"y"}]"#,
            r#"{"1":"x","2":"y"}"#,
            r#"{"1":"x","1":"y"}"#,
            r#"{"x":"y"}"#,
            r#"{"a" :1}"#,
            r#"[{"a" :1}]"#,
            "[{}]",
            "{}",
            "[{,}]",
            r#"[1,"x"]"#,
            r#"[[1,"x"]]"#,
            r#"[1,"x",2]"#,
            r#"["A"]"#,
            r#""A""#,
            r#"{"B":1}"#,
            r#"{"C":[1,"x"]}"#,
            r#"{"B":"1"}"#,
            r#"[{"B":1}]"#,
            r#"[[1,true],[2,false]]"#,
            "[[1,2],3]",
            "[[1,300],3]",
            r#"[[300,true]]"#,
            r#"[[-1,"x"],[1,"y"]]"#,
        ]
        .into_iter()
        .map(String::from)
        .collect();
        for depth in [126, 127, 128, 129, 200] {
            texts.push(format!("{}{}", "[".repeat(depth), "]".repeat(depth)));
            texts.push(format!(
                "[1,{}{}]",
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            ));
            texts.push(format!(
                "[{}{}]",
                r#"{"a":"#.repeat(depth - 1),
                "}".repeat(depth - 1)
            ));
        }
        texts
    }

    /// Reads every text as `$t` each way: whatever the plain reader reads, serde_json reads
    /// the same (compared by `$same`), and `Args::parse` always gives serde_json's
    /// result. Returns how many texts the plain reader took.
    macro_rules! agree {
        ($t:ty) => {
            agree!($t, |a: &$t, b: &$t| a == b
                && format!("{a:?}") == format!("{b:?}"))
        };
        ($t:ty, $same:expr) => {{
            let same = $same;
            let mut taken = 0;
            for text in texts() {
                let serde = serde_json::from_slice::<$t>(text.as_bytes());
                if let Ok(plain) = from_slice::<$t>(text.as_bytes()) {
                    taken += 1;
                    let serde = serde.as_ref().unwrap_or_else(|e| {
                        panic!("{}: {text}: serde_json fails: {e}", stringify!($t))
                    });
                    assert!(
                        same(&plain, serde),
                        "{}: {text}: {plain:?} != {serde:?}",
                        stringify!($t)
                    );
                }
                let args = Args(Repr::text(text.as_str().into()));
                let serde = serde_json::from_str::<$t>(args.get());
                match (args.parse::<$t>(), serde) {
                    (Ok(ours), Ok(serde)) => {
                        assert!(same(&ours, &serde), "{}: {text}", stringify!($t))
                    }
                    (Err(ours), Err(serde)) => assert_eq!(ours.to_string(), serde.to_string()),
                    (ours, serde) => panic!("{}: {text}: {ours:?} but {serde:?}", stringify!($t)),
                }
            }
            taken
        }};
    }

    #[test]
    fn whatever_the_plain_reader_reads_serde_json_reads_alike() {
        let debug = |a: &dyn Debug, b: &dyn Debug| format!("{a:?}") == format!("{b:?}");
        let taken = [
            agree!((String, u64)),
            agree!((u8,)),
            agree!((i8,)),
            agree!((u16,)),
            agree!((i32,)),
            agree!((i64, Option<i64>)),
            agree!((u128,)),
            agree!((i128,)),
            agree!(Vec<u64>),
            agree!(Vec<i64>),
            agree!(Option<Vec<u64>>),
            agree!((f64,)),
            agree!((f32,)),
            agree!((bool, String)),
            agree!((IgnoredAny, u64)),
            agree!(IgnoredAny),
            agree!(Value),
            agree!((Value,)),
            // `RawValue` has no `PartialEq`; its Debug shows the text.
            agree!((Box<RawValue>,), debug),
            agree!(Box<RawValue>, debug),
            agree!(Fields),
            agree!((Fields,)),
            agree!(Vec<Fields>),
            agree!(Choice),
            agree!((Choice,)),
            agree!(Vec<Either>),
            // Debug shows a `HashMap` in no fixed order.
            agree!(HashMap<u64, String>, |a: &HashMap<_, _>, b: &HashMap<_, _>| a == b),
            agree!(
                (HashMap<u64, String>,),
                |a: &(HashMap<_, _>,), b: &(HashMap<_, _>,)| a == b
            ),
            agree!((char,)),
            agree!(((),)),
            agree!(()),
            agree!((Vec<(u8, String)>,)),
            agree!((Id,)),
            agree!(NoArgs),
            agree!(Vec<Lenient<Fields>>),
            agree!(Vec<Lenient<u8>>),
            agree!(Vec<Lenient<(u8, String)>>),
            agree!((Lenient<Vec<u8>>, u8)),
        ];
        assert!(
            taken.iter().all(|&n| n > 0),
            "the plain reader takes some of each: {taken:?}"
        );
    }

    #[test]
    fn a_plain_run_ends_at_the_first_quote_backslash_or_control_character() {
        let by_table = |bytes: &[u8]| bytes.iter().position(|&b| b"\"\\".contains(&b) || b < 0x20);
        // Fillers just beside the stops (0x1f/0x20, 0x21/0x22/0x23, 0x5b/0x5c/0x5d) and with
        // the high bit set, where word-at-a-time tricks go wrong.
        for filler in [
            b'a', 0x20, 0x21, 0x23, 0x5b, 0x5d, 0x7f, 0x80, 0xa0, 0xdc, 0xff,
        ] {
            for len in 0..24 {
                let mut bytes = vec![filler; len];
                assert_eq!(plain_len(&bytes), by_table(&bytes));
                for at in 0..len {
                    for byte in 0..=255 {
                        bytes[at] = byte;
                        assert_eq!(plain_len(&bytes), by_table(&bytes), "{bytes:?}");
                        // A second stop after the first changes nothing.
                        if at + 1 < len {
                            bytes[at + 1] = 0;
                            assert_eq!(plain_len(&bytes), by_table(&bytes), "{bytes:?}");
                            bytes[at + 1] = filler;
                        }
                    }
                    bytes[at] = filler;
                }
            }
        }
    }

    #[test]
    fn bytes_that_are_not_utf_8_are_read_as_serde_json_reads_them() {
        let text = b"[\"\xff\",1]";
        assert!(from_slice::<(String, u8)>(text).is_err());
        assert!(serde_json::from_slice::<(String, u8)>(text).is_err());
        assert!(from_slice::<(Value, u8)>(text).is_err());
        // Neither checks a string it skips.
        assert_eq!(from_slice::<(IgnoredAny, u8)>(text).unwrap().1, 1);
        assert_eq!(
            serde_json::from_slice::<(IgnoredAny, u8)>(text).unwrap().1,
            1
        );
    }

    #[test]
    fn integers_are_read_as_serde_json_reads_them_wherever_they_lie() {
        let mut numbers: Vec<String> = (0..1000).step_by(7).map(|n| n.to_string()).collect();
        for digits in 1..=21 {
            for lead in ["1", "9", "0", "18446744073709551615"] {
                numbers.push(format!("{lead}{}", "9".repeat(digits)));
                numbers.push(format!("{lead}{}", "0".repeat(digits)));
            }
        }
        numbers.extend(["9223372036854775807", "9223372036854775808", "00", "0"].map(String::from));
        for number in numbers.clone() {
            numbers.push(format!("-{number}"));
        }
        let mut taken = 0;
        for number in &numbers {
            for after in ["", ".5", "e1", "E+2", "x"] {
                // Near the end of the text (under eight bytes left) and far from it.
                for (before, end) in [("", "]"), (r#""abcdefgh","#, r#","abcdefghijk"]"#)] {
                    let text = format!("[{before}{number}{after}{end}");
                    let text = text.as_bytes();
                    taken += usize::from(from_slice::<Vec<Value>>(text).is_ok());
                    for (plain, serde) in [
                        (
                            from_slice::<Vec<Value>>(text).ok(),
                            serde_json::from_slice::<Vec<Value>>(text).ok(),
                        ),
                        (
                            from_slice::<(Value, u64)>(text)
                                .ok()
                                .map(|v| vec![v.0, v.1.into()]),
                            serde_json::from_slice::<(Value, u64)>(text)
                                .ok()
                                .map(|v| vec![v.0, v.1.into()]),
                        ),
                    ] {
                        if plain.is_some() {
                            assert_eq!(plain, serde, "{}", String::from_utf8_lossy(text));
                        }
                    }
                    if let Ok(plain) = from_slice::<(f64,)>(&text[..text.len() - end.len()]) {
                        let serde =
                            serde_json::from_slice::<(f64,)>(&text[..text.len() - end.len()]);
                        assert_eq!(format!("{plain:?}"), format!("{:?}", serde.unwrap()));
                    }
                }
            }
        }
        assert!(
            taken > numbers.len(),
            "integers take the plain path: {taken}"
        );
        assert_eq!(from_slice::<(u64,)>(b"[12345678]").unwrap().0, 12_345_678);
        assert_eq!(
            from_slice::<(u64,)>(b"[1234567890123456789]").unwrap().0,
            1_234_567_890_123_456_789
        );
        assert_eq!(
            from_slice::<(i64,)>(b"[-123456789012345678]").unwrap().0,
            -123_456_789_012_345_678
        );
    }

    #[test]
    fn borrowed_strings_borrow_from_the_text() {
        for text in texts() {
            let serde = serde_json::from_slice::<(&str,)>(text.as_bytes());
            if let Ok(plain) = from_slice::<(&str,)>(text.as_bytes()) {
                assert_eq!(Some(&plain), serde.as_ref().ok(), "{text}");
            }
            let args = Args(Repr::text(text.as_str().into()));
            match (
                args.parse::<(&str,)>(),
                serde_json::from_str::<(&str,)>(args.get()),
            ) {
                (Ok(ours), Ok(serde)) => assert_eq!(ours, serde),
                (Err(ours), Err(serde)) => assert_eq!(ours.to_string(), serde.to_string()),
                (ours, serde) => panic!("{text}: {ours:?} but {serde:?}"),
            }
        }
        let text = br#"["abc"]"#;
        let (plain,) = from_slice::<(&str,)>(text).unwrap();
        assert_eq!(plain.as_ptr(), text[2..].as_ptr());
    }

    #[test]
    fn the_usual_shapes_are_read_without_serde_json() {
        let text = br#"["0123456789",5]"#;
        assert_eq!(
            from_slice::<(String, u64)>(text).unwrap(),
            ("0123456789".into(), 5)
        );
        assert_eq!(from_slice::<(IgnoredAny, u64)>(text).unwrap().1, 5);
        assert_eq!(
            from_slice::<(i64, Option<i64>, bool)>(b"[-7,null,true]").unwrap(),
            (-7, None, true)
        );
        assert_eq!(
            from_slice::<(Vec<(u8, String)>, f64)>(br#"[[[1,"a"],[2,"b"]],3]"#).unwrap(),
            (vec![(1, "a".into()), (2, "b".into())], 3.0)
        );
        assert_eq!(
            from_slice::<Value>(br#"[1,-2,"x",[true,null]]"#).unwrap(),
            serde_json::json!([1, -2, "x", [true, null]])
        );
        assert_eq!(from_slice::<(Id,)>(b"[9]").unwrap(), (Id(9),));
        assert_eq!(from_slice::<NoArgs>(b"[]").unwrap(), NoArgs([]));
    }

    #[test]
    fn text_out_of_the_plain_shape_falls_back_to_serde_json() {
        for text in [
            &br#"[ "a",5]"#[..],
            br#"["a", 5]"#,
            br#"["a",5] "#,
            br#"["a",01]"#,
            br#"["a",5,6]"#,
            br#"["a",5,]"#,
            br#"["a",5"#,
            br#"["a"]"#,
            b"[[1 ,2],3]",
        ] {
            assert!(from_slice::<(Value, f64)>(text).is_err());
        }
        // Errors swallowed on the way still count: serde_json would stand elsewhere after them.
        assert!(from_slice::<Vec<Lenient<u8>>>(b"[300,1]").is_err());
        assert!(from_slice::<Vec<Lenient<Fields>>>(br#"[{"a":"x","b":2}]"#).is_err());
        assert!(serde_json::from_slice::<Vec<Lenient<Fields>>>(br#"[{"a":"x","b":2}]"#).is_err());
        // Nesting past the limit, swallowed, leaves no room for more: reading stays bounded.
        let deep = |n| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let text = format!("[{},{}]", deep(200), deep(100_000));
        assert!(from_slice::<Vec<Lenient<Value>>>(text.as_bytes()).is_err());
        assert!(from_slice::<Vec<Lenient<IgnoredAny>>>(text.as_bytes()).is_err());
        let args = Args(Repr::text(text.into()));
        assert_eq!(
            args.parse::<Vec<Lenient<Value>>>()
                .map_err(|e| e.to_string()),
            serde_json::from_str(args.get()).map_err(|e| e.to_string())
        );
    }
}
