//! Plain-text mode (PROTOCOL.md): a client whose first frame is not a JSON
//! object, as typed into `websocat`, chats in readable lines.

mod common;

use common::{config, start, stop, Client};
use serde_json::json;

/// Splits `[HH:MM:SS] rest` into the checked time and the rest.
fn timed(line: &str) -> &str {
    let (time, rest) = line.split_at(11);
    let bytes = time.as_bytes();
    assert!(
        bytes[0] == b'['
            && bytes[9] == b']'
            && bytes[10] == b' '
            && bytes[3] == b':'
            && bytes[6] == b':'
            && [1, 2, 4, 5, 7, 8]
                .iter()
                .all(|&i| bytes[i].is_ascii_digit()),
        "not a [HH:MM:SS] line: {line:?}"
    );
    rest
}

#[test]
fn a_plain_client_chats_with_a_json_client() {
    let server = start(config());
    let mut dave = Client::connect(server.addr());
    dave.send_text("Dave");
    assert_eq!(
        dave.recv_line(),
        "welcome, Dave! online (1): Dave (type /help for commands)"
    );
    let (mut bob, _welcome) = Client::join(server.addr(), "Bob");
    assert_eq!(timed(&dave.recv_line()), "* Bob joined (2 online)");

    dave.send_text("hello 😀");
    assert_eq!(timed(&dave.recv_line()), "Dave: hello 😀");
    let message = bob.recv();
    assert_eq!(
        (&message["from"], &message["text"]),
        (&json!("Dave"), &json!("hello 😀"))
    );

    bob.say("hi Dave");
    assert_eq!(timed(&dave.recv_line()), "Bob: hi Dave");
    assert_eq!(bob.recv()["text"], "hi Dave");

    dave.send_text("dm bob psst");
    assert_eq!(timed(&dave.recv_line()), "(dm) Dave -> Bob: psst");
    let dm = bob.recv();
    assert_eq!((&dm["type"], &dm["text"]), (&json!("dm"), &json!("psst")));

    dave.send_text("/who");
    let who = dave.recv_line();
    let names = who.strip_prefix("online (2): ").expect(&who);
    let mut names: Vec<&str> = names.split(", ").collect();
    names.sort_unstable();
    assert_eq!(names, ["Bob", "Dave"]);

    dave.send_text("/nick David");
    assert_eq!(timed(&dave.recv_line()), "* Dave is now known as David");
    assert_eq!(bob.recv()["to"], "David");

    dave.send_text("/frobnicate");
    assert_eq!(
        dave.recv_line(),
        "unknown command /frobnicate (/help lists them)"
    );
    dave.send_text("/help");
    // One frame per line of the help.
    for line in miochat::proto::command::HELP.lines() {
        assert_eq!(dave.recv_line(), line);
    }
    dave.send_text("/quit");
    assert_eq!(dave.recv_close(), (1000, "bye".to_owned()));
    stop(server, [bob, dave]);
}

#[test]
fn a_refused_name_is_explained_in_a_line_and_another_may_follow() {
    let server = start(config());
    let (bob, _welcome) = Client::join(server.addr(), "Bob");
    let mut carol = Client::connect(server.addr());
    carol.send_text("not a name");
    let refusal = carol.recv_line();
    assert!(refusal.starts_with("error (invalid_name): "), "{refusal}");
    carol.send_text("BOB");
    let refusal = carol.recv_line();
    assert!(refusal.starts_with("error (name_taken): "), "{refusal}");
    carol.send_text("Carol");
    assert!(carol
        .recv_line()
        .starts_with("welcome, Carol! online (2): "));
    stop(server, [bob, carol]);
}

#[test]
fn history_comes_as_lines_before_the_welcome() {
    let server = start(config());
    let (mut bob, _welcome) = Client::join(server.addr(), "Bob");
    bob.say("first");
    bob.recv();
    let mut dave = Client::connect(server.addr());
    dave.send_text("Dave");
    assert_eq!(timed(&dave.recv_line()), "Bob: first");
    assert!(dave.recv_line().starts_with("welcome, Dave!"));
    stop(server, [bob, dave]);
}

#[test]
fn a_json_first_frame_means_json_for_good() {
    let server = start(config());
    let mut client = Client::connect(server.addr());
    client.send(json!({"type": "teleport"}));
    client.expect_error("unknown_type");
    // Not plain-text mode now: a bare line is malformed JSON.
    client.send_text("Dave");
    client.expect_error("invalid_json");
    stop(server, [client]);
}
