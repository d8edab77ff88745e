//! `bench`: end-to-end throughput and latency of shardtally, and of two baselines, in one run.
//!
//! 1. **Publisher buffer, every worker down**: a publisher pointed at a closed port fills its
//!    buffer (default bounds) with `drop_newest`; the loadgen's resident memory before and after
//!    shows what the buffer costs against its configured bound. It runs first, in a fresh
//!    process, so no memory freed by a later stage can hide its growth.
//! 2. **shardtally**: `--workers` worker processes (the loadgen re-executed as `worker serve`,
//!    as `run` does) on a fresh database; `--publishers` publishers send the [`Workload`]
//!    round-robin as fast as acks allow (or at `--rate`, open model). Measured: acked events/s
//!    (first publish to last ack), publish→ack latency of every event, rows the workers wrote
//!    (their `/metrics`), peak RSS of the loadgen (publishers) and of each worker, CPU time of
//!    each. Then the count committed to the database is checked against the events sent.
//! 3. **shardtally at half rate**: the same cluster, an open model at half the rate just
//!    measured, for `--half-rate-seconds`; latency runs from each event's due time.
//! 4. **wire**: the same events through workers started with `--discard-events`: the same
//!    connection, handshake, decoding, validation and aggregation, but each batch is acked as
//!    soon as it is folded and the aggregates are thrown away. The protocol's ceiling.
//! 5. **naive**: one upsert per event, autocommit, for a bounded sample, extrapolated.
//! 6. **database**: the rate of 1,000-row commit transactions on one connection through the
//!    workers' own commit path (new SECONDS rows: plain INSERTs — on PostgreSQL one `COPY` — as
//!    the workers write any row above their shard's newest bucket), against which the rows/s of
//!    step 2 are judged.
//!
//! The results go to `<results>/bench/<UTC timestamp>/` (`summary.json`, `latency.hgrm`,
//! `table.txt`, the workers' logs, the embedded database) and the table to stdout. The exit
//! status is 0 whatever the figures (a benchmark, not a test), 1 when the run could not
//! complete or the counts are not exact (events acked or committed ≠ events sent), 2 for bad
//! flags.

mod drive;
mod naive;
mod system;
mod table;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use shardtally_loadgen::report::{create_results_dir, mask_password};
use shardtally_loadgen::scenario::WorkerSpec;
use shardtally_loadgen::workload::{DEFAULT_START_MS, TimeOrder, Workload};
use shardtally_publisher::protocol::StreamSchema;
use shardtally_publisher::{FullPolicy, PublishError, Publisher, ValueRef};
use shardtally_worker::catalog::Catalog;
use shardtally_worker::config::AppSource;
use shardtally_worker::layout::Delta;
use shardtally_worker::metrics::COMMIT_BUCKETS_MS;
use shardtally_worker::store::{Backend, Store};

use crate::cli::{BaselineArg, BenchArgs, EXIT_FAILED, EXIT_OK, EXIT_USAGE, TimeOrderArg};
use crate::cluster::{Cluster, ClusterConfig, RunDatabase};
use drive::{DriveOptions, Driven, STREAM, drive, per_sec};

/// Rows per transaction of the database calibration (step 6).
const CALIBRATION_ROWS: usize = 1_000;
/// The shard id the calibration writes under.
const CALIBRATION_SHARD: &str = "bench-calibrate";

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BenchSummary {
    /// The loadgen's version.
    pub(crate) version: String,
    /// When the run started (RFC 3339, UTC).
    pub(crate) started_at: String,
    /// The machine.
    pub(crate) machine: Machine,
    /// What was run.
    pub(crate) config: BenchConfig,
    /// End to end, as fast as acks allow (or at `--rate`).
    pub(crate) shardtally: SystemResult,
    /// End to end, open model at half the rate of `shardtally`.
    pub(crate) half_rate: Option<SystemResult>,
    /// Workers that decode, fold and discard.
    pub(crate) wire: Option<SystemResult>,
    /// One upsert per event, extrapolated from a sample.
    pub(crate) naive: Option<NaiveResult>,
    /// The database's batched-upsert rate.
    pub(crate) database: Option<DatabaseResult>,
    /// The publisher's memory with every worker down.
    pub(crate) publisher_buffer: Option<BufferResult>,
    /// shardtally's events/s over each baseline's.
    pub(crate) ratios: Ratios,
    /// Every event sent was acked once and committed once (shardtally runs).
    pub(crate) exactly_once: bool,
}

/// The machine the run was measured on.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    /// Logical CPUs.
    pub(crate) cpus: usize,
    /// `/proc/loadavg` before the run.
    pub(crate) loadavg_before: String,
    /// `/proc/loadavg` after the run.
    pub(crate) loadavg_after: String,
}

/// The flags that shaped the run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BenchConfig {
    pub(crate) workers: usize,
    pub(crate) publishers: usize,
    pub(crate) events: u64,
    pub(crate) keys: usize,
    pub(crate) time_spread_ms: u64,
    pub(crate) time_order: String,
    pub(crate) flush_interval_ms: u64,
    pub(crate) database: String,
    pub(crate) baseline: String,
    pub(crate) rate: Option<f64>,
    pub(crate) seed: u64,
    pub(crate) batch_events: Option<u32>,
    pub(crate) in_flight: Option<usize>,
    /// The publishers' `batches_per_turn`.
    pub(crate) batches_per_turn: usize,
}

/// One end-to-end run (shardtally or wire).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SystemResult {
    /// Events the run meant to send.
    pub(crate) events: u64,
    /// Events the publishers accepted.
    pub(crate) published: u64,
    /// Events acked.
    pub(crate) acked: u64,
    /// Events the database holds for this run (`None`: not stored, `wire`).
    pub(crate) committed: Option<i64>,
    /// Events dropped or failed.
    pub(crate) lost: u64,
    /// The last failure, if any.
    pub(crate) last_failure: Option<String>,
    /// Batches the publishers sent again (a worker failed or did not ack in time).
    pub(crate) retried: u64,
    /// Times a publisher gave a worker up and moved its batches to another.
    pub(crate) failed_over: u64,
    /// Offered rate (open model), events/s.
    pub(crate) offered_rate: Option<f64>,
    /// Acked events per second, first publish to last ack.
    pub(crate) events_per_sec: f64,
    /// First publish to last ack.
    pub(crate) duration_s: f64,
    /// Publish→ack latency percentiles, ms (open model: from each event's due time).
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
    /// Aggregate rows the workers upserted (all granularities).
    pub(crate) rows_written: u64,
    /// Rows upserted per second.
    pub(crate) rows_per_sec: f64,
    /// Flush transactions committed.
    pub(crate) commits: u64,
    /// Commit durations, p50 and p99, as the upper bound (ms) of the workers' histogram bucket
    /// holding them (`None`: no commit, or over the last bound).
    pub(crate) commit_p50_ms: Option<f64>,
    pub(crate) commit_p99_ms: Option<f64>,
    /// Peak RSS of the loadgen process (its publishers, event generation, measurement), MiB.
    pub(crate) rss_publisher_mib: f64,
    /// Peak RSS of each worker process, MiB.
    pub(crate) rss_workers_mib: Vec<f64>,
    /// CPU used during the run, in cores (1.0 = one core busy all the time).
    pub(crate) cpu: Cpu,
    /// What limits the figure, as far as the run can tell.
    pub(crate) limited_by: String,
}

/// CPU used during a run, in cores.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Cpu {
    /// The whole machine.
    pub(crate) machine: f64,
    /// The loadgen process (publishers, event generation, measurement).
    pub(crate) loadgen: f64,
    /// All worker processes.
    pub(crate) workers: f64,
    /// The rest: the database server, and anything else running on the machine.
    pub(crate) other: f64,
    /// Cores of the machine.
    pub(crate) cores: usize,
}

/// The `naive` baseline.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NaiveResult {
    /// Upserts (events) per second in the sample.
    pub(crate) events_per_sec: f64,
    /// Always true: the rate is measured on a sample and extrapolated to the workload.
    pub(crate) extrapolated: bool,
    /// Events in the sample.
    pub(crate) sample_events: u64,
    /// Length of the sample.
    pub(crate) sample_seconds: f64,
    /// How long the whole workload would take at that rate.
    pub(crate) extrapolated_seconds: f64,
    /// Connections (one per publisher).
    pub(crate) connections: usize,
    /// Per-statement latency, ms.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    /// What limits the figure.
    pub(crate) limited_by: String,
}

/// The database's batched-upsert rate.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DatabaseResult {
    /// `sqlite`, `postgres` or `mysql`.
    pub(crate) backend: String,
    /// Rows per second in 1,000-row commit transactions on one connection (the name is kept for
    /// readers of `summary.json`; new rows are inserted, not upserted, since this release).
    pub(crate) batched_upsert_rows_per_sec: f64,
    /// Rows per transaction.
    pub(crate) rows_per_transaction: usize,
    /// Transactions measured.
    pub(crate) transactions: u64,
}

/// The publisher's memory while every worker is down.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BufferResult {
    /// Configured bound, events.
    pub(crate) buffer_max_events: u64,
    /// Configured bound, bytes of encoded events.
    pub(crate) buffer_max_bytes: u64,
    /// Events held when the buffer was full.
    pub(crate) buffered_events: u64,
    /// Encoded bytes held.
    pub(crate) buffered_bytes: u64,
    /// Events dropped (counted) once it was full.
    pub(crate) dropped: u64,
    /// RSS of the loadgen before publishing, MiB.
    pub(crate) rss_before_mib: f64,
    /// RSS with the buffer full, MiB.
    pub(crate) rss_full_mib: f64,
    /// The difference, MiB.
    pub(crate) rss_growth_mib: f64,
}

/// shardtally's events/s over each baseline's.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Ratios {
    pub(crate) vs_naive: Option<f64>,
    pub(crate) vs_wire: Option<f64>,
}

/// Runs `bench`: see the module docs for the exit status.
pub(crate) async fn bench(args: BenchArgs) -> u8 {
    if let Some(url) = &args.database_url
        && let Err(e) = Backend::from_url(url)
    {
        eprintln!("error: --database-url: {e}");
        return EXIT_USAGE;
    }
    if args.events == 0 || args.keys == 0 || args.workers == 0 || args.publishers == 0 {
        eprintln!("error: --events, --keys, --workers and --publishers must be at least 1");
        return EXIT_USAGE;
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        eprintln!("error: --rate must be a positive number of events per second");
        return EXIT_USAGE;
    }
    tokio::select! {
        code = bench_inner(&args) => code,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted");
            130
        }
    }
}

async fn bench_inner(args: &BenchArgs) -> u8 {
    let started_at = jiff::Timestamp::now();
    let dir = match create_results_dir(&args.results, "bench", started_at) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    let db = match &args.database_url {
        Some(url) => match RunDatabase::for_spawned(url, "bench").await {
            Ok(db) => db,
            Err(e) => {
                eprintln!("error: database: {e}");
                return EXIT_FAILED;
            }
        },
        None => RunDatabase::embedded(&dir),
    };
    let outcome = run_stages(args, &dir, &db, started_at).await;
    match db.finish(args.keep_database).await {
        Ok(Some(url)) => eprintln!("kept the run's database: {url}"),
        Ok(None) => {}
        Err(e) => eprintln!("warning: {e}"),
    }
    match outcome {
        Ok(summary) => {
            if summary.exactly_once {
                EXIT_OK
            } else {
                eprintln!(
                    "error: the counts are not exact: {} events sent, {} acked, {:?} committed",
                    summary.shardtally.events,
                    summary.shardtally.acked,
                    summary.shardtally.committed
                );
                EXIT_FAILED
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            EXIT_FAILED
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn run_stages(
    args: &BenchArgs,
    dir: &Path,
    db: &RunDatabase,
    started_at: jiff::Timestamp,
) -> anyhow::Result<BenchSummary> {
    use anyhow::Context as _;
    let catalog = Catalog::load(&AppSource::Bundled, true).context("the bundled app")?;
    let schema = catalog
        .stream_index(STREAM)
        .map(|i| catalog.streams()[i].clone())
        .context("the bundled app has no geoTempStream")?;
    let spread_ms = i64::try_from(args.time_spread.as_millis()).unwrap_or(i64::MAX);
    let order = args.time_order.into();
    let workload = Arc::new(Workload::new(
        args.events,
        args.keys,
        DEFAULT_START_MS,
        spread_ms,
        order,
        args.seed,
    ));
    let backend = Backend::from_url(&db.url)?;
    let loadavg_before = loadavg();
    eprintln!(
        "bench: {} events, {} keys over {} of event time ({}), {} worker(s), {} publisher(s), \
         database {}, results in {} (load average {loadavg_before})",
        args.events,
        args.keys,
        shardtally_loadgen::scenario::format_duration(args.time_spread),
        args.time_order.name(),
        args.workers,
        args.publishers,
        db.display,
        dir.display()
    );

    // 1. The publisher's buffer with every worker down (first: a fresh process).
    eprintln!("[1/6] publisher buffer with every worker down");
    let publisher_buffer = Some(buffer_check(&schema, &workload).await?);

    // 2. shardtally.
    eprintln!("[2/6] shardtally");
    let config = ClusterConfig {
        database_url: db.url.clone(),
        app: None,
        flush_interval: args.flush_interval,
        log_dir: dir.to_owned(),
        extra_args: Vec::new(),
    };
    let mut cluster = Cluster::start(&specs("bench", args.workers), &config).await?;
    let store = Store::connect(&db.url, 2).await?;
    let urls = url_set(&cluster);
    let mut shardtally = measure_system(
        &cluster,
        &workload,
        &schema,
        &DriveOptions {
            url_set: urls.clone(),
            publishers: args.publishers,
            rate: args.rate,
            tag: "bench".to_owned(),
            batch_events: args.batch_events,
            in_flight: args.in_flight,
            batches_per_turn: args.batches_per_turn,
        },
    )
    .await?;
    let committed = committed_total(&catalog, &store).await?;
    shardtally.committed = Some(committed);
    let mut exactly_once = shardtally.acked == args.events
        && shardtally.lost == 0
        && committed == i64::try_from(args.events).unwrap_or(i64::MAX);

    // 3. Half rate, open model.
    let mut half_rate = None;
    if args.half_rate_seconds > 0.0 && shardtally.events_per_sec > 0.0 {
        let rate = shardtally.events_per_sec / 2.0;
        // A positive finite rate and duration; `as` saturates.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let events = ((rate * args.half_rate_seconds) as u64).max(1);
        eprintln!("[3/6] shardtally at half that rate: {rate:.0} events/s, {events} events");
        // The replay goes on after the first run's span, with the same density of events per key
        // and second (a shorter span for fewer events): each event costs the database the same.
        #[allow(clippy::cast_possible_truncation)]
        let half_spread = (spread_ms as f64 * events as f64 / args.events as f64) as i64;
        let half = Arc::new(Workload::new(
            events,
            args.keys,
            DEFAULT_START_MS + spread_ms,
            half_spread.min(spread_ms),
            order,
            args.seed.wrapping_add(1),
        ));
        let mut r = measure_system(
            &cluster,
            &half,
            &schema,
            &DriveOptions {
                url_set: urls.clone(),
                publishers: args.publishers,
                rate: Some(rate),
                tag: "bench-half".to_owned(),
                batch_events: args.batch_events,
                in_flight: args.in_flight,
                batches_per_turn: args.batches_per_turn,
            },
        )
        .await?;
        let total = committed_total(&catalog, &store).await?;
        r.committed = Some(total - committed);
        exactly_once &=
            r.acked == events && r.lost == 0 && r.committed == i64::try_from(events).ok();
        half_rate = Some(r);
    } else {
        eprintln!("[3/6] half rate: skipped");
    }
    cluster.stop().await;
    drop(cluster);

    // 4. wire.
    let mut wire = None;
    if matches!(args.baseline, BaselineArg::Wire | BaselineArg::All) {
        eprintln!("[4/6] wire baseline: workers that decode, fold and discard");
        let config = ClusterConfig {
            extra_args: vec!["--discard-events".into()],
            ..config.clone()
        };
        let mut cluster = Cluster::start(&specs("wire", args.workers), &config).await?;
        let mut r = measure_system(
            &cluster,
            &workload,
            &schema,
            &DriveOptions {
                url_set: url_set(&cluster),
                publishers: args.publishers,
                rate: None,
                tag: "wire".to_owned(),
                batch_events: args.batch_events,
                in_flight: args.in_flight,
                batches_per_turn: args.batches_per_turn,
            },
        )
        .await?;
        r.limited_by = format!("{} (nothing is stored)", r.limited_by);
        cluster.stop().await;
        wire = Some(r);
    } else {
        eprintln!("[4/6] wire baseline: skipped");
    }

    // 5. naive.
    let mut naive = None;
    if matches!(args.baseline, BaselineArg::Naive | BaselineArg::All) {
        eprintln!(
            "[5/6] naive baseline: one upsert per event, autocommit, for {}s",
            args.naive_seconds
        );
        let n = naive::run(
            &db.url,
            backend,
            &workload,
            args.publishers,
            Duration::from_secs_f64(args.naive_seconds.max(0.0)),
        )
        .await?;
        let rate = per_sec(n.events, n.elapsed);
        let p50 = n.latency.value_at_percentile(50.0);
        naive = Some(NaiveResult {
            events_per_sec: rate,
            extrapolated: true,
            sample_events: n.events,
            sample_seconds: n.elapsed.as_secs_f64(),
            extrapolated_seconds: if rate > 0.0 {
                args.events as f64 / rate
            } else {
                0.0
            },
            connections: n.connections,
            p50_ms: ms(p50),
            p99_ms: ms(n.latency.value_at_percentile(99.0)),
            max_ms: ms(n.latency.value_at_percentile(100.0)),
            limited_by: format!(
                "one database round trip and commit per event ({} per statement at p50, {} connection(s))",
                shardtally_loadgen::scenario::format_duration(p50),
                n.connections
            ),
        });
    } else {
        eprintln!("[5/6] naive baseline: skipped");
    }

    // 6. The database's batched-upsert rate.
    let database = if args.calibrate_seconds > 0.0 {
        eprintln!(
            "[6/6] database: {CALIBRATION_ROWS}-row commit transactions for {}s",
            args.calibrate_seconds
        );
        Some(
            calibrate(
                &catalog,
                &store,
                backend,
                Duration::from_secs_f64(args.calibrate_seconds),
            )
            .await?,
        )
    } else {
        eprintln!("[6/6] database: skipped");
        None
    };
    store.close().await;

    // What limits the shardtally figures.
    let upsert_rate = database.as_ref().map(|d| d.batched_upsert_rows_per_sec);
    shardtally.limited_by = limit(&shardtally, upsert_rate, args.workers, backend);
    if let Some(h) = &mut half_rate {
        h.limited_by = format!(
            "offered rate (open model at half of {:.0} events/s)",
            shardtally.events_per_sec
        );
    }

    let ratio = |base: f64| (base > 0.0).then(|| shardtally.events_per_sec / base);
    let summary = BenchSummary {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: started_at.to_string(),
        machine: Machine {
            cpus: system::cpus(),
            loadavg_before,
            loadavg_after: loadavg(),
        },
        config: BenchConfig {
            workers: args.workers,
            publishers: args.publishers,
            events: args.events,
            keys: args.keys,
            time_spread_ms: u64::try_from(args.time_spread.as_millis()).unwrap_or(u64::MAX),
            time_order: args.time_order.name().to_owned(),
            flush_interval_ms: u64::try_from(args.flush_interval.as_millis()).unwrap_or(u64::MAX),
            database: mask_password(&db.display),
            baseline: args.baseline.name().to_owned(),
            rate: args.rate,
            seed: args.seed,
            batch_events: args.batch_events,
            in_flight: args.in_flight,
            batches_per_turn: args.batches_per_turn,
        },
        ratios: Ratios {
            vs_naive: naive.as_ref().and_then(|n| ratio(n.events_per_sec)),
            vs_wire: wire.as_ref().and_then(|w| ratio(w.events_per_sec)),
        },
        shardtally,
        half_rate,
        wire,
        naive,
        database,
        publisher_buffer,
        exactly_once,
    };
    let text = table::render(&summary);
    print!("{text}");
    write_files(dir, &summary, &text)?;
    println!("results: {}", dir.display());
    Ok(summary)
}

fn write_files(dir: &Path, summary: &BenchSummary, text: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let json = serde_json::to_string_pretty(summary)?;
    let path = dir.join("summary.json");
    std::fs::write(&path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    let path = dir.join("table.txt");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn specs(prefix: &str, n: usize) -> Vec<WorkerSpec> {
    (1..=n)
        .map(|i| WorkerSpec {
            node_id: format!("{prefix}-{i}"),
            shard_id: None,
            pos: None,
        })
        .collect()
}

/// `{tcp://a,tcp://b}`: every worker of the cluster, round-robin.
fn url_set(cluster: &Cluster) -> String {
    let members: Vec<String> = cluster.workers().iter().map(|w| w.endpoint()).collect();
    format!("{{{}}}", members.join(","))
}

/// Events committed for the stream, all shards (the YEARS table).
async fn committed_total(catalog: &Catalog, store: &Store) -> anyhow::Result<i64> {
    let by_stream = crate::expect::committed_by_stream(catalog, store).await?;
    match by_stream.get(STREAM) {
        Some(Ok(n)) => Ok(*n),
        Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
        None => Err(anyhow::anyhow!("no count for {STREAM}")),
    }
}

/// Drives `workload` through the cluster and measures it: throughput, latency, rows written,
/// memory and CPU.
async fn measure_system(
    cluster: &Cluster,
    workload: &Arc<Workload>,
    schema: &StreamSchema,
    options: &DriveOptions,
) -> anyhow::Result<SystemResult> {
    let pids: Vec<u32> = cluster.workers().iter().filter_map(|w| w.pid()).collect();
    let before = worker_counters(cluster).await;
    let cpu_before = cpu_sample(&pids);
    let began = Instant::now();
    let d: Driven = drive(workload, schema, options).await?;
    let wall = began.elapsed();
    let cpu_after = cpu_sample(&pids);
    let after = worker_counters(cluster).await;
    let rows = after.rows.saturating_sub(before.rows);
    let commits = after.commits.saturating_sub(before.commits);
    let cpu = cpu_after.since(&cpu_before, wall);
    let rss_workers_mib = pids
        .iter()
        .map(|p| system::memory(Some(*p)).map_or(0.0, |m| mib(m.peak)))
        .collect();
    let rss_publisher_mib = system::memory(None).map_or(0.0, |m| mib(m.peak));
    let limited_by = if cpu.machine >= 0.85 * cpu.cores as f64 {
        format!("CPU: {}", cpu_text(&cpu))
    } else {
        format!("acks/latency ({})", cpu_text(&cpu))
    };
    Ok(SystemResult {
        events: workload.events(),
        published: d.published,
        acked: d.acked,
        committed: None,
        lost: d.dropped + d.failed,
        last_failure: d.last_failure.clone(),
        retried: d.retried,
        failed_over: d.failed_over,
        offered_rate: options.rate,
        events_per_sec: d.events_per_sec(),
        duration_s: d.elapsed.as_secs_f64(),
        p50_ms: ms(d.latency.value_at_percentile(50.0)),
        p99_ms: ms(d.latency.value_at_percentile(99.0)),
        p999_ms: ms(d.latency.value_at_percentile(99.9)),
        max_ms: ms(d.latency.value_at_percentile(100.0)),
        rows_written: rows,
        rows_per_sec: per_sec(rows, d.elapsed),
        commits,
        commit_p50_ms: after.commit_quantile_bound(&before, 0.5),
        commit_p99_ms: after.commit_quantile_bound(&before, 0.99),
        rss_publisher_mib,
        rss_workers_mib,
        cpu,
        limited_by,
    })
}

/// `loadgen a, workers b, database+rest c of N cores`.
fn cpu_text(c: &Cpu) -> String {
    format!(
        "{:.1} of {} cores busy: loadgen {:.2}, workers {:.2}, database and rest {:.2}",
        c.machine, c.cores, c.loadgen, c.workers, c.other
    )
}

/// What limits the shardtally figure: the database when the workers write at least about as
/// many rows/s as one connection's batched commits take (on a server they write concurrently,
/// so together they can exceed it; SQLite takes one writer at a time), else the CPU when the
/// machine is busy, else acks (latency-bound).
fn limit(r: &SystemResult, upsert_rate: Option<f64>, workers: usize, backend: Backend) -> String {
    let cpu = cpu_text(&r.cpu);
    if let Some(rate) = upsert_rate.filter(|x| *x > 0.0) {
        let share = r.rows_per_sec / rate;
        let threshold = if backend == Backend::Sqlite {
            0.75
        } else {
            0.9
        };
        if share >= threshold {
            let writers = if backend == Backend::Sqlite {
                "SQLite takes one writer at a time, and runs inside the workers".to_owned()
            } else {
                format!("{workers} worker(s) commit concurrently")
            };
            return format!(
                "database rows/s: {:.0} rows/s written = {:.0}% of this database's 1,000-row \
                 commit rate on one connection ({:.0} rows/s; {writers}); {cpu}",
                r.rows_per_sec,
                share * 100.0,
                rate
            );
        }
    }
    let busy = r.cpu.machine >= 0.85 * r.cpu.cores as f64;
    let rows = match upsert_rate {
        Some(rate) if rate > 0.0 => format!(
            "; the database writes {:.0}% of one connection's commit rate",
            r.rows_per_sec / rate * 100.0
        ),
        _ => String::new(),
    };
    if busy {
        format!("CPU: {cpu}{rows}")
    } else {
        format!("acks and the in-flight window ({cpu}){rows}")
    }
}

/// The workers' counters that a run's figures are differences of.
#[derive(Debug, Default)]
struct WorkerCounters {
    rows: u64,
    commits: u64,
    /// Commits per duration bucket (cumulative, as in the histogram), over every worker.
    commit_buckets: Vec<u64>,
}

impl WorkerCounters {
    /// The upper bound, in ms, of the histogram bucket holding quantile `q` of the commits
    /// between `before` and `self` (`None`: no commit, or beyond the last bound).
    fn commit_quantile_bound(&self, before: &WorkerCounters, q: f64) -> Option<f64> {
        // Saturating: a worker whose scrape failed on one side must not wrap the difference.
        let delta = |i: usize| {
            let at = |c: &WorkerCounters| c.commit_buckets.get(i).copied().unwrap_or(0);
            at(self).saturating_sub(at(before))
        };
        let total = self.commits.saturating_sub(before.commits);
        if total == 0 {
            return None;
        }
        // 0 < q ≤ 1 and total ≥ 1: the rank is a small positive integer.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        COMMIT_BUCKETS_MS
            .iter()
            .enumerate()
            .find(|(i, _)| delta(*i) >= rank)
            .map(|(_, ms)| *ms as f64)
    }
}

/// Rows written, commits and commit durations so far, summed over the workers' `/metrics`.
async fn worker_counters(cluster: &Cluster) -> WorkerCounters {
    let mut rows = 0.0;
    let mut commits = 0.0;
    let mut buckets = vec![0.0; COMMIT_BUCKETS_MS.len()];
    for w in cluster.workers() {
        if let Ok(m) = system::scrape(w.http).await {
            let get = |name: &str| m.get(name).copied().unwrap_or(0.0);
            rows += get("shardtally_rows_written_total");
            commits += get("shardtally_commit_duration_seconds_count");
            for (b, ms) in buckets.iter_mut().zip(COMMIT_BUCKETS_MS) {
                let le = ms as f64 / 1_000.0;
                *b += get(&format!(
                    "shardtally_commit_duration_seconds_bucket{{le=\"{le}\"}}"
                ));
            }
        }
    }
    // Counters scraped from /metrics: non-negative integers carried as f64.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    WorkerCounters {
        rows: rows as u64,
        commits: commits as u64,
        commit_buckets: buckets.into_iter().map(|b| b as u64).collect(),
    }
}

/// CPU time of the machine, this process and the workers at one instant.
struct CpuSample {
    machine: Option<(Duration, Duration)>,
    loadgen: Duration,
    workers: Duration,
}

fn cpu_sample(pids: &[u32]) -> CpuSample {
    CpuSample {
        machine: system::machine_cpu(),
        loadgen: system::cpu_time(None).unwrap_or_default(),
        workers: pids.iter().filter_map(|p| system::cpu_time(Some(*p))).sum(),
    }
}

impl CpuSample {
    fn since(&self, before: &CpuSample, wall: Duration) -> Cpu {
        let w = wall.as_secs_f64().max(1e-9);
        let cores = |d: Duration| d.as_secs_f64() / w;
        let machine = match (self.machine, before.machine) {
            (Some((busy, _)), Some((busy0, _))) => cores(busy.saturating_sub(busy0)),
            _ => 0.0,
        };
        let loadgen = cores(self.loadgen.saturating_sub(before.loadgen));
        let workers = cores(self.workers.saturating_sub(before.workers));
        Cpu {
            machine,
            loadgen,
            workers,
            other: (machine - loadgen - workers).max(0.0),
            cores: system::cpus(),
        }
    }
}

/// Step 1: a publisher whose workers are all down fills its buffer (default bounds,
/// `drop_newest`); how much does this process grow?
async fn buffer_check(schema: &StreamSchema, workload: &Workload) -> anyhow::Result<BufferResult> {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port();
    let before = system::memory(None).map_or(0, |m| m.rss);
    let publisher = Publisher::builder(&format!("tcp://127.0.0.1:{port}"))
        .publisher_id("bench-buffer")
        .schema(schema.clone())
        .full_policy(FullPolicy::DropNewest)
        .reconnect_backoff(Duration::from_secs(1), Duration::from_secs(5))
        .build()?;
    let mut values = [ValueRef::Null; 4];
    let mut dropped = 0u64;
    let mut i = 0u64;
    let n = workload.events();
    // Until the buffer refuses a thousand events in a row (it is full, not momentarily busy).
    while dropped < 1_000 {
        workload.event(i % n, &mut values);
        match publisher.try_publish_values(STREAM, &values) {
            Ok(()) => dropped = 0,
            Err(PublishError::BufferFull { .. }) => dropped += 1,
            Err(e) => return Err(e.into()),
        }
        i += 1;
        if i.is_multiple_of(4096) {
            tokio::task::yield_now().await;
        }
    }
    // Let the background task take every sealed batch.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let full = system::memory(None).map_or(0, |m| m.rss);
    let stats = publisher.stats();
    let _ = publisher.close(Duration::from_millis(10)).await;
    drop(publisher);
    // The defaults of `PublisherBuilder` (the bench does not change them).
    Ok(BufferResult {
        buffer_max_events: 1_000_000,
        buffer_max_bytes: 64 * 1024 * 1024,
        buffered_events: stats.queued + stats.in_flight,
        buffered_bytes: stats.buffered_bytes,
        dropped: stats.dropped_total(),
        rss_before_mib: mib(before),
        rss_full_mib: mib(full),
        rss_growth_mib: mib(full.saturating_sub(before)),
    })
}

/// Step 6: commits of `CALIBRATION_ROWS` new SECONDS rows each, through the workers' own
/// commit path, on one connection, for `budget`.
async fn calibrate(
    catalog: &Catalog,
    store: &Store,
    backend: Backend,
    budget: Duration,
) -> anyhow::Result<DatabaseResult> {
    let layout = &catalog.layouts[0];
    // Far from the benchmark's hour, so nothing it wrote is touched.
    let start_ms = DEFAULT_START_MS + 365 * 86_400_000;
    let keys = Workload::new(0, CALIBRATION_ROWS, 0, 0, TimeOrder::Ascending, 0);
    let mut transactions = 0u64;
    let mut rows = 0u64;
    let began = Instant::now();
    let mut elapsed = Duration::ZERO;
    while elapsed < budget || transactions == 0 {
        // One second of event time, one event per key: CALIBRATION_ROWS new SECONDS rows.
        let second = start_ms + i64::try_from(transactions).unwrap_or(i64::MAX) * 1000;
        let mut aggregator = catalog.aggregators().swap_remove(0);
        for key in keys.keys() {
            let event = [
                ValueRef::String(&key.api),
                ValueRef::String(&key.country),
                ValueRef::String(&key.city),
                ValueRef::Long(second),
            ];
            aggregator.record(&event, 0);
        }
        let mut delta = aggregator.drain()?;
        delta.rows.truncate(1);
        let delta = Delta { rows: delta.rows };
        let began_tx = Instant::now();
        store
            .commit(CALIBRATION_SHARD, &[], &[(layout, &delta)])
            .await?;
        elapsed += began_tx.elapsed();
        rows += delta.row_count() as u64;
        transactions += 1;
        if began.elapsed() > budget * 4 {
            break;
        }
    }
    Ok(DatabaseResult {
        backend: backend.to_string(),
        batched_upsert_rows_per_sec: per_sec(rows, elapsed),
        rows_per_transaction: CALIBRATION_ROWS,
        transactions,
    })
}

impl From<TimeOrderArg> for TimeOrder {
    fn from(a: TimeOrderArg) -> Self {
        match a {
            TimeOrderArg::Ascending => TimeOrder::Ascending,
            TimeOrderArg::Random => TimeOrder::Random,
        }
    }
}
