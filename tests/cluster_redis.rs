//! The cluster's Redis foundation against a real `redis-server` of the
//! test's own (see `common/redis.rs`): the readiness-driven connection
//! with its pipelining and reconnects, every Lua script, and the stream
//! reader resuming across a Redis crash. Each test drives its connections
//! with a small `mio::Poll` loop of its own, as the server's loop will.

mod common;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use common::redis::Redis;
use mio::{Events, Interest, Poll, Token};
use miochat::chat::cluster::conn::RedisConn;
use miochat::chat::cluster::link::{Event, Frame, LinkConfig};
use miochat::chat::cluster::scripts::{
    parse_alive, parse_claim, parse_dm, parse_page, parse_publish, parse_reap, parse_release,
    parse_rename, parse_snapshot, Claim, Commands, Cursor, Delivery, DmOutcome, InboxDm, NewDm,
    NewMessage, Presence, PresenceKind, Published, Rename, Snapshot, StoredDm, StoredMessage,
};
use miochat::chat::cluster::{random_token, RedisUrl};

/// The longest any test waits for one reply or event.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The chat every test uses: keys `{test}:...`.
const CHAT: &str = "test";

/// Stream bounds large enough that nothing is trimmed unless a test wants
/// it to be.
const BOUND: usize = 10_000;

/// The protocol's promise: a cid is remembered for at least 24 hours.
const CID_TTL: Duration = Duration::from_secs(24 * 3600);

/// Several Redis connections on one `mio::Poll`, token = index.
struct Loop {
    poll: Poll,
    conns: Vec<RedisConn<u64>>,
    /// Events taken from a connection but not yet asked for.
    events: Vec<VecDeque<Event<u64>>>,
    /// The next request tag.
    next_tag: u64,
}

impl Loop {
    fn new() -> Loop {
        Loop {
            poll: Poll::new().unwrap(),
            conns: Vec::new(),
            events: Vec::new(),
            next_tag: 0,
        }
    }

    /// Adds a connection to `redis` that loads the cluster's scripts and
    /// names itself on every connect; returns its index.
    fn connect(&mut self, redis: &Redis, node: &str) -> usize {
        let url = RedisUrl::parse(&redis.url()).unwrap();
        let mut setup = url.setup(node);
        setup.extend(Commands::new(CHAT).load_scripts());
        let config = LinkConfig {
            // Keep reconnects quick so that a restart test is short.
            backoff_cap: Duration::from_millis(500),
            ..LinkConfig::default()
        };
        let index = self.conns.len();
        let seed = u64::from_str_radix(&random_token(), 16).unwrap();
        self.conns.push(RedisConn::new(
            url.addr,
            Token(index),
            config,
            &setup,
            seed,
            Instant::now(),
        ));
        self.events.push(VecDeque::new());
        index
    }

    /// Runs the loop until connection `which` has an event, and returns it.
    fn next_event(&mut self, which: usize) -> Event<u64> {
        let give_up = Instant::now() + TIMEOUT;
        let mut events = Events::with_capacity(16);
        loop {
            for (i, conn) in self.conns.iter_mut().enumerate() {
                while let Some(event) = conn.take_event() {
                    self.events[i].push_back(event);
                }
            }
            if let Some(event) = self.events[which].pop_front() {
                return event;
            }
            let now = Instant::now();
            assert!(
                now < give_up,
                "no event on connection {which} within {TIMEOUT:?}"
            );
            let wake = self
                .conns
                .iter()
                .filter_map(|c| c.next_deadline())
                .chain([give_up])
                .min()
                .unwrap();
            self.poll
                .poll(&mut events, Some(wake.saturating_duration_since(now)))
                .unwrap();
            let now = Instant::now();
            for event in events.iter() {
                let conn = &mut self.conns[event.token().0];
                let registry = self.poll.registry();
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    conn.on_readable(registry, now);
                }
                if event.is_writable() || event.is_error() {
                    conn.on_writable(registry, now);
                }
            }
            for conn in &mut self.conns {
                if conn.next_deadline().is_some_and(|at| at <= now) {
                    conn.on_timeout(self.poll.registry(), now);
                }
            }
        }
    }

    /// Waits for connection `which` to come up.
    fn up(&mut self, which: usize) {
        loop {
            match self.next_event(which) {
                Event::Up => return,
                Event::Down { .. } => {}
                other => panic!("expected Up, got {other:?}"),
            }
        }
    }

    /// Queues a request on `which` without writing it yet; returns its tag.
    fn push(&mut self, which: usize, args: &[Vec<u8>]) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.conns[which]
            .push(tag, args, Instant::now())
            .expect("the connection is up");
        tag
    }

    /// Writes what waits on `which`.
    fn flush(&mut self, which: usize) {
        self.conns[which].flush(self.poll.registry(), Instant::now());
    }

    /// The reply to `tag`, which must be the next event on `which`.
    fn reply(&mut self, which: usize, tag: u64) -> Frame {
        match self.next_event(which) {
            Event::Reply { tag: got, frame } if got == tag => frame,
            other => panic!("expected the reply to {tag}, got {other:?}"),
        }
    }

    /// One request, written at once, and its reply.
    fn call(&mut self, which: usize, args: &[Vec<u8>]) -> Frame {
        let tag = self.push(which, args);
        self.flush(which);
        self.reply(which, tag)
    }
}

/// The node whose inbox a test's reads cover when the inbox does not
/// matter to it.
const READER: &str = "r";

/// A cursor before everything: a reader starting from it gets every entry.
fn origin() -> Cursor {
    Cursor {
        message: 0,
        presence: "0-0".into(),
        inbox: "0-0".into(),
    }
}

/// A loop with one connection to `redis`, up: all a test needs when it
/// does not run two things at once.
fn single(redis: &Redis) -> (Loop, usize) {
    let mut lp = Loop::new();
    let c = lp.connect(redis, "n1");
    lp.up(c);
    (lp, c)
}

fn cmd(args: &[&str]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.as_bytes().to_vec()).collect()
}

fn bulk(text: &str) -> Frame {
    Frame::BulkString(text.as_bytes().to_vec())
}

fn message(text: &str, cid: Option<&str>) -> NewMessage {
    NewMessage {
        ts: "2026-11-25T08:00:00.000Z".into(),
        from: "Ann".into(),
        text: text.into(),
        cid: cid.map(str::to_owned),
    }
}

fn stored(id: u64, text: &str, cid: Option<&str>) -> StoredMessage {
    let m = message(text, cid);
    StoredMessage {
        id,
        ts: m.ts,
        from: m.from,
        text: m.text,
        cid: m.cid,
    }
}

#[test]
fn a_pipeline_of_requests_is_answered_in_order_on_one_connection() {
    let Some(redis) = Redis::start() else { return };
    let (mut lp, c) = single(&redis);
    assert_eq!(lp.call(c, &cmd(&["CLIENT", "GETNAME"])), bulk("miochat-n1"));

    // A hundred commands, one flush: all are written at once (WRITABLE
    // interest is dropped right away) and answered in order.
    let tags: Vec<u64> = (0..100)
        .map(|_| lp.push(c, &cmd(&["INCR", "counter"])))
        .collect();
    assert_eq!(
        lp.conns[c].interest(),
        Some(Interest::READABLE | Interest::WRITABLE)
    );
    lp.flush(c);
    assert_eq!(lp.conns[c].interest(), Some(Interest::READABLE));
    for (n, tag) in tags.into_iter().enumerate() {
        assert_eq!(lp.reply(c, tag), Frame::Integer(n as i64 + 1));
    }

    // The setup loaded every script, under the SHA-1 the calls use.
    let commands = Commands::new(CHAT);
    let mut exists = cmd(&["SCRIPT", "EXISTS"]);
    exists.extend(
        commands
            .script_shas()
            .iter()
            .map(|sha| sha.as_bytes().to_vec()),
    );
    assert_eq!(
        lp.call(c, &exists),
        Frame::Array(vec![Frame::Integer(1); commands.script_shas().len()])
    );
    for (load, sha) in commands.load_scripts().iter().zip(commands.script_shas()) {
        assert_eq!(lp.call(c, load), bulk(sha));
    }
}

#[test]
fn the_connection_survives_a_redis_crash_and_refuses_requests_meanwhile() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let (mut lp, c) = single(&redis);
    assert_eq!(
        lp.call(c, &cmd(&["SET", "k", "v"])),
        Frame::SimpleString(b"OK".to_vec())
    );

    // A blocking request is in flight when Redis dies: it comes back as
    // lost, written whole (Redis may or may not have run it).
    let tag = lp.push(c, &cmd(&["BLPOP", "nothing", "5"]));
    lp.flush(c);
    redis.kill();
    assert!(matches!(lp.next_event(c), Event::Down { .. }));
    assert_eq!(lp.next_event(c), Event::Lost { tag, sent: true });
    assert!(!lp.conns[c].is_up());
    assert_eq!(
        lp.conns[c].push(99, &cmd(&["PING"]), Instant::now()),
        Err(99)
    );

    // Back on the same port with its append-only file: the link reconnects
    // by itself (after failed attempts while Redis is down) and the data
    // acknowledged before the crash is there.
    redis.restart();
    lp.up(c);
    assert_eq!(lp.call(c, &cmd(&["GET", "k"])), bulk("v"));
}

#[test]
fn a_round_is_published_with_consecutive_ids_and_cids_deduplicated() {
    let Some(redis) = Redis::start() else { return };
    let commands = Commands::new(CHAT);
    let (mut lp, c) = single(&redis);

    let round = [
        message("one", None),
        message("two", Some("c2")),
        message("three", Some("c3")),
    ];
    let reply = lp.call(c, &commands.publish(&round, BOUND, CID_TTL));
    assert_eq!(
        parse_publish(reply).unwrap(),
        vec![Published::New(1), Published::New(2), Published::New(3)]
    );

    // A resent cid (from the last round), a new message, and the same new
    // cid twice in one round: only one new id, and each duplicate answers
    // with the message as first stored.
    let round = [
        message("two again", Some("c2")),
        message("four", Some("c4")),
        message("four again", Some("c4")),
    ];
    let reply = lp.call(c, &commands.publish(&round, BOUND, CID_TTL));
    assert_eq!(
        parse_publish(reply).unwrap(),
        vec![
            Published::Duplicate {
                id: 2,
                stored: Some(stored(2, "two", Some("c2")))
            },
            Published::New(4),
            Published::Duplicate {
                id: 4,
                stored: Some(stored(4, "four", Some("c4")))
            },
        ]
    );
    let ttl = lp.call(c, &cmd(&["TTL", "{test}:cid:c4"]));
    assert!(
        matches!(ttl, Frame::Integer(t) if t > 86_000 && t <= 86_400),
        "{ttl:?}"
    );

    // Read back from the start: the stream holds exactly ids 1..=4 in order.
    let cursor = origin();
    let reply = lp.call(
        c,
        &commands.read(READER, &cursor, Duration::from_millis(10), 100),
    );
    assert_eq!(
        commands.parse_read(READER, reply).unwrap(),
        vec![
            Delivery::Message(stored(1, "one", None)),
            Delivery::Message(stored(2, "two", Some("c2"))),
            Delivery::Message(stored(3, "three", Some("c3"))),
            Delivery::Message(stored(4, "four", Some("c4"))),
        ]
    );

    // The history is bounded: after 1000 more with a bound of 100, about
    // 100 remain (MAXLEN ~ trims whole nodes), and a cid whose message was
    // trimmed still answers with its id.
    let many: Vec<NewMessage> = (0..1000).map(|i| message(&format!("m{i}"), None)).collect();
    let reply = lp.call(c, &commands.publish(&many, 100, CID_TTL));
    assert_eq!(
        parse_publish(reply).unwrap().last(),
        Some(&Published::New(1004))
    );
    let Frame::Integer(len) = lp.call(c, &cmd(&["XLEN", "{test}:history"])) else {
        panic!()
    };
    assert!((100..300).contains(&len), "{len} entries left");
    let reply = lp.call(
        c,
        &commands.publish(&[message("two", Some("c2"))], 100, CID_TTL),
    );
    assert_eq!(
        parse_publish(reply).unwrap(),
        vec![Published::Duplicate {
            id: 2,
            stored: None
        }]
    );

    // A Redis error comes back as an error, not as a result.
    lp.call(c, &cmd(&["DEL", "{test}:history"]));
    lp.call(c, &cmd(&["SET", "{test}:history", "not a stream"]));
    let err = parse_publish(lp.call(c, &commands.publish(&[message("x", None)], BOUND, CID_TTL)))
        .unwrap_err();
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
}

/// Every presence event on the stream after `cursor`, which moves past them.
fn presence(
    lp: &mut Loop,
    c: usize,
    commands: &Commands,
    cursor: &mut Cursor,
) -> Vec<(PresenceKind, String, String, u64)> {
    let reply = lp.call(
        c,
        &commands.read(READER, cursor, Duration::from_millis(10), 100),
    );
    let deliveries = commands.parse_read(READER, reply).unwrap();
    cursor.advance(&deliveries);
    deliveries
        .into_iter()
        .map(|d| match d {
            Delivery::Presence(Presence {
                kind,
                name,
                node,
                online,
                ..
            }) => (kind, name, node, online),
            other => panic!("expected presence, got {other:?}"),
        })
        .collect()
}

#[test]
fn names_are_unique_across_nodes_case_insensitively() {
    let Some(redis) = Redis::start() else { return };
    let commands = Commands::new(CHAT);
    let (mut lp, c) = single(&redis);
    let ttl = Duration::from_secs(10);
    register_for(&mut lp, c, &commands, "a", ttl);
    register_for(&mut lp, c, &commands, "b", ttl);
    let pttl = lp.call(c, &cmd(&["PTTL", "{test}:node:a:alive"]));
    assert!(
        matches!(pttl, Frame::Integer(t) if t > 9_000 && t <= 10_000),
        "{pttl:?}"
    );

    let claim = |lp: &mut Loop, node, name| {
        parse_claim(lp.call(c, &commands.claim(node, name, BOUND))).unwrap()
    };
    let release = |lp: &mut Loop, node, name| {
        parse_release(lp.call(c, &commands.release(node, name, BOUND))).unwrap()
    };
    assert_eq!(claim(&mut lp, "a", "Dave"), Claim::Claimed { online: 1 });
    assert_eq!(claim(&mut lp, "b", "dAVE"), Claim::Taken);
    assert_eq!(claim(&mut lp, "b", "Ann"), Claim::Claimed { online: 2 });
    assert_eq!(claim(&mut lp, "ghost", "Zoe"), Claim::NotRegistered);
    assert_eq!(who(&mut lp, c), vec!["Ann", "Dave"]);
    assert_eq!(release(&mut lp, "b", "Dave"), None, "b does not hold Dave");
    assert_eq!(release(&mut lp, "a", "DAVE"), Some(1));
    assert_eq!(release(&mut lp, "a", "Dave"), None, "released once");
    assert_eq!(claim(&mut lp, "b", "DAVE"), Claim::Claimed { online: 2 });
    assert_eq!(who(&mut lp, c), vec!["Ann", "DAVE"]);

    use PresenceKind::{Joined, Left};
    let mut cursor = origin();
    assert_eq!(
        presence(&mut lp, c, &commands, &mut cursor),
        vec![
            (Joined, "Dave".into(), "a".into(), 1),
            (Joined, "Ann".into(), "b".into(), 2),
            (Left, "Dave".into(), "a".into(), 1),
            (Joined, "DAVE".into(), "b".into(), 2),
        ]
    );
    assert_eq!(
        presence(&mut lp, c, &commands, &mut cursor),
        vec![],
        "the cursor moved past them"
    );
}

#[test]
fn a_dead_nodes_users_leave_once_even_when_two_nodes_reap_at_once() {
    let Some(redis) = Redis::start() else { return };
    let commands = Commands::new(CHAT);
    let mut lp = Loop::new();
    let (x, y) = (lp.connect(&redis, "x"), lp.connect(&redis, "y"));
    lp.up(x);
    lp.up(y);
    let ttl = Duration::from_secs(10);
    for node in ["dead", "live"] {
        register_for(&mut lp, x, &commands, node, ttl);
    }
    for (node, name) in [("dead", "Ann"), ("dead", "Bob"), ("live", "Cy")] {
        assert!(matches!(
            parse_claim(lp.call(x, &commands.claim(node, name, BOUND))).unwrap(),
            Claim::Claimed { .. }
        ));
    }
    assert!(parse_alive(lp.call(x, &commands.refresh("live", ttl))).unwrap());
    let mut cursor = origin();
    assert_eq!(presence(&mut lp, x, &commands, &mut cursor).len(), 3);

    // Nothing has expired: reaping finds nobody.
    assert_eq!(
        parse_reap(lp.call(x, &commands.reap(BOUND))).unwrap(),
        vec![]
    );

    // "dead" stops refreshing; its key's expiry is brought forward to the
    // past (what the TTL does after 10 s), then both nodes reap at once:
    // the two scripts run one after the other, and only the first finds
    // anything to do.
    lp.call(x, &cmd(&["PEXPIREAT", "{test}:node:dead:alive", "1"]));
    let (tx, ty) = (
        lp.push(x, &commands.reap(BOUND)),
        lp.push(y, &commands.reap(BOUND)),
    );
    lp.flush(x);
    lp.flush(y);
    let mut reaped = vec![
        parse_reap(lp.reply(x, tx)).unwrap(),
        parse_reap(lp.reply(y, ty)).unwrap(),
    ];
    reaped.sort();
    let users = reaped.pop().unwrap();
    assert_eq!(reaped, vec![vec![]], "the second reaper found nothing");
    let mut names: Vec<&str> = users.iter().map(|(_, name)| name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["Ann", "Bob"]);
    assert!(users.iter().all(|(node, _)| node == "dead"));

    // One `left` each, in the order reaped, the online count going down
    // from the three there were; the names are free; the dead node cannot
    // carry on.
    use PresenceKind::Left;
    let expected: Vec<_> = users
        .iter()
        .zip([2, 1])
        .map(|((node, name), online)| (Left, name.clone(), node.clone(), online))
        .collect();
    assert_eq!(presence(&mut lp, x, &commands, &mut cursor), expected);
    assert_eq!(who(&mut lp, x), vec!["Cy"]);
    assert!(!parse_alive(lp.call(x, &commands.refresh("dead", ttl))).unwrap());
    assert_eq!(
        parse_claim(lp.call(x, &commands.claim("dead", "Dan", BOUND))).unwrap(),
        Claim::NotRegistered
    );
    assert_eq!(
        parse_claim(lp.call(x, &commands.claim("live", "ann", BOUND))).unwrap(),
        Claim::Claimed { online: 2 }
    );
    assert_eq!(
        parse_release(lp.call(x, &commands.release("dead", "Bob", BOUND))).unwrap(),
        None,
        "left once"
    );
}

#[test]
fn the_epoch_is_created_once_kept_by_the_append_only_file_and_new_after_data_loss() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let commands = Commands::new(CHAT);
    let mut lp = Loop::new();
    let (x, y) = (lp.connect(&redis, "x"), lp.connect(&redis, "y"));
    lp.up(x);
    lp.up(y);
    let (first, second) = (random_token(), random_token());
    assert_eq!(epoch(&mut lp, x, &commands, &first), first);
    assert_eq!(epoch(&mut lp, y, &commands, &second), first, "created once");

    redis.restart();
    lp.up(x);
    assert_eq!(
        epoch(&mut lp, x, &commands, &second),
        first,
        "survives a crash"
    );

    // A Redis that lost its data: the next node to ask makes a new epoch.
    lp.call(x, &cmd(&["FLUSHALL"]));
    assert_eq!(epoch(&mut lp, x, &commands, &second), second);
}

#[test]
fn a_reader_resumes_after_a_redis_crash_without_a_gap_or_a_duplicate() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let commands = Commands::new(CHAT);
    let mut lp = Loop::new();
    let (writer, reader) = (lp.connect(&redis, "w"), lp.connect(&redis, "r"));
    lp.up(writer);
    lp.up(reader);
    let block = Duration::from_secs(5);
    let mut cursor = origin();
    let mut seen: Vec<u64> = Vec::new();

    // The reader blocks first; the writer publishes five rounds of two; the
    // reader takes at most three per read, so it reads several times.
    let mut read = lp.push(reader, &commands.read(READER, &cursor, block, 3));
    lp.flush(reader);
    let publish = |lp: &mut Loop, from: usize, to: usize| {
        for round in (from..to).step_by(2) {
            let msgs = [
                message(&format!("m{round}"), Some(&format!("c{round}"))),
                message(&format!("m{}", round + 1), None),
            ];
            let ids =
                parse_publish(lp.call(writer, &commands.publish(&msgs, BOUND, CID_TTL))).unwrap();
            assert_eq!(
                ids,
                vec![
                    Published::New(round as u64 + 1),
                    Published::New(round as u64 + 2)
                ]
            );
        }
    };
    publish(&mut lp, 0, 10);
    let take = |lp: &mut Loop, cursor: &mut Cursor, read: u64, seen: &mut Vec<u64>| {
        let deliveries = commands.parse_read(READER, lp.reply(reader, read)).unwrap();
        cursor.advance(&deliveries);
        seen.extend(deliveries.iter().map(|d| match d {
            Delivery::Message(m) => m.id,
            other => panic!("{other:?}"),
        }));
    };
    while seen.len() < 10 {
        take(&mut lp, &mut cursor, read, &mut seen);
        read = lp.push(reader, &commands.read(READER, &cursor, block, 3));
        lp.flush(reader);
    }

    // Redis crashes with a read in flight. It is blocked for certain, since
    // the reader has everything published so far: had messages been left
    // unread, the read could have been answered before the crash.
    redis.kill();
    assert!(matches!(lp.next_event(reader), Event::Down { .. }));
    assert_eq!(
        lp.next_event(reader),
        Event::Lost {
            tag: read,
            sent: true
        }
    );
    assert!(matches!(lp.next_event(writer), Event::Down { .. }));
    redis.restart();
    lp.up(writer);
    lp.up(reader);

    // More traffic after the restart; the reader carries on from its
    // cursor: every id exactly once, in order.
    publish(&mut lp, 10, 14);
    while seen.len() < 14 {
        read = lp.push(reader, &commands.read(READER, &cursor, block, 3));
        lp.flush(reader);
        take(&mut lp, &mut cursor, read, &mut seen);
    }
    assert_eq!(seen, (1..=14).collect::<Vec<u64>>());
    assert_eq!(cursor.message, 14);

    // Nothing more: a read times out empty.
    let last = lp.call(
        reader,
        &commands.read(READER, &cursor, Duration::from_millis(50), 3),
    );
    assert_eq!(commands.parse_read(READER, last).unwrap(), vec![]);
}

/// Registers each node as live for longer than any test runs.
fn register(lp: &mut Loop, c: usize, commands: &Commands, nodes: &[&str]) {
    for node in nodes {
        register_for(lp, c, commands, node, Duration::from_secs(60));
    }
}

/// Registers `node` as live for `ttl`, as a node does: by its snapshot.
fn register_for(lp: &mut Loop, c: usize, commands: &Commands, node: &str, ttl: Duration) {
    let reply = lp.call(c, &commands.snapshot(node, ttl, "an-epoch", 0));
    parse_snapshot(reply).unwrap();
}

/// The chat's epoch as a node starting now reads it, `candidate` if there
/// was none.
fn epoch(lp: &mut Loop, c: usize, commands: &Commands, candidate: &str) -> String {
    let reply = lp.call(
        c,
        &commands.snapshot("reader", Duration::from_secs(60), candidate, 0),
    );
    parse_snapshot(reply).unwrap().epoch
}

/// Everyone online (the online hash), names as typed, in name-key order.
fn who(lp: &mut Loop, c: usize) -> Vec<String> {
    let Frame::Array(names) = lp.call(c, &cmd(&["HVALS", "{test}:online"])) else {
        panic!("HVALS answers an array");
    };
    let mut names: Vec<String> = names
        .into_iter()
        .map(|name| match name {
            Frame::BulkString(bytes) => String::from_utf8(bytes).unwrap(),
            other => panic!("a name, not {other:?}"),
        })
        .collect();
    names.sort_by_key(|name| name.to_lowercase());
    names
}

/// Claims each (node, name), which must be free.
fn claim_all(lp: &mut Loop, c: usize, commands: &Commands, users: &[(&str, &str)]) {
    for (node, name) in users {
        let reply = lp.call(c, &commands.claim(node, name, BOUND));
        assert!(
            matches!(parse_claim(reply).unwrap(), Claim::Claimed { .. }),
            "{name}"
        );
    }
}

/// Publishes one message and returns the id it got.
fn publish_one(lp: &mut Loop, c: usize, commands: &Commands, text: &str) -> u64 {
    let reply = lp.call(c, &commands.publish(&[message(text, None)], BOUND, CID_TTL));
    match parse_publish(reply).unwrap()[..] {
        [Published::New(id)] => id,
        ref other => panic!("{other:?}"),
    }
}

#[test]
fn renames_keep_names_unique_and_are_announced() {
    let Some(redis) = Redis::start() else { return };
    let commands = Commands::new(CHAT);
    let (mut lp, c) = single(&redis);
    register(&mut lp, c, &commands, &["a", "b"]);
    claim_all(&mut lp, c, &commands, &[("a", "Ann"), ("b", "Bob")]);
    let rename = |lp: &mut Loop, node, old, new| {
        parse_rename(lp.call(c, &commands.rename(node, old, new, BOUND))).unwrap()
    };

    // Another node's user has the name, in another case; a node renames
    // only the names it holds. Neither changes anything.
    assert_eq!(rename(&mut lp, "a", "Ann", "bOB"), Rename::Taken);
    assert_eq!(rename(&mut lp, "b", "Ann", "Zed"), Rename::NotHeld);
    assert_eq!(rename(&mut lp, "a", "Nobody", "Zed"), Rename::NotHeld);
    assert_eq!(who(&mut lp, c), vec!["Ann", "Bob"]);

    // A change of case keeps the name's key (and its owner): only the name
    // shown changes.
    assert_eq!(rename(&mut lp, "a", "Ann", "ANN"), Rename::Renamed);
    assert_eq!(who(&mut lp, c), vec!["ANN", "Bob"]);
    assert_eq!(
        lp.call(c, &cmd(&["HGETALL", "{test}:names"])),
        Frame::Array(vec![bulk("ann"), bulk("a"), bulk("bob"), bulk("b")])
    );

    // A new name: the old one is free, the new one taken, everywhere.
    assert_eq!(rename(&mut lp, "a", "ann", "Cat"), Rename::Renamed);
    assert_eq!(who(&mut lp, c), vec!["Bob", "Cat"]);
    assert_eq!(
        lp.call(c, &cmd(&["HGETALL", "{test}:node:a:users"])),
        Frame::Array(vec![bulk("cat"), bulk("Cat")])
    );
    assert_eq!(
        parse_claim(lp.call(c, &commands.claim("b", "CAT", BOUND))).unwrap(),
        Claim::Taken
    );
    claim_all(&mut lp, c, &commands, &[("b", "ann")]);
    // The user leaves under the new name.
    assert_eq!(
        parse_release(lp.call(c, &commands.release("a", "cat", BOUND))).unwrap(),
        Some(2)
    );

    use PresenceKind::{Joined, Left, Renamed};
    let renamed = |from: &str| Renamed { from: from.into() };
    assert_eq!(
        presence(&mut lp, c, &commands, &mut origin()),
        vec![
            (Joined, "Ann".into(), "a".into(), 1),
            (Joined, "Bob".into(), "b".into(), 2),
            (renamed("Ann"), "ANN".into(), "a".into(), 2),
            (renamed("ANN"), "Cat".into(), "a".into(), 2),
            (Joined, "ann".into(), "b".into(), 3),
            (Left, "Cat".into(), "a".into(), 2),
        ]
    );
}

const TS: &str = "2026-11-25T08:00:00.000Z";

fn new_dm(from: &str, to: &str, text: &str, cid: Option<&str>) -> NewDm {
    NewDm {
        ts: TS.into(),
        from: from.into(),
        to: to.into(),
        text: text.into(),
        cid: cid.map(str::to_owned),
    }
}

/// A DM as an inbox delivers it, but for its stream id.
fn inbox_entry(id: u64, from: &str, to: &str, text: &str, cid: Option<&str>) -> InboxDm {
    InboxDm {
        stream_id: String::new(),
        dm: StoredDm {
            id,
            ts: TS.into(),
            from: from.into(),
            to: to.into(),
            text: text.into(),
        },
        cid: cid.map(str::to_owned),
    }
}

/// What `node` reads after `cursor` (which moves past it), split by
/// stream: message ids, presence names, and inbox DMs with their stream
/// ids blanked (checked here to rise, and to be where the cursor stops).
fn read_all(
    lp: &mut Loop,
    c: usize,
    commands: &Commands,
    node: &str,
    cursor: &mut Cursor,
) -> (Vec<u64>, Vec<String>, Vec<InboxDm>) {
    let reply = lp.call(
        c,
        &commands.read(node, cursor, Duration::from_millis(10), 100),
    );
    let deliveries = commands.parse_read(node, reply).unwrap();
    let before = cursor.inbox.clone();
    cursor.advance(&deliveries);
    let (mut messages, mut names, mut dms) = (Vec::new(), Vec::new(), Vec::new());
    let mut last_inbox = before;
    for delivery in deliveries {
        match delivery {
            Delivery::Message(m) => messages.push(m.id),
            Delivery::Presence(p) => names.push(p.name),
            Delivery::Inbox(mut dm) => {
                assert!(stream_id_order(&dm.stream_id) > stream_id_order(&last_inbox));
                last_inbox = std::mem::take(&mut dm.stream_id);
                dms.push(dm);
            }
        }
    }
    assert_eq!(cursor.inbox, last_inbox);
    (messages, names, dms)
}

/// A stream id `MS-SEQ` as numbers, to compare.
fn stream_id_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap();
    (ms.parse().unwrap(), seq.parse().unwrap())
}

#[test]
fn a_dm_goes_to_the_inboxes_of_both_nodes_with_an_id_of_the_one_sequence() {
    let Some(redis) = Redis::start() else { return };
    let commands = Commands::new(CHAT);
    let (mut lp, c) = single(&redis);
    register(&mut lp, c, &commands, &["a", "b"]);
    claim_all(&mut lp, c, &commands, &[("a", "Ann"), ("b", "Bob")]);
    // Ann is on node a, Bob on node b.
    let send = |lp: &mut Loop, dm: NewDm| {
        let node = if dm.from.eq_ignore_ascii_case("ann") {
            "a"
        } else {
            "b"
        };
        parse_dm(lp.call(c, &commands.dm(node, &dm, CID_TTL, BOUND))).unwrap()
    };
    let sent = |id, to: &str| DmOutcome::Sent { id, to: to.into() };

    // Ids are shared with public messages; the recipient is found
    // case-insensitively and answered with their name as they typed it.
    assert_eq!(publish_one(&mut lp, c, &commands, "public"), 1);
    assert_eq!(
        send(&mut lp, new_dm("Ann", "bob", "hi Bob", Some("d1"))),
        sent(2, "Bob")
    );
    assert_eq!(
        send(&mut lp, new_dm("Bob", "ANN", "hi Ann", None)),
        sent(3, "Ann")
    );
    let ttl = lp.call(c, &cmd(&["TTL", "{test}:dmcid:ann:d1"]));
    assert!(
        matches!(ttl, Frame::Integer(t) if t > 86_000 && t <= 86_400),
        "{ttl:?}"
    );

    // Nobody by that name: no id is allocated.
    assert_eq!(
        send(&mut lp, new_dm("Ann", "Nobody", "hello?", Some("d9"))),
        DmOutcome::UnknownUser
    );
    assert_eq!(publish_one(&mut lp, c, &commands, "public again"), 4);

    // The same sender (in any case) resending a cid gets the DM as first
    // stored; another sender's DM with that cid is new, remembered on its
    // own, and does not replace the first sender's record.
    let first = DmOutcome::Duplicate(StoredDm {
        id: 2,
        ts: TS.into(),
        from: "Ann".into(),
        to: "Bob".into(),
        text: "hi Bob".into(),
    });
    assert_eq!(
        send(&mut lp, new_dm("Ann", "Bob", "resent", Some("d1"))),
        first
    );
    assert_eq!(
        send(&mut lp, new_dm("ANN", "bob", "resent", Some("d1"))),
        first
    );
    assert_eq!(
        send(&mut lp, new_dm("Bob", "Ann", "same cid", Some("d1"))),
        sent(5, "Ann")
    );
    assert_eq!(
        send(&mut lp, new_dm("Ann", "Bob", "resent", Some("d1"))),
        first
    );
    assert!(matches!(
        send(&mut lp, new_dm("Bob", "Ann", "same cid", Some("d1"))),
        DmOutcome::Duplicate(StoredDm { id: 5, .. })
    ));

    // Each node's reader gets both public messages, the presence, and the
    // DMs to or from its own users only (the sender's node shows the
    // sender its copy), in the order they were sent.
    let dms = vec![
        inbox_entry(2, "Ann", "Bob", "hi Bob", Some("d1")),
        inbox_entry(3, "Bob", "Ann", "hi Ann", None),
        inbox_entry(5, "Bob", "Ann", "same cid", Some("d1")),
    ];
    let mut cursor_a = origin();
    assert_eq!(
        read_all(&mut lp, c, &commands, "a", &mut cursor_a),
        (vec![1, 4], vec!["Ann".into(), "Bob".into()], dms.clone())
    );
    let mut cursor_b = origin();
    assert_eq!(
        read_all(&mut lp, c, &commands, "b", &mut cursor_b),
        (vec![1, 4], vec!["Ann".into(), "Bob".into()], dms)
    );
    assert_eq!(cursor_b.message, 4);

    // The cursors moved past all of it; a new DM is all there is next.
    assert_eq!(
        send(&mut lp, new_dm("Ann", "Bob", "again", None)),
        sent(6, "Bob")
    );
    for (node, cursor) in [("a", &mut cursor_a), ("b", &mut cursor_b)] {
        assert_eq!(
            read_all(&mut lp, c, &commands, node, cursor),
            (
                vec![],
                vec![],
                vec![inbox_entry(6, "Ann", "Bob", "again", None)]
            )
        );
    }
}

#[test]
fn reaping_a_dead_node_drops_its_inbox() {
    let Some(redis) = Redis::start() else { return };
    let commands = Commands::new(CHAT);
    let (mut lp, c) = single(&redis);
    register(&mut lp, c, &commands, &["dead", "live"]);
    claim_all(&mut lp, c, &commands, &[("dead", "Ann"), ("live", "Bob")]);
    for (node, from, to) in [("live", "Bob", "Ann"), ("dead", "Ann", "Bob")] {
        let reply = lp.call(
            c,
            &commands.dm(node, &new_dm(from, to, "hi", None), CID_TTL, BOUND),
        );
        assert!(matches!(parse_dm(reply).unwrap(), DmOutcome::Sent { .. }));
    }
    let exists = |lp: &mut Loop, node: &str| {
        lp.call(c, &cmd(&["EXISTS", &format!("{{test}}:node:{node}:inbox")]))
    };
    assert_eq!(exists(&mut lp, "dead"), Frame::Integer(1));

    lp.call(c, &cmd(&["PEXPIREAT", "{test}:node:dead:alive", "1"]));
    assert_eq!(
        parse_reap(lp.call(c, &commands.reap(BOUND))).unwrap(),
        vec![("dead".into(), "Ann".into())]
    );
    assert_eq!(exists(&mut lp, "dead"), Frame::Integer(0));
    assert_eq!(exists(&mut lp, "live"), Frame::Integer(1));
    let reply = lp.call(
        c,
        &commands.dm("live", &new_dm("Bob", "Ann", "hi", None), CID_TTL, BOUND),
    );
    assert_eq!(parse_dm(reply).unwrap(), DmOutcome::UnknownUser);
}

#[test]
fn history_pages_go_back_from_an_exclusive_bound_oldest_first() {
    let Some(redis) = Redis::start() else { return };
    let commands = Commands::new(CHAT);
    let (mut lp, c) = single(&redis);
    let page = |lp: &mut Loop, before, limit| -> Vec<u64> {
        let reply = lp.call(c, &commands.page(before, limit));
        parse_page(reply).unwrap().iter().map(|m| m.id).collect()
    };
    assert_eq!(page(&mut lp, u64::MAX, 5), Vec::<u64>::new(), "no history");

    let round: Vec<NewMessage> = (1..=10).map(|i| message(&format!("m{i}"), None)).collect();
    parse_publish(lp.call(c, &commands.publish(&round, BOUND, CID_TTL))).unwrap();
    assert_eq!(page(&mut lp, u64::MAX, 3), vec![8, 9, 10]);
    assert_eq!(page(&mut lp, 8, 3), vec![5, 6, 7]);
    assert_eq!(page(&mut lp, 3, 10), vec![1, 2]);
    assert_eq!(page(&mut lp, 1, 10), Vec::<u64>::new());
    assert_eq!(page(&mut lp, 0, 10), Vec::<u64>::new());
    assert_eq!(page(&mut lp, 100, 2), vec![9, 10]);
    assert_eq!(page(&mut lp, u64::MAX, 0), Vec::<u64>::new());
    let reply = lp.call(c, &commands.page(6, 1));
    assert_eq!(parse_page(reply).unwrap(), vec![stored(5, "m5", None)]);
}

#[test]
fn a_snapshot_registers_the_node_and_a_reader_continues_from_it_without_a_gap() {
    let Some(redis) = Redis::start() else { return };
    let commands = Commands::new(CHAT);
    let (mut lp, c) = single(&redis);
    let ttl = Duration::from_secs(10);
    let snapshot = |lp: &mut Loop, node, epoch, keep| {
        parse_snapshot(lp.call(c, &commands.snapshot(node, ttl, epoch, keep))).unwrap()
    };

    // An empty Redis: the epoch is created, the node registered.
    assert_eq!(
        snapshot(&mut lp, "a", "e1", 5),
        Snapshot {
            epoch: "e1".into(),
            was_registered: false,
            presence: "0-0".into(),
            users: vec![],
            history: vec![],
            last_id: 0,
        }
    );
    let pttl = lp.call(c, &cmd(&["PTTL", "{test}:node:a:alive"]));
    assert!(
        matches!(pttl, Frame::Integer(t) if t > 9_000 && t <= 10_000),
        "{pttl:?}"
    );
    claim_all(&mut lp, c, &commands, &[("a", "Ann")]);

    // Traffic: two nodes' users, seven messages.
    register(&mut lp, c, &commands, &["b"]);
    claim_all(&mut lp, c, &commands, &[("b", "bob")]);
    let round: Vec<NewMessage> = (1..=7).map(|i| message(&format!("m{i}"), None)).collect();
    parse_publish(lp.call(c, &commands.publish(&round, BOUND, CID_TTL))).unwrap();
    let Frame::Array(last) = lp.call(
        c,
        &cmd(&["XREVRANGE", "{test}:presence", "+", "-", "COUNT", "1"]),
    ) else {
        panic!()
    };
    let Frame::Array(last) = last.into_iter().next().unwrap() else {
        panic!()
    };
    let Frame::BulkString(last_presence) = last.into_iter().next().unwrap() else {
        panic!()
    };
    let last_presence = String::from_utf8(last_presence).unwrap();

    let snap = snapshot(&mut lp, "a", "e2", 3);
    assert_eq!(
        snap,
        Snapshot {
            epoch: "e1".into(),
            was_registered: true,
            presence: last_presence.clone(),
            users: vec![("Ann".into(), "a".into()), ("bob".into(), "b".into())],
            history: vec![
                stored(5, "m5", None),
                stored(6, "m6", None),
                stored(7, "m7", None)
            ],
            last_id: 7,
        }
    );
    let none = snapshot(&mut lp, "a", "e2", 0);
    assert_eq!((none.history, none.last_id), (vec![], 7));

    // A reader started from the snapshot has nothing to read until
    // something happens, then gets exactly that.
    let mut cursor = Cursor {
        message: snap.last_id,
        presence: snap.presence,
        inbox: "0-0".into(),
    };
    assert_eq!(
        read_all(&mut lp, c, &commands, "a", &mut cursor),
        (vec![], vec![], vec![])
    );
    assert_eq!(publish_one(&mut lp, c, &commands, "m8"), 8);
    claim_all(&mut lp, c, &commands, &[("b", "Cy")]);
    let reply = lp.call(
        c,
        &commands.dm("b", &new_dm("Cy", "ann", "hi", None), CID_TTL, BOUND),
    );
    assert_eq!(
        parse_dm(reply).unwrap(),
        DmOutcome::Sent {
            id: 9,
            to: "Ann".into()
        }
    );
    assert_eq!(
        read_all(&mut lp, c, &commands, "a", &mut cursor),
        (
            vec![8],
            vec!["Cy".into()],
            vec![inbox_entry(9, "Cy", "Ann", "hi", None)]
        )
    );

    // Declared dead: the node learns it from the snapshot, which registers
    // it again; its users are gone.
    lp.call(c, &cmd(&["PEXPIREAT", "{test}:node:a:alive", "1"]));
    parse_reap(lp.call(c, &commands.reap(BOUND))).unwrap();
    let snap = snapshot(&mut lp, "a", "e2", 1);
    assert!(!snap.was_registered);
    assert_eq!(snap.epoch, "e1");
    assert_eq!(
        snap.users,
        vec![("bob".into(), "b".into()), ("Cy".into(), "b".into())]
    );
    assert_eq!(snap.history, vec![stored(8, "m8", None)]);
    assert!(parse_alive(lp.call(c, &commands.refresh("a", ttl))).unwrap());

    // Redis lost its data: a new epoch, nothing registered, nothing stored.
    lp.call(c, &cmd(&["FLUSHALL"]));
    assert_eq!(
        snapshot(&mut lp, "a", "e3", 5),
        Snapshot {
            epoch: "e3".into(),
            was_registered: false,
            presence: "0-0".into(),
            users: vec![],
            history: vec![],
            last_id: 0,
        }
    );
}
