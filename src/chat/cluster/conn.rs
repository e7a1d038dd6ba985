//! The socket edge of a [`Link`]: a `mio` TCP stream, a non-blocking
//! connect, reads until `WouldBlock`, writes of whatever waits, and
//! registration with the interest the link asks for. Whoever runs the
//! `mio::Poll` owns a [`RedisConn`] like any other source: it gives it a
//! token, forwards its readiness to [`RedisConn::on_readable`] and
//! [`RedisConn::on_writable`], calls [`RedisConn::on_timeout`] once
//! [`RedisConn::next_deadline`] has passed, and takes the
//! [`Event`]s. Nothing here knows about the chat's event loop.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::link::{Event, Link, LinkConfig};

/// The most one `read` call takes in: enough for a large `XREAD` page in
/// a few calls, small enough to live on the stack.
const READ_CHUNK: usize = 16 * 1024;

/// One Redis connection driven by readiness.
#[derive(Debug)]
pub struct RedisConn<T> {
    /// The protocol state.
    link: Link<T>,
    /// Where Redis listens.
    addr: SocketAddr,
    /// The token its readiness comes back with.
    token: Token,
    /// The socket, while connecting or connected.
    socket: Option<TcpStream>,
    /// The interest the socket is registered with, so that it is
    /// re-registered only when that changes.
    registered: Option<Interest>,
}

impl<T> RedisConn<T> {
    /// A connection to `addr` that reports readiness as `token`; it
    /// connects on its first [`RedisConn::on_timeout`] (its first deadline
    /// is `now`), then sends `setup` first on every connection.
    pub fn new<A: AsRef<[u8]>>(
        addr: SocketAddr,
        token: Token,
        config: LinkConfig,
        setup: &[Vec<A>],
        seed: u64,
        now: Instant,
    ) -> RedisConn<T> {
        RedisConn {
            link: Link::new(config, setup, seed, now),
            addr,
            token,
            socket: None,
            registered: None,
        }
    }

    /// Whether requests are being answered.
    pub fn is_up(&self) -> bool {
        self.link.is_up()
    }

    /// Queues a request (see [`Link::push`]); it goes out at the next
    /// [`RedisConn::flush`], together with everything else queued by then.
    pub fn push<A: AsRef<[u8]>>(&mut self, tag: T, args: &[A], now: Instant) -> Result<(), T> {
        self.link.push(tag, args, now)
    }

    /// Writes what waits, as far as the socket takes it; the rest goes on
    /// the next writable event.
    pub fn flush(&mut self, registry: &Registry, now: Instant) {
        if self.link.is_connected() {
            self.write(now);
        }
        self.sync(registry, now);
    }

    /// The readiness to wait for (what the socket is registered with).
    pub fn interest(&self) -> Option<Interest> {
        self.link.interest()
    }

    /// When [`RedisConn::on_timeout`] must next be called.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.link.next_deadline()
    }

    /// The oldest event not taken yet.
    pub fn take_event(&mut self) -> Option<Event<T>> {
        self.link.take_event()
    }

    /// A deadline passed: connect if a (re)connect is due, or fail an
    /// overdue connect or reply. Early or repeated calls do no harm.
    pub fn on_timeout(&mut self, registry: &Registry, now: Instant) {
        self.link.on_deadline(now);
        self.sync(registry, now);
    }

    /// Reconnects now if a reconnect is waiting (see [`Link::retry_now`]).
    pub fn retry_now(&mut self, registry: &Registry, now: Instant) {
        self.link.retry_now(now);
        self.sync(registry, now);
    }

    /// The socket became readable: read until `WouldBlock`.
    pub fn on_readable(&mut self, registry: &Registry, now: Instant) {
        if self.link.is_connected() {
            self.read(now);
        }
        self.sync(registry, now);
    }

    /// The socket became writable: finish a connect, or write what waits.
    pub fn on_writable(&mut self, registry: &Registry, now: Instant) {
        if self.link.has_socket() && !self.link.is_connected() {
            self.finish_connect(now);
        }
        if self.link.is_connected() {
            self.write(now);
        }
        self.sync(registry, now);
    }

    /// Checks whether a non-blocking connect completed; a spurious wake-up
    /// (not connected yet, no error) changes nothing.
    fn finish_connect(&mut self, now: Instant) {
        let Some(socket) = &self.socket else { return };
        match socket.take_error() {
            Ok(Some(err)) | Err(err) => return self.link.fail(&err.to_string(), now),
            Ok(None) => {}
        }
        match socket.peer_addr() {
            Ok(_) => {
                // Replies are small and requests are batched by the caller:
                // Nagle's delay would only add latency to every round.
                if let Err(err) = socket.set_nodelay(true) {
                    return self.link.fail(&err.to_string(), now);
                }
                self.link.connected(now);
            }
            Err(err) if err.kind() == io::ErrorKind::NotConnected => {}
            Err(err) => self.link.fail(&err.to_string(), now),
        }
    }

    /// Reads until `WouldBlock`, end of file or an error.
    fn read(&mut self, now: Instant) {
        let mut buf = [0u8; READ_CHUNK];
        while self.link.has_socket() {
            let Some(socket) = &mut self.socket else {
                return;
            };
            match socket.read(&mut buf) {
                Ok(0) => self.link.fail("Redis closed the connection", now),
                Ok(n) => self.link.received(&buf[..n], now),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => self.link.fail(&err.to_string(), now),
            }
        }
    }

    /// Writes until nothing waits, `WouldBlock` or an error.
    fn write(&mut self, now: Instant) {
        while !self.link.unwritten().is_empty() {
            let Some(socket) = &mut self.socket else {
                return;
            };
            match socket.write(self.link.unwritten()) {
                Ok(0) => return self.link.fail("the socket took no bytes", now),
                Ok(n) => self.link.wrote(n),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return self.link.fail(&err.to_string(), now),
            }
        }
    }

    /// Makes the socket match the link: closed when the link failed, opened
    /// when a connect is due, registered with the interest it asks for.
    fn sync(&mut self, registry: &Registry, now: Instant) {
        if !self.link.has_socket() {
            if let Some(mut socket) = self.socket.take() {
                // Closing the descriptor removes it from the poll set
                // anyway; deregistering first keeps mio's books straight.
                let _ = registry.deregister(&mut socket);
                self.registered = None;
            }
        }
        if self.link.connect_due(now) {
            match TcpStream::connect(self.addr) {
                Ok(socket) => {
                    self.socket = Some(socket);
                    self.link.connecting(now);
                }
                Err(err) => self.link.fail(&err.to_string(), now),
            }
        }
        let want = self.link.interest();
        let Some(socket) = &mut self.socket else {
            return;
        };
        if want == self.registered {
            return;
        }
        let result = match (self.registered, want) {
            (None, Some(interest)) => registry.register(socket, self.token, interest),
            (Some(_), Some(interest)) => registry.reregister(socket, self.token, interest),
            (_, None) => registry.deregister(socket),
        };
        match result {
            Ok(()) => self.registered = want,
            Err(err) => {
                self.link.fail(&err.to_string(), now);
                self.sync(registry, now);
            }
        }
    }
}
