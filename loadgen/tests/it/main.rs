//! Integration tests of the loadgen library (one crate; a module per topic).

mod scenario_files;
