//! Test doubles shared by the unit tests, the integration tests and anyone
//! driving a [`Connection`](crate::evloop::connection::Connection) without a
//! network: a scripted non-blocking socket and a client frame encoder.
//! Nothing in the server uses this module.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};

use tungstenite::protocol::frame::coding::OpCode;
use tungstenite::protocol::frame::{Frame, FrameHeader};

use crate::evloop::connection::Socket;

/// A socket that hands out scripted input and takes limited output,
/// answering `WouldBlock` whenever a real non-blocking socket would.
#[derive(Default)]
pub struct FakeSocket {
    /// Input chunks; each `read` takes from one chunk at most. When they
    /// are used up, reads would block (or end, once `eof` is set).
    pub input: VecDeque<Vec<u8>>,
    /// Whether the peer has hung up once the input is used.
    pub eof: bool,
    /// Everything written so far.
    pub written: Vec<u8>,
    /// How many more bytes the "kernel buffer" takes before blocking.
    pub room: usize,
    /// Whether `shutdown_write` was called.
    pub shut: Cell<bool>,
}

impl Read for FakeSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.input.front_mut() {
            Some(chunk) => {
                let n = chunk.len().min(buf.len());
                buf[..n].copy_from_slice(&chunk[..n]);
                chunk.drain(..n);
                if chunk.is_empty() {
                    self.input.pop_front();
                }
                Ok(n)
            }
            None if self.eof => Ok(0),
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
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
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shut.set(true);
        Ok(())
    }
}

/// A valid WebSocket upgrade request (the key of RFC 6455's example).
pub const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A client frame, as a browser would send it: masked with `mask`, or not
/// at all when it is `None` (which a server must refuse). Encoded by
/// tungstenite, the crate whose header parser the loop uses, so the test
/// doubles carry no framer of their own.
pub fn encode_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let header = FrameHeader {
        opcode: OpCode::from(opcode),
        mask,
        ..FrameHeader::default()
    };
    let mut out = Vec::with_capacity(payload.len() + 14);
    Frame::from_payload(header, payload.to_vec().into())
        .format(&mut out)
        .expect("writing to a Vec cannot fail");
    out
}

/// A masked client frame with a fixed key, the ordinary case of the tests.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_frame(opcode, payload, Some([0x12, 0x34, 0x56, 0x78]))
}
