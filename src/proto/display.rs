//! Text from the network made safe to show on a terminal: the one escaping
//! every renderer uses (the line client's and the server's plain-text mode).
//!
//! A chat text may hold anything a sender typed or forged: newlines that
//! would make one event look like two, ANSI escape sequences that move the
//! cursor, recolour or retitle the terminal, and bidirectional controls
//! that reorder what follows so a line reads differently from what it says.
//! Each such character is shown escaped, the way Rust writes it in a string
//! literal (`\n`, `\t`, `\u{1b}`, `\u{202e}`), so an event is always one
//! line and shows exactly what was sent. A newline stays visible as `\n`:
//! the reader sees where the sender broke the line, and the next event
//! still starts on a line of its own.

use std::borrow::Cow;

/// Whether `c` must be escaped: a control character (C0, DEL, C1: newline,
/// tab, escape and the like), or a bidirectional embedding, override or
/// isolate (U+202A–U+202E, U+2066–U+2069), which reorders the text after
/// it on screen.
fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every character of [`needs_escape`] escaped; borrowed, with
/// no copy, when there is none (the common case).
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            shown.extend(c.escape_debug());
        } else {
            shown.push(c);
        }
    }
    Cow::Owned(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_text_is_left_alone_without_a_copy() {
        for text in [
            "hello 😀",
            "Zoë",
            "日本語",
            "مرحبا",
            "a \"quoted\" \\ word",
            "",
        ] {
            assert!(
                matches!(escape(text), Cow::Borrowed(t) if t == text),
                "{text}"
            );
        }
    }

    #[test]
    fn line_breaks_and_tabs_stay_visible_on_one_line() {
        assert_eq!(escape("two\nlines"), r"two\nlines");
        assert_eq!(escape("crlf\r\n"), r"crlf\r\n");
        assert_eq!(escape("a\tb"), r"a\tb");
    }

    #[test]
    fn terminal_escapes_cannot_pass() {
        assert_eq!(escape("\x1b[2Jgone"), r"\u{1b}[2Jgone");
        assert_eq!(escape("\x1b]0;title\x07"), r"\u{1b}]0;title\u{7}");
        // C1 controls: CSI on its own, and NEL.
        assert_eq!(escape("\u{9b}31m"), r"\u{9b}31m");
        assert_eq!(escape("a\u{85}b"), r"a\u{85}b");
        assert_eq!(escape("nul\0del\x7f"), r"nul\0del\u{7f}");
        for shown in [escape("\x1b[2J"), escape("\u{9b}2J"), escape("x\ny")] {
            assert!(!shown.chars().any(char::is_control), "{shown}");
        }
    }

    #[test]
    fn bidirectional_overrides_are_shown_not_obeyed() {
        assert_eq!(escape("Dave: \u{202e}olleh"), r"Dave: \u{202e}olleh");
        assert_eq!(escape("\u{2066}x\u{2069}"), r"\u{2066}x\u{2069}");
    }
}
