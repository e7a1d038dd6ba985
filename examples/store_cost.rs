//! What storing one public message costs the store's thread, in CPU time:
//! the figure behind the durable flood's CPU per delivery, measured without
//! the loop, the sockets or chatbench, so that a change to the store can be
//! judged in seconds and reproduced on a busy machine.
//!
//! It drives the real [`SqliteStore`] as the store thread does: group
//! commits of `--group` messages (what one round of a flood hands over),
//! each commit one transaction with its fsync, into a new database file in
//! a temporary directory on this machine's disk (next to the working
//! directory, not in a tmpfs where an fsync is free). The messages are
//! built before the clock starts and look like a flood's: a 64-byte text,
//! a sender's name, a timestamp, and (in the `cid` runs) lineclient's
//! 32-hex-digit `cid`.
//!
//! The clock is the thread's own CPU time (`getrusage(RUSAGE_THREAD)`),
//! which other processes on the machine disturb far less than wall time;
//! user and system time are printed apart (the system part is mostly the
//! writes and fsyncs, and moves with the disk's other traffic), and wall
//! time beside them. Each configuration runs `--rounds`
//! times on a fresh file and the median is reported, with every round.
//!
//! Run it with `cargo run --release --example store_cost` (options:
//! `--messages N`, `--group N`, `--rounds N`, `--sync full|normal`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::DateTime;
use miochat::chat::store::sqlite::SqliteStore;
use miochat::chat::store::{Commit, Store, SyncMode, MAIN_ROOM, RESERVE_BLOCK};
use miochat::proto::protocol::{ChatMessage, Cid, Timestamp};

/// What to measure, from the command line.
struct Options {
    /// Messages stored per round: enough commits (hundreds) that the
    /// file's growth and the fsyncs are part of the figure.
    messages: u64,
    /// Messages per group commit: about what one round of a 100-client
    /// flood hands the store thread (60 to 70 messages per fsync).
    group: u64,
    /// Rounds per configuration; the median is reported.
    rounds: usize,
    /// `--sync` of the store.
    sync: SyncMode,
}

impl Options {
    fn parse() -> Result<Options, String> {
        let mut options = Options {
            messages: 30_000,
            group: 60,
            rounds: 5,
            sync: SyncMode::Full,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args.next().ok_or(format!("{flag} needs a value"))?;
            let number = || value.parse::<u64>().map_err(|err| format!("{flag}: {err}"));
            match flag.as_str() {
                "--messages" => options.messages = number()?.max(1),
                "--group" => options.group = number()?.max(1),
                "--rounds" => options.rounds = usize::try_from(number()?.max(1)).unwrap_or(1),
                "--sync" => {
                    options.sync = match value.as_str() {
                        "full" => SyncMode::Full,
                        "normal" => SyncMode::Normal,
                        _ => return Err("--sync is full or normal".into()),
                    }
                }
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        Ok(options)
    }
}

/// The calling thread's CPU time so far: (user, system).
fn thread_cpu() -> (Duration, Duration) {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let micros = |time: libc::timeval| time.tv_sec as u64 * 1_000_000 + time.tv_usec as u64;
    (
        Duration::from_micros(micros(usage.ru_utime)),
        Duration::from_micros(micros(usage.ru_stime)),
    )
}

/// What one round cost per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cost {
    /// User + system CPU time (the figure that is sorted on).
    cpu: Duration,
    /// The user part: SQLite and our code.
    user: Duration,
    /// The system part: mostly the writes and the fsyncs.
    system: Duration,
    /// Wall time, which the fsyncs' waits dominate.
    wall: Duration,
}

/// The commits of one round: ids one sequence, a reservation every
/// [`RESERVE_BLOCK`] ids as the loop makes them, `cid`s when asked.
fn commits(options: &Options, with_cid: bool) -> Vec<Commit> {
    let text = "x".repeat(64);
    let start = DateTime::from_timestamp(1_750_000_000, 0).expect("an instant");
    let mut commits = Vec::new();
    let mut id = 1;
    while id <= options.messages {
        let last = (id + options.group - 1).min(options.messages);
        let messages = (id..=last)
            .map(|id| {
                Arc::new(ChatMessage {
                    id,
                    ts: Timestamp(start + chrono::Duration::microseconds(id as i64 * 137)),
                    from: format!("bench-{}", id % 10),
                    text: text.clone(),
                    cid: with_cid
                        .then(|| Cid::new(format!("{:032x}", u128::from(id) * 0x9e37_79b9)))
                        .flatten(),
                })
            })
            .collect();
        commits.push(Commit {
            room: MAIN_ROOM.into(),
            messages,
            reserve_through: (last / RESERVE_BLOCK + 1) * RESERVE_BLOCK,
        });
        id = last + 1;
    }
    commits
}

/// One round: a new file, every commit stored one group at a time.
fn round(options: &Options, dir: &Path, with_cid: bool) -> Cost {
    let path = dir.join("store_cost.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let mut store = SqliteStore::open(&path, options.sync).expect("the database opens");
    let commits = commits(options, with_cid);
    let ((user, system), wall) = (thread_cpu(), Instant::now());
    for commit in commits {
        let duplicates = store.append(&[commit]).expect("the commit is stored");
        assert!(duplicates.iter().all(Vec::is_empty), "no cid repeats");
    }
    let (user_after, system_after) = thread_cpu();
    let per = |total: Duration| total / u32::try_from(options.messages).unwrap_or(u32::MAX);
    let (user, system) = (per(user_after - user), per(system_after - system));
    Cost {
        cpu: user + system,
        user,
        system,
        wall: per(wall.elapsed()),
    }
}

fn main() {
    let options = Options::parse().unwrap_or_else(|err| {
        eprintln!("store_cost: {err}");
        std::process::exit(2);
    });
    // Next to the working directory: /tmp may be a tmpfs.
    let dir = tempfile::tempdir_in(".").expect("a temporary directory");
    println!(
        "{} messages per round in group commits of {}, --sync {:?}, {} rounds (median, then each round)",
        options.messages, options.group, options.sync, options.rounds
    );
    for with_cid in [false, true] {
        let mut runs: Vec<Cost> = (0..options.rounds)
            .map(|_| round(&options, dir.path(), with_cid))
            .collect();
        let each: Vec<String> = runs
            .iter()
            .map(|cost| format!("{:.2}", cost.cpu.as_secs_f64() * 1e6))
            .collect();
        runs.sort();
        let median = runs[runs.len() / 2];
        let micros = |time: Duration| time.as_secs_f64() * 1e6;
        println!(
            "{:<6}  CPU {:.2} µs/message (user {:.2}, system {:.2}; wall {:.2})   each round: {}",
            if with_cid { "cid" } else { "no cid" },
            micros(median.cpu),
            micros(median.user),
            micros(median.system),
            micros(median.wall),
            each.join(" "),
        );
    }
}
