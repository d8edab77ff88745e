//! Scenario files (SPEC §5.1): parsed and validated before anything starts, every error at a
//! line and column.
//!
//! - `raw`: the YAML shapes (serde, positions kept, unknown keys denied).
//! - `validate`: the checks that need more than a type.
//! - `model`: the validated [`Scenario`] and its parts.

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
