//! A bench binary's command line and exit code.

use std::process::ExitCode;
use std::str::FromStr;

/// The arguments a bench binary was given.
pub struct Args {
    /// Whether cargo's `--bench` flag was among them: `cargo bench` appends it; without it (as
    /// under `cargo test --benches`) a bench only smoke-tests itself.
    pub bench: bool,
    /// The other arguments, in order.
    pub rest: Vec<String>,
}

/// The arguments after one that [`Args::read`] hands to a bench, from which it takes a flag's
/// value.
pub type Rest = std::vec::IntoIter<String>;

/// An argument a bench does not know, or `--runs` without a positive number.
pub struct Unknown;

impl Args {
    /// Read the arguments in order: `--runs N` (N a positive number) gives the number of runs,
    /// `runs` without it; every other argument goes to `other` with the ones after it, and
    /// `other` returns false for one it does not know.
    pub fn read(
        self,
        mut runs: usize,
        mut other: impl FnMut(&str, &mut Rest) -> bool,
    ) -> Result<usize, Unknown> {
        let mut args = self.rest.into_iter();
        while let Some(arg) = args.next() {
            if arg == "--runs" {
                runs = positive(args.next()).ok_or(Unknown)?;
            } else if !other(&arg, &mut args) {
                return Err(Unknown);
            }
        }
        Ok(runs)
    }
}

/// This process's arguments.
pub fn args() -> Args {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    Args {
        bench: raw.iter().any(|a| a == "--bench"),
        rest: raw.into_iter().filter(|a| a != "--bench").collect(),
    }
}

/// A flag's value as a positive number (`--runs N`): None if it is missing, not a number or
/// not above zero.
pub fn positive<T: FromStr + PartialOrd + Default>(value: Option<String>) -> Option<T> {
    value
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > T::default())
}

/// Print `usage: TEXT` to stderr; the exit code of a command line that could not be read.
pub fn usage(text: &str) -> ExitCode {
    eprintln!("usage: {text}");
    ExitCode::from(2)
}

/// The exit code of a bench that ran to its end (`Ok`) or stopped on the error it prints.
pub fn exit(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
