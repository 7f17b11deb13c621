//! The service's Prometheus metrics (prometheus-client): events in, rejected, late and duplicate;
//! anomalies and decisions by reason and outcome; job states (read from the store at scrape
//! time); the dataflow's frontier lag; HTTP latency by route.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabel {
    pub kind: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub method: String,
    pub route: String,
    pub status: u16,
}

type HistogramFamily = Family<RouteLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    pub events: Family<SourceLabel, Counter>,
    pub rejected: Family<ReasonLabel, Counter>,
    pub late: Counter,
    pub duplicates: Counter,
    pub anomalies: Family<ReasonLabel, Counter>,
    pub decisions: Family<OutcomeLabel, Counter>,
    pub jobs: Family<JobLabel, Gauge>,
    /// Newest event time seen minus the last final time, in seconds.
    pub frontier_lag: Gauge,
    pub ingest_refused: Counter,
    pub http: HistogramFamily,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("aer");
        let m = Metrics {
            registry: Registry::default(),
            events: Family::default(),
            rejected: Family::default(),
            late: Counter::default(),
            duplicates: Counter::default(),
            anomalies: Family::default(),
            decisions: Family::default(),
            jobs: Family::default(),
            frontier_lag: Gauge::default(),
            ingest_refused: Counter::default(),
            http: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
        };
        registry.register("events", "Entries decoded, by source", m.events.clone());
        registry.register(
            "rejected_events",
            "Lines or entries rejected, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "late_events",
            "Events processed at the watermark because they arrived late",
            m.late.clone(),
        );
        registry.register(
            "duplicate_events",
            "Entries dropped because their id was already seen",
            m.duplicates.clone(),
        );
        registry.register("anomalies", "Anomalies, by reason", m.anomalies.clone());
        registry.register("decisions", "Decisions, by outcome", m.decisions.clone());
        registry.register("jobs", "Response jobs, by kind and state", m.jobs.clone());
        registry.register(
            "frontier_lag_seconds",
            "Newest event time seen minus the last final event time",
            m.frontier_lag.clone(),
        );
        registry.register(
            "ingest_refused",
            "HTTP ingest requests refused because the queue was full",
            m.ingest_refused.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency, by method, route and status",
            m.http.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
