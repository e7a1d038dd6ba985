//! Behind a reverse proxy and in browsers: `--trusted-proxy` (the client's
//! address from `X-Forwarded-For`, for the per-address limit and the log)
//! and `--allowed-origin` (403 for another site's page). The "proxy" here
//! is the test itself, connecting from 127.0.0.1 and writing the header
//! the way nginx does; `tests/nginx.rs` puts a real nginx in front.

mod common;

use std::io::Write;

use common::process::Logged;
use common::*;
use miochat::evloop::config::LoopConfig;
use miochat::evloop::testing::UPGRADE;
use miochat::ServerConfig;
use serde_json::json;

/// The loopback address every test connects from: the trusted proxy.
const PROXY: &str = "127.0.0.1";

/// A server allowing one connection per address; `trusted` lists the
/// proxies whose `X-Forwarded-For` it believes.
fn one_per_address(trusted: &[&str]) -> ServerConfig {
    ServerConfig {
        net: LoopConfig {
            max_connections_per_ip: 1,
            trusted_proxies: trusted.iter().map(|ip| ip.parse().unwrap()).collect(),
            ..config().net
        },
        ..config()
    }
}

/// An upgrade that says it was forwarded for `client`.
fn forwarded(server: &miochat::ServerHandle, client: &str) -> Result<Client, u16> {
    Client::upgrade(server.addr(), &[("X-Forwarded-For", client)])
}

#[test]
fn a_trusted_proxys_clients_are_limited_by_their_own_address() {
    let server = start(one_per_address(&[PROXY]));
    // Two clients through one proxy: two addresses, one connection each.
    let alice = forwarded(&server, "203.0.113.1")
        .unwrap()
        .join_as("alice")
        .0;
    let mut bob = forwarded(&server, "203.0.113.2").unwrap().join_as("bob").0;
    // A second connection for Alice's address is refused, as nginx
    // refuses one over its own `limit_conn`; the others are not disturbed.
    assert_eq!(forwarded(&server, "203.0.113.1").unwrap_err(), 503);
    // Only the last address is believed: the one the proxy appended. What
    // the client wrote itself before it could be anything.
    assert_eq!(
        forwarded(&server, "203.0.113.2, 203.0.113.1").unwrap_err(),
        503
    );
    assert_eq!(
        forwarded(&server, "203.0.113.1, 203.0.113.2").unwrap_err(),
        503
    );
    // Alice leaves: her address has its place back.
    drop(alice);
    let left = untimed(bob.recv());
    assert_eq!(left, json!({"type": "left", "name": "alice", "online": 1}));
    let carol = forwarded(&server, "203.0.113.1")
        .unwrap()
        .join_as("carol")
        .0;
    stop(server, [bob, carol]);
}

#[test]
fn a_trusted_proxy_is_not_limited_while_its_requests_are_on_their_way() {
    let server = start(one_per_address(&[PROXY]));
    // The proxy's own connection has not sent its head yet: it counts for
    // nobody, so the next client through the same proxy is welcome.
    let mut waiting = tcp(server.addr());
    let alice = forwarded(&server, "203.0.113.1")
        .unwrap()
        .join_as("alice")
        .0;
    // A request from the proxy without the header (a health check on the
    // proxy's machine) is counted under the proxy's address.
    let own = Client::upgrade(server.addr(), &[])
        .unwrap()
        .join_as("proxy")
        .0;
    assert_eq!(Client::upgrade(server.addr(), &[]).unwrap_err(), 503);
    // The waiting connection is still open: it gets the 503 too, once its
    // head says whom it is for.
    let answer = http_on(
        &mut waiting,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.1\r\n\r\n",
    );
    assert_eq!(answer.status, 503, "{answer:?}");
    drop(waiting);
    stop(server, [alice, own]);
}

/// Asserts that an untrusted peer's second connection is dropped at
/// accept, whatever address its `X-Forwarded-For` names: the peer is
/// 127.0.0.1, which has its one connection.
fn assert_header_ignored(trusted: &[&str]) {
    let server = start(one_per_address(trusted));
    let alice = forwarded(&server, "203.0.113.1")
        .unwrap()
        .join_as("alice")
        .0;
    let mut second = tcp(server.addr());
    // The server may have dropped the socket before this write: then it
    // fails, and the read below sees the same.
    let head = String::from_utf8(UPGRADE.to_vec()).unwrap();
    let head = head.replace("Host: x\r\n", "Host: x\r\nX-Forwarded-For: 203.0.113.2\r\n");
    let _ = second.write_all(head.as_bytes());
    assert_dropped(&mut second);
    stop(server, [alice]);
}

#[test]
fn an_untrusted_peers_x_forwarded_for_is_ignored() {
    assert_header_ignored(&[]);
}

#[test]
fn the_loop_believes_only_the_proxy_it_is_told_to_trust() {
    // 127.0.0.1 is not the trusted proxy here.
    assert_header_ignored(&["192.0.2.1"]);
}

#[test]
fn a_foreign_origin_is_refused_a_listed_one_and_none_are_welcome() {
    let server = start(ServerConfig {
        net: LoopConfig {
            allowed_origins: vec!["https://chat.example.org".to_owned()],
            ..config().net
        },
        ..config()
    });
    let origin = |value| Client::upgrade(server.addr(), &[("Origin", value)]);
    assert_eq!(origin("https://evil.example").unwrap_err(), 403);
    assert_eq!(origin("http://chat.example.org").unwrap_err(), 403);
    let browser = origin("https://chat.example.org")
        .unwrap()
        .join_as("alice")
        .0;
    let terminal = Client::upgrade(server.addr(), &[])
        .unwrap()
        .join_as("bob")
        .0;
    stop(server, [browser, terminal]);
}

#[test]
fn the_binary_logs_the_forwarded_address_and_takes_both_flags_from_the_environment() {
    let (mut server, addr) = Logged::mioserver(
        &[],
        &[
            ("MIOCHAT_TRUSTED_PROXY", "192.0.2.1,127.0.0.1"),
            ("MIOCHAT_ALLOWED_ORIGIN", "https://chat.example.org"),
        ],
    );
    let client = Client::upgrade(
        addr,
        &[
            ("X-Forwarded-For", "198.51.100.23"),
            ("Origin", "https://chat.example.org"),
        ],
    );
    let _alice = client.unwrap().join_as("alice").0;
    let joined = server.wait_for("joined as alice");
    // The proxy does not tell the client's port: it shows as 0.
    assert!(joined.contains("198.51.100.23:0 joined"), "{joined}");
    let foreign = Client::upgrade(addr, &[("Origin", "https://evil.example")]);
    assert_eq!(foreign.unwrap_err(), 403);
}
