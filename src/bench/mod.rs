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
use report::{Latency, Loss, ProcSample, Servers, Tally, Usage};
use tls::TlsClient;
use wire::Target;
use worker::{Node, Plan, Shared, Worker};

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
    /// Give it once per node to spread the clients over a cluster: client
    /// i connects to the (i mod N)th URL, so senders and receivers spread
    /// evenly.
    #[arg(long, default_value = "ws://127.0.0.1:8765/")]
    #[serde(serialize_with = "one_or_many")]
    pub url: Vec<String>,
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
    /// The server's process id, to report its CPU time and memory. Give
    /// it once per process (the nodes of a cluster, and Redis) to report
    /// their sum, and each one's share.
    #[arg(long)]
    #[serde(serialize_with = "one_or_many")]
    pub server_pid: Vec<u32>,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    pub json: bool,
}

impl Params {
    /// Checks the settings against each other; returns the targets, in
    /// the order of the `--url`s.
    pub fn check(&self) -> Result<Vec<Target>, String> {
        let targets = self
            .url
            .iter()
            .map(|url| Target::parse(url))
            .collect::<Result<Vec<_>, _>>()?;
        if targets.is_empty() {
            return Err("--url is needed".to_owned());
        }
        if targets
            .iter()
            .any(|target| target.tls != self.ca_file.is_some())
        {
            return Err("--ca-file goes with wss:// URLs, and a wss:// URL needs it".to_owned());
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
            _ => Ok(targets),
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

/// The index of the `--url` that client `client` connects to: the URLs
/// take turns, so with N of them every node gets every Nth client, and
/// the senders (the clients with the lowest indexes) spread as evenly as
/// the receivers.
pub fn node_of(client: usize, nodes: usize) -> usize {
    client % nodes
}

/// Serializes a repeatable flag as it was before it could repeat: nothing
/// as `null`, one value as that value, several as a list. A report of a
/// run against one server reads exactly as it always did.
fn one_or_many<T: Serialize, S: serde::Serializer>(values: &[T], s: S) -> Result<S::Ok, S::Error> {
    match values {
        [] => s.serialize_none(),
        [one] => one.serialize(s),
        many => many.serialize(s),
    }
}

/// Whether a rate is a usable divisor: above zero and finite.
fn positive(rate: f64) -> bool {
    rate > 0.0 && rate.is_finite()
}

/// Runs one benchmark; an error means it could not run at all.
pub fn run(params: Params) -> Result<Report, String> {
    let nodes = params
        .check()?
        .into_iter()
        .map(|target| {
            let tls = match &params.ca_file {
                Some(ca_file) => Some(TlsClient::new(ca_file, target.addr.ip())?),
                None => None,
            };
            Ok(Node { target, tls })
        })
        .collect::<Result<Arc<[Node]>, String>>()?;
    let tls = params.ca_file.is_some();
    raise_open_files_limit();
    let params = Arc::new(params);
    let shared = Arc::new(Shared::new());
    let progress = std::io::stderr().is_terminal();
    // Every server process, sampled one after the other at each edge.
    let server_sample = || {
        params
            .server_pid
            .iter()
            .map(|&pid| ProcSample::read(Some(pid)).map_err(|e| format!("server pid {pid}: {e}")))
            .collect::<Result<Vec<_>, _>>()
    };
    let server_at_start = server_sample()?;

    let workers = (0..params.threads)
        .map(|first| {
            let worker = Worker::new(
                params.clone(),
                nodes.clone(),
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
    let servers = Servers::between(
        &params.server_pid,
        &server_at_start,
        &server_before,
        &server_after,
        tally.delivered,
    );
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
        server_rss_per_client: servers.rss_growth.map(|bytes| bytes / joined as f64),
        server: servers.total,
        servers: servers.each,
        chatbench: Usage::between(own_before, own_after, tally.delivered),
        // Only for a run that delivered anything (not conns).
        tls_records_per_delivery: (tls && tally.received > 0)
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
    fn repeats_url_and_server_pid() {
        let one = parse("flood").unwrap();
        assert_eq!(one.url, ["ws://127.0.0.1:8765/"]);
        assert!(one.server_pid.is_empty());
        let two = parse(
            "flood --url ws://127.0.0.1:9001/ --url ws://127.0.0.2:9002/ \
             --server-pid 11 --server-pid 12 --server-pid 13",
        )
        .unwrap();
        assert_eq!(two.url, ["ws://127.0.0.1:9001/", "ws://127.0.0.2:9002/"]);
        assert_eq!(two.server_pid, [11, 12, 13]);
        let targets = two.check().unwrap();
        assert_eq!(
            targets.iter().map(|t| t.addr.port()).collect::<Vec<_>>(),
            [9001, 9002]
        );
        // Each URL is checked: one that is not loopback spoils the lot,
        // and wss:// cannot be mixed with ws://.
        assert!(parse("flood --url ws://127.0.0.1:1/ --url ws://10.0.0.1:1/").is_err());
        assert!(
            parse("flood --url wss://127.0.0.1:1/ --url ws://127.0.0.1:2/ --ca-file ca.pem")
                .is_err()
        );
        assert!(
            parse("flood --url wss://127.0.0.1:1/ --url wss://127.0.0.1:2/ --ca-file ca.pem")
                .is_ok()
        );
    }

    #[test]
    fn spreads_clients_and_senders_round_robin() {
        // Two nodes, 10 senders among 100 clients: 5 senders and 50
        // clients on each.
        let per_node = |clients: usize, nodes: usize| {
            let mut counts = vec![0; nodes];
            (0..clients).for_each(|id| counts[node_of(id, nodes)] += 1);
            counts
        };
        assert_eq!(per_node(10, 2), [5, 5]);
        assert_eq!(per_node(100, 2), [50, 50]);
        assert_eq!(per_node(10, 3), [4, 3, 3]);
        assert_eq!(per_node(7, 1), [7]);
    }

    #[test]
    fn reports_one_url_and_pid_as_before() {
        let json = |args| serde_json::to_value(parse(args).unwrap()).unwrap();
        let one = json("flood --server-pid 7");
        assert_eq!(one["url"], "ws://127.0.0.1:8765/");
        assert_eq!(one["server_pid"], 7);
        assert_eq!(json("flood")["server_pid"], serde_json::Value::Null);
        let two = json(
            "flood --url ws://127.0.0.1:1/ --url ws://127.0.0.1:2/ --server-pid 7 --server-pid 8",
        );
        assert_eq!(
            two["url"],
            serde_json::json!(["ws://127.0.0.1:1/", "ws://127.0.0.1:2/"])
        );
        assert_eq!(two["server_pid"], serde_json::json!([7, 8]));
    }

    #[test]
    fn names_scenarios_as_on_the_command_line() {
        assert_eq!(Scenario::Fanout.to_string(), "fanout");
        let json = serde_json::to_value(parse("flood").unwrap()).unwrap();
        assert_eq!(json["scenario"], "flood");
    }
}
