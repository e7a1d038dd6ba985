//! TLS inside the event loop: every connection's socket is a [`Stream`],
//! plain TCP or TCP under a rustls server session, so that the rest of the
//! loop (the HTTP head, WebSocket frames, the output queue) never knows
//! which.
//!
//! ```text
//! socket bytes ──read_tls──► TLS records ──process_new_packets──► plaintext ──► HTTP head, frames
//! frames ──writer (one record per write, up to 16 KiB)──► TLS records ──write_tls──► socket
//! ```
//!
//! The session is driven by readiness like everything else: a read pulls
//! what the socket has into rustls until rustls yields plaintext or the
//! socket would block, and answers the handshake on the way; a write hands
//! plaintext to rustls only once the records of the previous write have
//! left, so what waits in rustls is bounded by [`WRITE_CHUNK`]. While
//! records wait, [`Socket::has_pending_output`] keeps the loop's WRITABLE
//! interest, even with the output queue empty.
//!
//! The handshake happens while the connection is in its `Handshake` phase,
//! so the handshake timeout covers it; a plaintext client on a TLS port is
//! refused by rustls at its first bytes and dropped.
//!
//! SIGHUP reloads the certificate: the signal thread loads the files and
//! sends the new settings through a [`TlsReloader`], which wakes the loop;
//! connections accepted after that use them, the open ones keep theirs.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::path::Path;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token, Waker};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

use crate::evloop::connection::Socket;

/// The most plaintext handed to rustls per write. rustls refuses more than
/// its buffer limit (64 KiB of records by default), and a write only
/// starts once the previous one's records have left, so 32 KiB (two full
/// records) keeps writes large without ever being cut short by rustls.
const WRITE_CHUNK: usize = 32 * 1024;

/// A connection's socket: TCP, with or without TLS.
#[derive(Debug)]
pub struct Stream {
    /// The socket itself.
    tcp: TcpStream,
    /// The TLS session, on a TLS listener. Boxed: a session is large, and
    /// a plain connection should not pay for its room.
    tls: Option<Box<Session>>,
    /// What crossed the socket since the loop last took it
    /// ([`take_activity`](Self::take_activity)).
    counts: StreamCounts,
}

/// What a stream did since the loop last asked, for its metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Activity {
    /// The bytes that crossed the socket.
    pub counts: StreamCounts,
    /// How the TLS handshake ended (`Established` or `Failed`), told once.
    pub handshake: Option<TlsState>,
}

/// What one connection's socket carried, summed by the loop's metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamCounts {
    /// Bytes read from the socket (TLS records included).
    pub bytes_in: u64,
    /// Bytes written to the socket.
    pub bytes_out: u64,
}

/// Where a connection's TLS handshake stands, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsState {
    /// A plain TCP connection.
    Plain,
    /// The handshake has not completed (yet).
    Handshaking,
    /// The handshake completed.
    Established,
    /// The handshake failed: the client sent something rustls refused.
    Failed,
}

/// One connection's TLS session.
#[derive(Debug)]
struct Session {
    /// rustls's state machine and its buffers.
    conn: ServerConnection,
    /// Whether FIN is owed once the records before it (the close_notify)
    /// have left.
    shut_pending: bool,
    /// Where the handshake stands.
    state: TlsState,
    /// Whether the handshake's outcome was told to the loop already.
    told: bool,
}

impl Stream {
    /// The socket of a connection just accepted; under TLS when `tls` holds
    /// the server's settings.
    pub fn new(tcp: TcpStream, tls: Option<&Arc<ServerConfig>>) -> io::Result<Stream> {
        let tls = match tls {
            Some(config) => Some(Box::new(Session {
                conn: ServerConnection::new(Arc::clone(config)).map_err(io::Error::other)?,
                shut_pending: false,
                state: TlsState::Handshaking,
                told: false,
            })),
            None => None,
        };
        Ok(Stream {
            tcp,
            tls,
            counts: StreamCounts::default(),
        })
    }

    /// The TCP socket, for options such as `TCP_NODELAY`.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Where the TLS handshake stands.
    pub fn tls_state(&self) -> TlsState {
        self.tls
            .as_ref()
            .map_or(TlsState::Plain, |session| session.state)
    }

    /// What crossed the socket since the last call, and the handshake's
    /// outcome the first time it is known. `gone`: the connection ends
    /// now, so a handshake still under way has failed.
    pub fn take_activity(&mut self, gone: bool) -> Activity {
        let counts = std::mem::take(&mut self.counts);
        let handshake = self.tls.as_mut().and_then(|session| {
            let outcome = match session.state {
                _ if session.told => return None,
                TlsState::Handshaking if gone => TlsState::Failed,
                TlsState::Handshaking => return None,
                outcome => outcome,
            };
            session.told = true;
            Some(outcome)
        });
        Activity { counts, handshake }
    }
}

impl Session {
    /// Writes the records rustls holds until they are gone or the socket
    /// would block (which is no error: the loop keeps WRITABLE interest).
    fn send_records(&mut self, tcp: &mut TcpStream, counts: &mut StreamCounts) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => counts.bytes_out += n as u64,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) => return Err(err),
            }
        }
        if self.shut_pending {
            self.shut_pending = false;
            tcp.shutdown(Shutdown::Write)?;
        }
        Ok(())
    }

    /// Reads the socket into rustls until there is plaintext for `buf`, the
    /// peer has finished, or the socket would block.
    fn read(
        &mut self,
        tcp: &mut TcpStream,
        counts: &mut StreamCounts,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        loop {
            // Ok(0) once the peer sent close_notify, UnexpectedEof after a
            // bare FIN, WouldBlock while more records are needed.
            match self.conn.reader().read(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                done => return done,
            }
            let n = self.conn.read_tls(tcp)?;
            counts.bytes_in += n as u64;
            if let Err(err) = self.conn.process_new_packets() {
                if self.state == TlsState::Handshaking {
                    self.state = TlsState::Failed;
                }
                // rustls queued an alert that says why; it goes out if the
                // socket takes it, and the connection is dropped either way.
                let _ = self.send_records(tcp, counts);
                return Err(io::Error::new(io::ErrorKind::InvalidData, err));
            }
            if self.state == TlsState::Handshaking && !self.conn.is_handshaking() {
                self.state = TlsState::Established;
            }
            // The handshake's answers leave at once, not at the end of the turn.
            self.send_records(tcp, counts)?;
        }
    }

    /// Encrypts up to [`WRITE_CHUNK`] of `bufs` as few records as it takes,
    /// once the previous records have left.
    fn write_vectored(
        &mut self,
        tcp: &mut TcpStream,
        counts: &mut StreamCounts,
        bufs: &[IoSlice<'_>],
    ) -> io::Result<usize> {
        self.send_records(tcp, counts)?;
        if self.conn.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut whole = 0;
        let mut total = 0;
        while let Some(slice) = bufs.get(whole) {
            if total + slice.len() > WRITE_CHUNK {
                break;
            }
            total += slice.len();
            whole += 1;
        }
        let n = match (whole, bufs.first()) {
            (0, Some(first)) => self.conn.writer().write(&first[..WRITE_CHUNK])?,
            _ => self.conn.writer().write_vectored(&bufs[..whole])?,
        };
        self.send_records(tcp, counts)?;
        Ok(n)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            Some(session) => session.read(&mut self.tcp, &mut self.counts, buf),
            None => {
                let n = self.tcp.read(buf)?;
                self.counts.bytes_in += n as u64;
                Ok(n)
            }
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match &mut self.tls {
            Some(session) => session.write_vectored(&mut self.tcp, &mut self.counts, bufs),
            None => {
                let n = self.tcp.write_vectored(bufs)?;
                self.counts.bytes_out += n as u64;
                Ok(n)
            }
        }
    }

    /// Writes the records still waiting, as far as the socket takes them.
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.tls {
            Some(session) => session.send_records(&mut self.tcp, &mut self.counts),
            None => Ok(()),
        }
    }
}

impl Socket for Stream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        match &mut self.tls {
            Some(session) => {
                // close_notify first, so the peer can tell our end from a
                // cut connection; FIN follows once it has left.
                session.conn.send_close_notify();
                session.shut_pending = true;
                session.send_records(&mut self.tcp, &mut self.counts)
            }
            None => self.tcp.shutdown(Shutdown::Write),
        }
    }

    fn has_pending_output(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|session| session.conn.wants_write() || session.shut_pending)
    }
}

impl Source for Stream {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.tcp.register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.tcp.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.tcp.deregister(registry)
    }
}

/// Loads a PEM certificate chain and its private key into server settings
/// (ring as the crypto provider: it builds with nothing but a C compiler).
/// The error names the file and what is wrong with it, in one line.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| format!("{}: {err}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in this file", cert.display()));
    }
    let private_key =
        PrivateKeyDer::from_pem_file(key).map_err(|err| format!("{}: {err}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map(Arc::new)
        .map_err(|err| {
            format!(
                "{} and {} do not make a usable pair: {err}",
                cert.display(),
                key.display()
            )
        })
}

/// The TLS settings the loop gives new connections, and where new ones
/// arrive from a [`TlsReloader`].
#[derive(Debug)]
pub struct Tls {
    /// The settings for the next connection accepted; `None`: plain TCP.
    current: Option<Arc<ServerConfig>>,
    /// Kept to hand out reloaders.
    sender: Sender<Arc<ServerConfig>>,
    /// Reloaded settings, taken when the waker fires.
    reloads: Receiver<Arc<ServerConfig>>,
}

impl Tls {
    /// The loop's TLS, off when `config` is `None`.
    pub fn new(config: Option<Arc<ServerConfig>>) -> Tls {
        let (sender, reloads) = crossbeam_channel::unbounded();
        Tls {
            current: config,
            sender,
            reloads,
        }
    }

    /// Whether connections are served over TLS.
    pub fn is_on(&self) -> bool {
        self.current.is_some()
    }

    /// The socket for a connection just accepted.
    pub fn wrap(&self, tcp: TcpStream) -> io::Result<Stream> {
        Stream::new(tcp, self.current.as_ref())
    }

    /// A handle that hands new settings to the loop from another thread;
    /// `waker` wakes the loop to take them.
    pub fn reloader(&self, waker: Arc<Waker>) -> TlsReloader {
        TlsReloader {
            sender: self.sender.clone(),
            waker,
        }
    }

    /// Takes settings sent since the last call (the loop's waker fired).
    /// A server started without TLS stays without it.
    pub fn take_reloaded(&mut self) {
        while let Ok(config) = self.reloads.try_recv() {
            if self.current.is_some() {
                self.current = Some(config);
                log::info!("TLS certificate reloaded: new connections use it");
            }
        }
    }
}

/// Hands reloaded TLS settings to a running loop.
#[derive(Debug, Clone)]
pub struct TlsReloader {
    /// Where the loop takes them from.
    sender: Sender<Arc<ServerConfig>>,
    /// Wakes the loop out of `poll`.
    waker: Arc<Waker>,
}

impl TlsReloader {
    /// New connections will use `config`.
    pub fn reload(&self, config: Arc<ServerConfig>) {
        // If either fails the loop is gone, and nothing is left to reload.
        if self.sender.send(config).is_ok() {
            let _ = self.waker.wake();
        }
    }
}
