//! Siddhi store queries: parsing and evaluation over merged shard rows.
