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

use crate::protocol::{ServerMessage, Timestamp};

/// The help for `/help`: the line client's command syntax.
pub const HELP: &str = "\
commands: text says it to everyone; dm NAME text (or DM, /dm, /msg) \
sends a private message; /who lists who is online; /nick NAME changes \
your name; /help shows this";

/// `[HH:MM:SS]` in UTC.
fn clock(ts: &Timestamp) -> String {
    ts.0.format("[%H:%M:%S]").to_string()
}

/// The lines a plain-text client sees for one server message, in order.
pub fn render(message: &ServerMessage) -> Vec<String> {
    match message {
        ServerMessage::Welcome {
            name,
            users,
            history,
            ..
        } => {
            let mut lines: Vec<String> = history
                .iter()
                .map(|m| format!("{} {}: {}", clock(&m.ts), m.from, m.text))
                .collect();
            lines.push(format!(
                "welcome, {name}! online ({}): {} (type /help for commands)",
                users.len(),
                users.join(", ")
            ));
            lines
        }
        ServerMessage::Message(m) => vec![format!("{} {}: {}", clock(&m.ts), m.from, m.text)],
        ServerMessage::Dm {
            ts, from, to, text, ..
        } => vec![format!("{} (dm) {from} -> {to}: {text}", clock(ts))],
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
            vec![format!("online ({}): {}", users.len(), users.join(", "))]
        }
        ServerMessage::Error { code, message } => vec![format!("error ({code}): {message}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ChatMessage, ErrorCode};
    use chrono::{DateTime, Utc};
    use std::sync::Arc;

    fn at(text: &str) -> Timestamp {
        Timestamp(
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc),
        )
    }

    #[test]
    fn every_message_reads_as_a_line() {
        let ts = at("2026-11-25T08:00:05.123Z");
        let said = Arc::new(ChatMessage {
            id: 1,
            ts: at("2026-11-25T08:00:00Z"),
            from: "Dave".into(),
            text: "hello 😀".into(),
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
                    users: vec!["Bob".into(), "David".into()],
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
            users: vec!["Dave".into(), "Eve".into()],
            history: vec![said],
            server: crate::protocol::SERVER_ID.into(),
        };
        assert_eq!(
            render(&welcome),
            [
                "[08:00:00] Dave: hello 😀",
                "welcome, Eve! online (2): Dave, Eve (type /help for commands)"
            ]
        );
    }
}
