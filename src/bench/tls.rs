//! wss:// for chatbench: a rustls client session under each connection,
//! driven by the same readiness as plain TCP, and a count of the TLS
//! records the server sends.
//!
//! ```text
//! socket ──read_tls (records counted)──► rustls ──reader──► plaintext ──► upgrade, frames
//! frames ──writer──► rustls ──write_tls──► socket
//! ```
//!
//! The server is verified against the one authority of `--ca-file` (a
//! test CA made for the run), by its IP address: chatbench only targets
//! loopback addresses, so a certificate for `127.0.0.1` is the only kind
//! it can meet. The crypto provider is `ring`, the one the server uses.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// The TLS record type of application data: in TLS 1.3 every record after
/// the handshake has it, so these are the records that carry frames
/// (and, rarely, a session ticket).
const APPLICATION_DATA: u8 = 23;

/// The length of a TLS record header: type, version, length.
const RECORD_HEADER: usize = 5;

/// What every connection of a run shares: the client settings and the
/// name the server's certificate must carry.
#[derive(Clone)]
pub struct TlsClient {
    /// rustls's client settings, trusting the `--ca-file` authority.
    config: Arc<ClientConfig>,
    /// The server's address, as its certificate names it.
    name: ServerName<'static>,
}

impl TlsClient {
    /// Settings that trust the certificates in `ca_file` (PEM) for a server
    /// at `ip`.
    pub fn new(ca_file: &Path, ip: IpAddr) -> Result<TlsClient, String> {
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca_file)
            .map_err(|err| format!("{}: {err}", ca_file.display()))?;
        for cert in certs {
            let cert = cert.map_err(|err| format!("{}: {err}", ca_file.display()))?;
            roots
                .add(cert)
                .map_err(|err| format!("{}: {err}", ca_file.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("{}: no certificate in it", ca_file.display()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| err.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsClient {
            config: Arc::new(config),
            name: ServerName::IpAddress(ip.into()),
        })
    }

    /// A new session for one connection.
    pub fn session(&self) -> io::Result<Session> {
        let conn = ClientConnection::new(Arc::clone(&self.config), self.name.clone())
            .map_err(io::Error::other)?;
        Ok(Session {
            conn,
            records: RecordCounter::default(),
        })
    }
}

/// One connection's TLS session.
pub struct Session {
    /// The rustls session.
    conn: ClientConnection,
    /// Counts the records that arrive.
    records: RecordCounter,
}

impl Session {
    /// Reads plaintext into `buf`, pulling records from `tcp` as needed
    /// and sending what the handshake answers. `Ok(0)` is the end of the
    /// stream; `WouldBlock` means the socket and rustls are both empty.
    pub fn read(&mut self, tcp: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
            let mut counting = Counting {
                tcp,
                records: &mut self.records,
            };
            if self.conn.read_tls(&mut counting)? == 0 {
                return Ok(0);
            }
            self.conn
                .process_new_packets()
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
            self.flush(tcp)?;
        }
    }

    /// Hands plaintext to rustls and writes what it can; returns how much
    /// of `buf` rustls took (all of it but past its buffer limit).
    pub fn write(&mut self, tcp: &mut TcpStream, buf: &[u8]) -> io::Result<usize> {
        let taken = self.conn.writer().write(buf)?;
        self.flush(tcp)?;
        Ok(taken)
    }

    /// Writes waiting records until the socket would block.
    pub fn flush(&mut self, tcp: &mut TcpStream) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(tcp) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Application-data records received so far.
    pub fn records(&self) -> u64 {
        self.records.application_data
    }
}

/// The socket as rustls reads it, with every byte read walked through the
/// record counter.
struct Counting<'a> {
    /// The socket.
    tcp: &'a mut TcpStream,
    /// Where the records are counted.
    records: &'a mut RecordCounter,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.tcp.read(buf)?;
        self.records.feed(&buf[..n]);
        Ok(n)
    }
}

/// Counts TLS records in a byte stream by their headers, skipping their
/// bodies, wherever the reads happen to cut them.
#[derive(Debug, Default)]
struct RecordCounter {
    /// The header being read, and how much of it has arrived.
    header: [u8; RECORD_HEADER],
    /// Bytes of `header` that have arrived.
    have: usize,
    /// Bytes of the current record's body still to skip.
    skip: usize,
    /// Application-data records seen.
    application_data: u64,
}

impl RecordCounter {
    /// Walks `bytes`, the next bytes of the stream.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let skipped = self.skip.min(bytes.len());
                self.skip -= skipped;
                bytes = &bytes[skipped..];
                continue;
            }
            let take = (RECORD_HEADER - self.have).min(bytes.len());
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have == RECORD_HEADER {
                self.have = 0;
                self.skip = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                if self.header[0] == APPLICATION_DATA {
                    self.application_data += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_records_however_the_stream_is_cut() {
        let mut stream = Vec::new();
        for (kind, len) in [(22u8, 3usize), (23, 0), (23, 300), (21, 2), (23, 1)] {
            stream.extend_from_slice(&[kind, 3, 3]);
            stream.extend_from_slice(&(len as u16).to_be_bytes());
            stream.extend(std::iter::repeat_n(0xAB, len));
        }
        for cut in [1, 2, 4, 5, 7, 64, stream.len()] {
            let mut counter = RecordCounter::default();
            for piece in stream.chunks(cut) {
                counter.feed(piece);
            }
            assert_eq!(counter.application_data, 3, "reads of {cut} bytes");
            assert_eq!((counter.have, counter.skip), (0, 0));
        }
    }

    #[test]
    fn refuses_a_ca_file_without_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let ip = IpAddr::from([127, 0, 0, 1]);
        assert!(TlsClient::new(&empty, ip).is_err());
        assert!(TlsClient::new(&dir.path().join("missing.pem"), ip).is_err());
    }
}
