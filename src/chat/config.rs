//! The chat server's settings: the loop's own ([`LoopConfig`]) and the
//! chat's, with their defaults. The command line fills them in; tests build
//! them directly.

use std::path::PathBuf;
use std::time::Duration;

use crate::chat::cluster::RedisUrl;
use crate::chat::store::{SyncMode, IN_MEMORY};
use crate::evloop::config::LoopConfig;
use crate::proto::rate_limit::RateLimit;

/// Everything a chat server is started with. Each field is one flag of
/// `mioserver`, except `net`, which holds the loop's flags.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The event loop's limits and timers: address, sizes, deadlines.
    pub net: LoopConfig,
    /// Time from the upgrade to a successful `join`, else close 1008
    /// (`--join-timeout`).
    pub join_timeout: Duration,
    /// Public messages kept and sent on join (`--history`).
    pub history: usize,
    /// Longest chat `text` in characters; above it `error` `too_long`
    /// (`--max-text-chars`).
    pub max_text_chars: usize,
    /// The most messages a resume (`join` with `since`) sends
    /// (`--max-resume`).
    pub max_resume: usize,
    /// Requests per second one connection may sustain; 0 turns limiting off
    /// (`--rate-limit`).
    pub rate_limit: f64,
    /// Requests a connection may send at once before the limit applies
    /// (`--rate-burst`).
    pub rate_burst: u32,
    /// The history database (`--db`); [`IN_MEMORY`] keeps nothing. The
    /// library's default is memory, so that a server embedded in a test
    /// writes no file; `mioserver`'s flag defaults to `miochat.db`.
    pub db: PathBuf,
    /// How hard each group commit works to survive (`--sync`).
    pub sync: SyncMode,
    /// Cluster mode: the Redis every node of the cluster shares (`--redis`);
    /// `db` and `sync` are then not used. `None`: a single server.
    pub redis: Option<RedisUrl>,
}

/// How many public messages are sent on join: the default N of the
/// protocol, enough to pick up a conversation in progress.
pub const DEFAULT_HISTORY: usize = 100;

/// The longest chat text, in characters: the protocol's default, a long
/// paragraph but not a pasted file.
pub const DEFAULT_MAX_TEXT_CHARS: usize = 4000;

/// The most messages a resume sends: a few screens of scrollback; a client
/// that missed more pages back with `history`.
pub const DEFAULT_MAX_RESUME: usize = 1000;

/// How long a client has from the upgrade to a successful `join`: the
/// protocol's default, ample for a person typing a name, short enough that
/// connections that never join do not pile up.
pub const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The defaults of the chat's settings, the one place they are written:
/// `mioserver`'s flags take theirs from here (a test checks its `--help`),
/// and so does the room's own `RoomConfig`.
impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            net: LoopConfig::default(),
            join_timeout: DEFAULT_JOIN_TIMEOUT,
            history: DEFAULT_HISTORY,
            max_text_chars: DEFAULT_MAX_TEXT_CHARS,
            max_resume: DEFAULT_MAX_RESUME,
            rate_limit: RateLimit::DEFAULT.per_second,
            rate_burst: RateLimit::DEFAULT.burst,
            db: PathBuf::from(IN_MEMORY),
            sync: SyncMode::Full,
            redis: None,
        }
    }
}

impl ServerConfig {
    /// The per-connection limit that `--rate-limit` and `--rate-burst` set:
    /// what the chat enforces and what `welcome` announces.
    pub fn rate(&self) -> RateLimit {
        RateLimit {
            per_second: self.rate_limit,
            burst: self.rate_burst,
        }
    }
}
