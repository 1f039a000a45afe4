//! Text that someone other than the operator chose: process names
//! (`comm`, which any user sets with `prctl(PR_SET_NAME)` or by writing
//! `/proc/self/comm`), container and pod names, netns names, and whatever a
//! file portd reads back says. Printed raw, a newline forges a second line
//! of the monitoring-plugin output, a `|` starts its perfdata, and an ESC
//! drives the reader's terminal.
//!
//! [`escape`] is the one function that makes such text safe to print on a
//! line of `status`, `check`, the journal's MESSAGE or the live view's
//! lines. JSON output and journal fields of their own carry the raw text:
//! their encodings already keep it apart.

use std::fmt::Write as _;

/// `text` as one line of display text. Kept as is: printable characters.
/// Written as `\xNN` (NN its hexadecimal value): control characters (C0,
/// DEL, C1: newline, ESC, ...), `|` (the plugin line's perfdata separator),
/// `\` itself (so an escape in the output always means an escaped
/// character) and each byte that is not valid UTF-8. Written as
/// `\u{NNNN}`: the Unicode line and paragraph separators and the
/// bidirectional controls, which reorder or break what a terminal shows.
pub fn escape(text: impl AsRef<[u8]>) -> String {
    let mut bytes = text.as_ref();
    let mut out = String::with_capacity(bytes.len());
    loop {
        match std::str::from_utf8(bytes) {
            Ok(valid) => {
                push_valid(&mut out, valid);
                return out;
            }
            Err(e) => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                // Valid by construction: from_utf8 said so up to here.
                push_valid(&mut out, std::str::from_utf8(valid).unwrap_or_default());
                let bad = e.error_len().unwrap_or(rest.len());
                for b in &rest[..bad] {
                    let _ = write!(out, "\\x{b:02x}");
                }
                bytes = &rest[bad..];
            }
        }
    }
}

fn push_valid(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            c if c.is_control() || c == '|' || c == '\\' => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            '\u{2028}'
            | '\u{2029}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}' => {
                let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_names_are_kept() {
        assert_eq!(escape("nginx"), "nginx");
        assert_eq!(escape("kworker/0:1-events"), "kworker/0:1-events");
        assert_eq!(escape("café (ü)"), "café (ü)");
    }

    #[test]
    fn line_breaks_pipes_escapes_and_bad_bytes_are_written_as_hex() {
        assert_eq!(escape("x|y=1\nOK - "), "x\\x7cy=1\\x0aOK - ");
        assert_eq!(escape("\u{1b}[31mred"), "\\x1b[31mred");
        assert_eq!(escape("a\\x7c"), "a\\x5cx7c");
        assert_eq!(escape("\r\t\u{7f}\u{85}"), "\\x0d\\x09\\x7f\\x85");
        assert_eq!(escape(b"a\xffb\xc3"), "a\\xffb\\xc3");
        assert_eq!(escape("\u{202e}evil\u{2028}"), "\\u{202e}evil\\u{2028}");
    }

    proptest! {
        #[test]
        fn any_bytes_give_one_printable_line_without_a_pipe(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let shown = escape(&bytes);
            prop_assert!(!shown.contains('|'));
            prop_assert!(!shown.chars().any(char::is_control));
            prop_assert_eq!(shown.lines().count(), usize::from(!shown.is_empty()));
            // Nothing but the input's own printable text is added unescaped.
            if let Ok(text) = std::str::from_utf8(&bytes)
                && text.chars().all(|c| !c.is_control() && c != '|' && c != '\\' && !('\u{2000}'..='\u{206f}').contains(&c))
            {
                prop_assert_eq!(shown, text);
            }
        }
    }
}
