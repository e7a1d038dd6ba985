//! The figures of a run: counts gathered by the client threads, the CPU and
//! memory of a process read from `/proc`, and the report printed at the end
//! for a person or, as JSON, for a script.

use std::fmt;
use std::fs;
use std::io;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// The largest latency the histogram resolves, in microseconds: one minute
/// is far beyond any run's drain time, so no real sample is clamped.
const MAX_LATENCY_MICROS: u64 = 60_000_000;

/// Significant decimal digits the histogram keeps: three means every
/// percentile is within 0.1% of the true sample.
const LATENCY_DIGITS: u8 = 3;

/// What one client thread counted; the threads' tallies are merged at the
/// end of a run.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latency of every measured delivery, in microseconds from the time
    /// the message was meant to be sent.
    pub latency: Histogram<u64>,
    /// Measured messages sent (those meant to leave inside the window).
    pub sent: u64,
    /// Copies of measured messages received, by any client.
    pub delivered: u64,
    /// Copies of chatbench's messages received, by any client, measured
    /// or not (warm-up and drain too): what the TLS records carried.
    pub received: u64,
    /// wss://: TLS application-data records received, over the whole run.
    pub tls_records: u64,
    /// `error` events received: a server that refuses requests (say, a rate
    /// limit left on) must not pass for a fast one.
    pub errors: u64,
    /// Joined connections the server closed or lost during the run.
    pub disconnects: u64,
    /// Connections that never joined.
    pub failures: u64,
    /// Why the first of those failed, for the report.
    pub first_failure: Option<String>,
    /// When this thread's last connection joined, for the connect rate.
    pub last_join: Option<Instant>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, LATENCY_DIGITS)
                .expect("the histogram bounds are valid"),
            sent: 0,
            delivered: 0,
            received: 0,
            tls_records: 0,
            errors: 0,
            disconnects: 0,
            failures: 0,
            first_failure: None,
            last_join: None,
        }
    }
}

impl Tally {
    /// Notes a connection that could not join.
    pub fn fail(&mut self, why: impl fmt::Display) {
        self.failures += 1;
        if self.first_failure.is_none() {
            self.first_failure = Some(why.to_string());
        }
    }

    /// Adds another thread's counts to these.
    pub fn merge(&mut self, other: Tally) {
        self.latency
            .add(&other.latency)
            .expect("tallies share the histogram bounds");
        self.sent += other.sent;
        self.delivered += other.delivered;
        self.received += other.received;
        self.tls_records += other.tls_records;
        self.errors += other.errors;
        self.disconnects += other.disconnects;
        self.failures += other.failures;
        self.first_failure = self.first_failure.take().or(other.first_failure);
        self.last_join = self.last_join.max(other.last_join);
    }
}

/// Messages expected against messages delivered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Loss {
    /// Measured messages sent.
    pub sent: u64,
    /// Copies that should have arrived: sent × recipients per message.
    pub expected: u64,
    /// Copies that did arrive before the drain ended.
    pub delivered: u64,
    /// Copies that did not.
    pub lost: u64,
    /// `lost / expected`, 0 when nothing was expected.
    pub ratio: f64,
}

impl Loss {
    /// The loss of `sent` messages that should each reach `recipients`.
    pub fn new(sent: u64, recipients: u64, delivered: u64) -> Loss {
        let expected = sent * recipients;
        let lost = expected.saturating_sub(delivered);
        let ratio = if expected == 0 {
            0.0
        } else {
            lost as f64 / expected as f64
        };
        Loss {
            sent,
            expected,
            delivered,
            lost,
            ratio,
        }
    }
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// The median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// The slowest delivery.
    pub max: u64,
}

impl Latency {
    /// The percentiles of a histogram (all zero when it is empty).
    pub fn of(histogram: &Histogram<u64>) -> Latency {
        let at = |q: f64| histogram.value_at_quantile(q);
        Latency {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: histogram.max(),
        }
    }
}

/// CPU time and resident memory of a process at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// User plus system CPU time, all threads.
    pub cpu: Duration,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
}

impl ProcSample {
    /// Reads process `pid` (this process when `None`) from `/proc`.
    pub fn read(pid: Option<u32>) -> io::Result<ProcSample> {
        let dir = pid.map_or_else(|| "/proc/self".to_owned(), |pid| format!("/proc/{pid}"));
        let stat = fs::read_to_string(format!("{dir}/stat"))?;
        let status = fs::read_to_string(format!("{dir}/status"))?;
        // SAFETY: sysconf only reads a configuration value.
        let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        parse_proc(&stat, &status, ticks_per_sec).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{dir}: unexpected format"),
            )
        })
    }
}

/// Parses `/proc/PID/stat` (utime and stime, in clock ticks) and the
/// `VmRSS` line of `/proc/PID/status` (in KiB).
fn parse_proc(stat: &str, status: &str, ticks_per_sec: u64) -> Option<ProcSample> {
    // The command name is in parentheses and may hold spaces: count the
    // fields from the last ')'. utime and stime are fields 14 and 15, so
    // the 12th and 13th after the name.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace().skip(11);
    let ticks: u64 = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(ProcSample {
        cpu: Duration::from_micros(ticks * 1_000_000 / ticks_per_sec),
        rss_bytes: rss_kib * 1024,
    })
}

impl ProcSample {
    /// The sum of several processes' samples, taken at one moment: what
    /// they cost together (a cluster's nodes and its Redis).
    pub fn sum(samples: &[ProcSample]) -> ProcSample {
        samples.iter().fold(
            ProcSample {
                cpu: Duration::ZERO,
                rss_bytes: 0,
            },
            |total, one| ProcSample {
                cpu: total.cpu + one.cpu,
                rss_bytes: total.rss_bytes + one.rss_bytes,
            },
        )
    }
}

/// What a process spent during the measured part of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Usage {
    /// CPU seconds, user plus system.
    pub cpu_seconds: f64,
    /// CPU microseconds per measured delivery: the cost of one copy of one
    /// message reaching one client. The headline figure of the floor test.
    pub cpu_us_per_delivery: Option<f64>,
    /// Resident memory at the end of the measured part, in bytes.
    pub rss_bytes: u64,
}

impl Usage {
    /// The usage between two samples of one process.
    pub fn between(before: ProcSample, after: ProcSample, deliveries: u64) -> Usage {
        let cpu = after.cpu.saturating_sub(before.cpu).as_secs_f64();
        Usage {
            cpu_seconds: cpu,
            cpu_us_per_delivery: (deliveries > 0).then(|| cpu * 1e6 / deliveries as f64),
            rss_bytes: after.rss_bytes,
        }
    }
}

/// One server process's share, in a run against several.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PidUsage {
    /// The process, as given to `--server-pid`.
    pub pid: u32,
    /// What it spent.
    #[serde(flatten)]
    pub usage: Usage,
}

/// The server processes' figures over a run, from their samples at the
/// start (before the first connect), before and after the measured window.
#[derive(Debug, Clone, PartialEq)]
pub struct Servers {
    /// What they spent together; `None` without `--server-pid`.
    pub total: Option<Usage>,
    /// Each one's own usage, when there are several (with one, `total` is
    /// all there is to say).
    pub each: Vec<PidUsage>,
    /// How much their resident memory grew in all, from the start to the
    /// end, in bytes.
    pub rss_growth: Option<f64>,
}

impl Servers {
    /// The figures of processes `pids`, each slice of samples in the order
    /// of `pids`; `deliveries` were measured between `before` and `after`.
    pub fn between(
        pids: &[u32],
        start: &[ProcSample],
        before: &[ProcSample],
        after: &[ProcSample],
        deliveries: u64,
    ) -> Servers {
        if pids.is_empty() {
            return Servers {
                total: None,
                each: Vec::new(),
                rss_growth: None,
            };
        }
        let each = match pids.len() {
            1 => Vec::new(),
            _ => pids
                .iter()
                .zip(before.iter().zip(after))
                .map(|(&pid, (&before, &after))| PidUsage {
                    pid,
                    usage: Usage::between(before, after, deliveries),
                })
                .collect(),
        };
        let after = ProcSample::sum(after);
        Servers {
            total: Some(Usage::between(ProcSample::sum(before), after, deliveries)),
            each,
            rss_growth: Some(after.rss_bytes as f64 - ProcSample::sum(start).rss_bytes as f64),
        }
    }
}

/// Everything a run found, printed for a person or as one JSON object.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The command line's settings.
    pub params: super::Params,
    /// Clients that joined.
    pub clients_joined: u64,
    /// Clients that never joined.
    pub connect_failures: u64,
    /// Why the first of those failed.
    pub first_failure: Option<String>,
    /// Seconds from the first connect to the last join.
    pub connect_seconds: f64,
    /// Joined clients per second while connecting.
    pub connects_per_sec: f64,
    /// Joined clients lost during the run.
    pub disconnects: u64,
    /// `error` events received (0 for a healthy run).
    pub server_errors: u64,
    /// Length of the measured window, in seconds.
    pub measured_seconds: f64,
    /// Measured deliveries per second of the window.
    pub deliveries_per_sec: f64,
    /// Expected against delivered copies.
    pub loss: Loss,
    /// Latency of measured deliveries from their intended send time.
    pub latency_us: Latency,
    /// The server's usage, when `--server-pid` was given; with several,
    /// their sum.
    pub server: Option<Usage>,
    /// With several `--server-pid`s, each one's usage (left out with one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<PidUsage>,
    /// The server's resident memory growth from before the first connect
    /// to the end, per joined client, in bytes: what a connection costs
    /// (with several `--server-pid`s, their summed memory's growth).
    pub server_rss_per_client: Option<f64>,
    /// chatbench's own usage, to show it was not the bottleneck.
    pub chatbench: Usage,
    /// wss://: TLS records the server sent per copy of a message received,
    /// over the whole run (a round's frames for one client leave in as few
    /// records as their bytes allow, so under load this is well below 1).
    pub tls_records_per_delivery: Option<f64>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.params;
        writeln!(
            f,
            "chatbench {} against {}: {} clients joined ({} failed) in {:.2} s, {:.0} joins/s",
            p.scenario,
            p.url.join(", "),
            self.clients_joined,
            self.connect_failures,
            self.connect_seconds,
            self.connects_per_sec
        )?;
        if let Some(why) = &self.first_failure {
            writeln!(f, "  first failure: {why}")?;
        }
        if p.scenario == super::Scenario::Conns {
            writeln!(
                f,
                "  held {} connections for {:.1} s, {} lost",
                self.clients_joined, self.measured_seconds, self.disconnects
            )?;
        } else {
            self.fmt_load(f)?;
        }
        if let Some(bytes) = self.server_rss_per_client {
            writeln!(f, "  server memory per client: {:.1} KiB", bytes / 1024.0)?;
        }
        let usage = |f: &mut fmt::Formatter<'_>, who: &str, u: &Usage| {
            let per = u
                .cpu_us_per_delivery
                .map_or_else(|| "-".to_owned(), |us| format!("{us:.3}"));
            writeln!(
                f,
                "  {who}: {:.2} CPU s, {per} CPU µs/delivery, RSS {:.1} MiB",
                u.cpu_seconds,
                u.rss_bytes as f64 / (1024.0 * 1024.0)
            )
        };
        match (&self.server, self.servers.len()) {
            (Some(server), 0) => usage(f, "server", server)?,
            (Some(server), n) => {
                usage(f, &format!("servers ({n} processes, in all)"), server)?;
                for each in &self.servers {
                    usage(f, &format!("  pid {}", each.pid), &each.usage)?;
                }
            }
            (None, _) => {}
        }
        if let Some(records) = self.tls_records_per_delivery {
            writeln!(f, "  TLS records per delivery: {records:.4}")?;
        }
        usage(f, "chatbench", &self.chatbench)
    }
}

impl Report {
    /// The lines of a load run: throughput, loss, latency, trouble.
    fn fmt_load(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let loss = &self.loss;
        writeln!(
            f,
            "  deliveries: {:.0}/s over {:.1} s; {} sent, {} of {} copies delivered, {} lost ({:.3}%)",
            self.deliveries_per_sec,
            self.measured_seconds,
            loss.sent,
            loss.delivered,
            loss.expected,
            loss.lost,
            loss.ratio * 100.0
        )?;
        let l = &self.latency_us;
        writeln!(
            f,
            "  latency µs: p50 {} p90 {} p99 {} p99.9 {} max {}",
            l.p50, l.p90, l.p99, l.p999, l.max
        )?;
        if self.disconnects > 0 || self.server_errors > 0 {
            writeln!(
                f,
                "  trouble: {} disconnects, {} error events",
                self.disconnects, self.server_errors
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_counts_every_recipient() {
        let loss = Loss::new(10, 4, 38);
        assert_eq!((loss.expected, loss.lost), (40, 2));
        assert!((loss.ratio - 0.05).abs() < 1e-12);
        assert_eq!(Loss::new(0, 4, 0).ratio, 0.0);
        // Extra copies (a server that duplicates) are no negative loss.
        assert_eq!(Loss::new(1, 2, 3).lost, 0);
    }

    #[test]
    fn reads_proc_files() {
        let stat = "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0";
        let status = "Name:\tx\nVmRSS:\t  2048 kB\nThreads: 1\n";
        let sample = parse_proc(stat, status, 100).unwrap();
        assert_eq!(sample.cpu, Duration::from_secs(4));
        assert_eq!(sample.rss_bytes, 2 * 1024 * 1024);
        assert!(ProcSample::read(None).unwrap().rss_bytes > 0);
    }

    #[test]
    fn merges_tallies_and_percentiles() {
        let mut a = Tally::default();
        let mut b = Tally::default();
        for us in 1..=100 {
            a.latency.record(us).unwrap();
        }
        b.latency.record(1000).unwrap();
        b.fail("refused");
        a.merge(b);
        let latency = Latency::of(&a.latency);
        // 101 samples: the median is the 51st.
        assert_eq!((latency.p50, latency.max), (51, 1000));
        assert_eq!(a.first_failure.as_deref(), Some("refused"));
        let usage = Usage::between(
            ProcSample {
                cpu: Duration::from_secs(1),
                rss_bytes: 0,
            },
            ProcSample {
                cpu: Duration::from_secs(3),
                rss_bytes: 5,
            },
            1_000_000,
        );
        assert_eq!(usage.cpu_us_per_delivery, Some(2.0));
    }

    #[test]
    fn sums_the_server_processes() {
        let at = |secs, mib: u64| ProcSample {
            cpu: Duration::from_secs(secs),
            rss_bytes: mib * 1024 * 1024,
        };
        // Two nodes and Redis: 1 + 2 + 3 CPU seconds over 1 000 000
        // deliveries is 6 µs per delivery in all.
        let start = [at(0, 10), at(0, 10), at(0, 5)];
        let before = [at(1, 11), at(1, 11), at(1, 6)];
        let after = [at(2, 12), at(3, 13), at(4, 7)];
        let servers = Servers::between(&[1, 2, 3], &start, &before, &after, 1_000_000);
        let total = servers.total.unwrap();
        assert_eq!(total.cpu_seconds, 6.0);
        assert_eq!(total.cpu_us_per_delivery, Some(6.0));
        assert_eq!(total.rss_bytes, 32 * 1024 * 1024);
        assert_eq!(servers.rss_growth, Some(7.0 * 1024.0 * 1024.0));
        let each: Vec<_> = servers
            .each
            .iter()
            .map(|p| (p.pid, p.usage.cpu_us_per_delivery))
            .collect();
        assert_eq!(each, [(1, Some(1.0)), (2, Some(2.0)), (3, Some(3.0))]);
        let json = serde_json::to_value(servers.each[2]).unwrap();
        assert_eq!(json["pid"], 3);
        assert_eq!(json["cpu_seconds"], 3.0);

        // One process: its own figures, and no breakdown.
        let one = Servers::between(&[1], &start[..1], &before[..1], &after[..1], 1_000_000);
        assert_eq!(one.total.unwrap().cpu_us_per_delivery, Some(1.0));
        assert!(one.each.is_empty());
        assert_eq!(one.rss_growth, Some(2.0 * 1024.0 * 1024.0));
        // None: nothing to report.
        assert_eq!(
            Servers::between(&[], &[], &[], &[], 5),
            Servers {
                total: None,
                each: Vec::new(),
                rss_growth: None
            }
        );
    }
}
