//! Siddhi app parsing: `@app:name`, `define stream`, `define aggregation`, annotations; and the
//! lexer, expressions and evaluation shared with store queries ([`crate::query`]).
//!
//! [`App::parse`] parses and checks an app; every error carries a line and column.

mod app;
mod error;
pub(crate) mod eval;
mod expr;
mod lexer;
pub(crate) mod parser;

pub use app::{AggregationDef, App, Purge, SelectItem, parse_duration};
pub use error::{ParseError, Pos};
pub use expr::{AggFunc, BinaryOp, Expr, ExprKind, UnaryOp};

pub(crate) use app::parse_select_items;
pub(crate) use expr::{Calls, infer, parse_expr};
pub(crate) use lexer::Tok;

/// The GeoLocation app of the seeds (WSO2 API-M Analytics), bundled as the worker's default.
pub const BUNDLED_GEO_APP: &str = include_str!("../../../scenarios/apps/geo.siddhi");
