//! chatbench: the project's load generator. See `chatbench --help` and
//! `docs/performance.md`; the work is done by [`miochat::bench`].

use std::process::ExitCode;

use clap::Parser;
use miochat::bench::{self, Params};

/// chatbench, the miochat load generator: fanout, flood, dm and conns runs
/// against a server on this machine, with latency percentiles, loss and
/// the server's CPU per delivery.
#[derive(Parser)]
#[command(name = "chatbench", version)]
struct Cli {
    /// The run's settings.
    #[command(flatten)]
    params: Params,
}

fn main() -> ExitCode {
    let Cli { params } = Cli::parse();
    let json = params.json;
    match bench::run(params) {
        Ok(report) if json => {
            println!(
                "{}",
                serde_json::to_string(&report).expect("a report always serializes")
            );
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("chatbench: {err}");
            ExitCode::FAILURE
        }
    }
}
