//! Text an upstream wrote (a Nuki Web API `detailMessage`, a bridge's refusal message, a webhook
//! URL Nuki lists) on its way into a log line or onto a terminal. Escaped first, always: a
//! newline in it would start a forged log line of its own, a terminal escape sequence would
//! rewrite what an operator sees, a bidirectional override would reorder it.

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every line break, control character and bidirectional formatting character
/// written as a Rust escape (`\n`, `\u{1b}`); everything else as it is.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escaping) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escaping(c) {
            write!(escaped, "{}", c.escape_default()).expect("writing to a String");
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

fn needs_escaping(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Line and paragraph separators, bidirectional marks, embeddings, overrides and
            // isolates.
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_and_terminal_controls_are_escaped_and_the_rest_kept() {
        assert!(matches!(
            escape("Your access token is not authorized"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            escape("Schloss Küche \"Tür\" \\ ok"),
            "Schloss Küche \"Tür\" \\ ok"
        );
        assert_eq!(
            escape("denied\n2026-01-01 INFO forged\r\u{1b}[2K\u{1b}]0;title\u{7}"),
            "denied\\n2026-01-01 INFO forged\\r\\u{1b}[2K\\u{1b}]0;title\\u{7}"
        );
        assert_eq!(escape("a\tb\u{85}c\u{9b}d"), "a\\tb\\u{85}c\\u{9b}d");
        assert_eq!(
            escape("x\u{2028}y\u{202e}z\u{2066}"),
            "x\\u{2028}y\\u{202e}z\\u{2066}"
        );
        for escaped in [escape("\n\u{1b}\r\u{7f}"), escape("\u{2029}")] {
            assert!(!escaped.chars().any(needs_escaping), "{escaped}");
        }
    }
}
