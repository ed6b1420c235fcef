//! Gives `stagewise --version` the commit it was built from, that commit's date and the target
//! triple: `STAGEWISE_COMMIT`, `STAGEWISE_COMMIT_DATE` and `STAGEWISE_TARGET` for `env!`.
//!
//! Outside a git checkout (a crate tarball) or without `git`, the commit and its date are
//! `unknown`: a version string is never a reason for a build to fail.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    println!("cargo:rerun-if-changed=build.rs");

    // Only this crate's own repository: an unpacked tarball inside some other repository must
    // not take that repository's commit.
    let in_checkout = root.join(".git").exists();
    let in_repo = |args: &[&str]| in_checkout.then(|| git(&root, args)).flatten();

    let commit = in_repo(&["rev-parse", "--short=7", "HEAD"]);
    let date = in_repo(&["log", "-1", "--format=%cs"]);
    println!(
        "cargo:rustc-env=STAGEWISE_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    println!(
        "cargo:rustc-env=STAGEWISE_COMMIT_DATE={}",
        date.as_deref().unwrap_or("unknown")
    );
    println!(
        "cargo:rustc-env=STAGEWISE_TARGET={}",
        std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_owned())
    );

    // Run again when HEAD moves (a checkout) or the branch it names does (a commit), and not
    // otherwise. A path that does not exist would make cargo run this every build, so only
    // existing files are named. `--git-path` finds them in a worktree too.
    if in_checkout {
        let head = in_repo(&["rev-parse", "--git-path", "HEAD"]);
        let reference = in_repo(&["symbolic-ref", "-q", "HEAD"])
            .and_then(|name| in_repo(&["rev-parse", "--git-path", &name]));
        // A branch's ref may have been packed, leaving no file of its own.
        let packed = in_repo(&["rev-parse", "--git-path", "packed-refs"]);
        for path in [head, reference, packed].into_iter().flatten() {
            let path = root.join(path);
            if path.is_file() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}

/// `git args` run in `dir`: its trimmed output, or `None` when git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_owned())
}
