//! What a typed line means: a public message, a DM, or a `/command`.
//!
//! Parsing is pure so that every spelling the client accepts is pinned down
//! by a unit test. The syntax is the one `PROTOCOL.md` gives for plain-text
//! mode, so a user can move between `lineclient` and `websocat` without
//! learning anything new.

/// The slash commands, for `/help` and for Tab completion.
pub const COMMANDS: [&str; 6] = ["/dm", "/msg", "/who", "/nick", "/help", "/quit"];

/// The text `/help` prints, one entry a line.
pub const HELP: &str = "\
text              say text to everyone (:smile: becomes an emoji)
dm NAME text      a private message (also DM, /dm and /msg)
/who              who is online
/nick NAME        change your name
/help             this help
/quit             leave (so does Ctrl-D; Ctrl-C clears the line)
//text            say text that starts with a slash";

/// One typed line, understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A public message.
    Say(String),
    /// A private message.
    Dm { to: String, text: String },
    /// Ask who is online.
    Who,
    /// Change one's name.
    Nick(String),
    /// Show the help.
    Help,
    /// Leave.
    Quit,
    /// A command used the wrong way; the text says how to use it. Answered
    /// locally, never sent.
    Usage(&'static str),
    /// A `/word` that is no command. Answered locally, never sent, so a
    /// mistyped command never becomes a public message.
    Unknown(String),
}

/// Understands one line. A blank line means nothing and gives `None`.
pub fn parse(line: &str) -> Option<Command> {
    // A line read from a pipe may end in `\r` when it was written on
    // Windows; it is never meant as part of the message.
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return None;
    }
    if let Some(text) = line.strip_prefix("//") {
        return Some(Command::Say(format!("/{text}")));
    }
    let (word, rest) = split_word(line);
    let command = match word {
        // The original client's syntax, kept for the users who learnt it.
        "dm" | "DM" => dm(rest),
        _ if word.starts_with('/') => match word.to_lowercase().as_str() {
            "/dm" | "/msg" => dm(rest),
            "/who" => Command::Who,
            "/nick" => match split_word(rest) {
                (name, "") if !name.is_empty() => Command::Nick(name.to_owned()),
                _ => Command::Usage("usage: /nick NAME"),
            },
            "/help" => Command::Help,
            "/quit" => Command::Quit,
            _ => Command::Unknown(word.to_owned()),
        },
        _ => Command::Say(line.to_owned()),
    };
    Some(command)
}

/// The `NAME text` part of a DM.
fn dm(rest: &str) -> Command {
    match split_word(rest) {
        (to, text) if !to.is_empty() && !text.trim().is_empty() => Command::Dm {
            to: to.to_owned(),
            text: text.to_owned(),
        },
        _ => Command::Usage("usage: dm NAME text (or /dm, /msg)"),
    }
}

/// Splits off the first word, and the whitespace after it.
fn split_word(line: &str) -> (&str, &str) {
    let line = line.trim_start();
    match line.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim_start()),
        None => (line, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dm(to: &str, text: &str) -> Option<Command> {
        Some(Command::Dm {
            to: to.into(),
            text: text.into(),
        })
    }

    #[test]
    fn plain_lines_are_public_messages_kept_as_typed() {
        assert_eq!(parse("hello"), Some(Command::Say("hello".into())));
        assert_eq!(
            parse("  two  spaces "),
            Some(Command::Say("  two  spaces ".into()))
        );
        assert_eq!(
            parse("dmitri says hi"),
            Some(Command::Say("dmitri says hi".into()))
        );
        assert_eq!(parse("hello\r"), Some(Command::Say("hello".into())));
    }

    #[test]
    fn blank_lines_mean_nothing() {
        assert_eq!(parse(""), None);
        assert_eq!(parse("   \t"), None);
        assert_eq!(parse("\r"), None);
    }

    #[test]
    fn every_dm_spelling() {
        for line in [
            "dm Bob psst",
            "DM Bob psst",
            "/dm Bob psst",
            "/msg Bob psst",
            "/MSG  Bob   psst",
        ] {
            assert_eq!(parse(line), dm("Bob", "psst"), "{line}");
        }
        assert_eq!(parse("dm Bob two  words"), dm("Bob", "two  words"));
        assert_eq!(parse("dm Zoë 😀"), dm("Zoë", "😀"));
    }

    #[test]
    fn a_dm_without_a_name_or_text_is_explained_not_sent() {
        for line in ["dm", "dm Bob", "/msg Bob   ", "/dm"] {
            assert!(matches!(parse(line), Some(Command::Usage(_))), "{line}");
        }
    }

    #[test]
    fn slash_commands() {
        assert_eq!(parse("/who"), Some(Command::Who));
        assert_eq!(parse("/WHO"), Some(Command::Who));
        assert_eq!(parse("/nick David"), Some(Command::Nick("David".into())));
        assert!(matches!(parse("/nick"), Some(Command::Usage(_))));
        assert!(matches!(parse("/nick two words"), Some(Command::Usage(_))));
        assert_eq!(parse("/help"), Some(Command::Help));
        assert_eq!(parse("/quit"), Some(Command::Quit));
    }

    #[test]
    fn unknown_commands_stay_local() {
        assert_eq!(parse("/join #rust"), Some(Command::Unknown("/join".into())));
        assert_eq!(parse("/"), Some(Command::Unknown("/".into())));
    }

    #[test]
    fn a_double_slash_says_a_line_starting_with_a_slash() {
        assert_eq!(parse("//who"), Some(Command::Say("/who".into())));
        assert_eq!(parse("//"), Some(Command::Say("/".into())));
    }

    #[test]
    fn the_help_lists_every_command() {
        for command in COMMANDS {
            assert!(HELP.contains(command), "{command}");
        }
    }
}
