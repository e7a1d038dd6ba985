//! One structure for every deadline of every connection.
//!
//! The event loop asks it for the earliest deadline and sleeps in `poll`
//! until then at most. Entries are never removed early: a connection whose
//! deadline moved simply ignores the stale entry when it fires (each entry
//! carries the connection's serial number and the instant it was armed for,
//! and the loop checks both). This keeps the hot path, a frame arriving,
//! free of heap operations: activity only updates a timestamp.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A deadline that came due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expired {
    /// When it was due.
    pub at: Instant,
    /// The slab key of the connection it belongs to.
    pub key: usize,
    /// The serial number of that connection, so an entry left behind by a
    /// closed connection never fires on a new one that reuses the key.
    pub serial: u64,
}

/// A min-heap of deadlines.
#[derive(Debug, Default)]
pub struct Timers {
    /// Earliest first, thanks to `Reverse`.
    heap: BinaryHeap<Reverse<Expired>>,
}

impl Timers {
    /// Arms a deadline for a connection.
    pub fn schedule(&mut self, at: Instant, key: usize, serial: u64) {
        self.heap.push(Reverse(Expired { at, key, serial }));
    }

    /// The earliest deadline, if any: the loop's poll timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(entry)| entry.at)
    }

    /// Takes the earliest deadline if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Expired> {
        match self.heap.peek() {
            Some(Reverse(entry)) if entry.at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_due_deadlines_earliest_first() {
        let start = Instant::now();
        let mut timers = Timers::default();
        timers.schedule(start + Duration::from_secs(3), 1, 10);
        timers.schedule(start + Duration::from_secs(1), 2, 20);
        timers.schedule(start + Duration::from_secs(2), 3, 30);
        assert_eq!(timers.next_deadline(), Some(start + Duration::from_secs(1)));
        assert_eq!(timers.pop_due(start), None);
        let now = start + Duration::from_secs(2);
        assert_eq!(timers.pop_due(now).map(|e| e.key), Some(2));
        assert_eq!(timers.pop_due(now).map(|e| e.key), Some(3));
        assert_eq!(timers.pop_due(now), None);
        assert_eq!(
            timers.pop_due(start + Duration::from_secs(9)),
            Some(Expired {
                at: start + Duration::from_secs(3),
                key: 1,
                serial: 10
            })
        );
        assert_eq!(timers.next_deadline(), None);
    }
}
