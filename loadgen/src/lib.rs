//! shardtally loadgen: scenarios, embedded clusters, faults, assertions, reports, benchmarks.
//!
//! # Layout
//! - [`scenario`]: scenario files (SPEC §5.1), parsed and validated with line:column errors.
//! - [`generate`]: field generators compiled against a stream schema into deterministic events.
//! - [`measure`]: latency histograms (raw and coordinated-omission corrected), throughput
//!   timeline, per-node counters, `.hgrm` export.
//! - [`report`]: the results folder (SPEC §5.2): `summary.json`, `.hgrm` files, `report.html`,
//!   and the console's closing table.
//! - [`workload`]: the benchmark's events (keys, event-time span), generated without allocating.

pub mod generate;
pub mod measure;
pub mod report;
pub mod scenario;
pub mod workload;
