//! [`Store`]: the connection pool, the exactly-once commit of a flush, reads and purges.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::TryStreamExt;
use shardtally_publisher::protocol::Value;
use sqlx::any::AnyPoolOptions;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Any, AnyPool, Row, Transaction};
use tokio::time::Instant;
use tracing::debug;

use crate::bucket::Granularity;
use crate::layout::{AggRow, Delta, Layout, StoredRow};
use crate::store::dialect::{Backend, Dialect, MYSQL_COLLATIONS};
use crate::store::error::{StoreError, ValueError, is_statement_timeout};
use crate::store::schema::{
    ColumnDef, ID_MAX_CHARS, Role, SHARD_ID_MAX_CHARS, SqlType, TableDef, check_id, check_typed,
};
use crate::store::values::{Param, bind_all, cmp_values, decode, seq_from_db, seq_to_db};

/// How a [`Store`] connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Pool size (at least 1; an in-memory SQLite database always uses exactly 1). PostgreSQL
    /// has two pools of this size, the second for commits, opening connections as they need
    /// them (one per concurrent commit: a worker commits one flush at a time).
    pub max_connections: u32,
    /// How long getting a connection may take — including connecting at all — before a
    /// (retriable) error. Default 10 s.
    pub acquire_timeout: Duration,
    /// How long a SQLite connection waits for another writer (another worker process sharing the
    /// file) before giving up with `SQLITE_BUSY`, which is retriable. Default 10 s.
    pub sqlite_busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
            sqlite_busy_timeout: Duration::from_secs(10),
        }
    }
}

/// The id of one publisher batch: unique per publisher, committed at most once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId {
    /// The publisher's id (at most [`ID_MAX_CHARS`] characters).
    pub publisher_id: String,
    /// The batch's sequence number within that publisher.
    pub seq: u64,
}

/// What [`Store::commit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Every batch id was recorded and every delta added, atomically.
    Committed,
    /// Nothing was written: these batch ids are already committed (by this or another worker).
    /// The caller drops them — their events are already counted — and commits the rest again.
    Duplicates(Vec<BatchId>),
}

/// A handle on the shared database: cheap to clone (the pool and what it knows of each shard's
/// tables are shared).
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    /// PostgreSQL only: native connections for commits (`COPY` and array parameters, which the
    /// Any driver lacks; see `store::postgres`). Opened on first use.
    pg: Option<PgPool>,
    /// The connections store queries read on ([`Store::fetch_at_most`]), so that however many
    /// run, or however long, commits (and what they look up on `pool`: frontiers, the lease)
    /// never wait for a connection behind them. A pool of its own, opened on first use, as
    /// large as `pool`; `sqlite::memory:` has one connection, shared.
    reads: AnyPool,
    pub(crate) dialect: Dialect,
    /// Per `(shard id, table)`: what is known of the shard's highest bucket there.
    frontiers: Arc<Mutex<HashMap<(String, String), Frontier>>>,
    /// How committed rows were written (see [`Store::write_counts`]).
    counters: Arc<WriteCounters>,
}

/// How the rows of the flushes a [`Store`] committed were written, since it connected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// Rows written with a plain `INSERT`: buckets above the shard's newest (see `Frontier`).
    pub rows_inserted: u64,
    /// Rows added to an existing row or inserted by an upsert.
    pub rows_upserted: u64,
    /// Flushes rolled back because a row believed new existed (another writer of the shard),
    /// then written again with upserts only.
    pub flushes_rewritten: u64,
}

#[derive(Debug, Default)]
struct WriteCounters {
    rows_inserted: AtomicU64,
    rows_upserted: AtomicU64,
    flushes_rewritten: AtomicU64,
}

/// What a [`Store`] knows of the newest bucket one shard has in one partitioned table.
///
/// Only the worker holding a shard's lease writes that shard's rows, so a row whose bucket lies
/// above every bucket the shard has does not exist yet and can be written with a plain `INSERT`,
/// which skips the upsert's conflict check (on PostgreSQL about 1.6× faster per row). This is a
/// speed-up only, never a correctness assumption: if such a row does exist after all (another
/// writer with the same shard id), the `INSERT` fails on the primary key, the transaction is
/// rolled back, and the flush is written again with upserts only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frontier {
    /// No row of the shard has a bucket above this (`i64::MIN`: the shard has no rows).
    Above(i64),
    /// Finding out the highest bucket took too long: upserts only.
    Unknown,
}

/// How long finding a shard's highest bucket in one table may take before that table is written
/// with upserts only (the query walks the primary key backwards; a new shard in a large table
/// of other shards could take long).
const FRONTIER_LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

/// How one attempt at writing a flush ended.
pub(super) enum Written {
    Committed,
    Duplicates(Vec<BatchId>),
    /// A row believed new existed in this table: nothing was written.
    RowExisted(String),
}

impl Store {
    /// Connects to `url` with up to `max_connections` connections and the other
    /// [`StoreOptions`] at their defaults; see [`Store::connect_with`].
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let options = StoreOptions {
            max_connections,
            ..StoreOptions::default()
        };
        Store::connect_with(url, &options).await
    }

    /// Connects to `url`: `sqlite://path` (created if missing; WAL, a busy timeout and
    /// `synchronous=FULL`, so several worker processes can share one file and an acked commit
    /// survives a power loss), `sqlite::memory:`
    /// (one connection), `postgres://`, `postgresql://`, `mysql://` or `mariadb://`. Fails after
    /// `options.acquire_timeout` when the database cannot be reached (retriable).
    pub async fn connect_with(url: &str, options: &StoreOptions) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::from_url(url)?;
        let (url, memory) = match backend {
            Backend::Sqlite => sqlite_url(url),
            Backend::Postgres | Backend::MySql => (url.to_owned(), false),
        };
        let busy_ms = options.sqlite_busy_timeout.as_millis();
        let mut pool_options = AnyPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout);
        if memory {
            // Every connection to `:memory:` is a database of its own: keep exactly one, forever.
            pool_options = pool_options
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool_options = pool_options.after_connect(move |conn, _meta| {
            Box::pin(async move {
                for statement in session_setup(backend, busy_ms) {
                    sqlx::Executor::execute(&mut *conn, statement.as_str()).await?;
                }
                Ok(())
            })
        });
        let pool = pool_options
            .clone()
            .connect(&url)
            .await
            .map_err(|source| StoreError::Connect { backend, source })?;
        let reads = if memory {
            pool.clone()
        } else {
            pool_options
                .connect_lazy(&url)
                .map_err(|source| StoreError::Connect { backend, source })?
        };
        let mut dialect = Dialect::new(backend);
        if backend == Backend::MySql {
            dialect.mysql_collation = mysql_collation(&pool).await?;
            dialect.mariadb = is_mariadb(&pool).await?;
        }
        let pg = match backend {
            Backend::Postgres => Some(
                PgPoolOptions::new()
                    .max_connections(options.max_connections.max(1))
                    .acquire_timeout(options.acquire_timeout)
                    .connect_lazy(&url)
                    .map_err(|source| StoreError::Connect { backend, source })?,
            ),
            Backend::Sqlite | Backend::MySql => None,
        };
        debug!(%backend, collation = dialect.mysql_collation, mariadb = dialect.mariadb, "connected to the database");
        Ok(Store {
            pool,
            pg,
            reads,
            dialect,
            frontiers: Arc::default(),
            counters: Arc::default(),
        })
    }

    /// How the rows of the flushes this store (and its clones) committed were written.
    pub fn write_counts(&self) -> WriteCounts {
        let c = &self.counters;
        WriteCounts {
            rows_inserted: c.rows_inserted.load(Ordering::Relaxed),
            rows_upserted: c.rows_upserted.load(Ordering::Relaxed),
            flushes_rewritten: c.flushes_rewritten.load(Ordering::Relaxed),
        }
    }

    /// The kind of database connected to.
    pub fn backend(&self) -> Backend {
        self.dialect.backend
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::raw_sql("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(StoreError::db("pinging the database"))?;
        Ok(())
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        if let Some(pg) = &self.pg {
            pg.close().await;
        }
        self.reads.close().await;
        self.pool.close().await;
    }

    /// Commits one flush in ONE transaction: a plain INSERT of `batches` into the dedup table,
    /// then the deltas added to every layout's tables (partitioned layouts write
    /// `SHARD_ID = shard_id`). If any batch id is already committed — by anyone, possibly
    /// concurrently — the transaction is rolled back and [`CommitOutcome::Duplicates`] names
    /// those ids; nothing is written.
    ///
    /// Deltas add to stored rows: `AGG_COUNT` and sums add, min/max keep the extreme (null
    /// loses), latest values and `AGG_LAST_EVENT_TIMESTAMP` are replaced when the incoming
    /// `AGG_LAST_EVENT_TIMESTAMP` is `>=` the stored one (the rule of
    /// [`AggRow::merge`]). Every value is checked before the transaction starts
    /// ([`StoreError::InvalidValue`]). Within one granularity of one delta each
    /// `(bucket, keys)` must appear once.
    pub async fn commit(
        &self,
        shard_id: &str,
        batches: &[BatchId],
        deltas: &[(&Layout, &Delta)],
    ) -> Result<CommitOutcome, StoreError> {
        check_id("shard id", shard_id, SHARD_ID_MAX_CHARS)?;
        // A stable order of ids (and of rows below) keeps concurrent writers from deadlocking.
        let mut ids: Vec<&BatchId> = batches.iter().collect();
        ids.sort();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(StoreError::DuplicateBatchInCommit {
                publisher_id: w[0].publisher_id.clone(),
                seq: w[0].seq,
            });
        }
        for id in &ids {
            check_id("publisher id", &id.publisher_id, ID_MAX_CHARS)?;
        }

        // Every row is checked before the transaction starts; the statements are then built one
        // at a time, so a large flush never holds all its parameters at once.
        let mut tables = Vec::new();
        for (layout, delta) in deltas {
            self.check_delta(layout, delta, &mut tables)?;
        }
        if ids.is_empty() && tables.is_empty() {
            return Ok(CommitOutcome::Committed);
        }

        // Rows above the shard's newest bucket go in as plain INSERTs (see `Frontier`); if one
        // existed after all, the flush is written again with upserts only.
        let mut fresh = self.fresh_rows(shard_id, &tables).await;
        loop {
            match self.write_flush(shard_id, &ids, &tables, &fresh).await? {
                Written::Committed => {
                    self.advance_frontiers(shard_id, &tables);
                    let rows: usize = tables.iter().map(|(_, rows)| rows.len()).sum();
                    let inserted: usize = fresh.iter().sum();
                    let c = &self.counters;
                    c.rows_inserted
                        .fetch_add(inserted as u64, Ordering::Relaxed);
                    c.rows_upserted
                        .fetch_add((rows - inserted) as u64, Ordering::Relaxed);
                    return Ok(CommitOutcome::Committed);
                }
                Written::Duplicates(duplicates) => {
                    return Ok(CommitOutcome::Duplicates(duplicates));
                }
                // With nothing inserted, the next attempt cannot end here again.
                Written::RowExisted(table) => {
                    debug!(%table, shard_id, "a row believed new existed: writing the flush with upserts only");
                    self.forget_frontier(shard_id, &table);
                    self.counters
                        .flushes_rewritten
                        .fetch_add(1, Ordering::Relaxed);
                    fresh = vec![0; tables.len()];
                }
            }
        }
    }

    /// One attempt at a flush's transaction: the batch ids, then each table's rows — the
    /// first `rows.len() - fresh[i]` of table `i` upserted, the last `fresh[i]` inserted.
    /// PostgreSQL's goes through [`Store::write_flush_postgres`].
    async fn write_flush(
        &self,
        shard_id: &str,
        ids: &[&BatchId],
        tables: &[(TableDef, Vec<&AggRow>)],
        fresh: &[usize],
    ) -> Result<Written, StoreError> {
        if let Some(pg) = &self.pg {
            return self
                .write_flush_postgres(pg, shard_id, ids, tables, fresh)
                .await;
        }
        let mut tx = self
            .pool
            .begin_with(self.dialect.begin())
            .await
            .map_err(StoreError::db("starting the commit transaction"))?;
        for chunk in ids.chunks(self.dialect.rows_per_statement(3)) {
            let mut params = Vec::with_capacity(chunk.len() * 3);
            for id in chunk {
                params.push(Param::Str(&id.publisher_id));
                params.push(Param::Long(seq_to_db(id.seq)));
                params.push(Param::Str(shard_id));
            }
            let sql = self.dialect.insert_batches(chunk.len());
            if let Err(source) = bind_all(sqlx::query(&sql), &params).execute(&mut *tx).await {
                // A failed rollback only matters to the connection, which the pool then drops.
                let _ = tx.rollback().await;
                return self.batch_ids_refused(source, ids).await;
            }
        }
        for ((def, rows), &fresh) in tables.iter().zip(fresh) {
            let (old, new) = rows.split_at(rows.len() - fresh);
            for (rows, insert) in [(old, false), (new, true)] {
                let written = self
                    .write_rows_as_values(&mut tx, def, rows, insert, shard_id)
                    .await;
                if let Err(err) = written {
                    let _ = tx.rollback().await;
                    if insert && err.is_unique_violation() {
                        return Ok(Written::RowExisted(def.name.clone()));
                    }
                    return Err(err);
                }
            }
        }
        tx.commit()
            .await
            .map_err(StoreError::db("committing the flush"))?;
        Ok(Written::Committed)
    }

    /// Writes `rows` into `def` inside `tx`: inserted when `insert`, else upserted; multi-row
    /// `VALUES` statements of at most [`Dialect::rows_per_statement`] rows.
    async fn write_rows_as_values(
        &self,
        tx: &mut Transaction<'_, Any>,
        def: &TableDef,
        rows: &[&AggRow],
        insert: bool,
        shard_id: &str,
    ) -> Result<(), StoreError> {
        // Full chunks share one SQL text (and so one prepared statement).
        let mut sql: Option<(usize, String)> = None;
        for chunk in rows.chunks(self.dialect.rows_per_statement(def.columns.len())) {
            let mut params = Vec::with_capacity(chunk.len() * def.columns.len());
            for row in chunk {
                for c in &def.columns {
                    params.push(row_param(def, c, row, shard_id)?);
                }
            }
            let text = match &sql {
                Some((n, text)) if *n == chunk.len() => text,
                _ if insert => {
                    &sql.insert((chunk.len(), self.dialect.insert(def, chunk.len())))
                        .1
                }
                _ => {
                    &sql.insert((chunk.len(), self.dialect.upsert(def, chunk.len())))
                        .1
                }
            };
            bind_all(sqlx::query(text), &params)
                .execute(&mut **tx)
                .await
                .map_err(StoreError::db(format!("adding deltas to {}", def.name)))?;
        }
        Ok(())
    }

    /// After recording the batch ids of a flush failed with `source` (and the transaction was
    /// rolled back): [`Written::Duplicates`] when some were committed already, else the error.
    pub(super) async fn batch_ids_refused(
        &self,
        source: sqlx::Error,
        ids: &[&BatchId],
    ) -> Result<Written, StoreError> {
        let err = StoreError::Database {
            context: "recording batch ids".into(),
            source,
        };
        if !err.is_unique_violation() {
            return Err(err);
        }
        let duplicates = self.committed_among(ids).await?;
        debug!(
            count = duplicates.len(),
            "commit refused: batches already committed"
        );
        Ok(Written::Duplicates(duplicates))
    }

    /// Per table of `tables`: how many of its last rows (sorted by bucket) lie above the
    /// shard's newest bucket there, finding that bucket out the first time a table is written.
    /// Unpartitioned tables (every worker writes the same rows) get 0.
    async fn fresh_rows(&self, shard_id: &str, tables: &[(TableDef, Vec<&AggRow>)]) -> Vec<usize> {
        let mut fresh = Vec::with_capacity(tables.len());
        for (def, rows) in tables {
            if !def.columns.iter().any(|c| c.role == Role::Shard) {
                fresh.push(0);
                continue;
            }
            let key = (shard_id.to_owned(), def.name.clone());
            let known = self.frontiers_lock().get(&key).copied();
            let frontier = match known {
                Some(f) => f,
                // A failed look-up is not remembered: the next commit asks again.
                None => match self.look_up_frontier(shard_id, &def.name).await {
                    Some(f) => *self.frontiers_lock().entry(key).or_insert(f),
                    None => Frontier::Unknown,
                },
            };
            fresh.push(match frontier {
                Frontier::Above(max) => rows.len() - rows.partition_point(|r| r.bucket <= max),
                Frontier::Unknown => 0,
            });
        }
        fresh
    }

    /// The shard's newest bucket in `table`; [`Frontier::Unknown`] when finding it out takes
    /// longer than [`FRONTIER_LOOKUP_TIMEOUT`] (remembered: that table is written with upserts
    /// only); `None` when the query fails (the database is unreachable, say: asked again at the
    /// next commit).
    async fn look_up_frontier(&self, shard_id: &str, table: &str) -> Option<Frontier> {
        let sql = self.dialect.max_bucket_of_shard(table);
        let query = sqlx::query_scalar::<_, Option<i64>>(&sql)
            .bind(shard_id)
            .fetch_one(&self.pool);
        match tokio::time::timeout(FRONTIER_LOOKUP_TIMEOUT, query).await {
            Ok(Ok(max)) => Some(Frontier::Above(max.unwrap_or(i64::MIN))),
            Ok(Err(error)) => {
                debug!(table, shard_id, %error, "could not find the shard's newest bucket: upserts only, this time");
                None
            }
            Err(_) => {
                debug!(
                    table,
                    shard_id, "finding the shard's newest bucket took too long: upserts only"
                );
                Some(Frontier::Unknown)
            }
        }
    }

    /// After a commit: each partitioned table's frontier moves up to the newest bucket written.
    fn advance_frontiers(&self, shard_id: &str, tables: &[(TableDef, Vec<&AggRow>)]) {
        let mut frontiers = self.frontiers_lock();
        for (def, rows) in tables {
            let Some(newest) = rows.last().map(|r| r.bucket) else {
                continue;
            };
            if let Some(Frontier::Above(max)) =
                frontiers.get_mut(&(shard_id.to_owned(), def.name.clone()))
            {
                *max = (*max).max(newest);
            }
        }
    }

    /// Forgets what is known of one shard's table: the next commit finds it out again.
    fn forget_frontier(&self, shard_id: &str, table: &str) {
        self.frontiers_lock()
            .remove(&(shard_id.to_owned(), table.to_owned()));
    }

    fn frontiers_lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Frontier>> {
        // The map is always consistent (single inserts and updates), so a poisoned lock is usable.
        self.frontiers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks the rows of one delta — shape and every value — and adds each granularity's
    /// table with its rows in primary-key order to `out`.
    fn check_delta<'a>(
        &self,
        layout: &'a Layout,
        delta: &'a Delta,
        out: &mut Vec<(TableDef, Vec<&'a AggRow>)>,
    ) -> Result<(), StoreError> {
        for (granularity, rows) in &delta.rows {
            if rows.is_empty() {
                continue;
            }
            if !layout.granularities.contains(granularity) {
                return Err(StoreError::GranularityNotKept {
                    aggregation: layout.aggregation.clone(),
                    granularity: *granularity,
                });
            }
            let def = TableDef::new(layout, *granularity, layout.partitioned)?;
            for row in rows {
                check_row(&def, layout, row)?;
            }
            let mut sorted: Vec<&AggRow> = rows.iter().collect();
            sorted.sort_by(|a, b| {
                a.bucket.cmp(&b.bucket).then_with(|| {
                    a.keys
                        .iter()
                        .zip(b.keys.iter())
                        .map(|(x, y)| cmp_values(x, y))
                        .find(|o| o.is_ne())
                        .unwrap_or(std::cmp::Ordering::Equal)
                })
            });
            debug_assert!(
                sorted.windows(2).all(|w| w[0].bucket != w[1].bucket
                    || w[0]
                        .keys
                        .iter()
                        .zip(w[1].keys.iter())
                        .any(|(x, y)| cmp_values(x, y).is_ne())),
                "a delta for {} holds one (bucket, keys) twice",
                def.name
            );
            out.push((def, sorted));
        }
        Ok(())
    }

    /// Which of `ids` are in the dedup table.
    async fn committed_among(&self, ids: &[&BatchId]) -> Result<Vec<BatchId>, StoreError> {
        let mut found = Vec::new();
        for chunk in ids.chunks(self.dialect.rows_per_statement(2)) {
            let sql = self.dialect.select_batches(chunk.len());
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id.publisher_id.as_str()).bind(seq_to_db(id.seq));
            }
            let rows = q
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::db("reading committed batch ids"))?;
            for row in rows {
                let publisher_id: String = row
                    .try_get(0)
                    .map_err(StoreError::db("reading committed batch ids"))?;
                let seq: i64 = row
                    .try_get(1)
                    .map_err(StoreError::db("reading committed batch ids"))?;
                found.push(BatchId {
                    publisher_id,
                    seq: seq_from_db(seq),
                });
            }
        }
        found.sort();
        Ok(found)
    }

    /// Every shard's rows of `layout` at granularity `per` with `AGG_TIMESTAMP` in
    /// `[start_ms, end_ms)`, in primary-key order (bucket, shard, keys; keys in the backend's
    /// collation — callers needing a particular key order sort themselves).
    pub async fn fetch(
        &self,
        layout: &Layout,
        per: Granularity,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<StoredRow>, StoreError> {
        self.fetch_at_most(layout, per, start_ms, end_ms, usize::MAX, None)
            .await
    }

    /// [`Store::fetch`], failing with [`StoreError::TooManyRows`] — having held no more than
    /// `max_rows` rows — when the range holds more, and with [`StoreError::StatementTimedOut`]
    /// when the read would run past `deadline`: the database itself stops the statement at the
    /// time left once a connection is had (PostgreSQL `statement_timeout`, MySQL a
    /// `MAX_EXECUTION_TIME` hint, MariaDB `max_statement_time`), so a caller that gives up at
    /// `deadline` leaves nothing running there. SQLite reads in-process and has no such bound.
    /// Reads go through the pool of their own ([`Store::reads`](Store)).
    pub async fn fetch_at_most(
        &self,
        layout: &Layout,
        per: Granularity,
        start_ms: i64,
        end_ms: i64,
        max_rows: usize,
        deadline: Option<Instant>,
    ) -> Result<Vec<StoredRow>, StoreError> {
        if !layout.granularities.contains(&per) {
            return Err(StoreError::GranularityNotKept {
                aggregation: layout.aggregation.clone(),
                granularity: per,
            });
        }
        let def = TableDef::new(layout, per, layout.partitioned)?;
        let mut conn = self
            .reads
            .acquire()
            .await
            .map_err(StoreError::db(format!("reading {}", def.name)))?;
        let bound = deadline.map(|d| statement_bound(d.saturating_duration_since(Instant::now())));
        let read = |source: sqlx::Error| match bound {
            Some(after) if is_statement_timeout(&source) => StoreError::StatementTimedOut {
                table: def.name.clone(),
                after,
            },
            _ => StoreError::Database {
                context: format!("reading {}", def.name),
                source,
            },
        };
        if self.dialect.backend == Backend::Postgres {
            // A session setting: these connections only ever run store queries, each setting it.
            // Not cached: its text changes with the bound, and cached it would take places in
            // the connection's statement cache from the fetches.
            let set = Dialect::statement_timeout(bound);
            sqlx::query(&set)
                .persistent(false)
                .execute(&mut *conn)
                .await
                .map_err(read)?;
        }
        let sql = match bound {
            Some(bound) => self.dialect.fetch_within(&def, bound),
            None => self.dialect.fetch(&def),
        };
        let rows = sqlx::query(&sql).bind(start_ms).bind(end_ms);
        collect_rows(rows.fetch(&mut *conn), &def, layout, max_rows, &read).await
    }

    /// Deletes the rows of one granularity with `AGG_TIMESTAMP < before_ms`; returns how many.
    pub async fn purge(
        &self,
        layout: &Layout,
        granularity: Granularity,
        before_ms: i64,
    ) -> Result<u64, StoreError> {
        let def = TableDef::new(layout, granularity, layout.partitioned)?;
        let result = sqlx::query(&self.dialect.purge(&def.name))
            .bind(before_ms)
            .execute(&self.pool)
            .await
            .map_err(StoreError::db(format!("purging {}", def.name)))?;
        Ok(result.rows_affected())
    }

    /// Deletes dedup records committed (by the database clock) before `committed_before_ms`;
    /// returns how many. A batch re-sent after its record is purged is counted again: the dedup
    /// window must exceed the longest a publisher may keep re-sending.
    pub async fn purge_dedup(&self, committed_before_ms: i64) -> Result<u64, StoreError> {
        let result = sqlx::query(&self.dialect.purge_batches())
            .bind(committed_before_ms)
            .execute(&self.pool)
            .await
            .map_err(StoreError::db("purging batch ids"))?;
        Ok(result.rows_affected())
    }
}

/// Checks a row's shape against its layout and each value it carries against its column (type,
/// length, NUL, finite numbers, keys not null): what [`param_of`] then relies on.
fn check_row(def: &TableDef, layout: &Layout, row: &AggRow) -> Result<(), StoreError> {
    for (what, expected, got) in [
        ("keys", layout.keys.len(), row.keys.len()),
        ("latest values", layout.latest.len(), row.latest.len()),
        ("measures", layout.measures.len(), row.measures.len()),
    ] {
        if expected != got {
            return Err(StoreError::RowShape {
                table: def.name.clone(),
                what,
                expected,
                got,
            });
        }
    }
    for c in &def.columns {
        let value = match c.role {
            Role::Key(i) => &row.keys[i],
            Role::Latest(i) => &row.latest[i],
            Role::Measure(i, _) => &row.measures[i],
            // Filled in by the store.
            Role::Timestamp
            | Role::EventTimestamp
            | Role::Shard
            | Role::LastEventTimestamp
            | Role::Count => continue,
        };
        let max_chars = match c.sql_type {
            SqlType::Varchar(n) => n,
            _ => 0,
        };
        let key = matches!(c.role, Role::Key(_));
        check_typed(c.ty, max_chars, key, value.as_ref())
            .map_err(|source| invalid_value(def, c, source))?;
    }
    Ok(())
}

/// The parameter of column `c` for `row` (a row [`check_row`] accepted).
pub(super) fn row_param<'a>(
    def: &TableDef,
    c: &ColumnDef,
    row: &'a AggRow,
    shard_id: &'a str,
) -> Result<Param<'a>, StoreError> {
    Ok(match c.role {
        Role::Timestamp | Role::EventTimestamp => Param::Long(row.bucket),
        Role::Shard => Param::Str(shard_id),
        Role::LastEventTimestamp => Param::Long(row.last_event_ts),
        Role::Count => Param::Long(row.count),
        Role::Key(i) => param_of(def, c, &row.keys[i])?,
        Role::Latest(i) => param_of(def, c, &row.latest[i])?,
        Role::Measure(i, _) => param_of(def, c, &row.measures[i])?,
    })
}

/// `value`, which [`check_row`] accepted for column `c`, as a parameter.
fn param_of<'a>(def: &TableDef, c: &ColumnDef, value: &'a Value) -> Result<Param<'a>, StoreError> {
    Param::of(c.ty, value).map_err(|source| invalid_value(def, c, source))
}

pub(super) fn invalid_value(def: &TableDef, c: &ColumnDef, source: ValueError) -> StoreError {
    StoreError::InvalidValue {
        table: def.name.clone(),
        column: c.name.clone(),
        source,
    }
}

/// Decodes one fetched row (the columns of [`Dialect::fetch`]).
fn decode_row(
    def: &TableDef,
    layout: &Layout,
    r: &sqlx::any::AnyRow,
) -> Result<StoredRow, StoreError> {
    let mut keys: Vec<Value> = vec![Default::default(); layout.keys.len()];
    let mut row = AggRow {
        bucket: 0,
        keys: Arc::from([]),
        last_event_ts: 0,
        latest: vec![Default::default(); layout.latest.len()],
        count: 0,
        measures: vec![Default::default(); layout.measures.len()],
    };
    let mut shard_id = None;
    let columns = def
        .columns
        .iter()
        .filter(|c| c.role != Role::EventTimestamp);
    for (i, c) in columns.enumerate() {
        let value = decode(r, i, c.ty).map_err(|problem| StoreError::Decode {
            table: def.name.clone(),
            column: c.name.clone(),
            problem,
        })?;
        let not_null = |v: Value| match v {
            Value::Null => Err(StoreError::Decode {
                table: def.name.clone(),
                column: c.name.clone(),
                problem: "null in a NOT NULL column".into(),
            }),
            v => Ok(v),
        };
        let long = |v| match not_null(v)? {
            Value::Long(x) => Ok(x),
            other => Err(StoreError::Decode {
                table: def.name.clone(),
                column: c.name.clone(),
                problem: format!("{other:?} where a long was expected"),
            }),
        };
        match c.role {
            Role::Timestamp => row.bucket = long(value)?,
            Role::Shard => match not_null(value)? {
                Value::String(s) => shard_id = Some(s),
                other => {
                    return Err(StoreError::Decode {
                        table: def.name.clone(),
                        column: c.name.clone(),
                        problem: format!("{other:?} where a string was expected"),
                    });
                }
            },
            Role::EventTimestamp => {}
            Role::Key(k) => keys[k] = value,
            Role::Latest(k) => row.latest[k] = value,
            Role::LastEventTimestamp => row.last_event_ts = long(value)?,
            Role::Count => row.count = long(value)?,
            Role::Measure(k, _) => row.measures[k] = value,
        }
    }
    row.keys = keys.into();
    Ok(StoredRow { shard_id, row })
}

/// Normalizes a SQLite URL: a file is created if missing (`mode=rwc`) unless the URL sets a
/// mode. Returns the URL and whether it is an in-memory database.
fn sqlite_url(url: &str) -> (String, bool) {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    let memory = path == ":memory:" || params.contains(&"mode=memory");
    if memory || params.iter().any(|p| p.starts_with("mode=")) {
        return (url.to_owned(), memory);
    }
    let sep = if rest.contains('?') { "&" } else { "?" };
    (format!("{url}{sep}mode=rwc"), false)
}

/// Statements run on every new connection.
fn session_setup(backend: Backend, sqlite_busy_ms: u128) -> Vec<String> {
    match backend {
        Backend::Sqlite => vec![
            format!(
                "PRAGMA busy_timeout = {}",
                sqlite_busy_ms.min(2_147_483_647)
            ),
            "PRAGMA journal_mode = WAL".into(),
            // An ack promises the batch is committed: the WAL is synced at every commit (one
            // fsync per flush), so a power loss or OS crash keeps every acked batch. NORMAL would
            // sync only at checkpoints and could lose the last commits' batches, acked.
            "PRAGMA synchronous = FULL".into(),
        ],
        Backend::Postgres => vec![],
        Backend::MySql => vec![
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED".into(),
            // Never truncate silently, whatever the server's default mode.
            "SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',STRICT_ALL_TABLES')".into(),
        ],
    }
}

/// The best binary collation the MySQL server has (see [`MYSQL_COLLATIONS`]).
async fn mysql_collation(pool: &AnyPool) -> Result<&'static str, StoreError> {
    let rows = sqlx::query(
        "SELECT CAST(collation_name AS CHAR) FROM information_schema.collations \
         WHERE collation_name IN ('utf8mb4_0900_bin', 'utf8mb4_nopad_bin')",
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::db("listing collations"))?;
    let available: Vec<String> = rows
        .iter()
        .filter_map(|r| r.try_get::<String, _>(0).ok())
        .collect();
    Ok(MYSQL_COLLATIONS
        .iter()
        .find(|c| available.iter().any(|a| a == *c))
        .copied()
        .unwrap_or(MYSQL_COLLATIONS[2]))
}

/// The time bound a statement is given when `left` remains: whole tenths of a second, rounded
/// down (fewer distinct statement texts to prepare), at least 1 ms.
fn statement_bound(left: Duration) -> Duration {
    let tenths = left.as_millis() / 100;
    Duration::from_millis(u64::try_from(tenths * 100).unwrap_or(u64::MAX).max(1))
}

/// Decodes the rows a fetch streams, failing past `max_rows`.
async fn collect_rows(
    mut rows: futures_util::stream::BoxStream<'_, Result<sqlx::any::AnyRow, sqlx::Error>>,
    def: &TableDef,
    layout: &Layout,
    max_rows: usize,
    read: &(dyn Fn(sqlx::Error) -> StoreError + Send + Sync),
) -> Result<Vec<StoredRow>, StoreError> {
    let mut out = Vec::new();
    while let Some(row) = rows.try_next().await.map_err(read)? {
        if out.len() == max_rows {
            return Err(StoreError::TooManyRows {
                table: def.name.clone(),
                max: max_rows,
            });
        }
        out.push(decode_row(def, layout, &row)?);
    }
    Ok(out)
}

/// Whether a `mysql://` server is MariaDB.
async fn is_mariadb(pool: &AnyPool) -> Result<bool, StoreError> {
    let version: String = sqlx::query_scalar("SELECT CAST(VERSION() AS CHAR)")
        .fetch_one(pool)
        .await
        .map_err(StoreError::db("reading the server's version"))?;
    Ok(version.contains("MariaDB"))
}

/// A lease TTL in milliseconds, capped at a year (keeps `now + ttl` far from overflow).
pub(crate) fn ttl_ms(ttl: Duration) -> i64 {
    const YEAR_MS: i64 = 365 * 86_400_000;
    i64::try_from(ttl.as_millis()).map_or(YEAR_MS, |ms| ms.min(YEAR_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_create_files_unless_told_otherwise() {
        assert_eq!(
            sqlite_url("sqlite://shardtally.db"),
            ("sqlite://shardtally.db?mode=rwc".into(), false)
        );
        assert_eq!(
            sqlite_url("sqlite:///tmp/x.db?cache=shared"),
            ("sqlite:///tmp/x.db?cache=shared&mode=rwc".into(), false)
        );
        assert_eq!(
            sqlite_url("sqlite://x.db?mode=ro"),
            ("sqlite://x.db?mode=ro".into(), false)
        );
        assert_eq!(
            sqlite_url("sqlite::memory:"),
            ("sqlite::memory:".into(), true)
        );
        assert_eq!(
            sqlite_url("sqlite://:memory:"),
            ("sqlite://:memory:".into(), true)
        );
    }

    #[tokio::test]
    async fn sqlite_commits_are_synced_before_they_are_acked() {
        let dir =
            std::env::temp_dir().join(format!("shardtally-sync-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let url = format!("sqlite://{}", dir.join("t.db").display());
        let store = Store::connect(&url, 2).await.expect("connect");
        let mode: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&store.pool)
            .await
            .expect("pragma");
        assert_eq!(mode, 2, "FULL");
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.pool)
            .await
            .expect("pragma");
        assert_eq!(journal, "wal");
        store.close().await;
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn ttl_is_capped() {
        assert_eq!(ttl_ms(Duration::from_secs(10)), 10_000);
        assert_eq!(ttl_ms(Duration::MAX), 365 * 86_400_000);
    }
}
