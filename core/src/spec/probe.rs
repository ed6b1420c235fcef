//! A pipeline checked against the world (`validate --connect`, and `run` before it takes a
//! batch): each stage's probe (see [`crate::stage::Probe`]), the fields each stage reads
//! against those the source and the stages before it give, and (for `validate`) the
//! checkpoint store. What is found is said as [`Diagnostic`]s at the key it is about: a fault
//! of the configuration is an error, an outage a warning.

use std::panic::AssertUnwindSafe;

use super::{Diagnostic, Pipeline, Severity};
use crate::registry::Registry;
use crate::stage::{Fault, FieldsOut, Finding, Probe, ProbeContext, Reading, Shared};

/// What is checked besides the stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The stages and the checkpoint store (`validate --connect`).
    Everything,
    /// The stages only (`run`, which opens the store itself right after).
    Stages,
}

impl Scope {
    /// The longest any one check waits (a connection, a statement, an endpoint's answer): the
    /// stage's timeout, and at most this. A run only warns of an outage, so it does not wait
    /// long for one.
    fn wait(self) -> std::time::Duration {
        match self {
            Scope::Everything => std::time::Duration::from_secs(30),
            Scope::Stages => std::time::Duration::from_secs(5),
        }
    }
}

/// What the checks found.
#[derive(Debug, Default)]
pub struct Probed {
    /// Faults of the configuration (errors) and outages (warnings), in stage order.
    pub diagnostics: Vec<Diagnostic>,
    /// What was checked and found right, each line naming its stage (or the store).
    pub checked: Vec<String>,
}

impl Probed {
    /// How many faults of the configuration were found.
    pub fn errors(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }
}

/// Check `pipeline` against the world. The source's probe runs first (the others may use what
/// it leaves in [`Shared`]), then the others at once, each on a thread of its own; every wait
/// inside them is bounded by the stage's own time limits.
pub fn probe(pipeline: &Pipeline, registry: &Registry, scope: Scope) -> Probed {
    let shared = Shared::default();
    // Raised when a stop signal comes meanwhile: the checks left are cut short.
    let cancel = crate::stage::CancelFlag::new();
    let done = std::sync::atomic::AtomicBool::new(false);
    let probe_one = |i: usize| -> Probe {
        let stage = &pipeline.stages[i];
        let Some(kind) = registry.get(&stage.kind) else {
            return Probe::default();
        };
        if stage.unchecked {
            return Probe::default();
        }
        let timeout = stage.policy.timeout.min(scope.wait());
        let cx = ProbeContext {
            stage: &stage.name,
            role: stage.role,
            base_dir: &pipeline.base_dir,
            timeout,
            deadline: std::time::Instant::now() + timeout,
            cancel: cancel.clone(),
            shared: &shared,
            asked: scope == Scope::Everything,
        };
        // A kind's probe that panics is the kind's fault, said as such; the run goes on to the
        // checks of the others.
        std::panic::catch_unwind(AssertUnwindSafe(|| kind.probe(&stage.config, &cx)))
            .unwrap_or_else(|_| {
                let mut probe = Probe::default();
                probe.outage(
                    "",
                    "its check failed unexpectedly (the panic is logged above)",
                );
                probe
            })
    };
    let mut probes: Vec<Probe> = Vec::with_capacity(pipeline.stages.len());
    let mut store = None;
    std::thread::scope(|scope_| {
        scope_.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if crate::runner::stop_requested_early() {
                    cancel.cancel();
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        if !pipeline.stages.is_empty() {
            probes.push(probe_one(0));
        }
        let others: Vec<_> = (1..pipeline.stages.len())
            .map(|i| scope_.spawn(move || probe_one(i)))
            .collect();
        if scope == Scope::Everything {
            store = Some(crate::checkpoint::check(&pipeline.checkpoint.store));
        }
        for handle in others {
            probes.push(handle.join().unwrap_or_default());
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });

    let mut found = Probed::default();
    let file = pipeline.file.display().to_string();
    let mut say = |path: Vec<String>, stage: Option<&str>, severity: Severity, message: String| {
        found.diagnostics.push(Diagnostic {
            severity,
            file: file.clone(),
            place: pipeline.origins.place(&path, false),
            stage: stage.map(str::to_owned),
            message,
        });
    };
    let key_path = |i: usize, key: &str| -> Vec<String> {
        ["stage".to_owned(), i.to_string()]
            .into_iter()
            .chain(key.split('.').filter(|k| !k.is_empty()).map(str::to_owned))
            .collect()
    };

    // The fields each stage's records arrive with, and those of any stage (fields are only
    // added after the source: those a record has after the last stage).
    let anywhere = probes
        .iter()
        .zip(&pipeline.stages)
        .fold(Known::Unknown, |known, (probe, stage)| {
            known.after(&probe.fields, &stage.name)
        });
    let mut arriving = Known::Unknown;
    for (i, probe) in probes.iter().enumerate() {
        let name = pipeline.stages[i].name.as_str();
        for Finding {
            key,
            fault,
            message,
        } in &probe.findings
        {
            let severity = match fault {
                Fault::Config => Severity::Error,
                Fault::Outage | Fault::Doubt => Severity::Warning,
            };
            let message = match fault {
                Fault::Config | Fault::Doubt => message.clone(),
                Fault::Outage => {
                    format!("{message} (not checked: the run leaves this to the stage's retries)")
                }
            };
            say(key_path(i, key), Some(name), severity, message);
        }
        let mut said: Vec<(&str, &str)> = Vec::new();
        for read in &probe.reads {
            if read.field == "key" || said.contains(&(read.key.as_str(), read.field.as_str())) {
                continue;
            }
            said.push((&read.key, &read.field));
            let known = match read.when {
                Reading::Arriving => &arriving,
                Reading::Anywhere => &anywhere,
            };
            if let Some((severity, message)) = known.lacks(&read.field, read.when) {
                say(key_path(i, &read.key), Some(name), severity, message);
            }
        }
        arriving = arriving.after(&probe.fields, name);
        found
            .checked
            .extend(probe.checked.iter().map(|c| format!("stage `{name}`: {c}")));
    }
    match store {
        Some(Ok(what)) => found.checked.push(format!("checkpoint store: {what}")),
        Some(Err((fault, message))) => say(
            vec!["checkpoint".into(), "store".into()],
            None,
            match fault {
                Fault::Config => Severity::Error,
                Fault::Outage | Fault::Doubt => Severity::Warning,
            },
            message,
        ),
        None => {}
    }
    found
}

/// What is known of the fields a record has at some point of the pipeline.
#[derive(Debug, Clone)]
enum Known {
    /// Nothing: a field read there is not checked.
    Unknown,
    /// These fields, each with the stage that gave it (`None`: the source); with `complete`
    /// false, only those of part of the batch were seen.
    Fields {
        fields: Vec<(String, Option<String>)>,
        complete: bool,
    },
}

impl Known {
    /// What is known after a stage that gives `out`.
    fn after(self, out: &FieldsOut, stage: &str) -> Known {
        match (self, out) {
            (_, FieldsOut::Exactly { fields, complete }) => Known::Fields {
                fields: fields.iter().map(|f| (f.clone(), None)).collect(),
                complete: *complete,
            },
            (known, FieldsOut::Same) => known,
            (
                Known::Fields {
                    mut fields,
                    complete,
                },
                FieldsOut::Adds(added),
            ) => {
                for field in added {
                    if !fields.iter().any(|(f, _)| f == field) {
                        fields.push((field.clone(), Some(stage.to_owned())));
                    }
                }
                Known::Fields { fields, complete }
            }
            _ => Known::Unknown,
        }
    }

    /// What to say of a read of `field`, if it is not known to be there.
    fn lacks(&self, field: &str, when: Reading) -> Option<(Severity, String)> {
        let Known::Fields { fields, complete } = self else {
            return None;
        };
        if fields.iter().any(|(f, _)| f == field) {
            return None;
        }
        let shown = crate::text::printable(field);
        let from_source: Vec<&str> = fields
            .iter()
            .filter(|(_, by)| by.is_none())
            .map(|(f, _)| f.as_str())
            .collect();
        let mut given = format!(
            "the source gives {}",
            if from_source.is_empty() {
                "no field".to_owned()
            } else {
                listed(&from_source)
            }
        );
        let mut by_stage: Vec<(&str, Vec<&str>)> = Vec::new();
        for (f, by) in fields {
            if let Some(stage) = by {
                match by_stage.iter_mut().find(|(s, _)| s == stage) {
                    Some((_, list)) => list.push(f),
                    None => by_stage.push((stage, vec![f])),
                }
            }
        }
        for (stage, list) in by_stage {
            given.push_str(&format!("; `{stage}` adds {}", listed(&list)));
        }
        let when = match when {
            Reading::Arriving => "a record has when it reaches this stage",
            Reading::Anywhere => "any stage gives",
        };
        Some(if *complete {
            (
                Severity::Error,
                format!("the field `{shown}` is not among those {when} ({given}); the record's key is `key`"),
            )
        } else {
            (
                Severity::Warning,
                format!("the field `{shown}` is not among those {when} in the part of the batch that was read ({given})"),
            )
        })
    }
}

/// `` `a`, `b`, `c` ``, names escaped.
fn listed(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{}`", crate::text::printable(n)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(fields: &[&str], complete: bool) -> FieldsOut {
        FieldsOut::Exactly {
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            complete,
        }
    }

    #[test]
    fn a_field_is_known_after_the_stage_that_adds_it() {
        let known = Known::Unknown.after(&given(&["id", "url"], true), "src");
        assert!(known.lacks("url", Reading::Arriving).is_none());
        let (severity, message) = known.lacks("html", Reading::Arriving).expect("lacks html");
        assert_eq!(severity, Severity::Error);
        assert!(message.contains("`html`"), "{message}");
        assert!(
            message.contains("the source gives `id`, `url`"),
            "{message}"
        );
        let known = known.after(&FieldsOut::Adds(vec!["html".into()]), "download");
        assert!(known.lacks("html", Reading::Arriving).is_none());
        let (_, message) = known.lacks("text", Reading::Arriving).expect("lacks text");
        assert!(message.contains("`download` adds `html`"), "{message}");
        let known = known.after(&FieldsOut::Same, "nap");
        assert!(known.lacks("html", Reading::Arriving).is_none());
    }

    #[test]
    fn after_an_unknown_stage_nothing_is_checked() {
        let known = Known::Unknown
            .after(&given(&["id"], true), "src")
            .after(&FieldsOut::Unknown, "plugin")
            .after(&FieldsOut::Adds(vec!["x".into()]), "later");
        assert!(known.lacks("anything", Reading::Arriving).is_none());
    }

    #[test]
    fn a_field_missing_from_part_of_the_batch_is_a_warning() {
        let known = Known::Unknown.after(&given(&["id"], false), "src");
        let (severity, _) = known.lacks("title", Reading::Arriving).expect("lacks");
        assert_eq!(severity, Severity::Warning);
    }
}
