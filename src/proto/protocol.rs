//! The wire protocol of `docs/protocol.md`: the messages clients send,
//! the messages the server answers with, and the rules for names and text.
//!
//! Both the server and the line client use these types, so the two can never
//! disagree about a field name. Everything here is pure: no sockets, no clock.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::{self, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::proto::rate_limit::RateLimit;

/// What the server calls itself in `welcome`; clients may show it.
pub const SERVER_ID: &str = concat!("mioserver/", env!("CARGO_PKG_VERSION"));

/// The most messages one `history` request may ask for, and its default
/// (PROTOCOL.md 1.1): a page a client can render at once.
pub const MAX_HISTORY_PAGE: usize = 1000;
/// The page size of a `history` request that names no `limit`.
pub const DEFAULT_HISTORY_PAGE: usize = 100;

/// The longest `cid`, in characters: room for a UUID or 256 random bits in
/// hex, short enough that a dedupe index of a day's cids stays small.
pub const MAX_CID_CHARS: usize = 64;

/// The longest name, in characters: long enough for real names and
/// nicknames, short enough to keep a chat line readable.
pub const MAX_NAME_CHARS: usize = 32;

/// A request from a client, parsed and type-checked but not yet validated
/// against the room (names and text are checked by the room). The server
/// parses it with [`parse_request`]; the line client serializes it with
/// [`Request::to_json`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Request {
    /// Enter the room under `name`; `since` asks for history after that
    /// id, seen in history `epoch` (a resume after a reconnect).
    Join {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
    },
    /// A public message; `cid` makes resending it safe.
    Say {
        text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        cid: Option<Cid>,
    },
    /// A private message to one user; `cid` makes resending it safe.
    Dm {
        to: String,
        text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        cid: Option<Cid>,
    },
    /// Ask for the users online.
    Who,
    /// Change one's name.
    Nick { name: String },
    /// Older public messages: at most `limit` (at most
    /// [`MAX_HISTORY_PAGE`]) with ids below `before` (below every id when
    /// absent).
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        limit: usize,
    },
}

/// A client's id for one message (`cid`): 1 to [`MAX_CID_CHARS`] printable
/// ASCII characters without spaces (`!` to `~`). Only [`Cid::new`] makes
/// one, so a `Cid` is always valid.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Cid(String);

impl Cid {
    /// Checks `text` against the rules; `None` when it breaks them.
    pub fn new(text: impl Into<String>) -> Option<Cid> {
        let text = text.into();
        let valid = !text.is_empty()
            && text.len() <= MAX_CID_CHARS
            && text.bytes().all(|b| (b'!'..=b'~').contains(&b));
        valid.then_some(Cid(text))
    }

    /// The id as it goes on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Cid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Cid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Cid::new(text).ok_or_else(|| {
            de::Error::custom(format!(
                "a cid is 1 to {MAX_CID_CHARS} ASCII characters from '!' to '~'"
            ))
        })
    }
}

impl Request {
    /// The request as one text frame.
    pub fn to_json(&self) -> String {
        // Every field is a string or a number, so this cannot fail.
        serde_json::to_string(self).expect("requests always serialize")
    }
}

/// Why a text frame is not a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The frame is not a JSON object at all. The server answers
    /// `invalid_json`, or (for a connection's first frame) switches to
    /// plain-text mode.
    NotAnObject,
    /// A JSON object whose fields do not fit its `type`: a missing field,
    /// a wrong field type. The caller answers `invalid_json`.
    Invalid(String),
    /// A JSON object whose `type` is missing or not one we know. The caller
    /// answers `unknown_type`.
    UnknownType(String),
}

impl ParseError {
    /// The error code the client is told.
    pub fn code(&self) -> ErrorCode {
        match self {
            ParseError::NotAnObject | ParseError::Invalid(_) => ErrorCode::InvalidJson,
            ParseError::UnknownType(_) => ErrorCode::UnknownType,
        }
    }

    /// A sentence for the `message` field of the error.
    pub fn describe(&self) -> String {
        match self {
            ParseError::NotAnObject => "expected one JSON object per text frame".to_owned(),
            ParseError::Invalid(detail) => format!("malformed request: {detail}"),
            ParseError::UnknownType(kind) if kind.is_empty() => {
                "the request has no \"type\" field".to_owned()
            }
            ParseError::UnknownType(kind) => format!("unknown request type {kind:?}"),
        }
    }
}

/// Parses one text frame into a [`Request`].
///
/// Parsing happens in two steps so that the error is precise: first only the
/// `type` is read (every other field is skipped), then the fields of that
/// type. Fields a type does not use are ignored, as the protocol requires.
pub fn parse_request(frame: &str) -> Result<Request, ParseError> {
    /// The first step: just the `type`, borrowed when it has no escapes.
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(rename = "type", default, borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct Join {
        name: String,
        #[serde(default)]
        since: Option<u64>,
        #[serde(default)]
        epoch: Option<String>,
    }
    #[derive(Deserialize)]
    struct Say {
        text: String,
        #[serde(default)]
        cid: Option<Cid>,
    }
    #[derive(Deserialize)]
    struct Dm {
        to: String,
        text: String,
        #[serde(default)]
        cid: Option<Cid>,
    }
    #[derive(Deserialize)]
    struct History {
        #[serde(default)]
        before: Option<u64>,
        #[serde(default)]
        limit: Option<usize>,
    }
    #[derive(Deserialize)]
    struct Nick {
        name: String,
    }

    if !frame.trim_start().starts_with('{') {
        // Reject arrays, numbers and strings without asking serde, and make
        // sure they are told apart from a malformed object.
        return Err(ParseError::NotAnObject);
    }
    let envelope: Envelope = match serde_json::from_str(frame) {
        Ok(envelope) => envelope,
        // `{` followed by anything unparsable is still "not an object".
        Err(err) if err.is_syntax() || err.is_eof() => return Err(ParseError::NotAnObject),
        Err(err) => return Err(ParseError::Invalid(err.to_string())),
    };
    let invalid = |err: serde_json::Error| ParseError::Invalid(err.to_string());
    match envelope.kind.as_deref() {
        Some("join") => {
            let Join { name, since, epoch } = serde_json::from_str(frame).map_err(invalid)?;
            Ok(Request::Join { name, since, epoch })
        }
        Some("say") => {
            let Say { text, cid } = serde_json::from_str(frame).map_err(invalid)?;
            Ok(Request::Say { text, cid })
        }
        Some("dm") => {
            let Dm { to, text, cid } = serde_json::from_str(frame).map_err(invalid)?;
            Ok(Request::Dm { to, text, cid })
        }
        Some("history") => {
            let History { before, limit } = serde_json::from_str(frame).map_err(invalid)?;
            // A larger page is not an error: the client gets the most it
            // may have and can ask again from the oldest id it received.
            let limit = limit.unwrap_or(DEFAULT_HISTORY_PAGE).min(MAX_HISTORY_PAGE);
            Ok(Request::History { before, limit })
        }
        Some("who") => {
            // Still a full parse, so that `{"type":"who",` with junk after it
            // is refused like any other malformed object.
            serde_json::from_str::<IgnoredAny>(frame).map_err(invalid)?;
            Ok(Request::Who)
        }
        Some("nick") => {
            let Nick { name } = serde_json::from_str(frame).map_err(invalid)?;
            Ok(Request::Nick { name })
        }
        Some(other) => Err(ParseError::UnknownType(other.to_owned())),
        None => Err(ParseError::UnknownType(String::new())),
    }
}

/// The machine-readable reason of an `error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a well-formed request object.
    InvalidJson,
    /// The request's `type` is missing or unknown.
    UnknownType,
    /// Anything but `join` before a successful `join`.
    NotJoined,
    /// A second `join` on one connection.
    AlreadyJoined,
    /// A name that breaks the rules of [`validate_name`].
    InvalidName,
    /// A name someone else online already has (case-insensitively).
    NameTaken,
    /// A DM to nobody online.
    UnknownUser,
    /// A text that is empty or only whitespace.
    EmptyText,
    /// A text longer than the server's limit.
    TooLong,
    /// More requests than the connection's rate limit allows.
    RateLimited,
    /// The message could not be stored (disk full, store unreachable);
    /// nobody received it and the client may retry with the same `cid`.
    Unavailable,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::NameTaken => "name_taken",
            ErrorCode::UnknownUser => "unknown_user",
            ErrorCode::EmptyText => "empty_text",
            ErrorCode::TooLong => "too_long",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A point in time as the protocol writes it: RFC 3339, UTC, milliseconds,
/// `Z` (`2026-11-25T08:00:00.123Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    /// The current wall-clock time. Only the edges of the program call this;
    /// the room is always handed its time.
    pub fn now() -> Self {
        Timestamp(Utc::now())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|time| Timestamp(time.with_timezone(&Utc)))
            .map_err(de::Error::custom)
    }
}

/// A public chat message, as broadcast and as kept in history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Position in the server's single id sequence; clients resume with it.
    pub id: u64,
    /// When the server accepted the message.
    pub ts: Timestamp,
    /// The sender's name at the time.
    pub from: String,
    /// What was said.
    pub text: String,
    /// The sender's id for it, if it gave one: its acknowledgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<Cid>,
}

/// The names of the joined users, as the JSON array that goes on the wire.
///
/// The server keeps the array serialized and appends to it as users join
/// (see `Room`), so a `welcome` during a join storm copies one string
/// instead of cloning and escaping every name: the difference between
/// O(N) allocations per join and one `memcpy`. Clients read it with
/// [`names`](Self::names).
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct UserList(Arc<RawValue>);

/// Read as a plain list of strings: serde cannot hand a `RawValue` the
/// buffered fields of an internally tagged enum such as [`ServerMessage`].
impl<'de> Deserialize<'de> for UserList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Vec::<String>::deserialize(deserializer)?
            .into_iter()
            .collect())
    }
}

impl UserList {
    /// A list from a JSON array of strings, trusted to be one (the room
    /// builds it with `serde_json`).
    pub fn from_json(array: String) -> Self {
        let raw = RawValue::from_string(array).expect("the room builds valid JSON");
        UserList(Arc::from(raw))
    }

    /// The names, in no promised order.
    pub fn names(&self) -> Vec<String> {
        serde_json::from_str(self.0.get()).unwrap_or_default()
    }
}

impl<S: AsRef<str>> FromIterator<S> for UserList {
    fn from_iter<I: IntoIterator<Item = S>>(names: I) -> Self {
        let mut array = UserArray::default();
        for name in names {
            array.push(name.as_ref());
        }
        array.to_list()
    }
}

/// A JSON array of names that grows by appending: the room's cache behind
/// each [`UserList`] it hands out.
#[derive(Debug, Clone)]
pub struct UserArray {
    /// Always a complete array: `[]`, `["a"]`, `["a","b"]`.
    json: String,
}

impl Default for UserArray {
    fn default() -> Self {
        UserArray { json: "[]".into() }
    }
}

impl UserArray {
    /// Appends a name.
    pub fn push(&mut self, name: &str) {
        self.json.pop();
        if self.json.len() > 1 {
            self.json.push(',');
        }
        let quoted = serde_json::to_string(name).expect("a string always serializes");
        self.json.push_str(&quoted);
        self.json.push(']');
    }

    /// The array as it is now.
    pub fn to_list(&self) -> UserList {
        UserList::from_json(self.json.clone())
    }
}

/// Equal when they list the same names, in any order: the protocol promises
/// no order.
impl PartialEq for UserList {
    fn eq(&self, other: &Self) -> bool {
        let (mut mine, mut theirs) = (self.names(), other.names());
        mine.sort();
        theirs.sort();
        mine == theirs
    }
}

impl Eq for UserList {}

/// A message from the server to a client.
///
/// History entries are shared (`Arc`) so that a `welcome` costs one pointer
/// copy per kept message, not a copy of every text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage {
    /// The answer to a good `join`.
    Welcome {
        name: String,
        users: UserList,
        /// `message` events, each with its `"type":"message"`.
        #[serde(serialize_with = "serialize_history")]
        history: Vec<Arc<ChatMessage>>,
        server: String,
        /// Names the history: the same across restarts, new when the
        /// history was lost or replaced.
        epoch: String,
        /// Present on a resume (`join` with `since`): whether `history`
        /// holds every message after `since`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// The server's per-connection rate limit, so that a client can
        /// pace a pasted or piped burst under it. `mioserver` always sends
        /// it; a client assumes [`RateLimit::DEFAULT`] of a server that
        /// does not. (Boxed: every delivery holds a `ServerMessage`, and
        /// the rare welcome should not make them all larger.)
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate_limit: Option<Box<RateLimit>>,
    },
    /// A public message, to everyone joined (the sender included).
    Message(Arc<ChatMessage>),
    /// A private message, to its recipient and its sender.
    Dm {
        id: u64,
        ts: Timestamp,
        from: String,
        to: String,
        text: String,
        /// The sender's id for it, if it gave one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<Cid>,
    },
    /// Someone joined; to everyone else.
    Joined {
        name: String,
        ts: Timestamp,
        online: usize,
    },
    /// Someone who had joined left; to everyone still there.
    Left {
        name: String,
        ts: Timestamp,
        online: usize,
    },
    /// Someone changed name; to everyone.
    Renamed {
        from: String,
        to: String,
        ts: Timestamp,
    },
    /// The answer to `who`.
    Users { users: UserList },
    /// The answer to `history`: `message` events, oldest first.
    History {
        #[serde(serialize_with = "serialize_history")]
        messages: Vec<Arc<ChatMessage>>,
    },
    /// A refused request; `cid` when the request carried one.
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<Cid>,
    },
}

/// Writes `welcome`'s history as the protocol says: a list of `message`
/// events, tagged like the broadcast ones (reading ignores the tag).
fn serialize_history<S: Serializer>(
    history: &[Arc<ChatMessage>],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(
        history
            .iter()
            .map(|message| ServerMessage::Message(Arc::clone(message))),
    )
}

impl ServerMessage {
    /// An `error` message.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
            cid: None,
        }
    }

    /// The message as one line of JSON, ready for a text frame.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every key is a string and
        // every value is a string, number or list of those.
        serde_json::to_string(self).expect("server messages always serialize")
    }
}

/// Checks a name against the rules: 1 to [`MAX_NAME_CHARS`] characters,
/// each alphanumeric (Unicode) or one of `_`, `-`, `.`.
///
/// The error is a sentence for the user.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a name needs at least one character".to_owned());
    }
    if name.chars().nth(MAX_NAME_CHARS).is_some() {
        return Err(format!("a name has at most {MAX_NAME_CHARS} characters"));
    }
    match name
        .chars()
        .find(|&c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        Some(bad) => Err(format!(
            "a name may hold only letters, digits, '_', '-' and '.', not {bad:?}"
        )),
        None => Ok(()),
    }
}

/// The key under which a name is unique: its Unicode lowercase form, so
/// `Dave` and `dave` cannot both be online.
pub fn name_key(name: &str) -> String {
    name.to_lowercase()
}

/// Checks a chat text: not empty or only whitespace, at most `max_chars`
/// characters (Unicode scalar values, so 4000 emoji fit in 4000).
pub fn check_text(text: &str, max_chars: usize) -> Result<(), ErrorCode> {
    if text.chars().all(char::is_whitespace) {
        return Err(ErrorCode::EmptyText);
    }
    // A text of at most `max_chars` bytes cannot have more characters, so
    // the common short message is never counted.
    if text.len() > max_chars && text.chars().nth(max_chars).is_some() {
        return Err(ErrorCode::TooLong);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_type_parses_and_serializes_back() {
        let cases = [
            (
                r#"{"type":"join","name":"Dave"}"#,
                Request::Join {
                    name: "Dave".into(),
                    since: None,
                    epoch: None,
                },
            ),
            (
                r#"{"type":"join","name":"Dave","since":41}"#,
                Request::Join {
                    name: "Dave".into(),
                    since: Some(41),
                    epoch: None,
                },
            ),
            (
                r#"{"type":"say","text":"hello 😀"}"#,
                Request::Say {
                    text: "hello 😀".into(),
                    cid: None,
                },
            ),
            (
                r#"{"type":"dm","to":"Bob","text":"psst"}"#,
                Request::Dm {
                    to: "Bob".into(),
                    text: "psst".into(),
                    cid: None,
                },
            ),
            (r#"{"type":"who"}"#, Request::Who),
            (
                r#"{"type":"nick","name":"David"}"#,
                Request::Nick {
                    name: "David".into(),
                },
            ),
        ];
        for (json, request) in cases {
            assert_eq!(parse_request(json).as_ref(), Ok(&request), "{json}");
            assert_eq!(request.to_json(), json);
        }
    }

    #[test]
    fn ignores_unknown_fields_even_ones_other_types_use() {
        assert_eq!(
            parse_request(r#"{"type":"who","name":5,"extra":[1,2]}"#),
            Ok(Request::Who)
        );
        assert_eq!(
            parse_request(r#"{"text":"hi","color":"red","type":"say"}"#),
            Ok(Request::Say {
                text: "hi".into(),
                cid: None
            })
        );
    }

    #[test]
    fn tells_error_kinds_apart() {
        for not_object in ["", "hello", "[1,2]", "42", "\"join\"", "{", "{\"type\":"] {
            assert_eq!(
                parse_request(not_object),
                Err(ParseError::NotAnObject),
                "{not_object:?}"
            );
        }
        assert_eq!(
            parse_request(r#"{"type":"shout","text":"x"}"#),
            Err(ParseError::UnknownType("shout".into()))
        );
        assert_eq!(
            parse_request(r#"{"text":"x"}"#).unwrap_err().code(),
            ErrorCode::UnknownType
        );
        for invalid in [
            r#"{"type":"say"}"#,
            r#"{"type":"say","text":7}"#,
            r#"{"type":"join","name":"a","since":-1}"#,
            r#"{"type":"join","name":"a","since":"3"}"#,
            r#"{"type":5}"#,
        ] {
            assert_eq!(
                parse_request(invalid).unwrap_err().code(),
                ErrorCode::InvalidJson,
                "{invalid}"
            );
        }
    }

    #[test]
    fn deeply_nested_json_is_handled_without_a_crash() {
        let open = "[".repeat(100_000);
        let close = "]".repeat(100_000);
        // Nesting in an ignored field is skipped, as any unknown field is.
        let ignored = format!(r#"{{"type":"say","text":"x","deep":{open}{close}}}"#);
        assert_eq!(
            parse_request(&ignored),
            Ok(Request::Say {
                text: "x".into(),
                cid: None
            })
        );
        // Nesting where a string belongs is a malformed request.
        let in_text = format!(r#"{{"type":"say","text":{open}{close}}}"#);
        assert_eq!(
            parse_request(&in_text).unwrap_err().code(),
            ErrorCode::InvalidJson
        );
    }

    #[test]
    fn name_rules() {
        assert!(validate_name("Dave").is_ok());
        assert!(validate_name("d.a_v-e9").is_ok());
        assert!(validate_name("Zoë").is_ok());
        assert!(validate_name("名前").is_ok());
        assert!(validate_name(&"é".repeat(32)).is_ok());
        assert!(validate_name(&"é".repeat(33)).is_err());
        for bad in [
            "",
            "a b",
            "a\0b",
            "a\u{1b}",
            "a\r\nb",
            "a\u{202e}b",
            "a\u{200b}b",
            "😀",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(name_key("DAVE"), name_key("dave"));
    }

    #[test]
    fn text_rules_count_characters_not_bytes() {
        assert_eq!(check_text(&"😀".repeat(4000), 4000), Ok(()));
        assert_eq!(
            check_text(&"😀".repeat(4001), 4000),
            Err(ErrorCode::TooLong)
        );
        assert_eq!(check_text("", 4000), Err(ErrorCode::EmptyText));
        assert_eq!(check_text(" \t\u{3000}\n", 4000), Err(ErrorCode::EmptyText));
        assert_eq!(check_text(" x ", 4000), Ok(()));
    }

    /// The `ts` of PROTOCOL.md's examples.
    fn example_ts() -> Timestamp {
        Timestamp(
            DateTime::parse_from_rfc3339("2026-11-25T08:00:00.123Z")
                .unwrap()
                .with_timezone(&Utc),
        )
    }

    #[test]
    fn server_messages_have_the_documented_shape() {
        let ts = example_ts();
        let message = ServerMessage::Message(Arc::new(ChatMessage {
            id: 42,
            ts,
            from: "Dave".into(),
            text: "hello".into(),
            cid: None,
        }));
        assert_eq!(
            message.to_json(),
            r#"{"type":"message","id":42,"ts":"2026-11-25T08:00:00.123Z","from":"Dave","text":"hello"}"#
        );
        let error = ServerMessage::error(ErrorCode::NameTaken, "taken");
        assert_eq!(
            error.to_json(),
            r#"{"type":"error","code":"name_taken","message":"taken"}"#
        );
        // The client reads what the server writes, and ignores new fields.
        let read: ServerMessage = serde_json::from_str(
            r#"{"type":"message","id":42,"ts":"2026-11-25T08:00:00.123Z","from":"Dave","text":"hello","new":1}"#,
        )
        .unwrap();
        assert_eq!(read, message);
    }

    #[test]
    fn welcome_history_holds_message_events_and_reads_back() {
        let welcome = ServerMessage::Welcome {
            name: "Dave".into(),
            users: ["Dave"].into_iter().collect(),
            history: vec![Arc::new(ChatMessage {
                id: 42,
                ts: example_ts(),
                from: "Ann".into(),
                text: "hi".into(),
                cid: None,
            })],
            server: SERVER_ID.into(),
            epoch: "e1".into(),
            recovered: Some(true),
            rate_limit: Some(Box::new(RateLimit::DEFAULT)),
        };
        let json = welcome.to_json();
        assert_eq!(
            json,
            r#"{"type":"welcome","name":"Dave","users":["Dave"],"history":[{"type":"message","id":42,"ts":"2026-11-25T08:00:00.123Z","from":"Ann","text":"hi"}],"server":"mioserver/0.1.0","epoch":"e1","recovered":true,"rate_limit":{"per_second":10.0,"burst":20}}"#
        );
        assert_eq!(
            serde_json::from_str::<ServerMessage>(&json).unwrap(),
            welcome
        );
    }

    #[test]
    fn version_1_1_requests_parse() {
        let cid = |text: &str| Some(Cid::new(text).unwrap());
        let cases = [
            (
                r#"{"type":"join","name":"Dave","since":41,"epoch":"e1"}"#,
                Request::Join {
                    name: "Dave".into(),
                    since: Some(41),
                    epoch: Some("e1".into()),
                },
            ),
            (
                r#"{"type":"say","text":"hi","cid":"a-1"}"#,
                Request::Say {
                    text: "hi".into(),
                    cid: cid("a-1"),
                },
            ),
            (
                r#"{"type":"dm","to":"Bob","text":"psst","cid":"~!"}"#,
                Request::Dm {
                    to: "Bob".into(),
                    text: "psst".into(),
                    cid: cid("~!"),
                },
            ),
            (
                r#"{"type":"history","before":42,"limit":10}"#,
                Request::History {
                    before: Some(42),
                    limit: 10,
                },
            ),
        ];
        for (json, request) in cases {
            assert_eq!(parse_request(json).as_ref(), Ok(&request), "{json}");
            assert_eq!(request.to_json(), json);
        }
        // Defaults and the ceiling of a page.
        assert_eq!(
            parse_request(r#"{"type":"history"}"#),
            Ok(Request::History {
                before: None,
                limit: DEFAULT_HISTORY_PAGE
            })
        );
        assert_eq!(
            parse_request(r#"{"type":"history","before":5,"limit":5000}"#),
            Ok(Request::History {
                before: Some(5),
                limit: MAX_HISTORY_PAGE
            })
        );
    }

    #[test]
    fn a_cid_is_1_to_64_printable_ascii_characters() {
        assert!(Cid::new("x").is_some());
        assert!(Cid::new("!~").is_some());
        assert!(Cid::new("a".repeat(64)).is_some());
        for bad in ["", "a b", "é", "tab\t", &"a".repeat(65)] {
            assert_eq!(Cid::new(bad), None, "{bad:?}");
        }
        for invalid in [
            r#"{"type":"say","text":"x","cid":""}"#,
            r#"{"type":"say","text":"x","cid":"has space"}"#,
            r#"{"type":"say","text":"x","cid":7}"#,
            r#"{"type":"dm","to":"b","text":"x","cid":"ü"}"#,
            r#"{"type":"history","before":-1}"#,
        ] {
            assert_eq!(
                parse_request(invalid).unwrap_err().code(),
                ErrorCode::InvalidJson,
                "{invalid}"
            );
        }
    }

    #[test]
    fn an_error_answering_a_cid_carries_it() {
        let error = ServerMessage::Error {
            code: ErrorCode::Unavailable,
            message: "not stored".into(),
            cid: Cid::new("c1"),
        };
        assert_eq!(
            error.to_json(),
            r#"{"type":"error","code":"unavailable","message":"not stored","cid":"c1"}"#
        );
    }
}
