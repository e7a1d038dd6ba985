//! The cluster's Redis commands: the Lua scripts that make each step
//! atomic (publishing a round, claiming, renaming and releasing names,
//! sending a DM, liveness, reaping dead nodes, the snapshot a node starts
//! from, which registers it and reads or creates the epoch), the read of the streams that carries every node's
//! deliveries, the history's pages, and the parsing of their replies.
//!
//! Every function here builds a command's arguments or reads a reply; none
//! does I/O. A command goes out through a [`super::link::Link`], usually
//! pipelined with others, and its reply comes back as a
//! [`super::link::Frame`].
//!
//! Key layout (every key carries the same hash tag, `{CHAT}`, so that all
//! of them live in one slot should the data ever move to Redis Cluster):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{CHAT}:epoch` | string | the history's epoch |
//! | `{CHAT}:next_id` | string | the last message id allocated |
//! | `{CHAT}:history` | stream | public messages, entry id `ID-0` |
//! | `{CHAT}:cid:CID` | string | the id a cid got, expiring after 24 h |
//! | `{CHAT}:dmcid:SENDER:CID` | hash | a DM's id, fields and sender's name key for its sender's cid, expiring after 24 h |
//! | `{CHAT}:presence` | stream | `joined`, `left` and `renamed` events |
//! | `{CHAT}:names` | hash | name key (lowercase) → node id |
//! | `{CHAT}:online` | hash | name key → name as typed, for `who` |
//! | `{CHAT}:nodes` | set | the node ids registered as live |
//! | `{CHAT}:node:ID:alive` | string | present while node ID lives |
//! | `{CHAT}:node:ID:users` | hash | name key → name as typed, per node |
//! | `{CHAT}:node:ID:inbox` | stream | DMs to node ID's users, entry id `*` |

use std::fmt;
use std::time::Duration;

use super::link::Frame;
use sha1::{Digest, Sha1};

use crate::proto::protocol::name_key;

/// A reply that is a Redis error or does not have the shape the command
/// promises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyError(pub String);

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unexpected reply from Redis: {}", self.0)
    }
}

impl std::error::Error for ReplyError {}

/// One Lua script: its text and the SHA-1 that `EVALSHA` calls it by.
#[derive(Debug, Clone)]
struct Script {
    /// The Lua source, embedded at build time.
    text: &'static str,
    /// Its SHA-1 in lowercase hex, as Redis names it.
    sha: String,
}

impl Script {
    fn new(text: &'static str) -> Script {
        let sha = Sha1::digest(text.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Script { text, sha }
    }

    /// `EVALSHA sha numkeys keys... args...`.
    fn call(&self, keys: &[&str], args: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let mut command = vec![
            b"EVALSHA".to_vec(),
            self.sha.clone().into_bytes(),
            keys.len().to_string().into_bytes(),
        ];
        command.extend(keys.iter().map(|key| key.as_bytes().to_vec()));
        command.extend(args);
        command
    }
}

/// A public message of this round, before it has an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// The server time it was accepted, as the protocol writes it.
    pub ts: String,
    /// The sender's name.
    pub from: String,
    /// The text.
    pub text: String,
    /// The client's id for it, if it sent one.
    pub cid: Option<String>,
}

/// A public message as the history stream holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its place in the chat's one order.
    pub id: u64,
    /// The server time it was accepted.
    pub ts: String,
    /// The sender's name.
    pub from: String,
    /// The text.
    pub text: String,
    /// The client's id for it, if it sent one.
    pub cid: Option<String>,
}

/// What publishing did with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Stored under this new id.
    New(u64),
    /// Its cid was accepted before, under `id`; `stored` is that message,
    /// unless the history's bound has trimmed it since.
    Duplicate {
        /// The id the cid got the first time.
        id: u64,
        /// The message as first stored.
        stored: Option<StoredMessage>,
    },
}

/// The answer to a name claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The name is this node's; `online` users are in the chat now.
    Claimed {
        /// Users online across the cluster, the new one included.
        online: u64,
    },
    /// Another user, on any node, has it (case-insensitively).
    Taken,
    /// This node is not registered as live (it was declared dead): it must
    /// register again before it claims anything.
    NotRegistered,
}

/// The answer to a rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rename {
    /// The user has the new name now, and the rename was announced.
    Renamed,
    /// Another user, on any node, has the new name (case-insensitively).
    Taken,
    /// This node does not hold the old name (it was freed because the node
    /// was declared dead): nothing changed.
    NotHeld,
}

/// Whether a presence event is a join, a leave or a rename.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceKind {
    /// `joined`.
    Joined,
    /// `left`.
    Left,
    /// `renamed`; the event's name is the new one.
    Renamed {
        /// The old name, as typed.
        from: String,
    },
}

/// A `joined`, `left` or `renamed` from the presence stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The stream entry's id: where a reader resumes.
    pub stream_id: String,
    /// Join, leave or rename.
    pub kind: PresenceKind,
    /// The name as typed (the new one, for a rename).
    pub name: String,
    /// The node the user is (or was) on.
    pub node: String,
    /// Users online across the cluster right after it.
    pub online: u64,
}

/// A DM to be sent, before it has an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDm {
    /// The server time it was accepted, as the protocol writes it.
    pub ts: String,
    /// The sender's name, as typed.
    pub from: String,
    /// The recipient's name as the sender typed it: found
    /// case-insensitively.
    pub to: String,
    /// The text.
    pub text: String,
    /// The client's id for it, if it sent one.
    pub cid: Option<String>,
}

/// A DM as Redis keeps it: in an inbox, and under its cid, which a
/// resend is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDm {
    /// Its place in the chat's one order (shared with public messages).
    pub id: u64,
    /// The server time it was accepted.
    pub ts: String,
    /// The sender's name, as typed.
    pub from: String,
    /// The recipient's name, as the recipient typed it.
    pub to: String,
    /// The text.
    pub text: String,
}

/// What sending a DM did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmOutcome {
    /// Stored in the inbox of the recipient's node under a new id.
    Sent {
        /// The id it got.
        id: u64,
        /// The recipient's name as they typed it.
        to: String,
    },
    /// Nobody online has that name: nothing was stored, no id allocated.
    UnknownUser,
    /// The same sender sent this cid before: the DM as then stored.
    Duplicate(StoredDm),
}

/// A DM from this node's inbox stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxDm {
    /// The stream entry's id: where a reader resumes.
    pub stream_id: String,
    /// The DM.
    pub dm: StoredDm,
    /// The sender's client id for it, if it sent one.
    pub cid: Option<String>,
}

/// Something a stream read delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A public message, in id order.
    Message(StoredMessage),
    /// A join, a leave or a rename, in the order Redis accepted them.
    Presence(Presence),
    /// A DM to a user of this node, in the order Redis accepted them.
    Inbox(InboxDm),
}

/// Where a node's reader stands in its three streams: the last entry it
/// has delivered of each. After a reconnect it reads on from here, so
/// nothing is skipped and nothing delivered twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The last public message id delivered.
    pub message: u64,
    /// The last presence entry id delivered (`0-0` for none).
    pub presence: String,
    /// The last entry id of this node's inbox delivered (`0-0` for none).
    pub inbox: String,
}

impl Cursor {
    /// Moves past what `deliveries` hold.
    pub fn advance(&mut self, deliveries: &[Delivery]) {
        for delivery in deliveries {
            match delivery {
                Delivery::Message(message) => self.message = message.id,
                Delivery::Presence(presence) => self.presence.clone_from(&presence.stream_id),
                Delivery::Inbox(dm) => self.inbox.clone_from(&dm.stream_id),
            }
        }
    }
}

/// What a node reads when it joins the cluster (at start-up, and again
/// after it learnt it was declared dead or Redis lost its data): its
/// reader continues from (`last_id`, `presence`) without a gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The history's epoch (created by this call if Redis had none).
    pub epoch: String,
    /// Whether the node was registered as live before this call: false
    /// after it was declared dead or Redis lost its data.
    pub was_registered: bool,
    /// The presence stream's last entry id (`0-0` if empty).
    pub presence: String,
    /// (name as typed, node id) of every user online, sorted by name key
    /// so that every node lists them in the same order.
    pub users: Vec<(String, String)>,
    /// The last public messages, oldest first.
    pub history: Vec<StoredMessage>,
    /// The history stream's last message id (0 if empty).
    pub last_id: u64,
}

/// The commands of one chat, whose keys all start with `{CHAT}`.
#[derive(Debug, Clone)]
pub struct Commands {
    /// `{CHAT}`: the prefix and hash tag of every key.
    prefix: String,
    /// Names the epoch.
    epoch_key: String,
    /// Names the id counter, shared by public messages and DMs.
    counter: String,
    /// Names the history stream.
    history: String,
    /// Names the presence stream.
    presence: String,
    /// Names the names hash.
    names: String,
    /// Names the online hash.
    online: String,
    /// Names the set of live nodes.
    nodes: String,
    /// `publish.lua`.
    publish: Script,
    /// `claim.lua`.
    claim: Script,
    /// `release.lua`.
    release: Script,
    /// `alive.lua`.
    alive: Script,
    /// `reap.lua`.
    reap: Script,
    /// `rename.lua`.
    rename: Script,
    /// `dm.lua`.
    dm: Script,
    /// `snapshot.lua`.
    snapshot: Script,
}

/// The bulk strings of a command given as text.
fn strings(args: &[&str]) -> Vec<Vec<u8>> {
    args.iter().map(|arg| arg.as_bytes().to_vec()).collect()
}

impl Commands {
    /// The commands of the chat called `chat` (keys `{chat}:...`).
    pub fn new(chat: &str) -> Commands {
        let prefix = format!("{{{chat}}}");
        Commands {
            epoch_key: format!("{prefix}:epoch"),
            counter: format!("{prefix}:next_id"),
            history: format!("{prefix}:history"),
            presence: format!("{prefix}:presence"),
            names: format!("{prefix}:names"),
            online: format!("{prefix}:online"),
            nodes: format!("{prefix}:nodes"),
            prefix,
            publish: Script::new(include_str!("lua/publish.lua")),
            claim: Script::new(include_str!("lua/claim.lua")),
            release: Script::new(include_str!("lua/release.lua")),
            alive: Script::new(include_str!("lua/alive.lua")),
            reap: Script::new(include_str!("lua/reap.lua")),
            rename: Script::new(include_str!("lua/rename.lua")),
            dm: Script::new(include_str!("lua/dm.lua")),
            snapshot: Script::new(include_str!("lua/snapshot.lua")),
        }
    }

    fn scripts(&self) -> [&Script; 8] {
        [
            &self.publish,
            &self.claim,
            &self.release,
            &self.alive,
            &self.reap,
            &self.rename,
            &self.dm,
            &self.snapshot,
        ]
    }

    /// `SCRIPT LOAD` of every script: the setup of every connection that
    /// calls them, since a restarted Redis has forgotten them.
    pub fn load_scripts(&self) -> Vec<Vec<Vec<u8>>> {
        self.scripts()
            .iter()
            .map(|script| strings(&["SCRIPT", "LOAD", script.text]))
            .collect()
    }

    /// The SHA-1 of every script, in [`Commands::load_scripts`]'s order:
    /// what `SCRIPT LOAD` answers.
    pub fn script_shas(&self) -> Vec<&str> {
        self.scripts().iter().map(|s| s.sha.as_str()).collect()
    }

    /// The key of node `node`'s `what` (`alive`, `users` or `inbox`).
    fn node_key(&self, node: &str, what: &str) -> String {
        format!("{}:node:{node}:{what}", self.prefix)
    }

    /// Publishes `messages` in this order: consecutive new ids, appended to
    /// the history stream (kept to about `bound` entries), each cid
    /// remembered for `cid_ttl`.
    pub fn publish(
        &self,
        messages: &[NewMessage],
        bound: usize,
        cid_ttl: Duration,
    ) -> Vec<Vec<u8>> {
        let cid_keys: Vec<String> = messages
            .iter()
            .filter_map(|message| message.cid.as_ref())
            .map(|cid| format!("{}:cid:{cid}", self.prefix))
            .collect();
        let mut keys = vec![self.counter.as_str(), self.history.as_str()];
        keys.extend(cid_keys.iter().map(String::as_str));
        let mut args = strings(&[
            &bound.to_string(),
            &cid_ttl.as_secs().max(1).to_string(),
            &messages.len().to_string(),
        ]);
        for message in messages {
            args.extend(strings(&[
                &message.ts,
                &message.from,
                &message.text,
                message.cid.as_deref().unwrap_or(""),
            ]));
        }
        self.publish.call(&keys, args)
    }

    /// Claims `name` for a user on `node`, announcing the join in the
    /// presence stream (kept to about `bound` entries).
    pub fn claim(&self, node: &str, name: &str, bound: usize) -> Vec<Vec<u8>> {
        let users = self.node_key(node, "users");
        self.claim.call(
            &[
                &self.names,
                &users,
                &self.nodes,
                &self.presence,
                &self.online,
            ],
            strings(&[&name_key(name), name, node, &bound.to_string()]),
        )
    }

    /// Renames `old_name`, which a user on `node` holds, to `new_name`,
    /// announcing the rename in the presence stream (kept to about `bound`
    /// entries). A change of case only changes the name shown.
    pub fn rename(&self, node: &str, old_name: &str, new_name: &str, bound: usize) -> Vec<Vec<u8>> {
        let users = self.node_key(node, "users");
        self.rename.call(
            &[&self.names, &users, &self.presence, &self.online],
            strings(&[
                &name_key(old_name),
                &name_key(new_name),
                new_name,
                node,
                &bound.to_string(),
            ]),
        )
    }

    /// Sends `message` from a user of `node` to the inbox of its
    /// recipient's node and, if that is another, of `node` (kept to about
    /// `bound` entries each), under the next id of the chat's one
    /// sequence; its cid, if any, is remembered for `cid_ttl`, per sender.
    pub fn dm(&self, node: &str, message: &NewDm, cid_ttl: Duration, bound: usize) -> Vec<Vec<u8>> {
        let sender = name_key(&message.from);
        // Keyed by sender too: a cid another user happens to send is
        // another DM, remembered on its own. Names hold no `:`, so the key
        // reads back unambiguously.
        let cid_key = message
            .cid
            .as_ref()
            .map(|cid| format!("{}:dmcid:{sender}:{cid}", self.prefix));
        let mut keys = vec![
            self.names.as_str(),
            self.online.as_str(),
            self.counter.as_str(),
        ];
        keys.extend(cid_key.as_deref());
        self.dm.call(
            &keys,
            strings(&[
                &self.prefix,
                &name_key(&message.to),
                &sender,
                &message.ts,
                &message.from,
                &message.to,
                &message.text,
                message.cid.as_deref().unwrap_or(""),
                &cid_ttl.as_secs().max(1).to_string(),
                &bound.to_string(),
                node,
            ]),
        )
    }

    /// Releases `name` if `node` holds it, announcing the leave.
    pub fn release(&self, node: &str, name: &str, bound: usize) -> Vec<Vec<u8>> {
        let users = self.node_key(node, "users");
        self.release.call(
            &[&self.names, &users, &self.presence, &self.online],
            strings(&[&name_key(name), node, &bound.to_string()]),
        )
    }

    /// Keeps `node` live for another `ttl`, if it still is (the snapshot
    /// registers it).
    pub fn refresh(&self, node: &str, ttl: Duration) -> Vec<Vec<u8>> {
        let alive = self.node_key(node, "alive");
        self.alive
            .call(&[&self.nodes, &alive], strings(&[node, &millis(ttl)]))
    }

    /// Registers `node` as live for `ttl` and reads where the chat stands:
    /// the epoch (created as `candidate_epoch` if there is none), whether
    /// the node was still registered, everyone online, the last `keep`
    /// public messages and the streams' last ids. One atomic step, so
    /// nothing can happen between what it reads and where the node's
    /// reader starts.
    pub fn snapshot(
        &self,
        node: &str,
        ttl: Duration,
        candidate_epoch: &str,
        keep: usize,
    ) -> Vec<Vec<u8>> {
        let alive = self.node_key(node, "alive");
        self.snapshot.call(
            &[
                &self.epoch_key,
                &self.nodes,
                &alive,
                &self.presence,
                &self.online,
                &self.names,
                &self.history,
            ],
            strings(&[node, &millis(ttl), candidate_epoch, &keep.to_string()]),
        )
    }

    /// Declares dead every node whose liveness expired, announcing each of
    /// its users as left once.
    pub fn reap(&self, bound: usize) -> Vec<Vec<u8>> {
        self.reap.call(
            &[&self.nodes, &self.names, &self.presence, &self.online],
            strings(&[&self.prefix, &bound.to_string()]),
        )
    }

    /// Up to `limit` public messages with ids below `before` (`u64::MAX`
    /// for the newest), newest first as Redis answers; see [`parse_page`].
    pub fn page(&self, before: u64, limit: usize) -> Vec<Vec<u8>> {
        let end = match before {
            u64::MAX => "+".to_owned(),
            // `(0-0` is an error to Redis; `0-0` names no entry, since
            // message ids start at 1, so the page is empty as it should be.
            0 => "0-0".to_owned(),
            before => format!("({before}-0"),
        };
        strings(&[
            "XREVRANGE",
            &self.history,
            &end,
            "-",
            "COUNT",
            &limit.to_string(),
        ])
    }

    /// Reads the history, the presence stream and `node`'s inbox after
    /// `cursor`, at most `count` entries of each, waiting up to `block`
    /// for something new. Sent on a connection of its own, since it holds
    /// the connection while it waits.
    pub fn read(&self, node: &str, cursor: &Cursor, block: Duration, count: usize) -> Vec<Vec<u8>> {
        strings(&[
            "XREAD",
            "COUNT",
            &count.to_string(),
            "BLOCK",
            &block.as_millis().to_string(),
            "STREAMS",
            &self.history,
            &self.presence,
            &self.node_key(node, "inbox"),
            &format!("{}-0", cursor.message),
            &cursor.presence,
            &cursor.inbox,
        ])
    }

    /// Splits the reply to [`Commands::read`] for `node` into deliveries,
    /// stream by stream as Redis answers: messages in id order, presence
    /// events and DMs each in stream order. A timeout (nil) delivers
    /// nothing.
    pub fn parse_read(&self, node: &str, frame: Frame) -> Result<Vec<Delivery>, ReplyError> {
        let mut out = Vec::new();
        if frame == Frame::Null {
            return Ok(out);
        }
        let inbox = self.node_key(node, "inbox");
        for stream in array(frame)? {
            let [name, entries] = pair(stream)?;
            let name = text(name)?;
            let parse: fn(String, Vec<Frame>) -> Result<Delivery, ReplyError> =
                if name == self.history {
                    |id, fields| stored_message(&id, fields).map(Delivery::Message)
                } else if name == self.presence {
                    |id, fields| presence(id, fields).map(Delivery::Presence)
                } else if name == inbox {
                    |id, fields| inbox_dm(id, fields).map(Delivery::Inbox)
                } else {
                    return Err(ReplyError(format!("a stream not asked for: {name}")));
                };
            for item in array(entries)? {
                let (id, fields) = entry(item)?;
                out.push(parse(id, fields)?);
            }
        }
        Ok(out)
    }
}

/// A duration in whole milliseconds, at least 1 (Redis refuses `PX 0`).
fn millis(duration: Duration) -> String {
    duration.as_millis().max(1).to_string()
}

/// An error reply as a [`ReplyError`]; anything else as itself.
fn ok(frame: Frame) -> Result<Frame, ReplyError> {
    match frame {
        Frame::Error(message) => Err(ReplyError(message)),
        frame => Ok(frame),
    }
}

fn array(frame: Frame) -> Result<Vec<Frame>, ReplyError> {
    match ok(frame)? {
        Frame::Array(items) => Ok(items),
        other => Err(ReplyError(format!("expected an array, got {other:?}"))),
    }
}

fn pair(frame: Frame) -> Result<[Frame; 2], ReplyError> {
    <[Frame; 2]>::try_from(array(frame)?)
        .map_err(|items| ReplyError(format!("expected a pair, got {items:?}")))
}

fn integer(frame: Frame) -> Result<i64, ReplyError> {
    match ok(frame)? {
        Frame::Integer(n) => Ok(n),
        other => Err(ReplyError(format!("expected an integer, got {other:?}"))),
    }
}

fn text(frame: Frame) -> Result<String, ReplyError> {
    match ok(frame)? {
        Frame::BulkString(bytes) | Frame::SimpleString(bytes) => {
            String::from_utf8(bytes).map_err(|err| ReplyError(format!("not UTF-8: {err}")))
        }
        other => Err(ReplyError(format!("expected a string, got {other:?}"))),
    }
}

/// A stream entry: its id and its flat field list.
fn entry(frame: Frame) -> Result<(String, Vec<Frame>), ReplyError> {
    let [id, fields] = pair(frame)?;
    Ok((text(id)?, array(fields)?))
}

/// A stream entry's flat field list as (field, value) pairs.
fn fields(list: Vec<Frame>) -> Result<Vec<(String, String)>, ReplyError> {
    let mut pairs = Vec::with_capacity(list.len() / 2);
    let mut items = list.into_iter();
    while let Some(field) = items.next() {
        let value = items
            .next()
            .ok_or_else(|| ReplyError("a field without a value".into()))?;
        pairs.push((text(field)?, text(value)?));
    }
    Ok(pairs)
}

/// The value of `field` among `pairs`.
fn field(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(field, _)| field == name)
        .map(|(_, value)| value.clone())
}

fn required(pairs: &[(String, String)], name: &str) -> Result<String, ReplyError> {
    field(pairs, name).ok_or_else(|| ReplyError(format!("an entry without `{name}`")))
}

fn number(value: &str) -> Result<u64, ReplyError> {
    value
        .parse()
        .map_err(|_| ReplyError(format!("not a number: {value}")))
}

/// The message id of a history entry's stream id, `ID-0`.
fn message_id(stream_id: &str) -> Result<u64, ReplyError> {
    number(stream_id.strip_suffix("-0").unwrap_or(stream_id))
}

/// A history entry: stream id `ID-0` and the message's fields.
fn stored_message(stream_id: &str, list: Vec<Frame>) -> Result<StoredMessage, ReplyError> {
    let pairs = fields(list)?;
    Ok(StoredMessage {
        id: message_id(stream_id)?,
        ts: required(&pairs, "ts")?,
        from: required(&pairs, "from")?,
        text: required(&pairs, "text")?,
        cid: field(&pairs, "cid"),
    })
}

fn presence(stream_id: String, list: Vec<Frame>) -> Result<Presence, ReplyError> {
    let pairs = fields(list)?;
    let kind = match required(&pairs, "type")?.as_str() {
        "joined" => PresenceKind::Joined,
        "left" => PresenceKind::Left,
        "renamed" => PresenceKind::Renamed {
            from: required(&pairs, "from")?,
        },
        other => return Err(ReplyError(format!("an unknown presence event: {other}"))),
    };
    Ok(Presence {
        stream_id,
        kind,
        name: required(&pairs, "name")?,
        node: required(&pairs, "node")?,
        online: number(&required(&pairs, "online")?)?,
    })
}

/// An inbox entry: a DM's fields under a stream id of Redis's choosing.
fn inbox_dm(stream_id: String, list: Vec<Frame>) -> Result<InboxDm, ReplyError> {
    let pairs = fields(list)?;
    Ok(InboxDm {
        stream_id,
        dm: StoredDm {
            id: number(&required(&pairs, "id")?)?,
            ts: required(&pairs, "ts")?,
            from: required(&pairs, "from")?,
            to: required(&pairs, "to")?,
            text: required(&pairs, "text")?,
        },
        cid: field(&pairs, "cid"),
    })
}

/// The publish script's answer: one [`Published`] per message, in order.
pub fn parse_publish(frame: Frame) -> Result<Vec<Published>, ReplyError> {
    array(frame)?
        .into_iter()
        .map(|item| {
            let mut parts = array(item)?.into_iter();
            let (Some(id), Some(dup)) = (parts.next(), parts.next()) else {
                return Err(ReplyError("a publish result without id and flag".into()));
            };
            let id = integer(id)? as u64;
            if integer(dup)? == 0 {
                return Ok(Published::New(id));
            }
            let list = parts.next().map(array).transpose()?.unwrap_or_default();
            let stored = if list.is_empty() {
                None
            } else {
                Some(stored_message(&id.to_string(), list)?)
            };
            Ok(Published::Duplicate { id, stored })
        })
        .collect()
}

/// The claim script's answer.
pub fn parse_claim(frame: Frame) -> Result<Claim, ReplyError> {
    Ok(match integer(frame)? {
        -1 => Claim::NotRegistered,
        0 => Claim::Taken,
        online => Claim::Claimed {
            online: online as u64,
        },
    })
}

/// The rename script's answer.
pub fn parse_rename(frame: Frame) -> Result<Rename, ReplyError> {
    match integer(frame)? {
        1 => Ok(Rename::Renamed),
        0 => Ok(Rename::Taken),
        -1 => Ok(Rename::NotHeld),
        other => Err(ReplyError(format!("a rename result of {other}"))),
    }
}

/// The DM script's answer.
pub fn parse_dm(frame: Frame) -> Result<DmOutcome, ReplyError> {
    let mut parts = array(frame)?.into_iter();
    let mut next = || {
        parts
            .next()
            .ok_or_else(|| ReplyError("a DM result cut short".into()))
    };
    Ok(match text(next()?)?.as_str() {
        "sent" => DmOutcome::Sent {
            id: integer(next()?)? as u64,
            to: text(next()?)?,
        },
        "unknown" => DmOutcome::UnknownUser,
        "duplicate" => DmOutcome::Duplicate(StoredDm {
            id: integer(next()?)? as u64,
            ts: text(next()?)?,
            from: text(next()?)?,
            to: text(next()?)?,
            text: text(next()?)?,
        }),
        other => return Err(ReplyError(format!("a DM result of {other}"))),
    })
}

/// A page of history, oldest first (Redis answers newest first).
pub fn parse_page(frame: Frame) -> Result<Vec<StoredMessage>, ReplyError> {
    // Redis answers `COUNT 0` with a nil rather than an empty array.
    if frame == Frame::Null {
        return Ok(Vec::new());
    }
    let mut page = history(frame)?;
    page.reverse();
    Ok(page)
}

/// History entries, in the order given.
fn history(frame: Frame) -> Result<Vec<StoredMessage>, ReplyError> {
    array(frame)?
        .into_iter()
        .map(|item| {
            let (id, fields) = entry(item)?;
            stored_message(&id, fields)
        })
        .collect()
}

/// The snapshot script's answer.
pub fn parse_snapshot(frame: Frame) -> Result<Snapshot, ReplyError> {
    let parts = <[Frame; 6]>::try_from(array(frame)?)
        .map_err(|parts| ReplyError(format!("a snapshot of {} parts", parts.len())))?;
    let [epoch, was_registered, presence, users, history_entries, last_id] = parts;
    let mut users = fields(array(users)?)?;
    users.sort_by_cached_key(|(name, _)| name_key(name));
    Ok(Snapshot {
        epoch: text(epoch)?,
        was_registered: integer(was_registered)? == 1,
        presence: text(presence)?,
        users,
        history: history(history_entries)?,
        last_id: message_id(&text(last_id)?)?,
    })
}

/// The release script's answer: users still online, or `None` if this
/// node did not hold the name (nothing was announced).
pub fn parse_release(frame: Frame) -> Result<Option<u64>, ReplyError> {
    let online = integer(frame)?;
    Ok((online >= 0).then_some(online as u64))
}

/// The liveness script's answer: `false` when a refreshing node learns it
/// was declared dead.
pub fn parse_alive(frame: Frame) -> Result<bool, ReplyError> {
    Ok(integer(frame)? == 1)
}

/// The reap script's answer: (node id, name) of every user announced left.
pub fn parse_reap(frame: Frame) -> Result<Vec<(String, String)>, ReplyError> {
    fields(array(frame)?)
}
