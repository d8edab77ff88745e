//! `shardtally-loadgen run`: the ready scenarios against embedded clusters (SQLite, and the
//! PostgreSQL/MariaDB servers of the environment), wrong expectations, broken files, and a
//! running cluster named by `endpoints`.

use std::path::Path;

use crate::common::{
    TempDir, Worker, database_servers, outcomes, run_dir, run_scenarios, scenario, scenarios_dir,
    summary,
};

/// Runs one ready scenario on the embedded default and checks that every expectation held and
/// every result file is there.
/// Runs a bundled scenario on the embedded default. Latency bounds are advisory here: timing is
/// not a test on a shared machine (`bench` measures it); a latency that was never measured
/// still fails (see `latency_was_measured`).
fn passes_on_sqlite(file: &str, name: &str) {
    let results = TempDir::new(name);
    let out = run_scenarios(&[&scenario(file)], results.path(), &["--advisory-latency"]);
    assert_eq!(out.code, 0, "{}", out.text());
    let s = summary(results.path(), name);
    assert_eq!(s["passed"], true, "{}", out.text());
    // Every expectation but the advisory latency one held; that one was measured (below).
    assert!(
        outcomes(&s)
            .iter()
            .all(|(kind, passed)| *passed || kind == "latency"),
        "{}",
        out.text()
    );
    let dir = run_dir(results.path(), name);
    for f in [
        "summary.json",
        "latency.hgrm",
        "latency-raw.hgrm",
        "report.html",
        "shardtally.db",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing in {}", dir.display());
    }
    for w in s["config"]["workers"].as_array().expect("workers") {
        let node = w["node_id"].as_str().expect("node id");
        assert!(
            dir.join(format!("worker-{node}.log")).is_file(),
            "no log of {node}"
        );
    }
    let (planned, acked) = (
        s["phases"]
            .as_array()
            .expect("phases")
            .iter()
            .map(|p| p["events"].as_u64().expect("events"))
            .sum::<u64>(),
        s["nodes"]
            .as_object()
            .expect("nodes")
            .values()
            .map(|v| v.as_u64().expect("count"))
            .sum::<u64>(),
    );
    assert_eq!(
        acked, planned,
        "acked per node adds up to the planned events"
    );
    if outcomes(&s).iter().any(|(kind, _)| kind == "latency") {
        latency_was_measured(&s, planned);
    }
    assert!(
        out.stdout.contains("expectations hold: PASS"),
        "{}",
        out.text()
    );
}

#[test]
fn every_scenario_file_is_run_by_a_test() {
    let mut files: Vec<String> = std::fs::read_dir(scenarios_dir())
        .expect("scenarios/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml"))
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "apim-requests.yaml",
            "database.yaml",
            "failover.yaml",
            "gateways.yaml",
            "late-events.yaml",
            "naples.yaml"
        ],
        "a new scenario needs a test here"
    );
}

#[test]
fn apim_requests_passes() {
    passes_on_sqlite("apim-requests.yaml", "apim-requests");
}

/// The API-M app's latency aggregates (sum, avg, min, max of longs) on each database server of
/// the environment.
#[test]
fn apim_requests_on_database_servers() {
    for (name, url) in database_servers() {
        let results = TempDir::new("apim-servers");
        let out = run_scenarios(
            &[&scenario("apim-requests.yaml")],
            results.path(),
            &["--database-url", &url],
        );
        assert_eq!(out.code, 0, "{name}: {}", out.text());
        let s = summary(results.path(), "apim-requests");
        assert!(
            outcomes(&s).iter().all(|(_, passed)| *passed),
            "{name}: {}",
            out.text()
        );
    }
}

#[test]
fn failover_passes() {
    passes_on_sqlite("failover.yaml", "failover");
}

#[test]
fn gateways_passes() {
    passes_on_sqlite("gateways.yaml", "gateways");
}

#[test]
fn late_events_passes() {
    passes_on_sqlite("late-events.yaml", "late-events");
}

#[test]
fn database_passes_on_sqlite() {
    passes_on_sqlite("database.yaml", "database");
}

/// The seeds' example: 30,000 via node 1 and 40,000 via node 2 read back as 70,000, per shard too,
/// delivered exactly once, within the p99 bound.
#[test]
fn naples_passes() {
    passes_on_sqlite("naples.yaml", "naples-70k");
    let results = TempDir::new("naples-nodes");
    let out = run_scenarios(
        &[&scenario("naples.yaml")],
        results.path(),
        &["--advisory-latency"],
    );
    assert_eq!(out.code, 0, "{}", out.text());
    let s = summary(results.path(), "naples-70k");
    latency_was_measured(&s, 70_000);
    assert_eq!(
        s["nodes"],
        serde_json::json!({"wso2-am-analytics-1": 30000, "wso2-am-analytics-2": 40000})
    );
}

/// `database.yaml` (and naples' counts) on each database server of the environment; the run's
/// fresh database is dropped afterwards, or kept and printed with `--keep-database`.
#[test]
fn database_and_naples_on_database_servers() {
    for (name, url) in database_servers() {
        eprintln!("--- on {name}");
        let results = TempDir::new("servers");
        let out = run_scenarios(
            &[&scenario("database.yaml"), &scenario("naples.yaml")],
            results.path(),
            &["--database-url", &url, "--advisory-latency"],
        );
        let db = summary(results.path(), "database");
        assert_eq!(db["passed"], true, "{name}: {}", out.text());
        let used = db["config"]["database"]
            .as_str()
            .expect("database")
            .to_owned();
        assert!(used.contains("/st_database_"), "{used}");
        let naples = summary(results.path(), "naples-70k");
        let mut gating = outcomes(&naples);
        gating.retain(|(kind, _)| kind != "latency");
        assert_eq!(
            gating,
            [
                ("query".to_owned(), true),
                ("shards".to_owned(), true),
                ("delivered".to_owned(), true),
            ],
            "{name}: {}",
            out.text()
        );
        latency_was_measured(&naples, 70_000);
        assert_eq!(out.code, 0, "{name}: {}", out.text());
        assert!(
            !out.stderr.contains("kept the run's database"),
            "{}",
            out.text()
        );
        assert!(
            !database_exists(&url, &used),
            "{name}: {used} was not dropped"
        );

        // Again, keeping the database: its URL is printed and it holds the run's rows.
        let results = TempDir::new("keep");
        let out = run_scenarios(
            &[&scenario("database.yaml")],
            results.path(),
            &["--database-url", &url, "--keep-database"],
        );
        assert_eq!(out.code, 0, "{name}: {}", out.text());
        let kept = out
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("kept the run's database: "))
            .unwrap_or_else(|| panic!("no kept database in {}", out.text()))
            .to_owned();
        assert!(database_exists(&url, &kept), "{kept}");
        drop_database(&url, &kept);
    }
}

fn database_name(url: &str) -> String {
    let path = url.split('?').next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or_default().to_owned()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}

/// Whether the database of `run_url` exists on the server of `server_url`.
fn database_exists(server_url: &str, run_url: &str) -> bool {
    use sqlx::Connection as _;
    let name = database_name(run_url);
    block_on(async {
        sqlx::any::install_default_drivers();
        let mut c = sqlx::AnyConnection::connect(server_url)
            .await
            .expect("connect to the server");
        let sql = if server_url.starts_with("postgres") {
            format!("SELECT COUNT(*) FROM pg_database WHERE datname = '{name}'")
        } else {
            format!("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = '{name}'")
        };
        let n: i64 = sqlx::query_scalar(&sql)
            .fetch_one(&mut c)
            .await
            .expect("list databases");
        n == 1
    })
}

fn drop_database(server_url: &str, run_url: &str) {
    use sqlx::Connection as _;
    let name = database_name(run_url);
    block_on(async {
        let mut c = sqlx::AnyConnection::connect(server_url)
            .await
            .expect("connect to the server");
        let sql = if server_url.starts_with("postgres") {
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        } else {
            format!("DROP DATABASE IF EXISTS {name}")
        };
        sqlx::raw_sql(&sql)
            .execute(&mut c)
            .await
            .expect("drop the kept database");
    });
}

/// A small scenario on one worker; `expect` is appended as the file's last lines.
fn small_scenario(dir: &TempDir, name: &str, expect: &str) -> std::path::PathBuf {
    let app = scenarios_dir().join("apps/geo.siddhi");
    dir.write(
        &format!("{name}.yaml"),
        &format!(
            "name: {name}
app: {app}
cluster:
  workers:
    - {{ node_id: solo }}
phases:
  - name: only
    stream: geoTempStream
    events: 500
    fields:
      apiName: PizzaShackAPI
      country: Italy
      city: Naples
      requestTimestamp: {{ between: [\"2026-11-20T10:00:00Z\", \"2026-11-20T10:59:59Z\"] }}
expect:
{expect}",
            app = app.display()
        ),
    )
}

#[test]
fn a_wrong_expectation_exits_1_with_expected_and_actual() {
    let dir = TempDir::new("wrong");
    let file = small_scenario(
        &dir,
        "wrong",
        "  - query: from GeoLocationAgg within \"2026-11-20 10:**:**\" per \"hours\" select country, city, totalRequestCount
    rows: [[Italy, Naples, 501]]
  - shards: { aggregation: GeoLocationAgg, per: days, counts: { solo: 499 } }
  - delivered: exactly-once
",
    );
    let results = dir.path().join("results");
    let out = run_scenarios(&[&file], &results, &[]);
    assert_eq!(out.code, 1, "{}", out.text());
    let path = file.display().to_string();
    assert!(
        out.stderr.contains(&format!(
            "FAIL {path}:16: query from GeoLocationAgg within \"2026-11-20 10:**:**\" per \"hours\" \
             select country, city, totalRequestCount: expected [[\"Italy\",\"Naples\",501]] / \
             actual [[\"Italy\",\"Naples\",500]]"
        )),
        "{}",
        out.text()
    );
    assert!(
        out.stderr.contains(&format!(
            "FAIL {path}:18: shards GeoLocationAgg per days: expected {{\"solo\":499}} / actual \
             {{\"solo\":500}} (shard solo: expected 499 / actual 500)"
        )),
        "{}",
        out.text()
    );
    assert!(
        out.stdout.contains("1 of 3 expectations hold: FAIL"),
        "{}",
        out.text()
    );
    let s = summary(&results, "wrong");
    assert_eq!(s["passed"], false);
    assert_eq!(
        outcomes(&s),
        [
            ("query".to_owned(), false),
            ("shards".to_owned(), false),
            ("delivered".to_owned(), true),
        ]
    );
}

/// Asserts a bad scenario exits 2 with `message` and started nothing (no results written).
fn refused(files: &[&Path], results: &Path, message: &str) {
    let out = run_scenarios(files, results, &[]);
    assert_eq!(out.code, 2, "{}", out.text());
    assert!(
        out.stderr.contains(message),
        "want {message:?} in {}",
        out.text()
    );
    assert!(
        !results.exists(),
        "a refused run must not start anything: {} exists",
        results.display()
    );
}

#[test]
fn a_broken_scenario_exits_2_naming_line_and_column() {
    let dir = TempDir::new("broken");
    let results = dir.path().join("results");
    let good = scenario("gateways.yaml");

    // A stream the app does not define: refused before the (valid) first file runs.
    let stream = small_scenario(&dir, "stream", "  - delivered: exactly-once\n")
        .to_string_lossy()
        .into_owned();
    let text = std::fs::read_to_string(&stream)
        .expect("read")
        .replace("stream: geoTempStream", "stream: geoStream");
    std::fs::write(&stream, text).expect("write");
    refused(
        &[&good, Path::new(&stream)],
        &results,
        &format!(
            "{stream}:8:13: the app `APIM_ANALYTICS_GEO` has no stream `geoStream` (streams: \
             geoTempStream)"
        ),
    );

    // A YAML error.
    let yaml = dir.write("yaml.yaml", "name: x\nphases: [\n  - {name: a\n");
    let out = crate::common::run_scenarios(&[&yaml], &results, &[]);
    assert_eq!(out.code, 2, "{}", out.text());
    assert!(
        out.stderr
            .starts_with(&format!("error: {}:", yaml.display())),
        "{}",
        out.text()
    );
    assert!(!results.exists());

    // An expectation whose query does not parse, and one naming an unknown aggregation.
    let query = small_scenario(
        &dir,
        "query",
        "  - { query: \"from GeoLocationAgg per\", rows: [] }\n",
    );
    refused(
        &[&query],
        &results,
        &format!("{}:16:14: query: ", query.display()),
    );
    let shards = small_scenario(
        &dir,
        "shards",
        "  - shards: { aggregation: Nope, per: hours, counts: { solo: 1 } }\n",
    );
    refused(
        &[&shards],
        &results,
        &format!(
            "{}:16:5: shards: the app has no aggregation `Nope` (it has GeoLocationAgg)",
            shards.display()
        ),
    );

    // A field the stream does not have (checked by the generator compiler).
    let field = small_scenario(&dir, "field", "  - delivered: exactly-once\n");
    let text = std::fs::read_to_string(&field)
        .expect("read")
        .replace("city: Naples", "town: Naples");
    std::fs::write(&field, text).expect("write");
    refused(
        &[&field],
        &results,
        &format!(
            "{}:13:7: stream `geoTempStream` has no attribute `town`",
            field.display()
        ),
    );
}

/// `cluster.endpoints`: a running cluster (here one worker started by the test) is used as is;
/// expectations that read the database need its URL.
#[test]
fn a_running_cluster_named_by_endpoints() {
    let dir = TempDir::new("external");
    let app = scenarios_dir().join("apps/geo.siddhi");
    let worker = Worker::start(dir.path(), "ext-1", &app);
    let file = dir.write(
        "external.yaml",
        &format!(
            "name: external
app: {app}
cluster:
  endpoints: \"{{{endpoint}}}\"
phases:
  - name: only
    stream: geoTempStream
    events: 1000
    rate: 2000
    fields:
      apiName: PizzaShackAPI
      country: {{ sequence: [Italy, France] }}
      city: Naples
      requestTimestamp: {{ between: [\"2026-11-20T10:00:00Z\", \"2026-11-20T10:59:59Z\"] }}
expect:
  - query: from GeoLocationAgg within \"2026-11-20 10:**:**\" per \"hours\" select country, totalRequestCount order by country
    rows: [[France, 500], [Italy, 500]]
  - delivered: exactly-once
",
            app = app.display(),
            endpoint = worker.endpoint()
        ),
    );
    let results = dir.path().join("results");
    refused(
        &[&file],
        &results,
        &format!(
            "{}:16:5: this `query` expectation reads the database, but the cluster is a running \
             one (`endpoints`)",
            file.display()
        ),
    );
    let out = run_scenarios(
        &[&file],
        &results,
        &["--database-url", &worker.database_url],
    );
    assert_eq!(out.code, 0, "{}", out.text());
    let s = summary(&results, "external");
    assert_eq!(s["nodes"], serde_json::json!({"ext-1": 1000}));
    // Nothing was spawned: no worker logs, no embedded database.
    let run = run_dir(&results, "external");
    assert!(!run.join("shardtally.db").exists());
    assert!(!run.join("worker-ext-1.log").exists());
}

/// The scenario's `latency` expectation was evaluated on real measurements (advisory: reported,
/// not gating).
fn latency_was_measured(summary: &serde_json::Value, acked: u64) {
    let latency = summary["expectations"]
        .as_array()
        .expect("expectations")
        .iter()
        .find(|e| e["kind"] == "latency")
        .expect("a latency expectation");
    assert_eq!(latency["advisory"], true, "{latency}");
    // Each bound (p99, max, …) has a measured figure.
    let bounds = latency["expected"].as_object().expect("bounds");
    assert!(!bounds.is_empty(), "{latency}");
    for bound in bounds.keys() {
        let measured = latency["actual"][bound]
            .as_str()
            .expect("a measured figure");
        assert!(measured.ends_with('s') && measured != "0ms", "{latency}");
    }
    // Every acked event's latency was recorded, once in each histogram.
    let l = &summary["latency"];
    assert_eq!(l["raw"]["count"].as_u64(), Some(acked), "{l}");
    assert_eq!(l["corrected"]["count"].as_u64(), Some(acked), "{l}");
    // Raw runs from the publish call, corrected from the due time (rate-limited phases) or the
    // same publish call: never later, so no raw percentile exceeds its corrected one.
    for p in ["p50_ms", "p99_ms", "max_ms"] {
        let (raw, corrected) = (l["raw"][p].as_f64(), l["corrected"][p].as_f64());
        assert!(raw.zip(corrected).is_some_and(|(r, c)| r <= c), "{p}: {l}");
    }
}
