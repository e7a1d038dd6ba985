//! The real `lineclient` binary against a real server (in-process, or the
//! `mioserver` binary where it must crash): piped clients for the chat
//! itself, one client in a pseudo-terminal for typing while messages
//! arrive, and exactly-once delivery across a cut connection and a server
//! killed with `kill -9`.
//!
//! Every wait has a deadline and waits for a line, never for a time.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use miochat::evloop::config::LoopConfig;
use miochat::{ServerConfig, ServerHandle};

/// How long any one expected line may take: generous, for a loaded CI
/// machine; a passing test never waits this long.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A server on a free port of 127.0.0.1.
fn server() -> ServerHandle {
    server_on("127.0.0.1:0".parse().unwrap())
}

fn server_on(addr: SocketAddr) -> ServerHandle {
    miochat::chat::start(ServerConfig {
        net: LoopConfig {
            addr,
            ..LoopConfig::default()
        },
        ..Default::default()
    })
    .expect("the server starts")
}

/// A `mioserver` process, so that it can be killed with `kill -9`.
struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    /// Starts `mioserver ADDR --history 1000 --rate-limit 200 --db DB`
    /// (every message of a test in a newcomer's welcome; a limit that
    /// `welcome` announces and lineclient paces itself under, 160 lines a
    /// second, so that a thousand piped lines take seconds, not the two
    /// minutes of the default limit; the history in the test's own file)
    /// and waits until it listens.
    fn start(addr: SocketAddr, db: &Path) -> ServerProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_mioserver"))
            .args([
                &addr.to_string(),
                "--history",
                "1000",
                "--rate-limit",
                "200",
                "--db",
            ])
            .arg(db)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("mioserver starts");
        // Owned at once, so that `Drop` waits for it on every path.
        let mut server = ServerProcess { child };
        let (lines, log) = mpsc::channel();
        let stderr = BufReader::new(server.child.stderr.take().unwrap());
        thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                // Keep reading after the test stops listening, so that the
                // server never blocks on a full pipe.
                let _ = lines.send(line);
            }
        });
        loop {
            let line = log
                .recv_timeout(TIMEOUT)
                .expect("mioserver logs that it listens");
            if line.contains("listening on") {
                return server;
            }
        }
    }

    /// `kill -9`: no goodbye to anyone.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port of 127.0.0.1 that was free a moment ago.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A `lineclient` with piped standard input and output.
struct Client {
    /// The process, to wait for its exit.
    child: Child,
    /// Its standard input; dropped to end the input.
    stdin: Option<ChildStdin>,
    /// Its standard output, a line at a time, read on a thread so that a
    /// wait can time out.
    stdout: Receiver<String>,
    /// Its standard error, read whole once it exits.
    stderr: Receiver<String>,
}

impl Client {
    /// Starts `lineclient --name NAME ADDR`.
    fn start(name: &str, addr: SocketAddr) -> Client {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lineclient"))
            .args(["--name", name, &addr.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("lineclient starts");
        let (lines, stdout) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        let (text, stderr) = mpsc::channel();
        let mut err = child.stderr.take().unwrap();
        thread::spawn(move || {
            let mut all = String::new();
            let _ = err.read_to_string(&mut all);
            let _ = text.send(all);
        });
        Client {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
        }
    }

    /// Starts a client and waits until it is in the room.
    fn joined(name: &str, addr: SocketAddr, online: &str) -> Client {
        let client = Client::start(name, addr);
        client.expect(&format!("--- {online} ---"));
        client
    }

    /// Types one line.
    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("input is still open");
        writeln!(stdin, "{line}").expect("lineclient reads its input");
    }

    /// The next line of output, with the time shown as `[HH:MM]`.
    fn next_line(&self) -> String {
        let line = self
            .stdout
            .recv_timeout(TIMEOUT)
            .expect("lineclient printed a line in time");
        without_time(&line)
    }

    /// Asserts that the next line of output is `expected`.
    fn expect(&self, expected: &str) {
        assert_eq!(self.next_line(), expected);
    }

    /// Ends the input and waits for the exit, returning the status, the
    /// rest of the output and the standard error.
    fn finish(self) -> (ExitStatus, Vec<String>, String) {
        self.finish_within(TIMEOUT)
    }

    /// [`finish`](Self::finish) for a client that still has `within` of
    /// paced lines to send when its input ends.
    fn finish_within(mut self, within: Duration) -> (ExitStatus, Vec<String>, String) {
        drop(self.stdin.take());
        let status = wait(&mut self.child, within);
        // The reader thread ends at the end of the output, which closes
        // the channel; until then lines may still be on their way.
        let mut rest = Vec::new();
        while let Ok(line) = self.stdout.recv_timeout(TIMEOUT) {
            rest.push(without_time(&line));
        }
        let stderr = self.stderr.recv_timeout(TIMEOUT).unwrap_or_default();
        (status, rest, stderr)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child` to exit, within `within`.
fn wait(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "lineclient did not exit in time");
        thread::sleep(Duration::from_millis(10));
    }
}

/// `[08:05] Dave: hi` becomes `[HH:MM] Dave: hi`, so tests need no clock.
fn without_time(line: &str) -> String {
    let bytes = line.as_bytes();
    if bytes.len() >= 7 && bytes[0] == b'[' && bytes[3] == b':' && bytes[6] == b']' {
        format!("[HH:MM]{}", &line[7..])
    } else {
        line.to_owned()
    }
}

#[test]
fn two_clients_exchange_messages_and_dms_that_a_third_never_sees() {
    let server = server();
    let addr = server.addr();
    let mut alice = Client::joined("Alice", addr, "1 online: Alice");
    let mut bob = Client::joined("Bob", addr, "2 online: Alice, Bob");
    alice.expect("* Bob joined (2 online)");
    let mut carol = Client::joined("Carol", addr, "3 online: Alice, Bob, Carol");
    alice.expect("* Carol joined (3 online)");
    bob.expect("* Carol joined (3 online)");

    alice.type_line("hello :wave:");
    for client in [&alice, &bob, &carol] {
        client.expect("[HH:MM] Alice: hello 👋");
    }
    bob.type_line("dm Alice psst");
    for client in [&alice, &bob] {
        client.expect("[HH:MM] (dm) Bob -> Alice: psst");
    }
    alice.type_line("/msg Bob back");
    for client in [&alice, &bob] {
        client.expect("[HH:MM] (dm) Alice -> Bob: back");
    }
    // The DMs were sent before this, and every client's lines arrive in
    // order: had Carol been sent a DM, it would come first.
    carol.type_line("done");
    for client in [&alice, &bob, &carol] {
        client.expect("[HH:MM] Carol: done");
    }

    let (status, rest, _) = carol.finish();
    assert!(status.success());
    assert!(!rest.iter().any(|line| line.contains("psst")), "{rest:?}");
    alice.expect("* Carol left (2 online)");
    bob.expect("* Carol left (2 online)");
    assert!(alice.finish().0.success());
    assert!(bob.finish().0.success());
}

#[test]
fn who_and_nick_are_answered() {
    let server = server();
    let mut dave = Client::joined("Dave", server.addr(), "1 online: Dave");
    dave.type_line("/who");
    dave.expect("* 1 online: Dave");
    dave.type_line("/nick David");
    dave.expect("* Dave is now David");
    dave.type_line("still me");
    dave.expect("[HH:MM] David: still me");
    assert!(dave.finish().0.success());
}

#[test]
fn end_of_input_exits_zero_once_every_line_is_acknowledged() {
    let server = server();
    let observer = Client::joined("Observer", server.addr(), "1 online: Observer");
    let mut bot = Client::start("bot", server.addr());
    // All of it at once, before the client has even joined.
    for n in 1..=5 {
        bot.type_line(&format!("line {n}"));
    }
    bot.type_line("dm Observer done");
    let (status, rest, stderr) = bot.finish();
    assert!(status.success(), "{stderr}");
    let mut expected = vec!["--- 2 online: bot, Observer ---".to_owned()];
    expected.extend((1..=5).map(|n| format!("[HH:MM] bot: line {n}")));
    expected.push("[HH:MM] (dm) bot -> Observer: done".to_owned());
    assert_eq!(rest, expected);
    observer.expect("* bot joined (2 online)");
    for n in 1..=5 {
        observer.expect(&format!("[HH:MM] bot: line {n}"));
    }
    observer.expect("[HH:MM] (dm) bot -> Observer: done");
}

#[test]
fn a_long_burst_is_paced_under_the_rate_limit_not_refused() {
    let server = server();
    let mut bot = Client::start("bot", server.addr());
    // More than the server's default burst of 20 requests.
    let count = 30;
    for n in 1..=count {
        bot.type_line(&format!("line {n}"));
    }
    let (status, rest, stderr) = bot.finish();
    assert!(status.success(), "{stderr}");
    let mut expected = vec!["--- 1 online: bot ---".to_owned()];
    expected.extend((1..=count).map(|n| format!("[HH:MM] bot: line {n}")));
    assert_eq!(rest, expected);
}

#[test]
fn a_refused_or_unsent_line_makes_the_exit_status_non_zero() {
    let server = server();
    let mut bot = Client::joined("bot", server.addr(), "1 online: bot");
    bot.type_line("/frobnicate");
    bot.expect("! unknown command /frobnicate (/help lists them)");
    bot.type_line("dm Nobody hello");
    assert!(bot.next_line().starts_with("! unknown_user: "));
    let (status, _, _) = bot.finish();
    assert_eq!(status.code(), Some(1));
}

#[test]
fn a_taken_name_exits_non_zero_with_the_reason() {
    let server = server();
    let _alice = Client::joined("Alice", server.addr(), "1 online: Alice");
    let (status, output, stderr) = Client::start("alice", server.addr()).finish();
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("name_taken"), "{stderr}");
    assert_eq!(output, Vec::<String>::new());
}

#[test]
fn an_unreachable_server_is_a_clear_error_at_once() {
    // A port that was free a moment ago: nothing listens there.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let started = Instant::now();
    let (status, _, stderr) = Client::start("bot", addr).finish();
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains(&format!("cannot connect to ws://{addr}/")),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn reconnects_after_a_server_restart_without_gaps_or_repeats() {
    let first = server();
    let addr = first.addr();
    let mut alice = Client::joined("Alice", addr, "1 online: Alice");
    let bob = Client::joined("Bob", addr, "2 online: Alice, Bob");
    alice.expect("* Bob joined (2 online)");
    alice.type_line("before");
    alice.expect("[HH:MM] Alice: before");
    bob.expect("[HH:MM] Alice: before");
    assert!(bob.finish().0.success());
    alice.expect("* Bob left (1 online)");

    first.shutdown().unwrap();
    let line = alice.next_line();
    assert!(
        line.starts_with(
            "! the server closed the connection: server shutting down (1001); reconnecting in "
        ),
        "{line}"
    );
    let _second = server_on(addr);
    // Attempts made before the new server listened fail; then it is back.
    // Attempts before the new server listened fail: the first is shown,
    // the next ones only as a status line a minute.
    let mut line = alice.next_line();
    if line.starts_with("! cannot connect") {
        assert!(line.ends_with("; still trying"), "{line}");
        line = alice.next_line();
    }
    // The restarted in-memory server has a new epoch: what was said
    // meanwhile on the old one is gone, and the client says so.
    assert!(
        line.starts_with("* reconnected, but some history could not be recovered"),
        "{line}"
    );
    // Nothing from before the restart is shown again.
    alice.expect("--- 1 online: Alice ---");

    let mut carol = Client::joined("Carol", addr, "2 online: Alice, Carol");
    alice.expect("* Carol joined (2 online)");
    carol.type_line("after 1");
    carol.type_line("after 2");
    alice.expect("[HH:MM] Carol: after 1");
    alice.expect("[HH:MM] Carol: after 2");
    alice.type_line("welcome back");
    alice.expect("[HH:MM] Alice: welcome back");
    carol.expect("[HH:MM] Carol: after 1");
    carol.expect("[HH:MM] Carol: after 2");
    carol.expect("[HH:MM] Alice: welcome back");
    assert!(alice.finish().0.success());
}

#[test]
fn on_a_terminal_a_message_arriving_mid_line_leaves_the_typed_text_intact() {
    let server = server();
    let history = std::env::temp_dir().join(format!("lineclient-test-{}", std::process::id()));
    let mut command = Command::new(env!("CARGO_BIN_EXE_lineclient"));
    command
        .args(["--name", "Dave", "--no-color", "--history-file"])
        .arg(&history)
        .arg(server.addr().to_string())
        .env("TERM", "xterm");
    let timeout_ms = Some(TIMEOUT.as_millis() as u64);
    let mut dave = rexpect::session::spawn_command(command, timeout_ms).unwrap();
    dave.exp_string("--- 1 online: Dave ---").unwrap();

    let mut bob = Client::joined("Bob", server.addr(), "2 online: Bob, Dave");
    dave.exp_string("* Bob joined (2 online)").unwrap();
    // ASCII only: rexpect reads the terminal a byte at a time as Latin-1.
    dave.send("hello wor").unwrap();
    dave.flush().unwrap();
    dave.exp_string("hello wor").unwrap();

    bob.type_line("interrupting");
    bob.expect("[HH:MM] Bob: interrupting");
    dave.exp_string("Bob: interrupting").unwrap();
    // rustyline redraws the prompt and the half-typed line below it (with
    // cursor movements in between)...
    dave.exp_regex("> [^\n]*hello wor").unwrap();
    // ...and the line was never lost: finishing it sends all of it.
    dave.send_line("ld").unwrap();
    bob.expect("[HH:MM] Dave: hello world");
    dave.exp_string("Dave: hello world").unwrap();

    // Tab completes the name: the DM reaches Bob.
    dave.send("dm Bo\tpsst\r").unwrap();
    dave.flush().unwrap();
    bob.expect("[HH:MM] (dm) Dave -> Bob: psst");

    // Ctrl-D leaves, and the history is kept for the next run.
    dave.send_control('d').unwrap();
    dave.exp_eof().unwrap();
    let saved = std::fs::read_to_string(&history).unwrap();
    let _ = std::fs::remove_file(&history);
    assert!(saved.contains("hello world"), "{saved}");
    // DMs stay out of the plain-text history file.
    assert!(!saved.contains("psst"), "{saved}");
    bob.expect("* Dave left (1 online)");
}

#[test]
fn lines_whose_echo_was_lost_with_the_connection_are_posted_once() {
    // A short history, so that the resume cannot hold everything missed:
    // the last two lines are acknowledged by the resume's history, the
    // three before them only by the server's answer to the resent cid.
    let server = miochat::chat::start(ServerConfig {
        net: LoopConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            ..LoopConfig::default()
        },
        history: 2,
        ..Default::default()
    })
    .expect("the server starts");
    let proxy = Proxy::start(server.addr());
    let observer = Client::joined("Observer", server.addr(), "1 online: Observer");
    let mut bot = Client::joined("bot", proxy.addr, "2 online: bot, Observer");
    observer.expect("* bot joined (2 online)");
    for n in 1..=5 {
        bot.type_line(&format!("line {n}"));
        bot.expect(&format!("[HH:MM] bot: line {n}"));
        observer.expect(&format!("[HH:MM] bot: line {n}"));
    }

    // Lines 6 to 10 reach the server, but their echoes never reach the bot.
    proxy.deafen();
    for n in 6..=10 {
        bot.type_line(&format!("line {n}"));
    }
    for n in 6..=10 {
        observer.expect(&format!("[HH:MM] bot: line {n}"));
    }
    proxy.cut();
    let (status, output, stderr) = bot.finish();
    assert!(status.success(), "{stderr}");

    // The bot saw each line once: 9 and 10 in the resume, 6 to 8 as the
    // server's answers to the resent cids.
    let lines: Vec<String> = output
        .iter()
        .filter(|line| line.starts_with("[HH:MM] bot: "))
        .cloned()
        .collect();
    let mut expected: Vec<String> = (6..=10).map(|n| format!("[HH:MM] bot: line {n}")).collect();
    let mut shown = lines.clone();
    shown.sort();
    expected.sort();
    assert_eq!(shown, expected, "{output:?}");
    assert!(
        output
            .iter()
            .any(|line| line.starts_with("* reconnected, but some history could not be recovered")),
        "{output:?}"
    );
    // Everyone else saw each line exactly once: nothing after line 10
    // but the bot coming back and leaving.
    let (_, rest, _) = observer.finish();
    assert!(
        rest.iter().all(|line| !line.contains("line ")),
        "a line was posted twice: {rest:?}"
    );
}

#[test]
fn a_piped_client_posts_every_line_exactly_once_when_the_server_is_killed_and_restarted() {
    let addr = free_addr();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let first = ServerProcess::start(addr, &db);
    let observer = Client::joined("Observer", addr, "1 online: Observer");
    let mut bot = Client::start("bot", addr);
    // The client paces itself under the limit the server announced (160
    // lines a second), so the thousand lines take about 6 s.
    let count = 1000;
    for n in 1..=count {
        bot.type_line(&format!("line {n}"));
    }
    // The pace spreads the lines over seconds; kill the server in the
    // middle of them.
    observer.expect("* bot joined (2 online)");
    let mut seen_before = Vec::new();
    while seen_before.len() < count / 2 {
        seen_before.push(observer.next_line());
    }
    first.kill();
    let second = ServerProcess::start(addr, &db);
    // The lines left go at the client's pace, after a reconnect: 20 s for
    // the 3 s they take leaves room for a loaded machine.
    let (status, _, stderr) = bot.finish_within(TIMEOUT + Duration::from_secs(20));
    assert!(status.success(), "every line acknowledged: {stderr}");

    // The history survived the crash (same file, same epoch): every line
    // is in it exactly once, in the order it was typed.
    let (_, history, _) = Client::start("checker", addr).finish();
    let history: Vec<String> = history
        .into_iter()
        .filter(|line| line.starts_with("[HH:MM] bot: "))
        .collect();
    let typed: Vec<String> = (1..=count)
        .map(|n| format!("[HH:MM] bot: line {n}"))
        .collect();
    assert_eq!(history, typed, "each line once, in order");
    assert!(seen_before
        .iter()
        .all(|line| !line.starts_with("[HH:MM] bot: ") || typed.contains(line)));
    drop(second);
}
