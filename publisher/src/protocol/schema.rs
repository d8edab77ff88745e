//! Stream schemas: the named, typed attributes of a Siddhi `define stream`.

use super::value::{AttrType, ValueRef};

/// One attribute of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attribute {
    /// Attribute name, as in the `define stream` (case-sensitive).
    pub name: String,
    /// Attribute type.
    pub ty: AttrType,
}

impl Attribute {
    /// Builds an attribute.
    pub fn new(name: impl Into<String>, ty: AttrType) -> Attribute {
        Attribute {
            name: name.into(),
            ty,
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

    /// Checks that `value` may be stored in attribute `index`: same type, or null.
    ///
    /// Returns a human-readable reason when it may not.
    pub fn check_value(&self, index: usize, value: ValueRef<'_>) -> Result<(), String> {
        let Some(attr) = self.attributes.get(index) else {
            return Err(format!(
                "stream {} has {} attributes, no attribute #{index}",
                self.name,
                self.attributes.len()
            ));
        };
        match value.attr_type() {
            None => Ok(()),
            Some(ty) if ty == attr.ty => Ok(()),
            Some(ty) => Err(format!(
                "attribute {}.{} is {}, got a {} value",
                self.name, attr.name, attr.ty, ty
            )),
        }
    }
}
