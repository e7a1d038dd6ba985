//! WebSocket messages from a client: frame headers (parsed by tungstenite's
//! public [`FrameHeader::parse`]), the assembly of fragments, and RFC 6455's
//! rules for what a client may send.
//!
//! The bytes come through one [`ReadBuffer`] per event loop, not a buffer
//! per connection: the socket is read into it, complete frames are unmasked
//! and handed out in place, and only what is left of an incomplete frame
//! when the loop moves on is copied into the connection's own
//! `Inbound::leftover`, which is empty whenever nothing is pending. So an
//! idle connection holds no read buffer at all.
//!
//! ```text
//!  socket ──read──► ReadBuffer ──Inbound::next──► a whole frame in place ──► Input::Text(&str)
//!                      │   ▲                 └──► a fragment or a frame too large for
//!                      │   │                      the buffer: appended to Message::bytes,
//!  save_leftover ──────┘   └── resume             handed out through ReadBuffer::assembled
//!  (Inbound::leftover)
//! ```

use std::io::{self, Cursor, Read};
use std::ops::Range;

use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// The size of the shared read buffer. One `read` takes this much of what
/// a busy client has queued (a burst of small frames in one syscall), and a
/// whole chat message (64 KiB at most by default) fits, so only larger
/// frames take the slower path of being copied into their connection's
/// message. There is one per loop, so its size does not grow with clients.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;

/// A connection's saved leftover keeps its allocation when the leftover is
/// gone only up to this capacity: the tail of a frame split by TCP (a header
/// and a few bytes) reuses it, anything larger is freed so that an idle
/// connection holds nothing.
const KEPT_LEFTOVER_CAPACITY: usize = 256;

/// The largest payload of a control frame (RFC 6455, section 5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// The bytes read from sockets, shared by every connection of one event
/// loop; at most one connection's bytes are in it at a time.
#[derive(Debug)]
pub struct ReadBuffer {
    /// The storage, zero-filled once when allocated so reads need no fill.
    bytes: Box<[u8]>,
    /// Where the bytes not yet parsed begin.
    start: usize,
    /// Where the bytes read end.
    end: usize,
    /// The serial of the connection whose bytes are in the buffer, so that
    /// one connection's bytes can never be parsed as another's.
    owner: Option<u64>,
    /// The last message that was not one frame in `bytes` (assembled from
    /// fragments, or too large for `bytes`), so that every message the
    /// application sees is borrowed from here.
    assembled: Vec<u8>,
}

impl Default for ReadBuffer {
    fn default() -> Self {
        ReadBuffer {
            bytes: vec![0; READ_BUFFER_BYTES].into_boxed_slice(),
            start: 0,
            end: 0,
            owner: None,
            assembled: Vec::new(),
        }
    }
}

impl ReadBuffer {
    /// The bytes read and not yet parsed.
    fn unread(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// Reads from `socket` after the unread bytes, first moving them to the
    /// front. There is always room: [`Inbound::next`] asks for more only
    /// while the unread bytes are part of a frame that fits the buffer.
    pub fn read_from(&mut self, socket: &mut impl Read) -> io::Result<usize> {
        self.bytes.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        debug_assert!(self.end < self.bytes.len(), "a full read buffer");
        let n = socket.read(&mut self.bytes[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// The whole buffer, for input that is not frames (an HTTP request
    /// head), which the caller copies out before it returns.
    ///
    /// # Panics
    ///
    /// If a connection's bytes are in the buffer.
    pub fn spare(&mut self) -> &mut [u8] {
        assert!(
            self.owner.is_none(),
            "the read buffer holds another connection's bytes"
        );
        &mut self.bytes
    }

    /// A message's payload, wherever [`Inbound::next`] left it.
    pub fn payload(&self, at: &Payload) -> &[u8] {
        match at {
            Payload::InPlace(range) => &self.bytes[range.clone()],
            Payload::Assembled => &self.assembled,
        }
    }

    /// Drops the bytes of connection `serial`, if they are in the buffer:
    /// it stopped being open, so they will never be parsed.
    pub fn forget(&mut self, serial: u64) {
        if self.owner == Some(serial) {
            self.release();
        }
    }

    /// Empties the buffer for the next connection, giving back the memory
    /// of a large assembled message.
    fn release(&mut self) {
        self.start = 0;
        self.end = 0;
        self.owner = None;
        self.assembled = Vec::new();
    }
}

/// Where a complete message's payload is in the [`ReadBuffer`].
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A message that came as one frame: its payload, unmasked in place.
    InPlace(Range<usize>),
    /// A message assembled from fragments or from more than one read.
    Assembled,
}

/// What the next frame brought.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// A complete message. A text message's UTF-8 is not yet checked as a
    /// whole: the caller checks it as it makes the `&str`.
    Message {
        /// Text (else binary).
        text: bool,
        /// Where its payload is.
        at: Payload,
    },
    /// A fragment, or part of a large frame, that completes no message: the
    /// caller counts it against the read budget, so endless empty fragments
    /// cannot hold the loop.
    Fragment,
    /// A ping; the pong must carry this payload.
    Ping(Range<usize>),
    /// A pong: nothing to do.
    Pong,
    /// The peer's close, checked; the reply echoes its code (or is empty).
    Close(Option<CloseCode>),
    /// No complete frame in the buffer: read more.
    More,
}

/// Input that breaks the protocol or a limit: the connection is closed with
/// this code.
#[derive(Debug, PartialEq)]
pub struct Violation {
    /// The close code to send.
    pub code: CloseCode,
    /// The close reason to send, as `docs/protocol.md` lists it.
    pub reason: &'static str,
    /// Which rule was broken, for the debug log.
    pub detail: &'static str,
}

/// A violation of RFC 6455 (1002); every one has the same reason on the
/// wire, and `detail` in the log.
fn protocol_error(detail: &'static str) -> Violation {
    Violation {
        code: CloseCode::Protocol,
        reason: "protocol error",
        detail,
    }
}

/// Text that is not UTF-8 (1007).
pub const INVALID_UTF8: Violation = Violation {
    code: CloseCode::Invalid,
    reason: "invalid UTF-8",
    detail: "invalid UTF-8",
};

/// A frame or message over `--max-message-bytes` (1009).
const TOO_BIG: Violation = Violation {
    code: CloseCode::Size,
    reason: "message too big",
    detail: "frame or message over --max-message-bytes",
};

/// One connection's side of the message layer: what it keeps between reads.
#[derive(Debug, Default)]
pub struct Inbound {
    /// Unparsed bytes saved when the loop left this connection in the middle
    /// of them; copied back into the shared buffer when reading resumes.
    leftover: Vec<u8>,
    /// The data message being received, when it is not one frame that fits
    /// in the shared buffer.
    message: Option<Message>,
}

/// A data message arriving in pieces.
#[derive(Debug)]
struct Message {
    /// Whether it is text (else binary), from its first frame.
    text: bool,
    /// Its payload so far, unmasked.
    bytes: Vec<u8>,
    /// How many of `bytes` are known to be valid UTF-8, so each fragment of
    /// a text message is checked once and a bad one fails at once.
    checked: usize,
    /// The frame too large for the shared buffer whose payload is being
    /// copied into `bytes` as it arrives.
    streaming: Option<Streaming>,
}

/// A frame read in more than one buffer's worth.
#[derive(Debug)]
struct Streaming {
    /// Its masking key.
    mask: [u8; 4],
    /// Payload bytes already taken, for the position in the mask.
    taken: usize,
    /// Payload bytes still to come.
    left: usize,
    /// Whether it ends the message.
    is_final: bool,
}

impl Inbound {
    /// An inbound side that starts with `bytes` (what followed the HTTP
    /// request head in the same reads).
    pub fn with_leftover(bytes: Vec<u8>) -> Self {
        Inbound {
            leftover: bytes,
            message: None,
        }
    }

    /// Makes the shared buffer this connection's, with its saved leftover,
    /// unless it already is.
    ///
    /// # Panics
    ///
    /// If the buffer still holds another connection's bytes: whoever stopped
    /// reading it did not call [`save_leftover`](Self::save_leftover), and
    /// parsing on would mix two clients' streams.
    pub fn resume(&mut self, buffer: &mut ReadBuffer, serial: u64) {
        if buffer.owner == Some(serial) {
            return;
        }
        assert!(
            buffer.owner.is_none(),
            "the read buffer holds another connection's bytes"
        );
        buffer.owner = Some(serial);
        buffer.bytes[..self.leftover.len()].copy_from_slice(&self.leftover);
        buffer.start = 0;
        buffer.end = self.leftover.len();
        self.leftover.clear();
        if self.leftover.capacity() > KEPT_LEFTOVER_CAPACITY {
            self.leftover = Vec::new();
        }
    }

    /// Saves what is left in the shared buffer of this connection's bytes
    /// and frees the buffer for the next one. Call it whenever reading
    /// moves away from the connection.
    pub fn save_leftover(&mut self, buffer: &mut ReadBuffer, serial: u64) {
        if buffer.owner == Some(serial) {
            self.leftover.extend_from_slice(buffer.unread());
            buffer.release();
        }
    }

    /// Parses the next frame from the buffer and applies the rules.
    pub fn next(&mut self, buffer: &mut ReadBuffer, max_message: usize) -> Result<Next, Violation> {
        if self.message.as_ref().is_some_and(|m| m.streaming.is_some()) {
            return self.stream(buffer);
        }
        let mut cursor = Cursor::new(buffer.unread());
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(Next::More),
            // The only error parsing a header in memory: a reserved opcode.
            Err(_) => return Err(protocol_error("reserved opcode")),
        };
        let header_len = cursor.position() as usize;
        self.check(&header, len, max_message)?;
        let Some(mask) = header.mask else {
            unreachable!("check refuses unmasked frames");
        };
        // Within `max_message`, which is a `usize`.
        let len = len as usize;
        let payload_start = buffer.start + header_len;
        if header_len + len > buffer.bytes.len() {
            // Only a data frame can be this large: its payload is copied
            // into the message as it comes, a buffer's worth at a time.
            buffer.start = payload_start;
            let streaming = Streaming {
                mask,
                taken: 0,
                left: len,
                is_final: header.is_final,
            };
            let message = self.message.get_or_insert_with(|| Message {
                text: header.opcode == OpCode::Data(Data::Text),
                bytes: Vec::new(),
                checked: 0,
                streaming: None,
            });
            message.streaming = Some(streaming);
            return self.stream(buffer);
        }
        if buffer.end - payload_start < len {
            return Ok(Next::More);
        }
        let payload = payload_start..payload_start + len;
        unmask(&mut buffer.bytes[payload.clone()], mask, 0);
        buffer.start = payload.end;
        match header.opcode {
            OpCode::Control(Control::Ping) => Ok(Next::Ping(payload)),
            OpCode::Control(Control::Pong) => Ok(Next::Pong),
            OpCode::Control(_) => close_frame(&buffer.bytes[payload]),
            OpCode::Data(data) => {
                if header.is_final && data != Data::Continue {
                    return Ok(Next::Message {
                        text: data == Data::Text,
                        at: Payload::InPlace(payload),
                    });
                }
                let message = self.message.get_or_insert_with(|| Message {
                    text: data == Data::Text,
                    bytes: Vec::new(),
                    checked: 0,
                    streaming: None,
                });
                message.bytes.extend_from_slice(&buffer.bytes[payload]);
                self.fragment_done(header.is_final, buffer)
            }
        }
    }

    /// The rules a frame's header must follow, checked before its payload
    /// is read.
    fn check(&self, header: &FrameHeader, len: u64, max_message: usize) -> Result<(), Violation> {
        if header.mask.is_none() {
            return Err(protocol_error("unmasked client frame"));
        }
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(protocol_error("reserved bits set"));
        }
        let in_progress = self.message.as_ref().map_or(0, |m| m.bytes.len());
        match header.opcode {
            OpCode::Control(_) if !header.is_final => {
                Err(protocol_error("fragmented control frame"))
            }
            OpCode::Control(_) if len > MAX_CONTROL_PAYLOAD => {
                Err(protocol_error("control frame too long"))
            }
            OpCode::Control(_) => Ok(()),
            OpCode::Data(Data::Continue) if self.message.is_none() => {
                Err(protocol_error("continuation with no message started"))
            }
            OpCode::Data(Data::Text | Data::Binary) if self.message.is_some() => {
                Err(protocol_error("new message before the last one ended"))
            }
            OpCode::Data(_) if len > (max_message - in_progress) as u64 => Err(TOO_BIG),
            OpCode::Data(_) => Ok(()),
        }
    }

    /// Takes what has arrived of a frame too large for the buffer.
    fn stream(&mut self, buffer: &mut ReadBuffer) -> Result<Next, Violation> {
        let Some(message) = &mut self.message else {
            unreachable!("streaming belongs to a message");
        };
        let Some(streaming) = &mut message.streaming else {
            unreachable!("stream is called while streaming");
        };
        let take = streaming.left.min(buffer.end - buffer.start);
        let chunk = &mut buffer.bytes[buffer.start..buffer.start + take];
        unmask(chunk, streaming.mask, streaming.taken);
        message.bytes.extend_from_slice(chunk);
        buffer.start += take;
        streaming.taken += take;
        streaming.left -= take;
        if streaming.left > 0 {
            // Fail fast: a text message's bad byte closes the connection
            // without waiting for the rest of a long frame.
            check_utf8(message)?;
            return Ok(if take == 0 {
                Next::More
            } else {
                Next::Fragment
            });
        }
        let is_final = streaming.is_final;
        message.streaming = None;
        self.fragment_done(is_final, buffer)
    }

    /// A frame of a message is complete: the message is handed over through
    /// the buffer if it was the last, else its text so far is checked.
    fn fragment_done(
        &mut self,
        is_final: bool,
        buffer: &mut ReadBuffer,
    ) -> Result<Next, Violation> {
        let Some(message) = &mut self.message else {
            unreachable!("a fragment belongs to a message");
        };
        if !is_final {
            check_utf8(message)?;
            return Ok(Next::Fragment);
        }
        let text = message.text;
        buffer.assembled = std::mem::take(&mut message.bytes);
        self.message = None;
        Ok(Next::Message {
            text,
            at: Payload::Assembled,
        })
    }
}

/// Checks the text of a message not yet complete: only its end may stop in
/// the middle of a character. (The whole message is checked again as it is
/// handed out, when it becomes a `&str`.)
fn check_utf8(message: &mut Message) -> Result<(), Violation> {
    if !message.text {
        return Ok(());
    }
    match std::str::from_utf8(&message.bytes[message.checked..]) {
        Ok(_) => message.checked = message.bytes.len(),
        Err(err) if err.error_len().is_none() => message.checked += err.valid_up_to(),
        Err(_) => return Err(INVALID_UTF8),
    }
    Ok(())
}

/// Checks a peer's close frame (its payload unmasked).
fn close_frame(payload: &[u8]) -> Result<Next, Violation> {
    let [high, low, reason @ ..] = payload else {
        return match payload.len() {
            0 => Ok(Next::Close(None)),
            _ => Err(protocol_error("close frame of one byte")),
        };
    };
    let code = CloseCode::from(u16::from_be_bytes([*high, *low]));
    // `is_allowed` also refuses 1005, 1006 and 1015, which only ever
    // describe a close and are never sent.
    if !code.is_allowed() {
        return Err(protocol_error("close code not allowed"));
    }
    if std::str::from_utf8(reason).is_err() {
        return Err(INVALID_UTF8);
    }
    Ok(Next::Close(Some(code)))
}

/// Unmasks `payload` in place, for a payload that starts `offset` bytes into
/// its frame's payload. Eight bytes at a time: this touches every byte a
/// client sends.
fn unmask(payload: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut mask = mask;
    mask.rotate_left(offset % 4);
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let bytes: [u8; 8] = (&*chunk).try_into().expect("chunks of eight");
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evloop::testing::{client_frame, FakeSocket};

    const TEXT: u8 = 0x1;
    const BINARY: u8 = 0x2;
    const CONTINUATION: u8 = 0x0;
    const CLOSE: u8 = 0x8;
    const PING: u8 = 0x9;
    const PONG: u8 = 0xA;

    /// What the application would see, owned so that tests can compare it.
    #[derive(Debug, PartialEq)]
    enum Got {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong,
        Close(Option<u16>),
        /// The connection is closed with this code; nothing follows.
        Violation(u16),
    }

    /// A frame that does not end its message.
    fn fragment(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = client_frame(opcode, payload);
        frame[0] &= 0x7f;
        frame
    }

    /// The close frame payload for `code`.
    fn close(code: u16, reason: &[u8]) -> Vec<u8> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        client_frame(CLOSE, &payload)
    }

    /// Takes the next thing from `inbound`, reading `socket` as needed;
    /// `None` when the socket would block first.
    fn take(
        inbound: &mut Inbound,
        buffer: &mut ReadBuffer,
        socket: &mut FakeSocket,
        max: usize,
    ) -> Option<Got> {
        loop {
            let next = match inbound.next(buffer, max) {
                Ok(next) => next,
                Err(violation) => return Some(Got::Violation(violation.code.into())),
            };
            let got = match next {
                Next::More => {
                    buffer.read_from(socket).ok()?;
                    continue;
                }
                Next::Fragment => continue,
                Next::Message { text: true, at } => {
                    match std::str::from_utf8(buffer.payload(&at)) {
                        Ok(text) => Got::Text(text.to_owned()),
                        Err(_) => Got::Violation(1007),
                    }
                }
                Next::Message { text: false, at } => Got::Binary(buffer.payload(&at).to_vec()),
                Next::Ping(payload) => {
                    Got::Ping(buffer.payload(&Payload::InPlace(payload)).to_vec())
                }
                Next::Pong => Got::Pong,
                Next::Close(code) => Got::Close(code.map(u16::from)),
            };
            return Some(got);
        }
    }

    /// Everything `chunks` (one read each) bring, up to the first violation.
    fn receive(chunks: Vec<Vec<u8>>, max: usize) -> Vec<Got> {
        let mut socket = FakeSocket {
            input: chunks.into(),
            ..FakeSocket::default()
        };
        let mut buffer = ReadBuffer::default();
        let mut inbound = Inbound::default();
        inbound.resume(&mut buffer, 1);
        let mut got = Vec::new();
        while let Some(next) = take(&mut inbound, &mut buffer, &mut socket, max) {
            let violation = matches!(next, Got::Violation(_));
            got.push(next);
            if violation {
                break;
            }
        }
        got
    }

    #[test]
    fn the_rules_of_rfc_6455() {
        let unmasked = crate::evloop::testing::encode_frame(TEXT, b"hi", None);
        let with_bit = |bit: u8| {
            let mut frame = client_frame(TEXT, b"hi");
            frame[0] |= bit;
            frame
        };
        let cases: Vec<(&str, Vec<u8>, Got)> = vec![
            ("unmasked", unmasked, Got::Violation(1002)),
            ("RSV1", with_bit(0x40), Got::Violation(1002)),
            ("RSV2", with_bit(0x20), Got::Violation(1002)),
            ("RSV3", with_bit(0x10), Got::Violation(1002)),
            (
                "data opcode 3",
                client_frame(0x3, b""),
                Got::Violation(1002),
            ),
            (
                "control opcode B",
                client_frame(0xB, b""),
                Got::Violation(1002),
            ),
            ("fragmented ping", fragment(PING, b""), Got::Violation(1002)),
            (
                "ping of 126",
                client_frame(PING, &[0; 126]),
                Got::Violation(1002),
            ),
            (
                "ping of 125",
                client_frame(PING, &[7; 125]),
                Got::Ping(vec![7; 125]),
            ),
            ("pong", client_frame(PONG, b"x"), Got::Pong),
            (
                "lone continuation",
                client_frame(CONTINUATION, b"x"),
                Got::Violation(1002),
            ),
            (
                "text in a text",
                [fragment(TEXT, b"a"), client_frame(TEXT, b"b")].concat(),
                Got::Violation(1002),
            ),
            (
                "binary",
                client_frame(BINARY, &[0, 255]),
                Got::Binary(vec![0, 255]),
            ),
            (
                "bad UTF-8",
                client_frame(TEXT, b"\xff"),
                Got::Violation(1007),
            ),
            ("empty close", client_frame(CLOSE, b""), Got::Close(None)),
            (
                "close of one byte",
                client_frame(CLOSE, b"\x03"),
                Got::Violation(1002),
            ),
            ("close 1000", close(1000, b"bye"), Got::Close(Some(1000))),
            ("close 3000", close(3000, b""), Got::Close(Some(3000))),
            ("close 4999", close(4999, b""), Got::Close(Some(4999))),
            ("close 999", close(999, b""), Got::Violation(1002)),
            ("close 1004", close(1004, b""), Got::Violation(1002)),
            ("close 1005", close(1005, b""), Got::Violation(1002)),
            ("close 1006", close(1006, b""), Got::Violation(1002)),
            ("close 1015", close(1015, b""), Got::Violation(1002)),
            ("close 2000", close(2000, b""), Got::Violation(1002)),
            ("close 5000", close(5000, b""), Got::Violation(1002)),
            (
                "close reason not UTF-8",
                close(1000, b"\xff"),
                Got::Violation(1007),
            ),
            (
                "over the limit",
                client_frame(BINARY, &[0; 101]),
                Got::Violation(1009),
            ),
            (
                "fragments over the limit",
                [
                    fragment(TEXT, &[b'a'; 60]),
                    client_frame(CONTINUATION, &[b'a'; 41]),
                ]
                .concat(),
                Got::Violation(1009),
            ),
        ];
        for (name, bytes, expected) in cases {
            let got = receive(vec![bytes], 100);
            assert_eq!(got.last(), Some(&expected), "{name}: {got:?}");
        }
    }

    #[test]
    fn bad_utf8_fails_at_the_fragment_that_has_it() {
        // "é" is C3 A9: split across fragments it is fine...
        let split = [
            fragment(TEXT, b"caf\xc3"),
            client_frame(CONTINUATION, b"\xa9"),
        ];
        assert_eq!(receive(split.to_vec(), 100), [Got::Text("café".into())]);
        // ...but a wrong second byte fails before the message ends.
        let bad = [fragment(TEXT, b"caf\xc3"), fragment(CONTINUATION, b"\x28")];
        assert_eq!(receive(bad.to_vec(), 100), [Got::Violation(1007)]);
        // A message may not end in the middle of a character.
        let cut = [fragment(TEXT, b"caf"), client_frame(CONTINUATION, b"\xc3")];
        assert_eq!(receive(cut.to_vec(), 100), [Got::Violation(1007)]);
    }

    #[test]
    fn the_size_limit_is_judged_from_the_header() {
        // Only the header of a 1001-byte frame: the limit is 1000.
        let frame = client_frame(TEXT, &[b'a'; 1001]);
        assert_eq!(
            receive(vec![frame[..8].to_vec()], 1000),
            [Got::Violation(1009)]
        );
        // A length of 2^63.
        let huge = vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert_eq!(receive(vec![huge], 1000), [Got::Violation(1009)]);
    }

    #[test]
    fn frames_split_at_every_byte_arrive_the_same() {
        let stream = [
            client_frame(TEXT, "héllo".as_bytes()),
            client_frame(PING, b"are you there"),
            fragment(TEXT, b"ab"),
            client_frame(PONG, b""),
            fragment(CONTINUATION, b""),
            client_frame(CONTINUATION, "cdé".as_bytes()),
            client_frame(BINARY, &[0; 300]),
            close(1000, b""),
        ]
        .concat();
        let expected = [
            Got::Text("héllo".into()),
            Got::Ping(b"are you there".to_vec()),
            Got::Pong,
            Got::Text("abcdé".into()),
            Got::Binary(vec![0; 300]),
            Got::Close(Some(1000)),
        ];
        for split in 0..=stream.len() {
            let chunks = vec![stream[..split].to_vec(), stream[split..].to_vec()];
            assert_eq!(receive(chunks, 1000), expected, "split at {split}");
        }
        let bytes = stream.iter().map(|&byte| vec![byte]).collect();
        assert_eq!(receive(bytes, 1000), expected, "one byte at a time");
    }

    #[test]
    fn messages_larger_than_the_shared_buffer_arrive_whole() {
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let text = "ü".repeat(60_000);
        let stream = [
            client_frame(BINARY, &big),
            // 120 KB of text in two fragments, split in a character.
            fragment(TEXT, &text.as_bytes()[..70_001]),
            client_frame(CONTINUATION, &text.as_bytes()[70_001..]),
            client_frame(TEXT, b"after"),
        ]
        .concat();
        // Reads of 1000 bytes, and reads as large as the buffer.
        for size in [1000, READ_BUFFER_BYTES] {
            let chunks = stream.chunks(size).map(<[u8]>::to_vec).collect();
            let got = receive(chunks, 300_000);
            assert_eq!(
                got,
                [
                    Got::Binary(big.clone()),
                    Got::Text(text.clone()),
                    Got::Text("after".into())
                ]
            );
        }
    }

    #[test]
    fn a_large_text_frame_fails_at_its_first_bad_byte() {
        let mut payload = vec![b'a'; 200_000];
        payload[10] = 0xff;
        let frame = client_frame(TEXT, &payload);
        // Only the first 70 KB arrive: enough to know.
        assert_eq!(
            receive(vec![frame[..70_000].to_vec()], 300_000),
            [Got::Violation(1007)]
        );
    }

    #[test]
    fn leftovers_survive_a_budget_stop() {
        let mut buffer = ReadBuffer::default();
        let mut alice = Inbound::default();
        let mut alice_socket = FakeSocket {
            // Three messages and the start of a fourth in one read.
            input: vec![[
                client_frame(TEXT, b"one"),
                client_frame(TEXT, b"two"),
                client_frame(TEXT, b"three"),
                client_frame(TEXT, b"four")[..5].to_vec(),
            ]
            .concat()]
            .into(),
            ..FakeSocket::default()
        };
        alice.resume(&mut buffer, 1);
        let first = take(&mut alice, &mut buffer, &mut alice_socket, 100);
        assert_eq!(first, Some(Got::Text("one".into())));
        // Alice's budget is spent: her rest leaves the buffer for Bob.
        alice.save_leftover(&mut buffer, 1);
        let mut bob = Inbound::default();
        let mut bob_socket = FakeSocket {
            input: vec![client_frame(TEXT, b"bob")].into(),
            ..FakeSocket::default()
        };
        bob.resume(&mut buffer, 2);
        let bobs = take(&mut bob, &mut buffer, &mut bob_socket, 100);
        assert_eq!(bobs, Some(Got::Text("bob".into())));
        assert_eq!(take(&mut bob, &mut buffer, &mut bob_socket, 100), None);
        bob.save_leftover(&mut buffer, 2);
        assert!(bob.leftover.is_empty());
        // Alice's next turn takes up where she left off.
        alice.resume(&mut buffer, 1);
        alice_socket
            .input
            .push_back(client_frame(TEXT, b"four")[5..].to_vec());
        let rest: Vec<_> =
            std::iter::from_fn(|| take(&mut alice, &mut buffer, &mut alice_socket, 100)).collect();
        assert_eq!(
            rest,
            [
                Got::Text("two".into()),
                Got::Text("three".into()),
                Got::Text("four".into())
            ]
        );
        alice.save_leftover(&mut buffer, 1);
        // An idle connection holds at most a small allocation.
        assert!(alice.leftover.is_empty());
        assert!(alice.leftover.capacity() <= KEPT_LEFTOVER_CAPACITY);
    }

    #[test]
    #[should_panic(expected = "another connection's bytes")]
    fn a_buffer_holding_another_connections_bytes_is_never_parsed() {
        let mut buffer = ReadBuffer::default();
        let mut alice = Inbound::default();
        alice.resume(&mut buffer, 1);
        Inbound::default().resume(&mut buffer, 2);
    }

    #[test]
    fn unmasking_eight_bytes_at_a_time_matches_one_at_a_time() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let plain: Vec<u8> = (0..37).collect();
        for offset in 0..8 {
            let mut fast = plain.clone();
            unmask(&mut fast, mask, offset);
            let slow: Vec<u8> = plain
                .iter()
                .enumerate()
                .map(|(i, byte)| byte ^ mask[(offset + i) % 4])
                .collect();
            assert_eq!(fast, slow, "offset {offset}");
        }
    }
}
