//! [`Event`]: one analytics event as named attribute values.
//!
//! Build it field by field, or from any `serde::Serialize` struct (or string-keyed map) whose
//! fields are scalars:
//!
//! ```
//! use shardtally_publisher::Event;
//!
//! #[derive(serde::Serialize)]
//! struct Request<'a> { api_name: &'a str, status: i32, latency_ms: Option<f64> }
//!
//! let by_hand = Event::new().with("api_name", "PizzaShackAPI").with("status", 200);
//! let derived = Event::from_serialize(&Request { api_name: "PizzaShackAPI", status: 200, latency_ms: None })?;
//! assert_eq!(derived.get("status"), by_hand.get("status"));
//! assert!(derived.get("latency_ms").unwrap().is_null());
//! # Ok::<(), shardtally_publisher::EventError>(())
//! ```
//!
//! Serde mapping: `bool` → bool; `i8`/`i16`/`i32`/`u8`/`u16` → int; `i64`/`u32`/`u64` (when it
//! fits) → long; `f32` → float; `f64` → double; `str`/`char` → string; unit enum variants → their
//! name as a string; `None`/`()` → null; `Some(x)`/newtypes → `x`. Nested structs, lists, maps and
//! bytes are refused with [`EventError::Unsupported`].

use std::borrow::Cow;

use serde::ser::{self, Impossible, Serialize};

use crate::error::EventError;
use crate::protocol::Value;

/// One event: named attribute values, in insertion order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    fields: Vec<(Cow<'static, str>, Value)>,
}

impl Event {
    /// An event without fields.
    pub fn new() -> Event {
        Event::default()
    }

    /// An event with room for `n` fields.
    pub fn with_capacity(n: usize) -> Event {
        Event {
            fields: Vec::with_capacity(n),
        }
    }

    /// Adds (or replaces) a field, builder style.
    #[must_use]
    pub fn with(mut self, name: impl Into<Cow<'static, str>>, value: impl Into<Value>) -> Event {
        self.set(name, value);
        self
    }

    /// Adds a field, or replaces the value of the field of that name.
    pub fn set(&mut self, name: impl Into<Cow<'static, str>>, value: impl Into<Value>) {
        let name = name.into();
        let value = value.into();
        match self.fields.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((name, value)),
        }
    }

    /// The value of a field.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The fields in insertion order.
    pub fn fields(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> {
        self.fields.iter().map(|(n, v)| (n.as_ref(), v))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the event has no field.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Builds an event from a struct (or a map with string keys) of scalar fields.
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Event, EventError> {
        value.serialize(EventSerializer)
    }
}

impl<N: Into<Cow<'static, str>>, V: Into<Value>> FromIterator<(N, V)> for Event {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Event {
        let mut event = Event::new();
        for (n, v) in iter {
            event.set(n, v);
        }
        event
    }
}

/// Serializes a struct or map into an [`Event`].
struct EventSerializer;

/// Collects the fields of a struct or map.
struct FieldCollector {
    event: Event,
    pending_key: Option<String>,
}

macro_rules! not_a_struct {
    ($($method:ident($($arg:ty),*) => $what:literal),* $(,)?) => {
        $(fn $method(self $(, _: $arg)*) -> Result<Event, EventError> {
            Err(EventError::NotAStruct($what))
        })*
    };
}

impl ser::Serializer for EventSerializer {
    type Ok = Event;
    type Error = EventError;
    type SerializeSeq = Impossible<Event, EventError>;
    type SerializeTuple = Impossible<Event, EventError>;
    type SerializeTupleStruct = Impossible<Event, EventError>;
    type SerializeTupleVariant = Impossible<Event, EventError>;
    type SerializeMap = FieldCollector;
    type SerializeStruct = FieldCollector;
    type SerializeStructVariant = Impossible<Event, EventError>;

    not_a_struct!(
        serialize_bool(bool) => "a bool",
        serialize_i8(i8) => "a number",
        serialize_i16(i16) => "a number",
        serialize_i32(i32) => "a number",
        serialize_i64(i64) => "a number",
        serialize_u8(u8) => "a number",
        serialize_u16(u16) => "a number",
        serialize_u32(u32) => "a number",
        serialize_u64(u64) => "a number",
        serialize_f32(f32) => "a number",
        serialize_f64(f64) => "a number",
        serialize_char(char) => "a char",
        serialize_str(&str) => "a string",
        serialize_bytes(&[u8]) => "bytes",
        serialize_none() => "None",
        serialize_unit() => "()",
        serialize_unit_struct(&'static str) => "a unit struct",
        serialize_unit_variant(&'static str, u32, &'static str) => "an enum variant",
    );

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Event, EventError> {
        value.serialize(self)
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Event, EventError> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Event, EventError> {
        Err(EventError::NotAStruct("an enum variant"))
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, EventError> {
        Err(EventError::NotAStruct("a sequence"))
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, EventError> {
        Err(EventError::NotAStruct("a tuple"))
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, EventError> {
        Err(EventError::NotAStruct("a tuple struct"))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, EventError> {
        Err(EventError::NotAStruct("an enum variant"))
    }

    fn serialize_map(self, len: Option<usize>) -> Result<FieldCollector, EventError> {
        Ok(FieldCollector {
            event: Event::with_capacity(len.unwrap_or(0)),
            pending_key: None,
        })
    }

    fn serialize_struct(self, _: &'static str, len: usize) -> Result<FieldCollector, EventError> {
        Ok(FieldCollector {
            event: Event::with_capacity(len),
            pending_key: None,
        })
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, EventError> {
        Err(EventError::NotAStruct("an enum variant"))
    }
}

impl ser::SerializeStruct for FieldCollector {
    type Ok = Event;
    type Error = EventError;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), EventError> {
        let value = value.serialize(ValueSerializer { field: key })?;
        self.event.set(key, value);
        Ok(())
    }

    fn end(self) -> Result<Event, EventError> {
        Ok(self.event)
    }
}

impl ser::SerializeMap for FieldCollector {
    type Ok = Event;
    type Error = EventError;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), EventError> {
        let value = key.serialize(ValueSerializer { field: "<key>" })?;
        match value {
            Value::String(s) => {
                self.pending_key = Some(s);
                Ok(())
            }
            _ => Err(EventError::KeyNotString),
        }
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EventError> {
        let key = self
            .pending_key
            .take()
            .ok_or_else(|| EventError::Custom("map value without a key".into()))?;
        let value = value.serialize(ValueSerializer { field: &key })?;
        self.event.set(key, value);
        Ok(())
    }

    fn end(self) -> Result<Event, EventError> {
        Ok(self.event)
    }
}

/// Serializes one field's value into a [`Value`].
struct ValueSerializer<'f> {
    field: &'f str,
}

impl ValueSerializer<'_> {
    fn unsupported(&self, what: &'static str) -> EventError {
        EventError::Unsupported {
            field: self.field.to_owned(),
            what,
        }
    }
}

impl ser::Serializer for ValueSerializer<'_> {
    type Ok = Value;
    type Error = EventError;
    type SerializeSeq = Impossible<Value, EventError>;
    type SerializeTuple = Impossible<Value, EventError>;
    type SerializeTupleStruct = Impossible<Value, EventError>;
    type SerializeTupleVariant = Impossible<Value, EventError>;
    type SerializeMap = Impossible<Value, EventError>;
    type SerializeStruct = Impossible<Value, EventError>;
    type SerializeStructVariant = Impossible<Value, EventError>;

    fn serialize_bool(self, v: bool) -> Result<Value, EventError> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, EventError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, EventError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, EventError> {
        Ok(Value::Int(v))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, EventError> {
        Ok(Value::Long(v))
    }
    fn serialize_u8(self, v: u8) -> Result<Value, EventError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, EventError> {
        Ok(Value::Int(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, EventError> {
        Ok(Value::Long(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, EventError> {
        i64::try_from(v)
            .map(Value::Long)
            .map_err(|_| EventError::OutOfRange {
                field: self.field.to_owned(),
                value: v.to_string(),
            })
    }
    fn serialize_i128(self, v: i128) -> Result<Value, EventError> {
        i64::try_from(v)
            .map(Value::Long)
            .map_err(|_| EventError::OutOfRange {
                field: self.field.to_owned(),
                value: v.to_string(),
            })
    }
    fn serialize_u128(self, v: u128) -> Result<Value, EventError> {
        i64::try_from(v)
            .map(Value::Long)
            .map_err(|_| EventError::OutOfRange {
                field: self.field.to_owned(),
                value: v.to_string(),
            })
    }
    fn serialize_f32(self, v: f32) -> Result<Value, EventError> {
        Ok(Value::Float(v))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, EventError> {
        Ok(Value::Double(v))
    }
    fn serialize_char(self, v: char) -> Result<Value, EventError> {
        Ok(Value::String(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, EventError> {
        Ok(Value::String(v.to_owned()))
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Value, EventError> {
        Err(self.unsupported("bytes"))
    }
    fn serialize_none(self) -> Result<Value, EventError> {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, EventError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, EventError> {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Value, EventError> {
        Ok(Value::Null)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<Value, EventError> {
        Ok(Value::String(variant.to_owned()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Value, EventError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Value, EventError> {
        Err(self.unsupported("an enum variant with data"))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, EventError> {
        Err(self.unsupported("a sequence"))
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, EventError> {
        Err(self.unsupported("a tuple"))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, EventError> {
        Err(self.unsupported("a tuple struct"))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, EventError> {
        Err(self.unsupported("an enum variant with data"))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, EventError> {
        Err(self.unsupported("a map"))
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, EventError> {
        Err(self.unsupported("a nested struct"))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, EventError> {
        Err(self.unsupported("an enum variant with data"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Serialize;

    use super::*;

    #[derive(Serialize)]
    enum Method {
        Get,
    }

    #[derive(Serialize)]
    struct Wrapped(i64);

    #[derive(Serialize)]
    struct Request<'a> {
        api: &'a str,
        status: u16,
        bytes: u64,
        ok: bool,
        ratio: f32,
        latency: Option<f64>,
        missing: Option<i32>,
        method: Method,
        ts: Wrapped,
        small: i8,
        count: u32,
        grade: char,
    }

    #[test]
    fn struct_fields_map_onto_siddhi_types() {
        let e = Event::from_serialize(&Request {
            api: "Pizza \"Shack\" 🍕",
            status: 200,
            bytes: 42,
            ok: true,
            ratio: 0.5,
            latency: Some(1.25),
            missing: None,
            method: Method::Get,
            ts: Wrapped(1_700_000_000_000),
            small: -3,
            count: 7,
            grade: 'A',
        })
        .unwrap();
        let fields: Vec<(&str, Value)> = e.fields().map(|(n, v)| (n, v.clone())).collect();
        assert_eq!(
            fields,
            vec![
                ("api", Value::String("Pizza \"Shack\" 🍕".into())),
                ("status", Value::Int(200)),
                ("bytes", Value::Long(42)),
                ("ok", Value::Bool(true)),
                ("ratio", Value::Float(0.5)),
                ("latency", Value::Double(1.25)),
                ("missing", Value::Null),
                ("method", Value::String("Get".into())),
                ("ts", Value::Long(1_700_000_000_000)),
                ("small", Value::Int(-3)),
                ("count", Value::Long(7)),
                ("grade", Value::String("A".into())),
            ]
        );
    }

    #[test]
    fn string_keyed_maps_work() {
        let mut m = BTreeMap::new();
        m.insert("a", 1i64);
        m.insert("b", 2i64);
        let e = Event::from_serialize(&m).unwrap();
        assert_eq!(e, Event::new().with("a", 1i64).with("b", 2i64));
        let json = serde_json::json!({"city": "Naples", "n": 3, "x": null});
        let e = Event::from_serialize(&json).unwrap();
        assert_eq!(e.get("city"), Some(&Value::String("Naples".into())));
        assert_eq!(e.get("n"), Some(&Value::Long(3)));
        assert_eq!(e.get("x"), Some(&Value::Null));
    }

    #[test]
    fn non_scalars_are_refused_with_the_field_name() {
        #[derive(Serialize)]
        struct Nested {
            inner: Vec<i32>,
        }
        assert_eq!(
            Event::from_serialize(&Nested { inner: vec![1] }),
            Err(EventError::Unsupported {
                field: "inner".into(),
                what: "a sequence"
            })
        );
        assert_eq!(
            Event::from_serialize(&5i32),
            Err(EventError::NotAStruct("a number"))
        );
        let mut m = BTreeMap::new();
        m.insert(1, 2);
        assert_eq!(Event::from_serialize(&m), Err(EventError::KeyNotString));
        #[derive(Serialize)]
        struct Big {
            n: u64,
        }
        assert!(matches!(
            Event::from_serialize(&Big { n: u64::MAX }),
            Err(EventError::OutOfRange { .. })
        ));
    }

    #[test]
    fn set_replaces_and_keeps_order() {
        let mut e = Event::new().with("a", 1).with("b", "x");
        e.set("a", 2);
        let names: Vec<&str> = e.fields().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(e.get("a"), Some(&Value::Int(2)));
        assert_eq!(e.len(), 2);
        let collected: Event = [("a", 2), ("b", 3)].into_iter().collect();
        assert_eq!(collected.get("b"), Some(&Value::Int(3)));
    }
}
