//! The baseline: the chat server a typical Rust user would write instead of
//! `mioserver`, and the peer the project claims to beat per core.
//!
//! It is written the idiomatic way, and fairly: a multi-threaded tokio
//! runtime, `tokio-tungstenite` for WebSocket, the room behind one mutex,
//! and for each client a bounded channel drained by a writer task that
//! batches whatever is queued into one flush. Every broadcast is serialized
//! once and shared (`Utf8Bytes` is reference-counted), and a client whose
//! queue is full is dropped as too slow, as `mioserver` does. It uses the
//! project's own protocol types, so it parses, validates and answers like
//! `mioserver`: `join` (with history), `say`, `dm`, `who`, `nick`, and the
//! `joined`/`left`/`renamed` events. It leaves out what the benchmarks never
//! exercise: plain-text mode, server pings, timeouts, rate limits and
//! `/healthz`.
//!
//! Run it with `cargo run --release --example tokio_baseline -- 127.0.0.1:8792`.
//! The runtime has one worker per CPU the process may use, so under
//! `taskset -c 0` it runs one worker, and is compared per core
//! (`TOKIO_WORKER_THREADS` overrides the count).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::{SinkExt, StreamExt};
use miochat::proto::protocol::{
    self, ChatMessage, ErrorCode, Request, ServerMessage, Timestamp, SERVER_ID,
};
use miochat::proto::rate_limit::RateLimit;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// The default address, next to mioserver's 8765.
const DEFAULT_ADDR: &str = "127.0.0.1:8792";

/// Messages queued for one client before it is dropped as too slow: at a
/// typical 150 bytes a message, about mioserver's 1 MiB outbound limit.
const QUEUE: usize = 7000;

/// How long to pause after a failed accept: long enough not to spin,
/// short enough that clients barely notice.
const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Public messages kept and sent on join, as mioserver's default.
const HISTORY: usize = 100;

/// The longest `text`, as mioserver's default.
const MAX_TEXT_CHARS: usize = 4000;

/// Everything shared between connections, behind one mutex.
#[derive(Default)]
struct Room {
    /// Joined clients by connection number.
    members: HashMap<u64, Member>,
    /// Connection number by name key (lowercase), for uniqueness and DMs.
    names: HashMap<String, u64>,
    /// The last public messages, oldest first.
    history: VecDeque<Arc<ChatMessage>>,
    /// The last message id given out.
    last_id: u64,
}

/// A joined client.
struct Member {
    /// Its name as it chose it.
    name: String,
    /// Its writer task's queue: the only sender, so removing the member
    /// ends the writer and closes the connection.
    queue: mpsc::Sender<Utf8Bytes>,
}

impl Room {
    /// Handles one text frame from connection `conn`. `pending` is its
    /// queue until it joins, when the room takes it.
    fn request(&mut self, conn: u64, pending: &mut Option<mpsc::Sender<Utf8Bytes>>, frame: &str) {
        let request = match protocol::parse_request(frame) {
            Ok(request) => request,
            Err(err) => {
                let error = ServerMessage::error(err.code(), err.describe());
                return self.reply(conn, pending, error);
            }
        };
        let Some(me) = self.members.get(&conn).map(|m| m.name.clone()) else {
            return match request {
                Request::Join { name, since, .. } => self.join(conn, pending, name, since),
                _ => self.reply(conn, pending, not(ErrorCode::NotJoined, "join first")),
            };
        };
        match request {
            Request::Join { .. } => self.reply(
                conn,
                pending,
                not(ErrorCode::AlreadyJoined, "already joined"),
            ),
            Request::Say { text, cid } => {
                if let Err(code) = protocol::check_text(&text, MAX_TEXT_CHARS) {
                    return self.reply(conn, pending, not(code, "text refused"));
                }
                self.last_id += 1;
                let message = Arc::new(ChatMessage {
                    id: self.last_id,
                    ts: Timestamp::now(),
                    from: me,
                    text,
                    cid,
                });
                if self.history.len() == HISTORY {
                    self.history.pop_front();
                }
                self.history.push_back(message.clone());
                self.broadcast(&ServerMessage::Message(message), None);
            }
            Request::Dm { to, text, cid } => {
                if let Err(code) = protocol::check_text(&text, MAX_TEXT_CHARS) {
                    return self.reply(conn, pending, not(code, "text refused"));
                }
                let Some(&target) = self.names.get(&protocol::name_key(&to)) else {
                    return self.reply(conn, pending, not(ErrorCode::UnknownUser, "no such user"));
                };
                self.last_id += 1;
                let dm = ServerMessage::Dm {
                    id: self.last_id,
                    ts: Timestamp::now(),
                    from: me,
                    to: self.members[&target].name.clone(),
                    text,
                    cid,
                };
                let json = Utf8Bytes::from(dm.to_json());
                self.send(target, json.clone());
                if target != conn {
                    self.send(conn, json);
                }
            }
            Request::History { before, limit } => {
                let mut messages: Vec<_> = self
                    .history
                    .iter()
                    .filter(|m| before.is_none_or(|before| m.id < before))
                    .cloned()
                    .collect();
                messages.drain(..messages.len().saturating_sub(limit));
                self.reply(conn, pending, ServerMessage::History { messages });
            }
            Request::Who => {
                let users = self.members.values().map(|m| m.name.clone()).collect();
                self.reply(conn, pending, ServerMessage::Users { users });
            }
            Request::Nick { name } => {
                if let Err(error) = self.check_name(&name, Some(conn)) {
                    return self.reply(conn, pending, *error);
                }
                self.names.remove(&protocol::name_key(&me));
                self.names.insert(protocol::name_key(&name), conn);
                if let Some(member) = self.members.get_mut(&conn) {
                    member.name = name.clone();
                }
                let renamed = ServerMessage::Renamed {
                    from: me,
                    to: name,
                    ts: Timestamp::now(),
                };
                self.broadcast(&renamed, None);
            }
        }
    }

    /// A `join` from a connection that has not joined.
    fn join(
        &mut self,
        conn: u64,
        pending: &mut Option<mpsc::Sender<Utf8Bytes>>,
        name: String,
        since: Option<u64>,
    ) {
        if let Err(error) = self.check_name(&name, None) {
            return self.reply(conn, pending, *error);
        }
        let Some(queue) = pending.take() else {
            return;
        };
        self.names.insert(protocol::name_key(&name), conn);
        self.members.insert(
            conn,
            Member {
                name: name.clone(),
                queue,
            },
        );
        let history = self
            .history
            .iter()
            .filter(|m| since.is_none_or(|since| m.id > since))
            .cloned()
            .collect();
        let welcome = ServerMessage::Welcome {
            name: name.clone(),
            users: self.members.values().map(|m| m.name.clone()).collect(),
            history,
            server: SERVER_ID.replace("mioserver", "tokio-baseline"),
            epoch: "tokio-baseline".into(),
            recovered: None,
            // It limits nothing, and says so.
            rate_limit: Some(Box::new(RateLimit {
                per_second: 0.0,
                burst: 0,
            })),
        };
        self.send(conn, Utf8Bytes::from(welcome.to_json()));
        let joined = ServerMessage::Joined {
            name,
            ts: Timestamp::now(),
            online: self.members.len(),
        };
        self.broadcast(&joined, Some(conn));
    }

    /// Checks a wanted name: valid, and not taken by anyone but `owner`.
    /// (The refusal is boxed, as clippy asks of an error as large as a
    /// `ServerMessage`.)
    fn check_name(&self, name: &str, owner: Option<u64>) -> Result<(), Box<ServerMessage>> {
        protocol::validate_name(name)
            .map_err(|why| ServerMessage::error(ErrorCode::InvalidName, why))?;
        match self.names.get(&protocol::name_key(name)) {
            Some(&taken) if Some(taken) != owner => {
                Err(Box::new(not(ErrorCode::NameTaken, "name taken")))
            }
            _ => Ok(()),
        }
    }

    /// Answers the connection that made a request, joined or not.
    fn reply(
        &mut self,
        conn: u64,
        pending: &Option<mpsc::Sender<Utf8Bytes>>,
        message: ServerMessage,
    ) {
        let json = Utf8Bytes::from(message.to_json());
        match pending {
            Some(queue) => drop(queue.try_send(json)),
            None => self.send(conn, json),
        }
    }

    /// Queues a message for one member; one that cannot take it is gone.
    fn send(&mut self, conn: u64, json: Utf8Bytes) {
        let full = self
            .members
            .get(&conn)
            .is_some_and(|member| member.queue.try_send(json).is_err());
        if full {
            self.leave(conn);
        }
    }

    /// Serializes a message once and queues it for every member but
    /// `except`; members whose queue is full are dropped.
    fn broadcast(&mut self, message: &ServerMessage, except: Option<u64>) {
        let json = Utf8Bytes::from(message.to_json());
        let slow: Vec<u64> = self
            .members
            .iter()
            .filter(|&(&conn, member)| {
                Some(conn) != except && member.queue.try_send(json.clone()).is_err()
            })
            .map(|(&conn, _)| conn)
            .collect();
        for conn in slow {
            self.leave(conn);
        }
    }

    /// Removes a member (its writer then closes the connection) and tells
    /// the others.
    fn leave(&mut self, conn: u64) {
        let Some(member) = self.members.remove(&conn) else {
            return;
        };
        self.names.remove(&protocol::name_key(&member.name));
        let left = ServerMessage::Left {
            name: member.name,
            ts: Timestamp::now(),
            online: self.members.len(),
        };
        self.broadcast(&left, None);
    }
}

/// An `error` message with a short explanation.
fn not(code: ErrorCode, why: &str) -> ServerMessage {
    ServerMessage::error(code, why)
}

/// Serves one connection: a reader (this task) and a writer task.
async fn serve(stream: TcpStream, conn: u64, room: Arc<Mutex<Room>>) {
    // Small frames must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let Ok(socket) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let (mut sink, mut source) = socket.split();
    let (queue, mut outbox) = mpsc::channel::<Utf8Bytes>(QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(json) = outbox.recv().await {
            // Feed everything already queued, then flush once: one write
            // for a burst instead of one per message.
            let mut next = Some(json);
            while let Some(json) = next {
                if sink.feed(Message::Text(json)).await.is_err() {
                    return;
                }
                next = outbox.try_recv().ok();
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        // The room dropped the queue: the client left or was too slow.
        let _ = sink.close().await;
    });
    let mut pending = Some(queue);
    let lock = || room.lock().unwrap_or_else(PoisonError::into_inner);
    while let Some(Ok(message)) = source.next().await {
        match message {
            Message::Text(frame) => lock().request(conn, &mut pending, &frame),
            Message::Close(_) => break,
            // tungstenite answers pings itself; binary frames mean nothing.
            _ => {}
        }
    }
    lock().leave(conn);
    drop(pending);
    let _ = writer.await;
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_ADDR.to_owned());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("tokio baseline listening on {addr}");
    let room = Arc::new(Mutex::new(Room::default()));
    let next_conn = AtomicU64::new(0);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let conn = next_conn.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(stream, conn, room.clone()));
            }
            // Out of descriptors and the like: keep serving the others, and
            // pause so a persistent error does not spin a core.
            Err(err) => {
                eprintln!("tokio baseline: accept: {err}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
            }
        }
    }
}
