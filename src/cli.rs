//! The command line: parses arguments, calls the core, prints, and maps every result to a
//! documented exit code. The only place that prints an error to the user. [`main`] takes the
//! registry, so a runner with kinds of its own gets every command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use stagewise_core::spec::{self, ConfigError, Diagnostic, Loaded, Severity};
use stagewise_core::telemetry::{self, LogFormat};
use stagewise_core::{commands, Registry, RunOptions};

/// A line for the user on standard error, behind the log events before it. Unlike
/// `eprintln!`, a closed, broken or stuck stderr is not a panic nor a wait: the message is lost
/// and the command's exit code still says what happened.
macro_rules! say {
    ($($arg:tt)*) => {
        telemetry::say(format_args!($($arg)*))
    };
}

/// How long the last log lines may take to reach standard error before the process exits
/// anyway: a reader that stopped reading cannot hold it. After a stop's grace, the waits that
/// follow (a blocking call's 250 ms, the summary's flush of 250 ms, the runtime's 500 ms for
/// stuck threads, and this) must end within the 2 s the contract gives, with room to spare.
const LAST_LINES: std::time::Duration = std::time::Duration::from_millis(400);

/// Run the command line of `std::env::args` with `registry`'s kinds: `run`, `validate`,
/// `plan`, `schema`, `status`, `retry-failed`, `plugin inspect`, `completions`, `man`. Every
/// outcome is one of the documented exit codes (README, "Exit codes").
pub fn main(registry: Registry) -> ExitCode {
    let code = dispatch(Cli::parse(), &registry);
    telemetry::flush(LAST_LINES);
    code
}

fn dispatch(cli: Cli, registry: &Registry) -> ExitCode {
    telemetry::set_color(match cli.color {
        ColorChoice::Auto => telemetry::Color::Auto,
        ColorChoice::Always => telemetry::Color::Always,
        ColorChoice::Never => telemetry::Color::Never,
    });
    let log_format = match log_format(cli.log_format) {
        Ok(format) => format,
        Err(code) => return code,
    };
    telemetry::set_json(matches!(log_format, Format::Json));
    telemetry::set_quiet(cli.quiet);
    // A terminal that gets text lines shows a run's live progress and its summary as a table.
    telemetry::set_terminal(
        matches!(log_format, Format::Pretty)
            && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        !cli.quiet,
    );
    match cli.command {
        Command::Run {
            pipeline,
            fresh,
            yes,
        } => run(
            &pipeline,
            registry,
            log_format,
            RunOptions {
                fresh,
                retry_failed: false,
                run: None,
                // No one at a terminal to have asked: a scheduler's `--fresh` is meant.
                leave_unfinished: yes || !std::io::IsTerminal::is_terminal(&std::io::stdin()),
            },
        ),
        Command::RetryFailed {
            pipeline,
            run: number,
        } => run(
            &pipeline,
            registry,
            log_format,
            RunOptions {
                fresh: false,
                retry_failed: true,
                run: number,
                leave_unfinished: false,
            },
        ),
        Command::Validate { pipeline, connect } => {
            // Said before any is loaded: loading one runs its code, which may never return.
            // (A file that cannot be read twice — a pipe, `/dev/stdin` — is read once, by the
            // check itself.)
            let regular = std::fs::metadata(&pipeline).is_ok_and(|m| m.is_file());
            let libraries = if regular {
                spec::plugin_libraries(&pipeline, registry)
            } else {
                Vec::new()
            };
            if !libraries.is_empty() {
                let named: Vec<String> = libraries
                    .iter()
                    .map(|l| format!("`{}`", stagewise_core::text::printable(l)))
                    .collect();
                say!(
                    "loading the plugin libraries this file names, to check their stages (loading a plugin runs its code): {}",
                    named.join(", ")
                );
            }
            validate(&pipeline, registry, log_format, connect)
        }
        Command::Plan { pipeline, json } => match spec::plan(&pipeline, registry) {
            Ok(planned) => {
                print_diagnostics(&planned.warnings, Report::Plain);
                if json {
                    out(&format!("{:#}\n", planned.plan.to_json()))
                } else {
                    out(&planned.plan.render())
                }
            }
            Err(e) => invalid(&pipeline, &e, Report::Plain),
        },
        Command::Schema => out(&format!("{:#}\n", spec::json_schema(registry))),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "stagewise", &mut script);
            out(&String::from_utf8_lossy(&script))
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .expect("writing to a Vec cannot fail");
            out(&String::from_utf8_lossy(&page))
        }
        Command::Plugin(PluginCommand::Inspect { path }) => inspect(&path),
        Command::Runs {
            pipeline,
            json,
            limit,
        } => {
            let loaded = match spec::load_without_plugins(&pipeline, registry) {
                Ok(l) => l,
                Err(e) => return invalid(&pipeline, &e, Report::ErrorsOnly),
            };
            match commands::runs(&loaded.pipeline, limit) {
                Ok(history) if json => out(&format!(
                    "{}\n",
                    stagewise_core::text::json_printable(
                        &serde_json::to_string(&history.ends).unwrap_or_else(|_| "[]".into())
                    )
                )),
                Ok(history) => out(&commands::render_runs(&loaded.pipeline, &history)),
                Err(e) => {
                    say!("error: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Command::Status {
            pipeline,
            json,
            limit,
            run: number,
        } => {
            // The state is read without running plugin code: no plugin library is loaded.
            let loaded = match spec::load_without_plugins(&pipeline, registry) {
                Ok(l) => l,
                Err(e) => return invalid(&pipeline, &e, Report::ErrorsOnly),
            };
            match commands::status(&loaded.pipeline, limit, number) {
                // Keys and errors are untrusted: nothing in them may steer the terminal.
                Ok(status) if json => out(&format!(
                    "{}\n",
                    stagewise_core::text::json_printable(
                        &commands::status_json(&loaded.pipeline, &status).to_string()
                    )
                )),
                Ok(status) => out(&commands::render_status(&loaded.pipeline, &status)),
                Err(e) => {
                    say!("error: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
    }
}

/// The log format: the flag's, else `STAGEWISE_LOG_FORMAT`'s (any case; empty is unset), else
/// pretty. `Err` is the exit code of a variable that names no format (said).
fn log_format(flag: Option<Format>) -> Result<Format, ExitCode> {
    if let Some(format) = flag {
        return Ok(format);
    }
    let Some(value) = std::env::var_os("STAGEWISE_LOG_FORMAT") else {
        return Ok(Format::Pretty);
    };
    let value = value.to_string_lossy();
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "pretty" => Ok(Format::Pretty),
        "json" => Ok(Format::Json),
        _ => {
            say!(
                "error: `STAGEWISE_LOG_FORMAT` is `{value}`: write `pretty` or `json` (or unset it)"
            );
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

/// `validate`: load and check the file, its plugin libraries included, and the log filter the
/// run would use (with `connect`, against the world too); with JSON logs, its problems are log
/// events.
fn validate(
    pipeline: &std::path::Path,
    registry: &Registry,
    format: Format,
    connect: bool,
) -> ExitCode {
    let report = match format {
        Format::Pretty => match telemetry::filter() {
            Ok(_) => Report::Plain,
            Err(e) => {
                say!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        Format::Json => match start_logging(format) {
            Ok(()) => Report::Logged,
            Err(code) => return code,
        },
    };
    if connect {
        return validate_connected(pipeline, registry, report);
    }
    match spec::lint(pipeline, registry) {
        Ok(linted) => {
            print_diagnostics(&linted.warnings, report);
            say!(
                "{} is valid: pipeline `{}`, {} stage(s)",
                pipeline.display(),
                stagewise_core::text::printable(&linted.name),
                linted.stages
            );
            ExitCode::SUCCESS
        }
        Err(e) => invalid(pipeline, &e, report),
    }
}

/// `validate --connect`: the file as `run` loads it (secrets needed), then checked against the
/// world, the checkpoint store included; what passed is said too.
fn validate_connected(pipeline: &std::path::Path, registry: &Registry, report: Report) -> ExitCode {
    let loaded = match load(pipeline, registry, report) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let probed = match probe(pipeline, &loaded, registry, spec::Scope::Everything, report) {
        Ok(probed) => probed,
        Err(code) => return code,
    };
    for line in &probed.checked {
        if report == Report::Logged {
            tracing::info!(check = %line, "checked");
        } else {
            say!("checked: {line}");
        }
    }
    let warnings = probed.diagnostics.len();
    say!(
        "{} is valid and its connections check out: pipeline `{}`, {} stage(s), {} check(s) passed{}",
        pipeline.display(),
        stagewise_core::text::printable(&loaded.pipeline.name),
        loaded.pipeline.stages.len(),
        probed.checked.len(),
        match warnings {
            0 => String::new(),
            n => format!(", {n} warning(s)"),
        }
    );
    ExitCode::SUCCESS
}

/// Check `loaded` against the world (`scope`): its faults of the configuration are reported as
/// the file's errors (`Err` is the exit code, 2); its warnings are said.
fn probe(
    path: &std::path::Path,
    loaded: &Loaded,
    registry: &Registry,
    scope: spec::Scope,
    report: Report,
) -> Result<spec::Probed, ExitCode> {
    let probed = spec::probe(&loaded.pipeline, registry, scope);
    if probed.errors() > 0 {
        return Err(invalid(
            path,
            &ConfigError {
                diagnostics: probed.diagnostics,
            },
            report,
        ));
    }
    print_diagnostics(&probed.diagnostics, report);
    Ok(probed)
}

/// Check a loaded pipeline against the world before its run takes a batch: a fault of the
/// configuration stops it here (exit 2, nothing run); an outage is said and left to the
/// stages' retries.
fn probe_before_run(
    path: &std::path::Path,
    loaded: &Loaded,
    registry: &Registry,
    report: Report,
) -> Result<(), ExitCode> {
    let started = std::time::Instant::now();
    let probed = probe(path, loaded, registry, spec::Scope::Stages, report)?;
    tracing::debug!(
        checks = probed.checked.len(),
        elapsed_secs = started.elapsed().as_secs_f64(),
        "the stages' connections, statements and fields check out"
    );
    // A stop asked for meanwhile: nothing is built (an `init_script` would run) or taken.
    if stagewise_core::stop_requested_early() {
        tracing::warn!("stopped before the batch was taken, as asked: nothing was run");
        return Err(ExitCode::from(loaded.pipeline.interrupted_exit_code));
    }
    Ok(())
}

/// Exit code of a usage or configuration error (nothing was run).
const EXIT_CONFIG: u8 = 2;
/// Exit code of an aborted run.
const EXIT_ABORTED: u8 = 3;

/// `--version`: the package version, the commit and its date (`unknown` outside a git checkout)
/// and the target triple, all set by `build.rs`.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("STAGEWISE_COMMIT"),
    " ",
    env!("STAGEWISE_COMMIT_DATE"),
    ", ",
    env!("STAGEWISE_TARGET"),
    ")"
);

/// The end of `--help` and of the man page. The codes are docs/running.md's "Exit codes"; the
/// variables are the ones the binary reads (docs/pipeline.md, docs/operations.md).
const AFTER_LONG_HELP: &str = "\
Exit codes:
  0   finished: every item done or skipped
  1   finished with failed items, or no progress
  2   usage or configuration error, or an unusable checkpoint store:
      nothing was run
  3   aborted: max_failures crossed, a fatal stage error, a wedged
      stage, a failing store, or the watchdog
  75  interrupted (a signal, max_run_time, or the runner was fenced),
      progress saved: run again to resume (`[pipeline]
      interrupted_exit_code` may change this code)

Environment:
  STAGEWISE_LOG
      the log filter: `debug`, or `info,stagewise_stages_llm=debug`
  RUST_LOG
      the log filter when STAGEWISE_LOG is unset
  STAGEWISE_LOG_FORMAT
      `pretty` or `json`, as --log-format
  NO_COLOR
      set and not empty: no colour with --color auto
  STAGEWISE_PIPELINE__<KEY>, STAGEWISE_CHECKPOINT__<KEY>,
  STAGEWISE_DEFAULTS__<KEY>
      override a key of that table of the pipeline file (nested keys
      continue with `__`)
  STAGEWISE_STAGE__<NAME>__<KEY>
      overrides a key of the stage <NAME> (upper-cased, `-` as `_`),
      e.g. STAGEWISE_STAGE__FETCH__RETRY__ATTEMPTS=5
  ${VAR} in a string value of the pipeline file is read from the
  environment.";

#[derive(Parser)]
#[command(
    name = "stagewise",
    version = VERSION,
    about = "A runner for batch pipelines that must not die silently",
    after_help = "Exit codes and environment variables: stagewise --help",
    after_long_help = AFTER_LONG_HELP
)]
struct Cli {
    /// Log line format: `pretty`, for people, or `json`, one object per line for log
    /// collectors (`run`, `retry-failed`, and `validate`'s problems); else
    /// `STAGEWISE_LOG_FORMAT`, else `pretty`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<Format>,
    /// Colour the log's levels and the `error:` of messages: `auto` on a terminal unless
    /// `NO_COLOR` is set, `always`, or `never`. JSON lines are never coloured.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    color: ColorChoice,
    /// No live progress on a terminal, and only warnings, errors and the summary in the log
    /// (unless `STAGEWISE_LOG` or `RUST_LOG` sets a filter).
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Pretty,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline: resume its unfinished run, or take a new batch.
    Run {
        /// The pipeline file.
        #[arg(default_value = "pipeline.toml")]
        pipeline: PathBuf,
        /// Start a new run even if the last one is unfinished (its items not done yet are left
        /// behind, which it says; at a terminal, only with `--yes`).
        #[arg(long)]
        fresh: bool,
        /// With `--fresh`: yes, leave the unfinished run's items behind.
        #[arg(long, requires = "fresh")]
        yes: bool,
    },
    /// Check the pipeline file without running it.
    ///
    /// The plugin libraries its plugin stages name are loaded, to check those stages' keys
    /// against the schemas they declare: loading a plugin runs its code.
    Validate {
        /// The pipeline file.
        #[arg(default_value = "pipeline.toml")]
        pipeline: PathBuf,
        /// Check it against the world too, as `run` does before it takes a batch: connect to
        /// every database and the checkpoint store, prepare every SQL statement, see that the
        /// files are there, that the fields the prompts and statements name are ones the
        /// records will have, and that each LLM endpoint answers (its model list) and which
        /// `structured_output` mode it takes (an answer of at most 16 tokens, or two: the only
        /// tokens spent). It needs the secrets: an unset `${VAR}` is an error. Nothing is created or
        /// written. A server out of reach is a warning; a fault of the file (a statement that
        /// does not prepare, a password refused) an error, exit 2.
        #[arg(long)]
        connect: bool,
    },
    /// Show every setting after resolution and where it came from; runs and opens nothing.
    ///
    /// Each value's origin is a place in the file, an environment override, `[defaults]`, the
    /// stage's kind, or the built-in default. Secrets are shown as `***`. No plugin library is
    /// loaded: a plugin stage's own keys are shown as written, unchecked (`validate` checks
    /// them).
    Plan {
        /// The pipeline file.
        #[arg(default_value = "pipeline.toml")]
        pipeline: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the latest run: counts per state and stage, failed items with their errors.
    ///
    /// No plugin library is loaded.
    Status {
        /// The pipeline file.
        #[arg(default_value = "pipeline.toml")]
        pipeline: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// List at most this many failed items, and as many skipped ones (it says how many
        /// more there are).
        #[arg(long, value_name = "N", default_value_t = 1000)]
        limit: u64,
        /// Show run N (its number, as `status` and the logs show it) rather than the latest.
        #[arg(long, value_name = "N")]
        run: Option<i64>,
    },
    /// List the pipeline's past runs, newest first: one row per process that ran a batch's
    /// items (with several runners, one per runner), as the checkpoint store keeps them, and
    /// when a check last found nothing new.
    ///
    /// No plugin library is loaded.
    Runs {
        /// The pipeline file.
        #[arg(default_value = "pipeline.toml")]
        pipeline: PathBuf,
        /// Print a JSON list of objects (`id`, `started`, `ended`, `outcome`, `exit_code`,
        /// `items`, `done`, `failed`, `skipped`, `reason`, `pid`, `host`).
        #[arg(long)]
        json: bool,
        /// List at most this many.
        #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
        limit: u64,
    },
    /// Put the latest run's failed items (or run N's, with `--run N`) back to pending and run
    /// them again.
    ///
    /// It runs them from the checkpoint, marked by `persist`'s `on_failure` or not; a `statement`
    /// that clears the mark (as the shipped pipeline's does) unmarks those that then succeed. To
    /// have the source's query take marked rows again, clear their mark yourself
    /// (`UPDATE articles SET failed_at = NULL WHERE …`).
    RetryFailed {
        /// The pipeline file.
        #[arg(default_value = "pipeline.toml")]
        pipeline: PathBuf,
        /// Retry this run's failed items (its number, as `status` and the logs show it) rather
        /// than the latest run's. Run again with the same number to resume it if interrupted.
        #[arg(long, value_name = "N")]
        run: Option<i64>,
    },
    /// Print a JSON Schema of pipeline.toml, for editors that complete and check TOML.
    Schema,
    /// Dynamic stage plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Print a shell completion script.
    ///
    /// For example `stagewise completions bash >
    /// ~/.local/share/bash-completion/completions/stagewise`.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    ///
    /// For example `stagewise man > ~/.local/share/man/man1/stagewise.1`.
    Man,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Load a plugin library and show its name, version, ABI version, kinds and their schemas.
    Inspect {
        /// The plugin library (e.g. target/release/libmy_stage.so).
        path: PathBuf,
    },
}

/// `plugin inspect`: what a library says about itself, or why it is not a plugin (exit 2).
fn inspect(path: &std::path::Path) -> ExitCode {
    let info = match stagewise_core::plugin::inspect(path) {
        Ok(info) => info,
        Err(e) => {
            say!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The library's own words, with control characters escaped: a file must not be able to
    // drive the terminal it is inspected on.
    let plain = |s: &str| stagewise_core::text::printable(s).into_owned();
    let mut text = format!(
        "plugin {} {}\nfile: {}\nABI version: {}\n",
        plain(&info.name),
        plain(&info.version),
        info.path.display(),
        info.abi_version
    );
    for kind in &info.kinds {
        let schema = serde_json::to_string_pretty(&kind.config_schema)
            .expect("a JSON value always serializes");
        text.push_str(&format!("\nkind `{}`", plain(&kind.name)));
        if !kind.description.is_empty() {
            text.push_str(&format!(": {}", plain(&kind.description)));
        }
        text.push_str(&format!("\nconfig schema:\n{schema}\n"));
    }
    out(&text)
}

/// How to show a file's problems: plain lines for a person, log events for `run
/// --log-format json` (so that its output stays JSON from the first line).
#[derive(Clone, Copy, PartialEq)]
enum Report {
    Plain,
    Logged,
    ErrorsOnly,
}

fn print_diagnostics(diagnostics: &[Diagnostic], report: Report) {
    let mut sources = std::collections::HashMap::new();
    for d in diagnostics {
        match (report, d.severity) {
            (Report::ErrorsOnly, Severity::Warning) => {}
            (Report::Logged, Severity::Error) => {
                tracing::error!(problem = %d, "invalid pipeline file")
            }
            (Report::Logged, Severity::Warning) => tracing::warn!(problem = %d, "pipeline file"),
            (_, severity) => {
                let word = match severity {
                    Severity::Error => "error",
                    Severity::Warning => "warning",
                };
                say!("{word}: {d}");
                let source = sources
                    .entry(d.file.clone())
                    .or_insert_with(|| source_text(&d.file));
                if let Some(lines) = snippet(d, source.as_deref()) {
                    telemetry::block(&lines);
                }
            }
        }
    }
}

/// The text of the pipeline file `file`, if it is a regular file (not `/dev/stdin`, say,
/// which cannot be read twice) of at most 1 MiB.
fn source_text(file: &str) -> Option<String> {
    let meta = std::fs::metadata(file).ok()?;
    if !meta.is_file() || meta.len() > 1 << 20 {
        return None;
    }
    std::fs::read_to_string(file).ok()
}

/// The line of `source` that `d` is about, with a caret under the key or value it names, as
/// cargo prints it (the `file:line:col` line stays first, said before). The file may hold
/// secrets: every quoted value on the line is shown as `"…"`, but the one under the caret when
/// the message quotes it already.
fn snippet(d: &Diagnostic, source: Option<&str>) -> Option<Vec<String>> {
    let spec::Place::File { line, col } = d.place.as_ref()? else {
        return None;
    };
    let text = source?.lines().nth(line.checked_sub(1)?)?;
    if text.chars().count() > 300 {
        return None;
    }
    let at = text
        .char_indices()
        .nth(col.checked_sub(1)?)
        .map(|(i, _)| i)?;
    let (shown, start, end) = masked(text, at, &d.message);
    let rendered = annotate_snippets::Renderer::plain()
        .render(
            annotate_snippets::Level::Error.title("").snippet(
                annotate_snippets::Snippet::source(&shown)
                    .line_start(*line)
                    .annotation(annotate_snippets::Level::Error.span(start..end)),
            ),
        )
        .to_string();
    // The title line is ours, said above; the rest is the snippet.
    Some(rendered.lines().skip(1).map(str::to_owned).collect())
}

/// `text` with its values masked (see [`snippet`]), and the byte range there of the token at
/// byte `at` of `text`. Keys (a bare word before `=`, a table's header) are shown; every value,
/// quoted or not, and every comment is shown as `…` — but the token under the caret when the
/// message quotes it already. A line inside a multi-line string has no key: all of it is
/// masked.
fn masked(text: &str, at: usize, message: &str) -> (String, usize, usize) {
    let header = text.trim_start().starts_with('[');
    let mut out = String::with_capacity(text.len());
    let (mut start, mut end) = (None, None);
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let c = rest.chars().next().unwrap_or(' ');
        let under_caret = |from: usize, to: usize| at >= from && at < to.max(from + 1);
        let shown = |token: &str, from: usize, to: usize| {
            under_caret(from, to) && !token.is_empty() && message.contains(token)
        };
        if c == '#' {
            // A comment: masked to the end of the line.
            if under_caret(i, text.len()) {
                start = Some(out.len());
            }
            out.push_str("# …");
            if start.is_some() && end.is_none() {
                end = Some(out.len());
            }
            break;
        }
        if rest.starts_with("\"\"\"") || rest.starts_with("'''") {
            // A multi-line string's opening: it and the rest of the line are masked.
            if under_caret(i, text.len()) {
                start = Some(out.len());
            }
            out.push_str(&rest[..3]);
            out.push('…');
            if start.is_some() && end.is_none() {
                end = Some(out.len());
            }
            break;
        }
        if c == '"' || c == '\'' {
            // A quoted value, to its closing quote (a backslash escapes in "…").
            let mut len = c.len_utf8();
            let mut escaped = false;
            let mut closed = false;
            for q in rest[len..].chars() {
                len += q.len_utf8();
                if escaped {
                    escaped = false;
                } else if q == '\\' && c == '"' {
                    escaped = true;
                } else if q == c {
                    closed = true;
                    break;
                }
            }
            let inner_end = if closed { len - c.len_utf8() } else { len };
            let inner = &rest[c.len_utf8()..inner_end];
            let caret = under_caret(i, i + len);
            if caret {
                start = Some(out.len());
            }
            out.push(c);
            out.push_str(if shown(inner, i, i + len) {
                inner
            } else {
                "…"
            });
            if closed {
                out.push(c);
            }
            if caret {
                end = Some(out.len());
            }
            i += len;
            continue;
        }
        let structural = |ch: char| ch.is_whitespace() || "[]{},=#\"'".contains(ch);
        if structural(c) {
            if i == at {
                start = Some(out.len());
                out.push(c);
                end = Some(out.len());
            } else {
                out.push(c);
            }
            i += c.len_utf8();
            continue;
        }
        // A bare word: a key if `=` follows it (or in a table's header), else a value.
        let len = rest.find(structural).unwrap_or(rest.len());
        let token = &rest[..len];
        let key = header || rest[len..].trim_start().starts_with('=');
        let caret = under_caret(i, i + len);
        if caret {
            start = Some(out.len());
        }
        out.push_str(if key || shown(token, i, i + len) {
            token
        } else {
            "…"
        });
        if caret {
            end = Some(out.len());
        }
        i += len;
    }
    let start = start.unwrap_or(out.len());
    let end = end.unwrap_or(out.len()).max(start);
    // An empty span still gets one caret.
    let end = if end == start {
        out[start..]
            .chars()
            .next()
            .map_or(start, |c| start + c.len_utf8())
    } else {
        end
    };
    (out, start, end)
}

/// Load and validate, reporting problems; `Err` is the exit code.
fn load(path: &std::path::Path, registry: &Registry, report: Report) -> Result<Loaded, ExitCode> {
    match spec::load(path, registry) {
        Ok(loaded) => {
            print_diagnostics(&loaded.warnings, report);
            Ok(loaded)
        }
        Err(e) => Err(invalid(path, &e, report)),
    }
}

/// Report a file that failed validation; the exit code.
fn invalid(path: &std::path::Path, e: &ConfigError, report: Report) -> ExitCode {
    print_diagnostics(&e.diagnostics, report);
    let errors = e
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let message = format!("{} has {errors} error(s); nothing was run", path.display());
    if report == Report::Logged {
        tracing::error!("{message}");
    } else {
        say!("error: {message}");
    }
    ExitCode::from(EXIT_CONFIG)
}

/// Install logging in `format`, with the filter the environment gives; `Err` is the exit code
/// of a filter that is not one (said).
fn start_logging(format: Format) -> Result<(), ExitCode> {
    let filter = telemetry::filter().map_err(|e| {
        say!("error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    telemetry::init(
        match format {
            Format::Pretty => LogFormat::Pretty,
            Format::Json => LogFormat::Json,
        },
        filter,
    );
    Ok(())
}

fn run(
    path: &std::path::Path,
    registry: &Registry,
    format: Format,
    options: RunOptions,
) -> ExitCode {
    if let Err(code) = start_logging(format) {
        return code;
    }
    // From now on a stop signal waits for the run's watchdog, which acts on it.
    stagewise_core::hold_signals();
    // A person reads plain lines; a log collector needs every line to be JSON.
    let report = match format {
        Format::Pretty => Report::Plain,
        Format::Json => Report::Logged,
    };
    let loaded = match load(path, registry, report) {
        Ok(l) => l,
        Err(code) => return code,
    };
    if let Err(code) = probe_before_run(path, &loaded, registry, report) {
        return code;
    }
    // Stage panics are caught per item; this catches a fault in the runner itself, so that it
    // too ends with a logged reason and a documented code instead of an unexplained crash.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        stagewise_core::run(&loaded.pipeline, registry, options)
    }));
    match result {
        Ok(Ok(summary)) => ExitCode::from(u8::try_from(summary.exit_code).unwrap_or(EXIT_ABORTED)),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "nothing was run");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(_) => {
            tracing::error!("the runner failed unexpectedly (the panic is logged above); progress committed so far is kept and the next run resumes");
            ExitCode::from(EXIT_ABORTED)
        }
    }
}

/// Print to stdout; a closed pipe (`stagewise status | head`) is not an error.
fn out(text: &str) -> ExitCode {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            say!("error: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}
