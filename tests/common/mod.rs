//! Helpers shared by the black-box tests of `mioserver`: a server on a free
//! port, a blocking WebSocket client (tungstenite's own), raw TCP for the
//! HTTP side, and checks of the fields whose value is not deterministic
//! (`ts`, `id`).
//!
//! Nothing here sleeps: every read has a timeout ([`TIMEOUT`]), so a server
//! that fails to answer makes a test fail instead of hang.

// Each test file is its own crate and uses only some of these helpers.
#![allow(dead_code)]

pub mod pki;
pub mod process;
pub mod redis;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use chrono::{DateTime, Utc};
use miochat::evloop::config::LoopConfig;
use miochat::{ServerConfig, ServerHandle};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::HandshakeError;
use tungstenite::{Message, WebSocket};

/// The longest any single read waits for the server.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The default settings (those of the protocol), on a free port of 127.0.0.1.
pub fn config() -> ServerConfig {
    ServerConfig {
        net: LoopConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            ..LoopConfig::default()
        },
        ..ServerConfig::default()
    }
}

/// Starts a server in this process, on its own thread.
pub fn start(config: ServerConfig) -> ServerHandle {
    miochat::chat::start(config).expect("the server starts")
}

/// Ends a test: hangs up `clients` (without a close frame), then shuts the
/// server down and checks that its loop ended without an error.
pub fn stop(server: ServerHandle, clients: impl IntoIterator<Item = Client>) {
    drop(clients.into_iter().collect::<Vec<_>>());
    server.shutdown().expect("the server shuts down cleanly");
}

/// A TCP connection to `addr` whose reads and writes time out.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// Asserts that the server closes `stream` without sending anything: the
/// read sees end of file or a reset, not data and not a timeout.
pub fn assert_dropped(stream: &mut TcpStream) {
    let mut buf = [0; 1024];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(err) if err.kind() == io::ErrorKind::ConnectionReset => {}
        Ok(n) => panic!("expected the socket to be dropped, got {:?}", &buf[..n]),
        Err(err) => panic!("expected the socket to be dropped, got {err}"),
    }
}

/// A WebSocket client over a blocking socket with a read timeout: plain
/// TCP, or any other stream (TLS through a proxy, in `tests/nginx.rs`).
#[derive(Debug)]
pub struct Client<S = TcpStream> {
    ws: WebSocket<S>,
}

impl Client {
    /// Connects to `/` and completes the WebSocket upgrade (no `join` yet).
    pub fn connect(addr: SocketAddr) -> Client {
        Client::connect_path(addr, "/")
    }

    /// Connects to `path`, which starts with `/`, and completes the upgrade.
    pub fn connect_path(addr: SocketAddr, path: &str) -> Client {
        let (ws, _response) = tungstenite::client(format!("ws://{addr}{path}"), tcp(addr))
            .expect("WebSocket upgrade");
        Client { ws }
    }

    /// Connects to `/` with extra request `headers` (`Origin`,
    /// `X-Forwarded-For`) and tries the upgrade: the client, or the status
    /// of the server's refusal.
    pub fn upgrade(addr: SocketAddr, headers: &[(&'static str, &str)]) -> Result<Client, u16> {
        let mut request = format!("ws://{addr}/").into_client_request().unwrap();
        for &(name, value) in headers {
            request
                .headers_mut()
                .append(name, value.parse().expect("a header value"));
        }
        match tungstenite::client(request, tcp(addr)) {
            Ok((ws, _response)) => Ok(Client { ws }),
            Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                Err(response.status().as_u16())
            }
            Err(err) => panic!("WebSocket upgrade: {err}"),
        }
    }

    /// Connects and joins as `name`; returns the client and its `welcome`.
    pub fn join(addr: SocketAddr, name: &str) -> (Client, Value) {
        Client::connect(addr).join_as(name)
    }
}

impl<S: Read + Write> Client<S> {
    /// A client on a WebSocket opened elsewhere.
    pub fn over(ws: WebSocket<S>) -> Client<S> {
        Client { ws }
    }

    /// Joins as `name`; returns the client and its `welcome`.
    pub fn join_as(mut self, name: &str) -> (Client<S>, Value) {
        self.send(json!({"type": "join", "name": name}));
        let welcome = self.recv();
        assert_eq!(welcome["type"], "welcome", "answer to a join: {welcome}");
        assert_eq!(welcome["name"], name);
        (self, welcome)
    }

    /// Sends one text frame holding `request`.
    pub fn send(&mut self, request: Value) {
        self.send_text(&request.to_string());
    }

    /// Sends one text frame.
    pub fn send_text(&mut self, text: &str) {
        self.send_frame(Message::text(text));
    }

    /// Sends any WebSocket message.
    pub fn send_frame(&mut self, message: Message) {
        self.ws.send(message).expect("send a frame");
    }

    /// `say`.
    pub fn say(&mut self, text: &str) {
        self.send(json!({"type": "say", "text": text}));
    }

    /// `dm`.
    pub fn dm(&mut self, to: &str, text: &str) {
        self.send(json!({"type": "dm", "to": to, "text": text}));
    }

    /// `who`.
    pub fn who(&mut self) {
        self.send(json!({"type": "who"}));
    }

    /// Starts the closing handshake with a close frame (code 1000).
    pub fn close(&mut self) {
        self.ws.close(None).expect("send a close frame");
    }

    /// The next frame of any kind; pings are returned too (and answered,
    /// as tungstenite answers every ping it reads).
    pub fn recv_frame(&mut self) -> Message {
        self.ws.read().expect("a frame from the server")
    }

    /// The next text frame, parsed as a JSON object. Pings are skipped;
    /// a close or anything else fails the test.
    pub fn recv(&mut self) -> Value {
        loop {
            match self.recv_frame() {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).expect("a JSON text frame");
                    assert!(value.is_object(), "not an object: {value}");
                    return value;
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next text frame, parsed as a JSON object, waiting up to
    /// `limit` for it: for what comes later than [`TIMEOUT`] allows, such
    /// as the `left` of a user whose server died.
    pub fn recv_within(&mut self, limit: std::time::Duration) -> Value {
        let give_up = std::time::Instant::now() + limit;
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    return serde_json::from_str(&text).expect("a JSON text frame")
                }
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                Ok(other) => panic!("expected a text frame, got {other:?}"),
                Err(tungstenite::Error::Io(err))
                    if matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) && std::time::Instant::now() < give_up => {}
                Err(err) => panic!("no frame within {limit:?}: {err}"),
            }
        }
    }

    /// The next text frame as it is (pings skipped): a plain-text line.
    pub fn recv_line(&mut self) -> String {
        loop {
            match self.recv_frame() {
                Message::Text(text) => return text.as_str().to_owned(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Expects the server's close frame next (pings skipped); returns its
    /// code and reason.
    pub fn recv_close(&mut self) -> (u16, String) {
        loop {
            match self.recv_frame() {
                Message::Close(Some(frame)) => {
                    return (frame.code.into(), frame.reason.to_string())
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Expects an `error` with `code` next: exactly `type`, `code` and a
    /// non-empty human-readable `message`.
    pub fn expect_error(&mut self, code: &str) {
        let mut error = self.recv();
        let message = error
            .as_object_mut()
            .and_then(|fields| fields.remove("message"));
        assert!(
            message
                .as_ref()
                .and_then(Value::as_str)
                .is_some_and(|m| !m.is_empty()),
            "an error explains itself: {message:?}"
        );
        assert_eq!(error, json!({"type": "error", "code": code}));
    }

    /// Expects the answer to a `who` next, and returns its names sorted
    /// (the protocol promises no order).
    pub fn expect_users(&mut self) -> Vec<String> {
        let mut users = self.recv();
        let names = sorted_users(&mut users);
        assert_eq!(users, json!({"type": "users", "users": names}));
        names
    }
}

/// Connects and joins every name in turn. Each newcomer's `joined` is read
/// (and checked) on the clients already in, so all of them start idle.
pub fn join_all<const N: usize>(addr: SocketAddr, names: [&str; N]) -> [Client; N] {
    let mut clients: Vec<Client> = Vec::with_capacity(N);
    for name in names {
        let (client, _welcome) = Client::join(addr, name);
        let online = clients.len() + 1;
        for earlier in &mut clients {
            let joined = untimed(earlier.recv());
            assert_eq!(
                joined,
                json!({"type": "joined", "name": name, "online": online})
            );
        }
        clients.push(client);
    }
    clients
        .try_into()
        .unwrap_or_else(|_| unreachable!("N names give N clients"))
}

/// Sorts the `users` list of a `welcome` or `users` message in place and
/// returns it.
pub fn sorted_users(message: &mut Value) -> Vec<String> {
    let users = message["users"].as_array_mut().expect("a users list");
    let mut names: Vec<String> = users
        .iter()
        .map(|name| name.as_str().expect("a name").to_owned())
        .collect();
    names.sort();
    *users = names.iter().map(|name| json!(name)).collect();
    names
}

/// Checks the `ts` of a server message (RFC 3339, UTC, milliseconds, `Z`,
/// and about now) and returns the message without it, to be compared whole.
pub fn untimed(mut message: Value) -> Value {
    let ts = message
        .as_object_mut()
        .and_then(|fields| fields.remove("ts"))
        .unwrap_or_else(|| panic!("no ts in {message}"));
    assert_timestamp(ts.as_str().expect("ts is a string"));
    message
}

/// Checks and removes the `ts` and `id` of a `message` or `dm`; returns the
/// id and the rest of the message, to be compared whole.
pub fn unstamped(message: Value) -> (u64, Value) {
    let mut message = untimed(message);
    let id = message
        .as_object_mut()
        .and_then(|fields| fields.remove("id"))
        .unwrap_or_else(|| panic!("no id in {message}"));
    (id.as_u64().expect("id is an unsigned integer"), message)
}

/// Asserts that `ts` looks like `2026-11-25T08:00:00.123Z` and is within a
/// minute of now.
pub fn assert_timestamp(ts: &str) {
    let shape_ok = ts.len() == 24
        && ts.ends_with('Z')
        && ts.as_bytes()[10] == b'T'
        && ts.as_bytes()[19] == b'.';
    assert!(shape_ok, "not RFC 3339 UTC with milliseconds: {ts:?}");
    let time = DateTime::parse_from_rfc3339(ts)
        .unwrap_or_else(|err| panic!("not RFC 3339: {ts:?}: {err}"))
        .with_timezone(&Utc);
    let skew = (Utc::now() - time).num_seconds().abs();
    assert!(skew < 60, "ts {ts} is not about now");
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The value of a header, by lowercase name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Sends `request` as is and reads the whole response, up to the server
/// closing the connection.
pub fn http(addr: SocketAddr, request: &str) -> HttpResponse {
    http_on(&mut tcp(addr), request)
}

/// [`http`] on a connection already open.
pub fn http_on(stream: &mut TcpStream, request: &str) -> HttpResponse {
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .expect("the server answers and closes");
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(&raw) {
        Ok(httparse::Status::Complete(len)) => len,
        other => panic!("not an HTTP response ({other:?}): {raw:?}"),
    };
    HttpResponse {
        status: response.code.unwrap(),
        headers: response
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8_lossy(h.value).into_owned();
                (h.name.to_ascii_lowercase(), value)
            })
            .collect(),
        body: String::from_utf8(raw[head_len..].to_vec()).expect("a UTF-8 body"),
    }
}

/// A WebSocket upgrade request for `/`, to be altered by HTTP tests.
pub const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";
