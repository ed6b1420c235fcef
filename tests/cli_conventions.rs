//! What a command line is expected to have besides its commands: shell completions
//! (`completions <shell>`), a man page (`man`), a `--version` that says which build it is, and a
//! `--help` that ends with the exit codes and the environment variables.

mod util;

use util::{workspace_root, Cmd, Output, TestDir};

/// `stagewise ARGS…` in a fresh folder, without a pipeline.
fn stagewise(args: &[&str]) -> Output {
    let dir = TestDir::new();
    let (first, rest) = args.split_first().expect("at least one argument");
    rest.iter()
        .fold(Cmd::bare(dir.path(), first), |cmd, arg| cmd.arg(arg))
        .output()
}

#[test]
fn bash_completions_complete_every_command() {
    let out = stagewise(&["completions", "bash"]);
    out.assert_code(0);
    assert!(
        out.stdout.contains("complete -F _stagewise"),
        "no `complete` call for stagewise\n{out}"
    );
    // The words offered after `stagewise `: the commands, each a word of its own.
    let offered: Vec<&str> = out
        .stdout
        .lines()
        .find(|l| l.contains("opts=\"") && l.contains(" validate "))
        .unwrap_or_else(|| panic!("no list of commands\n{out}"))
        .split(['"', ' '])
        .collect();
    for command in [
        "run",
        "validate",
        "status",
        "retry-failed",
        "completions",
        "man",
    ] {
        assert!(
            offered.contains(&command),
            "`{command}` is not completed\n{out}"
        );
    }
}

#[test]
fn every_shell_gets_a_script() {
    let zsh = stagewise(&["completions", "zsh"]);
    zsh.assert_code(0);
    assert!(
        zsh.stdout.starts_with("#compdef stagewise"),
        "not a zsh completion file\n{zsh}"
    );
    for shell in ["fish", "elvish", "powershell"] {
        let out = stagewise(&["completions", shell]);
        out.assert_code(0);
        assert!(
            out.stdout.contains("retry-failed"),
            "{shell}: no commands\n{out}"
        );
    }
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let out = stagewise(&["completions", "tcsh"]);
    out.assert_code(2);
    assert!(out.stdout.is_empty(), "a script was printed anyway\n{out}");
    out.assert_stderr_contains("tcsh");
    // The error names the shells there are.
    out.assert_stderr_contains("bash");
}

#[test]
fn the_man_page_is_roff_and_lists_the_commands() {
    let out = stagewise(&["man"]);
    out.assert_code(0);
    // The page opens with its title, after the two lines every roff page of `clap_mangen`
    // starts with (they define the apostrophe).
    let title = out
        .stdout
        .lines()
        .find(|l| !l.starts_with(".ie ") && !l.starts_with(".el "))
        .unwrap_or_default();
    assert!(
        title.starts_with(".TH stagewise 1"),
        "not a roff page titled stagewise\n{out}"
    );
    // roff writes a hyphen `\-`.
    let text = out.stdout.replace("\\-", "-");
    for command in ["run", "validate", "status", "retry-failed", "completions"] {
        assert!(
            text.contains(&format!("stagewise-{command}")),
            "`{command}` is not in the man page\n{out}"
        );
    }
    assert!(
        out.stdout.contains("Exit codes"),
        "the man page has no exit codes\n{out}"
    );
}

#[test]
fn version_names_the_commit_its_date_and_the_target() {
    let out = stagewise(&["--version"]);
    out.assert_code(0);
    let line = out.stdout.trim_end();
    let prefix = format!("stagewise {} (", env!("CARGO_PKG_VERSION"));
    let inner = line
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("expected `{prefix}… …, …)`\n{out}"));
    let (commit_and_date, target) = inner
        .split_once(", ")
        .unwrap_or_else(|| panic!("no `, ` before the target\n{out}"));
    let (commit, date) = commit_and_date
        .split_once(' ')
        .unwrap_or_else(|| panic!("no date after the commit\n{out}"));

    assert!(
        commit == "unknown" || (commit.len() == 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "commit {commit:?} is neither 7 hex digits nor `unknown`\n{out}"
    );
    let is_date = date.len() == 10
        && date.char_indices().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    assert!(
        date == "unknown" || is_date,
        "date {date:?} is neither YYYY-MM-DD nor `unknown`\n{out}"
    );
    assert!(
        target.starts_with(std::env::consts::ARCH) && target.contains(std::env::consts::OS),
        "target {target:?} is not this build's ({}, {})\n{out}",
        std::env::consts::ARCH,
        std::env::consts::OS
    );

    // Built from a checkout with git at hand: the commit is the checkout's.
    if workspace_root().join(".git").exists() {
        let head = std::process::Command::new("git")
            .arg("-C")
            .arg(workspace_root())
            .args(["rev-parse", "--short=7", "HEAD"])
            .output()
            .ok()
            .filter(|h| h.status.success());
        if let Some(head) = head {
            assert_eq!(
                commit,
                String::from_utf8_lossy(&head.stdout).trim(),
                "not the checkout's commit\n{out}"
            );
        }
    }

    let short = stagewise(&["-V"]);
    short.assert_code(0);
    assert_eq!(short.stdout, out.stdout, "`-V` and `--version` differ");
}

#[test]
fn help_ends_with_the_exit_codes_and_the_environment() {
    let out = stagewise(&["--help"]);
    out.assert_code(0);
    let codes = out
        .stdout
        .find("Exit codes")
        .unwrap_or_else(|| panic!("no exit codes\n{out}"));
    let after = &out.stdout[codes..];
    for code in ["0 ", "1 ", "2 ", "3 ", "75 "] {
        assert!(
            after.lines().any(|l| l.trim_start().starts_with(code)),
            "exit code {code}is not listed\n{out}"
        );
    }
    for variable in ["STAGEWISE_LOG", "STAGEWISE_STAGE__<NAME>__<KEY>"] {
        assert!(after.contains(variable), "{variable} is not listed\n{out}");
    }
    // After the commands and options, not before.
    let commands = out.stdout.find("Commands:").expect("a commands section");
    assert!(
        commands < codes,
        "the exit codes come before the commands\n{out}"
    );

    // `-h` stays short and says where they are.
    let short = stagewise(&["-h"]);
    short.assert_code(0);
    assert!(!short.stdout.contains("75 "), "{short}");
    assert!(short.stdout.contains("stagewise --help"), "{short}");
}
