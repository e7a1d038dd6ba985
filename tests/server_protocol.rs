//! The JSON messages of `PROTOCOL.md`: their shapes, who receives them, in
//! what order, and every error code.

mod common;

use common::{config, join_all, start, stop, unstamped, untimed, Client};
use miochat::ServerConfig;
use serde_json::{json, Value};

#[test]
fn welcome_joined_and_users_have_the_documented_shapes() {
    let server = start(config());
    let (mut alice, mut welcome) = Client::join(server.addr(), "alice");
    common::sorted_users(&mut welcome);
    // The epoch names this server's history; it is the same for everyone.
    let epoch = welcome["epoch"].clone();
    assert!(epoch.as_str().is_some_and(|epoch| !epoch.is_empty()));
    // The connection's rate limit is announced: the defaults here.
    let rate_limit = json!({"per_second": 10.0, "burst": 20});
    let expected = json!({"type": "welcome", "name": "alice", "users": ["alice"],
        "history": [], "server": "mioserver/0.1.0", "epoch": epoch, "rate_limit": rate_limit});
    assert_eq!(welcome, expected);

    // Unknown fields are ignored.
    let mut bob = Client::connect(server.addr());
    bob.send(json!({"type": "join", "name": "bob", "colour": "blue"}));
    let mut welcome = bob.recv();
    common::sorted_users(&mut welcome);
    let expected = json!({"type": "welcome", "name": "bob", "users": ["alice", "bob"],
        "history": [], "server": "mioserver/0.1.0", "epoch": epoch, "rate_limit": rate_limit});
    assert_eq!(welcome, expected);
    let joined = json!({"type": "joined", "name": "bob", "online": 2});
    assert_eq!(untimed(alice.recv()), joined);

    bob.who();
    assert_eq!(bob.expect_users(), ["alice", "bob"]);
    stop(server, [alice, bob]);
}

#[test]
fn say_is_echoed_to_the_sender_and_broadcast_to_everyone() {
    let server = start(config());
    let [mut alice, mut bob] = join_all(server.addr(), ["alice", "bob"]);
    alice.send(json!({"type": "say", "text": "hello 😀", "mood": "happy"}));
    let echo = alice.recv();
    assert_eq!(bob.recv(), echo);
    let (_id, rest) = unstamped(echo);
    let expected = json!({"type": "message", "from": "alice", "text": "hello 😀"});
    assert_eq!(rest, expected);
    stop(server, [alice, bob]);
}

#[test]
fn every_client_sees_public_messages_in_the_same_order() {
    const EACH: usize = 5;
    let server = start(config());
    let mut clients = join_all(server.addr(), ["alice", "bob", "carol"]);
    // Everyone talks at once, nobody reads until all is sent.
    for round in 0..EACH {
        for client in &mut clients {
            client.say(&format!("line {round}"));
        }
    }
    let mut seen: Vec<Vec<Value>> = Vec::new();
    for client in &mut clients {
        seen.push((0..3 * EACH).map(|_| client.recv()).collect());
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0], seen[2]);
    let ids: Vec<u64> = seen[0].iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids {ids:?}");
    for name in ["alice", "bob", "carol"] {
        let own: Vec<Value> = seen[0]
            .iter()
            .filter(|m| m["from"] == name)
            .map(|m| m["text"].clone())
            .collect();
        let sent: Vec<Value> = (0..EACH).map(|r| json!(format!("line {r}"))).collect();
        assert_eq!(own, sent, "{name}'s messages, in the order sent");
    }
    stop(server, clients);
}

#[test]
fn ids_strictly_increase_across_public_and_private_messages() {
    let server = start(config());
    let [mut alice, mut bob] = join_all(server.addr(), ["alice", "bob"]);
    alice.say("one");
    alice.dm("bob", "two");
    bob.say("three");
    bob.dm("alice", "four");
    let mut ids = Vec::new();
    for _ in 0..4 {
        let message = alice.recv();
        assert_eq!(bob.recv(), message, "both see the same four messages");
        ids.push(unstamped(message).0);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids {ids:?}");
    stop(server, [alice, bob]);
}

#[test]
fn a_dm_reaches_only_its_two_parties() {
    let server = start(config());
    let [mut alice, mut bob, mut carol] = join_all(server.addr(), ["alice", "bob", "carol"]);
    alice.dm("bob", "psst");
    let dm = alice.recv();
    assert_eq!(bob.recv(), dm);
    let (_id, rest) = unstamped(dm);
    let expected = json!({"type": "dm", "from": "alice", "to": "bob", "text": "psst"});
    assert_eq!(rest, expected);
    // Barrier: carol's next frame is the answer to her `who`, not the DM.
    carol.who();
    carol.expect_users();
    stop(server, [alice, bob, carol]);
}

#[test]
fn a_dm_finds_its_recipient_whatever_the_case() {
    let server = start(config());
    let [mut alice, mut bob] = join_all(server.addr(), ["Alice", "Bob"]);
    alice.dm("bOB", "psst");
    let dm = bob.recv();
    assert_eq!(alice.recv(), dm);
    // `to` is the recipient's name as they chose it.
    let expected = json!({"type": "dm", "from": "Alice", "to": "Bob", "text": "psst"});
    assert_eq!(unstamped(dm).1, expected);
    stop(server, [alice, bob]);
}

#[test]
fn a_dm_to_yourself_is_delivered_once() {
    let server = start(config());
    let [mut alice] = join_all(server.addr(), ["alice"]);
    alice.dm("ALICE", "note to self");
    let expected = json!({"type": "dm", "from": "alice", "to": "alice", "text": "note to self"});
    assert_eq!(unstamped(alice.recv()).1, expected);
    // Barrier: the next frame is the answer to `who`, not a second copy.
    alice.who();
    alice.expect_users();
    stop(server, [alice]);
}

#[test]
fn a_dm_to_someone_not_online_is_unknown_user() {
    let server = start(config());
    let [mut alice] = join_all(server.addr(), ["alice"]);
    alice.dm("nobody", "hello?");
    alice.expect_error("unknown_user");
    stop(server, [alice]);
}

/// A server keeping 3 messages of history, in which alice has said
/// `m1`..`m5` and sent bob a DM in between. Returns the server, alice and
/// bob, and the five `message` events as alice received them.
fn room_with_history() -> (miochat::ServerHandle, [Client; 2], Vec<Value>) {
    let server = start(ServerConfig {
        history: 3,
        ..config()
    });
    let [mut alice, mut bob] = join_all(server.addr(), ["alice", "bob"]);
    let mut said = Vec::new();
    for n in 1..=5 {
        alice.say(&format!("m{n}"));
        said.push(alice.recv());
        bob.recv();
        if n == 3 {
            alice.dm("bob", "not history");
            alice.recv();
            bob.recv();
        }
    }
    (server, [alice, bob], said)
}

/// Joins as `name` with `since` and returns the `history` of the welcome.
fn history_since(server: &miochat::ServerHandle, name: &str, since: Option<u64>) -> Value {
    let mut client = Client::connect(server.addr());
    let mut join = json!({"type": "join", "name": name});
    if let Some(since) = since {
        join["since"] = json!(since);
    }
    client.send(join);
    client.recv()["history"].take()
}

#[test]
fn welcome_holds_the_last_n_public_messages_oldest_first() {
    let (server, clients, said) = room_with_history();
    assert_eq!(history_since(&server, "carol", None), json!(said[2..]));
    stop(server, clients);
}

#[test]
fn join_with_since_sends_the_kept_history_after_that_id() {
    let (server, clients, said) = room_with_history();
    let id = |n: usize| said[n]["id"].as_u64().unwrap();
    assert_eq!(history_since(&server, "c1", Some(id(3))), json!(said[4..]));
    assert_eq!(history_since(&server, "c2", Some(id(4))), json!([]));
    // Older than what is kept: everything kept.
    assert_eq!(history_since(&server, "c3", Some(id(0))), json!(said[2..]));
    assert_eq!(history_since(&server, "c4", Some(0)), json!(said[2..]));
    stop(server, clients);
}

#[test]
fn since_that_is_not_an_unsigned_integer_is_invalid_json() {
    let server = start(config());
    let mut alice = Client::connect(server.addr());
    for since in [json!(-1), json!(1.5), json!("3"), json!([3])] {
        alice.send(json!({"type": "join", "name": "alice", "since": since}));
        alice.expect_error("invalid_json");
    }
    // Still open, still not joined.
    alice.send(json!({"type": "join", "name": "alice", "since": 0}));
    assert_eq!(alice.recv()["type"], "welcome");
    stop(server, [alice]);
}

#[test]
fn a_name_has_at_most_32_characters() {
    let server = start(config());
    let mut client = Client::connect(server.addr());
    client.send(json!({"type": "join", "name": "ü".repeat(33)}));
    client.expect_error("invalid_name");
    // 32 characters (64 bytes): fine, on the same connection.
    client.send(json!({"type": "join", "name": "ü".repeat(32)}));
    assert_eq!(client.recv()["name"], "ü".repeat(32));
    stop(server, [client]);
}

#[test]
fn names_with_other_characters_than_alphanumerics_and_dash_dot_underscore_are_invalid() {
    let server = start(config());
    let mut client = Client::connect(server.addr());
    for name in [
        "",
        "a b",
        "smile😀",
        "bell\u{7}",
        "zero\u{200b}width",
        "tab\t",
    ] {
        client.send(json!({"type": "join", "name": name}));
        client.expect_error("invalid_name");
    }
    let name = "Zoë_2-x.名前٣";
    client.send(json!({"type": "join", "name": name}));
    assert_eq!(client.recv()["name"], name);
    stop(server, [client]);
}

#[test]
fn names_are_unique_whatever_the_case() {
    let server = start(config());
    let [elodie] = join_all(server.addr(), ["Élodie"]);
    let mut client = Client::connect(server.addr());
    for name in ["Élodie", "éLODIE", "ÉLODIE"] {
        client.send(json!({"type": "join", "name": name}));
        client.expect_error("name_taken");
    }
    client.send(json!({"type": "join", "name": "Elodie"}));
    assert_eq!(client.recv()["type"], "welcome");
    stop(server, [elodie, client]);
}

#[test]
fn nick_renames_for_everyone_under_the_name_rules() {
    let server = start(config());
    let [mut alice, mut bob] = join_all(server.addr(), ["alice", "bob"]);
    alice.send(json!({"type": "nick", "name": "Alicia"}));
    let renamed = json!({"type": "renamed", "from": "alice", "to": "Alicia"});
    assert_eq!(untimed(alice.recv()), renamed);
    assert_eq!(untimed(bob.recv()), renamed);

    for (name, code) in [("ALICIA", "name_taken"), ("b b", "invalid_name")] {
        bob.send(json!({"type": "nick", "name": name}));
        bob.expect_error(code);
    }
    // One's own name in another case is no clash.
    bob.send(json!({"type": "nick", "name": "BOB"}));
    let renamed = json!({"type": "renamed", "from": "bob", "to": "BOB"});
    assert_eq!(untimed(alice.recv()), renamed);
    assert_eq!(untimed(bob.recv()), renamed);
    // The old name is free again; the new one is in use.
    let [carol] = join_all(server.addr(), ["alice"]);
    let joined = json!({"type": "joined", "name": "alice", "online": 3});
    assert_eq!(untimed(alice.recv()), joined);
    assert_eq!(untimed(bob.recv()), joined);
    bob.who();
    assert_eq!(bob.expect_users(), ["Alicia", "BOB", "alice"]);
    stop(server, [alice, bob, carol]);
}

#[test]
fn requests_before_join_are_not_joined() {
    let server = start(config());
    let mut client = Client::connect(server.addr());
    let requests = [
        json!({"type": "say", "text": "hi"}),
        json!({"type": "dm", "to": "x", "text": "hi"}),
        json!({"type": "who"}),
        json!({"type": "nick", "name": "x"}),
    ];
    for request in requests {
        client.send(request);
        client.expect_error("not_joined");
    }
    stop(server, [client]);
}

#[test]
fn a_second_join_is_already_joined() {
    let server = start(config());
    let [mut alice] = join_all(server.addr(), ["alice"]);
    alice.send(json!({"type": "join", "name": "other"}));
    alice.expect_error("already_joined");
    alice.who();
    assert_eq!(alice.expect_users(), ["alice"]);
    stop(server, [alice]);
}

#[test]
fn frames_that_are_not_well_formed_requests_are_invalid_json() {
    let server = start(config());
    let [mut alice] = join_all(server.addr(), ["alice"]);
    let frames = [
        "not json",
        "{\"type\":\"say\",",
        "[1, 2]",
        "42",
        r#"{"type":"say","text":5}"#,
        r#"{"type":"dm","text":"no recipient"}"#,
    ];
    for frame in frames {
        alice.send_text(frame);
        alice.expect_error("invalid_json");
    }
    stop(server, [alice]);
}

#[test]
fn an_unknown_type_is_unknown_type() {
    let server = start(config());
    let [mut alice] = join_all(server.addr(), ["alice"]);
    alice.send(json!({"type": "dance", "text": "hi"}));
    alice.expect_error("unknown_type");
    stop(server, [alice]);
}

#[test]
fn empty_or_whitespace_text_is_empty_text() {
    let server = start(config());
    let [mut alice, bob] = join_all(server.addr(), ["alice", "bob"]);
    for text in ["", " ", "\t\n\r", "\u{3000}\u{2003}\u{a0}"] {
        alice.say(text);
        alice.expect_error("empty_text");
        alice.dm("bob", text);
        alice.expect_error("empty_text");
    }
    stop(server, [alice, bob]);
}

#[test]
fn text_is_limited_to_4000_characters_not_bytes() {
    let server = start(config());
    let [mut alice, mut bob] = join_all(server.addr(), ["alice", "bob"]);
    let longest = "😀".repeat(4000);
    alice.say(&longest);
    assert_eq!(alice.recv()["text"], longest.as_str());
    alice.dm("bob", &longest);
    assert_eq!(alice.recv()["text"], longest.as_str());
    let too_long = "a".repeat(4001);
    alice.say(&too_long);
    alice.expect_error("too_long");
    alice.dm("bob", &too_long);
    alice.expect_error("too_long");
    // bob got the message and the DM, and neither refusal.
    assert_eq!(bob.recv()["type"], "message");
    assert_eq!(bob.recv()["type"], "dm");
    bob.who();
    bob.expect_users();
    stop(server, [alice, bob]);
}

#[test]
fn max_text_chars_sets_the_text_limit() {
    let server = start(ServerConfig {
        max_text_chars: 10,
        ..config()
    });
    let [mut alice] = join_all(server.addr(), ["alice"]);
    alice.say("0123456789");
    assert_eq!(alice.recv()["text"], "0123456789");
    alice.say("0123456789A");
    alice.expect_error("too_long");
    stop(server, [alice]);
}

/// A rate limit whose tokens come back so slowly (one a minute) that none
/// returns during a test.
fn rate_limited(burst: u32) -> ServerConfig {
    ServerConfig {
        rate_limit: 1.0 / 60.0,
        rate_burst: burst,
        ..config()
    }
}

#[test]
fn requests_beyond_the_rate_limit_are_rate_limited() {
    // Every request counts, the join included: join, say, say, then refused.
    let server = start(rate_limited(3));
    let [mut alice, mut bob] = join_all(server.addr(), ["alice", "bob"]);
    // welcome announces the limit, so that a client can keep under it.
    let (carol, welcome) = Client::join(server.addr(), "carol");
    assert_eq!(
        welcome["rate_limit"],
        json!({"per_second": 1.0 / 60.0, "burst": 3})
    );
    let joined = json!({"type": "joined", "name": "carol", "online": 3});
    assert_eq!(untimed(alice.recv()), joined);
    assert_eq!(untimed(bob.recv()), joined);
    alice.say("one");
    alice.say("two");
    alice.say("three");
    alice.who();
    for text in ["one", "two"] {
        assert_eq!(alice.recv()["text"], text);
        assert_eq!(bob.recv()["text"], text);
    }
    alice.expect_error("rate_limited");
    alice.expect_error("rate_limited");
    // alice's connection stays open.
    bob.say("still there?");
    assert_eq!(alice.recv()["text"], "still there?");
    stop(server, [alice, bob, carol]);
}

#[test]
fn flooding_past_the_rate_limit_closes_with_1008() {
    // `chat.rs`: 50 refusals in a row are answered, the 51st closes.
    let server = start(rate_limited(1));
    let [mut alice] = join_all(server.addr(), ["alice"]);
    for _ in 0..51 {
        alice.say("flood");
    }
    for _ in 0..50 {
        alice.expect_error("rate_limited");
    }
    assert_eq!(alice.recv_close().0, 1008);
    stop(server, [alice]);
}
