//! The chat room as pure logic: who is in it, under which name, and what
//! each request makes the server send to whom.
//!
//! The room never touches a socket or reads the clock. The event loop hands
//! it each parsed request together with the time, and gets back a list of
//! [`Delivery`]s to write. That keeps every rule of `PROTOCOL.md` testable
//! with a plain `assert_eq!`. The room also logs nothing, so private
//! messages cannot leak into a log from here.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::chat::config::{DEFAULT_HISTORY, DEFAULT_MAX_RESUME, DEFAULT_MAX_TEXT_CHARS};
use crate::proto::protocol::{
    self, name_key, validate_name, ChatMessage, Cid, ErrorCode, Request, ServerMessage, Timestamp,
    UserArray, UserList,
};
use crate::proto::rate_limit::RateLimit;

/// The connection's key, chosen by the server; the room never interprets it.
pub type UserId = usize;

/// How many accepted `cid`s the room remembers, for public messages and
/// DMs each. A client resends what it has no acknowledgement for as soon
/// as it is back, so a resend looks only a few thousand messages back;
/// 65 536 entries cost a few MiB at most. (The durable store remembers
/// public `cid`s for longer.)
const CID_MEMORY: usize = 65_536;

/// The room's limits; the server fills them in from its command-line flags.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoomConfig {
    /// How many of the latest public messages are kept for `welcome`; 0
    /// keeps none.
    pub history_len: usize,
    /// The longest `text` of a `say` or `dm`, in characters.
    pub max_text_chars: usize,
    /// The most messages a resume (`join` with `since`) sends before it
    /// gives up and answers `recovered: false`.
    pub max_resume: usize,
    /// The server's per-connection rate limit, which `welcome` announces
    /// (the chat enforces it, reading it from here: [`Room::rate_limit`]).
    pub rate_limit: RateLimit,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            history_len: DEFAULT_HISTORY,
            max_text_chars: DEFAULT_MAX_TEXT_CHARS,
            max_resume: DEFAULT_MAX_RESUME,
            rate_limit: RateLimit::DEFAULT,
        }
    }
}

/// Who a [`Delivery`] goes to. The server resolves it to connections as it
/// sends, so the room never builds a list of recipients per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// One connection, joined or not: answers and errors.
    One(UserId),
    /// A DM: sender and recipient; when both are the same user, deliver once.
    Pair(UserId, UserId),
    /// Every joined user.
    Everyone,
    /// Every joined user but this one: the newcomer, who gets `welcome`
    /// instead of `joined`.
    EveryoneExcept(UserId),
}

/// One message to send, and to whom.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The recipients.
    pub to: Audience,
    /// What they receive.
    pub message: ServerMessage,
}

/// The chat room: its members and their names, the public history, and the
/// message id sequence.
#[derive(Debug)]
pub struct Room {
    /// The limits the room enforces.
    config: RoomConfig,
    /// Each joined user's current name, as they spelled it. Its keys are the
    /// members, which the server walks for every broadcast.
    names: HashMap<UserId, String>,
    /// Each joined user under the [`name_key`] of their name, so that `join`,
    /// `nick` and `dm` find a name's owner in O(1), case-insensitively.
    by_key: HashMap<String, UserId>,
    /// The latest public messages, oldest first, at most `ring_len` of
    /// them. Each is shared with the `message` that announced it and with
    /// every `welcome`, so its text is stored once.
    history: VecDeque<Arc<ChatMessage>>,
    /// How many messages `history` keeps: `config.history_len` (what a
    /// fresh `welcome` carries), or more when there is no store to answer
    /// a resume from (see [`Room::keep`]).
    ring_len: usize,
    /// The users of the other servers of a cluster, by [`name_key`]: they
    /// are listed by `who` and `welcome`, and their names are taken.
    remote: HashMap<String, String>,
    /// The newest id that has left `history` (0 while nothing has): a
    /// resume from an older `since` cannot be complete.
    dropped_through: u64,
    /// The id the next `message` or `dm` gets. It starts at 1, so that
    /// `since: 0` asks for everything kept.
    next_id: u64,
    /// Names this room's history in `welcome`; a resume from another epoch
    /// cannot trust its `since`.
    epoch: String,
    /// Public messages by the `cid` they were sent with, so that a resent
    /// `say` is acknowledged instead of posted twice.
    said: Recent<Arc<ChatMessage>>,
    /// DMs by `cid`, for the same reason (the `dm` as it was sent).
    dms: Recent<ServerMessage>,
    /// The `users` of the next `welcome` or `who`, kept serialized: a join
    /// appends to it; a leave or a rename drops it, to be rebuilt when next
    /// asked for. `None` when dropped.
    users: Option<UserArray>,
}

impl Room {
    /// The per-connection rate limit the room announces, for the chat to
    /// enforce: one value, so what newcomers are told is what holds.
    pub fn rate_limit(&self) -> RateLimit {
        self.config.rate_limit
    }

    /// An empty room whose history is called `epoch`.
    pub fn new(config: RoomConfig, epoch: String) -> Room {
        Room {
            config,
            names: HashMap::new(),
            by_key: HashMap::new(),
            history: VecDeque::new(),
            ring_len: config.history_len,
            remote: HashMap::new(),
            dropped_through: 0,
            next_id: 1,
            epoch,
            said: Recent::default(),
            dms: Recent::default(),
            users: None,
        }
    }

    /// Continues a history kept by a store: ids go on from `next_id`, and
    /// `kept` (oldest first, at most the history length) are the latest
    /// messages, whose `cid`s are known again. `dropped_through` is the
    /// newest stored id older than them (0 when there is none): a resume
    /// from before it needs the store.
    pub fn restore(&mut self, next_id: u64, kept: Vec<Arc<ChatMessage>>, dropped_through: u64) {
        self.next_id = self.next_id.max(next_id);
        self.dropped_through = dropped_through;
        for message in kept {
            if let Some(cid) = &message.cid {
                self.said.insert(cid.clone(), Arc::clone(&message));
            }
            self.history.push_back(message);
        }
    }

    /// Keeps at least `len` messages in memory, not only the
    /// `history_len` a `welcome` carries: a cluster node keeps
    /// `--max-resume` of them, so that every resume it can complete is
    /// answered from memory (one older than that misses more than the
    /// limit anyway).
    pub fn keep(&mut self, len: usize) {
        self.ring_len = self.ring_len.max(len);
    }

    /// Adds a public message that has its final id to the kept history, and
    /// remembers its `cid`. A local `say` records its own message; a
    /// cluster node records every message as the shared stream delivers it.
    pub fn record(&mut self, message: Arc<ChatMessage>) {
        if let Some(cid) = &message.cid {
            self.said.insert(cid.clone(), Arc::clone(&message));
        }
        self.history.push_back(message);
        // History never exceeds its bound, so one pop restores it (and with
        // a bound of 0 removes the message just added).
        if self.history.len() > self.ring_len {
            if let Some(dropped) = self.history.pop_front() {
                self.dropped_through = dropped.id;
            }
        }
    }

    /// Checks a `say` without posting it: the message to post (it has no
    /// id yet: a cluster's Redis gives it one), or the message already
    /// stored under its `cid`, to acknowledge to the sender alone.
    pub fn compose(
        &self,
        user: UserId,
        text: String,
        cid: Option<Cid>,
        now: Timestamp,
    ) -> Result<Composed, ServerMessage> {
        let Some(from) = self.names.get(&user) else {
            return Err(not_joined());
        };
        if let Some(stored) = cid.as_ref().and_then(|cid| self.said.get(cid)) {
            return Ok(Composed::Resent(Arc::clone(stored)));
        }
        self.check_text(&text)?;
        Ok(Composed::New(ChatMessage {
            id: 0,
            ts: now,
            from: from.clone(),
            text,
            cid,
        }))
    }

    /// Checks what a cluster node can check of a `join` (or a `nick`,
    /// when `renaming`) before it asks Redis for the name: joined (or not)
    /// as that requires, a valid name, and not another user's of this
    /// server. Whether a user of another server has it is Redis's to say:
    /// what this room knows of them may be a moment old.
    pub fn check_name(
        &self,
        user: UserId,
        name: &str,
        renaming: bool,
    ) -> Result<(), ServerMessage> {
        match (renaming, self.is_joined(user)) {
            (false, true) => Err(already_joined()),
            (true, false) => Err(not_joined()),
            _ => self.free_here(user, name).map(drop),
        }
    }

    /// Checks a `dm` of a cluster node before it asks Redis to route it:
    /// the sender and the text. Whether the recipient is online, on any
    /// server, is Redis's to say (what this room knows of the others may
    /// be a moment old). A resent `cid` of the sender's is answered as
    /// [`Room::handle`] does.
    pub fn check_dm(
        &self,
        user: UserId,
        text: &str,
        cid: Option<&Cid>,
    ) -> Result<Option<ServerMessage>, ServerMessage> {
        let Some(from) = self.names.get(&user) else {
            return Err(not_joined());
        };
        if let Some(stored @ ServerMessage::Dm { from: sender, .. }) =
            cid.and_then(|cid| self.dms.get(cid))
        {
            if name_key(sender) == name_key(from) {
                return Ok(Some(stored.clone()));
            }
        }
        self.check_text(text)?;
        Ok(None)
    }

    /// Remembers a DM sent under `cid` (a cluster node's, once Redis gave
    /// it an id), so that a resend is acknowledged, not sent again.
    pub fn remember_dm(&mut self, cid: Cid, message: ServerMessage) {
        self.dms.insert(cid, message);
    }

    /// A user joined on another server of the cluster.
    pub fn remote_joined(&mut self, name: &str) {
        self.remote.insert(name_key(name), name.to_owned());
        self.users = None;
    }

    /// A user of another server left, or its name is now this server's.
    pub fn remote_left(&mut self, name: &str) {
        self.remote.remove(&name_key(name));
        self.users = None;
    }

    /// Every user of the other servers, replacing what was known: a
    /// cluster node's view at start-up.
    pub fn set_remote<'n>(&mut self, names: impl IntoIterator<Item = &'n str>) {
        self.remote = names
            .into_iter()
            .map(|name| (name_key(name), name.to_owned()))
            .collect();
        self.users = None;
    }

    /// Starts the kept history afresh from a cluster's state: its `epoch`
    /// and its latest messages, `dropped_through` being the newest id older
    /// than them (see [`Room::restore`]). The `cid`s remembered before
    /// belong to the history being replaced, so they go too.
    pub fn start_over(&mut self, epoch: String, kept: Vec<Arc<ChatMessage>>, dropped_through: u64) {
        self.epoch = epoch;
        self.history.clear();
        self.said = Recent::default();
        self.restore(0, kept, dropped_through);
    }

    /// The user of this server who goes by `name` (in any case).
    pub fn user_named(&self, name: &str) -> Option<UserId> {
        self.by_key.get(&name_key(name)).copied()
    }

    /// Takes back public message `id`, which could not be stored: it
    /// leaves the history, and its `cid` means `replacement` from now on
    /// (the message stored earlier with that `cid`), or nothing when the
    /// store failed, so that a resend is posted afresh.
    pub fn retract(&mut self, id: u64, replacement: Option<Arc<ChatMessage>>) {
        // A retracted message is among the newest, so search from the end.
        let Some(index) = self.history.iter().rposition(|message| message.id == id) else {
            return;
        };
        let Some(message) = self.history.remove(index) else {
            return;
        };
        if let Some(cid) = &message.cid {
            match replacement {
                Some(stored) => self.said.replace(cid, stored),
                None => self.said.remove(cid),
            }
        }
    }

    /// Forgets the `cid` of a DM that could not be delivered, so that a
    /// resend is posted afresh.
    pub fn forget_dm(&mut self, cid: &Cid) {
        self.dms.remove(cid);
    }

    /// Whether the kept history holds every message after `since`, so that
    /// a resume from it needs no store.
    pub fn keeps_since(&self, since: u64) -> bool {
        since >= self.dropped_through
    }

    /// Whether the kept history answers a `history` page completely: it
    /// holds `limit` messages below `before`, or nothing was ever dropped.
    pub fn keeps_page(&self, before: Option<u64>, limit: usize) -> bool {
        let below = before.map_or(self.history.len(), |before| {
            self.history.partition_point(|message| message.id < before)
        });
        self.dropped_through == 0 || below >= limit
    }

    /// The name of this room's history, as `welcome` carries it.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Handles one parsed request from `user` at time `now`, appending what must be sent to `out`.
    ///
    /// A `nick` to exactly one's current name changes nothing, so its
    /// `renamed` goes to the requester alone: the request is answered, and
    /// nobody else is told of a change that did not happen.
    pub fn handle(
        &mut self,
        user: UserId,
        request: Request,
        now: Timestamp,
        out: &mut Vec<Delivery>,
    ) {
        let cid = match &request {
            Request::Say { cid, .. } | Request::Dm { cid, .. } => cid.clone(),
            _ => None,
        };
        let outcome = match request {
            Request::Join { name, since, epoch } => self.join(user, name, since, epoch, now, out),
            // Every arm below relies on this one: only joined users pass.
            _ if !self.is_joined(user) => Err(not_joined()),
            Request::Say { text, cid } => self.say(user, text, cid, now, out),
            Request::Dm { to, text, cid } => self.dm(user, &to, text, cid, now, out),
            Request::Who => {
                out.push(Delivery {
                    to: Audience::One(user),
                    message: ServerMessage::Users {
                        users: self.user_list(),
                    },
                });
                Ok(())
            }
            Request::Nick { name } => self.nick(user, name, now, out),
            Request::History { before, limit } => {
                out.push(Delivery {
                    to: Audience::One(user),
                    message: ServerMessage::History {
                        messages: self.page(before, limit),
                    },
                });
                Ok(())
            }
        };
        if let Err(mut error) = outcome {
            // An error answering a request with a `cid` carries it, so the
            // client knows which message was refused.
            if let ServerMessage::Error { cid: slot, .. } = &mut error {
                *slot = cid;
            }
            out.push(Delivery {
                to: Audience::One(user),
                message: error,
            });
        }
    }

    /// `user`'s connection is gone. If it had joined: remove it and announce `left` to everyone remaining. Otherwise nothing.
    pub fn leave(&mut self, user: UserId, now: Timestamp, out: &mut Vec<Delivery>) {
        self.users = None;
        let Some(name) = self.names.remove(&user) else {
            return;
        };
        self.by_key.remove(&name_key(&name));
        out.push(Delivery {
            to: Audience::Everyone,
            message: ServerMessage::Left {
                name,
                ts: now,
                online: self.online(),
            },
        });
    }

    /// Whether `user` has joined (and not left).
    pub fn is_joined(&self, user: UserId) -> bool {
        self.names.contains_key(&user)
    }

    /// `user`'s current name, if joined.
    pub fn name(&self, user: UserId) -> Option<&str> {
        self.names.get(&user).map(String::as_str)
    }

    /// How many users have joined: the `online` of `/healthz`.
    pub fn online(&self) -> usize {
        self.names.len()
    }

    /// The joined users, in no particular order.
    pub fn members(&self) -> impl Iterator<Item = UserId> + '_ {
        self.names.keys().copied()
    }

    /// The next id the room will hand out.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// At most `limit` kept public messages with ids below `before` (below
    /// every id when `None`), oldest first: a page of `history`.
    pub fn page(&self, before: Option<u64>, limit: usize) -> Vec<Arc<ChatMessage>> {
        let end = before.map_or(self.history.len(), |before| {
            self.history.partition_point(|message| message.id < before)
        });
        let start = end.saturating_sub(limit);
        self.history.range(start..end).cloned().collect()
    }

    /// What a `welcome` carries as `history` and `recovered`: everything
    /// after `since` when that is complete, else the latest messages.
    fn resume(
        &self,
        since: Option<u64>,
        epoch: Option<&str>,
    ) -> (Vec<Arc<ChatMessage>>, Option<bool>) {
        let fresh = self.history.len().saturating_sub(self.config.history_len);
        let latest = || self.history.range(fresh..).cloned().collect();
        let Some(since) = since else {
            return (latest(), None);
        };
        // History is in id order, so the messages a resuming client
        // already has are a prefix.
        let after = self.history.partition_point(|message| message.id <= since);
        let complete = epoch.is_none_or(|epoch| epoch == self.epoch)
            && since >= self.dropped_through
            && self.history.len() - after <= self.config.max_resume;
        if complete {
            (self.history.range(after..).cloned().collect(), Some(true))
        } else {
            (latest(), Some(false))
        }
    }

    /// The names of all joined users, for `welcome` and `users`.
    fn user_list(&mut self) -> UserList {
        let (names, remote) = (&self.names, &self.remote);
        self.users
            .get_or_insert_with(|| {
                let mut array = UserArray::default();
                names.values().for_each(|name| array.push(name));
                remote.values().for_each(|name| array.push(name));
                array
            })
            .to_list()
    }

    /// A `join`: on success, `welcome` to the newcomer and `joined` to the
    /// others. The error, if any, is for the requester alone.
    fn join(
        &mut self,
        user: UserId,
        name: String,
        since: Option<u64>,
        epoch: Option<String>,
        now: Timestamp,
        out: &mut Vec<Delivery>,
    ) -> Result<(), ServerMessage> {
        if self.is_joined(user) {
            return Err(already_joined());
        }
        let key = self.available_key(user, &name)?;
        self.by_key.insert(key, user);
        self.names.insert(user, name.clone());
        if let Some(users) = &mut self.users {
            users.push(&name);
        }
        let (history, recovered) = self.resume(since, epoch.as_deref());
        out.push(Delivery {
            to: Audience::One(user),
            message: ServerMessage::Welcome {
                name: name.clone(),
                users: self.user_list(),
                history,
                server: protocol::SERVER_ID.to_owned(),
                epoch: self.epoch.clone(),
                recovered,
                rate_limit: Some(Box::new(self.config.rate_limit)),
            },
        });
        out.push(Delivery {
            to: Audience::EveryoneExcept(user),
            message: ServerMessage::Joined {
                name,
                ts: now,
                online: self.online(),
            },
        });
        Ok(())
    }

    /// A `say`: a `message` to everyone, kept in history. A `cid` seen
    /// before is acknowledged to the sender alone with the stored message.
    fn say(
        &mut self,
        user: UserId,
        text: String,
        cid: Option<Cid>,
        now: Timestamp,
        out: &mut Vec<Delivery>,
    ) -> Result<(), ServerMessage> {
        let message = match self.compose(user, text, cid, now)? {
            Composed::Resent(stored) => {
                out.push(Delivery {
                    to: Audience::One(user),
                    message: ServerMessage::Message(stored),
                });
                return Ok(());
            }
            Composed::New(mut message) => {
                message.id = self.take_id();
                Arc::new(message)
            }
        };
        self.record(Arc::clone(&message));
        out.push(Delivery {
            to: Audience::Everyone,
            message: ServerMessage::Message(message),
        });
        Ok(())
    }

    /// A `dm`: to its recipient and its sender, never into history.
    fn dm(
        &mut self,
        user: UserId,
        to: &str,
        text: String,
        cid: Option<Cid>,
        now: Timestamp,
        out: &mut Vec<Delivery>,
    ) -> Result<(), ServerMessage> {
        // A DM is private: a resent `cid` is answered with the stored DM
        // only when its sender asks, never to someone who guessed or
        // reused the `cid` (for them it is a new DM, not remembered).
        let sender_key = name_key(&self.names[&user]);
        let stored = cid.as_ref().and_then(|cid| self.dms.get(cid));
        if let Some(stored @ ServerMessage::Dm { from, .. }) = stored {
            if name_key(from) == sender_key {
                out.push(Delivery {
                    to: Audience::One(user),
                    message: stored.clone(),
                });
                return Ok(());
            }
        }
        let remember = stored.is_none();
        self.check_text(&text)?;
        let Some(&recipient) = self.by_key.get(&name_key(to)) else {
            return Err(unknown_user(to));
        };
        let message = ServerMessage::Dm {
            id: self.take_id(),
            ts: now,
            from: self.names[&user].clone(),
            to: self.names[&recipient].clone(),
            text,
            cid: cid.clone(),
        };
        if let Some(cid) = cid.filter(|_| remember) {
            self.dms.insert(cid, message.clone());
        }
        out.push(Delivery {
            to: Audience::Pair(user, recipient),
            message,
        });
        Ok(())
    }

    /// A `nick`: `renamed` to everyone, or to the requester alone when the
    /// name is exactly the current one.
    fn nick(
        &mut self,
        user: UserId,
        name: String,
        now: Timestamp,
        out: &mut Vec<Delivery>,
    ) -> Result<(), ServerMessage> {
        let key = self.available_key(user, &name)?;
        let from = self.names[&user].clone();
        let to = if from == name {
            Audience::One(user)
        } else {
            // Remove before inserting: a change of case keeps the same key.
            self.by_key.remove(&name_key(&from));
            self.by_key.insert(key, user);
            self.names.insert(user, name.clone());
            self.users = None;
            Audience::Everyone
        };
        out.push(Delivery {
            to,
            message: ServerMessage::Renamed {
                from,
                to: name,
                ts: now,
            },
        });
        Ok(())
    }

    /// Checks that `user` may go by `name`: it must be valid, and not the
    /// name of anyone else (one's own, in any case, is fine). Returns its
    /// [`name_key`].
    fn available_key(&self, user: UserId, name: &str) -> Result<String, ServerMessage> {
        let key = self.free_here(user, name)?;
        if !self.by_key.contains_key(&key) && self.remote.contains_key(&key) {
            return Err(name_taken(name));
        }
        Ok(key)
    }

    /// The part of [`Room::available_key`] that concerns this server: a
    /// valid name that no other user here has.
    fn free_here(&self, user: UserId, name: &str) -> Result<String, ServerMessage> {
        validate_name(name)
            .map_err(|reason| ServerMessage::error(ErrorCode::InvalidName, reason))?;
        let key = name_key(name);
        match self.by_key.get(&key) {
            Some(&owner) if owner != user => Err(name_taken(name)),
            _ => Ok(key),
        }
    }

    /// Checks the `text` of a `say` or `dm` against [`protocol::check_text`],
    /// with a sentence explaining a refusal.
    fn check_text(&self, text: &str) -> Result<(), ServerMessage> {
        let max = self.config.max_text_chars;
        protocol::check_text(text, max).map_err(|code| {
            let message = match code {
                ErrorCode::EmptyText => "a message cannot be empty or only whitespace".to_owned(),
                // `check_text` has no other refusal than these two.
                _ => format!("a message has at most {max} characters"),
            };
            ServerMessage::error(code, message)
        })
    }

    /// Hands out the next message id. A `u64` does not run out: at a
    /// million messages a second it lasts over half a million years.
    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

/// What a `say` comes to, before it is posted: see [`Room::compose`].
#[derive(Debug, Clone, PartialEq)]
pub enum Composed {
    /// A new message, without its id.
    New(ChatMessage),
    /// Its `cid` was accepted before: this is the stored message.
    Resent(Arc<ChatMessage>),
}

/// The refusal of anything but `join` before joining.
fn not_joined() -> ServerMessage {
    ServerMessage::error(ErrorCode::NotJoined, "join the room with a name first")
}

/// The refusal of a second `join`.
fn already_joined() -> ServerMessage {
    ServerMessage::error(
        ErrorCode::AlreadyJoined,
        "you have already joined; use nick to change your name",
    )
}

/// The refusal of a name someone else has.
pub fn name_taken(name: &str) -> ServerMessage {
    ServerMessage::error(
        ErrorCode::NameTaken,
        format!("the name {name:?} is already taken"),
    )
}

/// The refusal of a DM to nobody.
pub fn unknown_user(to: &str) -> ServerMessage {
    ServerMessage::error(
        ErrorCode::UnknownUser,
        format!("nobody named {to:?} is online"),
    )
}

/// The last [`CID_MEMORY`] values by `cid`: a map, and the order in
/// which to forget them.
#[derive(Debug)]
struct Recent<T> {
    /// The remembered values.
    by_cid: HashMap<Cid, T>,
    /// The same `cid`s, oldest first, so the oldest is forgotten first.
    order: VecDeque<Cid>,
}

impl<T> Default for Recent<T> {
    fn default() -> Self {
        Recent {
            by_cid: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<T> Recent<T> {
    fn get(&self, cid: &Cid) -> Option<&T> {
        self.by_cid.get(cid)
    }

    /// Forgets a `cid` (its place in `order` is skipped when it comes up).
    fn remove(&mut self, cid: &Cid) {
        self.by_cid.remove(cid);
    }

    /// Changes what a remembered `cid` means.
    fn replace(&mut self, cid: &Cid, value: T) {
        if let Some(slot) = self.by_cid.get_mut(cid) {
            *slot = value;
        }
    }

    /// Remembers `value` under a `cid` not yet remembered.
    fn insert(&mut self, cid: Cid, value: T) {
        if self.order.len() == CID_MEMORY {
            if let Some(oldest) = self.order.pop_front() {
                // A cid forgotten and remembered again appears twice in
                // `order`; dropping it at its first place forgets it a
                // little early (a resent say is still caught by the
                // store's unique index). Both are rare: a failed commit.
                self.by_cid.remove(&oldest);
            }
        }
        self.order.push_back(cid.clone());
        self.by_cid.insert(cid, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    use Audience::{Everyone, EveryoneExcept, One, Pair};

    /// The epoch of every test room.
    const EPOCH: &str = "test-epoch";

    /// The users the tests join, by their connection keys.
    const ALICE: UserId = 10;
    const BOB: UserId = 20;
    const CAROL: UserId = 30;
    const DAVE: UserId = 40;
    const ERIN: UserId = 50;

    /// A distinct instant per call site, so each test sees which `now` ended
    /// up in which `ts`.
    fn at(seconds: i64) -> Timestamp {
        Timestamp(DateTime::from_timestamp(seconds, 0).expect("a valid instant"))
    }

    /// Runs one request and returns what it produced. (Lists of users
    /// compare equal in any order, as the protocol promises no order.)
    fn run(room: &mut Room, user: UserId, request: Request, now: Timestamp) -> Vec<Delivery> {
        let mut out = Vec::new();
        room.handle(user, request, now, &mut out);
        out
    }

    /// What `leave` produced.
    fn leave(room: &mut Room, user: UserId, now: Timestamp) -> Vec<Delivery> {
        let mut out = Vec::new();
        room.leave(user, now, &mut out);
        out
    }

    fn join(name: &str) -> Request {
        Request::Join {
            name: name.into(),
            since: None,
            epoch: None,
        }
    }

    fn join_since(name: &str, since: u64) -> Request {
        Request::Join {
            name: name.into(),
            since: Some(since),
            epoch: None,
        }
    }

    fn say(text: &str) -> Request {
        Request::Say {
            text: text.into(),
            cid: None,
        }
    }

    fn dm(to: &str, text: &str) -> Request {
        Request::Dm {
            to: to.into(),
            text: text.into(),
            cid: None,
        }
    }

    fn nick(name: &str) -> Request {
        Request::Nick { name: name.into() }
    }

    /// An `error` for `user` alone.
    fn refused(user: UserId, code: ErrorCode, message: &str) -> Delivery {
        Delivery {
            to: One(user),
            message: ServerMessage::error(code, message),
        }
    }

    /// A public message as broadcast and as kept in history.
    fn chat(id: u64, ts: Timestamp, from: &str, text: &str) -> Arc<ChatMessage> {
        Arc::new(ChatMessage {
            id,
            ts,
            from: from.into(),
            text: text.into(),
            cid: None,
        })
    }

    /// A room with `users` joined at time 0, their deliveries discarded.
    fn room_with(config: RoomConfig, users: &[(UserId, &str)]) -> Room {
        let mut room = Room::new(config, EPOCH.into());
        for &(user, name) in users {
            run(&mut room, user, join(name), at(0));
        }
        room
    }

    /// The `welcome` history `user` gets for the join `request`.
    fn history_on_join(room: &mut Room, user: UserId, request: Request) -> Vec<Arc<ChatMessage>> {
        match run(room, user, request, at(0)).remove(0).message {
            ServerMessage::Welcome { history, .. } => history,
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_protocols() {
        assert_eq!(
            RoomConfig::default(),
            RoomConfig {
                history_len: 100,
                max_text_chars: 4000,
                max_resume: 1000,
                rate_limit: RateLimit {
                    per_second: 10.0,
                    burst: 20
                },
            }
        );
    }

    #[test]
    fn everything_but_join_is_refused_before_joining() {
        let mut room = room_with(RoomConfig::default(), &[(ALICE, "Alice")]);
        for request in [say("hi"), dm("Alice", "hi"), Request::Who, nick("Bob")] {
            assert_eq!(
                run(&mut room, BOB, request, at(1)),
                [refused(
                    BOB,
                    ErrorCode::NotJoined,
                    "join the room with a name first"
                )]
            );
        }
        assert!(!room.is_joined(BOB));
        assert_eq!(room.next_id(), 1);
    }

    #[test]
    fn join_welcomes_the_newcomer_and_tells_the_others() {
        let mut room = Room::new(RoomConfig::default(), EPOCH.into());
        assert_eq!(
            run(&mut room, ALICE, join("Alice"), at(1)),
            [
                Delivery {
                    to: One(ALICE),
                    message: ServerMessage::Welcome {
                        name: "Alice".into(),
                        users: ["Alice"].into_iter().collect(),
                        history: vec![],
                        server: protocol::SERVER_ID.into(),
                        epoch: EPOCH.into(),
                        recovered: None,
                        rate_limit: Some(Box::new(RateLimit::DEFAULT)),
                    },
                },
                Delivery {
                    to: EveryoneExcept(ALICE),
                    message: ServerMessage::Joined {
                        name: "Alice".into(),
                        ts: at(1),
                        online: 1,
                    },
                },
            ]
        );
        assert_eq!(
            run(&mut room, BOB, join("Bob"), at(2)),
            [
                Delivery {
                    to: One(BOB),
                    message: ServerMessage::Welcome {
                        name: "Bob".into(),
                        users: ["Alice", "Bob"].into_iter().collect(),
                        history: vec![],
                        server: protocol::SERVER_ID.into(),
                        epoch: EPOCH.into(),
                        recovered: None,
                        rate_limit: Some(Box::new(RateLimit::DEFAULT)),
                    },
                },
                Delivery {
                    to: EveryoneExcept(BOB),
                    message: ServerMessage::Joined {
                        name: "Bob".into(),
                        ts: at(2),
                        online: 2,
                    },
                },
            ]
        );
        assert!(room.is_joined(ALICE) && room.is_joined(BOB));
        assert_eq!(room.name(BOB), Some("Bob"));
        assert_eq!(room.online(), 2);
        let mut members: Vec<UserId> = room.members().collect();
        members.sort();
        assert_eq!(members, [ALICE, BOB]);
    }

    #[test]
    fn a_second_join_is_refused() {
        let mut room = room_with(RoomConfig::default(), &[(ALICE, "Alice")]);
        assert_eq!(
            run(&mut room, ALICE, join("Other"), at(1)),
            [refused(
                ALICE,
                ErrorCode::AlreadyJoined,
                "you have already joined; use nick to change your name"
            )]
        );
        assert_eq!(room.name(ALICE), Some("Alice"));
    }

    #[test]
    fn names_of_32_characters_are_accepted_and_33_refused() {
        let mut room = Room::new(RoomConfig::default(), EPOCH.into());
        // Two bytes a character: the limit counts characters, not bytes.
        let long = "é".repeat(33);
        let reason = validate_name(&long).unwrap_err();
        assert_eq!(
            run(&mut room, ALICE, join(&long), at(1)),
            [refused(ALICE, ErrorCode::InvalidName, &reason)]
        );
        assert!(!room.is_joined(ALICE));
        // A refused join leaves the user free to try again.
        let longest = "é".repeat(32);
        let out = run(&mut room, ALICE, join(&longest), at(2));
        assert_eq!(
            out[1],
            Delivery {
                to: EveryoneExcept(ALICE),
                message: ServerMessage::Joined {
                    name: longest.clone(),
                    ts: at(2),
                    online: 1,
                },
            }
        );
        assert_eq!(room.name(ALICE), Some(longest.as_str()));
    }

    #[test]
    fn invalid_names_are_refused_with_the_reason() {
        let mut room = Room::new(RoomConfig::default(), EPOCH.into());
        for bad in ["", "a b", "😀", "a\u{202e}b"] {
            let reason = validate_name(bad).unwrap_err();
            assert_eq!(
                run(&mut room, ALICE, join(bad), at(1)),
                [refused(ALICE, ErrorCode::InvalidName, &reason)],
                "{bad:?}"
            );
        }
        assert_eq!(room.online(), 0);
    }

    #[test]
    fn a_name_is_taken_whatever_its_case() {
        let mut room = room_with(RoomConfig::default(), &[(ALICE, "Zoë")]);
        assert_eq!(
            run(&mut room, BOB, join("ZOË"), at(1)),
            [refused(
                BOB,
                ErrorCode::NameTaken,
                "the name \"ZOË\" is already taken"
            )]
        );
        assert!(!room.is_joined(BOB));
        assert_eq!(run(&mut room, BOB, join("Bob"), at(2)).len(), 2);
    }

    #[test]
    fn say_broadcasts_a_message_with_the_next_id_and_now() {
        let mut room = room_with(RoomConfig::default(), &[(ALICE, "Alice"), (BOB, "Bob")]);
        assert_eq!(
            run(&mut room, ALICE, say("hello 😀"), at(5)),
            [Delivery {
                to: Everyone,
                message: ServerMessage::Message(chat(1, at(5), "Alice", "hello 😀")),
            }]
        );
        assert_eq!(room.next_id(), 2);
    }

    #[test]
    fn say_and_dm_refuse_empty_and_long_texts() {
        let config = RoomConfig {
            max_text_chars: 5,
            ..RoomConfig::default()
        };
        let mut room = room_with(config, &[(ALICE, "Alice")]);
        for request in [say(" \t\n"), dm("Alice", ""), dm("Nobody", " ")] {
            assert_eq!(
                run(&mut room, ALICE, request, at(1)),
                [refused(
                    ALICE,
                    ErrorCode::EmptyText,
                    "a message cannot be empty or only whitespace"
                )]
            );
        }
        for request in [say("héllo!"), dm("Alice", "😀😀😀😀😀😀")] {
            assert_eq!(
                run(&mut room, ALICE, request, at(1)),
                [refused(
                    ALICE,
                    ErrorCode::TooLong,
                    "a message has at most 5 characters"
                )]
            );
        }
        // Exactly the limit, in characters, is fine.
        assert_eq!(run(&mut room, ALICE, say("héllo"), at(2)).len(), 1);
        // Refusals used no ids.
        assert_eq!(room.next_id(), 2);
    }

    #[test]
    fn dm_goes_to_the_pair_under_the_recipients_own_name() {
        let mut room = room_with(
            RoomConfig::default(),
            &[(ALICE, "Alice"), (BOB, "Bob"), (CAROL, "Carol")],
        );
        assert_eq!(
            run(&mut room, ALICE, dm("bOB", "psst"), at(3)),
            [Delivery {
                to: Pair(ALICE, BOB),
                message: ServerMessage::Dm {
                    id: 1,
                    ts: at(3),
                    from: "Alice".into(),
                    to: "Bob".into(),
                    text: "psst".into(),
                    cid: None,
                },
            }]
        );
        // Private messages stay out of history.
        assert_eq!(history_on_join(&mut room, DAVE, join("Dave")), []);
    }

    #[test]
    fn dm_to_oneself_is_one_pair() {
        let mut room = room_with(RoomConfig::default(), &[(ALICE, "Alice")]);
        assert_eq!(
            run(&mut room, ALICE, dm("alice", "note"), at(3)),
            [Delivery {
                to: Pair(ALICE, ALICE),
                message: ServerMessage::Dm {
                    id: 1,
                    ts: at(3),
                    from: "Alice".into(),
                    to: "Alice".into(),
                    text: "note".into(),
                    cid: None,
                },
            }]
        );
    }

    #[test]
    fn dm_to_an_unknown_user_is_refused() {
        let mut room = room_with(RoomConfig::default(), &[(ALICE, "Alice"), (BOB, "Bob")]);
        leave(&mut room, BOB, at(1));
        assert_eq!(
            run(&mut room, ALICE, dm("Bob", "still there?"), at(2)),
            [refused(
                ALICE,
                ErrorCode::UnknownUser,
                "nobody named \"Bob\" is online"
            )]
        );
        assert_eq!(room.next_id(), 1);
    }

    #[test]
    fn ids_strictly_increase_across_say_and_dm() {
        let mut room = room_with(RoomConfig::default(), &[(ALICE, "Alice"), (BOB, "Bob")]);
        let mut ids = Vec::new();
        for (user, request) in [
            (ALICE, say("one")),
            (BOB, dm("Alice", "two")),
            (BOB, say("three")),
            (ALICE, dm("Alice", "four")),
        ] {
            match &run(&mut room, user, request, at(1))[0].message {
                ServerMessage::Message(message) => ids.push(message.id),
                ServerMessage::Dm { id, .. } => ids.push(*id),
                other => panic!("expected a message or dm, got {other:?}"),
            }
        }
        assert_eq!(ids, [1, 2, 3, 4]);
        assert_eq!(room.next_id(), 5);
    }

    /// A room keeping 3 messages in which Alice has said `a` to `e`, with ids
    /// 1 to 5 at seconds 1 to 5; and the three it keeps.
    fn room_after_five_messages() -> (Room, [Arc<ChatMessage>; 3]) {
        let config = RoomConfig {
            history_len: 3,
            ..RoomConfig::default()
        };
        let mut room = room_with(config, &[(ALICE, "Alice")]);
        for (seconds, text) in (1..).zip(["a", "b", "c", "d", "e"]) {
            run(&mut room, ALICE, say(text), at(seconds));
        }
        let kept = [
            chat(3, at(3), "Alice", "c"),
            chat(4, at(4), "Alice", "d"),
            chat(5, at(5), "Alice", "e"),
        ];
        (room, kept)
    }

    #[test]
    fn history_keeps_the_latest_messages_oldest_first() {
        let (mut room, kept) = room_after_five_messages();
        assert_eq!(history_on_join(&mut room, BOB, join("Bob")), kept);
    }

    #[test]
    fn history_of_zero_keeps_nothing() {
        let config = RoomConfig {
            history_len: 0,
            ..RoomConfig::default()
        };
        let mut room = room_with(config, &[(ALICE, "Alice")]);
        run(&mut room, ALICE, say("gone"), at(1));
        assert_eq!(history_on_join(&mut room, BOB, join("Bob")), []);
    }

    #[test]
    fn since_sends_only_the_kept_messages_after_it() {
        let (mut room, kept) = room_after_five_messages();
        // In the middle of what is kept: only the newer ones.
        assert_eq!(
            history_on_join(&mut room, BOB, join_since("Bob", 4)),
            kept[2..]
        );
        // Older than what is kept: all that is kept.
        assert_eq!(
            history_on_join(&mut room, CAROL, join_since("Carol", 1)),
            kept
        );
        // Up to date, or ahead: nothing.
        assert_eq!(history_on_join(&mut room, DAVE, join_since("Dave", 5)), []);
        assert_eq!(history_on_join(&mut room, ERIN, join_since("Erin", 99)), []);
    }

    #[test]
    fn who_lists_the_joined_users() {
        let mut room = room_with(RoomConfig::default(), &[(ALICE, "Alice"), (BOB, "Bob")]);
        assert_eq!(
            run(&mut room, BOB, Request::Who, at(1)),
            [Delivery {
                to: One(BOB),
                message: ServerMessage::Users {
                    users: ["Alice", "Bob"].into_iter().collect(),
                },
            }]
        );
    }

    #[test]
    fn the_list_of_users_follows_joins_leaves_and_renames() {
        let mut room = room_with(RoomConfig::default(), &[(ALICE, "Alice"), (BOB, "Bob")]);
        let who = |room: &mut Room| match &run(room, BOB, Request::Who, at(1))[0].message {
            ServerMessage::Users { users } => {
                let mut names = users.names();
                names.sort();
                names
            }
            other => panic!("not a users list: {other:?}"),
        };
        assert_eq!(who(&mut room), ["Alice", "Bob"]);
        // A join appends to the kept list.
        run(&mut room, CAROL, join("Carol"), at(2));
        assert_eq!(who(&mut room), ["Alice", "Bob", "Carol"]);
        // A leave and a rename rebuild it.
        room.leave(ALICE, at(3), &mut Vec::new());
        assert_eq!(who(&mut room), ["Bob", "Carol"]);
        run(&mut room, CAROL, nick("Caro"), at(4));
        run(&mut room, DAVE, join("Dave"), at(5));
        assert_eq!(who(&mut room), ["Bob", "Caro", "Dave"]);
    }

    #[test]
    fn nick_renames_for_everyone_and_frees_the_old_name() {
        let mut room = room_with(RoomConfig::default(), &[(ALICE, "Alice"), (BOB, "Bob")]);
        assert_eq!(
            run(&mut room, ALICE, nick("Ally"), at(4)),
            [Delivery {
                to: Everyone,
                message: ServerMessage::Renamed {
                    from: "Alice".into(),
                    to: "Ally".into(),
                    ts: at(4),
                },
            }]
        );
        assert_eq!(room.name(ALICE), Some("Ally"));
        // The new name is hers, and the old one is free for anyone.
        assert_eq!(
            run(&mut room, BOB, dm("ally", "hi"), at(5))[0].to,
            Pair(BOB, ALICE)
        );
        assert_eq!(run(&mut room, CAROL, join("alice"), at(6)).len(), 2);
    }

    #[test]
    fn nick_may_change_only_the_case_of_ones_own_name() {
        let mut room = room_with(RoomConfig::default(), &[(ALICE, "alice")]);
        assert_eq!(
            run(&mut room, ALICE, nick("Alice"), at(4)),
            [Delivery {
                to: Everyone,
                message: ServerMessage::Renamed {
                    from: "alice".into(),
                    to: "Alice".into(),
                    ts: at(4),
                },
            }]
        );
        assert_eq!(room.name(ALICE), Some("Alice"));
        // The key is still hers.
        assert_eq!(
            run(&mut room, BOB, join("ALICE"), at(5))[0].message,
            ServerMessage::error(ErrorCode::NameTaken, "the name \"ALICE\" is already taken")
        );
    }

    #[test]
    fn nick_to_the_same_name_answers_only_the_requester() {
        let mut room = room_with(RoomConfig::default(), &[(ALICE, "Alice")]);
        assert_eq!(
            run(&mut room, ALICE, nick("Alice"), at(4)),
            [Delivery {
                to: One(ALICE),
                message: ServerMessage::Renamed {
                    from: "Alice".into(),
                    to: "Alice".into(),
                    ts: at(4),
                },
            }]
        );
    }

    #[test]
    fn nick_is_refused_for_bad_or_taken_names() {
        let mut room = room_with(RoomConfig::default(), &[(ALICE, "Alice"), (BOB, "Bob")]);
        assert_eq!(
            run(&mut room, ALICE, nick("BOB"), at(1)),
            [refused(
                ALICE,
                ErrorCode::NameTaken,
                "the name \"BOB\" is already taken"
            )]
        );
        let reason = validate_name("no spaces").unwrap_err();
        assert_eq!(
            run(&mut room, ALICE, nick("no spaces"), at(1)),
            [refused(ALICE, ErrorCode::InvalidName, &reason)]
        );
        assert_eq!(room.name(ALICE), Some("Alice"));
    }

    #[test]
    fn leave_announces_to_the_rest_and_frees_the_name() {
        let mut room = room_with(
            RoomConfig::default(),
            &[(ALICE, "Alice"), (BOB, "Bob"), (CAROL, "Carol")],
        );
        assert_eq!(
            leave(&mut room, BOB, at(7)),
            [Delivery {
                to: Everyone,
                message: ServerMessage::Left {
                    name: "Bob".into(),
                    ts: at(7),
                    online: 2,
                },
            }]
        );
        assert!(!room.is_joined(BOB));
        assert_eq!(room.name(BOB), None);
        assert_eq!(room.online(), 2);
        assert!(room.members().all(|user| user != BOB));
        // Leaving twice is leaving once.
        assert_eq!(leave(&mut room, BOB, at(8)), []);
        // The name is free again, and the same connection key could rejoin.
        assert_eq!(run(&mut room, BOB, join("BOB"), at(9)).len(), 2);
    }

    #[test]
    fn leave_of_a_user_who_never_joined_sends_nothing() {
        let mut room = room_with(RoomConfig::default(), &[(ALICE, "Alice")]);
        run(&mut room, BOB, join("alice"), at(1));
        assert_eq!(leave(&mut room, BOB, at(2)), []);
        assert_eq!(room.online(), 1);
    }

    /// The `welcome` `user` gets for `request`: its history ids and `recovered`.
    fn resumed(room: &mut Room, user: UserId, request: Request) -> (Vec<u64>, Option<bool>) {
        match run(room, user, request, at(0)).remove(0).message {
            ServerMessage::Welcome {
                history, recovered, ..
            } => (history.iter().map(|m| m.id).collect(), recovered),
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    fn join_resume(name: &str, since: u64, epoch: &str) -> Request {
        Request::Join {
            name: name.into(),
            since: Some(since),
            epoch: Some(epoch.into()),
        }
    }

    #[test]
    fn a_resume_is_recovered_only_when_complete() {
        let config = RoomConfig {
            history_len: 3,
            max_resume: 2,
            ..RoomConfig::default()
        };
        let mut room = room_with(config, &[(ALICE, "alice")]);
        for n in 1..=5 {
            run(&mut room, ALICE, say(&format!("m{n}")), at(n));
        }
        // Kept: 3, 4, 5. A fresh join is not a resume.
        assert_eq!(resumed(&mut room, BOB, join("bob")), (vec![3, 4, 5], None));
        // Missed 4 and 5, within the limit, same epoch or none given.
        assert_eq!(
            resumed(&mut room, CAROL, join_resume("carol", 3, EPOCH)),
            (vec![4, 5], Some(true))
        );
        assert_eq!(
            resumed(&mut room, DAVE, join_since("dave", 5)),
            (vec![], Some(true))
        );
        // Three missed: more than --max-resume.
        assert_eq!(
            resumed(&mut room, ERIN, join_since("erin", 2)),
            (vec![3, 4, 5], Some(false))
        );
        // With room to resume, what was dropped still cannot be sent: after
        // 1, message 2 is missing, so the resume is not complete.
        let mut small = room_with(
            RoomConfig {
                history_len: 3,
                max_resume: 100,
                ..RoomConfig::default()
            },
            &[(ALICE, "alice")],
        );
        for n in 1..=5 {
            run(&mut small, ALICE, say(&format!("m{n}")), at(n));
        }
        assert_eq!(
            resumed(&mut small, BOB, join_since("bob", 1)),
            (vec![3, 4, 5], Some(false))
        );
        assert_eq!(
            resumed(&mut small, CAROL, join_since("carol", 2)),
            (vec![3, 4, 5], Some(true))
        );
        // Another epoch: its ids mean nothing here.
        assert_eq!(
            resumed(&mut small, DAVE, join_resume("dave", 4, "other")),
            (vec![3, 4, 5], Some(false))
        );
        let mut empty = room_with(config, &[]);
        assert_eq!(
            resumed(&mut empty, BOB, join_since("bob", 0)),
            (vec![], Some(true))
        );
    }

    #[test]
    fn a_resent_cid_is_acknowledged_to_the_sender_alone() {
        let mut room = room_with(RoomConfig::default(), &[(ALICE, "alice"), (BOB, "bob")]);
        let cid = Cid::new("c-1");
        let say_once = || Request::Say {
            text: "once".into(),
            cid: cid.clone(),
        };
        let first = run(&mut room, ALICE, say_once(), at(1));
        let original = match &first[..] {
            [Delivery {
                to: Everyone,
                message: ServerMessage::Message(message),
            }] => Arc::clone(message),
            other => panic!("expected one broadcast, got {other:?}"),
        };
        assert_eq!(original.cid, cid);
        // Resent, even by another user and with another text: the stored one.
        let again = Request::Say {
            text: "twice".into(),
            cid: cid.clone(),
        };
        assert_eq!(
            run(&mut room, BOB, again, at(2)),
            [Delivery {
                to: One(BOB),
                message: ServerMessage::Message(Arc::clone(&original)),
            }]
        );
        let history = history_on_join(&mut room, CAROL, join("carol"));
        assert_eq!(history, [original]);

        let dm_once = || Request::Dm {
            to: "bob".into(),
            text: "psst".into(),
            cid: Cid::new("d-1"),
        };
        let sent = run(&mut room, ALICE, dm_once(), at(3));
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].to, Pair(ALICE, BOB));
        assert_eq!(
            run(&mut room, ALICE, dm_once(), at(4)),
            [Delivery {
                to: One(ALICE),
                message: sent[0].message.clone(),
            }]
        );
        // Someone else with the same cid never sees Alice's DM: theirs is
        // a DM of its own.
        let reused = Request::Dm {
            to: "alice".into(),
            text: "mine".into(),
            cid: Cid::new("d-1"),
        };
        match &run(&mut room, BOB, reused, at(5))[..] {
            [Delivery {
                to: Pair(BOB, ALICE),
                message: ServerMessage::Dm { from, text, .. },
            }] => assert_eq!((from.as_str(), text.as_str()), ("bob", "mine")),
            other => panic!("expected Bob's own DM, got {other:?}"),
        }
        // And Alice's resend still finds hers.
        assert_eq!(
            run(&mut room, ALICE, dm_once(), at(6))[0].message,
            sent[0].message
        );
    }

    #[test]
    fn a_refused_request_with_a_cid_names_it() {
        let mut room = room_with(RoomConfig::default(), &[(ALICE, "alice")]);
        let empty = Request::Say {
            text: " ".into(),
            cid: Cid::new("e-1"),
        };
        assert_eq!(
            run(&mut room, ALICE, empty, at(1)),
            [Delivery {
                to: One(ALICE),
                message: ServerMessage::Error {
                    code: ErrorCode::EmptyText,
                    message: "a message cannot be empty or only whitespace".into(),
                    cid: Cid::new("e-1"),
                },
            }]
        );
    }

    #[test]
    fn history_pages_back_oldest_first() {
        let mut room = room_with(RoomConfig::default(), &[(ALICE, "alice")]);
        for n in 1..=5 {
            run(&mut room, ALICE, say(&format!("m{n}")), at(n));
        }
        let page = |room: &mut Room, before, limit| match run(
            room,
            ALICE,
            Request::History { before, limit },
            at(9),
        )
        .remove(0)
        {
            Delivery {
                to: One(ALICE),
                message: ServerMessage::History { messages },
            } => messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            other => panic!("expected a history page, got {other:?}"),
        };
        assert_eq!(page(&mut room, Some(4), 2), [2, 3]);
        assert_eq!(page(&mut room, None, 2), [4, 5]);
        assert_eq!(page(&mut room, Some(2), 100), [1]);
        assert_eq!(page(&mut room, Some(1), 100), Vec::<u64>::new());
        // Not joined: refused like any other request.
        let refused_page = run(
            &mut room,
            BOB,
            Request::History {
                before: None,
                limit: 1,
            },
            at(9),
        );
        assert!(matches!(
            &refused_page[0].message,
            ServerMessage::Error {
                code: ErrorCode::NotJoined,
                ..
            }
        ));
    }

    /// The cluster's parts of the room: what a node checks before it asks
    /// Redis, what it records as the stream delivers, and the other
    /// nodes' users.
    mod cluster {
        use super::*;

        fn cid(text: &str) -> Option<Cid> {
            Cid::new(text)
        }

        #[test]
        fn compose_checks_a_say_without_posting_it() {
            let room = room_with(RoomConfig::default(), &[(ALICE, "Alice")]);
            assert_eq!(
                room.compose(ALICE, "hi".into(), cid("c1"), at(1)),
                Ok(Composed::New(ChatMessage {
                    id: 0,
                    ts: at(1),
                    from: "Alice".into(),
                    text: "hi".into(),
                    cid: cid("c1"),
                }))
            );
            assert_eq!(room.next_id(), 1, "no id is taken");
            assert!(room.page(None, 10).is_empty(), "nothing is kept");
            let refusal = room.compose(ALICE, " ".into(), None, at(1)).unwrap_err();
            assert!(matches!(
                refusal,
                ServerMessage::Error {
                    code: ErrorCode::EmptyText,
                    ..
                }
            ));
            assert_eq!(
                room.compose(BOB, "hi".into(), None, at(1)),
                Err(not_joined())
            );
        }

        #[test]
        fn recorded_messages_are_kept_and_their_cids_acknowledged() {
            let mut room = room_with(RoomConfig::default(), &[(ALICE, "Alice")]);
            let mut stored = ChatMessage::clone(&chat(7, at(1), "Bob", "from elsewhere"));
            stored.cid = cid("c1");
            let stored = Arc::new(stored);
            room.record(Arc::clone(&stored));
            assert_eq!(room.page(None, 10), [Arc::clone(&stored)]);
            assert_eq!(
                room.compose(ALICE, "again".into(), cid("c1"), at(2)),
                Ok(Composed::Resent(stored))
            );
        }

        #[test]
        fn a_node_keeps_more_than_a_welcome_carries() {
            let config = RoomConfig {
                history_len: 2,
                ..RoomConfig::default()
            };
            let mut room = Room::new(config, EPOCH.into());
            room.keep(4);
            for id in 1..=5 {
                room.record(chat(id, at(0), "Bob", &format!("m{id}")));
            }
            let ids = |history: Vec<Arc<ChatMessage>>| -> Vec<u64> {
                history.iter().map(|m| m.id).collect()
            };
            assert_eq!(
                ids(history_on_join(&mut room, ALICE, join("Alice"))),
                [4, 5]
            );
            // A resume from the oldest kept message is served from memory.
            assert_eq!(
                ids(history_on_join(&mut room, BOB, join_since("Bob", 2))),
                [3, 4, 5]
            );
            assert!(room.keeps_since(1) && !room.keeps_since(0));
        }

        #[test]
        fn the_other_nodes_users_are_listed_and_their_names_taken() {
            let mut room = room_with(RoomConfig::default(), &[(ALICE, "Alice")]);
            room.set_remote(["Bob", "Carol"]);
            room.remote_joined("Dave");
            room.remote_left("Carol");
            run(&mut room, ERIN, join("Erin"), at(1));
            let mut users = match run(&mut room, ERIN, Request::Who, at(1)).remove(0).message {
                ServerMessage::Users { users } => users.names(),
                other => panic!("expected users, got {other:?}"),
            };
            users.sort();
            assert_eq!(users, ["Alice", "Bob", "Dave", "Erin"]);
            assert_eq!(room.online(), 2, "online counts this node's users");
            // Another node's user is Redis's to refuse: the room's view of
            // them may be a moment old. Its own are the room's.
            assert_eq!(room.check_name(CAROL, "bob", false), Ok(()));
            assert_eq!(
                room.check_name(CAROL, "ERIN", false),
                Err(name_taken("ERIN"))
            );
            assert_eq!(
                room.check_name(ALICE, "Carol", false),
                Err(already_joined())
            );
            assert_eq!(room.check_name(CAROL, "Carol", true), Err(not_joined()));
            assert_eq!(room.check_name(ALICE, "alice", true), Ok(()));
            assert_eq!(
                room.check_name(CAROL, "no spaces", false),
                Err(ServerMessage::error(
                    ErrorCode::InvalidName,
                    validate_name("no spaces").unwrap_err()
                ))
            );
            // For the room itself, a name in its last view of the other
            // nodes is taken.
            assert_eq!(
                run(&mut room, CAROL, join("DAVE"), at(2)),
                [Delivery {
                    to: One(CAROL),
                    message: name_taken("DAVE")
                }]
            );
            assert_eq!(room.user_named("ALICE"), Some(ALICE));
            assert_eq!(room.user_named("Bob"), None, "Bob is on another node");
        }

        #[test]
        fn a_dm_may_go_to_another_nodes_user_and_a_resend_is_acknowledged() {
            let mut room = room_with(RoomConfig::default(), &[(ALICE, "Alice")]);
            room.set_remote(["Bob"]);
            assert_eq!(room.check_dm(ALICE, "psst", None), Ok(None));
            assert!(matches!(
                room.check_dm(ALICE, "  ", None),
                Err(ServerMessage::Error {
                    code: ErrorCode::EmptyText,
                    ..
                })
            ));
            let sent = ServerMessage::Dm {
                id: 9,
                ts: at(1),
                from: "Alice".into(),
                to: "Bob".into(),
                text: "psst".into(),
                cid: cid("d1"),
            };
            room.remember_dm(Cid::new("d1").unwrap(), sent.clone());
            assert_eq!(
                room.check_dm(ALICE, "psst", cid("d1").as_ref()),
                Ok(Some(sent))
            );
            assert_eq!(room.check_dm(BOB, "x", None), Err(not_joined()));
        }

        #[test]
        fn starting_over_replaces_the_history_and_the_epoch() {
            let mut room = room_with(RoomConfig::default(), &[(ALICE, "Alice")]);
            let mut old = ChatMessage::clone(&chat(3, at(0), "Alice", "old"));
            old.cid = cid("c1");
            room.record(Arc::new(old));
            room.start_over("new-epoch".into(), vec![chat(8, at(1), "Bob", "new")], 7);
            assert_eq!(room.epoch(), "new-epoch");
            assert_eq!(room.page(None, 10), [chat(8, at(1), "Bob", "new")]);
            assert!(!room.keeps_since(6) && room.keeps_since(7));
            assert!(matches!(
                room.compose(ALICE, "old".into(), cid("c1"), at(2)),
                Ok(Composed::New(_))
            ));
        }
    }
}
