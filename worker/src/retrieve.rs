//! Running a store query end to end: parse, fetch every shard's rows of the `per` table in range,
//! merge and evaluate. Shared by `shardtally-worker query` and `POST /stores/query`.

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
    /// The database failed.
    #[error("database: {0}")]
    Store(#[from] StoreError),
}

impl RetrieveError {
    /// Whether the error is the caller's (bad query) rather than the system's.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, RetrieveError::Store(_))
    }
}

/// Parses and runs `text` against `store`, merging all shards.
pub async fn run(catalog: &Catalog, store: &Store, text: &str) -> Result<ResultSet, RetrieveError> {
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
    let rows = store.fetch(layout, q.per, q.start_ms, q.end_ms).await?;
    query::execute(&q, layout, rows).map_err(|e| RetrieveError::Query(e.to_string()))
}
