//! Fuzz target: the connection state machine, `connection::Connection`, fed
//! arbitrary bytes through a fake socket and read by the event loop's own
//! code for one turn, `connection::read_turn` (the loop in `server.rs` calls
//! the same function, so the budget and the order of reads are the real
//! ones).
//!
//! # The input
//!
//! ```text
//!  byte 0     max_outbound_bytes: 64 << (byte % 12), 64 B .. 128 KiB
//!  byte 1     max_message_bytes:  16 << (byte % 14), 16 B .. 128 KiB
//!  byte 2     how the peer ends: bit 0 hangs up after its last byte,
//!             bit 1 resets instead, bit 2 makes `shutdown_write` fail
//!  bytes 3-10 the script: one byte per decision (chunk size, write room,
//!             time step, what the application sends), used in a cycle
//!  the rest   the bytes the peer sends
//! ```
//!
//! Each turn of the simulated event loop, the peer's next chunk arrives
//! (reads hand it out, then say `WouldBlock`), the connection is read by
//! `read_turn`, the application answers, the queue is flushed into a socket
//! that takes a scripted number of bytes, and the clock moves on, firing
//! deadlines as the timer heap would. The application behaves like the
//! chat: it sets a timer when the connection opens (the join deadline),
//! clears it on the first text, and closes with 1008 if it comes due.
//!
//! # The invariants
//!
//! * nothing panics;
//! * the output queue never holds more than `max_outbound_bytes` plus one
//!   frame (the bound that protects the server from clients that do not read);
//! * `Opened` comes at most once, and `take_goodbye` is true at most once,
//!   only after `Opened`, and by the time the connection has left `Open`;
//! * nothing is written after `shutdown_write`, which happens at most once,
//!   and the first bytes written are an HTTP response;
//! * after a deadline is handled, the next one lies in the future (else the
//!   event loop would spin);
//! * once the peer stops sending, the connection ends: time alone closes it.

#![no_main]

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use miochat::evloop::connection::{read_turn, Connection, Input, ReadHost, Socket, Turn};
use miochat::evloop::inbound::ReadBuffer;
use miochat::evloop::outqueue::Batch;
use miochat::evloop::{config::LoopConfig, http};
use tungstenite::protocol::frame::coding::{CloseCode, Data};

/// How long the application gives a connection to send its first text, as
/// the chat's join deadline (one of the clock's `STEPS`).
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes before the peer's stream: three settings and the script.
const HEADER: usize = 11;

/// The largest server control frame (a pong or close: 125 bytes of payload
/// and a 2-byte header) or HTTP response this target causes. The queue bound
/// may be passed by one of these, as by one application frame.
const ONE_SMALL_FRAME: usize = 512;

/// The clock steps the script chooses from: none, small ones, and each of
/// the server's timers, so that every deadline is reached.
const STEPS: [Duration; 8] = [
    Duration::ZERO,
    Duration::from_millis(1),
    Duration::from_millis(100),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(31),
];

/// Payload sizes of the frames the application sends, around the
/// boundaries of the frame header's length encodings (125/126, 65535/65536).
const PAYLOADS: [usize; 8] = [0, 1, 20, 125, 126, 1000, 65535, 65536];

/// How the peer behaves once all its bytes have arrived.
#[derive(Clone, Copy, PartialEq)]
enum End {
    /// It stays connected and says nothing more.
    Silent,
    /// It hangs up: reads return 0.
    HangUp,
    /// Its connection is reset: reads and writes fail.
    Reset,
}

/// A non-blocking socket whose peer sends `stream` in chunks and whose
/// kernel buffer takes `room` more bytes before it would block.
struct FakeSocket<'a> {
    /// Everything the peer will send.
    stream: &'a [u8],
    /// How much of `stream` has been read.
    read: usize,
    /// How much of `stream` has arrived (is readable).
    arrived: usize,
    end: End,
    /// Bytes the next writes may take before `WouldBlock`.
    room: usize,
    /// The first bytes written, to check what the connection starts with.
    first_written: Vec<u8>,
    /// Whether `shutdown_write` was called (a `Cell`: it takes `&self`).
    shut: Cell<bool>,
    /// Whether `shutdown_write` fails, as it does after a reset.
    shutdown_fails: bool,
}

impl FakeSocket<'_> {
    /// The peer's next `n` bytes arrive.
    fn arrive(&mut self, n: usize) {
        self.arrived = self.arrived.saturating_add(n).min(self.stream.len());
    }

    /// Whether everything the peer sends has arrived.
    fn all_arrived(&self) -> bool {
        self.arrived == self.stream.len()
    }
}

impl Read for FakeSocket<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let ready = &self.stream[self.read..self.arrived];
        if ready.is_empty() {
            return match self.end {
                _ if !self.all_arrived() => Err(io::ErrorKind::WouldBlock.into()),
                End::Silent => Err(io::ErrorKind::WouldBlock.into()),
                End::HangUp => Ok(0),
                End::Reset => Err(io::ErrorKind::ConnectionReset.into()),
            };
        }
        let n = ready.len().min(buf.len());
        buf[..n].copy_from_slice(&ready[..n]);
        self.read += n;
        Ok(n)
    }
}

impl Write for FakeSocket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        assert!(!self.shut.get(), "a write after shutdown_write");
        if self.end == End::Reset && self.all_arrived() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if self.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        let keep = 16usize.saturating_sub(self.first_written.len()).min(n);
        self.first_written.extend_from_slice(&buf[..keep]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Socket for FakeSocket<'_> {
    fn shutdown_write(&mut self) -> io::Result<()> {
        assert!(!self.shut.replace(true), "shutdown_write called twice");
        if self.shutdown_fails {
            return Err(io::ErrorKind::NotConnected.into());
        }
        Ok(())
    }
}

/// The script's bytes, handed out one per decision, round and round.
struct Script<'a> {
    bytes: &'a [u8],
    next: usize,
}

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        let byte = self.bytes[self.next % self.bytes.len()];
        self.next += 1;
        byte
    }
}

/// What the application has seen of the connection, to check the
/// promises of `Input` and `take_goodbye`.
#[derive(Default)]
struct App {
    opened: bool,
    goodbye: bool,
    /// The largest frame the application has queued.
    largest_frame: usize,
}

/// One simulated connection: the socket, the clock and the application.
struct Run<'a> {
    conn: Connection<FakeSocket<'a>>,
    config: LoopConfig,
    /// The event loop's shared read buffer.
    buffer: ReadBuffer,
    now: Instant,
    app: App,
    /// This round's frames, like the server's: cleared after each flush.
    batch: Batch,
}

/// The application's side of `read_turn`: the run, and the script that
/// decides what the application answers.
struct Reader<'r, 'a, 's> {
    run: &'r mut Run<'a>,
    script: &'r mut Script<'s>,
}

impl<'a> ReadHost<FakeSocket<'a>> for Reader<'_, 'a, '_> {
    fn connection(&mut self) -> &mut Connection<FakeSocket<'a>> {
        &mut self.run.conn
    }

    fn deliver(&mut self, input: Input<'_>) {
        let run = &mut *self.run;
        match input {
            Input::Opened => {
                assert!(!run.app.opened, "Opened twice");
                run.app.opened = true;
                run.conn.set_timer(Some(run.now + JOIN_TIMEOUT));
            }
            Input::HttpGet(request) => {
                assert!(!run.app.opened, "an HTTP request on an open WebSocket");
                let body = format!("no {} here\n", request.path);
                let response = http::response(404, "", "text/plain", body.as_bytes());
                run.conn.respond(&response, run.now);
            }
            Input::Text(_) => {
                assert!(run.app.opened, "a message before Opened");
                // Like a successful join: the join deadline is over.
                run.conn.set_timer(None);
                run.send(self.script.byte());
            }
            Input::Binary(_) => {
                assert!(run.app.opened, "a message before Opened");
                // What the chat service does with binary frames.
                run.close(CloseCode::Unsupported, "no binary");
            }
            Input::Forwarded(_) | Input::Control | Input::Drained | Input::Finished => {
                panic!("read_turn delivered {input:?}")
            }
        }
        run.check_queue();
    }
}

impl Run<'_> {
    /// Reads as the event loop does, with the loop's own function.
    fn read(&mut self, script: &mut Script) {
        let (now, config) = (self.now, self.config.clone());
        let mut buffer = std::mem::take(&mut self.buffer);
        read_turn(&mut Reader { run: self, script }, now, &config, &mut buffer);
        self.buffer = buffer;
        self.check_queue();
    }

    /// Closes the connection as the application would.
    fn close(&mut self, code: CloseCode, reason: &str) {
        let turn = Turn {
            now: self.now,
            config: &self.config,
            broadcasts: &[],
        };
        self.conn.close(code, reason, &turn);
    }

    /// The application sends 0 to 3 frames of a scripted size, or (rarely)
    /// closes the connection, as `/quit` or flooding would.
    fn send(&mut self, choice: u8) {
        if choice >> 3 == 0x1f {
            self.close(CloseCode::Normal, "bye");
            return;
        }
        let size = usize::from(choice >> 2) % PAYLOADS.len();
        let frame = self
            .batch
            .frame(Data::Text, "x".repeat(PAYLOADS[size]).as_bytes());
        self.app.largest_frame = self.app.largest_frame.max(frame.len());
        for _ in 0..choice & 3 {
            let turn = Turn {
                now: self.now,
                config: &self.config,
                broadcasts: &[],
            };
            self.conn.send(frame, &turn);
            self.check_queue();
        }
    }

    /// Flushes as `Server::settle` does, taking the goodbye around it.
    fn settle(&mut self, room: usize) {
        self.take_goodbye();
        self.conn.socket_mut().room = room;
        self.conn.flush(self.batch.bytes());
        self.batch.clear();
        self.take_goodbye();
        self.check_queue();
        if self.app.opened && !self.conn.phase().is_open() {
            assert!(self.app.goodbye, "left Open without a goodbye");
        }
    }

    fn take_goodbye(&mut self) {
        if self.conn.take_goodbye() {
            assert!(self.app.opened, "a goodbye without Opened");
            assert!(!self.app.goodbye, "a second goodbye");
            self.app.goodbye = true;
        }
    }

    /// Moves the clock and handles a deadline that passed, as the timer
    /// heap would. With `early`, also calls `on_deadline` before its time,
    /// as a stale timer entry can.
    fn tick(&mut self, step: Duration, early: bool) {
        self.now += step;
        let due = self
            .conn
            .next_deadline(&self.config)
            .is_some_and(|at| at <= self.now);
        if due || early {
            let turn = Turn {
                now: self.now,
                config: &self.config,
                broadcasts: &[],
            };
            if self.conn.on_deadline(&turn) {
                // The join deadline passed: what the chat does.
                self.close(CloseCode::Policy, "join timeout");
            }
        }
        if due {
            if let Some(next) = self.conn.next_deadline(&self.config) {
                assert!(next > self.now, "a handled deadline is still due");
            }
        }
    }

    /// The bound on the output queue.
    fn check_queue(&self) {
        let one_frame = self.app.largest_frame.max(ONE_SMALL_FRAME);
        let len = self.conn.queued();
        assert!(
            len <= self.config.max_outbound_bytes + one_frame,
            "{len} bytes queued, bound {} plus a frame of {one_frame}",
            self.config.max_outbound_bytes
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let (header, stream) = data.split_at(HEADER);
    let config = LoopConfig {
        max_outbound_bytes: 64 << (header[0] % 12),
        max_message_bytes: 16 << (header[1] % 14),
        ..LoopConfig::default()
    };
    let end = match header[2] & 3 {
        0 => End::Silent,
        1 | 3 => End::HangUp,
        _ => End::Reset,
    };
    let mut script = Script {
        bytes: &header[3..],
        next: 0,
    };
    let socket = FakeSocket {
        stream,
        read: 0,
        arrived: 0,
        end,
        room: 0,
        first_written: Vec::new(),
        shut: Cell::new(false),
        shutdown_fails: header[2] & 4 != 0,
    };
    let now = Instant::now();
    let peer = "127.0.0.1:9".parse().unwrap();
    let mut run = Run {
        conn: Connection::new(socket, peer, 1, now),
        config,
        buffer: ReadBuffer::default(),
        now,
        app: App::default(),
        batch: Batch::default(),
    };

    // The scripted turns: while the peer's bytes arrive, and a few after.
    let mut turns = 0;
    while !run.conn.phase().is_closed() && turns < stream.len() + 16 {
        turns += 1;
        let chunk = 1 + usize::from(script.byte());
        run.conn.socket_mut().arrive(chunk);
        run.read(&mut script);
        if run.app.opened {
            let choice = script.byte();
            run.send(choice);
        }
        let room = match script.byte() {
            0 => 0,
            byte @ 1..=127 => usize::from(byte),
            byte @ 128..=254 => 256 * usize::from(byte),
            255 => usize::MAX,
        };
        run.settle(room);
        let time = script.byte();
        run.tick(STEPS[usize::from(time) % STEPS.len()], time & 0x80 != 0);
        run.settle(0);
    }

    // The peer has said all it will. Whatever it did, time alone must now
    // end the connection: a ping, its timeout, the close linger.
    run.conn.socket_mut().arrive(usize::MAX);
    for _ in 0..8 {
        if run.conn.phase().is_closed() {
            break;
        }
        run.read(&mut script);
        run.settle(usize::MAX);
        run.tick(Duration::from_secs(60), false);
        run.settle(usize::MAX);
    }
    assert!(run.conn.phase().is_closed(), "still {:?}", run.conn.phase());
    if run.app.opened {
        assert!(run.app.goodbye, "opened, closed, and no goodbye");
    }
    let first = &run.conn.socket().first_written;
    assert!(
        first.is_empty() || first.starts_with(&b"HTTP/1.1 "[..first.len().min(9)]),
        "the first bytes written were {first:?}"
    );
});
