//! The keys each configuration table accepts, read from the types' `Deserialize` impls, so
//! that documentation and tooling can be checked against the code instead of a copied list.

use super::types::{
    BreakerSpec, CheckpointSpec, PipelineSpec, PolicySpec, RetrySpec, TelemetrySpec,
};
use crate::config::struct_fields;

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
            } else if *f == "breaker" {
                std::iter::once("breaker".to_owned())
                    .chain(
                        struct_fields::<BreakerSpec>()
                            .iter()
                            .map(|r| format!("breaker.{r}")),
                    )
                    .collect()
            } else {
                vec![(*f).to_owned()]
            }
        })
        .collect();
    vec![
        ("pipeline", plain(struct_fields::<PipelineSpec>())),
        ("checkpoint", plain(struct_fields::<CheckpointSpec>())),
        ("telemetry", plain(struct_fields::<TelemetrySpec>())),
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
            [
                "attempts",
                "initial",
                "max",
                "multiplier",
                "jitter",
                "max_retry_after",
                "on",
                "never"
            ]
        );
        assert!(struct_fields::<u32>().is_empty());
        let sections = section_keys();
        assert!(sections[3].1.contains(&"retry.jitter".to_owned()));
        assert!(sections[0].1.contains(&"max_run_time".to_owned()));
    }
}
