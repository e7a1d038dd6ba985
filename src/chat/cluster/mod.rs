//! Cluster mode's foundation: several `mioserver`s sharing one Redis serve
//! one chat. This module holds the parts that do not depend on the event
//! loop: a Redis connection driven by readiness ([`link`] and its socket
//! edge [`conn`]), the Lua scripts and stream reads that make the cluster's
//! steps atomic and ordered ([`scripts`]), and the `--redis` address
//! ([`RedisUrl`]). The loop registers a [`conn::RedisConn`] like any other
//! source; `docs/cluster.md` describes the design.

pub mod conn;
pub mod link;
pub mod node;
pub mod scripts;

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::{SocketAddr, ToSocketAddrs};

/// Where Redis is: `redis://HOST:PORT[/DB]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// The address to connect to, resolved once at start-up.
    pub addr: SocketAddr,
    /// The logical database (`SELECT`), 0 by default.
    pub db: u32,
}

/// Why a `--redis` value is not usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid Redis URL: {}", self.0)
    }
}

impl std::error::Error for UrlError {}

/// Redis's own default port, for a URL that names none.
const DEFAULT_PORT: u16 = 6379;

impl RedisUrl {
    /// Parses `redis://HOST[:PORT][/DB]`, resolving HOST (a blocking name
    /// lookup: call it at start-up, not on the loop).
    pub fn parse(url: &str) -> Result<RedisUrl, UrlError> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| UrlError(format!("{url}: must start with redis://")))?;
        let (host, db) = match rest.split_once('/') {
            Some((host, "")) => (host, 0),
            Some((host, db)) => (
                host,
                db.parse()
                    .map_err(|_| UrlError(format!("{url}: the database must be a number")))?,
            ),
            None => (rest, 0),
        };
        if host.is_empty() || host.contains('@') {
            return Err(UrlError(format!(
                "{url}: expected HOST[:PORT] (credentials are not supported)"
            )));
        }
        // `HOST:PORT` or `[V6]:PORT`; a bare IPv6 address (colons without
        // brackets) or a bracketed one alone has no port.
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port))
                if !host.ends_with(']') && (!name.contains(':') || name.starts_with('[')) =>
            {
                let port = port
                    .parse()
                    .map_err(|_| UrlError(format!("{url}: the port must be a number")))?;
                (name, port)
            }
            _ => (host, DEFAULT_PORT),
        };
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let addr = (name, port)
            .to_socket_addrs()
            .map_err(|err| UrlError(format!("{url}: {err}")))?
            .next()
            .ok_or_else(|| UrlError(format!("{url}: the host has no address")))?;
        Ok(RedisUrl { addr, db })
    }

    /// The commands every connection sends first: `SELECT` the database
    /// (when not 0) and name the connection after the node, so that
    /// `CLIENT LIST` shows who is who.
    pub fn setup(&self, node: &str) -> Vec<Vec<Vec<u8>>> {
        let mut commands = Vec::new();
        if self.db != 0 {
            commands.push(vec![b"SELECT".to_vec(), self.db.to_string().into_bytes()]);
        }
        commands.push(vec![
            b"CLIENT".to_vec(),
            b"SETNAME".to_vec(),
            format!("miochat-{node}").into_bytes(),
        ]);
        commands
    }
}

/// 64 unpredictable bits as 16 hex digits: node ids, epochs, backoff seeds.
/// The standard library's hasher keys are drawn from the operating
/// system's random source once per process and stepped for every new
/// `RandomState`, which is all these need (not cryptographic strength).
pub fn random_token() -> String {
    format!("{:016x}", RandomState::new().build_hasher().finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_an_address_and_a_database() {
        let cases = [
            ("redis://127.0.0.1:6379/", "127.0.0.1:6379", 0),
            ("redis://127.0.0.1:7000/3", "127.0.0.1:7000", 3),
            ("redis://127.0.0.1", "127.0.0.1:6379", 0),
            ("redis://[::1]:7001/1", "[::1]:7001", 1),
            ("redis://[::1]", "[::1]:6379", 0),
            ("redis://::1", "[::1]:6379", 0),
        ];
        for (url, addr, db) in cases {
            let parsed = RedisUrl::parse(url).unwrap();
            assert_eq!(
                parsed,
                RedisUrl {
                    addr: addr.parse().unwrap(),
                    db
                },
                "{url}"
            );
        }
        assert!(RedisUrl::parse("redis://localhost:6380/")
            .unwrap()
            .addr
            .ip()
            .is_loopback());
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let cases = [
            ("http://127.0.0.1/", "must start with redis://"),
            ("redis://127.0.0.1/x", "the database must be a number"),
            ("redis://127.0.0.1:port/", "the port must be a number"),
            (
                "redis://user:pw@127.0.0.1/",
                "credentials are not supported",
            ),
            ("redis:///0", "expected HOST[:PORT]"),
        ];
        for (url, why) in cases {
            let err = RedisUrl::parse(url).unwrap_err().to_string();
            assert!(
                err.starts_with("invalid Redis URL: ") && err.contains(why),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn setup_selects_the_database_only_when_it_is_not_the_default() {
        let url = RedisUrl::parse("redis://127.0.0.1:6379/").unwrap();
        assert_eq!(
            url.setup("n1"),
            vec![vec![
                b"CLIENT".to_vec(),
                b"SETNAME".to_vec(),
                b"miochat-n1".to_vec()
            ]]
        );
        let url = RedisUrl::parse("redis://127.0.0.1:6379/2").unwrap();
        assert_eq!(url.setup("n1")[0], vec![b"SELECT".to_vec(), b"2".to_vec()]);
        assert_eq!(url.setup("n1").len(), 2);
    }

    #[test]
    fn random_tokens_are_sixteen_hex_digits_and_differ() {
        let a = random_token();
        let b = random_token();
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
