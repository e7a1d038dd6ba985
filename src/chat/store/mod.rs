//! Where public messages are kept: the [`Store`] trait and its two
//! implementations, [`memory::MemoryStore`] (`--db :memory:`: nothing
//! survives the process) and [`sqlite::SqliteStore`] (a SQLite file: every
//! public message survives a crash).
//!
//! A store is a blocking engine: each call returns when its work is done
//! (for SQLite, when it is on disk). The event loop must never wait for
//! the disk, so it never calls a store itself: [`worker::Worker`] runs the
//! store on a thread of its own, takes the loop's work in order, and hands
//! back what was done, waking the loop. A store that cannot block (the
//! memory one) is run inline instead. So the trait is synchronous, and
//! the asynchrony is in the worker, in one place, for every store: the
//! later Redis store is one more blocking engine behind the same worker.
//!
//! Every message is stored under a room; there is one room today
//! ([`MAIN_ROOM`]), and the key is there so that rooms can come later
//! without a migration. Ids are one sequence across rooms.

pub mod memory;
pub mod sqlite;
pub mod worker;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::proto::protocol::ChatMessage;

/// The only room today: every public message is stored under it.
pub const MAIN_ROOM: &str = "main";

/// The `--db` value that keeps history in memory only.
pub const IN_MEMORY: &str = ":memory:";

/// How many ids one reservation covers. An id is handed out only below a
/// reservation that is on disk, so after a crash ids continue above it; a
/// restart therefore skips at most this many ids, which a `u64` does not
/// miss, while the reservation is written once per ten thousand messages
/// and DMs, inside a group commit that happens anyway.
pub const RESERVE_BLOCK: u64 = 10_000;

/// The name of a room, as the store keys messages by it.
pub type RoomName = Arc<str>;

/// One group of new public messages to store, and how far ids may be
/// handed out once it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Commit {
    /// The room the messages were said in.
    pub room: RoomName,
    /// The messages, in id order.
    pub messages: Vec<Arc<ChatMessage>>,
    /// When above the store's current reservation: the new reservation,
    /// stored with the messages (ids up to it may then be handed out).
    pub reserve_through: u64,
}

/// A message of a [`Commit`] that was not stored because its `cid` had
/// already been accepted: the one stored then stands for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Duplicate {
    /// The id the new message had been given (now never used).
    pub id: u64,
    /// The message stored earlier with the same `cid`.
    pub stored: Arc<ChatMessage>,
}

/// What a store holds for one room, for the start-up log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// How many public messages it holds.
    pub messages: u64,
    /// The newest one's id (0 when there is none).
    pub last_id: u64,
}

/// How hard a commit works to survive (`--sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Every group commit is flushed to the disk (`fsync`): a stored
    /// message survives a power loss.
    #[default]
    Full,
    /// Commits reach the operating system, not necessarily the disk: a
    /// stored message survives a crash of the server, not of the machine.
    Normal,
}

/// A blocking store of public messages. See the module docs for why it is
/// synchronous and who calls it.
pub trait Store: Send {
    /// Names this history; it is created with the store and kept with it.
    fn epoch(&self) -> &str;

    /// The highest id that may have been handed out: every id up to it is
    /// spent, so a restarted server continues above it.
    fn reserved_through(&self) -> u64;

    /// Whether a call may wait for a disk or a network: such a store runs
    /// on a thread of its own; one that never waits runs on the loop.
    fn may_block(&self) -> bool;

    /// Whether the store keeps every public message (SQLite) or only what
    /// the room keeps in memory anyway (memory): only the first is ever
    /// asked for old messages.
    fn keeps_everything(&self) -> bool;

    /// Stores the commits, all in one transaction (a group commit): when
    /// this returns `Ok`, all of them are durable, and the reservations
    /// with them; on an error none is. Returns the duplicates, per commit.
    fn append(&mut self, commits: &[Commit]) -> Result<Vec<Vec<Duplicate>>, StoreError>;

    /// The messages of `room` with ids above `since` and below `below`,
    /// oldest first, at most `limit`.
    fn after(
        &mut self,
        room: &str,
        since: u64,
        below: u64,
        limit: usize,
    ) -> Result<Vec<Arc<ChatMessage>>, StoreError>;

    /// The latest messages of `room` with ids below `before`, oldest
    /// first, at most `limit`.
    fn before(
        &mut self,
        room: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Arc<ChatMessage>>, StoreError>;

    /// How many messages `room` holds, and the last id.
    fn summary(&mut self, room: &str) -> Result<Summary, StoreError>;
}

/// Why a store cannot be opened or cannot do its work.
#[derive(Debug)]
pub enum StoreError {
    /// The file exists and is not a miochat database; it is left alone.
    NotMiochat {
        /// The file.
        path: PathBuf,
        /// What it is instead, for the message.
        reason: String,
    },
    /// The file was written by a later miochat, whose schema this one
    /// does not know; it is left alone.
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The schema version in the file.
        found: i64,
        /// The newest this program knows.
        known: i64,
    },
    /// Another process (another `mioserver`) has the file open as its
    /// store: two servers would hand out the same ids. Stop the other one,
    /// or choose another file.
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// The database failed (disk full, read-only, I/O error…).
    Sqlite(rusqlite::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NotMiochat { path, reason } => write!(
                f,
                "{} is not a miochat database ({reason}); it was left untouched: \
                 choose another file with --db",
                path.display()
            ),
            StoreError::NewerSchema { path, found, known } => write!(
                f,
                "{} has schema version {found}, made by a newer miochat (this one knows \
                 up to {known}); it was left untouched: run the newer mioserver",
                path.display()
            ),
            StoreError::InUse { path } => write!(
                f,
                "{} is in use by another mioserver (one database serves one server, or \
                 both would hand out the same ids): stop that one, or choose another file \
                 with --db",
                path.display()
            ),
            StoreError::Sqlite(err) => write!(f, "{err}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        StoreError::Sqlite(err)
    }
}

/// Opens the store `--db` names: memory for [`IN_MEMORY`] (keeping the
/// last `keep` messages, as the room does), else the SQLite file, created
/// if missing.
pub fn open(db: &Path, sync: SyncMode, keep: usize) -> Result<Box<dyn Store>, StoreError> {
    if db == Path::new(IN_MEMORY) {
        Ok(Box::new(memory::MemoryStore::new(keep)))
    } else {
        Ok(Box::new(sqlite::SqliteStore::open(db, sync)?))
    }
}

/// A fresh epoch: the time in nanoseconds and the process id, so that two
/// histories created by different processes, or at different instants,
/// never share a name.
pub fn new_epoch() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("{nanos:x}-{:x}", std::process::id())
}

/// Tests every store against the same contract.
#[cfg(test)]
pub(crate) mod contract {
    use super::*;
    use crate::proto::protocol::{Cid, Timestamp};
    use chrono::DateTime;

    /// A message said in the main room at second `id`.
    pub fn message(id: u64, text: &str, cid: Option<&str>) -> Arc<ChatMessage> {
        let seconds = i64::try_from(id).expect("a small id");
        Arc::new(ChatMessage {
            id,
            ts: Timestamp(DateTime::from_timestamp(seconds, 123_000_000).expect("an instant")),
            from: "alice".into(),
            text: text.into(),
            cid: cid.and_then(Cid::new),
        })
    }

    /// A commit of `messages` in the main room.
    pub fn commit(messages: Vec<Arc<ChatMessage>>, reserve_through: u64) -> Commit {
        Commit {
            room: MAIN_ROOM.into(),
            messages,
            reserve_through,
        }
    }

    fn ids(messages: &[Arc<ChatMessage>]) -> Vec<u64> {
        messages.iter().map(|message| message.id).collect()
    }

    /// Several commits in one call are stored together, in order, and a
    /// reservation is kept.
    pub fn group_commit_and_reservation(store: &mut dyn Store) {
        assert_eq!(store.reserved_through(), 0);
        let first = commit(vec![message(1, "a", None), message(2, "b", None)], 0);
        let second = commit(vec![message(4, "c", None)], RESERVE_BLOCK);
        assert_eq!(store.append(&[first, second]).unwrap(), [vec![], vec![]]);
        assert_eq!(store.reserved_through(), RESERVE_BLOCK);
        // A lower reservation never moves it back.
        store.append(&[commit(vec![], 5)]).unwrap();
        assert_eq!(store.reserved_through(), RESERVE_BLOCK);
        assert_eq!(
            ids(&store.before(MAIN_ROOM, u64::MAX, 10).unwrap()),
            [1, 2, 4]
        );
        let summary = store.summary(MAIN_ROOM).unwrap();
        assert_eq!(summary.last_id, 4);
    }

    /// A message whose `cid` was accepted before is not stored again: the
    /// earlier one is returned in its place, in any later commit.
    pub fn cid_dedupe(store: &mut dyn Store) {
        let original = message(1, "once", Some("c-1"));
        store
            .append(&[commit(vec![Arc::clone(&original)], 0)])
            .unwrap();
        let again = commit(
            vec![
                message(2, "twice", Some("c-1")),
                message(3, "new", Some("c-2")),
            ],
            0,
        );
        assert_eq!(
            store.append(&[again]).unwrap(),
            [vec![Duplicate {
                id: 2,
                stored: original
            }]]
        );
        assert_eq!(ids(&store.before(MAIN_ROOM, u64::MAX, 10).unwrap()), [1, 3]);
    }

    /// `after` and `before` give exactly the asked-for range, oldest first.
    pub fn ranges(store: &mut dyn Store) {
        let messages = [1, 2, 3, 5, 8].map(|id| message(id, "m", None));
        store.append(&[commit(messages.to_vec(), 0)]).unwrap();
        assert_eq!(ids(&store.after(MAIN_ROOM, 2, 100, 10).unwrap()), [3, 5, 8]);
        assert_eq!(ids(&store.after(MAIN_ROOM, 2, 8, 10).unwrap()), [3, 5]);
        assert_eq!(ids(&store.after(MAIN_ROOM, 0, 100, 2).unwrap()), [1, 2]);
        assert_eq!(ids(&store.after(MAIN_ROOM, 8, 100, 10).unwrap()), [0u64; 0]);
        assert_eq!(ids(&store.before(MAIN_ROOM, 5, 2).unwrap()), [2, 3]);
        assert_eq!(ids(&store.before(MAIN_ROOM, 1, 10).unwrap()), [0u64; 0]);
        assert_eq!(
            ids(&store.after("elsewhere", 0, 100, 10).unwrap()),
            [0u64; 0]
        );
        assert_eq!(
            store.summary(MAIN_ROOM).unwrap(),
            Summary {
                messages: 5,
                last_id: 8
            }
        );
    }
}
