//! Hostile input at the byte level: frames and requests no well-behaved
//! client sends. Each test checks the exact answer (close code, HTTP status
//! or error), that the server keeps serving a bystander, and that its loop
//! ends cleanly (a panic would make `shutdown` fail).
//!
//! The client here is hand-rolled on a raw socket, because tungstenite's
//! client refuses to send most of these frames.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use miochat::evloop::config::LoopConfig;
use miochat::evloop::testing::encode_frame;
use miochat::{ServerConfig, ServerHandle};
use serde_json::Value;

/// The longest any single read waits for the server.
const TIMEOUT: Duration = Duration::from_secs(5);

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;

/// A WebSocket client that writes whatever bytes it is told to.
struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    /// Connects and completes a correct upgrade.
    fn connect(addr: SocketAddr) -> RawClient {
        let mut stream = tcp(addr);
        stream.write_all(&upgrade_request("/")).unwrap();
        let head = read_http_head(&mut stream);
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        RawClient { stream }
    }

    /// Connects, upgrades and joins as `name`.
    fn joined(addr: SocketAddr, name: &str) -> RawClient {
        let mut client = RawClient::connect(addr);
        client.send_text(&format!(r#"{{"type":"join","name":"{name}"}}"#));
        assert_eq!(client.next_json()["type"], "welcome");
        client
    }

    /// Sends one frame with full control over its first byte (FIN, RSV
    /// bits, opcode) and over masking.
    fn send_frame(&mut self, first_byte: u8, payload: &[u8], masked: bool) {
        let mask = masked.then_some([0xa1, 0xb2, 0xc3, 0xd4]);
        let mut frame = encode_frame(first_byte & 0x0f, payload, mask);
        frame[0] = first_byte;
        self.stream.write_all(&frame).unwrap();
    }

    /// A final, masked frame of `opcode`.
    fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.send_frame(0x80 | opcode, payload, true);
    }

    fn send_text(&mut self, text: &str) {
        self.send(TEXT, text.as_bytes());
    }

    /// Reads one server frame: (opcode, payload).
    fn read_frame(&mut self) -> (u8, Vec<u8>) {
        let mut header = [0; 2];
        self.stream.read_exact(&mut header).expect("a frame header");
        assert_eq!(header[1] & 0x80, 0, "server frames are never masked");
        let len = match header[1] & 0x7f {
            126 => {
                let mut len = [0; 2];
                self.stream.read_exact(&mut len).unwrap();
                u64::from(u16::from_be_bytes(len))
            }
            127 => {
                let mut len = [0; 8];
                self.stream.read_exact(&mut len).unwrap();
                u64::from_be_bytes(len)
            }
            len => u64::from(len),
        };
        let mut payload = vec![0; len as usize];
        self.stream.read_exact(&mut payload).unwrap();
        (header[0] & 0x0f, payload)
    }

    /// The next text frame, parsed as JSON.
    fn next_json(&mut self) -> Value {
        match self.read_frame() {
            (TEXT, payload) => serde_json::from_slice(&payload).unwrap(),
            (opcode, payload) => panic!("expected text, got opcode {opcode}: {payload:?}"),
        }
    }

    /// The next frame must be a close with `code`; then the server hangs
    /// up, and so do we (dropping the socket), as a real client does.
    fn expect_close(mut self, code: u16) {
        let (opcode, payload) = self.read_frame();
        assert_eq!(opcode, CLOSE, "expected a close frame, payload {payload:?}");
        assert_eq!(
            u16::from_be_bytes([payload[0], payload[1]]),
            code,
            "reason: {}",
            String::from_utf8_lossy(&payload[2..])
        );
        assert_hangs_up(&mut self.stream);
    }
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
}

fn upgrade_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Reads an HTTP response head, byte by byte so nothing after it is taken.
fn read_http_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("an HTTP response");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// The server closes the socket: end of file (or a reset), within the timeout.
fn assert_hangs_up(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::ConnectionReset => {}
        Err(err) => panic!("expected the server to hang up: {err}"),
    }
}

/// A server with a small message limit, a bystander already chatting, and
/// a check at the end that the bystander was not disturbed.
struct Scene {
    server: ServerHandle,
    bystander: RawClient,
}

impl Scene {
    fn new() -> Scene {
        let server = miochat::chat::start(ServerConfig {
            net: LoopConfig {
                addr: "127.0.0.1:0".parse().unwrap(),
                max_message_bytes: 1024,
                ..LoopConfig::default()
            },
            ..ServerConfig::default()
        })
        .unwrap();
        let bystander = RawClient::joined(server.addr(), "bystander");
        Scene { server, bystander }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// The bystander can still chat, and the server shuts down cleanly.
    fn finish(mut self) {
        self.bystander
            .send_text(r#"{"type":"say","text":"still here"}"#);
        loop {
            let event = self.bystander.next_json();
            // Join/leave notices of the attackers may come first.
            if event["type"] == "message" {
                assert_eq!(event["text"], "still here");
                break;
            }
        }
        // Hang up first, as a real client would after the 1001: otherwise
        // the server waits out its linger for the bystander's goodbye.
        drop(self.bystander);
        self.server
            .shutdown()
            .expect("the server loop ended cleanly");
    }
}

#[test]
fn frames_breaking_rfc_6455_get_1002() {
    type Attack = fn(&mut RawClient);
    let attacks: [(&str, Attack); 8] = [
        ("unmasked frame", |c| c.send_frame(0x81, b"hi", false)),
        ("RSV1 set", |c| {
            c.send_frame(0x80 | 0x40 | TEXT, b"hi", true)
        }),
        ("RSV3 set", |c| {
            c.send_frame(0x80 | 0x10 | TEXT, b"hi", true)
        }),
        ("reserved data opcode", |c| c.send(0x3, b"hi")),
        ("reserved control opcode", |c| c.send(0xB, b"hi")),
        ("fragmented ping", |c| c.send_frame(PING, b"hi", true)),
        ("ping of 126 bytes", |c| c.send(PING, &[b'p'; 126])),
        ("continuation with nothing to continue", |c| {
            c.send(CONTINUATION, b"hi")
        }),
    ];
    let scene = Scene::new();
    for (name, attack) in attacks {
        let mut client = RawClient::connect(scene.addr());
        attack(&mut client);
        let (opcode, payload) = client.read_frame();
        assert_eq!(opcode, CLOSE, "{name}");
        assert_eq!(&payload[..2], &1002u16.to_be_bytes(), "{name}");
        assert_hangs_up(&mut client.stream);
    }
    scene.finish();
}

#[test]
fn invalid_utf8_gets_1007_even_split_across_fragments() {
    let scene = Scene::new();
    let mut whole = RawClient::joined(scene.addr(), "whole");
    whole.send(TEXT, b"\xff\xfe not utf-8");
    whole.expect_close(1007);
    // "é" is C3 A9: the fragments split it, and the second byte is wrong.
    let mut split = RawClient::joined(scene.addr(), "split");
    split.send_frame(TEXT, b"caf\xc3", true);
    split.send_frame(0x80 | CONTINUATION, b"\x28", true);
    split.expect_close(1007);
    scene.finish();
}

#[test]
fn oversized_messages_get_1009() {
    let scene = Scene::new();
    // One byte over the limit.
    let mut over = RawClient::joined(scene.addr(), "over");
    over.send(TEXT, &[b' '; 1025]);
    over.expect_close(1009);
    // A length header of 2^63: refused from the header alone.
    let mut huge = RawClient::joined(scene.addr(), "huge");
    huge.stream
        .write_all(&[0x81, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4])
        .unwrap();
    huge.expect_close(1009);
    // Endless continuation frames, each small, adding up past the limit.
    let mut endless = RawClient::joined(scene.addr(), "endless");
    endless.send_frame(TEXT, &[b' '; 100], true);
    // 21 fragments of 100 bytes pass the 1024-byte limit at the 11th; the
    // server reads and discards the rest while it closes.
    for _ in 0..20 {
        endless.send_frame(CONTINUATION, &[b' '; 100], true);
    }
    endless.expect_close(1009);
    scene.finish();
}

#[test]
fn a_client_killed_mid_frame_delivers_nothing() {
    let scene = Scene::new();
    let mut victim = RawClient::joined(scene.addr(), "victim");
    // The first half of a say, then the process "dies".
    let say = br#"{"type":"say","text":"never delivered"}"#;
    let mut frame = vec![0x81, 0x80 | say.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(&say[..10]);
    victim.stream.write_all(&frame).unwrap();
    drop(victim);
    let mut bystander = scene.bystander;
    let left = bystander.next_json();
    assert_eq!(left["type"], "joined");
    let left = bystander.next_json();
    assert_eq!(
        (left["type"].as_str(), left["name"].as_str()),
        (Some("left"), Some("victim"))
    );
    Scene { bystander, ..scene }.finish();
}

#[test]
fn bad_requests_get_their_http_status() {
    let scene = Scene::new();
    let cases: [(&str, Vec<u8>); 6] = [
        ("no key", {
            let text = String::from_utf8(upgrade_request("/")).unwrap();
            text.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")
                .into_bytes()
        }),
        ("version 8", {
            let text = String::from_utf8(upgrade_request("/")).unwrap();
            text.replace("Version: 13", "Version: 8").into_bytes()
        }),
        ("POST", {
            let text = String::from_utf8(upgrade_request("/")).unwrap();
            text.replace("GET", "POST").into_bytes()
        }),
        (
            // `/` would be the web page: another path is for WebSockets only.
            "no Upgrade header",
            b"GET /chat HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("100 KB of headers", {
            let mut request = b"GET / HTTP/1.1\r\n".to_vec();
            for i in 0..2000 {
                request
                    .extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(40)).as_bytes());
            }
            request
        }),
        ("garbage", b"\x00\x01\x02\x03 hello?\r\n\r\n".to_vec()),
    ];
    let expected = [400, 426, 405, 426, 431, 400];
    for ((name, request), status) in cases.into_iter().zip(expected) {
        let mut stream = tcp(scene.addr());
        // The server may answer and close before reading all of a large
        // request; a write error then is part of the expected behaviour.
        let _ = stream.write_all(&request);
        let head = read_http_head(&mut stream);
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{name}: {head}"
        );
        assert_hangs_up(&mut stream);
    }
    scene.finish();
}

#[test]
fn a_tls_client_hello_is_refused() {
    let scene = Scene::new();
    let mut stream = tcp(scene.addr());
    // The start of a TLS 1.2 ClientHello record.
    let hello = [
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0x00, 0x01, 0x02, 0x03,
    ];
    stream.write_all(&hello).unwrap();
    let head = read_http_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    assert_hangs_up(&mut stream);
    drop(stream);
    scene.finish();
}

#[test]
fn json_that_is_not_a_request_gets_an_error_and_the_connection_stays() {
    let scene = Scene::new();
    let mut client = RawClient::joined(scene.addr(), "prober");
    let nested = format!(
        r#"{{"type":"say","text":{}1{}}}"#,
        "[".repeat(500),
        "]".repeat(500)
    );
    let probes: [(&str, &str); 8] = [
        ("[1,2,3]", "invalid_json"),
        ("42", "invalid_json"),
        (r#""a string""#, "invalid_json"),
        ("{not json", "invalid_json"),
        (&nested, "invalid_json"),
        (r#"{"type":"say","text":42}"#, "invalid_json"),
        (r#"{"type":"dm","to":["Bob"],"text":"x"}"#, "invalid_json"),
        (r#"{"type":"teleport"}"#, "unknown_type"),
    ];
    for (probe, code) in probes {
        client.send_text(probe);
        let error = client.next_json();
        assert_eq!(error["type"], "error", "{probe}");
        assert_eq!(error["code"], code, "{probe}");
    }
    drop(client);
    scene.finish();
}

#[test]
fn names_with_control_and_invisible_characters_are_refused() {
    let scene = Scene::new();
    let mut client = RawClient::connect(scene.addr());
    for name in [
        "nul\\u0000",
        "esc\\u001b[31m",
        "cr\\rlf\\n",
        "bidi\\u202e",
        "zero\\u200bwidth",
        "tab\\t",
    ] {
        client.send_text(&format!(r#"{{"type":"join","name":"{name}"}}"#));
        let error = client.next_json();
        assert_eq!(error["code"], "invalid_name", "{name}");
    }
    // The connection is still usable for a good name.
    client.send_text(r#"{"type":"join","name":"fine"}"#);
    assert_eq!(client.next_json()["type"], "welcome");
    drop(client);
    scene.finish();
}

#[test]
fn binary_frames_get_1003() {
    let scene = Scene::new();
    let mut client = RawClient::joined(scene.addr(), "binary");
    client.send(BINARY, b"\x00\x01");
    client.expect_close(1003);
    scene.finish();
}
