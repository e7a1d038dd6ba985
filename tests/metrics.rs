//! `GET /metrics`: the Prometheus text format, read back by a Prometheus
//! text parser (`prometheus-parse`), with counters that move as a chat
//! goes on.

mod common;

use std::net::SocketAddr;

use common::{config, http, start, stop, Client};
use prometheus_parse::{Scrape, Value};
use serde_json::json;
use tungstenite::Message;

/// Fetches and parses `/metrics`.
fn scrape(addr: SocketAddr) -> Scrape {
    let response = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let lines = response.body.lines().map(|line| Ok(line.to_owned()));
    let scrape = Scrape::parse(lines).expect("the Prometheus text format");
    // Every sample is described: the parser is lenient, the format is not.
    // (A histogram's `_sum` and `_count` are described by its own.)
    for sample in &scrape.samples {
        let name = &sample.metric;
        let base = ["_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(
            scrape.docs.contains_key(name) || scrape.docs.contains_key(base),
            "{name} has no HELP line"
        );
    }
    scrape
}

/// The value of the sample `name` whose labels include `labels`; 0 when
/// there is none (a labelled counter appears at its first count).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            Value::Summary(_) => panic!("{name} is not a summary"),
        })
        .collect();
    assert!(matching.len() <= 1, "{name} {labels:?} matches several");
    matching.first().copied().unwrap_or(0.0)
}

#[test]
fn counters_move_as_people_chat() {
    let server = start(config());
    let addr = server.addr();
    let before = scrape(addr);
    assert_eq!(value(&before, "miochat_users_joined_total", &[]), 0.0);
    assert_eq!(value(&before, "miochat_users_online", &[]), 0.0);
    // The scrape itself is a connection, open while it is answered.
    assert_eq!(value(&before, "miochat_connections_open", &[]), 1.0);

    let (mut alice, _) = Client::join(addr, "Alice");
    let (mut bob, _) = Client::join(addr, "Bob");
    alice.recv(); // Bob joined
    for text in ["one", "two", "three"] {
        alice.say(text);
        alice.recv();
        bob.recv();
    }
    bob.dm("Alice", "psst");
    bob.recv();
    alice.recv();
    bob.send_text("not json {");
    bob.expect_error("invalid_json");
    // A binary frame is closed with 1003.
    let (mut carol, _) = Client::join(addr, "Carol");
    carol.send_frame(Message::binary(vec![1, 2, 3]));
    assert_eq!(carol.recv_close().0, 1003);

    let after = scrape(addr);
    let v = |name: &str, labels: &[(&str, &str)]| value(&after, name, labels);
    assert_eq!(v("miochat_users_joined_total", &[]), 3.0);
    assert_eq!(
        v("miochat_messages_received_total", &[("kind", "join")]),
        3.0
    );
    assert_eq!(
        v("miochat_messages_received_total", &[("kind", "say")]),
        3.0
    );
    assert_eq!(v("miochat_messages_received_total", &[("kind", "dm")]), 1.0);
    // Each public message reached both users; the DM its two ends.
    assert_eq!(
        v("miochat_messages_delivered_total", &[("kind", "message")]),
        6.0
    );
    assert_eq!(
        v("miochat_messages_delivered_total", &[("kind", "dm")]),
        2.0
    );
    assert_eq!(
        v("miochat_refusals_total", &[("code", "invalid_json")]),
        1.0
    );
    assert_eq!(v("miochat_closes_total", &[("code", "1003")]), 1.0);
    // Three clients and two scrapes so far.
    assert_eq!(v("miochat_connections_accepted_total", &[]), 5.0);
    assert!(v("miochat_bytes_in_total", &[]) > value(&before, "miochat_bytes_in_total", &[]));
    assert!(v("miochat_bytes_out_total", &[]) > 0.0);
    assert!(v("miochat_loop_turn_seconds", &[]) > 0.0);
    assert!(v("miochat_loop_events_per_turn", &[]) > 0.0);
    assert_eq!(v("miochat_tls_handshakes_total", &[]), 0.0);
    // Each public message was stored before it was shown, alone in its
    // group commit (each was echoed before the next was said); a DM is not
    // stored, and its id was within the reservation made at start-up.
    assert_eq!(v("miochat_store_commits_total", &[]), 3.0);
    assert_eq!(v("miochat_store_messages_total", &[]), 3.0);
    assert_eq!(v("miochat_store_commit_seconds", &[]), 3.0);
    assert_eq!(v("miochat_store_queue_depth", &[]), 0.0);

    // Nothing is labelled by user.
    let text = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").body;
    for name in ["Alice", "Bob", "Carol"] {
        assert!(!text.contains(name), "{name} in the metrics");
    }
    stop(server, [alice, bob]);
}

#[test]
fn the_store_thread_counts_its_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config();
    config.db = dir.path().join("metrics.db");
    let server = start(config);
    let addr = server.addr();
    let (mut alice, _) = Client::join(addr, "Alice");
    for text in ["one", "two", "three", "four"] {
        alice.say(text);
        alice.recv();
    }
    let after = scrape(addr);
    let v = |name: &str| value(&after, name, &[]);
    // The SQLite store runs on its own thread: four messages said one
    // after another are four group commits, each timed, and nothing waits.
    assert_eq!(v("miochat_store_commits_total"), 4.0);
    assert_eq!(v("miochat_store_messages_total"), 4.0);
    assert_eq!(v("miochat_store_commit_seconds"), 4.0);
    assert!(v("miochat_store_commit_seconds_sum") > 0.0);
    assert_eq!(v("miochat_store_queue_depth"), 0.0);
    stop(server, [alice]);
}

#[test]
fn a_json_client_is_unaffected_by_the_metrics_path() {
    // /metrics is an HTTP path, not a WebSocket one: an upgrade there is an
    // ordinary chat connection.
    let server = start(config());
    let mut client = Client::connect_path(server.addr(), "/metrics");
    client.send(json!({"type": "join", "name": "Dora"}));
    assert_eq!(client.recv()["type"], "welcome");
    stop(server, [client]);
}
