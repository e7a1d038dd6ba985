//! `mioserver` behind a real nginx, configured with the server block of
//! `docs/deploy.md` (the part between its BEGIN and END lines, read from
//! the file, so that the documentation and the test cannot drift apart).
//! nginx terminates TLS with a certificate made here and forwards to a
//! real `mioserver --trusted-proxy 127.0.0.1`; two clients chat over
//! `wss://` through it, `/healthz` answers through it, and the server sees
//! each client's own address.
//!
//! nginx comes from the distribution's packages (`.ci/run` installs it)
//! and runs in the foreground with its configuration, pid file and
//! temporary files in a directory of the test's own, on a free loopback
//! port: never as a system service. Without nginx the test says so loudly
//! and passes, except under `CI=true`, where it fails.

mod common;

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::pki::{https_get, Pki};
use common::process::Logged;
use common::{Client, TIMEOUT};
use miochat::ServerConfig;
use serde_json::json;
use socket2::{Domain, Socket, Type};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Connector, HandshakeError};

/// The documented configuration, and the lines that mark the part of it
/// that runs here.
const DEPLOY_MD: &str = include_str!("../docs/deploy.md");
const BEGIN: &str = "# BEGIN of the part tests/nginx.rs runs";
const END: &str = "# END of the part tests/nginx.rs runs.";

/// A client through nginx.
type WssClient = Client<MaybeTlsStream<TcpStream>>;

/// Where nginx is, or `None` (after saying so) when the test must be
/// skipped; under `CI=true` a missing nginx fails the test.
fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // nginx lives in /usr/sbin, which a user's PATH may lack.
    let found = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nginx is not installed, and CI=true: .ci/run installs it"
        );
        eprintln!(
            "SKIPPED: nginx is not installed (apt-get install nginx); tests/nginx.rs did not run"
        );
    }
    found
}

/// The part of `docs/deploy.md` the test runs, with nginx listening on
/// `listen`, forwarding to `upstream`, with `pki`'s certificate. Each
/// replaced line must be in the block exactly once: if the documentation
/// changes them, the test says so instead of testing something else.
fn documented_block(listen: SocketAddr, upstream: SocketAddr, pki: &Pki) -> String {
    let start = DEPLOY_MD
        .find(BEGIN)
        .expect("docs/deploy.md has the BEGIN line");
    let end = DEPLOY_MD
        .find(END)
        .expect("docs/deploy.md has the END line");
    let mut block = DEPLOY_MD[start..end].to_owned();
    let cert = pki.cert.display().to_string();
    let key = pki.key.display().to_string();
    for (documented, here) in [
        ("listen 443 ssl;", format!("listen {listen} ssl;")),
        // Only loopback addresses are used by tests.
        ("listen [::]:443 ssl;", String::new()),
        ("server 127.0.0.1:8765;", format!("server {upstream};")),
        ("/etc/letsencrypt/live/chat.example.org/fullchain.pem", cert),
        ("/etc/letsencrypt/live/chat.example.org/privkey.pem", key),
    ] {
        assert_eq!(
            block.matches(documented).count(),
            1,
            "docs/deploy.md's nginx block should have {documented:?} once"
        );
        block = block.replace(documented, &here);
    }
    block
}

/// The whole nginx configuration: the documented block inside an `http`
/// block, with everything nginx writes kept in `dir`.
fn nginx_conf(dir: &Path, block: &str) -> String {
    let dir = dir.display();
    format!(
        "worker_processes 1;
pid {dir}/nginx.pid;
# Notices too: \"start worker processes\" says that nginx is listening.
error_log stderr notice;
events {{
    worker_connections 64;
}}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{block}
}}
"
    )
}

/// A free port on 127.0.0.1, for nginx to listen on. (The port is free
/// when asked; nothing else of this test binds one in between.)
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
}

/// A TCP connection to `to` from the loopback address `from`: Linux
/// routes all of 127.0.0.0/8 to the loopback interface, so clients from
/// different addresses can be tried without leaving the machine.
fn tcp_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let from: IpAddr = from.parse().unwrap();
    socket.bind(&SocketAddr::new(from, 0).into()).unwrap();
    socket.connect(&to.into()).expect("connect to nginx");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// A WebSocket over TLS through nginx at `nginx`, from the loopback
/// address `from`: the client, or the HTTP status of the refusal.
fn upgrade_from(from: &str, nginx: SocketAddr, pki: &Pki) -> Result<WssClient, u16> {
    let url = format!("wss://localhost:{}/", nginx.port());
    let tls = Connector::Rustls(pki.client_config());
    match tungstenite::client_tls_with_config(url, tcp_from(from, nginx), None, Some(tls)) {
        Ok((ws, _response)) => Ok(Client::over(ws)),
        Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(err) => panic!("WebSocket through nginx: {err}"),
    }
}

#[test]
fn the_documented_nginx_block_carries_a_chat_over_tls_with_the_clients_addresses() {
    let Some(nginx_path) = find_nginx() else {
        return;
    };
    let pki = Pki::new("nginx");
    let (mut server, upstream) = Logged::mioserver(
        &[
            "--trusted-proxy",
            "127.0.0.1",
            "--max-connections-per-ip",
            "1",
        ],
        &[],
    );
    let dir = tempfile::Builder::new()
        .prefix("miochat-nginx-")
        .tempdir()
        .unwrap();
    let listen = free_port();
    let conf = dir.path().join("nginx.conf");
    let block = documented_block(listen, upstream, &pki);
    std::fs::write(&conf, nginx_conf(dir.path(), &block)).unwrap();
    let mut nginx = Logged::spawn(
        Command::new(&nginx_path)
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir.path())
            .args(["-e", "stderr", "-g", "daemon off;"]),
    );
    nginx.wait_for("start worker process");

    // Two clients, each from an address of its own, chat through nginx.
    let (mut alice, _) = upgrade_from("127.0.0.2", listen, &pki)
        .expect("through nginx")
        .join_as("alice");
    let (mut bob, _) = upgrade_from("127.0.0.3", listen, &pki)
        .expect("through nginx")
        .join_as("bob");
    assert_eq!(alice.recv()["name"], "bob");
    alice.say("hello through nginx");
    for client in [&mut alice, &mut bob] {
        let heard = client.recv();
        assert_eq!(
            (&heard["type"], &heard["from"], &heard["text"]),
            (
                &json!("message"),
                &json!("alice"),
                &json!("hello through nginx")
            )
        );
    }
    bob.dm("alice", "psst");
    assert_eq!(alice.recv()["text"], "psst");

    // The server saw the clients' addresses, not nginx's.
    let joined = server.wait_for("joined as alice");
    assert!(joined.contains("127.0.0.2:0 joined as alice"), "{joined}");
    let joined = server.wait_for("joined as bob");
    assert!(joined.contains("127.0.0.3:0 joined as bob"), "{joined}");
    // So the per-address limit counts them apart: one connection each,
    // and Alice's second is refused, with the server's 503 passed on.
    assert_eq!(upgrade_from("127.0.0.2", listen, &pki).unwrap_err(), 503);

    let health = https_get(listen, pki.client_config(), "/healthz");
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    assert!(
        health.ends_with(r#"{"status":"ok","online":2}"#),
        "{health}"
    );
}

#[test]
fn the_documented_read_timeout_outlasts_the_ping_interval() {
    // nginx closes a proxied connection that stays silent for
    // proxy_read_timeout; the server's pings keep a healthy one talking
    // at least once per ping interval.
    let (_, after) = DEPLOY_MD
        .split_once("proxy_read_timeout ")
        .expect("docs/deploy.md sets proxy_read_timeout");
    let seconds: u64 = after
        .split_once("s;")
        .and_then(|(number, _)| number.parse().ok())
        .expect("proxy_read_timeout in seconds, like 75s");
    let ping_interval = ServerConfig::default().net.ping_interval;
    assert!(
        Duration::from_secs(seconds) > ping_interval,
        "proxy_read_timeout {seconds}s must be longer than the ping interval {ping_interval:?}"
    );
}
