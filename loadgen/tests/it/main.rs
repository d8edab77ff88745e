//! Integration tests of the loadgen library and binary (one crate; a module per topic).

mod bench_cli;
mod common;
mod expected_totals;
mod fuzz;
mod gateway;
mod publish_cli;
mod run_scenarios;
mod scenario_files;
