//! The durable store: an ordinary SQLite file (WAL mode) that keeps every
//! public message, so that `sqlite3 miochat.db 'select * from messages
//! order by id desc limit 5'` shows the latest.
//!
//! The file says it is ours in two ways: SQLite's `application_id` header
//! field, and a `schema_version` table that lets a later release migrate
//! it. A file that is not a SQLite database, a SQLite database of another
//! program, or a schema newer than this program's is refused before
//! anything is written to it.
//!
//! Tables (the `room` column lets rooms come later without a migration):
//!
//! - `messages(room, id, ts, sender, text, cid)`: one row per public
//!   message, `ts` as on the wire; the key is `(room, id)` and `(room,
//!   cid)` is unique where a `cid` was given.
//! - `meta(key, value)`: `epoch` (names the history) and
//!   `reserved_through` (ids up to it may have been handed out).
//! - `schema_version(version)`: one row.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::chat::store::{new_epoch, Commit, Duplicate, Store, StoreError, Summary, SyncMode};
use crate::proto::protocol::{ChatMessage, Cid, Timestamp};

/// SQLite's `application_id` for miochat files: "mioc" in ASCII, so that
/// `file(1)` and a glance at the header tell the file apart.
const APPLICATION_ID: i32 = 0x6d69_6f63;

/// The schema this program writes and reads.
const SCHEMA_VERSION: i64 = 1;

/// The schema of a new file, created in one transaction.
const SCHEMA: &str = "
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

/// The columns every query reads, in the order [`from_row`] expects.
const COLUMNS: &str = "id, ts, sender, text, cid";

/// A miochat database file.
#[derive(Debug)]
pub struct SqliteStore {
    /// The one connection: it writes, and it reads for the loop too.
    conn: Connection,
    /// Names this history (`meta.epoch`).
    epoch: String,
    /// `meta.reserved_through`, as last committed.
    reserved: u64,
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

/// One `messages` row (per [`COLUMNS`]) as a message.
fn from_row(row: &Row<'_>) -> rusqlite::Result<Arc<ChatMessage>> {
    let ts: String = row.get(1)?;
    let ts = DateTime::parse_from_rfc3339(&ts)
        .map_err(|err| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, err.into())
        })?
        .with_timezone(&Utc);
    let cid: Option<String> = row.get(4)?;
    Ok(Arc::new(ChatMessage {
        id: from_sql(row.get(0)?),
        ts: Timestamp(ts),
        from: row.get(2)?,
        text: row.get(3)?,
        cid: cid.and_then(Cid::new),
    }))
}

impl SqliteStore {
    /// Opens `path`, creating a new database (and a new epoch) when the
    /// file is missing or empty. See the module docs for what is refused.
    pub fn open(path: &Path, sync: SyncMode) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
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
        match version {
            Some(SCHEMA_VERSION) => {}
            Some(found) if found > SCHEMA_VERSION => {
                return Err(StoreError::NewerSchema {
                    path: path.to_owned(),
                    found,
                    known: SCHEMA_VERSION,
                })
            }
            _ => return Err(not_ours("an unknown schema version")),
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let synchronous = match sync {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", synchronous)?;
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
        Ok(SqliteStore {
            conn,
            epoch,
            reserved,
        })
    }

    /// Writes the schema and a new epoch into an empty database.
    fn create(conn: &Connection) -> Result<(), StoreError> {
        conn.pragma_update(None, "application_id", APPLICATION_ID)?;
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA}
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
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (room, id, ts, sender, text, cid)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
            )?;
            let mut by_cid = tx.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM messages WHERE room = ?1 AND cid = ?2"
            ))?;
            for commit in commits {
                let mut found = Vec::new();
                for message in &commit.messages {
                    let cid = message.cid.as_ref().map(Cid::as_str);
                    let inserted = insert.execute(params![
                        &*commit.room,
                        to_sql(message.id),
                        message.ts.to_string(),
                        message.from,
                        message.text,
                        cid,
                    ])?;
                    if inserted == 0 {
                        // Ids are never reused, so only the cid can clash.
                        let stored = by_cid.query_row(params![&*commit.room, cid], from_row)?;
                        found.push(Duplicate {
                            id: message.id,
                            stored,
                        });
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
                "SELECT {COLUMNS} FROM messages WHERE room = ?1 AND id > ?2 AND id < ?3
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
                "SELECT {COLUMNS} FROM messages WHERE room = ?1 AND id < ?2
                 ORDER BY id DESC LIMIT ?3"
            ),
            params![room, to_sql(before), to_sql(limit as u64)],
        )?;
        page.reverse();
        Ok(page)
    }

    fn summary(&mut self, room: &str) -> Result<Summary, StoreError> {
        let (messages, last_id): (i64, Option<i64>) = self.conn.query_row(
            "SELECT count(*), max(id) FROM messages WHERE room = ?1",
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
            .execute("UPDATE schema_version SET version = 2", [])
            .unwrap();
        drop(store);
        let before = std::fs::read(&path).unwrap();
        let err = SqliteStore::open(&path, SyncMode::Full).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NewerSchema {
                    found: 2,
                    known: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("newer miochat"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
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
