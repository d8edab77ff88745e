//! The validated scenario: what a run needs, with positions kept for later errors.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shardtally_worker::bucket::Granularity;

use super::error::{Pos, Problem, ScenarioError};

/// The seed used when neither the file nor the command line gives one.
pub const DEFAULT_SEED: u64 = 0x5eed_5eed;

/// A validated scenario file (SPEC §5.1).
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// The file, as given (used in messages).
    pub source: PathBuf,
    /// `name`: also the results folder name (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// `description`.
    pub description: Option<String>,
    /// `app`, resolved against the scenario file's folder; `None` means the worker's bundled
    /// GeoLocation app.
    pub app: Option<PathBuf>,
    /// Where `app` was written.
    pub app_pos: Option<Pos>,
    /// `seed`: the generators' seed from the file; a `--seed` flag overrides it
    /// ([`Scenario::set_seed`]).
    pub seed: Option<u64>,
    /// `cluster`.
    pub cluster: Cluster,
    /// `phases`, in order; each knows its first global event index.
    pub phases: Vec<Phase>,
    /// `faults`, in file order.
    pub faults: Vec<Fault>,
    /// `expect`, in file order.
    pub expect: Vec<Expectation>,
}

impl Scenario {
    /// Reads, parses and validates a scenario file; `app` is resolved against its folder.
    pub fn load(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| ScenarioError::Read {
            path: path.to_owned(),
            error,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new(""));
        Scenario::parse(&text, path, base)
    }

    /// Parses and validates scenario text. `path` is used in messages only; `app` is resolved
    /// against `base_dir`.
    pub fn parse(
        text: &str,
        path: impl AsRef<Path>,
        base_dir: impl AsRef<Path>,
    ) -> Result<Scenario, ScenarioError> {
        let path = path.as_ref();
        super::validate::parse(text, path, base_dir.as_ref()).map_err(|p| p.into_error(path.into()))
    }

    /// Total events over all phases.
    pub fn total_events(&self) -> u64 {
        self.phases.iter().map(|p| p.events).sum()
    }

    /// The seed to use: the override, else the file's, else [`DEFAULT_SEED`].
    pub fn effective_seed(&self) -> u64 {
        self.seed.unwrap_or(DEFAULT_SEED)
    }

    /// Overrides the file's seed (the `--seed` flag); `None` keeps the file's.
    pub fn set_seed(&mut self, seed: Option<u64>) {
        if seed.is_some() {
            self.seed = seed;
        }
    }

    /// An error about this file at `pos` (for checks made after loading: an unknown stream, a
    /// query that does not parse, …). Displays as `path:line:column: message`.
    pub fn error_at(&self, pos: Option<Pos>, message: impl Into<String>) -> ScenarioError {
        Problem::at(pos, message).into_error(self.source.clone())
    }

    /// The worker with this node id.
    pub fn worker(&self, node_id: &str) -> Option<&WorkerSpec> {
        self.cluster.workers.iter().find(|w| w.node_id == node_id)
    }
}

/// `cluster`: the workers loadgen spawns, or the endpoints of a running cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// `workers` (empty when `endpoints` is given).
    pub workers: Vec<WorkerSpec>,
    /// `endpoints`: a receiver URL set naming a running cluster (exclusive with `workers`).
    pub endpoints: Option<Endpoints>,
    /// `database` (default: embedded SQLite).
    pub database: Database,
    /// `flush_interval` passed to spawned workers; `None` keeps the worker's default.
    pub flush_interval: Option<Duration>,
}

/// `cluster.endpoints`, checked by the publisher's URL-set parser when the run starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The URL set as written, e.g. `{tcp://127.0.0.1:9611,tcp://127.0.0.1:9612}`.
    pub url_set: String,
    /// Where it was written.
    pub pos: Option<Pos>,
}

/// One worker loadgen spawns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSpec {
    /// `node_id`.
    pub node_id: String,
    /// `shard_id` when given; the worker defaults it to the node id.
    pub shard_id: Option<String>,
    /// Where the worker's entry starts.
    pub pos: Option<Pos>,
}

impl WorkerSpec {
    /// The shard id this worker writes under: `shard_id`, else the node id.
    pub fn effective_shard_id(&self) -> &str {
        self.shard_id.as_deref().unwrap_or(&self.node_id)
    }
}

/// `cluster.database`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Database {
    /// `sqlite`: a fresh SQLite file in the run's results folder.
    #[default]
    EmbeddedSqlite,
    /// A database URL: `postgres://…`, `postgresql://…`, `mysql://…`, `mariadb://…` or `sqlite:…`.
    Url(String),
}

/// One phase: `events` events of one stream, at a rate, through some workers.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// `name` (unique within the scenario).
    pub name: String,
    /// Where the phase's entry starts.
    pub pos: Option<Pos>,
    /// `stream`: the Siddhi stream the events belong to.
    pub stream: String,
    /// Where `stream` was written (for "no such stream" errors).
    pub stream_pos: Option<Pos>,
    /// `events` (≥ 1).
    pub events: u64,
    /// `rate` (default `max`).
    pub rate: Rate,
    /// `route` (default: round-robin over all workers).
    pub route: Route,
    /// `publishers`: how many gateways publish this phase's events concurrently (default 1).
    pub publishers: u32,
    /// `fields`, in file order.
    pub fields: Vec<FieldSpec>,
    /// The global index of this phase's first event (events of earlier phases come first).
    pub first_event: u64,
}

/// `rate`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// `max`: as fast as acks allow (closed model).
    Max,
    /// Events per second, a constant arrival rate (open model); finite and > 0.
    PerSecond(f64),
}

impl Rate {
    /// The interval between two scheduled events, for a rate-limited phase.
    pub fn interval(self) -> Option<Duration> {
        match self {
            Rate::Max => None,
            Rate::PerSecond(r) => Duration::try_from_secs_f64(1.0 / r).ok(),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Max => f.write_str("max"),
            Rate::PerSecond(r) => write!(f, "{r}/s"),
        }
    }
}

/// `route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// No `route`: round-robin over every worker of the cluster.
    AllWorkers,
    /// `route: { workers: [...] }`: round-robin over these node ids (each exists in the cluster).
    Workers(Vec<String>),
}

/// One entry of `fields`: an attribute name and how to produce its value.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    /// The attribute name.
    pub name: String,
    /// Where the name was written.
    pub pos: Option<Pos>,
    /// The generator.
    pub generator: GeneratorSpec,
    /// Where the value (constant or generator map) was written.
    pub value_pos: Option<Pos>,
}

/// A YAML scalar as written in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `~` / `null` / nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A number with a fraction or exponent.
    Float(f64),
    /// A string (quoted or plain).
    Str(String),
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Null => f.write_str("null"),
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Int(i) => write!(f, "{i}"),
            Literal::Float(x) => write!(f, "{x:?}"),
            Literal::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl Literal {
    /// A short name of this literal's kind for messages: `a string`, `an integer`, ….
    pub fn kind(&self) -> &'static str {
        match self {
            Literal::Null => "null",
            Literal::Bool(_) => "a bool",
            Literal::Int(_) => "an integer",
            Literal::Float(_) => "a number",
            Literal::Str(_) => "a string",
        }
    }
}

/// A literal and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The value.
    pub value: Literal,
    /// Where.
    pub pos: Option<Pos>,
}

/// A field generator, checked for shape; its types are checked against the stream schema when
/// compiled into a [`crate::generate::PhaseGenerator`].
#[derive(Debug, Clone, PartialEq)]
pub enum GeneratorSpec {
    /// A constant: `country: Italy`, `price: 9.5`, `ok: true`, `note: ~`.
    Constant(Item),
    /// `{ one_of: [a, b], weights: [3, 1] }`: a random pick, uniform without `weights`.
    /// Weights are finite, ≥ 0, one per value, not all zero.
    OneOf {
        /// The values.
        values: Vec<Item>,
        /// The weights (same length as `values`).
        weights: Option<Vec<f64>>,
    },
    /// `{ between: [lo, hi] }`: uniform in `[lo, hi]` — integers inclusive, floats uniform,
    /// timestamps (RFC 3339 strings or epoch ms) as epoch-ms longs.
    Between {
        /// Lower bound.
        lo: Item,
        /// Upper bound.
        hi: Item,
    },
    /// `{ zipf: { values: [...], s: 1.1 } }`: value of rank k (1-based, file order) with
    /// probability ∝ 1/k^s; `s` defaults to 1 and is finite and > 0.
    Zipf {
        /// The values, most frequent first.
        values: Vec<Item>,
        /// The exponent.
        s: f64,
    },
    /// `{ sequence: [a, b, c] }`: event i of the phase gets `values[i % len]`.
    Cycle {
        /// The values.
        values: Vec<Item>,
    },
    /// `{ sequence: { start: 0, step: 1 } }`: event i of the phase gets `start + i × step`.
    /// Both default (start 0, step 1). For a `long` attribute `start` may be an RFC 3339
    /// timestamp and `step` a duration (`250ms`), giving epoch milliseconds.
    Counter {
        /// `start`, or `None` for 0.
        start: Option<Item>,
        /// `step`, or `None` for 1.
        step: Option<Item>,
    },
}

/// One fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// When it fires.
    pub at: FaultAt,
    /// What it does.
    pub action: FaultAction,
    /// The node it hits (a node id of `cluster.workers`).
    pub node_id: String,
    /// Where the fault's entry starts.
    pub pos: Option<Pos>,
}

/// `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAt {
    /// `at: 40%`: once this many events (a percentage of all phases' events, in phase order,
    /// rounded down) have been published.
    Event(u64),
    /// `at: 2s`: this long after the first phase starts.
    Elapsed(Duration),
}

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// `kill`: SIGKILL, a real crash.
    Kill,
    /// `restart`: start the node again under the same node and shard id.
    Restart,
}

/// One `expect` item.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    /// Where the item starts.
    pub pos: Option<Pos>,
    /// What is expected.
    pub kind: ExpectKind,
}

/// What an expectation asserts.
#[derive(Debug, Clone, PartialEq)]
pub enum ExpectKind {
    /// `{ query: "...", rows: [[...]] }`: the store query returns exactly these rows.
    Query {
        /// The Siddhi store query.
        query: String,
        /// Where the query was written.
        query_pos: Option<Pos>,
        /// The expected rows; cells are YAML scalars as JSON values, for exact comparison.
        rows: Vec<Vec<serde_json::Value>>,
    },
    /// `{ shards: { aggregation, per, counts } }`: per-shard totals of `AGG_COUNT`.
    Shards {
        /// The aggregation.
        aggregation: String,
        /// The granularity whose table is summed.
        per: Granularity,
        /// Expected count per shard, in file order.
        counts: Vec<ShardCount>,
    },
    /// `{ delivered: exactly-once }`: every published event acked, none dropped, none counted
    /// twice.
    Delivered,
    /// `{ latency: { p99: 500ms, … } }`: upper bounds on publish→ack latency percentiles.
    Latency(LatencyBounds),
}

/// One shard's expected count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardCount {
    /// The key as written: a node id or a shard id.
    pub key: String,
    /// The shard id it stands for (a node id is mapped to its worker's shard id).
    pub shard_id: String,
    /// The expected count.
    pub count: u64,
    /// Where the key was written.
    pub pos: Option<Pos>,
}

/// Latency upper bounds (at least one is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencyBounds {
    /// `p50`.
    pub p50: Option<Duration>,
    /// `p90`.
    pub p90: Option<Duration>,
    /// `p99`.
    pub p99: Option<Duration>,
    /// `p999` (99.9th percentile).
    pub p999: Option<Duration>,
    /// `max`.
    pub max: Option<Duration>,
}

impl LatencyBounds {
    /// The bounds that are set, as `(label, percentile, bound)`; `max` is percentile 100.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, f64, Duration)> + '_ {
        [
            ("p50", 50.0, self.p50),
            ("p90", 90.0, self.p90),
            ("p99", 99.0, self.p99),
            ("p99.9", 99.9, self.p999),
            ("max", 100.0, self.max),
        ]
        .into_iter()
        .filter_map(|(label, p, d)| d.map(|d| (label, p, d)))
    }
}

impl ExpectKind {
    /// The kind's key in the file: `query`, `shards`, `delivered` or `latency`.
    pub fn name(&self) -> &'static str {
        match self {
            ExpectKind::Query { .. } => "query",
            ExpectKind::Shards { .. } => "shards",
            ExpectKind::Delivered => "delivered",
            ExpectKind::Latency(_) => "latency",
        }
    }

    /// A one-line description for tables: `query`, `shards GeoLocationAgg per hours`, ….
    pub fn label(&self) -> String {
        match self {
            ExpectKind::Query { query, .. } => {
                format!(
                    "query {}",
                    query.split_whitespace().collect::<Vec<_>>().join(" ")
                )
            }
            ExpectKind::Shards {
                aggregation, per, ..
            } => format!("shards {aggregation} per {per}"),
            ExpectKind::Delivered => "delivered exactly-once".to_owned(),
            ExpectKind::Latency(_) => "latency".to_owned(),
        }
    }

    /// The expected value as JSON, for `summary.json` and the report.
    pub fn expected_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            ExpectKind::Query { rows, .. } => json!(rows),
            ExpectKind::Shards { counts, .. } => serde_json::Value::Object(
                counts
                    .iter()
                    .map(|c| (c.shard_id.clone(), json!(c.count)))
                    .collect(),
            ),
            ExpectKind::Delivered => json!("exactly-once"),
            ExpectKind::Latency(bounds) => serde_json::Value::Object(
                bounds
                    .iter()
                    .map(|(label, _, d)| (label.to_owned(), json!(format_duration(d))))
                    .collect(),
            ),
        }
    }
}

/// Formats a duration humanely for messages and reports: `500ms`, `1.5s`, `250µs`.
pub fn format_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us == 0 && !d.is_zero() {
        format!("{}ns", d.as_nanos())
    } else if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        trim_float(us as f64 / 1_000.0, "ms")
    } else {
        trim_float(d.as_secs_f64(), "s")
    }
}

fn trim_float(x: f64, unit: &str) -> String {
    let s = format!("{x:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}{unit}")
}
