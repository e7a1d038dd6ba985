//! The smallest complete mio event loop: a TCP echo server in one thread.
//! `docs/event-loop.md` starts here and builds miochat's loop on top of it.
//!
//! ```sh
//! cargo run --example minimal -- 127.0.0.1:7000
//! nc 127.0.0.1 7000      # type lines; they come back
//! ```
//!
//! The rules it shows, which the real loop (`src/evloop/server.rs`) keeps:
//!
//! - readiness is edge-triggered: after an event, accept (or read) until
//!   `WouldBlock`, or the rest waits for an event that never comes;
//! - every socket has a token; connection tokens are slab keys, so an event
//!   finds its connection in O(1);
//! - WRITABLE interest only while output waits, else every turn would wake
//!   for sockets that can always be written;
//! - events can be spurious: a read that says `WouldBlock` is not an error.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

/// The listener's token. Connection tokens are slab keys, which start at
/// 0, so the listener takes one from the other end of the range.
const LISTENER: Token = Token(usize::MAX);

/// One client: its socket and the bytes it has not been sent yet.
struct Connection {
    /// The non-blocking socket.
    socket: TcpStream,
    /// Set when the peer hung up or failed; the slot is freed after the
    /// batch of events, never during it.
    closed: bool,
    /// Output the kernel has not taken yet.
    pending: Vec<u8>,
    /// Whether WRITABLE interest is registered (only while `pending` holds
    /// bytes).
    write_interest: bool,
}

fn main() -> io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7000".to_owned())
        .parse()
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("echo on {}", listener.local_addr()?);

    let mut conns: Slab<Connection> = Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut finished = Vec::new();
    loop {
        // 1. Sleep until a socket is ready. No timers here, so no timeout.
        if let Err(err) = poll.poll(&mut events, None) {
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        for event in events.iter() {
            match event.token() {
                // 2. Accept every waiting connection.
                LISTENER => accept(&poll, &listener, &mut conns)?,
                // 3. A connection is ready: read it, echo, write.
                Token(key) => {
                    let Some(conn) = conns.get_mut(key).filter(|conn| !conn.closed) else {
                        // Closed earlier in this batch: a late event.
                        continue;
                    };
                    if serve(conn) {
                        update_interest(&poll, key, conn)?;
                    } else {
                        conn.closed = true;
                        finished.push(key);
                    }
                }
            }
        }
        // 4. Free the closed connections' slots, only now: freed during the
        // batch, a slot could be reused by an accept, and an event still in
        // the batch for the old connection would reach the new one.
        for key in finished.drain(..) {
            let mut conn = conns.remove(key);
            poll.registry().deregister(&mut conn.socket)?;
        }
    }
}

/// Accepts until `WouldBlock`, registering each new socket for reading.
fn accept(poll: &Poll, listener: &TcpListener, conns: &mut Slab<Connection>) -> io::Result<()> {
    loop {
        let (mut socket, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            // The peer gave up while waiting (ECONNABORTED); try the next.
            Err(err) => {
                eprintln!("accept: {err}");
                continue;
            }
        };
        let entry = conns.vacant_entry();
        poll.registry()
            .register(&mut socket, Token(entry.key()), Interest::READABLE)?;
        eprintln!("{peer}: connected as {}", entry.key());
        entry.insert(Connection {
            socket,
            closed: false,
            pending: Vec::new(),
            write_interest: false,
        });
    }
}

/// Reads until `WouldBlock`, queues what came in as output, and writes
/// what the kernel takes. Returns whether the connection stays open. The
/// event's kind does not matter: a readable socket is read, a writable
/// one written, and a spurious event finds `WouldBlock` both ways.
fn serve(conn: &mut Connection) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match conn.socket.read(&mut buf) {
            // The peer hung up.
            Ok(0) => return false,
            Ok(n) => conn.pending.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    // Write as soon as there is output, not only on a WRITABLE event: most
    // of the time the kernel takes it all at once and no event is needed.
    write_pending(conn)
}

/// Writes queued output until it is gone or the kernel would block.
/// Returns whether the connection stays open.
fn write_pending(conn: &mut Connection) -> bool {
    while !conn.pending.is_empty() {
        match conn.socket.write(&conn.pending) {
            Ok(0) => return false,
            Ok(n) => {
                conn.pending.drain(..n);
            }
            // The kernel's buffer is full: the rest waits for WRITABLE.
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

/// Registers WRITABLE interest while output waits, and only then.
fn update_interest(poll: &Poll, key: usize, conn: &mut Connection) -> io::Result<()> {
    let want_write = !conn.pending.is_empty();
    if want_write != conn.write_interest {
        let interest = if want_write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        poll.registry()
            .reregister(&mut conn.socket, Token(key), interest)?;
        conn.write_interest = want_write;
    }
    Ok(())
}
