//! One connection to Redis as a pure state machine: what to write, what the
//! replies mean, when to give up and when to try again. It owns no socket
//! and reads no clock; [`super::conn`] is the thin edge that moves bytes
//! between it and a `mio` socket, and every call takes `now` from there.
//!
//! Requests are pipelined: any number of commands are appended to one
//! output buffer and go out in as few writes as the socket allows; Redis
//! answers in order, so replies are matched to requests first in, first
//! out. Replies are decoded with `redis-protocol`'s RESP2 decoder, which has
//! no I/O of its own.
//!
//! A connection that fails (refused, reset, closed, a reply that does not
//! parse, no reply in time) hands back every unanswered request as
//! [`Event::Lost`], saying whether all of its bytes had been written: a
//! request that was not completely written was certainly not executed,
//! one that was may have been. Then the link waits a capped, jittered,
//! exponentially growing delay before the next attempt.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use mio::Interest;
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, OwnedFrame, Resp2Frame};

/// A decoded reply from Redis.
pub type Frame = OwnedFrame;

/// How patient a link is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkConfig {
    /// Longest wait for a TCP connect to complete.
    pub connect_timeout: Duration,
    /// Longest wait for the oldest unanswered request's reply; a connection
    /// that stays silent longer is taken for dead (a half-open TCP
    /// connection otherwise looks healthy forever). It must exceed the
    /// `BLOCK` time of any blocking command sent on the link.
    pub reply_timeout: Duration,
    /// The first delay before a reconnect.
    pub backoff_base: Duration,
    /// The longest delay before a reconnect.
    pub backoff_cap: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            // Redis on a LAN answers a SYN in well under a millisecond; two
            // seconds only ever expire for a host that is down or filtered.
            connect_timeout: Duration::from_secs(2),
            // Twice the longest `XREAD BLOCK` the cluster uses (5 s), so a
            // blocked read is never mistaken for a dead connection.
            reply_timeout: Duration::from_secs(10),
            // A restarted Redis is usually back within a second: start small.
            backoff_base: Duration::from_millis(100),
            // Catch up within a few seconds of Redis coming back, without
            // every node hammering a Redis that stays down.
            backoff_cap: Duration::from_secs(5),
        }
    }
}

/// What a link reports to its owner, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<T> {
    /// Connected, and every setup command succeeded: requests may be sent.
    Up,
    /// The connection was lost (or never came up); the link will retry.
    Down {
        /// Why, for the log.
        reason: String,
    },
    /// The reply to the request pushed with `tag` (possibly a Redis error
    /// reply, which is a [`Frame::Error`]).
    Reply {
        /// The caller's name for the request.
        tag: T,
        /// What Redis answered.
        frame: Frame,
    },
    /// The connection died before the request pushed with `tag` was
    /// answered.
    Lost {
        /// The caller's name for the request.
        tag: T,
        /// Whether every byte of it reached the socket: if not, Redis never
        /// ran it; if so, it may or may not have run.
        sent: bool,
    },
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No socket; the next attempt is due at this instant.
    Waiting(Instant),
    /// A connect is under way and must complete by this instant.
    Connecting(Instant),
    /// Connected; `setup_left` setup replies are still awaited before the
    /// link is up.
    Open {
        /// Setup commands not yet answered; 0 means up.
        setup_left: usize,
    },
}

/// A request written (or being written) and not yet answered.
#[derive(Debug)]
struct Pending<T> {
    /// The caller's name for it; `None` for a setup command, whose reply
    /// the link consumes itself.
    tag: Option<T>,
    /// Bytes written on this connection once its last byte is out.
    end: u64,
    /// When it was pushed: the reply timeout counts from here.
    pushed: Instant,
}

/// Reconnect delays: exponential, capped, with jitter so that nodes that
/// lost Redis together do not all come back in the same millisecond.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The first delay.
    base: Duration,
    /// The largest delay.
    cap: Duration,
    /// Failures since the last success: the exponent.
    attempt: u32,
    /// xorshift64 state for the jitter; never zero.
    rng: u64,
}

impl Backoff {
    /// Delays from `base` up to `cap`, jittered from `seed` (any value;
    /// different nodes should pass different seeds).
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
            // xorshift's only fixed point is zero; any other state works.
            rng: seed | 1,
        }
    }

    /// The delay before the next attempt: a random point in the upper half
    /// of `min(cap, base * 2^failures)`, so it grows but never collapses to
    /// zero.
    pub fn next_delay(&mut self) -> Duration {
        // 2^20 times any sensible base is far past any cap; stopping the
        // exponent there keeps the multiplication from overflowing.
        let ceiling = self
            .base
            .saturating_mul(1 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = ceiling / 2;
        let nanos = half.as_nanos() as u64;
        half + Duration::from_nanos(self.rng % (nanos + 1))
    }

    /// Starts over from `base`: called once a connection is fully up.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// One Redis connection's protocol state.
#[derive(Debug)]
pub struct Link<T> {
    /// Timeouts and backoff bounds.
    config: LinkConfig,
    /// Commands sent first on every new connection (`SELECT`, `CLIENT
    /// SETNAME`), already encoded.
    setup: Vec<Vec<u8>>,
    /// Where the connection stands.
    state: State,
    /// Encoded requests not yet written, from `out_pos` on.
    out: Vec<u8>,
    /// How much of `out` is already written; reset to 0 with `out` once
    /// everything is out, so the buffer is reused without moving bytes.
    out_pos: usize,
    /// Bytes ever queued on this connection: the `end` of the next request.
    queued: u64,
    /// Bytes ever written on this connection.
    written: u64,
    /// Requests awaiting their reply, oldest first.
    pending: VecDeque<Pending<T>>,
    /// Bytes read and not yet decoded into a whole reply.
    input: Vec<u8>,
    /// What happened that the owner has not taken yet.
    events: VecDeque<Event<T>>,
    /// The delay before the next reconnect.
    backoff: Backoff,
}

/// Appends `args` to `out` as one RESP command (an array of bulk strings)
/// and returns how many bytes it took.
pub fn encode_command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) -> usize {
    let parts: Vec<BorrowedFrame<'_>> = args
        .iter()
        .map(|arg| BorrowedFrame::BulkString(arg.as_ref()))
        .collect();
    let frame = BorrowedFrame::Array(&parts);
    let start = out.len();
    out.resize(start + frame.encode_len(false), 0);
    let len = encode_borrowed(&mut out[start..], &frame, false)
        .expect("the buffer was sized with encode_len");
    out.truncate(start + len);
    len
}

impl<T> Link<T> {
    /// A link that will connect at `now` and send `setup` first on every
    /// connection; `seed` jitters its reconnects.
    pub fn new<A: AsRef<[u8]>>(
        config: LinkConfig,
        setup: &[Vec<A>],
        seed: u64,
        now: Instant,
    ) -> Link<T> {
        Link {
            config,
            setup: setup
                .iter()
                .map(|args| {
                    let mut bytes = Vec::new();
                    encode_command(&mut bytes, args);
                    bytes
                })
                .collect(),
            state: State::Waiting(now),
            out: Vec::new(),
            out_pos: 0,
            queued: 0,
            written: 0,
            pending: VecDeque::new(),
            input: Vec::new(),
            events: VecDeque::new(),
            backoff: Backoff::new(config.backoff_base, config.backoff_cap, seed),
        }
    }

    /// Whether requests are being answered: connected and set up.
    pub fn is_up(&self) -> bool {
        self.state == State::Open { setup_left: 0 }
    }

    /// Whether the TCP connection is established (set up or not yet): bytes
    /// may be read and written.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// Whether a socket should exist: connecting or connected.
    pub fn has_socket(&self) -> bool {
        !matches!(self.state, State::Waiting(_))
    }

    /// Whether it is time to open a socket and call [`Link::connecting`].
    pub fn connect_due(&self, now: Instant) -> bool {
        matches!(self.state, State::Waiting(at) if now >= at)
    }

    /// Queues a request; it goes out with the next write. Refused (the tag
    /// comes back) while there is no connection: the caller decides whether
    /// to wait for [`Event::Up`] or to give up. Accepted while the setup
    /// commands are still being answered: it is queued behind them.
    pub fn push<A: AsRef<[u8]>>(&mut self, tag: T, args: &[A], now: Instant) -> Result<(), T> {
        if !matches!(self.state, State::Open { .. }) {
            return Err(tag);
        }
        self.queue(Some(tag), now, |out| encode_command(out, args));
        Ok(())
    }

    /// Appends one request's bytes and remembers where they end.
    fn queue(&mut self, tag: Option<T>, now: Instant, encode: impl FnOnce(&mut Vec<u8>) -> usize) {
        self.queued += encode(&mut self.out) as u64;
        self.pending.push_back(Pending {
            tag,
            end: self.queued,
            pushed: now,
        });
    }

    /// The socket readiness worth waiting for: none without a socket;
    /// writable while connecting (that is how completion shows); readable
    /// once connected, and writable too only while output waits.
    pub fn interest(&self) -> Option<Interest> {
        match self.state {
            State::Waiting(_) => None,
            State::Connecting(_) => Some(Interest::WRITABLE),
            State::Open { .. } if self.out_pos < self.out.len() => {
                Some(Interest::READABLE | Interest::WRITABLE)
            }
            State::Open { .. } => Some(Interest::READABLE),
        }
    }

    /// The next instant at which [`Link::on_deadline`] has something to do:
    /// a reconnect, a connect timeout, or the oldest reply's timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Waiting(at) => Some(at),
            State::Connecting(by) => Some(by),
            State::Open { .. } => self
                .pending
                .front()
                .map(|oldest| oldest.pushed + self.config.reply_timeout),
        }
    }

    /// Fails the connection if its connect or its oldest reply is overdue.
    /// A reconnect that came due is the edge's business
    /// ([`Link::connect_due`]).
    pub fn on_deadline(&mut self, now: Instant) {
        match self.state {
            State::Connecting(by) if now >= by => self.fail("connect timed out", now),
            State::Open { .. } => {
                if let Some(oldest) = self.pending.front() {
                    if now >= oldest.pushed + self.config.reply_timeout {
                        self.fail("no reply in time", now);
                    }
                }
            }
            _ => {}
        }
    }

    /// Redis was just reached another way (the owner's other connection
    /// came up): a reconnect that waits out its backoff is due at once,
    /// since the delay guards against a Redis that is down, and this one
    /// is not. Nothing changes while connecting or connected.
    pub fn retry_now(&mut self, now: Instant) {
        if let State::Waiting(at) = &mut self.state {
            *at = (*at).min(now);
        }
    }

    /// The edge started a non-blocking connect.
    pub fn connecting(&mut self, now: Instant) {
        self.state = State::Connecting(now + self.config.connect_timeout);
    }

    /// The connect completed: queue the setup commands (the link is up at
    /// once if there are none).
    pub fn connected(&mut self, now: Instant) {
        self.state = State::Open {
            setup_left: self.setup.len(),
        };
        for i in 0..self.setup.len() {
            let setup = &self.setup[i];
            self.queued += setup.len() as u64;
            self.out.extend_from_slice(setup);
            self.pending.push_back(Pending {
                tag: None,
                end: self.queued,
                pushed: now,
            });
        }
        if self.setup.is_empty() {
            self.came_up();
        }
    }

    /// The link is usable: tell the owner and forget past failures.
    fn came_up(&mut self) {
        self.backoff.reset();
        self.events.push_back(Event::Up);
    }

    /// The bytes waiting to be written.
    pub fn unwritten(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// `n` bytes of [`Link::unwritten`] reached the socket.
    pub fn wrote(&mut self, n: usize) {
        self.out_pos += n;
        self.written += n as u64;
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
    }

    /// Bytes arrived: decode every whole reply among them and match each to
    /// the oldest unanswered request.
    pub fn received(&mut self, bytes: &[u8], now: Instant) {
        self.input.extend_from_slice(bytes);
        let mut start = 0;
        while self.has_socket() {
            match decode(&self.input[start..]) {
                Ok(Some((frame, used))) => {
                    start += used;
                    self.answer(frame, now);
                }
                Ok(None) => break,
                Err(err) => {
                    let reason = format!("unreadable reply: {err:?}");
                    self.fail(&reason, now);
                }
            }
        }
        // A failure above already emptied `input`; otherwise keep only the
        // start of the reply that is still incomplete.
        if self.has_socket() {
            self.input.drain(..start);
        }
    }

    /// One reply: the setup's, or the owner's.
    fn answer(&mut self, frame: Frame, now: Instant) {
        let Some(request) = self.pending.pop_front() else {
            return self.fail("a reply nobody asked for", now);
        };
        match request.tag {
            Some(tag) => self.events.push_back(Event::Reply { tag, frame }),
            None if frame.kind().is_error() => {
                let reason = format!("setup command refused: {}", frame.as_str().unwrap_or("?"));
                self.fail(&reason, now);
            }
            None => {
                if let State::Open { setup_left } = &mut self.state {
                    *setup_left -= 1;
                    if *setup_left == 0 {
                        self.came_up();
                    }
                }
            }
        }
    }

    /// The connection is gone (`reason` says why): hand back every
    /// unanswered request, drop the buffers, and wait before the next try.
    /// The edge closes its socket once [`Link::has_socket`] is false.
    pub fn fail(&mut self, reason: &str, now: Instant) {
        self.events.push_back(Event::Down {
            reason: reason.to_owned(),
        });
        for request in self.pending.drain(..) {
            if let Some(tag) = request.tag {
                self.events.push_back(Event::Lost {
                    tag,
                    sent: self.written >= request.end,
                });
            }
        }
        self.out.clear();
        self.out_pos = 0;
        self.queued = 0;
        self.written = 0;
        self.input.clear();
        self.state = State::Waiting(now + self.backoff.next_delay());
    }

    /// The oldest event the owner has not taken yet.
    pub fn take_event(&mut self) -> Option<Event<T>> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LinkConfig {
        LinkConfig::default()
    }

    /// A link that is connected and up (no setup), at `now`.
    fn up(now: Instant) -> Link<&'static str> {
        let mut link = Link::new(config(), &[] as &[Vec<&str>], 7, now);
        assert!(link.connect_due(now));
        link.connecting(now);
        assert_eq!(link.interest(), Some(Interest::WRITABLE));
        link.connected(now);
        assert_eq!(link.take_event(), Some(Event::Up));
        link
    }

    fn events<T>(link: &mut Link<T>) -> Vec<Event<T>> {
        std::iter::from_fn(|| link.take_event()).collect()
    }

    #[test]
    fn a_command_is_an_array_of_bulk_strings() {
        let mut out = Vec::new();
        let len = encode_command(&mut out, &["SET", "k", ""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
        assert_eq!(len, out.len());
    }

    #[test]
    fn pipelined_requests_go_out_together_and_replies_match_in_order() {
        let now = Instant::now();
        let mut link = up(now);
        assert_eq!(link.interest(), Some(Interest::READABLE));
        link.push("a", &["PING"], now).unwrap();
        link.push("b", &["GET", "k"], now).unwrap();
        link.push("c", &["INCR", "n"], now).unwrap();
        assert_eq!(
            link.unwritten(),
            b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n"
        );
        assert_eq!(
            link.interest(),
            Some(Interest::READABLE | Interest::WRITABLE)
        );
        let all = link.unwritten().len();
        link.wrote(5);
        link.wrote(all - 5);
        assert!(link.unwritten().is_empty());
        assert_eq!(link.interest(), Some(Interest::READABLE));

        // The replies arrive split at every byte: each is delivered once
        // whole, to its request, in order.
        let replies = b"+PONG\r\n$-1\r\n:7\r\n";
        for byte in replies.chunks(1) {
            link.received(byte, now);
        }
        assert_eq!(
            events(&mut link),
            vec![
                Event::Reply {
                    tag: "a",
                    frame: Frame::SimpleString(b"PONG".to_vec())
                },
                Event::Reply {
                    tag: "b",
                    frame: Frame::Null
                },
                Event::Reply {
                    tag: "c",
                    frame: Frame::Integer(7)
                },
            ]
        );
        assert_eq!(link.next_deadline(), None, "nothing awaits a reply");
    }

    #[test]
    fn a_redis_error_reply_is_a_reply_not_a_failure() {
        let now = Instant::now();
        let mut link = up(now);
        link.push("x", &["NOPE"], now).unwrap();
        link.wrote(link.unwritten().len());
        link.received(b"-ERR unknown command 'NOPE'\r\n", now);
        assert_eq!(
            events(&mut link),
            vec![Event::Reply {
                tag: "x",
                frame: Frame::Error("ERR unknown command 'NOPE'".into())
            }]
        );
        assert!(link.is_up());
    }

    #[test]
    fn requests_are_refused_without_a_connection() {
        let now = Instant::now();
        let mut link: Link<u32> = Link::new(config(), &[] as &[Vec<&str>], 1, now);
        assert!(!link.has_socket());
        assert_eq!(link.interest(), None);
        assert_eq!(link.push(1, &["PING"], now), Err(1));
        link.connecting(now);
        assert!(link.has_socket() && !link.is_connected());
        assert_eq!(link.push(2, &["PING"], now), Err(2));
    }

    #[test]
    fn setup_runs_first_and_the_link_is_up_only_once_it_succeeded() {
        let now = Instant::now();
        let setup = vec![vec!["SELECT", "2"], vec!["CLIENT", "SETNAME", "n"]];
        let mut link: Link<&str> = Link::new(config(), &setup, 3, now);
        link.connecting(now);
        link.connected(now);
        assert!(link.is_connected() && !link.is_up());
        link.push("mine", &["PING"], now).unwrap();
        let mut expected = Vec::new();
        encode_command(&mut expected, &setup[0]);
        encode_command(&mut expected, &setup[1]);
        encode_command(&mut expected, &["PING"]);
        assert_eq!(link.unwritten(), expected.as_slice());
        link.wrote(expected.len());
        link.received(b"+OK\r\n", now);
        assert_eq!(link.take_event(), None, "one setup reply still awaited");
        link.received(b"+OK\r\n+PONG\r\n", now);
        assert!(link.is_up());
        assert_eq!(
            events(&mut link),
            vec![
                Event::Up,
                Event::Reply {
                    tag: "mine",
                    frame: Frame::SimpleString(b"PONG".to_vec())
                },
            ]
        );
    }

    #[test]
    fn a_refused_setup_fails_the_connection_and_hands_back_what_waited() {
        let now = Instant::now();
        let setup = vec![vec!["SELECT", "99"]];
        let mut link: Link<&str> = Link::new(config(), &setup, 3, now);
        link.connecting(now);
        link.connected(now);
        link.push("queued", &["PING"], now).unwrap();
        let setup_len = link.unwritten().len() - b"*1\r\n$4\r\nPING\r\n".len();
        link.wrote(setup_len);
        link.received(b"-ERR DB index is out of range\r\n", now);
        assert_eq!(
            events(&mut link),
            vec![
                Event::Down {
                    reason: "setup command refused: ERR DB index is out of range".into()
                },
                Event::Lost {
                    tag: "queued",
                    sent: false
                },
            ]
        );
        assert!(!link.has_socket());
        assert_eq!(link.interest(), None);
        assert!(link.unwritten().is_empty());
    }

    #[test]
    fn a_lost_connection_says_which_requests_were_written_whole() {
        let now = Instant::now();
        let mut link = up(now);
        link.push("whole", &["PING"], now).unwrap();
        link.push("partial", &["PING"], now).unwrap();
        link.push("unsent", &["PING"], now).unwrap();
        let one = b"*1\r\n$4\r\nPING\r\n".len();
        link.wrote(one + 3);
        link.fail("reset", now);
        assert_eq!(
            events(&mut link),
            vec![
                Event::Down {
                    reason: "reset".into()
                },
                Event::Lost {
                    tag: "whole",
                    sent: true
                },
                Event::Lost {
                    tag: "partial",
                    sent: false
                },
                Event::Lost {
                    tag: "unsent",
                    sent: false
                },
            ]
        );
        // The next connection starts clean: its first request's bytes are
        // counted from zero, and it is written whole.
        let retry = link.next_deadline().expect("a reconnect is scheduled");
        assert!(retry > now && !link.connect_due(now) && link.connect_due(retry));
        link.connecting(retry);
        link.connected(retry);
        assert_eq!(link.take_event(), Some(Event::Up));
        link.push("again", &["PING"], retry).unwrap();
        assert_eq!(link.unwritten().len(), one);
        link.wrote(one);
        link.fail("reset again", retry);
        assert_eq!(
            events(&mut link),
            vec![
                Event::Down {
                    reason: "reset again".into()
                },
                Event::Lost {
                    tag: "again",
                    sent: true
                },
            ]
        );
    }

    #[test]
    fn garbage_or_an_unasked_reply_fails_the_connection() {
        let now = Instant::now();
        let mut link = up(now);
        link.push("p", &["PING"], now).unwrap();
        link.wrote(link.unwritten().len());
        link.received(b"?what\r\n", now);
        let got = events(&mut link);
        assert!(
            matches!(&got[0], Event::Down { reason } if reason.starts_with("unreadable reply"))
        );
        assert_eq!(
            got[1],
            Event::Lost {
                tag: "p",
                sent: true
            }
        );
        assert_eq!(got.len(), 2);

        let mut link = up(now);
        link.received(b"+OK\r\n", now);
        assert_eq!(
            events(&mut link),
            vec![Event::Down {
                reason: "a reply nobody asked for".into()
            }]
        );
    }

    #[test]
    fn the_oldest_unanswered_request_has_a_deadline() {
        let start = Instant::now();
        let mut link = up(start);
        let later = start + Duration::from_secs(1);
        link.push("slow", &["BLPOP", "q", "0"], start).unwrap();
        link.push("next", &["PING"], later).unwrap();
        link.wrote(link.unwritten().len());
        let due = start + config().reply_timeout;
        assert_eq!(link.next_deadline(), Some(due));
        link.on_deadline(due - Duration::from_millis(1));
        assert!(link.is_up());
        link.on_deadline(due);
        assert_eq!(
            events(&mut link),
            vec![
                Event::Down {
                    reason: "no reply in time".into()
                },
                Event::Lost {
                    tag: "slow",
                    sent: true
                },
                Event::Lost {
                    tag: "next",
                    sent: true
                },
            ]
        );
    }

    #[test]
    fn a_connect_that_does_not_complete_times_out() {
        let start = Instant::now();
        let mut link: Link<u8> = Link::new(config(), &[] as &[Vec<&str>], 5, start);
        link.connecting(start);
        let by = start + config().connect_timeout;
        assert_eq!(link.next_deadline(), Some(by));
        link.on_deadline(by - Duration::from_millis(1));
        assert!(link.has_socket());
        link.on_deadline(by);
        assert_eq!(
            events(&mut link),
            vec![Event::Down {
                reason: "connect timed out".into()
            }]
        );
        assert!(!link.has_socket());
    }

    #[test]
    fn a_waiting_reconnect_can_be_made_due_at_once() {
        let start = Instant::now();
        let mut link = up(start);
        link.fail("Redis closed the connection", start);
        let retry = link.next_deadline().unwrap();
        assert!(retry > start);
        assert!(!link.connect_due(start));
        link.retry_now(start);
        assert!(link.connect_due(start));
        // While connecting it changes nothing.
        link.connecting(start);
        let by = link.next_deadline();
        link.retry_now(start);
        assert_eq!(link.next_deadline(), by);
        assert!(!link.connect_due(start));
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        let mut backoff = Backoff::new(base, cap, 42);
        let mut ceiling = base;
        let mut seen = Vec::new();
        for _ in 0..30 {
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} outside {ceiling:?}"
            );
            seen.push(delay);
            ceiling = (ceiling * 2).min(cap);
        }
        // Capped: the last delays all lie within the cap's upper half, and
        // they are not all equal (that is the jitter).
        let tail = &seen[20..];
        assert!(tail.iter().all(|d| *d >= cap / 2 && *d <= cap));
        assert!(tail.windows(2).any(|w| w[0] != w[1]));
        backoff.reset();
        assert!(backoff.next_delay() <= base);
        // Two nodes seeded differently do not retry in lockstep.
        let mut a = Backoff::new(base, cap, 1);
        let mut b = Backoff::new(base, cap, 2);
        let a: Vec<_> = (0..8).map(|_| a.next_delay()).collect();
        let b: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert_ne!(a, b);
    }
}
