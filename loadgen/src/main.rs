//! `shardtally-loadgen`: runs scenario files against an embedded (or a running) shardtally
//! cluster, publishes JSON lines, and — as the hidden `worker` subcommand — is itself the worker
//! its embedded clusters are made of.
//!
//! # Layout
//! - `cli`: the command line (clap) and exit statuses.
//! - `run`: `run SCENARIO.yaml…`: validate, start the cluster, drive the phases and faults,
//!   measure, check, report.
//! - `cluster`: the worker processes a run spawns, and the database they share.
//! - `expect`: the checks behind `expect:` (query rows, shard counts, exactly-once, latency).
//! - `publish`: `publish < events.jsonl`.
//! - `bench`: `bench`: shardtally end to end against the `naive` and `wire` baselines.

mod bench;
mod cli;
mod cluster;
mod expect;
mod publish;
mod run;

fn main() -> std::process::ExitCode {
    cli::main()
}
