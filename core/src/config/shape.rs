//! The JSON Schema of a configuration type, read from its `Deserialize` impl, so that
//! `stagewise schema` describes every kind (a custom runner's too) without a schema written by
//! hand or a derive on each config.
//!
//! A probing deserializer walks down to one value and notes which `deserialize_*` the type
//! asks for there: `deserialize_bool` is a boolean, `deserialize_struct` an object with those
//! fields, `deserialize_enum` one of those names, and so on. Each question is one call of
//! `T::deserialize` that stops with an error once answered. Two more probes find the required
//! fields (feed plausible values for the ones found so far, read which is missing next) and
//! whether unknown keys are refused. A type that takes anything (`deserialize_any`: a count or a
//! percentage, a size, a JSON value) is `{}`; doc comments are not visible this way: the
//! descriptions come from the reference instead (see `schema.rs`).

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde_json::{json, Value};

type Error = de::value::Error;

/// Deeper than this, a type is taken as "anything" (a recursive type would never end).
const MAX_DEPTH: usize = 8;

/// One step down from a value.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// The field of a struct.
    Field(&'static str),
    /// An element of a list.
    Item,
    /// A value of a map.
    Value,
}

/// What a probe asks of the value at the end of its path.
#[derive(Debug, Clone)]
enum Ask {
    /// Which `deserialize_*` it calls.
    Shape,
    /// Deserialize it as a struct holding these fields (with plausible values).
    WithFields(Vec<&'static str>),
    /// Deserialize it as a struct holding one key no struct has.
    UnknownKey,
}

/// What a value asked to be deserialized as.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Any,
    Bool,
    Int,
    UInt,
    Float,
    Str,
    Enum(&'static [&'static str]),
    Seq,
    Map,
    Struct(&'static [&'static str]),
}

/// The JSON Schema of `T`'s table: its keys' types, required keys, and
/// `additionalProperties: false` when it refuses unknown keys.
pub(crate) fn schema_of<T: DeserializeOwned>() -> Value {
    schema_at::<T>(&mut Vec::new())
}

fn schema_at<T: DeserializeOwned>(path: &mut Vec<Step>) -> Value {
    if path.len() > MAX_DEPTH {
        return json!({});
    }
    let below = |path: &mut Vec<Step>, step: Step| {
        path.push(step);
        let schema = schema_at::<T>(path);
        path.pop();
        schema
    };
    match shape_at::<T>(path) {
        Shape::Any => json!({}),
        Shape::Bool => json!({ "type": "boolean" }),
        Shape::Int => json!({ "type": "integer" }),
        Shape::UInt => json!({ "type": "integer", "minimum": 0 }),
        Shape::Float => json!({ "type": "number" }),
        Shape::Str => json!({ "type": "string" }),
        Shape::Enum(names) => json!({ "enum": names }),
        Shape::Seq => json!({ "type": "array", "items": below(path, Step::Item) }),
        Shape::Map => json!({ "type": "object", "additionalProperties": below(path, Step::Value) }),
        Shape::Struct(fields) => {
            let properties: serde_json::Map<String, Value> = fields
                .iter()
                .map(|f| ((*f).to_owned(), below(path, Step::Field(f))))
                .collect();
            let mut schema = json!({ "type": "object", "properties": properties });
            let required = required_at::<T>(path);
            if !required.is_empty() {
                schema["required"] = json!(required);
            }
            if refuses_unknown_at::<T>(path) {
                schema["additionalProperties"] = json!(false);
            }
            schema
        }
    }
}

fn shape_at<T: DeserializeOwned>(path: &[Step]) -> Shape {
    let mut shape = None;
    let _ = T::deserialize(Probe {
        path,
        ask: &Ask::Shape,
        shape: &mut shape,
    });
    shape.unwrap_or(Shape::Any)
}

/// The fields serde reports missing one after another, each fed a plausible value once found.
/// A value it rejects ends the search: required fields can only be missed, never invented.
fn required_at<T: DeserializeOwned>(path: &[Step]) -> Vec<&'static str> {
    let fields = match shape_at::<T>(path) {
        Shape::Struct(fields) => fields,
        _ => return Vec::new(),
    };
    let mut required: Vec<&'static str> = Vec::new();
    loop {
        let ask = Ask::WithFields(required.clone());
        let result = T::deserialize(Probe {
            path,
            ask: &ask,
            shape: &mut None,
        });
        let Err(e) = result else { break };
        let message = e.to_string();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split_once('`'))
            .and_then(|(name, _)| fields.iter().find(|f| **f == name));
        match missing {
            Some(field) if !required.contains(field) => required.push(field),
            _ => break,
        }
    }
    required
}

fn refuses_unknown_at<T: DeserializeOwned>(path: &[Step]) -> bool {
    let result = T::deserialize(Probe {
        path,
        ask: &Ask::UnknownKey,
        shape: &mut None,
    });
    matches!(result, Err(e) if e.to_string().starts_with("unknown field"))
}

/// A key no configuration has.
const UNKNOWN_KEY: &str = "\u{0}stagewise-probe";

/// The probing deserializer: follows `path`, then answers `ask`.
struct Probe<'a> {
    path: &'a [Step],
    ask: &'a Ask,
    shape: &'a mut Option<Shape>,
}

impl<'a> Probe<'a> {
    fn stop<T>(why: &str) -> Result<T, Error> {
        Err(de::Error::custom(why))
    }

    /// A value that is not a container: note its shape if that was the question.
    fn leaf<T>(self, shape: Shape) -> Result<T, Error> {
        if self.path.is_empty() && matches!(self.ask, Ask::Shape) {
            *self.shape = Some(shape);
            return Self::stop("probed");
        }
        Self::stop("not on the path")
    }

    fn next(self) -> Probe<'a> {
        Probe {
            path: &self.path[1..],
            ask: self.ask,
            shape: self.shape,
        }
    }
}

macro_rules! leaves {
    ($($method:ident => $shape:expr),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
                self.leaf($shape)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = Error;

    leaves! {
        deserialize_any => Shape::Any,
        deserialize_bool => Shape::Bool,
        deserialize_i8 => Shape::Int,
        deserialize_i16 => Shape::Int,
        deserialize_i32 => Shape::Int,
        deserialize_i64 => Shape::Int,
        deserialize_i128 => Shape::Int,
        deserialize_u8 => Shape::UInt,
        deserialize_u16 => Shape::UInt,
        deserialize_u32 => Shape::UInt,
        deserialize_u64 => Shape::UInt,
        deserialize_u128 => Shape::UInt,
        deserialize_f32 => Shape::Float,
        deserialize_f64 => Shape::Float,
        deserialize_char => Shape::Str,
        deserialize_str => Shape::Str,
        deserialize_string => Shape::Str,
        deserialize_identifier => Shape::Str,
        deserialize_bytes => Shape::Any,
        deserialize_byte_buf => Shape::Any,
        deserialize_unit => Shape::Any,
        deserialize_ignored_any => Shape::Any,
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        // TOML has no null: an optional key is one that may be left out.
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _visitor: V,
    ) -> Result<V::Value, Error> {
        self.leaf(Shape::Any)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Error> {
        self.leaf(Shape::Enum(variants))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.path.first() {
            None => self.leaf(Shape::Seq),
            Some(Step::Item) => visitor.visit_seq(OneItem(Some(self.next()))),
            Some(_) => Self::stop("not on the path"),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.path.first() {
            None => self.leaf(Shape::Map),
            Some(Step::Value) => visitor.visit_map(OneEntry {
                key: Some("key"),
                value: Some(self.next()),
            }),
            Some(_) => Self::stop("not on the path"),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match (self.path.first(), self.ask) {
            (Some(Step::Field(field)), _) => {
                let field = *field;
                visitor.visit_map(OneEntry {
                    key: Some(field),
                    value: Some(self.next()),
                })
            }
            (Some(_), _) => Self::stop("not on the path"),
            (None, Ask::Shape) => self.leaf(Shape::Struct(fields)),
            (None, Ask::WithFields(present)) => visitor.visit_map(Plausible {
                keys: present.clone().into_iter(),
            }),
            (None, Ask::UnknownKey) => visitor.visit_map(Plausible {
                keys: vec![UNKNOWN_KEY].into_iter(),
            }),
        }
    }
}

/// A map of one entry, whose value is probed further.
struct OneEntry<'a> {
    key: Option<&'static str>,
    value: Option<Probe<'a>>,
}

impl<'de> de::MapAccess<'de> for OneEntry<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.key.take() {
            Some(key) => seed.deserialize(key.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some(probe) => seed.deserialize(probe),
            None => Probe::stop("no value"),
        }
    }
}

/// A list of one element, which is probed further.
struct OneItem<'a>(Option<Probe<'a>>);

impl<'de> de::SeqAccess<'de> for OneItem<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0
            .take()
            .map(|probe| seed.deserialize(probe))
            .transpose()
    }
}

/// A struct's table with the given keys, each holding a [`Plausible`] value.
struct Plausible {
    keys: std::vec::IntoIter<&'static str>,
}

impl<'de> de::MapAccess<'de> for Plausible {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        self.keys
            .next()
            .map(|key| seed.deserialize(key.into_deserializer()))
            .transpose()
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(PlausibleValue)
    }
}

/// A value most types accept: `1`, `false`, `"1s"` (a string, a path and a duration alike),
/// the first name of an enum, an empty list or table.
struct PlausibleValue;

impl<'de> de::Deserializer<'de> for PlausibleValue {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(1)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bool(false)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(1.0)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(1.0)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_char('a')
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("1s")
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("1s")
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("1s")
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_none()
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(OneItem(None))
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_map(Plausible {
            keys: Vec::new().into_iter(),
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match variants.first() {
            Some(first) => visitor.visit_enum((*first).into_deserializer()),
            None => Probe::stop("an enum without variants"),
        }
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 bytes byte_buf unit_struct tuple tuple_struct
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;
    use std::time::Duration;

    #[derive(Deserialize)]
    #[serde(rename_all = "lowercase")]
    #[allow(dead_code)]
    enum Mode {
        Fast,
        Careful,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        attempts: Option<u32>,
        jitter: Option<bool>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Config {
        name: String,
        count: u64,
        #[serde(with = "humantime_serde")]
        wait: Duration,
        #[serde(default, with = "humantime_serde")]
        limit: Option<Duration>,
        #[serde(default = "one")]
        size: i64,
        ratio: Option<f64>,
        mode: Mode,
        tags: Vec<String>,
        headers: BTreeMap<String, String>,
        retry: Option<Inner>,
        anything: Option<serde_json::Value>,
    }

    fn one() -> i64 {
        1
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Lenient {
        a: Option<String>,
    }

    #[test]
    fn reads_types_required_keys_and_strictness() {
        let schema = schema_of::<Config>();
        let props = &schema["properties"];
        let cases = [
            ("name", json!({ "type": "string" })),
            ("count", json!({ "type": "integer", "minimum": 0 })),
            ("wait", json!({ "type": "string" })),
            ("limit", json!({ "type": "string" })),
            ("size", json!({ "type": "integer" })),
            ("ratio", json!({ "type": "number" })),
            ("mode", json!({ "enum": ["fast", "careful"] })),
            (
                "tags",
                json!({ "type": "array", "items": { "type": "string" } }),
            ),
            (
                "headers",
                json!({ "type": "object", "additionalProperties": { "type": "string" } }),
            ),
            (
                "retry",
                json!({
                    "type": "object",
                    "properties": {
                        "attempts": { "type": "integer", "minimum": 0 },
                        "jitter": { "type": "boolean" },
                    },
                    "additionalProperties": false,
                }),
            ),
            ("anything", json!({})),
        ];
        for (key, want) in cases {
            assert_eq!(props[key], want, "{key}");
        }
        assert_eq!(
            schema["required"],
            json!(["name", "count", "wait", "mode", "tags", "headers"])
        );
        assert_eq!(schema["additionalProperties"], json!(false));
        let lenient = schema_of::<Lenient>();
        assert_eq!(lenient.get("additionalProperties"), None);
        assert_eq!(lenient.get("required"), None);
        assert_eq!(
            schema_of::<u32>(),
            json!({ "type": "integer", "minimum": 0 })
        );
    }
}
