//! Programs the tests run as child processes (`mioserver`, nginx), with
//! their log on stderr read line by line on a thread of its own, so that
//! every wait for a line has a deadline.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;

use super::TIMEOUT;

/// A running child process and its stderr; stopped when dropped.
pub struct Logged {
    /// The process.
    pub child: Child,
    /// Its stderr, one line at a time.
    log: Receiver<String>,
}

impl Logged {
    /// Starts `command` with stderr piped to us. Its stdout goes nowhere:
    /// a process it leaves behind must not hold the test run's output open.
    pub fn spawn(command: &mut Command) -> Logged {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}"));
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (lines, log) = mpsc::channel();
        thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        Logged { child, log }
    }

    /// The real `mioserver` on a free loopback port with `args`, its
    /// history in memory, logging at `info`, and of the `MIOCHAT_`
    /// variables only those in `env`; returns it once it listens, with
    /// its address.
    pub fn mioserver(args: &[&str], env: &[(&str, &str)]) -> (Logged, SocketAddr) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mioserver"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("MIOCHAT_") {
                command.env_remove(name);
            }
        }
        command
            .args(["127.0.0.1:0", "--db", ":memory:", "--log-level", "info"])
            .args(args)
            .envs(env.iter().copied());
        let mut server = Logged::spawn(&mut command);
        let line = server.wait_for("listening on ws://");
        let (_, rest) = line.split_once("listening on ws://").unwrap();
        let addr = rest.split('/').next().unwrap().parse().unwrap();
        (server, addr)
    }

    /// Waits for a line containing `text` and returns it; fails the test
    /// when none comes within [`TIMEOUT`] or the program ends first.
    pub fn wait_for(&mut self, text: &str) -> String {
        loop {
            match self.log.recv_timeout(TIMEOUT) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(err) => panic!(
                    "no line with {text:?} ({err}); status {:?}",
                    self.child.try_wait()
                ),
            }
        }
    }
}

impl Drop for Logged {
    /// SIGTERM, not SIGKILL: nginx's master stops its workers on SIGTERM,
    /// but a killed master leaves them running; `mioserver` exits on it
    /// within its close linger.
    fn drop(&mut self) {
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill only sends a signal to our own child, which has not
        // been waited for, so the pid is still its own.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}
