//! Typed attribute values, as they travel on the wire and as the worker aggregates them.
//!
//! The type system is Siddhi's: `string`, `int`, `long`, `float`, `double`, `bool`, and any value
//! may be null. [`Value`] owns its data (what a gateway builds); [`ValueRef`] borrows it (what the
//! worker decodes straight out of a received frame without copying strings).

use std::fmt;

/// The type of a stream attribute, as written in a Siddhi `define stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttrType {
    /// UTF-8 text.
    String,
    /// 32-bit signed integer.
    Int,
    /// 64-bit signed integer (also used for epoch-millisecond timestamps).
    Long,
    /// 32-bit IEEE float.
    Float,
    /// 64-bit IEEE float.
    Double,
    /// Boolean.
    Bool,
}

impl AttrType {
    /// The Siddhi keyword for this type (`string`, `int`, …).
    pub fn keyword(self) -> &'static str {
        match self {
            AttrType::String => "string",
            AttrType::Int => "int",
            AttrType::Long => "long",
            AttrType::Float => "float",
            AttrType::Double => "double",
            AttrType::Bool => "bool",
        }
    }

    /// Parses a Siddhi type keyword (case-insensitive; `boolean` is accepted for `bool`).
    pub fn from_keyword(word: &str) -> Option<AttrType> {
        Some(match word.to_ascii_lowercase().as_str() {
            "string" => AttrType::String,
            "int" => AttrType::Int,
            "long" => AttrType::Long,
            "float" => AttrType::Float,
            "double" => AttrType::Double,
            "bool" | "boolean" => AttrType::Bool,
            _ => return None,
        })
    }

    /// Whether values of this type are numbers (can be summed, averaged).
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            AttrType::Int | AttrType::Long | AttrType::Float | AttrType::Double
        )
    }
}

impl fmt::Display for AttrType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())
    }
}

/// An owned attribute value.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// No value (Siddhi's null).
    #[default]
    Null,
    /// A string.
    String(String),
    /// An `int`.
    Int(i32),
    /// A `long`.
    Long(i64),
    /// A `float`.
    Float(f32),
    /// A `double`.
    Double(f64),
    /// A `bool`.
    Bool(bool),
}

impl Value {
    /// The type of this value, or `None` for null (which fits every type).
    pub fn attr_type(&self) -> Option<AttrType> {
        self.as_ref().attr_type()
    }

    /// Borrows this value.
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::String(s) => ValueRef::String(s),
            Value::Int(v) => ValueRef::Int(*v),
            Value::Long(v) => ValueRef::Long(*v),
            Value::Float(v) => ValueRef::Float(*v),
            Value::Double(v) => ValueRef::Double(*v),
            Value::Bool(v) => ValueRef::Bool(*v),
        }
    }

    /// Whether this value is null.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_ref().fmt(f)
    }
}

/// A borrowed attribute value: strings point into the buffer they were decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ValueRef<'a> {
    /// No value.
    #[default]
    Null,
    /// A string.
    String(&'a str),
    /// An `int`.
    Int(i32),
    /// A `long`.
    Long(i64),
    /// A `float`.
    Float(f32),
    /// A `double`.
    Double(f64),
    /// A `bool`.
    Bool(bool),
}

impl ValueRef<'_> {
    /// The type of this value, or `None` for null.
    pub fn attr_type(&self) -> Option<AttrType> {
        Some(match self {
            ValueRef::Null => return None,
            ValueRef::String(_) => AttrType::String,
            ValueRef::Int(_) => AttrType::Int,
            ValueRef::Long(_) => AttrType::Long,
            ValueRef::Float(_) => AttrType::Float,
            ValueRef::Double(_) => AttrType::Double,
            ValueRef::Bool(_) => AttrType::Bool,
        })
    }

    /// Copies this value into an owned [`Value`].
    pub fn to_owned_value(&self) -> Value {
        match *self {
            ValueRef::Null => Value::Null,
            ValueRef::String(s) => Value::String(s.to_owned()),
            ValueRef::Int(v) => Value::Int(v),
            ValueRef::Long(v) => Value::Long(v),
            ValueRef::Float(v) => Value::Float(v),
            ValueRef::Double(v) => Value::Double(v),
            ValueRef::Bool(v) => Value::Bool(v),
        }
    }

    /// Whether this value is null.
    pub fn is_null(&self) -> bool {
        matches!(self, ValueRef::Null)
    }
}

impl fmt::Display for ValueRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueRef::Null => f.write_str("null"),
            ValueRef::String(s) => f.write_str(s),
            ValueRef::Int(v) => write!(f, "{v}"),
            ValueRef::Long(v) => write!(f, "{v}"),
            ValueRef::Float(v) => write!(f, "{v}"),
            ValueRef::Double(v) => write!(f, "{v}"),
            ValueRef::Bool(v) => write!(f, "{v}"),
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $variant:ident),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::$variant(v.into())
            }
        })*
    };
}

value_from!(String => String, &str => String, i32 => Int, i64 => Long, f32 => Float, f64 => Double, bool => Bool);

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}
