//! The loaded Siddhi app: its streams, aggregations and their storage layouts, resolved once at
//! startup and shared (read-only) by the server, the ingest task, retrieval and the CLI.

use std::path::Path;

use shardtally_publisher::protocol::StreamSchema;

use crate::config::AppSource;
use crate::engine;
use crate::layout::Layout;
use crate::siddhi::{self, AggregationDef, App};

/// Why an app could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The file could not be read.
    #[error("cannot read Siddhi app {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The app does not parse or does not make sense.
    #[error("{path}: {source}")]
    Parse {
        /// The file (or `<bundled>`).
        path: String,
        /// The parser's error, with line and column.
        source: siddhi::ParseError,
    },
}

/// A Siddhi app with the layouts of its aggregations.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The parsed app.
    pub app: App,
    /// One layout per aggregation, in `app.aggregations` order.
    pub layouts: Vec<Layout>,
}

impl Catalog {
    /// Loads an app from its source and derives the layouts under the global `partitionById`.
    pub fn load(source: &AppSource, partition_by_id: bool) -> Result<Catalog, CatalogError> {
        let (text, path) = match source {
            AppSource::Bundled => (siddhi::BUNDLED_GEO_APP.to_owned(), "<bundled geo.siddhi>".to_owned()),
            AppSource::File(p) => (read(p)?, p.display().to_string()),
        };
        Catalog::from_text(&text, partition_by_id).map_err(|source| CatalogError::Parse { path, source })
    }

    /// Parses app text and derives the layouts.
    pub fn from_text(text: &str, partition_by_id: bool) -> Result<Catalog, siddhi::ParseError> {
        let app = App::parse(text)?;
        let layouts = app
            .aggregations
            .iter()
            .map(|agg| engine::layout(&app, agg, partition_by_id))
            .collect();
        Ok(Catalog { app, layouts })
    }

    /// The app's name (`@app:name`).
    pub fn name(&self) -> &str {
        &self.app.name
    }

    /// Stream schemas, as announced to publishers.
    pub fn streams(&self) -> &[StreamSchema] {
        &self.app.streams
    }

    /// The position of a stream by name.
    pub fn stream_index(&self, name: &str) -> Option<usize> {
        self.app.streams.iter().position(|s| s.name == name)
    }

    /// An aggregation and its layout, by name.
    pub fn aggregation(&self, name: &str) -> Option<(&AggregationDef, &Layout)> {
        let i = self.app.aggregations.iter().position(|a| a.name == name)?;
        Some((&self.app.aggregations[i], &self.layouts[i]))
    }

    /// Indices of the aggregations fed by stream `stream`.
    pub fn aggregations_of(&self, stream: usize) -> Vec<usize> {
        let name = &self.app.streams[stream].name;
        (0..self.app.aggregations.len())
            .filter(|&i| &self.app.aggregations[i].stream == name)
            .collect()
    }
}

fn read(path: &Path) -> Result<String, CatalogError> {
    std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
        path: path.display().to_string(),
        source,
    })
}
