//! How events look on screen: one function from a server message to lines.
//!
//! Rendering is pure: the time zone and today's date are handed in, so the
//! tests pin every format with UTC while the program shows local time. The
//! plain (colourless) lines are a contract: scripts and tests read them.

use chrono::{DateTime, NaiveDate, TimeZone};

use crate::proto::display::escape;
use crate::proto::protocol::{name_key, ChatMessage, ServerMessage, Timestamp};

/// Colours for other people's names, picked by a hash of the name so one
/// person keeps one colour. Blue is left out: it is hard to read on the
/// dark backgrounds most terminals use.
const NAME_COLORS: [&str; 10] = ["31", "32", "33", "35", "36", "91", "92", "93", "95", "96"];

/// Bold, for one's own name.
const OWN: &str = "1";
/// Bold magenta, for the `(dm)` mark.
const DM: &str = "1;35";
/// Faint, for notices and day lines, which matter less than what is said.
const FAINT: &str = "2";
/// Red, for errors.
const ALERT: &str = "31";

/// Turns events into display lines.
#[derive(Debug)]
pub struct Renderer<Tz: TimeZone> {
    /// Whether to colour names and marks with ANSI escapes.
    color: bool,
    /// The zone times are shown in: local in the program, UTC in tests.
    tz: Tz,
    /// The day of the last timed line, so that a line can mark each change
    /// of day; it starts as today, so today's messages need no such line.
    day: NaiveDate,
}

impl<Tz: TimeZone> Renderer<Tz>
where
    Tz::Offset: std::fmt::Display,
{
    /// A renderer for a session that starts on `today` (in `tz`).
    pub fn new(tz: Tz, today: NaiveDate, color: bool) -> Self {
        Renderer {
            color,
            tz,
            day: today,
        }
    }

    /// The lines that show `message` to the user called `me`.
    pub fn server_message(&mut self, message: &ServerMessage, me: &str) -> Vec<String> {
        let mut lines = Vec::new();
        match message {
            ServerMessage::Welcome { users, history, .. } => {
                for message in history {
                    self.public(&mut lines, message, me);
                }
                let online = self.online(&users.names());
                lines.push(self.paint(FAINT, &format!("--- {online} ---")));
            }
            ServerMessage::Message(message) => self.public(&mut lines, message, me),
            ServerMessage::History { messages } => {
                // A line client cannot print above what is on screen, so
                // older messages come between two rules that say so.
                if messages.is_empty() {
                    lines.push(self.paint(FAINT, "--- no older messages ---"));
                } else {
                    let count = messages.len();
                    let header = format!("--- {count} older message{} ---", plural(count));
                    lines.push(self.paint(FAINT, &header));
                    for message in messages {
                        self.public(&mut lines, message, me);
                    }
                    lines.push(self.paint(FAINT, "--- end of older messages ---"));
                }
            }
            ServerMessage::Dm {
                ts, from, to, text, ..
            } => self.said(&mut lines, *ts, from, Some(to), text, me),
            ServerMessage::Joined { name, online, .. } => {
                lines.push(
                    self.notice(&format!("{} joined ({online} online)", self.name(name, me))),
                );
            }
            ServerMessage::Left { name, online, .. } => {
                lines.push(self.notice(&format!("{} left ({online} online)", self.name(name, me))));
            }
            ServerMessage::Renamed { from, to, .. } => {
                let (from, to) = (self.name(from, me), self.name(to, me));
                lines.push(self.notice(&format!("{from} is now {to}")));
            }
            ServerMessage::Users { users } => lines.push(self.notice(&self.online(&users.names()))),
            ServerMessage::Error { code, message, .. } => {
                lines.push(self.alert(&format!("{code}: {}", escape(message))));
            }
        }
        lines
    }

    /// A line about the session (`* reconnected`). Only the mark is
    /// faint: the text may hold coloured names, whose reset would end the
    /// faintness halfway anyway.
    pub fn notice(&self, text: &str) -> String {
        format!("{} {text}", self.paint(FAINT, "*"))
    }

    /// A line about something that went wrong (`! connection lost`).
    pub fn alert(&self, text: &str) -> String {
        self.paint(ALERT, &format!("! {text}"))
    }

    /// Shows a public message, live or from history.
    fn public(&mut self, lines: &mut Vec<String>, message: &ChatMessage, me: &str) {
        self.said(lines, message.ts, &message.from, None, &message.text, me);
    }

    /// `[HH:MM] Dave: text`, or `[HH:MM] (dm) Dave -> Bob: text`, after a
    /// day line when the day changed since the last one.
    fn said(
        &mut self,
        lines: &mut Vec<String>,
        ts: Timestamp,
        from: &str,
        to: Option<&String>,
        text: &str,
        me: &str,
    ) {
        let local: DateTime<Tz> = ts.0.with_timezone(&self.tz);
        if local.date_naive() != self.day {
            self.day = local.date_naive();
            let day = local.format("%A %-d %B %Y").to_string();
            lines.push(self.paint(FAINT, &format!("--- {day} ---")));
        }
        let time = local.format("%H:%M");
        let from = self.name(from, me);
        lines.push(match to {
            Some(to) => format!(
                "[{time}] {} {from} -> {}: {}",
                self.paint(DM, "(dm)"),
                self.name(to, me),
                escape(text)
            ),
            None => format!("[{time}] {from}: {}", escape(text)),
        });
    }

    /// `N online: Alice, Bob`, sorted, since the server promises no order.
    fn online(&self, users: &[String]) -> String {
        let mut users: Vec<&String> = users.iter().collect();
        users.sort_by_key(|name| name_key(name));
        let names: Vec<_> = users.iter().map(|name| escape(name)).collect();
        format!("{} online: {}", users.len(), names.join(", "))
    }

    /// A name, bold when it is one's own, else in its own colour.
    fn name(&self, name: &str, me: &str) -> String {
        let shown = escape(name);
        if name_key(name) == name_key(me) {
            self.paint(OWN, &shown)
        } else {
            self.paint(name_color(name), &shown)
        }
    }

    /// `text` in the colour `sgr` (an ANSI Select Graphic Rendition code),
    /// or as it is when colour is off.
    fn paint(&self, sgr: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{sgr}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

/// The `s` of a plural, for `count` things.
fn plural(count: usize) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

/// The colour of a name: a stable hash (FNV-1a, the same on every run and
/// every machine, unlike std's seeded hasher) of its unique form.
fn name_color(name: &str) -> &'static str {
    let hash = name_key(name)
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    NAME_COLORS[(hash % NAME_COLORS.len() as u64) as usize]
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::Utc;

    use super::*;
    use crate::proto::protocol::{ChatMessage, ErrorCode};

    fn ts(text: &str) -> Timestamp {
        Timestamp(
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc),
        )
    }

    fn renderer(color: bool) -> Renderer<Utc> {
        Renderer::new(Utc, NaiveDate::from_ymd_opt(2026, 11, 25).unwrap(), color)
    }

    fn said(id: u64, from: &str, text: &str) -> Arc<ChatMessage> {
        Arc::new(ChatMessage {
            id,
            ts: ts("2026-11-25T08:05:09.123Z"),
            from: from.into(),
            text: text.into(),
            cid: None,
        })
    }

    #[test]
    fn plain_lines() {
        let mut r = renderer(false);
        let cases = [
            (
                ServerMessage::Message(said(1, "Dave", "hello 😀")),
                "[08:05] Dave: hello 😀",
            ),
            (
                ServerMessage::Dm {
                    id: 2,
                    ts: ts("2026-11-25T08:06:00Z"),
                    from: "Dave".into(),
                    to: "Bob".into(),
                    text: "psst".into(),
                    cid: None,
                },
                "[08:06] (dm) Dave -> Bob: psst",
            ),
            (
                ServerMessage::Joined {
                    name: "Bob".into(),
                    ts: ts("2026-11-25T08:00:00Z"),
                    online: 2,
                },
                "* Bob joined (2 online)",
            ),
            (
                ServerMessage::Left {
                    name: "Bob".into(),
                    ts: ts("2026-11-25T08:00:00Z"),
                    online: 1,
                },
                "* Bob left (1 online)",
            ),
            (
                ServerMessage::Renamed {
                    from: "Dave".into(),
                    to: "David".into(),
                    ts: ts("2026-11-25T08:00:00Z"),
                },
                "* Dave is now David",
            ),
            (
                ServerMessage::Users {
                    users: ["bob", "Alice", "Carol"].into_iter().collect(),
                },
                "* 3 online: Alice, bob, Carol",
            ),
            (
                ServerMessage::error(ErrorCode::UnknownUser, "nobody called Zed is online"),
                "! unknown_user: nobody called Zed is online",
            ),
        ];
        for (message, line) in cases {
            assert_eq!(r.server_message(&message, "Carol"), [line]);
        }
    }

    #[test]
    fn older_messages_come_between_rules() {
        let mut r = renderer(false);
        let page = ServerMessage::History {
            messages: vec![said(1, "Alice", "old"), said(2, "Bob", "older")],
        };
        assert_eq!(
            r.server_message(&page, "Bob"),
            [
                "--- 2 older messages ---",
                "[08:05] Alice: old",
                "[08:05] Bob: older",
                "--- end of older messages ---"
            ]
        );
        let empty = ServerMessage::History { messages: vec![] };
        assert_eq!(
            r.server_message(&empty, "Bob"),
            ["--- no older messages ---"]
        );
    }

    #[test]
    fn welcome_shows_history_then_who_is_online() {
        let welcome = ServerMessage::Welcome {
            name: "Dave".into(),
            users: ["Dave", "Alice"].into_iter().collect(),
            history: vec![said(1, "Alice", "hi"), said(2, "Dave", "hey")],
            server: "mioserver/0.1.0".into(),
            epoch: "e".into(),
            recovered: None,
            rate_limit: None,
        };
        assert_eq!(
            renderer(false).server_message(&welcome, "Dave"),
            [
                "[08:05] Alice: hi",
                "[08:05] Dave: hey",
                "--- 2 online: Alice, Dave ---"
            ]
        );
    }

    #[test]
    fn a_line_marks_each_change_of_day() {
        let mut r = renderer(false);
        let mut message = ChatMessage {
            id: 1,
            ts: ts("2026-11-24T23:59:00Z"),
            from: "Dave".into(),
            text: "late".into(),
            cid: None,
        };
        let old = ServerMessage::Message(Arc::new(message.clone()));
        assert_eq!(
            r.server_message(&old, "Bob"),
            ["--- Tuesday 24 November 2026 ---", "[23:59] Dave: late"]
        );
        assert_eq!(r.server_message(&old, "Bob"), ["[23:59] Dave: late"]);
        message.ts = ts("2026-11-25T00:01:00Z");
        let new = ServerMessage::Message(Arc::new(message));
        assert_eq!(
            r.server_message(&new, "Bob"),
            ["--- Wednesday 25 November 2026 ---", "[00:01] Dave: late"]
        );
    }

    #[test]
    fn times_are_shown_in_the_given_zone() {
        let paris = chrono::FixedOffset::east_opt(3600).unwrap();
        let today = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        let mut r = Renderer::new(paris, today, false);
        let message = ServerMessage::Message(said(1, "Dave", "hi"));
        assert_eq!(r.server_message(&message, "Bob"), ["[09:05] Dave: hi"]);
    }

    #[test]
    fn control_characters_cannot_reach_the_terminal() {
        let mut r = renderer(false);
        let message = ServerMessage::Message(said(1, "Dave", "two\nlines \x1b[2J"));
        assert_eq!(
            r.server_message(&message, "Bob"),
            [r"[08:05] Dave: two\nlines \u{1b}[2J"]
        );
    }

    #[test]
    fn colour_marks_own_names_dms_and_others_by_a_stable_hash() {
        let mut r = renderer(true);
        let mine = ServerMessage::Message(said(1, "Dave", "hi"));
        assert_eq!(
            r.server_message(&mine, "dave"),
            ["[08:05] \x1b[1mDave\x1b[0m: hi"]
        );
        let theirs = r.server_message(&ServerMessage::Message(said(2, "Alice", "yo")), "Dave");
        let color = name_color("Alice");
        assert_eq!(theirs, [format!("[08:05] \x1b[{color}mAlice\x1b[0m: yo")]);
        assert_eq!(name_color("alice"), color, "one colour whatever the case");
        let joined = ServerMessage::Joined {
            name: "Alice".into(),
            ts: ts("2026-11-25T08:05:00Z"),
            online: 2,
        };
        assert_eq!(
            r.server_message(&joined, "Dave"),
            [format!(
                "\x1b[2m*\x1b[0m \x1b[{color}mAlice\x1b[0m joined (2 online)"
            )]
        );
        let dm = ServerMessage::Dm {
            id: 3,
            ts: ts("2026-11-25T08:05:00Z"),
            from: "Alice".into(),
            to: "Dave".into(),
            text: "psst".into(),
            cid: None,
        };
        assert!(r.server_message(&dm, "Dave")[0].contains("\x1b[1;35m(dm)\x1b[0m"));
    }

    #[test]
    fn names_spread_over_the_colours() {
        let used: std::collections::HashSet<_> =
            ["Alice", "Bob", "Carol", "Dave", "Eve", "Mallory"]
                .into_iter()
                .map(name_color)
                .collect();
        assert!(used.len() >= 3, "{used:?}");
    }
}
