//! Helpers for tests that run the real `shardtally-loadgen` binary: temporary folders, runs
//! with captured output, spawned workers (the loadgen's own `worker serve`), database servers
//! from the environment, and the run's `summary.json`.

#![allow(dead_code)]

use shardtally_worker::node::Bound;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variable naming the PostgreSQL server for tests.
pub(crate) const POSTGRES_ENV: &str = "SHARDTALLY_TEST_POSTGRES_URL";
/// Environment variable naming the MySQL/MariaDB server for tests.
pub(crate) const MYSQL_ENV: &str = "SHARDTALLY_TEST_MYSQL_URL";

/// The binary under test.
pub(crate) fn loadgen() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shardtally-loadgen"))
}

/// `scenarios/` at the top of the workspace.
pub(crate) fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

/// A scenario file under `scenarios/`.
pub(crate) fn scenario(name: &str) -> PathBuf {
    scenarios_dir().join(name)
}

/// A fresh folder, removed on drop unless the test is failing (kept for inspection).
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "shardtally-loadgen-it-{tag}-{:016x}",
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("create a temporary folder");
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `name` in the folder and returns its path.
    pub(crate) fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write a test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("note: keeping {} for inspection", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A finished loadgen process.
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Output {
    /// Both streams, for assertion messages.
    pub(crate) fn text(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A loadgen command without the SHARDTALLY_* variables of the caller's environment.
pub(crate) fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(loadgen());
    cmd.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SHARDTALLY_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("SHARDTALLY_LOG", "warn");
    cmd
}

/// Runs the loadgen to completion; `stdin` from a file (or nothing).
pub(crate) fn run(args: &[&str], stdin: Option<&Path>) -> Output {
    let mut cmd = command(args);
    cmd.stdin(match stdin {
        Some(path) => Stdio::from(std::fs::File::open(path).expect("open stdin file")),
        None => Stdio::null(),
    });
    output(cmd.output().expect("run shardtally-loadgen"))
}

/// Runs the loadgen with `input` written to a pipe on its stdin.
pub(crate) fn run_piped(args: &[&str], input: &str) -> Output {
    let mut cmd = command(args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn shardtally-loadgen");
    if let Some(mut stdin) = child.stdin.take() {
        // The loadgen may stop reading at a bad line: a broken pipe is fine.
        let _ = stdin.write_all(input.as_bytes());
    }
    output(
        child
            .wait_with_output()
            .expect("wait for shardtally-loadgen"),
    )
}

fn output(out: std::process::Output) -> Output {
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `run SCENARIO… --results DIR` plus `extra`.
pub(crate) fn run_scenarios(scenarios: &[&Path], results: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&str> = vec!["run"];
    args.extend(scenarios.iter().map(|p| p.to_str().expect("a UTF-8 path")));
    args.extend(["--results", results.to_str().expect("a UTF-8 path")]);
    args.extend_from_slice(extra);
    run(&args, None)
}

/// The one run folder of `scenario` under `results`.
pub(crate) fn run_dir(results: &Path, scenario: &str) -> PathBuf {
    let parent = results.join(scenario);
    let runs: Vec<PathBuf> = std::fs::read_dir(&parent)
        .unwrap_or_else(|e| panic!("{}: {e}", parent.display()))
        .map(|e| e.expect("a folder entry").path())
        .collect();
    assert_eq!(runs.len(), 1, "one run folder in {}", parent.display());
    runs.into_iter().next().expect("a run folder")
}

/// The `summary.json` of `scenario`'s run.
pub(crate) fn summary(results: &Path, scenario: &str) -> serde_json::Value {
    let path = run_dir(results, scenario).join("summary.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("summary.json is JSON")
}

/// `(kind, passed)` of every expectation in a summary.
pub(crate) fn outcomes(summary: &serde_json::Value) -> Vec<(String, bool)> {
    summary["expectations"]
        .as_array()
        .expect("expectations")
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().expect("kind").to_owned(),
                e["passed"].as_bool().expect("passed"),
            )
        })
        .collect()
}

/// A database created for one test on a server from [`database_servers`], dropped on drop.
pub(crate) struct FreshDatabase {
    server_url: String,
    name: String,
    /// The new database's URL.
    pub(crate) url: String,
}

impl FreshDatabase {
    /// Creates `st_it_<tag>_<random>` on the server `server_url` names.
    pub(crate) fn create(server_url: &str, tag: &str) -> FreshDatabase {
        let name = format!("st_it_{tag}_{:08x}", rand::random::<u32>());
        admin_sql(server_url, &format!("CREATE DATABASE {name}")).unwrap_or_else(|e| panic!("{e}"));
        let (base, query) = server_url
            .split_once('?')
            .map_or((server_url, None), |(b, q)| (b, Some(q)));
        let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
        let url = match query {
            Some(q) => format!("{base}/{name}?{q}"),
            None => format!("{base}/{name}"),
        };
        FreshDatabase {
            server_url: server_url.to_owned(),
            name,
            url,
        }
    }
}

/// Dropped unless the test is failing (kept for inspection, as [`TempDir`] is).
impl Drop for FreshDatabase {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("note: keeping database {} for inspection", self.url);
            return;
        }
        let force = if self.server_url.starts_with("postgres") {
            " WITH (FORCE)"
        } else {
            ""
        };
        let drop = format!("DROP DATABASE IF EXISTS {}{force}", self.name);
        if let Err(e) = admin_sql(&self.server_url, &drop) {
            eprintln!("warning: {e}");
        }
    }
}

/// Runs one statement on the server `url` names, on a runtime of its own.
fn admin_sql(url: &str, sql: &str) -> Result<(), String> {
    sqlx::any::install_default_drivers();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a runtime: {e}"))?;
    rt.block_on(async {
        use sqlx::Connection;
        let mut c = sqlx::AnyConnection::connect(url)
            .await
            .map_err(|e| format!("connect to {url}: {e}"))?;
        let done = sqlx::raw_sql(sql).execute(&mut c).await;
        let _ = c.close().await;
        done.map(|_| ()).map_err(|e| format!("{sql}: {e}"))
    })
}

/// The database servers to test on, as `(name, URL)`: those whose variable is set. With
/// `CI=true` an unset one fails the test, so CI cannot silently skip a backend.
pub(crate) fn database_servers() -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for (name, var) in [("PostgreSQL", POSTGRES_ENV), ("MySQL/MariaDB", MYSQL_ENV)] {
        match std::env::var(var).ok().filter(|v| !v.trim().is_empty()) {
            Some(url) => out.push((name, url)),
            None if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("CI=true but {var} is not set: the {name} variant cannot run")
            }
            None => eprintln!("note: {var} is not set; skipping the {name} variant of this test"),
        }
    }
    out
}

/// A worker started as `shardtally-loadgen worker serve …` on loopback port 0.
pub(crate) struct Worker {
    child: Child,
    pub(crate) listen: SocketAddr,
    pub(crate) http: SocketAddr,
    pub(crate) database_url: String,
}

impl Worker {
    /// Starts a worker on a SQLite file in `dir` and waits for its ready line.
    pub(crate) fn start(dir: &Path, node_id: &str, app: &Path) -> Worker {
        Worker::start_with(dir, node_id, app, &[])
    }

    /// [`Worker::start`] with more `serve` flags.
    pub(crate) fn start_with(dir: &Path, node_id: &str, app: &Path, extra: &[&str]) -> Worker {
        let database_url = format!("sqlite://{}", dir.join("worker.db").display());
        Worker::start_on(dir, &database_url, node_id, app, extra)
    }

    /// [`Worker::start_with`] on the database at `database_url` (logs still go to `dir`).
    pub(crate) fn start_on(
        dir: &Path,
        database_url: &str,
        node_id: &str,
        app: &Path,
        extra: &[&str],
    ) -> Worker {
        let database_url = database_url.to_owned();
        let log = std::fs::File::create(dir.join(format!("{node_id}.log"))).expect("log file");
        let mut args = vec![
            "worker",
            "serve",
            "--database-url",
            &database_url,
            "--node-id",
            node_id,
            "--partition-by-id",
            "true",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--app",
            app.to_str().expect("a UTF-8 path"),
            "--flush-interval",
            "50ms",
            "--lease-ttl",
            "2s",
        ];
        args.extend_from_slice(extra);
        let mut child = command(&args)
            .env("SHARDTALLY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn the worker");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(bound) = Bound::parse_ready_line(&line) {
                    let _ = tx.send(bound);
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(bound) = rx.recv_timeout(Duration::from_millis(50)) {
                return Worker {
                    listen: bound.listen,
                    http: bound.http,
                    child,
                    database_url,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the worker exited before it was ready: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the worker was not ready in 60 s"
            );
        }
    }

    /// `tcp://host:port`.
    pub(crate) fn endpoint(&self) -> String {
        format!("tcp://{}", self.listen)
    }

    /// `worker query --format json QUERY` on this worker's database → the records.
    pub(crate) fn query(&self, app: &Path, query: &str) -> Vec<Vec<serde_json::Value>> {
        let out = run(
            &[
                "worker",
                "query",
                "--database-url",
                &self.database_url,
                "--partition-by-id",
                "true",
                "--app",
                app.to_str().expect("a UTF-8 path"),
                "--format",
                "json",
                query,
            ],
            None,
        );
        assert_eq!(out.code, 0, "query failed: {}", out.text());
        let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON records");
        serde_json::from_value(v["records"].clone()).expect("records")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
