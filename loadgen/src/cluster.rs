//! The cluster a run talks to, and the database it shares.
//!
//! - [`Cluster`]: the scenario's workers, spawned as child processes of the loadgen itself
//!   (`shardtally-loadgen worker serve …`, via [`std::env::current_exe`], so nothing else needs
//!   to be built) on loopback ports chosen up front — a restarted node comes back on the port
//!   its publishers know. Each worker's stderr goes to `worker-<node>.log` in the run's folder.
//!   [`Cluster::kill`] is SIGKILL (a real crash); [`Cluster::restart`] starts the node again with
//!   the same arguments and waits until it is ready (after a crash the node first waits for its
//!   old shard lease to expire). Every process is killed when the cluster is dropped;
//!   [`Cluster::stop`] stops them gracefully (SIGTERM: flush, release the lease).
//! - [`RunDatabase`]: the database URL the workers and the expectations use — the
//!   `--database-url` flag, else the scenario's `cluster.database`, else a fresh SQLite file in
//!   the run's folder. A PostgreSQL or MySQL URL names a *server*: each run creates a fresh
//!   database on it (`st_<scenario>_<random>`), so repeated runs never add up, and drops it at
//!   the end unless asked to keep it.

use std::ffi::OsString;
use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use shardtally_worker::node::Bound;
use shardtally_worker::store::{Backend, with_database};
use sqlx::Connection as _;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use shardtally_loadgen::scenario::WorkerSpec;

/// The flush interval given to spawned workers when the scenario does not set one.
pub(crate) const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// The shard lease TTL given to spawned workers: how long a node restarted after a crash waits.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(2);

/// How long a worker may take to print its ready line (a restart also waits out its old lease).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a graceful stop may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the cluster could not be started or changed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClusterError {
    /// No free loopback port could be reserved.
    #[error("cannot reserve a loopback port: {0}")]
    Port(io::Error),
    /// The loadgen's own executable (re-executed as each worker) could not be found.
    #[error("cannot find the loadgen executable to start workers with: {0}")]
    Exe(io::Error),
    /// A worker's log file could not be created.
    #[error("cannot create {}: {error}", path.display())]
    Log {
        /// The file.
        path: PathBuf,
        /// The I/O error (in the message).
        error: io::Error,
    },
    /// The worker process could not be started.
    #[error("cannot start worker {node}: {error}")]
    Spawn {
        /// Its node id.
        node: String,
        /// The I/O error (in the message).
        error: io::Error,
    },
    /// The worker exited before printing its ready line (exit status 2: it refused to start,
    /// the reason is in its log).
    #[error("worker {node} exited ({status}) before it was ready; its log ({}) ends:\n{tail}", log.display())]
    Exited {
        /// Its node id.
        node: String,
        /// How it ended.
        status: String,
        /// Its exit code, when it exited normally.
        code: Option<i32>,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },
    /// The worker did not print its ready line in time (it was killed).
    #[error("worker {node} was not ready within {}s; see {}", timeout.as_secs(), log.display())]
    NotReady {
        /// Its node id.
        node: String,
        /// How long we waited.
        timeout: Duration,
        /// Its log file.
        log: PathBuf,
    },
    /// A fault names a node the cluster does not have.
    #[error("the cluster has no worker `{0}`")]
    UnknownNode(String),
}

impl ClusterError {
    /// Whether a worker refused its configuration (exit status 2): a usage error rather than a
    /// failure of the run.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(self, ClusterError::Exited { code: Some(2), .. })
    }
}

/// One spawned worker.
#[derive(Debug)]
pub(crate) struct Worker {
    /// Its node and shard id.
    pub(crate) spec: WorkerSpec,
    /// Where publishers reach it.
    pub(crate) listen: SocketAddr,
    /// Its HTTP address (`/stores/query`, `/health`, `/metrics`).
    pub(crate) http: SocketAddr,
    /// `serve …` arguments (after `worker`).
    args: Vec<OsString>,
    /// Its stderr.
    log: PathBuf,
    /// The running process (`None` while killed).
    child: Option<Child>,
}

impl Worker {
    /// `tcp://127.0.0.1:PORT`.
    pub(crate) fn endpoint(&self) -> String {
        format!("tcp://{}", self.listen)
    }

    /// Its process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }
}

/// What a cluster's workers share.
#[derive(Debug, Clone)]
pub(crate) struct ClusterConfig {
    /// The database URL.
    pub(crate) database_url: String,
    /// The Siddhi app (`None`: the bundled GeoLocation app).
    pub(crate) app: Option<PathBuf>,
    /// The workers' flush interval.
    pub(crate) flush_interval: Duration,
    /// Where `worker-<node>.log` files go.
    pub(crate) log_dir: PathBuf,
    /// More `serve` arguments for every worker (the bench's `--discard-events`).
    pub(crate) extra_args: Vec<OsString>,
}

/// The spawned workers of a run.
#[derive(Debug)]
pub(crate) struct Cluster {
    exe: PathBuf,
    workers: Vec<Worker>,
}

impl Cluster {
    /// Chooses a listen and an HTTP port per worker, starts them all, and waits until every one
    /// is ready. On error the workers already started are killed.
    ///
    /// A free port is only free until something else binds it: released by [`free_ports`] and
    /// then taken (another cluster starting, or an outgoing connection's ephemeral port) before
    /// the worker binds it, it makes the worker exit saying so. The whole start is then tried
    /// again with new ports, up to [`PORT_ATTEMPTS`] times.
    pub(crate) async fn start(
        specs: &[WorkerSpec],
        config: &ClusterConfig,
    ) -> Result<Cluster, ClusterError> {
        let mut attempt = 1;
        loop {
            match Cluster::start_once(specs, config).await {
                Err(ClusterError::Exited { ref tail, .. })
                    if attempt < PORT_ATTEMPTS && tail.contains(ADDR_IN_USE) =>
                {
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(
        specs: &[WorkerSpec],
        config: &ClusterConfig,
    ) -> Result<Cluster, ClusterError> {
        let exe = std::env::current_exe().map_err(ClusterError::Exe)?;
        let ports = free_ports(specs.len() * 2).map_err(ClusterError::Port)?;
        let mut workers: Vec<Worker> = specs
            .iter()
            .zip(ports.chunks_exact(2))
            .map(|(spec, p)| {
                let listen = SocketAddr::from(([127, 0, 0, 1], p[0]));
                let http = SocketAddr::from(([127, 0, 0, 1], p[1]));
                Worker {
                    spec: spec.clone(),
                    listen,
                    http,
                    args: serve_args(spec, config, listen, http),
                    log: config
                        .log_dir
                        .join(format!("worker-{}.log", file_safe(&spec.node_id))),
                    child: None,
                }
            })
            .collect();
        // Spawn every process first so they start in parallel, then wait for each.
        let mut pending = Vec::with_capacity(workers.len());
        for w in &workers {
            pending.push(spawn(&exe, w)?);
        }
        let mut result = Ok(());
        for (w, p) in workers.iter_mut().zip(pending) {
            match p.ready(&w.spec.node_id, &w.log).await {
                Ok(child) => w.child = Some(child),
                Err(e) => {
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            }
        }
        result?;
        Ok(Cluster { exe, workers })
    }

    /// The workers, in scenario order.
    pub(crate) fn workers(&self) -> &[Worker] {
        &self.workers
    }

    /// SIGKILL: a real crash — no flush, no goodbye, the lease left to expire.
    pub(crate) async fn kill(&mut self, node_id: &str) -> Result<(), ClusterError> {
        let w = self.worker_mut(node_id)?;
        if let Some(mut child) = w.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        Ok(())
    }

    /// Starts a node again with the same arguments (same ports, node and shard id) and waits
    /// until it is ready. A running node is killed first.
    pub(crate) async fn restart(&mut self, node_id: &str) -> Result<(), ClusterError> {
        self.kill(node_id).await?;
        let exe = self.exe.clone();
        let w = self.worker_mut(node_id)?;
        let _ = note_in_log(&w.log, "restarted by shardtally-loadgen");
        let child = spawn(&exe, w)?.ready(&w.spec.node_id, &w.log).await?;
        w.child = Some(child);
        Ok(())
    }

    /// Stops every running worker gracefully (SIGTERM, then SIGKILL after a timeout).
    pub(crate) async fn stop(&mut self) {
        for w in &self.workers {
            if let Some(pid) = w.child.as_ref().and_then(Child::id)
                && let Ok(pid) = i32::try_from(pid)
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for w in &mut self.workers {
            if let Some(mut child) = w.child.take()
                && tokio::time::timeout(STOP_TIMEOUT, child.wait())
                    .await
                    .is_err()
            {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }

    fn worker_mut(&mut self, node_id: &str) -> Result<&mut Worker, ClusterError> {
        self.workers
            .iter_mut()
            .find(|w| w.spec.node_id == node_id)
            .ok_or_else(|| ClusterError::UnknownNode(node_id.to_owned()))
    }
}

/// `serve` arguments of one worker.
fn serve_args(
    spec: &WorkerSpec,
    config: &ClusterConfig,
    listen: SocketAddr,
    http: SocketAddr,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "serve",
        "--database-url",
        &config.database_url,
        "--node-id",
        &spec.node_id,
        "--partition-by-id",
        "true",
        "--listen",
        &listen.to_string(),
        "--http",
        &http.to_string(),
        "--flush-interval",
        &format!("{}ms", config.flush_interval.as_millis().max(1)),
        "--lease-ttl",
        &format!("{}ms", LEASE_TTL.as_millis()),
    ]
    .iter()
    .map(OsString::from)
    .collect();
    if let Some(shard) = &spec.shard_id {
        args.push("--shard-id".into());
        args.push(shard.into());
    }
    if let Some(app) = &config.app {
        args.push("--app".into());
        args.push(app.into());
    }
    args.extend(config.extra_args.iter().cloned());
    args
}

/// A spawned worker that has not printed its ready line yet.
struct Starting {
    child: Child,
    ready: oneshot::Receiver<String>,
}

fn spawn(exe: &Path, w: &Worker) -> Result<Starting, ClusterError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&w.log)
        .map_err(|error| ClusterError::Log {
            path: w.log.clone(),
            error,
        })?;
    let mut cmd = Command::new(exe);
    cmd.arg("worker")
        .args(&w.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true);
    // The worker reads its settings from SHARDTALLY_* variables too: only the arguments count.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("SHARDTALLY_") && k != "SHARDTALLY_LOG" {
            cmd.env_remove(&key);
        }
    }
    // Logs go to a file: no colour codes.
    cmd.env("NO_COLOR", "1");
    if std::env::var_os("SHARDTALLY_LOG").is_none() {
        cmd.env("SHARDTALLY_LOG", "info,sqlx=warn");
    }
    let mut child = cmd.spawn().map_err(|error| ClusterError::Spawn {
        node: w.spec.node_id.clone(),
        error,
    })?;
    let (tx, ready) = oneshot::channel();
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut tx = Some(tx);
            // Keep reading after the ready line so the pipe never fills.
            while let Ok(Some(line)) = lines.next_line().await {
                if Bound::parse_ready_line(&line).is_some()
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line);
                }
            }
        });
    }
    Ok(Starting { child, ready })
}

impl Starting {
    /// Waits for the ready line; an exit or a timeout first is an error.
    async fn ready(mut self, node: &str, log: &Path) -> Result<Child, ClusterError> {
        let deadline = tokio::time::sleep(READY_TIMEOUT);
        tokio::pin!(deadline);
        let exited = |status: std::process::ExitStatus| ClusterError::Exited {
            node: node.to_owned(),
            status: status.to_string(),
            code: status.code(),
            log: log.to_owned(),
            tail: log_tail(log, 20),
        };
        tokio::select! {
            line = &mut self.ready => {
                if line.is_ok() {
                    return Ok(self.child);
                }
                // Stdout closed without a ready line: the process is ending.
                match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
                    Ok(Ok(status)) => Err(exited(status)),
                    _ => {
                        let _ = self.child.start_kill();
                        Err(ClusterError::NotReady { node: node.to_owned(), timeout: READY_TIMEOUT, log: log.to_owned() })
                    }
                }
            }
            status = self.child.wait() => {
                match status {
                    Ok(status) => Err(exited(status)),
                    Err(error) => Err(ClusterError::Spawn { node: node.to_owned(), error }),
                }
            }
            () = &mut deadline => {
                let _ = self.child.start_kill();
                Err(ClusterError::NotReady { node: node.to_owned(), timeout: READY_TIMEOUT, log: log.to_owned() })
            }
        }
    }
}

/// How many times [`Cluster::start`] chooses ports when one was taken before a worker bound it.
const PORT_ATTEMPTS: u32 = 3;

/// What a worker's log says when its port was taken (`std::io::ErrorKind::AddrInUse`'s text).
const ADDR_IN_USE: &str = "Address already in use";

/// Reserves `n` distinct free loopback ports (all bound at once, then released).
fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind(("127.0.0.1", 0)))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// A node id as a file name part (node ids have no `/`, but may have other odd characters).
fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn note_in_log(log: &Path, what: &str) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).open(log)?;
    writeln!(
        f,
        "--- {} {what} ---",
        jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
    )
}

/// The last `n` lines of a log file.
pub(crate) fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Why the run's database could not be prepared or removed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DatabaseError {
    /// The URL's scheme is not one the workers speak.
    #[error("{0}")]
    Url(String),
    /// The server could not be reached to create or drop the run's database.
    #[error("{what} on {url}: {source}")]
    Server {
        /// What was being done.
        what: String,
        /// The server URL (password masked).
        url: String,
        /// The database error.
        source: sqlx::Error,
    },
}

/// The database of one run.
#[derive(Debug)]
pub(crate) struct RunDatabase {
    /// The URL workers and expectations connect to.
    pub(crate) url: String,
    /// `sqlite` for the embedded default, else the URL with its password masked.
    pub(crate) display: String,
    /// A database this run created on a server (dropped by [`RunDatabase::finish`]).
    created: Option<Created>,
}

#[derive(Debug)]
struct Created {
    backend: Backend,
    admin_url: String,
    name: String,
}

impl RunDatabase {
    /// The embedded default: `sqlite://<dir>/shardtally.db` (`dir` made absolute, since the
    /// workers open it too).
    pub(crate) fn embedded(dir: &Path) -> RunDatabase {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        RunDatabase {
            url: format!("sqlite://{}", dir.join("shardtally.db").display()),
            display: "sqlite".to_owned(),
            created: None,
        }
    }

    /// A database named by URL, used as is (an external cluster's database, or a SQLite file).
    pub(crate) fn existing(url: &str) -> RunDatabase {
        RunDatabase {
            url: url.to_owned(),
            display: shardtally_loadgen::report::mask_password(url),
            created: None,
        }
    }

    /// For spawned workers: a SQLite URL as is; a PostgreSQL/MySQL URL names a server, on which
    /// a fresh `st_<scenario>_<random>` database is created.
    pub(crate) async fn for_spawned(
        url: &str,
        scenario: &str,
    ) -> Result<RunDatabase, DatabaseError> {
        let backend = Backend::from_url(url).map_err(|e| DatabaseError::Url(e.to_string()))?;
        if backend == Backend::Sqlite {
            return Ok(RunDatabase::existing(url));
        }
        sqlx::any::install_default_drivers();
        let name = fresh_name(scenario);
        let mut admin =
            sqlx::AnyConnection::connect(url)
                .await
                .map_err(|source| DatabaseError::Server {
                    what: "cannot connect".to_owned(),
                    url: shardtally_loadgen::report::mask_password(url),
                    source,
                })?;
        let created = sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await;
        let _ = admin.close().await;
        created.map_err(|source| DatabaseError::Server {
            what: format!("cannot create database {name}"),
            url: shardtally_loadgen::report::mask_password(url),
            source,
        })?;
        let run_url = with_database(url, &name);
        Ok(RunDatabase {
            display: shardtally_loadgen::report::mask_password(&run_url),
            url: run_url,
            created: Some(Created {
                backend,
                admin_url: url.to_owned(),
                name,
            }),
        })
    }

    /// Whether this run created the database (and so will drop it).
    #[cfg(test)]
    fn is_fresh(&self) -> bool {
        self.created.is_some()
    }

    /// Drops the database this run created, unless `keep`. Returns the URL of a kept one.
    pub(crate) async fn finish(self, keep: bool) -> Result<Option<String>, DatabaseError> {
        let Some(c) = self.created else {
            return Ok(None);
        };
        if keep {
            return Ok(Some(self.url));
        }
        let fail = |what: String| {
            let url = shardtally_loadgen::report::mask_password(&c.admin_url);
            move |source| DatabaseError::Server { what, url, source }
        };
        let mut admin = sqlx::AnyConnection::connect(&c.admin_url)
            .await
            .map_err(fail("cannot connect".to_owned()))?;
        let sql = match c.backend {
            Backend::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", c.name),
            _ => format!("DROP DATABASE IF EXISTS {}", c.name),
        };
        let dropped = sqlx::raw_sql(&sql).execute(&mut admin).await;
        let _ = admin.close().await;
        dropped.map_err(fail(format!("cannot drop database {}", c.name)))?;
        Ok(None)
    }
}

/// `st_<scenario, lower-case, [a-z0-9_] only, ≤ 40 chars>_<8 hex digits>`: a valid unquoted
/// identifier on PostgreSQL and MySQL.
fn fresh_name(scenario: &str) -> String {
    let sanitized: String = scenario
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("st_{sanitized}_{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_names_are_plain_identifiers() {
        let n = fresh_name("Naples-70k.v2");
        assert!(n.starts_with("st_naples_70k_v2_"), "{n}");
        assert_eq!(n.len(), "st_naples_70k_v2_".len() + 8);
        assert!(
            n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
        let long = fresh_name(&"x".repeat(200));
        assert!(long.len() <= 63, "{long}");
    }

    #[test]
    fn serve_args_carry_ports_ids_and_app() {
        let spec = WorkerSpec {
            node_id: "n1".into(),
            shard_id: Some("s1".into()),
            pos: None,
        };
        let config = ClusterConfig {
            database_url: "sqlite:///tmp/x.db".into(),
            app: Some(PathBuf::from("/apps/geo.siddhi")),
            flush_interval: Duration::from_millis(100),
            log_dir: PathBuf::from("/tmp"),
            extra_args: vec!["--discard-events".into()],
        };
        let args = serve_args(
            &spec,
            &config,
            "127.0.0.1:7001".parse().unwrap(),
            "127.0.0.1:7002".parse().unwrap(),
        );
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "serve --database-url sqlite:///tmp/x.db --node-id n1 --partition-by-id true \
             --listen 127.0.0.1:7001 --http 127.0.0.1:7002 --flush-interval 100ms \
             --lease-ttl 2000ms --shard-id s1 --app /apps/geo.siddhi --discard-events"
        );
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(6).unwrap();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 6);
    }

    #[test]
    fn embedded_database_is_an_absolute_sqlite_file() {
        let db = RunDatabase::embedded(Path::new("results/x/1"));
        assert!(db.url.starts_with("sqlite:///"), "{}", db.url);
        assert!(db.url.ends_with("/results/x/1/shardtally.db"), "{}", db.url);
        assert!(!db.is_fresh());
    }
}
