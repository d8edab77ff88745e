//! The `shardtally-worker` command line: `serve`, `query`, `migrate`.
//!
//! Exit status: 0 success, 1 runtime failure, 2 bad configuration, bad query or a refused shard
//! rule. [`main`] is also what the loadgen runs when it re-executes itself as a worker.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::config::{ConfigError, Overrides, WorkerConfig};
use crate::http::json_value;
use crate::query::ResultSet;
use crate::store::Store;

/// shardtally worker: aggregates gateway events into shard-partitioned time buckets.
#[derive(Debug, Parser)]
#[command(name = "shardtally-worker", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Receive events from publishers and aggregate them into the database.
    Serve(ServeArgs),
    /// Run a Siddhi store query, merging every shard.
    Query(QueryArgs),
    /// Alter existing aggregation tables.
    Migrate(MigrateArgs),
}

/// Options shared by every command: where the config, database and app are.
#[derive(Debug, Args, Clone)]
struct Common {
    /// deployment.yaml (WSO2 keys plus a `shardtally:` section).
    #[arg(long, env = "SHARDTALLY_CONFIG")]
    config: Option<PathBuf>,
    /// Database URL: sqlite://FILE, postgres://…, mysql://… [default: sqlite://shardtally.db]
    #[arg(long, env = "SHARDTALLY_DATABASE_URL")]
    database_url: Option<String>,
    /// The Siddhi app (.siddhi) [default: the bundled GeoLocation app]
    #[arg(long, env = "SHARDTALLY_APP")]
    app: Option<PathBuf>,
    /// Node id (wso2.carbon.id) [default: the host name]
    #[arg(long, env = "SHARDTALLY_NODE_ID")]
    node_id: Option<String>,
    /// Shard id, at most 20 characters (siddhi.properties.shardId) [default: the node id]
    #[arg(long, env = "SHARDTALLY_SHARD_ID")]
    shard_id: Option<String>,
    /// Partition every aggregation by shard id unless it says @PartitionById(enable='false')
    #[arg(long, env = "SHARDTALLY_PARTITION_BY_ID")]
    partition_by_id: Option<bool>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// Address for publishers [default: 127.0.0.1:9611]
    #[arg(long, env = "SHARDTALLY_LISTEN")]
    listen: Option<String>,
    /// Address for /stores/query, /health and /metrics [default: 127.0.0.1:9091]
    #[arg(long, env = "SHARDTALLY_HTTP")]
    http: Option<String>,
    /// File holding the token publishers must present (or set SHARDTALLY_AUTH_TOKEN)
    #[arg(long, env = "SHARDTALLY_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM); publishers must then connect with tls://, HTTP clients with https://
    #[arg(long, env = "SHARDTALLY_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM)
    #[arg(long, env = "SHARDTALLY_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM): require publishers and HTTP clients to present a client certificate it signed
    #[arg(long, env = "SHARDTALLY_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// Commit pending aggregates at least this often [default: 200ms]
    #[arg(long, env = "SHARDTALLY_FLUSH_INTERVAL")]
    flush_interval: Option<String>,
    /// Shard lease time-to-live: how long after a crash the shard is free again [default: 6s]
    #[arg(long, env = "SHARDTALLY_LEASE_TTL")]
    lease_ttl: Option<String>,
    /// How long committed batch ids are remembered for de-duplication [default: 24h]
    #[arg(long, env = "SHARDTALLY_DEDUP_WINDOW")]
    dedup_window: Option<String>,
    /// Accept a shard id different from the one recorded for this node id
    #[arg(long, env = "SHARDTALLY_ALLOW_SHARD_CHANGE")]
    allow_shard_change: bool,
    /// Accept publishers without a token on a non-loopback address (refused by default)
    #[arg(long, env = "SHARDTALLY_ALLOW_UNAUTHENTICATED")]
    allow_unauthenticated: bool,
    /// Benchmark baseline only (`shardtally-loadgen bench`, `wire`): decode, fold and ack every
    /// batch at once, and discard the aggregates instead of storing them. Nothing is stored.
    #[arg(long, hide = true)]
    discard_events: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Args)]
struct QueryArgs {
    #[command(flatten)]
    common: Common,
    /// Output format
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// The store query, e.g. `from GeoLocationAgg within "2026-11-20 10:**:**" per "hours" select country, city, totalRequestCount`
    query: String,
}

#[derive(Debug, Args)]
struct MigrateArgs {
    #[command(flatten)]
    common: Common,
    /// Add SHARD_ID (this node's shard id for existing rows) to every partitioned aggregation table
    #[arg(long)]
    add_shard_id: bool,
}

fn overrides(c: &Common) -> Overrides {
    Overrides {
        config: c.config.clone(),
        node_id: c.node_id.clone(),
        shard_id: c.shard_id.clone(),
        partition_by_id: c.partition_by_id,
        database_url: c.database_url.clone(),
        app: c.app.clone(),
        ..Overrides::default()
    }
}

/// Parses `std::env::args` and runs the command.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Parses `args` (the first is the program name) and runs the command.
pub fn main_from<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Serve(a) => serve(a).await,
            Command::Query(a) => query(a).await,
            Command::Migrate(a) => migrate(a).await,
        }
    });
    ExitCode::from(code)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHARDTALLY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn config_error(e: &ConfigError) -> u8 {
    eprintln!("error: {e}");
    2
}

fn resolve(o: Overrides) -> Result<WorkerConfig, u8> {
    let c = WorkerConfig::resolve(o).map_err(|e| config_error(&e))?;
    if !c.ignored_keys.is_empty() {
        tracing::warn!(
            "deployment.yaml: shardtally does not use these WSO2 keys (ignored): {}",
            c.ignored_keys.join(", ")
        );
    }
    if !c.dropped_jdbc_params.is_empty() {
        tracing::warn!(
            "jdbcUrl: JDBC driver parameters have no meaning here and were dropped: {}",
            c.dropped_jdbc_params.join("&")
        );
    }
    Ok(c)
}

async fn serve(a: ServeArgs) -> u8 {
    let o = Overrides {
        listen: a.listen,
        http: a.http,
        auth_token_file: a.auth_token_file,
        tls_cert: a.tls_cert,
        tls_key: a.tls_key,
        tls_client_ca: a.tls_client_ca,
        flush_interval: a.flush_interval,
        lease_ttl: a.lease_ttl,
        dedup_window: a.dedup_window,
        allow_shard_change: a.allow_shard_change,
        allow_unauthenticated: a.allow_unauthenticated,
        discard_events: a.discard_events,
        ..overrides(&a.common)
    };
    let config = match resolve(o) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received; shutting down gracefully");
            shutdown.cancel();
        });
    }
    let result = crate::node::run(config, shutdown, |bound| {
        // One machine-readable line on stdout for scripts and the loadgen.
        println!("{}", bound.ready_line());
    })
    .await;
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn open(o: Overrides) -> Result<(WorkerConfig, Catalog, Store), u8> {
    let config = resolve(o)?;
    let catalog = Catalog::load(&config.app, config.partition_by_id).map_err(|e| {
        eprintln!("error: {e}");
        2
    })?;
    let store = Store::connect(&config.database_url, 2).await.map_err(|e| {
        eprintln!(
            "error: database {}: {e}",
            crate::config::redact(&config.database_url)
        );
        1
    })?;
    Ok((config, catalog, store))
}

async fn query(a: QueryArgs) -> u8 {
    let o = Overrides {
        query_only: true,
        ..overrides(&a.common)
    };
    let (config, catalog, store) = match open(o).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    match crate::retrieve::run_within(&catalog, &store, &a.query, config.query_limits).await {
        Ok(rs) => {
            print!("{}", render(&rs, a.format));
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            if e.is_user_error() { 2 } else { 1 }
        }
    }
}

async fn migrate(a: MigrateArgs) -> u8 {
    if !a.add_shard_id {
        eprintln!("error: nothing to do; `migrate --add-shard-id` is the only migration");
        return 2;
    }
    // Nothing listens: a config file's public addresses need no token here.
    let o = Overrides {
        allow_unauthenticated: true,
        ..overrides(&a.common)
    };
    let (config, catalog, store) = match open(o).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    match store.add_shard_id(&catalog.layouts, &config.shard_id).await {
        Ok(tables) if tables.is_empty() => {
            println!(
                "nothing to migrate: every partitioned aggregation table already has SHARD_ID"
            );
            0
        }
        Ok(tables) => {
            println!(
                "added SHARD_ID = '{}' to {} table(s): {}",
                config.shard_id,
                tables.len(),
                tables.join(", ")
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Renders a result set as a table, JSON (`{"records": …}` as the HTTP API) or CSV.
fn render(rs: &ResultSet, format: Format) -> String {
    match format {
        Format::Json => {
            let records: Vec<Vec<serde_json::Value>> = rs
                .rows
                .iter()
                .map(|r| r.iter().map(json_value).collect())
                .collect();
            format!(
                "{}\n",
                serde_json::json!({ "columns": rs.columns, "records": records })
            )
        }
        Format::Csv => {
            let mut out = csv_line(&rs.columns);
            for row in &rs.rows {
                // CSV has no null: an empty field.
                let fields: Vec<String> = row
                    .iter()
                    .map(|v| {
                        if v.is_null() {
                            String::new()
                        } else {
                            v.to_string()
                        }
                    })
                    .collect();
                out.push_str(&csv_line(&fields));
            }
            out
        }
        Format::Table => {
            let cells: Vec<Vec<String>> = rs
                .rows
                .iter()
                .map(|r| r.iter().map(ToString::to_string).collect())
                .collect();
            let mut widths: Vec<usize> = rs.columns.iter().map(|c| c.chars().count()).collect();
            for row in &cells {
                for (w, c) in widths.iter_mut().zip(row) {
                    *w = (*w).max(c.chars().count());
                }
            }
            let line = |row: &[String]| {
                let mut s = String::new();
                for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
                    if i > 0 {
                        s.push_str(" | ");
                    }
                    s.push_str(c);
                    s.extend(std::iter::repeat_n(' ', w - c.chars().count()));
                }
                s.trim_end().to_owned() + "\n"
            };
            let mut out = line(&rs.columns);
            out.push_str(
                &widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("-+-"),
            );
            out.push('\n');
            for row in &cells {
                out.push_str(&line(row));
            }
            out.push_str(&format!(
                "({} row{})\n",
                cells.len(),
                if cells.len() == 1 { "" } else { "s" }
            ));
            out
        }
    }
}

fn csv_line<S: AsRef<str>>(fields: &[S]) -> String {
    let mut out = fields
        .iter()
        .map(|f| {
            let f = f.as_ref();
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    out
}
