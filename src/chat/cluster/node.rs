//! A cluster node's side of Redis, on the event loop: two connections
//! registered with the loop's own poll, the requests the chat makes of
//! Redis, and what comes back, turned into [`NodeEvent`]s for the chat.
//!
//! - The **command connection** carries the node's requests, pipelined: a
//!   turn's public messages go out as one `publish.lua` call (queued with
//!   [`Node::publish`], sent by [`Node::end_of_turn`]); name claims,
//!   renames, releases, DMs and history pages as they come; the liveness
//!   refresh and the reaping of dead nodes on timers. Each connect starts
//!   with the snapshot (`snapshot.lua`), which registers the node and
//!   tells whether Redis still knows it and still has the same history.
//! - The **reader connection** waits in `XREAD BLOCK` on the history, the
//!   presence stream and this node's DM inbox, from the [`Cursor`] of what
//!   was delivered; every answer moves the cursor and asks again at once.
//!   After a reconnect it reads on from the cursor: no gap, no duplicate.
//!
//! Nothing is shown before Redis has it: the chat shows public messages
//! only as the history stream delivers them, its own included, and a DM
//! as its node's inbox does (the sender's node gets a copy of its own), so
//! that nobody sees a DM before a public message with a smaller id.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use mio::Registry;

use crate::chat::cluster::conn::RedisConn;
use crate::chat::cluster::link::{Event, Frame, LinkConfig};
use crate::chat::cluster::scripts::{
    self, Claim, Commands, Cursor, Delivery, DmOutcome, NewDm, NewMessage, Published, Rename,
    ReplyError, Snapshot, StoredMessage,
};
use crate::chat::cluster::{random_token, RedisUrl};
use crate::evloop::service::{Attach, ConnId, Readiness};
use crate::proto::protocol::Cid;

/// The chat every node of a cluster serves: its keys are `{miochat}:…`.
/// One name for now; a deployment that wants two chats on one Redis uses
/// two databases (`redis://HOST:PORT/DB`).
pub const CHAT: &str = "miochat";

/// The source number of the command connection (see [`Attach::token`]).
const COMMANDS: usize = 0;
/// The source number of the reader connection.
const READER: usize = 1;

/// How long a node's liveness key lives without a refresh: the other
/// nodes declare a node dead this long after its last refresh, so its
/// users are reported `left` within this plus [`REAP_EVERY`] (15 s, well
/// inside the protocol's 30 s), while a node that misses two refreshes in
/// a row (a stall, a slow Redis) is not declared dead yet.
const LIVENESS_TTL: Duration = Duration::from_secs(10);
/// How often a node refreshes its liveness key: three times per TTL.
const REFRESH_EVERY: Duration = Duration::from_secs(3);
/// How often every node looks for dead ones. Each look is one script call
/// that reads the set of nodes: cheap at any cluster size.
const REAP_EVERY: Duration = Duration::from_secs(5);
/// How long the reader's `XREAD` blocks when nothing comes: half the
/// link's reply timeout, so a blocked read is never taken for a dead
/// connection, and often enough to notice a half-open one.
const READ_BLOCK: Duration = Duration::from_secs(5);
/// The most entries of each stream one read returns: big enough to catch
/// up after a reconnect in a few round trips, small enough to parse in a
/// fraction of a millisecond.
const READ_COUNT: usize = 1_000;
/// About how many public messages the history stream keeps (`MAXLEN ~`):
/// what resume and history pages can reach in a cluster. 100 000 short
/// messages take a few tens of MB of Redis memory.
pub const HISTORY_BOUND: usize = 100_000;
/// About how many entries the presence stream and each DM inbox keep:
/// a reader that falls further behind than this has lost its connection
/// for far longer than the node's liveness, and starts afresh.
const EVENT_BOUND: usize = 10_000;
/// How long a `cid` is remembered in Redis: the protocol promises at
/// least 24 hours.
const CID_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a node tells the chat.
#[derive(Debug)]
pub enum NodeEvent {
    /// The node knows the cluster's state (at start-up, and again after a
    /// reset). `reset`: Redis had declared this node dead, or lost its
    /// data (a new epoch): its users' names were freed, and what the chat
    /// showed them may not be the cluster's history any more, so the chat
    /// must close every connection and start from `snapshot`.
    Ready {
        /// The cluster's state.
        snapshot: Snapshot,
        /// Whether this follows an earlier snapshot that no longer holds.
        reset: bool,
    },
    /// What the streams delivered, in order.
    Streamed(Vec<Delivery>),
    /// The answer to a request made for a connection.
    Answer {
        /// The connection it is for (still open: a closed one's answers
        /// are dropped, see [`Node::forget`]).
        conn: ConnId,
        /// What it is.
        answer: Answer,
    },
}

/// The answer to a connection's request.
#[derive(Debug)]
pub enum Answer {
    /// To [`Node::claim`].
    Claim(Claim),
    /// To [`Node::rename`].
    Rename(Rename),
    /// To [`Node::dm`], with the DM as it was asked for.
    Dm(NewDm, DmOutcome),
    /// To [`Node::page`]: the messages, oldest first.
    Page(Vec<StoredMessage>),
    /// To [`Node::publish`], when the message's `cid` had been accepted
    /// before: the stored message (`None` if the history's bound trimmed
    /// it), under its id.
    Resent(u64, Option<StoredMessage>, NewMessage),
    /// Redis could not be asked, or did not answer: the request may be
    /// retried (with the same `cid`).
    Unavailable(Option<Cid>),
}

/// Redis cannot be asked now (the node is not connected, or has no
/// snapshot yet): the requester is to be told `unavailable`, and may try
/// again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable;

/// One turn's public messages, in the order they were said.
#[derive(Debug, Default)]
struct Round {
    /// Each message's sender, `None` once it is gone.
    senders: Vec<Option<ConnId>>,
    /// The messages, as the publish script takes them.
    messages: Vec<NewMessage>,
}

/// A request waiting for its reply.
#[derive(Debug)]
enum Pending {
    /// The snapshot, sent first on every connect.
    Snapshot,
    /// A liveness refresh.
    Refresh,
    /// A look for dead nodes.
    Reap,
    /// A name release (nobody waits for it); the name, to retry after a
    /// reconnect if the connection was lost.
    Release(String),
    /// The reader's `XREAD`.
    Read,
    /// One turn's public messages.
    Publish(Round),
    /// A name claim; if the connection is gone when it succeeds, the name
    /// is released again.
    Claim(Option<ConnId>, String),
    /// A rename to the name given; released again likewise.
    Rename(Option<ConnId>, String),
    /// A DM.
    Dm(Option<ConnId>, NewDm),
    /// A history page.
    Page(Option<ConnId>),
}

impl Pending {
    /// The connection waiting for this reply, if it is still there.
    fn conn_mut(&mut self) -> Option<&mut Option<ConnId>> {
        match self {
            Pending::Claim(conn, _)
            | Pending::Rename(conn, _)
            | Pending::Dm(conn, _)
            | Pending::Page(conn) => Some(conn),
            _ => None,
        }
    }
}

/// A node of the cluster: its Redis connections and its requests.
pub struct Node {
    /// This process's name in the cluster: fresh on every start, since a
    /// restarted process is a new node (the old one's users are gone).
    id: String,
    /// The commands, with the chat's key names.
    commands: Commands,
    /// Requests and the snapshot; `None` until the loop attached it.
    cmd: RedisConn<u64>,
    /// The `XREAD` connection.
    reader: RedisConn<u64>,
    /// The loop's registry, once attached.
    registry: Option<Registry>,
    /// Requests in flight by tag, on either connection.
    pending: HashMap<u64, Pending>,
    /// The tag of the next request.
    next_tag: u64,
    /// The epoch of the snapshot the chat runs on (`None` before the first).
    epoch: Option<String>,
    /// How far the streams have been delivered.
    cursor: Cursor,
    /// Whether an `XREAD` is in flight.
    reading: bool,
    /// This turn's public messages, published at its end.
    round: Round,
    /// When the liveness key is refreshed next.
    next_refresh: Instant,
    /// When dead nodes are looked for next.
    next_reap: Instant,
    /// How many messages [`Snapshot::history`] should hold.
    keep: usize,
    /// What to tell the chat next.
    events: VecDeque<NodeEvent>,
    /// Since when the command connection has been down (`None` while it
    /// is up, or before its first attempt): the log says so once.
    down_since: Option<Instant>,
    /// Names whose release could not be sent or was lost: sent again once
    /// the command connection is back (a release is harmless twice).
    unreleased: Vec<String>,
}

impl Node {
    /// A node of the cluster on `url`, keeping `keep` messages of history
    /// in memory. It connects once [attached](Node::attach).
    pub fn new(url: &RedisUrl, keep: usize, now: Instant) -> Node {
        let id = random_token();
        let commands = Commands::new(CHAT);
        let mut setup = url.setup(&id);
        setup.extend(commands.load_scripts());
        let seed = |salt: u64| u64::from_str_radix(&random_token(), 16).unwrap_or(salt);
        let config = LinkConfig::default();
        Node {
            cmd: RedisConn::new(
                url.addr,
                Attach::token(COMMANDS),
                config,
                &setup,
                seed(1),
                now,
            ),
            reader: RedisConn::new(
                url.addr,
                Attach::token(READER),
                config,
                &url.setup(&format!("{id}-reader")),
                seed(2),
                now,
            ),
            id,
            commands,
            registry: None,
            pending: HashMap::new(),
            next_tag: 0,
            epoch: None,
            cursor: Cursor {
                message: 0,
                presence: "0-0".into(),
                inbox: "0-0".into(),
            },
            reading: false,
            round: Round::default(),
            next_refresh: now + REFRESH_EVERY,
            next_reap: now + REAP_EVERY,
            keep,
            events: VecDeque::new(),
            down_since: None,
            unreleased: Vec::new(),
        }
    }

    /// This node's id, as the presence stream names it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether requests reach Redis now.
    pub fn is_up(&self) -> bool {
        self.cmd.is_up() && self.epoch.is_some()
    }

    /// Starts connecting, on the loop's poll.
    pub fn attach(&mut self, registry: Registry, now: Instant) {
        self.cmd.on_timeout(&registry, now);
        self.reader.on_timeout(&registry, now);
        self.registry = Some(registry);
    }

    /// One of the node's sockets is ready.
    pub fn ready(&mut self, source: usize, ready: Readiness, now: Instant) {
        let Some(registry) = &self.registry else {
            return;
        };
        let conn = if source == READER {
            &mut self.reader
        } else {
            &mut self.cmd
        };
        if ready.writable {
            conn.on_writable(registry, now);
        }
        if ready.readable {
            conn.on_readable(registry, now);
        }
    }

    /// When [`Node::deadline`] is due next.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.cmd.next_deadline(),
            self.reader.next_deadline(),
            Some(self.next_refresh.min(self.next_reap)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Reconnects, reply timeouts, the liveness refresh and the reaping.
    pub fn deadline(&mut self, now: Instant) {
        let Some(registry) = &self.registry else {
            return;
        };
        self.cmd.on_timeout(registry, now);
        self.reader.on_timeout(registry, now);
        if now >= self.next_refresh {
            self.next_refresh = now + REFRESH_EVERY;
            if self.epoch.is_some() {
                let command = self.commands.refresh(&self.id, LIVENESS_TTL);
                self.send(Pending::Refresh, &command, now);
            }
        }
        if now >= self.next_reap {
            self.next_reap = now + REAP_EVERY;
            if self.epoch.is_some() {
                let command = self.commands.reap(EVENT_BOUND);
                self.send(Pending::Reap, &command, now);
            }
        }
    }

    /// Queues a public message for this turn's publish.
    pub fn publish(&mut self, conn: ConnId, message: NewMessage) {
        self.round.senders.push(Some(conn));
        self.round.messages.push(message);
    }

    /// Claims `name` for `conn`'s `join`.
    pub fn claim(&mut self, conn: ConnId, name: &str, now: Instant) -> Result<(), Unreachable> {
        let command = self.commands.claim(&self.id, name, EVENT_BOUND);
        self.ask(Pending::Claim(Some(conn), name.to_owned()), &command, now)
    }

    /// Renames `conn` from `old` to `new`.
    pub fn rename(
        &mut self,
        conn: ConnId,
        old: &str,
        new: &str,
        now: Instant,
    ) -> Result<(), Unreachable> {
        let command = self.commands.rename(&self.id, old, new, EVENT_BOUND);
        self.ask(Pending::Rename(Some(conn), new.to_owned()), &command, now)
    }

    /// Frees `name`, which a user of this node held (it left).
    pub fn release(&mut self, name: &str, now: Instant) {
        let command = self.commands.release(&self.id, name, EVENT_BOUND);
        // If Redis cannot be reached the name stays claimed until this
        // node is declared dead, or until it reconnects and the snapshot
        // finds it was: then every name it held is freed.
        self.send(Pending::Release(name.to_owned()), &command, now);
    }

    /// Sends a DM through the recipient's node.
    pub fn dm(&mut self, conn: ConnId, dm: NewDm, now: Instant) -> Result<(), Unreachable> {
        let command = self.commands.dm(&self.id, &dm, CID_TTL, EVENT_BOUND);
        self.ask(Pending::Dm(Some(conn), dm), &command, now)
    }

    /// Asks for a page of history older than the node keeps.
    pub fn page(
        &mut self,
        conn: ConnId,
        before: u64,
        limit: usize,
        now: Instant,
    ) -> Result<(), Unreachable> {
        let command = self.commands.page(before, limit);
        self.ask(Pending::Page(Some(conn)), &command, now)
    }

    /// `conn` closed: answers for it are dropped (its id may be reused),
    /// and a name claimed for it meanwhile is freed.
    pub fn forget(&mut self, conn: ConnId) {
        let gone = |slot: &mut Option<ConnId>| {
            if *slot == Some(conn) {
                *slot = None;
            }
        };
        for pending in self.pending.values_mut() {
            if let Pending::Publish(round) = pending {
                round.senders.iter_mut().for_each(gone);
            } else if let Some(slot) = pending.conn_mut() {
                gone(slot);
            }
        }
        self.round.senders.iter_mut().for_each(gone);
    }

    /// Publishes the turn's messages in one call, and writes what waits.
    /// When Redis cannot be asked, each sender hears `unavailable` (as
    /// [`Node::take_event`] tells).
    pub fn end_of_turn(&mut self, now: Instant) {
        if !self.round.messages.is_empty() {
            let round = std::mem::take(&mut self.round);
            if self.is_up() {
                let command = self
                    .commands
                    .publish(&round.messages, HISTORY_BOUND, CID_TTL);
                let tag = self.take_tag();
                if self.cmd.push(tag, &command, now).is_ok() {
                    self.pending.insert(tag, Pending::Publish(round));
                } else {
                    self.refuse_all(round, None);
                }
            } else {
                self.refuse_all(round, None);
            }
        }
        if let Some(registry) = &self.registry {
            self.cmd.flush(registry, now);
            self.reader.flush(registry, now);
        }
    }

    /// The next thing to tell the chat, if any.
    pub fn take_event(&mut self, now: Instant) -> Option<NodeEvent> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            let (event, on_reader) = match self.cmd.take_event() {
                Some(event) => (event, false),
                None => (self.reader.take_event()?, true),
            };
            self.handle(event, on_reader, now);
        }
    }

    /// Makes sense of one link event.
    fn handle(&mut self, event: Event<u64>, on_reader: bool, now: Instant) {
        match event {
            Event::Up if on_reader => {
                self.reading = false;
                self.read(now);
                // Redis is back: the command connection need not wait out
                // its backoff, or the node would deliver messages while
                // still refusing requests.
                self.retry_waiting(now);
            }
            Event::Up => {
                self.retry_waiting(now);
                match self.down_since.take() {
                    Some(since) => log::info!(
                        "redis: connected again after {:.1} s",
                        now.duration_since(since).as_secs_f64()
                    ),
                    None => log::info!("redis: connected"),
                }
                self.take_snapshot(now);
                for name in std::mem::take(&mut self.unreleased) {
                    self.release(&name, now);
                }
            }
            // Logged once per outage: the link retries with backoff, and a
            // line per attempt would bury the log.
            Event::Down { reason } if on_reader => {
                self.reading = false;
                log::debug!("redis (reader): {reason}");
            }
            Event::Down { reason } if self.down_since.is_none() => {
                self.down_since = Some(now);
                log::warn!(
                    "redis: {reason}; requests that need it are answered unavailable until it is back"
                );
            }
            Event::Down { reason } => log::debug!("redis: still unreachable: {reason}"),
            Event::Reply { tag, frame } => {
                if let Some(pending) = self.pending.remove(&tag) {
                    self.reply(pending, frame, now);
                }
            }
            Event::Lost { tag, .. } => {
                if let Some(pending) = self.pending.remove(&tag) {
                    self.lost(pending);
                }
            }
        }
    }

    /// A connection came up, so Redis is reachable: the other one, if it
    /// waits to reconnect, tries at once (for the one that is up this
    /// changes nothing).
    fn retry_waiting(&mut self, now: Instant) {
        if let Some(registry) = &self.registry {
            self.cmd.retry_now(registry, now);
            self.reader.retry_now(registry, now);
        }
    }

    /// Asks for the cluster's state (and registers the node).
    fn take_snapshot(&mut self, now: Instant) {
        let command = self
            .commands
            .snapshot(&self.id, LIVENESS_TTL, &random_token(), self.keep);
        self.send(Pending::Snapshot, &command, now);
    }

    /// A reply to `pending`.
    fn reply(&mut self, pending: Pending, frame: Frame, now: Instant) {
        match pending {
            Pending::Snapshot => match scripts::parse_snapshot(frame) {
                Ok(snapshot) => self.snapshot(snapshot, now),
                Err(err) => self.failed("snapshot", &err),
            },
            Pending::Refresh => match scripts::parse_alive(frame) {
                // Declared dead while connected (a long stall): a new
                // snapshot registers the node again and resets the chat.
                Ok(false) => {
                    log::warn!("redis: this node was declared dead; starting afresh");
                    self.take_snapshot(now);
                }
                Ok(true) => {}
                Err(err) => self.failed("refresh", &err),
            },
            Pending::Reap => match scripts::parse_reap(frame) {
                Ok(left) => {
                    for (node, name) in left {
                        log::info!("node {node} is gone: {name} left");
                    }
                }
                Err(err) => self.failed("reap", &err),
            },
            Pending::Release(_) => {
                if let Err(err) = scripts::parse_release(frame) {
                    self.failed("release", &err);
                }
            }
            Pending::Read => {
                self.reading = false;
                match self.commands.parse_read(&self.id, frame) {
                    Ok(deliveries) => {
                        self.cursor.advance(&deliveries);
                        if !deliveries.is_empty() {
                            self.events.push_back(NodeEvent::Streamed(deliveries));
                        }
                    }
                    // The next read asks again from the same cursor.
                    Err(err) => self.failed("read", &err),
                }
                self.read(now);
            }
            Pending::Publish(round) => self.published(round, frame),
            Pending::Claim(conn, name) => {
                let claim = scripts::parse_claim(frame);
                if conn.is_none() && matches!(claim, Ok(Claim::Claimed { .. })) {
                    self.release(&name, now);
                }
                self.answer(conn, claim.map(Answer::Claim), None);
            }
            Pending::Rename(conn, name) => {
                let rename = scripts::parse_rename(frame);
                if conn.is_none() && matches!(rename, Ok(Rename::Renamed)) {
                    self.release(&name, now);
                }
                self.answer(conn, rename.map(Answer::Rename), None);
            }
            Pending::Dm(conn, dm) => {
                let cid = dm.cid.clone().and_then(Cid::new);
                let outcome = scripts::parse_dm(frame).map(|outcome| Answer::Dm(dm, outcome));
                self.answer(conn, outcome, cid);
            }
            Pending::Page(conn) => {
                self.answer(conn, scripts::parse_page(frame).map(Answer::Page), None);
            }
        }
    }

    /// A request whose connection to Redis died before its reply. What
    /// may have happened is undone where it can be (a claim that may have
    /// succeeded is released), and the requester hears `unavailable`.
    fn lost(&mut self, pending: Pending) {
        match pending {
            Pending::Snapshot | Pending::Refresh | Pending::Reap => {}
            Pending::Read => self.reading = false,
            Pending::Release(name) => self.unreleased.push(name),
            Pending::Publish(round) => {
                // The outage itself is logged once, by `handle`.
                self.refuse_all(round, None);
            }
            Pending::Claim(conn, name) | Pending::Rename(conn, name) => {
                self.unreleased.push(name);
                self.unavailable(conn, None);
            }
            Pending::Dm(conn, dm) => self.unavailable(conn, dm.cid.and_then(Cid::new)),
            Pending::Page(conn) => self.unavailable(conn, None),
        }
    }

    /// The snapshot arrived: the first one makes the node ready; a later
    /// one (after a reconnect) resets the chat if Redis forgot the node or
    /// its history.
    fn snapshot(&mut self, snapshot: Snapshot, now: Instant) {
        let reset = match &self.epoch {
            None => false,
            Some(epoch) if *epoch == snapshot.epoch && snapshot.was_registered => return,
            Some(epoch) if *epoch != snapshot.epoch => {
                log::warn!(
                    "redis lost the chat's data: new epoch {} (was {epoch})",
                    snapshot.epoch
                );
                true
            }
            Some(_) => {
                log::warn!("redis: this node had been declared dead; starting afresh");
                true
            }
        };
        self.epoch = Some(snapshot.epoch.clone());
        self.cursor.message = snapshot.last_id;
        self.cursor.presence.clone_from(&snapshot.presence);
        self.events.push_back(NodeEvent::Ready { snapshot, reset });
        // The reader may have been waiting for the first snapshot.
        self.read(now);
    }

    /// Starts the next `XREAD`, unless one is in flight or the node has no
    /// snapshot yet (it would not know where to read from).
    fn read(&mut self, now: Instant) {
        if self.reading || self.epoch.is_none() || !self.reader.is_up() {
            return;
        }
        let command = self
            .commands
            .read(&self.id, &self.cursor, READ_BLOCK, READ_COUNT);
        let tag = self.take_tag();
        if self.reader.push(tag, &command, now).is_ok() {
            self.pending.insert(tag, Pending::Read);
            self.reading = true;
        }
    }

    /// The publish script's reply: nothing to do for a new message (the
    /// stream delivers it to everyone, its sender included); a resent one
    /// is acknowledged to its sender alone.
    fn published(&mut self, round: Round, frame: Frame) {
        let outcomes = match scripts::parse_publish(frame) {
            Ok(outcomes) if outcomes.len() == round.messages.len() => outcomes,
            Ok(_) => {
                let err = ReplyError("a publish reply of the wrong length".into());
                return self.refuse_all(round, Some(&err));
            }
            Err(err) => return self.refuse_all(round, Some(&err)),
        };
        let messages = round.senders.into_iter().zip(round.messages);
        for ((sender, message), outcome) in messages.zip(outcomes) {
            if let (Some(conn), Published::Duplicate { id, stored }) = (sender, outcome) {
                self.events.push_back(NodeEvent::Answer {
                    conn,
                    answer: Answer::Resent(id, stored, message),
                });
            }
        }
    }

    /// Tells every sender of a round that it could not be published.
    /// `err` is a reply that made no sense, worth a log line; `None` when
    /// Redis could not be reached, which the log has said already.
    fn refuse_all(&mut self, round: Round, err: Option<&ReplyError>) {
        if let Some(err) = err {
            log::error!("redis: a round of messages was not published: {err}");
        }
        for (sender, message) in round.senders.into_iter().zip(round.messages) {
            self.unavailable(sender, message.cid.and_then(Cid::new));
        }
    }

    /// Hands `answer` to the chat, or `unavailable` (with `cid`) if the
    /// reply made no sense.
    fn answer(
        &mut self,
        conn: Option<ConnId>,
        answer: Result<Answer, ReplyError>,
        cid: Option<Cid>,
    ) {
        match answer {
            Ok(answer) => {
                if let Some(conn) = conn {
                    self.events.push_back(NodeEvent::Answer { conn, answer });
                }
            }
            Err(err) => {
                self.failed("request", &err);
                self.unavailable(conn, cid);
            }
        }
    }

    /// Tells `conn` (if still there) that Redis could not do it.
    fn unavailable(&mut self, conn: Option<ConnId>, cid: Option<Cid>) {
        if let Some(conn) = conn {
            self.events.push_back(NodeEvent::Answer {
                conn,
                answer: Answer::Unavailable(cid),
            });
        }
    }

    /// Logs a reply that makes no sense (a bug, or another program's data
    /// under the chat's keys); the request is treated as failed.
    fn failed(&self, what: &str, err: &ReplyError) {
        log::error!("redis: {what}: {err}");
    }

    /// Sends a request nobody waits for; dropped if Redis cannot be asked.
    fn send(&mut self, pending: Pending, command: &[Vec<u8>], now: Instant) {
        let tag = self.take_tag();
        match self.cmd.push(tag, command, now) {
            Ok(()) => {
                self.pending.insert(tag, pending);
            }
            Err(_) => {
                if let Pending::Release(name) = pending {
                    self.unreleased.push(name);
                }
            }
        }
    }

    /// Sends a request a connection waits for; `Unavailable` if Redis
    /// cannot be asked now.
    fn ask(
        &mut self,
        pending: Pending,
        command: &[Vec<u8>],
        now: Instant,
    ) -> Result<(), Unreachable> {
        if !self.is_up() {
            return Err(Unreachable);
        }
        let tag = self.take_tag();
        self.cmd.push(tag, command, now).map_err(|_| Unreachable)?;
        self.pending.insert(tag, pending);
        Ok(())
    }

    fn take_tag(&mut self) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        tag
    }
}
