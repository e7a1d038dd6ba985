//! The input thread: lines from the user, from the line editor on a
//! terminal or from standard input when it is piped.
//!
//! Either way the thread only reads and forwards; the coordinator decides
//! what a line means. The one exception is `/quit`: the thread stops
//! reading at once, so that rustyline has given the terminal back (and
//! saved the history) before the coordinator ends the process.

use std::io::{self, BufRead};
use std::path::{Path, PathBuf};
use std::thread;

use crossbeam_channel::Sender;
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{CompletionType, Config, Editor, ExternalPrinter};

use super::complete::{ChatHelper, Roster};
use crate::proto::command::{self, Command};
use crate::proto::protocol::validate_name;

/// The prompt. Short, so the typed line keeps most of the width.
const PROMPT: &str = "> ";

/// What the user is asked when a name is needed.
pub const NAME_QUESTION: &str = "What's your name? (letters, digits, '_', '-' or '.', at most 32)";

/// Lines of history kept between runs: weeks of chatting, a small file.
const HISTORY_LINES: usize = 1000;

/// What the line client adds to the commands' help: its keys, and what it
/// does to a text before sending it.
pub const KEYS_HELP: &str = "\
:smile:           becomes an emoji in what you say
Tab               completes names and /commands
Ctrl-D            leaves, like /quit; Ctrl-C clears the line";

/// What the input thread tells the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The user typed a line (without its line ending).
    Line(String),
    /// The input ended: Ctrl-D, or the end of piped input.
    End,
}

/// The line editor for a terminal, with name completion from `roster` and
/// the history of earlier runs from `history_file`, and the printer that
/// shows other lines above the prompt without breaking the typed line.
pub fn editor(
    roster: Roster,
    history_file: Option<&Path>,
) -> rustyline::Result<(Editor<ChatHelper, DefaultHistory>, impl ExternalPrinter)> {
    let config = Config::builder()
        .max_history_size(HISTORY_LINES)?
        .history_ignore_dups(true)?
        // Like a shell: a line typed with a leading space is not kept.
        .history_ignore_space(true)
        // Lines are added one by one, so that DMs can be left out.
        .auto_add_history(false)
        // List the names on a second Tab, like a shell, rather than cycle.
        .completion_type(CompletionType::List)
        .build();
    let mut editor = Editor::with_config(config)?;
    editor.set_helper(Some(ChatHelper { roster }));
    if let Some(path) = history_file {
        // No file yet is the normal first run; an unreadable one should not
        // stop anyone from chatting.
        let _ = editor.load_history(path);
    }
    let printer = editor.create_external_printer()?;
    Ok((editor, printer))
}

/// Asks for a name on the terminal until a valid one is typed; `None`
/// when the user would rather leave (Ctrl-D, Ctrl-C).
pub fn ask_name(editor: &mut Editor<ChatHelper, DefaultHistory>) -> Option<String> {
    println!("{NAME_QUESTION}");
    loop {
        let line = editor.readline("name> ").ok()?;
        let name = line.trim();
        match validate_name(name) {
            Ok(()) => return Some(name.to_owned()),
            Err(why) => println!("! {why}"),
        }
    }
}

/// Reads lines with `editor` on a thread of its own until Ctrl-D or
/// `/quit`, then appends the lines typed to `history_file`. DMs are kept
/// out of it unless `keep_dms`: the file is plain text, and a private
/// message should not outlive the conversation on disk.
pub fn spawn_editor(
    mut editor: Editor<ChatHelper, DefaultHistory>,
    history_file: Option<PathBuf>,
    keep_dms: bool,
    lines: Sender<Input>,
) {
    spawn(move || {
        let last = 'read: loop {
            match editor.readline(PROMPT) {
                // Pasted text arrives whole (bracketed paste), newlines
                // and all: each of its lines is a message of its own.
                Ok(pasted) => {
                    for line in pasted.lines() {
                        let parsed = command::parse(line);
                        if keep_dms || !matches!(parsed, Some(Command::Dm { .. })) {
                            // Refused entries (blank, duplicate) are no error.
                            let _ = editor.add_history_entry(line);
                        }
                        if parsed == Some(Command::Quit) {
                            break 'read Input::Line(line.to_owned());
                        }
                        if lines.send(Input::Line(line.to_owned())).is_err() {
                            return;
                        }
                    }
                }
                // Ctrl-C: rustyline has already dropped the line; go on.
                Err(ReadlineError::Interrupted) => {}
                Err(ReadlineError::Eof) => break Input::End,
                Err(err) => {
                    eprintln!("lineclient: cannot read the terminal: {err}");
                    break Input::End;
                }
            }
        };
        if let Some(path) = history_file {
            if let Err(err) = save_history(&mut editor, &path) {
                eprintln!(
                    "lineclient: cannot save history to {}: {err}",
                    path.display()
                );
            }
        }
        // Sent last: the coordinator may end the process as soon as it
        // reads this.
        let _ = lines.send(last);
    });
}

/// Reads lines from piped standard input until its end or `/quit`.
pub fn spawn_stdin(lines: Sender<Input>) {
    spawn(move || {
        for line in io::stdin().lock().lines() {
            let line = match line {
                Ok(line) => line,
                Err(err) => {
                    eprintln!("lineclient: cannot read standard input: {err}");
                    break;
                }
            };
            let quit = is_quit(&line);
            if lines.send(Input::Line(line)).is_err() || quit {
                return;
            }
        }
        let _ = lines.send(Input::End);
    });
}

/// Whether `line` is the command to leave.
fn is_quit(line: &str) -> bool {
    command::parse(line) == Some(Command::Quit)
}

/// Adds this run's lines to the history file, creating its directory on
/// the first run. Appending (under rustyline's file lock) rather than
/// writing the whole file keeps the lines of other clients of the same
/// user that ran meanwhile.
fn save_history(
    editor: &mut Editor<ChatHelper, DefaultHistory>,
    path: &Path,
) -> rustyline::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    editor.append_history(path)
}

/// Starts the input thread.
fn spawn(body: impl FnOnce() + Send + 'static) {
    thread::Builder::new()
        .name("input".into())
        .spawn(body)
        .expect("the input thread starts");
}
