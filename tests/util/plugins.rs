//! The plugin libraries the tests load, built on first use with the same cargo, target folder
//! and profile as the binary under test, so that `cargo nextest run` (or `cargo test`) on a
//! fresh clone needs no separate build step. Cargo's own lock serializes test processes that
//! ask at the same time; the second finds everything up to date.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::{bin, workspace_root};

/// `plugins/dedupe`.
pub const DEDUPE: &str = "stagewise-plugin-dedupe";
/// `plugins/fixtures/misbehave`: kinds `misbehave` and `noop`.
pub const MISBEHAVE: &str = "stagewise-fixture-misbehave";
/// `plugins/fixtures/abi-mismatch`: reports ABI version 999.
pub const ABI_MISMATCH: &str = "stagewise-fixture-abi-mismatch";

const PACKAGES: &[&str] = &[DEDUPE, MISBEHAVE, ABI_MISMATCH];

/// The folder cargo writes the binary under test and the plugin libraries to.
fn profile_dir() -> &'static Path {
    Path::new(bin())
        .parent()
        .expect("the binary lives in a profile folder")
}

/// The built library of `package` (one of the constants above).
pub fn library(package: &str) -> PathBuf {
    assert!(
        PACKAGES.contains(&package),
        "unknown plugin package {package}"
    );
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(build);
    let file = format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        package.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    );
    let path = profile_dir().join(file);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

fn build() {
    let dir = profile_dir();
    let target = dir
        .parent()
        .expect("a profile folder is inside the target folder");
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", target)
        .args(["build", "--quiet", "--profile", profile]);
    for package in PACKAGES {
        command.args(["-p", package]);
    }
    let out = command.output().expect("run cargo build for the plugins");
    assert!(
        out.status.success(),
        "building the plugin libraries failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
