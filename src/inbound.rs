//! WebSocket messages from a client: frame headers (parsed by tungstenite's
//! public [`FrameHeader::parse`]), the assembly of fragments, and RFC 6455's
//! rules for what a client may send.
//!
//! The bytes come through one [`ReadBuffer`] per event loop, not a buffer
//! per connection: the socket is read into it, complete frames are unmasked
//! and handed out in place, and only what is left of an incomplete frame
//! when the loop moves on is copied into the connection's own
//! [`Inbound::leftover`], which is empty whenever nothing is pending. So an
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
    /// The close reason to send.
    pub reason: &'static str,
}

/// A violation of RFC 6455 (1002).
fn protocol_error(reason: &'static str) -> Violation {
    Violation {
        code: CloseCode::Protocol,
        reason,
    }
}

/// Text that is not UTF-8 (1007).
pub const INVALID_UTF8: Violation = Violation {
    code: CloseCode::Invalid,
    reason: "invalid UTF-8",
};

/// A frame or message over `--max-message-bytes` (1009).
const TOO_BIG: Violation = Violation {
    code: CloseCode::Size,
    reason: "message too big",
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
