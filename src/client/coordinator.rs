//! The coordinator: the client's main loop, on the main thread.
//!
//! It is shaped like rust-analyzer's main loop: [`Coordinator::next_event`]
//! waits on both channels with `select!`, and [`Coordinator::handle_event`]
//! is the one place where anything happens. All the client's state lives
//! here, owned by one thread, so none of it needs a lock (except the names
//! for completion, which the line editor reads).
//!
//! Requests go out in the order typed. They wait in one queue while the
//! client is not joined (connecting, choosing a name, reconnecting) and
//! while the pace holds them back, so the server's rate limit (the one
//! `welcome` announces, else the protocol's default) never refuses a
//! pasted or piped burst.
//!
//! Every `say` and `dm` carries a `cid`, a random id of 128 bits, and stays
//! in [`Coordinator::unacked`] until the server acknowledges it: with its
//! echo (a `message` or `dm` with that `cid`, live or in a resume's
//! history) or with an `error` naming it. After a reconnect the client
//! resumes with `since` and `epoch` and sends the unacknowledged ones again
//! with the same `cid`; the server posts a `cid` at most once, so a line
//! typed once is posted exactly once. A line the server could not store
//! (`error` `unavailable`) is sent again, with its `cid`, a little later.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::Local;
use crossbeam_channel::{select, Receiver, Sender};
use rustyline::ExternalPrinter;

use super::complete::Roster;
use super::connection::NetEvent;
use super::input::{Input, KEYS_HELP, NAME_QUESTION};
use super::render::Renderer;
use super::shortcode;
use crate::proto::command::{self, Command, Outcome, HELP};
use crate::proto::protocol::{
    name_key, validate_name, ChatMessage, Cid, ErrorCode, Request, ServerMessage,
};
use crate::proto::rate_limit::{RateLimit, TokenBucket};

/// The share of the server's rate limit (rate and burst) the client uses:
/// a fifth below it, so that a pasted or piped burst is paced rather than
/// refused, even when the network bunches frames together on their way.
const PACE_MARGIN: f64 = 0.8;

/// A full bucket that keeps the client under the server's `limit` (the
/// one `welcome` announced, else [`RateLimit::DEFAULT`]) by
/// [`PACE_MARGIN`]. No limit (a rate of 0) means no pacing.
fn pace(limit: RateLimit, now: Instant) -> TokenBucket {
    // At least one at once: a bucket without room for a token would never
    // send anything.
    let burst = (f64::from(limit.burst) * PACE_MARGIN) as u32;
    TokenBucket::new(limit.per_second * PACE_MARGIN, burst.max(1), now)
}

/// How long leaving waits for the socket thread to close the connection
/// politely; it gives up on the server after one second itself.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// How often, at most, a failed reconnection attempt is reported after the
/// first: a status line a minute says "still trying" without burying the
/// conversation under one line per attempt.
const OUTAGE_REPORT_EVERY: Duration = Duration::from_secs(60);

/// How long a line the server could not store (`error` `unavailable`: its
/// disk is full, its store unreachable) waits before it is sent again with
/// the same `cid`: long enough not to hammer a server in trouble, short
/// enough that a brief hiccup goes unnoticed.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(2);

/// How many `unavailable` answers in a row, with no line stored between
/// them, before the lines are given up: about half a minute of retries.
const MAX_UNAVAILABLE: u32 = 15;

/// How long a piped client whose input has ended keeps trying to reach the
/// server to deliver what is still unacknowledged. A restart takes seconds
/// and the retries back off to one every 30 s, so two minutes is several
/// attempts; a script must not hang forever on a server that is gone.
const PIPED_PATIENCE: Duration = Duration::from_secs(120);

/// Everything that can happen to the client.
#[derive(Debug)]
pub enum Event {
    /// From the input thread.
    Input(Input),
    /// From the socket thread.
    Net(NetEvent),
    /// The pace allows sending what is queued again.
    Paced,
    /// A piped client has waited [`PIPED_PATIENCE`] for the server.
    Patience,
    /// Lines the server could not store may be sent again.
    Retry,
}

/// A time when the connection is down.
#[derive(Debug, Clone, Copy)]
struct Outage {
    /// When the connection was lost, for the give-up rule of piped use.
    since: Instant,
    /// When a failed attempt was last reported, so that they are reported
    /// once a minute at most; `None` until the first one.
    reported: Option<Instant>,
    /// Failed attempts so far, for the status line.
    attempts: u32,
}

/// The client's state and main loop.
pub struct Coordinator {
    /// Lines from the user; `never()` once input has ended, so `select!`
    /// does not spin on a closed channel.
    input: Receiver<Input>,
    /// News from the socket thread.
    net: Receiver<NetEvent>,
    /// Where lines are shown: above the prompt, or on standard output.
    printer: Box<dyn ExternalPrinter>,
    /// Turns events into lines.
    renderer: Renderer<Local>,
    /// The names online, for completion.
    roster: Roster,
    /// A terminal (ask again, exit on quit) or a pipe (fail, exit once
    /// every line is answered).
    interactive: bool,
    /// The open connection's outgoing channel; `None` while disconnected.
    conn: Option<Sender<String>>,
    /// The name to join with, as the server last spelled it; `None` while
    /// waiting for the user to choose one.
    name: Option<String>,
    /// Whether the current connection has been welcomed: requests before
    /// that would be refused, so they wait in `queued`.
    joined: bool,
    /// Whether any connection was welcomed: the next welcome is then a
    /// reconnection, which resumes with `since`.
    welcomed_before: bool,
    /// The history the ids below belong to (the last `welcome`'s `epoch`):
    /// a resume names it, so that a server that lost its history does not
    /// take our `since` for one of its own ids.
    epoch: Option<String>,
    /// The largest id of a public message shown in this epoch: the `since`
    /// of the next resume.
    last_id: Option<u64>,
    /// The smallest id of a public message shown in this epoch: the
    /// `before` of `/history`.
    oldest_id: Option<u64>,
    /// Requests not sent yet, oldest first: typed while not joined (they
    /// go after the next welcome), held back by the pace, or to be sent
    /// again after a reconnect.
    queued: VecDeque<Request>,
    /// Keeps requests under the server's rate limit; fresh for each
    /// connection, like the server's own bucket.
    pace: TokenBucket,
    /// Fires when paced requests may go; `never()` when none wait.
    pace_timer: Receiver<Instant>,
    /// The `say`s and `dm`s sent and not yet acknowledged, oldest first,
    /// with their `cid`. They survive a lost connection: the next welcome
    /// sends them again.
    unacked: VecDeque<(Cid, Request)>,
    /// Lines the server answered `unavailable`, oldest first, waiting for
    /// `retry_timer` to send them again with the same `cid`.
    held: VecDeque<Request>,
    /// Fires when `held` lines may go again; `never()` when none wait.
    retry_timer: Receiver<Instant>,
    /// `unavailable` answers since a line was last acknowledged: past
    /// [`MAX_UNAVAILABLE`] the server is not expected to recover soon.
    unavailable_streak: u32,
    /// Requests without a `cid` (`who`, `nick`, `history`) sent on this
    /// connection and not yet answered (by `users`, `renamed`, `history` or
    /// an error without a `cid`).
    unanswered: usize,
    /// Lines that were refused, never sent, or lost with a connection; a
    /// piped run with any exits non-zero.
    failed: usize,
    /// Set while the connection is down.
    outage: Option<Outage>,
    /// Fires when a piped client has waited long enough for the server;
    /// `never()` otherwise.
    patience_timer: Receiver<Instant>,
    /// Whether the input has ended (Ctrl-D, end of the pipe, `/quit`).
    input_done: bool,
}

impl Coordinator {
    /// A coordinator that joins as `name`, with lines coming from
    /// `input` and the socket thread reporting on `net`.
    pub fn new(
        name: String,
        interactive: bool,
        color: bool,
        input: Receiver<Input>,
        net: Receiver<NetEvent>,
        printer: Box<dyn ExternalPrinter>,
        roster: Roster,
    ) -> Self {
        Coordinator {
            input,
            net,
            printer,
            renderer: Renderer::new(Local, Local::now().date_naive(), color),
            roster,
            interactive,
            conn: None,
            name: Some(name),
            joined: false,
            welcomed_before: false,
            epoch: None,
            last_id: None,
            oldest_id: None,
            queued: VecDeque::new(),
            pace: pace(RateLimit::DEFAULT, Instant::now()),
            pace_timer: crossbeam_channel::never(),
            unacked: VecDeque::new(),
            held: VecDeque::new(),
            retry_timer: crossbeam_channel::never(),
            unavailable_streak: 0,
            unanswered: 0,
            failed: 0,
            outage: None,
            patience_timer: crossbeam_channel::never(),
            input_done: false,
        }
    }

    /// Runs until the user leaves (or, piped, until every line is
    /// answered), starting with `first`, the socket thread's first news.
    pub fn run(mut self, first: NetEvent) -> ExitCode {
        let mut event = Event::Net(first);
        loop {
            if let ControlFlow::Break(code) = self.handle_event(event) {
                self.leave();
                return code;
            }
            event = self.next_event();
        }
    }

    /// Waits for the next thing to happen.
    fn next_event(&self) -> Event {
        select! {
            recv(self.input) -> input => Event::Input(input.unwrap_or(Input::End)),
            recv(self.net) -> net => Event::Net(net.unwrap_or_else(|_| {
                NetEvent::Unreachable("the connection thread stopped".to_owned())
            })),
            recv(self.pace_timer) -> _ => Event::Paced,
            recv(self.patience_timer) -> _ => Event::Patience,
            recv(self.retry_timer) -> _ => Event::Retry,
        }
    }

    /// Does what `event` calls for.
    fn handle_event(&mut self, event: Event) -> ControlFlow<ExitCode> {
        match event {
            Event::Input(Input::Line(line)) => self.typed(&line),
            Event::Input(Input::End) => self.input_ended(),
            Event::Net(NetEvent::Connected(conn)) => {
                self.conn = Some(conn);
                // Until the welcome says otherwise, the server is assumed
                // to have the default limit.
                self.pace = pace(RateLimit::DEFAULT, Instant::now());
                self.join();
                ControlFlow::Continue(())
            }
            Event::Net(NetEvent::Message(message)) => self.received(message),
            Event::Net(NetEvent::Down { reason, retry_in }) => self.down(&reason, retry_in),
            Event::Net(NetEvent::Unreachable(reason)) => {
                eprintln!("lineclient: {reason}");
                ControlFlow::Break(ExitCode::FAILURE)
            }
            Event::Paced => {
                self.pace_timer = crossbeam_channel::never();
                self.send_queued();
                ControlFlow::Continue(())
            }
            Event::Patience => {
                self.patience_timer = crossbeam_channel::never();
                self.finish_if_done()
            }
            Event::Retry => {
                self.retry_timer = crossbeam_channel::never();
                while let Some(request) = self.held.pop_back() {
                    self.queued.push_front(request);
                }
                self.send_queued();
                ControlFlow::Continue(())
            }
        }
    }

    /// The user typed `line`: a name when one is wanted (unless it is
    /// `/quit`), else a message or a command.
    fn typed(&mut self, line: &str) -> ControlFlow<ExitCode> {
        let command = command::parse(line);
        if self.name.is_none() && command != Some(Command::Quit) {
            self.named(line.trim());
            return ControlFlow::Continue(());
        }
        let Some(command) = command else {
            return ControlFlow::Continue(());
        };
        let command = command.map_text(|text| shortcode::expand(text).into_owned());
        match command.into_outcome(Some(new_cid()), self.oldest_id) {
            Outcome::Send(request) => self.send(request),
            Outcome::Help => self.show(
                HELP.lines()
                    .chain(KEYS_HELP.lines())
                    .map(str::to_owned)
                    .collect(),
            ),
            Outcome::Quit => return self.input_ended(),
            Outcome::Refused(why) => return self.not_sent(&why),
        }
        ControlFlow::Continue(())
    }

    /// The user chose a name.
    fn named(&mut self, name: &str) {
        match validate_name(name) {
            Ok(()) => {
                self.name = Some(name.to_owned());
                self.join();
            }
            Err(why) => {
                self.show_alert(&why);
                self.ask_name();
            }
        }
    }

    /// A line that is answered here and never sent.
    fn not_sent(&mut self, why: &str) -> ControlFlow<ExitCode> {
        self.failed += 1;
        self.show_alert(why);
        ControlFlow::Continue(())
    }

    /// Sends `request` now if the server would take it, else keeps it for
    /// later; either way after any request typed before it.
    fn send(&mut self, request: Request) {
        self.queued.push_back(request);
        self.send_queued();
    }

    /// Sends the queued requests, as far as the connection and the pace
    /// allow; the pace timer brings the rest. While lines wait to be sent
    /// again, what was typed after them waits behind them, so that the
    /// chat shows them in the order they were typed.
    fn send_queued(&mut self) {
        let Some(conn) = self.conn.as_ref().filter(|_| self.joined) else {
            return;
        };
        if !self.held.is_empty() {
            return;
        }
        while let Some(request) = self.queued.front() {
            let now = Instant::now();
            if !self.pace.try_take(now) {
                self.pace_timer = crossbeam_channel::after(self.pace.wait(now));
                return;
            }
            if conn.send(request.to_json()).is_err() {
                // The connection died a moment ago; the socket thread's
                // `Down` is on its way, and the next welcome sends the rest.
                return;
            }
            let request = self.queued.pop_front().expect("the front was just read");
            match cid_of(&request) {
                Some(cid) => self.unacked.push_back((cid.clone(), request)),
                None => self.unanswered += 1,
            }
        }
    }

    /// Joins, once there is both a connection and a name. A rejoin asks
    /// for the public messages after the last one shown, in the history
    /// they belong to, so none is missed or shown twice.
    fn join(&mut self) {
        let (Some(conn), Some(name)) = (&self.conn, &self.name) else {
            return;
        };
        let (since, epoch) = if self.welcomed_before {
            (Some(self.last_id.unwrap_or(0)), self.epoch.clone())
        } else {
            (None, None)
        };
        let join = Request::Join {
            name: name.clone(),
            since,
            epoch,
        };
        // A closed channel means the connection is gone; `Down` follows.
        let _ = conn.send(join.to_json());
        // The server counts every frame, the join included. The join goes
        // whatever the pace: nothing can be sent before it anyway.
        self.pace.try_take(Instant::now());
    }

    /// Something from the server.
    fn received(&mut self, message: ServerMessage) -> ControlFlow<ExitCode> {
        let me = match &message {
            ServerMessage::Welcome { name, .. } => name.clone(),
            _ => self.name.clone().unwrap_or_default(),
        };
        if let ServerMessage::Error { code, message, .. } = &message {
            if !self.joined {
                return self.refused(*code, message);
            }
        }
        if let ServerMessage::Welcome {
            history, recovered, ..
        } = &message
        {
            if self.welcomed_before {
                let notice = reconnected(*recovered, history.len());
                self.show(vec![self.renderer.notice(&notice)]);
            }
        }
        let lines = self.renderer.server_message(&message, &me);
        self.show(lines);
        let is_me = |name: &str| name_key(name) == name_key(&me);
        match message {
            ServerMessage::Welcome {
                name,
                users,
                history,
                epoch,
                recovered,
                rate_limit,
                ..
            } => {
                if let Some(limit) = rate_limit {
                    // The server's own limit, from the join on: its bucket
                    // has counted the join, so this one does too.
                    let now = Instant::now();
                    self.pace = pace(*limit, now);
                    self.pace.try_take(now);
                }
                self.joined = true;
                self.welcomed_before = true;
                self.name = Some(name);
                self.roster.set(&users.names());
                if self.epoch.as_ref() != Some(&epoch) {
                    // Ids of another history mean nothing in this one.
                    self.last_id = None;
                    self.epoch = Some(epoch);
                    self.oldest_id = None;
                } else if recovered == Some(false) {
                    // A gap lies before this history: `/history` pages
                    // back from its start, through the gap.
                    self.oldest_id = None;
                }
                for message in &history {
                    self.seen(message);
                }
                self.back_online();
            }
            ServerMessage::Message(message) => self.seen(&message),
            ServerMessage::Dm { cid, .. } => {
                if self.acknowledged(cid.as_ref()) {
                    self.unavailable_streak = 0;
                }
            }
            ServerMessage::Joined { name, .. } => self.roster.add(&name),
            ServerMessage::History { messages } => {
                if let Some(first) = messages.first() {
                    self.oldest_id = Some(self.oldest_id.map_or(first.id, |id| id.min(first.id)));
                }
                self.answered();
            }
            ServerMessage::Left { name, .. } => self.roster.remove(&name),
            ServerMessage::Renamed { from, to, .. } => {
                self.roster.rename(&from, &to);
                if is_me(&from) {
                    self.name = Some(to);
                    self.answered();
                }
            }
            ServerMessage::Users { users } => {
                self.roster.set(&users.names());
                self.answered();
            }
            ServerMessage::Error { code, cid, .. } => {
                if code == ErrorCode::Unavailable && self.hold(cid.as_ref()) {
                    let seconds = UNAVAILABLE_RETRY.as_secs();
                    self.show_alert(&format!("not stored; trying again in {seconds} s"));
                } else {
                    self.failed += 1;
                    if !self.acknowledged(cid.as_ref()) {
                        self.answered_by_error();
                    }
                }
            }
        }
        self.finish_if_done()
    }

    /// A public message was shown, live or from a history: it moves the
    /// bounds of what was seen, and acknowledges our own.
    fn seen(&mut self, message: &ChatMessage) {
        self.last_id = Some(self.last_id.map_or(message.id, |id| id.max(message.id)));
        self.oldest_id = Some(self.oldest_id.map_or(message.id, |id| id.min(message.id)));
        if self.acknowledged(message.cid.as_ref()) {
            self.unavailable_streak = 0;
        }
    }

    /// The server answered the request sent with `cid`, if it is one of
    /// ours that waits; whether it was.
    fn acknowledged(&mut self, cid: Option<&Cid>) -> bool {
        self.take_unacked(cid).is_some()
    }

    /// Removes the line sent with `cid` from those waiting for an answer.
    fn take_unacked(&mut self, cid: Option<&Cid>) -> Option<Request> {
        let at = self
            .unacked
            .iter()
            .position(|(sent, _)| Some(sent) == cid)?;
        self.unacked.remove(at).map(|(_, request)| request)
    }

    /// The server could not store the line sent with `cid` and nobody got
    /// it: keep it to send again with the same `cid` after
    /// [`UNAVAILABLE_RETRY`], unless the server has been failing for too
    /// long. Whether it is kept.
    fn hold(&mut self, cid: Option<&Cid>) -> bool {
        if self.unavailable_streak >= MAX_UNAVAILABLE {
            return false;
        }
        let Some(request) = self.take_unacked(cid) else {
            return false;
        };
        self.unavailable_streak += 1;
        self.held.push_back(request);
        self.retry_timer = crossbeam_channel::after(UNAVAILABLE_RETRY);
        true
    }

    /// An error without a `cid`. It answers a request without one when any
    /// waits; else the oldest `say` or `dm` (the server refuses a request
    /// it cannot read, or one over the rate limit, before seeing its
    /// `cid`), which is not sent again.
    fn answered_by_error(&mut self) {
        if self.unanswered > 0 {
            self.unanswered -= 1;
        } else {
            self.unacked.pop_front();
        }
    }

    /// Welcomed after a connection: the outage is over, and what was sent
    /// but not acknowledged goes again, first and with the same `cid`s.
    fn back_online(&mut self) {
        self.outage = None;
        self.patience_timer = crossbeam_channel::never();
        while let Some((_, request)) = self.unacked.pop_back() {
            self.queued.push_front(request);
        }
        self.send_queued();
    }

    /// The server refused our `join`. On a terminal, ask for another name;
    /// piped, there is nobody to ask.
    fn refused(&mut self, code: ErrorCode, message: &str) -> ControlFlow<ExitCode> {
        let name = self.name.take().unwrap_or_default();
        if self.interactive {
            self.show_alert(&format!("{code}: {message}"));
            self.ask_name();
            ControlFlow::Continue(())
        } else {
            eprintln!("lineclient: cannot join as {name:?}: {code}: {message}");
            ControlFlow::Break(ExitCode::FAILURE)
        }
    }

    /// A request without a `cid` got its answer.
    fn answered(&mut self) {
        self.unanswered = self.unanswered.saturating_sub(1);
    }

    /// The connection is down (or could not be made again). The first
    /// failure to reconnect is shown, then one status line a minute.
    fn down(&mut self, reason: &str, retry_in: Duration) -> ControlFlow<ExitCode> {
        let now = Instant::now();
        let seconds = retry_in.as_secs_f64();
        let was_connected = self.conn.take().is_some();
        self.joined = false;
        let outage = self.outage.get_or_insert(Outage {
            since: now,
            reported: None,
            attempts: 0,
        });
        let report = if was_connected {
            Some(format!("{reason}; reconnecting in {seconds:.1} s"))
        } else {
            outage.attempts += 1;
            match outage.reported {
                None => Some(format!("{reason}; still trying")),
                Some(at) if now.duration_since(at) >= OUTAGE_REPORT_EVERY => {
                    let minutes = now.duration_since(outage.since).as_secs() / 60;
                    Some(format!(
                        "still cannot connect after {minutes} min ({} attempts); next try in {seconds:.1} s",
                        outage.attempts
                    ))
                }
                Some(_) => None,
            }
        };
        if !was_connected && report.is_some() {
            outage.reported = Some(now);
        }
        let since = outage.since;
        if let Some(report) = report {
            self.show_alert(&report);
        }
        if self.unanswered > 0 {
            // Commands are not resent: the answer to a `who` or a `nick`
            // from before the outage would mean little after it.
            let lost = std::mem::take(&mut self.unanswered);
            self.failed += lost;
            self.show_alert(&format!("{lost} command(s) sent just before got no answer"));
        }
        if !self.interactive {
            let left = PIPED_PATIENCE.saturating_sub(now.duration_since(since));
            self.patience_timer = crossbeam_channel::after(left);
        }
        self.finish_if_done()
    }

    /// Input ended. On a terminal the user wants out now; piped, the lines
    /// sent must be answered first.
    fn input_ended(&mut self) -> ControlFlow<ExitCode> {
        self.input_done = true;
        self.input = crossbeam_channel::never();
        if self.interactive {
            return ControlFlow::Break(ExitCode::SUCCESS);
        }
        self.finish_if_done()
    }

    /// Ends a piped run once input is over and nothing is outstanding: no
    /// line unsent or unacknowledged, no command unanswered, and no join
    /// either, so that a refused name is never a success. While the
    /// connection is down it waits for the server to come back, for
    /// [`PIPED_PATIENCE`] at most: then what is left is given up.
    fn finish_if_done(&mut self) -> ControlFlow<ExitCode> {
        if !self.input_done {
            return ControlFlow::Continue(());
        }
        let joining = self.conn.is_some() && !self.joined;
        let lines = self.queued.len() + self.unacked.len() + self.held.len();
        if lines > 0 || self.unanswered > 0 || joining {
            let waited_enough = self.conn.is_none()
                && self
                    .outage
                    .is_some_and(|outage| outage.since.elapsed() >= PIPED_PATIENCE);
            if !waited_enough {
                return ControlFlow::Continue(());
            }
            self.failed += lines;
            eprintln!(
                "lineclient: {lines} line(s) not delivered: the server did not come back within {} s",
                PIPED_PATIENCE.as_secs()
            );
        }
        ControlFlow::Break(if self.failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }

    /// Asks the user for a name; the next line typed is the answer.
    fn ask_name(&mut self) {
        self.show(vec![self.renderer.notice(NAME_QUESTION)]);
    }

    /// Shows `why` as an alert line.
    fn show_alert(&mut self, why: &str) {
        self.show(vec![self.renderer.alert(why)]);
    }

    /// Shows `lines`, in one write so the prompt is redrawn once.
    fn show(&mut self, lines: Vec<String>) {
        if lines.is_empty() {
            return;
        }
        let mut text = lines.join("\n");
        text.push('\n');
        // Nowhere left to report a failure to print; the user will notice.
        let _ = self.printer.print(text);
    }

    /// Closes the connection politely, waiting (a bounded time) for the
    /// socket thread to finish, so the server sees a normal close.
    fn leave(mut self) {
        if self.conn.take().is_some() {
            let deadline = Instant::now() + LEAVE_TIMEOUT;
            // Events still arriving are dropped: the user has left. The
            // channel closes when the socket thread is done.
            while self.net.recv_deadline(deadline).is_ok() {}
        }
    }
}

/// A fresh `cid`: 128 bits from the thread's random generator (a CSPRNG
/// seeded by the operating system), in hex. Cids are compared across all
/// users, so they must not collide, and the server answers a repeated DM
/// `cid` with the DM itself, so they must not be guessable either: a
/// counter or the time would be both.
fn new_cid() -> Cid {
    Cid::new(format!("{:032x}", rand::random::<u128>())).expect("32 hex digits are a valid cid")
}

/// The `cid` a request carries, if any.
fn cid_of(request: &Request) -> Option<&Cid> {
    match request {
        Request::Say { cid, .. } | Request::Dm { cid, .. } => cid.as_ref(),
        _ => None,
    }
}

/// The notice before a reconnection's welcome: how much was missed, or
/// that not all of it could be had.
fn reconnected(recovered: Option<bool>, missed: usize) -> String {
    match recovered {
        Some(true) if missed == 1 => "reconnected (missed 1 message)".to_owned(),
        Some(true) => format!("reconnected (missed {missed} messages)"),
        Some(false) => format!(
            "reconnected, but some history could not be recovered: messages sent while you were away may be missing (showing the last {missed})"
        ),
        None => "reconnected".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use serde_json::{json, Value};

    use super::*;

    /// What the coordinator printed, a line at a time, times replaced by
    /// `[HH:MM]` (the renderer shows local time).
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<Vec<String>>>);

    impl ExternalPrinter for Screen {
        fn print(&mut self, msg: String) -> rustyline::Result<()> {
            let mut lines = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            for line in msg.lines() {
                let timed = line.len() >= 7 && line.as_bytes()[0] == b'[' && &line[6..7] == "]";
                lines.push(if timed {
                    format!("[HH:MM]{}", &line[7..])
                } else {
                    line.to_owned()
                });
            }
            Ok(())
        }
    }

    /// A coordinator wired to channels the test holds, as the threads would
    /// hold them.
    struct Harness {
        coordinator: Coordinator,
        /// What it printed, not yet looked at.
        screen: Screen,
        /// The outgoing frames of the current connection.
        frames: Receiver<String>,
        /// Kept so that the coordinator's channels stay open.
        _input: Sender<Input>,
        _net: Sender<NetEvent>,
    }

    /// The epoch of the test server's history.
    const EPOCH: &str = "e1";

    /// When every test message was sent.
    const TS: &str = "2026-11-25T08:00:00.000Z";

    impl Harness {
        /// A client joining as `bot`, piped or on a terminal, not connected.
        fn new(interactive: bool) -> Harness {
            let (input_sender, input) = crossbeam_channel::unbounded();
            let (net_sender, net) = crossbeam_channel::unbounded();
            let screen = Screen::default();
            let mut coordinator = Coordinator::new(
                "bot".into(),
                interactive,
                false,
                input,
                net,
                Box::new(screen.clone()),
                Roster::default(),
            );
            // "Today" is the day of the test messages, wherever the test
            // runs, so that no day line comes between them.
            let sent: chrono::DateTime<Local> = TS.parse().expect("a valid time");
            coordinator.renderer = Renderer::new(Local, sent.date_naive(), false);
            Harness {
                coordinator,
                screen,
                frames: crossbeam_channel::never(),
                _input: input_sender,
                _net: net_sender,
            }
        }

        /// The socket thread connected; returns the join it sent.
        fn connect(&mut self) -> Value {
            let (sender, frames) = crossbeam_channel::unbounded();
            self.frames = frames;
            let flow = self.event(Event::Net(NetEvent::Connected(sender)));
            assert_eq!(flow, ControlFlow::Continue(()));
            let mut sent = self.sent();
            assert_eq!(sent.len(), 1, "{sent:?}");
            sent.remove(0)
        }

        /// The server sent `message`; how the client goes on.
        fn server_flow(&mut self, message: Value) -> ControlFlow<ExitCode> {
            let message = serde_json::from_value(message).expect("a server message");
            self.event(Event::Net(NetEvent::Message(message)))
        }

        /// The server sent `message`, and the client goes on.
        fn server(&mut self, message: Value) {
            assert_eq!(self.server_flow(message), ControlFlow::Continue(()));
        }

        /// The connection was lost, or an attempt to reconnect failed.
        fn down(&mut self, reason: &str) {
            let flow = self.event(Event::Net(NetEvent::Down {
                reason: reason.into(),
                retry_in: Duration::from_millis(500),
            }));
            assert_eq!(flow, ControlFlow::Continue(()));
        }

        /// The user typed `line`; how the client goes on.
        fn typed_flow(&mut self, line: &str) -> ControlFlow<ExitCode> {
            self.event(Event::Input(Input::Line(line.into())))
        }

        /// The user typed `line`, and the client goes on.
        fn typed(&mut self, line: &str) {
            assert_eq!(self.typed_flow(line), ControlFlow::Continue(()));
        }

        /// The input ended, and the client waits for acknowledgements.
        fn end(&mut self) {
            let flow = self.event(Event::Input(Input::End));
            assert_eq!(flow, ControlFlow::Continue(()), "lines still wait");
        }

        fn event(&mut self, event: Event) -> ControlFlow<ExitCode> {
            self.coordinator.handle_event(event)
        }

        /// The frames sent since the last look, as JSON.
        fn sent(&self) -> Vec<Value> {
            self.frames
                .try_iter()
                .map(|frame| serde_json::from_str(&frame).expect("frames are JSON"))
                .collect()
        }

        /// The lines printed since the last look.
        fn printed(&self) -> Vec<String> {
            std::mem::take(&mut *self.screen.0.lock().unwrap())
        }
    }

    /// A `welcome` for `bot` with `history` (`(id, from, text, cid)`).
    fn welcome(history: &[(u64, &str, &str, Option<&str>)], recovered: Option<bool>) -> Value {
        let history: Vec<Value> = history
            .iter()
            .map(|&(id, from, text, cid)| message(id, from, text, cid))
            .collect();
        let mut welcome = json!({
            "type": "welcome", "name": "bot", "users": ["bot"], "history": history,
            "server": "mioserver/0.1.0", "epoch": EPOCH,
        });
        if let Some(recovered) = recovered {
            welcome["recovered"] = json!(recovered);
        }
        welcome
    }

    /// A public `message`.
    fn message(id: u64, from: &str, text: &str, cid: Option<&str>) -> Value {
        let mut message = json!({
            "type": "message", "id": id, "ts": TS,
            "from": from, "text": text,
        });
        if let Some(cid) = cid {
            message["cid"] = json!(cid);
        }
        message
    }

    /// The `cid` of a sent `say` or `dm`, checked to be 128 bits in hex.
    fn cid(frame: &Value) -> String {
        let cid = frame["cid"].as_str().expect("a say or dm carries a cid");
        assert_eq!(cid.len(), 32, "{cid}");
        assert!(cid.bytes().all(|b| b.is_ascii_hexdigit()), "{cid}");
        cid.to_owned()
    }

    #[test]
    fn lines_typed_early_go_after_the_welcome_each_with_its_own_cid() {
        let mut h = Harness::new(false);
        h.typed("hello :smile:");
        h.typed("dm Ann psst");
        assert_eq!(h.connect(), json!({"type": "join", "name": "bot"}));
        assert!(h.sent().is_empty(), "nothing before the welcome");
        h.server(welcome(&[], None));
        assert_eq!(h.printed(), ["--- 1 online: bot ---"]);
        let sent = h.sent();
        assert_eq!(sent.len(), 2);
        assert_eq!(
            (&sent[0]["type"], &sent[0]["text"]),
            (&json!("say"), &json!("hello 😄"))
        );
        assert_eq!(
            (&sent[1]["type"], &sent[1]["to"]),
            (&json!("dm"), &json!("Ann"))
        );
        assert_ne!(cid(&sent[0]), cid(&sent[1]));
    }

    #[test]
    fn a_piped_run_ends_once_every_line_is_acknowledged() {
        let mut h = Harness::new(false);
        h.connect();
        h.server(welcome(&[], None));
        h.typed("one");
        h.typed("dm Ann two");
        let sent = h.sent();
        h.end();
        let say = message(1, "bot", "one", Some(&cid(&sent[0])));
        assert_eq!(h.server_flow(say), ControlFlow::Continue(()));
        let dm = json!({
            "type": "dm", "id": 2, "ts": TS,
            "from": "bot", "to": "Ann", "text": "two", "cid": cid(&sent[1]),
        });
        assert_eq!(h.server_flow(dm), ControlFlow::Break(ExitCode::SUCCESS));
    }

    #[test]
    fn an_error_naming_a_cid_answers_that_line_and_fails_the_run() {
        let mut h = Harness::new(false);
        h.connect();
        h.server(welcome(&[], None));
        h.printed();
        h.typed("dm Nobody hi");
        h.typed("fine");
        let sent = h.sent();
        h.end();
        let error = json!({
            "type": "error", "code": "unknown_user", "message": "nobody called Nobody",
            "cid": cid(&sent[0]),
        });
        assert_eq!(h.server_flow(error), ControlFlow::Continue(()));
        assert_eq!(h.printed(), ["! unknown_user: nobody called Nobody"]);
        let echo = message(1, "bot", "fine", Some(&cid(&sent[1])));
        assert_eq!(h.server_flow(echo), ControlFlow::Break(ExitCode::FAILURE));
    }

    #[test]
    fn a_burst_goes_at_the_pace_the_welcome_announces() {
        // (announced limit, lines sent at once of 40 typed before the
        // welcome: four fifths of the burst, less the join's token; the
        // time one token then takes, 1 / (0.8 × rate)). The rates are low
        // enough that no token comes back while the test runs.
        let cases = [
            (None, 15, Duration::from_millis(125)),
            (
                Some(json!({"per_second": 10.0, "burst": 20})),
                15,
                Duration::from_millis(125),
            ),
            (
                Some(json!({"per_second": 2.0, "burst": 5})),
                3,
                Duration::from_millis(625),
            ),
            (
                Some(json!({"per_second": 1.0, "burst": 1})),
                0,
                Duration::from_millis(1250),
            ),
            (
                Some(json!({"per_second": 0.0, "burst": 0})),
                40,
                Duration::ZERO,
            ),
        ];
        for (limit, at_once, per_token) in cases {
            let mut h = Harness::new(false);
            h.connect();
            for n in 0..40 {
                h.typed(&format!("line {n}"));
            }
            assert!(h.sent().is_empty(), "nothing before the welcome");
            let mut welcome = welcome(&[], None);
            if let Some(limit) = &limit {
                welcome["rate_limit"] = limit.clone();
            }
            h.server(welcome);
            let sent = h.sent();
            assert_eq!(sent.len(), at_once, "{limit:?}");
            // In the order typed; the rest wait for the pace timer.
            for (n, request) in sent.iter().enumerate() {
                assert_eq!(request["text"], format!("line {n}"));
            }
            // The pace timer is set for the next token, no later.
            let wait = h.coordinator.pace.wait(Instant::now());
            assert!(wait <= per_token, "{limit:?}: {wait:?}");
        }
    }

    #[test]
    fn a_line_the_server_could_not_store_is_sent_again_with_its_cid() {
        let mut h = Harness::new(false);
        h.connect();
        // No pacing: the retries below come faster than any person types.
        h.coordinator.pace = TokenBucket::new(0.0, 0, Instant::now());
        h.server(welcome(&[], None));
        h.printed();
        h.typed("keep me");
        let sent = h.sent();
        h.end();
        let unavailable = json!({
            "type": "error", "code": "unavailable", "message": "the disk is full",
            "cid": cid(&sent[0]),
        });
        h.server(unavailable.clone());
        assert_eq!(
            h.printed(),
            [
                "! unavailable: the disk is full",
                "! not stored; trying again in 2 s"
            ]
        );
        assert!(h.sent().is_empty(), "not at once");
        assert_eq!(h.event(Event::Retry), ControlFlow::Continue(()));
        assert_eq!(h.sent(), sent, "the same request, the same cid");
        // A server that keeps failing is given up on, and the run fails.
        for _ in 1..MAX_UNAVAILABLE {
            h.server(unavailable.clone());
            assert_eq!(h.event(Event::Retry), ControlFlow::Continue(()));
            assert_eq!(h.sent(), sent);
        }
        assert_eq!(
            h.server_flow(unavailable),
            ControlFlow::Break(ExitCode::FAILURE)
        );
    }

    #[test]
    fn a_line_typed_while_another_waits_to_be_sent_again_follows_it() {
        let mut h = Harness::new(false);
        h.connect();
        h.coordinator.pace = TokenBucket::new(0.0, 0, Instant::now());
        h.server(welcome(&[], None));
        h.typed("first");
        let first = h.sent();
        h.server(json!({
            "type": "error", "code": "unavailable", "message": "Redis is away",
            "cid": cid(&first[0]),
        }));
        h.typed("second");
        assert!(h.sent().is_empty(), "not before the line it follows");
        assert_eq!(h.event(Event::Retry), ControlFlow::Continue(()));
        let sent = h.sent();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0], first[0], "the same request, the same cid");
        assert_eq!(sent[1]["text"], "second");
    }

    #[test]
    fn after_a_reconnect_it_resumes_and_resends_only_what_was_not_acknowledged() {
        let mut h = Harness::new(false);
        h.connect();
        h.server(welcome(&[(5, "Ann", "earlier", None)], None));
        for line in ["a", "b", "c"] {
            h.typed(line);
        }
        let sent = h.sent();
        let cids: Vec<String> = sent.iter().map(cid).collect();
        h.server(message(6, "bot", "a", Some(&cids[0])));
        h.printed();

        h.down("connection lost: reset");
        assert_eq!(
            h.printed(),
            ["! connection lost: reset; reconnecting in 0.5 s"]
        );
        assert!(h.sent().is_empty());
        // The resume names the largest id seen and its epoch.
        assert_eq!(
            h.connect(),
            json!({"type": "join", "name": "bot", "since": 6, "epoch": EPOCH})
        );
        // "b" reached the server before the connection broke: its echo
        // comes in the resume's history. "c" did not.
        h.server(welcome(&[(7, "bot", "b", Some(&cids[1]))], Some(true)));
        assert_eq!(
            h.printed(),
            [
                "* reconnected (missed 1 message)",
                "[HH:MM] bot: b",
                "--- 1 online: bot ---"
            ]
        );
        let resent = h.sent();
        assert_eq!(resent.len(), 1, "{resent:?}");
        assert_eq!(resent[0], sent[2], "the same request, the same cid");
        h.end();
        let echo = message(8, "bot", "c", Some(&cids[2]));
        assert_eq!(h.server_flow(echo), ControlFlow::Break(ExitCode::SUCCESS));
    }

    #[test]
    fn a_history_that_could_not_be_recovered_is_said_plainly() {
        let mut h = Harness::new(false);
        h.connect();
        h.server(welcome(&[(40, "Ann", "old", None)], None));
        h.printed();
        h.down("connection lost");
        h.connect();
        let mut other = welcome(&[(2, "Ann", "new", None)], Some(false));
        other["epoch"] = json!("e2");
        h.server(other);
        let printed = h.printed();
        assert!(
            printed[1].starts_with("* reconnected, but some history could not be recovered"),
            "{printed:?}"
        );
        // Ids of the old history mean nothing now: the next resume counts
        // from the new one, and so does /history.
        h.typed("/history 5");
        assert_eq!(
            h.sent(),
            [json!({"type": "history", "before": 2, "limit": 5})]
        );
        h.down("connection lost");
        assert_eq!(
            h.connect(),
            json!({"type": "join", "name": "bot", "since": 2, "epoch": "e2"})
        );
    }

    #[test]
    fn failed_attempts_are_reported_once_then_once_a_minute() {
        let mut h = Harness::new(true);
        h.connect();
        h.server(welcome(&[], None));
        h.printed();
        h.down("connection lost: reset");
        assert_eq!(
            h.printed(),
            ["! connection lost: reset; reconnecting in 0.5 s"]
        );
        h.down("cannot connect to ws://127.0.0.1:1/: refused");
        assert_eq!(
            h.printed(),
            ["! cannot connect to ws://127.0.0.1:1/: refused; still trying"]
        );
        for _ in 0..5 {
            h.down("cannot connect to ws://127.0.0.1:1/: refused");
        }
        assert_eq!(h.printed(), Vec::<String>::new());
        h.connect();
        h.server(welcome(&[], Some(true)));
        assert_eq!(
            h.printed(),
            ["* reconnected (missed 0 messages)", "--- 1 online: bot ---"]
        );
    }

    #[test]
    fn history_pages_back_from_the_oldest_message_seen() {
        let mut h = Harness::new(true);
        h.connect();
        h.server(welcome(
            &[(3, "Ann", "x", None), (4, "Ann", "y", None)],
            None,
        ));
        h.printed();
        h.typed("/history 2");
        assert_eq!(
            h.sent(),
            [json!({"type": "history", "before": 3, "limit": 2})]
        );
        let page = json!({"type": "history", "messages": [message(1, "Ann", "older", None)]});
        h.server(page);
        assert_eq!(
            h.printed(),
            [
                "--- 1 older message ---",
                "[HH:MM] Ann: older",
                "--- end of older messages ---"
            ]
        );
        h.typed("/history");
        assert_eq!(
            h.sent(),
            [json!({"type": "history", "before": 1, "limit": 100})]
        );
    }

    #[test]
    fn help_and_mistakes_are_answered_here_and_never_sent() {
        let mut h = Harness::new(true);
        h.connect();
        h.server(welcome(&[], None));
        h.printed();
        h.typed("/help");
        let help: Vec<String> = HELP
            .lines()
            .chain(KEYS_HELP.lines())
            .map(str::to_owned)
            .collect();
        assert_eq!(h.printed(), help);
        h.typed("/frobnicate");
        assert_eq!(
            h.printed(),
            ["! unknown command /frobnicate (/help lists them)"]
        );
        assert!(h.sent().is_empty());
        assert_eq!(h.typed_flow("/quit"), ControlFlow::Break(ExitCode::SUCCESS));
    }
}
