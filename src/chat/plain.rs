//! Plain-text mode: the server's messages as lines a person can read, for
//! raw WebSocket clients such as `websocat` (PROTOCOL.md, "Plain-text mode").
//!
//! A connection whose first text frame is not a JSON object gets these
//! lines instead of JSON, one line per text frame. Times are UTC, as the
//! server cannot know the reader's time zone:
//!
//! ```text
//! [08:00:00] Dave: hello
//! [08:00:05] (dm) Dave -> Bob: psst
//! [08:00:07] * Carol joined (3 online)
//! [08:00:09] * Carol left (2 online)
//! [08:00:11] * Dave is now known as David
//! online (2): Bob, David
//! error (name_taken): the name "Bob" is taken
//! ```

use crate::proto::command::{self, Outcome, HELP};
use crate::proto::display::escape;
use crate::proto::protocol::{ChatMessage, Request, ServerMessage, Timestamp};

/// What one line from a plain-text client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A request for the room.
    Request(Request),
    /// Something answered on the spot (help, usage), never sent to the
    /// room: one frame per line.
    Reply(Vec<String>),
    /// The user wants to leave.
    Quit,
    /// A blank line: nothing to do.
    Blank,
}

/// Understands one line: before the user has joined, it is the name
/// (PROTOCOL.md: "that first frame is the name"); after, the line client's
/// command syntax, parsed and mapped by the same [`command`] functions.
/// Plain-text clients send no `cid`, and page back from the newest message.
pub fn interpret(joined: bool, line: &str) -> Line {
    if !joined {
        let name = line.trim();
        if name.is_empty() {
            return Line::Blank;
        }
        return Line::Request(Request::Join {
            name: name.to_owned(),
            since: None,
            epoch: None,
        });
    }
    let Some(command) = command::parse(line) else {
        return Line::Blank;
    };
    match command.into_outcome(None, None) {
        Outcome::Send(request) => Line::Request(request),
        Outcome::Help => Line::Reply(HELP.lines().map(str::to_owned).collect()),
        Outcome::Quit => Line::Quit,
        Outcome::Refused(why) => Line::Reply(vec![escape(&why).into_owned()]),
    }
}

/// `[HH:MM:SS]` in UTC.
fn clock(ts: &Timestamp) -> String {
    ts.0.format("[%H:%M:%S]").to_string()
}

/// `[HH:MM:SS] Dave: hello`, the text escaped (see [`escape`]).
fn said(m: &ChatMessage) -> String {
    format!("{} {}: {}", clock(&m.ts), escape(&m.from), escape(&m.text))
}

/// The lines a plain-text client sees for one server message, in order.
/// Everything a client chose (texts, names, and the refused input an error
/// may quote) is escaped, so no line holds a control character.
pub fn render(message: &ServerMessage) -> Vec<String> {
    match message {
        ServerMessage::Welcome {
            name,
            users,
            history,
            ..
        } => {
            let mut lines: Vec<String> = history.iter().map(|m| said(m)).collect();
            let users = users.names();
            lines.push(format!(
                "welcome, {name}! online ({}): {} (type /help for commands)",
                users.len(),
                users.join(", ")
            ));
            lines
        }
        ServerMessage::Message(m) => vec![said(m)],
        ServerMessage::History { messages } => messages.iter().map(|m| said(m)).collect(),
        ServerMessage::Dm {
            ts, from, to, text, ..
        } => vec![format!(
            "{} (dm) {} -> {}: {}",
            clock(ts),
            escape(from),
            escape(to),
            escape(text)
        )],
        ServerMessage::Joined { name, ts, online } => {
            vec![format!("{} * {name} joined ({online} online)", clock(ts))]
        }
        ServerMessage::Left { name, ts, online } => {
            vec![format!("{} * {name} left ({online} online)", clock(ts))]
        }
        ServerMessage::Renamed { from, to, ts } => {
            vec![format!("{} * {from} is now known as {to}", clock(ts))]
        }
        ServerMessage::Users { users } => {
            let users = users.names();
            vec![format!("online ({}): {}", users.len(), users.join(", "))]
        }
        ServerMessage::Error { code, message, .. } => {
            vec![format!("error ({code}): {}", escape(message))]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::protocol::{ChatMessage, ErrorCode};
    use chrono::{DateTime, Utc};

    /// The epoch of the test welcomes.
    const EPOCH: &str = "test-epoch";
    use std::sync::Arc;

    fn at(text: &str) -> Timestamp {
        Timestamp(
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc),
        )
    }

    #[test]
    fn the_first_line_is_the_name_then_commands() {
        assert_eq!(
            interpret(false, " Dave\r\n"),
            Line::Request(Request::Join {
                name: "Dave".into(),
                since: None,
                epoch: None,
            })
        );
        assert_eq!(interpret(false, "  "), Line::Blank);
        assert_eq!(
            interpret(true, "hello"),
            Line::Request(Request::Say {
                text: "hello".into(),
                cid: None,
            })
        );
        let dm = Line::Request(Request::Dm {
            to: "Bob".into(),
            text: "psst".into(),
            cid: None,
        });
        for line in [
            "dm Bob psst",
            "DM Bob psst",
            "/dm Bob psst",
            "/msg Bob psst",
        ] {
            assert_eq!(interpret(true, line), dm, "{line}");
        }
        assert_eq!(interpret(true, "/who"), Line::Request(Request::Who));
        assert_eq!(
            interpret(true, "/nick David"),
            Line::Request(Request::Nick {
                name: "David".into()
            })
        );
        let Line::Reply(help) = interpret(true, "/help") else {
            panic!("/help is answered on the spot");
        };
        assert_eq!(help.join("\n"), HELP);
        assert_eq!(interpret(true, "/quit"), Line::Quit);
        assert_eq!(
            interpret(true, "/frobnicate"),
            Line::Reply(vec!["unknown command /frobnicate (/help lists them)".into()])
        );
        assert_eq!(
            interpret(true, "/history 5"),
            Line::Request(Request::History {
                before: None,
                limit: 5
            })
        );
        assert_eq!(interpret(true, ""), Line::Blank);
    }

    #[test]
    fn every_message_reads_as_a_line() {
        let ts = at("2026-11-25T08:00:05.123Z");
        let said = Arc::new(ChatMessage {
            id: 1,
            ts: at("2026-11-25T08:00:00Z"),
            from: "Dave".into(),
            text: "hello 😀".into(),
            cid: None,
        });
        let cases = [
            (
                ServerMessage::Message(Arc::clone(&said)),
                "[08:00:00] Dave: hello 😀",
            ),
            (
                ServerMessage::Dm {
                    id: 2,
                    ts,
                    from: "Dave".into(),
                    to: "Bob".into(),
                    text: "psst".into(),
                    cid: None,
                },
                "[08:00:05] (dm) Dave -> Bob: psst",
            ),
            (
                ServerMessage::Joined {
                    name: "Carol".into(),
                    ts,
                    online: 3,
                },
                "[08:00:05] * Carol joined (3 online)",
            ),
            (
                ServerMessage::Left {
                    name: "Carol".into(),
                    ts,
                    online: 2,
                },
                "[08:00:05] * Carol left (2 online)",
            ),
            (
                ServerMessage::Renamed {
                    from: "Dave".into(),
                    to: "David".into(),
                    ts,
                },
                "[08:00:05] * Dave is now known as David",
            ),
            (
                ServerMessage::Users {
                    users: ["Bob", "David"].into_iter().collect(),
                },
                "online (2): Bob, David",
            ),
            (
                ServerMessage::error(ErrorCode::NameTaken, "the name \"Bob\" is taken"),
                "error (name_taken): the name \"Bob\" is taken",
            ),
        ];
        for (message, line) in cases {
            assert_eq!(render(&message), [line]);
        }
        let welcome = ServerMessage::Welcome {
            name: "Eve".into(),
            users: ["Dave", "Eve"].into_iter().collect(),
            history: vec![said],
            server: crate::proto::protocol::SERVER_ID.into(),
            epoch: EPOCH.into(),
            recovered: None,
            rate_limit: None,
        };
        assert_eq!(
            render(&welcome),
            [
                "[08:00:00] Dave: hello 😀",
                "welcome, Eve! online (2): Dave, Eve (type /help for commands)"
            ]
        );
    }

    #[test]
    fn no_line_holds_a_control_character() {
        let ts = at("2026-11-25T08:00:00Z");
        let hostile = Arc::new(ChatMessage {
            id: 1,
            ts,
            from: "Dave".into(),
            text: "two\nlines \x1b[2J\u{202e}".into(),
            cid: None,
        });
        assert_eq!(
            render(&ServerMessage::Message(Arc::clone(&hostile))),
            [r"[08:00:00] Dave: two\nlines \u{1b}[2J\u{202e}"]
        );
        let dm = ServerMessage::Dm {
            id: 2,
            ts,
            from: "Dave".into(),
            to: "Bob".into(),
            text: "\x07bell".into(),
            cid: None,
        };
        assert_eq!(render(&dm), [r"[08:00:00] (dm) Dave -> Bob: \u{7}bell"]);
        let history = ServerMessage::History {
            messages: vec![hostile],
        };
        let refused = interpret(true, "/\x1b[31m");
        assert_eq!(
            refused,
            Line::Reply(vec![
                r"unknown command /\u{1b}[31m (/help lists them)".into()
            ])
        );
        for line in render(&history).iter().chain(render(&dm).iter()) {
            assert!(!line.chars().any(char::is_control), "{line:?}");
        }
    }
}
