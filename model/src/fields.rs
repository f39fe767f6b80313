//! The field names a type's derived `Deserialize` accepts, asked of serde itself so
//! that no list of them is kept by hand.

use serde::Deserialize;
use serde::de::{self, Visitor};
use std::fmt;

/// The fields of a struct deriving `Deserialize` (empty for anything else).
pub(crate) fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    // The derive hands its field list to `deserialize_struct`; Names keeps it and
    // stops there, so the result of the call is always the error.
    let _ = T::deserialize(Names { fields: &mut fields });
    fields
}

struct Names<'a> {
    fields: &'a mut &'static [&'static str],
}

#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field names read")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> de::Deserializer<'de> for Names<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Stop> {
        *self.fields = fields;
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Example {
        first: u8,
        #[serde(rename = "second_name")]
        second: String,
    }

    #[test]
    fn serde_names_the_fields_it_accepts() {
        assert_eq!(fields_of::<Example>(), ["first", "second_name"]);
        assert!(fields_of::<String>().is_empty());
    }
}
