//! `mioserver`: the chat server. Parses the command line (`mioserver
//! --help`, the README's table), sets up logging and signals, and runs the
//! event loop on the main thread.
//!
//! Every flag takes its default from [`ServerConfig::default`], the one
//! place defaults are written, and can also be set from an environment
//! variable `MIOCHAT_<FLAG>` (for a systemd `EnvironmentFile`). The flags
//! come in groups, one struct each, flattened into [`Args`]: a subsystem
//! that needs flags (storage, TLS) adds a group of its own.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use miochat::chat::cluster::RedisUrl;
use miochat::chat::store::SyncMode;
use miochat::chat::Chat;
use miochat::evloop::config::LoopConfig;
use miochat::evloop::server::Server;
use miochat::evloop::tls::{self, TlsReloader};
use miochat::ServerConfig;

/// mioserver, the miochat chat server: real-time chat over WebSocket (JSON
/// or plain text) on a hand-rolled mio event loop.
///
/// Clients: lineclient, websocat, a browser, any WebSocket library. Every
/// flag can also be set from the environment variable shown with it.
#[derive(Debug, Parser)]
#[command(name = "mioserver", version)]
struct Args {
    /// Address to listen on: IP:PORT or HOST:PORT (a name is resolved,
    /// IPv4 first). 127.0.0.1 accepts connections from this machine only;
    /// 0.0.0.0 accepts them on every network interface, from any machine
    /// that can reach this one.
    #[arg(
        env = "MIOCHAT_ADDR",
        default_value_t = defaults().net.addr,
        value_parser = listen_address
    )]
    addr: SocketAddr,
    /// Log level (error, warn, info, debug, trace); overrides RUST_LOG.
    #[arg(long, value_name = "LEVEL", env = "MIOCHAT_LOG_LEVEL")]
    log_level: Option<log::LevelFilter>,
    /// The chat's own settings.
    #[command(flatten)]
    chat: ChatFlags,
    /// The loop's limits and timers.
    #[command(flatten)]
    net: NetFlags,
    /// Where the history is kept.
    #[command(flatten)]
    store: StoreFlags,
    /// The certificate for wss:// and https://.
    #[command(flatten)]
    tls: TlsFlags,
    /// Several servers serving one chat.
    #[command(flatten)]
    cluster: ClusterFlags,
}

/// Cluster mode: several servers sharing one Redis serve one chat.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Cluster")]
struct ClusterFlags {
    /// Cluster mode, redis://HOST:PORT[/DB]: ids, history, names, presence
    /// and fan-out between servers go through this Redis (--db and --sync
    /// are then not used). Every server given the same URL serves the
    /// same chat.
    #[arg(long, value_name = "URL", env = "MIOCHAT_REDIS", value_parser = redis_url)]
    redis: Option<RedisUrl>,
    /// Let several processes listen on the same port (SO_REUSEPORT): the
    /// kernel spreads new connections over them. With --redis, one chat on
    /// every core.
    #[arg(long, env = "MIOCHAT_REUSE_PORT")]
    reuse_port: bool,
}

/// Parses `--redis` (resolving its host once, at start-up).
fn redis_url(text: &str) -> Result<RedisUrl, String> {
    RedisUrl::parse(text).map_err(|err| err.to_string())
}

/// The history's flags: the database file and how hard it works to survive.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "History")]
struct StoreFlags {
    /// The history database (SQLite), created if missing; :memory: keeps
    /// history in memory only, for as long as the process runs.
    #[arg(long, value_name = "PATH", env = "MIOCHAT_DB", default_value = DEFAULT_DB)]
    db: PathBuf,
    /// full: an acknowledged message survives power loss (one fsync per
    /// group commit); normal: it survives a crash of the server, not of the
    /// machine.
    #[arg(long, value_enum, env = "MIOCHAT_SYNC", default_value_t = Sync::Full)]
    sync: Sync,
}

/// The file the history is kept in when `--db` is not given: in the
/// working directory, so that running the server twice from one place
/// continues one chat. (The library's default is `:memory:`, so that
/// tests and embedders write no file unless asked to.)
const DEFAULT_DB: &str = "miochat.db";

/// The values of `--sync`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Sync {
    /// One fsync per group commit.
    Full,
    /// No fsync: the operating system writes when it likes.
    Normal,
}

/// The TLS flags: serve wss:// and https:// instead of ws:// and http://.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "TLS")]
struct TlsFlags {
    /// PEM certificate chain: serve wss:// and https:// (with --tls-key);
    /// SIGHUP reloads it.
    #[arg(
        long,
        value_name = "FILE",
        env = "MIOCHAT_TLS_CERT",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(
        long,
        value_name = "FILE",
        env = "MIOCHAT_TLS_KEY",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
}

/// The chat's flags: history and what one client may send.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Chat")]
struct ChatFlags {
    /// Public messages kept and sent on join.
    #[arg(long, value_name = "N", env = "MIOCHAT_HISTORY",
          default_value_t = defaults().history, value_parser = count,
          allow_negative_numbers = true)]
    history: usize,
    /// Most messages sent on a resume with since.
    #[arg(long, value_name = "N", env = "MIOCHAT_MAX_RESUME",
          default_value_t = defaults().max_resume, value_parser = count,
          allow_negative_numbers = true)]
    max_resume: usize,
    /// Longest chat text in characters (error too_long above).
    #[arg(long, value_name = "N", env = "MIOCHAT_MAX_TEXT_CHARS",
          default_value_t = defaults().max_text_chars, value_parser = positive,
          allow_negative_numbers = true)]
    max_text_chars: usize,
    /// Requests per second one connection may sustain; 0 turns limiting off.
    #[arg(long, value_name = "R", env = "MIOCHAT_RATE_LIMIT",
          default_value_t = defaults().rate_limit, value_parser = rate,
          allow_negative_numbers = true)]
    rate_limit: f64,
    /// Requests a connection may send at once before the limit applies.
    #[arg(long, value_name = "B", env = "MIOCHAT_RATE_BURST",
          default_value_t = defaults().rate_burst, value_parser = count_u32,
          allow_negative_numbers = true)]
    rate_burst: u32,
}

/// The loop's flags: sizes, connection limits and deadlines.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Connections")]
struct NetFlags {
    /// Largest WebSocket message accepted (close 1009 above).
    #[arg(long, value_name = "N", env = "MIOCHAT_MAX_MESSAGE_BYTES",
          default_value_t = defaults().net.max_message_bytes, value_parser = positive,
          allow_negative_numbers = true)]
    max_message_bytes: usize,
    /// Connections held at once; the default is the open-files limit less a
    /// few descriptors the server needs itself.
    #[arg(long, value_name = "N", env = "MIOCHAT_MAX_CONNECTIONS",
          default_value_t = defaults().net.max_connections, value_parser = positive,
          allow_negative_numbers = true)]
    max_connections: usize,
    /// Connections one address may hold; 0 means no limit.
    #[arg(long, value_name = "N", env = "MIOCHAT_MAX_CONNECTIONS_PER_IP",
          default_value_t = defaults().net.max_connections_per_ip, value_parser = count,
          allow_negative_numbers = true)]
    max_connections_per_ip: usize,
    /// Output queued for one client before it is disconnected as too slow (1013).
    #[arg(long, value_name = "N", env = "MIOCHAT_MAX_OUTBOUND_BYTES",
          default_value_t = defaults().net.max_outbound_bytes, value_parser = positive,
          allow_negative_numbers = true)]
    max_outbound_bytes: usize,
    /// Seconds for the HTTP upgrade request to complete.
    #[arg(long, value_name = "S", env = "MIOCHAT_HANDSHAKE_TIMEOUT",
          default_value_t = Seconds(defaults().net.handshake_timeout), value_parser = seconds,
          allow_negative_numbers = true)]
    handshake_timeout: Seconds,
    /// Seconds from the upgrade to a successful join (close 1008).
    #[arg(long, value_name = "S", env = "MIOCHAT_JOIN_TIMEOUT",
          default_value_t = Seconds(defaults().join_timeout), value_parser = seconds,
          allow_negative_numbers = true)]
    join_timeout: Seconds,
    /// Seconds of silence before the server pings a client.
    #[arg(long, value_name = "S", env = "MIOCHAT_PING_INTERVAL",
          default_value_t = Seconds(defaults().net.ping_interval), value_parser = seconds,
          allow_negative_numbers = true)]
    ping_interval: Seconds,
    /// Seconds after a ping with no frame before the client is dropped (close 1001).
    #[arg(long, value_name = "S", env = "MIOCHAT_PING_TIMEOUT",
          default_value_t = Seconds(defaults().net.ping_timeout), value_parser = seconds,
          allow_negative_numbers = true)]
    ping_timeout: Seconds,
    /// A reverse proxy's IP address (repeatable, or comma-separated):
    /// connections from it take the client's address from X-Forwarded-For,
    /// for the per-address limit and the log. None by default: the header
    /// is ignored.
    #[arg(
        long,
        value_name = "ADDR",
        env = "MIOCHAT_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    trusted_proxy: Vec<IpAddr>,
    /// A web origin browsers may connect from, e.g.
    /// https://chat.example.org (repeatable, or comma-separated); once one
    /// is given, a page of any other origin is refused with 403. Clients
    /// that send no Origin are not affected. None by default: any origin.
    #[arg(long, value_name = "ORIGIN", env = "MIOCHAT_ALLOWED_ORIGIN",
          value_delimiter = ',', value_parser = origin)]
    allowed_origin: Vec<String>,
}

/// The defaults every flag shows and takes.
fn defaults() -> ServerConfig {
    ServerConfig::default()
}

/// A duration given in seconds on the command line, shown the same way.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seconds(Duration);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `f64`'s shortest form: `10`, `0.25`.
        write!(f, "{}", self.0.as_secs_f64())
    }
}

/// The longest duration a flag accepts: a year. Anything longer means
/// "never" in practice, and far larger values would overflow the clock
/// arithmetic of deadlines.
const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// Parses a duration in seconds, fractions allowed (`0.2`); more than zero
/// and at most a year.
fn seconds(text: &str) -> Result<Seconds, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= MAX_SECONDS => Ok(Seconds(Duration::from_secs_f64(secs))),
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

/// Parses a whole number, 0 or more, saying so when it is negative
/// (clap would otherwise suggest `-- -5`, which makes `-5` the address).
fn count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) => Ok(n),
        Err(_) if text.starts_with('-') && text[1..].parse::<u128>().is_ok() => {
            Err("the value must be 0 or more".to_owned())
        }
        Err(_) => Err(format!("{text:?} is not a whole number (0 or more)")),
    }
}

/// [`count`], for a `u32` flag.
fn count_u32(text: &str) -> Result<u32, String> {
    u32::try_from(count(text)?).map_err(|_| format!("the value must be at most {}", u32::MAX))
}

/// Parses a whole number, 1 or more: a limit of 0 would make a server that
/// can hold nobody or accept nothing.
fn positive(text: &str) -> Result<usize, String> {
    match count(text) {
        Ok(0) => Err("the value must be 1 or more".to_owned()),
        Ok(n) => Ok(n),
        Err(_) if text.starts_with('-') => Err("the value must be 1 or more".to_owned()),
        Err(why) => Err(why),
    }
}

/// Parses a web origin, `scheme://host[:port]`, into the form a browser
/// sends in `Origin`: lowercase, without a trailing `/`, without the
/// scheme's default port.
fn origin(text: &str) -> Result<String, String> {
    let wrong = || {
        format!("{text:?} is not an origin: a scheme, a host and perhaps a port, like https://chat.example.org")
    };
    let origin = text.trim().trim_end_matches('/').to_ascii_lowercase();
    let (scheme, host) = origin.split_once("://").ok_or_else(wrong)?;
    let default_port = match scheme {
        "https" => ":443",
        "http" => ":80",
        _ => return Err(wrong()),
    };
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ', ',']) {
        return Err(wrong());
    }
    let host = host.strip_suffix(default_port).unwrap_or(host);
    Ok(format!("{scheme}://{host}"))
}

/// Parses the address to listen on: `IP:PORT`, `HOST:PORT` (resolved), or
/// an IP or host alone (the default port). A name may resolve to several
/// addresses; the first IPv4 one is taken, since `localhost` means
/// 127.0.0.1 to most clients, else the first.
fn listen_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let default_port = defaults().net.addr.port();
    if let Ok(ip) = text.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("{port:?} is not a port number (0 to 65535)"))?;
            (host, port)
        }
        None => (text, default_port),
    };
    let resolved: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve {host:?}: {err}"))?
        .collect();
    resolved
        .iter()
        .find(|addr| addr.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| format!("{host:?} has no address"))
}

impl Args {
    /// The settings the flags ask for.
    fn config(&self) -> ServerConfig {
        let (chat, net) = (&self.chat, &self.net);
        ServerConfig {
            net: LoopConfig {
                addr: self.addr,
                reuse_port: self.cluster.reuse_port,
                max_message_bytes: net.max_message_bytes,
                max_connections: net.max_connections,
                max_connections_per_ip: net.max_connections_per_ip,
                max_outbound_bytes: net.max_outbound_bytes,
                handshake_timeout: net.handshake_timeout.0,
                ping_interval: net.ping_interval.0,
                ping_timeout: net.ping_timeout.0,
                trusted_proxies: net.trusted_proxy.clone(),
                allowed_origins: net.allowed_origin.clone(),
                tls: None,
            },
            join_timeout: net.join_timeout.0,
            history: chat.history,
            max_text_chars: chat.max_text_chars,
            max_resume: chat.max_resume,
            rate_limit: chat.rate_limit,
            rate_burst: chat.rate_burst,
            db: self.store.db.clone(),
            sync: match self.store.sync {
                Sync::Full => SyncMode::Full,
                Sync::Normal => SyncMode::Normal,
            },
            redis: self.cluster.redis.clone(),
        }
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

    let mut config = args.config();
    let tls_files = args.tls.tls_cert.clone().zip(args.tls.tls_key.clone());
    if let Some((cert, key)) = &tls_files {
        match tls::load(cert, key) {
            Ok(tls) => config.net.tls = Some(tls),
            Err(err) => {
                log::error!("cannot use the TLS certificate: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    let scheme = if config.net.tls.is_some() {
        "wss"
    } else {
        "ws"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_refuse_negative_numbers_in_plain_words() {
        assert_eq!(count("5"), Ok(5));
        assert_eq!(count("-5"), Err("the value must be 0 or more".to_owned()));
        assert!(count("five").unwrap_err().contains("not a whole number"));
        assert_eq!(positive("0"), Err("the value must be 1 or more".to_owned()));
        assert_eq!(
            positive("-1"),
            Err("the value must be 1 or more".to_owned())
        );
        assert_eq!(positive("1"), Ok(1));
    }

    #[test]
    fn addresses_may_be_names_or_lack_a_port() {
        let local = SocketAddr::from(([127, 0, 0, 1], 9000));
        assert_eq!(listen_address("127.0.0.1:9000"), Ok(local));
        assert_eq!(listen_address("localhost:9000"), Ok(local));
        assert_eq!(
            listen_address("localhost"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 8765)))
        );
        assert_eq!(listen_address("[::1]"), Ok("[::1]:8765".parse().unwrap()));
        assert!(listen_address("localhost:http2").is_err());
    }

    #[test]
    fn origins_take_the_form_browsers_send() {
        assert_eq!(
            origin("https://Chat.Example.org/"),
            Ok("https://chat.example.org".to_owned())
        );
        assert_eq!(
            origin("https://chat.example.org:443"),
            Ok("https://chat.example.org".to_owned())
        );
        assert_eq!(
            origin("http://localhost:8765"),
            Ok("http://localhost:8765".to_owned())
        );
        for wrong in ["chat.example.org", "https://", "https://x/chat", "ftp://x"] {
            assert!(origin(wrong).is_err(), "{wrong}");
        }
    }

    #[test]
    fn seconds_show_as_they_are_typed() {
        assert_eq!(Seconds(Duration::from_secs(10)).to_string(), "10");
        assert_eq!(seconds("0.25").unwrap().to_string(), "0.25");
        assert!(seconds("-1").is_err());
    }
}
