//! Output waiting for a socket: the frames queued for one connection until
//! the kernel takes them.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::Bytes;

/// The most buffers handed to one `writev`. Linux accepts 1024; 64 already
/// covers a turn's worth of chat frames for one client.
const MAX_IOVECS: usize = 64;

/// An empty queue keeps its allocation unless it grew past this many
/// frames, so a burst does not pin memory on an idle connection.
const KEPT_QUEUE_CAPACITY: usize = 16;

/// An encoded WebSocket frame, shared by every connection it is sent to: a
/// broadcast is framed once and each recipient's queue holds a pointer.
pub type SharedFrame = Rc<[u8]>;

/// Encodes a final (unfragmented) server frame: unmasked, so the same bytes
/// are valid for every recipient.
pub fn encode_frame(data: Data, payload: impl Into<Bytes>) -> SharedFrame {
    let frame = Frame::message(payload, OpCode::Data(data), true);
    let mut bytes = Vec::with_capacity(frame.len());
    frame
        .format(&mut bytes)
        .expect("writing a frame into a Vec cannot fail");
    bytes.into()
}

/// Output waiting for the socket, as a list of frames so that the frames of
/// a broadcast are shared rather than copied.
#[derive(Debug, Default)]
pub struct OutQueue {
    /// Waiting chunks, oldest first. Only the first can be partly written.
    chunks: VecDeque<Chunk>,
    /// How many bytes of the first chunk are already written.
    written: usize,
    /// Unwritten bytes in all chunks: what `--max-outbound-bytes` bounds.
    len: usize,
    /// Unwritten bytes at the front that [`discard_unstarted`] keeps: the
    /// `101` response, without which no frame after it makes sense.
    ///
    /// [`discard_unstarted`]: Self::discard_unstarted
    sealed: usize,
}

/// One piece of queued output.
#[derive(Debug)]
enum Chunk {
    /// A frame shared with other connections.
    Shared(SharedFrame),
    /// Bytes only this connection sends: handshake responses, pongs, closes.
    Owned(Vec<u8>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Shared(frame) => frame,
            Chunk::Owned(bytes) => bytes,
        }
    }
}

impl OutQueue {
    /// Unwritten bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether everything has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues a shared frame.
    pub fn push_shared(&mut self, frame: &SharedFrame) {
        self.len += frame.len();
        self.chunks.push_back(Chunk::Shared(Rc::clone(frame)));
    }

    /// Queues bytes of our own, appending to the last chunk when it is ours,
    /// not yet on the wire and not sealed, so small writes become one buffer.
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let last_untouched = self.chunks.len() > 1 || self.written == 0;
        let unsealed = self.len - self.sealed;
        match self.chunks.back_mut() {
            // An untouched last chunk is unwritten whole; it is unsealed
            // when all of it lies past the sealed bytes.
            Some(Chunk::Owned(tail)) if last_untouched && tail.len() <= unsealed => {
                tail.extend_from_slice(bytes)
            }
            _ => self.chunks.push_back(Chunk::Owned(bytes.to_vec())),
        }
        self.len += bytes.len();
    }

    /// Queues bytes that [`discard_unstarted`](Self::discard_unstarted)
    /// must never drop, with everything queued before them: the `101`
    /// response that every later frame depends on.
    pub fn push_sealed(&mut self, bytes: &[u8]) {
        self.chunks.push_back(Chunk::Owned(bytes.to_vec()));
        self.len += bytes.len();
        self.sealed = self.len;
    }

    /// Drops every chunk not yet started, keeping the one partly on the
    /// wire and the sealed ones so the stream stays well-formed: room for a
    /// last close frame.
    pub fn discard_unstarted(&mut self) {
        let mut kept_chunks = 0;
        let mut kept_bytes = 0;
        for (i, chunk) in self.chunks.iter().enumerate() {
            let started = i == 0 && self.written > 0;
            if !started && kept_bytes >= self.sealed {
                break;
            }
            let written = if i == 0 { self.written } else { 0 };
            kept_bytes += chunk.bytes().len() - written;
            kept_chunks += 1;
        }
        self.chunks.truncate(kept_chunks);
        self.len = kept_bytes;
    }

    /// Writes as much as the sink takes. Returns `Ok` when the queue is
    /// empty or the sink would block (check [`is_empty`](Self::is_empty));
    /// any other error means the connection is broken.
    pub fn write_to<W: Write>(&mut self, sink: &mut W) -> io::Result<()> {
        while !self.chunks.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (slot, chunk) in slices.iter_mut().zip(&self.chunks) {
                *slot = IoSlice::new(chunk.bytes());
                count += 1;
            }
            slices[0] = IoSlice::new(&self.chunks[0].bytes()[self.written..]);
            match sink.write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.consume(n),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Forgets `n` written bytes from the front.
    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        self.sealed = self.sealed.saturating_sub(n);
        while n > 0 {
            let left_in_first = self.chunks[0].bytes().len() - self.written;
            if n < left_in_first {
                self.written += n;
                return;
            }
            n -= left_in_first;
            self.chunks.pop_front();
            self.written = 0;
        }
        if self.chunks.is_empty() && self.chunks.capacity() > KEPT_QUEUE_CAPACITY {
            self.chunks = VecDeque::new();
        }
    }
}
