//! Running a server on a thread of its own, for tests, benchmarks and
//! embedding: the loop owns its thread, and the handle stops it.

use std::io;
use std::net::SocketAddr;

use crate::evloop::config::LoopConfig;
use crate::evloop::server::{Server, Shutdown};
use crate::evloop::service::Service;

/// A server running on its own thread, for tests, benchmarks and embedding.
#[derive(Debug)]
pub struct ServerHandle {
    /// Where it listens.
    addr: SocketAddr,
    /// Stops it.
    shutdown: Shutdown,
    /// The loop's thread; `None` once joined.
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl ServerHandle {
    /// Binds `service` per `config` and runs it on a new thread.
    ///
    /// The server is bound on the thread that runs it; the address (or the
    /// error from binding) and the shutdown handle are sent back before
    /// the loop starts.
    pub fn spawn<S: Service + Send + 'static>(config: LoopConfig, service: S) -> io::Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("mioserver".into())
            .spawn(move || {
                let server = Server::bind(config, service);
                let server = match server {
                    Ok(server) => {
                        let _ = ready_tx.send(Ok((server.local_addr(), server.shutdown_handle())));
                        server
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return Ok(());
                    }
                };
                server.run()
            })?;
        let (addr, shutdown) = ready_rx
            .recv()
            .map_err(|_| io::Error::other("the server thread died while starting"))??;
        Ok(ServerHandle {
            addr,
            shutdown,
            thread: Some(thread),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shuts the server down gracefully and waits for its thread.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.shutdown.request();
        thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the server thread panicked")))
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
