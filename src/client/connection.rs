//! The socket thread: it owns the WebSocket, and reconnects when it is lost.
//!
//! tungstenite cannot read on one thread and write on another (answering
//! pings and closes needs the one owner), so one thread does both. It
//! blocks in `read` for at most [`POLL_INTERVAL`], then sends whatever the
//! coordinator queued on the connection's channel, so a typed line never
//! waits long whatever the server is doing.
//!
//! Each connection gets a fresh outgoing channel, handed over in
//! [`NetEvent::Connected`]. Frames meant for a connection that died can
//! therefore never leak onto the next one (a `say` before the new `join`),
//! and the coordinator drops that sender to say "close and stop".

use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::{HandshakeError, HandshakeRole};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Connector, Message, WebSocket};

use crate::proto::protocol::ServerMessage;

/// The port the server listens on by default (`CLI.md`).
const DEFAULT_PORT: u16 = 8765;

/// How long `read` blocks before the thread looks for frames to send: a
/// line waits at most this long (the issue allows 50 ms), and an idle
/// client wakes 50 times a second, which costs nothing measurable.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How long a TCP connect may take: a server on the same network answers
/// in milliseconds, and a user who mistyped the address hears about it
/// within a few seconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the server may take to answer the WebSocket upgrade; longer
/// than a connect, since a busy server may be slow to read the request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait for the server's answer to our close frame when
/// leaving; the user is waiting for the prompt to come back.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The ceiling of the first retry; each failure doubles it.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// The longest wait between retries, so that a restarted server is found
/// within half a minute even after a long outage.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// What the socket thread tells the coordinator.
#[derive(Debug)]
pub enum NetEvent {
    /// A connection is open: frames sent here go out on it, until it is
    /// lost or the sender is dropped (which closes it for good).
    Connected(Sender<String>),
    /// The server sent a message.
    Message(ServerMessage),
    /// The connection was lost, or an attempt to reconnect failed; the
    /// next attempt comes after `retry_in`.
    Down { reason: String, retry_in: Duration },
    /// The very first attempt failed. There is no retry: the address is
    /// most likely wrong, and the user should hear so at once.
    Unreachable(String),
}

/// The socket a connection runs on: TCP, under TLS for `wss://`.
type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

/// The WebSocket URL for what the user typed: `HOST:PORT`, `HOST` (the
/// default port), or a `ws://` or `wss://` URL used as it is.
pub fn server_url(address: &str) -> Result<String, String> {
    if address.starts_with("ws://") || address.starts_with("wss://") {
        return Ok(address.to_owned());
    }
    if let Some((scheme, _)) = address.split_once("://") {
        return Err(format!(
            "{scheme}:// is not a WebSocket URL: use ws://HOST:PORT/ or wss://HOST:PORT/"
        ));
    }
    // A port is digits after the last colon, unless that colon is inside an
    // IPv6 address (`[::1]` has colons but no port).
    let has_port = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.ends_with(':') && port.parse::<u16>().is_ok());
    Ok(if has_port {
        format!("ws://{address}/")
    } else {
        format!("ws://{address}:{DEFAULT_PORT}/")
    })
}

/// How long to wait before retry number `attempt` (0 for the first):
/// exponential, capped at [`MAX_RETRY`], with "equal jitter" (`jitter` is
/// uniform in 0..1) so that clients that lost the same server do not all
/// come back at the same instant, yet none retries at once.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let ceiling = FIRST_RETRY
        .saturating_mul(2_u32.saturating_pow(attempt))
        .min(MAX_RETRY);
    ceiling.mul_f64(0.5 + jitter / 2.0)
}

/// The TLS settings for `url`: `None` for `ws://`; for `wss://`, the
/// system's trusted authorities plus the PEM certificates of `ca_file`.
pub fn tls_config(url: &str, ca_file: Option<&Path>) -> Result<Option<Arc<ClientConfig>>, String> {
    if !url.starts_with("wss://") {
        return Ok(None);
    }
    let mut roots = RootCertStore::empty();
    // Unreadable system certificates only narrow what is trusted.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(ca_file) = ca_file {
        let certs = CertificateDer::pem_file_iter(ca_file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|err| format!("--ca-file {}: {err}", ca_file.display()))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!(
                "--ca-file {}: no usable certificate in this file",
                ca_file.display()
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

/// Starts the socket thread for `url` (over TLS with `tls`); it reports on
/// `events`, and ends when the coordinator drops a connection's sender or
/// stops listening.
pub fn spawn(url: String, tls: Option<Arc<ClientConfig>>, events: Sender<NetEvent>) {
    thread::Builder::new()
        .name("socket".into())
        .spawn(move || run(&url, tls.as_ref(), &events))
        .expect("the socket thread starts");
}

/// Connects, serves the connection, and reconnects, until told to stop.
fn run(url: &str, tls: Option<&Arc<ClientConfig>>, events: &Sender<NetEvent>) {
    let mut ever_connected = false;
    let mut attempt = 0;
    loop {
        let reason = match connect(url, tls) {
            Ok(socket) => {
                ever_connected = true;
                let (frames_in, frames) = crossbeam_channel::unbounded();
                if events.send(NetEvent::Connected(frames_in)).is_err() {
                    return;
                }
                match serve(socket, &frames, events) {
                    Ended::Quit => return,
                    Ended::Lost { reason, heard } => {
                        // A connection the server talked on was a good
                        // one: start the backoff afresh. One closed before
                        // a word (a full server) keeps backing off.
                        if heard {
                            attempt = 0;
                        }
                        reason
                    }
                }
            }
            Err(reason) if !ever_connected => {
                // The coordinator may be gone already; nothing to do then.
                let _ = events.send(NetEvent::Unreachable(reason));
                return;
            }
            Err(reason) => reason,
        };
        let retry_in = backoff(attempt, rand::random());
        attempt = attempt.saturating_add(1);
        if events.send(NetEvent::Down { reason, retry_in }).is_err() {
            return;
        }
        thread::sleep(retry_in);
    }
}

/// Opens a WebSocket to `url`, over TLS with `tls`.
fn connect(url: &str, tls: Option<&Arc<ClientConfig>>) -> Result<Socket, String> {
    let request = url.into_client_request().map_err(|err| err.to_string())?;
    let uri = request.uri();
    let host = uri.host().ok_or("the URL has no host")?;
    // `Uri` keeps the brackets of an IPv6 host; the resolver wants none.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let cannot = |err: std::io::Error| format!("cannot connect to {url}: {err}");
    let mut last_error = None;
    let mut stream = None;
    for address in (host, port).to_socket_addrs().map_err(cannot)? {
        match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
            Ok(connected) => {
                stream = Some(connected);
                break;
            }
            Err(err) => last_error = Some(err),
        }
    }
    let stream =
        stream.ok_or_else(|| cannot(last_error.unwrap_or_else(|| ErrorKind::NotFound.into())))?;
    // Chat lines are small: send each at once rather than wait to batch.
    stream.set_nodelay(true).map_err(cannot)?;
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(cannot)?;
    // The timeout is the socket's, shared with this handle: it can be
    // changed whether or not TLS wraps the stream.
    let timeouts = stream.try_clone().map_err(cannot)?;
    let connector = tls.map_or(Connector::Plain, |tls| Connector::Rustls(Arc::clone(tls)));
    let (socket, _response) =
        tungstenite::client_tls_with_config(request, stream, None, Some(connector))
            .map_err(|err| handshake_failed(url, err))?;
    timeouts
        .set_read_timeout(Some(POLL_INTERVAL))
        .map_err(cannot)?;
    Ok(socket)
}

/// Explains a failed handshake in one line; a certificate the client does
/// not trust says what to do about it.
fn handshake_failed<R: HandshakeRole>(url: &str, err: HandshakeError<R>) -> String {
    let err = match err {
        HandshakeError::Failure(err) => err,
        HandshakeError::Interrupted(_) => tungstenite::Error::Io(ErrorKind::TimedOut.into()),
    };
    // rustls reports through the stream, so its error arrives as an I/O one.
    let rustls_error = match &err {
        tungstenite::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(why)) => format!(
            "the certificate of {url} is not trusted ({why:?}): for a private certificate authority, pass its certificate with --ca-file FILE"
        ),
        Some(tls) => format!("TLS with {url} failed: {tls}"),
        None => format!("the WebSocket handshake with {url} failed: {err}"),
    }
}

/// How a connection ended.
enum Ended {
    /// The coordinator dropped the sender: the user is leaving.
    Quit,
    /// The connection broke; `heard` tells whether the server sent anything.
    Lost { reason: String, heard: bool },
}

/// Moves frames both ways until the connection ends.
fn serve(mut socket: Socket, frames: &Receiver<String>, events: &Sender<NetEvent>) -> Ended {
    let mut heard = false;
    // Why the server closed, when it said so; better news than the error
    // the next read returns.
    let mut closed_because = None;
    let lost = |err: tungstenite::Error, closed_because: Option<String>, heard| Ended::Lost {
        reason: closed_because.unwrap_or_else(|| format!("connection lost: {err}")),
        heard,
    };
    loop {
        loop {
            match frames.try_recv() {
                Ok(frame) => {
                    if let Err(err) = socket.write(Message::text(frame)) {
                        return lost(err, closed_because, heard);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    close(socket);
                    return Ended::Quit;
                }
            }
        }
        // Also sends the pongs and close replies tungstenite queued.
        if let Err(err) = socket.flush() {
            return lost(err, closed_because, heard);
        }
        match socket.read() {
            Ok(Message::Text(text)) => {
                heard = true;
                // A message of a type this client does not know (from a
                // newer server) is skipped, like an unknown field.
                if let Ok(message) = serde_json::from_str(&text) {
                    if events.send(NetEvent::Message(message)).is_err() {
                        close(socket);
                        return Ended::Quit;
                    }
                }
            }
            Ok(Message::Close(frame)) => {
                closed_because = Some(match frame {
                    Some(frame) => format!("the server closed the connection: {frame}"),
                    None => "the server closed the connection".to_owned(),
                });
            }
            // Pings are answered by tungstenite itself; nothing else is used.
            Ok(_) => {}
            Err(tungstenite::Error::Io(err)) if is_timeout(&err) => {}
            Err(err) => return lost(err, closed_because, heard),
        }
    }
}

/// Closes politely: a close frame, then a short wait for the server's
/// answer, so the server logs a normal close (1000) rather than an error.
fn close(mut socket: Socket) {
    if socket.close(None).is_err() {
        return;
    }
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    while Instant::now() < deadline {
        match socket.read() {
            Err(tungstenite::Error::Io(err)) if is_timeout(&err) => {}
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Whether a read error only means "nothing arrived within the timeout".
/// Unix reports `WouldBlock`, Windows `TimedOut`.
fn is_timeout(err: &std::io::Error) -> bool {
    matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_websocket_urls() {
        assert_eq!(
            server_url("127.0.0.1:8765").unwrap(),
            "ws://127.0.0.1:8765/"
        );
        assert_eq!(
            server_url("chat.example:9000").unwrap(),
            "ws://chat.example:9000/"
        );
        assert_eq!(
            server_url("chat.example").unwrap(),
            "ws://chat.example:8765/"
        );
        assert_eq!(server_url("[::1]:80").unwrap(), "ws://[::1]:80/");
        assert_eq!(server_url("[::1]").unwrap(), "ws://[::1]:8765/");
        assert_eq!(server_url("ws://h:1/chat").unwrap(), "ws://h:1/chat");
        assert_eq!(server_url("wss://h/chat").unwrap(), "wss://h/chat");
        assert!(server_url("http://h/").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        assert_eq!(backoff(0, 0.0), Duration::from_millis(250));
        assert_eq!(backoff(0, 1.0), Duration::from_millis(500));
        assert_eq!(backoff(3, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(6, 0.99), MAX_RETRY.mul_f64(0.995));
        assert_eq!(backoff(u32::MAX, 1.0), MAX_RETRY);
        for attempt in 0..10 {
            assert!(backoff(attempt, 0.0) <= backoff(attempt + 1, 0.0));
        }
    }
}
