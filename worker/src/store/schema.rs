//! The tables' shapes, derived from a [`Layout`], their limits, and the checks a value passes
//! before it is bound to a column. Pure: no SQL text here (that is the dialect's), no I/O.
//!
//! # String lengths
//! Every string column is `VARCHAR(n)` and `n` is enforced here, in characters (Unicode scalar
//! values, as PostgreSQL and MySQL count them), on every backend — SQLite ignores declared lengths
//! and MySQL outside strict mode truncates, so the store checks first and a longer string is an
//! error ([`ValueError::TooLong`]), never truncated.
//!
//! - Non-key strings (latest values, string min/max): [`STRING_MAX_CHARS`] = 254.
//! - `SHARD_ID`: [`SHARD_ID_MAX_CHARS`] = 20.
//! - Group-by strings: 254, or less when the aggregation has three or more string group-by
//!   columns. The primary key must fit both PostgreSQL's largest B-tree entry
//!   ([`POSTGRES_MAX_INDEX_ROW_BYTES`], 2704 bytes) and InnoDB's key limit
//!   ([`MYSQL_MAX_KEY_BYTES`], 3072 bytes), counting 4 bytes per character (UTF-8 / `utf8mb4`
//!   worst case) plus 12 bytes of header and alignment per column. [`key_string_chars`] shares
//!   what is left after `AGG_TIMESTAMP`, `SHARD_ID` and `AGG_EVENT_TIMESTAMP` (always reserved,
//!   so `migrate --add-shard-id` never overflows it) and the non-string keys equally among the
//!   string keys: two string keys get 254 characters each, three 209, four 156, six 103. The same
//!   length is used on every backend, so all three accept the same data.
//! - Publisher, node and instance ids: [`ID_MAX_CHARS`] = 128.
//!
//! # Null group-by values
//! Key columns are `NOT NULL`: they form the primary key, which PostgreSQL and MySQL cannot build
//! over nullable columns, and a sentinel value would collide with real data. A null group-by value
//! is refused ([`ValueError::NullKey`]); the worker rejects such events before aggregating them
//! (use [`check_value`] per event).

use shardtally_publisher::protocol::{AttrType, ValueRef};

use crate::bucket::Granularity;
use crate::layout::{Layout, MeasureKind};
use crate::store::error::{StoreError, ValueError};

/// Maximum length of a shard id (`SHARD_ID VARCHAR(20)`, as in the WSO2 schema).
pub const SHARD_ID_MAX_CHARS: usize = 20;
/// Maximum length of a non-key string column.
pub const STRING_MAX_CHARS: usize = 254;
/// Maximum length of a publisher id, node id or lease instance id.
pub const ID_MAX_CHARS: usize = 128;
/// InnoDB's maximum index key length in bytes (DYNAMIC/COMPRESSED row formats).
pub const MYSQL_MAX_KEY_BYTES: usize = 3072;
/// PostgreSQL's largest B-tree index entry in bytes (8 KiB pages, B-tree version 4).
pub const POSTGRES_MAX_INDEX_ROW_BYTES: usize = 2704;
/// Longest table or column name: PostgreSQL truncates identifiers beyond 63 bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// `AGG_TIMESTAMP`.
pub(crate) const AGG_TIMESTAMP: &str = "AGG_TIMESTAMP";
/// `SHARD_ID`.
pub(crate) const SHARD_ID: &str = "SHARD_ID";
/// `AGG_EVENT_TIMESTAMP`.
pub(crate) const AGG_EVENT_TIMESTAMP: &str = "AGG_EVENT_TIMESTAMP";
/// `AGG_LAST_EVENT_TIMESTAMP`.
pub(crate) const AGG_LAST_EVENT_TIMESTAMP: &str = "AGG_LAST_EVENT_TIMESTAMP";
/// `AGG_COUNT`.
pub(crate) const AGG_COUNT: &str = "AGG_COUNT";

/// Worst-case bytes a key column costs beyond its data in a PostgreSQL index entry: a 4-byte
/// varlena header and up to 7 bytes of alignment padding, rounded up.
const KEY_COLUMN_OVERHEAD: usize = 12;
/// Bytes a primary key may use: the tighter of the two limits, less PostgreSQL's 8-byte index
/// tuple header and 16 bytes of slack.
const KEY_BUDGET_BYTES: usize = min(POSTGRES_MAX_INDEX_ROW_BYTES, MYSQL_MAX_KEY_BYTES) - 24;
/// Bytes of the always-reserved part of a primary key: `AGG_TIMESTAMP` (8), `SHARD_ID` (20 × 4)
/// and `AGG_EVENT_TIMESTAMP` (8), each with its overhead.
const FIXED_KEY_BYTES: usize = 8 + SHARD_ID_MAX_CHARS * 4 + 8 + 3 * KEY_COLUMN_OVERHEAD;

const fn min(a: usize, b: usize) -> usize {
    if a < b { a } else { b }
}

/// Which column of a layout a value is destined for (see [`check_value`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnRef {
    /// `layout.keys[i]`.
    Key(usize),
    /// `layout.latest[i]`.
    Latest(usize),
    /// `layout.measures[i]`.
    Measure(usize),
}

/// The length, in characters, of every string group-by column of `layout` (see the module docs).
pub fn key_string_chars(layout: &Layout) -> usize {
    let string_keys = layout
        .keys
        .iter()
        .filter(|c| c.ty == AttrType::String)
        .count();
    if string_keys == 0 {
        return STRING_MAX_CHARS;
    }
    let other_bytes: usize = layout
        .keys
        .iter()
        .map(|c| fixed_width_bytes(c.ty) + KEY_COLUMN_OVERHEAD)
        .sum();
    let budget = KEY_BUDGET_BYTES.saturating_sub(FIXED_KEY_BYTES + other_bytes);
    (budget / (4 * string_keys)).min(STRING_MAX_CHARS)
}

fn fixed_width_bytes(ty: AttrType) -> usize {
    match ty {
        AttrType::String => 0,
        AttrType::Int | AttrType::Float => 4,
        AttrType::Long | AttrType::Double => 8,
        AttrType::Bool => 1,
    }
}

/// Checks that `value` can be stored in `column` of `layout`: type, null group-by values, string
/// length, NUL characters, finite numbers. The worker calls this per event so that one bad event
/// is rejected alone instead of failing a whole flush.
pub fn check_value(
    layout: &Layout,
    column: ColumnRef,
    value: ValueRef<'_>,
) -> Result<(), ValueError> {
    let (ty, max_chars, key) = match column {
        ColumnRef::Key(i) => (
            layout.keys.get(i).map(|c| c.ty),
            key_string_chars(layout),
            true,
        ),
        ColumnRef::Latest(i) => (layout.latest.get(i).map(|c| c.ty), STRING_MAX_CHARS, false),
        ColumnRef::Measure(i) => (
            layout.measures.get(i).map(|m| m.ty),
            STRING_MAX_CHARS,
            false,
        ),
    };
    // An index outside the layout is a caller bug; there is no column to check against, and
    // commit reports the row shape separately.
    let Some(ty) = ty else { return Ok(()) };
    check_typed(ty, max_chars, key, value)
}

/// Checks one value against a column type; see [`check_value`].
pub(crate) fn check_typed(
    ty: AttrType,
    max_chars: usize,
    key: bool,
    value: ValueRef<'_>,
) -> Result<(), ValueError> {
    match (ty, value) {
        (_, ValueRef::Null) if key => Err(ValueError::NullKey),
        (_, ValueRef::Null) => Ok(()),
        (AttrType::String, ValueRef::String(s)) => {
            if s.contains('\0') {
                return Err(ValueError::ContainsNul);
            }
            // Only count when the byte length could exceed the limit.
            if s.len() > max_chars {
                let chars = s.chars().count();
                if chars > max_chars {
                    return Err(ValueError::TooLong { max_chars, chars });
                }
            }
            Ok(())
        }
        (AttrType::Int, ValueRef::Int(_))
        | (AttrType::Long, ValueRef::Int(_) | ValueRef::Long(_))
        | (AttrType::Bool, ValueRef::Bool(_)) => Ok(()),
        (AttrType::Float, ValueRef::Float(x)) | (AttrType::Double, ValueRef::Float(x)) => {
            finite(f64::from(x))
        }
        (AttrType::Double, ValueRef::Double(x)) => finite(x),
        (expected, v) => Err(ValueError::TypeMismatch {
            expected,
            // Null was handled above.
            got: v.attr_type().unwrap_or(expected),
        }),
    }
}

fn finite(x: f64) -> Result<(), ValueError> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(ValueError::NotFinite {
            value: x.to_string(),
        })
    }
}

/// A column's SQL type, before the dialect spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SqlType {
    /// `VARCHAR(n)`.
    Varchar(usize),
    /// 32-bit integer.
    Int,
    /// 64-bit integer.
    BigInt,
    /// 32-bit float.
    Real,
    /// 64-bit float.
    Double,
    /// Boolean.
    Bool,
}

impl SqlType {
    pub(crate) fn of(ty: AttrType, string_chars: usize) -> SqlType {
        match ty {
            AttrType::String => SqlType::Varchar(string_chars),
            AttrType::Int => SqlType::Int,
            AttrType::Long => SqlType::BigInt,
            AttrType::Float => SqlType::Real,
            AttrType::Double => SqlType::Double,
            AttrType::Bool => SqlType::Bool,
        }
    }
}

/// What a column of an aggregation table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// `AGG_TIMESTAMP`.
    Timestamp,
    /// `SHARD_ID`.
    Shard,
    /// `AGG_EVENT_TIMESTAMP`.
    EventTimestamp,
    /// `keys[i]`.
    Key(usize),
    /// `latest[i]`.
    Latest(usize),
    /// `AGG_LAST_EVENT_TIMESTAMP`.
    LastEventTimestamp,
    /// `AGG_COUNT`.
    Count,
    /// `measures[i]`, combined by its kind.
    Measure(usize, MeasureKind),
}

/// One column of an aggregation table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ColumnDef {
    pub(crate) name: String,
    pub(crate) sql_type: SqlType,
    /// The Siddhi type the column holds.
    pub(crate) ty: AttrType,
    pub(crate) nullable: bool,
    pub(crate) role: Role,
}

/// The full shape of one `<Agg>_<GRANULARITY>` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableDef {
    pub(crate) name: String,
    /// Columns in table order (SPEC §4.4).
    pub(crate) columns: Vec<ColumnDef>,
    /// Indexes into `columns` of the primary key, in key order.
    pub(crate) primary_key: Vec<usize>,
    /// Length of string group-by columns.
    pub(crate) key_chars: usize,
    /// The granularity whose buckets the table holds.
    pub(crate) granularity: Granularity,
}

impl TableDef {
    /// The table of `granularity` for `layout`, with `partitioned` overriding the layout's flag
    /// (migration builds the partitioned shape of an unpartitioned table).
    pub(crate) fn new(
        layout: &Layout,
        granularity: Granularity,
        partitioned: bool,
    ) -> Result<TableDef, StoreError> {
        let name = layout.table(granularity);
        check_identifier(&name)?;
        let key_chars = key_string_chars(layout);
        if key_chars == 0 {
            return Err(StoreError::SchemaMismatch {
                table: name,
                problem: "too many group-by columns to fit a primary key on MySQL".into(),
            });
        }
        let fixed = |name: &str, role| ColumnDef {
            name: name.to_owned(),
            sql_type: SqlType::BigInt,
            ty: AttrType::Long,
            nullable: false,
            role,
        };
        let mut columns = vec![fixed(AGG_TIMESTAMP, Role::Timestamp)];
        if partitioned {
            columns.push(ColumnDef {
                name: SHARD_ID.to_owned(),
                sql_type: SqlType::Varchar(SHARD_ID_MAX_CHARS),
                ty: AttrType::String,
                nullable: false,
                role: Role::Shard,
            });
        }
        if layout.event_time {
            columns.push(fixed(AGG_EVENT_TIMESTAMP, Role::EventTimestamp));
        }
        for (i, c) in layout.keys.iter().enumerate() {
            columns.push(ColumnDef {
                name: c.name.clone(),
                sql_type: SqlType::of(c.ty, key_chars),
                ty: c.ty,
                nullable: false,
                role: Role::Key(i),
            });
        }
        for (i, c) in layout.latest.iter().enumerate() {
            columns.push(ColumnDef {
                name: c.name.clone(),
                sql_type: SqlType::of(c.ty, STRING_MAX_CHARS),
                ty: c.ty,
                nullable: true,
                role: Role::Latest(i),
            });
        }
        columns.push(fixed(AGG_LAST_EVENT_TIMESTAMP, Role::LastEventTimestamp));
        columns.push(fixed(AGG_COUNT, Role::Count));
        for (i, m) in layout.measures.iter().enumerate() {
            columns.push(ColumnDef {
                name: m.column.clone(),
                sql_type: SqlType::of(m.ty, STRING_MAX_CHARS),
                ty: m.ty,
                nullable: true,
                role: Role::Measure(i, m.kind),
            });
        }
        for (i, c) in columns.iter().enumerate() {
            check_identifier(&c.name)?;
            if columns[..i]
                .iter()
                .any(|d| d.name.eq_ignore_ascii_case(&c.name))
            {
                return Err(StoreError::InvalidIdentifier {
                    name: c.name.clone(),
                    reason: "two columns of the table would have this name (names are compared case-insensitively; AGG_* and SHARD_ID are reserved)",
                });
            }
        }
        let primary_key = columns
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                matches!(
                    c.role,
                    Role::Timestamp | Role::Shard | Role::EventTimestamp | Role::Key(_)
                )
            })
            .map(|(i, _)| i)
            .collect();
        Ok(TableDef {
            name,
            columns,
            primary_key,
            key_chars,
            granularity,
        })
    }

    /// The primary key's column names.
    pub(crate) fn primary_key_names(&self) -> impl Iterator<Item = &str> {
        self.primary_key
            .iter()
            .map(|&i| self.columns[i].name.as_str())
    }
}

/// Table and column names must be plain identifiers: ASCII letters, digits and `_`, not starting
/// with a digit, at most [`MAX_IDENTIFIER_BYTES`] long — what Siddhi accepts, and what every
/// backend stores and compares alike.
pub(crate) fn check_identifier(name: &str) -> Result<(), StoreError> {
    let err = |reason| {
        Err(StoreError::InvalidIdentifier {
            name: name.to_owned(),
            reason,
        })
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return err("it is empty"),
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
            return err("it must start with an ASCII letter or `_`");
        }
        Some(_) => {}
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return err("only ASCII letters, digits and `_` are allowed");
    }
    if name.len() > MAX_IDENTIFIER_BYTES {
        return err("it is longer than 63 characters (PostgreSQL would truncate it)");
    }
    Ok(())
}

/// Checks an id value (shard, node, publisher, instance): non-empty, at most `max` characters,
/// no NUL.
pub(crate) fn check_id(what: &'static str, value: &str, max: usize) -> Result<(), StoreError> {
    let reason = if value.is_empty() {
        "it is empty".to_owned()
    } else if value.contains('\0') {
        "it contains a NUL character".to_owned()
    } else if value.chars().count() > max {
        format!("it is longer than {max} characters")
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidId {
        what,
        value: value.to_owned(),
        reason,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::layout::{Column, Measure};

    pub(crate) fn geo_layout() -> Layout {
        Layout {
            aggregation: "GeoLocationAgg".into(),
            partitioned: true,
            event_time: true,
            granularities: Granularity::ALL.to_vec(),
            keys: vec![
                Column {
                    name: "country".into(),
                    ty: AttrType::String,
                },
                Column {
                    name: "city".into(),
                    ty: AttrType::String,
                },
            ],
            latest: vec![Column {
                name: "apiName".into(),
                ty: AttrType::String,
            }],
            measures: vec![Measure {
                column: "AGG_SUM_latency".into(),
                kind: MeasureKind::Sum,
                ty: AttrType::Long,
            }],
            outputs: vec![],
        }
    }

    fn col(name: &str, ty: AttrType) -> Column {
        Column {
            name: name.into(),
            ty,
        }
    }

    #[test]
    fn table_shape_follows_the_spec() {
        let def = TableDef::new(&geo_layout(), Granularity::Hours, true).unwrap();
        assert_eq!(def.name, "GeoLocationAgg_HOURS");
        let names: Vec<_> = def.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "AGG_TIMESTAMP",
                "SHARD_ID",
                "AGG_EVENT_TIMESTAMP",
                "country",
                "city",
                "apiName",
                "AGG_LAST_EVENT_TIMESTAMP",
                "AGG_COUNT",
                "AGG_SUM_latency"
            ]
        );
        assert_eq!(
            def.primary_key_names().collect::<Vec<_>>(),
            [
                "AGG_TIMESTAMP",
                "SHARD_ID",
                "AGG_EVENT_TIMESTAMP",
                "country",
                "city"
            ]
        );
        assert_eq!(def.columns[3].sql_type, SqlType::Varchar(254));
        assert!(!def.columns[3].nullable);
        assert!(def.columns[5].nullable);

        let plain = TableDef::new(&geo_layout(), Granularity::Hours, false).unwrap();
        assert_eq!(
            plain.primary_key_names().collect::<Vec<_>>(),
            ["AGG_TIMESTAMP", "AGG_EVENT_TIMESTAMP", "country", "city"]
        );
    }

    #[test]
    fn key_strings_fit_the_key_limits() {
        let mut layout = geo_layout();
        assert_eq!(key_string_chars(&layout), 254);
        layout.keys.push(col("region", AttrType::String));
        // (2680 - 132 - 3 × 12) / 12 = 209
        assert_eq!(key_string_chars(&layout), 209);
        layout.keys.push(col("zone", AttrType::String));
        assert_eq!(key_string_chars(&layout), 156);
        layout.keys.push(col("n", AttrType::Long));
        // (2680 - 132 - 20 - 4 × 12) / 16 = 155
        assert_eq!(key_string_chars(&layout), 155);
        for k in 1..=40 {
            let mut l = geo_layout();
            l.keys = (0..k)
                .map(|i| col(&format!("k{i}"), AttrType::String))
                .collect();
            l.keys.push(col("n", AttrType::Double));
            let n = key_string_chars(&l);
            // MySQL: data bytes only.
            let mysql = 8 + 80 + 8 + 8 + 4 * k * n;
            assert!(mysql <= MYSQL_MAX_KEY_BYTES, "{k} keys: {mysql} bytes");
            // PostgreSQL: tuple header, then each column padded to 8 with a 4-byte header.
            let pg = 8 + 8 + (4 + 80 + 7) + 8 + k * (4 + 4 * n + 7) + 8;
            assert!(pg <= POSTGRES_MAX_INDEX_ROW_BYTES, "{k} keys: {pg} bytes");
        }
    }

    #[test]
    fn identifiers_are_checked() {
        assert!(check_identifier("GeoLocationAgg_SECONDS").is_ok());
        assert!(check_identifier("_x1").is_ok());
        assert!(check_identifier("").is_err());
        assert!(check_identifier("1x").is_err());
        assert!(check_identifier("a\"b").is_err());
        assert!(check_identifier("a b").is_err());
        assert!(check_identifier("città").is_err());
        assert!(check_identifier(&"x".repeat(63)).is_ok());
        assert!(check_identifier(&"x".repeat(64)).is_err());

        let mut layout = geo_layout();
        layout.latest.push(col("COUNTRY", AttrType::String));
        assert!(matches!(
            TableDef::new(&layout, Granularity::Days, true),
            Err(StoreError::InvalidIdentifier { name, .. }) if name == "COUNTRY"
        ));
        let mut layout = geo_layout();
        layout.keys.push(col("shard_id", AttrType::String));
        assert!(TableDef::new(&layout, Granularity::Days, true).is_err());
        let mut layout = geo_layout();
        layout.aggregation = "x".repeat(56);
        assert!(TableDef::new(&layout, Granularity::Seconds, true).is_err());
    }

    #[test]
    fn values_are_checked() {
        let layout = geo_layout();
        let ok = |c, v| check_value(&layout, c, v);
        assert_eq!(ok(ColumnRef::Key(0), ValueRef::String("Italy")), Ok(()));
        assert_eq!(
            ok(ColumnRef::Key(0), ValueRef::Null),
            Err(ValueError::NullKey)
        );
        assert_eq!(ok(ColumnRef::Latest(0), ValueRef::Null), Ok(()));
        let long = "é".repeat(254);
        assert_eq!(ok(ColumnRef::Latest(0), ValueRef::String(&long)), Ok(()));
        let longer = "🍕".repeat(255);
        assert_eq!(
            ok(ColumnRef::Latest(0), ValueRef::String(&longer)),
            Err(ValueError::TooLong {
                max_chars: 254,
                chars: 255
            })
        );
        assert_eq!(
            ok(ColumnRef::Key(1), ValueRef::String("a\0b")),
            Err(ValueError::ContainsNul)
        );
        assert_eq!(ok(ColumnRef::Measure(0), ValueRef::Int(3)), Ok(()));
        assert_eq!(
            ok(ColumnRef::Measure(0), ValueRef::Double(3.0)),
            Err(ValueError::TypeMismatch {
                expected: AttrType::Long,
                got: AttrType::Double
            })
        );
        assert!(matches!(
            check_typed(AttrType::Double, 0, false, ValueRef::Double(f64::NAN)),
            Err(ValueError::NotFinite { .. })
        ));
        assert!(matches!(
            check_typed(AttrType::Float, 0, false, ValueRef::Float(f32::INFINITY)),
            Err(ValueError::NotFinite { .. })
        ));
        assert_eq!(
            check_typed(AttrType::Double, 0, false, ValueRef::Float(1.5)),
            Ok(())
        );
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("shard id", "wso2-am-analytics-1", 20).is_ok());
        assert!(check_id("shard id", "wso2-am-analytics-123", 20).is_err());
        assert!(check_id("shard id", "", 20).is_err());
        assert!(check_id("shard id", "a\0", 20).is_err());
        assert!(check_id("shard id", &"é".repeat(20), 20).is_ok());
    }
}
