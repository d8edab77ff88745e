//! Evaluating expressions over rows of values, and the value orderings, hashing and coercions the
//! engine and retrieval share.
//!
//! An [`Expr`] is compiled once into a [`Compiled`] whose attributes are positions in a row;
//! evaluation never allocates: results are [`ValueRef`]s borrowing the row or the expression's
//! literals. Null semantics: arithmetic with a null is null, a comparison with a null is false,
//! `and`/`or`/`not` read a null as false, integer division or remainder by zero is null (Siddhi
//! would drop the event with an error; here the event still counts).

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use shardtally_publisher::protocol::{AttrType, Value, ValueRef};

use super::error::ParseError;
use super::expr::{BinaryOp, Expr, ExprKind, UnaryOp};

/// A row of values that compiled expressions read by position.
pub(crate) trait Row {
    /// The value at `i` (null when out of range).
    fn get(&self, i: usize) -> ValueRef<'_>;
}

impl Row for [ValueRef<'_>] {
    fn get(&self, i: usize) -> ValueRef<'_> {
        <[ValueRef<'_>]>::get(self, i)
            .copied()
            .unwrap_or(ValueRef::Null)
    }
}

impl Row for [Value] {
    fn get(&self, i: usize) -> ValueRef<'_> {
        <[Value]>::get(self, i).map_or(ValueRef::Null, Value::as_ref)
    }
}

/// An expression with attributes resolved to row positions.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Compiled {
    /// A constant.
    Lit(Value),
    /// The value at a row position.
    Slot(usize),
    /// `-x`
    Neg(Box<Compiled>),
    /// `not x`
    Not(Box<Compiled>),
    /// `x is null`
    IsNull(Box<Compiled>),
    /// `a op b`
    Bin(BinaryOp, Box<Compiled>, Box<Compiled>),
}

impl Compiled {
    /// Compiles `e`; `slot` maps each attribute and each aggregate call to its row position.
    pub(crate) fn new(
        e: &Expr,
        slot: &mut dyn FnMut(&Expr) -> Result<usize, ParseError>,
    ) -> Result<Compiled, ParseError> {
        Ok(match &e.kind {
            ExprKind::Literal(v) => Compiled::Lit(v.clone()),
            ExprKind::Attribute(_) | ExprKind::Call(..) => Compiled::Slot(slot(e)?),
            ExprKind::Unary(UnaryOp::Neg, x) => Compiled::Neg(Box::new(Compiled::new(x, slot)?)),
            ExprKind::Unary(UnaryOp::Not, x) => Compiled::Not(Box::new(Compiled::new(x, slot)?)),
            ExprKind::IsNull(x) => Compiled::IsNull(Box::new(Compiled::new(x, slot)?)),
            ExprKind::Binary(op, a, b) => Compiled::Bin(
                *op,
                Box::new(Compiled::new(a, slot)?),
                Box::new(Compiled::new(b, slot)?),
            ),
        })
    }

    /// Evaluates over `row`.
    pub(crate) fn eval<'a, R: Row + ?Sized>(&'a self, row: &'a R) -> ValueRef<'a> {
        match self {
            Compiled::Lit(v) => v.as_ref(),
            Compiled::Slot(i) => row.get(*i),
            Compiled::Neg(x) => neg(x.eval(row)),
            Compiled::Not(x) => ValueRef::Bool(!truthy(x.eval(row))),
            Compiled::IsNull(x) => ValueRef::Bool(x.eval(row).is_null()),
            Compiled::Bin(BinaryOp::And, a, b) => {
                ValueRef::Bool(truthy(a.eval(row)) && truthy(b.eval(row)))
            }
            Compiled::Bin(BinaryOp::Or, a, b) => {
                ValueRef::Bool(truthy(a.eval(row)) || truthy(b.eval(row)))
            }
            Compiled::Bin(op, a, b) if op.is_comparison() => {
                ValueRef::Bool(compare(*op, a.eval(row), b.eval(row)))
            }
            Compiled::Bin(op, a, b) => arith(*op, a.eval(row), b.eval(row)),
        }
    }

    /// Whether the expression is true over `row` (null and non-bools are not).
    pub(crate) fn test<R: Row + ?Sized>(&self, row: &R) -> bool {
        truthy(self.eval(row))
    }
}

/// Whether `v` is `true`.
pub(crate) fn truthy(v: ValueRef<'_>) -> bool {
    matches!(v, ValueRef::Bool(true))
}

fn neg(v: ValueRef<'_>) -> ValueRef<'static> {
    match v {
        ValueRef::Int(x) => ValueRef::Int(x.wrapping_neg()),
        ValueRef::Long(x) => ValueRef::Long(x.wrapping_neg()),
        ValueRef::Float(x) => ValueRef::Float(-x),
        ValueRef::Double(x) => ValueRef::Double(-x),
        _ => ValueRef::Null,
    }
}

/// Numeric rank for promotion: int < long < float < double.
fn rank(v: ValueRef<'_>) -> Option<u8> {
    match v {
        ValueRef::Int(_) => Some(0),
        ValueRef::Long(_) => Some(1),
        ValueRef::Float(_) => Some(2),
        ValueRef::Double(_) => Some(3),
        _ => None,
    }
}

/// A numeric value as i64 (floats truncated; used only for integral values).
fn as_i64(v: ValueRef<'_>) -> i64 {
    match v {
        ValueRef::Int(x) => i64::from(x),
        ValueRef::Long(x) => x,
        _ => 0,
    }
}

/// A numeric value as f64 (non-numbers as NaN).
pub(crate) fn as_f64(v: ValueRef<'_>) -> f64 {
    match v {
        ValueRef::Int(x) => f64::from(x),
        #[allow(clippy::cast_precision_loss)]
        ValueRef::Long(x) => x as f64,
        ValueRef::Float(x) => f64::from(x),
        ValueRef::Double(x) => x,
        _ => f64::NAN,
    }
}

#[allow(clippy::cast_possible_truncation)]
fn as_f32(v: ValueRef<'_>) -> f32 {
    match v {
        ValueRef::Float(x) => x,
        other => as_f64(other) as f32,
    }
}

/// `a op b` for `+ - * / %`, promoting like Siddhi; null when either side is null or not a
/// number, or on integer division by zero. Integer overflow wraps, as in Java.
pub(crate) fn arith(op: BinaryOp, a: ValueRef<'_>, b: ValueRef<'_>) -> ValueRef<'static> {
    let (Some(ra), Some(rb)) = (rank(a), rank(b)) else {
        return ValueRef::Null;
    };
    match ra.max(rb) {
        0 | 1 => {
            let (x, y) = (as_i64(a), as_i64(b));
            let r = match op {
                BinaryOp::Add => Some(x.wrapping_add(y)),
                BinaryOp::Sub => Some(x.wrapping_sub(y)),
                BinaryOp::Mul => Some(x.wrapping_mul(y)),
                BinaryOp::Div => (y != 0).then(|| x.wrapping_div(y)),
                BinaryOp::Mod => (y != 0).then(|| x.wrapping_rem(y)),
                _ => None,
            };
            match (r, ra.max(rb)) {
                (None, _) => ValueRef::Null,
                // int op int: compute in i32 so overflow wraps like Java's int.
                #[allow(clippy::cast_possible_truncation)]
                (Some(_), 0) => {
                    let (x, y) = (x as i32, y as i32);
                    ValueRef::Int(match op {
                        BinaryOp::Add => x.wrapping_add(y),
                        BinaryOp::Sub => x.wrapping_sub(y),
                        BinaryOp::Mul => x.wrapping_mul(y),
                        BinaryOp::Div => x.wrapping_div(y),
                        _ => x.wrapping_rem(y),
                    })
                }
                (Some(r), _) => ValueRef::Long(r),
            }
        }
        2 => {
            let (x, y) = (as_f32(a), as_f32(b));
            ValueRef::Float(match op {
                BinaryOp::Add => x + y,
                BinaryOp::Sub => x - y,
                BinaryOp::Mul => x * y,
                BinaryOp::Div => x / y,
                _ => x % y,
            })
        }
        _ => {
            let (x, y) = (as_f64(a), as_f64(b));
            ValueRef::Double(match op {
                BinaryOp::Add => x + y,
                BinaryOp::Sub => x - y,
                BinaryOp::Mul => x * y,
                BinaryOp::Div => x / y,
                _ => x % y,
            })
        }
    }
}

/// A comparison; false when either side is null or the kinds do not compare.
pub(crate) fn compare(op: BinaryOp, a: ValueRef<'_>, b: ValueRef<'_>) -> bool {
    let ord = match (a, b) {
        (ValueRef::Null, _) | (_, ValueRef::Null) => return false,
        (ValueRef::String(x), ValueRef::String(y)) => x.cmp(y),
        (ValueRef::Bool(x), ValueRef::Bool(y)) => {
            return match op {
                BinaryOp::Eq => x == y,
                BinaryOp::Ne => x != y,
                _ => false,
            };
        }
        _ => match (rank(a), rank(b)) {
            (Some(ra), Some(rb)) if ra <= 1 && rb <= 1 => as_i64(a).cmp(&as_i64(b)),
            (Some(_), Some(_)) => match as_f64(a).partial_cmp(&as_f64(b)) {
                Some(o) => o,
                // NaN: only `!=` holds.
                None => return op == BinaryOp::Ne,
            },
            _ => return false,
        },
    };
    match op {
        BinaryOp::Eq => ord == Ordering::Equal,
        BinaryOp::Ne => ord != Ordering::Equal,
        BinaryOp::Lt => ord == Ordering::Less,
        BinaryOp::Le => ord != Ordering::Greater,
        BinaryOp::Gt => ord == Ordering::Greater,
        BinaryOp::Ge => ord != Ordering::Less,
        _ => false,
    }
}

fn variant_rank(v: ValueRef<'_>) -> u8 {
    match v {
        ValueRef::Null => 0,
        ValueRef::Bool(_) => 1,
        ValueRef::Int(_) => 2,
        ValueRef::Long(_) => 3,
        ValueRef::Float(_) => 4,
        ValueRef::Double(_) => 5,
        ValueRef::String(_) => 6,
    }
}

/// The strict total order of group keys: by variant, then by value (floats by
/// [`f64::total_cmp`]). `Equal` exactly when the values are bitwise identical, which is the key
/// equality used everywhere ([`key_eq`], [`hash_key_value`]).
pub(crate) fn key_cmp(a: ValueRef<'_>, b: ValueRef<'_>) -> Ordering {
    match (a, b) {
        (ValueRef::Bool(x), ValueRef::Bool(y)) => x.cmp(&y),
        (ValueRef::Int(x), ValueRef::Int(y)) => x.cmp(&y),
        (ValueRef::Long(x), ValueRef::Long(y)) => x.cmp(&y),
        // `+ 0.0` makes -0.0 +0.0: the databases' keys hold them equal, so must the groups
        // (two rows of one primary key in a single upsert is an error on PostgreSQL).
        (ValueRef::Float(x), ValueRef::Float(y)) => (x + 0.0).total_cmp(&(y + 0.0)),
        (ValueRef::Double(x), ValueRef::Double(y)) => (x + 0.0).total_cmp(&(y + 0.0)),
        (ValueRef::String(x), ValueRef::String(y)) => x.cmp(y),
        _ => variant_rank(a).cmp(&variant_rank(b)),
    }
}

/// Key equality: same variant, bitwise-equal value (-0.0 and +0.0 equal).
pub(crate) fn key_eq(a: ValueRef<'_>, b: ValueRef<'_>) -> bool {
    key_cmp(a, b) == Ordering::Equal
}

/// Compares two key vectors element-wise with [`key_cmp`].
pub(crate) fn keys_cmp(a: &[Value], b: &[Value]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        let o = key_cmp(x.as_ref(), y.as_ref());
        if o != Ordering::Equal {
            return o;
        }
    }
    a.len().cmp(&b.len())
}

/// Hashes a key value consistently with [`key_eq`].
pub(crate) fn hash_key_value<H: Hasher>(v: ValueRef<'_>, h: &mut H) {
    h.write_u8(variant_rank(v));
    match v {
        ValueRef::Null => {}
        ValueRef::Bool(x) => x.hash(h),
        ValueRef::Int(x) => x.hash(h),
        ValueRef::Long(x) => x.hash(h),
        ValueRef::Float(x) => (x + 0.0).to_bits().hash(h),
        ValueRef::Double(x) => (x + 0.0).to_bits().hash(h),
        ValueRef::String(s) => s.hash(h),
    }
}

/// The order of `order by` and of sorted output: null first, then bools, numbers by value
/// (across int/long/float/double), strings by bytes; ties between kinds by variant.
pub(crate) fn sort_cmp(a: ValueRef<'_>, b: ValueRef<'_>) -> Ordering {
    match (rank(a), rank(b)) {
        (Some(ra), Some(rb)) if ra <= 1 && rb <= 1 => as_i64(a).cmp(&as_i64(b)),
        (Some(_), Some(_)) => as_f64(a).total_cmp(&as_f64(b)).then_with(|| key_cmp(a, b)),
        _ => key_cmp(a, b),
    }
}

/// Converts a value to `ty`: numbers convert between numeric types (as Java's casts do), other
/// mismatches become null. Nulls stay null.
pub(crate) fn coerce(v: ValueRef<'_>, ty: AttrType) -> Value {
    match (ty, v) {
        (_, ValueRef::Null) => Value::Null,
        (AttrType::String, ValueRef::String(s)) => Value::String(s.to_owned()),
        (AttrType::Bool, ValueRef::Bool(b)) => Value::Bool(b),
        (AttrType::Int, ValueRef::Int(x)) => Value::Int(x),
        #[allow(clippy::cast_possible_truncation)]
        (AttrType::Int, ValueRef::Long(x)) => Value::Int(x as i32),
        #[allow(clippy::cast_possible_truncation)]
        (AttrType::Int, ValueRef::Float(_) | ValueRef::Double(_)) => Value::Int(as_f64(v) as i32),
        (AttrType::Long, ValueRef::Int(_) | ValueRef::Long(_)) => Value::Long(as_i64(v)),
        #[allow(clippy::cast_possible_truncation)]
        (AttrType::Long, ValueRef::Float(_) | ValueRef::Double(_)) => Value::Long(as_f64(v) as i64),
        (
            AttrType::Float,
            ValueRef::Int(_) | ValueRef::Long(_) | ValueRef::Float(_) | ValueRef::Double(_),
        ) => Value::Float(as_f32(v)),
        (
            AttrType::Double,
            ValueRef::Int(_) | ValueRef::Long(_) | ValueRef::Float(_) | ValueRef::Double(_),
        ) => Value::Double(as_f64(v)),
        _ => Value::Null,
    }
}

/// Overwrites `slot` with `v`, reusing `slot`'s string buffer when both are strings (so keeping
/// a latest value does not allocate once its buffer is large enough).
pub(crate) fn assign(slot: &mut Value, v: ValueRef<'_>) {
    match (slot, v) {
        (Value::String(buf), ValueRef::String(s)) => {
            buf.clear();
            buf.push_str(s);
        }
        (slot, v) => *slot = v.to_owned_value(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::siddhi::expr::parse_expr;
    use crate::siddhi::parser::Parser;

    fn eval_with(src: &str, row: &[ValueRef<'_>]) -> Value {
        let mut p = Parser::new(src).unwrap();
        let e = parse_expr(&mut p).unwrap();
        let names = ["i", "l", "f", "d", "s", "b", "n"];
        let c = Compiled::new(&e, &mut |e| {
            let name = e.as_attribute().unwrap();
            Ok(names.iter().position(|n| *n == name).unwrap())
        })
        .unwrap();
        c.eval(row).to_owned_value()
    }

    fn ev(src: &str) -> Value {
        let row = [
            ValueRef::Int(7),
            ValueRef::Long(10),
            ValueRef::Float(1.5),
            ValueRef::Double(2.25),
            ValueRef::String("Naples"),
            ValueRef::Bool(true),
            ValueRef::Null,
        ];
        eval_with(src, &row)
    }

    #[test]
    fn arithmetic_follows_siddhi_types() {
        assert_eq!(ev("i * 2"), Value::Int(14));
        assert_eq!(ev("i / 2"), Value::Int(3));
        assert_eq!(ev("i % 4"), Value::Int(3));
        assert_eq!(ev("i + l"), Value::Long(17));
        assert_eq!(ev("f * i"), Value::Float(10.5));
        assert_eq!(ev("f + d"), Value::Double(3.75));
        assert_eq!(ev("-i"), Value::Int(-7));
        assert_eq!(ev("i / 0"), Value::Null);
        assert_eq!(ev("l % 0"), Value::Null);
        assert_eq!(ev("d / 0"), Value::Double(f64::INFINITY));
        assert_eq!(ev("n + 1"), Value::Null);
        assert_eq!(ev("2147483647 + 1"), Value::Int(i32::MIN));
        assert_eq!(ev("-2147483648 / -1"), Value::Int(i32::MIN));
    }

    #[test]
    fn comparisons_and_logic_handle_nulls() {
        assert_eq!(ev("i > 6.5"), Value::Bool(true));
        assert_eq!(ev("l == 10"), Value::Bool(true));
        assert_eq!(ev("s == 'Naples' and b"), Value::Bool(true));
        assert_eq!(ev("s < 'Milan'"), Value::Bool(false));
        assert_eq!(ev("n == n"), Value::Bool(false));
        assert_eq!(ev("n != 1"), Value::Bool(false));
        assert_eq!(ev("n is null"), Value::Bool(true));
        assert_eq!(ev("not (n == 1)"), Value::Bool(true));
        assert_eq!(ev("n or b"), Value::Bool(true));
        assert_eq!(ev("b == false"), Value::Bool(false));
        assert_eq!(ev("(d / 0 - d / 0) != 0.0"), Value::Bool(true));
    }

    #[test]
    fn orders_and_coerces() {
        use ValueRef::*;
        assert_eq!(sort_cmp(Int(2), Double(1.5)), Ordering::Greater);
        assert_eq!(sort_cmp(Null, Int(-5)), Ordering::Less);
        assert_eq!(
            sort_cmp(Long(i64::MAX), Long(i64::MAX - 1)),
            Ordering::Greater
        );
        assert_eq!(key_cmp(Int(1), Long(1)), Ordering::Less);
        // -0.0 and 0.0 are one key, as in the databases' primary keys; and hash alike.
        assert!(key_eq(Double(0.0), Double(-0.0)));
        assert!(key_eq(Float(-0.0), Float(0.0)));
        let hash = |v| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            hash_key_value(v, &mut h);
            std::hash::Hasher::finish(&h)
        };
        assert_eq!(hash(Double(-0.0)), hash(Double(0.0)));
        assert_ne!(hash(Double(1.0)), hash(Double(0.0)));
        assert!(key_eq(Double(f64::NAN), Double(f64::NAN)));
        assert_eq!(coerce(Double(3.0), AttrType::Long), Value::Long(3));
        assert_eq!(coerce(Double(3.5), AttrType::Float), Value::Float(3.5));
        assert_eq!(coerce(String("x"), AttrType::Int), Value::Null);
        let mut slot = Value::String(std::string::String::with_capacity(16));
        assign(&mut slot, String("abc"));
        assert_eq!(slot, Value::from("abc"));
        assign(&mut slot, Int(3));
        assert_eq!(slot, Value::Int(3));
    }
}
