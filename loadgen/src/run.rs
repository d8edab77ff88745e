//! `run SCENARIO.yaml…`: validate every file, then run each scenario against its cluster.
//!
//! 1. **Validate, before starting anything**: the scenario file, its Siddhi app, every phase's
//!    stream and field generators, every expectation's query (parsed and checked against the
//!    aggregation's layout), the endpoints of a running cluster, and that expectations reading
//!    the database have one. Any problem is printed as `path:line:column: message` and the run
//!    exits 2.
//! 2. **Cluster**: the spawned workers (see [`crate::cluster`]) on a fresh database, or the
//!    running cluster of `cluster.endpoints`.
//! 3. **Phases, in order**: each phase's events are split over `publishers` publishers (one
//!    [`Publisher`] each, like separate gateways) sending round-robin to the phase's workers
//!    (`route`, default all). `rate: max` publishes as fast as the publisher's buffer takes
//!    events (blocking while it is full); `rate: N` is an open model — event *i* is due at
//!    *start + i/N*, whatever happened to earlier ones, and its latency is measured from that
//!    due time, so stalls are not hidden (no coordinated omission). A phase starts when the
//!    previous one has handed all its events over; delivery overlaps.
//! 4. **Faults** fire from a task watching the number of events published (`at: 40%`) or the
//!    time since the first phase started (`at: 2s`): `kill` is SIGKILL, `restart` brings the
//!    node back on the same port and waits until it is ready.
//! 5. **Drain**: every publisher is flushed and closed; then the run waits two flush intervals
//!    and checks the expectations ([`crate::expect`]).
//! 6. **Report**: the console table, one line per failed expectation, and
//!    `results/<scenario>/<UTC timestamp>/` (`summary.json`, `latency.hgrm`,
//!    `latency-raw.hgrm`, `report.html`, the workers' logs, the embedded database).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use shardtally_loadgen::generate::{EventCursor, PhaseGenerator};
use shardtally_loadgen::measure::{LatencyRecorder, NodeCounters, Throughput};
use shardtally_loadgen::report::{
    ExpectationResult, FaultSummary, LatencySection, ReportError, Summary, ThroughputSummary,
    console_table, create_results_dir, write_results,
};
use shardtally_loadgen::scenario::{
    Database, ExpectKind, Fault, FaultAction, FaultAt, Phase, Rate, Route, Scenario,
    format_duration,
};
use shardtally_publisher::protocol::StreamSchema;
use shardtally_publisher::{
    ConfigError, DeliveryReport, FullPolicy, Outcome, PublishError, Publisher, PublisherBuilder,
    Stats, UrlSet, Value, ValueRef,
};
use shardtally_worker::catalog::{Catalog, CatalogError};
use shardtally_worker::config::AppSource;
use shardtally_worker::query::{self, StoreQuery};
use shardtally_worker::store::{Backend, Store, StoreError};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::{EXIT_FAILED, EXIT_OK, EXIT_USAGE, RunArgs};
use crate::cluster::{
    Cluster, ClusterConfig, ClusterError, DEFAULT_FLUSH_INTERVAL, DatabaseError, RunDatabase,
};
use crate::expect::{self, Delivery, Observed};

/// How long `publish` waits for buffer space before dropping an event (counted).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an event may stay unacked before the publisher gives it up (counted as failed).
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);
/// How long `close` waits for the last acks.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the fault task looks at the number of events published.
const FAULT_POLL: Duration = Duration::from_millis(1);
/// Exit status after Ctrl-C.
const EXIT_INTERRUPTED: u8 = 130;

/// Why a scenario's run could not complete (its expectations are another matter).
#[derive(Debug, thiserror::Error)]
enum RunError {
    /// The results folder could not be written.
    #[error(transparent)]
    Report(#[from] ReportError),
    /// The run's database could not be created or dropped.
    #[error("database: {0}")]
    Database(DatabaseError),
    /// A worker could not be started.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The database could not be read for the expectations.
    #[error("database: {0}")]
    Store(StoreError),
    /// A publisher could not be built.
    #[error("cannot build a publisher: {0}")]
    Publisher(ConfigError),
    /// One of the run's tasks panicked.
    #[error("a loadgen task failed: {0}")]
    Task(String),
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
}

impl RunError {
    fn exit_code(&self) -> u8 {
        match self {
            RunError::Cluster(e) if e.is_refusal() => EXIT_USAGE,
            RunError::Database(DatabaseError::Url(_)) => EXIT_USAGE,
            RunError::Interrupted => EXIT_INTERRUPTED,
            _ => EXIT_FAILED,
        }
    }
}

/// A scenario checked and ready to run.
struct Prepared {
    scenario: Scenario,
    catalog: Catalog,
    /// One per phase.
    generators: Vec<PhaseGenerator>,
}

/// Runs `run`: 0 when every expectation of every scenario held, 1 when one failed (or a run
/// could not complete), 2 when a file is invalid (nothing is started then).
pub(crate) async fn run(args: RunArgs) -> u8 {
    let mut prepared = Vec::with_capacity(args.scenarios.len());
    for path in &args.scenarios {
        match prepare(path, &args) {
            Ok(p) => prepared.push(p),
            Err(message) => {
                eprintln!("error: {message}");
                return EXIT_USAGE;
            }
        }
    }
    let mut code = EXIT_OK;
    for p in &prepared {
        match run_one(p, &args).await {
            Ok(true) => {}
            Ok(false) => code = code.max(EXIT_FAILED),
            Err(e) => {
                eprintln!("error: {}: {e}", p.scenario.source.display());
                if matches!(e, RunError::Interrupted) {
                    return EXIT_INTERRUPTED;
                }
                code = code.max(e.exit_code());
            }
        }
    }
    code
}

/// Loads and checks one scenario file and everything it refers to.
fn prepare(path: &Path, args: &RunArgs) -> Result<Prepared, String> {
    let mut scenario = Scenario::load(path).map_err(|e| e.to_string())?;
    scenario.set_seed(args.seed);
    if let Some(url) = &args.database_url {
        Backend::from_url(url).map_err(|e| format!("--database-url: {e}"))?;
    }
    let source = match &scenario.app {
        Some(p) => AppSource::File(p.clone()),
        None => AppSource::Bundled,
    };
    let catalog = Catalog::load(&source, true).map_err(|e| match e {
        CatalogError::Parse { path, source } => {
            format!(
                "{path}:{}:{}: {}",
                source.line, source.column, source.message
            )
        }
        CatalogError::Read { .. } => scenario
            .error_at(scenario.app_pos, e.to_string())
            .to_string(),
        CatalogError::Engine { .. } => e.to_string(),
    })?;
    let mut generators = Vec::with_capacity(scenario.phases.len());
    for phase in &scenario.phases {
        let Some(i) = catalog.stream_index(&phase.stream) else {
            let known: Vec<&str> = catalog.streams().iter().map(|s| s.name.as_str()).collect();
            return Err(scenario
                .error_at(
                    phase.stream_pos,
                    format!(
                        "the app `{}` has no stream `{}` (streams: {})",
                        catalog.name(),
                        phase.stream,
                        known.join(", ")
                    ),
                )
                .to_string());
        };
        let schema = &catalog.streams()[i];
        generators
            .push(PhaseGenerator::compile(&scenario, phase, schema).map_err(|e| e.to_string())?);
    }
    for e in &scenario.expect {
        check_expectation(&scenario, &catalog, &e.kind, e.pos)?;
    }
    if let Some(ep) = &scenario.cluster.endpoints {
        UrlSet::parse(&ep.url_set).map_err(|e| {
            scenario
                .error_at(ep.pos, format!("endpoints: {e}"))
                .to_string()
        })?;
        if external_database(&scenario, args).is_none()
            && let Some(e) = scenario.expect.iter().find(|e| reads_database(&e.kind))
        {
            return Err(scenario
                .error_at(
                    e.pos,
                    format!(
                        "this `{}` expectation reads the database, but the cluster is a \
                         running one (`endpoints`): give its database with --database-url \
                         URL or `cluster.database`",
                        e.kind.name()
                    ),
                )
                .to_string());
        }
    }
    Ok(Prepared {
        scenario,
        catalog,
        generators,
    })
}

/// Checks an expectation against the app: its query parses and fits the aggregation's layout;
/// its aggregation exists and keeps the granularity.
fn check_expectation(
    scenario: &Scenario,
    catalog: &Catalog,
    kind: &ExpectKind,
    pos: Option<shardtally_loadgen::scenario::Pos>,
) -> Result<(), String> {
    let known = || {
        catalog
            .app
            .aggregations
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match kind {
        ExpectKind::Query {
            query, query_pos, ..
        } => {
            let err = |m: String| scenario.error_at(*query_pos, m).to_string();
            let q = StoreQuery::parse(query).map_err(|e| err(format!("query: {e}")))?;
            let Some((_, layout)) = catalog.aggregation(&q.aggregation) else {
                return Err(err(format!(
                    "query: the app has no aggregation `{}` (it has {})",
                    q.aggregation,
                    known()
                )));
            };
            query::check(&q, layout).map_err(|e| err(format!("query: {e}")))
        }
        ExpectKind::Shards {
            aggregation, per, ..
        } => {
            let Some((_, layout)) = catalog.aggregation(aggregation) else {
                return Err(scenario
                    .error_at(
                        pos,
                        format!(
                            "shards: the app has no aggregation `{aggregation}` (it has {})",
                            known()
                        ),
                    )
                    .to_string());
            };
            if !layout.granularities.contains(per) {
                return Err(scenario
                    .error_at(
                        pos,
                        format!("shards: aggregation `{aggregation}` does not keep {per}"),
                    )
                    .to_string());
            }
            Ok(())
        }
        ExpectKind::Delivered | ExpectKind::Latency(_) => Ok(()),
    }
}

fn reads_database(kind: &ExpectKind) -> bool {
    matches!(
        kind,
        ExpectKind::Query { .. } | ExpectKind::Shards { .. } | ExpectKind::Delivered
    )
}

/// The database of a running cluster: `--database-url`, else the scenario's URL.
fn external_database<'a>(scenario: &'a Scenario, args: &'a RunArgs) -> Option<&'a str> {
    args.database_url
        .as_deref()
        .or(match &scenario.cluster.database {
            Database::Url(u) => Some(u.as_str()),
            Database::EmbeddedSqlite => None,
        })
}

/// Runs one scenario: Ok(whether every expectation held).
async fn run_one(p: &Prepared, args: &RunArgs) -> Result<bool, RunError> {
    let s = &p.scenario;
    let started_at = jiff::Timestamp::now();
    let dir = create_results_dir(&args.results, &s.name, started_at)?;
    let db = if s.cluster.endpoints.is_none() {
        Some(match external_database(s, args) {
            Some(url) => RunDatabase::for_spawned(url, &s.name)
                .await
                .map_err(RunError::Database)?,
            None => RunDatabase::embedded(&dir),
        })
    } else {
        external_database(s, args).map(RunDatabase::existing)
    };
    eprintln!(
        "{}: {} events in {} phase(s), database {}, results in {}",
        s.name,
        s.total_events(),
        s.phases.len(),
        db.as_ref().map_or("none", |d| d.display.as_str()),
        dir.display()
    );
    let outcome = tokio::select! {
        r = drive(p, &dir, db.as_ref(), started_at, args.advisory_latency) => r,
        _ = tokio::signal::ctrl_c() => Err(RunError::Interrupted),
    };
    if let Some(db) = db {
        match db.finish(args.keep_database).await {
            Ok(Some(url)) => eprintln!("kept the run's database: {url}"),
            Ok(None) => {}
            Err(e) => eprintln!("warning: {e}"),
        }
    }
    outcome
}

/// What one publisher's sending task did (drops for a full buffer are in its stats).
#[derive(Debug, Default)]
struct Sent {
    /// Events refused for another reason than a full buffer.
    refused: u64,
    /// The last refusal.
    last_error: Option<String>,
}

/// What one publisher's delivery reports said.
#[derive(Debug)]
struct Collected {
    recorder: LatencyRecorder,
    throughput: Throughput,
    nodes: NodeCounters,
    last_ack: Option<Instant>,
}

/// One publisher of a phase.
struct Part {
    publisher: Publisher,
    sender: Option<tokio::task::JoinHandle<Sent>>,
    sent: Sent,
    collector: tokio::task::JoinHandle<Collected>,
}

/// A phase as it ran.
struct PhaseRun {
    start: Instant,
    handed_over: Instant,
    parts: Vec<Part>,
}

fn join_error(e: tokio::task::JoinError) -> RunError {
    RunError::Task(e.to_string())
}

/// Starts the cluster, runs the phases and faults, drains, checks and reports.
async fn drive(
    p: &Prepared,
    dir: &Path,
    db: Option<&RunDatabase>,
    started_at: jiff::Timestamp,
    advisory_latency: bool,
) -> Result<bool, RunError> {
    let s = &p.scenario;
    let flush_interval = s.cluster.flush_interval.unwrap_or(DEFAULT_FLUSH_INTERVAL);
    let mut cluster = None;
    if s.cluster.endpoints.is_none() {
        let Some(db) = db else {
            return Err(RunError::Task("no database for the spawned workers".into()));
        };
        let config = ClusterConfig {
            database_url: db.url.clone(),
            app: s
                .app
                .as_ref()
                .map(|a| std::path::absolute(a).unwrap_or_else(|_| a.clone())),
            flush_interval,
            log_dir: dir.to_owned(),
            extra_args: Vec::new(),
        };
        let started = Cluster::start(&s.cluster.workers, &config).await?;
        eprintln!(
            "{} worker(s) ready: {}",
            started.workers().len(),
            started
                .workers()
                .iter()
                .map(|w| format!("{} {} (http {})", w.spec.node_id, w.endpoint(), w.http))
                .collect::<Vec<_>>()
                .join(", ")
        );
        cluster = Some(started);
    }
    let endpoints: HashMap<String, String> = cluster
        .as_ref()
        .map(|c| {
            c.workers()
                .iter()
                .map(|w| (w.spec.node_id.clone(), w.endpoint()))
                .collect()
        })
        .unwrap_or_default();
    let store = match db {
        Some(db) if s.expect.iter().any(|e| reads_database(&e.kind)) => {
            Some(Store::connect(&db.url, 2).await.map_err(RunError::Store)?)
        }
        _ => None,
    };
    let mut baseline: BTreeMap<String, i64> = BTreeMap::new();
    if let Some(store) = &store
        && s.expect
            .iter()
            .any(|e| matches!(e.kind, ExpectKind::Delivered))
    {
        let before = expect::committed_by_stream(&p.catalog, store)
            .await
            .map_err(RunError::Store)?;
        baseline = before
            .into_iter()
            .filter_map(|(k, v)| v.ok().map(|n| (k, n)))
            .collect();
    }

    let total = s.total_events();
    let progress = progress_bar(total);
    let published = Arc::new(AtomicU64::new(0));
    let run_start = Instant::now();
    let cluster = cluster.map(|c| Arc::new(Mutex::new(c)));
    let stop_faults = CancellationToken::new();
    let _stop_faults_on_drop = stop_faults.clone().drop_guard();
    let faults = cluster.as_ref().map(|c| {
        tokio::spawn(run_faults(
            Arc::clone(c),
            s.faults.clone(),
            total,
            Arc::clone(&published),
            run_start,
            stop_faults.clone(),
            progress.clone(),
        ))
    });

    let mut phases: Vec<PhaseRun> = Vec::with_capacity(s.phases.len());
    for (i, (phase, generator)) in s.phases.iter().zip(&p.generators).enumerate() {
        progress.set_message(phase.name.clone());
        let url_set = match &s.cluster.endpoints {
            Some(e) => e.url_set.clone(),
            None => phase_url_set(phase, &s.cluster.workers, &endpoints),
        };
        let start = Instant::now();
        let cursors = generator.split(phase.publishers, s.effective_seed());
        let n = cursors.len();
        let mut parts = Vec::with_capacity(n);
        for (k, cursor) in cursors.into_iter().enumerate() {
            let publisher =
                build_publisher(&url_set, generator.schema(), i, k).map_err(RunError::Publisher)?;
            let Some(reports) = publisher.take_delivery_reports() else {
                return Err(RunError::Task("delivery reports are not enabled".into()));
            };
            let pace = Pace::new(phase.rate, n, k, start);
            let (due_tx, due_rx) = match pace {
                Some(_) => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    (Some(tx), Some(rx))
                }
                None => (None, None),
            };
            let collector = tokio::spawn(collect(reports, due_rx, run_start, progress.clone()));
            let sender = tokio::spawn(send(
                publisher.clone(),
                phase.stream.clone(),
                cursor,
                pace,
                Arc::clone(&published),
                due_tx,
            ));
            parts.push(Part {
                publisher,
                sender: Some(sender),
                sent: Sent::default(),
                collector,
            });
        }
        for part in &mut parts {
            if let Some(sender) = part.sender.take() {
                part.sent = sender.await.map_err(join_error)?;
            }
        }
        phases.push(PhaseRun {
            start,
            handed_over: Instant::now(),
            parts,
        });
    }

    // Drain: flush and close every publisher, so every event is acked or failed.
    progress.set_message("draining");
    let mut closing = JoinSet::new();
    for part in phases.iter().flat_map(|ph| &ph.parts) {
        let publisher = part.publisher.clone();
        closing.spawn(async move {
            let _ = publisher.flush().await;
            let _ = publisher.close(CLOSE_TIMEOUT).await;
        });
    }
    while let Some(r) = closing.join_next().await {
        r.map_err(join_error)?;
    }
    stop_faults.cancel();
    let (fault_summaries, fault_errors) = match faults {
        Some(task) => task.await.map_err(join_error)?,
        None => (Vec::new(), Vec::new()),
    };
    progress.finish_and_clear();
    tokio::time::sleep(flush_interval * 2).await;

    // Measurements.
    let mut summary = Summary::new(s, started_at);
    if let Some(db) = db {
        summary.config.database = db.display.clone();
    }
    summary.faults = fault_summaries;
    let mut recorder = LatencyRecorder::new();
    let mut throughput = Throughput::default();
    let mut nodes = NodeCounters::new();
    let mut delivery = Delivery {
        planned: total,
        ..Delivery::default()
    };
    let mut last_ack: Option<Instant> = None;
    for ((phase, run), ps) in s.phases.iter().zip(phases).zip(&mut summary.phases) {
        let mut phase_recorder = LatencyRecorder::new();
        let mut phase_nodes = NodeCounters::new();
        let mut phase_last_ack: Option<Instant> = None;
        for part in run.parts {
            let stats: Stats = part.publisher.stats();
            let c = part.collector.await.map_err(join_error)?;
            phase_recorder.merge(&c.recorder);
            phase_nodes.merge(&c.nodes);
            throughput.merge(&c.throughput);
            phase_last_ack = phase_last_ack.max(c.last_ack);
            ps.published += stats.published;
            ps.acked += stats.acked;
            ps.failed += stats.failed_total();
            ps.dropped += stats.dropped_total();
            delivery.published += stats.published;
            delivery.acked += stats.acked;
            delivery.failed += stats.failed_total();
            delivery.dropped += stats.dropped_total();
            delivery.refused += part.sent.refused;
            *delivery.per_stream.entry(phase.stream.clone()).or_default() += stats.published;
            if let Some(f) = stats.last_failure.or(part.sent.last_error) {
                delivery.last_failure = Some(f);
            }
        }
        ps.started_ms = ms(run.start.saturating_duration_since(run_start));
        ps.duration_ms = ms(phase_last_ack
            .unwrap_or(run.handed_over)
            .saturating_duration_since(run.start));
        ps.latency = phase_recorder.summary();
        ps.nodes = phase_nodes.clone();
        recorder.merge(&phase_recorder);
        nodes.merge(&phase_nodes);
        last_ack = last_ack.max(phase_last_ack);
    }
    summary.duration_ms = ms(last_ack
        .unwrap_or(run_start)
        .saturating_duration_since(run_start));
    summary.nodes = nodes;
    summary.throughput = ThroughputSummary::from(&throughput);
    summary.latency = LatencySection::from(&recorder);

    // Expectations.
    let observed = Observed {
        catalog: &p.catalog,
        store: store.as_ref(),
        delivery: &delivery,
        baseline: &baseline,
        latency: &recorder,
    };
    let mut results: Vec<ExpectationResult> = Vec::with_capacity(s.expect.len());
    for e in &s.expect {
        let mut result = expect::check(e, &observed).await;
        result.advisory = advisory_latency && matches!(e.kind, ExpectKind::Latency(_));
        results.push(result);
    }
    summary.expectations = results;
    summary.finish();
    if let Some(store) = store {
        store.close().await;
    }
    if let Some(c) = cluster {
        c.lock().await.stop().await;
    }

    // Report.
    let files = write_results(dir, &summary, &recorder)?;
    print!("{}", console_table(&summary));
    for e in summary.expectations.iter().filter(|e| !e.passed) {
        eprintln!("{}", failure_line(&s.source, e));
    }
    for f in &fault_errors {
        eprintln!("error: fault {f}");
    }
    println!("report: {}", files.report.display());
    Ok(summary.passed && fault_errors.is_empty())
}

/// `FAIL path:line: label: expected … / actual …[ (message)]` (`WARN` when advisory).
fn failure_line(source: &Path, e: &ExpectationResult) -> String {
    let at = match e.line {
        Some(l) => format!("{}:{l}", source.display()),
        None => source.display().to_string(),
    };
    let compact = |v: &serde_json::Value| serde_json::to_string(v).unwrap_or_default();
    let mut line = format!(
        "{} {at}: {}: expected {} / actual {}",
        e.status(),
        e.label,
        compact(&e.expected),
        compact(&e.actual)
    );
    if let Some(m) = &e.message {
        line.push_str(&format!(" ({m})"));
    }
    line
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// `{tcp://a,tcp://b}`: the phase's workers (its `route`, else all), round-robin.
fn phase_url_set(
    phase: &Phase,
    workers: &[shardtally_loadgen::scenario::WorkerSpec],
    endpoints: &HashMap<String, String>,
) -> String {
    let nodes: Vec<&str> = match &phase.route {
        Route::AllWorkers => workers.iter().map(|w| w.node_id.as_str()).collect(),
        Route::Workers(ids) => ids.iter().map(String::as_str).collect(),
    };
    let members: Vec<&str> = nodes
        .iter()
        .filter_map(|n| endpoints.get(*n).map(String::as_str))
        .collect();
    format!("{{{}}}", members.join(","))
}

fn build_publisher(
    url_set: &str,
    schema: &StreamSchema,
    phase: usize,
    part: usize,
) -> Result<Publisher, ConfigError> {
    loadgen_publisher(
        url_set,
        format!("loadgen-p{}-{part}", phase + 1),
        concat!("shardtally-loadgen/", env!("CARGO_PKG_VERSION")),
        schema,
        DELIVERY_DEADLINE,
    )
    .batch_max_events(SCENARIO_BATCH_EVENTS)
    .batches_per_turn(1)
    .build()
}

/// Events per batch for a scenario's publishers. A phase is a few thousand events, published
/// in a few milliseconds: with the publisher's defaults (10,000 events, turns of 8 batches) it
/// would reach one worker of its route; 1,000-event batches, one per turn, spread it over all of
/// them, so the merges across shards a scenario checks are exercised. (`bench` keeps the
/// defaults.)
const SCENARIO_BATCH_EVENTS: u32 = 1000;

/// The settings every loadgen publisher (`run`'s and `bench`'s) shares: delivery reports on,
/// `publish` waits up to [`BLOCK_TIMEOUT`] for buffer space, reconnects within 50–500 ms, and
/// an event unacked after `delivery_deadline` is given up (counted failed).
pub(crate) fn loadgen_publisher(
    url_set: &str,
    publisher_id: String,
    client_name: &str,
    schema: &StreamSchema,
    delivery_deadline: Duration,
) -> PublisherBuilder {
    Publisher::builder(url_set)
        .publisher_id(publisher_id)
        .client_name(client_name)
        .schema(schema.clone())
        .delivery_reports(true)
        .full_policy(FullPolicy::Block {
            timeout: BLOCK_TIMEOUT,
        })
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .delivery_deadline(delivery_deadline)
}

/// When each event of one publisher of a rate-limited phase is due.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    start: Instant,
    /// Seconds between two events of this publisher.
    every_s: f64,
    /// This publisher's offset, so the phase's publishers interleave.
    offset_s: f64,
}

impl Pace {
    /// Publisher `k` of `n` in a phase at `rate`: its event `j` is due at
    /// `start + (j·n + k) / rate`, so together they publish at `rate`.
    pub(crate) fn new(rate: Rate, n: usize, k: usize, start: Instant) -> Option<Pace> {
        match rate {
            Rate::Max => None,
            Rate::PerSecond(r) => Some(Pace {
                start,
                every_s: n as f64 / r,
                offset_s: k as f64 / r,
            }),
        }
    }

    /// When event `j` is due.
    pub(crate) fn due(&self, j: u64) -> Instant {
        Duration::try_from_secs_f64(self.offset_s + j as f64 * self.every_s)
            .ok()
            .and_then(|d| self.start.checked_add(d))
            .unwrap_or(self.start)
    }
}

/// One publisher's sending loop: every event of its cursor, at its pace. For a rate-limited
/// phase, each published event's due time goes to `due_times` (in publish order, which is batch
/// order) so latencies are measured from it.
async fn send(
    publisher: Publisher,
    stream: String,
    mut cursor: EventCursor,
    pace: Option<Pace>,
    published: Arc<AtomicU64>,
    due_times: Option<mpsc::UnboundedSender<Instant>>,
) -> Sent {
    let mut sent = Sent::default();
    let mut spare: Vec<ValueRef<'static>> = Vec::new();
    let mut j = 0u64;
    loop {
        let due = pace.map(|p| p.due(j));
        if let Some(due) = due {
            tokio::time::sleep_until(due.into()).await;
        }
        let Some(row) = cursor.next_event() else {
            break;
        };
        let mut values = recycle(std::mem::take(&mut spare));
        values.extend(row.iter().map(Value::as_ref));
        let result = publisher.publish_values(&stream, &values).await;
        spare = recycle(values);
        match result {
            Ok(()) => {
                if let (Some(tx), Some(due)) = (&due_times, due) {
                    let _ = tx.send(due);
                }
            }
            Err(PublishError::BufferFull { .. }) => {}
            Err(e) => {
                sent.refused += 1;
                sent.last_error = Some(e.to_string());
            }
        }
        published.fetch_add(1, Ordering::Relaxed);
        j += 1;
    }
    sent
}

/// Empties a vector of value references and gives its allocation back under any lifetime
/// (an in-place collect: no allocation).
fn recycle<'b>(mut v: Vec<ValueRef<'_>>) -> Vec<ValueRef<'b>> {
    v.clear();
    v.into_iter().map(|_| ValueRef::Null).collect()
}

/// Reads one publisher's delivery reports until the publisher is closed.
///
/// Without `due_times` (a max-rate phase) latency runs from each event's publish time (in the
/// report). With them (a rate-limited phase) reports are taken in batch order and each event's
/// latency runs from its due time.
async fn collect(
    mut reports: mpsc::UnboundedReceiver<DeliveryReport>,
    mut due_times: Option<mpsc::UnboundedReceiver<Instant>>,
    run_start: Instant,
    progress: ProgressBar,
) -> Collected {
    let mut c = Collected {
        recorder: LatencyRecorder::new(),
        throughput: Throughput::default(),
        nodes: NodeCounters::new(),
        last_ack: None,
    };
    let mut next_seq = 0u64;
    let mut held: BTreeMap<u64, DeliveryReport> = BTreeMap::new();
    let mut due: Vec<Instant> = Vec::new();
    while let Some(r) = reports.recv().await {
        let Some(rx) = due_times.as_mut() else {
            c.take(&r, None, run_start, &progress);
            continue;
        };
        held.insert(r.seq, r);
        while let Some(r) = held.remove(&next_seq) {
            next_seq += 1;
            due.clear();
            for _ in 0..r.events {
                match rx.recv().await {
                    Some(t) => due.push(t),
                    None => break,
                }
            }
            let from = (due.len() == r.events as usize).then_some(&due[..]);
            c.take(&r, from, run_start, &progress);
        }
    }
    // Batches whose predecessors never reported: publish times are all that is known.
    for r in held.into_values() {
        c.take(&r, None, run_start, &progress);
    }
    c
}

impl Collected {
    /// Counts one report; latencies run from `from` (due times) or the publish times.
    fn take(
        &mut self,
        r: &DeliveryReport,
        from: Option<&[Instant]>,
        run_start: Instant,
        progress: &ProgressBar,
    ) {
        let n = u64::from(r.events);
        match &r.outcome {
            Outcome::Acked { node_id, at } => {
                self.nodes.add(node_id, n);
                self.throughput
                    .record(at.saturating_duration_since(run_start), n);
                match from {
                    Some(due) => {
                        for (i, d) in due.iter().enumerate() {
                            // Without its publish time, raw runs from the due time too.
                            let p = r.published_at.get(i).unwrap_or(d);
                            self.recorder.record_scheduled(
                                at.saturating_duration_since(*d),
                                at.saturating_duration_since(*p),
                            );
                        }
                    }
                    None => {
                        for p in &r.published_at {
                            self.recorder.record(at.saturating_duration_since(*p));
                        }
                    }
                }
                self.last_ack = self.last_ack.max(Some(*at));
                progress.inc(n);
            }
            Outcome::Failed { .. } => {}
        }
    }
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} {msg:>12} [{bar:30}] {human_pos}/{human_len} acked  {per_sec}  {elapsed}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Prints a line above the progress bar, or on stderr when there is no bar.
fn say(progress: &ProgressBar, message: String) {
    if progress.is_hidden() {
        eprintln!("{message}");
    } else {
        progress.println(message);
    }
}

/// Fires the faults at their `at` until `stop`; returns each fault's summary and the faults that
/// failed.
async fn run_faults(
    cluster: Arc<Mutex<Cluster>>,
    faults: Vec<Fault>,
    total: u64,
    published: Arc<AtomicU64>,
    run_start: Instant,
    stop: CancellationToken,
    progress: ProgressBar,
) -> (Vec<FaultSummary>, Vec<String>) {
    let mut summaries: Vec<FaultSummary> = faults
        .iter()
        .map(|f| FaultSummary::planned(f, total))
        .collect();
    let mut errors = Vec::new();
    let (mut by_event, mut by_time) = fault_order(&faults);
    loop {
        let next_event = by_event.front().map(|&(_, at)| at);
        let next_time = by_time.front().map(|&(_, at)| run_start + at);
        if next_event.is_none() && next_time.is_none() {
            break;
        }
        let i = tokio::select! {
            () = published_reaches(&published, next_event) => by_event.pop_front().map(|x| x.0),
            () = sleep_until(next_time) => by_time.pop_front().map(|x| x.0),
            () = stop.cancelled() => break,
        };
        let Some(i) = i else { break };
        let f = &faults[i];
        let at_event = published.load(Ordering::Relaxed);
        let fired = run_start.elapsed();
        let verb = match f.action {
            FaultAction::Kill => "kill",
            FaultAction::Restart => "restart",
        };
        say(
            &progress,
            format!(
                "fault: {verb} {} at event {at_event} ({})",
                f.node_id,
                format_duration(fired)
            ),
        );
        let began = Instant::now();
        let result = {
            let mut c = cluster.lock().await;
            match f.action {
                FaultAction::Kill => c.kill(&f.node_id).await,
                FaultAction::Restart => c.restart(&f.node_id).await,
            }
        };
        let s = &mut summaries[i];
        s.fired_ms = Some(ms(fired));
        s.fired_at_event = Some(at_event);
        match result {
            Ok(()) if f.action == FaultAction::Restart => {
                let took = format_duration(began.elapsed());
                say(
                    &progress,
                    format!("fault: {} ready again after {took}", f.node_id),
                );
                s.note = Some(format!("ready again after {took}"));
            }
            Ok(()) => {}
            Err(e) => {
                s.note = Some(format!("failed: {e}"));
                errors.push(format!("{verb} {}: {e}", f.node_id));
            }
        }
    }
    for s in summaries.iter_mut().filter(|s| s.fired_ms.is_none()) {
        s.note = Some("not fired: the run ended first".to_owned());
    }
    (summaries, errors)
}

/// The faults by trigger: `(index, event)` in event order and `(index, elapsed)` in time order
/// (file order among equals).
#[allow(clippy::type_complexity)]
fn fault_order(faults: &[Fault]) -> (VecDeque<(usize, u64)>, VecDeque<(usize, Duration)>) {
    let mut by_event: Vec<(usize, u64)> = Vec::new();
    let mut by_time: Vec<(usize, Duration)> = Vec::new();
    for (i, f) in faults.iter().enumerate() {
        match f.at {
            FaultAt::Event(n) => by_event.push((i, n)),
            FaultAt::Elapsed(d) => by_time.push((i, d)),
        }
    }
    by_event.sort_by_key(|&(i, n)| (n, i));
    by_time.sort_by_key(|&(i, d)| (d, i));
    (by_event.into(), by_time.into())
}

/// Resolves once `published` reaches `at` (never when `at` is `None`).
async fn published_reaches(published: &AtomicU64, at: Option<u64>) {
    let Some(at) = at else {
        return std::future::pending().await;
    };
    while published.load(Ordering::Relaxed) < at {
        tokio::time::sleep(FAULT_POLL).await;
    }
}

/// Resolves at `at` (never when `None`).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardtally_loadgen::scenario::WorkerSpec;

    fn phase(route: Route) -> Phase {
        Phase {
            name: "p".into(),
            pos: None,
            stream: "s".into(),
            stream_pos: None,
            events: 1,
            rate: Rate::Max,
            route,
            publishers: 1,
            fields: Vec::new(),
            first_event: 0,
        }
    }

    fn workers() -> Vec<WorkerSpec> {
        ["n1", "n2", "n3"]
            .iter()
            .map(|n| WorkerSpec {
                node_id: (*n).into(),
                shard_id: None,
                pos: None,
            })
            .collect()
    }

    #[test]
    fn url_sets_round_robin_over_the_routed_workers() {
        let endpoints: HashMap<String, String> = [
            ("n1".to_owned(), "tcp://127.0.0.1:1".to_owned()),
            ("n2".to_owned(), "tcp://127.0.0.1:2".to_owned()),
            ("n3".to_owned(), "tcp://127.0.0.1:3".to_owned()),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            phase_url_set(&phase(Route::AllWorkers), &workers(), &endpoints),
            "{tcp://127.0.0.1:1,tcp://127.0.0.1:2,tcp://127.0.0.1:3}"
        );
        assert_eq!(
            phase_url_set(
                &phase(Route::Workers(vec!["n3".into(), "n1".into()])),
                &workers(),
                &endpoints
            ),
            "{tcp://127.0.0.1:3,tcp://127.0.0.1:1}"
        );
        let parsed = UrlSet::parse(&phase_url_set(
            &phase(Route::Workers(vec!["n2".into()])),
            &workers(),
            &endpoints,
        ));
        assert!(parsed.is_ok());
    }

    #[test]
    fn paced_publishers_interleave_at_the_phase_rate() {
        let start = Instant::now();
        assert!(Pace::new(Rate::Max, 1, 0, start).is_none());
        // 1000/s over 2 publishers: publisher 0 at 0, 2, 4 ms; publisher 1 at 1, 3, 5 ms.
        let p0 = Pace::new(Rate::PerSecond(1000.0), 2, 0, start).unwrap();
        let p1 = Pace::new(Rate::PerSecond(1000.0), 2, 1, start).unwrap();
        let at = |p: &Pace, j| p.due(j).duration_since(start).as_micros();
        assert_eq!([at(&p0, 0), at(&p0, 1), at(&p0, 2)], [0, 2000, 4000]);
        assert_eq!([at(&p1, 0), at(&p1, 1), at(&p1, 2)], [1000, 3000, 5000]);
    }

    #[test]
    fn faults_are_ordered_by_trigger_then_file_order() {
        let f = |at, node: &str| Fault {
            at,
            action: FaultAction::Kill,
            node_id: node.into(),
            pos: None,
        };
        let faults = vec![
            f(FaultAt::Event(50), "a"),
            f(FaultAt::Elapsed(Duration::from_secs(2)), "b"),
            f(FaultAt::Event(10), "c"),
            f(FaultAt::Event(10), "d"),
            f(FaultAt::Elapsed(Duration::from_secs(1)), "e"),
        ];
        let (by_event, by_time) = fault_order(&faults);
        assert_eq!(Vec::from(by_event), [(2, 10), (3, 10), (0, 50)]);
        assert_eq!(
            Vec::from(by_time),
            [(4, Duration::from_secs(1)), (1, Duration::from_secs(2))]
        );
    }

    #[test]
    fn recycled_vectors_keep_their_allocation() {
        let row = [Value::Long(1), Value::String("x".into())];
        let mut v: Vec<ValueRef<'_>> = Vec::with_capacity(8);
        v.extend(row.iter().map(Value::as_ref));
        let ptr = v.as_ptr() as usize;
        let again: Vec<ValueRef<'static>> = recycle(v);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), 8);
        assert_eq!(again.as_ptr() as usize, ptr);
    }

    #[test]
    fn failure_lines_say_expected_and_actual() {
        let e = ExpectationResult {
            kind: "query".into(),
            label: "query from A".into(),
            line: Some(33),
            expected: serde_json::json!([["Italy", 70000]]),
            actual: serde_json::json!([["Italy", 69000]]),
            passed: false,
            advisory: false,
            message: None,
        };
        assert_eq!(
            failure_line(Path::new("s.yaml"), &e),
            r#"FAIL s.yaml:33: query from A: expected [["Italy",70000]] / actual [["Italy",69000]]"#
        );
        let advisory = ExpectationResult {
            kind: "latency".into(),
            label: "latency".into(),
            expected: serde_json::json!({"p99": "500ms"}),
            actual: serde_json::json!({"p99": "552ms"}),
            advisory: true,
            ..e.clone()
        };
        assert_eq!(
            failure_line(Path::new("s.yaml"), &advisory),
            r#"WARN s.yaml:33: latency: expected {"p99":"500ms"} / actual {"p99":"552ms"}"#
        );
    }
}
