//! The scenario file as YAML spells it: serde shapes with positions, before validation.
//!
//! Every struct denies unknown keys. Values whose checks need a custom message (counts, rates,
//! durations, percentages) are read as a [`Literal`] and checked in `validate`.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::error::Pos;
use super::model::Literal;

/// The position a spanned value was written at.
pub(crate) fn pos_of<T>(s: &Spanned<T>) -> Option<Pos> {
    Pos::from_location(s.referenced)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawScenario {
    pub(crate) name: Spanned<String>,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) app: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) seed: Option<Spanned<Literal>>,
    pub(crate) cluster: Spanned<RawCluster>,
    pub(crate) phases: Spanned<Vec<Spanned<RawPhase>>>,
    #[serde(default)]
    pub(crate) faults: Vec<Spanned<RawFault>>,
    #[serde(default)]
    pub(crate) expect: Vec<Spanned<RawExpect>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    #[serde(default)]
    pub(crate) workers: Option<Spanned<Vec<Spanned<RawWorker>>>>,
    #[serde(default)]
    pub(crate) endpoints: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) database: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) flush_interval: Option<Spanned<Literal>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWorker {
    pub(crate) node_id: Spanned<String>,
    #[serde(default)]
    pub(crate) shard_id: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPhase {
    pub(crate) name: Spanned<String>,
    pub(crate) stream: Spanned<String>,
    pub(crate) events: Spanned<Literal>,
    #[serde(default)]
    pub(crate) rate: Option<Spanned<Literal>>,
    #[serde(default)]
    pub(crate) route: Option<Spanned<RawRoute>>,
    #[serde(default)]
    pub(crate) publishers: Option<Spanned<Literal>>,
    #[serde(default)]
    pub(crate) fields: Option<Spanned<OrderedMap<Spanned<String>, Spanned<RawField>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) workers: Spanned<Vec<Spanned<String>>>,
}

/// A field's value: a constant scalar or a generator map.
#[derive(Debug)]
pub(crate) enum RawField {
    Constant(Literal),
    Generator(Box<RawGenerator>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGenerator {
    #[serde(default)]
    pub(crate) one_of: Option<Spanned<Vec<Spanned<Literal>>>>,
    #[serde(default)]
    pub(crate) weights: Option<Spanned<Vec<Spanned<Literal>>>>,
    #[serde(default)]
    pub(crate) between: Option<Spanned<Vec<Spanned<Literal>>>>,
    #[serde(default)]
    pub(crate) zipf: Option<Spanned<RawZipf>>,
    #[serde(default)]
    pub(crate) sequence: Option<Spanned<RawSequence>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawZipf {
    pub(crate) values: Spanned<Vec<Spanned<Literal>>>,
    #[serde(default)]
    pub(crate) s: Option<Spanned<Literal>>,
}

/// `sequence: [a, b, c]` or `sequence: { start: …, step: … }`.
#[derive(Debug)]
pub(crate) enum RawSequence {
    Cycle(Vec<Spanned<Literal>>),
    Counter(RawCounter),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCounter {
    #[serde(default)]
    pub(crate) start: Option<Spanned<Literal>>,
    #[serde(default)]
    pub(crate) step: Option<Spanned<Literal>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFault {
    pub(crate) at: Spanned<Literal>,
    #[serde(default)]
    pub(crate) kill: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) restart: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExpect {
    #[serde(default)]
    pub(crate) query: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) rows: Option<Spanned<Vec<RawRow>>>,
    #[serde(default)]
    pub(crate) shards: Option<Spanned<RawShards>>,
    #[serde(default)]
    pub(crate) delivered: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) latency: Option<Spanned<RawLatency>>,
}

/// One expected row: spanned cells.
pub(crate) type RawRow = Spanned<Vec<Spanned<serde_json::Value>>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawShards {
    pub(crate) aggregation: Spanned<String>,
    pub(crate) per: Spanned<String>,
    pub(crate) counts: Spanned<OrderedMap<Spanned<String>, Spanned<Literal>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLatency {
    #[serde(default)]
    pub(crate) p50: Option<Spanned<Literal>>,
    #[serde(default)]
    pub(crate) p90: Option<Spanned<Literal>>,
    #[serde(default)]
    pub(crate) p99: Option<Spanned<Literal>>,
    #[serde(default)]
    pub(crate) p999: Option<Spanned<Literal>>,
    #[serde(default)]
    pub(crate) max: Option<Spanned<Literal>>,
}

/// A YAML mapping kept in file order (duplicate keys are rejected by the parser).
#[derive(Debug)]
pub(crate) struct OrderedMap<K, V>(pub(crate) Vec<(K, V)>);

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for MapVisitor<K, V> {
            type Value = OrderedMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(OrderedMap(entries))
            }
        }
        deserializer.deserialize_map(MapVisitor(std::marker::PhantomData))
    }
}

/// Visits any YAML scalar into a [`Literal`]; sequences and mappings are errors.
struct LiteralVisitor;

impl<'de> Visitor<'de> for LiteralVisitor {
    type Value = Literal;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a scalar (string, number, bool or null)")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Literal, E> {
        Ok(Literal::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Literal, E> {
        Ok(Literal::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Literal, E> {
        i64::try_from(v)
            .map(Literal::Int)
            .map_err(|_| E::custom(format!("integer {v} is too large (max {})", i64::MAX)))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Literal, E> {
        i64::try_from(v)
            .map(Literal::Int)
            .map_err(|_| E::custom(format!("integer {v} is out of range")))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Literal, E> {
        i64::try_from(v)
            .map(Literal::Int)
            .map_err(|_| E::custom(format!("integer {v} is out of range")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Literal, E> {
        Ok(Literal::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Literal, E> {
        Ok(Literal::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Literal, E> {
        Ok(Literal::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Literal, E> {
        Ok(Literal::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Literal, E> {
        Ok(Literal::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Literal, D::Error> {
        deserializer.deserialize_any(LiteralVisitor)
    }
}

impl<'de> Deserialize<'de> for Literal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LiteralVisitor)
    }
}

impl<'de> Deserialize<'de> for RawField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl<'de> Visitor<'de> for FieldVisitor {
            type Value = RawField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a constant or a generator ({ one_of: […] }, { between: [lo, hi] }, \
                     { zipf: {…} }, { sequence: … })",
                )
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawField, E> {
                LiteralVisitor.visit_bool(v).map(RawField::Constant)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawField, E> {
                LiteralVisitor.visit_i64(v).map(RawField::Constant)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawField, E> {
                LiteralVisitor.visit_u64(v).map(RawField::Constant)
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<RawField, E> {
                LiteralVisitor.visit_i128(v).map(RawField::Constant)
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<RawField, E> {
                LiteralVisitor.visit_u128(v).map(RawField::Constant)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawField, E> {
                LiteralVisitor.visit_f64(v).map(RawField::Constant)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawField, E> {
                LiteralVisitor.visit_str(v).map(RawField::Constant)
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RawField, E> {
                LiteralVisitor.visit_string(v).map(RawField::Constant)
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawField, E> {
                Ok(RawField::Constant(Literal::Null))
            }
            fn visit_none<E: de::Error>(self) -> Result<RawField, E> {
                Ok(RawField::Constant(Literal::Null))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<RawField, A::Error> {
                Err(de::Error::custom(
                    "a list is not a field value; write { one_of: [...] } to pick from it or \
                     { sequence: [...] } to cycle through it",
                ))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawField, A::Error> {
                RawGenerator::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|g| RawField::Generator(Box::new(g)))
            }
        }
        deserializer.deserialize_any(FieldVisitor)
    }
}

impl<'de> Deserialize<'de> for RawSequence {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SequenceVisitor;
        impl<'de> Visitor<'de> for SequenceVisitor {
            type Value = RawSequence;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of values to cycle through, or { start: …, step: … }")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawSequence, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(RawSequence::Cycle(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawSequence, A::Error> {
                RawCounter::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawSequence::Counter)
            }
        }
        deserializer.deserialize_any(SequenceVisitor)
    }
}
