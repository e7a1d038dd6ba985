//! `mioserver`: the chat server. Parses the command line of
//! `shared/CLI.md`, sets up logging and signals, and runs the event loop on
//! the main thread.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use miochat::chat::store::SyncMode;
use miochat::chat::Chat;
use miochat::evloop::config::{default_max_connections, LoopConfig};
use miochat::evloop::server::Server;
use miochat::evloop::tls::{self, TlsReloader};
use miochat::ServerConfig;

/// A real-time chat server on a hand-rolled mio event loop (WebSocket, JSON).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on; 0.0.0.0:8765 for every interface.
    #[arg(default_value = "127.0.0.1:8765")]
    addr: SocketAddr,
    /// Public messages kept and sent on join.
    #[arg(long, value_name = "N", default_value_t = 100)]
    history: usize,
    /// Most messages sent on a resume with since.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    max_resume: usize,
    /// Largest WebSocket message accepted (close 1009 above).
    #[arg(long, value_name = "N", default_value_t = 65536)]
    max_message_bytes: usize,
    /// Longest chat text in characters (error too_long above).
    #[arg(long, value_name = "N", default_value_t = 4000)]
    max_text_chars: usize,
    /// Connections held at once [default: the open-files limit less a few].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Output queued for one client before it is disconnected as too slow (1013).
    #[arg(long, value_name = "N", default_value_t = 1_048_576)]
    max_outbound_bytes: usize,
    /// Seconds for the HTTP upgrade request to complete.
    #[arg(long, value_name = "S", default_value = "10", value_parser = seconds)]
    handshake_timeout: Duration,
    /// Seconds from the upgrade to a successful join (close 1008).
    #[arg(long, value_name = "S", default_value = "10", value_parser = seconds)]
    join_timeout: Duration,
    /// Seconds of silence before the server pings a client.
    #[arg(long, value_name = "S", default_value = "30", value_parser = seconds)]
    ping_interval: Duration,
    /// Seconds after a ping with no frame before the client is dropped (close 1001).
    #[arg(long, value_name = "S", default_value = "30", value_parser = seconds)]
    ping_timeout: Duration,
    /// Requests per second one connection may sustain; 0 turns limiting off.
    #[arg(long, value_name = "R", default_value = "10", value_parser = rate)]
    rate_limit: f64,
    /// Requests a connection may send at once before the limit applies.
    #[arg(long, value_name = "B", default_value_t = 20)]
    rate_burst: u32,
    /// Connections one address may hold; 0 means no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_connections_per_ip: usize,
    /// The history database (SQLite), created if missing; :memory: keeps
    /// history in memory only.
    #[arg(long, value_name = "PATH", default_value = "miochat.db")]
    db: PathBuf,
    /// full: an acknowledged message survives power loss (one fsync per
    /// group commit); normal: it survives a crash of the server, not of the
    /// machine.
    #[arg(long, value_enum, default_value_t = Sync::Full)]
    sync: Sync,
    /// PEM certificate chain: serve wss:// and https:// (with --tls-key);
    /// SIGHUP reloads it.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace); overrides RUST_LOG.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<log::LevelFilter>,
}

/// The values of `--sync`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Sync {
    /// One fsync per group commit.
    Full,
    /// No fsync: the operating system writes when it likes.
    Normal,
}

/// The longest duration a flag accepts: a year. Anything longer means
/// "never" in practice, and far larger values would overflow the clock
/// arithmetic of deadlines.
const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// Parses a duration in seconds, fractions allowed (`0.2`); more than zero
/// and at most a year.
fn seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= MAX_SECONDS => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!(
            "{text:?} is not a number of seconds above 0 and at most {MAX_SECONDS}"
        )),
    }
}

/// Parses a rate in requests per second: a finite number, zero or more.
fn rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err(format!("{text:?} is not a rate (a number, 0 or more)")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let Some(level) = args.log_level {
        logger.filter_level(level);
    }
    // tungstenite logs whole frames at trace level, and a frame may be a
    // DM: the server never logs those, whatever level is asked for.
    logger
        .filter_module("tungstenite", log::LevelFilter::Info)
        .format_timestamp_millis()
        .init();

    let tls_files = args.tls_cert.clone().zip(args.tls_key.clone());
    let tls = match &tls_files {
        Some((cert, key)) => match tls::load(cert, key) {
            Ok(tls) => Some(tls),
            Err(err) => {
                log::error!("cannot use the TLS certificate: {err}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let config = ServerConfig {
        net: LoopConfig {
            addr: args.addr,
            max_message_bytes: args.max_message_bytes,
            max_connections: args.max_connections.unwrap_or_else(default_max_connections),
            max_connections_per_ip: args.max_connections_per_ip,
            max_outbound_bytes: args.max_outbound_bytes,
            handshake_timeout: args.handshake_timeout,
            ping_interval: args.ping_interval,
            ping_timeout: args.ping_timeout,
            tls,
        },
        join_timeout: args.join_timeout,
        history: args.history,
        max_text_chars: args.max_text_chars,
        max_resume: args.max_resume,
        rate_limit: args.rate_limit,
        rate_burst: args.rate_burst,
        db: args.db,
        sync: match args.sync {
            Sync::Full => SyncMode::Full,
            Sync::Normal => SyncMode::Normal,
        },
    };
    let chat = match Chat::open(&config) {
        Ok(chat) => chat,
        Err(err) => {
            log::error!("cannot open the history {}: {err}", config.db.display());
            return ExitCode::FAILURE;
        }
    };
    let max_connections = config.net.max_connections;
    let server = match Server::bind(config.net, chat) {
        Ok(server) => server,
        Err(err) => {
            log::error!("cannot listen on {}: {err}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    // Signals arrive on a small thread of their own, which only wakes the
    // loop: the loop itself never blocks on anything but `poll`.
    let shutdown = server.shutdown_handle();
    let reloader = server.tls_reloader();
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(signals) => signals,
        Err(err) => {
            log::error!("cannot install signal handlers: {err}");
            return ExitCode::FAILURE;
        }
    };
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal == signal_hook::consts::SIGHUP {
                reload_tls(tls_files.as_ref(), &reloader);
            } else {
                log::info!("signal {signal}: shutting down");
                shutdown.request();
                return;
            }
        }
    });
    log::info!(
        "mioserver {} listening on {scheme}://{}/ (up to {max_connections} connections)",
        env!("CARGO_PKG_VERSION"),
        server.local_addr()
    );
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("event loop failed: {err}");
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP: loads the TLS pair again from its files and hands it to the
/// loop; a pair that cannot be used is refused and the old one stays.
fn reload_tls(files: Option<&(PathBuf, PathBuf)>, reloader: &TlsReloader) {
    let Some((cert, key)) = files else {
        log::info!("SIGHUP: no TLS certificate to reload");
        return;
    };
    match tls::load(cert, key) {
        Ok(config) => reloader.reload(config),
        Err(err) => log::error!("SIGHUP: kept the current TLS certificate: {err}"),
    }
}
