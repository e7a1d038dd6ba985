//! The loop's numbers for `GET /metrics`, in the Prometheus text format
//! (encoded by `prometheus-client`).
//!
//! Counting costs an addition on a field the loop owns: no atomics, no
//! locks, no allocation on the hot path. A scrape copies the counters into
//! a [`Collector`] (what `prometheus-client` encodes), adds up the bytes
//! and handshakes of the open connections, and encodes. Labels are close
//! codes and kinds of message, never users or addresses, so the output
//! stays the same size however many people chat.
//!
//! The helpers at the bottom ([`Tally`], [`Histogram`], [`counter`],
//! [`gauge`]) are shared with the chat's own metrics.

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::evloop::connection::Connection;
use crate::evloop::http;
use crate::evloop::tls::{Stream, StreamCounts, TlsState};

/// The path the metrics are served on.
pub const PATH: &str = "/metrics";

/// The content type of the Prometheus text format, version 0.0.4.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the turn-duration buckets, in seconds: from 10 µs (an
/// idle turn) to a quarter second (a turn that stalls every client).
const TURN_SECONDS: [f64; 11] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 0.25,
];

/// Upper bounds of the events-per-turn buckets, up to the 1024 one `poll` takes.
const EVENTS_PER_TURN: [f64; 9] = [1.0, 2.0, 4.0, 16.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// What the loop counts. Owned by the loop; only the loop's thread touches it.
#[derive(Debug, Clone)]
pub struct LoopMetrics {
    /// Connections accepted.
    accepted: u64,
    /// Connections dropped at accept (the connection limits).
    refused: u64,
    /// Bytes and finished handshakes, folded in from each connection as
    /// it is settled: a scrape reads totals and never walks the
    /// connections, whose number may be tens of thousands.
    totals: Totals,
    /// TLS handshakes started and not yet finished.
    tls_handshaking: u64,
    /// Close frames the server sent, by code.
    closes: Vec<(u16, u64)>,
    /// How long each turn's work took (from `poll`'s return to the end).
    turn_seconds: Histogram,
    /// How many readiness events each turn handled.
    events_per_turn: Histogram,
}

/// Totals over every connection, up to its last settling.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    /// Bytes in and out.
    counts: StreamCounts,
    /// TLS handshakes that completed.
    tls_handshakes: u64,
    /// TLS handshakes that failed, timed out or were abandoned.
    tls_failures: u64,
}

impl Default for LoopMetrics {
    fn default() -> Self {
        LoopMetrics {
            accepted: 0,
            refused: 0,
            totals: Totals::default(),
            tls_handshaking: 0,
            closes: Vec::new(),
            turn_seconds: Histogram::new(&TURN_SECONDS),
            events_per_turn: Histogram::new(&EVENTS_PER_TURN),
        }
    }
}

impl LoopMetrics {
    /// A connection was accepted.
    pub fn accepted(&mut self) {
        self.accepted += 1;
    }

    /// A connection was dropped at accept.
    pub fn refused(&mut self) {
        self.refused += 1;
    }

    /// One turn of the loop handled `events` in `took`.
    pub fn turn(&mut self, events: usize, took: Duration) {
        self.turn_seconds.observe(took.as_secs_f64());
        self.events_per_turn.observe(events as f64);
    }

    /// A connection was opened on `stream` (its TLS handshake, if any,
    /// starts now).
    pub fn opened(&mut self, stream: &Stream) {
        if stream.tls_state() == TlsState::Handshaking {
            self.tls_handshaking += 1;
        }
    }

    /// A connection was settled at the end of a turn: what it did since
    /// joins the totals. Once per settled connection per round, a few
    /// additions.
    pub fn settled(&mut self, conn: &mut Connection<Stream>) {
        self.fold(conn, false);
    }

    /// A connection is removed: its last numbers join the totals; a
    /// handshake still under way has failed.
    pub fn retire(&mut self, conn: &mut Connection<Stream>) {
        self.fold(conn, true);
    }

    /// Adds what `conn` did since it was last folded in to the totals.
    fn fold(&mut self, conn: &mut Connection<Stream>, gone: bool) {
        if let Some(code) = conn.take_sent_close() {
            let code = u16::from(code);
            match self.closes.iter_mut().find(|(c, _)| *c == code) {
                Some((_, n)) => *n += 1,
                None => self.closes.push((code, 1)),
            }
        }
        let activity = conn.socket_mut().take_activity(gone);
        self.totals.counts.bytes_in += activity.counts.bytes_in;
        self.totals.counts.bytes_out += activity.counts.bytes_out;
        match activity.handshake {
            Some(TlsState::Established) => self.totals.tls_handshakes += 1,
            Some(_) => self.totals.tls_failures += 1,
            None => return,
        }
        self.tls_handshaking = self.tls_handshaking.saturating_sub(1);
    }

    /// The complete `/metrics` response: these numbers, the number of
    /// `open` connections, and the service's own `extra` ones.
    pub fn response(&self, open: usize, extra: Option<Box<dyn Collector>>) -> Vec<u8> {
        let snapshot = Snapshot {
            metrics: self.clone(),
            open: open as u64,
        };
        let mut registry = Registry::with_prefix("miochat");
        registry.register_collector(Box::new(snapshot));
        if let Some(extra) = extra {
            registry.register_collector(extra);
        }
        let mut body = String::new();
        match prometheus_client::encoding::prometheus_text::encode(&mut body, &registry) {
            Ok(()) => http::response(200, "", CONTENT_TYPE, body.as_bytes()),
            // Encoding into a String fails only on a bug in the encoder.
            Err(_) => http::response(500, "", "text/plain", b"cannot encode the metrics\n"),
        }
    }
}

/// The loop's numbers at one scrape.
#[derive(Debug)]
struct Snapshot {
    /// The counters.
    metrics: LoopMetrics,
    /// Connections open now.
    open: u64,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.metrics;
        let e = &mut encoder;
        gauge(e, "connections_open", "Connections open now", self.open)?;
        counter(
            e,
            "connections_accepted",
            "Connections accepted",
            m.accepted,
        )?;
        counter(
            e,
            "connections_refused",
            "Connections dropped at accept by a connection limit",
            m.refused,
        )?;
        let counts = m.totals.counts;
        counter(e, "bytes_in", "Bytes read from sockets", counts.bytes_in)?;
        counter(e, "bytes_out", "Bytes written to sockets", counts.bytes_out)?;
        let closes: Vec<(String, u64)> = m
            .closes
            .iter()
            .map(|&(code, n)| (code.to_string(), n))
            .collect();
        labelled(
            e,
            "closes",
            "Close frames sent, by close code",
            "code",
            &closes,
        )?;
        let tls = m.totals;
        counter(
            e,
            "tls_handshakes",
            "TLS handshakes completed",
            tls.tls_handshakes,
        )?;
        counter(
            e,
            "tls_handshake_failures",
            "TLS handshakes refused, timed out or abandoned",
            tls.tls_failures,
        )?;
        gauge(
            e,
            "tls_handshakes_in_progress",
            "TLS handshakes under way now",
            m.tls_handshaking,
        )?;
        m.turn_seconds.encode(
            e,
            "loop_turn_seconds",
            "Time one turn of the event loop took, after poll returned",
        )?;
        m.events_per_turn.encode(
            e,
            "loop_events_per_turn",
            "Readiness events one turn of the event loop handled",
        )
    }
}

/// A histogram kept as plain counts per bucket (prometheus-client's own
/// takes a lock on every observation).
#[derive(Debug, Clone)]
pub struct Histogram {
    /// Upper bounds, ascending; a last, infinite bucket is implied.
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative), one more than `bounds`.
    counts: Vec<u64>,
    /// The sum of all observations.
    sum: f64,
}

impl Histogram {
    /// An empty histogram with these upper bounds.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    /// Counts one observation.
    pub fn observe(&mut self, value: f64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.counts[bucket] += 1;
        self.sum += value;
    }

    /// Writes the histogram as metric `name`.
    pub fn encode(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
    ) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts.iter().copied())
            .collect();
        let count = self.counts.iter().sum();
        encoder
            .encode_descriptor(name, help, None, MetricType::Histogram)?
            .encode_histogram::<NoLabelSet>(self.sum, count, &buckets, None)
    }
}

/// Writes one counter.
pub fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Writes one gauge.
pub fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Counts by a label from a small, fixed set (kinds of message, error
/// codes): a few entries, found by a short scan.
#[derive(Debug, Clone, Default)]
pub struct Tally(Vec<(&'static str, u64)>);

impl Tally {
    /// Adds `n` to the count of `label`.
    pub fn add(&mut self, label: &'static str, n: u64) {
        match self.0.iter_mut().find(|(l, _)| *l == label) {
            Some((_, count)) => *count += n,
            None => self.0.push((label, n)),
        }
    }

    /// Writes the tally as counter `name`, labelled `label`.
    pub fn encode(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        label: &str,
    ) -> Result<(), std::fmt::Error> {
        labelled(encoder, name, help, label, &self.0)
    }
}

/// Writes a counter with one label, one sample per `(value, count)`.
fn labelled<V: AsRef<str>>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    samples: &[(V, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, count) in samples {
        let labels = [(label, value.as_ref())];
        ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_adds_up_by_label() {
        let mut tally = Tally::default();
        tally.add("say", 1);
        tally.add("dm", 2);
        tally.add("say", 3);
        assert_eq!(tally.0, [("say", 4), ("dm", 2)]);
    }

    #[test]
    fn histogram_buckets_hold_what_is_at_most_their_bound() {
        let mut histogram = Histogram::new(&[1.0, 2.0]);
        for value in [0.5, 1.0, 1.5, 3.0] {
            histogram.observe(value);
        }
        assert_eq!(histogram.counts, [2, 1, 1]);
        assert_eq!(histogram.sum, 6.0);
    }
}
