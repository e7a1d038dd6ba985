//! The programs' command lines, run as a user runs them: the built
//! binaries, their `--help` and `--version`, the flags' checks, and a
//! server started from the environment on a host name.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use miochat::ServerConfig;

/// How long the server may take to start and answer: generous, for a
/// loaded CI machine; a passing test never waits this long.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `program` with `args` and no `MIOCHAT_` variables from the
/// environment of the test run, to completion.
fn run(program: &str, args: &[&str]) -> Output {
    let mut command = Command::new(program);
    command.args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MIOCHAT_") {
            command.env_remove(name);
        }
    }
    command.output().expect("the program runs")
}

/// The `[default: …]` that `--help` shows for `flag`, and its `[env: …]`.
fn shown(help: &str, flag: &str) -> (String, String) {
    let start = help
        .lines()
        .position(|line| line.trim_start().starts_with(flag))
        .unwrap_or_else(|| panic!("{flag} is in --help"));
    let mut default = None;
    let mut env = None;
    for line in help.lines().skip(start + 1) {
        let line = line.trim();
        // The next flag ends this one's text (a "- value:" line lists a
        // possible value and does not).
        if line.starts_with("--") {
            break;
        }
        if let Some(value) = line.strip_prefix("[default: ") {
            default = Some(value.trim_end_matches(']').to_owned());
        }
        if let Some(value) = line.strip_prefix("[env: ") {
            env = Some(value.trim_end_matches(']').trim_end_matches('=').to_owned());
        }
    }
    (
        default.unwrap_or_else(|| panic!("{flag} shows a default")),
        env.unwrap_or_else(|| panic!("{flag} names a variable")),
    )
}

#[test]
fn the_server_help_shows_the_library_defaults_and_a_variable_for_each_flag() {
    let output = run(env!("CARGO_BIN_EXE_mioserver"), &["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let d = ServerConfig::default();
    let secs = |duration: Duration| duration.as_secs_f64().to_string();
    let expected = [
        ("[ADDR]", d.net.addr.to_string()),
        ("--history", d.history.to_string()),
        ("--max-resume", d.max_resume.to_string()),
        ("--max-text-chars", d.max_text_chars.to_string()),
        ("--rate-limit", d.rate_limit.to_string()),
        ("--rate-burst", d.rate_burst.to_string()),
        ("--max-message-bytes", d.net.max_message_bytes.to_string()),
        ("--max-connections ", d.net.max_connections.to_string()),
        (
            "--max-connections-per-ip",
            d.net.max_connections_per_ip.to_string(),
        ),
        ("--max-outbound-bytes", d.net.max_outbound_bytes.to_string()),
        ("--handshake-timeout", secs(d.net.handshake_timeout)),
        ("--join-timeout", secs(d.join_timeout)),
        ("--ping-interval", secs(d.net.ping_interval)),
        ("--ping-timeout", secs(d.net.ping_timeout)),
        // The binary keeps its history in a file by default; the library
        // (and so every in-process test) keeps it in memory.
        ("--db", "miochat.db".to_owned()),
        ("--sync", "full".to_owned()),
    ];
    for (flag, default) in expected {
        let (shown_default, env) = shown(&help, flag);
        assert_eq!(shown_default, default, "{flag}");
        let name = flag.trim_matches(['-', '[', ']', ' ']).replace('-', "_");
        assert_eq!(env, format!("MIOCHAT_{}", name.to_uppercase()), "{flag}");
    }
    // The numbers the protocol documents.
    assert_eq!(
        (d.history, d.max_text_chars, d.max_resume),
        (100, 4000, 1000)
    );
    assert_eq!(d.net.max_message_bytes, 65_536);
}

#[test]
fn each_program_names_itself_and_says_what_it_is() {
    let version = env!("CARGO_PKG_VERSION");
    for (program, what) in [
        (
            env!("CARGO_BIN_EXE_mioserver"),
            "mioserver, the miochat chat server",
        ),
        (
            env!("CARGO_BIN_EXE_lineclient"),
            "lineclient, the miochat terminal client",
        ),
        (
            env!("CARGO_BIN_EXE_chatbench"),
            "chatbench, the miochat load generator",
        ),
    ] {
        let name = what.split(',').next().unwrap();
        let output = run(program, &["--version"]);
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("{name} {version}\n")
        );
        let help = run(program, &["--help"]);
        assert!(
            String::from_utf8_lossy(&help.stdout).starts_with(what),
            "{name}"
        );
    }
}

#[test]
fn bad_numbers_are_refused_in_plain_words() {
    let server = env!("CARGO_BIN_EXE_mioserver");
    for (args, why) in [
        (&["--history", "-5"][..], "the value must be 0 or more"),
        (
            &["--max-connections", "0"][..],
            "the value must be 1 or more",
        ),
        (&["--rate-burst", "-1"][..], "the value must be 0 or more"),
        (
            &["--ping-timeout", "0"][..],
            "is not a number of seconds above 0",
        ),
    ] {
        let output = run(server, args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(why), "{args:?}: {stderr}");
        assert!(!stderr.contains("-- -"), "no tip to use `--`: {stderr}");
    }
}

#[test]
fn the_server_listens_on_a_host_name_given_in_the_environment_and_logs_who_comes_and_goes() {
    let mut server = Command::new(env!("CARGO_BIN_EXE_mioserver"))
        .env("MIOCHAT_ADDR", "localhost:0")
        .env("MIOCHAT_DB", ":memory:")
        .env("MIOCHAT_LOG_LEVEL", "info")
        // No miochat.db left in the working directory by a test.
        .env("MIOCHAT_DB", ":memory:")
        .stderr(Stdio::piped())
        .spawn()
        .expect("mioserver starts");
    // The log names the address it listens on; read it on a thread so the
    // wait has a deadline.
    let (lines, log) = mpsc::channel();
    let stderr = BufReader::new(server.stderr.take().unwrap());
    thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let addr = loop {
        let line = log
            .recv_timeout(TIMEOUT)
            .expect("the server logs its address");
        if let Some((_, rest)) = line.split_once("listening on ws://") {
            break rest.split('/').next().unwrap().to_owned();
        }
    };
    assert!(
        addr.starts_with("127.0.0.1:"),
        "localhost is 127.0.0.1: {addr}"
    );
    let mut http = TcpStream::connect(&addr).unwrap();
    http.set_read_timeout(Some(TIMEOUT)).unwrap();
    http.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = http.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Joins, renames and leaves are logged; a DM's text never is.
    let stream = TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/"), stream).unwrap();
    for request in [
        r#"{"type":"join","name":"Dave"}"#,
        r#"{"type":"nick","name":"David"}"#,
        r#"{"type":"dm","to":"David","text":"secret-psst"}"#,
    ] {
        ws.send(tungstenite::Message::text(request)).unwrap();
    }
    // The DM's echo: everything before it was handled.
    loop {
        let frame = ws.read().unwrap();
        if frame.to_text().unwrap().contains(r#""type":"dm""#) {
            break;
        }
    }
    ws.close(None).unwrap();
    let mut logged = Vec::new();
    loop {
        let line = log
            .recv_timeout(TIMEOUT)
            .expect("the server logs the leave");
        assert!(!line.contains("secret-psst"), "{line}");
        let done = line.contains("disconnect") && line.contains("(David)");
        logged.push(line);
        if done {
            break;
        }
    }
    let has = |text: &str| logged.iter().any(|line| line.contains(text));
    assert!(has("joined as Dave"), "{logged:?}");
    assert!(has("renamed Dave to David"), "{logged:?}");
    let _ = server.kill();
    let _ = server.wait();
}
