//! The event loop: one thread, one `mio::Poll`, a slab of connections.
//!
//! The loop moves bytes and runs timers; what the bytes mean is up to the
//! [`Service`] it serves (the chat room in `chat.rs`, an echo service in
//! `examples/echo.rs`). One turn of the loop:
//!
//! 1. `poll` sleeps until a socket is ready or the earliest deadline.
//! 2. New connections are accepted until `WouldBlock`.
//! 3. Each ready connection is read until `WouldBlock` (readiness is
//!    edge-triggered) or until its budget for this turn is spent; then it
//!    waits on the backlog for the next turn, so one busy client cannot
//!    starve the rest.
//! 4. Due deadlines fire (handshake, join, ping, close linger).
//! 5. Every connection touched in this turn is settled once: the service
//!    hears of the ones that closed, queued output is flushed with one
//!    `writev`, WRITABLE interest is kept only while output waits, the next
//!    deadline is armed and finished connections are removed.
//!
//! `docs/event-loop.md` walks through this file step by step.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tungstenite::protocol::frame::coding::{CloseCode, Data};

use crate::evloop::config::LoopConfig;
use crate::evloop::connection::{Connection, Input, CLOSE_LINGER};
use crate::evloop::inbound::ReadBuffer;
use crate::evloop::outqueue::{Batch, Broadcast, Channel, FrameRef};
use crate::evloop::timers::Timers;

/// Identifies a connection to the service: its slab key. Valid until the
/// service is told the connection closed.
pub type ConnId = usize;

/// The listening socket's token. Connection tokens are slab keys, which
/// start at 0, so the two fixed tokens sit at the top of the range.
const LISTENER: Token = Token(usize::MAX - 1);
/// The waker's token: another thread asked the loop to stop.
const WAKER: Token = Token(usize::MAX);

/// Completed connections the kernel holds for us until we accept them.
/// mio's default is 128: a burst of connects longer than one slow turn
/// overflows it, and every connect beyond it waits for a SYN retransmit
/// (1 s, then 3 s, 7 s). Linux caps it at `net.core.somaxconn`, 4096 by
/// default.
const LISTEN_BACKLOG: i32 = 4096;

/// How often, at most, an idle loop hands freed heap memory back to the
/// system (see [`Server::give_back_memory`]). Trimming walks the heap, a
/// few milliseconds for a large one, so not on every idle turn; ten
/// seconds after a burst is soon enough for memory that is only lent.
const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Readiness events taken from the kernel per `poll`. More than this simply
/// wait for the next turn; 1024 amortises the syscall without a large array.
const EVENTS_PER_POLL: usize = 1024;

/// Messages read from one connection per turn before the others get theirs.
/// Large enough that a normal client is drained in one go, small enough
/// that a flood cannot hold the loop for long.
const READ_BUDGET: usize = 32;

/// The application side of the server: told what arrives, it answers
/// through the [`Outbox`].
pub trait Service {
    /// A WebSocket was opened (the upgrade completed).
    fn opened(&mut self, conn: ConnId, peer: SocketAddr, out: &mut Outbox<'_>);

    /// A complete text message arrived.
    fn text(&mut self, conn: ConnId, text: &str, out: &mut Outbox<'_>);

    /// A complete binary message arrived. By default it is refused with
    /// close code 1003, as the chat protocol requires.
    fn binary(&mut self, conn: ConnId, _data: &[u8], out: &mut Outbox<'_>) {
        out.close(
            conn,
            CloseCode::Unsupported,
            "binary frames are not accepted",
        );
    }

    /// An opened connection is no longer open (either side closed it, or it
    /// failed). Called exactly once for each `opened`; `conn` is not valid
    /// after this returns.
    fn closed(&mut self, conn: ConnId, out: &mut Outbox<'_>);

    /// A plain HTTP `GET` (not an upgrade) for `path`; returns the complete
    /// response, see [`crate::evloop::http::response`]. The connection closes after it.
    /// The loop derives the answers to `HEAD` and to a matching
    /// `If-None-Match` from it ([`crate::evloop::http::GetRequest::finish`]).
    fn http_get(&mut self, path: &str) -> Vec<u8>;
}

/// What a service may do to connections while it handles an event. Sends
/// are queued; everything is flushed once at the end of the loop turn.
pub struct Outbox<'a> {
    /// Every connection.
    conns: &'a mut Slab<Connection<TcpStream>>,
    /// What the round will write: sends are recorded here.
    round: &'a mut Round,
    /// The time of this turn.
    now: Instant,
    /// The per-client output bound.
    max_outbound: usize,
}

impl<'a> Outbox<'a> {
    /// The time of this loop turn (read once per turn, not per event).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Frames a text message once, to [`send`](Self::send) it to any number
    /// of connections in this round.
    pub fn frame_text(&mut self, text: &str) -> FrameRef<'a> {
        self.round.batch.frame(Data::Text, text.as_bytes())
    }

    /// Queues a frame for one connection. Ignored if it is not open.
    pub fn send(&mut self, conn: ConnId, frame: FrameRef<'a>) {
        let (max_outbound, now) = (self.max_outbound, self.now);
        if let Some(connection) = self.catch_up(conn) {
            connection.send(frame, max_outbound, now);
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
        let (max_outbound, now) = (self.max_outbound, self.now);
        if let Some(connection) = self.catch_up(conn) {
            connection.send_own(data, payload, max_outbound, now);
        }
    }

    /// From now on `conn` hears every [`broadcast`](Self::broadcast) on
    /// `channel` (the broadcasts made so far are not for it).
    pub fn subscribe(&mut self, conn: ConnId, channel: Channel) {
        if let Some(connection) = self.conns.get_mut(conn) {
            connection.subscribe(channel, self.round.broadcasts.len());
        }
    }

    /// Sends a frame to every open subscriber of `channel` except `except`.
    /// It costs the same for ten subscribers or ten thousand: the broadcast
    /// is recorded once, and each subscriber takes the round's broadcasts
    /// in one go before it is written.
    pub fn broadcast(&mut self, channel: Channel, frame: FrameRef<'a>, except: Option<ConnId>) {
        self.round
            .broadcasts
            .push(Broadcast::new(frame, channel, except));
    }

    /// Starts closing a connection with a close code and reason.
    pub fn close(&mut self, conn: ConnId, code: CloseCode, reason: &str) {
        let now = self.now;
        if let Some(connection) = self.catch_up(conn) {
            connection.close(code, reason, now);
        }
    }

    /// The connection, given the broadcasts it is due first (so that what
    /// is queued next comes after them) and put on the list to settle.
    fn catch_up(&mut self, conn: ConnId) -> Option<&mut Connection<TcpStream>> {
        let connection = self.conns.get_mut(conn)?;
        connection.catch_up(conn, &self.round.broadcasts, self.max_outbound, self.now);
        touch(&mut self.round.touched, conn, connection);
        Some(connection)
    }

    /// Marks a connection as admitted: its join deadline no longer applies.
    pub fn admit(&mut self, conn: ConnId) {
        if let Some(connection) = self.conns.get_mut(conn) {
            connection.admit();
        }
    }
}

/// What the loop writes at the end of the turn, gathered while it reads.
#[derive(Debug, Default)]
struct Round {
    /// Connections to settle at the end of this turn.
    touched: Vec<usize>,
    /// This round's frames, shared by every connection they are sent to.
    batch: Batch,
    /// This round's broadcasts (frames in `batch`), not yet given to all
    /// of their subscribers.
    broadcasts: Vec<Broadcast>,
}

impl Round {
    /// The service's view of the connections and of this round.
    fn outbox<'a>(
        &'a mut self,
        conns: &'a mut Slab<Connection<TcpStream>>,
        now: Instant,
        max_outbound: usize,
    ) -> Outbox<'a> {
        Outbox {
            conns,
            round: self,
            now,
            max_outbound,
        }
    }
}

/// Puts a connection on the list to settle at the end of the turn, once.
fn touch(touched: &mut Vec<usize>, key: usize, conn: &mut Connection<TcpStream>) {
    if !conn.touched {
        conn.touched = true;
        touched.push(key);
    }
}

/// Stops a running server from another thread.
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// Set before waking the loop; the loop checks it on the waker's event.
    requested: Arc<AtomicBool>,
    /// Wakes the loop out of `poll`.
    waker: Arc<Waker>,
}

impl Shutdown {
    /// Asks the loop to shut down gracefully: stop accepting, close every
    /// client with 1001, flush for at most [`CLOSE_LINGER`], then return.
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        // If waking fails the loop is already gone; nothing left to stop.
        let _ = self.waker.wake();
    }
}

/// The event loop and everything it owns.
pub struct Server<S> {
    /// The readiness queue; only [`Server::run`] calls `poll` on it.
    poll: Poll,
    /// The listening socket, dropped when shutting down.
    listener: Option<TcpListener>,
    /// Its address (with the real port when bound to port 0).
    local_addr: SocketAddr,
    /// Every connection, keyed by the token it is registered with.
    conns: Slab<Connection<TcpStream>>,
    /// Every connection's next deadline.
    timers: Timers,
    /// The application.
    service: S,
    /// Limits and timers.
    config: LoopConfig,
    /// Shared with [`Shutdown`] handles.
    shutdown: Shutdown,
    /// When a graceful shutdown gives up waiting for clients.
    shutdown_by: Option<Instant>,
    /// The serial number for the next connection.
    next_serial: u64,
    /// Open connections per peer address, for `--max-connections-per-ip`.
    per_ip: HashMap<IpAddr, usize>,
    /// A descriptor held in reserve: when `accept` fails for lack of
    /// descriptors, closing it frees one to accept and drop the waiting
    /// connection, so the listener does not stay ready forever and the loop
    /// does not spin.
    spare_fd: Option<File>,
    /// Connections that spent their read budget and still have input.
    backlog: Vec<usize>,
    /// What this turn will write.
    round: Round,
    /// The connections being settled in this round (kept for its allocation).
    settling: Vec<usize>,
    /// When freed heap memory was last handed back to the system.
    last_trim: Instant,
    /// Where every connection's input is read and parsed, one at a time, so
    /// that an idle connection holds no read buffer of its own.
    read_buffer: ReadBuffer,
}

impl<S: Service> Server<S> {
    /// Binds the listening socket and prepares the loop; [`run`](Self::run) starts it.
    pub fn bind(config: LoopConfig, service: S) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut listener = listen(config.addr)?;
        let local_addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            conns: Slab::new(),
            timers: Timers::default(),
            service,
            config,
            shutdown: Shutdown {
                requested: Arc::new(AtomicBool::new(false)),
                waker,
            },
            shutdown_by: None,
            next_serial: 0,
            per_ip: HashMap::new(),
            spare_fd: File::open("/dev/null").ok(),
            backlog: Vec::new(),
            round: Round::default(),
            settling: Vec::new(),
            last_trim: Instant::now(),
            read_buffer: ReadBuffer::default(),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that stops the loop from any thread.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Runs the loop until a shutdown is requested and every client is gone
    /// (or [`CLOSE_LINGER`] has passed).
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        loop {
            let timeout = self.poll_timeout();
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            let now = Instant::now();
            if events.is_empty() {
                self.give_back_memory(now);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    WAKER => {
                        if self.shutdown.requested.load(Ordering::SeqCst) {
                            self.begin_shutdown(now);
                        }
                    }
                    Token(key) => {
                        // Readable, or hung up, or an error: reading finds
                        // out which. A spurious event just reads WouldBlock.
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(key, now);
                        }
                        if event.is_writable() {
                            if let Some(conn) = self.conns.get_mut(key) {
                                touch(&mut self.round.touched, key, conn);
                            }
                        }
                    }
                }
            }
            for key in std::mem::take(&mut self.backlog) {
                self.read(key, now);
            }
            self.fire_deadlines(now);
            self.settle(now)?;
            if let Some(deadline) = self.shutdown_by {
                if self.conns.is_empty() || now >= deadline {
                    log::info!("server stopped");
                    return Ok(());
                }
            }
        }
    }

    /// Hands the heap memory freed since the last call back to the system,
    /// at most every [`TRIM_INTERVAL`], when a `poll` found no I/O. glibc
    /// keeps freed memory for reuse, and what a join storm or a burst of
    /// slow readers lends (backlogs, welcomes, the batch) is freed in
    /// scattered pieces it would otherwise hold on to for good: at 19 000
    /// clients that was most of the server's RSS.
    fn give_back_memory(&mut self, now: Instant) {
        if now < self.last_trim + TRIM_INTERVAL {
            return;
        }
        self.last_trim = now;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only returns free pages of the allocator's
        // own heap to the kernel; it touches no memory we own.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// How long `poll` may sleep: not at all while the backlog has work,
    /// else until the next deadline.
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.backlog.is_empty() {
            return Some(Duration::ZERO);
        }
        let next = [self.timers.next_deadline(), self.shutdown_by]
            .into_iter()
            .flatten()
            .min()?;
        // Round up to the next millisecond: epoll sleeps in whole
        // milliseconds, and waking a hair early would spin a turn for nothing.
        let wait = next.saturating_duration_since(Instant::now());
        Some(wait.as_millis().try_into().map_or(wait, |ms: u64| {
            Duration::from_millis(ms + u64::from(wait.subsec_nanos() % 1_000_000 != 0))
        }))
    }

    /// Accepts every waiting connection.
    fn accept(&mut self, now: Instant) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.add_connection(stream, peer, now),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if is_out_of_descriptors(&err) => {
                    // accept fails this way even when nobody is waiting, so
                    // stop as soon as there is nothing left to shed.
                    if !self.shed_one_connection() {
                        return;
                    }
                }
                // The peer gave up while waiting (ECONNABORTED and kin):
                // that connection is gone, the next one may be fine.
                Err(err) => log::debug!("accept failed: {err}"),
            }
        }
    }

    /// Out of descriptors: releases the spare, accepts and drops one waiting
    /// connection, and takes the spare back. Returns whether a connection
    /// was shed (false: nobody was waiting, or there is no spare to use, in
    /// which case the listener stays ready and the next turn tries again).
    fn shed_one_connection(&mut self) -> bool {
        let (Some(listener), Some(spare)) = (&self.listener, self.spare_fd.take()) else {
            log::warn!("out of file descriptors and no spare: not accepting");
            return false;
        };
        drop(spare);
        let shed = match listener.accept() {
            Ok((stream, peer)) => {
                log::warn!("out of file descriptors; dropping a connection from {peer}");
                drop(stream);
                true
            }
            Err(_) => false,
        };
        self.spare_fd = File::open("/dev/null").ok();
        shed
    }

    fn add_connection(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        if self.conns.len() >= self.config.max_connections {
            log::warn!(
                "{peer}: refused, {} connections is the limit",
                self.config.max_connections
            );
            return;
        }
        let per_ip_limit = self.config.max_connections_per_ip;
        if per_ip_limit != 0
            && self
                .per_ip
                .get(&peer.ip())
                .is_some_and(|&n| n >= per_ip_limit)
        {
            log::warn!("{peer}: refused, {per_ip_limit} connections per address is the limit");
            return;
        }
        // Chat frames are small and we coalesce writes ourselves: Nagle's
        // algorithm would only add latency.
        if let Err(err) = stream.set_nodelay(true) {
            log::debug!("{peer}: set_nodelay failed: {err}");
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(err) = self
            .poll
            .registry()
            .register(&mut stream, Token(key), Interest::READABLE)
        {
            log::warn!("{peer}: cannot register: {err}");
            return;
        }
        *self.per_ip.entry(peer.ip()).or_default() += 1;
        self.next_serial += 1;
        log::debug!("{peer}: connected");
        let conn = entry.insert(Connection::new(stream, peer, self.next_serial, now));
        touch(&mut self.round.touched, key, conn);
    }

    /// Reads from one connection until it would block or its budget is spent.
    fn read(&mut self, key: usize, now: Instant) {
        let drained = self.read_some(key, now);
        if let Some(conn) = self.conns.get_mut(key) {
            // Whatever stopped the reading, what is left of this
            // connection's input must leave the shared buffer.
            conn.save_leftover(&mut self.read_buffer);
            if !drained {
                self.backlog.push(key);
            }
        }
    }

    /// Reads up to the budget; returns whether the connection has nothing
    /// more to read for now.
    fn read_some(&mut self, key: usize, now: Instant) -> bool {
        for _ in 0..READ_BUDGET {
            let Some(conn) = self.conns.get_mut(key) else {
                return true;
            };
            touch(&mut self.round.touched, key, conn);
            let input = conn.poll_input(now, &self.config, &mut self.read_buffer);
            let peer = conn.peer;
            let mut out = self
                .round
                .outbox(&mut self.conns, now, self.config.max_outbound_bytes);
            match input {
                Input::Drained | Input::Finished => return true,
                Input::Control => {}
                Input::Opened => self.service.opened(key, peer, &mut out),
                Input::Text(text) => self.service.text(key, text, &mut out),
                Input::Binary(data) => self.service.binary(key, data, &mut out),
                Input::HttpGet(request) => {
                    let response = request.finish(self.service.http_get(&request.path));
                    self.conns[key].respond(&response, now);
                }
            }
        }
        false
    }

    /// Handles every deadline that has come due.
    fn fire_deadlines(&mut self, now: Instant) {
        while let Some(expired) = self.timers.pop_due(now) {
            let Some(conn) = self.conns.get_mut(expired.key) else {
                continue;
            };
            // A stale entry: the connection was replaced, or re-armed earlier.
            if conn.serial != expired.serial || conn.armed != Some(expired.at) {
                continue;
            }
            conn.armed = None;
            // A deadline may close the connection: what was broadcast
            // before goes out first.
            let max_outbound = self.config.max_outbound_bytes;
            conn.catch_up(expired.key, &self.round.broadcasts, max_outbound, now);
            conn.on_deadline(now, &self.config);
            touch(&mut self.round.touched, expired.key, conn);
        }
    }

    /// Settles every connection touched in this turn (see the module docs),
    /// in rounds: a connection that fails while being written is told to
    /// the service in the next round, whose `left` broadcast may touch
    /// connections already written in this one.
    fn settle(&mut self, now: Instant) -> io::Result<()> {
        loop {
            // Goodbyes first, so that their broadcasts join this round's batch.
            let mut next = 0;
            while let Some(&key) = self.round.touched.get(next) {
                next += 1;
                if self.conns[key].take_goodbye() {
                    self.say_goodbye(key, now);
                }
            }
            self.deliver_broadcasts(now);
            if self.round.touched.is_empty() {
                return Ok(());
            }
            // Nothing sends while the round is written, so every range in a
            // queue is a range of this batch.
            let mut round =
                std::mem::replace(&mut self.round.touched, std::mem::take(&mut self.settling));
            for &key in &round {
                let conn = &mut self.conns[key];
                conn.touched = false;
                conn.flush(self.round.batch.bytes());
                if conn.has_goodbye_pending() {
                    // It failed: the service hears of it next round, and
                    // then it is removed.
                    touch(&mut self.round.touched, key, conn);
                    continue;
                }
                self.update_registration(key)?;
            }
            round.clear();
            self.settling = round;
            self.round.batch.clear();
        }
    }

    /// Gives every subscriber the round's broadcasts it has not had yet,
    /// and starts the list afresh.
    fn deliver_broadcasts(&mut self, now: Instant) {
        if self.round.broadcasts.is_empty() {
            return;
        }
        let max_outbound = self.config.max_outbound_bytes;
        for (key, conn) in self.conns.iter_mut() {
            if conn.catch_up(key, &self.round.broadcasts, max_outbound, now) {
                touch(&mut self.round.touched, key, conn);
            }
            conn.end_round();
        }
        self.round.broadcasts.clear();
    }

    fn say_goodbye(&mut self, key: usize, now: Instant) {
        let mut out = self
            .round
            .outbox(&mut self.conns, now, self.config.max_outbound_bytes);
        self.service.closed(key, &mut out);
    }

    /// After a connection's output was flushed: removes it if finished, else
    /// keeps WRITABLE interest only while output waits and arms its deadline.
    fn update_registration(&mut self, key: usize) -> io::Result<()> {
        let conn = &mut self.conns[key];
        if conn.phase.is_closed() {
            let mut conn = self.conns.remove(key);
            self.poll.registry().deregister(&mut conn.socket)?;
            if let Some(count) = self.per_ip.get_mut(&conn.peer.ip()) {
                *count -= 1;
                if *count == 0 {
                    self.per_ip.remove(&conn.peer.ip());
                }
            }
            log::debug!("{}: connection closed", conn.peer);
            return Ok(());
        }
        let want_write = !conn.out.is_empty();
        if want_write != conn.write_interest {
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            self.poll
                .registry()
                .reregister(&mut conn.socket, Token(key), interest)?;
            conn.write_interest = want_write;
        }
        if let Some(next) = conn.next_deadline(&self.config) {
            if conn.armed.is_none_or(|armed| next < armed) {
                self.timers.schedule(next, key, conn.serial);
                conn.armed = Some(next);
            }
        }
        Ok(())
    }

    /// Stops accepting and closes every client with 1001.
    fn begin_shutdown(&mut self, now: Instant) {
        if self.shutdown_by.is_some() {
            return;
        }
        log::info!("shutting down: closing {} connections", self.conns.len());
        // What was broadcast before the request still goes out before 1001.
        self.deliver_broadcasts(now);
        self.listener = None;
        self.shutdown_by = Some(now + CLOSE_LINGER);
        for (key, conn) in self.conns.iter_mut() {
            conn.close(CloseCode::Away, "server shutting down", now);
            touch(&mut self.round.touched, key, conn);
        }
    }
}

/// A non-blocking listening socket with our backlog (mio's `bind` picks
/// its own) and `SO_REUSEADDR`, so a restarted server can bind while old
/// connections linger in TIME_WAIT.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Whether `accept` failed because the process or the system ran out of
/// file descriptors.
fn is_out_of_descriptors(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// A server running on its own thread, for tests, benchmarks and embedding.
#[derive(Debug)]
pub struct ServerHandle {
    /// Where it listens.
    addr: SocketAddr,
    /// Stops it.
    shutdown: Shutdown,
    /// The loop's thread; `None` once joined.
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl ServerHandle {
    /// Binds `service` per `config` and runs it on a new thread.
    ///
    /// The server is bound on the thread that runs it; the address (or the
    /// error from binding) and the shutdown handle are sent back before
    /// the loop starts.
    pub fn spawn<S: Service + Send + 'static>(config: LoopConfig, service: S) -> io::Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("mioserver".into())
            .spawn(move || {
                let server = Server::bind(config, service);
                let server = match server {
                    Ok(server) => {
                        let _ = ready_tx.send(Ok((server.local_addr(), server.shutdown_handle())));
                        server
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return Ok(());
                    }
                };
                server.run()
            })?;
        let (addr, shutdown) = ready_rx
            .recv()
            .map_err(|_| io::Error::other("the server thread died while starting"))??;
        Ok(ServerHandle {
            addr,
            shutdown,
            thread: Some(thread),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shuts the server down gracefully and waits for its thread.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.shutdown.request();
        thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the server thread panicked")))
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
