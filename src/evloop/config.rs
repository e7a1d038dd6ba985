//! The event loop's limits and timers, with their defaults. They concern
//! sockets, frames and deadlines only; the chat's own settings are in
//! `chat::config`, which embeds these. The command line fills them in;
//! tests build them directly with short timers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The loop's settings. Each field is one flag of `mioserver`.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Where to listen. Port 0 picks a free port (tests use that).
    pub addr: SocketAddr,
    /// Let other processes listen on the same address (`SO_REUSEPORT`):
    /// the kernel spreads new connections over them, so several cluster
    /// nodes on one machine use every core (`--reuse-port`).
    pub reuse_port: bool,
    /// Largest WebSocket message accepted; above it the connection is closed
    /// with 1009 (`--max-message-bytes`).
    pub max_message_bytes: usize,
    /// Sockets held at once; beyond it new ones are dropped at accept
    /// (`--max-connections`).
    pub max_connections: usize,
    /// Connections one IP address may hold; 0 means no limit
    /// (`--max-connections-per-ip`).
    pub max_connections_per_ip: usize,
    /// Output queued for one client before it is disconnected as too slow
    /// (`--max-outbound-bytes`).
    pub max_outbound_bytes: usize,
    /// Time from accept to a complete HTTP upgrade request
    /// (`--handshake-timeout`).
    pub handshake_timeout: Duration,
    /// Silence from a client after which the server pings it
    /// (`--ping-interval`).
    pub ping_interval: Duration,
    /// Time after a ping without any bytes from the client before the server
    /// gives up on it (`--ping-timeout`).
    pub ping_timeout: Duration,
    /// Peers whose connections speak for someone else: a reverse proxy's
    /// address. A connection from one takes its client's address from
    /// the request's `X-Forwarded-For` (`http::client_address`), and
    /// counts against `max_connections_per_ip` under that address once
    /// its head is read (`--trusted-proxy`). Empty: the header is ignored.
    pub trusted_proxies: Vec<IpAddr>,
    /// The only `Origin`s a browser may open a WebSocket from
    /// (`http::check_origin`, `--allowed-origin`). Empty: any origin.
    pub allowed_origins: Vec<String>,
    /// TLS settings (certificate and key, loaded by `tls::load`): serve
    /// `wss://` and `https://` (`--tls-cert`, `--tls-key`); `None` for
    /// plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8765)),
            reuse_port: false,
            max_message_bytes: 64 * 1024,
            max_connections: default_max_connections(),
            max_connections_per_ip: 0,
            max_outbound_bytes: 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            tls: None,
        }
    }
}

/// Descriptors kept free for the listener, the poll instance, the waker,
/// log output and the spare descriptor used to shed connections when the
/// process runs out (see `server.rs`), with room to spare.
const RESERVED_DESCRIPTORS: u64 = 32;

/// The default `--max-connections`: the soft open-files limit less a few
/// descriptors the server needs for itself, so that accepting never fails
/// with "too many open files" under the default settings.
pub fn default_max_connections() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass, which lives on
    // our stack for the duration of the call.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let soft = if ok { limit.rlim_cur } else { 1024 };
    usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS).max(1)).unwrap_or(usize::MAX)
}
