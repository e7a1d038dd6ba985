//! An echo server on miochat's event loop: every message comes back to its
//! sender unchanged. It exists to test the transport alone (the loop, the
//! connection state machine, tungstenite's framing) with the Autobahn
//! WebSocket test suite: `bash scripts/autobahn.sh`.
//!
//! ```sh
//! cargo run --release --example echo -- 127.0.0.1:9001
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use miochat::evloop::config::LoopConfig;
use miochat::evloop::server::Server;
use miochat::evloop::service::{ConnId, Outbox, Service};

/// The echo application: no state at all.
struct Echo;

impl Service for Echo {
    fn opened(&mut self, _conn: ConnId, _peer: SocketAddr, _out: &mut Outbox<'_>) {}

    fn text(&mut self, conn: ConnId, text: &str, out: &mut Outbox<'_>) {
        out.send_text(conn, text);
    }

    fn binary(&mut self, conn: ConnId, data: &[u8], out: &mut Outbox<'_>) {
        out.send_binary(conn, data);
    }

    fn closed(&mut self, _conn: ConnId, _out: &mut Outbox<'_>) {}

    fn http_get(&mut self, _path: &str) -> Vec<u8> {
        miochat::evloop::http::response(426, "", "text/plain", b"WebSocket echo server\n")
    }
}

fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned())
        .parse()
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
    let config = LoopConfig {
        addr,
        // Autobahn sends messages of up to 16 MiB and expects them echoed
        // whole, and some cases queue many of them at once.
        max_message_bytes: 64 << 20,
        max_outbound_bytes: 256 << 20,
        // The suite takes its time between cases; no keepalive pressure.
        ping_interval: Duration::from_secs(600),
        ..LoopConfig::default()
    };
    let server = Server::bind(config, Echo)?;
    println!("echo server on ws://{}/", server.local_addr());
    server.run()
}
