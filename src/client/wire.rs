//! The requests the client sends, as the JSON of `PROTOCOL.md`.
//!
//! The server only ever parses requests (`protocol::Request` has no
//! serializer), so the client spells them here; a test feeds every one back
//! through the server's own parser, so the two cannot drift apart.

use serde::Serialize;

/// One client-to-server message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Request {
    /// Enter the room; `since` resumes after the last message seen.
    Join {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    /// A public message.
    Say { text: String },
    /// A private message.
    Dm { to: String, text: String },
    /// Ask who is online.
    Who,
    /// Change one's name.
    Nick { name: String },
}

impl Request {
    /// The request as one text frame.
    pub fn to_json(&self) -> String {
        // Every field is a string or a number, so this cannot fail.
        serde_json::to_string(self).expect("requests always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::Request;
    use crate::protocol::{self, parse_request};

    #[test]
    fn requests_are_what_the_server_parses() {
        let cases = [
            (
                Request::Join {
                    name: "Dave".into(),
                    since: None,
                },
                r#"{"type":"join","name":"Dave"}"#,
                protocol::Request::Join {
                    name: "Dave".into(),
                    since: None,
                },
            ),
            (
                Request::Join {
                    name: "Dave".into(),
                    since: Some(41),
                },
                r#"{"type":"join","name":"Dave","since":41}"#,
                protocol::Request::Join {
                    name: "Dave".into(),
                    since: Some(41),
                },
            ),
            (
                Request::Say {
                    text: "hi 😀".into(),
                },
                r#"{"type":"say","text":"hi 😀"}"#,
                protocol::Request::Say {
                    text: "hi 😀".into(),
                },
            ),
            (
                Request::Dm {
                    to: "Bob".into(),
                    text: "psst".into(),
                },
                r#"{"type":"dm","to":"Bob","text":"psst"}"#,
                protocol::Request::Dm {
                    to: "Bob".into(),
                    text: "psst".into(),
                },
            ),
            (Request::Who, r#"{"type":"who"}"#, protocol::Request::Who),
            (
                Request::Nick {
                    name: "David".into(),
                },
                r#"{"type":"nick","name":"David"}"#,
                protocol::Request::Nick {
                    name: "David".into(),
                },
            ),
        ];
        for (request, json, parsed) in cases {
            assert_eq!(request.to_json(), json);
            assert_eq!(parse_request(json), Ok(parsed));
        }
    }
}
