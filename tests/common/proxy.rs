//! A TCP proxy in front of a server, whose connections a test can make
//! deaf (the server's bytes no longer reach the client), cut, or cut off
//! from each other for a while (a network partition: bytes are lost both
//! ways, sockets stay open), while both ends keep running: network faults
//! on demand, on loopback.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// One proxied connection: the client's socket, the server's socket, and
/// whether the server's bytes are thrown away.
type Link = (TcpStream, TcpStream, Arc<AtomicBool>);

/// The proxy; see the module docs.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The open connections.
    links: Arc<Mutex<Vec<Link>>>,
    /// While set, every byte either way is lost.
    partitioned: Arc<AtomicBool>,
}

impl Proxy {
    /// A proxy on a free port of 127.0.0.1 to `server`.
    pub fn start(server: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let links = Arc::new(Mutex::new(Vec::new()));
        let partitioned = Arc::new(AtomicBool::new(false));
        let (accepted, cut_off) = (Arc::clone(&links), Arc::clone(&partitioned));
        // The thread lives as long as the test process: it only accepts.
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(upstream) = TcpStream::connect(server) else {
                    continue;
                };
                let deaf = Arc::new(AtomicBool::new(false));
                let lost = |own: Option<&Arc<AtomicBool>>| {
                    let (own, cut_off) = (own.cloned(), Arc::clone(&cut_off));
                    move || {
                        cut_off.load(Ordering::SeqCst)
                            || own.as_ref().is_some_and(|own| own.load(Ordering::SeqCst))
                    }
                };
                pump(
                    client.try_clone().unwrap(),
                    upstream.try_clone().unwrap(),
                    lost(None),
                );
                pump(
                    upstream.try_clone().unwrap(),
                    client.try_clone().unwrap(),
                    lost(Some(&deaf)),
                );
                accepted.lock().unwrap().push((client, upstream, deaf));
            }
        });
        Proxy {
            addr,
            links,
            partitioned,
        }
    }

    /// From now on, what the server sends on the open connections is lost.
    pub fn deafen(&self) {
        for (_, _, deaf) in self.links.lock().unwrap().iter() {
            deaf.store(true, Ordering::SeqCst);
        }
    }

    /// Cuts every open connection, both ways. New ones are served afresh.
    pub fn cut(&self) {
        for (client, upstream, _) in self.links.lock().unwrap().drain(..) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }

    /// Starts (`true`) or ends a partition: while it lasts, every byte on
    /// every connection, old or new, is lost, and no socket is closed, so
    /// each end learns of it only by its own timeouts.
    pub fn partition(&self, on: bool) {
        self.partitioned.store(on, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` on a thread until either ends; drops the bytes
/// instead while `lost()` says so.
fn pump(mut from: TcpStream, mut to: TcpStream, lost: impl Fn() -> bool + Send + 'static) {
    thread::spawn(move || {
        let mut buf = [0; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if lost() {
                continue;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
