//! The event loop: one thread, one `mio::Poll`, a slab of connections.
//!
//! The loop moves bytes and runs timers; what the bytes mean is up to the
//! [`Service`] it serves (the chat in `chat::service`, an echo service in
//! `examples/echo.rs`). One turn of the loop ([`Server::turn`]):
//!
//! 1. `poll` sleeps until a socket is ready or the earliest deadline.
//! 2. New connections are accepted until `WouldBlock`.
//! 3. Each ready connection is read until `WouldBlock` (readiness is
//!    edge-triggered) or until its read budget is spent ([`read_turn`]);
//!    then it goes on the list of unfinished reads, which is read once more
//!    (one more budget) after every ready connection had its share. What is
//!    still unfinished then is read in the next turn, whose `poll` does
//!    not sleep. One busy client cannot starve the rest.
//! 4. Due deadlines fire (handshake, ping, close linger, the service's
//!    timers).
//! 5. Every connection touched in this turn is settled once: the service
//!    hears of the ones that closed, queued output is flushed with one
//!    `writev`, WRITABLE interest is kept only while output waits, the next
//!    deadline is armed and finished connections are removed.
//!
//! A slab slot is freed only in step 5, after every event of the turn was
//! handled: an event already taken from `poll` for a connection that closed
//! can never reach a new connection that reuses its slot.
//!
//! Each connection's slot (`Slot`) holds the loop's own bookkeeping next
//! to the connection; only this file writes it.
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
use crate::evloop::connection::{
    read_turn, Connection, Input, ReadHost, Socket, Turn, CLOSE_LINGER,
};
use crate::evloop::http::Refusal;
use crate::evloop::inbound::ReadBuffer;
use crate::evloop::metrics::{self, LoopMetrics};
use crate::evloop::outqueue::{Batch, Broadcast, Channel, FrameRef};
use crate::evloop::service::{Attach, Outbox, Readiness, Service, Wakeup};
use crate::evloop::timers::Timers;
use crate::evloop::tls::{Stream, Tls, TlsReloader};

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

/// The loop's own record of one connection: the connection itself and
/// what only the loop knows about it. Nothing outside this file writes
/// these fields; the service reaches connections through [`Round::reach`].
#[derive(Debug)]
pub(super) struct Slot {
    /// The connection: its socket, protocol state and output queue.
    conn: Connection<Stream>,
    /// The deadline currently armed in the timer heap, if any.
    armed: Option<Instant>,
    /// Whether WRITABLE interest is registered (only while output waits).
    write_interest: bool,
    /// Whether the connection is on the round's list to settle, so that it
    /// is listed once however much happens to it.
    touched: bool,
    /// The address the connection counts under for
    /// `--max-connections-per-ip`, to give its place back when it goes:
    /// the peer's from accept on, or for a trusted proxy's connection the
    /// client's once its head is read (none before, so that the proxy's
    /// own address never fills up).
    counted: Option<IpAddr>,
}

impl Slot {
    /// Puts the connection on the list to settle at the end of the turn, once.
    fn touch(&mut self, key: usize, touched: &mut Vec<usize>) {
        if !self.touched {
            self.touched = true;
            touched.push(key);
        }
    }
}

/// How many connections each address holds, for
/// `--max-connections-per-ip`.
#[derive(Debug)]
struct PerAddress {
    /// Connections one address may hold; 0 means no limit.
    limit: usize,
    /// Open connections per address; an address with none has no entry.
    counts: HashMap<IpAddr, usize>,
}

impl PerAddress {
    /// Whether `ip` holds as many connections as it may.
    fn is_full(&self, ip: IpAddr) -> bool {
        self.limit != 0 && self.counts.get(&ip).is_some_and(|&n| n >= self.limit)
    }

    /// Counts one more connection for `ip`.
    fn add(&mut self, ip: IpAddr) {
        *self.counts.entry(ip).or_default() += 1;
    }

    /// Gives back the place of a connection of `ip` that has gone.
    fn remove(&mut self, ip: IpAddr) {
        if let Some(count) = self.counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&ip);
            }
        }
    }
}

/// What the loop writes at the end of the turn, gathered while it reads.
#[derive(Debug, Default)]
pub(super) struct Round {
    /// Connections to settle at the end of this turn.
    touched: Vec<usize>,
    /// This round's frames, shared by every connection they are sent to.
    batch: Batch,
    /// This round's broadcasts (frames in `batch`), not yet given to all
    /// of their subscribers.
    broadcasts: Vec<Broadcast>,
}

impl Round {
    /// The one way to reach a connection in order to queue output on it:
    /// it is put on the list to settle (so what is queued gets written),
    /// and the [`Turn`] it is handed makes it take the broadcasts it is due
    /// before anything else (so its frames keep their order).
    pub(super) fn reach<'s>(
        &'s mut self,
        slots: &'s mut Slab<Slot>,
        key: usize,
        config: &'s LoopConfig,
        now: Instant,
    ) -> Option<(&'s mut Connection<Stream>, Turn<'s>)> {
        let slot = slots.get_mut(key)?;
        slot.touch(key, &mut self.touched);
        let turn = Turn {
            now,
            config,
            broadcasts: &self.broadcasts,
        };
        Some((&mut slot.conn, turn))
    }

    /// Frames a message into the round's batch.
    pub(super) fn frame<'r>(&mut self, data: Data, payload: &[u8]) -> FrameRef<'r> {
        self.batch.frame(data, payload)
    }

    /// Records a broadcast; subscribers take it when they are next reached,
    /// or when the round is written.
    pub(super) fn broadcast(
        &mut self,
        channel: Channel,
        frame: FrameRef<'_>,
        except: Option<usize>,
    ) {
        self.broadcasts.push(Broadcast::new(frame, channel, except));
    }

    /// Subscribes a connection to `channel` from this point of the round on.
    pub(super) fn subscribe(&self, slots: &mut Slab<Slot>, key: usize, channel: Channel) {
        if let Some(slot) = slots.get_mut(key) {
            slot.conn.subscribe(channel, key, self.broadcasts.len());
        }
    }
}

/// The loop's side of [`read_turn`]: the connection is taken from the slab
/// afresh for every read, because in between the service has the whole
/// slab (its answer may go to any connection).
struct LoopReader<'a, S> {
    /// The connection being read.
    key: usize,
    /// Every connection.
    slots: &'a mut Slab<Slot>,
    /// What the round will write.
    round: &'a mut Round,
    /// The application, told of each input.
    service: &'a mut S,
    /// The loop's limits.
    config: &'a LoopConfig,
    /// The time of this turn.
    now: Instant,
    /// The loop's counters, for `GET /metrics`.
    metrics: &'a mut LoopMetrics,
    /// Connections per address, for a trusted proxy's clients.
    per_ip: &'a mut PerAddress,
}

impl<S: Service> ReadHost<Stream> for LoopReader<'_, S> {
    fn connection(&mut self) -> &mut Connection<Stream> {
        let slot = &mut self.slots[self.key];
        // Whatever reading does (a pong, a close reply, a failure) must be
        // settled at the end of the turn.
        slot.touch(self.key, &mut self.round.touched);
        &mut slot.conn
    }

    fn deliver(&mut self, input: Input<'_>) {
        let (key, now) = (self.key, self.now);
        if let Input::HttpGet(request) = input {
            let response = if request.path == metrics::PATH {
                // The scrape's own connection (its bytes, its handshake)
                // is counted in, as every other one was when settled.
                self.metrics.settled(&mut self.slots[key].conn);
                self.metrics
                    .response(self.slots.len(), self.service.metrics())
            } else {
                self.service.http_get(&request.path)
            };
            // HEAD and a matching If-None-Match are derived from the full
            // answer, for every path.
            let response = request.finish(response);
            self.slots[key].conn.respond(&response, now);
            return;
        }
        let peer = self.slots[key].conn.peer();
        let mut out = Outbox::new(self.slots, self.round, self.config, now);
        match input {
            Input::Opened => self.service.opened(key, peer, &mut out),
            Input::Text(text) => self.service.text(key, text, &mut out),
            Input::Binary(data) => self.service.binary(key, data, &mut out),
            Input::HttpGet(_)
            | Input::Forwarded(_)
            | Input::Control
            | Input::Drained
            | Input::Finished => {
                unreachable!("read_turn delivers only inputs for the application")
            }
        }
    }

    fn admit(&mut self, client: IpAddr) -> Result<(), Refusal> {
        if self.per_ip.is_full(client) {
            log::warn!(
                "{client}: refused, {} connections per address is the limit",
                self.per_ip.limit
            );
            self.metrics.refused();
            // What nginx answers for its own `limit_conn`.
            return Err(Refusal::new(503, "too many connections from your address"));
        }
        self.per_ip.add(client);
        self.slots[self.key].counted = Some(client);
        Ok(())
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
    /// The readiness queue; only [`Server::turn`] calls `poll` on it.
    poll: Poll,
    /// The listening socket, dropped when shutting down.
    listener: Option<TcpListener>,
    /// Its address (with the real port when bound to port 0).
    local_addr: SocketAddr,
    /// Every connection and the loop's record of it, keyed by the token it
    /// is registered with.
    slots: Slab<Slot>,
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
    /// Open connections per address, for `--max-connections-per-ip`.
    per_ip: PerAddress,
    /// A descriptor held in reserve: when `accept` fails for lack of
    /// descriptors, closing it frees one to accept and drop the waiting
    /// connection, so the listener does not stay ready forever and the loop
    /// does not spin.
    spare_fd: Option<File>,
    /// Connections that spent their read budget and may still have input:
    /// read again after the turn's events (and in the next turn, if the
    /// budget runs out again), since no new readiness event comes for it.
    unfinished_reads: Vec<usize>,
    /// What this turn will write.
    round: Round,
    /// The connections being settled in this round (kept for its allocation).
    settling: Vec<usize>,
    /// When freed heap memory was last handed back to the system.
    last_trim: Instant,
    /// Where every connection's input is read and parsed, one at a time, so
    /// that an idle connection holds no read buffer of its own.
    read_buffer: ReadBuffer,
    /// The flag of the service's [`Wakeup`]: set by another thread before
    /// it wakes the loop.
    woken: Arc<AtomicBool>,
    /// The TLS settings for new connections (none: plain TCP).
    tls: Tls,
    /// What the loop counts for `GET /metrics`.
    metrics: LoopMetrics,
}

impl<S: Service> Server<S> {
    /// Binds the listening socket and prepares the loop; [`run`](Self::run) starts it.
    pub fn bind(config: LoopConfig, mut service: S) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut listener = listen(config.addr, config.reuse_port)?;
        let local_addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let woken = Arc::new(AtomicBool::new(false));
        service.attach(Attach {
            wakeup: Wakeup::new(Arc::clone(&woken), Arc::clone(&waker)),
            registry: poll.registry().try_clone()?,
        });
        let tls = Tls::new(config.tls.clone());
        let per_ip = PerAddress {
            limit: config.max_connections_per_ip,
            counts: HashMap::new(),
        };
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            slots: Slab::new(),
            timers: Timers::default(),
            service,
            config,
            shutdown: Shutdown {
                requested: Arc::new(AtomicBool::new(false)),
                waker,
            },
            shutdown_by: None,
            next_serial: 0,
            per_ip,
            spare_fd: File::open("/dev/null").ok(),
            unfinished_reads: Vec::new(),
            round: Round::default(),
            settling: Vec::new(),
            last_trim: Instant::now(),
            read_buffer: ReadBuffer::default(),
            woken,
            tls,
            metrics: LoopMetrics::default(),
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

    /// A handle that hands reloaded TLS settings to the loop from any thread.
    pub fn tls_reloader(&self) -> TlsReloader {
        self.tls.reloader(Arc::clone(&self.shutdown.waker))
    }

    /// Runs the loop until a shutdown is requested and every client is gone
    /// (or [`CLOSE_LINGER`] has passed).
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        while !self.turn(&mut events, None)? {}
        log::info!("server stopped");
        Ok(())
    }

    /// One turn of the loop (see the module docs); `poll` sleeps at most
    /// `max_wait` on top of its own deadlines (tests turn the loop one step
    /// at a time). Returns whether the server has stopped.
    pub fn turn(&mut self, events: &mut Events, max_wait: Option<Duration>) -> io::Result<bool> {
        let timeout = match (self.poll_timeout(), max_wait) {
            (Some(own), Some(max)) => Some(own.min(max)),
            (own, max) => own.or(max),
        };
        if let Err(err) = self.poll.poll(events, timeout) {
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
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
                    // mio allows one waker per `Poll`: shutdown, TLS
                    // reloads and the service's wakeups share it, and each
                    // sets its own flag before waking.
                    self.tls.take_reloaded();
                    if self.shutdown.requested.load(Ordering::SeqCst) {
                        self.begin_shutdown(now);
                    }
                    if self.woken.swap(false, Ordering::SeqCst) {
                        let mut out =
                            Outbox::new(&mut self.slots, &mut self.round, &self.config, now);
                        self.service.woken(&mut out);
                    }
                }
                token if Attach::source_of(token).is_some() => {
                    self.source_ready(token, event, now);
                }
                Token(key) => {
                    // Readable, or hung up, or an error: reading finds
                    // out which. A spurious event just reads WouldBlock.
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.read(key, now);
                    }
                    if event.is_writable() {
                        if let Some(slot) = self.slots.get_mut(key) {
                            slot.touch(key, &mut self.round.touched);
                        }
                    }
                }
            }
        }
        for key in std::mem::take(&mut self.unfinished_reads) {
            self.read(key, now);
        }
        self.fire_deadlines(now);
        let mut out = Outbox::new(&mut self.slots, &mut self.round, &self.config, now);
        self.service.end_of_turn(&mut out);
        self.settle(now)?;
        self.metrics.turn(events.iter().count(), now.elapsed());
        Ok(self
            .shutdown_by
            .is_some_and(|deadline| self.slots.is_empty() || now >= deadline))
    }

    /// Tells the service that one of its own sockets is ready.
    fn source_ready(&mut self, token: Token, event: &mio::event::Event, now: Instant) {
        let Some(source) = Attach::source_of(token) else {
            return;
        };
        let ready = Readiness {
            readable: event.is_readable() || event.is_read_closed() || event.is_error(),
            writable: event.is_writable(),
        };
        let mut out = Outbox::new(&mut self.slots, &mut self.round, &self.config, now);
        self.service.source_ready(source, ready, &mut out);
    }

    /// Hands the heap memory freed since the last call back to the system,
    /// at most every [`TRIM_INTERVAL`], when a `poll` found no I/O. glibc
    /// keeps freed memory for reuse, and what a join storm or a burst of
    /// slow readers lends (carried-over output, welcomes, the batch) is freed in
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

    /// How long `poll` may sleep: not at all while reads are unfinished,
    /// else until the next deadline.
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.unfinished_reads.is_empty() {
            return Some(Duration::ZERO);
        }
        let next = [
            self.timers.next_deadline(),
            self.shutdown_by,
            self.service.next_deadline(),
        ]
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

    fn add_connection(&mut self, stream: TcpStream, peer: SocketAddr, now: Instant) {
        self.metrics.accepted();
        if self.slots.len() >= self.config.max_connections {
            self.metrics.refused();
            log::warn!(
                "{peer}: refused, {} connections is the limit",
                self.config.max_connections
            );
            return;
        }
        // A trusted proxy's connection is counted under its client's
        // address, which its request head will tell (`LoopReader::admit`).
        let trusted = self.config.trusted_proxies.contains(&peer.ip());
        if !trusted && self.per_ip.is_full(peer.ip()) {
            log::warn!(
                "{peer}: refused, {} connections per address is the limit",
                self.per_ip.limit
            );
            self.metrics.refused();
            return;
        }
        let counted = (!trusted).then_some(peer.ip());
        let mut stream = match self.tls.wrap(stream) {
            Ok(stream) => stream,
            Err(err) => {
                log::warn!("{peer}: cannot start TLS: {err}");
                return;
            }
        };
        // Chat frames are small and we coalesce writes ourselves: Nagle's
        // algorithm would only add latency.
        if let Err(err) = stream.tcp().set_nodelay(true) {
            log::debug!("{peer}: set_nodelay failed: {err}");
        }
        let entry = self.slots.vacant_entry();
        let key = entry.key();
        if let Err(err) = self
            .poll
            .registry()
            .register(&mut stream, Token(key), Interest::READABLE)
        {
            log::warn!("{peer}: cannot register: {err}");
            return;
        }
        if let Some(ip) = counted {
            self.per_ip.add(ip);
        }
        self.next_serial += 1;
        log::debug!("{peer}: connected");
        self.metrics.opened(&stream);
        let slot = entry.insert(Slot {
            conn: Connection::new(stream, peer, self.next_serial, now),
            armed: None,
            write_interest: false,
            touched: false,
            counted,
        });
        slot.touch(key, &mut self.round.touched);
    }

    /// Reads from one connection until it would block or its budget is
    /// spent; in that case it goes on the list of unfinished reads.
    fn read(&mut self, key: usize, now: Instant) {
        if !self.slots.contains(key) {
            // A readiness event or an unfinished read for a slot freed
            // since: nothing to read.
            return;
        }
        let mut host = LoopReader {
            key,
            slots: &mut self.slots,
            round: &mut self.round,
            service: &mut self.service,
            config: &self.config,
            now,
            metrics: &mut self.metrics,
            per_ip: &mut self.per_ip,
        };
        if !read_turn(&mut host, now, &self.config, &mut self.read_buffer) {
            self.unfinished_reads.push(key);
        }
    }

    /// Handles every deadline that has come due: the connections', then
    /// the service's own.
    fn fire_deadlines(&mut self, now: Instant) {
        self.fire_connection_deadlines(now);
        if self.service.next_deadline().is_some_and(|at| at <= now) {
            let mut out = Outbox::new(&mut self.slots, &mut self.round, &self.config, now);
            self.service.deadline(&mut out);
        }
    }

    /// Handles every connection deadline that has come due.
    fn fire_connection_deadlines(&mut self, now: Instant) {
        while let Some(expired) = self.timers.pop_due(now) {
            let key = expired.key;
            let Some(slot) = self.slots.get_mut(key) else {
                continue;
            };
            // A stale entry: the connection was replaced, or re-armed earlier.
            if slot.conn.serial() != expired.serial || slot.armed != Some(expired.at) {
                continue;
            }
            slot.armed = None;
            let Some((conn, turn)) = self.round.reach(&mut self.slots, key, &self.config, now)
            else {
                continue;
            };
            if conn.on_deadline(&turn) {
                let mut out = Outbox::new(&mut self.slots, &mut self.round, &self.config, now);
                self.service.timer(key, &mut out);
            }
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
                if self.slots[key].conn.take_goodbye() {
                    let mut out = Outbox::new(&mut self.slots, &mut self.round, &self.config, now);
                    self.service.closed(key, &mut out);
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
                let slot = &mut self.slots[key];
                slot.touched = false;
                slot.conn.flush(self.round.batch.bytes());
                if slot.conn.has_goodbye_pending() {
                    // It failed: the service hears of it next round, and
                    // then it is removed.
                    slot.touch(key, &mut self.round.touched);
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
        let turn = Turn {
            now,
            config: &self.config,
            broadcasts: &self.round.broadcasts,
        };
        for (key, slot) in self.slots.iter_mut() {
            if slot.conn.catch_up(&turn) {
                slot.touch(key, &mut self.round.touched);
            }
            slot.conn.end_round();
        }
        self.round.broadcasts.clear();
    }

    /// After a connection's output was flushed: removes it if finished, else
    /// keeps WRITABLE interest only while output waits and arms its deadline.
    fn update_registration(&mut self, key: usize) -> io::Result<()> {
        let slot = &mut self.slots[key];
        if slot.conn.phase().is_closed() {
            let mut slot = self.slots.remove(key);
            self.poll.registry().deregister(slot.conn.socket_mut())?;
            self.metrics.retire(&mut slot.conn);
            if let Some(ip) = slot.counted {
                self.per_ip.remove(ip);
            }
            log::debug!("{}: connection closed", slot.conn.peer());
            return Ok(());
        }
        self.metrics.settled(&mut slot.conn);
        let want_write = slot.conn.queued() > 0 || slot.conn.socket().has_pending_output();
        if want_write != slot.write_interest {
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            self.poll
                .registry()
                .reregister(slot.conn.socket_mut(), Token(key), interest)?;
            slot.write_interest = want_write;
        }
        if let Some(next) = slot.conn.next_deadline(&self.config) {
            if slot.armed.is_none_or(|armed| next < armed) {
                self.timers.schedule(next, key, slot.conn.serial());
                slot.armed = Some(next);
            }
        }
        Ok(())
    }

    /// Stops accepting and closes every client with 1001.
    fn begin_shutdown(&mut self, now: Instant) {
        if self.shutdown_by.is_some() {
            return;
        }
        log::info!("shutting down: closing {} connections", self.slots.len());
        self.listener = None;
        self.shutdown_by = Some(now + CLOSE_LINGER);
        // What was broadcast before the request still goes out before 1001:
        // the turn makes each connection take it first.
        let turn = Turn {
            now,
            config: &self.config,
            broadcasts: &self.round.broadcasts,
        };
        for (key, slot) in self.slots.iter_mut() {
            slot.conn
                .close(CloseCode::Away, "server shutting down", &turn);
            slot.touch(key, &mut self.round.touched);
        }
    }
}

/// A non-blocking listening socket with our listen queue length (mio's `bind` picks
/// its own) and `SO_REUSEADDR`, so a restarted server can bind while old
/// connections linger in TIME_WAIT; with `reuse_port`, `SO_REUSEPORT` too.
fn listen(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
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

#[cfg(test)]
mod tests {
    //! The loop driven one turn at a time over real loopback sockets.

    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpStream as StdStream;

    use super::*;
    use crate::evloop::connection::READ_BUDGET;
    use crate::evloop::http;
    use crate::evloop::service::ConnId;
    use crate::evloop::testing::{client_frame, UPGRADE};

    /// A message larger than the kernel's socket buffers on both sides of a
    /// loopback connection (a few MiB each at most), so that writing it
    /// takes several turns when the client reads late.
    const BIG: usize = 32 << 20;

    /// A service that records what it is told, and answers "big" with a
    /// message of [`BIG`] bytes.
    #[derive(Default)]
    struct Recorder {
        /// How many connections opened.
        opened: usize,
        /// Every text, in order.
        texts: Vec<String>,
        /// Every binary message's length, in order.
        binaries: Vec<usize>,
    }

    impl Service for Recorder {
        fn opened(&mut self, _conn: ConnId, _peer: SocketAddr, _out: &mut Outbox<'_>) {
            self.opened += 1;
        }

        fn text(&mut self, conn: ConnId, text: &str, out: &mut Outbox<'_>) {
            if text == "big" {
                out.send_binary(conn, &vec![b'b'; BIG]);
            }
            self.texts.push(text.to_owned());
        }

        fn binary(&mut self, _conn: ConnId, data: &[u8], _out: &mut Outbox<'_>) {
            self.binaries.push(data.len());
        }

        fn closed(&mut self, _conn: ConnId, _out: &mut Outbox<'_>) {}

        fn http_get(&mut self, _path: &str) -> Vec<u8> {
            http::response(404, "", "text/plain", b"")
        }
    }

    /// A server on a free loopback port whose output bound lets [`BIG`] wait.
    fn server() -> Server<Recorder> {
        let config = LoopConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            max_outbound_bytes: 2 * BIG,
            ..LoopConfig::default()
        };
        Server::bind(config, Recorder::default()).expect("bind")
    }

    /// A client that has sent its upgrade request and then `frames`.
    fn client(server: &Server<Recorder>, frames: &[Vec<u8>]) -> StdStream {
        let mut client = StdStream::connect(server.local_addr()).unwrap();
        client
            .write_all(&[UPGRADE, &frames.concat()].concat())
            .unwrap();
        client
    }

    /// Turns the loop until `done` holds, for ten seconds at most.
    fn turn_until(server: &mut Server<Recorder>, mut done: impl FnMut(&Server<Recorder>) -> bool) {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        let give_up = Instant::now() + Duration::from_secs(10);
        while !done(server) {
            assert!(Instant::now() < give_up, "the loop never got there");
            server
                .turn(&mut events, Some(Duration::from_millis(10)))
                .unwrap();
        }
    }

    /// The only connection's slot.
    fn only_slot(server: &Server<Recorder>) -> &Slot {
        let mut slots = server.slots.iter();
        let (_, slot) = slots.next().expect("a connection");
        assert!(slots.next().is_none(), "one connection");
        slot
    }

    #[test]
    fn a_partial_write_keeps_writable_interest_until_the_queue_drains() {
        let mut server = server();
        let mut client = client(&server, &[client_frame(0x1, b"big")]);
        turn_until(&mut server, |server| server.service.texts == ["big"]);
        // The client has read nothing: the kernel took what it could and
        // the rest waits, with WRITABLE interest to hear when it may go on.
        let slot = only_slot(&server);
        assert!(slot.conn.queued() > 0, "the kernel took it all");
        assert!(slot.write_interest);
        // The client reads; each turn writes what the kernel takes.
        client.set_nonblocking(true).unwrap();
        let mut received = 0;
        let mut chunk = vec![0; 1 << 16];
        turn_until(&mut server, |server| {
            loop {
                match client.read(&mut chunk) {
                    Ok(n) => received += n,
                    Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                    Err(err) => panic!("read: {err}"),
                }
            }
            only_slot(server).conn.queued() == 0
        });
        // Drained: WRITABLE interest is dropped in the same turn.
        assert!(!only_slot(&server).write_interest);
        assert!(received > BIG, "the message and the 101 before it");
    }

    #[test]
    fn a_connection_that_spends_its_read_budget_is_read_again_next_turn() {
        let mut server = server();
        // Two budgets: one for the readiness event, one for the pass over
        // unfinished reads after every other ready connection was read.
        let total = 2 * READ_BUDGET + 8;
        let frames: Vec<Vec<u8>> = (0..total)
            .map(|i| client_frame(0x1, i.to_string().as_bytes()))
            .collect();
        let _client = client(&server, &frames);
        turn_until(&mut server, |server| server.service.opened == 1);
        // `Opened` took one input of the budget, the texts the rest.
        assert_eq!(server.service.texts.len(), 2 * READ_BUDGET - 1);
        let key = server.slots.iter().next().unwrap().0;
        assert_eq!(server.unfinished_reads, [key]);
        assert_eq!(server.poll_timeout(), Some(Duration::ZERO), "no sleeping");
        // The next turn reads the rest though no new readiness came.
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        server.turn(&mut events, None).unwrap();
        let expected: Vec<String> = (0..total).map(|i| i.to_string()).collect();
        assert_eq!(server.service.texts, expected);
        assert!(server.unfinished_reads.is_empty());
    }

    #[test]
    fn a_binary_message_is_the_services_to_judge() {
        let mut server = server();
        let _client = client(&server, &[client_frame(0x2, &[1, 2, 3])]);
        turn_until(&mut server, |server| !server.service.binaries.is_empty());
        assert_eq!(server.service.binaries, [3]);
        assert!(
            only_slot(&server).conn.phase().is_open(),
            "the loop closes nothing"
        );
    }
}
