//! The store as the event loop sees it: a completion source. The loop
//! submits [`Job`]s, each under a [`Ticket`] (tickets increase by one), and
//! later collects what was [`Done`], in ticket order. It never waits.
//!
//! A store that may block (SQLite) runs on a thread of its own, which owns
//! the write connection. The thread takes every job queued since it last
//! looked and stores all the queued commits in one transaction: a group
//! commit, so one fsync covers every message that arrived while the
//! previous one was being written, however many that is. Then it sends
//! what was done back over a channel and wakes the loop through the loop's
//! [`Wakeup`]. A store that never blocks (memory) runs inline instead, when
//! the loop collects, with the same code.
//!
//! Under load the thread waits a moment before each group commit
//! ([`commit_delay`]), so that more messages join it, as PostgreSQL's
//! `commit_delay` and MySQL's `binlog_group_commit_sync_delay` do: fewer
//! fsyncs, and fewer, fuller rounds of writes to every client, for at most
//! half a millisecond more latency, and only while messages come faster
//! than a person could type them.
//!
//! The runner times every group commit and counts it in [`StoreMetrics`],
//! once per commit (never per message), behind a mutex that only a scrape
//! of `GET /metrics` also takes; the loop counts the jobs it hands over and
//! gets back, for the queue depth.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::chat::metrics::StoreMetrics;
use crate::chat::store::{Commit, Duplicate, RoomName, Store, StoreError};
use crate::evloop::service::Wakeup;
use crate::proto::protocol::ChatMessage;

/// Names one job; the loop hands them out in increasing order, one by one.
pub type Ticket = u64;

/// How long the store thread waits before a group commit under load.
/// Half a millisecond is nothing next to a network round trip between
/// people, yet under a flood (tens of thousands of messages a second on
/// this project's 2-core machine) it lets groups grow from about 55
/// messages to about 80: a third fewer fsyncs, and a third fewer rounds
/// of writes to every client (the stored groups go out in them, two per
/// round under load), which is where a delivery's CPU goes (the figures
/// are in `docs/performance.md`).
const COMMIT_DELAY: Duration = Duration::from_micros(500);

/// The size of a group commit that means load: at least this many
/// messages arrived while one commit was being written (about 0.2 ms
/// here), so more will come during a [`COMMIT_DELAY`] and the wait is not
/// in vain. A chat at a human pace commits one message at a time and never
/// waits (PostgreSQL's `commit_siblings` plays this part).
const LOADED_GROUP: usize = 32;

/// How long to wait before the next group commit, after one of
/// `last_group` messages: [`COMMIT_DELAY`] under load, else nothing.
fn commit_delay(last_group: usize) -> Option<Duration> {
    (last_group >= LOADED_GROUP).then_some(COMMIT_DELAY)
}

/// Work for the store.
#[derive(Debug)]
pub enum Job {
    /// Store these messages (and this reservation).
    Append(Commit),
    /// The messages of `room` above `since` and below `below`, at most
    /// `limit`: a resume.
    After {
        room: RoomName,
        since: u64,
        below: u64,
        limit: usize,
    },
    /// The latest messages of `room` below `before`, at most `limit`: a
    /// page of `history`.
    Before {
        room: RoomName,
        before: u64,
        limit: usize,
    },
}

/// How a job ended.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The commit is durable; these of its messages were duplicates and
    /// were not stored.
    Stored(Vec<Duplicate>),
    /// The commit could not be stored: none of it is (disk full, file
    /// unwritable). The error was logged.
    Failed,
    /// A query's answer; `None` when it failed (logged).
    Found(Option<Vec<Arc<ChatMessage>>>),
}

/// A finished job.
#[derive(Debug, PartialEq)]
pub struct Done {
    /// The job's ticket.
    pub ticket: Ticket,
    /// How it ended.
    pub outcome: Outcome,
}

/// A store and what its runner remembers between batches of jobs.
struct Engine {
    /// The store.
    store: Box<dyn Store>,
    /// Whether the last write failed: a failure is logged once per
    /// episode, and its end once.
    failing: bool,
    /// Group commits, their latency and the messages they stored, for
    /// `GET /metrics` and the exit log line; shared with the [`Worker`],
    /// which reads it only for a scrape.
    metrics: Arc<Mutex<StoreMetrics>>,
}

impl Engine {
    /// Runs `jobs` in order, each run of consecutive commits as one
    /// transaction, and sends what was done. Returns how many messages
    /// the commits carried.
    fn run(&mut self, jobs: &mut Vec<(Ticket, Job)>, done: &Sender<Done>) -> usize {
        let mut jobs = jobs.drain(..).peekable();
        let mut commits = Vec::new();
        let mut tickets = Vec::new();
        let mut messages = 0;
        while let Some((ticket, job)) = jobs.next() {
            let outcome = match job {
                Job::Append(commit) => {
                    messages += commit.messages.len();
                    commits.push(commit);
                    tickets.push(ticket);
                    if matches!(jobs.peek(), Some((_, Job::Append(_)))) {
                        continue;
                    }
                    self.append(&mut commits, &mut tickets, done);
                    continue;
                }
                Job::After {
                    room,
                    since,
                    below,
                    limit,
                } => self.store.after(&room, since, below, limit),
                Job::Before {
                    room,
                    before,
                    limit,
                } => self.store.before(&room, before, limit),
            };
            let found = outcome
                .map_err(|err| log::error!("cannot read the history: {err}"))
                .ok();
            // The loop outlives its worker; if it is gone, nobody waits.
            let _ = done.send(Done {
                ticket,
                outcome: Outcome::Found(found),
            });
        }
        messages
    }

    /// Stores `commits` in one transaction and answers each ticket.
    fn append(
        &mut self,
        commits: &mut Vec<Commit>,
        tickets: &mut Vec<Ticket>,
        done: &Sender<Done>,
    ) {
        let started = Instant::now();
        let result = self.store.append(commits);
        let stored = result.as_ref().ok().map(|duplicates| {
            let messages: usize = commits.iter().map(|c| c.messages.len()).sum();
            let dropped: usize = duplicates.iter().map(Vec::len).sum();
            (messages - dropped) as u64
        });
        lock(&self.metrics).commit(started.elapsed(), stored);
        let outcomes: Vec<Outcome> = match result {
            Ok(duplicates) => {
                if std::mem::take(&mut self.failing) {
                    log::warn!("storing messages again");
                }
                duplicates.into_iter().map(Outcome::Stored).collect()
            }
            Err(err) => {
                self.log_failure(&err);
                commits.iter().map(|_| Outcome::Failed).collect()
            }
        };
        for (ticket, outcome) in tickets.drain(..).zip(outcomes) {
            let _ = done.send(Done { ticket, outcome });
        }
        commits.clear();
    }

    /// Logs a failed write, once until writing works again.
    fn log_failure(&mut self, err: &StoreError) {
        if !self.failing {
            self.failing = true;
            log::error!(
                "cannot store messages ({err}): their senders get error unavailable \
                 until the store can be written again"
            );
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let (commits, messages) = lock(&self.metrics).totals();
        if commits > 0 {
            log::info!("store: {messages} messages in {commits} group commits");
        }
    }
}

/// The store's metrics, even if a thread panicked while holding them
/// (counters stay meaningful whatever happened after).
fn lock(metrics: &Mutex<StoreMetrics>) -> std::sync::MutexGuard<'_, StoreMetrics> {
    metrics.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where the store runs.
enum Place {
    /// Not started yet (blocking stores wait for the loop's [`Wakeup`]):
    /// jobs queue in the channel.
    Waiting(Engine, Receiver<(Ticket, Job)>, Sender<Done>),
    /// On the loop's thread, when jobs are collected.
    Inline(Engine, Receiver<(Ticket, Job)>, Sender<Done>),
    /// On its own thread.
    Thread(JoinHandle<()>),
    /// Gone (only while dropping).
    Stopped,
}

/// The loop's handle on the store; see the module docs.
pub struct Worker {
    /// Jobs to the store, in ticket order. `None` once dropping.
    jobs: Option<Sender<(Ticket, Job)>>,
    /// What the store has done, in ticket order.
    done: Receiver<Done>,
    /// Where the store runs.
    place: Place,
    /// The runner's numbers, copied for a scrape.
    metrics: Arc<Mutex<StoreMetrics>>,
    /// Jobs submitted, and answers collected: the difference is the queue
    /// depth. Counted per job on the loop, where they are handed over.
    submitted: u64,
    /// Answers collected (one per job).
    answered: u64,
}

impl Worker {
    /// A worker for `store`; jobs may be submitted at once, and a
    /// blocking store starts working on [`start`](Self::start).
    pub fn new(store: Box<dyn Store>) -> Self {
        let (jobs_tx, jobs_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let metrics = Arc::new(Mutex::new(StoreMetrics::default()));
        let engine = Engine {
            store,
            failing: false,
            metrics: Arc::clone(&metrics),
        };
        Worker {
            jobs: Some(jobs_tx),
            done: done_rx,
            place: Place::Waiting(engine, jobs_rx, done_tx),
            metrics,
            submitted: 0,
            answered: 0,
        }
    }

    /// The store's numbers now, for a scrape.
    pub fn metrics(&self) -> StoreMetrics {
        lock(&self.metrics).with_queue_depth(self.submitted - self.answered)
    }

    /// Starts the store: on its own thread, which wakes the loop with
    /// `wakeup` after each batch, when it may block; else inline.
    pub fn start(&mut self, wakeup: Wakeup) {
        let Place::Waiting(mut engine, jobs, done) =
            std::mem::replace(&mut self.place, Place::Stopped)
        else {
            return;
        };
        if !engine.store.may_block() {
            self.place = Place::Inline(engine, jobs, done);
            return;
        }
        let thread = std::thread::Builder::new()
            .name("miochat-store".into())
            .spawn(move || {
                // Blocks for the first job, then (under load, after a
                // moment) takes all that queued behind it: they are one
                // group commit.
                let mut batch = Vec::new();
                let mut last_group = 0;
                while let Ok(job) = jobs.recv() {
                    if let Some(delay) = commit_delay(last_group) {
                        std::thread::sleep(delay);
                    }
                    batch.push(job);
                    batch.extend(jobs.try_iter());
                    last_group = engine.run(&mut batch, &done);
                    wakeup.wake();
                }
            })
            .expect("the store thread starts");
        self.place = Place::Thread(thread);
    }

    /// Queues a job; it never waits.
    pub fn submit(&mut self, ticket: Ticket, job: Job) {
        if let Some(jobs) = &self.jobs {
            // The receiver lives as long as the worker.
            let _ = jobs.send((ticket, job));
            self.submitted += 1;
        }
    }

    /// Appends what has been done since the last call, in ticket order
    /// (an inline store does its work now).
    pub fn collect(&mut self, into: &mut Vec<Done>) {
        if let Place::Inline(engine, jobs, done) = &mut self.place {
            let mut batch: Vec<_> = jobs.try_iter().collect();
            engine.run(&mut batch, done);
        }
        let before = into.len();
        into.extend(self.done.try_iter());
        self.answered += (into.len() - before) as u64;
    }
}

impl Drop for Worker {
    /// Lets the store finish what was submitted, then stops it.
    fn drop(&mut self) {
        self.jobs = None;
        if let Place::Thread(thread) = std::mem::replace(&mut self.place, Place::Stopped) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::store::contract::{commit, message};
    use crate::chat::store::memory::MemoryStore;
    use crate::chat::store::MAIN_ROOM;

    #[test]
    fn only_a_loaded_store_waits_before_committing() {
        // A human pace: one message per commit, never a wait.
        assert_eq!(commit_delay(0), None);
        assert_eq!(commit_delay(1), None);
        assert_eq!(commit_delay(LOADED_GROUP - 1), None);
        assert_eq!(commit_delay(LOADED_GROUP), Some(COMMIT_DELAY));
        assert_eq!(commit_delay(10_000), Some(COMMIT_DELAY));
    }

    #[test]
    fn a_run_reports_how_many_messages_its_commits_carried() {
        let mut engine = Engine {
            store: Box::new(MemoryStore::new(100)),
            failing: false,
            metrics: Arc::default(),
        };
        let (done, answers) = mpsc::channel();
        let mut jobs = vec![
            (
                1,
                Job::Append(commit(
                    vec![message(1, "a", None), message(2, "b", None)],
                    0,
                )),
            ),
            (
                2,
                Job::Before {
                    room: MAIN_ROOM.into(),
                    before: 10,
                    limit: 5,
                },
            ),
            (3, Job::Append(commit(vec![message(3, "c", None)], 0))),
        ];
        assert_eq!(engine.run(&mut jobs, &done), 3);
        let tickets: Vec<Ticket> = answers.try_iter().map(|done| done.ticket).collect();
        assert_eq!(tickets, [1, 2, 3]);
        assert_eq!(engine.run(&mut Vec::new(), &done), 0);
    }
}
