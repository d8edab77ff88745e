//! shardtally worker: receives event batches, aggregates them into time buckets under its shard
//! id, and adds the partial aggregates into one shared SQL database, exactly once.
//!
//! # Layout
//! - [`config`]: `deployment.yaml`, flags and environment resolved into a `WorkerConfig`.
//! - [`bucket`]: granularities and calendar-aligned UTC bucket starts.
//! - [`layout`]: the columns of an aggregation's tables and the rows moving between engine,
//!   store and retrieval.
//! - [`siddhi`]: the Siddhi app parser.
//! - [`engine`]: the pure aggregation engine.
//! - [`query`]: store-query parsing and shard-merging evaluation.
//! - [`store`]: the SQL backends, dedup table, shard registry and leases.

pub mod bucket;
pub mod config;
pub mod engine;
pub mod layout;
pub mod query;
pub mod siddhi;
pub mod store;
