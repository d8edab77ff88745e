//! The `naive` baseline: what a hand-rolled integration does — one upsert statement per event,
//! autocommit, straight from the gateway to the database.
//!
//! Each event adds 1 to its `(second, country, city)` row of a table of its own
//! (`bench_naive`, created fresh in the run's database), keeping the latest `apiName`: the
//! finest granularity only, where shardtally writes six. One connection per publisher, each
//! sending its share of the workload's events one statement at a time, for a bounded time; the
//! rate is then extrapolated to the whole workload (and labelled so).

use std::time::{Duration, Instant};

use shardtally_loadgen::measure::LatencyRecorder;
use shardtally_loadgen::workload::Workload;
use shardtally_publisher::ValueRef;
use shardtally_worker::store::Backend;
use sqlx::{AnyConnection, Connection as _, Executor as _};

/// The baseline's table.
const TABLE: &str = "bench_naive";

/// What the sample measured.
#[derive(Debug)]
pub(crate) struct Naive {
    /// Events upserted.
    pub(crate) events: u64,
    /// How long the sample ran.
    pub(crate) elapsed: Duration,
    /// Per-statement latency.
    pub(crate) latency: LatencyRecorder,
    /// Connections used.
    pub(crate) connections: usize,
}

/// Upserts the workload's events one statement each on `connections` connections, until every
/// event is written or `budget` has passed.
pub(crate) async fn run(
    url: &str,
    backend: Backend,
    workload: &Workload,
    connections: usize,
    budget: Duration,
) -> Result<Naive, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let mut setup = connect(url, backend).await?;
    setup
        .execute(format!("DROP TABLE IF EXISTS {TABLE}").as_str())
        .await?;
    setup.execute(create_table(backend).as_str()).await?;
    setup.close().await?;

    let connections = connections.max(1);
    let start = Instant::now();
    let deadline = start + budget;
    let mut tasks = Vec::with_capacity(connections);
    for k in 0..connections {
        let url = url.to_owned();
        let indices = workload.share(k as u64, connections as u64);
        let workload = workload.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = connect(&url, backend).await?;
            let sql = upsert(backend);
            let mut latency = LatencyRecorder::new();
            let mut done = 0u64;
            let mut values = [ValueRef::Null; 4];
            for i in indices {
                if Instant::now() >= deadline {
                    break;
                }
                workload.event(i, &mut values);
                let [
                    ValueRef::String(api),
                    ValueRef::String(country),
                    ValueRef::String(city),
                    ValueRef::Long(ts),
                ] = values
                else {
                    continue;
                };
                let second = ts.div_euclid(1000) * 1000;
                let began = Instant::now();
                sqlx::query(&sql)
                    .bind(second)
                    .bind(country)
                    .bind(city)
                    .bind(api)
                    .bind(ts)
                    .execute(&mut conn)
                    .await?;
                latency.record(began.elapsed());
                done += 1;
            }
            let _ = conn.close().await;
            Ok::<_, sqlx::Error>((done, latency))
        }));
    }
    let mut naive = Naive {
        events: 0,
        elapsed: Duration::ZERO,
        latency: LatencyRecorder::new(),
        connections,
    };
    for t in tasks {
        let (done, latency) = t
            .await
            .map_err(|e| sqlx::Error::Protocol(format!("naive baseline task: {e}")))??;
        naive.events += done;
        naive.latency.merge(&latency);
    }
    naive.elapsed = start.elapsed();
    Ok(naive)
}

/// A connection set up as the workers' are (SQLite: WAL, `synchronous=NORMAL`, a busy
/// timeout), so the comparison is about statements, not settings.
async fn connect(url: &str, backend: Backend) -> Result<AnyConnection, sqlx::Error> {
    let mut conn = AnyConnection::connect(url).await?;
    if backend == Backend::Sqlite {
        for pragma in [
            "PRAGMA busy_timeout = 10000",
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = NORMAL",
        ] {
            conn.execute(pragma).await?;
        }
    }
    Ok(conn)
}

fn create_table(backend: Backend) -> String {
    let text = match backend {
        Backend::MySql => "VARCHAR(254) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        Backend::Sqlite | Backend::Postgres => "VARCHAR(254)",
    };
    format!(
        "CREATE TABLE {TABLE} (bucket BIGINT NOT NULL, country {text} NOT NULL, \
         city {text} NOT NULL, api_name {text}, last_event_ts BIGINT NOT NULL, \
         request_count BIGINT NOT NULL, PRIMARY KEY (bucket, country, city))"
    )
}

/// `(bucket, country, city, api_name, last_event_ts)`: add 1, keep the latest api name.
fn upsert(backend: Backend) -> String {
    match backend {
        Backend::MySql => format!(
            "INSERT INTO {TABLE} (bucket, country, city, api_name, last_event_ts, request_count) \
             VALUES (?, ?, ?, ?, ?, 1) ON DUPLICATE KEY UPDATE \
             request_count = request_count + 1, api_name = VALUES(api_name), \
             last_event_ts = GREATEST(last_event_ts, VALUES(last_event_ts))"
        ),
        Backend::Postgres => format!(
            "INSERT INTO {TABLE} (bucket, country, city, api_name, last_event_ts, request_count) \
             VALUES ($1, $2, $3, $4, $5, 1) ON CONFLICT (bucket, country, city) DO UPDATE SET \
             request_count = {TABLE}.request_count + 1, api_name = excluded.api_name, \
             last_event_ts = GREATEST({TABLE}.last_event_ts, excluded.last_event_ts)"
        ),
        Backend::Sqlite => format!(
            "INSERT INTO {TABLE} (bucket, country, city, api_name, last_event_ts, request_count) \
             VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT (bucket, country, city) DO UPDATE SET \
             request_count = {TABLE}.request_count + 1, api_name = excluded.api_name, \
             last_event_ts = MAX({TABLE}.last_event_ts, excluded.last_event_ts)"
        ),
    }
}
