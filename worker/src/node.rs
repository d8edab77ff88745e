//! One worker node: startup checks (app, database, shard rules, lease), the tasks it runs, and
//! graceful shutdown.
//!
//! Startup order: load the app → connect → create/verify tables (refusing a table without
//! `SHARD_ID` while partitioning is on) → record node id → shard id (refusing a change) → take
//! the shard lease (waiting out our own crashed predecessor's lease, refusing another live node's)
//! → bind → serve. Shutdown: stop accepting, final flush, acks, release the lease.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::budget::FrameBudget;
use crate::catalog::{Catalog, CatalogError};
use crate::config::{WorkerConfig, redact};
use crate::http::{HttpState, router};
use crate::ingest::{Ingest, IngestSettings};
use crate::metrics::Metrics;
use crate::server::{ServerSettings, serve};
use crate::store::{LeaseOutcome, Store, StoreError};

/// Simultaneous HTTP connections (`/stores/query`, `/health`, `/metrics`); more wait in the
/// kernel's backlog.
const HTTP_MAX_CONNECTIONS: usize = 256;

/// How long a stopping worker waits for the HTTP side to finish the requests in progress.
const HTTP_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a worker could not start, or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The Siddhi app is unreadable or invalid.
    #[error(transparent)]
    App(#[from] CatalogError),
    /// The database refused a shard rule or a schema check (exit 2: a configuration problem).
    #[error("{0}")]
    Refused(String),
    /// An address could not be bound.
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        /// The flag.
        key: &'static str,
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The database failed.
    #[error("database {url}: {source}")]
    Store {
        /// Redacted URL.
        url: String,
        /// Why.
        source: StoreError,
    },
    /// The lease on our shard was taken over while we ran.
    #[error("lost the lease on shard `{0}`; another worker serves it now")]
    LeaseLost(String),
}

impl NodeError {
    /// Configuration and shard-rule problems exit 2; the rest 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            NodeError::App(_) | NodeError::Refused(_) | NodeError::Bind { .. } => 2,
            NodeError::Store { .. } | NodeError::LeaseLost(_) => 1,
        }
    }
}

/// Addresses a started worker listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// Publisher TCP address.
    pub listen: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
}

impl Bound {
    const READY: &'static str = "shardtally-worker ready";

    /// The one line `serve` prints on stdout when ready:
    /// `shardtally-worker ready listen=ADDR http=ADDR`.
    pub fn ready_line(&self) -> String {
        format!("{} listen={} http={}", Bound::READY, self.listen, self.http)
    }

    /// Parses a [`Bound::ready_line`]; `None` for any other line.
    pub fn parse_ready_line(line: &str) -> Option<Bound> {
        let rest = line.trim().strip_prefix(Bound::READY)?;
        let field = |key: &str| -> Option<SocketAddr> {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(key))?
                .parse()
                .ok()
        };
        Some(Bound {
            listen: field("listen=")?,
            http: field("http=")?,
        })
    }
}

/// Runs a worker until `shutdown` is cancelled (then stops gracefully) or a fatal error occurs.
/// `on_ready` is called once both sockets are bound and the lease is held.
pub async fn run(
    config: WorkerConfig,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(Bound),
) -> Result<(), NodeError> {
    let catalog = Arc::new(Catalog::load(&config.app, config.partition_by_id)?);
    let url = redact(&config.database_url);
    let store_err = |source| NodeError::Store {
        url: url.clone(),
        source,
    };

    let store = connect_with_retry(&config.database_url, config.db_max_connections, &shutdown)
        .await
        .map_err(store_err)?;
    match store.ensure_schema(&catalog.layouts).await {
        Ok(()) => {}
        Err(e) if e.is_retriable() => return Err(store_err(e)),
        Err(e) => return Err(NodeError::Refused(e.to_string())),
    }
    match store
        .register_node(&config.node_id, &config.shard_id, config.allow_shard_change)
        .await
    {
        Ok(()) => {}
        Err(e) if e.is_retriable() => return Err(store_err(e)),
        Err(e) => return Err(NodeError::Refused(e.to_string())),
    }
    let instance_id = format!("{}-{:016x}", config.node_id, rand::random::<u64>());
    acquire_lease(&store, &config, &instance_id, &shutdown).await?;

    let result = serve_with_lease(
        &config,
        catalog,
        store.clone(),
        &instance_id,
        shutdown,
        on_ready,
    )
    .await;
    if let Err(e) = store.release_lease(&config.shard_id, &instance_id).await {
        tracing::warn!(error = %e, "could not release the shard lease; it expires by itself");
    }
    result
}

async fn serve_with_lease(
    config: &WorkerConfig,
    catalog: Arc<Catalog>,
    store: Store,
    instance_id: &str,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(Bound),
) -> Result<(), NodeError> {
    let listener = TcpListener::bind(&config.listen)
        .await
        .map_err(|source| NodeError::Bind {
            key: "listen",
            addr: config.listen.clone(),
            source,
        })?;
    let http_listener =
        TcpListener::bind(&config.http)
            .await
            .map_err(|source| NodeError::Bind {
                key: "http",
                addr: config.http.clone(),
                source,
            })?;
    let bound = Bound {
        listen: listener.local_addr().map_err(|source| NodeError::Bind {
            key: "listen",
            addr: config.listen.clone(),
            source,
        })?,
        http: http_listener
            .local_addr()
            .map_err(|source| NodeError::Bind {
                key: "http",
                addr: config.http.clone(),
                source,
            })?,
    };

    let metrics = Arc::new(Metrics::new());
    let tasks = TaskTracker::new();
    // Stop order: the listener and connections, then the ingest task's final flush, then the
    // lease (held until the last commit, so no other node takes the shard while it runs).
    let stop_serving = shutdown.child_token();
    let stop_ingest = CancellationToken::new();
    let stop_lease = CancellationToken::new();
    let fatal = CancellationToken::new();

    let (ingest_tx, ingest_rx) = mpsc::channel(256);
    let budget = FrameBudget::new(config.max_pending_bytes, metrics.clone());
    let ingest = Ingest::new(
        catalog.clone(),
        store.clone(),
        IngestSettings {
            shard_id: config.shard_id.clone(),
            flush_interval: config.flush_interval,
            max_pending_events: config.max_pending_events,
            max_pending_rows: config.max_pending_rows,
            discard: config.discard_events,
        },
        metrics.clone(),
        budget.clone(),
    );
    let ingest_task = tokio::spawn(ingest.run(ingest_rx, stop_ingest.clone()));

    let server_settings = ServerSettings {
        node_id: config.node_id.clone(),
        shard_id: config.shard_id.clone(),
        auth_token: config.auth_token.clone(),
        max_frame_len: config.max_frame_len,
        max_batch_events: config.max_batch_events,
        max_connections: config.max_connections,
        handshake_timeout: config.handshake_timeout,
        idle_timeout: config.idle_timeout,
        tls: config.tls.clone(),
    };
    let server_task = tokio::spawn(serve(
        listener,
        catalog.clone(),
        server_settings,
        metrics.clone(),
        ingest_tx,
        budget,
        stop_serving.clone(),
    ));

    let http_state = Arc::new(HttpState {
        catalog: catalog.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        node_id: config.node_id.clone(),
        shard_id: config.shard_id.clone(),
        auth_token: config.auth_token.clone(),
        body_timeout: config.handshake_timeout,
        query_limits: config.query_limits,
    });
    let http_stop = stop_serving.clone();
    let listener = crate::http_listener::GuardedListener::new(
        http_listener,
        bound.http,
        crate::http_listener::HttpLimits {
            max_connections: HTTP_MAX_CONNECTIONS,
            idle: config.idle_timeout,
            handshake: config.handshake_timeout,
        },
        config.tls.clone(),
        metrics.clone(),
    );
    tasks.spawn(async move {
        let app = router(http_state);
        listener.serve(app, http_stop).await;
    });

    // Lease keeper.
    {
        let store = store.clone();
        let shard = config.shard_id.clone();
        let instance = instance_id.to_owned();
        let ttl = config.lease_ttl;
        let stop = stop_lease.clone();
        let fatal = fatal.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match store.renew_lease(&shard, &instance, ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(shard = %shard, "the shard lease was taken over; stopping");
                        fatal.cancel();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not renew the shard lease; retrying")
                    }
                }
            }
        });
    }

    // Purge of expired dedup entries (and, when the app asks for it, of old buckets).
    {
        let store = store.clone();
        let window = config.dedup_window;
        let stop = stop_serving.clone();
        let catalog = catalog.clone();
        tasks.spawn(async move { purge_loop(store, catalog, window, stop).await });
    }

    tracing::info!(node = %config.node_id, shard = %config.shard_id, listen = %bound.listen, http = %bound.http,
        app = %catalog.name(), "worker ready");
    on_ready(bound);

    tokio::select! {
        () = shutdown.cancelled() => {}
        () = fatal.cancelled() => {}
    }
    tracing::info!("stopping: no new connections; flushing");
    stop_serving.cancel();
    // Connections have stopped reading (a batch still waiting for room in the byte budget is
    // dropped unacked: its publisher re-sends it); flush and ack what was handed over.
    stop_ingest.cancel();
    let _ = ingest_task.await;
    let _ = server_task.await;
    stop_lease.cancel();
    tasks.close();
    // The HTTP side finishes the requests it is answering; a client that never completes one
    // does not hold the worker up.
    if tokio::time::timeout(HTTP_STOP_TIMEOUT, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "stopping: HTTP connections still open after {HTTP_STOP_TIMEOUT:?}; closing them"
        );
    }
    if fatal.is_cancelled() {
        return Err(NodeError::LeaseLost(config.shard_id.clone()));
    }
    tracing::info!("stopped");
    Ok(())
}

async fn connect_with_retry(
    url: &str,
    max: u32,
    shutdown: &CancellationToken,
) -> Result<Store, StoreError> {
    let mut backoff = Duration::from_millis(200);
    let mut waited = Duration::ZERO;
    loop {
        match Store::connect(url, max).await {
            Ok(s) => return Ok(s),
            Err(e) if e.is_retriable() && waited < Duration::from_secs(30) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "database not reachable yet");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return Err(e),
                }
                waited += backoff;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Takes the shard's lease. Held by another node: refused at once. Held by this node id: an
/// earlier instance that crashed (or is still draining), whose lease is waited out — but if it
/// is still held after two such waits, a live instance renews it, and this one is refused.
async fn acquire_lease(
    store: &Store,
    config: &WorkerConfig,
    instance_id: &str,
    shutdown: &CancellationToken,
) -> Result<(), NodeError> {
    let mut waits = 0u32;
    loop {
        let outcome = store
            .acquire_lease(
                &config.shard_id,
                &config.node_id,
                instance_id,
                config.lease_ttl,
            )
            .await
            .map_err(|source| NodeError::Store {
                url: redact(&config.database_url),
                source,
            })?;
        match outcome {
            LeaseOutcome::Acquired => return Ok(()),
            LeaseOutcome::HeldByOtherNode {
                node_id,
                expires_in,
            } => {
                return Err(NodeError::Refused(format!(
                    "shard id `{}` is being served by live node `{node_id}` (its lease expires in {:.1}s unless renewed); two workers must not serve one shard — give this node its own shard id",
                    config.shard_id,
                    expires_in.as_secs_f64()
                )));
            }
            LeaseOutcome::HeldBySameNode { .. } if waits >= 2 => {
                // We waited past its expiry twice and it is still held: an instance of this node
                // that is alive renews it (SPEC §4.2: the second live worker refuses to start).
                // Two, not one: an instance stopping gracefully renews it until its final commit.
                return Err(NodeError::Refused(format!(
                    "node `{}` is already running: another live instance of it renewed the lease on shard `{}` through two lease periods while this one waited for it to expire; two workers must not serve one shard — stop the other instance, or give this one its own node id and shard id",
                    config.node_id, config.shard_id
                )));
            }
            LeaseOutcome::HeldBySameNode { expires_in } => {
                waits += 1;
                let wait = expires_in + Duration::from_millis(100);
                tracing::warn!(
                    shard = %config.shard_id,
                    "a previous instance of node `{}` still holds the lease on shard `{}` (it probably crashed); waiting {:.1}s for it to expire",
                    config.node_id, config.shard_id, wait.as_secs_f64()
                );
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => return Err(NodeError::Refused("stopped while waiting for the shard lease".into())),
                }
            }
        }
    }
}

/// Deletes expired dedup entries every minute and, for apps with `@purge(enable='true', …)`, old
/// buckets at the shortest `interval` any aggregation asks for.
async fn purge_loop(
    store: Store,
    catalog: Arc<Catalog>,
    dedup_window: Duration,
    stop: CancellationToken,
) {
    let every = catalog
        .app
        .aggregations
        .iter()
        .filter_map(|a| a.purge.as_ref().filter(|p| p.enabled))
        .map(|p| p.interval)
        .filter(|i| !i.is_zero())
        .min()
        .unwrap_or(Duration::from_secs(60))
        .min(Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = jiff::Timestamp::now().as_millisecond();
        let window = i64::try_from(dedup_window.as_millis()).unwrap_or(i64::MAX);
        if let Err(e) = store.purge_dedup(now.saturating_sub(window)).await {
            tracing::warn!(error = %e, "dedup purge failed");
        }
        for (agg, layout) in catalog.app.aggregations.iter().zip(&catalog.layouts) {
            let Some(purge) = agg.purge.as_ref().filter(|p| p.enabled) else {
                continue;
            };
            for (granularity, retention) in &purge.retention {
                let Some(retention) = retention else { continue };
                let keep = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
                match store
                    .purge(layout, *granularity, now.saturating_sub(keep))
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(table = %layout.table(*granularity), rows = n, "purged old buckets")
                    }
                    Err(e) => tracing::warn!(error = %e, "bucket purge failed"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_round_trips() {
        let b = Bound {
            listen: "127.0.0.1:9611".parse().unwrap(),
            http: "[::1]:9091".parse().unwrap(),
        };
        assert_eq!(
            b.ready_line(),
            "shardtally-worker ready listen=127.0.0.1:9611 http=[::1]:9091"
        );
        assert_eq!(Bound::parse_ready_line(&b.ready_line()), Some(b));
        assert_eq!(
            Bound::parse_ready_line("shardtally-worker ready listen=x http=y"),
            None
        );
        assert_eq!(Bound::parse_ready_line("INFO worker ready"), None);
    }
}
