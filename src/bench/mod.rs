//! chatbench, the project's load generator: the library behind
//! `bin/chatbench.rs`.
//!
//! A run has three phases. Client threads (each a `mio::Poll` over an
//! interleaved share of the clients) connect and join at a steady rate.
//! Once every client has joined or failed, the coordinator (the calling
//! thread) sets a `worker::Plan`: a warm-up, then a measured window in
//! which messages are sent and counted, then a drain that waits for the
//! last copies. It samples the server's and its own CPU and memory from
//! `/proc` at the edges of the window and merges the threads' tallies into
//! a [`Report`].
//!
//! Every run is bounded: connects by `--connect-timeout`, load by
//! `--warmup` + `--duration`, the drain by `--drain`. Only loopback
//! targets are accepted.

pub mod frame;
pub mod report;
pub mod tls;
pub mod wire;
mod worker;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::Serialize;

pub use report::Report;
use report::{Latency, Loss, ProcSample, Tally, Usage};
use tls::TlsClient;
use wire::Target;
use worker::{Plan, Shared, Worker};

/// The longest a run may be told to last, in seconds: one hour bounds a
/// mistyped duration without limiting any real use.
const MAX_SECONDS: f64 = 3600.0;

/// How often the coordinator checks on the threads while it waits.
const TICK: Duration = Duration::from_millis(10);

/// How often progress is printed on a terminal.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// `senders` of `clients` send public messages open-loop at `rate` in
    /// total; every client receives every message.
    Fanout,
    /// Like fanout, but closed-loop: each sender keeps `window` messages in
    /// flight, so the server runs flat out.
    Flood,
    /// Clients in pairs send DMs to their partner, open-loop at `rate` in
    /// total; each DM reaches its recipient and its sender.
    Dm,
    /// Open `clients` joined connections at `connect-rate` and hold them
    /// idle for `duration`.
    Conns,
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.to_possible_value().expect("no variant is skipped");
        f.write_str(name.get_name())
    }
}

/// The settings of a run, as given on the command line.
#[derive(Debug, Clone, Args, Serialize)]
pub struct Params {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// The server, on a loopback address: ws://, or wss:// with --ca-file.
    #[arg(long, default_value = "ws://127.0.0.1:8765/")]
    pub url: String,
    /// wss://: the PEM certificate of the authority that signed the
    /// server's (the server is verified against it alone, by its IP
    /// address).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Clients to connect (all of them receive).
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// fanout, flood: how many of the clients send.
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// fanout, dm: messages per second sent in total.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// flood: messages each sender keeps in flight.
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// Bytes of each message's `text`.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds of measured load (conns: of holding the connections).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring, to fill caches and buffers.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds to wait after the load for copies still on their way;
    /// anything later is lost.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// New connections per second while connecting.
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Seconds a client may take to connect, upgrade and join.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Client threads, each with its own poll.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Source addresses 127.0.0.1 to 127.0.0.N to connect from, so that
    /// ephemeral ports do not run out.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub source_addrs: u8,
    /// The server's process id, to report its CPU time and memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
}

impl Params {
    /// Checks the settings against each other; returns the target.
    pub fn check(&self) -> Result<Target, String> {
        let target = Target::parse(&self.url)?;
        if target.tls != self.ca_file.is_some() {
            return Err("--ca-file goes with a wss:// URL, and a wss:// URL needs it".to_owned());
        }
        let seconds = [
            ("--duration", self.duration),
            ("--warmup", self.warmup),
            ("--drain", self.drain),
            ("--connect-timeout", self.connect_timeout),
        ];
        for (flag, value) in seconds {
            if !(0.0..=MAX_SECONDS).contains(&value) {
                return Err(format!(
                    "{flag} must be between 0 and {MAX_SECONDS} seconds"
                ));
            }
        }
        if self.clients == 0 {
            return Err("--clients must be at least 1".to_owned());
        }
        if self.threads == 0 || self.threads > self.clients {
            return Err("--threads must be between 1 and --clients".to_owned());
        }
        if !positive(self.connect_rate) {
            return Err("--connect-rate must be positive".to_owned());
        }
        match self.scenario {
            Scenario::Fanout | Scenario::Flood
                if self.senders == 0 || self.senders > self.clients =>
            {
                Err("--senders must be between 1 and --clients".to_owned())
            }
            Scenario::Dm if self.clients % 2 != 0 => {
                Err("dm pairs clients: --clients must be even".to_owned())
            }
            Scenario::Fanout | Scenario::Dm if !positive(self.rate) => {
                Err("--rate must be positive".to_owned())
            }
            Scenario::Flood if self.window == 0 => Err("--window must be at least 1".to_owned()),
            _ => Ok(target),
        }
    }

    /// Copies of each message that should arrive, given how many joined.
    fn recipients(&self, joined: u64) -> u64 {
        match self.scenario {
            Scenario::Fanout | Scenario::Flood => joined,
            // The recipient and the sender's own copy.
            Scenario::Dm => 2,
            Scenario::Conns => 0,
        }
    }
}

/// Whether a rate is a usable divisor: above zero and finite.
fn positive(rate: f64) -> bool {
    rate > 0.0 && rate.is_finite()
}

/// Runs one benchmark; an error means it could not run at all.
pub fn run(params: Params) -> Result<Report, String> {
    let target = params.check()?;
    let tls = match &params.ca_file {
        Some(ca_file) => Some(TlsClient::new(ca_file, target.addr.ip())?),
        None => None,
    };
    raise_open_files_limit();
    let params = Arc::new(params);
    let shared = Arc::new(Shared::new());
    let progress = std::io::stderr().is_terminal();
    let server_sample = || {
        params
            .server_pid
            .map(|pid| ProcSample::read(Some(pid)).map_err(|e| format!("server pid {pid}: {e}")))
            .transpose()
    };
    let server_at_start = server_sample()?;

    let workers = (0..params.threads)
        .map(|first| {
            let worker = Worker::new(
                params.clone(),
                target.clone(),
                tls.clone(),
                shared.clone(),
                first,
                params.threads,
            )
            .map_err(|e| format!("cannot set up a client thread: {e}"))?;
            thread::Builder::new()
                .name(format!("chatbench-{first}"))
                .spawn(move || worker.run())
                .map_err(|e| format!("cannot start a client thread: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;

    // Connect: wait until every client has joined or failed (each is
    // bounded by the connect timeout), or a thread has died (its error is
    // reported when it is joined below).
    let connect_start = Instant::now();
    let clients = params.clients as u64;
    let mut ticker = Progress::new(progress);
    let settled = || {
        let joined = shared.joined.load(Ordering::Relaxed);
        (joined, joined + shared.failed.load(Ordering::Relaxed))
    };
    while settled().1 < clients && !workers.iter().any(|w| w.is_finished()) {
        thread::sleep(TICK);
        ticker.tick(|| format!("connecting: {} of {clients} joined", settled().0));
    }
    let joined = settled().0;
    if joined == 0 {
        let tally = stop(&shared, workers)?;
        return Err(format!(
            "no client could join: {}",
            tally.first_failure.unwrap_or_default()
        ));
    }

    // Load: warm up, measure, drain.
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(params.warmup);
    let measure_to = measure_from + Duration::from_secs_f64(params.duration);
    let micros = |at: Instant| at.duration_since(shared.epoch).as_micros() as u64;
    let plan = Plan {
        start,
        measure_to,
        measured: micros(measure_from)..micros(measure_to),
    };
    shared.plan.set(plan).expect("the plan is set once");
    let recipients = params.recipients(joined);
    let delivered_so_far = || shared.delivered.load(Ordering::Relaxed);
    let mut last = (Instant::now(), 0);
    let mut per_second = |now: Instant| {
        let delivered = delivered_so_far();
        let rate = (delivered - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, delivered);
        rate
    };
    sleep_until(measure_from, &mut ticker, |_| "warming up".to_owned());
    let (server_before, own_before) = (server_sample()?, own_sample()?);
    per_second(Instant::now());
    sleep_until(measure_to, &mut ticker, |now| {
        format!("measuring: {:.0} deliveries/s", per_second(now))
    });
    let drain_end = measure_to + Duration::from_secs_f64(params.drain);
    while Instant::now() < drain_end
        && delivered_so_far() < shared.sent.load(Ordering::Relaxed) * recipients
    {
        thread::sleep(TICK);
        ticker.tick(|| "draining".to_owned());
    }
    let (server_after, own_after) = (server_sample()?, own_sample()?);
    let tally = stop(&shared, workers)?;
    let connect_seconds = tally
        .last_join
        .map_or(0.0, |at| at.duration_since(connect_start).as_secs_f64());
    let measured_seconds = params.duration;
    Ok(Report {
        clients_joined: joined,
        connect_failures: tally.failures,
        first_failure: tally.first_failure.clone(),
        connect_seconds,
        connects_per_sec: joined as f64 / connect_seconds.max(f64::MIN_POSITIVE),
        disconnects: tally.disconnects,
        server_errors: tally.errors,
        measured_seconds,
        deliveries_per_sec: tally.delivered as f64 / measured_seconds.max(f64::MIN_POSITIVE),
        loss: Loss::new(tally.sent, recipients, tally.delivered),
        latency_us: Latency::of(&tally.latency),
        server_rss_per_client: server_at_start
            .zip(server_after)
            .map(|(start, end)| (end.rss_bytes as f64 - start.rss_bytes as f64) / joined as f64),
        server: server_before
            .zip(server_after)
            .map(|(before, after)| Usage::between(before, after, tally.delivered)),
        chatbench: Usage::between(own_before, own_after, tally.delivered),
        // Only for a run that delivered anything (not conns).
        tls_records_per_delivery: (tls.is_some() && tally.received > 0)
            .then(|| tally.tls_records as f64 / tally.received as f64),
        params: Arc::unwrap_or_clone(params),
    })
}

/// Tells the client threads to stop and merges what they counted.
fn stop(
    shared: &Shared,
    workers: Vec<thread::JoinHandle<std::io::Result<Tally>>>,
) -> Result<Tally, String> {
    shared.stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    for worker in workers {
        let outcome = worker.join().map_err(|_| "a client thread panicked")?;
        tally.merge(outcome.map_err(|e| format!("a client thread failed: {e}"))?);
    }
    Ok(tally)
}

/// This process's CPU and memory now.
fn own_sample() -> Result<ProcSample, String> {
    ProcSample::read(None).map_err(|e| format!("cannot read /proc/self: {e}"))
}

/// Sleeps in ticks until `deadline`, printing progress.
fn sleep_until(deadline: Instant, ticker: &mut Progress, mut line: impl FnMut(Instant) -> String) {
    while Instant::now() < deadline {
        thread::sleep(TICK.min(deadline.saturating_duration_since(Instant::now())));
        ticker.tick(|| line(Instant::now()));
    }
}

/// A progress line on stderr once a second, when stderr is a terminal (a
/// script reading `--json` gets no noise).
struct Progress {
    /// Whether to print at all.
    enabled: bool,
    /// When the run began, for the elapsed time on each line.
    start: Instant,
    /// When the last line was printed.
    last: Instant,
}

impl Progress {
    /// Starts the clock.
    fn new(enabled: bool) -> Progress {
        let now = Instant::now();
        Progress {
            enabled,
            start: now,
            last: now,
        }
    }

    /// Prints `line()` if a second has passed since the last line.
    fn tick(&mut self, line: impl FnOnce() -> String) {
        let now = Instant::now();
        if self.enabled && now.duration_since(self.last) >= PROGRESS_EVERY {
            self.last = now;
            eprintln!(
                "[{:6.1} s] {}",
                now.duration_since(self.start).as_secs_f64(),
                line()
            );
        }
    }
}

/// Raises this process's soft open-files limit to the hard limit: each
/// client is a descriptor, and the usual soft limit (1024) is far below
/// what `conns` opens. Failure is harmless (connects then fail, and say so).
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls get a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The command line of `bin/chatbench.rs`, for parsing tests.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        params: Params,
    }

    fn parse(args: &str) -> Result<Params, String> {
        let args = std::iter::once("chatbench").chain(args.split_whitespace());
        let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
        cli.params.check()?;
        Ok(cli.params)
    }

    #[test]
    fn parses_the_documented_command_line() {
        let params = parse("fanout --url ws://127.0.0.1:9000/ --clients 50 --rate 200").unwrap();
        assert_eq!(params.scenario, Scenario::Fanout);
        assert_eq!(
            (params.clients, params.senders, params.rate),
            (50, 10, 200.0)
        );
        assert_eq!(params.recipients(50), 50);
        assert_eq!(parse("dm --clients 4").unwrap().recipients(4), 2);
        assert!(parse("conns --clients 1 --server-pid 1 --json").is_ok());
    }

    #[test]
    fn refuses_settings_that_cannot_work() {
        assert!(parse("nope").is_err());
        assert!(parse("fanout --clients 5 --senders 6").is_err());
        assert!(parse("dm --clients 3").is_err());
        assert!(parse("fanout --rate 0").is_err());
        assert!(parse("flood --window 0").is_err());
        assert!(parse("conns --duration 99999").is_err());
        assert!(parse("conns --threads 2 --clients 1").is_err());
        assert!(parse("conns --url ws://192.168.1.1:8765/").is_err());
        assert!(parse("conns --source-addrs 0").is_err());
        assert!(parse("conns --url wss://127.0.0.1:1/").is_err());
        assert!(parse("conns --ca-file ca.pem").is_err());
        assert!(parse("conns --url wss://127.0.0.1:1/ --ca-file ca.pem").is_ok());
    }

    #[test]
    fn names_scenarios_as_on_the_command_line() {
        assert_eq!(Scenario::Fanout.to_string(), "fanout");
        let json = serde_json::to_value(parse("flood").unwrap()).unwrap();
        assert_eq!(json["scenario"], "flood");
    }
}
