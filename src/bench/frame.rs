//! The smallest WebSocket framing (RFC 6455 §5.2) a load generator and a
//! floor server need: encode a frame, parse one header, unmask a payload.
//!
//! chatbench sends masked client frames and reads unmasked server frames;
//! the floor server (`examples/floor.rs`) does the opposite. Both use this
//! one codec, so neither carries a twin. It does no UTF-8 check and keeps
//! no state: fragmented messages are reassembled by the caller, which knows
//! whether it cares.

use std::fmt;
use std::ops::Range;

/// A continuation of a fragmented message.
pub const OP_CONTINUATION: u8 = 0x0;
/// A text frame: in this protocol, one JSON object.
pub const OP_TEXT: u8 = 0x1;
/// A binary frame, which this protocol does not use.
pub const OP_BINARY: u8 = 0x2;
/// A close frame: the peer is going away.
pub const OP_CLOSE: u8 = 0x8;
/// A ping, which must be answered with a pong carrying the same payload.
pub const OP_PING: u8 = 0x9;
/// A pong, the answer to a ping.
pub const OP_PONG: u8 = 0xA;

/// One frame found at the start of a buffer. It borrows nothing, so the
/// caller may unmask the payload in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Whether this is the last frame of its message.
    pub fin: bool,
    /// What the frame carries (`OP_TEXT`, `OP_PING`, ...).
    pub opcode: u8,
    /// The masking key, present exactly when a client sent the frame.
    pub mask: Option<[u8; 4]>,
    /// Where the payload lies in the buffer that was parsed.
    pub payload: Range<usize>,
}

impl Frame {
    /// How many bytes of the buffer the whole frame takes.
    pub fn encoded_len(&self) -> usize {
        self.payload.end
    }
}

/// Why bytes are not a frame; the connection cannot continue after any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A reserved bit is set, which no extension we negotiate allows.
    Reserved,
    /// The payload is longer than the caller is willing to buffer.
    TooLong(u64),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Reserved => write!(f, "a reserved bit is set in a frame header"),
            FrameError::TooLong(len) => write!(f, "a frame of {len} bytes is too long"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Parses the frame at the start of `buf`: `Ok(None)` until all of it has
/// arrived. Payloads over `max_payload` bytes are refused before they are
/// buffered.
pub fn parse(buf: &[u8], max_payload: usize) -> Result<Option<Frame>, FrameError> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    // The length is 7 bits, or 126 then 16 bits, or 127 then 64 bits.
    let (len, mut at) = match second & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()), 10),
        126 | 127 => return Ok(None),
        short => (u64::from(short), 2),
    };
    if len > max_payload as u64 {
        return Err(FrameError::TooLong(len));
    }
    let mask = if second & 0x80 != 0 {
        let Some(key) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some(key.try_into().unwrap())
    } else {
        None
    };
    // `len` fits in usize: it is at most `max_payload`.
    let end = at + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some(Frame {
        fin: first & 0x80 != 0,
        opcode: first & 0x0F,
        mask,
        payload: at..end,
    }))
}

/// XORs `payload` with the masking key: this both masks and unmasks.
pub fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Appends one complete (FIN) frame to `out`, masked when `mask` is given
/// (clients must mask, servers must not).
pub fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    encode_header(out, opcode, payload.len(), mask);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key);
    }
}

/// Appends the header of a complete (FIN) frame of `len` payload bytes,
/// the masking key included; the caller appends the (masked) payload.
pub fn encode_header(out: &mut Vec<u8>, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    out.push(0x80 | opcode);
    match len {
        len @ 0..=125 => out.push(mask_bit | len as u8),
        len @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length_form() {
        for len in [0, 1, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut buf = Vec::new();
                encode(&mut buf, OP_TEXT, &payload, mask);
                let frame = parse(&buf, usize::MAX).unwrap().unwrap();
                assert_eq!(frame.encoded_len(), buf.len());
                assert!(frame.fin);
                assert_eq!(frame.opcode, OP_TEXT);
                assert_eq!(frame.mask, mask);
                let mut got = buf[frame.payload].to_vec();
                if let Some(key) = mask {
                    apply_mask(&mut got, key);
                }
                assert_eq!(got, payload);
            }
        }
    }

    #[test]
    fn waits_for_the_whole_frame() {
        let mut buf = Vec::new();
        encode(&mut buf, OP_TEXT, &[7; 300], Some([9; 4]));
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut], usize::MAX), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn matches_the_rfc_example() {
        // RFC 6455 §5.7: a masked "Hello" from a client.
        let hello = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let mut buf = Vec::new();
        encode(&mut buf, OP_TEXT, b"Hello", Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(buf, hello);
    }

    #[test]
    fn refuses_reserved_bits_and_long_payloads() {
        assert_eq!(parse(&[0xC1, 0x00], 10), Err(FrameError::Reserved));
        let mut buf = Vec::new();
        encode(&mut buf, OP_TEXT, &[0; 11], None);
        assert_eq!(parse(&buf, 10), Err(FrameError::TooLong(11)));
    }
}
