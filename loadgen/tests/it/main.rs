//! Integration tests of the loadgen library and binary (one crate; a module per topic).

mod common;
mod expected_totals;
mod scenario_files;
