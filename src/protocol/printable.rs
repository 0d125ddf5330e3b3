//! Text a peer chose, made safe to show on a terminal, in a log line or in
//! the audit log: cut to a stated length, with every control character
//! and every bidirectional control shown as `?`.

use std::fmt::{self, Write};

/// Longest refusal message kept from a peer, in characters: a sentence or
/// two, however much the peer sent.
pub const MAX_MESSAGE_CHARS: usize = 512;

/// Longest name kept from a peer, in characters: a token's subject or id,
/// the host id a client asked for. Twice the longest valid host id, so
/// every valid one shows whole.
pub const MAX_NAME_CHARS: usize = 128;

/// What a character that is not shown becomes.
const HIDDEN: char = '?';

/// What ends text that was cut.
const CUT: char = '…';

/// Whether `c` is shown as it is: not a control character (C0, DEL, C1:
/// escape sequences, line breaks, U+009B, which some terminals read as
/// an escape), not a line or paragraph separator, and not a bidirectional
/// control (which can make text read in an order other than the bytes').
pub fn shown(c: char) -> bool {
    !(c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        ))
}

/// `text` as [`Printable`] shows it: at most `max` characters.
pub fn printable(text: &str, max: usize) -> String {
    Printable::new(text, max).to_string()
}

/// Shows text a peer chose: each character that is not [`shown`] as `?`,
/// and when it has more than `max` characters, its first `max - 1` and
/// `…`, so that a cut is visible and the whole stays within `max`.
#[derive(Debug, Clone, Copy)]
pub struct Printable<'a> {
    text: &'a str,
    max: usize,
}

impl<'a> Printable<'a> {
    /// `text`, to be shown in at most `max` characters.
    pub fn new(text: &'a str, max: usize) -> Printable<'a> {
        Printable { text, max }
    }

    /// `text` as a name: at most [`MAX_NAME_CHARS`].
    pub fn name(text: &'a str) -> Printable<'a> {
        Printable::new(text, MAX_NAME_CHARS)
    }

    /// `text` as a message: at most [`MAX_MESSAGE_CHARS`].
    pub fn message(text: &'a str) -> Printable<'a> {
        Printable::new(text, MAX_MESSAGE_CHARS)
    }
}

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |c: char| if shown(c) { c } else { HIDDEN };
        if self.max == 0 {
            return Ok(());
        }
        let mut chars = self.text.chars();
        for _ in 1..self.max {
            match chars.next() {
                Some(c) => f.write_char(show(c))?,
                None => return Ok(()),
            }
        }
        // One place left: the last character if it is the last, else the
        // mark of a cut.
        match (chars.next(), chars.next()) {
            (Some(c), None) => f.write_char(show(c)),
            (Some(_), Some(_)) => f.write_char(CUT),
            (None, _) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_overrides_become_question_marks() {
        let text = "a\u{9b}31m\u{202e}gnp.exe\u{1b}[2J\n\u{7f}\u{2066}\u{61c}\u{200f}b";
        assert_eq!(printable(text, 100), "a?31m?gnp.exe?[2J?????b");
    }

    #[test]
    fn long_text_is_cut_with_a_visible_mark() {
        let cut = printable(&"x".repeat(16 * 1024), MAX_NAME_CHARS);
        assert_eq!(cut.chars().count(), MAX_NAME_CHARS);
        assert!(cut.ends_with("x…"), "{cut}");
        // Exactly at the limit: whole, no mark.
        let whole = "é".repeat(MAX_NAME_CHARS);
        assert_eq!(printable(&whole, MAX_NAME_CHARS), whole);
        assert_eq!(printable("abc", 0), "");
        assert_eq!(printable("abc", 1), "…");
        assert_eq!(printable("a", 1), "a");
        assert_eq!(printable("", 5), "");
    }

    #[test]
    fn printable_text_stays_as_it_is() {
        let text = "lab-1.example_host: ключ 鍵 🔑 \"quoted\" \\ tab-free";
        assert_eq!(printable(text, MAX_MESSAGE_CHARS), text);
    }
}
