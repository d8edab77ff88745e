//! Results of a run (SPEC §5.2): `results/<scenario>/<UTC timestamp>/` with `summary.json`,
//! `latency.hgrm`, `latency-raw.hgrm` and a self-contained `report.html`, and the console's
//! closing table.
//!
//! - `summary`: the [`Summary`] serde struct the run fills in.
//! - `write`: the results folder and its files.
//! - `html` / `svg`: the report page and its inline charts.
//! - `console`: the closing table.

mod console;
mod html;
mod summary;
mod svg;
mod write;

pub use console::console_table;
pub use html::render_html;
pub use summary::{
    ExpectationResult, FaultSummary, LatencySection, PhaseSummary, RunConfig, Summary,
    ThroughputSummary, WorkerConfig, mask_password,
};
pub use write::{ReportError, ResultFiles, create_results_dir, run_folder_name, write_results};

#[cfg(test)]
mod tests;
