//! Faults and floods at the scale of many sockets: slowloris, running out
//! of file descriptors, and SIGTERM with many clients connected. The last
//! two run the real `mioserver` binary, since they involve the process
//! itself (its descriptor limit, its signal handling, its exit status).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{assert_dropped, config, start, stop, tcp, Client};
use tungstenite::Message;

/// Starts the `mioserver` binary on a free port, with `extra` flags and the
/// shell's open-files limit set to `nofile`. Returns it and its address,
/// read from its start-up log line.
fn spawn_binary(nofile: u32, extra: &str) -> (Child, SocketAddr) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n {nofile} && exec \"$0\" 127.0.0.1:0 --db :memory: {extra}"
        ))
        .arg(env!("CARGO_BIN_EXE_mioserver"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mioserver");
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    // Read the log on a thread so that a silent server fails the test by
    // timeout instead of hanging it; keep draining it afterwards.
    std::thread::spawn(move || {
        let mut line = String::new();
        while log.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(rest) = line.split("listening on ws://").nth(1) {
                let addr = rest.split('/').next().unwrap().to_owned();
                let _ = tx.send(addr);
            }
            line.clear();
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the server logs its address");
    (child, addr.parse().unwrap())
}

/// Waits for the process to exit (at most `limit`) and returns its status code.
fn wait_exit(child: Child, limit: Duration) -> Option<i32> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut child = child;
        let _ = tx.send(child.wait().map(|status| status.code()));
    });
    rx.recv_timeout(limit)
        .expect("the server exits in time")
        .expect("wait for the server")
}

/// The process's CPU time (user + system) so far, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (in parentheses, which may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

#[test]
fn hundreds_of_slowloris_sockets_neither_slow_others_nor_stay() {
    // Long enough that joining and chatting fit well inside it even on a
    // loaded machine running the other tests in parallel.
    let timeout = Duration::from_secs(4);
    let server = start(miochat::ServerConfig {
        net: miochat::evloop::config::LoopConfig {
            handshake_timeout: timeout,
            ..config().net
        },
        ..config()
    });
    let addr = server.addr();
    // Before the first socket: no handshake deadline can start earlier.
    let started = Instant::now();
    // Each sends the start of a request and then nothing more.
    let mut dribblers: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut stream = tcp(addr);
            stream.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
            stream
        })
        .collect();
    // Meanwhile a real client joins and chats.
    let (mut alice, _welcome) = Client::join(addr, "alice");
    alice.say("not blocked");
    assert_eq!(alice.recv()["text"], "not blocked");
    // Had the dribblers held the loop up, they would have been timed out
    // (and closed) before alice was served; they are all still open.
    for stream in &mut dribblers {
        stream.set_nonblocking(true).unwrap();
        let still_open = matches!(
            stream.read(&mut [0]),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock
        );
        assert!(still_open, "a dribbler was closed before alice was served");
        stream.set_nonblocking(false).unwrap();
    }
    // Every dribbler is dropped at the handshake timeout, not before.
    for stream in &mut dribblers {
        assert_dropped(stream);
    }
    assert!(started.elapsed() >= timeout);
    stop(server, [alice]);
}

#[test]
fn running_out_of_descriptors_neither_spins_nor_stops_service() {
    // 64 descriptors, but up to 1000 connections allowed: accept hits EMFILE.
    let (child, addr) = spawn_binary(64, "--max-connections 1000");
    let pid = child.id();
    let (mut alice, _welcome) = Client::join(addr, "alice");
    let cpu_before = cpu_time(pid);
    let started = Instant::now();
    // Far more sockets than the server has descriptors for.
    let mut flood: Vec<TcpStream> = (0..150).map(|_| tcp(addr)).collect();
    // The ones beyond the limit are shed (closed at once); the others the
    // server holds. Each either is dropped or completes an upgrade.
    let mut shed = 0;
    for stream in &mut flood {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .ok();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        if answer.is_empty() {
            shed += 1;
        } else {
            assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
        }
    }
    assert!(
        shed > 0,
        "some connections were shed for lack of descriptors"
    );
    let busy = cpu_time(pid) - cpu_before;
    assert!(
        busy < started.elapsed() / 2 + Duration::from_millis(200),
        "the loop spun: {busy:?} of CPU in {:?}",
        started.elapsed()
    );
    drop(flood);
    // The joined client was served throughout and still is.
    alice.say("still served");
    assert_eq!(alice.recv()["text"], "still served");
    // And with descriptors free again, new clients get in.
    let (bob, _welcome) = Client::join(addr, "bob");
    drop((alice, bob));
    // SAFETY: kill only sends a signal to our own child process.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert_eq!(wait_exit(child, Duration::from_secs(10)), Some(0));
}

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_zero() {
    let (child, addr) = spawn_binary(1024, "");
    let mut clients: Vec<Client> = (0..100)
        .map(|i| Client::join(addr, &format!("user{i}")).0)
        .collect();
    // SAFETY: kill only sends a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    for client in &mut clients {
        // Skip the `joined` notices of later clients; then the close.
        let close = loop {
            match client.recv_frame() {
                Message::Text(_) | Message::Ping(_) => continue,
                other => break other,
            }
        };
        match close {
            Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
    drop(clients);
    assert_eq!(wait_exit(child, Duration::from_secs(5)), Some(0));
}
