//! What the fault campaigns share (docs/reliability.md): their size and their report.
//!
//! - `STAGEWISE_CAMPAIGN_SCALE` (a whole number, default 1) multiplies each campaign's items,
//!   kills, signals and faults: 1 is the size CI runs, 10 the large run of docs/reliability.md.
//! - `STAGEWISE_CAMPAIGN_REPORT`, if set, names a file each campaign appends one JSON line of
//!   its figures to (see [`Report`]), from which docs/reliability.md's table is made.
//! - `STAGEWISE_CAMPAIGN_SEED` (a number) replaces each campaign's fixed seed, to explore other
//!   schedules; a failing campaign prints the seed it ran with.

use std::io::Write;
use std::time::Instant;

use serde_json::{json, Map, Value};

/// The campaigns' scale: `STAGEWISE_CAMPAIGN_SCALE`, 1 unless set. A value that is not a whole
/// number of at least 1 fails the test that reads it, naming the variable.
pub fn scale() -> u64 {
    match std::env::var("STAGEWISE_CAMPAIGN_SCALE") {
        Err(_) => 1,
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(n) if n >= 1 => n,
            _ => panic!("STAGEWISE_CAMPAIGN_SCALE must be a whole number of at least 1, not {v:?}"),
        },
    }
}

/// `base` × [`scale`].
pub fn scaled(base: u64) -> u64 {
    base * scale()
}

/// The seed of a campaign: `STAGEWISE_CAMPAIGN_SEED` if set, else `fixed`. Printed, so that a
/// failure can be run again with it.
pub fn seed(campaign: &str, fixed: u64) -> u64 {
    let seed = match std::env::var("STAGEWISE_CAMPAIGN_SEED") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("STAGEWISE_CAMPAIGN_SEED must be a number, not {v:?}")),
        Err(_) => fixed,
    };
    eprintln!("campaign {campaign}: seed {seed} (STAGEWISE_CAMPAIGN_SEED={seed} to run it again)");
    seed
}

/// One campaign's figures, printed and appended to `STAGEWISE_CAMPAIGN_REPORT` when it ends.
/// Conventional keys: `runs`, `kills`, `signals`, `faults`, `items`, `lost` (must be 0),
/// `duplicates`, `max_exit_ms` (after a stop signal).
pub struct Report {
    campaign: String,
    began: Instant,
    figures: Map<String, Value>,
}

impl Report {
    pub fn new(campaign: &str) -> Report {
        Report {
            campaign: campaign.to_owned(),
            began: Instant::now(),
            figures: Map::new(),
        }
    }

    /// Set a figure.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) -> &mut Report {
        self.figures.insert(key.to_owned(), value.into());
        self
    }

    /// Add `n` to a counted figure.
    pub fn add(&mut self, key: &str, n: u64) -> &mut Report {
        let now = self.figures.get(key).and_then(Value::as_u64).unwrap_or(0);
        self.figures.insert(key.to_owned(), json!(now + n));
        self
    }

    /// Keep the larger of a figure and `n`.
    pub fn max(&mut self, key: &str, n: u64) -> &mut Report {
        let now = self.figures.get(key).and_then(Value::as_u64).unwrap_or(0);
        self.figures.insert(key.to_owned(), json!(now.max(n)));
        self
    }

    /// Print the figures and append them to the report file, if one is named. Call it once
    /// the campaign's invariants held.
    pub fn finish(&mut self) {
        let mut line = Map::new();
        line.insert("campaign".into(), json!(self.campaign));
        line.insert("scale".into(), json!(scale()));
        line.insert(
            "seconds".into(),
            json!((self.began.elapsed().as_secs_f64() * 10.0).round() / 10.0),
        );
        line.extend(self.figures.clone());
        let line = Value::Object(line).to_string();
        eprintln!("campaign report: {line}");
        if let Some(path) = std::env::var_os("STAGEWISE_CAMPAIGN_REPORT") {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.to_string_lossy()));
            writeln!(file, "{line}").expect("append to STAGEWISE_CAMPAIGN_REPORT");
        }
    }
}
