//! The `generate` source: a synthetic batch of `count` records, keyed `"0"` to `"count - 1"`,
//! each with the field `n` holding its number. It needs no input, so it is the source of the
//! examples, the tests and the benchmarks.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;
use stagewise_core::stage::{
    BuildContext, Context, Emitted, Fields, FieldsOut, Probe, ProbeContext, Record, Role, Source,
    StageError, StageImpl, StageKind, Stop,
};

/// How often (in records) a long read looks at the cancellation flag.
const CANCEL_CHECK_EVERY: u64 = 1024;

/// Configuration of a `generate` stage.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    /// How many records to emit; keyed `"0"`, `"1"`, … with one field `n` (the number).
    pub count: u64,
}

/// The `generate` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenerateKind;

impl StageKind for GenerateKind {
    type Config = GenerateConfig;

    fn kind(&self) -> &'static str {
        "generate"
    }

    fn roles(&self) -> &'static [Role] {
        &[Role::Source]
    }

    /// Its records have the one field `n`.
    fn probe(&self, _config: &GenerateConfig, _cx: &ProbeContext<'_>) -> Probe {
        Probe::giving(FieldsOut::Exactly {
            fields: vec!["n".to_owned()],
            complete: true,
        })
    }

    fn build(&self, config: GenerateConfig, _cx: &BuildContext) -> Result<StageImpl, StageError> {
        Ok(StageImpl::Source(Arc::new(Generate {
            count: config.count,
        })))
    }
}

struct Generate {
    count: u64,
}

impl Source for Generate {
    fn read(
        &self,
        limit: Option<u64>,
        cx: &Context,
        emit: &mut dyn FnMut(Emitted) -> Result<(), Stop>,
    ) -> Result<(), StageError> {
        let count = limit.map_or(self.count, |limit| limit.min(self.count));
        for n in 0..count {
            // A cancelled read's records are discarded by the runner, so stopping quietly is
            // enough; the runner knows why it cancelled.
            if n.is_multiple_of(CANCEL_CHECK_EVERY) && cx.is_cancelled() {
                return Ok(());
            }
            let mut fields = Fields::new();
            fields.insert("n".to_owned(), n.into());
            if emit(Record::with_fields(n.to_string(), fields).into()).is_err() {
                return Ok(());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{build_cx, config, cx, cx_with};
    use stagewise_core::stage::CancelFlag;

    fn source(count: u64) -> Arc<dyn Source> {
        let config = GenerateConfig { count };
        match GenerateKind.build(config, &build_cx(Role::Source, std::path::Path::new("."))) {
            Ok(StageImpl::Source(source)) => source,
            other => panic!("expected a source, got {other:?}"),
        }
    }

    /// Reads everything `source` emits, answering `Stop` after `stop_after` records.
    fn read(source: &dyn Source, limit: Option<u64>, stop_after: Option<usize>) -> Vec<Record> {
        let mut out = Vec::new();
        source
            .read(limit, &cx("", 1), &mut |emitted| {
                if stop_after.is_some_and(|n| out.len() >= n) {
                    return Err(Stop);
                }
                let Emitted::Record(record) = emitted else {
                    panic!("generate emits records only: {emitted:?}");
                };
                out.push(record);
                Ok(())
            })
            .expect("generate never fails");
        out
    }

    #[test]
    fn emits_count_records_honouring_limit_and_stop() {
        // (count, limit, stop after, expected records)
        let cases: &[(u64, Option<u64>, Option<usize>, u64)] = &[
            (0, None, None, 0),
            (5, None, None, 5),
            (5, Some(3), None, 3),
            (5, Some(0), None, 0),
            (5, Some(10), None, 5),
            (5, None, Some(2), 2),
            (5, Some(4), Some(2), 2),
            (3000, None, None, 3000),
        ];
        for &(count, limit, stop_after, expected) in cases {
            let records = read(&*source(count), limit, stop_after);
            let case = format!("count {count}, limit {limit:?}, stop after {stop_after:?}");
            assert_eq!(records.len() as u64, expected, "{case}");
            for (i, record) in records.iter().enumerate() {
                assert_eq!(record.key, i.to_string(), "{case}");
                assert_eq!(record.fields.len(), 1, "{case}");
                assert_eq!(record.fields["n"], serde_json::json!(i), "{case}");
                assert!(
                    record.fields["n"].is_u64(),
                    "`n` must be an integer: {case}"
                );
            }
        }
    }

    #[test]
    fn stops_when_cancelled() {
        let cancel = CancelFlag::new();
        let cx = cx_with("", 1, cancel.clone());
        let mut seen = 0u64;
        source(1_000_000)
            .read(None, &cx, &mut |_| {
                seen += 1;
                if seen == 10 {
                    cancel.cancel();
                }
                Ok(())
            })
            .expect("a cancelled read ends quietly");
        assert!(
            seen <= CANCEL_CHECK_EVERY,
            "read {seen} records after cancel"
        );
    }

    #[test]
    fn config_requires_count_and_denies_unknown_keys() {
        assert_eq!(
            config::<GenerateConfig>("count = 7").expect("valid").count,
            7
        );
        assert!(config::<GenerateConfig>("").is_err());
        assert!(config::<GenerateConfig>("count = -1").is_err());
        assert!(config::<GenerateConfig>("count = 1\ncuont = 2").is_err());
    }
}
