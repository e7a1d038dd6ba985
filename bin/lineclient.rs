//! `lineclient`: the terminal chat client. Everything but the command line
//! lives in `miochat::client`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// lineclient, the miochat terminal client: chat on a miochat server.
///
/// On a terminal: type to talk, /help for the commands, Tab to complete
/// names, Ctrl-D to leave. With standard input piped: one message per
/// line, one event per line on standard output.
#[derive(Debug, Parser)]
#[command(name = "lineclient", version)]
struct Args {
    /// The server: HOST:PORT, HOST, ws://HOST:PORT/PATH or wss://HOST:PORT/PATH.
    #[arg(default_value = "127.0.0.1:8765")]
    server: String,
    /// The name to chat under (asked for on a terminal when missing).
    #[arg(long)]
    name: Option<String>,
    /// No colour, even on a terminal (the NO_COLOR variable does the same).
    #[arg(long)]
    no_color: bool,
    /// Where to keep the line history [default: the user's data directory].
    #[arg(long, value_name = "FILE")]
    history_file: Option<PathBuf>,
    /// For wss://: also trust this certificate authority (PEM), besides the system's.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Also keep the DMs you type in the line history (left out by default:
    /// the file is plain text).
    #[arg(long)]
    save_dms: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    miochat::client::run(miochat::client::Options {
        server: args.server,
        name: args.name,
        no_color: args.no_color,
        history_file: args.history_file,
        ca_file: args.ca_file,
        save_dms: args.save_dms,
    })
}
