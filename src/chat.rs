//! The chat service: what the event loop serves in `mioserver`.
//!
//! It glues the transport to the room: parses each text frame, applies the
//! per-connection rate limit, hands requests to the [`Room`], and turns the
//! room's deliveries into frames, each serialized and framed once however
//! many clients receive it. It also answers `GET /healthz` and writes the
//! server's log lines (never a DM's text).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;

use tungstenite::protocol::frame::coding::CloseCode;

use crate::config::ServerConfig;
use crate::http;
use crate::protocol::{parse_request, ErrorCode, ServerMessage, Timestamp};
use crate::rate_limit::TokenBucket;
use crate::room::{Audience, Delivery, Room, RoomConfig};
use crate::server::{ConnId, Outbox, ServerHandle, Service};

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
    /// Sustained requests per second per connection (0: unlimited).
    rate_limit: f64,
    /// Requests a connection may send at once.
    rate_burst: u32,
    /// The room's output for the request at hand; kept to reuse its memory.
    deliveries: Vec<Delivery>,
}

/// What the chat service keeps about one open connection.
struct Session {
    /// The peer, for log lines.
    peer: SocketAddr,
    /// The rate limit.
    bucket: TokenBucket,
    /// Requests refused in a row for the rate limit; see [`FLOOD_STRIKES`].
    strikes: u32,
}

impl Chat {
    /// A chat with an empty room, configured from the server's settings.
    pub fn new(config: &ServerConfig) -> Self {
        Chat {
            room: Room::new(RoomConfig {
                history_len: config.history,
                max_text_chars: config.max_text_chars,
            }),
            sessions: HashMap::new(),
            rate_limit: config.rate_limit,
            rate_burst: config.rate_burst,
            deliveries: Vec::new(),
        }
    }

    /// Sends an error to one connection.
    fn refuse(conn: ConnId, code: ErrorCode, message: String, out: &mut Outbox<'_>) {
        let frame = Outbox::frame_text(ServerMessage::error(code, message).to_json());
        out.send(conn, &frame);
    }

    /// Sends what the room produced: each message serialized and framed
    /// once, then queued for each recipient.
    fn deliver(&mut self, out: &mut Outbox<'_>) {
        for Delivery { to, message } in self.deliveries.drain(..) {
            let frame = Outbox::frame_text(message.to_json());
            match to {
                Audience::One(user) => out.send(user, &frame),
                Audience::Pair(sender, recipient) => {
                    out.send(sender, &frame);
                    if recipient != sender {
                        out.send(recipient, &frame);
                    }
                }
                Audience::Everyone => {
                    for member in self.room.members() {
                        out.send(member, &frame);
                    }
                }
                Audience::EveryoneExcept(except) => {
                    for member in self.room.members().filter(|&m| m != except) {
                        out.send(member, &frame);
                    }
                }
            }
        }
    }
}

impl Service for Chat {
    fn opened(&mut self, conn: ConnId, peer: SocketAddr, out: &mut Outbox<'_>) {
        log::info!("connect from {peer} ({} online)", self.room.online());
        self.sessions.insert(
            conn,
            Session {
                peer,
                bucket: TokenBucket::new(self.rate_limit, self.rate_burst, out.now()),
                strikes: 0,
            },
        );
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
                Self::refuse(conn, ErrorCode::RateLimited, message, out);
            }
            return;
        }
        session.strikes = 0;
        let peer = session.peer;
        let was_joined = self.room.is_joined(conn);
        match parse_request(text) {
            Ok(request) => self
                .room
                .handle(conn, request, Timestamp::now(), &mut self.deliveries),
            Err(err) => Self::refuse(conn, err.code(), err.describe(), out),
        }
        if !was_joined {
            if let Some(name) = self.room.name(conn) {
                out.admit(conn);
                log::info!("{peer} joined as {name} ({} online)", self.room.online());
            }
        }
        self.deliver(out);
    }

    fn closed(&mut self, conn: ConnId, out: &mut Outbox<'_>) {
        let Some(session) = self.sessions.remove(&conn) else {
            return;
        };
        let name = self.room.name(conn).map(str::to_owned);
        self.room
            .leave(conn, Timestamp::now(), &mut self.deliveries);
        let online = self.room.online();
        match name {
            Some(name) => log::info!("disconnect {} ({name}) ({online} online)", session.peer),
            None => log::info!("disconnect {} ({online} online)", session.peer),
        }
        self.deliver(out);
    }

    fn http_get(&mut self, path: &str) -> Vec<u8> {
        if path == "/healthz" || path.starts_with("/healthz?") {
            let body = format!(r#"{{"status":"ok","online":{}}}"#, self.room.online());
            return http::response(200, "", "application/json", body.as_bytes());
        }
        http::response(
            426,
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            "text/plain; charset=utf-8",
            b"This is a WebSocket chat server: connect with a WebSocket client.\n",
        )
    }
}

impl ServerHandle {
    /// Starts a chat server per `config` on its own thread.
    pub fn start(config: ServerConfig) -> io::Result<ServerHandle> {
        let chat = Chat::new(&config);
        ServerHandle::spawn(config, chat)
    }
}
