//! Fuzz target: the HTTP request-head parser, `http::parse_head`.
//!
//! The first bytes of every connection reach this parser before anything
//! else, from anyone who can open a TCP connection. Besides never panicking
//! it must keep two promises the connection relies on:
//!
//! * a complete head of `len` bytes lies within the input (the connection
//!   splits its buffer at `len`, and the rest is WebSocket data);
//! * a refusal's response is a well-formed HTTP response: a status line with
//!   the refusal's status, header lines, an empty line, and a body exactly as
//!   long as its `Content-Length` says.
//!
//! It also checks that the answer does not change when more bytes follow a
//! complete head, since those bytes belong to the WebSocket stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use miochat::evloop::http::{parse_head, Target, MAX_HEAD_BYTES};

fuzz_target!(|data: &[u8]| {
    match parse_head(data, &[]) {
        Ok(None) => {
            // "Read more" is only allowed while there is room to read more.
            assert!(
                data.len() < MAX_HEAD_BYTES,
                "a partial head of {} bytes",
                data.len()
            );
        }
        Ok(Some((head, len))) => {
            assert!(
                len <= data.len(),
                "head length {len} > input {}",
                data.len()
            );
            assert!(len <= MAX_HEAD_BYTES);
            match &head.target {
                // The key is what the accept key is derived from.
                Target::Upgrade { key } => assert_eq!(key.len(), 24),
                Target::Get(_) => {}
            }
            // The head alone parses to the same thing: what follows it
            // does not change its meaning.
            assert_eq!(parse_head(&data[..len], &[]), Ok(Some((head, len))));
        }
        Err(refusal) => check_response(refusal.status, &refusal.response()),
    }
});

/// Checks that `response` is one complete HTTP/1.1 response with `status`.
fn check_response(status: u16, response: &[u8]) {
    let text = std::str::from_utf8(response).expect("responses are UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("an empty line ends the head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("a status line");
    assert!(
        status_line.starts_with(&format!("HTTP/1.1 {status} ")),
        "status line {status_line:?}"
    );
    let mut content_length = None;
    for line in lines {
        let (name, value) = line
            .split_once(": ")
            .expect("header lines are `Name: value`");
        assert!(!name.is_empty() && !name.contains(char::is_whitespace));
        assert!(!value.contains(['\r', '\n']));
        if name.eq_ignore_ascii_case("Content-Length") {
            content_length = Some(value.parse::<usize>().expect("a number"));
        }
    }
    assert_eq!(
        content_length,
        Some(body.len()),
        "Content-Length matches the body"
    );
}
