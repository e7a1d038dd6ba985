//! The durable store: an ordinary SQLite file (WAL mode) that keeps every
//! public message, so that `sqlite3 miochat.db 'select * from messages
//! order by id desc limit 5'` shows the latest.
//!
//! The file says it is ours in two ways: SQLite's `application_id` header
//! field, and a `schema_version` table that lets a later release migrate
//! it. A file that is not a SQLite database, a SQLite database of another
//! program, or a schema newer than this program's is refused before
//! anything is written to it; an older schema is migrated at start-up, in
//! one transaction (see [`migrate`]).
//!
//! Schema version 2 (the `room` column lets rooms come later without a
//! migration):
//!
//! - `history(id, room, ts, sender, text, cid)`: one row per public
//!   message. `id INTEGER PRIMARY KEY` is the row's own key (ids are one
//!   sequence across rooms), so a new message is an append at the right
//!   edge of the table's B-tree; `ts` is milliseconds since 1970 (UTC), an
//!   integer, which is all the wire's timestamp holds. `(room, cid)` is
//!   unique where a `cid` was given (a partial index: messages without a
//!   `cid` cost it nothing).
//! - `messages`: a view of `history` for people, with the columns of
//!   version 1 (`room, id, ts, sender, text, cid`) and `ts` as on the wire
//!   (`2025-06-15T12:34:56.789Z`): what `select * from messages` shows.
//! - `meta(key, value)`: `epoch` (names the history) and
//!   `reserved_through` (ids up to it may have been handed out).
//! - `schema_version(version)`: one row.
//!
//! Version 1 (the first release) kept the rows themselves in `messages`, a
//! `WITHOUT ROWID` table keyed by `(room, id)` with `ts` as RFC 3339 text:
//! every insert compared the room's text on its way down the B-tree and
//! formatted a timestamp. Version 2 stores a message with a fifth to a
//! third less of the store thread's CPU (`examples/store_cost.rs`; the
//! figures are in `docs/performance.md`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use chrono::DateTime;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::chat::store::{new_epoch, Commit, Duplicate, Store, StoreError, Summary, SyncMode};
use crate::proto::protocol::{ChatMessage, Cid, Timestamp};

/// SQLite's `application_id` for miochat files: "mioc" in ASCII, so that
/// `file(1)` and a glance at the header tell the file apart.
const APPLICATION_ID: i32 = 0x6d69_6f63;

/// The schema this program writes and reads.
const SCHEMA_VERSION: i64 = 2;

/// The table of messages, as version 2 has it. Created empty, filled,
/// then indexed (see [`INDEXES_AND_VIEW`]): a migration copies the rows
/// before the index exists, which builds it in one sorted pass.
const HISTORY_TABLE: &str = "
    CREATE TABLE history (
        id INTEGER PRIMARY KEY,
        room TEXT NOT NULL,
        ts INTEGER NOT NULL,
        sender TEXT NOT NULL,
        text TEXT NOT NULL,
        cid TEXT
    );
";

/// The `cid` index and the `messages` view for people (module docs). The
/// view formats `ts` with integer arithmetic, so the milliseconds are
/// exact (a division by 1000.0 would go through a double).
const INDEXES_AND_VIEW: &str = "
    CREATE UNIQUE INDEX history_by_cid ON history (room, cid) WHERE cid IS NOT NULL;
    CREATE VIEW messages AS
        SELECT room, id,
            strftime('%Y-%m-%dT%H:%M:%S', ts / 1000, 'unixepoch')
                || printf('.%03dZ', ts % 1000) AS ts,
            sender, text, cid
        FROM history;
";

/// The rest of a new file's schema.
const META_TABLES: &str = "
    CREATE TABLE schema_version (version INTEGER NOT NULL);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

/// The most rows one `INSERT` into `history` stores. A commit is stored in
/// chunks of powers of two up to it (a flood's group of 60 to 70 messages
/// in one to six statements, 60 in four), so that a handful of prepared statements
/// (one per size, [`insert_sql`]) cover every commit; each row costs the
/// statement [`INSERT_PARAMS_PER_ROW`] parameters, so the largest has 321,
/// far below any SQLite's limit on parameters (999 before 3.32, 32766
/// since).
const MAX_CHUNK: usize = 64;

/// Parameters per row of [`insert_sql`] (`id, ts, sender, text, cid`; the
/// room is bound once, as `?1`).
const INSERT_PARAMS_PER_ROW: usize = 5;

/// The rows of the next chunk of a commit with `left` rows still to store:
/// the largest power of two that fits, up to [`MAX_CHUNK`].
fn chunk_len(left: usize) -> usize {
    debug_assert!(left > 0);
    MAX_CHUNK.min(1 << left.ilog2())
}

/// The `INSERT` of `rows` messages into `history`: one statement per chunk
/// instead of one per message saves most of SQLite's per-statement work
/// (the step, the reset, opening the cursors). A row whose `cid` is
/// already stored (or stored earlier in the same statement) is skipped.
fn insert_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|row| {
            let first = 2 + row * INSERT_PARAMS_PER_ROW;
            format!(
                "(?{first}, ?1, ?{}, ?{}, ?{}, ?{})",
                first + 1,
                first + 2,
                first + 3,
                first + 4
            )
        })
        .collect();
    format!(
        "INSERT INTO history (id, room, ts, sender, text, cid) VALUES {} ON CONFLICT DO NOTHING",
        values.join(", ")
    )
}

/// Prepared statements kept by the connection: the seven chunk sizes'
/// inserts (up to [`MAX_CHUNK`]) and the handful of queries, with room to
/// spare (rusqlite's default, 16, would be just enough).
const STATEMENT_CACHE: usize = 32;

/// The columns every query reads, in the order [`from_row`] expects.
const COLUMNS: &str = "id, ts, sender, text, cid";

/// Takes the file's `flock` for this process, or says it is taken. A
/// `flock` is apart from the `fcntl` locks SQLite takes (on Linux the two
/// kinds never meet), so `sqlite3` and other readers are not kept out: only
/// a second server, which would hand out the same ids. A lock that cannot
/// be taken for another reason (a file system without `flock`) is logged,
/// and the store works without it: `None`.
fn lock(path: &Path) -> Result<Option<File>, StoreError> {
    // Read-only is enough to lock, and opens a file that is read-only too
    // (the store then reports that it cannot write, as for a full disk).
    let locked = File::open(path).and_then(|file| {
        // SAFETY: flock only reads the descriptor, which `file` keeps open.
        match unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } {
            0 => Ok(file),
            _ => Err(std::io::Error::last_os_error()),
        }
    });
    match locked {
        Ok(file) => Ok(Some(file)),
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => Err(StoreError::InUse {
            path: path.to_owned(),
        }),
        Err(err) => {
            log::warn!(
                "{}: cannot lock it ({err}); nothing keeps a second server out",
                path.display()
            );
            Ok(None)
        }
    }
}

/// A miochat database file.
#[derive(Debug)]
pub struct SqliteStore {
    /// The one connection: it writes, and it reads for the loop too.
    /// (Declared before `_lock`, so that it is closed first: closing any
    /// descriptor of the file drops every `fcntl` lock this process holds
    /// on it, SQLite's included.)
    conn: Connection,
    /// Names this history (`meta.epoch`).
    epoch: String,
    /// `meta.reserved_through`, as last committed.
    reserved: u64,
    /// [`insert_sql`] for 1, 2, 4 ... [`MAX_CHUNK`] rows (index: the
    /// power of two), made once: the statement cache is keyed by the text.
    inserts: Vec<String>,
    /// The file's `flock`, held while the store lives ([`lock`]), so that
    /// a second server refuses to start on the same file.
    _lock: Option<File>,
}

/// Ids and counts are unsigned on the wire and `INTEGER` (signed 64-bit)
/// in SQLite; ids never come near 2^63, and a bound above it means "no
/// bound".
fn to_sql(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn from_sql(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// One `history` row (per [`COLUMNS`]) as a message.
fn from_row(row: &Row<'_>) -> rusqlite::Result<Arc<ChatMessage>> {
    let millis: i64 = row.get(1)?;
    let ts = DateTime::from_timestamp_millis(millis)
        .ok_or_else(|| rusqlite::Error::IntegralValueOutOfRange(1, millis))?;
    let cid: Option<String> = row.get(4)?;
    Ok(Arc::new(ChatMessage {
        id: from_sql(row.get(0)?),
        ts: Timestamp(ts),
        from: row.get(2)?,
        text: row.get(3)?,
        cid: cid.and_then(Cid::new),
    }))
}

/// Brings a version-1 file to [`SCHEMA_VERSION`], in one transaction: a
/// crash or an error on the way leaves it as it was (version 1, which the
/// next start migrates again). The rows are copied into `history` in id
/// order, each `ts` parsed as version 1 wrote it (RFC 3339) into
/// milliseconds; a `ts` that does not parse stops the migration.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(HISTORY_TABLE)?;
    {
        let mut old =
            tx.prepare("SELECT room, id, ts, sender, text, cid FROM messages ORDER BY id")?;
        let mut insert = tx.prepare(
            "INSERT INTO history (id, room, ts, sender, text, cid) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut rows = old.query([])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(1)?;
            let ts: String = row.get(2)?;
            let ts = DateTime::parse_from_rfc3339(&ts).map_err(|err| StoreError::NotMiochat {
                path: path.to_owned(),
                reason: format!("message {id} has the timestamp {ts:?} ({err})"),
            })?;
            insert.execute(params![
                id,
                row.get::<_, String>(0)?,
                ts.timestamp_millis(),
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, Option<String>>(5)?,
            ])?;
        }
    }
    tx.execute_batch(&format!(
        "DROP TABLE messages; {INDEXES_AND_VIEW}
         UPDATE schema_version SET version = {SCHEMA_VERSION};"
    ))?;
    tx.commit()?;
    Ok(())
}

impl SqliteStore {
    /// Opens `path`, creating a new database (and a new epoch) when the
    /// file is missing or empty. See the module docs for what is refused.
    pub fn open(path: &Path, sync: SyncMode) -> Result<Self, StoreError> {
        // SQLite creates a missing file; then it can be locked.
        let mut conn = Connection::open(path)?;
        let lock = lock(path)?;
        let not_ours = |reason: &str| StoreError::NotMiochat {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        // The first read of the header: a file that is not SQLite fails here,
        // before anything is written.
        let application_id: i32 = conn
            .pragma_query_value(None, "application_id", |row| row.get(0))
            .map_err(|err| match err.sqlite_error_code() {
                Some(rusqlite::ErrorCode::NotADatabase) => not_ours("not a SQLite database"),
                _ => StoreError::Sqlite(err),
            })?;
        let tables: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))?;
        if application_id != APPLICATION_ID {
            if application_id != 0 || tables != 0 {
                return Err(not_ours("a SQLite database of another program"));
            }
            Self::create(&conn)?;
        }
        let version: Option<i64> = conn
            .query_row("SELECT max(version) FROM schema_version", [], |row| {
                row.get(0)
            })
            .map_err(|_| not_ours("no schema_version table"))?;
        let migrating = match version {
            Some(SCHEMA_VERSION) => false,
            Some(1) => true,
            Some(found) if found > SCHEMA_VERSION => {
                return Err(StoreError::NewerSchema {
                    path: path.to_owned(),
                    found,
                    known: SCHEMA_VERSION,
                })
            }
            _ => return Err(not_ours("an unknown schema version")),
        };
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let synchronous = match sync {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", synchronous)?;
        if migrating {
            migrate(&mut conn, path)?;
            log::info!(
                "{}: schema version 1 migrated to {SCHEMA_VERSION}",
                path.display()
            );
        }
        let meta = |key: &str| -> Result<Option<String>, StoreError> {
            Ok(conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                    row.get(0)
                })
                .optional()?)
        };
        let epoch = meta("epoch")?.ok_or_else(|| not_ours("no epoch"))?;
        let reserved = meta("reserved_through")?
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| not_ours("no reserved_through"))?;
        // The cache holds the chunks' inserts besides the queries.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(SqliteStore {
            conn,
            epoch,
            reserved,
            inserts: (0..=MAX_CHUNK.ilog2())
                .map(|power| insert_sql(1 << power))
                .collect(),
            _lock: lock,
        })
    }

    /// Writes the schema and a new epoch into an empty database.
    fn create(conn: &Connection) -> Result<(), StoreError> {
        conn.pragma_update(None, "application_id", APPLICATION_ID)?;
        conn.execute_batch(&format!(
            "BEGIN; {META_TABLES} {HISTORY_TABLE} {INDEXES_AND_VIEW}
             INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION});
             INSERT INTO meta (key, value) VALUES ('epoch', '{}'), ('reserved_through', '0');
             COMMIT;",
            new_epoch()
        ))?;
        Ok(())
    }

    /// Stores the commits in one transaction; see [`Store::append`].
    fn append_in_transaction(
        &mut self,
        commits: &[Commit],
    ) -> Result<(Vec<Vec<Duplicate>>, u64), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut duplicates = Vec::with_capacity(commits.len());
        let mut reserve = self.reserved;
        {
            let mut by_cid = tx.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM history WHERE room = ?1 AND cid = ?2"
            ))?;
            for commit in commits {
                let mut found = Vec::new();
                let mut rest = &commit.messages[..];
                while !rest.is_empty() {
                    let (chunk, later) = rest.split_at(chunk_len(rest.len()));
                    rest = later;
                    let mut insert =
                        tx.prepare_cached(&self.inserts[chunk.len().trailing_zeros() as usize])?;
                    insert.raw_bind_parameter(1, &*commit.room)?;
                    for (row, message) in chunk.iter().enumerate() {
                        let first = 2 + row * INSERT_PARAMS_PER_ROW;
                        insert.raw_bind_parameter(first, to_sql(message.id))?;
                        insert.raw_bind_parameter(first + 1, message.ts.0.timestamp_millis())?;
                        insert.raw_bind_parameter(first + 2, &message.from)?;
                        insert.raw_bind_parameter(first + 3, &message.text)?;
                        insert
                            .raw_bind_parameter(first + 4, message.cid.as_ref().map(Cid::as_str))?;
                    }
                    let missing = chunk.len() - insert.raw_execute()?;
                    if missing == 0 {
                        continue;
                    }
                    let known = found.len();
                    // Some rows were not stored. Ids are never reused, so
                    // only a cid can have clashed (with a row stored earlier,
                    // or earlier in this chunk): a message with a cid is a
                    // duplicate when the row holding its cid is another's.
                    for message in chunk {
                        let Some(cid) = &message.cid else { continue };
                        let stored =
                            by_cid.query_row(params![&*commit.room, cid.as_str()], from_row)?;
                        if stored.id != message.id {
                            found.push(Duplicate {
                                id: message.id,
                                stored,
                            });
                        }
                    }
                    if found.len() - known != missing {
                        // A row without a clashing cid was refused: its id
                        // was already used, which must not happen.
                        return Err(rusqlite::Error::QueryReturnedNoRows.into());
                    }
                }
                duplicates.push(found);
                reserve = reserve.max(commit.reserve_through);
            }
        }
        if reserve > self.reserved {
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'reserved_through'",
                [reserve.to_string()],
            )?;
        }
        tx.commit()?;
        Ok((duplicates, reserve))
    }

    /// Runs a query for messages (per [`COLUMNS`]).
    fn select(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Arc<ChatMessage>>, StoreError> {
        let mut statement = self.conn.prepare_cached(sql)?;
        let rows = statement.query_map(params, from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Store for SqliteStore {
    fn epoch(&self) -> &str {
        &self.epoch
    }

    fn reserved_through(&self) -> u64 {
        self.reserved
    }

    fn may_block(&self) -> bool {
        true
    }

    fn keeps_everything(&self) -> bool {
        true
    }

    fn append(&mut self, commits: &[Commit]) -> Result<Vec<Vec<Duplicate>>, StoreError> {
        let (duplicates, reserved) = self.append_in_transaction(commits)?;
        self.reserved = reserved;
        Ok(duplicates)
    }

    fn after(
        &mut self,
        room: &str,
        since: u64,
        below: u64,
        limit: usize,
    ) -> Result<Vec<Arc<ChatMessage>>, StoreError> {
        self.select(
            &format!(
                "SELECT {COLUMNS} FROM history WHERE room = ?1 AND id > ?2 AND id < ?3
                 ORDER BY id LIMIT ?4"
            ),
            params![room, to_sql(since), to_sql(below), to_sql(limit as u64)],
        )
    }

    fn before(
        &mut self,
        room: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Arc<ChatMessage>>, StoreError> {
        let mut page = self.select(
            &format!(
                "SELECT {COLUMNS} FROM history WHERE room = ?1 AND id < ?2
                 ORDER BY id DESC LIMIT ?3"
            ),
            params![room, to_sql(before), to_sql(limit as u64)],
        )?;
        page.reverse();
        Ok(page)
    }

    fn summary(&mut self, room: &str) -> Result<Summary, StoreError> {
        let (messages, last_id): (i64, Option<i64>) = self.conn.query_row(
            "SELECT count(*), max(id) FROM history WHERE room = ?1",
            [room],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        Ok(Summary {
            messages: from_sql(messages),
            last_id: last_id.map_or(0, from_sql),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::store::contract::{self, commit, message};
    use crate::chat::store::{MAIN_ROOM, RESERVE_BLOCK};
    use std::path::PathBuf;

    /// A new database in a temporary directory (removed with it).
    fn fresh() -> (tempfile::TempDir, PathBuf, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db");
        let store = SqliteStore::open(&path, SyncMode::Full).unwrap();
        (dir, path, store)
    }

    #[test]
    fn group_commit_and_reservation() {
        contract::group_commit_and_reservation(&mut fresh().2);
    }

    #[test]
    fn cid_dedupe() {
        contract::cid_dedupe(&mut fresh().2);
    }

    #[test]
    fn ranges() {
        contract::ranges(&mut fresh().2);
    }

    /// A commit long enough for three chunks ([`MAX_CHUNK`], then 4, then
    /// 2 rows) mixing new messages, messages without a cid, cids stored by
    /// an earlier commit, and cids repeated within the commit (in the same
    /// chunk and across chunks), then a commit of another room reusing a
    /// cid: exactly the repeats are duplicates, in order, each with the
    /// message that holds its cid.
    #[test]
    fn duplicates_within_a_commit_across_chunks_and_from_earlier_commits() {
        let (_dir, _path, mut store) = fresh();
        let first = message(1, "first", Some("c-1"));
        store
            .append(&[commit(vec![Arc::clone(&first)], 0)])
            .unwrap();
        // Ids 2 to 71: 70 messages, stored as chunks of 64, 4 and 2.
        let cid_of = |id: u64| match id {
            3 => Some("c-1".to_owned()),
            10..=12 => None,
            40 => Some("c-2".to_owned()),
            66 => Some("c-5".to_owned()),
            71 => Some("c-70".to_owned()),
            _ => Some(format!("c-{id}")),
        };
        let messages: Vec<_> = (2..=71)
            .map(|id| message(id, &format!("m{id}"), cid_of(id).as_deref()))
            .collect();
        let by_id = |id: u64| Arc::clone(&messages[usize::try_from(id - 2).unwrap()]);
        let elsewhere = Commit {
            room: "elsewhere".into(),
            messages: vec![message(72, "other room", Some("c-1"))],
            reserve_through: 0,
        };
        let duplicates = store
            .append(&[commit(messages.clone(), 0), elsewhere])
            .unwrap();
        let duplicate = |id, stored| Duplicate { id, stored };
        assert_eq!(
            duplicates,
            [
                vec![
                    duplicate(3, Arc::clone(&first)),
                    duplicate(40, by_id(2)),
                    duplicate(66, by_id(5)),
                    duplicate(71, by_id(70)),
                ],
                vec![],
            ]
        );
        let stored: Vec<u64> = store
            .after(MAIN_ROOM, 0, u64::MAX, 100)
            .unwrap()
            .iter()
            .map(|message| message.id)
            .collect();
        let expected: Vec<u64> = (1..=71)
            .filter(|id| ![3, 40, 66, 71].contains(id))
            .collect();
        assert_eq!(stored, expected);
        assert_eq!(store.after("elsewhere", 0, u64::MAX, 10).unwrap().len(), 1);
    }

    #[test]
    fn everything_survives_reopening_under_the_same_epoch() {
        let (_dir, path, mut store) = fresh();
        let original = message(7, "kept 😀", Some("c-7"));
        store
            .append(&[commit(vec![Arc::clone(&original)], RESERVE_BLOCK)])
            .unwrap();
        let epoch = store.epoch().to_owned();
        drop(store);
        let mut again = SqliteStore::open(&path, SyncMode::Normal).unwrap();
        assert_eq!(again.epoch(), epoch);
        assert_eq!(again.reserved_through(), RESERVE_BLOCK);
        assert_eq!(
            again.before(MAIN_ROOM, u64::MAX, 10).unwrap(),
            [Arc::clone(&original)]
        );
        // The cid is still known after the restart.
        let resent = commit(vec![message(RESERVE_BLOCK + 1, "again", Some("c-7"))], 0);
        assert_eq!(
            again.append(&[resent]).unwrap(),
            [vec![Duplicate {
                id: RESERVE_BLOCK + 1,
                stored: original
            }]]
        );
        // Another file is another history.
        let (_other_dir, _, other) = fresh();
        assert_ne!(other.epoch(), epoch);
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_alone() {
        let (_dir, path, store) = fresh();
        store
            .conn
            .execute(
                "UPDATE schema_version SET version = ?1",
                [SCHEMA_VERSION + 1],
            )
            .unwrap();
        drop(store);
        let before = std::fs::read(&path).unwrap();
        let err = SqliteStore::open(&path, SyncMode::Full).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NewerSchema {
                    found,
                    known: SCHEMA_VERSION,
                    ..
                } if found == SCHEMA_VERSION + 1
            ),
            "{err}"
        );
        assert!(err.to_string().contains("newer miochat"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    /// The schema of the first release (version 1), as it created files.
    const SCHEMA_V1: &str = "
        CREATE TABLE schema_version (version INTEGER NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE messages (
            room TEXT NOT NULL,
            id INTEGER NOT NULL,
            ts TEXT NOT NULL,
            sender TEXT NOT NULL,
            text TEXT NOT NULL,
            cid TEXT,
            PRIMARY KEY (room, id)
        ) WITHOUT ROWID;
        CREATE UNIQUE INDEX messages_by_cid ON messages (room, cid) WHERE cid IS NOT NULL;
    ";

    /// Every row of `messages` as text, as `select * from messages order
    /// by id` shows it: the same under version 1 (a table) and 2 (a view).
    fn shown(conn: &Connection) -> Vec<[Option<String>; 6]> {
        let mut statement = conn
            .prepare("SELECT room, id, ts, sender, text, cid FROM messages ORDER BY id")
            .unwrap();
        let rows = statement.query_map([], |row| {
            let text = |i| -> rusqlite::Result<Option<String>> {
                Ok(match row.get_ref(i)? {
                    rusqlite::types::ValueRef::Null => None,
                    rusqlite::types::ValueRef::Integer(n) => Some(n.to_string()),
                    value => Some(value.as_str()?.to_owned()),
                })
            };
            Ok([text(0)?, text(1)?, text(2)?, text(3)?, text(4)?, text(5)?])
        });
        rows.unwrap().collect::<Result<_, _>>().unwrap()
    }

    /// A version-1 file holding `messages` (main room) and one message of
    /// another room, written as the first release wrote them.
    fn version_1_file(path: &Path, messages: &[Arc<ChatMessage>], ts_of_9: &str) {
        let conn = Connection::open(path).unwrap();
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA_V1}
             INSERT INTO schema_version (version) VALUES (1);
             INSERT INTO meta (key, value) VALUES ('epoch', 'old-epoch'),
                 ('reserved_through', '{RESERVE_BLOCK}');
             COMMIT;"
        ))
        .unwrap();
        let mut insert = conn
            .prepare("INSERT INTO messages (room, id, ts, sender, text, cid) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
            .unwrap();
        for message in messages {
            insert
                .execute(params![
                    MAIN_ROOM,
                    to_sql(message.id),
                    message.ts.to_string(),
                    message.from,
                    message.text,
                    message.cid.as_ref().map(Cid::as_str),
                ])
                .unwrap();
        }
        insert
            .execute(params![
                "elsewhere",
                9,
                ts_of_9,
                "bob",
                "other room",
                None::<&str>
            ])
            .unwrap();
    }

    #[test]
    fn a_version_1_file_is_migrated_with_every_row_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        let messages = [
            message(1, "first", None),
            message(2, "with a cid 😀", Some("c-2")),
            message(5, "quote ' and \"", Some("c-5")),
            message(8, "", None),
        ];
        version_1_file(&path, &messages, "2025-06-15T12:34:56.007Z");
        let v1_rows = shown(&Connection::open(&path).unwrap());

        let mut store = SqliteStore::open(&path, SyncMode::Full).unwrap();
        assert_eq!(store.epoch(), "old-epoch");
        assert_eq!(store.reserved_through(), RESERVE_BLOCK);
        assert_eq!(
            store.before(MAIN_ROOM, u64::MAX, 10).unwrap(),
            messages.to_vec()
        );
        let other = store.after("elsewhere", 0, u64::MAX, 10).unwrap();
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].ts.to_string(), "2025-06-15T12:34:56.007Z");
        assert_eq!((other[0].id, &*other[0].from), (9, "bob"));
        // People see what they saw before, through the view.
        assert_eq!(shown(&store.conn), v1_rows);
        let version: i64 = store
            .conn
            .query_row("SELECT version FROM schema_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        // The cids are still known.
        let resent = commit(vec![message(RESERVE_BLOCK + 1, "again", Some("c-5"))], 0);
        assert_eq!(
            store.append(&[resent]).unwrap(),
            [vec![Duplicate {
                id: RESERVE_BLOCK + 1,
                stored: Arc::clone(&messages[2])
            }]]
        );
        drop(store);
        // Opening it again finds version 2: nothing is migrated twice.
        let mut again = SqliteStore::open(&path, SyncMode::Full).unwrap();
        assert_eq!(
            again.before(MAIN_ROOM, u64::MAX, 10).unwrap(),
            messages.to_vec()
        );
    }

    #[test]
    fn a_migration_that_fails_leaves_the_version_1_file_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        version_1_file(&path, &[message(1, "kept", None)], "not a time");
        let conn = Connection::open(&path).unwrap();
        let v1_rows = shown(&conn);
        drop(conn);
        let err = SqliteStore::open(&path, SyncMode::Full).unwrap_err();
        assert!(err.to_string().contains("\"not a time\""), "{err}");
        let conn = Connection::open(&path).unwrap();
        assert_eq!(shown(&conn), v1_rows);
        let version: i64 = conn
            .query_row("SELECT version FROM schema_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, 1);
    }

    #[test]
    fn people_see_timestamps_as_on_the_wire() {
        let (_dir, _path, mut store) = fresh();
        let said = message(3, "hello", None);
        store.append(&[commit(vec![Arc::clone(&said)], 0)]).unwrap();
        let rows = shown(&store.conn);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0][2].as_deref(), Some(&*said.ts.to_string()));
    }

    #[test]
    fn a_second_store_on_the_same_file_is_refused_until_the_first_is_gone() {
        let (_dir, path, mut first) = fresh();
        first
            .append(&[commit(vec![message(1, "one", None)], 0)])
            .unwrap();
        let err = SqliteStore::open(&path, SyncMode::Full).unwrap_err();
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
        assert!(
            err.to_string().contains("in use by another mioserver"),
            "{err}"
        );
        // The first store still works, its SQLite locks intact.
        first
            .append(&[commit(vec![message(2, "two", None)], 0)])
            .unwrap();
        // Readers are not kept out.
        let reader = Connection::open(&path).unwrap();
        let count: i64 = reader
            .query_row("SELECT count(*) FROM messages", [], |row| row.get(0))
            .unwrap();
        assert_eq!(count, 2);
        drop(reader);
        drop(first);
        let mut second = SqliteStore::open(&path, SyncMode::Full).unwrap();
        assert_eq!(second.after(MAIN_ROOM, 0, u64::MAX, 10).unwrap().len(), 2);
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        let text = "these are my notes, not a database\n".repeat(200);
        std::fs::write(&path, &text).unwrap();
        let err = SqliteStore::open(&path, SyncMode::Full).unwrap_err();
        assert!(err.to_string().contains("not a SQLite database"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn another_programs_database_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        let other = Connection::open(&path).unwrap();
        other
            .execute_batch("CREATE TABLE recipes (name TEXT); INSERT INTO recipes VALUES ('soup');")
            .unwrap();
        drop(other);
        let before = std::fs::read(&path).unwrap();
        let err = SqliteStore::open(&path, SyncMode::Full).unwrap_err();
        assert!(err.to_string().contains("another program"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}
