//! Stream schemas: the named, typed attributes of a Siddhi `define stream`, with what the
//! worker's store can hold of each.

use super::value::{AttrType, ValueRef};

/// One attribute of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attribute {
    /// Attribute name, as in the `define stream` (case-sensitive).
    pub name: String,
    /// Attribute type.
    pub ty: AttrType,
    /// Null is refused: the attribute is a group-by key of some aggregation (a primary-key
    /// column, which no backend lets be null).
    pub required: bool,
    /// The most characters a string value may have (its column's length); `None`: no limit
    /// beyond the frame's.
    pub max_chars: Option<u32>,
}

impl Attribute {
    /// Builds an attribute that may be null, without a length limit.
    pub fn new(name: impl Into<String>, ty: AttrType) -> Attribute {
        Attribute {
            name: name.into(),
            ty,
            required: false,
            max_chars: None,
        }
    }

    /// The same attribute, refusing null (a group-by key).
    #[must_use]
    pub fn required(mut self) -> Attribute {
        self.required = true;
        self
    }

    /// The same attribute, refusing strings of more than `max_chars` characters.
    #[must_use]
    pub fn max_chars(mut self, max_chars: u32) -> Attribute {
        self.max_chars = Some(max_chars);
        self
    }

    /// Checks that `value` fits this attribute: its type (or null, unless
    /// [`required`](Attribute::required)), and what every backend can store — strings without
    /// NUL and of at most [`max_chars`](Attribute::max_chars) characters, finite numbers.
    ///
    /// Returns a human-readable reason when it does not (without the attribute's name).
    pub fn check(&self, value: ValueRef<'_>) -> Result<(), String> {
        match value {
            ValueRef::Null if self.required => {
                return Err("null, but it is a group-by key, which must not be null".into());
            }
            ValueRef::Null => return Ok(()),
            _ => {}
        }
        if let Some(ty) = value.attr_type()
            && ty != self.ty
        {
            return Err(format!("{} expected, got a {ty} value", self.ty));
        }
        match value {
            ValueRef::String(text) => {
                if text.contains('\0') {
                    return Err("strings must not contain NUL characters".into());
                }
                // Characters are only counted when the byte length could exceed the limit.
                if let Some(max) = self.max_chars
                    && text.len() > max as usize
                {
                    let chars = text.chars().count();
                    if chars > max as usize {
                        return Err(format!(
                            "a string of {chars} characters; the store holds at most {max}"
                        ));
                    }
                }
                Ok(())
            }
            ValueRef::Float(x) if !x.is_finite() => Err(format!("{x} is not a finite number")),
            ValueRef::Double(x) if !x.is_finite() => Err(format!("{x} is not a finite number")),
            _ => Ok(()),
        }
    }
}

/// The schema of one stream: `define stream geoTempStream (apiName string, …);`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamSchema {
    /// Stream name.
    pub name: String,
    /// Attributes in declaration order.
    pub attributes: Vec<Attribute>,
}

impl StreamSchema {
    /// Builds a schema from a name and `(attribute, type)` pairs.
    pub fn new(name: impl Into<String>, attributes: Vec<Attribute>) -> StreamSchema {
        StreamSchema {
            name: name.into(),
            attributes,
        }
    }

    /// The position of an attribute by name.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.attributes.iter().position(|a| a.name == name)
    }

    /// Whether `other` names the same attributes with the same types in the same order (so
    /// that positional values of one fit the other), whatever their constraints.
    pub fn same_shape(&self, other: &StreamSchema) -> bool {
        self.name == other.name
            && self.attributes.len() == other.attributes.len()
            && self
                .attributes
                .iter()
                .zip(&other.attributes)
                .all(|(a, b)| a.name == b.name && a.ty == b.ty)
    }

    /// Checks that `value` fits attribute `index` ([`Attribute::check`]).
    ///
    /// Returns a human-readable reason, naming the attribute, when it does not.
    pub fn check_value(&self, index: usize, value: ValueRef<'_>) -> Result<(), String> {
        let Some(attr) = self.attributes.get(index) else {
            return Err(format!(
                "stream {} has {} attributes, no attribute #{index}",
                self.name,
                self.attributes.len()
            ));
        };
        attr.check(value)
            .map_err(|reason| format!("attribute {}.{}: {reason}", self.name, attr.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_check_type_nullability_and_what_the_store_holds() {
        let city = Attribute::new("city", AttrType::String).max_chars(6);
        assert_eq!(city.check(ValueRef::String("Naples")), Ok(()));
        assert_eq!(
            city.check(ValueRef::String("Nàpoli")),
            Ok(()),
            "7 bytes, 6 characters"
        );
        assert_eq!(city.check(ValueRef::Null), Ok(()));
        assert_eq!(
            city.check(ValueRef::String("Napoli!")),
            Err("a string of 7 characters; the store holds at most 6".into())
        );
        assert_eq!(
            city.check(ValueRef::String("a\0b")),
            Err("strings must not contain NUL characters".into())
        );
        assert_eq!(
            city.check(ValueRef::Long(7)),
            Err("string expected, got a long value".into())
        );
        let key = city.clone().required();
        assert_eq!(
            key.check(ValueRef::Null),
            Err("null, but it is a group-by key, which must not be null".into())
        );
        assert_eq!(key.check(ValueRef::String("")), Ok(()));

        let unlimited = Attribute::new("note", AttrType::String);
        assert_eq!(
            unlimited.check(ValueRef::String(&"x".repeat(10_000))),
            Ok(())
        );
        let price = Attribute::new("price", AttrType::Double);
        assert_eq!(
            price.check(ValueRef::Double(f64::NAN)),
            Err("NaN is not a finite number".into())
        );
        assert_eq!(price.check(ValueRef::Double(-0.5)), Ok(()));
        let ratio = Attribute::new("ratio", AttrType::Float);
        assert_eq!(
            ratio.check(ValueRef::Float(f32::INFINITY)),
            Err("inf is not a finite number".into())
        );

        let schema = StreamSchema::new("s", vec![key, price]);
        assert_eq!(
            schema.check_value(0, ValueRef::Null),
            Err("attribute s.city: null, but it is a group-by key, which must not be null".into())
        );
        assert_eq!(
            schema.check_value(2, ValueRef::Null),
            Err("stream s has 2 attributes, no attribute #2".into())
        );
        let loose = StreamSchema::new(
            "s",
            vec![
                Attribute::new("city", AttrType::String),
                Attribute::new("price", AttrType::Double),
            ],
        );
        assert!(schema.same_shape(&loose) && schema != loose);
        let other = StreamSchema::new("s", vec![Attribute::new("city", AttrType::String)]);
        assert!(!schema.same_shape(&other));
    }
}
