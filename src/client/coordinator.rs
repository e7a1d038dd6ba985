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
//! while the pace holds them back, so the server's rate limit never
//! refuses a pasted or piped burst.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chrono::Local;
use crossbeam_channel::{select, Receiver, Sender};
use rustyline::ExternalPrinter;

use super::complete::Roster;
use super::connection::NetEvent;
use super::input::{Input, NAME_QUESTION};
use super::render::Renderer;
use super::shortcode;
use crate::proto::command::{self, Command, HELP};
use crate::proto::protocol::Request;
use crate::proto::protocol::{name_key, validate_name, ErrorCode, ServerMessage};
use crate::proto::rate_limit::TokenBucket;

/// Requests per second the client sends at most: a fifth below the
/// server's default limit (10 a second, bursts of 20), so that a pasted or
/// piped burst is paced rather than refused, even when the network bunches
/// frames together on their way.
const PACE_RATE: f64 = 8.0;

/// Requests the client sends at once before pacing starts (the server's
/// default burst is 20; the same margin as [`PACE_RATE`]).
const PACE_BURST: u32 = 16;

/// How long a paced request waits before the next try: the time the
/// bucket takes to regain one token, 1 / [`PACE_RATE`].
const PACE_RETRY: Duration = Duration::from_millis(125);

/// How long leaving waits for the socket thread to close the connection
/// politely; it gives up on the server after one second itself.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything that can happen to the client.
#[derive(Debug)]
pub enum Event {
    /// From the input thread.
    Input(Input),
    /// From the socket thread.
    Net(NetEvent),
    /// The pace allows sending what is queued again.
    Paced,
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
    /// The id of the latest public message shown. The latest, not the
    /// largest: a server restarted without its history numbers from 1
    /// again, and `since` must follow it.
    last_id: Option<u64>,
    /// Requests not sent yet, oldest first: typed while not joined (they
    /// go after the next welcome), or held back by the pace.
    queued: VecDeque<Request>,
    /// Keeps requests under the server's rate limit; fresh for each
    /// connection, like the server's own bucket.
    pace: TokenBucket,
    /// Fires when paced requests may go; `never()` when none wait.
    pace_timer: Receiver<Instant>,
    /// Requests sent on this connection and not yet answered (by their
    /// echo, the `users` list, the `renamed` notice, or an error). The
    /// server answers every request, in order.
    unanswered: usize,
    /// Lines that were refused, never sent, or lost with a connection; a
    /// piped run with any exits non-zero.
    failed: usize,
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
            last_id: None,
            queued: VecDeque::new(),
            pace: TokenBucket::new(PACE_RATE, PACE_BURST, Instant::now()),
            pace_timer: crossbeam_channel::never(),
            unanswered: 0,
            failed: 0,
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
        }
    }

    /// Does what `event` calls for.
    fn handle_event(&mut self, event: Event) -> ControlFlow<ExitCode> {
        match event {
            Event::Input(Input::Line(line)) => self.typed(&line),
            Event::Input(Input::End) => self.input_ended(),
            Event::Net(NetEvent::Connected(conn)) => {
                self.conn = Some(conn);
                self.pace = TokenBucket::new(PACE_RATE, PACE_BURST, Instant::now());
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
        }
    }

    /// The user typed `line`: a name when one is wanted (unless it is
    /// `/quit`), else a message or a command.
    fn typed(&mut self, line: &str) -> ControlFlow<ExitCode> {
        if self.name.is_none() && command::parse(line) != Some(Command::Quit) {
            self.named(line.trim());
            return ControlFlow::Continue(());
        }
        let request = match command::parse(line) {
            None => return ControlFlow::Continue(()),
            Some(Command::Say(text)) => Request::Say {
                text: shortcode::expand(&text).into_owned(),
                cid: None,
            },
            Some(Command::Dm { to, text }) => Request::Dm {
                to,
                text: shortcode::expand(&text).into_owned(),
                cid: None,
            },
            Some(Command::Who) => Request::Who,
            Some(Command::Nick(name)) => Request::Nick { name },
            Some(Command::Help) => {
                self.show(HELP.lines().map(str::to_owned).collect());
                return ControlFlow::Continue(());
            }
            Some(Command::Quit) => return self.input_ended(),
            Some(Command::Usage(usage)) => return self.not_sent(usage),
            Some(Command::Unknown(word)) => {
                return self.not_sent(&format!("unknown command {word} (/help lists them)"));
            }
        };
        self.send(request);
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
    /// allow; the pace timer brings the rest.
    fn send_queued(&mut self) {
        let Some(conn) = self.conn.as_ref().filter(|_| self.joined) else {
            return;
        };
        while let Some(request) = self.queued.front() {
            if !self.pace.try_take(Instant::now()) {
                self.pace_timer = crossbeam_channel::after(PACE_RETRY);
                return;
            }
            if conn.send(request.to_json()).is_err() {
                // The connection died a moment ago; the socket thread's
                // `Down` is on its way, and the next welcome sends the rest.
                return;
            }
            self.queued.pop_front();
            self.unanswered += 1;
        }
    }

    /// Joins, once there is both a connection and a name. A rejoin asks
    /// for the public messages after the last one shown, so none is missed
    /// or shown twice.
    fn join(&mut self) {
        let (Some(conn), Some(name)) = (&self.conn, &self.name) else {
            return;
        };
        let since = if self.welcomed_before {
            Some(self.last_id.unwrap_or(0))
        } else {
            None
        };
        let join = Request::Join {
            name: name.clone(),
            since,
            epoch: None,
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
        if matches!(message, ServerMessage::Welcome { .. }) && self.welcomed_before {
            self.show(vec![self.renderer.notice("reconnected")]);
        }
        let lines = self.renderer.server_message(&message, &me);
        self.show(lines);
        let is_me = |name: &str| name_key(name) == name_key(&me);
        match message {
            ServerMessage::Welcome {
                name,
                users,
                history,
                ..
            } => {
                self.joined = true;
                self.welcomed_before = true;
                self.name = Some(name);
                self.roster.set(&users.names());
                if let Some(last) = history.last() {
                    self.last_id = Some(last.id);
                }
                self.send_queued();
            }
            ServerMessage::Message(message) => {
                self.last_id = Some(message.id);
                if is_me(&message.from) {
                    self.answered();
                }
            }
            ServerMessage::Dm { from, .. } => {
                if is_me(&from) {
                    self.answered();
                }
            }
            ServerMessage::Joined { name, .. } => self.roster.add(&name),
            // Older messages change nothing of the session: they are only shown.
            ServerMessage::History { .. } => {}
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
            ServerMessage::Error { .. } => {
                self.failed += 1;
                self.answered();
            }
        }
        self.finish_if_done()
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

    /// A request got its answer.
    fn answered(&mut self) {
        self.unanswered = self.unanswered.saturating_sub(1);
    }

    /// The connection is down (or could not be made again).
    fn down(&mut self, reason: &str, retry_in: Duration) -> ControlFlow<ExitCode> {
        self.conn = None;
        self.joined = false;
        let seconds = retry_in.as_secs_f64();
        self.show_alert(&format!("{reason}; reconnecting in {seconds:.1} s"));
        if self.unanswered > 0 {
            // They may have arrived or not; resending could show them
            // twice, so the user is told instead.
            let lost = std::mem::take(&mut self.unanswered);
            self.failed += lost;
            self.show_alert(&format!(
                "{lost} line(s) sent just before may not have been delivered"
            ));
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
    /// request unanswered, and no join either, so that a refused name is
    /// never a success. Lines still queued while disconnected are given
    /// up: waiting for a server that may never return would hang the
    /// script.
    fn finish_if_done(&mut self) -> ControlFlow<ExitCode> {
        // Connected, a join or paced requests are still to be answered.
        let busy = self.conn.is_some() && (!self.joined || !self.queued.is_empty());
        if !self.input_done || self.unanswered > 0 || busy {
            return ControlFlow::Continue(());
        }
        if !self.queued.is_empty() {
            self.failed += self.queued.len();
            eprintln!(
                "lineclient: {} line(s) not sent: the connection is down",
                self.queued.len()
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
