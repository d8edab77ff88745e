//! Running a store query end to end: parse, fetch every shard's rows of the `per` table in range,
//! merge and evaluate. Shared by `shardtally-worker query` and `POST /stores/query`.

use std::time::Duration;

use crate::catalog::Catalog;
use crate::query::{self, ResultSet, StoreQuery};
use crate::store::{Store, StoreError};

/// Why a store query failed.
#[derive(Debug, thiserror::Error)]
pub enum RetrieveError {
    /// The query text is not a valid store query (position in the message).
    #[error("{0}")]
    Parse(String),
    /// The query names an aggregation the app does not define.
    #[error("unknown aggregation `{name}` (the app defines {known})")]
    UnknownAggregation {
        /// The name in the query.
        name: String,
        /// The app's aggregations.
        known: String,
    },
    /// The query is valid but cannot be answered (unknown attribute, granularity not kept, …).
    #[error("{0}")]
    Query(String),
    /// The range holds more stored rows than a query may read.
    #[error(
        "the query reads more than {max} stored rows of `{table}` (max_query_rows); narrow \
         `within` or use a coarser `per`"
    )]
    TooManyRows {
        /// The table.
        table: String,
        /// The limit.
        max: usize,
    },
    /// The query did not finish in time.
    #[error(
        "the query did not finish within {0:?} (query_timeout); narrow `within` or use a \
         coarser `per`"
    )]
    TimedOut(Duration),
    /// The database failed.
    #[error("database: {0}")]
    Store(StoreError),
}

impl From<StoreError> for RetrieveError {
    fn from(e: StoreError) -> RetrieveError {
        match e {
            StoreError::TooManyRows { table, max } => RetrieveError::TooManyRows { table, max },
            e => RetrieveError::Store(e),
        }
    }
}

impl RetrieveError {
    /// Whether the error is the caller's (bad query) rather than the system's.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, RetrieveError::Store(_) | RetrieveError::TimedOut(_))
    }
}

/// What one store query may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// The most stored rows it reads (every shard's, before merging).
    pub max_rows: usize,
    /// The longest it runs.
    pub timeout: Duration,
}

impl Default for QueryLimits {
    /// 1,000,000 rows, 30 s.
    fn default() -> QueryLimits {
        QueryLimits {
            max_rows: 1_000_000,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Parses and runs `text` against `store`, merging all shards, within the default
/// [`QueryLimits`].
pub async fn run(catalog: &Catalog, store: &Store, text: &str) -> Result<ResultSet, RetrieveError> {
    run_within(catalog, store, text, QueryLimits::default()).await
}

/// Parses and runs `text` against `store`, merging all shards, within `limits`.
pub async fn run_within(
    catalog: &Catalog,
    store: &Store,
    text: &str,
    limits: QueryLimits,
) -> Result<ResultSet, RetrieveError> {
    // The database stops the statement at the same bound (see `Store::fetch_at_most`): giving
    // up here leaves nothing running there.
    let deadline = tokio::time::Instant::now() + limits.timeout;
    match tokio::time::timeout_at(
        deadline,
        run_bounded(catalog, store, text, limits, deadline),
    )
    .await
    {
        Ok(Err(RetrieveError::Store(StoreError::StatementTimedOut { .. }))) | Err(_) => {
            Err(RetrieveError::TimedOut(limits.timeout))
        }
        Ok(answer) => answer,
    }
}

async fn run_bounded(
    catalog: &Catalog,
    store: &Store,
    text: &str,
    limits: QueryLimits,
    deadline: tokio::time::Instant,
) -> Result<ResultSet, RetrieveError> {
    let q = StoreQuery::parse(text).map_err(|e| RetrieveError::Parse(e.to_string()))?;
    let Some((_, layout)) = catalog.aggregation(&q.aggregation) else {
        return Err(RetrieveError::UnknownAggregation {
            name: q.aggregation.clone(),
            known: catalog
                .app
                .aggregations
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    if !layout.granularities.contains(&q.per) {
        return Err(RetrieveError::Query(format!(
            "aggregation `{}` does not keep {} (it keeps {})",
            layout.aggregation,
            q.per,
            layout
                .granularities
                .iter()
                .map(|g| g.name())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let rows = store
        .fetch_at_most(
            layout,
            q.per,
            q.start_ms,
            q.end_ms,
            limits.max_rows,
            Some(deadline),
        )
        .await?;
    query::execute(&q, layout, rows).map_err(|e| RetrieveError::Query(e.to_string()))
}
