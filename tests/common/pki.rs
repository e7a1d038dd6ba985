//! Certificates made in the test, with rcgen, and the TLS client side
//! that trusts them: a test authority and a leaf for `localhost` and
//! `127.0.0.1`, written to a temporary directory.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::tcp;

/// A test certificate authority and a server certificate it signed, as
/// PEM files in a directory of their own.
pub struct Pki {
    /// Holds the files; removed when the test ends (dropped, never read).
    pub _dir: tempfile::TempDir,
    /// The authority's certificate, for clients to trust.
    pub ca: PathBuf,
    /// The server's certificate.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
}

impl Pki {
    /// A new authority named `name` and a leaf for the loopback address.
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::Builder::new()
            .prefix(&format!("miochat-tls-{name}-"))
            .tempdir()
            .unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("miochat test CA {name}"));
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let write = |file: &str, text: String| {
            let path = dir.path().join(file);
            std::fs::write(&path, text).unwrap();
            path
        };
        Pki {
            ca: write("ca.pem", ca_cert.pem()),
            cert: write("cert.pem", leaf.pem()),
            key: write("key.pem", leaf_key.serialize_pem()),
            _dir: dir,
        }
    }

    /// Client settings that trust this authority only.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        client_config(&self.ca)
    }
}

/// Client settings that trust the authority in `ca` only.
pub fn client_config(ca: &Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A plain HTTP GET over TLS; returns the whole response.
pub fn https_get(addr: SocketAddr, tls: Arc<ClientConfig>, path: &str) -> String {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(tls, name).unwrap();
    let mut stream = StreamOwned::new(conn, tcp(addr));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    match stream.read_to_string(&mut response) {
        Ok(_) => {}
        // The server sends close_notify, but a reset after it is no error.
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(err) => panic!("reading the response: {err}"),
    }
    response
}
