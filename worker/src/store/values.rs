//! Values crossing into SQL (checked, typed bind parameters) and back (decoded by column type,
//! whatever integer or float width the backend reports).

use std::cmp::Ordering;

use shardtally_publisher::protocol::{AttrType, Value};
use sqlx::any::{AnyArguments, AnyRow, AnyTypeInfoKind, AnyValueRef};
use sqlx::query::Query;
use sqlx::{Any, Decode, Row, TypeInfo, ValueRef as _};

use crate::store::error::ValueError;

/// A query over the Any driver.
pub(crate) type AnyQuery<'q> = Query<'q, Any, AnyArguments<'q>>;

/// One bind parameter, typed by its column (nulls carry the column's type, which PostgreSQL
/// needs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Param<'a> {
    Null(AttrType),
    Str(&'a str),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Bool(bool),
}

impl<'a> Param<'a> {
    /// The parameter for `value` in a column of type `ty` (widening `int` → `long` and
    /// `float` → `double`); the caller has checked the value with
    /// [`crate::store::schema::check_typed`].
    pub(crate) fn of(ty: AttrType, value: &'a Value) -> Result<Param<'a>, ValueError> {
        Ok(match (ty, value) {
            (ty, Value::Null) => Param::Null(ty),
            (AttrType::String, Value::String(s)) => Param::Str(s),
            (AttrType::Int, Value::Int(x)) => Param::Int(*x),
            (AttrType::Long, Value::Long(x)) => Param::Long(*x),
            (AttrType::Long, Value::Int(x)) => Param::Long(i64::from(*x)),
            (AttrType::Float, Value::Float(x)) => Param::Float(*x),
            (AttrType::Double, Value::Double(x)) => Param::Double(*x),
            (AttrType::Double, Value::Float(x)) => Param::Double(f64::from(*x)),
            (AttrType::Bool, Value::Bool(x)) => Param::Bool(*x),
            (expected, v) => {
                return Err(ValueError::TypeMismatch {
                    expected,
                    got: v.attr_type().unwrap_or(expected),
                });
            }
        })
    }

    /// The Siddhi type of the value (a null's is its column's).
    pub(crate) fn ty(self) -> AttrType {
        match self {
            Param::Null(ty) => ty,
            Param::Str(_) => AttrType::String,
            Param::Int(_) => AttrType::Int,
            Param::Long(_) => AttrType::Long,
            Param::Float(_) => AttrType::Float,
            Param::Double(_) => AttrType::Double,
            Param::Bool(_) => AttrType::Bool,
        }
    }

    pub(crate) fn bind(self, q: AnyQuery<'a>) -> AnyQuery<'a> {
        match self {
            Param::Null(AttrType::String) => q.bind(None::<&str>),
            Param::Null(AttrType::Int) => q.bind(None::<i32>),
            Param::Null(AttrType::Long) => q.bind(None::<i64>),
            Param::Null(AttrType::Float) => q.bind(None::<f32>),
            Param::Null(AttrType::Double) => q.bind(None::<f64>),
            Param::Null(AttrType::Bool) => q.bind(None::<bool>),
            Param::Str(s) => q.bind(s),
            Param::Int(x) => q.bind(x),
            Param::Long(x) => q.bind(x),
            Param::Float(x) => q.bind(x),
            Param::Double(x) => q.bind(x),
            Param::Bool(x) => q.bind(x),
        }
    }
}

/// Binds every parameter in order.
pub(crate) fn bind_all<'a>(mut q: AnyQuery<'a>, params: &[Param<'a>]) -> AnyQuery<'a> {
    for p in params {
        q = p.bind(q);
    }
    q
}

/// A `u64` batch sequence as the BIGINT it is stored in: the same 64 bits, so every `u64` has
/// exactly one stored value (those above `i64::MAX` read as negative numbers in SQL).
pub(crate) fn seq_to_db(seq: u64) -> i64 {
    i64::from_ne_bytes(seq.to_ne_bytes())
}

/// The inverse of [`seq_to_db`].
pub(crate) fn seq_from_db(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// Decodes column `i` of `row` as a value of Siddhi type `ty`. `Err` carries a description of
/// what was found.
pub(crate) fn decode(row: &AnyRow, i: usize, ty: AttrType) -> Result<Value, String> {
    let raw: AnyValueRef<'_> = row.try_get_raw(i).map_err(|e| e.to_string())?;
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let kind = raw.type_info().kind();
    let found = || {
        format!(
            "a {} value where a {ty} was expected",
            raw.type_info().name()
        )
    };
    let integer = matches!(
        kind,
        AnyTypeInfoKind::SmallInt | AnyTypeInfoKind::Integer | AnyTypeInfoKind::BigInt
    );
    let err = |e: sqlx::error::BoxDynError| e.to_string();
    Ok(match ty {
        AttrType::String if kind == AnyTypeInfoKind::Text => {
            Value::String(<String as Decode<'_, Any>>::decode(raw.clone()).map_err(err)?)
        }
        AttrType::Int if integer => {
            Value::Int(<i32 as Decode<'_, Any>>::decode(raw.clone()).map_err(err)?)
        }
        AttrType::Long if integer => {
            Value::Long(<i64 as Decode<'_, Any>>::decode(raw.clone()).map_err(err)?)
        }
        AttrType::Float if kind == AnyTypeInfoKind::Real => {
            Value::Float(<f32 as Decode<'_, Any>>::decode(raw.clone()).map_err(err)?)
        }
        AttrType::Float if kind == AnyTypeInfoKind::Double => {
            // SQLite keeps every REAL as a double; it was stored from an f32, so this is exact.
            let x = <f64 as Decode<'_, Any>>::decode(raw.clone()).map_err(err)?;
            #[allow(clippy::cast_possible_truncation)]
            Value::Float(x as f32)
        }
        AttrType::Double if matches!(kind, AnyTypeInfoKind::Real | AnyTypeInfoKind::Double) => {
            Value::Double(<f64 as Decode<'_, Any>>::decode(raw.clone()).map_err(err)?)
        }
        AttrType::Bool if kind == AnyTypeInfoKind::Bool => {
            Value::Bool(<bool as Decode<'_, Any>>::decode(raw.clone()).map_err(err)?)
        }
        AttrType::Bool if integer => {
            Value::Bool(<i64 as Decode<'_, Any>>::decode(raw.clone()).map_err(err)? != 0)
        }
        _ => return Err(found()),
    })
}

/// A total order over values of one column, for sorting rows into a stable lock order.
pub(crate) fn cmp_values(a: &Value, b: &Value) -> Ordering {
    use Value::*;
    match (a, b) {
        (Null, Null) => Ordering::Equal,
        (Null, _) => Ordering::Less,
        (_, Null) => Ordering::Greater,
        (String(x), String(y)) => x.cmp(y),
        (Int(x), Int(y)) => x.cmp(y),
        (Long(x), Long(y)) => x.cmp(y),
        (Float(x), Float(y)) => x.total_cmp(y),
        (Double(x), Double(y)) => x.total_cmp(y),
        (Bool(x), Bool(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

fn rank(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::String(_) => 1,
        Value::Int(_) => 2,
        Value::Long(_) => 3,
        Value::Float(_) => 4,
        Value::Double(_) => 5,
        Value::Bool(_) => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_round_trips_every_u64() {
        for seq in [
            0,
            1,
            u64::from(u32::MAX),
            i64::MAX as u64,
            i64::MAX as u64 + 1,
            u64::MAX,
        ] {
            assert_eq!(seq_from_db(seq_to_db(seq)), seq);
        }
        assert_eq!(seq_to_db(7), 7);
        assert_eq!(seq_to_db(u64::MAX), -1);
    }

    #[test]
    fn params_widen_losslessly_only() {
        assert_eq!(
            Param::of(AttrType::Long, &Value::Int(3)),
            Ok(Param::Long(3))
        );
        assert_eq!(
            Param::of(AttrType::Double, &Value::Float(1.5)),
            Ok(Param::Double(1.5))
        );
        assert_eq!(
            Param::of(AttrType::Int, &Value::Null),
            Ok(Param::Null(AttrType::Int))
        );
        assert!(Param::of(AttrType::Int, &Value::Long(3)).is_err());
        assert!(Param::of(AttrType::String, &Value::Bool(true)).is_err());
    }

    #[test]
    fn values_order_totally() {
        let mut v = [
            Value::from("b"),
            Value::Null,
            Value::from("a"),
            Value::from(2.0),
            Value::from(f64::NAN),
            Value::from(-1.0),
        ];
        v.sort_by(cmp_values);
        assert_eq!(v[0], Value::Null);
        assert_eq!(v[1], Value::from("a"));
        assert_eq!(v[2], Value::from("b"));
        assert_eq!(v[3], Value::from(-1.0));
        assert_eq!(v[4], Value::from(2.0));
    }
}
