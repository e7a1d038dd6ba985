//! Fuzz target: the plain-text command parser, `command::parse`, and
//! plain-text mode's `plain::interpret`, which builds on it.
//!
//! The line client parses what its user types, and the server parses every
//! line a plain-text (`websocat`) client sends, so any string must give an
//! answer without a panic. The checks pin down what the parsers promise:
//!
//! * a blank line means nothing, and only a blank line does;
//! * a parsed DM names a recipient and has text (a usage message otherwise);
//! * a plain-text client's first line is its name, trimmed;
//! * a request built from a line survives the JSON round trip, as any
//!   request the server handles must.

#![no_main]

use libfuzzer_sys::fuzz_target;
use miochat::chat::plain::{self, Line};
use miochat::proto::command::{self, Command};
use miochat::proto::protocol::{parse_request, Request};

fuzz_target!(|line: &str| {
    let blank = line.trim().is_empty();
    let parsed = command::parse(line);
    assert_eq!(parsed.is_none(), blank, "only a blank line means nothing");
    match &parsed {
        Some(Command::Dm { to, text }) => {
            assert!(!to.is_empty() && !to.contains(char::is_whitespace));
            assert!(!text.trim().is_empty());
        }
        Some(Command::Nick(name)) => {
            assert!(!name.is_empty() && !name.contains(char::is_whitespace));
        }
        Some(Command::Unknown(word)) => assert!(word.starts_with('/')),
        _ => {}
    }

    // Before joining, a line is the name; after, it is a command.
    match plain::interpret(false, line) {
        Line::Blank => assert!(blank),
        Line::Request(Request::Join {
            name,
            since: None,
            epoch: None,
        }) => {
            assert_eq!(name, line.trim());
        }
        other => panic!("a first line gave {other:?}"),
    }
    let joined = plain::interpret(true, line);
    assert_eq!(matches!(joined, Line::Blank), blank);
    if let Line::Request(request) = joined {
        assert_eq!(parse_request(&request.to_json()), Ok(request));
    }
});
