//! What chatbench puts on the wire and reads back, apart from framing: the
//! target URL, the HTTP upgrade, the requests, and the few bytes of a
//! server message it needs.
//!
//! chatbench writes every `text` itself, so it can find what it measures
//! without parsing JSON on its hot path: a text is `"<sender> <micros> "`
//! padded with `x`, where `sender` is the sending client's index and
//! `micros` the time the message was *meant* to leave, in microseconds
//! since the run's epoch. Only digits, spaces and `x` appear, so no JSON
//! escaping can move them. Reading a server message relies on no field
//! order: see [`classify`].

use std::borrow::Cow;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::LazyLock;

use memchr::memmem::Finder;

/// Where chatbench connects: a loopback address and the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The server's address; always in 127.0.0.0/8.
    pub addr: SocketAddr,
    /// The `Host` header, as the user wrote it.
    pub host: String,
    /// The request path of the upgrade.
    pub path: String,
    /// Whether the URL is `wss://`: the WebSocket runs over TLS.
    pub tls: bool,
}

impl Target {
    /// Parses `ws://HOST:PORT/PATH`, `wss://HOST:PORT/PATH` or
    /// `HOST:PORT` (plain). Only loopback targets are accepted: chatbench
    /// is a load generator, and pointing one at a machine you do not own
    /// is an attack.
    pub fn parse(url: &str) -> Result<Target, String> {
        let (tls, rest) = match url.strip_prefix("wss://") {
            Some(rest) => (true, rest),
            None => (false, url.strip_prefix("ws://").unwrap_or(url)),
        };
        if rest.contains("://") {
            return Err(format!("{url}: only ws:// and wss:// URLs are supported"));
        }
        let (host, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        let (name, port) = host
            .rsplit_once(':')
            .ok_or_else(|| format!("{url}: the URL needs a port, as in ws://127.0.0.1:8765/"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{url}: {port:?} is not a port number"))?;
        let ip = match name {
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            _ => name
                .parse()
                .map_err(|_| format!("{url}: the host must be localhost or an IPv4 address"))?,
        };
        match ip {
            IpAddr::V4(v4) if v4.is_loopback() => Ok(Target {
                addr: SocketAddr::new(ip, port),
                host: host.to_owned(),
                path: path.to_owned(),
                tls,
            }),
            _ => Err(format!(
                "{url}: chatbench only targets loopback addresses (127.0.0.0/8)"
            )),
        }
    }

    /// The HTTP upgrade request for `key` (a `Sec-WebSocket-Key`).
    pub fn upgrade_request(&self, key: &str) -> String {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            self.path, self.host
        )
    }
}

/// Reads the upgrade response at the start of `buf`: `Ok(None)` until its
/// head is complete, then how many bytes it took. Anything but a 101 with
/// the right `Sec-WebSocket-Accept` is an error.
pub fn parse_upgrade_response(buf: &[u8], accept: &str) -> Result<Option<usize>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(format!("bad upgrade response: {err}")),
    };
    if response.code != Some(101) {
        return Err(format!(
            "upgrade refused: {} {}",
            response.code.unwrap_or(0),
            response.reason.unwrap_or("")
        ));
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if header("Sec-WebSocket-Accept") != Some(accept.as_bytes()) {
        return Err("upgrade response has a wrong Sec-WebSocket-Accept".to_owned());
    }
    Ok(Some(len))
}

/// The name of client `index`. The process id keeps two chatbench runs
/// against one server from taking each other's names.
pub fn client_name(pid: u32, index: usize) -> String {
    format!("cb{pid}-{index}")
}

/// Writes the `join` request of `name` into `out`.
pub fn join_request(out: &mut Vec<u8>, name: &str) {
    out.clear();
    out.extend_from_slice(br#"{"type":"join","name":""#);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(br#""}"#);
}

/// Writes a measured request into `out`: a `say`, or a `dm` to `dm_to`,
/// whose text carries `sender` and `micros` and is padded with `x` to
/// `size` bytes (longer if the two numbers need more room).
pub fn measured_request(
    out: &mut Vec<u8>,
    dm_to: Option<&str>,
    sender: usize,
    micros: u64,
    size: usize,
) {
    out.clear();
    match dm_to {
        Some(to) => {
            out.extend_from_slice(br#"{"type":"dm","to":""#);
            out.extend_from_slice(to.as_bytes());
            out.extend_from_slice(br#"","text":""#);
        }
        None => out.extend_from_slice(br#"{"type":"say","text":""#),
    }
    let start = out.len();
    write!(out, "{sender} {micros} ").expect("writing to a Vec cannot fail");
    let padding = size.saturating_sub(out.len() - start);
    out.resize(out.len() + padding, b'x');
    out.extend_from_slice(br#""}"#);
}

/// What chatbench needs to know about a server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The answer to our `join`.
    Welcome,
    /// A `message` or `dm` carrying a chatbench text.
    Delivery {
        /// The index of the client that sent it.
        sender: usize,
        /// When it was meant to be sent, in microseconds since the epoch.
        micros: u64,
    },
    /// An `error`: the server refused a request.
    Error,
    /// Anything else (`joined`, `left`, a message chatbench did not write).
    Other,
}

/// Classifies one server text frame by its `type` and, for deliveries, the
/// numbers at the start of its `text`, whatever the order of its fields.
///
/// The hot path parses no JSON. When the frame starts with `{"type":"`,
/// that is certainly the message's own type, whatever nested objects
/// follow. The `text` of a `message` or `dm` is then the value of its one
/// `"text":"` key, wherever it is: those objects nest nothing, and those
/// bytes can only be a key in JSON (a quote inside a string is escaped).
/// A frame whose `type` comes later (another server, another serializer)
/// is read with `serde_json`: slower, never wrong.
pub fn classify(payload: &[u8]) -> Event {
    let Some(kind) = payload.strip_prefix(TYPE_FIRST) else {
        return classify_parsed(payload);
    };
    if kind.starts_with(br#"message""#) || kind.starts_with(br#"dm""#) {
        TEXT.find(payload)
            .and_then(|at| parse_text(&payload[at + TEXT.needle().len()..]))
            .map_or(Event::Other, |(sender, micros)| Event::Delivery {
                sender,
                micros,
            })
    } else if kind.starts_with(br#"welcome""#) {
        Event::Welcome
    } else if kind.starts_with(br#"error""#) {
        Event::Error
    } else {
        Event::Other
    }
}

/// [`classify`] for a frame whose `type` is not its first field: the
/// top-level `type` and `text` read by `serde_json`, every other field
/// (nested history included) skipped.
fn classify_parsed(payload: &[u8]) -> Event {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(default, borrow)]
        text: Option<Cow<'a, str>>,
    }
    let Ok(envelope) = serde_json::from_slice::<Envelope>(payload) else {
        return Event::Other;
    };
    match &*envelope.kind {
        "message" | "dm" => envelope
            .text
            .and_then(|text| parse_text(text.as_bytes()))
            .map_or(Event::Other, |(sender, micros)| Event::Delivery {
                sender,
                micros,
            }),
        "welcome" => Event::Welcome,
        "error" => Event::Error,
        _ => Event::Other,
    }
}

/// How a server message starts when its `type` comes first, as serde
/// writes it: checked before any search.
const TYPE_FIRST: &[u8] = br#"{"type":""#;

/// The search for the start of a `text` value. Searches run for every
/// delivery, so they use memchr's vectorized finder, built once (building
/// one per call, or scanning byte by byte, was a fifth of chatbench's CPU).
static TEXT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""text":""#));

/// Reads `"<sender> <micros> "` from the start of a text.
fn parse_text(text: &[u8]) -> Option<(usize, u64)> {
    let mut fields = text.splitn(3, |&b| b == b' ');
    let sender = parse_decimal(fields.next()?)?;
    let micros = parse_decimal(fields.next()?)?;
    fields.next()?;
    Some((usize::try_from(sender).ok()?, micros))
}

/// Parses a non-empty run of ASCII digits.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loopback_urls_only() {
        let target = Target::parse("ws://127.0.0.1:8765/").unwrap();
        assert_eq!(target.addr, "127.0.0.1:8765".parse().unwrap());
        assert_eq!(target.path, "/");
        let target = Target::parse("localhost:9/chat").unwrap();
        assert_eq!(target.host, "localhost:9");
        assert_eq!(target.path, "/chat");
        assert!(Target::parse("ws://127.9.8.7:1").is_ok());
        assert!(Target::parse("ws://10.0.0.1:8765/").is_err());
        assert!(Target::parse("ws://example.com:80/").is_err());
        assert!(!target.tls);
        assert!(Target::parse("wss://127.0.0.1:8765/").unwrap().tls);
        assert!(Target::parse("wss://10.0.0.1:8765/").is_err());
        assert!(Target::parse("http://127.0.0.1:8765/").is_err());
        assert!(Target::parse("ws://127.0.0.1/").is_err());
    }

    #[test]
    fn checks_the_upgrade_response() {
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: abc\r\n\r\nrest";
        assert_eq!(parse_upgrade_response(ok, "abc"), Ok(Some(ok.len() - 4)));
        assert_eq!(parse_upgrade_response(&ok[..20], "abc"), Ok(None));
        assert!(parse_upgrade_response(ok, "xyz").is_err());
        assert!(parse_upgrade_response(b"HTTP/1.1 426 No\r\n\r\n", "abc").is_err());
    }

    #[test]
    fn builds_padded_requests() {
        let mut out = Vec::new();
        measured_request(&mut out, None, 12, 3456, 16);
        assert_eq!(out, br#"{"type":"say","text":"12 3456 xxxxxxxx"}"#);
        measured_request(&mut out, Some("cb1-3"), 2, 5, 0);
        assert_eq!(out, br#"{"type":"dm","to":"cb1-3","text":"2 5 "}"#);
        join_request(&mut out, "cb1-2");
        assert_eq!(out, br#"{"type":"join","name":"cb1-2"}"#);
    }

    #[test]
    fn classifies_server_messages() {
        let message = br#"{"type":"message","id":4,"ts":"t","from":"cb1-0","text":"7 99 xx"}"#;
        assert_eq!(
            classify(message),
            Event::Delivery {
                sender: 7,
                micros: 99
            }
        );
        let dm = br#"{"type":"dm","id":4,"ts":"t","from":"a","to":"b","text":"1 2 "}"#;
        assert_eq!(
            classify(dm),
            Event::Delivery {
                sender: 1,
                micros: 2
            }
        );
        let welcome = br#"{"type":"welcome","name":"a","users":[],"history":[{"type":"message","text":"1 2 "}]}"#;
        assert_eq!(classify(welcome), Event::Welcome);
        assert_eq!(classify(br#"{"type":"error","code":"x"}"#), Event::Error);
        assert_eq!(
            classify(br#"{"type":"message","text":"hello"}"#),
            Event::Other
        );
        assert_eq!(classify(br#"{"type":"joined","name":"a"}"#), Event::Other);
        assert_eq!(classify(b"not json"), Event::Other);
    }

    #[test]
    fn classifies_whatever_the_order_of_the_fields() {
        let delivery = Event::Delivery {
            sender: 7,
            micros: 99,
        };
        // The text before the type, and the type last.
        let message = br#"{"id":4,"text":"7 99 xx","from":"cb1-0","type":"message"}"#;
        assert_eq!(classify(message), delivery);
        let text_first = br#"{"type":"dm","text":"7 99 ","to":"b","from":"a","id":1}"#;
        assert_eq!(classify(text_first), delivery);
        let dm = br#"{"cid":"c","to":"b","type":"dm","text":"7 99 ","from":"a"}"#;
        assert_eq!(classify(dm), delivery);
        // A welcome whose history (with its own types and texts) comes
        // before its type is a welcome, not a delivery.
        let welcome = br#"{"history":[{"type":"message","id":1,"text":"7 99 "}],"type":"welcome","name":"a"}"#;
        assert_eq!(classify(welcome), Event::Welcome);
        let error = br#"{"code":"rate_limited","message":"m","type":"error"}"#;
        assert_eq!(classify(error), Event::Error);
        let joined = br#"{"name":"a","online":2,"type":"joined"}"#;
        assert_eq!(classify(joined), Event::Other);
        // Escapes in a reordered text are read as JSON reads them.
        let escaped = br#"{"text":"\u0037 99 ","type":"message"}"#;
        assert_eq!(classify(escaped), delivery);
    }
}
