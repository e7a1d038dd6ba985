//! What the loop serves: the [`Service`] trait an application implements,
//! and the [`Outbox`] through which it answers.
//!
//! The loop moves bytes and keeps time; everything a byte means is the
//! service's: the chat room (`chat::service`), an echo (`examples/echo.rs`).
//! The loop refuses nothing on the service's behalf: a binary message, a
//! connection that never says who it is, are the service's to judge.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mio::{Registry, Token, Waker};
use prometheus_client::collector::Collector;
use slab::Slab;
use tungstenite::protocol::frame::coding::{CloseCode, Data};

use crate::evloop::config::LoopConfig;
use crate::evloop::outqueue::{Channel, FrameRef};
use crate::evloop::server::{Round, Slot};

/// Identifies a connection to the service: its slab key. Valid until the
/// service is told the connection closed.
pub type ConnId = usize;

/// The application side of the server: told what arrives, it answers
/// through the [`Outbox`].
pub trait Service {
    /// A WebSocket was opened (the upgrade completed).
    fn opened(&mut self, conn: ConnId, peer: SocketAddr, out: &mut Outbox<'_>);

    /// A complete text message arrived.
    fn text(&mut self, conn: ConnId, text: &str, out: &mut Outbox<'_>);

    /// A complete binary message arrived. The service decides what it
    /// means; one that has no use for binary closes the connection with
    /// [`CloseCode::Unsupported`] (1003), as RFC 6455 suggests.
    fn binary(&mut self, conn: ConnId, data: &[u8], out: &mut Outbox<'_>);

    /// The timer set with [`Outbox::set_timer`] for an open connection came
    /// due. A service that never sets one never hears this.
    fn timer(&mut self, _conn: ConnId, _out: &mut Outbox<'_>) {}

    /// An opened connection is no longer open (either side closed it, or it
    /// failed). Called exactly once for each `opened`; `conn` is not valid
    /// after this returns.
    fn closed(&mut self, conn: ConnId, out: &mut Outbox<'_>);

    /// A plain HTTP `GET` (not an upgrade) for `path`; returns the complete
    /// response, see [`crate::evloop::http::response`]. The connection
    /// closes after it. The loop derives the answers to `HEAD` and to a
    /// matching `If-None-Match` from it
    /// ([`crate::evloop::http::GetRequest::finish`]).
    fn http_get(&mut self, path: &str) -> Vec<u8>;

    /// The service's own numbers for `GET /metrics`, next to the loop's.
    fn metrics(&self) -> Option<Box<dyn Collector>> {
        None
    }

    /// Called once, before the loop runs, with what the service may use
    /// besides its connections: a [`Wakeup`] with which another thread (a
    /// completion source, such as a store thread) wakes the loop, and the
    /// poll's registry with the tokens reserved for sockets of the
    /// service's own (the connections of a client of another server, such
    /// as Redis). By default unused.
    fn attach(&mut self, _attach: Attach) {}

    /// A socket the service registered under [`Attach::token`]`(source)`
    /// is ready. Readiness is edge-triggered and may be spurious, as for
    /// connections: read and write until `WouldBlock`.
    fn source_ready(&mut self, _source: usize, _ready: Readiness, _out: &mut Outbox<'_>) {}

    /// When the service next needs [`deadline`](Self::deadline) called
    /// (its own timers: reconnects, reply timeouts, periodic work); the
    /// loop sleeps no longer than this. Asked once per turn, after
    /// [`end_of_turn`](Self::end_of_turn).
    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    /// The instant given by [`next_deadline`](Self::next_deadline) has
    /// passed (or the loop woke up near it: an early call must be harmless).
    /// Called with the connections' deadlines, before `end_of_turn`.
    fn deadline(&mut self, _out: &mut Outbox<'_>) {}

    /// [`Wakeup::wake`] was called since the last call (once or several
    /// times; spurious calls are harmless). Called on the loop's thread,
    /// in the turn that noticed it, before [`end_of_turn`](Self::end_of_turn).
    fn woken(&mut self, _out: &mut Outbox<'_>) {}

    /// Called once at the end of every turn, after the input and the
    /// deadlines and before the output is written: the place to hand the
    /// turn's work to another thread in one piece, or to send what was
    /// held back.
    fn end_of_turn(&mut self, _out: &mut Outbox<'_>) {}
}

/// How many sockets of its own a service may register with the loop's
/// poll: a cluster node uses two (commands and the stream reader); a few
/// more leave room without taking much of the token space.
pub const SERVICE_SOURCES: usize = 8;

/// What [`Service::attach`] gets.
#[derive(Debug)]
pub struct Attach {
    /// Wakes the loop from another thread.
    pub wakeup: Wakeup,
    /// The loop's poll registry (a clone of it), for the service's own
    /// sockets; the readiness of a socket registered under
    /// [`Attach::token`] comes back through [`Service::source_ready`].
    pub registry: Registry,
}

impl Attach {
    /// The token for the service's socket number `source`, below
    /// [`SERVICE_SOURCES`]. Connection tokens are slab keys counting up
    /// from 0 and the loop's own two tokens are the top two, so these sit
    /// just below those and never meet a connection's.
    ///
    /// # Panics
    ///
    /// If `source` is not below [`SERVICE_SOURCES`]: that is a bug in the
    /// service, not a condition to handle.
    pub fn token(source: usize) -> Token {
        assert!(source < SERVICE_SOURCES, "source {source} out of range");
        Token(FIRST_SOURCE_TOKEN + source)
    }

    /// Which of the service's sockets `token` names, if it is one.
    pub(super) fn source_of(token: Token) -> Option<usize> {
        token
            .0
            .checked_sub(FIRST_SOURCE_TOKEN)
            .filter(|&source| source < SERVICE_SOURCES)
    }
}

/// The first token of the service's sockets: just below the loop's own
/// two (the listener and the waker).
const FIRST_SOURCE_TOKEN: usize = usize::MAX - 1 - SERVICE_SOURCES;

/// What a service-owned socket is ready for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// Readable, hung up or failed: reading finds out which.
    pub readable: bool,
    /// Writable (or a non-blocking connect finished, one way or the other).
    pub writable: bool,
}

/// Wakes the loop from another thread to call [`Service::woken`]; see
/// [`Service::attach`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Wakeup {
    /// Set before waking; the loop clears it and calls the service.
    pending: Arc<AtomicBool>,
    /// Wakes the loop out of `poll`.
    waker: Arc<Waker>,
}

impl Wakeup {
    /// A wakeup that sets `pending` and wakes `waker`; the loop makes it.
    pub(super) fn new(pending: Arc<AtomicBool>, waker: Arc<Waker>) -> Wakeup {
        Wakeup { pending, waker }
    }

    /// Has the loop call [`Service::woken`] soon; never blocks.
    pub fn wake(&self) {
        self.pending.store(true, Ordering::SeqCst);
        // If waking fails the loop is gone, and nobody is waiting.
        let _ = self.waker.wake();
    }

    /// A wakeup on a waker of the caller's own, for unit tests of
    /// services that run without a loop.
    #[cfg(test)]
    pub(crate) fn for_tests(waker: Waker) -> Wakeup {
        Wakeup::new(Arc::new(AtomicBool::new(false)), Arc::new(waker))
    }
}

/// What a service may do to connections while it handles an event. Sends
/// are queued; everything is flushed once at the end of the loop turn.
///
/// `'a` is the round: a [`FrameRef`] made by [`frame_text`](Self::frame_text)
/// points into the round's batch, which is cleared once the round is
/// written, so the frame cannot be kept past the event being handled.
pub struct Outbox<'a> {
    /// Every connection.
    slots: &'a mut Slab<Slot>,
    /// What the round will write: sends are recorded here.
    round: &'a mut Round,
    /// The loop's limits (the output bound).
    config: &'a LoopConfig,
    /// The time of this turn.
    now: Instant,
}

impl<'a> Outbox<'a> {
    /// The service's view of the connections and of this round.
    pub(super) fn new(
        slots: &'a mut Slab<Slot>,
        round: &'a mut Round,
        config: &'a LoopConfig,
        now: Instant,
    ) -> Self {
        Outbox {
            slots,
            round,
            config,
            now,
        }
    }

    /// The time of this loop turn (read once per turn, not per event).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Frames a text message once, to [`send`](Self::send) it to any number
    /// of connections in this round.
    pub fn frame_text(&mut self, text: &str) -> FrameRef<'a> {
        self.round.frame(Data::Text, text.as_bytes())
    }

    /// Queues a frame for one connection. Ignored if it is not open.
    pub fn send(&mut self, conn: ConnId, frame: FrameRef<'a>) {
        if let Some((connection, turn)) = self.round.reach(self.slots, conn, self.config, self.now)
        {
            connection.send(frame, &turn);
        }
    }

    /// Sends a text message to one connection only (a reply, a welcome).
    /// Cheaper than [`frame_text`](Self::frame_text) and `send` for a single
    /// recipient, and it keeps the round's batch to shared frames, so the
    /// frames each client shares with others stay one range.
    pub fn send_text(&mut self, conn: ConnId, text: &str) {
        self.send_own(conn, Data::Text, text.as_bytes());
    }

    /// Sends a binary message to one connection only.
    pub fn send_binary(&mut self, conn: ConnId, data: &[u8]) {
        self.send_own(conn, Data::Binary, data);
    }

    fn send_own(&mut self, conn: ConnId, data: Data, payload: &[u8]) {
        if let Some((connection, turn)) = self.round.reach(self.slots, conn, self.config, self.now)
        {
            connection.send_own(data, payload, &turn);
        }
    }

    /// From now on `conn` hears every [`broadcast`](Self::broadcast) on
    /// `channel` (the broadcasts made so far are not for it).
    pub fn subscribe(&mut self, conn: ConnId, channel: Channel) {
        self.round.subscribe(self.slots, conn, channel);
    }

    /// Sends a frame to every open subscriber of `channel` except `except`.
    /// It costs the same for ten subscribers or ten thousand: the broadcast
    /// is recorded once, and each subscriber takes the round's broadcasts
    /// in one go before it is written.
    pub fn broadcast(&mut self, channel: Channel, frame: FrameRef<'a>, except: Option<ConnId>) {
        self.round.broadcast(channel, frame, except);
    }

    /// Starts closing a connection with a close code and reason.
    pub fn close(&mut self, conn: ConnId, code: CloseCode, reason: &str) {
        if let Some((connection, turn)) = self.round.reach(self.slots, conn, self.config, self.now)
        {
            connection.close(code, reason, &turn);
        }
    }

    /// Asks to hear of an open connection again at `at` (through
    /// [`Service::timer`]), replacing the timer set before; `None` clears
    /// it. The chat's join deadline is one.
    pub fn set_timer(&mut self, conn: ConnId, at: Option<Instant>) {
        // Reached, so that the loop arms the new deadline when it settles.
        if let Some((connection, _)) = self.round.reach(self.slots, conn, self.config, self.now) {
            connection.set_timer(at);
        }
    }
}
