//! The chat service: what the event loop serves in `mioserver`.
//!
//! It glues the transport to the room: parses each text frame, applies the
//! per-connection rate limit, hands requests to the [`Room`], and turns the
//! room's deliveries into frames, each serialized and framed once however
//! many clients receive it. It also answers `GET /healthz`, hands the web
//! page's paths to `web/`, counts for `GET /metrics` (`metrics.rs`) and
//! writes the server's log lines (never a DM's text).
//!
//! Public messages are stored before they are shown: the room's output
//! goes through the [`Publisher`], which holds it until the store (on its
//! own thread, see `store/worker.rs`) has committed what it depends on.
//! The loop's two hooks drive it: at the end of every turn the turn's
//! messages go to the store as one commit, and when the store wakes the
//! loop what it finished is sent (`docs/durability.md`).
//!
//! In cluster mode (`--redis`) Redis stands where the store and the
//! publisher stand: see `service/cluster.rs`.
//!
//! A connection speaks JSON unless its first text frame is not a JSON
//! object: then it is in plain-text mode for good (`plain.rs`), and gets
//! readable lines instead of JSON.

mod cluster;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::collector::Collector;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::chat::cluster::node::Node;
use crate::chat::config::ServerConfig;
use crate::chat::metrics::{Backing, ChatMetrics};
use crate::chat::plain::{self, Line};
use crate::chat::publish::{Publisher, Release};
use crate::chat::room::{Audience, Delivery, Room, RoomConfig};
use crate::chat::store::worker::{Job, Worker};
use crate::chat::store::{self, Commit, StoreError, MAIN_ROOM, RESERVE_BLOCK};
use crate::chat::web;
use crate::evloop::handle::ServerHandle;
use crate::evloop::http;
use crate::evloop::outqueue::{Channel, FrameRef};
use crate::evloop::service::{Attach, ConnId, Outbox, Readiness, Service};
use crate::proto::protocol::{
    parse_request, ErrorCode, ParseError, Request, ServerMessage, Timestamp,
};
use crate::proto::rate_limit::TokenBucket;

/// Requests refused in a row for the rate limit before the connection is
/// closed with 1008 as a flood. A client that backs off after a few
/// `rate_limited` errors is fine; one that keeps sending at full speed
/// after this many is not listening.
const FLOOD_STRIKES: u32 = 50;

/// The chat application.
pub struct Chat {
    /// Users, names, history and routing: pure logic.
    room: Room,
    /// Per-connection state the room does not need.
    sessions: HashMap<ConnId, Session>,
    /// Time from the upgrade to a successful `join`, else close 1008.
    join_timeout: Duration,
    /// The room's output for the request at hand; kept to reuse its memory.
    deliveries: Vec<Delivery>,
    /// Where public messages are kept before they are shown.
    backend: Backend,
    /// What the publisher let out, to send; kept to reuse its memory.
    releases: Vec<Release>,
    /// How many sessions are in plain-text mode. While none are, a
    /// broadcast skips looking up each recipient's mode.
    plain_sessions: usize,
    /// Joins and messages, for `GET /metrics`.
    metrics: ChatMetrics,
}

/// Where public messages are kept before they are shown.
// There is one per server, so the sizes of the variants do not matter,
// and boxing either would add an indirection to every request.
#[allow(clippy::large_enum_variant)]
enum Backend {
    /// A single server: the store, with the publisher holding the room's
    /// output until it has what it needs.
    Local(Publisher),
    /// A node of a cluster: Redis.
    Cluster(Node),
}

/// What the chat service keeps about one open connection.
struct Session {
    /// The peer, for log lines.
    peer: SocketAddr,
    /// The rate limit.
    bucket: TokenBucket,
    /// Requests refused in a row for the rate limit; see [`FLOOD_STRIKES`].
    strikes: u32,
    /// Which language the client speaks, decided by its first frame.
    mode: Mode,
    /// A `join` or `nick` waiting for Redis's answer (cluster mode).
    waiting: Option<Request>,
    /// Requests that came while one was waiting: handled, in order, once
    /// it is answered, as a single server would have.
    parked: VecDeque<Request>,
}

/// The two ways a client can talk to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No text frame yet.
    Undecided,
    /// JSON objects both ways (PROTOCOL.md).
    Json,
    /// Lines typed by a person (plain-text mode).
    Plain,
}

impl Mode {
    /// The broadcast channel of the clients who speak it: everyone's
    /// messages go out once per language.
    fn channel(self) -> Channel {
        match self {
            Mode::Plain => 1,
            Mode::Json | Mode::Undecided => 0,
        }
    }
}

/// One server message on its way to several recipients: encoded at most
/// once per mode, on first use, into the round's batch.
struct Outgoing<'m, 'round> {
    message: &'m ServerMessage,
    /// The JSON frame.
    json: Option<FrameRef<'round>>,
    /// The plain-text frames, one per line.
    plain: Option<Vec<FrameRef<'round>>>,
}

impl<'round> Outgoing<'_, 'round> {
    /// Sends the message to one of several recipients.
    fn send(&mut self, out: &mut Outbox<'round>, to: ConnId, mode: Mode) {
        if mode == Mode::Plain {
            for &frame in self.plain_frames(out) {
                out.send(to, frame);
            }
        } else {
            let frame = self.json_frame(out);
            out.send(to, frame);
        }
    }

    /// Broadcasts the message to every joined client (but `except`), in the
    /// language of each; the plain-text frames only if anyone reads them.
    fn broadcast(&mut self, out: &mut Outbox<'round>, any_plain: bool, except: Option<ConnId>) {
        let frame = self.json_frame(out);
        out.broadcast(Mode::Json.channel(), frame, except);
        if any_plain {
            for &frame in self.plain_frames(out) {
                out.broadcast(Mode::Plain.channel(), frame, except);
            }
        }
    }

    /// Sends the message to its only recipient, straight into its queue.
    fn send_alone(&self, out: &mut Outbox<'round>, to: ConnId, mode: Mode) {
        if mode == Mode::Plain {
            for line in plain::render(self.message) {
                out.send_text(to, &line);
            }
        } else {
            out.send_text(to, &self.message.to_json());
        }
    }

    /// The JSON frame, encoded into the round's batch on first use.
    fn json_frame(&mut self, out: &mut Outbox<'round>) -> FrameRef<'round> {
        let message = self.message;
        *self
            .json
            .get_or_insert_with(|| out.frame_text(&message.to_json()))
    }

    /// The plain-text frames, encoded on first use.
    fn plain_frames(&mut self, out: &mut Outbox<'round>) -> &[FrameRef<'round>] {
        let message = self.message;
        self.plain.get_or_insert_with(|| {
            plain::render(message)
                .iter()
                .map(|line| out.frame_text(line))
                .collect()
        })
    }
}

impl Chat {
    /// A chat on the history `config.db` names (created if missing),
    /// configured from the server's settings. It logs what the store
    /// holds, and reserves the first block of ids before anything is said.
    pub fn open(config: &ServerConfig) -> Result<Self, StoreError> {
        if let Some(url) = &config.redis {
            return Ok(Chat::clustered(config, url));
        }
        let mut store = store::open(&config.db, config.sync, config.history)?;
        let summary = store.summary(MAIN_ROOM)?;
        // Every id up to the reservation may have been handed out (a DM
        // leaves no other trace), so ids go on above it.
        let next_id = store.reserved_through().max(summary.last_id) + 1;
        let mut kept = store.before(MAIN_ROOM, u64::MAX, config.history.saturating_add(1))?;
        let dropped_through = if kept.len() > config.history {
            kept.remove(0).id
        } else {
            0
        };
        let reserved = next_id - 1 + RESERVE_BLOCK;
        store.append(&[Commit {
            room: MAIN_ROOM.into(),
            messages: Vec::new(),
            reserve_through: reserved,
        }])?;
        log::info!(
            "history in {}: {} messages, last id {}, epoch {}",
            config.db.display(),
            summary.messages,
            summary.last_id,
            store.epoch()
        );
        let mut room = Room::new(Chat::room_config(config), store.epoch().to_owned());
        room.restore(next_id, kept, dropped_through);
        let keeps_everything = store.keeps_everything();
        let publisher = Publisher::new(
            Worker::new(store),
            keeps_everything,
            config.max_resume,
            reserved,
        );
        Ok(Chat::with(config, room, Backend::Local(publisher)))
    }

    /// A chat of `room` on `backend`, with the server's settings.
    fn with(config: &ServerConfig, room: Room, backend: Backend) -> Chat {
        Chat {
            room,
            sessions: HashMap::new(),
            join_timeout: config.join_timeout,
            deliveries: Vec::new(),
            backend,
            releases: Vec::new(),
            plain_sessions: 0,
            metrics: ChatMetrics::default(),
        }
    }

    /// The room's settings from the server's.
    fn room_config(config: &ServerConfig) -> RoomConfig {
        RoomConfig {
            history_len: config.history,
            max_text_chars: config.max_text_chars,
            max_resume: config.max_resume,
            rate_limit: config.rate(),
        }
    }

    /// `GET /healthz`: the users of this server; in a cluster, whether
    /// Redis is reachable too, with 503 while it is not, so that a load
    /// balancer sends new users to another node.
    fn health(&self) -> Vec<u8> {
        let online = self.room.online();
        let (status, body) = match &self.backend {
            Backend::Local(_) => (200, format!(r#"{{"status":"ok","online":{online}}}"#)),
            Backend::Cluster(node) if node.is_up() => (
                200,
                format!(r#"{{"status":"ok","online":{online},"redis":"up"}}"#),
            ),
            Backend::Cluster(_) => (
                503,
                format!(r#"{{"status":"degraded","online":{online},"redis":"down"}}"#),
            ),
        };
        http::response(status, "", "application/json", body.as_bytes())
    }

    /// Queues an error for one connection (sent by [`deliver`](Self::deliver)).
    fn refuse(&mut self, conn: ConnId, code: ErrorCode, message: String) {
        self.deliveries.push(Delivery {
            to: Audience::One(conn),
            message: ServerMessage::error(code, message),
        });
    }

    /// Hands what the room produced for a request of `conn` (and the store
    /// `query` it needs) to the publisher, and sends what it lets out.
    fn deliver(&mut self, conn: ConnId, query: Option<Job>, out: &mut Outbox<'_>) {
        match &mut self.backend {
            Backend::Local(publisher) => publisher.admit(
                conn,
                self.deliveries.drain(..),
                query,
                &mut self.room,
                &mut self.releases,
            ),
            Backend::Cluster(_) => cluster::admit(self.deliveries.drain(..), &mut self.releases),
        }
        self.send(out);
    }

    /// Sends what the publisher let out, each message encoded at most once
    /// per mode. A message for everyone is a broadcast: its cost does not
    /// grow with the number of members.
    fn send(&mut self, out: &mut Outbox<'_>) {
        let sessions = &self.sessions;
        let any_plain = self.plain_sessions > 0;
        // The common case, nobody in plain-text mode, must not pay a hash
        // lookup per recipient: check the count first.
        let mode_of = |user: ConnId| match any_plain.then(|| sessions.get(&user)).flatten() {
            Some(session) => session.mode,
            None => Mode::Json,
        };
        let online = self.room.online();
        for release in self.releases.drain(..) {
            let Delivery { to, message } = match release {
                Release::Send(delivery) => delivery,
                Release::Subscribe(user) => {
                    out.subscribe(user, mode_of(user).channel());
                    continue;
                }
            };
            self.metrics.delivered(&message, &to, online);
            let mut outgoing = Outgoing {
                message: &message,
                json: None,
                plain: None,
            };
            match to {
                Audience::One(user) => outgoing.send_alone(out, user, mode_of(user)),
                Audience::Pair(sender, recipient) => {
                    outgoing.send(out, sender, mode_of(sender));
                    if recipient != sender {
                        outgoing.send(out, recipient, mode_of(recipient));
                    }
                }
                Audience::Everyone => outgoing.broadcast(out, any_plain, None),
                Audience::EveryoneExcept(except) => {
                    outgoing.broadcast(out, any_plain, Some(except))
                }
            }
        }
    }

    /// What the client asks for with this frame, in its own mode; `None`
    /// when the frame was answered on the spot.
    fn understand(&mut self, conn: ConnId, text: &str, out: &mut Outbox<'_>) -> Option<Request> {
        let joined = self.room.is_joined(conn);
        let session = self.sessions.get_mut(&conn)?;
        if session.mode != Mode::Plain {
            match parse_request(text) {
                Err(ParseError::NotAnObject) if session.mode == Mode::Undecided => {
                    session.mode = Mode::Plain;
                    self.plain_sessions += 1;
                }
                Ok(request) => {
                    session.mode = Mode::Json;
                    return Some(request);
                }
                Err(err) => {
                    session.mode = Mode::Json;
                    self.refuse(conn, err.code(), err.describe());
                    return None;
                }
            }
        }
        match plain::interpret(joined, text) {
            Line::Request(request) => Some(request),
            Line::Reply(lines) => {
                for line in lines {
                    out.send_text(conn, &line);
                }
                None
            }
            Line::Quit => {
                out.close(conn, CloseCode::Normal, "bye");
                None
            }
            Line::Blank => None,
        }
    }
}

impl Chat {
    /// Handles one request of `conn`: the room's answer, through the
    /// backend.
    fn request(&mut self, conn: ConnId, request: Request, out: &mut Outbox<'_>) {
        let request = match &self.backend {
            Backend::Local(_) => {
                self.metrics.received(&request);
                request
            }
            Backend::Cluster(_) => {
                let Some(session) = self.sessions.get_mut(&conn) else {
                    return;
                };
                if session.waiting.is_some() {
                    session.parked.push_back(request);
                    return;
                }
                self.metrics.received(&request);
                match self.cluster_request(conn, request, out) {
                    Some(request) => request,
                    None => return self.deliver(conn, None, out),
                }
            }
        };
        self.handle(conn, request, out);
    }

    /// Hands a request to the room, logs a join or a rename, and delivers
    /// the room's answer.
    fn handle(&mut self, conn: ConnId, request: Request, out: &mut Outbox<'_>) {
        let query = match &self.backend {
            Backend::Local(publisher) => publisher.query(&self.room, &request),
            Backend::Cluster(_) => None,
        };
        let was_joined = self.room.is_joined(conn);
        // A rename is logged like a join or a leave; the old name is
        // copied only for a `nick`, never on the hot path of a `say`.
        let renaming = matches!(request, Request::Nick { .. })
            .then(|| self.room.name(conn).map(str::to_owned))
            .flatten();
        self.room
            .handle(conn, request, Timestamp::now(), &mut self.deliveries);
        // The peer is looked up only for the log lines, not for every `say`.
        let peer = || self.sessions.get(&conn).map(|session| session.peer);
        if let (Some(old), Some(new)) = (renaming, self.room.name(conn)) {
            if let (true, Some(peer)) = (old != new, peer()) {
                log::info!("{peer} renamed {old} to {new}");
            }
        }
        if !was_joined {
            // The newcomer hears broadcasts once its welcome is sent (the
            // publisher says when): see `publish.rs`.
            if let (Some(name), Some(peer)) = (self.room.name(conn), peer()) {
                out.set_timer(conn, None);
                self.metrics.joined();
                log::info!("{peer} joined as {name} ({} online)", self.room.online());
            }
        }
        self.deliver(conn, query, out);
    }
}

impl Service for Chat {
    fn opened(&mut self, conn: ConnId, peer: SocketAddr, out: &mut Outbox<'_>) {
        log::info!("connect from {peer} ({} online)", self.room.online());
        self.sessions.insert(
            conn,
            Session {
                peer,
                bucket: self.room.rate_limit().bucket(out.now()),
                strikes: 0,
                mode: Mode::Undecided,
                waiting: None,
                parked: VecDeque::new(),
            },
        );
        // The join deadline: `timer` closes the connection unless a
        // successful join clears it first.
        out.set_timer(conn, Some(out.now() + self.join_timeout));
    }

    fn text(&mut self, conn: ConnId, text: &str, out: &mut Outbox<'_>) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        if !session.bucket.try_take(out.now()) {
            session.strikes += 1;
            if session.strikes > FLOOD_STRIKES {
                log::info!("{}: closed for flooding", session.peer);
                out.close(conn, CloseCode::Policy, "flooding");
            } else {
                let message = "slow down: too many requests".to_owned();
                self.refuse(conn, ErrorCode::RateLimited, message);
                self.deliver(conn, None, out);
            }
            return;
        }
        session.strikes = 0;
        match self.understand(conn, text, out) {
            Some(request) => self.request(conn, request, out),
            None => self.deliver(conn, None, out),
        }
    }

    fn binary(&mut self, conn: ConnId, _data: &[u8], out: &mut Outbox<'_>) {
        out.close(
            conn,
            CloseCode::Unsupported,
            "binary frames are not accepted",
        );
    }

    fn timer(&mut self, conn: ConnId, out: &mut Outbox<'_>) {
        // The only timer the chat sets is the join deadline, and joining
        // clears it.
        out.close(conn, CloseCode::Policy, "join timeout");
    }

    fn closed(&mut self, conn: ConnId, out: &mut Outbox<'_>) {
        let Some(session) = self.sessions.remove(&conn) else {
            return;
        };
        if session.mode == Mode::Plain {
            self.plain_sessions -= 1;
        }
        let name = self.room.name(conn).map(str::to_owned);
        match &mut self.backend {
            Backend::Local(publisher) => publisher.forget(conn),
            Backend::Cluster(node) => {
                node.forget(conn);
                if let Some(name) = &name {
                    node.release(name, out.now());
                }
            }
        }
        self.room
            .leave(conn, Timestamp::now(), &mut self.deliveries);
        let online = self.room.online();
        match name {
            Some(name) => log::info!("disconnect {} ({name}) ({online} online)", session.peer),
            None => log::info!("disconnect {} ({online} online)", session.peer),
        }
        self.deliver(conn, None, out);
    }

    fn attach(&mut self, attach: Attach) {
        match &mut self.backend {
            Backend::Local(publisher) => publisher.start(attach.wakeup),
            Backend::Cluster(node) => node.attach(attach.registry, std::time::Instant::now()),
        }
    }

    fn woken(&mut self, out: &mut Outbox<'_>) {
        if let Backend::Local(publisher) = &mut self.backend {
            publisher.pump(&mut self.room, &mut self.releases);
        }
        self.send(out);
    }

    fn source_ready(&mut self, source: usize, ready: Readiness, out: &mut Outbox<'_>) {
        if let Backend::Cluster(node) = &mut self.backend {
            node.ready(source, ready, out.now());
            self.node_events(out);
        }
    }

    fn next_deadline(&self) -> Option<std::time::Instant> {
        match &self.backend {
            Backend::Local(_) => None,
            Backend::Cluster(node) => node.next_deadline(),
        }
    }

    fn deadline(&mut self, out: &mut Outbox<'_>) {
        if let Backend::Cluster(node) = &mut self.backend {
            node.deadline(out.now());
            self.node_events(out);
        }
    }

    fn end_of_turn(&mut self, out: &mut Outbox<'_>) {
        match &mut self.backend {
            Backend::Local(publisher) => {
                publisher.pump(&mut self.room, &mut self.releases);
                self.send(out);
            }
            Backend::Cluster(node) => {
                node.end_of_turn(out.now());
                self.node_events(out);
            }
        }
    }

    fn metrics(&self) -> Option<Box<dyn Collector>> {
        let backing = match &self.backend {
            Backend::Local(publisher) => Backing::Store(publisher.store_metrics()),
            Backend::Cluster(node) => Backing::Redis { up: node.is_up() },
        };
        Some(self.metrics.snapshot(self.room.online(), backing))
    }

    fn http_get(&mut self, path: &str) -> Vec<u8> {
        if let Some(response) = web::answer(path) {
            return response;
        }
        if path == "/healthz" || path.starts_with("/healthz?") {
            return self.health();
        }
        http::response(
            426,
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            "text/plain; charset=utf-8",
            b"This is a WebSocket chat server: connect with a WebSocket client.\n",
        )
    }
}

/// Starts a chat server per `config` on its own thread.
pub fn start(config: ServerConfig) -> io::Result<ServerHandle> {
    let chat = Chat::open(&config).map_err(io::Error::other)?;
    ServerHandle::spawn(config.net, chat)
}
