//! A `redis-server` of the test's own: on a free loopback port, in a
//! temporary directory, with the append-only file on and fsynced on every
//! write (so that a `kill -9` loses nothing acknowledged), never the
//! system's service. It is killed when dropped, and can be killed and
//! started again on the same port with the same data, for the tests of a
//! Redis restart.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The longest a fresh `redis-server` may take to answer `PING`.
const STARTUP: Duration = Duration::from_secs(10);

/// A running `redis-server`.
pub struct Redis {
    /// The process while it runs.
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its working directory: the append-only file lives here.
    dir: PathBuf,
}

/// Whether `redis-server` can be run. When it cannot, says so loudly and
/// returns false, except under `CI=true`, where it fails the test.
pub fn available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "redis-server is not installed, and CI=true: install it (apt-get install redis-server)"
        );
        eprintln!("SKIPPED: redis-server not installed (apt-get install redis-server)");
    }
    found
}

impl Redis {
    /// Starts one, or returns `None` (after saying so) when `redis-server`
    /// is missing.
    pub fn start() -> Option<Redis> {
        if !available() {
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "miochat-redis-{}-{}",
            std::process::id(),
            miochat::chat::cluster::random_token()
        ));
        std::fs::create_dir_all(&dir).expect("create the temporary directory");
        // A port the kernel just handed out and took back is free, barring
        // a race with another program that the PING check would expose.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut redis = Redis {
            child: None,
            addr,
            dir,
        };
        redis.launch();
        Some(redis)
    }

    /// Runs `redis-server` on this port and directory and waits until its
    /// log says it is ready (it reads the append-only file first) and it
    /// answers PING.
    fn launch(&mut self) {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.addr.port().to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        // A thread drains the log for the whole life of the process (a
        // full pipe would stall Redis) and reports the line that says it
        // is ready.
        let log = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(log).lines() {
                let Ok(line) = line else { return };
                if line.contains("Ready to accept connections") {
                    let _ = ready_tx.send(());
                }
            }
        });
        self.child = Some(child);
        if ready_rx.recv_timeout(STARTUP).is_err() {
            let status = self.child.as_mut().unwrap().try_wait().unwrap();
            panic!("redis-server was not ready within {STARTUP:?} (exit status: {status:?})");
        }
        assert!(
            self.answers_ping(),
            "redis-server is ready but does not answer PING"
        );
    }

    /// Whether a PING on a fresh connection gets PONG.
    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)) else {
            return false;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut reply = [0; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// `kill -9`: the process dies at once, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the same data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
