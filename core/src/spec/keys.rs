//! The keys each configuration table accepts, read from the types' `Deserialize` impls, so
//! that documentation and tooling can be checked against the code instead of a copied list.

use serde::de::{self, DeserializeOwned, Visitor};

use super::types::{CheckpointSpec, PipelineSpec, PolicySpec, RetrySpec};

/// A deserializer that only records the field names a struct asks for.
struct Probe<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(de::Error::custom("probed"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The field names of a struct type (empty for a type that is not a plain struct).
pub(crate) fn struct_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields = None;
    let _ = T::deserialize(Probe(&mut fields));
    fields.unwrap_or(&[])
}

/// Every key of the tables outside `[[stage]]`, and the policy keys every stage has, as
/// `(table, dotted keys)`: `("pipeline", ["name", …])`, `("defaults", ["timeout", "retry.attempts", …])`.
pub fn section_keys() -> Vec<(&'static str, Vec<String>)> {
    let plain = |fields: &[&str]| fields.iter().map(|f| (*f).to_owned()).collect::<Vec<_>>();
    let policy: Vec<String> = struct_fields::<PolicySpec>()
        .iter()
        .flat_map(|f| {
            if *f == "retry" {
                struct_fields::<RetrySpec>()
                    .iter()
                    .map(|r| format!("retry.{r}"))
                    .collect()
            } else {
                vec![(*f).to_owned()]
            }
        })
        .collect();
    vec![
        ("pipeline", plain(struct_fields::<PipelineSpec>())),
        ("checkpoint", plain(struct_fields::<CheckpointSpec>())),
        ("defaults", policy),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_field_names() {
        assert_eq!(
            struct_fields::<RetrySpec>(),
            ["attempts", "initial", "max", "multiplier", "jitter"]
        );
        assert!(struct_fields::<u32>().is_empty());
        let sections = section_keys();
        assert!(sections[2].1.contains(&"retry.jitter".to_owned()));
        assert!(sections[0].1.contains(&"max_run_time".to_owned()));
    }
}
