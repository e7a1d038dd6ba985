//! One client connection: the state machine from the first byte of its HTTP
//! request to the last byte of its close, the queue of output waiting for the
//! socket, and its deadlines.
//!
//! A connection never blocks and never calls `poll`: the event loop tells it
//! when to read ([`Connection::poll_input`], through [`read_turn`]), when to
//! write ([`Connection::flush`]) and when a deadline passed
//! ([`Connection::on_deadline`]). It is generic over the socket so that tests
//! and the fuzz target can drive it with a fake stream that returns
//! `WouldBlock`.
//!
//! Its fields are private: the loop keeps its own bookkeeping about each
//! connection (timer armed, listed for settling, WRITABLE registered) in
//! its slab slot, and the connection keeps the protocol's state.
//!
//! ```text
//!  accept ──► Handshake ──upgrade──► Open ──close/error──► Closing ──► Closed
//!                 │                                            ▲
//!                 └──plain GET, bad request (HTTP response)────┘
//! ```

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::{CloseCode, Data};
use tungstenite::protocol::frame::{CloseFrame, Frame};
use tungstenite::Bytes;

use crate::evloop::config::LoopConfig;
use crate::evloop::http::{self, GetRequest, Refusal, Target};
use crate::evloop::inbound::{Inbound, Next, Payload, ReadBuffer, INVALID_UTF8};
use crate::evloop::outqueue::{Broadcast, Channel, FrameRef, OutQueue};

/// How long a closing connection may take to send its last bytes and see
/// the peer hang up before the socket is simply dropped. Two seconds lets a
/// close frame cross a slow mobile link; longer would only keep dead peers'
/// descriptors.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Bytes a closing connection reads and throws away per turn, so a peer
/// that keeps sending cannot hold the loop. 256 KiB covers a full socket
/// receive buffer on Linux's defaults.
const DISCARD_BUDGET: usize = 256 * 1024;

/// How many bytes one `read` of the request head takes at most.
const HEAD_READ_CHUNK: usize = 2 * 1024;

/// A socket a connection can drive: a non-blocking byte stream that can
/// also be half-closed. Its `Write::flush` writes what the socket itself
/// buffers (TLS records) as far as the kernel takes them, without blocking.
pub trait Socket: Read + Write {
    /// Sends FIN after the queued bytes: "I will write no more".
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// Whether the socket holds output of its own that waits for the
    /// kernel (TLS records): the loop keeps WRITABLE interest meanwhile.
    fn has_pending_output(&self) -> bool {
        false
    }
}

impl Socket for mio::net::TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// Where a connection is in its life.
#[derive(Debug)]
pub enum Phase {
    /// Reading the HTTP request head; holds the bytes so far.
    Handshake {
        /// The bytes read so far.
        head: Vec<u8>,
        /// A complete head from a trusted proxy, waiting for the host to
        /// admit its client ([`Input::Forwarded`]): what it asks for and
        /// its length in `head`.
        pending: Option<(Target, usize)>,
    },
    /// The WebSocket is open; holds what the message layer keeps between
    /// reads (nothing, for an idle connection).
    Open { inbound: Inbound },
    /// Our last bytes (an HTTP response or a close frame) are being flushed.
    /// Input is read and thrown away until the peer hangs up, so the kernel
    /// never answers unread input with a reset that would destroy them.
    Closing {
        /// Whether we have sent FIN (after the queue emptied).
        write_shut: bool,
        /// Whether the peer has hung up (read returned 0 or failed).
        peer_gone: bool,
    },
    /// Finished: the loop removes the connection at the end of the turn.
    Closed,
}

impl Phase {
    /// Whether the application may send to and hear from this connection.
    pub fn is_open(&self) -> bool {
        matches!(self, Phase::Open { .. })
    }

    /// Whether the connection is done and can be removed.
    pub fn is_closed(&self) -> bool {
        matches!(self, Phase::Closed)
    }
}

/// What reading from a connection produced. A message borrows the loop's
/// [`ReadBuffer`]: it is valid until the next read.
#[derive(Debug)]
pub enum Input<'a> {
    /// The WebSocket upgrade completed: the application may greet the client.
    Opened,
    /// A plain `GET` or `HEAD`: the caller must answer it with
    /// [`Connection::respond`], which closes the connection after the answer.
    HttpGet(GetRequest),
    /// A trusted proxy's request head is complete, on behalf of this
    /// client (`--trusted-proxy`): the caller decides whether the client
    /// may have another connection and says so with
    /// [`Connection::admit`] before reading again. [`read_turn`] does.
    Forwarded(IpAddr),
    /// A complete text message.
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping or pong (answered already), or a fragment: nothing
    /// for the application, but it counts against the turn's read budget.
    /// Read again.
    Control,
    /// Nothing more to read now (the socket would block); wait for readiness.
    Drained,
    /// The connection is no longer open; no more input will come.
    Finished,
}

/// Messages read from one connection per turn before the others get theirs.
/// Large enough that a normal client is drained in one go, small enough
/// that a flood cannot hold the loop for long.
pub const READ_BUDGET: usize = 32;

/// What a connection needs to know of the loop's turn to queue output: the
/// time, the limits, and the round's broadcasts so far. Every method that
/// queues a frame takes it and first gives the connection the broadcasts it
/// is due, so its frames keep the order they were sent in: the rule holds
/// by construction, not by the caller's care.
#[derive(Debug, Clone, Copy)]
pub struct Turn<'a> {
    /// The time of this turn (read once per turn, not per event).
    pub now: Instant,
    /// The loop's limits: the output bound, the timers.
    pub config: &'a LoopConfig,
    /// The broadcasts made so far in this round.
    pub broadcasts: &'a [Broadcast],
}

/// Whoever reads a connection for a turn: the event loop (its slab, its
/// service) or a test harness. [`read_turn`] asks it for the connection
/// before each read, because the loop lends its whole slab to the service
/// in between, and hands it each input meant for the application.
pub trait ReadHost<S> {
    /// The connection being read.
    fn connection(&mut self) -> &mut Connection<S>;

    /// An input for the application: [`Input::Opened`], [`Input::Text`],
    /// [`Input::Binary`], or [`Input::HttpGet`], which it must answer with
    /// [`Connection::respond`] before the next read.
    fn deliver(&mut self, input: Input<'_>);

    /// Whether `client`, for whom a trusted proxy opened the connection,
    /// may go on ([`Input::Forwarded`]); a refusal is answered to the
    /// proxy. A host without per-address limits admits everyone.
    fn admit(&mut self, client: IpAddr) -> Result<(), Refusal> {
        let _ = client;
        Ok(())
    }
}

/// Reads one connection for one turn, the way the event loop does: until
/// the socket would block, the connection finishes, or [`READ_BUDGET`]
/// inputs were read; then what is left of its input leaves the shared
/// `buffer`. Returns whether it was drained; if not (the budget ran out),
/// input may be waiting that no new readiness event will announce, so the
/// loop reads it again next turn.
pub fn read_turn<S: Socket>(
    host: &mut impl ReadHost<S>,
    now: Instant,
    config: &LoopConfig,
    buffer: &mut ReadBuffer,
) -> bool {
    let mut drained = false;
    for _ in 0..READ_BUDGET {
        match host.connection().poll_input(now, config, buffer) {
            Input::Drained | Input::Finished => {
                drained = true;
                break;
            }
            Input::Control => {}
            // Once per proxied connection; a message never comes here.
            Input::Forwarded(client) => {
                let verdict = host.admit(client);
                // Refused, the connection is closing: the next read says so.
                let input = host.connection().admit(verdict, now);
                if let Input::Opened | Input::HttpGet(_) = input {
                    host.deliver(input);
                }
            }
            input => host.deliver(input),
        }
    }
    // Whatever stopped the reading, what is left of this connection's
    // input must leave the shared buffer before it serves another.
    host.connection().save_leftover(buffer);
    drained
}

/// One connection's state.
#[derive(Debug)]
pub struct Connection<S> {
    /// The socket; dropping the connection closes it.
    socket: S,
    /// The peer's address, for logs and per-address limits: the TCP peer's,
    /// or for a trusted proxy the client's it forwarded (with port 0, which
    /// the proxy does not tell) once the request head is read.
    peer: SocketAddr,
    /// A number no other connection of this server has, so stale timer
    /// entries of a reused slab key can be recognised.
    serial: u64,
    /// Where the connection is in its life.
    phase: Phase,
    /// Output waiting for the socket.
    out: OutQueue,
    /// When the connection was accepted: the handshake deadline runs from here.
    accepted_at: Instant,
    /// When the service asked to hear of this connection again
    /// ([`Connection::set_timer`]); the chat uses it for its join deadline.
    timer: Option<Instant>,
    /// When the last bytes arrived (any bytes, not only a whole frame): the
    /// ping timer runs from here.
    last_heard: Instant,
    /// When we pinged and have not heard anything since.
    ping_sent: Option<Instant>,
    /// When a closing connection is dropped whatever the peer does.
    close_by: Option<Instant>,
    /// Set when the connection leaves `Open`; the loop takes it to tell the
    /// application exactly once.
    goodbye_pending: bool,
    /// The channel whose broadcasts this connection hears, and how many of
    /// the round's broadcasts are already in its queue.
    subscription: Option<Subscription>,
    /// The close code the server sent, until the loop's metrics take it.
    sent_close: Option<CloseCode>,
}

/// A connection's place among a channel's broadcasts.
#[derive(Debug, Clone, Copy)]
struct Subscription {
    /// The channel it hears.
    channel: Channel,
    /// The connection's own key, so a broadcast sent "to everyone but the
    /// sender" can skip it.
    key: usize,
    /// How many of the round's broadcasts it has been given (or was
    /// subscribed after).
    seen: usize,
}

impl<S: Socket> Connection<S> {
    /// A freshly accepted connection, waiting for its HTTP request.
    pub fn new(socket: S, peer: SocketAddr, serial: u64, now: Instant) -> Self {
        Connection {
            socket,
            peer,
            serial,
            phase: Phase::Handshake {
                head: Vec::new(),
                pending: None,
            },
            out: OutQueue::default(),
            accepted_at: now,
            timer: None,
            last_heard: now,
            ping_sent: None,
            close_by: None,
            goodbye_pending: false,
            subscription: None,
            sent_close: None,
        }
    }

    /// The socket, for registering it with `poll` (and for tests).
    /// The close code the server sent since the last call (at most once
    /// per connection), for the loop's metrics.
    pub fn take_sent_close(&mut self) -> Option<CloseCode> {
        self.sent_close.take()
    }

    pub fn socket(&self) -> &S {
        &self.socket
    }

    /// The socket, for registering it with `poll` (and for tests).
    pub fn socket_mut(&mut self) -> &mut S {
        &mut self.socket
    }

    /// The peer's address: the client's, for a trusted proxy's connection
    /// whose head has been read.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The number no other connection of this server has.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// Where the connection is in its life.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Bytes queued for the socket: while any are, the loop keeps WRITABLE
    /// interest.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Reads until one thing happens (see [`Input`]), through the loop's
    /// shared `buffer`. Call it again until it returns [`Input::Drained`] or
    /// [`Input::Finished`]: with edge-triggered readiness, no new event comes
    /// while unread data is waiting. Whenever the caller stops reading this
    /// connection, for whatever reason, it must call
    /// [`save_leftover`](Self::save_leftover) before the buffer serves
    /// another connection.
    pub fn poll_input<'b>(
        &mut self,
        now: Instant,
        config: &LoopConfig,
        buffer: &'b mut ReadBuffer,
    ) -> Input<'b> {
        match self.phase {
            Phase::Handshake { .. } => {
                let input = self.read_head(now, config, buffer);
                self.discard_if_closing();
                input
            }
            Phase::Open { .. } => self.read_frames(now, config, buffer),
            Phase::Closing { .. } => self.discard_input(),
            Phase::Closed => Input::Finished,
        }
    }

    /// Keeps what is left in `buffer` of this connection's input (part of a
    /// frame, or frames beyond the read budget) for its next turn, and frees
    /// the buffer for other connections.
    pub fn save_leftover(&mut self, buffer: &mut ReadBuffer) {
        if let Phase::Open { inbound } = &mut self.phase {
            inbound.save_leftover(buffer, self.serial);
        } else {
            // A connection that is no longer open has nothing left to parse.
            buffer.forget(self.serial);
        }
    }

    /// If we just started closing (an error, or the peer's close): what else
    /// the peer sent is of no use, but left unread it would turn our final
    /// FIN into a reset that can destroy the close frame. No readiness event
    /// may come for it, so read it away now.
    fn discard_if_closing(&mut self) {
        if matches!(self.phase, Phase::Closing { .. }) {
            self.discard_input();
        }
    }

    fn read_head(
        &mut self,
        now: Instant,
        config: &LoopConfig,
        buffer: &mut ReadBuffer,
    ) -> Input<'static> {
        let Phase::Handshake { head, pending } = &mut self.phase else {
            unreachable!("read_head is only called while handshaking");
        };
        if pending.is_some() {
            // Still waiting to be admitted: ask again.
            return Input::Forwarded(self.peer.ip());
        }
        loop {
            // Read through the shared buffer, so that the head's own memory
            // is only as large as what the client sent.
            let chunk = &mut buffer.spare()[..HEAD_READ_CHUNK];
            match self.socket.read(chunk) {
                Ok(0) => {
                    self.phase = Phase::Closed;
                    return Input::Finished;
                }
                Ok(n) => head.extend_from_slice(&chunk[..n]),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Input::Drained,
                Err(_) => {
                    self.phase = Phase::Closed;
                    return Input::Finished;
                }
            }
            match http::parse_head(head, &config.allowed_origins) {
                Ok(None) => continue,
                Ok(Some((parsed, len))) => {
                    let proxy = self.peer.ip();
                    if !config.trusted_proxies.contains(&proxy) {
                        return self.start(parsed.target, len, now);
                    }
                    // Its client is someone else: the host counts the
                    // connection under the client's address, not the
                    // proxy's, before it goes on.
                    let forwarded = parsed.forwarded_for.as_deref();
                    let client = http::client_address(proxy, forwarded, &config.trusted_proxies);
                    if client != proxy {
                        log::debug!("{}: forwarded for {client}", self.peer);
                        self.peer = SocketAddr::new(client, 0);
                    }
                    *pending = Some((parsed.target, len));
                    return Input::Forwarded(client);
                }
                Err(refusal) => return self.refuse(&refusal, now),
            }
        }
    }

    /// The host's answer to [`Input::Forwarded`]: the request goes on
    /// ([`Input::Opened`] or [`Input::HttpGet`]), or is refused with the
    /// given status and the connection closes ([`Input::Finished`]).
    pub fn admit(&mut self, verdict: Result<(), Refusal>, now: Instant) -> Input<'static> {
        let Phase::Handshake { pending, .. } = &mut self.phase else {
            return Input::Control;
        };
        let Some((target, len)) = pending.take() else {
            return Input::Control;
        };
        match verdict {
            Ok(()) => self.start(target, len, now),
            Err(refusal) => self.refuse(&refusal, now),
        }
    }

    /// Goes on with a complete request head of `len` bytes: upgrades to
    /// WebSocket, or hands a plain `GET` to the caller.
    fn start(&mut self, target: Target, len: usize, now: Instant) -> Input<'static> {
        let Phase::Handshake { head, .. } = &self.phase else {
            unreachable!("a request starts only while handshaking");
        };
        match target {
            Target::Upgrade { key } => {
                // Frames the client sent right behind its request.
                let leftover = head[len..].to_vec();
                // Sealed: a client too slow to read even this is sent
                // it before its close frame, or the stream is garbage.
                self.out.push_sealed(&http::upgrade_response(&key));
                self.phase = Phase::Open {
                    inbound: Inbound::with_leftover(leftover),
                };
                self.last_heard = now;
                Input::Opened
            }
            // The answer comes from the application, which must pass it
            // to `respond` before reading again.
            Target::Get(request) => Input::HttpGet(request),
        }
    }

    /// Answers a request head with an HTTP refusal and closes.
    fn refuse(&mut self, refusal: &Refusal, now: Instant) -> Input<'static> {
        log::debug!("{}: refused HTTP request: {}", self.peer, refusal.reason);
        self.respond(&refusal.response(), now);
        Input::Finished
    }

    fn read_frames<'b>(
        &mut self,
        now: Instant,
        config: &LoopConfig,
        buffer: &'b mut ReadBuffer,
    ) -> Input<'b> {
        if self.out.len() > config.max_outbound_bytes {
            // Only our own replies (pongs) grow the queue while we read: a
            // client that sends pings and never reads its pongs is as stuck
            // as one that never reads its messages.
            self.too_slow(now);
            self.discard_input();
            return Input::Finished;
        }
        let Phase::Open { inbound } = &mut self.phase else {
            unreachable!("read_frames is only called while open");
        };
        inbound.resume(buffer, self.serial);
        loop {
            let next = match inbound.next(buffer, config.max_message_bytes) {
                Ok(next) => next,
                Err(violation) => {
                    log::debug!("{}: {}", self.peer, violation.detail);
                    return self.fail(violation.code, violation.reason, now);
                }
            };
            match next {
                Next::More => {}
                Next::Message { text, at } => return self.message(text, buffer.payload(&at), now),
                Next::Fragment | Next::Pong => return Input::Control,
                Next::Ping(payload) => {
                    let pong = Frame::pong(Bytes::copy_from_slice(
                        buffer.payload(&Payload::InPlace(payload)),
                    ));
                    self.push_frame(pong);
                    return Input::Control;
                }
                Next::Close(code) => {
                    // The reply echoes the code (RFC 6455, section 5.5.1).
                    let reason = Default::default();
                    self.push_frame(Frame::close(code.map(|code| CloseFrame { code, reason })));
                    self.enter_closing(now);
                    self.discard_input();
                    return Input::Finished;
                }
            }
            match buffer.read_from(&mut self.socket) {
                Ok(0) => {
                    self.set_closed();
                    return Input::Finished;
                }
                Ok(_) => {
                    // Any bytes prove the peer alive, even the middle of a
                    // long message: keepalive is about silence, not about
                    // whole frames.
                    self.last_heard = now;
                    self.ping_sent = None;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Input::Drained,
                // A reset: nothing more can be read or sent.
                Err(_) => {
                    self.set_closed();
                    return Input::Finished;
                }
            }
        }
    }

    /// Hands a complete message to the caller; text becomes a `&str` here,
    /// the one place its UTF-8 is checked whole.
    fn message<'b>(&mut self, text: bool, payload: &'b [u8], now: Instant) -> Input<'b> {
        if !text {
            return Input::Binary(payload);
        }
        match std::str::from_utf8(payload) {
            Ok(text) => Input::Text(text),
            Err(_) => self.fail(INVALID_UTF8.code, INVALID_UTF8.reason, now),
        }
    }

    /// Closes with `code` after an input error; the input stream is no
    /// longer trusted, so what follows is discarded.
    fn fail(&mut self, code: CloseCode, reason: &str, now: Instant) -> Input<'static> {
        self.close_now(code, reason, now);
        self.discard_input();
        Input::Finished
    }

    /// Queues a frame of our own (a pong, a ping, a close).
    fn push_frame(&mut self, frame: Frame) {
        let mut bytes = Vec::with_capacity(frame.len());
        frame
            .format(&mut bytes)
            .expect("writing a frame into a Vec cannot fail");
        self.out.push_bytes(&bytes);
    }

    fn discard_input(&mut self) -> Input<'static> {
        let mut sink = [0u8; 4096];
        let mut budget = DISCARD_BUDGET;
        loop {
            match self.socket.read(&mut sink) {
                Ok(0) => break,
                // A peer that keeps sending gets no more of this turn: its
                // next bytes bring a new readiness event anyway.
                Ok(n) if n >= budget => return Input::Drained,
                Ok(n) => budget -= n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Input::Drained,
                Err(_) => break,
            }
        }
        if let Phase::Closing { peer_gone, .. } = &mut self.phase {
            *peer_gone = true;
        }
        self.finish_closing();
        Input::Finished
    }

    /// Queues a complete HTTP response and closes after it.
    pub fn respond(&mut self, response: &[u8], now: Instant) {
        self.out.push_bytes(response);
        self.enter_closing(now);
    }

    /// Queues a frame of the round's batch for the client if the WebSocket
    /// is open, after the broadcasts it is due. A client whose queue would
    /// pass `max_outbound_bytes` is too slow to keep up: what it has not
    /// started receiving is dropped and it is closed with 1013.
    ///
    /// An empty queue takes any one frame, so a message larger than the
    /// bound (a `welcome` with a long history) cannot lock a client out.
    pub fn send(&mut self, frame: FrameRef<'_>, turn: &Turn<'_>) {
        self.catch_up(turn);
        self.queue(turn, |out| out.push_frame(frame));
    }

    /// Like [`send`](Self::send), for a frame only this client is sent:
    /// it is framed straight into the client's queue.
    pub fn send_own(&mut self, data: Data, payload: &[u8], turn: &Turn<'_>) {
        self.catch_up(turn);
        self.queue(turn, |out| out.push_own_frame(data, payload));
    }

    /// From now on, the connection (whose slab key is `key`) hears every
    /// broadcast on `channel`: those after the `round_so_far` already made
    /// in this round.
    pub fn subscribe(&mut self, channel: Channel, key: usize, round_so_far: usize) {
        self.subscription = Some(Subscription {
            channel,
            key,
            seen: round_so_far,
        });
    }

    /// Queues the round's broadcasts that this connection has not been
    /// given yet. Everything that queues a frame calls it first; the loop
    /// calls it for every connection before the round is written. Returns
    /// whether the connection needs settling (its queue grew, or it turned
    /// out too slow).
    pub fn catch_up(&mut self, turn: &Turn<'_>) -> bool {
        let Some(subscription) = &mut self.subscription else {
            return false;
        };
        let Some(unseen) = turn
            .broadcasts
            .get(subscription.seen..)
            .filter(|b| !b.is_empty())
        else {
            return false;
        };
        subscription.seen = turn.broadcasts.len();
        let Subscription { channel, key, .. } = *subscription;
        let before = self.out.len();
        self.queue(turn, |out| out.push_broadcasts(unseen, channel, key));
        self.out.len() != before || self.goodbye_pending
    }

    /// The round's broadcasts are written and forgotten: the next round's
    /// list starts from zero.
    pub fn end_round(&mut self) {
        if let Some(subscription) = &mut self.subscription {
            subscription.seen = 0;
        }
    }

    fn queue(&mut self, turn: &Turn<'_>, push: impl FnOnce(&mut OutQueue)) {
        if !self.phase.is_open() {
            return;
        }
        let was_empty = self.out.is_empty();
        push(&mut self.out);
        if !was_empty && self.out.len() > turn.config.max_outbound_bytes {
            self.too_slow(turn.now);
        }
    }

    /// Closes a client that does not read what it is sent, dropping what
    /// it has not started to receive so the close frame goes right out.
    fn too_slow(&mut self, now: Instant) {
        log::info!("{}: disconnecting a client too slow to keep up", self.peer);
        self.out.discard_unstarted();
        self.close_now(CloseCode::Again, "too slow to keep up", now);
    }

    /// Starts the closing handshake with `code` after the broadcasts the
    /// connection is due, or simply closes a connection that never became a
    /// WebSocket. Does nothing once closing.
    pub fn close(&mut self, code: CloseCode, reason: &str, turn: &Turn<'_>) {
        self.catch_up(turn);
        self.close_now(code, reason, turn.now);
    }

    /// [`close`](Self::close) for the connection's own reasons (an input
    /// error, a timeout), which need no catching up: what was broadcast
    /// before either went out already or is dropped with the client.
    fn close_now(&mut self, code: CloseCode, reason: &str, now: Instant) {
        match self.phase {
            Phase::Open { .. } => {
                let frame = CloseFrame {
                    code,
                    reason: reason.into(),
                };
                self.push_frame(Frame::close(Some(frame)));
                self.sent_close = Some(code);
                self.enter_closing(now);
            }
            Phase::Handshake { .. } => self.set_closed(),
            Phase::Closing { .. } | Phase::Closed => {}
        }
    }

    /// Sets (or, with `None`, clears) the service's timer for this
    /// connection: [`on_deadline`](Self::on_deadline) reports it once when
    /// it comes due. Only an open connection keeps it.
    pub fn set_timer(&mut self, at: Option<Instant>) {
        self.timer = at.filter(|_| self.phase.is_open());
    }

    /// Writes queued output; `batch` is the bytes of the round's
    /// [`Batch`](crate::evloop::outqueue::Batch). On a write error the connection is
    /// closed at once: nothing more can reach the peer.
    pub fn flush(&mut self, batch: &[u8]) {
        if self.phase.is_closed() {
            return;
        }
        let written = self.out.write_to(&mut self.socket, batch);
        if let Err(err) = written.and_then(|()| self.socket.flush()) {
            log::debug!("{}: write failed: {err}", self.peer);
            self.set_closed();
            return;
        }
        self.finish_closing();
    }

    /// In `Closing`: once the queue is empty send FIN, and once the peer has
    /// hung up too, the connection is done.
    fn finish_closing(&mut self) {
        let Phase::Closing {
            write_shut,
            peer_gone,
        } = &mut self.phase
        else {
            return;
        };
        if !*write_shut && self.out.is_empty() {
            *write_shut = true;
            if self.socket.shutdown_write().is_err() {
                *peer_gone = true;
            }
        }
        if *write_shut && *peer_gone {
            self.set_closed();
        }
    }

    /// Handles whatever deadline has passed at `turn.now`, after giving the
    /// connection the broadcasts it is due (a deadline may close it).
    /// Returns whether the service's timer came due: the caller tells the
    /// service, which decides what it means. The keepalive waits for the
    /// next turn then, so that what the service does comes first.
    pub fn on_deadline(&mut self, turn: &Turn<'_>) -> bool {
        self.catch_up(turn);
        let (now, config) = (turn.now, turn.config);
        match self.phase {
            Phase::Handshake { .. } if now >= self.accepted_at + config.handshake_timeout => {
                log::debug!("{}: handshake timeout", self.peer);
                self.set_closed();
            }
            Phase::Open { .. } => {
                if self.timer.is_some_and(|at| now >= at) {
                    self.timer = None;
                    return true;
                } else if let Some(sent) = self.ping_sent {
                    if now >= sent + config.ping_timeout {
                        log::debug!("{}: ping timeout", self.peer);
                        self.close_now(CloseCode::Away, "ping timeout", now);
                    }
                } else if now >= self.last_heard + config.ping_interval {
                    self.ping(now);
                }
            }
            Phase::Closing { .. } if self.close_by.is_some_and(|at| now >= at) => self.set_closed(),
            _ => {}
        }
        false
    }

    fn ping(&mut self, now: Instant) {
        if self.phase.is_open() {
            self.push_frame(Frame::ping(Bytes::new()));
            self.ping_sent = Some(now);
        }
    }

    /// The next instant [`on_deadline`](Self::on_deadline) has work to do.
    pub fn next_deadline(&self, config: &LoopConfig) -> Option<Instant> {
        match self.phase {
            Phase::Handshake { .. } => Some(self.accepted_at + config.handshake_timeout),
            Phase::Open { .. } => {
                let keepalive = match self.ping_sent {
                    Some(sent) => sent + config.ping_timeout,
                    None => self.last_heard + config.ping_interval,
                };
                Some(self.timer.map_or(keepalive, |at| at.min(keepalive)))
            }
            Phase::Closing { .. } => self.close_by,
            Phase::Closed => None,
        }
    }

    /// Whether the connection left `Open` and the application has not been
    /// told yet.
    pub fn has_goodbye_pending(&self) -> bool {
        self.goodbye_pending
    }

    /// Takes the "left `Open`" notice, so the application hears of it once.
    pub fn take_goodbye(&mut self) -> bool {
        std::mem::take(&mut self.goodbye_pending)
    }

    fn enter_closing(&mut self, now: Instant) {
        self.leave_open();
        self.phase = Phase::Closing {
            write_shut: false,
            peer_gone: false,
        };
        self.close_by = Some(now + CLOSE_LINGER);
    }

    fn set_closed(&mut self) {
        self.leave_open();
        self.phase = Phase::Closed;
    }

    fn leave_open(&mut self) {
        if self.phase.is_open() {
            self.goodbye_pending = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tungstenite::protocol::frame::coding::Data;

    use super::*;
    use crate::evloop::inbound::ReadBuffer;
    use crate::evloop::outqueue::{Batch, Broadcast};
    use crate::evloop::testing::{client_frame, FakeSocket, UPGRADE};

    fn config() -> LoopConfig {
        LoopConfig {
            max_message_bytes: 1000,
            ..LoopConfig::default()
        }
    }

    /// A turn at `now` with no broadcasts.
    fn turn(now: Instant, config: &LoopConfig) -> Turn<'_> {
        Turn {
            now,
            config,
            broadcasts: &[],
        }
    }

    /// A configuration whose output bound is `max_outbound_bytes`.
    fn bound(max_outbound_bytes: usize) -> LoopConfig {
        LoopConfig {
            max_outbound_bytes,
            ..config()
        }
    }

    /// A connection that has completed its upgrade and flushed the 101.
    fn open_connection(now: Instant) -> Connection<FakeSocket> {
        let mut buffer = ReadBuffer::default();
        let socket = FakeSocket {
            input: VecDeque::from([UPGRADE.to_vec()]),
            room: usize::MAX,
            ..FakeSocket::default()
        };
        let mut conn = Connection::new(socket, "127.0.0.1:9".parse().unwrap(), 1, now);
        assert!(matches!(
            conn.poll_input(now, &config(), &mut buffer),
            Input::Opened
        ));
        conn.flush(&[]);
        conn.socket.written.clear();
        conn
    }

    #[test]
    fn handshake_dribbled_one_byte_at_a_time() {
        let mut buffer = ReadBuffer::default();
        let now = Instant::now();
        let socket = FakeSocket {
            room: usize::MAX,
            ..FakeSocket::default()
        };
        let mut conn = Connection::new(socket, "127.0.0.1:9".parse().unwrap(), 1, now);
        for &byte in &UPGRADE[..UPGRADE.len() - 1] {
            conn.socket.input.push_back(vec![byte]);
            // Each byte is taken, then the socket would block: keep waiting.
            assert!(matches!(
                conn.poll_input(now, &config(), &mut buffer),
                Input::Drained
            ));
        }
        assert!(matches!(conn.phase, Phase::Handshake { .. }));
        conn.socket
            .input
            .push_back(UPGRADE[UPGRADE.len() - 1..].to_vec());
        assert!(matches!(
            conn.poll_input(now, &config(), &mut buffer),
            Input::Opened
        ));
        conn.flush(&[]);
        let response = String::from_utf8(conn.socket.written.clone()).unwrap();
        assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn a_trusted_proxys_request_waits_for_its_client_to_be_admitted() {
        let now = Instant::now();
        let config = LoopConfig {
            trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
            ..config()
        };
        let head = String::from_utf8(UPGRADE.to_vec()).unwrap().replace(
            "Host: x\r\n",
            "Host: x\r\nX-Forwarded-For: 6.6.6.6, 203.0.113.7\r\n",
        );
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let proxied = |frames: &[u8]| {
            let socket = FakeSocket {
                input: VecDeque::from([[head.as_bytes(), frames].concat()]),
                room: usize::MAX,
                ..FakeSocket::default()
            };
            Connection::new(socket, "127.0.0.1:9".parse().unwrap(), 1, now)
        };
        let mut buffer = ReadBuffer::default();

        // Admitted: the upgrade goes on, and the frame behind the head is kept.
        let mut conn = proxied(&client_frame(0x1, b"hi"));
        let input = conn.poll_input(now, &config, &mut buffer);
        assert!(
            matches!(input, Input::Forwarded(ip) if ip == client),
            "{input:?}"
        );
        assert_eq!(conn.peer(), SocketAddr::new(client, 0));
        // Asked again before the answer, it asks again.
        let input = conn.poll_input(now, &config, &mut buffer);
        assert!(
            matches!(input, Input::Forwarded(ip) if ip == client),
            "{input:?}"
        );
        assert!(matches!(conn.admit(Ok(()), now), Input::Opened));
        assert!(matches!(
            conn.poll_input(now, &config, &mut buffer),
            Input::Text("hi")
        ));

        // Refused: the proxy gets the status, and the connection closes.
        let mut conn = proxied(b"");
        conn.save_leftover(&mut buffer);
        let input = conn.poll_input(now, &config, &mut buffer);
        assert!(matches!(input, Input::Forwarded(_)), "{input:?}");
        let busy = Refusal::new(503, "busy");
        assert!(matches!(conn.admit(Err(busy), now), Input::Finished));
        conn.flush(&[]);
        let response = String::from_utf8(conn.socket.written.clone()).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{response}"
        );

        // Anyone else's header is not read, and nothing waits.
        let mut conn = proxied(b"");
        let untrusted = LoopConfig {
            trusted_proxies: vec!["192.0.2.1".parse().unwrap()],
            ..config.clone()
        };
        assert!(matches!(
            conn.poll_input(now, &untrusted, &mut buffer),
            Input::Opened
        ));
        assert_eq!(conn.peer(), "127.0.0.1:9".parse().unwrap());
    }

    #[test]
    fn frames_split_anywhere_arrive_whole() {
        let mut buffer = ReadBuffer::default();
        let now = Instant::now();
        let mut conn = open_connection(now);
        let mut bytes = client_frame(0x1, "héllo".as_bytes());
        bytes.extend(client_frame(0x1, b"second"));
        for byte in bytes {
            conn.socket.input.push_back(vec![byte]);
        }
        let mut texts = Vec::new();
        loop {
            match conn.poll_input(now, &config(), &mut buffer) {
                Input::Text(text) => texts.push(text.to_owned()),
                Input::Drained if conn.socket.input.is_empty() => break,
                Input::Drained => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(texts, ["héllo", "second"]);
    }

    #[test]
    fn input_past_the_budget_waits_in_its_connection_while_others_read() {
        let now = Instant::now();
        let mut buffer = ReadBuffer::default();
        let mut alice = open_connection(now);
        let mut bob = open_connection(now);
        bob.serial = 2;
        alice.socket.input.push_back(
            [
                client_frame(0x1, b"one"),
                client_frame(0x1, b"two"),
                client_frame(0x1, &[b'3'; 100])[..50].to_vec(),
            ]
            .concat(),
        );
        bob.socket.input.push_back(client_frame(0x1, b"bob"));
        let Input::Text(text) = alice.poll_input(now, &config(), &mut buffer) else {
            panic!("a text");
        };
        assert_eq!(text, "one");
        // The loop stops reading Alice here, as when her budget is spent.
        alice.save_leftover(&mut buffer);
        let Input::Text(text) = bob.poll_input(now, &config(), &mut buffer) else {
            panic!("a text");
        };
        assert_eq!(text, "bob");
        assert!(matches!(
            bob.poll_input(now, &config(), &mut buffer),
            Input::Drained
        ));
        bob.save_leftover(&mut buffer);
        let Input::Text(text) = alice.poll_input(now, &config(), &mut buffer) else {
            panic!("a text");
        };
        assert_eq!(text, "two");
        assert!(matches!(
            alice.poll_input(now, &config(), &mut buffer),
            Input::Drained
        ));
        alice.save_leftover(&mut buffer);
        alice
            .socket
            .input
            .push_back(client_frame(0x1, &[b'3'; 100])[50..].to_vec());
        let Input::Text(text) = alice.poll_input(now, &config(), &mut buffer) else {
            panic!("a text");
        };
        assert_eq!(text, "3".repeat(100));
    }

    #[test]
    fn output_survives_partial_writes_and_would_block() {
        let now = Instant::now();
        let mut conn = open_connection(now);
        let mut batch = Batch::default();
        for i in 0..5 {
            let frame = batch.frame(Data::Text, format!("message {i}").as_bytes());
            conn.send(frame, &turn(now, &bound(usize::MAX)));
        }
        let expected = batch.bytes().to_vec();
        // The kernel takes 7 bytes per turn: the queue resumes mid-frame.
        while !conn.out.is_empty() {
            conn.socket.room = 7;
            conn.flush(batch.bytes());
            assert_eq!(conn.out.len(), expected.len() - conn.socket.written.len());
        }
        assert_eq!(conn.socket.written, expected);
    }

    #[test]
    fn broadcasts_keep_their_place_among_frames_sent_directly() {
        let now = Instant::now();
        let mut conn = open_connection(now);
        let mut batch = Batch::default();
        let mut broadcasts = Vec::new();
        let mut broadcast = |batch: &mut Batch, text: &str, channel, except| {
            broadcasts.push(Broadcast::new(
                batch.frame(Data::Text, text.as_bytes()),
                channel,
                except,
            ));
            broadcasts.clone()
        };
        broadcast(&mut batch, "before it subscribed", 0, None);
        conn.subscribe(0, 1, 1);
        broadcast(&mut batch, "first", 0, None);
        broadcast(&mut batch, "not for connection 1", 0, Some(1));
        let so_far = broadcast(&mut batch, "another channel", 1, None);
        let config = bound(usize::MAX);
        // Something sent to it directly comes after what was broadcast
        // before: sending takes those broadcasts first by itself.
        let mut turn = turn(now, &config);
        turn.broadcasts = &so_far;
        conn.send_own(Data::Text, b"direct", &turn);
        let all = broadcast(&mut batch, "last", 0, None);
        turn.broadcasts = &all;
        assert!(conn.catch_up(&turn));
        assert!(!conn.catch_up(&turn), "given once");
        conn.flush(batch.bytes());
        let text_frame = |text: &str| [&[0x81, text.len() as u8], text.as_bytes()].concat();
        let expected = [
            text_frame("first"),
            text_frame("direct"),
            text_frame("last"),
        ]
        .concat();
        assert_eq!(conn.socket.written, expected);
    }

    #[test]
    fn a_client_too_slow_to_keep_up_is_closed_with_1013() {
        let now = Instant::now();
        let mut conn = open_connection(now);
        let mut batch = Batch::default();
        let frame = batch.frame(Data::Text, "x".repeat(100).as_bytes());
        let frame_bytes = batch.bytes().to_vec();
        let config = bound(250);
        conn.send(frame, &turn(now, &config));
        // Half of the first frame reaches the wire, then the client stalls.
        conn.socket.room = 50;
        conn.flush(batch.bytes());
        conn.send(frame, &turn(now, &config));
        conn.send(frame, &turn(now, &config));
        assert!(matches!(conn.phase, Phase::Closing { .. }));
        conn.socket.room = usize::MAX;
        conn.flush(batch.bytes());
        let written = &conn.socket.written;
        // The rest of the started frame, then the close frame: 1013 and reason.
        assert_eq!(&written[..frame.len()], &frame_bytes[..]);
        let close = &written[frame.len()..];
        assert_eq!(close[0], 0x88);
        assert_eq!(&close[2..4], &1013u16.to_be_bytes());
        assert_eq!(&close[4..], b"too slow to keep up");
        assert!(conn.socket.shut.get(), "FIN follows the close frame");
        assert!(conn.take_goodbye());
    }

    #[test]
    fn silence_brings_a_ping_then_a_close() {
        let mut buffer = ReadBuffer::default();
        let start = Instant::now();
        let config = config();
        let mut conn = open_connection(start);
        let ping_at = start + config.ping_interval;
        assert_eq!(conn.next_deadline(&config), Some(ping_at));
        assert!(!conn.on_deadline(&turn(ping_at, &config)));
        conn.flush(&[]);
        assert_eq!(conn.socket.written, [0x89, 0x00]);
        // A pong (any frame) resets the keepalive.
        conn.socket.input.push_back(client_frame(0xA, b""));
        let later = ping_at + Duration::from_secs(1);
        assert!(matches!(
            conn.poll_input(later, &config, &mut buffer),
            Input::Control
        ));
        assert!(matches!(
            conn.poll_input(later, &config, &mut buffer),
            Input::Drained
        ));
        assert_eq!(
            conn.next_deadline(&config),
            Some(later + config.ping_interval)
        );
        // This time the client stays silent.
        let second_ping = later + config.ping_interval;
        conn.socket.written.clear();
        conn.on_deadline(&turn(second_ping, &config));
        conn.flush(&[]);
        assert_eq!(conn.socket.written, [0x89, 0x00]);
        let give_up = second_ping + config.ping_timeout;
        assert_eq!(conn.next_deadline(&config), Some(give_up));
        conn.on_deadline(&turn(give_up, &config));
        assert!(matches!(conn.phase, Phase::Closing { .. }));
        conn.socket.written.clear();
        conn.flush(&[]);
        assert_eq!(&conn.socket.written[2..4], &1001u16.to_be_bytes());
        assert_eq!(&conn.socket.written[4..], b"ping timeout");
    }

    #[test]
    fn the_middle_of_a_long_message_counts_as_life() {
        let mut buffer = ReadBuffer::default();
        let start = Instant::now();
        let config = config();
        let mut conn = open_connection(start);
        let frame = client_frame(0x1, &[b'a'; 500]);
        let later = start + config.ping_interval;
        conn.socket.input.push_back(frame[..100].to_vec());
        assert!(matches!(
            conn.poll_input(later, &config, &mut buffer),
            Input::Drained
        ));
        assert_eq!(
            conn.next_deadline(&config),
            Some(later + config.ping_interval)
        );
    }

    #[test]
    fn a_ping_flood_that_never_reads_its_pongs_is_closed_with_1013() {
        let mut buffer = ReadBuffer::default();
        let now = Instant::now();
        let config = LoopConfig {
            max_outbound_bytes: 1000,
            ..config()
        };
        let mut conn = open_connection(now);
        // The client's socket takes nothing more; it only sends pings.
        conn.socket.room = 0;
        for _ in 0..200 {
            conn.socket.input.push_back(client_frame(0x9, &[b'p'; 100]));
        }
        let mut pongs_read = 0;
        loop {
            match conn.poll_input(now, &config, &mut buffer) {
                Input::Control => pongs_read += 1,
                Input::Finished => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(pongs_read < 20, "stopped at the bound, after {pongs_read}");
        assert!(matches!(conn.phase, Phase::Closing { .. }));
        conn.socket.room = usize::MAX;
        conn.flush(&[]);
        assert_eq!(&conn.socket.written[..4], &[0x88, 21, 0x03, 0xf5]);
    }

    #[test]
    fn an_empty_queue_takes_one_frame_larger_than_the_bound() {
        let now = Instant::now();
        let mut conn = open_connection(now);
        let mut batch = Batch::default();
        let big = batch.frame(Data::Text, "w".repeat(2000).as_bytes());
        let config = bound(1000);
        conn.send(big, &turn(now, &config));
        assert!(conn.phase.is_open());
        assert_eq!(conn.out.len(), big.len());
        // Anything more while it waits is over the bound.
        conn.send(batch.frame(Data::Text, b"x"), &turn(now, &config));
        assert!(matches!(conn.phase, Phase::Closing { .. }));
    }

    #[test]
    fn the_services_timer_comes_due_once_before_the_keepalive() {
        let start = Instant::now();
        let config = config();
        let mut conn = open_connection(start);
        let at = start + Duration::from_secs(5);
        conn.set_timer(Some(at));
        assert_eq!(conn.next_deadline(&config), Some(at));
        assert!(!conn.on_deadline(&turn(at - Duration::from_millis(1), &config)));
        assert!(conn.on_deadline(&turn(at, &config)), "due");
        assert!(!conn.on_deadline(&turn(at, &config)), "reported once");
        assert_eq!(
            conn.next_deadline(&config),
            Some(start + config.ping_interval)
        );
        // Cleared before it is due, it never comes.
        conn.set_timer(Some(at));
        conn.set_timer(None);
        assert!(!conn.on_deadline(&turn(at, &config)));
        // The loop writes nothing of its own for it: what it means is the
        // service's to decide.
        conn.flush(&[]);
        assert!(conn.socket.written.is_empty());
    }

    #[test]
    fn an_oversized_frame_is_refused_from_its_header() {
        let mut buffer = ReadBuffer::default();
        let now = Instant::now();
        let mut conn = open_connection(now);
        // Only the header of a 1001-byte frame: the limit is 1000.
        let frame = client_frame(0x1, &[b'a'; 1001]);
        conn.socket.input.push_back(frame[..8].to_vec());
        assert!(matches!(
            conn.poll_input(now, &config(), &mut buffer),
            Input::Finished
        ));
        conn.flush(&[]);
        assert_eq!(&conn.socket.written[2..4], &1009u16.to_be_bytes());
    }

    #[test]
    fn a_closing_connection_ends_when_the_peer_hangs_up() {
        let mut buffer = ReadBuffer::default();
        let now = Instant::now();
        let mut conn = open_connection(now);
        conn.socket
            .input
            .push_back(client_frame(0x8, &1000u16.to_be_bytes()));
        assert!(matches!(
            conn.poll_input(now, &config(), &mut buffer),
            Input::Finished
        ));
        assert!(conn.take_goodbye());
        conn.flush(&[]);
        // Our close reply went out, then FIN.
        assert_eq!(conn.socket.written, [0x88, 0x02, 0x03, 0xe8]);
        assert!(conn.socket.shut.get());
        assert!(!conn.phase.is_closed(), "waits for the peer to hang up");
        conn.socket.eof = true;
        assert!(matches!(
            conn.poll_input(now, &config(), &mut buffer),
            Input::Finished
        ));
        assert!(conn.phase.is_closed());
        assert!(!conn.take_goodbye(), "the application hears of it once");
    }

    #[test]
    fn a_bad_request_gets_its_status_then_the_connection_closes() {
        let mut buffer = ReadBuffer::default();
        let now = Instant::now();
        let socket = FakeSocket {
            input: VecDeque::from([b"POST / HTTP/1.1\r\n\r\n".to_vec()]),
            room: usize::MAX,
            eof: true,
            ..FakeSocket::default()
        };
        let mut conn = Connection::new(socket, "127.0.0.1:9".parse().unwrap(), 1, now);
        assert!(matches!(
            conn.poll_input(now, &config(), &mut buffer),
            Input::Finished
        ));
        conn.flush(&[]);
        assert!(conn
            .socket
            .written
            .starts_with(b"HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(matches!(
            conn.poll_input(now, &config(), &mut buffer),
            Input::Finished
        ));
        assert!(conn.phase.is_closed());
        assert!(!conn.take_goodbye(), "never opened, so no goodbye");
    }
}
