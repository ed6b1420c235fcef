//! The bad-input fuzz targets (docs/reliability.md, "Fuzz targets"): generated, mostly
//! structure-aware input fed to the real entry points, each asserting that nothing panics,
//! that what is refused is refused with a clear message, and that what is accepted is sane.
//!
//! - [`config`]: `pipeline.toml` reading and validation (`spec::load_with`, `spec::plan_with`)
//!   on mutated real pipeline files;
//! - [`store`]: the checkpoint reader (`status`, `runs`, and the binary's `run` and `status`)
//!   on real SQLite stores and flight records, truncated, bit-flipped and rewritten;
//! - [`records`]: the `jsonl` source on hostile files, and record decoding (what the plugin
//!   host does with a plugin's answer);
//! - [`plugin`]: the JSON boundary of the plugin ABI, both sides: the SDK's exported functions
//!   called with bad configurations and records, and hostile records through a real plugin.
//!
//! Each target runs for a fixed time (see [`budget`]) on a fixed, printed seed;
//! `STAGEWISE_FUZZ_SECONDS` and `STAGEWISE_CAMPAIGN_SCALE` make it longer,
//! `STAGEWISE_CAMPAIGN_SEED` explores other inputs. A failure prints the seed and the smallest
//! input proptest shrank it to; such an input becomes a plain regression test beside its target.

#[path = "../util/mod.rs"]
mod util;

mod budget;
mod config;
mod plugin;
mod records;
mod store;
