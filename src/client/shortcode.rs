//! `:smile:`-style shortcodes, turned into emoji before a message is sent.
//!
//! The table is GitHub's (gemoji), through the `emojis` crate: a hand-made
//! table would be incomplete and go stale. The expansion happens in the
//! client, so everyone, whatever their client, sees the emoji.

use std::borrow::Cow;

/// Replaces every known `:shortcode:` in `text` by its emoji. Anything else
/// between colons (`12:30:45`, `:nope:`) is left exactly as typed.
pub fn expand(text: &str) -> Cow<'_, str> {
    if !text.contains(':') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find(':') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(':') else { break };
        match emojis::get_by_shortcode(&after[..close]) {
            Some(emoji) => {
                out.push_str(&rest[..open]);
                out.push_str(emoji.as_str());
                rest = &after[close + 1..];
            }
            None => {
                // The closing colon may open the next shortcode
                // (`:nope:smile:`), so only what comes before it is done.
                out.push_str(&rest[..open + 1 + close]);
                rest = &after[close..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn known_shortcodes_become_emoji() {
        assert_eq!(expand("hi :smile:"), "hi 😄");
        assert_eq!(expand(":+1::tada:"), "👍🎉");
        assert_eq!(expand("a :heart: b"), "a ❤️ b");
    }

    #[test]
    fn everything_else_is_left_as_typed() {
        for text in [
            "12:30:45",
            ":nope:",
            "a: b: c",
            "::",
            ":",
            "no colons",
            ":smile",
            "smile:",
        ] {
            assert_eq!(expand(text), text);
        }
    }

    #[test]
    fn an_unknown_code_does_not_hide_the_next_one() {
        assert_eq!(expand(":nope:smile:"), ":nope😄");
        assert_eq!(expand("::smile:"), ":😄");
        assert_eq!(expand("at 10:30 :smile:"), "at 10:30 😄");
    }

    #[test]
    fn text_around_emoji_and_wide_characters_survives() {
        assert_eq!(expand("日本 :smile: 語"), "日本 😄 語");
        assert_eq!(expand("😀:smile:😀"), "😀😄😀");
    }
}
