//! The transport of `PROTOCOL.md`: close codes, the limits and timers that
//! lead to them, the HTTP side (`/healthz`, refused requests) and the
//! connection limits.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{assert_dropped, config, http, join_all, start, stop, tcp, untimed, Client, UPGRADE};
use miochat::evloop::config::LoopConfig;
use miochat::ServerConfig;
use serde_json::{json, Value};
use tungstenite::Message;

#[test]
fn any_request_path_is_accepted_for_the_upgrade() {
    let server = start(config());
    let mut client = Client::connect_path(server.addr(), "/some/path?x=1");
    client.send(json!({"type": "join", "name": "alice"}));
    assert_eq!(client.recv()["type"], "welcome");
    stop(server, [client]);
}

#[test]
fn a_binary_frame_is_closed_with_1003() {
    let server = start(config());
    let [mut alice] = join_all(server.addr(), ["alice"]);
    alice.send_frame(Message::binary(b"{\"type\":\"who\"}".to_vec()));
    assert_eq!(alice.recv_close().0, 1003);
    stop(server, [alice]);
}

/// A `who` padded with an unknown field to exactly `len` bytes.
fn who_of_len(len: usize) -> String {
    let empty = json!({"type": "who", "pad": ""}).to_string();
    json!({"type": "who", "pad": "x".repeat(len - empty.len())}).to_string()
}

/// A message of exactly `limit` bytes is answered; one byte more closes
/// the connection with 1009.
fn assert_message_limit(config: ServerConfig, limit: usize) {
    let server = start(config);
    let [mut alice] = join_all(server.addr(), ["alice"]);
    alice.send_text(&who_of_len(limit));
    assert_eq!(alice.expect_users(), ["alice"]);
    alice.send_text(&who_of_len(limit + 1));
    assert_eq!(alice.recv_close().0, 1009);
    stop(server, [alice]);
}

#[test]
fn a_message_of_64_kib_is_accepted_and_one_byte_more_closed_with_1009() {
    assert_message_limit(config(), 65_536);
}

#[test]
fn max_message_bytes_sets_the_message_limit() {
    let limit = 1000;
    let config = ServerConfig {
        net: LoopConfig {
            max_message_bytes: limit,
            ..config().net
        },
        ..config()
    };
    assert_message_limit(config, limit);
}

#[test]
fn no_successful_join_within_the_join_timeout_closes_with_1008() {
    let join_timeout = Duration::from_millis(300);
    let server = start(ServerConfig {
        join_timeout,
        ..config()
    });
    let [mut bob] = join_all(server.addr(), ["bob"]);
    let started = Instant::now();
    let mut late = Client::connect(server.addr());
    // A refused join does not stop the timer.
    late.send(json!({"type": "join", "name": "not valid"}));
    late.expect_error("invalid_name");
    assert_eq!(late.recv_close().0, 1008);
    assert!(started.elapsed() >= join_timeout);
    // bob's timer, which started earlier, was stopped by his join.
    bob.who();
    assert_eq!(bob.expect_users(), ["bob"]);
    stop(server, [bob, late]);
}

#[test]
fn shutdown_closes_every_client_with_1001() {
    let server = start(config());
    let [alice, bob] = join_all(server.addr(), ["alice", "bob"]);
    let stranger = Client::connect(server.addr());
    std::thread::scope(|scope| {
        let stopping = scope.spawn(|| server.shutdown());
        for mut client in [alice, bob, stranger] {
            assert_eq!(client.recv_close().0, 1001);
        }
        stopping.join().unwrap().expect("a clean shutdown");
    });
}

#[test]
fn a_client_too_slow_to_keep_up_is_closed_with_1013() {
    let server = start(ServerConfig {
        net: LoopConfig {
            max_outbound_bytes: 256 * 1024,
            ..config().net
        },
        max_text_chars: 60_000,
        rate_limit: 0.0,
        ..config()
    });
    let [mut talker, mut listener, mut slow] =
        join_all(server.addr(), ["talker", "listener", "slow"]);
    let pad = "x".repeat(50_000);
    let text = |n: usize| format!("{n:04}{pad}");
    // `slow` never reads: the kernel's buffers fill, then the server's
    // queue for it passes the limit. The others read every message, in
    // order, and are told when `slow` is gone.
    let mut sent = 0;
    let mut slow_left = [false, false];
    while slow_left != [true, true] {
        assert!(sent < 1000, "slow was never disconnected");
        talker.say(&text(sent));
        for (client, left) in [&mut talker, &mut listener].into_iter().zip(&mut slow_left) {
            let mut event = client.recv();
            if event["type"] == "left" {
                let expected = json!({"type": "left", "name": "slow", "online": 2});
                assert_eq!(untimed(event), expected);
                *left = true;
                event = client.recv();
            }
            assert_eq!(event["text"], text(sent).as_str(), "message {sent}");
        }
        sent += 1;
    }
    // What `slow` does get is the messages from the start, in order,
    // then its close.
    let mut received = 0;
    loop {
        match slow.recv_frame() {
            Message::Text(frame) => {
                let event: Value = serde_json::from_str(&frame).unwrap();
                assert_eq!(event["text"], text(received).as_str());
                received += 1;
            }
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1013);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(received < sent);
    stop(server, [talker, listener, slow]);
}

#[test]
fn a_client_gone_without_a_close_frame_is_announced_with_the_online_count() {
    let server = start(config());
    let [mut alice, mut bob, carol] = join_all(server.addr(), ["alice", "bob", "carol"]);
    // Dropped: the socket closes without a WebSocket close frame.
    drop(carol);
    let left = json!({"type": "left", "name": "carol", "online": 2});
    assert_eq!(untimed(alice.recv()), left);
    assert_eq!(untimed(bob.recv()), left);
    // A proper close is announced the same way.
    bob.close();
    let left = json!({"type": "left", "name": "bob", "online": 1});
    assert_eq!(untimed(alice.recv()), left);
    stop(server, [alice, bob]);
}

#[test]
fn healthz_is_json_counting_joined_users_only() {
    let server = start(config());
    let [alice, bob] = join_all(server.addr(), ["alice", "bob"]);
    let not_joined = Client::connect(server.addr());
    let response = http(server.addr(), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(body, json!({"status": "ok", "online": 2}));
    stop(server, [alice, bob, not_joined]);
}

#[test]
fn a_plain_get_of_a_path_that_is_no_page_is_426_upgrade_required() {
    // `/` is the web page (tests/web.rs); any other path is for WebSockets.
    let server = start(config());
    let response = http(server.addr(), "GET /chat HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(response.status, 426);
    stop(server, []);
}

#[test]
fn bad_upgrade_requests_are_refused_with_their_status() {
    let server = start(config());
    let cases = [
        ("NONSENSE\r\n\r\n".to_owned(), 400),
        (UPGRADE.replace("GET", "POST"), 405),
        (UPGRADE.replace("Version: 13", "Version: 8"), 426),
        (
            UPGRADE.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
            400,
        ),
    ];
    for (request, status) in cases {
        assert_eq!(http(server.addr(), &request).status, status, "{request:?}");
    }
    stop(server, []);
}

#[test]
fn an_incomplete_handshake_is_dropped_after_the_handshake_timeout() {
    let handshake_timeout = Duration::from_millis(300);
    let server = start(ServerConfig {
        net: LoopConfig {
            handshake_timeout,
            ..config().net
        },
        ..config()
    });
    let started = Instant::now();
    let mut stream = tcp(server.addr());
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert_dropped(&mut stream);
    assert!(started.elapsed() >= handshake_timeout);
    stop(server, []);
}

/// With room for two connections, a third socket is closed at once while
/// the first two keep working; once one leaves, a new one is welcome.
fn assert_third_connection_dropped(config: ServerConfig) {
    let server = start(config);
    let [mut alice, mut bob] = join_all(server.addr(), ["alice", "bob"]);
    assert_dropped(&mut tcp(server.addr()));
    alice.say("still here");
    assert_eq!(alice.recv()["text"], "still here");
    assert_eq!(bob.recv()["text"], "still here");
    drop(bob);
    assert_eq!(alice.recv()["type"], "left");
    let [carol] = join_all(server.addr(), ["carol"]);
    stop(server, [alice, carol]);
}

#[test]
fn connections_beyond_the_per_ip_limit_are_dropped() {
    assert_third_connection_dropped(ServerConfig {
        net: LoopConfig {
            max_connections_per_ip: 2,
            ..config().net
        },
        ..config()
    });
}

#[test]
fn connections_beyond_max_connections_are_dropped() {
    assert_third_connection_dropped(ServerConfig {
        net: LoopConfig {
            max_connections: 2,
            ..config().net
        },
        ..config()
    });
}
