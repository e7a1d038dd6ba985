//! Inputs that made a fuzz target (see `docs/fuzzing.md`) fail, kept as
//! ordinary tests so that `cargo test` guards the fix. Each test names the
//! target and the artifact; the raw artifact is also among the target's
//! seeds (`fuzz/seeds/TARGET/`), so the fuzzer replays it on every run.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::Instant;

use miochat::connection::{Connection, Input, Socket};
use miochat::ServerConfig;

const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A non-blocking socket: reads hand out `input` chunk by chunk, then
/// would block; writes take `room` bytes, then would block.
#[derive(Default)]
struct FakeSocket {
    input: VecDeque<Vec<u8>>,
    room: usize,
    written: Vec<u8>,
}

impl Read for FakeSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(chunk) = self.input.front_mut() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        chunk.drain(..n);
        if chunk.is_empty() {
            self.input.pop_front();
        }
        Ok(n)
    }
}

impl Write for FakeSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        self.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Socket for FakeSocket {
    fn shutdown_write(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A masked ping frame with `payload`, as a client sends it.
fn ping(payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x89, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

/// Upgrades, then reads pings while the socket takes nothing, until the
/// connection gives up on the client; then lets everything out.
fn never_reading_client(config: &ServerConfig, pings: usize) -> Vec<u8> {
    let now = Instant::now();
    let mut input = VecDeque::from([UPGRADE.to_vec()]);
    input.extend((0..pings).map(|_| ping(&[b'p'; 100])));
    let socket = FakeSocket {
        input,
        ..FakeSocket::default()
    };
    let peer = "127.0.0.1:9".parse().unwrap();
    let mut conn = Connection::new(socket, peer, 1, now);
    assert!(matches!(conn.poll_input(now, config), Input::Opened));
    loop {
        match conn.poll_input(now, config) {
            Input::Control => {}
            Input::Finished => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(!conn.phase.is_open(), "closed as too slow");
    conn.socket.room = usize::MAX;
    conn.flush();
    conn.socket.written
}

/// `connection` target, `crash-103459e5c940d85b5863e3a0bd1eeca7a7c83131`:
/// a queue bound (128 bytes) smaller than the `101` response. The client
/// sent a frame before reading anything, the connection found its queue
/// over the bound and dropped everything not yet started, the `101`
/// included, so the client's first bytes were a close frame, not HTTP.
#[test]
fn a_bound_below_the_101_response_still_sends_it_first() {
    let config = ServerConfig {
        max_outbound_bytes: 128,
        ..ServerConfig::default()
    };
    let written = never_reading_client(&config, 1);
    assert!(
        written.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"),
        "the stream starts with {:?}",
        String::from_utf8_lossy(&written[..written.len().min(40)])
    );
    let head_end = written.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    // Then the close frame: 1013, "too slow to keep up".
    assert_eq!(&written[head_end..head_end + 4], &[0x88, 21, 0x03, 0xf5]);
}

/// The same bug with an ordinary bound: a client that floods pings and
/// never reads fills its queue with pongs behind the unsent `101`. The
/// pongs are dropped when it is closed as too slow; the `101` must not be.
#[test]
fn a_ping_flood_before_reading_the_101_keeps_it() {
    let config = ServerConfig {
        max_outbound_bytes: 1000,
        ..ServerConfig::default()
    };
    let written = never_reading_client(&config, 50);
    assert!(written.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    let head_end = written.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&written[head_end..head_end + 4], &[0x88, 21, 0x03, 0xf5]);
}
