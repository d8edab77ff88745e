//! Siddhi store queries: parsing ([`StoreQuery::parse`]) and evaluation over the merged rows of
//! every shard ([`execute`]).
//!
//! ```text
//! from GeoLocationAgg on country == 'Italy'
//! within "2026-11-20 10:**:**" per "hours"
//! select country, city, totalRequestCount
//! ```

mod execute;
mod parse;
mod within;

pub use execute::{AGG_TIMESTAMP, QueryError, ResultSet, check, execute};
pub use parse::{AttrRef, OrderBy, StoreQuery};
