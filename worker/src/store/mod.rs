//! SQL storage on SQLite, PostgreSQL and MySQL/MariaDB, through sqlx's `Any` driver.
//!
//! One [`Store`] holds the pool and a dialect; every SQL difference between the backends lives in
//! the dialect, and every value is a bound parameter.
//!
//! - The aggregation tables, `<Agg>_SECONDS … <Agg>_YEARS`, shaped as SPEC §4.4 says
//!   ([`Store::ensure_schema`], [`Store::add_shard_id`]).
//! - Exactly-once flushes: [`Store::commit`] records the batch ids in `shardtally_batches` and
//!   adds the deltas in one transaction; an id already there makes the whole commit a no-op
//!   ([`CommitOutcome::Duplicates`]).
//! - The shard rules: `shardtally_nodes` (node → shard, [`Store::register_node`]) and
//!   `shardtally_leases` ([`Store::acquire_lease`]).
//! - Reads ([`Store::fetch`]) and purges.
//!
//! # Layout
//! - `dialect`: [`Backend`] and the SQL spelling of each.
//! - `schema`: table shapes from a [`crate::layout::Layout`], string limits, value checks.
//! - `values`: bind parameters and decoding.
//! - `db`: [`Store`]: connect, commit, fetch, purge.
//! - `migrate`: schema creation, checks, `--add-shard-id`.
//! - `shard`: node registry and leases.
//! - `error`: [`StoreError`], retriable vs fatal.
//!
//! # Isolation
//! Commits run in one transaction: `BEGIN IMMEDIATE` on SQLite (writers queue on the busy
//! timeout), READ COMMITTED on PostgreSQL and MySQL. The dedup INSERT is the arbiter: a unique
//! index is enforced whatever the isolation level, and a concurrent insert of the same id waits
//! for the other transaction and then fails. The upserts are single-row atomic read-modify-writes
//! on every backend. Rows above a shard's newest bucket are plain INSERTs (PostgreSQL: one `COPY`
//! per table), arbitrated by the primary key the same way: a concurrent or earlier row with that
//! key makes the INSERT (or COPY) fail, and the commit is written again with upserts only (nothing
//! is lost or counted twice). CockroachDB
//! and YugabyteDB may run the transaction SERIALIZABLE; their serialization failures (40001) are
//! retriable, and a retried commit that did go through comes back as `Duplicates`.

mod db;
mod dialect;
mod error;
mod migrate;
mod postgres;
mod schema;
mod shard;
mod values;

pub use db::{BatchId, CommitOutcome, Store, StoreOptions, WriteCounts};
pub use dialect::Backend;
pub use error::{StoreError, ValueError};
pub use schema::{
    ColumnRef, ID_MAX_CHARS, MAX_IDENTIFIER_BYTES, MYSQL_MAX_KEY_BYTES,
    POSTGRES_MAX_INDEX_ROW_BYTES, SHARD_ID_MAX_CHARS, STRING_MAX_CHARS, check_value,
    key_string_chars,
};
pub use shard::LeaseOutcome;

/// `url` with its database (the path) replaced by `name`, any query string kept:
/// `postgres://u@h:5432/test` + `st_1` → `postgres://u@h:5432/st_1`. For tools that create a
/// fresh database on a server (tests, the loadgen's per-run databases).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod url_tests {
    use super::with_database;

    #[test]
    fn database_names_replace_the_path() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "st_1"),
            "postgres://postgres@127.0.0.1:5432/st_1"
        );
        assert_eq!(
            with_database("mysql://root@127.0.0.1:3306", "st_1"),
            "mysql://root@127.0.0.1:3306/st_1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "st_2"),
            "postgres://u:p@h/st_2?sslmode=disable"
        );
    }
}
