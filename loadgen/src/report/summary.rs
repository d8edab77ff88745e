//! `summary.json`: what a run did and found, as one serde struct the run fills in.

use serde::{Deserialize, Serialize};

use crate::measure::{CurvePoint, LatencyRecorder, LatencySummary, NodeCounters, Throughput};
use crate::scenario::{
    Database, Expectation, Fault, FaultAction, FaultAt, Phase, Route, Scenario, format_duration,
};

/// Everything `summary.json` holds (SPEC §5.2). Build it with [`Summary::new`], fill in the
/// measured parts, then write it with [`crate::report::write_results`] (which calls
/// [`Summary::finish`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The scenario's `name`.
    pub scenario: String,
    /// The scenario's `description`.
    pub description: Option<String>,
    /// When the run started (RFC 3339, UTC).
    pub started_at: String,
    /// Wall time of the run, first publish to last ack, in milliseconds.
    pub duration_ms: f64,
    /// The generators' seed.
    pub seed: u64,
    /// The run's configuration.
    pub config: RunConfig,
    /// One entry per phase, in order.
    pub phases: Vec<PhaseSummary>,
    /// Acked events per node id over the whole run.
    pub nodes: NodeCounters,
    /// Acked events over time.
    pub throughput: ThroughputSummary,
    /// Publish→ack latency over the whole run.
    pub latency: LatencySection,
    /// The faults, as planned and as fired.
    pub faults: Vec<FaultSummary>,
    /// Every expectation with expected and actual values.
    pub expectations: Vec<ExpectationResult>,
    /// Whether every expectation held (set by [`Summary::finish`]).
    pub passed: bool,
}

/// The configuration a run used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The scenario file.
    pub scenario_file: String,
    /// The Siddhi app (`None`: the bundled GeoLocation app).
    pub app: Option<String>,
    /// The database (`sqlite` for the embedded one; passwords in URLs are masked).
    pub database: String,
    /// The endpoints of a running cluster, when not spawned.
    pub endpoints: Option<String>,
    /// The spawned workers.
    pub workers: Vec<WorkerConfig>,
    /// `flush_interval` given to the workers, in milliseconds.
    pub flush_interval_ms: Option<u64>,
    /// The loadgen version.
    pub loadgen_version: String,
}

/// One spawned worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerConfig {
    /// Node id.
    pub node_id: String,
    /// Shard id (the node id unless given).
    pub shard_id: String,
}

/// One phase: as planned, and as it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseSummary {
    /// `name`.
    pub name: String,
    /// `stream`.
    pub stream: String,
    /// `events`: planned.
    pub events: u64,
    /// `rate`: `max` or `N/s`.
    pub rate: String,
    /// `publishers`.
    pub publishers: u32,
    /// `route.workers` (empty: all workers).
    pub route: Vec<String>,
    /// Events handed to the publishers.
    pub published: u64,
    /// Events acked as committed.
    pub acked: u64,
    /// Events reported failed (delivery deadline, rejected).
    pub failed: u64,
    /// Events dropped by a full buffer.
    pub dropped: u64,
    /// When the phase started, ms after the run started.
    pub started_ms: f64,
    /// How long the phase took, in milliseconds.
    pub duration_ms: f64,
    /// Acked events per second over the phase (set by [`Summary::finish`]).
    pub events_per_s: f64,
    /// The phase's latency (corrected when rate-limited).
    pub latency: LatencySummary,
    /// Acked events per node id in this phase.
    pub nodes: NodeCounters,
}

/// The throughput timeline.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ThroughputSummary {
    /// Bucket width in milliseconds.
    pub bucket_ms: u64,
    /// Acked events per bucket since the start.
    pub counts: Vec<u64>,
    /// Mean acked events per second.
    pub mean_per_s: f64,
    /// Highest bucket's events per second.
    pub peak_per_s: f64,
}

impl From<&Throughput> for ThroughputSummary {
    fn from(t: &Throughput) -> ThroughputSummary {
        ThroughputSummary {
            bucket_ms: t.bucket_ms,
            counts: t.counts.clone(),
            mean_per_s: t.mean_rate(),
            peak_per_s: t.peak_rate(),
        }
    }
}

/// Latency percentiles and curves, corrected and raw.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LatencySection {
    /// Free of coordinated omission: from each event's due time in rate-limited phases, from the
    /// publish call at max rate (what `latency.hgrm` holds).
    pub corrected: LatencySummary,
    /// From the publish call (what `latency-raw.hgrm` holds).
    pub raw: LatencySummary,
    /// The corrected percentile curve.
    pub corrected_curve: Vec<CurvePoint>,
    /// The raw percentile curve.
    pub raw_curve: Vec<CurvePoint>,
    /// Latencies above the histograms' range (an hour), counted at its top.
    pub clamped: u64,
}

impl From<&LatencyRecorder> for LatencySection {
    fn from(r: &LatencyRecorder) -> LatencySection {
        LatencySection {
            corrected: r.summary(),
            raw: r.raw_summary(),
            corrected_curve: r.curve(),
            raw_curve: r.raw_curve(),
            clamped: r.clamped(),
        }
    }
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultSummary {
    /// `kill` or `restart`.
    pub action: String,
    /// The node.
    pub node_id: String,
    /// When it was planned: `40% (event 28000)` or `2s`.
    pub planned: String,
    /// When it fired, ms after the run started (`None`: it did not fire).
    pub fired_ms: Option<f64>,
    /// How many events had been published when it fired.
    pub fired_at_event: Option<u64>,
    /// What happened, if worth saying (e.g. how long the restart took to be healthy).
    pub note: Option<String>,
}

impl FaultSummary {
    /// A fault as planned, not yet fired.
    pub fn planned(fault: &Fault, total_events: u64) -> FaultSummary {
        let planned = match fault.at {
            FaultAt::Event(i) => {
                let pct = if total_events == 0 {
                    0.0
                } else {
                    i as f64 * 100.0 / total_events as f64
                };
                format!("{} (event {i})", trim_number(pct, 3) + "%")
            }
            FaultAt::Elapsed(d) => format_duration(d),
        };
        FaultSummary {
            action: match fault.action {
                FaultAction::Kill => "kill",
                FaultAction::Restart => "restart",
            }
            .to_owned(),
            node_id: fault.node_id.clone(),
            planned,
            fired_ms: None,
            fired_at_event: None,
            note: None,
        }
    }
}

/// One expectation's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpectationResult {
    /// `query`, `shards`, `delivered` or `latency`.
    pub kind: String,
    /// One line describing it (`shards GeoLocationAgg per hours`).
    pub label: String,
    /// Its line in the scenario file.
    pub line: Option<u64>,
    /// The expected value.
    pub expected: serde_json::Value,
    /// The actual value (`null` when it could not be obtained; see `message`).
    pub actual: serde_json::Value,
    /// Whether it held.
    pub passed: bool,
    /// Reported but not gating: a `latency` expectation under `run --advisory-latency`. A run
    /// passes even when an advisory expectation does not hold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub advisory: bool,
    /// Why it failed, when the values alone do not say (a query error, …).
    pub message: Option<String>,
}

impl ExpectationResult {
    /// `PASS`, `FAIL`, or `WARN` for an advisory expectation that does not hold.
    pub fn status(&self) -> &'static str {
        match (self.passed, self.advisory) {
            (true, _) => "PASS",
            (false, true) => "WARN",
            (false, false) => "FAIL",
        }
    }

    /// The outcome of `expectation`: its actual value and whether it held.
    pub fn new(
        expectation: &Expectation,
        actual: serde_json::Value,
        passed: bool,
    ) -> ExpectationResult {
        ExpectationResult {
            kind: expectation.kind.name().to_owned(),
            label: expectation.kind.label(),
            line: expectation.pos.map(|p| p.line),
            expected: expectation.kind.expected_json(),
            actual,
            passed,
            advisory: false,
            message: None,
        }
    }

    /// A failed expectation whose actual value could not be obtained.
    pub fn error(expectation: &Expectation, message: impl Into<String>) -> ExpectationResult {
        ExpectationResult {
            message: Some(message.into()),
            ..ExpectationResult::new(expectation, serde_json::Value::Null, false)
        }
    }
}

impl PhaseSummary {
    /// A phase as planned, nothing measured yet.
    pub fn planned(phase: &Phase) -> PhaseSummary {
        PhaseSummary {
            name: phase.name.clone(),
            stream: phase.stream.clone(),
            events: phase.events,
            rate: phase.rate.to_string(),
            publishers: phase.publishers,
            route: match &phase.route {
                Route::AllWorkers => Vec::new(),
                Route::Workers(w) => w.clone(),
            },
            published: 0,
            acked: 0,
            failed: 0,
            dropped: 0,
            started_ms: 0.0,
            duration_ms: 0.0,
            events_per_s: 0.0,
            latency: LatencySummary::default(),
            nodes: NodeCounters::new(),
        }
    }
}

impl Summary {
    /// A summary of `scenario` started at `started_at`: configuration, phases and faults as
    /// planned; measurements empty.
    pub fn new(scenario: &Scenario, started_at: jiff::Timestamp) -> Summary {
        let total = scenario.total_events();
        Summary {
            scenario: scenario.name.clone(),
            description: scenario.description.clone(),
            started_at: format!("{:.3}", started_at),
            duration_ms: 0.0,
            seed: scenario.effective_seed(),
            config: RunConfig {
                scenario_file: scenario.source.display().to_string(),
                app: scenario.app.as_ref().map(|a| a.display().to_string()),
                database: match &scenario.cluster.database {
                    Database::EmbeddedSqlite => "sqlite".to_owned(),
                    Database::Url(u) => mask_password(u),
                },
                endpoints: scenario
                    .cluster
                    .endpoints
                    .as_ref()
                    .map(|e| e.url_set.clone()),
                workers: scenario
                    .cluster
                    .workers
                    .iter()
                    .map(|w| WorkerConfig {
                        node_id: w.node_id.clone(),
                        shard_id: w.effective_shard_id().to_owned(),
                    })
                    .collect(),
                flush_interval_ms: scenario
                    .cluster
                    .flush_interval
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                loadgen_version: env!("CARGO_PKG_VERSION").to_owned(),
            },
            phases: scenario.phases.iter().map(PhaseSummary::planned).collect(),
            nodes: NodeCounters::new(),
            throughput: ThroughputSummary::from(&Throughput::default()),
            latency: LatencySection::default(),
            faults: scenario
                .faults
                .iter()
                .map(|f| FaultSummary::planned(f, total))
                .collect(),
            expectations: Vec::new(),
            passed: false,
        }
    }

    /// Computes the derived fields: each phase's events per second, and `passed` (every
    /// expectation that is not advisory held; a run without expectations passes).
    pub fn finish(&mut self) {
        for p in &mut self.phases {
            p.events_per_s = if p.duration_ms > 0.0 {
                p.acked as f64 * 1_000.0 / p.duration_ms
            } else {
                0.0
            };
        }
        self.passed = self.expectations.iter().all(|e| e.passed || e.advisory);
    }

    /// Events planned, published, acked, failed and dropped over all phases.
    pub fn totals(&self) -> (u64, u64, u64, u64, u64) {
        self.phases.iter().fold((0, 0, 0, 0, 0), |t, p| {
            (
                t.0 + p.events,
                t.1 + p.published,
                t.2 + p.acked,
                t.3 + p.failed,
                t.4 + p.dropped,
            )
        })
    }
}

/// Masks the password of a `scheme://user:password@host/…` URL.
pub fn mask_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let Some(colon) = authority[..at].find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:***{}",
        &url[..scheme_end + 3],
        &authority[..colon],
        &rest[at..]
    )
}

/// A number with at most `decimals` decimals, trailing zeros trimmed.
pub(crate) fn trim_number(x: f64, decimals: usize) -> String {
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}
