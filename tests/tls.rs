//! TLS: `wss://` and `https://` served by the event loop, `lineclient`
//! over `wss://` with a private certificate authority, SIGHUP reloading the
//! certificate of a real `mioserver` process, and hostile TLS clients
//! (plaintext, stalled handshakes) that must not slow anyone down.
//!
//! Every certificate is made in the test, with rcgen (`common::pki`): a
//! test authority and a leaf for `localhost` and `127.0.0.1`, written to a
//! temporary directory.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::Duration;

use common::pki::{https_get, Pki};
use common::{config, start, tcp, TIMEOUT};
use miochat::evloop::tls;
use rustls::ClientConfig;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Connector, Message, WebSocket};

/// A WebSocket client over TLS.
struct WssClient {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
}

impl WssClient {
    /// Connects to `wss://addr/` trusting `tls`'s authorities; the error
    /// is the handshake's, as text.
    fn try_connect(addr: SocketAddr, tls: Arc<ClientConfig>) -> Result<WssClient, String> {
        let stream = tcp(addr);
        let url = format!("wss://{addr}/");
        tungstenite::client_tls_with_config(url, stream, None, Some(Connector::Rustls(tls)))
            .map(|(ws, _)| WssClient { ws })
            .map_err(|err| err.to_string())
    }

    fn connect(addr: SocketAddr, tls: Arc<ClientConfig>) -> WssClient {
        WssClient::try_connect(addr, tls).expect("the TLS WebSocket opens")
    }

    /// Connects and joins as `name`; returns the client after its welcome.
    fn join(addr: SocketAddr, tls: Arc<ClientConfig>, name: &str) -> WssClient {
        let mut client = WssClient::connect(addr, tls);
        client.send(json!({"type": "join", "name": name}));
        let welcome = client.recv();
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client
    }

    fn send(&mut self, request: Value) {
        self.ws.send(Message::text(request.to_string())).unwrap();
    }

    /// The next JSON message (pings are answered by tungstenite).
    fn recv(&mut self) -> Value {
        loop {
            match self.ws.read().expect("a message within the timeout") {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// Says `text` and waits for the echo; returns it.
    fn say(&mut self, text: &str) -> Value {
        self.send(json!({"type": "say", "text": text}));
        loop {
            let message = self.recv();
            if message["type"] == "message" {
                return message;
            }
        }
    }
}

/// A chat server in this process, serving TLS with `pki`'s certificate.
fn tls_server(pki: &Pki, handshake_timeout: Duration) -> miochat::ServerHandle {
    let mut config = config();
    config.net.tls = Some(tls::load(&pki.cert, &pki.key).unwrap());
    config.net.handshake_timeout = handshake_timeout;
    start(config)
}

#[test]
fn wss_chat_and_https_healthz() {
    let pki = Pki::new("chat");
    let server = tls_server(&pki, Duration::from_secs(10));
    let addr = server.addr();
    let mut alice = WssClient::join(addr, pki.client_config(), "Alice");
    let mut bob = WssClient::join(addr, pki.client_config(), "Bob");
    assert_eq!(alice.recv()["type"], "joined");
    let echo = alice.say("over TLS 😀");
    assert_eq!(echo["text"], "over TLS 😀");
    let heard = bob.recv();
    assert_eq!(
        (&heard["from"], &heard["text"]),
        (&json!("Alice"), &json!("over TLS 😀"))
    );

    let response = https_get(addr, pki.client_config(), "/healthz");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.ends_with(r#"{"status":"ok","online":2}"#),
        "{response}"
    );
    server.shutdown().unwrap();
}

#[test]
fn a_client_that_does_not_trust_the_certificate_cannot_connect() {
    let pki = Pki::new("untrusted");
    let other = Pki::new("other");
    let server = tls_server(&pki, Duration::from_secs(10));
    let err = WssClient::try_connect(server.addr(), other.client_config())
        .err()
        .expect("an unknown authority is refused");
    assert!(err.contains("UnknownIssuer"), "{err}");
    // The server is unharmed.
    WssClient::join(server.addr(), pki.client_config(), "Carol");
    server.shutdown().unwrap();
}

/// Runs `lineclient` piped with `args`, feeding it `input`; returns its
/// exit code, standard output and standard error.
fn lineclient(args: &[&str], input: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lineclient"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lineclient starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("lineclient exits in time")
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn lineclient_over_wss_with_a_private_authority() {
    let pki = Pki::new("lineclient");
    let server = tls_server(&pki, Duration::from_secs(10));
    let url = format!("wss://127.0.0.1:{}/", server.addr().port());
    let mut watcher = WssClient::join(server.addr(), pki.client_config(), "Watcher");
    let ca = pki.ca.to_str().unwrap();
    let (code, stdout, stderr) = lineclient(
        &["--name", "Dave", "--ca-file", ca, &url],
        "hello over wss\n",
    );
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("Dave: hello over wss"), "{stdout}");
    assert_eq!(watcher.recv()["type"], "joined");
    let heard = watcher.recv();
    assert_eq!(heard["text"], "hello over wss");

    // Without the authority, one line says why, and the exit is non-zero.
    let (code, stdout, stderr) = lineclient(&["--name", "Eve", &url], "never sent\n");
    assert_eq!(code, Some(1), "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not trusted"), "{stderr}");
    assert!(stderr.contains("--ca-file"), "{stderr}");
    server.shutdown().unwrap();
}

/// The real `mioserver` with TLS, and its log lines as they come.
struct Process {
    child: Child,
    addr: SocketAddr,
    log: Receiver<String>,
}

impl Process {
    fn start(pki: &Pki) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mioserver"))
            .arg("127.0.0.1:0")
            // No miochat.db left in the working directory by a test.
            .args(["--db", ":memory:"])
            .arg("--tls-cert")
            .arg(&pki.cert)
            .arg("--tls-key")
            .arg(&pki.key)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mioserver");
        let (tx, log) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut process = Process {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        let line = process.wait_for("listening on wss://");
        let rest = line.split("listening on wss://").nth(1).unwrap();
        process.addr = rest.split('/').next().unwrap().parse().unwrap();
        process
    }

    /// Waits for a log line containing `text` and returns it.
    fn wait_for(&mut self, text: &str) -> String {
        loop {
            let line = self
                .log
                .recv_timeout(TIMEOUT)
                .unwrap_or_else(|_| panic!("no log line with {text:?}"));
            if line.contains(text) {
                return line;
            }
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill only sends a signal to our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_it_when_the_new_one_is_bad() {
    let first = Pki::new("first");
    let second = Pki::new("second");
    // The server reads its pair from files of its own, replaced below.
    let live = tempfile::tempdir().unwrap();
    let files = Pki {
        ca: first.ca.clone(),
        cert: live.path().join("cert.pem"),
        key: live.path().join("key.pem"),
        _dir: live,
    };
    std::fs::copy(&first.cert, &files.cert).unwrap();
    std::fs::copy(&first.key, &files.key).unwrap();
    let mut server = Process::start(&files);
    WssClient::join(server.addr, first.client_config(), "Before");

    // A broken key: refused with a log line, and the old pair stays.
    std::fs::write(&files.key, "not a key").unwrap();
    server.signal(libc::SIGHUP);
    let line = server.wait_for("SIGHUP");
    assert!(line.contains("kept the current TLS certificate"), "{line}");
    assert!(line.contains("key.pem"), "{line}");
    WssClient::join(server.addr, first.client_config(), "Still");

    // The renewed pair: the next client sees the new certificate.
    std::fs::copy(&second.cert, &files.cert).unwrap();
    std::fs::copy(&second.key, &files.key).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for("TLS certificate reloaded");
    WssClient::join(server.addr, second.client_config(), "After");
    let err = WssClient::try_connect(server.addr, first.client_config())
        .err()
        .expect("the old authority no longer matches");
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[test]
fn plaintext_and_stalled_handshakes_do_not_block_a_chat() {
    let pki = Pki::new("hostile");
    // Short, so the stalled handshakes are seen to be dropped.
    let server = tls_server(&pki, Duration::from_secs(2));
    let addr = server.addr();

    // A plaintext client on the TLS port: dropped, never answered in HTTP.
    let mut plain = tcp(addr);
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    match plain.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(err) => panic!("the plaintext client was not dropped: {err}"),
    }
    assert!(
        !answer.windows(4).any(|w| w == b"HTTP"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    // A hundred handshakes that stall: half send nothing, half the first
    // bytes of a ClientHello.
    let mut stalled: Vec<TcpStream> = (0..100).map(|_| tcp(addr)).collect();
    for socket in stalled.iter_mut().step_by(2) {
        socket
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .unwrap();
    }

    // Meanwhile a chat goes on as usual.
    let mut alice = WssClient::join(addr, pki.client_config(), "Alice");
    let mut bob = WssClient::join(addr, pki.client_config(), "Bob");
    assert_eq!(alice.recv()["type"], "joined");
    // Fewer than the rate limit's burst, which is not under test here.
    for i in 0..10 {
        let text = format!("line {i}");
        assert_eq!(alice.say(&text)["text"], text);
        assert_eq!(bob.recv()["text"], text);
    }

    // The handshake timeout ends every stalled one.
    for socket in &mut stalled {
        let mut buf = [0; 64];
        match socket.read(&mut buf) {
            Ok(0) => {}
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a stalled handshake was not dropped: {other:?}"),
        }
    }
    // The metrics saw it all: Alice's, Bob's and this scrape's handshakes
    // completed; the plaintext client's and the stalled ones failed.
    let metrics = https_get(addr, pki.client_config(), "/metrics");
    let sample = |name: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
            .to_owned()
    };
    assert_eq!(sample("miochat_tls_handshakes_total"), "3");
    assert_eq!(sample("miochat_tls_handshake_failures_total"), "101");
    server.shutdown().unwrap();
}
