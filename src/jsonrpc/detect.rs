//! Which protocol a connection speaks, from the first bytes its peer sends.

use super::Protocol;

/// The protocol the first bytes show; `None` while they are not enough to tell (only
/// whitespace, or `[` and whitespace so far).
///
/// - `[` with a string, number or `null` next: protocol v1 (a call, a reply, a connection
///   error);
/// - `{`, or `[` with `{` or `]` next: JSON-RPC 2.0 lines (an object, a batch, an empty batch);
/// - an ASCII letter: a header (`Content-Length`), so LSP framing;
/// - anything else: v1, whose reader reports what is wrong with it.
pub(crate) fn detect(bytes: &[u8]) -> Option<Protocol> {
    let mut rest = bytes.iter().skip_while(|b| is_space(**b));
    match rest.next()? {
        b'{' => Some(Protocol::JsonRpc),
        b'[' => match rest.find(|b| !is_space(**b))? {
            b'{' | b']' => Some(Protocol::JsonRpc),
            _ => Some(Protocol::V1),
        },
        b if b.is_ascii_alphabetic() => Some(Protocol::Lsp),
        _ => Some(Protocol::V1),
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_first_frame_shape_picks_its_protocol() {
        let cases: &[(&str, Option<Protocol>)] = &[
            (r#"["add",[2,3],1]"#, Some(Protocol::V1)),
            ("[7,5]", Some(Protocol::V1)),
            ("[-1,5]", Some(Protocol::V1)),
            (
                r#"[null,null,{"code":1,"message":"x"}]"#,
                Some(Protocol::V1),
            ),
            (
                r#"{"jsonrpc":"2.0","method":"add","params":[2,3],"id":1}"#,
                Some(Protocol::JsonRpc),
            ),
            (r#" [ {"jsonrpc":"2.0"}]"#, Some(Protocol::JsonRpc)),
            ("[]", Some(Protocol::JsonRpc)),
            ("Content-Length: 5\r\n\r\n", Some(Protocol::Lsp)),
            ("content-type: x\r\n", Some(Protocol::Lsp)),
            ("\u{1}", Some(Protocol::V1)),
            ("", None),
            (" \r\n", None),
            ("[", None),
            ("[ \n", None),
        ];
        for (bytes, protocol) in cases {
            assert_eq!(detect(bytes.as_bytes()), *protocol, "{bytes:?}");
        }
    }
}
