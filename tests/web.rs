//! The web client (`GET /`) in a real browser: headless Chromium driven
//! through `chromedriver` (Debian's `chromium` and `chromium-driver`).
//!
//! WebDriver is HTTP and JSON, and these tests need a dozen of its
//! commands, so they speak it with the small blocking client below rather
//! than a WebDriver crate: no async runtime, no HTTP stack to compile, and
//! access to chromedriver's log endpoint, which shows every request the
//! page made (the "no other origin" check). Each test starts its own
//! server and its own chromedriver on free loopback ports, with profiles in
//! a temporary directory; browser tests run one at a time, since each
//! starts several browsers. When a test fails, a screenshot of every page
//! is saved in `target/web-screenshots/` and its path printed.
//!
//! Without Chromium the browser tests print SKIPPED and pass, except when
//! `CI=true`, where a missing browser is a failure.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use common::{config, http, start};
use serde_json::{json, Value};

/// How long a wait for the page may take before the test fails: covers a
/// reconnect after a few backoff rounds (the page retries within 2 s at first).
const WAIT_MS: u64 = 15_000;

/// The longest chromedriver, a browser or the server may take to start
/// (Chromium on a busy two-core CI machine takes many seconds).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// One browser test at a time: each runs two or three browsers.
static BROWSERS: Mutex<()> = Mutex::new(());

// ---- The HTTP answers, without a browser ------------------------------

#[test]
fn the_page_is_served_with_its_security_and_caching_headers() {
    let server = start(config());
    let page = http(server.addr(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.starts_with("default-src 'self'; connect-src 'self';"),
        "{csp}"
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    assert!(page
        .body
        .contains(r#"<script src="app.js" defer></script>"#));
    assert!(page.body.contains(r#"<label for="name">Name</label>"#));
    assert!(page
        .body
        .contains(r#"<label for="message">Message</label>"#));
    let etag = page.header("etag").unwrap();

    let cached = http(
        server.addr(),
        &format!("GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n\r\n"),
    );
    assert_eq!(cached.status, 304);
    assert_eq!(cached.body, "");
    assert_eq!(cached.header("etag"), Some(etag));
    let changed = http(
        server.addr(),
        "GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"0\"\r\n\r\n",
    );
    assert_eq!(changed.status, 200);
    assert_eq!(changed.body, page.body);

    let head = http(server.addr(), "HEAD /app.js HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(head.status, 200);
    assert_eq!(head.body, "");
    assert_eq!(
        head.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(
        head.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 1000
    );

    let emoji = http(server.addr(), "GET /emoji.json HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(emoji.header("content-type"), Some("application/json"));
    let table: Value = serde_json::from_str(&emoji.body).unwrap();
    assert_eq!(table["smile"], "😄");

    // The rest of the HTTP side is as before.
    let health = http(server.addr(), "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(health.body, r#"{"status":"ok","online":0}"#);
    let other = http(server.addr(), "GET /chat HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(other.status, 426);
    server.shutdown().unwrap();
}

// ---- In the browser ---------------------------------------------------

#[test]
fn two_pages_chat_both_ways_and_a_late_joiner_sees_the_history() {
    let Some(browser) = Browser::start("chat") else {
        return;
    };
    let server = start(config());
    let url = format!("http://{}/", server.addr());
    let alice = browser.page("alice", &url, Screen::Desktop);
    let bob = browser.page("bob", &url, Screen::Desktop);
    alice.join("Alice");
    bob.join("Bob");
    alice.wait_for("Bob in the online list", "users().includes('Bob')");

    alice.type_line("Message", "hello Bob :smile:");
    bob.wait_for_message("Alice", "hello Bob 😄");
    bob.type_line("Message", "hi @Alice");
    alice.wait_for_message("Bob", "hi @Alice");
    assert_eq!(
        alice.eval("return document.querySelector('#log .mention mark').textContent"),
        "@Alice",
        "a mention of Alice is marked on her page"
    );
    assert_eq!(
        alice.eval("return document.querySelector('#log .msg.own .text').textContent"),
        "hello Bob 😄",
        "her own message is marked as hers"
    );
    // Bob's own copy is his acknowledgement; it may come a moment after
    // Alice's.
    bob.wait_for_message("Bob", "hi @Alice");
    for page in [&alice, &bob] {
        assert_eq!(page.messages(), ["Alice: hello Bob 😄", "Bob: hi @Alice"]);
    }

    let carol = browser.page("carol", &url, Screen::Desktop);
    carol.join("Carol");
    carol.wait_for_message("Bob", "hi @Alice");
    assert_eq!(carol.messages(), ["Alice: hello Bob 😄", "Bob: hi @Alice"]);
    // Scrolling back from the oldest message asks for older ones: there are none.
    carol.wait_for(
        "the start of the chat",
        "document.querySelector('#log li.start') !== null",
    );
    alice.wait_for("Carol's arrival", "notes().includes('Carol joined')");
    for page in [&alice, &bob, &carol] {
        page.assert_only_own_origin(server.addr());
    }
    drop((alice, bob, carol));
    server.shutdown().unwrap();
}

#[test]
fn a_dm_reaches_its_recipient_and_nobody_else() {
    let Some(browser) = Browser::start("dm") else {
        return;
    };
    let server = start(config());
    let url = format!("http://{}/", server.addr());
    let alice = browser.page("alice", &url, Screen::Desktop);
    let bob = browser.page("bob", &url, Screen::Desktop);
    let carol = browser.page("carol", &url, Screen::Desktop);
    alice.join("Alice");
    bob.join("Bob");
    carol.join("Carol");
    alice.wait_for("everyone online", "users().length === 3");

    // With the keyboard alone: Bob's entry in the online list, then Enter.
    let bob_button = alice.element(
        "[...document.querySelectorAll('#users button')].find(b => b.textContent === 'Bob')",
    );
    alice.send_keys(&bob_button, "\u{E007}");
    assert_eq!(
        alice.eval("return document.activeElement.id + '|' + document.activeElement.value"),
        "message|dm Bob "
    );
    alice.send_keys(&alice.focused(), "just for you\u{E007}");
    bob.wait_for_message("Alice → Bob", "just for you");
    alice.wait_for_message("Alice → Bob", "just for you");
    assert_eq!(
        bob.eval("return document.querySelector('#log .msg.dm .tag').textContent"),
        "private"
    );
    // A public message sent after the DM: once Carol has it, she would
    // have had the DM too.
    alice.type_line("Message", "/msg Carol nope");
    alice.wait_for_message("Alice → Carol", "nope");
    alice.type_line("Message", "after");
    carol.wait_for_message("Alice", "after");
    assert_eq!(carol.messages(), ["Alice → Carol: nope", "Alice: after"]);
    bob.wait_for_message("Alice", "after");
    assert_eq!(
        bob.messages(),
        ["Alice → Bob: just for you", "Alice: after"]
    );
    drop((alice, bob, carol));
    server.shutdown().unwrap();
}

#[test]
fn markup_in_a_message_is_shown_as_text_and_runs_nothing() {
    let Some(browser) = Browser::start("markup") else {
        return;
    };
    let server = start(config());
    let url = format!("http://{}/", server.addr());
    let alice = browser.page("alice", &url, Screen::Desktop);
    let bob = browser.page("bob", &url, Screen::Desktop);
    alice.join("Alice");
    bob.join("Bob");
    let attack = "<img src=x onerror=alert(1)>";
    alice.type_line("Message", attack);
    alice.type_line("Message", "<b>bold?</b> & <script>alert(2)</script>");
    for page in [&alice, &bob] {
        // Each page shows the second line once its own copy arrives (the
        // sender's is its acknowledgement): wait for it on each.
        page.wait_for_message("Alice", "<b>bold?</b> & <script>alert(2)</script>");
        assert_eq!(
            page.messages(),
            [
                format!("Alice: {attack}"),
                "Alice: <b>bold?</b> & <script>alert(2)</script>".to_owned()
            ]
        );
        assert_eq!(
            page.eval("return document.querySelectorAll('#log img, #log b, #log script').length"),
            0
        );
        page.assert_no_alert();
        page.assert_only_own_origin(server.addr());
    }
    drop((alice, bob));
    server.shutdown().unwrap();
}

#[test]
fn after_a_server_restart_the_page_resumes_and_sends_what_was_typed_exactly_once() {
    let Some(browser) = Browser::start("restart") else {
        return;
    };
    let dir = temp_dir("restart");
    let (server, addr) = spawn_server(&dir, "127.0.0.1:0".parse().unwrap());
    let url = format!("http://{addr}/");
    let alice = browser.page("alice", &url, Screen::Desktop);
    let bob = browser.page("bob", &url, Screen::Desktop);
    alice.join("Alice");
    bob.join("Bob");
    alice.type_line("Message", "before");
    bob.wait_for_message("Alice", "before");

    drop(server);
    for page in [&alice, &bob] {
        page.wait_for(
            "the reconnecting state",
            "document.querySelector('#status').textContent.startsWith('reconnecting…')",
        );
    }
    alice.type_line("Message", "typed while down");
    alice.wait_for(
        "the message waiting to be sent",
        "document.querySelector('#log .pending .text').textContent === 'typed while down'",
    );

    let (server, _) = spawn_server(&dir, addr);
    bob.wait_for_message("Alice", "typed while down");
    alice.wait_for_message("Alice", "typed while down");
    alice.wait_for("online again", "document.body.dataset.state === 'online'");
    // One more round trip: anything resent twice would be here by now.
    bob.type_line("Message", "over");
    alice.wait_for_message("Bob", "over");
    bob.wait_for_message("Bob", "over");
    for page in [&alice, &bob] {
        let messages = page.messages();
        for text in ["Alice: before", "Alice: typed while down", "Bob: over"] {
            let copies = messages.iter().filter(|m| *m == text).count();
            assert_eq!(copies, 1, "{text:?} in {messages:?}");
        }
        assert_eq!(
            page.eval("return document.querySelectorAll('#log .pending').length"),
            0
        );
    }
    drop((alice, bob));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn on_a_phone_nothing_scrolls_sideways_and_the_message_field_is_in_view() {
    let Some(browser) = Browser::start("phone") else {
        return;
    };
    let server = start(config());
    let url = format!("http://{}/", server.addr());
    let phone = browser.page("phone", &url, Screen::Phone);
    assert_eq!(phone.eval("return window.innerWidth"), 375);
    phone.join("A_rather_long_name_of_32_chars__");
    let long_word = "x".repeat(300);
    phone.type_line("Message", &long_word);
    phone.type_line(
        "Message",
        "a long line of ordinary words that has to wrap on a narrow screen",
    );
    phone.wait_for_message("A_rather_long_name_of_32_chars__", &long_word);
    assert_eq!(
        phone.eval(
            "const e = document.documentElement; \
             return [e.scrollWidth, document.body.scrollWidth, \
                     document.querySelector('#log').scrollWidth].map(w => w <= e.clientWidth)"
        ),
        json!([true, true, true]),
        "something is wider than the screen"
    );
    assert_eq!(
        phone.eval(
            "const r = document.querySelector('#message').getBoundingClientRect(); \
             return r.left >= 0 && r.right <= innerWidth && r.bottom <= innerHeight && r.top >= 0"
        ),
        true,
        "the Message field is on screen"
    );
    phone.assert_only_own_origin(server.addr());
    drop(phone);
    server.shutdown().unwrap();
}

// ---- The real server, for the restart ---------------------------------

/// A server process, ended like a crash (SIGKILL) when dropped, also when
/// a test fails.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `mioserver` on `addr` with `dir` as its working directory (so
/// whatever it writes stays there); returns it and its address.
fn spawn_server(dir: &Path, addr: SocketAddr) -> (Server, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mioserver"))
        .arg(addr.to_string())
        .current_dir(dir)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mioserver");
    let log = child.stderr.take().unwrap();
    let address = read_until(log, |line| {
        let rest = line.split("listening on ws://").nth(1)?;
        rest.split('/').next()?.parse().ok()
    });
    let server = Server(child);
    (server, address.expect("mioserver logs its address"))
}

/// Reads `output` line by line on a thread (which keeps draining it) until
/// `found` finds something in a line; gives up after [`START_TIMEOUT`].
fn read_until<T: Send + 'static>(
    output: impl Read + Send + 'static,
    found: impl Fn(&str) -> Option<T> + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            if let Some(value) = found(&line) {
                let _ = tx.send(value);
            }
        }
    });
    rx.recv_timeout(START_TIMEOUT).ok()
}

/// A fresh directory under the target directory's scratch space.
fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("web-{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---- A minimal WebDriver client ---------------------------------------

/// A chromedriver of our own; browsers are its sessions.
struct Browser {
    /// Its process, killed on drop.
    driver: Child,
    /// Where it listens.
    port: u16,
    /// Chromium's executable.
    chromium: PathBuf,
    /// The test's name, for screenshot files.
    test: &'static str,
    /// The browsers' profiles, removed on drop.
    profiles: PathBuf,
    /// Held for the test's duration: one browser test at a time.
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// The screen a page is shown on.
#[derive(Clone, Copy)]
enum Screen {
    Desktop,
    /// 375 by 740 CSS pixels, like a small phone.
    Phone,
}

/// An executable on the `PATH`.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

impl Browser {
    /// Starts chromedriver, or returns `None` (after saying so loudly) when
    /// Chromium is not installed; under `CI=true` that is a failure.
    fn start(test: &'static str) -> Option<Browser> {
        let turn = BROWSERS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]);
        let driver = find_program(&["chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            let missing = "chromium and chromium-driver are not installed";
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{missing} (CI=true: browser tests must run)"
            );
            eprintln!("SKIPPED: web::{test}: {missing} (apt-get install chromium chromium-driver)");
            return None;
        };
        // A free port: bound by us, released, then taken by chromedriver.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .unwrap()
            .port();
        // In a process group of its own: the browsers it starts are killed
        // with it, even when a session never finished starting.
        let mut child = Command::new(driver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let started = read_until(child.stdout.take().unwrap(), |line| {
            line.contains("started successfully").then_some(())
        });
        assert!(started.is_some(), "chromedriver did not start");
        Some(Browser {
            driver: child,
            port,
            chromium,
            test,
            profiles: temp_dir(test),
            _turn: turn,
        })
    }

    /// A new browser showing `url`.
    fn page(&self, name: &'static str, url: &str, screen: Screen) -> Page<'_> {
        let profile = self.profiles.join(name);
        let mut options = json!({
            "binary": self.chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--window-size=1280,800", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", profile.display()),
            ],
        });
        if let Screen::Phone = screen {
            options["mobileEmulation"] = json!({
                "deviceMetrics": {"width": 375, "height": 740, "pixelRatio": 2, "touch": true, "mobile": true}
            });
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "goog:loggingPrefs": {"performance": "ALL", "browser": "ALL"},
            "timeouts": {"script": WAIT_MS, "implicit": 0},
        }}});
        let session = webdriver(self.port, "POST", "/session", Some(capabilities))
            .unwrap_or_else(|err| panic!("a browser session: {err}"));
        let page = Page {
            browser: self,
            name,
            session: session["sessionId"].as_str().unwrap().to_owned(),
        };
        page.command("POST", "/url", json!({ "url": url }));
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill only sends a signal, to the group we created.
        unsafe { libc::kill(-(self.driver.id() as i32), libc::SIGKILL) };
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profiles);
    }
}

/// One browser (a WebDriver session) with the chat page.
struct Page<'b> {
    browser: &'b Browser,
    /// For screenshot files and failure messages.
    name: &'static str,
    session: String,
}

/// The helpers every wait and query may use, prepended to their scripts.
const HELPERS: &str = "\
    const users = () => [...document.querySelectorAll('#users button')]\
        .map(b => b.firstChild.textContent);\
    const notes = () => [...document.querySelectorAll('#log li.note .text')].map(e => e.textContent);\
    const messages = () => [...document.querySelectorAll('#log li.msg')]\
        .map(e => e.querySelector('.from').textContent + ': ' + e.querySelector('.text').textContent);";

impl Page<'_> {
    /// Sends a command of this session; panics (with screenshots) on an error.
    fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let body = (method == "POST").then_some(body);
        webdriver(self.browser.port, method, &path, body)
            .unwrap_or_else(|err| panic!("{}: {method} {path}: {err}", self.name))
    }

    /// Runs `body` (a function body, with [`HELPERS`]) in the page.
    fn eval(&self, body: &str) -> Value {
        let script = format!("{HELPERS}\n{body}");
        self.command(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
    }

    /// Waits until the JavaScript expression `condition` is true, checking
    /// it after every change of the page; fails after [`WAIT_MS`].
    fn wait_for(&self, what: &str, condition: &str) {
        let script = format!(
            "{HELPERS}
            const done = arguments[arguments.length - 1];
            const check = () => {{ try {{ return Boolean({condition}); }} catch (e) {{ return false; }} }};
            if (check()) return done(true);
            const observer = new MutationObserver(() => {{
                if (check()) {{ observer.disconnect(); done(true); }}
            }});
            observer.observe(document, {{subtree: true, childList: true, characterData: true, attributes: true}});"
        );
        let path = format!("/session/{}/execute/async", self.session);
        let body = json!({ "script": script, "args": [] });
        if let Err(err) = webdriver(self.browser.port, "POST", &path, Some(body)) {
            panic!("{}: waiting for {what} ({condition}): {err}", self.name);
        }
    }

    /// Waits for a message from `from` with exactly `text`, acknowledged
    /// (not a pending one).
    fn wait_for_message(&self, from: &str, text: &str) {
        let line = serde_json::to_string(&format!("{from}: {text}")).unwrap();
        self.wait_for(
            &format!("the message {line}"),
            &format!("messages().includes({line})"),
        );
    }

    /// Every acknowledged message shown, as `from: text`, top to bottom.
    fn messages(&self) -> Vec<String> {
        serde_json::from_value(self.eval("return messages()")).unwrap()
    }

    /// The element that `expression` evaluates to.
    fn element(&self, expression: &str) -> Value {
        let element = self.eval(&format!("return {expression}"));
        assert!(
            element.is_object(),
            "{}: no element {expression}",
            self.name
        );
        element
    }

    /// The element that has the keyboard focus.
    fn focused(&self) -> Value {
        self.element("document.activeElement")
    }

    /// Types `keys` into `element` (`\u{E007}` is Enter).
    fn send_keys(&self, element: &Value, keys: &str) {
        let id = element.as_object().unwrap().values().next().unwrap();
        let id = id.as_str().unwrap();
        self.command(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": keys }),
        );
    }

    /// Types `text` and Enter into the field labelled `label`.
    fn type_line(&self, label: &str, text: &str) {
        let field = self.element(&format!(
            "[...document.querySelectorAll('label')].find(l => l.textContent === '{label}').control"
        ));
        self.send_keys(&field, &format!("{text}\u{E007}"));
    }

    /// Joins as `name` with the Name field and waits for the welcome.
    fn join(&self, name: &str) {
        self.wait_for("the Name field", "document.activeElement.id === 'name'");
        self.type_line("Name", name);
        let online = serde_json::to_string(&format!("online as {name}")).unwrap();
        self.wait_for(
            "the welcome",
            &format!("document.querySelector('#status').textContent === {online}"),
        );
    }

    /// Checks that no dialog is open (an `alert` that ran would be).
    fn assert_no_alert(&self) {
        let path = format!("/session/{}/alert/text", self.session);
        match webdriver(self.browser.port, "GET", &path, None) {
            Err(err) => assert!(err.starts_with("no such alert"), "{err}"),
            Ok(text) => panic!("{}: an alert ran: {text}", self.name),
        }
    }

    /// Checks that every request the page made (WebSocket included, from
    /// the browser's network log) went to the chat's own address, and that
    /// the console shows no error (a refused CSP load or a script error).
    fn assert_only_own_origin(&self, addr: SocketAddr) {
        let http = format!("http://{addr}/");
        let ws = format!("ws://{addr}/");
        let log = self.command("POST", "/se/log", json!({ "type": "performance" }));
        let mut urls = Vec::new();
        for entry in log.as_array().unwrap() {
            let event: Value = serde_json::from_str(entry["message"].as_str().unwrap()).unwrap();
            let params = &event["message"]["params"];
            match event["message"]["method"].as_str() {
                // What the browser's own pages (its first, blank tab) load
                // is not the page's doing.
                Some("Network.requestWillBeSent")
                    if !params["documentURL"]
                        .as_str()
                        .is_some_and(|url| url.starts_with("chrome")) =>
                {
                    urls.push(params["request"]["url"].clone())
                }
                Some("Network.webSocketCreated") => urls.push(params["url"].clone()),
                _ => {}
            }
        }
        let urls: Vec<String> = serde_json::from_value(Value::Array(urls)).unwrap();
        assert!(urls.iter().any(|url| url.starts_with(&ws)), "{urls:?}");
        assert!(
            urls.iter().any(|url| url == &format!("{http}emoji.json")),
            "{urls:?}"
        );
        for url in &urls {
            assert!(
                url.starts_with(&http) || url.starts_with(&ws),
                "{}: {url}",
                self.name
            );
        }
        let resources = self.eval(
            "return performance.getEntries().map(e => e.name).filter(n => n.includes('://'))",
        );
        for url in resources.as_array().unwrap() {
            assert!(
                url.as_str().unwrap().starts_with(&http),
                "{}: {url}",
                self.name
            );
        }
        let console = self.command("POST", "/se/log", json!({ "type": "browser" }));
        let errors: Vec<&Value> = console
            .as_array()
            .unwrap()
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .collect();
        assert!(
            errors.is_empty(),
            "{}: console errors {errors:?}",
            self.name
        );
    }

    /// Saves a screenshot of the page to `path`.
    fn screenshot(&self, path: &Path) -> Result<(), String> {
        let url = format!("/session/{}/screenshot", self.session);
        let png = webdriver(self.browser.port, "GET", &url, None)?;
        let png = data_encoding::BASE64
            .decode(png.as_str().unwrap_or_default().as_bytes())
            .map_err(|err| err.to_string())?;
        std::fs::write(path, png).map_err(|err| err.to_string())
    }
}

impl Drop for Page<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
            let dir = target.join("web-screenshots");
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("{}-{}.png", self.browser.test, self.name));
            match self.screenshot(&path) {
                Ok(()) => eprintln!("screenshot of the failing page: {}", path.display()),
                Err(err) => eprintln!("no screenshot of {}: {err}", self.name),
            }
        }
        let path = format!("/session/{}", self.session);
        let _ = webdriver(self.browser.port, "DELETE", &path, None);
    }
}

/// One WebDriver request; the `value` of the answer, or the error's
/// `error: message`.
fn webdriver(port: u16, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
    let body = body.map(|body| body.to_string()).unwrap_or_default();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|err| err.to_string())?;
    // Longer than any wait in the page, so that its own timeout reports first.
    let timeout = Duration::from_millis(WAIT_MS) + START_TIMEOUT;
    stream.set_read_timeout(Some(timeout)).unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|err| err.to_string())?;
    let body = read_answer(&mut stream)?;
    let answer: Value = serde_json::from_slice(&body).map_err(|err| err.to_string())?;
    let value = answer["value"].clone();
    match value["error"].as_str() {
        Some(error) => Err(format!("{error}: {}", value["message"])),
        None => Ok(value),
    }
}

/// Reads one HTTP answer and returns its body. chromedriver does not always
/// close the connection right after answering, so the body ends where its
/// `Content-Length` says (or at the last chunk, or at the end of the stream).
fn read_answer(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut raw = Vec::new();
    let mut buf = [0; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).map_err(|err| err.to_string())?;
        raw.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let parsed = response.parse(&raw);
        let Ok(httparse::Status::Complete(head_len)) = parsed else {
            if n == 0 || parsed.is_err() {
                return Err(format!(
                    "not an HTTP answer: {}",
                    String::from_utf8_lossy(&raw)
                ));
            }
            continue;
        };
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
        };
        let body = &raw[head_len..];
        if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            if body.ends_with(b"0\r\n\r\n") || n == 0 {
                return Ok(dechunk(body));
            }
        } else if let Some(length) = header("content-length") {
            let length: usize = length.parse().map_err(|_| "bad Content-Length")?;
            if body.len() >= length {
                return Ok(body[..length].to_vec());
            }
        } else if n == 0 {
            return Ok(body.to_vec());
        }
        if n == 0 {
            return Err("the answer was cut short".to_owned());
        }
    }
}

/// The body of a `Transfer-Encoding: chunked` message.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..end]).unwrap_or("0");
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 || raw.len() < end + 2 + size {
            break;
        }
        body.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = &raw[(end + 4 + size).min(raw.len())..];
    }
    body
}
