//! The chat as a node of a cluster (`--redis`): what changes when Redis
//! stands where the store and the publisher stand.
//!
//! - A request that needs the cluster goes to Redis first, and the room
//!   hears of it only once Redis agreed: a `join` or a `nick` once the
//!   name is claimed (requests that come meanwhile wait, in order); a
//!   `say` is published with the turn's other messages and shown to
//!   nobody, its sender included, until the history stream delivers it;
//!   a `dm` once it is in the recipient's node's inbox.
//! - Everything shown comes from the streams, in their order, on every
//!   node alike: public messages (which the room records, so that
//!   `welcome` and resume work as on one server), `joined`, `left` and
//!   `renamed` of every node's users (the room's own announcements of
//!   them are dropped), and the DMs for this node's users.
//! - `who` and `welcome` list the users of every node: the room keeps the
//!   other nodes' users, as the presence stream tells.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tungstenite::protocol::frame::coding::CloseCode;

use super::{Backend, Chat};
use crate::chat::cluster::node::{Answer, Node, NodeEvent};
use crate::chat::cluster::scripts::{
    Claim, Delivery as Streamed, DmOutcome, NewDm, NewMessage, Presence, PresenceKind, Rename,
    Snapshot, StoredDm, StoredMessage,
};
use crate::chat::cluster::RedisUrl;
use crate::chat::config::ServerConfig;
use crate::chat::publish::Release;
use crate::chat::room::{self, Audience, Composed, Delivery, Room};
use crate::evloop::service::{ConnId, Outbox};
use crate::proto::protocol::{ChatMessage, Cid, ErrorCode, Request, ServerMessage, Timestamp};

impl Chat {
    /// A chat that is a node of the cluster on `url`. It serves nobody
    /// until Redis has told it the cluster's state (a `join` meanwhile is
    /// `unavailable`).
    pub(super) fn clustered(config: &ServerConfig, url: &RedisUrl) -> Chat {
        let mut room = Room::new(Chat::room_config(config), String::new());
        // Every resume that can be complete is answered from memory.
        let keep = config.history.max(config.max_resume);
        room.keep(keep);
        let node = Node::new(url, keep, std::time::Instant::now());
        log::info!(
            "cluster node {} on redis://{}/{}",
            node.id(),
            url.addr,
            url.db
        );
        Chat::with(config, room, Backend::Cluster(node))
    }

    /// A request in cluster mode: the ones that need Redis are sent there
    /// (their answers come back as [`NodeEvent::Answer`]); the rest are
    /// given back for the room, as on a single server.
    pub(super) fn cluster_request(
        &mut self,
        conn: ConnId,
        request: Request,
        out: &mut Outbox<'_>,
    ) -> Option<Request> {
        let Backend::Cluster(node) = &mut self.backend else {
            return Some(request);
        };
        let now = out.now();
        // The hot path first, taking the request apart: a `say` is
        // published with the turn's others.
        let request = match request {
            Request::Say { text, cid } => {
                let refusal_cid = cid.clone();
                match self.room.compose(conn, text, cid, Timestamp::now()) {
                    Ok(Composed::New(message)) => node.publish(conn, new_message(message)),
                    Ok(Composed::Resent(stored)) => {
                        self.answer(conn, ServerMessage::Message(stored));
                    }
                    Err(refusal) => self.answer(conn, with_cid(refusal, refusal_cid)),
                }
                return None;
            }
            request => request,
        };
        let asked = match &request {
            Request::Join { name, .. } => match self.room.check_name(conn, name, false) {
                Err(refusal) => Err(refusal),
                Ok(()) => node.claim(conn, name, now).map_err(|_| unavailable()),
            },
            Request::Nick { name } => {
                let old = self.room.name(conn).unwrap_or_default();
                if name == old || !self.room.is_joined(conn) {
                    // No change (or no name yet): the room answers alone.
                    return Some(request);
                }
                match self.room.check_name(conn, name, true) {
                    Err(refusal) => Err(refusal),
                    Ok(()) => node.rename(conn, old, name, now).map_err(|_| unavailable()),
                }
            }
            Request::Dm { to, text, cid } => match self.room.check_dm(conn, text, cid.as_ref()) {
                Err(refusal) => Err(refusal),
                Ok(Some(stored)) => {
                    self.answer(conn, stored);
                    return None;
                }
                Ok(None) => {
                    let dm = NewDm {
                        ts: Timestamp::now().to_string(),
                        from: self.room.name(conn).unwrap_or_default().to_owned(),
                        to: to.clone(),
                        text: text.clone(),
                        cid: cid.as_ref().map(|cid| cid.as_str().to_owned()),
                    };
                    node.dm(conn, dm, now).map_err(|_| unavailable())
                }
            },
            Request::History { before, limit } if !self.room.keeps_page(*before, *limit) => node
                .page(conn, before.unwrap_or(u64::MAX), *limit, now)
                .map_err(|_| unavailable()),
            // A `say` was handled above.
            Request::History { .. } | Request::Who | Request::Say { .. } => return Some(request),
        };
        match asked {
            Ok(()) => {
                // A join or a nick: the room hears of it with the answer,
                // and what the client sends meanwhile waits for it.
                if matches!(request, Request::Join { .. } | Request::Nick { .. }) {
                    if let Some(session) = self.sessions.get_mut(&conn) {
                        session.waiting = Some(request);
                    }
                }
            }
            Err(refusal) => {
                let cid = match &request {
                    Request::Dm { cid, .. } => cid.clone(),
                    _ => None,
                };
                self.answer(conn, with_cid(refusal, cid));
            }
        }
        None
    }

    /// Takes in everything the node has to tell, and sends what follows.
    pub(super) fn node_events(&mut self, out: &mut Outbox<'_>) {
        loop {
            let Backend::Cluster(node) = &mut self.backend else {
                return;
            };
            let Some(event) = node.take_event(out.now()) else {
                return;
            };
            match event {
                NodeEvent::Ready { snapshot, reset } => self.ready(snapshot, reset, out),
                NodeEvent::Streamed(deliveries) => {
                    for delivery in deliveries {
                        self.streamed(delivery);
                    }
                }
                NodeEvent::Answer { conn, answer } => self.answered(conn, answer, out),
            }
            self.send(out);
        }
    }

    /// The node knows the cluster: the room takes its epoch, history and
    /// users. After a reset every connection is closed: its user's name was
    /// freed, or the history it saw is gone, so it must join again (every
    /// client reconnects by itself, and resumes as the new epoch allows).
    fn ready(&mut self, snapshot: Snapshot, reset: bool, out: &mut Outbox<'_>) {
        let Backend::Cluster(node) = &self.backend else {
            return;
        };
        let me = node.id().to_owned();
        log::info!(
            "cluster node {me} ready: epoch {}, {} users online, last id {}",
            snapshot.epoch,
            snapshot.users.len(),
            snapshot.last_id
        );
        if reset {
            for &conn in self.sessions.keys() {
                out.close(conn, CloseCode::Away, "the cluster was reset: join again");
            }
        }
        let kept: Vec<_> = snapshot
            .history
            .into_iter()
            .filter_map(chat_message)
            .collect();
        // The newest id older than what is kept, as far as this node can
        // tell: a resume from before the first kept message is incomplete.
        let dropped_through = kept
            .first()
            .map_or(snapshot.last_id, |first| first.id.saturating_sub(1));
        self.room.start_over(snapshot.epoch, kept, dropped_through);
        self.room.set_remote(
            snapshot
                .users
                .iter()
                .filter(|(_, node)| *node != me)
                .map(|(name, _)| name.as_str()),
        );
    }

    /// One entry of the streams: shown to this node's users.
    fn streamed(&mut self, delivery: Streamed) {
        let Backend::Cluster(node) = &self.backend else {
            return;
        };
        let mine = |presence: &Presence| presence.node == node.id();
        let (to, message) = match delivery {
            Streamed::Message(stored) => {
                let Some(message) = chat_message(stored) else {
                    return;
                };
                self.room.record(Arc::clone(&message));
                (Audience::Everyone, ServerMessage::Message(message))
            }
            Streamed::Presence(presence) => {
                let ts = stream_time(&presence.stream_id);
                let online = usize::try_from(presence.online).unwrap_or(usize::MAX);
                let local = mine(&presence);
                match presence.kind {
                    PresenceKind::Joined => {
                        if !local {
                            self.room.remote_joined(&presence.name);
                        }
                        // The newcomer has its `welcome` instead.
                        let to = match self.room.user_named(&presence.name) {
                            Some(newcomer) if local => Audience::EveryoneExcept(newcomer),
                            _ => Audience::Everyone,
                        };
                        let name = presence.name;
                        (to, ServerMessage::Joined { name, ts, online })
                    }
                    PresenceKind::Left => {
                        if !local {
                            self.room.remote_left(&presence.name);
                        }
                        let name = presence.name;
                        (Audience::Everyone, ServerMessage::Left { name, ts, online })
                    }
                    PresenceKind::Renamed { from } => {
                        if !local {
                            self.room.remote_left(&from);
                            self.room.remote_joined(&presence.name);
                        }
                        let to = presence.name;
                        (Audience::Everyone, ServerMessage::Renamed { from, to, ts })
                    }
                }
            }
            Streamed::Inbox(inbox) => {
                // To the recipient and the sender, those of them who are
                // here (a DM to oneself once); either may have left since.
                let (from, to) = (&inbox.dm.from, &inbox.dm.to);
                let to = match (self.room.user_named(from), self.room.user_named(to)) {
                    (Some(sender), Some(recipient)) => Audience::Pair(sender, recipient),
                    (Some(one), None) | (None, Some(one)) => Audience::One(one),
                    (None, None) => return,
                };
                (to, dm_message(inbox.dm, inbox.cid))
            }
        };
        self.releases.push(Release::Send(Delivery { to, message }));
    }

    /// Redis answered a request of `conn`.
    fn answered(&mut self, conn: ConnId, answer: Answer, out: &mut Outbox<'_>) {
        match answer {
            Answer::Claim(claim) => {
                let Some(join) = self.take_waiting(conn) else {
                    return;
                };
                match (claim, &join) {
                    (Claim::Claimed { .. }, Request::Join { name, .. }) => {
                        // Redis says the name is free: a stale entry of a
                        // user who left another node must not refuse it.
                        self.room.remote_left(name);
                        self.handle(conn, join, out);
                    }
                    (Claim::Taken, Request::Join { name, .. }) => {
                        self.answer(conn, room::name_taken(name));
                        self.deliver(conn, None, out);
                    }
                    _ => self.refuse_unavailable(conn, None, out),
                }
                self.unpark(conn, out);
            }
            Answer::Rename(rename) => {
                let Some(nick) = self.take_waiting(conn) else {
                    return;
                };
                match (rename, &nick) {
                    (Rename::Renamed, Request::Nick { name }) => {
                        self.room.remote_left(name);
                        self.handle(conn, nick, out);
                    }
                    (Rename::Taken, Request::Nick { name }) => {
                        self.answer(conn, room::name_taken(name));
                        self.deliver(conn, None, out);
                    }
                    _ => self.refuse_unavailable(conn, None, out),
                }
                self.unpark(conn, out);
            }
            Answer::Dm(dm, outcome) => {
                let message = match outcome {
                    DmOutcome::Sent { id, to } => {
                        // The inbox shows it to the sender, after every
                        // public message with a smaller id; it is only
                        // remembered here, for a resend.
                        let stored = StoredDm {
                            id,
                            ts: dm.ts,
                            from: dm.from,
                            to,
                            text: dm.text,
                        };
                        let message = dm_message(stored, dm.cid);
                        if let ServerMessage::Dm { cid: Some(cid), .. } = &message {
                            self.room.remember_dm(cid.clone(), message.clone());
                        }
                        return;
                    }
                    DmOutcome::Duplicate(stored) => dm_message(stored, dm.cid),
                    DmOutcome::UnknownUser => {
                        with_cid(room::unknown_user(&dm.to), dm.cid.and_then(Cid::new))
                    }
                };
                self.answer(conn, message);
            }
            Answer::Page(messages) => {
                let messages = messages.into_iter().filter_map(chat_message).collect();
                self.answer(conn, ServerMessage::History { messages });
            }
            Answer::Resent(id, stored, sent) => {
                // The stored message, or (trimmed by the bound) the one
                // sent again, which differs from it at most in its `ts`.
                let stored = stored.unwrap_or(StoredMessage {
                    id,
                    ts: sent.ts,
                    from: sent.from,
                    text: sent.text,
                    cid: sent.cid,
                });
                if let Some(message) = chat_message(stored) {
                    self.answer(conn, ServerMessage::Message(message));
                }
            }
            Answer::Unavailable(cid) => {
                if self.take_waiting(conn).is_some() {
                    self.refuse_unavailable(conn, cid, out);
                    self.unpark(conn, out);
                } else {
                    self.refuse_unavailable(conn, cid, out);
                }
            }
        }
    }

    /// The `join` or `nick` of `conn` that waited for Redis, now answered.
    fn take_waiting(&mut self, conn: ConnId) -> Option<Request> {
        self.sessions.get_mut(&conn)?.waiting.take()
    }

    /// Handles the requests that came while one waited, until one waits
    /// again.
    fn unpark(&mut self, conn: ConnId, out: &mut Outbox<'_>) {
        while let Some(session) = self.sessions.get_mut(&conn) {
            if session.waiting.is_some() {
                return;
            }
            let Some(request) = session.parked.pop_front() else {
                return;
            };
            self.request(conn, request, out);
        }
    }

    /// Sends `message` to `conn` alone.
    fn answer(&mut self, conn: ConnId, message: ServerMessage) {
        self.releases.push(Release::Send(Delivery {
            to: Audience::One(conn),
            message,
        }));
    }

    /// Tells `conn` that Redis could not be asked.
    fn refuse_unavailable(&mut self, conn: ConnId, cid: Option<Cid>, out: &mut Outbox<'_>) {
        self.answer(conn, with_cid(unavailable(), cid));
        self.deliver(conn, None, out);
    }
}

/// What the room said, in cluster mode: the announcements of joins,
/// leaves and renames are dropped (the presence stream brings them to
/// every node's users alike), and a newcomer hears broadcasts from its
/// `welcome` on, at once, since nothing is held back here.
pub(super) fn admit(deliveries: impl Iterator<Item = Delivery>, releases: &mut Vec<Release>) {
    for delivery in deliveries {
        match (&delivery.to, &delivery.message) {
            (
                Audience::Everyone | Audience::EveryoneExcept(_),
                ServerMessage::Joined { .. }
                | ServerMessage::Left { .. }
                | ServerMessage::Renamed { .. },
            ) => {}
            (&Audience::One(newcomer), ServerMessage::Welcome { .. }) => {
                releases.push(Release::Send(delivery));
                releases.push(Release::Subscribe(newcomer));
            }
            _ => releases.push(Release::Send(delivery)),
        }
    }
}

/// An error answering a request with a `cid` carries it, so the client
/// knows which message was refused.
fn with_cid(mut refusal: ServerMessage, cid: Option<Cid>) -> ServerMessage {
    if let ServerMessage::Error { cid: slot, .. } = &mut refusal {
        *slot = cid;
    }
    refusal
}

/// The refusal of a request Redis could not take.
fn unavailable() -> ServerMessage {
    ServerMessage::error(
        ErrorCode::Unavailable,
        "the chat cannot reach its shared store right now; try again",
    )
}

/// A composed `say` as the publish script takes it.
fn new_message(message: ChatMessage) -> NewMessage {
    NewMessage {
        ts: message.ts.to_string(),
        from: message.from,
        text: message.text,
        cid: message.cid.map(|cid| cid.as_str().to_owned()),
    }
}

/// A message of the history stream as the protocol carries it; `None`
/// (logged) if its fields are not what this program writes.
fn chat_message(stored: StoredMessage) -> Option<Arc<ChatMessage>> {
    let Some(ts) = parse_time(&stored.ts) else {
        log::error!("redis: message {} has a bad ts {:?}", stored.id, stored.ts);
        return None;
    };
    Some(Arc::new(ChatMessage {
        id: stored.id,
        ts,
        from: stored.from,
        text: stored.text,
        cid: stored.cid.and_then(Cid::new),
    }))
}

/// A DM as Redis keeps it, as the protocol carries it: from an inbox,
/// as a resend's answer, or as the sender's node remembers it.
fn dm_message(dm: StoredDm, cid: Option<String>) -> ServerMessage {
    ServerMessage::Dm {
        id: dm.id,
        ts: parse_time(&dm.ts).unwrap_or_else(Timestamp::now),
        from: dm.from,
        to: dm.to,
        text: dm.text,
        cid: cid.and_then(Cid::new),
    }
}

/// A `ts` as this program writes it.
fn parse_time(text: &str) -> Option<Timestamp> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|time| Timestamp(time.with_timezone(&Utc)))
}

/// When Redis accepted a stream entry: its id is `MILLISECONDS-SEQUENCE`.
fn stream_time(stream_id: &str) -> Timestamp {
    stream_id
        .split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .and_then(DateTime::from_timestamp_millis)
        .map_or_else(Timestamp::now, Timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_id_tells_when_redis_accepted_the_entry() {
        assert_eq!(
            stream_time("1764662400123-4").to_string(),
            "2025-12-02T08:00:00.123Z"
        );
    }

    #[test]
    fn the_rooms_announcements_are_dropped_and_a_welcome_subscribes() {
        let ts = parse_time("2026-12-02T08:00:00.000Z").unwrap();
        let deliveries = vec![
            Delivery {
                to: Audience::EveryoneExcept(1),
                message: ServerMessage::Joined {
                    name: "Ann".into(),
                    ts,
                    online: 1,
                },
            },
            Delivery {
                to: Audience::Everyone,
                message: ServerMessage::Left {
                    name: "Bob".into(),
                    ts,
                    online: 1,
                },
            },
            Delivery {
                to: Audience::One(1),
                message: unavailable(),
            },
        ];
        let mut releases = Vec::new();
        admit(deliveries.into_iter(), &mut releases);
        assert_eq!(releases.len(), 1);
        assert!(matches!(
            &releases[0],
            Release::Send(Delivery {
                to: Audience::One(1),
                message: ServerMessage::Error { .. }
            })
        ));
    }
}
