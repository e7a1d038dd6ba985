//! Commit before publish: what the room says goes out only once the store
//! has what it depends on.
//!
//! The room answers every request at once, as if the store were instant.
//! The publisher stands between it and the sockets and holds its
//! deliveries back, in the order the room made them, until the store has
//! done the work each one needs:
//!
//! - a new public message needs the commit that stores it (its group of
//!   the turn): nobody sees a message that a crash could lose;
//! - a message or DM id needs a reservation on disk that covers it, so
//!   that no id is handed out twice across a crash (DM texts are not
//!   stored, their ids are);
//! - a `welcome` or `history` answer that the kept history cannot give
//!   needs the store's answer to a query.
//!
//! **One queue, in the room's order.** Nothing overtakes what the room
//! said before it: a DM, a `joined`, an error, a `welcome` all wait behind
//! a public message that waits for its commit. So every client sees
//! public messages in id order and everything else where the room put it,
//! exactly as with an instant store, only later. When nothing waits,
//! deliveries go straight out.
//!
//! **A join while messages wait.** The newcomer's `welcome` holds the
//! history at the moment of the join, including messages not yet stored.
//! It waits behind them in the queue, so it is sent only once they are
//! stored (a message that could not be stored is taken out of it). The
//! newcomer subscribes to broadcasts when its `welcome` is sent, not when
//! it joins: the messages before the join were broadcast before that (it
//! has them in its `welcome`), the ones after it are broadcast after
//! (it gets them live). No gap, no duplicate. A resume the kept history
//! cannot give is asked of the store with the bound "below the next id at
//! the join", after every commit before it, so its answer is exactly the
//! stored messages before the join.
//!
//! **Two groups per round.** What a finished commit lets out does not go
//! out while a later job (under load, the next commit) is in flight: it
//! waits for that one job (once; not for any submitted after it), and
//! both groups go out in one round of writes. Without the wait, each
//! round carries one group, and a message read during a round is written
//! only after the *next* round: its commit runs during that round, which
//! carries the group before it.
//! With the wait, it is written after its commit, in the round that
//! carries the group before it too: under a steady load its wait is one
//! `fsync` instead of one round of writes to everyone, and the rounds
//! are half as many and fuller, which costs less per delivery. With
//! nothing else in flight (a chat at a human pace), a commit's group goes
//! out as soon as it is stored. The figures are in `docs/performance.md`
//! ("Two groups per round").
//!
//! **What the store refused.** A commit that fails (disk full) takes its
//! messages back: each sender gets `error` `unavailable` with its `cid`,
//! nobody else hears of it, and the room forgets it. A message whose
//! `cid` the store already had (sent before the last restart, or before
//! the room's memory of cids) is taken back too, and its sender gets the
//! stored message instead, as the protocol says for a resent `cid`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::chat::metrics::StoreMetrics;
use crate::chat::room::{Audience, Delivery, Room, UserId};
use crate::chat::store::worker::{Done, Job, Outcome, Ticket, Worker};
use crate::chat::store::{Commit, RoomName, RESERVE_BLOCK};
use crate::evloop::service::Wakeup;
use crate::proto::protocol::{ChatMessage, Cid, ErrorCode, Request, ServerMessage};

/// What the publisher lets out, in order, for the service to send.
#[derive(Debug, PartialEq)]
pub enum Release {
    /// Send this.
    Send(Delivery),
    /// From now on this connection hears public broadcasts (its `welcome`
    /// was just sent).
    Subscribe(UserId),
}

/// A delivery held back, and the ticket it waits for.
#[derive(Debug)]
struct Held {
    /// It goes out once every job up to this ticket is done (0: at once),
    /// and after everything held before it.
    needs: Ticket,
    /// What it is.
    item: Item,
}

/// The kinds of held delivery that need more than sending.
#[derive(Debug)]
enum Item {
    /// A new public message, broadcast once stored.
    Public {
        /// Who said it, told if it cannot be stored (`None`: gone).
        sender: Option<UserId>,
        /// The message.
        message: Arc<ChatMessage>,
    },
    /// A DM, delivered once its id is reserved on disk.
    Dm {
        /// Who sent it, told if it cannot be delivered (`None`: gone).
        sender: Option<UserId>,
        /// The DM as the room made it (its audience follows departures).
        delivery: Delivery,
    },
    /// A `welcome` (the newcomer subscribes once it is sent) or a
    /// `history` answer, with the store's answer when one was asked for.
    Answer {
        /// Who gets it.
        conn: UserId,
        /// The room's answer, from the kept history.
        delivery: Delivery,
        /// The store's messages, once they came (`Some(None)`: the store
        /// failed, the room's answer stands).
        found: Option<Option<Vec<Arc<ChatMessage>>>>,
    },
    /// Anything else.
    Other(Delivery),
}

/// Holds the room's deliveries until the store has what they need; see
/// the module docs.
pub struct Publisher {
    /// The store.
    worker: Worker,
    /// The room the messages are stored under.
    room_name: RoomName,
    /// Whether the store keeps more than the room (then it answers old
    /// resumes and pages).
    keeps_everything: bool,
    /// `--max-resume`.
    max_resume: usize,
    /// The ticket the next job gets.
    next_ticket: Ticket,
    /// Every job up to this ticket is done.
    done_through: Ticket,
    /// The commit this turn's public messages go into, not yet submitted.
    open: Option<(Ticket, Commit)>,
    /// Jobs made this turn, submitted at its end.
    jobs: Vec<(Ticket, Job)>,
    /// Held deliveries, in the room's order.
    held: VecDeque<Held>,
    /// Messages taken back while some are held: by id, the message stored
    /// earlier under the same `cid`, or `None` when the store failed.
    retracted: HashMap<u64, Option<Arc<ChatMessage>>>,
    /// The highest reservation asked for.
    requested_reserved: u64,
    /// The highest reservation on disk: ids up to it may be shown.
    durable_reserved: u64,
    /// The ticket of the commit carrying `requested_reserved`.
    reserve_ticket: Ticket,
    /// Commits that carry a reservation, with it, oldest first.
    reserving: VecDeque<(Ticket, u64)>,
    /// What the worker returned (kept for its allocation).
    done: Vec<Done>,
    /// Deliveries that may go out wait for this ticket too: the last job
    /// submitted when they became ready, if it was still in flight (see
    /// "Two groups per round" in the module docs).
    release_with: Option<Ticket>,
}

impl Publisher {
    /// A publisher over `worker`, whose store has reserved ids through
    /// `reserved`.
    pub fn new(worker: Worker, keeps_everything: bool, max_resume: usize, reserved: u64) -> Self {
        Publisher {
            worker,
            room_name: crate::chat::store::MAIN_ROOM.into(),
            keeps_everything,
            max_resume,
            next_ticket: 1,
            done_through: 0,
            open: None,
            jobs: Vec::new(),
            held: VecDeque::new(),
            retracted: HashMap::new(),
            requested_reserved: reserved,
            durable_reserved: reserved,
            reserve_ticket: 0,
            reserving: VecDeque::new(),
            done: Vec::new(),
            release_with: None,
        }
    }

    /// Starts the store; see [`Worker::start`].
    pub fn start(&mut self, wakeup: Wakeup) {
        self.worker.start(wakeup);
    }

    /// The store's numbers now, for `GET /metrics`.
    pub fn store_metrics(&self) -> StoreMetrics {
        self.worker.metrics()
    }

    /// The query the store must answer for `request`, when the room's kept
    /// history cannot: a resume from before it, or a page older than it.
    /// Asked before the room handles the request (its bound is the next
    /// id at that moment).
    pub fn query(&self, room: &Room, request: &Request) -> Option<Job> {
        if !self.keeps_everything {
            return None;
        }
        match request {
            Request::Join {
                since: Some(since),
                epoch,
                ..
            } if epoch.as_deref().is_none_or(|epoch| epoch == room.epoch())
                && !room.keeps_since(*since) =>
            {
                Some(Job::After {
                    room: Arc::clone(&self.room_name),
                    since: *since,
                    below: room.next_id(),
                    // One more than may be sent tells "too many" apart.
                    limit: self.max_resume.saturating_add(1),
                })
            }
            Request::History { before, limit } if !room.keeps_page(*before, *limit) => {
                Some(Job::Before {
                    room: Arc::clone(&self.room_name),
                    before: before.unwrap_or(u64::MAX).min(room.next_id()),
                    limit: *limit,
                })
            }
            _ => None,
        }
    }

    /// Takes the room's deliveries for a request of `conn` (with the
    /// store `query` it needs, if any) and releases what may go out now.
    pub fn admit(
        &mut self,
        conn: UserId,
        deliveries: impl Iterator<Item = Delivery>,
        mut query: Option<Job>,
        room: &mut Room,
        releases: &mut Vec<Release>,
    ) {
        for delivery in deliveries {
            let (needs, item) = match delivery {
                Delivery {
                    to: Audience::Everyone,
                    message: ServerMessage::Message(message),
                } => (
                    self.store(&message),
                    Item::Public {
                        sender: Some(conn),
                        message,
                    },
                ),
                Delivery {
                    to: Audience::Pair(sender, _),
                    message: ServerMessage::Dm { id, .. },
                } => (
                    self.reserve(id),
                    Item::Dm {
                        sender: Some(sender),
                        delivery,
                    },
                ),
                Delivery {
                    to: Audience::One(to),
                    message: ServerMessage::Welcome { .. } | ServerMessage::History { .. },
                } => {
                    let needs = query.take().map_or(0, |job| self.ask(job));
                    (
                        needs,
                        Item::Answer {
                            conn: to,
                            delivery,
                            found: None,
                        },
                    )
                }
                other => (0, Item::Other(other)),
            };
            if self.held.is_empty() && needs <= self.done_through {
                self.emit(item, room, releases);
            } else {
                self.held.push_back(Held { needs, item });
            }
        }
    }

    /// Submits the turn's jobs, takes in what the store has done, and
    /// releases what may now go out, together with the commit in flight
    /// if there is one (see "Two groups per round" in the module docs).
    /// Called at the end of every turn and when the store wakes the loop.
    pub fn pump(&mut self, room: &mut Room, releases: &mut Vec<Release>) {
        self.close_commit();
        for (ticket, job) in self.jobs.drain(..) {
            self.worker.submit(ticket, job);
        }
        let mut done = std::mem::take(&mut self.done);
        self.worker.collect(&mut done);
        for done in done.drain(..) {
            self.apply(done, room);
        }
        self.done = done;
        let ready = self
            .held
            .front()
            .is_some_and(|front| front.needs <= self.done_through);
        let submitted = self.next_ticket - 1;
        if ready && submitted > self.done_through {
            // A later job is in flight (under load, the next commit):
            // what is ready waits for it, once.
            let with = *self.release_with.get_or_insert(submitted);
            if self.done_through < with {
                return;
            }
        }
        self.release_with = None;
        while let Some(front) = self.held.front() {
            if front.needs > self.done_through {
                break;
            }
            if let Some(held) = self.held.pop_front() {
                self.emit(held.item, room, releases);
            }
        }
        if self.held.is_empty() {
            self.retracted.clear();
        }
    }

    /// `conn` closed: nothing held is for it any more (its key may be
    /// reused), and what it sent is still delivered to the others.
    pub fn forget(&mut self, conn: UserId) {
        let gone = |sender: &mut Option<UserId>| {
            if *sender == Some(conn) {
                *sender = None;
            }
        };
        self.held.retain_mut(|held| match &mut held.item {
            Item::Public { sender, .. } => {
                gone(sender);
                true
            }
            Item::Dm { sender, delivery } => {
                gone(sender);
                without(delivery, conn)
            }
            Item::Other(delivery) => without(delivery, conn),
            Item::Answer { conn: to, .. } => *to != conn,
        });
    }

    /// The ticket that stores `message`: this turn's commit.
    fn store(&mut self, message: &Arc<ChatMessage>) -> Ticket {
        self.reserve(message.id);
        let (ticket, commit) = self.open_commit();
        commit.messages.push(Arc::clone(message));
        ticket
    }

    /// Makes sure a reservation covering `id` is on its way, well ahead
    /// of use; returns the ticket that puts one on disk (0 if one is).
    fn reserve(&mut self, id: u64) -> Ticket {
        if id.saturating_add(RESERVE_BLOCK / 2) > self.requested_reserved {
            self.requested_reserved = id.saturating_add(RESERVE_BLOCK);
            let reserve = self.requested_reserved;
            let (ticket, commit) = self.open_commit();
            commit.reserve_through = reserve;
            self.reserve_ticket = ticket;
        }
        if id > self.durable_reserved {
            self.reserve_ticket
        } else {
            0
        }
    }

    /// This turn's commit, opened on first use.
    fn open_commit(&mut self) -> (Ticket, &mut Commit) {
        if self.open.is_none() {
            let ticket = self.take_ticket();
            let commit = Commit {
                room: Arc::clone(&self.room_name),
                messages: Vec::new(),
                reserve_through: 0,
            };
            self.open = Some((ticket, commit));
        }
        let (ticket, commit) = self.open.as_mut().expect("just opened");
        (*ticket, commit)
    }

    /// Ends the open commit: it is submitted before any later job.
    fn close_commit(&mut self) {
        if let Some((ticket, commit)) = self.open.take() {
            if commit.reserve_through > 0 {
                self.reserving.push_back((ticket, commit.reserve_through));
            }
            self.jobs.push((ticket, Job::Append(commit)));
        }
    }

    /// Queues a query after every commit made so far; returns its ticket.
    fn ask(&mut self, job: Job) -> Ticket {
        self.close_commit();
        let ticket = self.take_ticket();
        self.jobs.push((ticket, job));
        ticket
    }

    fn take_ticket(&mut self) -> Ticket {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        ticket
    }

    /// Takes in one finished job (they come in ticket order).
    fn apply(&mut self, done: Done, room: &mut Room) {
        self.done_through = done.ticket;
        let reservation = match self.reserving.front() {
            Some(&(ticket, reserve)) if ticket == done.ticket => {
                self.reserving.pop_front();
                Some(reserve)
            }
            _ => None,
        };
        match done.outcome {
            Outcome::Stored(duplicates) => {
                if let Some(reserve) = reservation {
                    self.durable_reserved = self.durable_reserved.max(reserve);
                }
                for duplicate in duplicates {
                    room.retract(duplicate.id, Some(Arc::clone(&duplicate.stored)));
                    self.retracted.insert(duplicate.id, Some(duplicate.stored));
                }
            }
            Outcome::Failed => {
                // The reservation is asked for again with the next id.
                self.requested_reserved = self.durable_reserved;
                for held in &self.held {
                    if let (Item::Public { message, .. }, true) =
                        (&held.item, held.needs == done.ticket)
                    {
                        room.retract(message.id, None);
                        self.retracted.insert(message.id, None);
                    }
                }
            }
            Outcome::Found(messages) => {
                let waiting = self.held.iter_mut().find(|held| held.needs == done.ticket);
                if let Some(Held {
                    item: Item::Answer { found, .. },
                    ..
                }) = waiting
                {
                    *found = Some(messages);
                }
            }
        }
    }

    /// Lets one held delivery out, as the store's outcome made it.
    fn emit(&mut self, item: Item, room: &mut Room, releases: &mut Vec<Release>) {
        match item {
            Item::Public { sender, message } => match self.retracted.get(&message.id) {
                None => releases.push(Release::Send(Delivery {
                    to: Audience::Everyone,
                    message: ServerMessage::Message(message),
                })),
                Some(outcome) => {
                    if let Some(sender) = sender {
                        releases.push(Release::Send(refusal(sender, &message, outcome)));
                    }
                }
            },
            Item::Dm { sender, delivery } => {
                let ServerMessage::Dm { id, cid, .. } = &delivery.message else {
                    return;
                };
                if *id <= self.durable_reserved {
                    releases.push(Release::Send(delivery));
                    return;
                }
                if let Some(cid) = cid {
                    room.forget_dm(cid);
                }
                if let Some(sender) = sender {
                    releases.push(Release::Send(unavailable(sender, cid.clone())));
                }
            }
            Item::Answer {
                conn,
                mut delivery,
                found,
            } => {
                let subscribe = self.complete(&mut delivery.message, found);
                releases.push(Release::Send(delivery));
                if subscribe {
                    releases.push(Release::Subscribe(conn));
                }
            }
            Item::Other(delivery) => releases.push(Release::Send(self.ack(delivery))),
        }
    }

    /// Gives a `welcome` or `history` answer the store's messages, or
    /// takes out of it what was retracted; returns whether it was a
    /// `welcome`.
    fn complete(
        &self,
        message: &mut ServerMessage,
        found: Option<Option<Vec<Arc<ChatMessage>>>>,
    ) -> bool {
        let found = found.flatten();
        match message {
            ServerMessage::Welcome {
                history, recovered, ..
            } => {
                match found {
                    Some(stored) if stored.len() <= self.max_resume => {
                        *history = stored;
                        *recovered = Some(true);
                    }
                    _ => history.retain(|message| !self.retracted.contains_key(&message.id)),
                }
                true
            }
            ServerMessage::History { messages } => {
                match found {
                    Some(stored) => *messages = stored,
                    None => messages.retain(|message| !self.retracted.contains_key(&message.id)),
                }
                false
            }
            _ => false,
        }
    }

    /// An acknowledgement of a resent `cid` (a `message` or `dm` to its
    /// sender alone) whose original the store took back or never reserved
    /// becomes what the original's sender got.
    fn ack(&self, delivery: Delivery) -> Delivery {
        let Audience::One(to) = delivery.to else {
            return delivery;
        };
        match &delivery.message {
            ServerMessage::Message(message) => match self.retracted.get(&message.id) {
                Some(outcome) => refusal(to, message, outcome),
                None => delivery,
            },
            ServerMessage::Dm { id, cid, .. } if *id > self.durable_reserved => {
                unavailable(to, cid.clone())
            }
            _ => delivery,
        }
    }
}

/// What the sender of a retracted public message gets: the message
/// stored earlier with its `cid`, or `unavailable`.
fn refusal(sender: UserId, message: &ChatMessage, outcome: &Option<Arc<ChatMessage>>) -> Delivery {
    match outcome {
        Some(stored) => Delivery {
            to: Audience::One(sender),
            message: ServerMessage::Message(Arc::clone(stored)),
        },
        None => unavailable(sender, message.cid.clone()),
    }
}

/// `error` `unavailable` for `to`, naming the refused `cid`.
fn unavailable(to: UserId, cid: Option<Cid>) -> Delivery {
    Delivery {
        to: Audience::One(to),
        message: ServerMessage::Error {
            code: ErrorCode::Unavailable,
            message: "the message could not be stored; send it again later".into(),
            cid,
        },
    }
}

/// Takes `conn` out of a held delivery's audience; returns whether anyone
/// is left to receive it.
fn without(delivery: &mut Delivery, conn: UserId) -> bool {
    match delivery.to {
        Audience::One(to) => to != conn,
        Audience::Pair(sender, recipient) if sender == conn || recipient == conn => {
            let other = if sender == conn { recipient } else { sender };
            delivery.to = Audience::One(other);
            other != conn
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::room::RoomConfig;
    use crate::chat::store::memory::MemoryStore;
    use crate::chat::store::{Store, StoreError, Summary};
    use crate::proto::protocol::Timestamp;
    use std::sync::atomic::{AtomicBool, Ordering};

    const ALICE: UserId = 1;
    const BOB: UserId = 2;

    /// A memory store whose writes fail while `full` is set, and which,
    /// given a [`Gate`], runs on its own thread and stores nothing before
    /// the gate lets it.
    struct Flaky {
        inner: MemoryStore,
        full: Arc<AtomicBool>,
        gate: Option<Gate>,
    }

    /// What makes every commit wait for a permit.
    struct Gate {
        /// One permit per commit.
        permits: std::sync::mpsc::Receiver<()>,
        /// Told when a commit starts waiting.
        waiting: std::sync::mpsc::Sender<()>,
    }

    impl Store for Flaky {
        fn epoch(&self) -> &str {
            self.inner.epoch()
        }
        fn reserved_through(&self) -> u64 {
            self.inner.reserved_through()
        }
        fn may_block(&self) -> bool {
            self.gate.is_some()
        }
        fn keeps_everything(&self) -> bool {
            false
        }
        fn append(
            &mut self,
            commits: &[Commit],
        ) -> Result<Vec<Vec<crate::chat::store::Duplicate>>, StoreError> {
            if let Some(gate) = &self.gate {
                gate.waiting.send(()).unwrap();
                // Bounded, so that a failing test ends (unwinding drops
                // the publisher, whose worker waits for this thread,
                // before the permits' sender).
                let _ = gate
                    .permits
                    .recv_timeout(std::time::Duration::from_secs(10));
            }
            if self.full.load(Ordering::SeqCst) {
                return Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                    None,
                )));
            }
            self.inner.append(commits)
        }
        fn after(
            &mut self,
            room: &str,
            since: u64,
            below: u64,
            limit: usize,
        ) -> Result<Vec<Arc<ChatMessage>>, StoreError> {
            self.inner.after(room, since, below, limit)
        }
        fn before(
            &mut self,
            room: &str,
            before: u64,
            limit: usize,
        ) -> Result<Vec<Arc<ChatMessage>>, StoreError> {
            self.inner.before(room, before, limit)
        }
        fn summary(&mut self, room: &str) -> Result<Summary, StoreError> {
            self.inner.summary(room)
        }
    }

    /// A room with Alice in it, a publisher over a flaky store (run
    /// inline: each `pump` is one commit), and the store's switch.
    fn setup() -> (Room, Publisher, Arc<AtomicBool>) {
        let (room, publisher, full, _) = setup_with(None);
        (room, publisher, full)
    }

    /// The same, the store on its own thread if it has a `gate`; also the
    /// poll that the store's wakeups wake.
    fn setup_with(gate: Option<Gate>) -> (Room, Publisher, Arc<AtomicBool>, mio::Poll) {
        let full = Arc::new(AtomicBool::new(false));
        let store = Flaky {
            inner: MemoryStore::new(100),
            full: Arc::clone(&full),
            gate,
        };
        let mut worker = Worker::new(Box::new(store));
        // A waker on a poll of the test's own stands in for the loop's.
        let poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        worker.start(Wakeup::for_tests(waker));
        let mut room = Room::new(RoomConfig::default(), "e".into());
        let mut publisher = Publisher::new(worker, false, 1000, 0);
        let mut releases = Vec::new();
        request(
            &mut room,
            &mut publisher,
            ALICE,
            join("alice"),
            &mut releases,
        );
        publisher.pump(&mut room, &mut releases);
        (room, publisher, full, poll)
    }

    fn join(name: &str) -> Request {
        Request::Join {
            name: name.into(),
            since: None,
            epoch: None,
        }
    }

    fn say(text: &str, cid: &str) -> Request {
        Request::Say {
            text: text.into(),
            cid: Cid::new(cid),
        }
    }

    /// Runs one request through the room and into the publisher.
    fn request(
        room: &mut Room,
        publisher: &mut Publisher,
        user: UserId,
        request: Request,
        releases: &mut Vec<Release>,
    ) {
        let query = publisher.query(room, &request);
        let mut deliveries = Vec::new();
        room.handle(user, request, Timestamp::now(), &mut deliveries);
        publisher.admit(user, deliveries.into_iter(), query, room, releases);
    }

    /// A compact view of releases: (kind, recipient, ids in it).
    fn view(releases: &[Release]) -> Vec<(String, String, Vec<u64>)> {
        releases
            .iter()
            .map(|release| match release {
                Release::Subscribe(user) => ("subscribe".into(), user.to_string(), vec![]),
                Release::Send(Delivery { to, message }) => {
                    let json: serde_json::Value = serde_json::from_str(&message.to_json()).unwrap();
                    let ids = match message {
                        ServerMessage::Welcome { history, .. } => {
                            history.iter().map(|m| m.id).collect()
                        }
                        ServerMessage::Message(m) => vec![m.id],
                        _ => vec![],
                    };
                    let kind = match json["code"].as_str() {
                        Some(code) => code.to_owned(),
                        None => json["type"].as_str().unwrap().to_owned(),
                    };
                    (kind, format!("{to:?}"), ids)
                }
            })
            .collect()
    }

    #[test]
    fn a_join_during_a_pending_commit_waits_and_subscribes_after_the_message() {
        let (mut room, mut publisher, _) = setup();
        let mut releases = Vec::new();
        request(
            &mut room,
            &mut publisher,
            ALICE,
            say("hi", "c1"),
            &mut releases,
        );
        request(&mut room, &mut publisher, BOB, join("bob"), &mut releases);
        // Nothing goes out before the commit, not even the welcome.
        assert_eq!(releases, []);
        publisher.pump(&mut room, &mut releases);
        assert_eq!(
            view(&releases),
            [
                ("message".into(), "Everyone".into(), vec![1]),
                ("welcome".into(), "One(2)".into(), vec![1]),
                ("subscribe".into(), "2".into(), vec![]),
                ("joined".into(), "EveryoneExcept(2)".into(), vec![]),
            ]
        );
    }

    #[test]
    fn a_stored_group_waits_for_the_commit_in_flight_and_goes_out_with_it() {
        let limit = std::time::Duration::from_secs(10);
        let (permit, permits) = std::sync::mpsc::channel();
        let (waiting, started) = std::sync::mpsc::channel();
        let gate = Gate { permits, waiting };
        let (mut room, mut publisher, _, mut poll) = setup_with(Some(gate));
        // Waits until the store has woken "the loop" (bounded).
        let mut events = mio::Events::with_capacity(4);
        let mut woken = || {
            poll.poll(&mut events, Some(limit)).unwrap();
            assert!(!events.is_empty(), "the store never woke the loop");
        };
        let mut releases = Vec::new();

        // Alone in flight, a commit's group goes out as soon as it is
        // stored.
        let say_and_pump = |publisher: &mut Publisher, room: &mut Room, text, cid| {
            let mut releases = Vec::new();
            request(room, publisher, ALICE, say(text, cid), &mut releases);
            publisher.pump(room, &mut releases);
            assert_eq!(releases, [], "nothing goes out while a commit is in flight");
            started.recv_timeout(limit).unwrap();
        };
        say_and_pump(&mut publisher, &mut room, "one", "c1");
        permit.send(()).unwrap();
        woken();
        publisher.pump(&mut room, &mut releases);
        assert_eq!(
            view(&releases),
            [("message".into(), "Everyone".into(), vec![1])]
        );

        // Stored while the next commit is in flight, it waits for that
        // one, and both go out together.
        releases.clear();
        say_and_pump(&mut publisher, &mut room, "two", "c2");
        permit.send(()).unwrap();
        woken();
        // This pump takes in that "two" is stored, while the store is at
        // work on "three": nothing goes out.
        say_and_pump(&mut publisher, &mut room, "three", "c3");
        permit.send(()).unwrap();
        woken();
        publisher.pump(&mut room, &mut releases);
        assert_eq!(
            view(&releases),
            [
                ("message".into(), "Everyone".into(), vec![2]),
                ("message".into(), "Everyone".into(), vec![3]),
            ]
        );
    }

    #[test]
    fn a_failed_commit_answers_unavailable_and_is_forgotten() {
        let (mut room, mut publisher, full) = setup();
        let mut releases = Vec::new();
        full.store(true, Ordering::SeqCst);
        request(
            &mut room,
            &mut publisher,
            ALICE,
            say("lost", "c1"),
            &mut releases,
        );
        request(&mut room, &mut publisher, BOB, join("bob"), &mut releases);
        publisher.pump(&mut room, &mut releases);
        assert_eq!(
            view(&releases),
            [
                ("unavailable".into(), "One(1)".into(), vec![]),
                ("welcome".into(), "One(2)".into(), vec![]),
                ("subscribe".into(), "2".into(), vec![]),
                ("joined".into(), "EveryoneExcept(2)".into(), vec![]),
            ]
        );
        // The cid is free again, and the message goes out once stored.
        full.store(false, Ordering::SeqCst);
        releases.clear();
        request(
            &mut room,
            &mut publisher,
            ALICE,
            say("lost", "c1"),
            &mut releases,
        );
        publisher.pump(&mut room, &mut releases);
        assert_eq!(
            view(&releases),
            [("message".into(), "Everyone".into(), vec![2])]
        );
        assert_eq!(
            room.page(None, 10).iter().map(|m| m.id).collect::<Vec<_>>(),
            [2]
        );
    }
}
