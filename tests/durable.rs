//! Durable history with the real `mioserver` binary and a database in a
//! temporary directory: `kill -9` at random moments under load loses no
//! acknowledged message and reuses no id; resume across a restart;
//! `:memory:` restarts name a new epoch; a full disk answers `unavailable`
//! and the server recovers by itself.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Client, TIMEOUT};
use serde_json::{json, Value};
use tungstenite::Message;

/// A `mioserver` process; killed with SIGKILL when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    /// Every line it has logged so far.
    log: Arc<Mutex<Vec<String>>>,
    /// The thread reading the log; it ends when the process does.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts the binary on a free port with `db` and `extra` flags
    /// (rate limiting off), and waits for its address in the log.
    fn start(db: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mioserver"))
            .arg("127.0.0.1:0")
            .arg("--db")
            .arg(db)
            .args(["--rate-limit", "0"])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mioserver");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = Arc::clone(&log);
        // Read the log on a thread, so that a silent server fails the test
        // by timeout instead of hanging it; keep draining it afterwards.
        let reader = std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ws://").nth(1) {
                    let _ = tx.send(rest.split('/').next().unwrap().to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("mioserver did not start: {:?}", log.lock().unwrap()));
        Server {
            child,
            addr: addr.parse().unwrap(),
            log,
            reader: Some(reader),
        }
    }

    /// `kill -9`; waits for the process to be gone and returns its log.
    fn kill(mut self) -> Vec<String> {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small deterministic random sequence (xorshift64), seeded per run and
/// printed, so that a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("DURABLE_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("DURABLE_SEED={seed}");
        Rng(seed)
    }

    /// A number in `low..high`.
    fn below(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + self.0 % (high - low)
    }
}

/// A message as compared across restarts: everything but the type.
fn fields(message: &Value) -> (u64, String, String, String) {
    (
        message["id"].as_u64().expect("an id"),
        message["ts"].as_str().expect("a ts").to_owned(),
        message["from"].as_str().expect("a from").to_owned(),
        message["text"].as_str().expect("a text").to_owned(),
    )
}

/// Joins with `since` and `epoch` (each when given); returns the client
/// and its `welcome`.
fn resume(
    addr: SocketAddr,
    name: &str,
    since: Option<u64>,
    epoch: Option<&str>,
) -> (Client, Value) {
    let mut client = Client::connect(addr);
    let mut join = json!({"type": "join", "name": name});
    if let Some(since) = since {
        join["since"] = json!(since);
    }
    if let Some(epoch) = epoch {
        join["epoch"] = json!(epoch);
    }
    client.send(join);
    let welcome = client.recv();
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (client, welcome)
}

/// The ids of a list of messages.
fn ids(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .expect("a list")
        .iter()
        .map(|message| message["id"].as_u64().unwrap())
        .collect()
}

/// What one writer sent and saw before its server died.
#[derive(Default)]
struct Record {
    /// The public messages it sent: cid → text.
    sent: BTreeMap<String, String>,
    /// Every `message` it received (its acknowledgements and the others'),
    /// by id.
    seen: BTreeMap<u64, Value>,
    /// The highest id it received, DMs included.
    max_id: u64,
}

/// Sends bursts of says (and a DM to itself every few) without waiting,
/// then reads until each is acknowledged, until the connection breaks.
/// Each acknowledged message is reported on `acks`.
fn write_until_killed(addr: SocketAddr, name: String, acks: mpsc::Sender<()>) -> Record {
    let (mut ws, _) =
        tungstenite::client(format!("ws://{addr}/"), common::tcp(addr)).expect("WebSocket upgrade");
    let mut record = Record::default();
    let join = json!({"type": "join", "name": name}).to_string();
    if ws.send(Message::text(join)).is_err() {
        return record;
    }
    let mut n = 0;
    // Bounded: the test kills the server long before this.
    for _burst in 0..1000 {
        let mut waiting = HashSet::new();
        for _ in 0..20 {
            n += 1;
            let cid = format!("{name}-{n}");
            let text = format!("{name} says {n}");
            let request = if n % 7 == 0 {
                json!({"type": "dm", "to": name, "text": text, "cid": cid})
            } else {
                record.sent.insert(cid.clone(), text.clone());
                json!({"type": "say", "text": text, "cid": cid})
            };
            if ws.send(Message::text(request.to_string())).is_err() {
                return record;
            }
            waiting.insert(cid);
        }
        while !waiting.is_empty() {
            let frame = match ws.read() {
                Ok(Message::Text(text)) => text,
                Ok(_) => continue,
                Err(_) => return record,
            };
            let event: Value = serde_json::from_str(&frame).unwrap();
            if let Some(id) = event["id"].as_u64() {
                record.max_id = record.max_id.max(id);
            }
            match event["type"].as_str() {
                Some("message") => {
                    record
                        .seen
                        .insert(event["id"].as_u64().unwrap(), event.clone());
                }
                Some("dm" | "welcome" | "joined" | "left") => {}
                _ => panic!("unexpected under load: {event}"),
            }
            if let Some(cid) = event["cid"].as_str() {
                if waiting.remove(cid) {
                    let _ = acks.send(());
                }
            }
        }
    }
    record
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_message_and_reuses_no_id() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let mut rng = Rng::new();
    // Every message anyone saw, by id, over all rounds.
    let mut seen: BTreeMap<u64, Value> = BTreeMap::new();
    let mut max_id = 0;
    let mut epoch: Option<String> = None;
    for round in 0..8 {
        let server = Server::start(&db, &["--max-resume", "1000000", "--history", "50"]);
        // After a restart: the same history, with every message seen.
        let (reader, welcome) = resume(
            server.addr,
            &format!("check{round}"),
            Some(0),
            epoch.as_deref(),
        );
        if let Some(epoch) = &epoch {
            assert_eq!(
                welcome["epoch"],
                epoch.as_str(),
                "the epoch survives a restart"
            );
        }
        epoch = Some(welcome["epoch"].as_str().unwrap().to_owned());
        assert_eq!(welcome["recovered"], true);
        let history: BTreeMap<u64, Value> = welcome["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|message| (message["id"].as_u64().unwrap(), message.clone()))
            .collect();
        for (id, message) in &seen {
            let stored = history
                .get(id)
                .unwrap_or_else(|| panic!("round {round}: acknowledged {message} is lost"));
            assert_eq!(fields(stored), fields(message), "round {round}");
        }
        let mut cids = HashSet::new();
        for message in history.values() {
            if let Some(cid) = message["cid"].as_str() {
                assert!(
                    cids.insert(cid.to_owned()),
                    "round {round}: {cid} stored twice"
                );
            }
        }
        // Load, and a kill at a random number of acknowledgements.
        let kill_after = rng.below(1, 400);
        let (acks_tx, acks_rx) = mpsc::channel();
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let (addr, acks) = (server.addr, acks_tx.clone());
                let name = format!("r{round}w{w}");
                std::thread::spawn(move || write_until_killed(addr, name, acks))
            })
            .collect();
        drop(acks_tx);
        for _ in 0..kill_after {
            if acks_rx.recv_timeout(TIMEOUT).is_err() {
                break;
            }
        }
        server.kill();
        drop(reader);
        let records: Vec<Record> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        let new_ids: Vec<u64> = records
            .iter()
            .flat_map(|r| r.seen.keys().copied())
            .collect();
        assert!(
            new_ids.iter().all(|&id| id > max_id),
            "round {round}: an id at or below {max_id} was handed out again"
        );
        // Resend what was not acknowledged, with the same cids, to the
        // next server: each must then be in history exactly once.
        let server = Server::start(&db, &["--max-resume", "1000000", "--history", "50"]);
        let (mut resender, _) = resume(server.addr, &format!("resend{round}"), None, None);
        // The new server's first id: above every id ever seen, and above
        // every id the killed server could have handed out.
        resender.send(json!({"type": "dm", "to": format!("resend{round}"), "text": "first"}));
        let first_id = resender.recv()["id"].as_u64().unwrap();
        let mut resent = 0;
        for record in &records {
            for message in record.seen.values() {
                seen.insert(message["id"].as_u64().unwrap(), message.clone());
            }
            max_id = max_id.max(record.max_id);
            let acked: HashSet<&str> = record
                .seen
                .values()
                .filter_map(|m| m["cid"].as_str())
                .collect();
            for (cid, text) in &record.sent {
                if !acked.contains(cid.as_str()) {
                    resender.send(json!({"type": "say", "text": text, "cid": cid}));
                    resent += 1;
                }
            }
        }
        let mut stored_before = 0;
        for _ in 0..resent {
            let ack = resender.recv();
            stored_before += usize::from(ack["id"].as_u64().unwrap() < first_id);
            assert_eq!(ack["type"], "message", "{ack}");
            let id = ack["id"].as_u64().unwrap();
            seen.insert(id, ack.clone());
        }
        eprintln!(
            "round {round}: killed after {kill_after} acknowledgements; {resent} resent, \
             {stored_before} of them stored before the kill"
        );
        assert!(first_id > max_id, "id {first_id} was handed out before");
        max_id = max_id
            .max(first_id)
            .max(seen.keys().copied().max().unwrap_or(0));
        let (_, welcome) = resume(
            server.addr,
            &format!("final{round}"),
            Some(0),
            epoch.as_deref(),
        );
        let mut per_cid = HashMap::new();
        for message in welcome["history"].as_array().unwrap() {
            if let Some(cid) = message["cid"].as_str() {
                *per_cid.entry(cid.to_owned()).or_insert(0) += 1;
            }
        }
        for record in &records {
            for cid in record.sent.keys() {
                assert_eq!(
                    per_cid.get(cid),
                    Some(&1),
                    "round {round}: {cid} not exactly once"
                );
            }
        }
        let history_ids = ids(&welcome["history"]);
        assert!(history_ids.windows(2).all(|w| w[0] < w[1]), "ids increase");
        server.kill();
    }
}

#[test]
fn resume_across_a_restart_sends_exactly_the_missed_messages() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    // The room keeps 2 messages in memory: older resumes need the store.
    let flags = ["--history", "2", "--max-resume", "10"];
    let server = Server::start(&db, &flags);
    let (mut alice, welcome) = resume(server.addr, "alice", None, None);
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    assert_eq!(welcome.get("recovered"), None);
    let mut said = Vec::new();
    for n in 1..=5 {
        alice.send(json!({"type": "say", "text": format!("before {n}")}));
        said.push(alice.recv());
    }
    server.kill();
    let server = Server::start(&db, &flags);
    let (mut alice, _) = resume(server.addr, "alice", None, None);
    for n in 1..=3 {
        alice.send(json!({"type": "say", "text": format!("after {n}")}));
        said.push(alice.recv());
    }
    let all: Vec<u64> = said.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
    // Bob saw the second message, then the server crashed.
    let (_bob, welcome) = resume(server.addr, "bob", Some(all[1]), Some(&epoch));
    assert_eq!(welcome["recovered"], true);
    assert_eq!(welcome["epoch"], epoch.as_str());
    assert_eq!(ids(&welcome["history"]), all[2..]);
    for (sent, got) in said[2..].iter().zip(welcome["history"].as_array().unwrap()) {
        assert_eq!(fields(sent), fields(got));
    }
    // Without an epoch the since is trusted.
    let (_carol, welcome) = resume(server.addr, "carol", Some(all[0]), None);
    assert_eq!(welcome["recovered"], true);
    assert_eq!(ids(&welcome["history"]), all[1..]);
    // Another epoch: the last N, not recovered.
    let (_dave, welcome) = resume(server.addr, "dave", Some(all[1]), Some("another"));
    assert_eq!(welcome["recovered"], false);
    assert_eq!(ids(&welcome["history"]), all[6..]);
    for _ in ["bob", "carol", "dave"] {
        assert_eq!(alice.recv()["type"], "joined");
    }
    // Older history pages through the store.
    alice.send(json!({"type": "history", "before": all[6], "limit": 3}));
    let page = alice.recv();
    assert_eq!(page["type"], "history", "{page}");
    assert_eq!(ids(&page["messages"]), all[3..6]);
    alice.send(json!({"type": "history", "before": all[0], "limit": 3}));
    assert_eq!(ids(&alice.recv()["messages"]), Vec::<u64>::new());
    server.kill();
    // More missed than --max-resume: the last N, not recovered.
    let server = Server::start(&db, &["--history", "2", "--max-resume", "4"]);
    let (_erin, welcome) = resume(server.addr, "erin", Some(all[1]), Some(&epoch));
    assert_eq!(welcome["recovered"], false);
    assert_eq!(ids(&welcome["history"]), all[6..]);
    let (_fred, welcome) = resume(server.addr, "fred", Some(all[3]), Some(&epoch));
    assert_eq!(welcome["recovered"], true);
    assert_eq!(ids(&welcome["history"]), all[4..]);
}

#[test]
fn a_resent_cid_is_not_doubled_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let server = Server::start(&db, &["--history", "1"]);
    let (mut alice, _) = resume(server.addr, "alice", None, None);
    alice.send(json!({"type": "say", "text": "once", "cid": "only-once"}));
    let original = alice.recv();
    alice.send(json!({"type": "say", "text": "pushes it out of memory"}));
    alice.recv();
    server.kill();
    let server = Server::start(&db, &["--history", "1"]);
    let (mut alice, _) = resume(server.addr, "alice", None, None);
    let (mut bob, _) = resume(server.addr, "bob", None, None);
    alice.recv(); // bob joined
    alice.send(json!({"type": "say", "text": "once", "cid": "only-once"}));
    assert_eq!(
        alice.recv(),
        original,
        "the stored message is the acknowledgement"
    );
    // Bob gets nothing for it: the next thing he hears is the next message.
    alice.send(json!({"type": "say", "text": "next"}));
    let next = bob.recv();
    assert_eq!(next["text"], "next");
    assert_eq!(alice.recv(), next);
    alice.send(json!({"type": "history", "before": null, "limit": 100}));
    let page = alice.recv();
    let cids: Vec<_> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["cid"] == "only-once")
        .collect();
    assert_eq!(cids.len(), 1, "{page}");
}

#[test]
fn a_memory_server_names_a_new_epoch_when_restarted() {
    let memory = Path::new(":memory:");
    let server = Server::start(memory, &[]);
    let (mut alice, welcome) = resume(server.addr, "alice", None, None);
    let epoch = welcome["epoch"].as_str().unwrap().to_owned();
    alice.send(json!({"type": "say", "text": "forgotten"}));
    let said = alice.recv();
    server.kill();
    let server = Server::start(memory, &[]);
    let (_alice, welcome) = resume(
        server.addr,
        "alice",
        Some(said["id"].as_u64().unwrap()),
        Some(&epoch),
    );
    assert_ne!(welcome["epoch"], epoch.as_str());
    assert_eq!(welcome["recovered"], false);
    assert_eq!(welcome["history"], json!([]));
    assert!(!Path::new(":memory:").exists(), "no file named :memory:");
}

#[test]
fn a_second_server_on_the_same_database_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let first = Server::start(&db, &[]);
    let second = Command::new(env!("CARGO_BIN_EXE_mioserver"))
        .arg("127.0.0.1:0")
        .arg("--db")
        .arg(&db)
        .output()
        .expect("run mioserver");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains("is in use by another mioserver"),
        "{stderr}"
    );
    // The first one serves on, and once it is gone the file is free.
    let (_alice, welcome) = resume(first.addr, "alice", None, None);
    assert_eq!(welcome["type"], "welcome");
    first.kill();
    let again = Server::start(&db, &[]);
    let (_bob, welcome) = resume(again.addr, "bob", None, None);
    assert_eq!(welcome["type"], "welcome");
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts `size` of tmpfs; `None` when this process may not mount.
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_answers_unavailable_and_the_server_recovers() {
    let Some(tmpfs) = Tmpfs::mount("4m") else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "mounting a tmpfs needs root"
        );
        eprintln!("SKIPPED: a_full_disk_answers_unavailable: cannot mount a tmpfs (needs root)");
        return;
    };
    let db = tmpfs.dir.path().join("chat.db");
    let server = Server::start(&db, &[]);
    let (mut alice, _) = resume(server.addr, "alice", None, None);
    let (mut bob, _) = resume(server.addr, "bob", None, None);
    alice.recv(); // bob joined
                  // Fill the disk.
    let filler = tmpfs.dir.path().join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![b'x'; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
    }
    // Write until the store refuses (bounded: the WAL alone is larger).
    let text = "y".repeat(3000);
    let mut stored = Vec::new();
    let mut refused = None;
    for n in 0..4000 {
        let cid = format!("full-{n}");
        alice.send(json!({"type": "say", "text": text, "cid": cid}));
        let answer = alice.recv();
        if answer["type"] == "error" {
            assert_eq!(answer["code"], "unavailable", "{answer}");
            assert_eq!(answer["cid"], cid.as_str());
            refused = Some(cid);
            break;
        }
        assert_eq!(answer["type"], "message", "{answer}");
        stored.push(answer);
    }
    let refused = refused.expect("a full disk refuses a message");
    // Again while full: still refused, and logged once.
    alice.send(json!({"type": "say", "text": text, "cid": refused}));
    let again = alice.recv();
    assert_eq!(again["code"], "unavailable", "{again}");
    // Room again: the same cid is accepted, without a restart.
    std::fs::remove_file(&filler).unwrap();
    alice.send(json!({"type": "say", "text": "back", "cid": refused}));
    let back = alice.recv();
    assert_eq!(back["type"], "message", "{back}");
    assert_eq!(back["cid"], refused.as_str());
    // Bob saw exactly the stored messages, then this one: never a refused one.
    for expected in stored.iter().chain([&back]) {
        assert_eq!(&bob.recv(), expected);
    }
    // One episode, logged once when it began and once when it ended.
    let log = server.kill();
    let count = |text: &str| log.iter().filter(|line| line.contains(text)).count();
    assert_eq!(count("cannot store messages"), 1, "{log:#?}");
    assert_eq!(count("storing messages again"), 1, "{log:#?}");
    // And it is all still there after a crash.
    let server = Server::start(&db, &["--max-resume", "100000"]);
    let (_carol, welcome) = resume(server.addr, "carol", Some(0), None);
    let expected: Vec<u64> = stored
        .iter()
        .chain([&back])
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids(&welcome["history"]), expected);
    drop(server);
}
