//! Worker configuration: `deployment.yaml` (WSO2's keys plus shardtally's own), command-line
//! flags and environment variables, resolved into one validated [`WorkerConfig`].
//!
//! Precedence: flag (or its `SHARDTALLY_*` variable) > `deployment.yaml` > default. The file is
//! parsed first ([`DeploymentFile`]), then validated ([`WorkerConfig::resolve`]); every error
//! names the key it is about, and the binary exits with status 2 on any of them.
//!
//! ```yaml
//! wso2.carbon:
//!   id: wso2-am-analytics-1            # node id
//! siddhi:
//!   properties:
//!     partitionById: true
//!     shardId: wso2-am-analytics-1      # defaults to the node id; at most 20 characters
//! wso2.datasources:
//!   dataSources:
//!     - name: APIM_ANALYTICS_DB
//!       definition:
//!         type: RDBMS
//!         configuration:
//!           jdbcUrl: "jdbc:mysql://localhost:3306/APIM_ANALYTICS_DB?useSSL=false"
//!           username: root
//!           password: pass
//!           maxPoolSize: 50
//! shardtally:                            # shardtally's own keys; a misspelt one is an error
//!   listen: 127.0.0.1:9611
//!   flush_interval: 200ms
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::IgnoredAny;

/// Maximum length of a shard id (the seeds' limit, enforced).
pub const MAX_SHARD_ID_LEN: usize = 20;
/// The datasource name the seeds use for the aggregation database.
pub const DATASOURCE_NAME: &str = "APIM_ANALYTICS_DB";

/// Default TCP address for publishers.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9611";
/// Default HTTP address (`/stores/query`, `/health`, `/metrics`).
pub const DEFAULT_HTTP: &str = "127.0.0.1:9091";
/// Default database.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://shardtally.db";

/// A configuration error: the key it concerns and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML is malformed or a key has the wrong type or is unknown.
    #[error("{path}:{line}:{column}: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 when unknown).
        line: u64,
        /// 1-based column (0 when unknown).
        column: u64,
        /// The parser's message (names the key).
        message: String,
    },
    /// A value is present but not acceptable.
    #[error("invalid `{key}`: {message}")]
    Invalid {
        /// The key (flag or YAML path).
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// `deployment.yaml` as written: the WSO2 keys shardtally reads, shardtally's own section, and
/// everything else (kept only to be named in a warning).
#[derive(Debug, Default, Deserialize)]
pub struct DeploymentFile {
    /// `wso2.carbon`: the node id.
    #[serde(rename = "wso2.carbon", default)]
    pub carbon: Option<CarbonSection>,
    /// `siddhi.properties`: partitioning and shard id.
    #[serde(default)]
    pub siddhi: Option<SiddhiSection>,
    /// `wso2.datasources`: the `APIM_ANALYTICS_DB` datasource.
    #[serde(rename = "wso2.datasources", default)]
    pub datasources: Option<DatasourcesSection>,
    /// shardtally's own keys.
    #[serde(default)]
    pub shardtally: Option<OwnSection>,
    #[serde(flatten)]
    other: BTreeMap<String, IgnoredAny>,
}

/// `wso2.carbon`.
#[derive(Debug, Default, Deserialize)]
pub struct CarbonSection {
    /// The node id.
    pub id: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, IgnoredAny>,
}

/// `siddhi`.
#[derive(Debug, Default, Deserialize)]
pub struct SiddhiSection {
    /// `siddhi.properties`.
    pub properties: Option<SiddhiProperties>,
    #[serde(flatten)]
    other: BTreeMap<String, IgnoredAny>,
}

/// `siddhi.properties`.
#[derive(Debug, Default, Deserialize)]
pub struct SiddhiProperties {
    /// Global partitioning switch.
    #[serde(rename = "partitionById")]
    pub partition_by_id: Option<bool>,
    /// This node's shard id.
    #[serde(rename = "shardId")]
    pub shard_id: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, IgnoredAny>,
}

/// `wso2.datasources`.
#[derive(Debug, Default, Deserialize)]
pub struct DatasourcesSection {
    /// The datasources; shardtally reads `APIM_ANALYTICS_DB`.
    #[serde(rename = "dataSources", default)]
    pub data_sources: Vec<DataSource>,
    #[serde(flatten)]
    other: BTreeMap<String, IgnoredAny>,
}

/// One datasource entry.
#[derive(Debug, Default, Deserialize)]
pub struct DataSource {
    /// Its name.
    pub name: Option<String>,
    /// Its definition.
    pub definition: Option<DataSourceDefinition>,
    #[serde(flatten)]
    other: BTreeMap<String, IgnoredAny>,
}

/// `definition` of a datasource.
#[derive(Debug, Default, Deserialize)]
pub struct DataSourceDefinition {
    /// The connection settings.
    pub configuration: Option<DataSourceConfiguration>,
    #[serde(flatten)]
    other: BTreeMap<String, IgnoredAny>,
}

/// `definition.configuration` of a datasource.
#[derive(Debug, Default, Deserialize)]
pub struct DataSourceConfiguration {
    /// `jdbc:mysql://…`, `jdbc:postgresql://…`, `jdbc:sqlite:…`.
    #[serde(rename = "jdbcUrl")]
    pub jdbc_url: Option<String>,
    /// Database user.
    pub username: Option<String>,
    /// Database password.
    pub password: Option<String>,
    /// Connection pool size.
    #[serde(rename = "maxPoolSize")]
    pub max_pool_size: Option<u32>,
    #[serde(flatten)]
    other: BTreeMap<String, IgnoredAny>,
}

/// shardtally's own section; unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnSection {
    /// TCP address for publishers.
    pub listen: Option<String>,
    /// HTTP address for `/stores/query`, `/health`, `/metrics`.
    pub http: Option<String>,
    /// Database URL (`sqlite://…`, `postgres://…`, `mysql://…`); wins over the datasource.
    pub database_url: Option<String>,
    /// The Siddhi app file (relative to the config file).
    pub app: Option<PathBuf>,
    /// File holding the publishers' auth token (relative to the config file).
    pub auth_token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM, relative to the config file): publishers must use `tls://`,
    /// HTTP clients `https://`.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM, relative to the config file).
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM): when set, publishers and HTTP clients must present a client
    /// certificate it signed.
    pub tls_client_ca: Option<PathBuf>,
    /// How often pending aggregates are committed (`200ms`, `1s`).
    pub flush_interval: Option<String>,
    /// Shard lease time-to-live (`6s`).
    pub lease_ttl: Option<String>,
    /// How long committed batch ids are remembered for de-duplication (`24h`).
    pub dedup_window: Option<String>,
    /// Accept a shard id different from the one recorded for this node.
    pub allow_shard_change: Option<bool>,
    /// Accept publishers without a token on a non-loopback address.
    pub allow_unauthenticated: Option<bool>,
    /// Maximum events held uncommitted before reading from sockets pauses; a commit is due at
    /// half. Memory is bounded by `max_pending_bytes` and `max_pending_rows`; this cap decides
    /// how soon acks come back when events arrive faster than the flush interval commits them.
    /// A publisher waits for acks once its buffer (default 1,000,000 events) is unacked, so a
    /// cap far above that holds a fast publisher to one buffer per flush interval. The
    /// default, 1,000,000, makes a commit due at 500,000 events: at 2 M events/s per worker
    /// the 200 ms interval comes first, at 1 s flushes this cap does.
    pub max_pending_events: Option<usize>,
    /// Maximum aggregate rows, over every granularity, the events folded but not yet drained
    /// would write (an upper bound): bounds a commit's size, its duration and the worker's
    /// memory; a commit is due at half.
    pub max_pending_rows: Option<usize>,
    /// Maximum event bytes of the batches held (received and not yet acked: waiting for the
    /// ingest task, pending, in the commit) before reading from sockets pauses; a commit is due
    /// when the pending ones hold half. At least twice `max_frame_len`.
    pub max_pending_bytes: Option<usize>,
    /// Maximum accepted frame length in bytes.
    pub max_frame_len: Option<u32>,
    /// Maximum events in one batch.
    pub max_batch_events: Option<u32>,
    /// Maximum simultaneous publisher connections.
    pub max_connections: Option<usize>,
    /// How long a new connection may take to finish its TLS handshake and send HELLO (`10s`);
    /// on the HTTP side, the time for the TLS handshake, then for each request's head, then for
    /// its body.
    pub handshake_timeout: Option<String>,
    /// How long a connection may stay silent, or leave our writes unread, before it is closed
    /// (`60s`; publishers send heartbeats every 2 s).
    pub idle_timeout: Option<String>,
    /// Most stored rows one store query may read (`1000000`).
    pub max_query_rows: Option<usize>,
    /// Longest a store query may run (`30s`).
    pub query_timeout: Option<String>,
}

impl DeploymentFile {
    /// Reads and parses a `deployment.yaml`.
    pub fn load(path: &Path) -> Result<DeploymentFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        DeploymentFile::parse(&text, path)
    }

    /// Parses `deployment.yaml` text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<DeploymentFile, ConfigError> {
        if text.trim().is_empty() {
            return Ok(DeploymentFile::default());
        }
        serde_saphyr::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map_or((0, 0), |loc| (loc.line(), loc.column()));
            let message = e.to_string();
            // The message may already lead with the position; keep only what follows it.
            let message = message.lines().next().unwrap_or_default().trim().to_owned();
            ConfigError::Yaml {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        })
    }

    /// The WSO2 keys present in the file that shardtally does not use, as dotted paths.
    pub fn ignored_keys(&self) -> Vec<String> {
        fn push(out: &mut Vec<String>, prefix: &str, other: &BTreeMap<String, IgnoredAny>) {
            out.extend(other.keys().map(|k| format!("{prefix}{k}")));
        }
        let mut out = Vec::new();
        push(&mut out, "", &self.other);
        if let Some(c) = &self.carbon {
            push(&mut out, "wso2.carbon.", &c.other);
        }
        if let Some(s) = &self.siddhi {
            push(&mut out, "siddhi.", &s.other);
            if let Some(p) = &s.properties {
                push(&mut out, "siddhi.properties.", &p.other);
            }
        }
        if let Some(d) = &self.datasources {
            push(&mut out, "wso2.datasources.", &d.other);
            for ds in &d.data_sources {
                let name = ds.name.as_deref().unwrap_or("?");
                let prefix = format!("wso2.datasources.dataSources[{name}].");
                push(&mut out, &prefix, &ds.other);
                if let Some(def) = &ds.definition {
                    push(&mut out, &format!("{prefix}definition."), &def.other);
                    if let Some(conf) = &def.configuration {
                        push(
                            &mut out,
                            &format!("{prefix}definition.configuration."),
                            &conf.other,
                        );
                    }
                }
            }
        }
        out
    }

    /// The `APIM_ANALYTICS_DB` datasource's configuration, if any.
    pub fn analytics_datasource(&self) -> Option<&DataSourceConfiguration> {
        self.datasources
            .as_ref()?
            .data_sources
            .iter()
            .find(|d| d.name.as_deref() == Some(DATASOURCE_NAME))?
            .definition
            .as_ref()?
            .configuration
            .as_ref()
    }
}

/// Maps a WSO2 datasource (JDBC URL, user, password) onto a sqlx URL.
///
/// `jdbc:mysql://` and `jdbc:mariadb://` → `mysql://`, `jdbc:postgresql://` → `postgres://`,
/// `jdbc:sqlite:PATH` → `sqlite://PATH`. JDBC driver parameters (`?useSSL=false`, …) have no
/// sqlx meaning and are dropped; they are returned so the caller can name them in a warning.
pub fn jdbc_to_sqlx(
    jdbc_url: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<(String, Vec<String>), ConfigError> {
    const KEY: &str =
        "wso2.datasources.dataSources[APIM_ANALYTICS_DB].definition.configuration.jdbcUrl";
    let rest = jdbc_url.strip_prefix("jdbc:").ok_or_else(|| {
        ConfigError::invalid(KEY, format!("`{jdbc_url}` does not start with `jdbc:`"))
    })?;
    if let Some(path) = rest.strip_prefix("sqlite:") {
        if path.is_empty() {
            return Err(ConfigError::invalid(KEY, "empty SQLite path"));
        }
        return Ok((format!("sqlite://{path}"), Vec::new()));
    }
    let product = rest.split(':').next().unwrap_or_default();
    let scheme = match product {
        "mysql" | "mariadb" => "mysql",
        "postgresql" | "postgres" => "postgres",
        other => {
            return Err(ConfigError::invalid(
                KEY,
                format!(
                    "unsupported database `{other}` (shardtally supports jdbc:mysql, jdbc:mariadb, jdbc:postgresql and jdbc:sqlite)"
                ),
            ));
        }
    };
    let tail = rest[product.len()..]
        .strip_prefix("://")
        .ok_or_else(|| ConfigError::invalid(KEY, format!("`{jdbc_url}` has no `://`")))?;
    let mut url = url::Url::parse(&format!("{scheme}://{tail}"))
        .map_err(|e| ConfigError::invalid(KEY, format!("`{jdbc_url}`: {e}")))?;
    let dropped: Vec<String> = url.query_pairs().map(|(k, v)| format!("{k}={v}")).collect();
    url.set_query(None);
    if let Some(user) = username.filter(|u| !u.is_empty()) {
        url.set_username(user)
            .map_err(|()| ConfigError::invalid(KEY, "cannot carry a username"))?;
    }
    if let Some(pass) = password.filter(|p| !p.is_empty()) {
        url.set_password(Some(pass))
            .map_err(|()| ConfigError::invalid(KEY, "cannot carry a password"))?;
    }
    Ok((url.to_string(), dropped))
}

/// Parses a humane duration (`200ms`, `1s`, `10 sec`, `1h 30m`, ISO 8601 `PT1S`).
pub fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let d: jiff::SignedDuration = text.trim().parse().map_err(|e| {
        ConfigError::invalid(
            key,
            format!("`{text}` is not a duration (e.g. 200ms, 5s): {e}"),
        )
    })?;
    Duration::try_from(d)
        .map_err(|_| ConfigError::invalid(key, format!("`{text}` must not be negative")))
}

/// Command-line / environment overrides for `serve` (all optional; `None` defers to the file).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--node-id`.
    pub node_id: Option<String>,
    /// `--shard-id`.
    pub shard_id: Option<String>,
    /// `--partition-by-id`.
    pub partition_by_id: Option<bool>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--http`.
    pub http: Option<String>,
    /// `--database-url`.
    pub database_url: Option<String>,
    /// `--app`.
    pub app: Option<PathBuf>,
    /// `--auth-token-file`.
    pub auth_token_file: Option<PathBuf>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--tls-client-ca`.
    pub tls_client_ca: Option<PathBuf>,
    /// `--flush-interval`.
    pub flush_interval: Option<String>,
    /// `--lease-ttl`.
    pub lease_ttl: Option<String>,
    /// `--dedup-window`.
    pub dedup_window: Option<String>,
    /// `--allow-shard-change`.
    pub allow_shard_change: bool,
    /// `--allow-unauthenticated`.
    pub allow_unauthenticated: bool,
    /// `--discard-events` (hidden; benchmark baseline).
    pub discard_events: bool,
    /// For `query`, which serves nothing and writes under no shard: the listen addresses' auth
    /// rule and the shard id's length are not checked (a host name over 20 characters, or a
    /// config file for a public address, does not stop a query).
    pub query_only: bool,
}

/// Where the Siddhi app comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppSource {
    /// The bundled GeoLocation app.
    Bundled,
    /// A `.siddhi` file.
    File(PathBuf),
}

/// The validated worker configuration.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Node id (`wso2.carbon.id`).
    pub node_id: String,
    /// Shard id (defaults to the node id; at most 20 characters).
    pub shard_id: String,
    /// Global `partitionById`.
    pub partition_by_id: bool,
    /// TCP address for publishers.
    pub listen: String,
    /// HTTP address.
    pub http: String,
    /// sqlx database URL.
    pub database_url: String,
    /// Database connection pool size.
    pub db_max_connections: u32,
    /// The Siddhi app.
    pub app: AppSource,
    /// Publishers' auth token, if one is required.
    pub auth_token: Option<String>,
    /// The TLS server configuration, if publishers must use TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Commit cadence.
    pub flush_interval: Duration,
    /// Shard lease time-to-live.
    pub lease_ttl: Duration,
    /// How long batch ids are remembered.
    pub dedup_window: Duration,
    /// Accept a changed shard id for this node.
    pub allow_shard_change: bool,
    /// Events held uncommitted before sockets stop being read (a commit is due at half).
    pub max_pending_events: usize,
    /// Rows of every granularity the pending events would write (an upper bound) before
    /// sockets stop being read (a commit is due at half).
    pub max_pending_rows: usize,
    /// Event bytes of the batches held before sockets stop being read (a commit is due when
    /// the pending ones hold half).
    pub max_pending_bytes: usize,
    /// Maximum frame length.
    pub max_frame_len: u32,
    /// Maximum events per batch.
    pub max_batch_events: u32,
    /// Maximum publisher connections.
    pub max_connections: usize,
    /// Time allowed for the TLS handshake and HELLO.
    pub handshake_timeout: Duration,
    /// Longest silence (or unread write) before a connection is closed.
    pub idle_timeout: Duration,
    /// Store queries: the most stored rows read, and the longest run.
    pub query_limits: crate::retrieve::QueryLimits,
    /// Benchmark baseline: fold and ack events, never store them (`--discard-events`).
    pub discard_events: bool,
    /// WSO2 keys found in the file that shardtally does not use.
    pub ignored_keys: Vec<String>,
    /// JDBC parameters dropped from the datasource URL.
    pub dropped_jdbc_params: Vec<String>,
}

impl WorkerConfig {
    /// Resolves flags, the config file they name (if any) and defaults into a validated config.
    pub fn resolve(o: Overrides) -> Result<WorkerConfig, ConfigError> {
        let (file, base) = match &o.config {
            Some(path) => (
                DeploymentFile::load(path)?,
                path.parent().map(Path::to_path_buf).unwrap_or_default(),
            ),
            None => (DeploymentFile::default(), PathBuf::new()),
        };
        WorkerConfig::resolve_with(o, &file, &base)
    }

    /// As [`WorkerConfig::resolve`], with the file already parsed; relative paths in the file
    /// are taken from `base`.
    pub fn resolve_with(
        o: Overrides,
        file: &DeploymentFile,
        base: &Path,
    ) -> Result<WorkerConfig, ConfigError> {
        let own = file.shardtally.as_ref();
        let props = file.siddhi.as_ref().and_then(|s| s.properties.as_ref());
        let rel = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            }
        };

        let node_id = o
            .node_id
            .clone()
            .or_else(|| file.carbon.as_ref().and_then(|c| c.id.clone()))
            .unwrap_or_else(default_node_id);
        check_id("node-id (wso2.carbon.id)", &node_id)?;
        let shard_id = o
            .shard_id
            .clone()
            .or_else(|| props.and_then(|p| p.shard_id.clone()))
            .unwrap_or_else(|| node_id.clone());
        check_id("shard-id (siddhi.properties.shardId)", &shard_id)?;
        if shard_id.chars().count() > MAX_SHARD_ID_LEN && !o.query_only {
            return Err(ConfigError::invalid(
                "shard-id (siddhi.properties.shardId)",
                format!(
                    "`{shard_id}` is {} characters; a shard id is at most {MAX_SHARD_ID_LEN} (it defaults to the node id, so set a shorter shard id)",
                    shard_id.chars().count()
                ),
            ));
        }
        let partition_by_id = o
            .partition_by_id
            .or_else(|| props.and_then(|p| p.partition_by_id))
            .unwrap_or(false);

        let datasource = file.analytics_datasource();
        let mut dropped_jdbc_params = Vec::new();
        let database_url = match o
            .database_url
            .clone()
            .or_else(|| own.and_then(|s| s.database_url.clone()))
        {
            Some(url) => url,
            None => match datasource.and_then(|d| Some((d, d.jdbc_url.as_deref()?))) {
                Some((ds, jdbc)) => {
                    let (url, dropped) =
                        jdbc_to_sqlx(jdbc, ds.username.as_deref(), ds.password.as_deref())?;
                    dropped_jdbc_params = dropped;
                    url
                }
                None => DEFAULT_DATABASE_URL.to_owned(),
            },
        };
        if ![
            "sqlite:",
            "postgres://",
            "postgresql://",
            "mysql://",
            "mariadb://",
        ]
        .iter()
        .any(|p| database_url.starts_with(p))
        {
            return Err(ConfigError::invalid(
                "database-url",
                format!(
                    "`{}` is not a sqlite:, postgres:// or mysql:// URL",
                    redact(&database_url)
                ),
            ));
        }
        let db_max_connections = datasource.and_then(|d| d.max_pool_size).unwrap_or(8).max(1);

        let app = match o
            .app
            .clone()
            .or_else(|| own.and_then(|s| s.app.as_ref().map(rel)))
        {
            Some(p) => AppSource::File(p),
            None => AppSource::Bundled,
        };
        let token_file = o
            .auth_token_file
            .clone()
            .or_else(|| own.and_then(|s| s.auth_token_file.as_ref().map(rel)));
        let auth_token = match token_file {
            Some(path) => Some(read_token(&path)?),
            None => std::env::var("SHARDTALLY_AUTH_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        };
        let file_path = |flag: &Option<PathBuf>, field: fn(&OwnSection) -> Option<&PathBuf>| {
            flag.clone().or_else(|| own.and_then(field).map(rel))
        };
        let tls = match (
            file_path(&o.tls_cert, |s| s.tls_cert.as_ref()),
            file_path(&o.tls_key, |s| s.tls_key.as_ref()),
            file_path(&o.tls_client_ca, |s| s.tls_client_ca.as_ref()),
        ) {
            (Some(cert), Some(key), client_ca) => Some(crate::tls::server_config(
                &cert,
                &key,
                client_ca.as_deref(),
            )?),
            (None, None, None) => None,
            (None, None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "tls-client-ca",
                    "client certificates need TLS: give --tls-cert and --tls-key too",
                ));
            }
            _ => {
                return Err(ConfigError::invalid(
                    "tls-cert/tls-key",
                    "give both --tls-cert and --tls-key, or neither",
                ));
            }
        };

        let duration = |key: &str,
                        flag: &Option<String>,
                        file: Option<&String>,
                        default_ms: u64| match flag.as_ref().or(file) {
            Some(text) => parse_duration(key, text),
            None => Ok(Duration::from_millis(default_ms)),
        };
        let flush_interval = duration(
            "flush-interval",
            &o.flush_interval,
            own.and_then(|s| s.flush_interval.as_ref()),
            200,
        )?;
        if flush_interval.is_zero() {
            return Err(ConfigError::invalid(
                "flush-interval",
                "must be greater than 0",
            ));
        }
        let lease_ttl = duration(
            "lease-ttl",
            &o.lease_ttl,
            own.and_then(|s| s.lease_ttl.as_ref()),
            6_000,
        )?;
        let handshake_timeout = duration(
            "handshake_timeout",
            &None,
            own.and_then(|s| s.handshake_timeout.as_ref()),
            10_000,
        )?;
        let idle_timeout = duration(
            "idle_timeout",
            &None,
            own.and_then(|s| s.idle_timeout.as_ref()),
            60_000,
        )?;
        let query_timeout = duration(
            "query_timeout",
            &None,
            own.and_then(|s| s.query_timeout.as_ref()),
            30_000,
        )?;
        let max_query_rows = own
            .and_then(|s| s.max_query_rows)
            .unwrap_or(crate::retrieve::QueryLimits::default().max_rows);
        if max_query_rows == 0 {
            return Err(ConfigError::invalid("max_query_rows", "must be at least 1"));
        }
        let max_pending_events = own.and_then(|s| s.max_pending_events).unwrap_or(1_000_000);
        let max_pending_rows = own.and_then(|s| s.max_pending_rows).unwrap_or(100_000);
        for (key, n) in [
            ("max_pending_events", max_pending_events),
            ("max_pending_rows", max_pending_rows),
        ] {
            if n == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        let max_frame_len = own
            .and_then(|s| s.max_frame_len)
            .unwrap_or(16 * 1024 * 1024);
        // Twice the largest frame: a batch waiting for room always finds it once the batches
        // pending, which then hold over half the budget and so make a commit due, are committed.
        let two_frames = 2 * max_frame_len as usize;
        let max_pending_bytes = own
            .and_then(|s| s.max_pending_bytes)
            .unwrap_or((64 << 20).max(two_frames));
        if max_pending_bytes < two_frames {
            return Err(ConfigError::invalid(
                "max_pending_bytes",
                format!(
                    "{max_pending_bytes} is less than twice max_frame_len ({max_frame_len}): a batch of the largest frame accepted could wait for room that no commit frees"
                ),
            ));
        }
        for (key, d) in [
            ("handshake_timeout", handshake_timeout),
            ("idle_timeout", idle_timeout),
            ("query_timeout", query_timeout),
        ] {
            if d < Duration::from_millis(100) {
                return Err(ConfigError::invalid(key, "must be at least 100ms"));
            }
        }
        if lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError::invalid("lease-ttl", "must be at least 1s"));
        }
        let dedup_window = duration(
            "dedup-window",
            &o.dedup_window,
            own.and_then(|s| s.dedup_window.as_ref()),
            24 * 3_600_000,
        )?;

        let listen = o
            .listen
            .clone()
            .or_else(|| own.and_then(|s| s.listen.clone()))
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let allow_unauthenticated = o.allow_unauthenticated
            || o.query_only
            || own.and_then(|s| s.allow_unauthenticated).unwrap_or(false);
        if auth_token.is_none() && !allow_unauthenticated && !is_loopback(&listen) {
            return Err(ConfigError::invalid(
                "listen",
                format!(
                    "`{listen}` is not a loopback address and no auth token is set, so anyone who can reach it could publish; set --auth-token-file (or SHARDTALLY_AUTH_TOKEN), or pass --allow-unauthenticated if the network is trusted"
                ),
            ));
        }
        let http = o
            .http
            .clone()
            .or_else(|| own.and_then(|s| s.http.clone()))
            .unwrap_or_else(|| DEFAULT_HTTP.to_owned());
        if auth_token.is_none() && !allow_unauthenticated && !is_loopback(&http) {
            return Err(ConfigError::invalid(
                "http",
                format!(
                    "`{http}` is not a loopback address and no auth token is set, so anyone who can reach it could read /stores/query and /metrics; set --auth-token-file (or SHARDTALLY_AUTH_TOKEN; clients then send `Authorization: Bearer TOKEN`), or pass --allow-unauthenticated if the network is trusted"
                ),
            ));
        }
        Ok(WorkerConfig {
            node_id,
            shard_id,
            partition_by_id,
            listen,
            http,
            database_url,
            db_max_connections,
            app,
            auth_token,
            tls,
            flush_interval,
            lease_ttl,
            dedup_window,
            allow_shard_change: o.allow_shard_change
                || own.and_then(|s| s.allow_shard_change).unwrap_or(false),
            max_pending_events,
            max_pending_rows,
            max_pending_bytes,
            max_frame_len,
            max_batch_events: own.and_then(|s| s.max_batch_events).unwrap_or(100_000),
            max_connections: own.and_then(|s| s.max_connections).unwrap_or(1024),
            handshake_timeout,
            idle_timeout,
            query_limits: crate::retrieve::QueryLimits {
                max_rows: max_query_rows,
                timeout: query_timeout,
            },
            discard_events: o.discard_events,
            ignored_keys: file.ignored_keys(),
            dropped_jdbc_params,
        })
    }
}

/// Whether `addr` (`host:port`) only accepts connections from this machine.
fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

fn check_id(key: &str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty() {
        return Err(ConfigError::invalid(key, "must not be empty"));
    }
    if id.chars().any(char::is_control) {
        return Err(ConfigError::invalid(
            key,
            "must not contain control characters",
        ));
    }
    Ok(())
}

fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "shardtally-worker".to_owned())
}

fn read_token(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::invalid(
            "auth-token-file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(ConfigError::invalid(
            "auth-token-file",
            format!("{} is empty", path.display()),
        ));
    }
    Ok(token)
}

/// A database URL with any password replaced by `***`, for logs and messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
wso2.carbon:
  id: wso2-am-analytics-1
  type: wso2-apim-analytics
  ports:
    offset: 0
siddhi:
  properties:
    partitionById: true
    shardId: wso2-am-analytics-1
  refs:
    - ref: { name: x }
wso2.datasources:
  dataSources:
    - name: APIM_ANALYTICS_DB
      description: "The datasource used for APIM statistics aggregated data."
      jndiConfig:
        name: jdbc/APIM_ANALYTICS_DB
      definition:
        type: RDBMS
        configuration:
          jdbcUrl: "jdbc:mysql://localhost:3306/APIM_ANALYTICS_DB_1?useSSL=false"
          password: "p@ss word"
          username: root
          driverClassName: com.mysql.jdbc.Driver
          maxPoolSize: 50
          isAutoCommit: false
shardtally:
  flush_interval: 150ms
"#;

    fn resolve(text: &str, o: Overrides) -> Result<WorkerConfig, ConfigError> {
        let file = DeploymentFile::parse(text, Path::new("deployment.yaml"))?;
        WorkerConfig::resolve_with(o, &file, Path::new("/etc/shardtally"))
    }

    #[test]
    fn seed_deployment_maps_onto_the_worker() {
        let c = resolve(SEED, Overrides::default()).unwrap();
        assert_eq!(c.node_id, "wso2-am-analytics-1");
        assert_eq!(c.shard_id, "wso2-am-analytics-1");
        assert!(c.partition_by_id);
        assert_eq!(
            c.database_url,
            "mysql://root:p%40ss%20word@localhost:3306/APIM_ANALYTICS_DB_1"
        );
        assert_eq!(c.dropped_jdbc_params, vec!["useSSL=false".to_owned()]);
        assert_eq!(c.db_max_connections, 50);
        assert_eq!(c.flush_interval, Duration::from_millis(150));
        assert_eq!(
            c.ignored_keys,
            vec![
                "wso2.carbon.ports",
                "wso2.carbon.type",
                "siddhi.refs",
                "wso2.datasources.dataSources[APIM_ANALYTICS_DB].description",
                "wso2.datasources.dataSources[APIM_ANALYTICS_DB].jndiConfig",
                "wso2.datasources.dataSources[APIM_ANALYTICS_DB].definition.type",
                "wso2.datasources.dataSources[APIM_ANALYTICS_DB].definition.configuration.driverClassName",
                "wso2.datasources.dataSources[APIM_ANALYTICS_DB].definition.configuration.isAutoCommit",
            ]
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let o = Overrides {
            node_id: Some("n2".into()),
            shard_id: Some("s2".into()),
            database_url: Some("sqlite://x.db".into()),
            partition_by_id: Some(false),
            ..Overrides::default()
        };
        let c = resolve(SEED, o).unwrap();
        assert_eq!((c.node_id.as_str(), c.shard_id.as_str()), ("n2", "s2"));
        assert_eq!(c.database_url, "sqlite://x.db");
        assert!(!c.partition_by_id);
    }

    #[test]
    fn defaults_without_a_file() {
        let o = Overrides {
            node_id: Some("node-a".into()),
            ..Overrides::default()
        };
        let c = resolve("", o).unwrap();
        assert_eq!(c.shard_id, "node-a");
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(c.http, DEFAULT_HTTP);
        assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(c.app, AppSource::Bundled);
        assert!(!c.partition_by_id);
        assert_eq!(c.flush_interval, Duration::from_millis(200));
        assert_eq!(
            (
                c.max_pending_events,
                c.max_pending_rows,
                c.max_pending_bytes
            ),
            (1_000_000, 100_000, 64 << 20)
        );
        assert_eq!(
            c.query_limits,
            crate::retrieve::QueryLimits {
                max_rows: 1_000_000,
                timeout: Duration::from_secs(30)
            }
        );
    }

    #[test]
    fn query_limits_are_read_and_checked() {
        let c = resolve(
            "shardtally:\n  max_query_rows: 5000\n  query_timeout: 2s\n",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.query_limits.max_rows, 5000);
        assert_eq!(c.query_limits.timeout, Duration::from_secs(2));
        for (yaml, expected) in [
            (
                "max_query_rows: 0",
                "invalid `max_query_rows`: must be at least 1",
            ),
            (
                "query_timeout: 5ms",
                "invalid `query_timeout`: must be at least 100ms",
            ),
            (
                "query_timeout: later",
                "invalid `query_timeout`: `later` is not a duration",
            ),
            (
                "max_pending_events: 0",
                "invalid `max_pending_events`: must be at least 1",
            ),
            (
                "max_pending_rows: 0",
                "invalid `max_pending_rows`: must be at least 1",
            ),
            (
                "max_pending_bytes: 1000000",
                "invalid `max_pending_bytes`: 1000000 is less than twice max_frame_len (16777216)",
            ),
        ] {
            let err = resolve(&format!("shardtally:\n  {yaml}\n"), Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(expected), "{yaml}: {err}");
        }
    }

    #[test]
    fn the_byte_budget_defaults_to_at_least_two_frames_and_is_read() {
        let c = resolve(
            "shardtally:\n  max_frame_len: 100000000\n",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.max_pending_bytes, 200_000_000);
        let c = resolve(
            "shardtally:\n  max_frame_len: 4096\n  max_pending_bytes: 8192\n",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!((c.max_frame_len, c.max_pending_bytes), (4096, 8192));
    }

    #[test]
    fn long_shard_id_is_refused_with_the_key() {
        let o = Overrides {
            node_id: Some("wso2-am-analytics-node-1".into()),
            ..Overrides::default()
        };
        let err = resolve("", o).unwrap_err().to_string();
        assert!(err.contains("shard-id"), "{err}");
        assert!(err.contains("24 characters"), "{err}");
    }

    #[test]
    fn misspelt_own_key_is_an_error_with_position() {
        let err =
            resolve("shardtally:\n  flush_intervall: 1s\n", Overrides::default()).unwrap_err();
        match err {
            ConfigError::Yaml { line, message, .. } => {
                assert_eq!(line, 2, "{message}");
                assert!(message.contains("flush_intervall"), "{message}");
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = resolve(
            "shardtally:\n  flush_interval: soon\n",
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("invalid `flush-interval`"), "{err}");
        let err = resolve(
            "siddhi:\n  properties:\n    partitionById: maybe\n",
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("deployment.yaml:3"), "{err}");
    }

    #[test]
    fn non_loopback_listen_needs_a_token_or_an_explicit_opt_out() {
        let o = |listen: &str, allow: bool| Overrides {
            node_id: Some("n".into()),
            listen: Some(listen.into()),
            allow_unauthenticated: allow,
            ..Overrides::default()
        };
        for ok in [
            "127.0.0.1:9611",
            "localhost:9611",
            "[::1]:9611",
            "127.0.0.2:1",
        ] {
            assert!(resolve("", o(ok, false)).is_ok(), "{ok}");
        }
        let err = resolve("", o("0.0.0.0:9611", false))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid `listen`"), "{err}");
        assert!(err.contains("--auth-token-file"), "{err}");
        assert!(err.contains("--allow-unauthenticated"), "{err}");
        assert!(resolve("", o("10.1.2.3:9611", false)).is_err());
        assert!(resolve("", o("0.0.0.0:9611", true)).is_ok());
        let file = "shardtally:\n  listen: 0.0.0.0:9611\n  allow_unauthenticated: true\n";
        assert!(resolve(file, o("0.0.0.0:9611", false)).is_ok());
    }

    #[test]
    fn jdbc_urls_map_to_sqlx() {
        let pg = jdbc_to_sqlx("jdbc:postgresql://db:5432/analytics", Some("u"), None).unwrap();
        assert_eq!(pg.0, "postgres://u@db:5432/analytics");
        let lite = jdbc_to_sqlx("jdbc:sqlite:/var/lib/st.db", None, None).unwrap();
        assert_eq!(lite.0, "sqlite:///var/lib/st.db");
        let err = jdbc_to_sqlx("jdbc:h2:./db", None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported database `h2"), "{err}");
        assert!(jdbc_to_sqlx("mysql://x", None, None).is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("mysql://root:secret@h/db"), "mysql://root:***@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }
}
