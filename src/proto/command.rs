//! What a typed line means, and what it asks of the server: the one
//! mapping from a line to a [`Request`], used by the line client and by the
//! server's plain-text mode alike.
//!
//! Parsing is pure so that every spelling is pinned down by a unit test. The
//! syntax is the one `docs/protocol.md` gives for plain-text mode, so a user
//! can move between `lineclient` and `websocat` without learning anything
//! new.

use crate::proto::protocol::{Cid, Request, DEFAULT_HISTORY_PAGE, MAX_HISTORY_PAGE};

/// The slash commands, for `/help` and for Tab completion.
pub const COMMANDS: [&str; 7] = ["/dm", "/msg", "/who", "/nick", "/history", "/help", "/quit"];

/// The text `/help` shows, one command a line: the same in the line client
/// and in plain-text mode (the client adds its keys, see `client`).
pub const HELP: &str = "\
commands:
text              say text to everyone
dm NAME text      a private message (also DM, /dm and /msg)
/who              who is online
/nick NAME        change your name
/history [N]      show N older messages (default 100, at most 1000)
/help             this help
/quit             leave
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
    /// Ask for this many messages older than the oldest one shown.
    History(usize),
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

/// What a command comes to once the context is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A request to send to the server.
    Send(Request),
    /// Show [`HELP`].
    Help,
    /// Leave.
    Quit,
    /// Answered where it was typed, never sent: the sentence says why
    /// (a usage, an unknown command).
    Refused(String),
}

impl Command {
    /// The command with the text of a `Say` or `Dm` passed through
    /// `rewrite`: the line client expands `:shortcodes:` this way, before
    /// the one mapping of [`into_outcome`](Self::into_outcome).
    pub fn map_text(self, rewrite: impl FnOnce(&str) -> String) -> Command {
        match self {
            Command::Say(text) => Command::Say(rewrite(&text)),
            Command::Dm { to, text } => Command::Dm {
                to,
                text: rewrite(&text),
            },
            other => other,
        }
    }

    /// What the command asks for: `cid` goes on a `say` or `dm` (the
    /// client's id for it; plain-text mode gives none), and `before` on a
    /// `history` (the oldest id the user has seen; `None` pages back from
    /// the newest message).
    pub fn into_outcome(self, cid: Option<Cid>, before: Option<u64>) -> Outcome {
        let request = match self {
            Command::Say(text) => Request::Say { text, cid },
            Command::Dm { to, text } => Request::Dm { to, text, cid },
            Command::Who => Request::Who,
            Command::Nick(name) => Request::Nick { name },
            Command::History(limit) => Request::History { before, limit },
            Command::Help => return Outcome::Help,
            Command::Quit => return Outcome::Quit,
            Command::Usage(usage) => return Outcome::Refused(usage.to_owned()),
            Command::Unknown(word) => {
                return Outcome::Refused(format!("unknown command {word} (/help lists them)"))
            }
        };
        Outcome::Send(request)
    }
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
            "/history" => history(rest),
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

/// The `[N]` part of `/history`.
fn history(rest: &str) -> Command {
    if rest.is_empty() {
        return Command::History(DEFAULT_HISTORY_PAGE);
    }
    match rest.parse::<usize>() {
        Ok(limit) if (1..=MAX_HISTORY_PAGE).contains(&limit) => Command::History(limit),
        _ => Command::Usage("usage: /history [N], N from 1 to 1000"),
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
    fn history_takes_an_optional_count() {
        assert_eq!(
            parse("/history"),
            Some(Command::History(DEFAULT_HISTORY_PAGE))
        );
        assert_eq!(parse("/history 5"), Some(Command::History(5)));
        for line in ["/history 0", "/history -1", "/history x", "/history 1001"] {
            assert!(matches!(parse(line), Some(Command::Usage(_))), "{line}");
        }
    }

    #[test]
    fn one_mapping_from_commands_to_requests() {
        let cid = Cid::new("c1");
        let outcome = |line: &str| parse(line).unwrap().into_outcome(cid.clone(), Some(42));
        assert_eq!(
            outcome("hi"),
            Outcome::Send(Request::Say {
                text: "hi".into(),
                cid: cid.clone()
            })
        );
        assert_eq!(
            outcome("dm Bob psst"),
            Outcome::Send(Request::Dm {
                to: "Bob".into(),
                text: "psst".into(),
                cid: cid.clone()
            })
        );
        assert_eq!(outcome("/who"), Outcome::Send(Request::Who));
        assert_eq!(
            outcome("/nick Zed"),
            Outcome::Send(Request::Nick { name: "Zed".into() })
        );
        assert_eq!(
            outcome("/history 7"),
            Outcome::Send(Request::History {
                before: Some(42),
                limit: 7
            })
        );
        assert_eq!(outcome("/help"), Outcome::Help);
        assert_eq!(outcome("/quit"), Outcome::Quit);
        assert_eq!(
            outcome("/nick"),
            Outcome::Refused("usage: /nick NAME".into())
        );
        assert_eq!(
            outcome("/frob"),
            Outcome::Refused("unknown command /frob (/help lists them)".into())
        );
    }

    #[test]
    fn only_the_texts_of_messages_are_rewritten() {
        let shout = |text: &str| text.to_uppercase();
        assert_eq!(
            parse("hi").unwrap().map_text(shout),
            Command::Say("HI".into())
        );
        assert_eq!(
            parse("dm bob hi").unwrap().map_text(shout),
            Command::Dm {
                to: "bob".into(),
                text: "HI".into()
            }
        );
        assert_eq!(
            parse("/nick bob").unwrap().map_text(shout),
            Command::Nick("bob".into())
        );
    }

    #[test]
    fn the_help_lists_every_command() {
        for command in COMMANDS {
            assert!(HELP.contains(command), "{command}");
        }
        // The numbers written out in the texts are the protocol's.
        let page = format!("default {DEFAULT_HISTORY_PAGE}, at most {MAX_HISTORY_PAGE}");
        assert!(HELP.contains(&page));
        let Some(Command::Usage(usage)) = parse("/history 0") else {
            panic!("/history 0 is explained");
        };
        assert!(usage.ends_with(&format!("from 1 to {MAX_HISTORY_PAGE}")));
    }
}
