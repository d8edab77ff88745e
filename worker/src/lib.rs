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
//! - [`catalog`]: a loaded app with the layouts of its aggregations.
//! - `server` / `tls` / `ingest` / `check`: the TCP side (TLS, handshake, framing), the task
//!   that decodes, checks and aggregates batches and commits them exactly once, and the checks
//!   on values; `budget` bounds the bytes of the batches held; [`node`] starts and stops them
//!   with the lease and HTTP tasks.
//! - [`retrieve`], [`http`] (with `http_listener`: connection limit, idle timeout, HTTPS),
//!   [`metrics`], [`cli`]: queries, the HTTP API, Prometheus metrics, the command line.

pub mod bucket;
mod budget;
pub mod catalog;
mod check;
pub mod cli;
pub mod config;
pub mod engine;
pub mod http;
mod http_listener;
mod ingest;
pub mod layout;
pub mod metrics;
pub mod node;
pub mod query;
pub mod retrieve;
mod server;
pub mod siddhi;
pub mod store;
mod tls;
