//! Fuzz target: the JSON client-message parser, `protocol::parse_request`.
//!
//! Every text frame a WebSocket client sends goes through this parser, so it
//! must answer any string with a `Request` or a `ParseError`, never a panic.
//! Beyond that, two properties are checked:
//!
//! * a parsed request survives a round trip: `Request::to_json` (what the
//!   line client sends) parses back to the same value, so the client and the
//!   server cannot disagree about a request's meaning;
//! * every error can be described and mapped to an error code, since the
//!   server answers each one with an `error` message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use miochat::proto::protocol::{parse_request, ParseError};

fuzz_target!(|frame: &str| {
    match parse_request(frame) {
        Ok(request) => {
            let json = request.to_json();
            assert_eq!(
                parse_request(&json).as_ref(),
                Ok(&request),
                "{frame:?} parsed, but its re-encoding {json:?} did not parse back"
            );
        }
        Err(error) => {
            // Both are sent to the client; they must not panic either.
            let _ = error.code();
            let description = error.describe();
            assert!(!description.is_empty());
            // A frame that does not start with `{` is never a malformed
            // object: the server relies on this to switch to plain text.
            if !frame.trim_start().starts_with('{') {
                assert_eq!(error, ParseError::NotAnObject);
            }
        }
    }
});
