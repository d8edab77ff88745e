//! The loaded Siddhi app: its streams, aggregations and their storage layouts, resolved once at
//! startup and shared (read-only) by the server, the ingest task, retrieval and the CLI.

use std::path::Path;

use shardtally_publisher::protocol::{AttrType, StreamSchema};

use crate::config::AppSource;
use crate::engine::{self, Aggregator, EngineError};
use crate::layout::Layout;
use crate::siddhi::{self, AggregationDef, App};
use crate::store::{STRING_MAX_CHARS, key_string_chars};

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
    /// An aggregation cannot be built from its definition.
    #[error("{path}: {source}")]
    Engine {
        /// The file (or `<bundled>`).
        path: String,
        /// Why.
        source: EngineError,
    },
}

/// A Siddhi app with the layouts of its aggregations.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// The parsed app.
    pub app: App,
    /// One layout per aggregation, in `app.aggregations` order.
    pub layouts: Vec<Layout>,
    /// One empty aggregator per aggregation, built and checked once; cloned for fresh state.
    prototypes: Vec<Aggregator>,
}

impl Catalog {
    /// Loads an app from its source and derives the layouts under the global `partitionById`.
    pub fn load(source: &AppSource, partition_by_id: bool) -> Result<Catalog, CatalogError> {
        let (text, path) = match source {
            AppSource::Bundled => (
                siddhi::BUNDLED_GEO_APP.to_owned(),
                "<bundled geo.siddhi>".to_owned(),
            ),
            AppSource::File(p) => (read(p)?, p.display().to_string()),
        };
        Catalog::from_text(&text, partition_by_id, &path)
    }

    /// Parses app text and derives the layouts; `path` is only used in messages.
    pub fn from_text(
        text: &str,
        partition_by_id: bool,
        path: &str,
    ) -> Result<Catalog, CatalogError> {
        let app = App::parse(text).map_err(|source| CatalogError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let layouts: Vec<Layout> = app
            .aggregations
            .iter()
            .map(|agg| engine::layout(&app, agg, partition_by_id))
            .collect();
        let prototypes = app
            .aggregations
            .iter()
            .zip(&layouts)
            .map(|(agg, layout)| Aggregator::new(&app, agg, layout.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| CatalogError::Engine {
                path: path.to_owned(),
                source,
            })?;
        let mut app = app;
        constrain(&mut app.streams, &app.aggregations, &layouts);
        Ok(Catalog {
            app,
            layouts,
            prototypes,
        })
    }

    /// Fresh (empty) aggregators, one per aggregation, in `app.aggregations` order.
    pub fn aggregators(&self) -> Vec<Aggregator> {
        self.prototypes.clone()
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

/// Puts on each stream's attributes what the store can hold of them, as announced to
/// publishers (which then refuse such an event alone, at `publish`): every string at most
/// [`STRING_MAX_CHARS`] characters, a group-by key never null and, as a string, at most its key
/// column's characters (the tightest over the aggregations it keys).
fn constrain(streams: &mut [StreamSchema], aggregations: &[AggregationDef], layouts: &[Layout]) {
    for schema in streams {
        for attr in &mut schema.attributes {
            if attr.ty == AttrType::String {
                attr.max_chars = Some(u32::try_from(STRING_MAX_CHARS).unwrap_or(u32::MAX));
            }
        }
        for (agg, layout) in aggregations.iter().zip(layouts) {
            if agg.stream != schema.name {
                continue;
            }
            let key_chars = u32::try_from(key_string_chars(layout)).unwrap_or(u32::MAX);
            for key in &layout.keys {
                if let Some(attr) = schema.attributes.iter_mut().find(|a| a.name == key.name) {
                    attr.required = true;
                    if attr.ty == AttrType::String {
                        attr.max_chars = attr.max_chars.map(|n| n.min(key_chars));
                    }
                }
            }
        }
    }
}

fn read(path: &Path) -> Result<String, CatalogError> {
    std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
        path: path.display().to_string(),
        source,
    })
}
