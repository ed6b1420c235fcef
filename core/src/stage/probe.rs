//! Checks of a stage against the world, before any item runs (`stagewise validate --connect`,
//! and `run` before it takes a batch): connect to its database, prepare its statements, see
//! that its files are there, reach its endpoint without spending anything. A kind also says
//! which fields its records gain and which it reads, so that a prompt or a statement naming a
//! field no record will have is found before the first item.
//!
//! A probe never changes anything: no file is created, no statement is run, no paid call made.

use std::any::Any;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{CancelFlag, ErrorClass, Role, StageError};

/// What a probe is told.
pub struct ProbeContext<'a> {
    /// The stage's name.
    pub stage: &'a str,
    /// The place the stage takes in this pipeline.
    pub role: Role,
    /// The folder of the pipeline file: relative paths are relative to it.
    pub base_dir: &'a Path,
    /// The stage's resolved per-attempt timeout: no single check of it waits longer.
    pub timeout: Duration,
    /// When all of the stage's checks must have ended: what is left then is not checked (an
    /// outage, said as such).
    pub deadline: Instant,
    /// Raised when the process is asked to stop: what is left is not checked.
    pub cancel: CancelFlag,
    /// What the probes of one pipeline share: the source's probe runs first, the others after
    /// it, at once.
    pub shared: &'a Shared,
    /// `validate --connect` asked for these checks, not a run about to start: a kind may make
    /// one that costs a little (`llm` asks for an answer of a few tokens). A run's checks cost
    /// nothing.
    pub asked: bool,
}

impl ProbeContext<'_> {
    /// Whether the checks must end now: the deadline passed, or the process is stopping.
    pub fn out_of_time(&self) -> bool {
        self.cancel.is_cancelled() || Instant::now() >= self.deadline
    }

    /// The time left before [`ProbeContext::deadline`].
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Resolve a path from the pipeline file against the file's folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}

/// Values the probes of one pipeline share, each under a name its kind chooses (e.g. a
/// database made in memory from the source's `init_script`, for the sink's statements to be
/// prepared on).
#[derive(Default)]
pub struct Shared(Mutex<HashMap<String, Box<dyn Any + Send>>>);

impl Shared {
    /// Keep `value` under `name`, replacing what was there.
    pub fn put<T: Any + Send>(&self, name: impl Into<String>, value: T) {
        self.lock().insert(name.into(), Box::new(value));
    }

    /// Run `f` on the value under `name`, if there is one of type `T`.
    pub fn with<T: Any + Send, R>(&self, name: &str, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let mut values = self.lock();
        values.get_mut(name)?.downcast_mut::<T>().map(f)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Box<dyn Any + Send>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whose fault a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The configuration's: a statement that does not prepare, a table or column or field that
    /// is not there, a password or certificate refused, a file missing. The same for every
    /// item: the run does not start (exit 2).
    Config,
    /// The world's, for now: a server down or answering 5xx. Said, and left to the stages'
    /// retries.
    Outage,
    /// Probably wrong, but it may work (an endpoint that does not list the model named): said.
    Doubt,
}

/// One thing a probe found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The key it is about: a dotted path inside the stage table (`"statement"`), or `""` for
    /// the stage as a whole.
    pub key: String,
    /// Whose fault it is.
    pub fault: Fault,
    /// What is wrong, in the user's words.
    pub message: String,
}

/// The fields a record has after a stage.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FieldsOut {
    /// Those it came with (a stage that writes no field).
    Same,
    /// Those it came with and these.
    Adds(Vec<String>),
    /// These (a source). With `complete` false, the fields of only part of the batch were
    /// seen (the first lines of a large file): a field not among them may still come.
    Exactly {
        /// The fields.
        fields: Vec<String>,
        /// Whether they are those of every record.
        complete: bool,
    },
    /// Not known (a plugin's stage, a source that was not reached): fields read after it are
    /// not checked.
    #[default]
    Unknown,
}

impl FieldsOut {
    /// [`FieldsOut::Adds`] of `output` (a key's value) and `more` (fixed names), each once.
    pub fn adding(output: &str, more: &[&str]) -> FieldsOut {
        let mut added = vec![output.to_owned()];
        added.extend(
            more.iter()
                .filter(|f| **f != output)
                .map(|f| (*f).to_owned()),
        );
        FieldsOut::Adds(added)
    }
}

/// When the field a stage reads must be there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// When the record reaches the stage: the source's fields and those the stages before it
    /// add.
    Arriving,
    /// At any point of the pipeline (a statement run for an item that failed, with the fields
    /// it had then, null for the others): any stage's fields.
    Anywhere,
}

/// A field a stage reads, and the key that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// The key (a dotted path inside the stage table).
    pub key: String,
    /// The field. `key`, the record's key, is always there.
    pub field: String,
    /// When it must be there.
    pub when: Reading,
}

/// What a stage's probe found: what is wrong, what it checked, and the fields it reads and
/// gives.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    /// What is wrong.
    pub findings: Vec<Finding>,
    /// What was checked and found right, in words ("connected to postgres://app:***@db/x").
    pub checked: Vec<String>,
    /// The fields its records have after it.
    pub fields: FieldsOut,
    /// The fields it reads.
    pub reads: Vec<Read>,
}

impl Probe {
    /// A probe of a stage whose records keep the fields they came with.
    pub fn same() -> Probe {
        Probe::giving(FieldsOut::Same)
    }

    /// A probe of a stage whose records have `fields` after it.
    pub fn giving(fields: FieldsOut) -> Probe {
        Probe {
            fields,
            ..Probe::default()
        }
    }

    /// A finding that the configuration is wrong.
    pub fn config(&mut self, key: &str, message: impl Into<String>) {
        self.findings.push(Finding {
            key: key.to_owned(),
            fault: Fault::Config,
            message: message.into(),
        });
    }

    /// A finding that a server is out of reach for now.
    pub fn outage(&mut self, key: &str, message: impl Into<String>) {
        self.findings.push(Finding {
            key: key.to_owned(),
            fault: Fault::Outage,
            message: message.into(),
        });
    }

    /// A finding that something is probably wrong, though it may work.
    pub fn doubt(&mut self, key: &str, message: impl Into<String>) {
        self.findings.push(Finding {
            key: key.to_owned(),
            fault: Fault::Doubt,
            message: message.into(),
        });
    }

    /// A finding from a stage error: a transient one is an outage; a permanent or fatal one the
    /// configuration's (it would be the same for every item).
    pub fn failed(&mut self, key: &str, error: &StageError) {
        match error.class {
            ErrorClass::Transient => self.outage(key, error.message.clone()),
            ErrorClass::Permanent | ErrorClass::Fatal => self.config(key, error.message.clone()),
        }
    }

    /// Something checked and found right.
    pub fn passed(&mut self, what: impl Into<String>) {
        self.checked.push(what.into());
    }

    /// A field read when the record reaches the stage.
    pub fn reads(&mut self, key: &str, field: impl Into<String>) {
        self.reads.push(Read {
            key: key.to_owned(),
            field: field.into(),
            when: Reading::Arriving,
        });
    }

    /// A field read at any point of the pipeline (see [`Reading::Anywhere`]).
    pub fn reads_anywhere(&mut self, key: &str, field: impl Into<String>) {
        self.reads.push(Read {
            key: key.to_owned(),
            field: field.into(),
            when: Reading::Anywhere,
        });
    }

    /// Whether it found a fault of the configuration.
    pub fn has_config_fault(&self) -> bool {
        self.findings.iter().any(|f| f.fault == Fault::Config)
    }
}
