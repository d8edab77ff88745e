//! Scenario files (SPEC §5.1): parsed and validated before anything starts, every error at a
//! line and column (`path:line:column: message`).
//!
//! ```yaml
//! name: naples-70k                  # also the results folder name
//! description: …                    # optional
//! app: apps/geo.siddhi              # relative to the file; omitted: the bundled GeoLocation app
//! seed: 42                          # optional; `--seed` overrides it
//! cluster:
//!   workers:                        # spawned by loadgen (exclusive with `endpoints`)
//!     - { node_id: n1 }             # shard id defaults to the node id (≤ 20 characters)
//!     - { node_id: n2, shard_id: s2 }
//!   # endpoints: "{tcp://h:9611,tcp://h:9612}"   # a running cluster instead
//!   database: sqlite                # default; or postgres://…, mysql://…
//!   flush_interval: 200ms           # optional, passed to spawned workers
//! phases:
//!   - name: warm-up
//!     stream: geoTempStream
//!     events: 30000                 # integer ≥ 1
//!     rate: max                     # or events per second (open model)
//!     route: { workers: [n1] }      # default: round-robin over all workers
//!     publishers: 2                 # concurrent gateways, default 1
//!     fields:                       # attributes not listed are null
//!       apiName: PizzaShackAPI                              # a constant
//!       city: { one_of: [Naples, Rome], weights: [3, 1] }   # weights optional
//!       requestTimestamp: { between: ["2026-11-20T10:00:00Z", "2026-11-20T10:59:59Z"] }
//!       country: { zipf: { values: [Italy, France, Spain], s: 1.1 } }   # rank 1 most frequent
//!       seq: { sequence: { start: 0, step: 1 } }            # event i: start + i × step
//!       tier: { sequence: [gold, silver] }                  # event i: values[i % len]
//! faults:
//!   - { at: 40%, kill: n2 }         # % of all phases' events, or a duration (2s)
//!   - { at: 60%, restart: n2 }
//! expect:
//!   - { query: "from GeoLocationAgg … per \"hours\" select …", rows: [[Italy, Naples, 70000]] }
//!   - shards: { aggregation: GeoLocationAgg, per: hours, counts: { n1: 30000, s2: 40000 } }
//!   - delivered: exactly-once
//!   - latency: { p50: 10ms, p90: 50ms, p99: 500ms, p999: 1s, max: 2s }   # any subset
//! ```
//!
//! Unknown keys are errors. Generators' types are checked against the stream schema later, by
//! [`crate::generate::PhaseGenerator::compile`].
//!
//! - `raw`: the YAML shapes (serde, positions kept, unknown keys denied).
//! - `validate`: the checks that need more than a type.
//! - `model`: the validated [`Scenario`] and its parts.
//! - `error`: [`ScenarioError`] and [`Pos`].

mod error;
mod model;
mod raw;
mod validate;

pub use error::{Pos, ScenarioError};
pub use model::{
    Cluster, DEFAULT_SEED, Database, Endpoints, ExpectKind, Expectation, Fault, FaultAction,
    FaultAt, FieldSpec, GeneratorSpec, Item, LatencyBounds, Literal, Phase, Rate, Route, Scenario,
    ShardCount, WorkerSpec, format_duration,
};
pub use validate::MAX_SHARD_ID_CHARS;
#[allow(unused_imports)]
pub(crate) use validate::parse_duration;

#[cfg(test)]
mod tests;
