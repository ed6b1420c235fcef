//! The `blackhole` sink: accepts every record and keeps nothing. It ends pipelines whose
//! output does not matter: examples, tests, and benchmarks of the runner itself.

use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use stagewise_core::stage::{
    AsyncStage, BuildContext, Context, Outcome, Probe, ProbeContext, Record, Role, StageError,
    StageImpl, StageKind,
};

/// Configuration of a `blackhole` stage: it has no keys of its own.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlackholeConfig {}

/// The `blackhole` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlackholeKind;

impl StageKind for BlackholeKind {
    type Config = BlackholeConfig;

    fn kind(&self) -> &'static str {
        "blackhole"
    }

    fn roles(&self) -> &'static [Role] {
        &[Role::Sink]
    }

    /// Its records keep their fields.
    fn probe(&self, _config: &BlackholeConfig, _cx: &ProbeContext<'_>) -> Probe {
        Probe::same()
    }

    fn build(&self, _config: BlackholeConfig, _cx: &BuildContext) -> Result<StageImpl, StageError> {
        Ok(StageImpl::Async(Arc::new(Blackhole)))
    }
}

struct Blackhole;

#[async_trait]
impl AsyncStage for Blackhole {
    async fn process(&self, record: Record, _cx: &Context) -> Result<Outcome, StageError> {
        // A sink's output record goes nowhere, so handing it back costs nothing.
        Ok(Outcome::Continue(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{build_cx, config, cx};

    #[tokio::test]
    async fn accepts_every_record() {
        let config: BlackholeConfig = config("").expect("no keys is valid");
        let StageImpl::Async(stage) = BlackholeKind
            .build(config, &build_cx(Role::Sink, std::path::Path::new(".")))
            .expect("builds")
        else {
            panic!("expected an async stage");
        };
        let record = Record::new("7");
        let out = stage.process(record.clone(), &cx("7", 1)).await;
        assert_eq!(out, Ok(Outcome::Continue(record)));
    }

    #[test]
    fn config_denies_every_key() {
        assert!(crate::testing::config::<BlackholeConfig>("path = \"x\"").is_err());
    }
}
