//! The store of `--db :memory:`: the last messages of each room, in this
//! process only. A restart loses them and names a new epoch.
//!
//! It never blocks, so the worker runs it inline on the loop, and it keeps
//! no more than the room does in memory, so it is never asked for older
//! messages (see [`Store::keeps_everything`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::chat::store::{new_epoch, Commit, Duplicate, Store, StoreError, Summary};
use crate::proto::protocol::ChatMessage;

/// The last messages of every room, in memory.
#[derive(Debug)]
pub struct MemoryStore {
    /// How many messages are kept per room (`--history`).
    keep: usize,
    /// Each room's last messages, oldest first.
    rooms: HashMap<String, VecDeque<Arc<ChatMessage>>>,
    /// Names this process's history.
    epoch: String,
    /// The reservation; it lasts as long as the ids it covers.
    reserved: u64,
    /// Messages stored per room since the start, for [`Summary`].
    counts: HashMap<String, u64>,
}

impl MemoryStore {
    /// An empty store keeping `keep` messages per room, under a new epoch.
    pub fn new(keep: usize) -> Self {
        MemoryStore {
            keep,
            rooms: HashMap::new(),
            epoch: new_epoch(),
            reserved: 0,
            counts: HashMap::new(),
        }
    }

    /// The kept messages of `room` (none for a room never written).
    fn kept(&self, room: &str) -> impl DoubleEndedIterator<Item = &Arc<ChatMessage>> {
        self.rooms.get(room).into_iter().flatten()
    }
}

impl Store for MemoryStore {
    fn epoch(&self) -> &str {
        &self.epoch
    }

    fn reserved_through(&self) -> u64 {
        self.reserved
    }

    fn may_block(&self) -> bool {
        false
    }

    fn keeps_everything(&self) -> bool {
        false
    }

    fn append(&mut self, commits: &[Commit]) -> Result<Vec<Vec<Duplicate>>, StoreError> {
        let mut duplicates = Vec::with_capacity(commits.len());
        for commit in commits {
            let room = self.rooms.entry(commit.room.to_string()).or_default();
            let mut found = Vec::new();
            for message in &commit.messages {
                // Only the kept messages can be matched: a cid older than
                // them is forgotten, as the protocol allows for `:memory:`.
                let earlier = message
                    .cid
                    .as_ref()
                    .and_then(|cid| room.iter().find(|kept| kept.cid.as_ref() == Some(cid)));
                if let Some(stored) = earlier {
                    found.push(Duplicate {
                        id: message.id,
                        stored: Arc::clone(stored),
                    });
                    continue;
                }
                room.push_back(Arc::clone(message));
                if room.len() > self.keep {
                    room.pop_front();
                }
                *self.counts.entry(commit.room.to_string()).or_default() += 1;
            }
            duplicates.push(found);
            self.reserved = self.reserved.max(commit.reserve_through);
        }
        Ok(duplicates)
    }

    fn after(
        &mut self,
        room: &str,
        since: u64,
        below: u64,
        limit: usize,
    ) -> Result<Vec<Arc<ChatMessage>>, StoreError> {
        Ok(self
            .kept(room)
            .filter(|message| message.id > since && message.id < below)
            .take(limit)
            .cloned()
            .collect())
    }

    fn before(
        &mut self,
        room: &str,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Arc<ChatMessage>>, StoreError> {
        let mut page: Vec<_> = self
            .kept(room)
            .rev()
            .filter(|message| message.id < before)
            .take(limit)
            .cloned()
            .collect();
        page.reverse();
        Ok(page)
    }

    fn summary(&mut self, room: &str) -> Result<Summary, StoreError> {
        Ok(Summary {
            messages: self.counts.get(room).copied().unwrap_or(0),
            last_id: self.kept(room).next_back().map_or(0, |message| message.id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::store::contract::{self, commit, message};
    use crate::chat::store::MAIN_ROOM;

    #[test]
    fn group_commit_and_reservation() {
        contract::group_commit_and_reservation(&mut MemoryStore::new(100));
    }

    #[test]
    fn cid_dedupe() {
        contract::cid_dedupe(&mut MemoryStore::new(100));
    }

    #[test]
    fn ranges() {
        contract::ranges(&mut MemoryStore::new(100));
    }

    #[test]
    fn keeps_only_the_last_messages_under_a_new_epoch() {
        let mut store = MemoryStore::new(2);
        let messages = (1..=3).map(|id| message(id, "m", None)).collect();
        store.append(&[commit(messages, 0)]).unwrap();
        let kept = store.before(MAIN_ROOM, u64::MAX, 10).unwrap();
        assert_eq!(kept.iter().map(|m| m.id).collect::<Vec<_>>(), [2, 3]);
        assert!(!store.keeps_everything());
        assert_ne!(store.epoch(), MemoryStore::new(2).epoch());
    }
}
