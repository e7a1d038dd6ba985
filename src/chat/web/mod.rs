//! The web client: a page served at `GET /` on the chat's own port, so that
//! one address is all a user needs.
//!
//! The page is HTML, CSS and plain JavaScript in this folder, embedded in
//! the binary with `include_bytes!` (a `cargo install` is a complete
//! server), and speaks the same JSON protocol as every other client
//! (`docs/web.md` describes how it is organised). The `:smile:` shortcodes
//! it expands come from the line client's table, the `emojis` crate, served
//! as `GET /emoji.json` instead of a second table written by hand.
//!
//! Every answer carries a `Content-Security-Policy` that lets the page load
//! and connect to its own origin only, `X-Content-Type-Options: nosniff`, an
//! `ETag` and `Cache-Control: no-cache`: a browser keeps the files and asks
//! each time whether they changed, so an upgraded server is never hidden by
//! a stale cache, and an unchanged file costs a `304` (which the loop
//! derives from the `ETag`, see `evloop::http::GetRequest::finish`).

use std::sync::OnceLock;

use crate::evloop::http;

/// What the page may load and where it may connect: its own origin only.
/// `'self'` covers `ws:`/`wss:` to the page's own host and port (CSP level
/// 3, which the browsers of the last years implement), so no other host is
/// allowed, not even for WebSockets. No inline script or style is allowed:
/// the page has none, and an injected one does not run. The page may not be
/// framed, and forms and `<base>` cannot redirect anything.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One file of the page, with its entity tag computed at compile time.
struct Asset {
    /// The path it is served at.
    path: &'static str,
    /// Its `Content-Type`.
    content_type: &'static str,
    /// Its bytes, embedded in the binary.
    body: &'static [u8],
    /// A hash of `body`: the `ETag`, which changes when the file does.
    etag: u64,
}

impl Asset {
    /// An asset whose entity tag is the hash of its bytes.
    const fn new(path: &'static str, content_type: &'static str, body: &'static [u8]) -> Self {
        Asset {
            path,
            content_type,
            body,
            etag: fnv1a(body),
        }
    }
}

/// The files of the page. Their paths are relative in the page, so that it
/// also works behind a reverse proxy that serves the chat under a prefix.
const ASSETS: [Asset; 4] = [
    Asset::new(
        "/",
        "text/html; charset=utf-8",
        include_bytes!("index.html"),
    ),
    Asset::new(
        "/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("app.js"),
    ),
    Asset::new(
        "/style.css",
        "text/css; charset=utf-8",
        include_bytes!("style.css"),
    ),
    Asset::new(
        "/favicon.svg",
        "image/svg+xml",
        include_bytes!("favicon.svg"),
    ),
];

/// The path of the shortcode table.
const EMOJI_PATH: &str = "/emoji.json";

/// The 64-bit FNV-1a hash: a few lines that run at compile time, and
/// plenty to tell versions of a file apart (it guards no secret).
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// The shortcode table as JSON, `{"smile":"😄",…}`: every shortcode of the
/// `emojis` crate, so the page expands exactly what `lineclient` expands.
/// Built on the first request and kept, with its hash.
fn emoji_json() -> &'static (Vec<u8>, u64) {
    static TABLE: OnceLock<(Vec<u8>, u64)> = OnceLock::new();
    TABLE.get_or_init(|| {
        let table: serde_json::Map<String, serde_json::Value> = emojis::iter()
            .flat_map(|emoji| {
                emoji
                    .shortcodes()
                    .map(move |code| (code.to_owned(), emoji.as_str().into()))
            })
            .collect();
        let body = serde_json::to_vec(&table).expect("a map of strings serializes");
        let etag = fnv1a(&body);
        (body, etag)
    })
}

/// The answer to a plain `GET` of `path` when it is part of the page, or
/// `None` when it is not (then the chat answers it).
pub fn answer(path: &str) -> Option<Vec<u8>> {
    // The page ignores query strings (`/?room=x` shows the page too).
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    if path == EMOJI_PATH {
        let (body, etag) = emoji_json();
        return Some(respond("application/json", body, *etag));
    }
    let asset = ASSETS.iter().find(|asset| asset.path == path)?;
    Some(respond(asset.content_type, asset.body, asset.etag))
}

/// A `200` with the headers every file of the page carries.
fn respond(content_type: &str, body: &[u8], etag: u64) -> Vec<u8> {
    let headers = format!(
        "Content-Security-Policy: {CONTENT_SECURITY_POLICY}\r\n\
         X-Content-Type-Options: nosniff\r\n\
         Referrer-Policy: no-referrer\r\n\
         Cache-Control: no-cache\r\n\
         ETag: \"{etag:016x}\"\r\n"
    );
    http::response(200, &headers, content_type, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evloop::http::{parse_head, Head, Target};

    /// The head of a response, as text.
    fn head_of(response: &[u8]) -> String {
        let text = String::from_utf8_lossy(response);
        text.split("\r\n\r\n").next().unwrap().to_owned()
    }

    /// The value of header `name` in `head`.
    fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
        head.lines()
            .filter_map(|line| line.split_once(": "))
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    #[test]
    fn every_file_has_its_type_the_policy_and_an_entity_tag() {
        for (path, content_type) in [
            ("/", "text/html; charset=utf-8"),
            ("/?from=link", "text/html; charset=utf-8"),
            ("/app.js", "text/javascript; charset=utf-8"),
            ("/style.css", "text/css; charset=utf-8"),
            ("/favicon.svg", "image/svg+xml"),
            ("/emoji.json", "application/json"),
        ] {
            let response = answer(path).unwrap();
            let head = head_of(&response);
            assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {head}");
            assert_eq!(header(&head, "Content-Type"), Some(content_type));
            assert_eq!(
                header(&head, "Content-Security-Policy"),
                Some(CONTENT_SECURITY_POLICY)
            );
            assert_eq!(header(&head, "X-Content-Type-Options"), Some("nosniff"));
            assert_eq!(header(&head, "Cache-Control"), Some("no-cache"));
            let etag = header(&head, "ETag").unwrap();
            assert!(etag.len() == 18 && etag.starts_with('"'), "{etag}");
        }
        assert_eq!(answer("/healthz"), None);
        assert_eq!(answer("/metrics"), None);
        assert_eq!(answer("/index.html/.."), None);
    }

    #[test]
    fn a_cached_file_is_answered_304_without_a_body() {
        let page = answer("/").unwrap();
        let etag = header(&head_of(&page), "ETag").unwrap().to_owned();
        let request = format!("GET / HTTP/1.1\r\nIf-None-Match: {etag}\r\n\r\n");
        let Ok(Some((
            Head {
                target: Target::Get(request),
                ..
            },
            _,
        ))) = parse_head(request.as_bytes(), &[])
        else {
            panic!("a plain GET");
        };
        let reply = String::from_utf8(request.finish(page)).unwrap();
        assert!(
            reply.starts_with("HTTP/1.1 304 Not Modified\r\n"),
            "{reply}"
        );
        assert!(reply.ends_with("\r\n\r\n"), "no body: {reply}");
        assert_eq!(header(&reply, "ETag"), Some(etag.as_str()));
        // Another file has another tag: the page's does not match it.
        let script = answer_head("/app.js");
        assert_ne!(header(&script, "ETag"), Some(etag.as_str()));
    }

    /// The head of the answer to `path`.
    fn answer_head(path: &str) -> String {
        head_of(&answer(path).unwrap())
    }

    #[test]
    fn the_page_stays_small() {
        // The budget: the page and what it loads, the emoji aside.
        let total: usize = ASSETS.iter().map(|asset| asset.body.len()).sum();
        assert!(total < 50 * 1024, "the page weighs {total} bytes");
    }

    #[test]
    fn the_shortcodes_are_the_line_clients() {
        let (body, _) = emoji_json();
        let table: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(body).unwrap();
        assert!(table.len() > 1500, "only {} shortcodes", table.len());
        assert_eq!(table["smile"], "😄");
        assert_eq!(table["+1"], "👍");
        for (code, emoji) in &table {
            let expected = emojis::get_by_shortcode(code).map(|emoji| emoji.as_str());
            assert_eq!(emoji.as_str(), expected, "{code}");
        }
    }
}
