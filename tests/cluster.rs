//! Cluster mode end to end: real `mioserver` processes started with
//! `--redis` on a `redis-server` of the test's own serve one chat. Names
//! are unique across them, every client sees the same sequence whichever
//! node it is on, DMs cross nodes and reach nobody else, a client resumes
//! on another node, a `kill -9`ed node's users leave within 30 s, and a
//! Redis restart in the middle of traffic loses nothing acknowledged and
//! doubles nothing.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::process::Logged;
use common::proxy::Proxy;
use common::redis::Redis;
use common::{http, Client};
use serde_json::{json, Value};

/// The protocol's bound on how late a dead server's users are reported
/// `left`.
const LEFT_WITHIN: Duration = Duration::from_secs(30);

/// A node of the cluster: the process and where it listens.
struct Node {
    process: Logged,
    addr: SocketAddr,
}

impl Node {
    /// Starts `mioserver --redis URL` (rate limiting off) and waits until it
    /// has the cluster's state.
    fn start(redis: &Redis) -> Node {
        Node::start_with(redis, &[])
    }

    /// The same with more flags.
    fn start_with(redis: &Redis, flags: &[&str]) -> Node {
        Node::start_on(&redis.url(), flags)
    }

    /// The same, on the Redis at `url`.
    fn start_on(url: &str, flags: &[&str]) -> Node {
        let mut args = vec!["--redis", url, "--rate-limit", "0"];
        args.extend(flags);
        let (mut process, addr) = Logged::mioserver(&args, &[]);
        process.wait_for("ready: epoch");
        Node { process, addr }
    }

    /// The value of `miochat_redis_up` in `GET /metrics`.
    fn redis_up_metric(&self) -> String {
        let response = http(self.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(response.status, 200);
        let line = response
            .body
            .lines()
            .find(|line| line.starts_with("miochat_redis_up "))
            .unwrap_or_else(|| panic!("no miochat_redis_up in {}", response.body));
        line["miochat_redis_up ".len()..].to_owned()
    }

    /// `GET /healthz`: the status code and the body.
    fn health(&self) -> (u16, Value) {
        let response = http(self.addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        (
            response.status,
            serde_json::from_str(&response.body).unwrap(),
        )
    }

    /// Asks `GET /healthz` until its status is `status`; fails after
    /// `limit`, saying `what`.
    fn wait_health(&self, status: u16, limit: Duration, what: &str) {
        let start = Instant::now();
        while self.health().0 != status {
            assert!(start.elapsed() < limit, "{what}");
            std::thread::yield_now();
        }
    }
}

/// Starts Redis and `n` nodes on it, or `None` when `redis-server` is
/// missing (said loudly; a failure under `CI=true`).
fn cluster(n: usize) -> Option<(Redis, Vec<Node>)> {
    let redis = Redis::start()?;
    let nodes = (0..n).map(|_| Node::start(&redis)).collect();
    Some((redis, nodes))
}

/// Reads messages until one satisfies `wanted`; returns the ones skipped
/// and that one.
fn until(client: &mut Client, wanted: impl Fn(&Value) -> bool) -> (Vec<Value>, Value) {
    let mut skipped = Vec::new();
    loop {
        let message = client.recv();
        if wanted(&message) {
            return (skipped, message);
        }
        skipped.push(message);
    }
}

/// The next message of `kind`; fails on anything else.
fn expect(client: &mut Client, kind: &str) -> Value {
    let message = client.recv();
    assert_eq!(message["type"], kind, "{message}");
    message
}

/// Joins `name` on `addr` and returns the client and its `welcome`.
fn join(addr: SocketAddr, name: &str) -> (Client, Value) {
    Client::join(addr, name)
}

/// Expects the close (1001) of a node that starts over, within `limit`,
/// with no public message before it.
fn expect_reset(client: &mut Client, limit: Duration) {
    loop {
        match client.recv_frame_within(limit) {
            tungstenite::Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1001);
                return;
            }
            tungstenite::Message::Text(text) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                assert_ne!(
                    message["type"], "message",
                    "nothing new is shown: {message}"
                );
            }
            _ => {}
        }
    }
}

/// Whether `message` is the `joined` of `name`.
fn joined(name: &str) -> impl Fn(&Value) -> bool + '_ {
    move |m| m["type"] == "joined" && m["name"] == name
}

#[test]
fn three_nodes_serve_one_chat() {
    let Some((redis, nodes)) = cluster(3) else {
        return;
    };
    let (mut ann, welcome) = join(nodes[0].addr, "Ann");
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    let (mut bob, _) = join(nodes[1].addr, "Bob");
    let (_, seen) = until(&mut ann, joined("Bob"));
    assert_eq!(seen["online"], 2, "online counts the whole chat: {seen}");
    let (mut cat, welcome) = join(nodes[2].addr, "Cat");
    assert_eq!(welcome["epoch"], epoch, "one epoch for the whole cluster");
    for client in [&mut ann, &mut bob] {
        let (_, seen) = until(client, joined("Cat"));
        assert_eq!(seen["online"], 3);
    }

    // Names are unique across nodes, whatever their case.
    let mut dan = Client::connect(nodes[1].addr);
    dan.send(json!({"type": "join", "name": "aNN"}));
    dan.expect_error("name_taken");

    // Everyone, on every node, sees the others.
    ann.say("sync");
    for client in [&mut ann, &mut bob, &mut cat] {
        until(client, |m| m["text"] == "sync");
    }
    cat.who();
    assert_eq!(cat.expect_users(), ["Ann", "Bob", "Cat"]);
    let (status, health) = nodes[2].health();
    assert_eq!(status, 200);
    assert_eq!(health, json!({"status": "ok", "online": 1, "redis": "up"}));
    assert_eq!(nodes[2].redis_up_metric(), "1");

    // Concurrent senders on every node: one sequence for everyone, in id
    // order, each sender's own messages included, nothing twice.
    const EACH: usize = 40;
    for i in 0..EACH {
        for (name, client) in [("Ann", &mut ann), ("Bob", &mut bob), ("Cat", &mut cat)] {
            client.send(
                json!({"type": "say", "text": format!("{name} {i}"), "cid": format!("{name}-{i}")}),
            );
        }
    }
    let mut sequences = Vec::new();
    for client in [&mut ann, &mut bob, &mut cat] {
        let mut seen = Vec::new();
        while seen.len() < 3 * EACH {
            let message = expect(client, "message");
            seen.push((message["id"].as_u64().unwrap(), message["text"].clone()));
        }
        assert!(
            seen.windows(2).all(|pair| pair[0].0 < pair[1].0),
            "ids rise"
        );
        sequences.push(seen);
    }
    assert_eq!(sequences[0], sequences[1]);
    assert_eq!(sequences[0], sequences[2]);
    let texts: HashSet<_> = sequences[0].iter().map(|(_, text)| text.clone()).collect();
    assert_eq!(texts.len(), 3 * EACH);

    // A DM across nodes reaches its recipient and its sender, nobody else.
    ann.send(json!({"type": "dm", "to": "bob", "text": "psst", "cid": "dm-1"}));
    let echo = expect(&mut ann, "dm");
    let got = expect(&mut bob, "dm");
    assert_eq!(echo, got);
    assert_eq!(
        (&got["from"], &got["to"], &got["text"], &got["cid"]),
        (&json!("Ann"), &json!("Bob"), &json!("psst"), &json!("dm-1"))
    );
    let dm_id = got["id"].as_u64().unwrap();
    assert!(dm_id > sequences[0].last().unwrap().0, "one id sequence");
    // Sent again with the same cid (as after a reconnect): the same DM, to
    // its sender alone.
    ann.send(json!({"type": "dm", "to": "Bob", "text": "psst", "cid": "dm-1"}));
    assert_eq!(expect(&mut ann, "dm"), echo);
    cat.say("after the dm");
    for client in [&mut ann, &mut bob, &mut cat] {
        let next = expect(client, "message");
        assert_eq!(next["text"], "after the dm", "nothing else came first");
    }
    ann.dm("Nobody", "hello?");
    ann.expect_error("unknown_user");

    // A say resent to another node with the same cid is acknowledged to
    // its sender alone with the stored message.
    bob.send(json!({"type": "say", "text": "once", "cid": "once-1"}));
    let stored = until(&mut bob, |m| m["text"] == "once").1;
    until(&mut ann, |m| m["text"] == "once");
    until(&mut cat, |m| m["text"] == "once");
    let (mut bob2, _) = join(nodes[2].addr, "Bob2");
    bob2.send(json!({"type": "say", "text": "once", "cid": "once-1"}));
    assert_eq!(expect(&mut bob2, "message"), stored);

    // Cat leaves node 3 and resumes on node 1: exactly what it missed.
    let last_seen = stored["id"].as_u64().unwrap();
    cat.close();
    let (_, left) = until(&mut ann, |m| m["type"] == "left" && m["name"] == "Cat");
    assert_eq!(left["online"], 3, "Ann, Bob and Bob2 remain: {left}");
    let missed: Vec<String> = (0..3).map(|i| format!("missed {i}")).collect();
    for text in &missed {
        ann.say(text);
    }
    until(&mut ann, |m| m["text"] == "missed 2");
    let mut cat = Client::connect(nodes[0].addr);
    cat.send(json!({"type": "join", "name": "Cat", "since": last_seen, "epoch": epoch}));
    let welcome = expect(&mut cat, "welcome");
    assert_eq!(welcome["recovered"], true, "{welcome}");
    let texts: Vec<&str> = welcome["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, missed);

    // A rename is announced everywhere, and frees the old name.
    bob.send(json!({"type": "nick", "name": "Robert"}));
    for client in [&mut ann, &mut bob, &mut cat] {
        let (_, renamed) = until(client, |m| m["type"] == "renamed");
        assert_eq!(
            (&renamed["from"], &renamed["to"]),
            (&json!("Bob"), &json!("Robert"))
        );
    }
    let (_, welcome) = join(nodes[2].addr, "bob");
    assert_eq!(welcome["name"], "bob");

    // A node that keeps only the last two messages in memory pages back
    // through Redis, and a welcome carries its last two.
    let pager = Node::start_with(&redis, &["--history", "2", "--max-resume", "2"]);
    let (mut reader, welcome) = join(pager.addr, "Reader");
    let texts = |messages: &Value| -> Vec<String> {
        let list = messages.as_array().unwrap();
        list.iter()
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(texts(&welcome["history"]), ["missed 1", "missed 2"]);
    let oldest_kept = welcome["history"][0]["id"].as_u64().unwrap();
    reader.send(json!({"type": "history", "before": oldest_kept, "limit": 2}));
    let (_, page) = until(&mut reader, |m| m["type"] == "history");
    assert_eq!(texts(&page["messages"]), ["once", "missed 0"]);
}

#[test]
fn nodes_started_with_reuse_port_share_one_port() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let node = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mioserver"));
        command.args([&addr, "--redis", &redis.url(), "--reuse-port"]);
        let mut node = Logged::spawn(&mut command);
        node.wait_for(&format!("listening on ws://{addr}/"));
        node
    };
    // Without SO_REUSEPORT the second bind would fail ("address in use").
    let _first = node();
    let _second = node();
}

#[test]
fn a_killed_nodes_users_leave_within_30_seconds_and_free_their_names() {
    let Some((_redis, mut nodes)) = cluster(2) else {
        return;
    };
    let (mut ann, _) = join(nodes[0].addr, "Ann");
    let (_bob, _) = join(nodes[1].addr, "Bob");
    until(&mut ann, joined("Bob"));
    let mut doomed = nodes.pop().unwrap();
    doomed.process.child.kill().unwrap();
    doomed.process.child.wait().unwrap();
    let killed = Instant::now();
    let left = ann.recv_within(LEFT_WITHIN);
    assert_eq!(
        (&left["type"], &left["name"], &left["online"]),
        (&json!("left"), &json!("Bob"), &json!(1)),
        "{left}"
    );
    assert!(killed.elapsed() < LEFT_WITHIN);
    // The name is free again, on the surviving node.
    let (_bob, welcome) = join(nodes[0].addr, "Bob");
    assert_eq!(welcome["users"].as_array().unwrap().len(), 2);
}

#[test]
fn a_redis_restart_loses_nothing_acknowledged_and_doubles_nothing() {
    let Some((mut redis, nodes)) = cluster(2) else {
        return;
    };
    let (mut watcher, welcome) = join(nodes[1].addr, "Watcher");
    let epoch = welcome["epoch"].clone();
    let (mut writer, _) = join(nodes[0].addr, "Writer");
    until(&mut watcher, joined("Writer"));

    // Every message is sent until acknowledged, with the same cid: the
    // client's side of exactly-once.
    const TOTAL: usize = 60;
    let mut acked: BTreeMap<usize, Value> = BTreeMap::new();
    let mut restarted = false;
    let mut saw_unavailable = false;
    let give_up = Instant::now() + Duration::from_secs(60);
    while acked.len() < TOTAL {
        assert!(Instant::now() < give_up, "traffic did not resume");
        let next = (0..TOTAL).find(|i| !acked.contains_key(i)).unwrap();
        if next == TOTAL / 2 && !restarted {
            redis.kill();
            nodes[0].wait_health(503, Duration::from_secs(10), "/healthz never said 503");
            assert_eq!(
                nodes[0].health().1,
                json!({"status": "degraded", "online": 1, "redis": "down"})
            );
            assert_eq!(nodes[0].redis_up_metric(), "0");
            redis.restart();
            restarted = true;
        }
        writer.send(json!({"type": "say", "text": format!("m{next}"), "cid": format!("c{next}")}));
        let answer = writer.recv();
        match answer["type"].as_str() {
            Some("message") => {
                assert_eq!(answer["cid"], format!("c{next}"), "{answer}");
                acked.insert(next, answer);
            }
            Some("error") => {
                assert_eq!(answer["code"], "unavailable", "{answer}");
                assert_eq!(answer["cid"], format!("c{next}"));
                saw_unavailable = true;
                // Wait for the node to be back rather than spin.
                nodes[0].wait_health(200, Duration::from_secs(20), "the node never came back");
            }
            _ => panic!("unexpected {answer}"),
        }
    }
    assert!(saw_unavailable, "the restart was noticed");

    // The watcher on the other node saw every acknowledged message once,
    // in id order, with the same fields.
    let mut seen = Vec::new();
    while seen.len() < TOTAL {
        let message = watcher.recv_within(Duration::from_secs(20));
        if message["type"] == "message" {
            seen.push(message);
        }
    }
    let ids: Vec<u64> = seen.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    let expected: Vec<&Value> = acked.values().collect();
    let mut by_id: Vec<&Value> = seen.iter().collect();
    by_id.sort_by_key(|m| m["id"].as_u64());
    let mut expected_by_id = expected.clone();
    expected_by_id.sort_by_key(|m| m["id"].as_u64());
    assert_eq!(by_id, expected_by_id);

    // And everything is in the history, the same epoch, for a newcomer.
    // The watcher's node may deliver from Redis a moment before its
    // requests are answered again (its two connections come back one
    // after the other), and a join meanwhile is rightly `unavailable`:
    // the newcomer comes once the node says it is back.
    nodes[1].wait_health(
        200,
        Duration::from_secs(20),
        "the watcher's node never came back",
    );
    let mut late = Client::connect(nodes[1].addr);
    late.send(json!({"type": "join", "name": "Late", "since": 0, "epoch": epoch}));
    let welcome = expect(&mut late, "welcome");
    assert_eq!(welcome["recovered"], true);
    let history: Vec<&Value> = welcome["history"].as_array().unwrap().iter().collect();
    assert_eq!(history, expected_by_id);
}

#[test]
fn a_node_cut_off_from_redis_is_declared_dead_and_its_users_rejoin_without_loss() {
    let Some(redis) = Redis::start() else {
        return;
    };
    // Node 0 reaches Redis through a proxy that can cut it off; node 1
    // directly.
    let proxy = Proxy::start(redis.addr);
    let behind = Node::start_on(&format!("redis://{}/", proxy.addr), &[]);
    let direct = Node::start(&redis);
    let (mut watcher, _) = join(direct.addr, "Watcher");
    let (mut writer, _) = join(behind.addr, "Writer");
    until(&mut watcher, joined("Writer"));
    writer.send(json!({"type": "say", "text": "before", "cid": "p1"}));
    until(&mut writer, |m| m["text"] == "before");
    until(&mut watcher, |m| m["text"] == "before");

    // The partition: bytes are lost both ways, nothing is closed. The
    // message sent meanwhile is never acknowledged; the other node
    // declares the silent one dead and reports its user `left`.
    proxy.partition(true);
    writer.send(json!({"type": "say", "text": "during", "cid": "p2"}));
    let (skipped, left) = {
        let mut skipped = Vec::new();
        loop {
            let message = watcher.recv_within(LEFT_WITHIN);
            if message["type"] == "left" {
                break (skipped, message);
            }
            skipped.push(message);
        }
    };
    assert_eq!(left["name"], "Writer");
    assert!(skipped.is_empty(), "nothing got through: {skipped:?}");

    // Healed: the node finds it was declared dead, and closes its
    // connections so that their users join again.
    proxy.partition(false);
    expect_reset(&mut writer, LEFT_WITHIN);
    // The node serves again, from the cluster's state.
    let (mut again, welcome) = join(behind.addr, "Again");
    assert_eq!(welcome["history"].as_array().unwrap().len(), 1, "{welcome}");
    // The writer comes back (on the other node) and resends what was not
    // acknowledged, with its cid: it is posted once, and everyone sees it.
    let (mut writer, _) = join(direct.addr, "Writer");
    writer.send(json!({"type": "say", "text": "during", "cid": "p2"}));
    let posted = until(&mut writer, |m| m["type"] == "message").1;
    assert_eq!(posted["text"], "during");
    // The healed node's reader may still be waiting on a connection it
    // opened during the partition, whose bytes were lost: it gives up on it
    // after the link's 10 s reply timeout and reconnects, so give it that.
    for client in [&mut watcher, &mut again] {
        let seen = loop {
            let message = client.recv_within(LEFT_WITHIN);
            if message["type"] == "message" {
                break message;
            }
        };
        assert_eq!(seen, posted);
    }
}

#[test]
fn a_redis_that_lost_its_data_starts_a_new_epoch_and_every_user_rejoins() {
    let Some((redis, nodes)) = cluster(2) else {
        return;
    };
    let (mut ann, welcome) = join(nodes[0].addr, "Ann");
    let old_epoch = welcome["epoch"].clone();
    let (mut bob, _) = join(nodes[1].addr, "Bob");
    until(&mut ann, joined("Bob"));
    ann.say("before the loss");
    let said = until(&mut bob, |m| m["type"] == "message").1;
    until(&mut ann, |m| m["type"] == "message");

    // Everything is gone at once, as when Redis restarts without its
    // append-only file.
    let mut raw = std::net::TcpStream::connect(redis.addr).unwrap();
    std::io::Write::write_all(&mut raw, b"FLUSHALL\r\n").unwrap();
    let mut reply = [0; 5];
    std::io::Read::read_exact(&mut raw, &mut reply).unwrap();
    assert_eq!(&reply, b"+OK\r\n");

    // Each node notices at its next liveness refresh (every 3 s) and
    // closes its connections: their users must join the new chat.
    for client in [&mut ann, &mut bob] {
        expect_reset(client, Duration::from_secs(15));
    }
    let mut ann = Client::connect(nodes[1].addr);
    let since = said["id"].clone();
    ann.send(json!({"type": "join", "name": "Ann", "since": since, "epoch": old_epoch}));
    let welcome = expect(&mut ann, "welcome");
    assert_ne!(welcome["epoch"], old_epoch, "a new epoch");
    assert_eq!(welcome["recovered"], false);
    assert_eq!(welcome["history"], json!([]));
    ann.say("after");
    let first = until(&mut ann, |m| m["type"] == "message").1;
    assert_eq!(first["id"], 1, "ids start again in the new epoch: {first}");
}
