//! Tab completion of `/commands` and of the names of the people online.
//!
//! The coordinator keeps the [`Roster`] up to date from `welcome`, `joined`,
//! `left`, `renamed` and `users`; the line editor's thread reads it when
//! the user presses Tab. A mutex is enough: both sides hold it for a few
//! microseconds, at human speed.

use std::sync::{Arc, Mutex, PoisonError};

use rustyline::completion::Completer;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Helper};

use crate::proto::command::COMMANDS;
use crate::proto::protocol::name_key;

/// The names of the users online, shared between threads.
#[derive(Debug, Clone, Default)]
pub struct Roster {
    /// The names as the server spells them, in no particular order.
    names: Arc<Mutex<Vec<String>>>,
}

impl Roster {
    /// Replaces the whole list (on `welcome` and `users`).
    pub fn set(&self, users: &[String]) {
        *self.lock() = users.to_vec();
    }

    /// Someone joined.
    pub fn add(&self, name: &str) {
        self.remove(name);
        self.lock().push(name.to_owned());
    }

    /// Someone left; names match as the server matches them, ignoring case.
    pub fn remove(&self, name: &str) {
        let key = name_key(name);
        self.lock().retain(|known| name_key(known) != key);
    }

    /// Someone changed name.
    pub fn rename(&self, from: &str, to: &str) {
        self.remove(from);
        self.add(to);
    }

    /// A copy of the names, so that the lock is not held while they are used.
    pub fn names(&self) -> Vec<String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        // The list is valid after any panic (each change is one call on a
        // `Vec`), so a poisoned lock is still safe to use.
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What to put in place of the word before the cursor: the byte offset where
/// that word starts, and the candidates, each followed by a space.
///
/// The first word of a line that starts with `/` completes to commands;
/// any other word to names, ignoring case.
pub fn candidates(line: &str, pos: usize, names: &[String]) -> (usize, Vec<String>) {
    let before = &line[..pos];
    let start = before.rfind(char::is_whitespace).map_or(0, |space| {
        space + before[space..].chars().next().map_or(0, char::len_utf8)
    });
    let word = name_key(&before[start..]);
    let pool: Vec<&str> = if start == 0 && word.starts_with('/') {
        COMMANDS.to_vec()
    } else {
        names.iter().map(String::as_str).collect()
    };
    let mut found: Vec<String> = pool
        .into_iter()
        .filter(|candidate| name_key(candidate).starts_with(&word))
        .map(|candidate| format!("{candidate} "))
        .collect();
    found.sort_by_key(|candidate| name_key(candidate));
    (start, found)
}

/// The line editor's helper: completion only; rustyline's defaults for the
/// rest (no hints, no highlighting, every line complete).
#[derive(Debug)]
pub struct ChatHelper {
    /// Where the names to complete come from.
    pub roster: Roster,
}

impl Completer for ChatHelper {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        Ok(candidates(line, pos, &self.roster.names()))
    }
}

impl Hinter for ChatHelper {
    type Hint = String;
}

impl Highlighter for ChatHelper {}

impl Validator for ChatHelper {}

impl Helper for ChatHelper {}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["Bob", "bea", "Alice", "Zoë"].map(String::from).to_vec()
    }

    #[test]
    fn completes_names_ignoring_case() {
        assert_eq!(
            candidates("hi b", 4, &names()),
            (3, vec!["bea ".into(), "Bob ".into()])
        );
        assert_eq!(candidates("dm ZO", 5, &names()), (3, vec!["Zoë ".into()]));
        assert_eq!(candidates("al", 2, &names()), (0, vec!["Alice ".into()]));
        assert_eq!(candidates("x q", 3, &names()), (2, vec![]));
    }

    #[test]
    fn completes_the_word_before_the_cursor_after_wide_characters() {
        let line = "日本　Bo rest";
        let pos = line.find(" rest").unwrap();
        let start = line.find("Bo").unwrap();
        assert_eq!(
            candidates(line, pos, &names()),
            (start, vec!["Bob ".into()])
        );
    }

    #[test]
    fn an_empty_word_offers_everyone() {
        assert_eq!(candidates("dm ", 3, &names()).1.len(), 4);
    }

    #[test]
    fn completes_commands_at_the_start_only() {
        assert_eq!(candidates("/n", 2, &names()), (0, vec!["/nick ".into()]));
        assert_eq!(candidates("/", 1, &names()).1.len(), COMMANDS.len());
        assert_eq!(candidates("hi /n", 5, &names()), (3, vec![]));
    }

    #[test]
    fn the_roster_follows_joins_leaves_and_renames() {
        let roster = Roster::default();
        roster.set(&["Alice".into(), "Bob".into()]);
        roster.add("Carol");
        roster.remove("BOB");
        roster.rename("alice", "Alicia");
        let mut now = roster.names();
        now.sort();
        assert_eq!(now, ["Alicia", "Carol"]);
    }
}
