//! `lineclient`, the terminal chat client.
//!
//! # Threads
//!
//! Three threads meet over `crossbeam-channel`, so that receiving never
//! waits for typing and typing never waits for the network:
//!
//! - the **input** thread (`input.rs`) reads lines, with `rustyline` on a
//!   terminal (editing, history, Tab completion) or plainly from a pipe;
//! - the **socket** thread (`connection.rs`) owns the WebSocket, reads with
//!   a short timeout so outgoing lines leave within 20 ms, and reconnects
//!   with exponential backoff when the connection is lost;
//! - the **coordinator** (`coordinator.rs`, the main thread) selects over
//!   both channels and handles one event at a time. On a terminal it
//!   prints through rustyline's `ExternalPrinter`, which shows a line
//!   above the prompt and redraws the half-typed line intact.
//!
//! Parsing commands and turning them into requests
//! (`crate::proto::command`, shared with the server's plain-text mode),
//! expanding `:shortcodes:` (`shortcode.rs`), rendering (`render.rs`) and
//! completing (`complete.rs`) are pure and unit-tested; requests are the
//! server's own `protocol::Request`, serialized. `docs/client.md` explains
//! the threads, the socket and exactly-once sending in more detail.
//!
//! # Output
//!
//! One line per event. Without colour (piped, `--no-color`, `NO_COLOR`)
//! the lines are exactly these, and scripts may rely on them:
//!
//! ```text
//! [08:00] Dave: hello                  a public message (local time)
//! [08:00] (dm) Dave -> Bob: psst       a private message, either way
//! * Bob joined (2 online)
//! * Bob left (1 online)
//! * Dave is now David
//! * 2 online: Alice, Dave              the answer to /who, sorted
//! --- 2 online: Alice, Dave ---        after the history, on joining
//! --- Wednesday 25 November 2026 ---   before a message of another day
//! * reconnected (missed 2 messages)    before the missed messages
//! * reconnected, but some history could not be recovered: ...
//! --- 3 older messages ---             the answer to /history, then
//! --- end of older messages ---        after its messages
//! ! unknown_user: ...                  an error from the server
//! ! connection lost: ...; reconnecting in 0.4 s
//! ! cannot connect to ...; still trying       once, then once a minute:
//! ! still cannot connect after 1 min (4 attempts); next try in 28.1 s
//! ```
//!
//! Control characters in text are shown escaped (`\n`, by
//! `crate::proto::display`, as in plain-text mode), so an event is
//! always one line and nobody can send escape sequences to your terminal.
//!
//! # Piped use
//!
//! When standard input or output is not a terminal, the client reads one
//! message per line and exits once input has ended and the server has
//! answered every line sent (with its echo, or an error). It needs
//! `--name`. Like every line, piped ones are paced a little under the
//! server's default rate limit (16 at once, then 8 a second), so a long
//! input is slowed down rather than refused. A line whose connection was
//! lost before its echo came is sent again after the reconnect, with the
//! same `cid`, so it is posted once. The exit status is 0 when every line
//! was delivered, 1 when any was refused by the server or not sent (an
//! unknown `/command`), when the server stayed unreachable for two minutes
//! with lines still unacknowledged, when the name is refused, or when the
//! server cannot be reached at all; 2 for a usage error.

mod complete;
mod connection;
mod coordinator;
mod input;
mod render;
mod shortcode;

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use complete::Roster;
use connection::NetEvent;
use coordinator::Coordinator;
use rustyline::ExternalPrinter;

/// What the user asked for on the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// `HOST:PORT`, `HOST`, or `ws://HOST:PORT/PATH`.
    pub server: String,
    /// The name to join with; asked for on a terminal when missing.
    pub name: Option<String>,
    /// `--no-color`: plain text even on a terminal.
    pub no_color: bool,
    /// Where the line history is kept; `None` for the default, in the
    /// user's data directory.
    pub history_file: Option<PathBuf>,
    /// `--ca-file`: a private certificate authority to trust for `wss://`.
    pub ca_file: Option<PathBuf>,
    /// `--save-dms`: keep the DMs one types in the history file too.
    pub save_dms: bool,
}

/// Runs the client until the user leaves.
pub fn run(options: Options) -> ExitCode {
    let url = match connection::server_url(&options.server) {
        Ok(url) => url,
        Err(why) => return usage_error(&why),
    };
    let interactive = io::stdin().is_terminal() && io::stdout().is_terminal();
    if let Some(Err(why)) = options
        .name
        .as_deref()
        .map(crate::proto::protocol::validate_name)
    {
        return usage_error(&format!("--name: {why}"));
    }
    // See https://no-color.org: set and not empty means no colour.
    let no_color_env = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    let color = interactive && !options.no_color && !no_color_env;

    let roster = Roster::default();
    let history_file = options.history_file.or_else(default_history_file);
    let mut terminal = None;
    if interactive {
        match input::editor(roster.clone(), history_file.as_deref()) {
            Ok(editor_and_printer) => terminal = Some(editor_and_printer),
            Err(err) => {
                eprintln!("lineclient: cannot set up the terminal: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    // The name comes before the connection, so that the server's join
    // timeout does not run while the user thinks of one.
    let name = match (options.name, &mut terminal) {
        (Some(name), _) => name,
        (None, Some((editor, _))) => match input::ask_name(editor) {
            Some(name) => name,
            None => return ExitCode::SUCCESS,
        },
        (None, None) => {
            return usage_error("--name is needed when standard input is not a terminal")
        }
    };

    // Connect before the input thread starts, so that a wrong address is a
    // plain error message and an immediate exit.
    let tls = match connection::tls_config(&url, options.ca_file.as_deref()) {
        Ok(tls) => tls,
        Err(why) => return usage_error(&why),
    };
    let (net_events, net) = crossbeam_channel::unbounded();
    connection::spawn(url, tls, net_events);
    let first = match net.recv() {
        Ok(NetEvent::Unreachable(why)) => {
            eprintln!("lineclient: {why}");
            return ExitCode::FAILURE;
        }
        Ok(first) => first,
        Err(_) => {
            eprintln!("lineclient: the connection thread stopped");
            return ExitCode::FAILURE;
        }
    };

    let (lines, input) = crossbeam_channel::unbounded();
    let printer: Box<dyn ExternalPrinter> = match terminal {
        Some((editor, printer)) => {
            input::spawn_editor(editor, history_file, options.save_dms, lines);
            Box::new(printer)
        }
        None => {
            input::spawn_stdin(lines);
            Box::new(PlainPrinter)
        }
    };
    Coordinator::new(name, interactive, color, input, net, printer, roster).run(first)
}

/// The history file when `--history-file` is not given.
fn default_history_file() -> Option<PathBuf> {
    Some(dirs::data_dir()?.join("miochat").join("lineclient_history"))
}

/// Reports a mistake in the command line, with the exit status clap uses.
fn usage_error(why: &str) -> ExitCode {
    eprintln!("lineclient: {why}");
    ExitCode::from(2)
}

/// Prints to standard output, one event a line, for piped use: the
/// counterpart of rustyline's printer, so the coordinator need not know
/// which one it has.
#[derive(Debug)]
struct PlainPrinter;

impl ExternalPrinter for PlainPrinter {
    fn print(&mut self, msg: String) -> rustyline::Result<()> {
        // Standard output is line-buffered, so each event leaves at once,
        // which is what a script reading the pipe waits for.
        io::stdout().lock().write_all(msg.as_bytes())?;
        Ok(())
    }
}
