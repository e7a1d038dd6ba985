//! One client thread: a `mio::Poll` over its share of the connections, each
//! driven through connect, upgrade and join by a small state machine, then
//! sending on schedule and timing every delivery.
//!
//! Everything is non-blocking from the first `connect`, so one thread can
//! open thousands of connections at a steady rate while it keeps reading
//! the ones already joined (the server tells every joined client about
//! every join, and a client that stops reading gets dropped as too slow).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr};
use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tungstenite::handshake::client::generate_key;
use tungstenite::handshake::derive_accept_key;

use super::frame::{self, Frame};
use super::report::Tally;
use super::tls::{Session, TlsClient};
use super::wire::{self, Event, Target};
use super::{node_of, Params, Scenario};

/// The timer's token; connections use their index, which never gets here.
const TIMER: Token = Token(usize::MAX);

/// The longest a thread sleeps in `poll`: it bounds how late the thread
/// notices the coordinator's flags, and 10 ms is short next to any phase.
const IDLE_WAIT: Duration = Duration::from_millis(10);

/// How often connections still joining are checked against the connect
/// timeout: a tenth of a second is precise enough for a limit of seconds.
const TIMEOUT_CHECK: Duration = Duration::from_millis(100);

/// Events taken per `poll`: enough that a busy turn rarely leaves some for
/// the next, small enough to stay in cache.
const EVENTS_PER_POLL: usize = 1024;

/// The read buffer: 64 KiB holds a burst of many small messages, so one
/// `read` usually empties the socket.
const READ_BUFFER: usize = 64 * 1024;

/// The largest server frame accepted: a `welcome` with a long history of
/// 4000-character texts is well under this.
const MAX_FRAME: usize = 16 * 1024 * 1024;

/// What the coordinator and the client threads share.
pub struct Shared {
    /// The zero of every timestamp written into a text. Every client of
    /// the run reads this one clock, so a receiver on another node than
    /// the sender measures the latency exactly as one on the same node.
    pub epoch: Instant,
    /// Clients that joined so far.
    pub joined: AtomicU64,
    /// Clients that failed to join.
    pub failed: AtomicU64,
    /// The load schedule, set once every client has joined or failed.
    pub plan: OnceLock<Plan>,
    /// Measured messages sent so far (for progress and the drain).
    pub sent: AtomicU64,
    /// Measured copies delivered so far (for progress and the drain).
    pub delivered: AtomicU64,
    /// Set by the coordinator when the run is over.
    pub stop: AtomicBool,
}

impl Shared {
    /// Fresh counters, with the epoch now.
    pub fn new() -> Shared {
        Shared {
            epoch: Instant::now(),
            joined: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            plan: OnceLock::new(),
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }
}

/// One server to connect to: a node of a cluster, or the only server.
pub struct Node {
    /// Where it listens.
    pub target: Target,
    /// wss://: the settings each connection's TLS session starts from
    /// (they name this node's address).
    pub tls: Option<TlsClient>,
}

/// When load starts, when measuring starts and when sending stops.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The first message is due.
    pub start: Instant,
    /// No message is sent from here on.
    pub measure_to: Instant,
    /// The intended send times that are measured, in microseconds since
    /// the epoch: from the end of the warm-up to `measure_to`. Kept in the
    /// texts' unit so that each delivery costs two comparisons.
    pub measured: Range<u64>,
}

/// The time a read returned, in both forms it is used in.
#[derive(Debug, Clone, Copy)]
struct Now {
    /// For the connect rate.
    instant: Instant,
    /// For latencies, in microseconds since the epoch.
    micros: u64,
}

/// Where a connection is in its life.
#[derive(Debug)]
enum State {
    /// The TCP connect is in progress.
    Connecting,
    /// The upgrade request is sent; the response must carry `accept`.
    Upgrading { accept: String },
    /// The `join` is sent; waiting for `welcome`.
    Joining,
    /// In the room.
    Joined,
    /// Gone: failed, or closed by the server.
    Closed,
}

/// One client connection.
struct Conn {
    /// The client's index across all threads: its name and the `sender`
    /// of its texts derive from it.
    id: usize,
    /// The socket.
    stream: TcpStream,
    /// wss://: the TLS session over the socket.
    tls: Option<Box<Session>>,
    /// Where the connection is.
    state: State,
    /// When the connect began, for the connect timeout.
    opened: Instant,
    /// Bytes received that do not yet make a whole response or frame.
    inbuf: Vec<u8>,
    /// Bytes the kernel has not taken yet.
    outbuf: Vec<u8>,
    /// The frames so far of a fragmented message.
    fragments: Vec<u8>,
    /// `flood`: own messages sent and not yet seen back.
    in_flight: usize,
}

impl Conn {
    /// Appends a masked frame and writes what the socket takes.
    fn send(&mut self, opcode: u8, payload: &[u8], mask: [u8; 4]) -> io::Result<()> {
        frame::encode(&mut self.outbuf, opcode, payload, Some(mask));
        self.flush()
    }

    /// Reads what the server sent (decrypted, under TLS) into `buf`.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            Some(tls) => tls.read(&mut self.stream, buf),
            None => self.stream.read(buf),
        }
    }

    /// Writes queued bytes until the socket would block; the rest waits
    /// for the next writable event. Under TLS the bytes go to rustls,
    /// which keeps the records the socket does not take.
    fn flush(&mut self) -> io::Result<()> {
        while !self.outbuf.is_empty() {
            let written = match &mut self.tls {
                Some(tls) => tls.write(&mut self.stream, &self.outbuf),
                None => self.stream.write(&self.outbuf),
            };
            match written {
                // rustls's buffer is full of records the socket has not
                // taken: the next writable event continues.
                Ok(0) => break,
                Ok(n) => drop(self.outbuf.drain(..n)),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        match &mut self.tls {
            Some(tls) => tls.flush(&mut self.stream),
            None => Ok(()),
        }
    }
}

/// A `timerfd`: `epoll_wait` (and so `mio`) sleeps in whole milliseconds,
/// which would delay paced sends by up to a millisecond and charge that to
/// the server. A timer registered with the poll wakes it to the microsecond.
struct Timer {
    /// The timer descriptor, read to acknowledge an expiry.
    file: File,
    /// The deadline the timer is set to, so it is not set again each turn.
    armed: Option<Instant>,
}

impl Timer {
    /// A disarmed timer on the monotonic clock (the one `Instant` uses).
    fn new() -> io::Result<Timer> {
        let flags = libc::TFD_NONBLOCK | libc::TFD_CLOEXEC;
        // SAFETY: timerfd_create takes no pointers.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(Timer { file, armed: None })
    }

    /// Makes the timer fire at `deadline` (soon, if that is past).
    fn arm(&mut self, deadline: Instant, now: Instant) -> io::Result<()> {
        if self.armed == Some(deadline) {
            return Ok(());
        }
        // A zero value would disarm the timer instead.
        let after = deadline
            .saturating_duration_since(now)
            .max(Duration::from_micros(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos().into(),
            },
        };
        // SAFETY: `spec` is a valid itimerspec; no old value is asked for.
        let rc =
            unsafe { libc::timerfd_settime(self.file.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed = Some(deadline);
        Ok(())
    }

    /// Acknowledges an expiry, so the next one is a new event.
    fn fired(&mut self) {
        // The 8 bytes count expiries; only the wake-up matters. WouldBlock
        // (a stale event) is harmless, so the result is ignored.
        let _ = (&self.file).read(&mut [0; 8]);
        self.armed = None;
    }
}

/// One client thread.
pub struct Worker {
    /// The thread's connections; a connection's token is its index here.
    conns: Vec<Conn>,
    /// Everything else, apart so a connection and it can be borrowed at
    /// once.
    ctx: Ctx,
}

/// A client thread's state apart from its connections.
struct Ctx {
    /// The poll over this thread's sockets and timer.
    poll: Poll,
    /// The run's settings.
    params: Arc<Params>,
    /// The servers, in the order of the `--url`s; client `id` connects to
    /// `nodes[node_of(id, nodes.len())]`.
    nodes: Arc<[Node]>,
    /// Counters and flags shared with the coordinator.
    shared: Arc<Shared>,
    /// The client indexes this thread owns: `first`, `first + step`, ...
    /// (interleaved, so senders spread evenly over threads).
    first: usize,
    /// The distance between this thread's client indexes.
    step: usize,
    /// How many clients this thread owns.
    count: usize,
    /// This process's id, part of every client name.
    pid: u32,
    /// What this thread counted.
    tally: Tally,
    /// Wakes the poll at the next paced connect or send.
    timer: Timer,
    /// Where reads land before they are parsed.
    scratch: Vec<u8>,
    /// Where requests are built before they are framed.
    request: Vec<u8>,
    /// State of the xorshift generator for masking keys.
    rng: u64,
    /// Indexes into `conns` of this thread's senders.
    senders: Vec<usize>,
    /// `fanout` and `dm`: how many paced messages this thread has sent.
    paced: u64,
    /// Connects started so far.
    opened: usize,
    /// Clients still connecting, upgrading or joining.
    pending: usize,
    /// `sent` and `delivered` as last added to the shared counters.
    published: (u64, u64),
}

impl Worker {
    /// A thread that will own clients `first`, `first + step`, ... below
    /// `params.clients`.
    pub fn new(
        params: Arc<Params>,
        nodes: Arc<[Node]>,
        shared: Arc<Shared>,
        first: usize,
        step: usize,
    ) -> io::Result<Worker> {
        let poll = Poll::new()?;
        let timer = Timer::new()?;
        poll.registry().register(
            &mut SourceFd(&timer.file.as_raw_fd()),
            TIMER,
            Interest::READABLE,
        )?;
        let count = params.clients.saturating_sub(first).div_ceil(step);
        Ok(Worker {
            conns: Vec::with_capacity(count),
            ctx: Ctx {
                poll,
                params,
                nodes,
                shared,
                first,
                step,
                count,
                pid: std::process::id(),
                tally: Tally::default(),
                timer,
                scratch: vec![0; READ_BUFFER],
                request: Vec::new(),
                // xorshift needs a non-zero seed (the low bit set ensures
                // it); mixing in `first` gives each thread its own keys.
                rng: (0x9E37_79B9_7F4A_7C15 ^ ((first as u64) << 1)) | 1,
                senders: Vec::new(),
                paced: 0,
                opened: 0,
                pending: 0,
                published: (0, 0),
            },
        })
    }

    /// Runs until the coordinator says stop; returns what it counted.
    pub fn run(mut self) -> io::Result<Tally> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        let connect_start = Instant::now();
        // This thread's share of the connect rate.
        let connect_interval = Duration::from_secs_f64(
            self.ctx.params.clients as f64
                / self.ctx.count.max(1) as f64
                / self.ctx.params.connect_rate,
        );
        let mut next_expiry_check = connect_start + TIMEOUT_CHECK;
        while !self.ctx.shared.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let mut next_open = None;
            while self.ctx.opened < self.ctx.count {
                let due = connect_start + connect_interval * self.ctx.opened as u32;
                if due > now {
                    next_open = Some(due);
                    break;
                }
                self.open();
            }
            if self.ctx.pending > 0 && now >= next_expiry_check {
                self.expire_joins(now);
                next_expiry_check = now + TIMEOUT_CHECK;
            }
            let next_send = match self.ctx.shared.plan.get().cloned() {
                Some(plan) => self.send_due(&plan, now),
                None => None,
            };
            self.ctx.publish();

            let wait = match next_open.into_iter().chain(next_send).min() {
                Some(at) if at <= now => Duration::ZERO,
                Some(at) => {
                    self.ctx.timer.arm(at, now)?;
                    IDLE_WAIT
                }
                None => IDLE_WAIT,
            };
            match self.ctx.poll.poll(&mut events, Some(wait)) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                other => other?,
            }
            for event in &events {
                if event.token() == TIMER {
                    self.ctx.timer.fired();
                    continue;
                }
                let conn = &mut self.conns[event.token().0];
                if let Err(why) = self.ctx.on_event(conn, event.is_readable()) {
                    self.ctx.close(conn, why);
                }
            }
        }
        self.ctx.publish();
        self.ctx.tally.tls_records = self
            .conns
            .iter()
            .filter_map(|conn| conn.tls.as_ref())
            .map(|tls| tls.records())
            .sum();
        Ok(self.ctx.tally)
    }

    /// Starts connecting this thread's next client, from one of the
    /// 127.0.0.x source addresses in turn: each address has its own ~28 000
    /// ephemeral ports, so many addresses allow more connections.
    fn open(&mut self) {
        let ctx = &mut self.ctx;
        let id = ctx.first + ctx.step * ctx.opened;
        ctx.opened += 1;
        let source = Ipv4Addr::new(
            127,
            0,
            0,
            1 + (id % usize::from(ctx.params.source_addrs)) as u8,
        );
        let node = ctx.node(id);
        let session = node.tls.as_ref().map(TlsClient::session).transpose();
        let registered = session.and_then(|session| {
            let mut stream = connect(source, node.target.addr)?;
            stream.set_nodelay(true)?;
            let token = Token(self.conns.len());
            ctx.poll.registry().register(
                &mut stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok((stream, session.map(Box::new)))
        });
        let (stream, tls) = match registered {
            Ok(registered) => registered,
            Err(err) => {
                ctx.tally.fail(format_args!("connect from {source}: {err}"));
                ctx.shared.failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let sender = match ctx.params.scenario {
            Scenario::Fanout | Scenario::Flood => id < ctx.params.senders,
            Scenario::Dm => true,
            Scenario::Conns => false,
        };
        if sender {
            ctx.senders.push(self.conns.len());
        }
        ctx.pending += 1;
        self.conns.push(Conn {
            id,
            stream,
            tls,
            state: State::Connecting,
            opened: Instant::now(),
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            fragments: Vec::new(),
            in_flight: 0,
        });
    }

    /// Fails the connections that have not joined within the timeout.
    fn expire_joins(&mut self, now: Instant) {
        let timeout = Duration::from_secs_f64(self.ctx.params.connect_timeout);
        for conn in &mut self.conns {
            if matches!(
                conn.state,
                State::Connecting | State::Upgrading { .. } | State::Joining
            ) && now.duration_since(conn.opened) > timeout
            {
                self.ctx
                    .close(conn, format!("not joined within {timeout:?}"));
            }
        }
    }

    /// Sends what is due at `now` and returns when the next paced message
    /// is due, if any.
    ///
    /// `fanout` and `dm` are open-loop: message `k` of this thread is due at
    /// `start + k / rate` whatever the server does, and its latency counts
    /// from then, so a server that stalls is charged for every message that
    /// waited (no coordinated omission). `flood` is closed-loop: each sender
    /// keeps `window` messages in flight and sends again when its own copy
    /// comes back.
    fn send_due(&mut self, plan: &Plan, now: Instant) -> Option<Instant> {
        let ctx = &mut self.ctx;
        if ctx.senders.is_empty() || now < plan.start {
            return (!ctx.senders.is_empty()).then_some(plan.start);
        }
        match ctx.params.scenario {
            Scenario::Conns => None,
            Scenario::Flood => {
                if now < plan.measure_to {
                    for i in 0..ctx.senders.len() {
                        let index = ctx.senders[i];
                        let conn = &mut self.conns[index];
                        while matches!(conn.state, State::Joined)
                            && conn.in_flight < ctx.params.window
                        {
                            conn.in_flight += 1;
                            if let Err(why) = ctx.send_measured(conn, plan, now) {
                                ctx.close(conn, why);
                            }
                        }
                    }
                }
                None
            }
            Scenario::Fanout | Scenario::Dm => {
                let total_senders = match ctx.params.scenario {
                    Scenario::Dm => ctx.params.clients,
                    _ => ctx.params.senders,
                };
                let rate = ctx.params.rate * ctx.senders.len() as f64 / total_senders as f64;
                loop {
                    let due = plan.start + Duration::from_secs_f64(ctx.paced as f64 / rate);
                    if due >= plan.measure_to {
                        return None;
                    }
                    if due > now {
                        return Some(due);
                    }
                    let index = ctx.senders[(ctx.paced % ctx.senders.len() as u64) as usize];
                    ctx.paced += 1;
                    let conn = &mut self.conns[index];
                    if let Err(why) = ctx.send_measured(conn, plan, due) {
                        ctx.close(conn, why);
                    }
                }
            }
        }
    }
}

impl Ctx {
    /// Handles readiness of one connection; an error closes it.
    fn on_event(&mut self, conn: &mut Conn, readable: bool) -> Result<(), String> {
        if let State::Connecting = conn.state {
            // mio's recipe for a non-blocking connect: an error, or a peer
            // address once connected; neither means "not yet".
            if let Some(err) = conn.stream.take_error().map_err(|e| e.to_string())? {
                return Err(format!("connect: {err}"));
            }
            match conn.stream.peer_addr() {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(err) => return Err(format!("connect: {err}")),
            }
            let key = generate_key();
            let request = self.node(conn.id).target.upgrade_request(&key);
            conn.outbuf.extend_from_slice(request.as_bytes());
            conn.state = State::Upgrading {
                accept: derive_accept_key(key.as_bytes()),
            };
        }
        if matches!(conn.state, State::Closed) {
            return Ok(());
        }
        conn.flush().map_err(|e| format!("write: {e}"))?;
        if readable {
            self.read(conn)?;
        }
        Ok(())
    }

    /// Reads until the socket is empty, handling every whole frame.
    fn read(&mut self, conn: &mut Conn) -> Result<(), String> {
        loop {
            let n = match conn.read(&mut self.scratch) {
                Ok(0) => return Err("the server closed the connection".to_owned()),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(format!("read: {err}")),
            };
            let now = self.now();
            // Parse straight from the read buffer when nothing is left
            // over from before: the common case costs no copy.
            let scratch = std::mem::take(&mut self.scratch);
            let result = if conn.inbuf.is_empty() {
                self.consume(conn, &scratch[..n], now)
                    .map(|used| conn.inbuf.extend_from_slice(&scratch[used..n]))
            } else {
                conn.inbuf.extend_from_slice(&scratch[..n]);
                let inbuf = std::mem::take(&mut conn.inbuf);
                let result = self.consume(conn, &inbuf, now);
                conn.inbuf = inbuf;
                result.map(|used| drop(conn.inbuf.drain(..used)))
            };
            self.scratch = scratch;
            result?;
            // A big frame (a `welcome` listing thousands of users) leaves
            // a big buffer behind; thousands of idle clients must not each
            // keep one.
            if conn.inbuf.is_empty() && conn.inbuf.capacity() > READ_BUFFER {
                conn.inbuf = Vec::new();
            }
            // A short read emptied the socket: with edge-triggered polling
            // any later data raises a new event, so the extra read that
            // would only return WouldBlock is saved. (Not under TLS: a
            // short read of plaintext says nothing about the socket.)
            let emptied = n < self.scratch.len() && conn.tls.is_none();
            if emptied || matches!(conn.state, State::Closed) {
                return Ok(());
            }
        }
    }

    /// Handles the upgrade response and the whole frames at the start of
    /// `buf`; returns how many bytes were used.
    fn consume(&mut self, conn: &mut Conn, buf: &[u8], now: Now) -> Result<usize, String> {
        let mut at = 0;
        if let State::Upgrading { accept } = &conn.state {
            match wire::parse_upgrade_response(buf, accept)? {
                None => return Ok(0),
                Some(len) => at = len,
            }
            conn.state = State::Joining;
            wire::join_request(&mut self.request, &wire::client_name(self.pid, conn.id));
            let mask = self.mask();
            conn.send(frame::OP_TEXT, &self.request, mask)
                .map_err(|e| format!("write: {e}"))?;
        }
        while let Some(frame) = frame::parse(&buf[at..], MAX_FRAME).map_err(|e| e.to_string())? {
            let Frame {
                fin,
                opcode,
                mask,
                ref payload,
            } = frame;
            let payload = &buf[at + payload.start..at + payload.end];
            at += frame.encoded_len();
            if mask.is_some() {
                return Err("the server sent a masked frame".to_owned());
            }
            match opcode {
                frame::OP_TEXT if fin && conn.fragments.is_empty() => {
                    self.on_message(conn, payload, now)?
                }
                frame::OP_TEXT | frame::OP_CONTINUATION => {
                    conn.fragments.extend_from_slice(payload);
                    if fin {
                        let message = std::mem::take(&mut conn.fragments);
                        self.on_message(conn, &message, now)?;
                    }
                }
                frame::OP_PING => {
                    let mask = self.mask();
                    conn.send(frame::OP_PONG, payload, mask)
                        .map_err(|e| format!("write: {e}"))?;
                }
                frame::OP_CLOSE => {
                    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    return Err(format!("the server sent close {code:?}"));
                }
                // Pongs and binary frames mean nothing to chatbench.
                _ => {}
            }
            if matches!(conn.state, State::Closed) {
                break;
            }
        }
        Ok(at)
    }

    /// Handles one whole server message.
    fn on_message(&mut self, conn: &mut Conn, payload: &[u8], now: Now) -> Result<(), String> {
        match (wire::classify(payload), &conn.state) {
            (Event::Welcome, State::Joining) => {
                conn.state = State::Joined;
                self.pending -= 1;
                self.tally.last_join = Some(now.instant);
                self.shared.joined.fetch_add(1, Ordering::Relaxed);
            }
            (Event::Error, State::Joining) => {
                return Err(format!(
                    "join refused: {}",
                    String::from_utf8_lossy(payload)
                ));
            }
            (Event::Error, _) => self.tally.errors += 1,
            (Event::Delivery { sender, micros }, State::Joined) => {
                self.tally.received += 1;
                if sender == conn.id {
                    conn.in_flight = conn.in_flight.saturating_sub(1);
                }
                let measured = self.shared.plan.get().map(|plan| &plan.measured);
                if measured.is_some_and(|window| window.contains(&micros)) {
                    let latency = now.micros.saturating_sub(micros);
                    self.tally.latency.saturating_record(latency.max(1));
                    self.tally.delivered += 1;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Sends one measured request from `conn`, meant to leave at `at`.
    fn send_measured(&mut self, conn: &mut Conn, plan: &Plan, at: Instant) -> Result<(), String> {
        let micros = self.micros(at);
        if plan.measured.contains(&micros) {
            self.tally.sent += 1;
        }
        // A sender the server dropped still counts its measured messages
        // as sent: they were offered and not delivered.
        if !matches!(conn.state, State::Joined) {
            return Ok(());
        }
        let dm_to = match self.params.scenario {
            Scenario::Dm => Some(wire::client_name(self.pid, conn.id ^ 1)),
            _ => None,
        };
        wire::measured_request(
            &mut self.request,
            dm_to.as_deref(),
            conn.id,
            micros,
            self.params.size,
        );
        let mask = self.mask();
        conn.send(frame::OP_TEXT, &self.request, mask)
            .map_err(|e| format!("write: {e}"))
    }

    /// The server client `id` connects to.
    fn node(&self, id: usize) -> &Node {
        &self.nodes[node_of(id, self.nodes.len())]
    }

    /// The time now, read once per `read` and shared by its frames.
    fn now(&self) -> Now {
        let instant = Instant::now();
        Now {
            instant,
            micros: self.micros(instant),
        }
    }

    /// `at` in microseconds since the epoch.
    fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.shared.epoch).as_micros() as u64
    }

    /// Closes a connection and counts why: a failure to join, or a
    /// disconnect of a joined client.
    fn close(&mut self, conn: &mut Conn, why: String) {
        match conn.state {
            State::Closed => return,
            State::Joined => self.tally.disconnects += 1,
            _ => {
                self.pending -= 1;
                self.tally.fail(why);
                self.shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        conn.state = State::Closed;
        // The descriptor is released when the thread ends; until then the
        // socket is merely shut and forgotten by the poll.
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let _ = conn.stream.shutdown(Shutdown::Both);
    }

    /// A fresh masking key (xorshift64: clients must mask, and the key only
    /// needs to vary, not to be secret, against our own server).
    fn mask(&mut self) -> [u8; 4] {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng as u32).to_ne_bytes()
    }

    /// Adds this thread's new sends and deliveries to the shared counters,
    /// once per loop turn rather than once per message.
    fn publish(&mut self) {
        let (sent, delivered) = self.published;
        self.shared
            .sent
            .fetch_add(self.tally.sent - sent, Ordering::Relaxed);
        self.shared
            .delivered
            .fetch_add(self.tally.delivered - delivered, Ordering::Relaxed);
        self.published = (self.tally.sent, self.tally.delivered);
    }
}

/// Starts a non-blocking connect from `source` (any port) to `target`.
fn connect(source: Ipv4Addr, target: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(SocketAddr::new(IpAddr::V4(source), 0)))?;
    match socket.connect(&SockAddr::from(target)) {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(err) => return Err(err),
    }
    Ok(TcpStream::from_std(socket.into()))
}
