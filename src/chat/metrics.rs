//! The chat's numbers for `GET /metrics`, next to the loop's: users,
//! messages by kind, and the store's group commits. Plain counters the
//! [`Chat`](crate::chat::Chat) owns and bumps on its own thread; a scrape
//! copies them. The store's are kept by whoever runs the store (its own
//! thread, for SQLite) once per group commit, never per message, and read
//! through a mutex only by a scrape. Labels are kinds and error codes,
//! never names.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::chat::room::Audience;
use crate::evloop::metrics::{counter, gauge, Histogram, Tally};
use crate::proto::protocol::{Request, ServerMessage};

/// Upper bounds of the commit-latency buckets, in seconds: from 50 µs (a
/// commit to memory, or to a disk cache that does not flush) through the
/// 1–10 ms an `fsync` takes on SSDs and VM disks, finely enough there for a
/// median and a 99th percentile to be read off, to a second (a disk that
/// stalls, which every message then waits for).
const COMMIT_SECONDS: [f64; 19] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.000_75, 0.001, 0.001_5, 0.002, 0.003, 0.004, 0.005,
    0.007_5, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// What the store's runner counts, once per group commit.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// Group commits that succeeded: one transaction, so one `fsync` with
    /// `--sync full`, each.
    commits: u64,
    /// Public messages those commits stored.
    messages: u64,
    /// How long each group commit took, failed ones included: how much
    /// later than with no store the messages in it were shown.
    commit_seconds: Histogram,
    /// Jobs handed to the store and not yet answered, set at each scrape
    /// by the loop, which is the side that knows.
    queue_depth: u64,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            commits: 0,
            messages: 0,
            commit_seconds: Histogram::new(&COMMIT_SECONDS),
            queue_depth: 0,
        }
    }
}

impl StoreMetrics {
    /// A group commit took `took`; it stored `messages`, or failed (`None`).
    pub fn commit(&mut self, took: std::time::Duration, messages: Option<u64>) {
        self.commit_seconds.observe(took.as_secs_f64());
        if let Some(messages) = messages {
            self.commits += 1;
            self.messages += messages;
        }
    }

    /// Group commits that succeeded, and the messages they stored.
    pub fn totals(&self) -> (u64, u64) {
        (self.commits, self.messages)
    }

    /// A copy for a scrape, with `queue_depth` jobs waiting now.
    pub fn with_queue_depth(&self, queue_depth: u64) -> StoreMetrics {
        StoreMetrics {
            queue_depth,
            ..self.clone()
        }
    }

    /// Writes the store's metrics.
    fn encode(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        counter(
            e,
            "store_commits",
            "Group commits that succeeded (one fsync each with --sync full)",
            self.commits,
        )?;
        counter(
            e,
            "store_messages",
            "Public messages stored by those commits",
            self.messages,
        )?;
        self.commit_seconds.encode(
            e,
            "store_commit_seconds",
            "Time one group commit took, the delay it adds before its messages are shown",
        )?;
        gauge(
            e,
            "store_queue_depth",
            "Jobs (commits and history queries) handed to the store and not yet answered",
            self.queue_depth,
        )
    }
}

/// What the chat counts.
#[derive(Debug, Clone, Default)]
pub struct ChatMetrics {
    /// Successful joins.
    joined: u64,
    /// Users online, set at each scrape.
    online: u64,
    /// Requests received, by type.
    received: Tally,
    /// Messages sent, by type, one per recipient.
    delivered: Tally,
    /// `error` messages sent, by code.
    refusals: Tally,
    /// The store's numbers, or the cluster's link, set at each scrape.
    backing: Backing,
}

/// Where public messages are kept, as a scrape reports it.
#[derive(Debug, Clone)]
pub enum Backing {
    /// A single server's store: its group commits.
    Store(StoreMetrics),
    /// A cluster node's Redis: whether requests reach it now (an alert on
    /// `miochat_redis_up == 0` is the operator's view of `/healthz`'s 503).
    Redis {
        /// Whether the node can reach Redis.
        up: bool,
    },
}

impl Default for Backing {
    fn default() -> Self {
        Backing::Store(StoreMetrics::default())
    }
}

impl ChatMetrics {
    /// A user joined.
    pub fn joined(&mut self) {
        self.joined += 1;
    }

    /// A request arrived.
    pub fn received(&mut self, request: &Request) {
        let kind = match request {
            Request::Join { .. } => "join",
            Request::Say { .. } => "say",
            Request::Dm { .. } => "dm",
            Request::Who => "who",
            Request::Nick { .. } => "nick",
            Request::History { .. } => "history",
        };
        self.received.add(kind, 1);
    }

    /// `message` goes to `to`, while `online` users are joined.
    pub fn delivered(&mut self, message: &ServerMessage, to: &Audience, online: usize) {
        let recipients = match *to {
            Audience::One(_) => 1,
            Audience::Pair(sender, recipient) => 1 + u64::from(sender != recipient),
            Audience::Everyone => online as u64,
            Audience::EveryoneExcept(_) => online.saturating_sub(1) as u64,
        };
        let kind = match message {
            ServerMessage::Welcome { .. } => "welcome",
            ServerMessage::Message(_) => "message",
            ServerMessage::Dm { .. } => "dm",
            ServerMessage::Joined { .. } => "joined",
            ServerMessage::Left { .. } => "left",
            ServerMessage::Renamed { .. } => "renamed",
            ServerMessage::Users { .. } => "users",
            ServerMessage::History { .. } => "history",
            ServerMessage::Error { code, .. } => {
                self.refusals.add(code.as_str(), 1);
                "error"
            }
        };
        self.delivered.add(kind, recipients);
    }

    /// A copy to encode, with `online` users and the `backing`'s numbers
    /// now.
    pub fn snapshot(&self, online: usize, backing: Backing) -> Box<dyn Collector> {
        Box::new(ChatMetrics {
            online: online as u64,
            backing,
            ..self.clone()
        })
    }
}

impl Collector for ChatMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        counter(e, "users_joined", "Successful joins", self.joined)?;
        gauge(e, "users_online", "Users joined now", self.online)?;
        self.received
            .encode(e, "messages_received", "Requests received, by type", "kind")?;
        self.delivered.encode(
            e,
            "messages_delivered",
            "Messages sent, by type, counted once per recipient",
            "kind",
        )?;
        self.refusals
            .encode(e, "refusals", "Error messages sent, by code", "code")?;
        match &self.backing {
            Backing::Store(store) => store.encode(e),
            Backing::Redis { up } => gauge(
                e,
                "redis_up",
                "Whether this cluster node reaches Redis (1) or not (0)",
                u64::from(*up),
            ),
        }
    }
}
