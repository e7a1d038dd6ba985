//! The chat's numbers for `GET /metrics`, next to the loop's: users, and
//! messages by kind. Plain counters the [`Chat`](crate::chat::Chat) owns
//! and bumps on its own thread; a scrape copies them. Labels are kinds and
//! error codes, never names.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::chat::room::Audience;
use crate::evloop::metrics::{counter, gauge, Tally};
use crate::proto::protocol::{Request, ServerMessage};

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

    /// A copy to encode, with `online` users now.
    pub fn snapshot(&self, online: usize) -> Box<dyn Collector> {
        Box::new(ChatMetrics {
            online: online as u64,
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
            .encode(e, "refusals", "Error messages sent, by code", "code")
    }
}
