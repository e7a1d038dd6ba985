//! The floor: the cheapest broadcast server `mio` allows, the yardstick
//! `mioserver`'s CPU per delivered message is compared against.
//!
//! It does only what every broadcast server must do: accept, answer the
//! WebSocket upgrade, read and unmask client frames, and copy each message
//! to every joined connection with one `write` per connection per loop
//! turn. It skips everything a real server adds: no JSON parsing, no name
//! or text validation, no ids or timestamps (every message says `"id":0`
//! and `"ts":""`), no history, no `joined`/`left` events, no DMs, no pings,
//! no timeouts, no rate limits. What it sends is still valid protocol, so
//! chatbench drives it like any server:
//!
//! - the first text frame of a connection is its `join`, answered with a
//!   fixed `welcome` whatever it says;
//! - a later frame that is exactly `{"type":"say","text":"…"}` becomes
//!   `{"type":"message","id":0,"ts":"","from":"","text":"…"}` by byte
//!   concatenation (the text is already a JSON string), framed once per
//!   read and appended to every joined connection, the sender included;
//!   any other frame is ignored.
//!
//! Run it with `cargo run --release --example floor -- 127.0.0.1:8790`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use miochat::bench::frame;
use slab::Slab;
use tungstenite::handshake::derive_accept_key;

/// The listener's token; clients use their slab key.
const LISTENER: Token = Token(usize::MAX);

/// The default address, next to mioserver's 8765.
const DEFAULT_ADDR: &str = "127.0.0.1:8790";

/// Output queued for one client before it is dropped as too slow: the
/// same 1 MiB as mioserver's `--max-outbound-bytes` default, so neither
/// gets to buffer more than the other.
const MAX_OUTBOUND: usize = 1 << 20;

/// The largest frame read: the protocol's 64 KiB message limit.
const MAX_FRAME: usize = 64 * 1024;

/// The read buffer: 64 KiB takes a burst of small frames in one `read`.
const READ_BUFFER: usize = 64 * 1024;

/// The answer to any first frame.
const WELCOME: &[u8] = br#"{"type":"welcome","name":"","users":[],"history":[],"server":"floor"}"#;

/// What a public message request must start with; the JSON string that
/// follows is copied into the broadcast as it is.
const SAY_PREFIX: &[u8] = br#"{"type":"say","text":"#;

/// What a broadcast starts with, before the copied text.
const MESSAGE_PREFIX: &[u8] = br#"{"type":"message","id":0,"ts":"","from":"","text":"#;

/// One connection.
struct Client {
    /// The socket.
    stream: TcpStream,
    /// Bytes read and not yet a whole request or frame.
    inbuf: Vec<u8>,
    /// Bytes for the socket, written once per loop turn.
    outbuf: Vec<u8>,
    /// Whether the upgrade is done (frames follow).
    upgraded: bool,
    /// Whether the first frame (the join) has come: only joined clients
    /// receive broadcasts.
    joined: bool,
    /// Whether the client is on this turn's flush list already.
    dirty: bool,
}

/// A client to drop; the floor does not say why.
struct Gone;

fn main() -> io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or(DEFAULT_ADDR)
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut listener = TcpListener::bind(addr)?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("floor listening on {addr}");

    let mut clients: Slab<Client> = Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut scratch = vec![0; READ_BUFFER];
    // Broadcast frames built from one client's read, appended to everyone.
    let mut batch = Vec::new();
    let mut dirty = Vec::new();
    let mut dropped = Vec::new();
    loop {
        match poll.poll(&mut events, None) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            other => other?,
        }
        for event in &events {
            if event.token() == LISTENER {
                accept(&listener, &poll, &mut clients)?;
                continue;
            }
            let key = event.token().0;
            let Some(client) = clients.get_mut(key) else {
                continue;
            };
            if event.is_writable() {
                mark_dirty(client, key, &mut dirty);
            }
            if !event.is_readable() {
                continue;
            }
            batch.clear();
            if read(client, &mut scratch, &mut batch).is_err() {
                clients.remove(key);
                continue;
            }
            if !client.outbuf.is_empty() {
                mark_dirty(client, key, &mut dirty);
            }
            if !batch.is_empty() {
                for (key, client) in clients.iter_mut().filter(|(_, c)| c.joined) {
                    client.outbuf.extend_from_slice(&batch);
                    if client.outbuf.len() > MAX_OUTBOUND {
                        dropped.push(key);
                    }
                    mark_dirty(client, key, &mut dirty);
                }
            }
        }
        // One write per connection that has output, once per turn.
        for key in dirty.drain(..) {
            let Some(client) = clients.get_mut(key) else {
                continue;
            };
            client.dirty = false;
            if flush(client).is_err() {
                dropped.push(key);
            }
        }
        for key in dropped.drain(..) {
            clients.try_remove(key);
        }
    }
}

/// Accepts every pending connection.
fn accept(listener: &TcpListener, poll: &Poll, clients: &mut Slab<Client>) -> io::Result<()> {
    loop {
        let (mut stream, _) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            // Out of descriptors and the like: drop this one, keep serving.
            Err(err) => {
                eprintln!("floor: accept: {err}");
                return Ok(());
            }
        };
        stream.set_nodelay(true)?;
        let entry = clients.vacant_entry();
        poll.registry().register(
            &mut stream,
            Token(entry.key()),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(Client {
            stream,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            upgraded: false,
            joined: false,
            dirty: false,
        });
    }
}

/// Puts a client on the flush list once.
fn mark_dirty(client: &mut Client, key: usize, dirty: &mut Vec<usize>) {
    if !client.dirty {
        client.dirty = true;
        dirty.push(key);
    }
}

/// Reads what the socket has and handles it; broadcasts go into `batch`.
fn read(client: &mut Client, scratch: &mut [u8], batch: &mut Vec<u8>) -> Result<(), Gone> {
    loop {
        match client.stream.read(scratch) {
            Ok(0) => return Err(Gone),
            Ok(n) => {
                client.inbuf.extend_from_slice(&scratch[..n]);
                // A short read emptied the socket (edge-triggered polling
                // reports any later data as a new event).
                if n < scratch.len() {
                    break;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Gone),
        }
    }
    if !client.upgraded && !upgrade(client)? {
        return Ok(());
    }
    let mut at = 0;
    while let Some(frame) = frame::parse(&client.inbuf[at..], MAX_FRAME).map_err(|_| Gone)? {
        let payload = at + frame.payload.start..at + frame.payload.end;
        at += frame.encoded_len();
        if let Some(mask) = frame.mask {
            frame::apply_mask(&mut client.inbuf[payload.clone()], mask);
        }
        let payload = &client.inbuf[payload];
        match frame.opcode {
            frame::OP_CLOSE => return Err(Gone),
            frame::OP_TEXT if !client.joined => {
                client.joined = true;
                frame::encode(&mut client.outbuf, frame::OP_TEXT, WELCOME, None);
            }
            frame::OP_TEXT => {
                if let Some(text) = payload
                    .strip_prefix(SAY_PREFIX)
                    .and_then(|rest| rest.strip_suffix(b"}"))
                {
                    // Framed in place: the payload is never built apart.
                    let len = MESSAGE_PREFIX.len() + text.len() + 1;
                    frame::encode_header(batch, frame::OP_TEXT, len, None);
                    batch.extend_from_slice(MESSAGE_PREFIX);
                    batch.extend_from_slice(text);
                    batch.push(b'}');
                }
            }
            _ => {}
        }
    }
    client.inbuf.drain(..at);
    Ok(())
}

/// Answers the upgrade request once it is whole; `Ok(false)` until then.
fn upgrade(client: &mut Client) -> Result<bool, Gone> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(&client.inbuf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(false),
        Err(_) => return Err(Gone),
    };
    let key = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("Sec-WebSocket-Key"))
        .ok_or(Gone)?;
    let accept = derive_accept_key(key.value);
    write!(
        client.outbuf,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .map_err(|_| Gone)?;
    client.inbuf.drain(..len);
    client.upgraded = true;
    Ok(true)
}

/// One `write` of the queued output; the rest waits for the next turn.
fn flush(client: &mut Client) -> Result<(), Gone> {
    if client.outbuf.is_empty() {
        return Ok(());
    }
    match client.stream.write(&client.outbuf) {
        Ok(n) => {
            client.outbuf.drain(..n);
            Ok(())
        }
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(())
        }
        Err(_) => Err(Gone),
    }
}
