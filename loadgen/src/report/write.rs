//! The results folder: `results/<scenario>/<UTC timestamp>/` and the files in it.

use std::io;
use std::path::{Path, PathBuf};

use super::html::render_html;
use super::summary::Summary;
use crate::measure::LatencyRecorder;

/// Why the results could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file or folder could not be created or written.
    #[error("cannot write {}: {error}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error (shown in the message, not chained as a source).
        error: io::Error,
    },
    /// The summary could not be serialized.
    #[error("cannot serialize summary.json: {error}")]
    Json {
        /// The serde error (shown in the message).
        error: serde_json::Error,
    },
}

/// The files a run writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultFiles {
    /// The run's folder.
    pub dir: PathBuf,
    /// `summary.json`.
    pub summary: PathBuf,
    /// `latency.hgrm` (corrected).
    pub latency: PathBuf,
    /// `latency-raw.hgrm`.
    pub latency_raw: PathBuf,
    /// `report.html`.
    pub report: PathBuf,
}

/// The folder name of a run started at `at`: `2026-11-20T10-00-00Z` (UTC, no colons so it is a
/// valid name everywhere).
pub fn run_folder_name(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H-%M-%SZ").to_string()
}

/// Creates `root/<scenario>/<UTC timestamp>/` (a `-2`, `-3`, … suffix when a run of the same
/// second already has it) and returns it.
pub fn create_results_dir(
    root: &Path,
    scenario: &str,
    at: jiff::Timestamp,
) -> Result<PathBuf, ReportError> {
    let parent = root.join(scenario);
    std::fs::create_dir_all(&parent).map_err(|error| ReportError::Io {
        path: parent.clone(),
        error,
    })?;
    let base = run_folder_name(at);
    for n in 1..1000u32 {
        let name = if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let dir = parent.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(ReportError::Io { path: dir, error }),
        }
    }
    Err(ReportError::Io {
        path: parent.join(base),
        error: io::Error::new(io::ErrorKind::AlreadyExists, "too many runs in one second"),
    })
}

fn write(path: PathBuf, contents: &str) -> Result<PathBuf, ReportError> {
    std::fs::write(&path, contents).map_err(|error| ReportError::Io {
        path: path.clone(),
        error,
    })?;
    Ok(path)
}

/// Writes `summary.json`, `latency.hgrm`, `latency-raw.hgrm` and `report.html` into `dir`
/// (which exists). The summary is [`Summary::finish`]ed first.
pub fn write_results(
    dir: &Path,
    summary: &Summary,
    latency: &LatencyRecorder,
) -> Result<ResultFiles, ReportError> {
    let mut summary = summary.clone();
    summary.finish();
    let json =
        serde_json::to_string_pretty(&summary).map_err(|error| ReportError::Json { error })?;
    Ok(ResultFiles {
        dir: dir.to_owned(),
        summary: write(dir.join("summary.json"), &(json + "\n"))?,
        latency: write(dir.join("latency.hgrm"), &latency.hgrm())?,
        latency_raw: write(dir.join("latency-raw.hgrm"), &latency.raw_hgrm())?,
        report: write(dir.join("report.html"), &render_html(&summary))?,
    })
}
