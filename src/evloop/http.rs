//! The HTTP/1.1 part of a WebSocket server: reading the request head that
//! opens every connection, and writing the few responses the server gives.
//!
//! The server parses the head itself (with `httparse`) instead of letting
//! tungstenite do it, because not every request is an upgrade: `GET /healthz`
//! is answered with JSON, `GET /` with the web page, and each refusal must
//! name its own status code. What HTTP asks of every plain answer, whatever
//! the application is (no body for `HEAD`, `304` for a matching
//! `If-None-Match`), is done here, on the application's full answer.

use std::net::{IpAddr, SocketAddr};

use tungstenite::handshake::derive_accept_key;

/// The largest request head accepted. Browsers send well under 2 KiB; 8 KiB
/// is what common proxies allow, and it bounds what a client can make us
/// buffer before the upgrade.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// The most header lines parsed. Beyond it the request is refused with 431.
const MAX_HEADERS: usize = 32;

/// A complete, acceptable request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// What the request asks for.
    pub target: Target,
    /// The `X-Forwarded-For` header as sent, if any: the loop reads the
    /// client's address from it when the connection comes from a trusted
    /// proxy ([`client_address`]), and ignores it otherwise.
    pub forwarded_for: Option<String>,
}

/// What a request head asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A valid WebSocket upgrade request.
    Upgrade {
        /// The client's `Sec-WebSocket-Key`, from which the accept key is derived.
        key: String,
    },
    /// A plain `GET` or `HEAD` (no upgrade); the application answers it.
    Get(GetRequest),
}

/// A plain `GET` or `HEAD` request: what the application and
/// [`GetRequest::finish`] need of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetRequest {
    /// The request target, e.g. `/healthz`.
    pub path: String,
    /// `HEAD`: the answer is the `GET` answer without its body.
    pub head_only: bool,
    /// The `If-None-Match` header: the entity tags the client has cached.
    pub if_none_match: Option<String>,
}

impl GetRequest {
    /// Fits the application's full `GET` answer to this request: `304 Not
    /// Modified` when a `200` answer's `ETag` is one the client has, and no
    /// body for `HEAD` or `304`. The headers stay as they are (RFC 9110
    /// 9.3.2 and 15.4.5 ask for the same ones as the `200`).
    pub fn finish(&self, mut response: Vec<u8>) -> Vec<u8> {
        let Some(head_len) = memchr::memmem::find(&response, b"\r\n\r\n").map(|at| at + 4) else {
            return response;
        };
        let head = String::from_utf8_lossy(&response[..head_len]).into_owned();
        let not_modified = head.starts_with("HTTP/1.1 200 ")
            && head
                .split("\r\n")
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("ETag"))
                .zip(self.if_none_match.as_deref())
                .is_some_and(|((_, etag), cached)| etag_matches(cached, etag.trim()));
        if not_modified {
            let status_end = head.find("\r\n").unwrap_or(0);
            let mut answer = b"HTTP/1.1 304 Not Modified".to_vec();
            answer.extend_from_slice(&response[status_end..head_len]);
            return answer;
        }
        if self.head_only {
            response.truncate(head_len);
        }
        response
    }
}

/// Whether an `If-None-Match` value names `etag`: `*`, or a list of tags
/// compared weakly (RFC 9110 13.1.2: `W/` is ignored).
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    if_none_match.trim() == "*"
        || if_none_match
            .split(',')
            .any(|tag| opaque(tag) == opaque(etag))
}

/// A request head the server refuses, with the status it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status code.
    pub status: u16,
    /// Why, for the response body and the debug log.
    pub reason: &'static str,
}

impl Refusal {
    /// A refusal with this status, for this reason.
    pub fn new(status: u16, reason: &'static str) -> Self {
        Refusal { status, reason }
    }

    /// The full response for this refusal; the connection closes after it.
    pub fn response(&self) -> Vec<u8> {
        let extra = match self.status {
            405 => "Allow: GET, HEAD\r\n",
            // RFC 6455 4.4: tell the client which version we speak.
            426 => "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n",
            _ => "",
        };
        response(
            self.status,
            extra,
            "text/plain; charset=utf-8",
            format!("{}\n", self.reason).as_bytes(),
        )
    }
}

/// Parses the request head at the start of `buf`. `allowed_origins`, when
/// not empty, lists the only `Origin`s a browser's upgrade may come from
/// (see [`check_origin`]).
///
/// `Ok(None)`: the head is not complete yet, read more. `Ok(Some((head,
/// len)))`: a complete head of `len` bytes; anything after it already belongs
/// to the WebSocket stream. `Err`: refuse with that status and close.
pub fn parse_head(
    buf: &[u8],
    allowed_origins: &[String],
) -> Result<Option<(Head, usize)>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(Refusal::new(431, "request head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(431, "too many header fields"))
        }
        Err(_) => return Err(Refusal::new(400, "malformed HTTP request")),
    };
    if len > MAX_HEAD_BYTES {
        return Err(Refusal::new(431, "request head too large"));
    }
    let head_only = match request.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Err(Refusal::new(405, "only GET and HEAD are served here")),
    };
    let path = request.path.unwrap_or("/").to_owned();
    let named = |name: &'static str| {
        request
            .headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value))
    };
    // Several X-Forwarded-For lines are one list, in order (RFC 9110,
    // section 5.3): a proxy may append its own after the client's.
    let forwarded: Vec<_> = named("X-Forwarded-For").collect();
    let forwarded_for = (!forwarded.is_empty()).then(|| forwarded.join(","));
    let header = |name: &'static str| named(name).next().map(|v| v.into_owned());
    let wants_upgrade =
        header("Upgrade").is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    if !wants_upgrade {
        let request = GetRequest {
            path,
            head_only,
            if_none_match: header("If-None-Match"),
        };
        return Ok(Some((
            Head {
                target: Target::Get(request),
                forwarded_for,
            },
            len,
        )));
    }
    if head_only {
        return Err(Refusal::new(405, "an upgrade must be a GET"));
    }
    if request.version != Some(1) {
        return Err(Refusal::new(400, "WebSocket needs HTTP/1.1"));
    }
    let connection_upgrade = header("Connection").is_some_and(|v| {
        v.split(',')
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
    });
    if !connection_upgrade {
        return Err(Refusal::new(400, "missing \"Connection: Upgrade\""));
    }
    if header("Sec-WebSocket-Version").as_deref().map(str::trim) != Some("13") {
        return Err(Refusal::new(426, "only WebSocket version 13 is supported"));
    }
    check_origin(header("Origin").as_deref(), allowed_origins)?;
    match header("Sec-WebSocket-Key") {
        // The key is 16 random bytes in base64: always 24 characters.
        Some(key) if key.trim().len() == 24 => {
            let key = key.trim().to_owned();
            let target = Target::Upgrade { key };
            Ok(Some((
                Head {
                    target,
                    forwarded_for,
                },
                len,
            )))
        }
        _ => Err(Refusal::new(400, "missing or malformed Sec-WebSocket-Key")),
    }
}

/// Refuses (403) an upgrade whose `Origin` is not in `allowed`, when
/// `allowed` is not empty. A browser sends the origin of the page that
/// opens a WebSocket and lets any page open one to any server, so without
/// this check another web site could make its visitors' browsers join the
/// chat. A request without `Origin` does not come from a web page (a
/// terminal client, a bot) and passes: the check protects browsers' users,
/// it does not authenticate anyone. Origins compare without regard to case,
/// as a host name does.
pub fn check_origin(origin: Option<&str>, allowed: &[String]) -> Result<(), Refusal> {
    match origin.map(str::trim) {
        Some(origin) if !allowed.is_empty() => {
            if allowed.iter().any(|ok| ok.eq_ignore_ascii_case(origin)) {
                Ok(())
            } else {
                Err(Refusal::new(403, "this Origin may not connect"))
            }
        }
        _ => Ok(()),
    }
}

/// The client's address for a connection from `peer` that sent
/// `forwarded_for` (the value of its `X-Forwarded-For`), when `peer` is
/// one of the `trusted` proxies; for any other peer the header is ignored
/// and the answer is `peer`, since anyone can write any header.
///
/// The header lists addresses left to right, each proxy appending the one
/// it received the request from. Only the entries added by trusted proxies
/// can be believed: a client may send a header of its own, with any
/// addresses in it, and the proxy appends to it. So the list is read from
/// the right: the rightmost entry is what our proxy saw, and when that is
/// itself a trusted proxy (a chain of them), the entry before it, and so
/// on. The first address not trusted is the client. When an entry cannot
/// be read, the last trusted hop is the best address known.
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpAddr]) -> IpAddr {
    let mut client = peer;
    let Some(list) = forwarded_for else {
        return client;
    };
    for entry in list.rsplit(',') {
        if !trusted.contains(&client) {
            break;
        }
        match parse_forwarded_address(entry.trim()) {
            Some(address) => client = address,
            None => break,
        }
    }
    client
}

/// One entry of `X-Forwarded-For`: an address, perhaps with a port
/// (`192.0.2.7`, `2001:db8::1`, `192.0.2.7:4711`, `[2001:db8::1]:4711`).
fn parse_forwarded_address(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
}

/// The `101 Switching Protocols` answer to an upgrade with this key.
pub fn upgrade_response(key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
    .into_bytes()
}

/// A complete response that closes the connection after the body.
/// `extra_headers` is zero or more `Name: value\r\n` lines.
pub fn response(status: u16, extra_headers: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\n{extra_headers}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        status_text(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The reason phrase of the statuses this server uses.
fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn accepts_an_upgrade_and_says_where_the_head_ends() {
        let mut bytes = UPGRADE.as_bytes().to_vec();
        bytes.extend_from_slice(b"\x81\x80");
        let (head, len) = parse_head(&bytes, &[]).unwrap().unwrap();
        assert_eq!(
            head,
            Head {
                target: Target::Upgrade {
                    key: "dGhlIHNhbXBsZSBub25jZQ==".into()
                },
                forwarded_for: None,
            }
        );
        assert_eq!(len, UPGRADE.len());
        // The example from RFC 6455 section 1.3.
        let response = String::from_utf8(upgrade_response("dGhlIHNhbXBsZSBub25jZQ==")).unwrap();
        assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn waits_for_the_rest_of_a_partial_head() {
        for cut in [0, 1, 10, UPGRADE.len() - 1] {
            assert_eq!(
                parse_head(&UPGRADE.as_bytes()[..cut], &[]),
                Ok(None),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn plain_get_is_left_to_the_application() {
        let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            parse_head(request, &[]),
            Ok(Some((
                Head {
                    target: Target::Get(GetRequest {
                        path: "/healthz".into(),
                        head_only: false,
                        if_none_match: None,
                    }),
                    forwarded_for: None,
                },
                request.len()
            )))
        );
    }

    /// The request of `head`, which is a plain GET or HEAD.
    fn get_request(head: &str) -> GetRequest {
        match parse_head(head.as_bytes(), &[]) {
            Ok(Some((
                Head {
                    target: Target::Get(request),
                    ..
                },
                _,
            ))) => request,
            other => panic!("not a plain request: {other:?}"),
        }
    }

    #[test]
    fn a_cached_entity_tag_gets_304_and_head_gets_no_body() {
        let page = response(200, "ETag: \"abc\"\r\n", "text/html", b"<p>hi</p>");
        let head_len = page.len() - b"<p>hi</p>".len();
        let cached = get_request("GET / HTTP/1.1\r\nIf-None-Match: \"x\", W/\"abc\"\r\n\r\n");
        let text = String::from_utf8(cached.finish(page.clone())).unwrap();
        assert!(text.starts_with("HTTP/1.1 304 Not Modified\r\nETag: \"abc\"\r\n"));
        assert!(text.ends_with("Connection: close\r\n\r\n"), "{text}");
        let star = get_request("GET / HTTP/1.1\r\nIf-None-Match: *\r\n\r\n");
        assert!(star.finish(page.clone()).starts_with(b"HTTP/1.1 304 "));

        let stale = get_request("GET / HTTP/1.1\r\nIf-None-Match: \"abd\"\r\n\r\n");
        assert_eq!(stale.finish(page.clone()), page);
        let plain = get_request("GET / HTTP/1.1\r\n\r\n");
        assert_eq!(plain.finish(page.clone()), page);
        let head = get_request("HEAD / HTTP/1.1\r\n\r\n");
        assert_eq!(head.finish(page.clone()), page[..head_len]);

        // Only a 200 becomes a 304: an error keeps its status.
        let refusal = response(404, "ETag: \"abc\"\r\n", "text/plain", b"no\n");
        assert_eq!(cached.finish(refusal.clone()), refusal);
    }

    #[test]
    fn refuses_bad_requests_with_the_right_status() {
        let status = |request: &str| parse_head(request.as_bytes(), &[]).unwrap_err().status;
        assert_eq!(status(&UPGRADE.replace("GET", "POST")), 405);
        assert_eq!(status(&UPGRADE.replace("GET", "HEAD")), 405);
        assert_eq!(status(&UPGRADE.replace("Version: 13", "Version: 8")), 426);
        assert_eq!(
            status(&UPGRADE.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")),
            400
        );
        assert_eq!(
            status(&UPGRADE.replace("keep-alive, Upgrade", "keep-alive")),
            400
        );
        assert_eq!(status(&UPGRADE.replace("HTTP/1.1", "HTTP/1.0")), 400);
        let tls_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        assert_eq!(parse_head(tls_hello, &[]).unwrap_err().status, 400);
        let huge = format!(
            "GET / HTTP/1.1\r\nX-Big: {}\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(status(&huge), 431);
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(status(&format!("GET / HTTP/1.1\r\n{many}\r\n")), 431);
    }

    #[test]
    fn refusals_are_complete_responses() {
        let text = String::from_utf8(Refusal::new(426, "old").response()).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(text.ends_with("Content-Length: 4\r\nConnection: close\r\n\r\nold\n"));
    }

    /// [`UPGRADE`] with `header` (a complete `Name: value\r\n` line) added.
    fn upgrade_with(header: &str) -> String {
        UPGRADE.replace("Host: x\r\n", &format!("Host: x\r\n{header}"))
    }

    #[test]
    fn a_foreign_origin_is_refused_when_origins_are_listed() {
        let allowed = ["https://chat.example.org".to_owned()];
        let parse = |request: &str, allowed: &[String]| {
            parse_head(request.as_bytes(), allowed).map(|head| head.is_some())
        };
        let foreign = upgrade_with("Origin: https://evil.example\r\n");
        assert_eq!(parse(&foreign, &allowed).unwrap_err().status, 403);
        let listed = upgrade_with("Origin: https://Chat.Example.org\r\n");
        assert_eq!(parse(&listed, &allowed), Ok(true));
        // No Origin: not a browser, not affected.
        assert_eq!(parse(UPGRADE, &allowed), Ok(true));
        // No list: every origin is welcome.
        assert_eq!(parse(&foreign, &[]), Ok(true));
        // A plain GET is no WebSocket and is not checked.
        let get = "GET /healthz HTTP/1.1\r\nOrigin: https://evil.example\r\n\r\n";
        assert_eq!(parse(get, &allowed), Ok(true));
        let text = String::from_utf8(
            parse_head(foreign.as_bytes(), &allowed)
                .unwrap_err()
                .response(),
        )
        .unwrap();
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
    }

    #[test]
    fn every_x_forwarded_for_line_is_kept_in_order() {
        let request =
            upgrade_with("X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\nX-Forwarded-For: 10.0.0.3\r\n");
        let (head, _) = parse_head(request.as_bytes(), &[]).unwrap().unwrap();
        assert_eq!(
            head.forwarded_for.as_deref(),
            Some("10.0.0.1, 10.0.0.2,10.0.0.3")
        );
    }

    #[test]
    fn the_client_is_the_rightmost_address_no_trusted_proxy_added() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let proxy = ip("127.0.0.1");
        let trusted = [proxy, ip("10.0.0.9")];
        let client = |peer, header| client_address(peer, header, &trusted);
        // The proxy appended the address it saw; what the client wrote
        // before it is not believed.
        assert_eq!(
            client(proxy, Some("6.6.6.6, 203.0.113.7")),
            ip("203.0.113.7")
        );
        // A chain of trusted proxies is walked back to the first address
        // that is not one of them.
        assert_eq!(
            client(proxy, Some("6.6.6.6, 203.0.113.7, 10.0.0.9")),
            ip("203.0.113.7")
        );
        assert_eq!(client(proxy, Some("[2001:db8::7]:4711")), ip("2001:db8::7"));
        assert_eq!(client(proxy, Some("198.51.100.2:80")), ip("198.51.100.2"));
        // Nothing forwarded, or nothing readable: the proxy's own address.
        assert_eq!(client(proxy, None), proxy);
        assert_eq!(client(proxy, Some("unknown")), proxy);
        assert_eq!(
            client(proxy, Some("6.6.6.6, unknown, 10.0.0.9")),
            ip("10.0.0.9")
        );
        // From anyone else, the header is ignored.
        let stranger = ip("198.51.100.9");
        assert_eq!(client(stranger, Some("203.0.113.7")), stranger);
    }
}
