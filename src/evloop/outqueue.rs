//! Output on its way to the sockets: the round's [`Batch`] of encoded
//! frames, shared by every connection they are sent to, and each
//! connection's [`OutQueue`].
//!
//! Everything the service sends during a turn is framed once, appended to
//! the batch, and recorded in each recipient's queue as a range of it.
//! Consecutive frames for the same recipient are consecutive in the batch,
//! so the ranges merge: a client that is sent forty messages in a turn has
//! one range, written with one `writev` of one buffer. At the end of the
//! round each queue is written, whatever a socket did not take is copied
//! into that queue's own carry-over, and the batch is cleared for the next
//! round. So a slow reader never holds on to a batch, and a delivery costs
//! a range comparison, not an allocation or a reference count.

use std::io::{self, IoSlice, Write};
use std::marker::PhantomData;
use std::ops::Range;

use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// The most buffers handed to one `writev`. Linux accepts 1024; a queue
/// rarely holds more than three (its carried bytes, this round's range, a pong).
const MAX_IOVECS: usize = 16;

/// A carry-over that empties keeps its allocation only up to this size, so a
/// burst does not pin memory on a connection that then goes idle: idle
/// connections are most of a big server's memory.
const KEPT_CARRIED_BYTES: usize = 1024;

/// A batch keeps this much capacity between rounds. Large enough for a
/// busy round of chat frames (16 KiB is about 150 messages), so a steady
/// load allocates nothing; a round that needed more (a long `welcome`)
/// gives the excess back.
const KEPT_BATCH_BYTES: usize = 64 * 1024;

/// This round's encoded frames, back to back. Connections' queues hold
/// ranges of it until the round's flush, then it is cleared.
#[derive(Debug, Default)]
pub struct Batch {
    /// The frames, in the order they were framed.
    bytes: Vec<u8>,
}

/// A frame in this round's [`Batch`], to be sent to any number of
/// connections. Its lifetime ties it to the round, so a service cannot keep
/// one for a later round, when the batch holds other frames.
#[derive(Debug, Clone, Copy)]
pub struct FrameRef<'round> {
    /// Where the frame starts in the batch.
    start: usize,
    /// Where it ends.
    end: usize,
    /// The round it belongs to.
    round: PhantomData<&'round ()>,
}

impl FrameRef<'_> {
    /// The frame's size on the wire.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the frame is empty (never: a frame has a header).
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

impl Batch {
    /// Appends a final (unfragmented) server frame and returns where it is.
    /// Server frames are unmasked, so the same bytes suit every recipient.
    /// The caller names the round: the server's `Outbox` ties it to the
    /// borrow of the batch that lasts until the round is flushed.
    pub fn frame<'round>(&mut self, data: Data, payload: &[u8]) -> FrameRef<'round> {
        let start = self.bytes.len();
        encode_frame(&mut self.bytes, data, payload);
        FrameRef {
            start,
            end: self.bytes.len(),
            round: PhantomData,
        }
    }

    /// The frames, for [`OutQueue::write_to`].
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Forgets the round's frames once every queue has been written.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.bytes.shrink_to(KEPT_BATCH_BYTES);
    }
}

/// A group of connections that hear the same broadcasts. The service
/// numbers its own (the chat has one per language its clients speak).
pub type Channel = u8;

/// A frame of this round's batch for every subscriber of a channel, except
/// perhaps one. A broadcast is recorded once, not pushed to each
/// subscriber: each catches up on the round's list once, when something
/// else is queued for it or when the round is written, so a round with
/// forty broadcasts visits each subscriber once, not forty times.
#[derive(Debug, Clone)]
pub struct Broadcast {
    /// The frame, in the batch.
    pub frame: Range<usize>,
    /// Who hears it.
    pub channel: Channel,
    /// A subscriber who does not (a `joined` is not for the joiner), by
    /// its connection key.
    pub except: Option<usize>,
}

impl Broadcast {
    /// A broadcast of `frame` on `channel`.
    pub fn new(frame: FrameRef<'_>, channel: Channel, except: Option<usize>) -> Self {
        Broadcast {
            frame: frame.start..frame.end,
            channel,
            except,
        }
    }
}

/// Appends a final (unfragmented) server frame to `buf`. Server frames are
/// unmasked, so the same bytes suit every recipient.
fn encode_frame(buf: &mut Vec<u8>, data: Data, payload: &[u8]) {
    let header = FrameHeader {
        opcode: OpCode::Data(data),
        ..FrameHeader::default()
    };
    header
        .format(payload.len() as u64, buf)
        .expect("writing a frame header into a Vec cannot fail");
    buf.extend_from_slice(payload);
}

/// One connection's output that the kernel has not taken yet.
#[derive(Debug, Default)]
pub struct OutQueue {
    /// Bytes from earlier rounds, oldest first: what the socket did not
    /// take, copied out of its batch (and the `101` response, which is put
    /// here directly). It is never discarded, since it may end mid-frame.
    carried: Vec<u8>,
    /// How many bytes at the front of `carried` are already written.
    written: usize,
    /// This round's output in the order it was queued, after the carry-over.
    round: Vec<Piece>,
    /// Unwritten bytes in all: what `--max-outbound-bytes` bounds.
    len: usize,
}

/// A piece of this round's output.
#[derive(Debug)]
enum Piece {
    /// Frames in the round's batch (ranges for the same client merge).
    Shared(Range<usize>),
    /// Bytes only this connection sends: pongs, a close frame, an HTTP
    /// response.
    Own(Vec<u8>),
}

impl Piece {
    fn bytes<'b>(&'b self, batch: &'b [u8]) -> &'b [u8] {
        match self {
            Piece::Shared(range) => &batch[range.clone()],
            Piece::Own(bytes) => bytes,
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

    /// Queues a frame of this round's batch.
    pub fn push_frame(&mut self, frame: FrameRef<'_>) {
        self.push_range(frame.start..frame.end);
    }

    /// Queues a range of this round's batch.
    fn push_range(&mut self, frame: Range<usize>) {
        self.len += frame.len();
        match self.round.last_mut() {
            Some(Piece::Shared(range)) if range.end == frame.start => range.end = frame.end,
            _ => self.round.push(Piece::Shared(frame)),
        }
    }

    /// Queues the broadcasts on `channel` that are not from `except`.
    pub fn push_broadcasts(&mut self, broadcasts: &[Broadcast], channel: Channel, except: usize) {
        for broadcast in broadcasts {
            if broadcast.channel == channel && broadcast.except != Some(except) {
                self.push_range(broadcast.frame.clone());
            }
        }
    }

    /// Queues a frame for this connection alone, framed straight into its
    /// queue: a frame in the batch would sit between the shared frames of
    /// everyone else's ranges and split each of them in two.
    pub fn push_own_frame(&mut self, data: Data, payload: &[u8]) {
        let before = self.own_tail().len();
        encode_frame(self.own_tail(), data, payload);
        self.len += self.own_tail().len() - before;
    }

    /// Queues bytes of our own.
    pub fn push_bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.own_tail().extend_from_slice(bytes);
        self.len += bytes.len();
    }

    /// The last piece of the round, if it is our own bytes, else a new one.
    fn own_tail(&mut self) -> &mut Vec<u8> {
        if !matches!(self.round.last(), Some(Piece::Own(_))) {
            self.round.push(Piece::Own(Vec::new()));
        }
        match self.round.last_mut() {
            Some(Piece::Own(own)) => own,
            _ => unreachable!("an own piece was just pushed"),
        }
    }

    /// Queues bytes that [`discard_unstarted`](Self::discard_unstarted)
    /// must never drop: the `101` response, the first bytes a connection
    /// sends, which every later frame depends on.
    pub fn push_sealed(&mut self, bytes: &[u8]) {
        debug_assert!(self.round.is_empty(), "the 101 response comes first");
        self.carried.extend_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Drops this round's output, none of which has been written yet,
    /// keeping the carry-over (the stream stays well-formed): room for a last
    /// close frame.
    pub fn discard_unstarted(&mut self) {
        self.len = self.carried.len() - self.written;
        self.round.clear();
    }

    /// Writes as much as the sink takes, with `batch` the bytes of this
    /// round's [`Batch`], then copies what is left of this round into the
    /// carry-over, so the batch can be cleared. Returns `Ok` when the queue is
    /// empty or the sink would block (check [`is_empty`](Self::is_empty));
    /// any other error means the connection is broken.
    pub fn write_to<W: Write>(&mut self, sink: &mut W, batch: &[u8]) -> io::Result<()> {
        // How much of the round is written: whole pieces, then bytes of the next.
        let mut pieces_done = 0;
        let mut piece_written = 0;
        let result = loop {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            if self.written < self.carried.len() {
                slices[0] = IoSlice::new(&self.carried[self.written..]);
                count = 1;
            }
            for (i, piece) in self.round.iter().enumerate().skip(pieces_done) {
                if count == MAX_IOVECS {
                    break;
                }
                let skip = if i == pieces_done { piece_written } else { 0 };
                slices[count] = IoSlice::new(&piece.bytes(batch)[skip..]);
                count += 1;
            }
            if count == 0 {
                break Ok(());
            }
            let mut n = match sink.write_vectored(&slices[..count]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(err) => break Err(err),
            };
            self.len -= n;
            let from_carried = n.min(self.carried.len() - self.written);
            self.written += from_carried;
            n -= from_carried;
            if self.written == self.carried.len() {
                self.clear_carried();
            }
            while n > 0 {
                let left = self.round[pieces_done].bytes(batch).len() - piece_written;
                if n < left {
                    piece_written += n;
                    break;
                }
                n -= left;
                pieces_done += 1;
                piece_written = 0;
            }
        };
        self.spill(batch, pieces_done, piece_written);
        result
    }

    /// Moves the unwritten rest of this round into the carry-over.
    fn spill(&mut self, batch: &[u8], pieces_done: usize, piece_written: usize) {
        if pieces_done < self.round.len() {
            if self.written > 0 {
                self.carried.drain(..self.written);
                self.written = 0;
            }
            for (i, piece) in self.round.iter().enumerate().skip(pieces_done) {
                let skip = if i == pieces_done { piece_written } else { 0 };
                self.carried.extend_from_slice(&piece.bytes(batch)[skip..]);
            }
        }
        self.round.clear();
    }

    /// Forgets a fully written carry-over, giving back a large allocation.
    fn clear_carried(&mut self) {
        self.written = 0;
        if self.carried.capacity() > KEPT_CARRIED_BYTES {
            self.carried = Vec::new();
        } else {
            self.carried.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes at most `room` bytes per call, then would block.
    #[derive(Default)]
    struct Sink {
        written: Vec<u8>,
        room: usize,
        calls: usize,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls += 1;
            let before = self.written.len();
            for buf in bufs {
                let take = buf.len().min(self.room - (self.written.len() - before));
                self.written.extend_from_slice(&buf[..take]);
            }
            let n = self.written.len() - before;
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn consecutive_frames_for_one_client_become_one_buffer() {
        let mut batch = Batch::default();
        let mut queue = OutQueue::default();
        let mut expected = Vec::new();
        for i in 0..40 {
            let frame = batch.frame(Data::Text, format!("message {i}").as_bytes());
            queue.push_frame(frame);
        }
        expected.extend_from_slice(batch.bytes());
        assert_eq!(queue.round.len(), 1);
        let mut sink = Sink {
            room: usize::MAX,
            ..Sink::default()
        };
        queue.write_to(&mut sink, batch.bytes()).unwrap();
        assert_eq!(sink.calls, 1);
        assert_eq!(sink.written, expected);
        assert!(queue.is_empty());
    }

    #[test]
    fn frames_for_others_in_between_split_the_ranges_but_keep_the_order() {
        let mut batch = Batch::default();
        let mut queue = OutQueue::default();
        let first = batch.frame(Data::Text, b"first");
        let _for_someone_else = batch.frame(Data::Text, b"other");
        let second = batch.frame(Data::Text, b"second");
        queue.push_frame(first);
        queue.push_bytes(b"pong");
        queue.push_frame(second);
        let expected: Vec<u8> = [
            &batch.bytes()[first.start..first.end],
            b"pong",
            &batch.bytes()[second.start..second.end],
        ]
        .concat();
        let mut sink = Sink {
            room: usize::MAX,
            ..Sink::default()
        };
        queue.write_to(&mut sink, batch.bytes()).unwrap();
        assert_eq!(sink.written, expected);
    }

    #[test]
    fn a_frame_of_its_own_keeps_its_place_between_shared_ones() {
        let mut batch = Batch::default();
        let mut queue = OutQueue::default();
        queue.push_frame(batch.frame(Data::Text, b"shared 1"));
        queue.push_own_frame(Data::Text, b"only yours");
        queue.push_frame(batch.frame(Data::Text, b"shared 2"));
        let mut expected = Vec::new();
        encode_frame(&mut expected, Data::Text, b"shared 1");
        encode_frame(&mut expected, Data::Text, b"only yours");
        encode_frame(&mut expected, Data::Text, b"shared 2");
        assert_eq!(queue.len(), expected.len());
        let mut sink = Sink {
            room: usize::MAX,
            ..Sink::default()
        };
        queue.write_to(&mut sink, batch.bytes()).unwrap();
        assert_eq!(sink.written, expected);
        // The batch holds the shared frames only, back to back.
        assert_eq!(batch.bytes().len(), 2 * (2 + b"shared 1".len()));
    }

    #[test]
    fn what_the_socket_does_not_take_survives_the_batch() {
        let mut queue = OutQueue::default();
        queue.push_sealed(b"HTTP/1.1 101\r\n\r\n");
        let mut expected = b"HTTP/1.1 101\r\n\r\n".to_vec();
        let mut sink = Sink::default();
        for round in 0..5 {
            let mut batch = Batch::default();
            let frame = batch.frame(Data::Text, format!("round {round}").as_bytes());
            queue.push_frame(frame);
            queue.push_bytes(b"!");
            expected.extend_from_slice(batch.bytes());
            expected.push(b'!');
            // The kernel takes 7 bytes per round; the rest waits.
            sink.room = 7;
            queue.write_to(&mut sink, batch.bytes()).unwrap();
            assert_eq!(queue.len(), expected.len() - sink.written.len());
            // The batch is gone: everything left is the queue's own.
            assert!(queue.round.is_empty());
        }
        while !queue.is_empty() {
            sink.room = 7;
            queue.write_to(&mut sink, &[]).unwrap();
        }
        assert_eq!(sink.written, expected);
    }

    #[test]
    fn discarding_keeps_the_carry_over_and_drops_the_round() {
        let mut queue = OutQueue::default();
        queue.push_sealed(b"HTTP/1.1 101\r\n\r\n");
        let mut batch = Batch::default();
        queue.push_frame(batch.frame(Data::Text, b"dropped"));
        queue.discard_unstarted();
        queue.push_bytes(b"close");
        let mut sink = Sink {
            room: usize::MAX,
            ..Sink::default()
        };
        queue.write_to(&mut sink, batch.bytes()).unwrap();
        assert_eq!(sink.written, b"HTTP/1.1 101\r\n\r\nclose");
    }

    #[test]
    fn a_large_carry_over_is_given_back_once_written() {
        let mut queue = OutQueue::default();
        let mut batch = Batch::default();
        queue.push_frame(batch.frame(Data::Binary, &[0; 10_000]));
        let mut sink = Sink {
            room: 100,
            ..Sink::default()
        };
        queue.write_to(&mut sink, batch.bytes()).unwrap();
        assert!(queue.carried.capacity() >= 9_900);
        sink.room = usize::MAX;
        queue.write_to(&mut sink, &[]).unwrap();
        assert!(queue.is_empty());
        assert_eq!(queue.carried.capacity(), 0);
    }
}
