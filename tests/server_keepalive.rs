//! Keepalive with short timers: the server pings a silent client and
//! closes it if nothing comes back; a client that answers is never closed.

mod common;

use std::time::{Duration, Instant};

use common::{config, join_all, start, stop, untimed};
use miochat::evloop::config::LoopConfig;
use miochat::ServerConfig;
use serde_json::json;
use tungstenite::Message;

const PING_INTERVAL: Duration = Duration::from_millis(200);
const PING_TIMEOUT: Duration = Duration::from_millis(200);

fn keepalive_config() -> ServerConfig {
    ServerConfig {
        net: LoopConfig {
            ping_interval: PING_INTERVAL,
            ping_timeout: PING_TIMEOUT,
            ..config().net
        },
        ..config()
    }
}

#[test]
fn a_client_that_answers_pings_is_never_disconnected() {
    let server = start(keepalive_config());
    let started = Instant::now();
    let [mut alice] = join_all(server.addr(), ["alice"]);
    // Reading is what answers: tungstenite sends the pong of each ping it
    // reads. Five pings take at least five intervals, more than twice
    // what an unanswered ping is given.
    for _ in 0..5 {
        let frame = alice.recv_frame();
        assert!(matches!(frame, Message::Ping(_)), "got {frame:?}");
    }
    assert!(started.elapsed() > 2 * (PING_INTERVAL + PING_TIMEOUT));
    alice.who();
    assert_eq!(alice.expect_users(), ["alice"]);
    stop(server, [alice]);
}

#[test]
fn a_client_that_never_answers_is_closed_after_interval_plus_timeout() {
    let server = start(keepalive_config());
    let [mut alice] = join_all(server.addr(), ["alice"]);
    let started = Instant::now();
    let [mut silent] = join_all(server.addr(), ["silent"]);
    assert_eq!(untimed(alice.recv())["name"], "silent");
    // alice keeps reading, so she answers her own pings meanwhile.
    let left = json!({"type": "left", "name": "silent", "online": 1});
    assert_eq!(untimed(alice.recv()), left);
    assert!(started.elapsed() >= PING_INTERVAL + PING_TIMEOUT);
    // Only now does `silent` read: the ping it never answered, then the close.
    assert!(matches!(silent.recv_frame(), Message::Ping(_)));
    assert_eq!(silent.recv_close(), (1001, "ping timeout".to_owned()));
    stop(server, [alice, silent]);
}
