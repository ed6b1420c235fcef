//! The deployment examples in `examples/deploy/` keep what docs/operations.md promises: each
//! platform leaves stagewise room to stop by itself (`max_run_time`) and to drain after a
//! SIGTERM (`shutdown_grace`), exit codes mean what they should to the platform, a platform
//! never piles up runs (several runners on one run are there on purpose, sharing it through
//! PostgreSQL), and signals reach the process, through `stagewise-wrap.sh` where the platform
//! needs one. The numbers are read from the files and checked against the pipeline the
//! manifests carry, so changing one without the other fails here.

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use util::{workspace_root, Cmd, Pipeline, TestDir};
use yaml_rust2::{Yaml, YamlLoader};

/// What the checks require beyond the bare sum: time to be scheduled, to save the checkpoint
/// and to write the summary. The manifests leave more; less than this is a mistake.
const MARGIN: Duration = Duration::from_secs(10);

fn deploy_file(name: &str) -> String {
    let path = workspace_root().join("examples/deploy").join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn yaml_docs(name: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&deploy_file(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The one document of `kind` in `file` (cronjob.yaml, cronjob-parallel.yaml).
fn manifest(file: &str, kind: &str) -> Yaml {
    let docs: Vec<Yaml> = yaml_docs(file)
        .into_iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect();
    assert_eq!(docs.len(), 1, "{file} should hold one {kind}");
    docs.into_iter().next().expect("checked above")
}

fn str_at<'a>(yaml: &'a Yaml, what: &str) -> &'a str {
    yaml.as_str()
        .unwrap_or_else(|| panic!("`{what}` should be a string, is {yaml:?}"))
}

fn secs_at(yaml: &Yaml, what: &str) -> Duration {
    let n = yaml
        .as_i64()
        .unwrap_or_else(|| panic!("`{what}` should be a number of seconds, is {yaml:?}"));
    Duration::from_secs(u64::try_from(n).expect("a positive number of seconds"))
}

fn list_at<'a>(yaml: &'a Yaml, what: &str) -> &'a [Yaml] {
    yaml.as_vec()
        .unwrap_or_else(|| panic!("`{what}` should be a list, is {yaml:?}"))
}

/// The `pipeline.toml` the ConfigMap of `file` carries: what its CronJob runs, and what the
/// systemd unit (cronjob.yaml's) or the machines sharing a run (cronjob-parallel.yaml's) are
/// installed with.
fn carried_pipeline(file: &str) -> String {
    let config_map = manifest(file, "ConfigMap");
    str_at(&config_map["data"]["pipeline.toml"], "data.pipeline.toml").to_owned()
}

/// The durations a platform's limits must be measured against.
struct Budget {
    max_run_time: Duration,
    shutdown_grace: Duration,
    heartbeat: Duration,
    lease_ttl: Duration,
}

fn budget(pipeline: &str) -> Budget {
    let table: toml::Table = pipeline.parse().expect("the carried pipeline is TOML");
    let duration = |section: &str, key: &str| -> Option<Duration> {
        table.get(section).and_then(|s| s.get(key)).map(|v| {
            let text = v
                .as_str()
                .unwrap_or_else(|| panic!("`{section}.{key}` is not a string"));
            humantime::parse_duration(text).expect("a humantime duration")
        })
    };
    Budget {
        // A deployed pipeline must stop by itself: without it the platform's deadline does.
        max_run_time: duration("pipeline", "max_run_time")
            .expect("the deployed pipeline sets `max_run_time`"),
        // The documented defaults.
        shutdown_grace: duration("pipeline", "shutdown_grace").unwrap_or(Duration::from_secs(30)),
        heartbeat: duration("pipeline", "heartbeat").unwrap_or(Duration::from_secs(10)),
        lease_ttl: duration("checkpoint", "lease_ttl").unwrap_or(Duration::from_secs(60)),
    }
}

/// A systemd time span: bare seconds, or units as humantime reads them ("90s", "15min").
fn systemd_span(text: &str) -> Duration {
    match text.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(text)
            .unwrap_or_else(|e| panic!("{text:?} is not a systemd time span: {e}")),
    }
}

/// The period of a `*/N * * * *` schedule, the only form the examples use.
fn every_n_minutes(schedule: &str) -> Duration {
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    assert_eq!(
        fields.len(),
        5,
        "{schedule:?} is not a five-field cron schedule"
    );
    assert_eq!(
        fields[1..],
        ["*", "*", "*", "*"],
        "{schedule:?}: only `*/N * * * *` is checked"
    );
    let n: u64 = fields[0]
        .strip_prefix("*/")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{schedule:?} is not `*/N * * * *`"));
    Duration::from_secs(n * 60)
}

#[test]
fn the_cronjob_lets_a_run_stop_by_itself_and_drain_before_it_is_killed() {
    let budget = budget(&carried_pipeline("cronjob.yaml"));
    let cronjob = manifest("cronjob.yaml", "CronJob");
    let job = &cronjob["spec"]["jobTemplate"]["spec"];
    let pod = &job["template"]["spec"];

    let deadline = secs_at(&job["activeDeadlineSeconds"], "activeDeadlineSeconds");
    assert!(
        deadline >= budget.max_run_time + budget.shutdown_grace + MARGIN,
        "activeDeadlineSeconds ({deadline:?}) must exceed max_run_time ({:?}) + shutdown_grace ({:?}) + {MARGIN:?}",
        budget.max_run_time,
        budget.shutdown_grace
    );
    let grace = secs_at(
        &pod["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    );
    assert!(
        grace >= budget.shutdown_grace + MARGIN,
        "terminationGracePeriodSeconds ({grace:?}) must exceed shutdown_grace ({:?}) + {MARGIN:?}",
        budget.shutdown_grace
    );
    // A Job that hits its deadline is gone (after its grace period) before the next tick.
    let period = every_n_minutes(str_at(&cronjob["spec"]["schedule"], "schedule"));
    assert!(
        deadline + grace <= period,
        "activeDeadlineSeconds + terminationGracePeriodSeconds ({:?}) should fit in the schedule's period ({period:?})",
        deadline + grace
    );
}

#[test]
fn the_cronjob_never_overlaps_and_maps_the_exit_codes() {
    let cronjob = manifest("cronjob.yaml", "CronJob");
    let spec = &cronjob["spec"];
    assert_eq!(spec["concurrencyPolicy"].as_str(), Some("Forbid"));
    secs_at(&spec["startingDeadlineSeconds"], "startingDeadlineSeconds");

    let job = &spec["jobTemplate"]["spec"];
    let retries = job["backoffLimit"]
        .as_i64()
        .expect("`backoffLimit` is set: exit 3 and crashes are retried a bounded number of times");
    assert!(
        retries >= 1,
        "backoffLimit {retries}: exit 3 should be retried"
    );
    assert_eq!(
        exit_action(job, 75),
        "Ignore",
        "75 means: run again to resume"
    );
    assert_eq!(
        exit_action(job, 2),
        "FailJob",
        "2 means: a configuration error"
    );
}

/// What the Job's podFailurePolicy does when its one container exits with `code`: the first
/// rule whose exit codes include it decides, as in Kubernetes.
fn exit_action(job: &Yaml, code: i64) -> String {
    let pod = &job["template"]["spec"];
    assert_eq!(
        pod["restartPolicy"].as_str(),
        Some("Never"),
        "podFailurePolicy requires restartPolicy: Never"
    );
    let containers = list_at(&pod["containers"], "containers");
    assert_eq!(containers.len(), 1);
    let container = str_at(&containers[0]["name"], "containers[0].name");
    let rules = list_at(&job["podFailurePolicy"]["rules"], "podFailurePolicy.rules");
    let rule = rules
        .iter()
        .find(|r| {
            let on = &r["onExitCodes"];
            on["operator"].as_str() == Some("In")
                && on["values"]
                    .as_vec()
                    .is_some_and(|v| v.iter().any(|c| c.as_i64() == Some(code)))
        })
        .unwrap_or_else(|| panic!("no podFailurePolicy rule covers exit {code}"));
    assert_eq!(
        rule["onExitCodes"]["containerName"].as_str(),
        Some(container),
        "the rule for exit {code} must name the container"
    );
    str_at(&rule["action"], "action").to_owned()
}

#[test]
fn the_cronjob_runs_the_carried_pipeline_with_its_checkpoint_on_the_volume() {
    let pipeline = carried_pipeline("cronjob.yaml");
    let cronjob = manifest("cronjob.yaml", "CronJob");
    let pod = &cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let container = &list_at(&pod["containers"], "containers")[0];
    let volumes = list_at(&pod["volumes"], "volumes");
    let mounts = list_at(&container["volumeMounts"], "volumeMounts");
    // Where the volume backed by `source` (configMap, persistentVolumeClaim) is mounted.
    let mount_of = |source: &str| -> String {
        let volume = volumes
            .iter()
            .find(|v| !v[source].is_badvalue())
            .unwrap_or_else(|| panic!("no {source} volume"));
        let name = str_at(&volume["name"], "volume name");
        let mount = mounts
            .iter()
            .find(|m| m["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("volume {name} is not mounted"));
        str_at(&mount["mountPath"], "mountPath").to_owned()
    };
    assert_eq!(
        manifest("cronjob.yaml", "ConfigMap")["metadata"]["name"].as_str(),
        volumes.iter().find_map(|v| v["configMap"]["name"].as_str()),
        "the pipeline volume is the ConfigMap in this file"
    );

    let args: Vec<&str> = list_at(&container["args"], "args")
        .iter()
        .map(|a| str_at(a, "args[]"))
        .collect();
    let pipeline_path = format!("{}/pipeline.toml", mount_of("configMap"));
    assert_eq!(
        args,
        ["run", pipeline_path.as_str(), "--log-format", "json"],
        "the container runs the ConfigMap's pipeline, logging JSON"
    );

    let table: toml::Table = pipeline.parse().expect("TOML");
    let store = table["checkpoint"]["store"]
        .as_str()
        .expect("the carried pipeline names its checkpoint store");
    let state = mount_of("persistentVolumeClaim");
    assert!(
        store.starts_with(&format!("sqlite:{state}/")),
        "checkpoint store {store:?} must be on the persistent volume mounted at {state}"
    );

    assert_variables_come_from_secrets(&pipeline, container);
}

/// Every `${VAR}` the pipeline reads, and every API key variable, is set in the container from
/// a Secret.
fn assert_variables_come_from_secrets(pipeline: &str, container: &Yaml) {
    let table: toml::Table = pipeline.parse().expect("TOML");
    let env = list_at(&container["env"], "env");
    let mut wanted: Vec<String> = pipeline
        .split("${")
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_owned()))
        .collect();
    for stage in table["stage"].as_array().expect("[[stage]]") {
        if let Some(var) = stage.get("api_key_env").and_then(|v| v.as_str()) {
            wanted.push(var.to_owned());
        }
    }
    assert!(!wanted.is_empty(), "the pipeline reads no variable?");
    for var in wanted {
        let entry = env
            .iter()
            .find(|e| e["name"].as_str() == Some(var.as_str()))
            .unwrap_or_else(|| panic!("the container does not set {var}"));
        assert!(
            !entry["valueFrom"]["secretKeyRef"]["name"].is_badvalue(),
            "{var} must come from a Secret, not a literal"
        );
    }
}

#[test]
fn the_carried_pipeline_validates() {
    assert_validates(&carried_pipeline("cronjob.yaml"));
}

/// `stagewise validate` accepts `pipeline` without an error, with the variables it reads set.
fn assert_validates(pipeline: &str) {
    let dir = TestDir::new();
    dir.write("pipeline.toml", pipeline);
    let out = Cmd::new(dir.path(), "validate", "pipeline.toml")
        .env(
            "DATABASE_URL",
            "postgres://digest:secret@127.0.0.1:5432/news",
        )
        .env("OPENAI_API_KEY", "sk-test")
        .output();
    out.assert_code(0);
    assert!(out.errors().is_empty(), "{out}");
}

/// The CronJob whose Jobs run several runners on one run.
const PARALLEL: &str = "cronjob-parallel.yaml";

#[test]
fn the_parallel_cronjob_is_a_work_queue_whose_runners_stop_before_the_deadline() {
    let budget = budget(&carried_pipeline(PARALLEL));
    let cronjob = manifest(PARALLEL, "CronJob");
    let job = &cronjob["spec"]["jobTemplate"]["spec"];
    let pod = &job["template"]["spec"];

    // Several runners at once and no completion count: each exits 0 once nothing is left.
    let parallelism = job["parallelism"]
        .as_i64()
        .expect("`parallelism` is set: the number of runners");
    assert!(
        parallelism >= 2,
        "parallelism {parallelism}: one runner needs no work queue"
    );
    assert!(
        job["completions"].is_badvalue(),
        "a work-queue Job leaves `completions` unset"
    );

    let deadline = secs_at(&job["activeDeadlineSeconds"], "activeDeadlineSeconds");
    let grace = secs_at(
        &pod["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    );
    assert!(
        grace >= budget.shutdown_grace + MARGIN,
        "terminationGracePeriodSeconds ({grace:?}) must exceed shutdown_grace ({:?}) + {MARGIN:?}",
        budget.shutdown_grace
    );
    // A runner that starts with the Job stops at max_run_time and has exited within the grace
    // period, before the deadline stops it and fails the Job.
    assert!(
        budget.max_run_time + grace + MARGIN <= deadline,
        "max_run_time ({:?}) + terminationGracePeriodSeconds ({grace:?}) + {MARGIN:?} must come before activeDeadlineSeconds ({deadline:?})",
        budget.max_run_time
    );
    let period = every_n_minutes(str_at(&cronjob["spec"]["schedule"], "schedule"));
    assert!(
        deadline + grace <= period,
        "activeDeadlineSeconds + terminationGracePeriodSeconds ({:?}) should fit in the schedule's period ({period:?})",
        deadline + grace
    );
    assert!(
        budget.lease_ttl >= budget.heartbeat * 3,
        "lease_ttl ({:?}) must be at least 3 heartbeats ({:?})",
        budget.lease_ttl,
        budget.heartbeat
    );
    assert_eq!(
        cronjob["spec"]["concurrencyPolicy"].as_str(),
        Some("Forbid"),
        "one Job's runners at a time"
    );
}

#[test]
fn the_parallel_cronjob_replaces_a_runner_that_exited_75_and_fails_on_1_and_2() {
    let cronjob = manifest(PARALLEL, "CronJob");
    let job = &cronjob["spec"]["jobTemplate"]["spec"];
    assert_eq!(
        exit_action(job, 75),
        "Ignore",
        "75: stopped in order, progress saved; not counted, and a new pod joins the run"
    );
    assert_eq!(
        exit_action(job, 1),
        "FailJob",
        "1: the run finished with failed items"
    );
    assert_eq!(exit_action(job, 2), "FailJob", "2: a configuration error");
    // A cause that aborts every runner at once (exit 3) must not fail the Job the first time.
    let parallelism = job["parallelism"].as_i64().expect("`parallelism` is set");
    let retries = job["backoffLimit"].as_i64().expect("`backoffLimit` is set");
    assert!(
        retries >= parallelism,
        "backoffLimit {retries} is used up by one abort of all {parallelism} runners"
    );
}

#[test]
fn the_parallel_cronjob_shares_the_run_through_postgres_from_a_writable_folder() {
    let pipeline = carried_pipeline(PARALLEL);
    let cronjob = manifest(PARALLEL, "CronJob");
    let pod = &cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let container = &list_at(&pod["containers"], "containers")[0];
    let volumes = list_at(&pod["volumes"], "volumes");
    let mounts = list_at(&container["volumeMounts"], "volumeMounts");
    let volume_of = |mount: &Yaml| -> &Yaml {
        volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume for mount {mount:?}"))
    };

    // The ConfigMap's pipeline, mounted as a file, is what the container runs.
    let config_map = manifest(PARALLEL, "ConfigMap");
    let config_map = str_at(&config_map["metadata"]["name"], "ConfigMap name");
    let mount = mounts
        .iter()
        .find(|m| volume_of(m)["configMap"]["name"].as_str() == Some(config_map))
        .expect("the ConfigMap in this file is mounted");
    assert_eq!(mount["subPath"].as_str(), Some("pipeline.toml"));
    let path = str_at(&mount["mountPath"], "mountPath");
    let args: Vec<&str> = list_at(&container["args"], "args")
        .iter()
        .map(|a| str_at(a, "args[]"))
        .collect();
    assert_eq!(
        args,
        ["run", path, "--log-format", "json"],
        "the container runs the ConfigMap's pipeline, logging JSON"
    );
    // With a PostgreSQL store, the summary and the flight record go in .stagewise/ beside the
    // pipeline file: its folder must be writable.
    let folder = Path::new(path)
        .parent()
        .expect("the pipeline is in a folder");
    assert!(
        mounts.iter().any(|m| {
            Path::new(str_at(&m["mountPath"], "mountPath")) == folder
                && !volume_of(m)["emptyDir"].is_badvalue()
                && m["readOnly"].as_bool() != Some(true)
        }),
        "{} must be a writable emptyDir",
        folder.display()
    );

    // The runners share the run through PostgreSQL, its URL from a Secret.
    let table: toml::Table = pipeline.parse().expect("TOML");
    let store = table["checkpoint"]["store"]
        .as_str()
        .expect("the carried pipeline names its checkpoint store");
    assert_eq!(store, "${DATABASE_URL}", "the store is the shared database");
    assert_variables_come_from_secrets(&pipeline, container);
}

#[test]
fn the_parallel_carried_pipeline_validates() {
    assert_validates(&carried_pipeline(PARALLEL));
}

/// Dockerfile instructions: keyword (upper-cased) and arguments, continuation lines joined.
fn dockerfile() -> Vec<(String, String)> {
    let text = deploy_file("Dockerfile");
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let (keyword, args) = pending
            .split_once(char::is_whitespace)
            .unwrap_or((&pending, ""));
        out.push((keyword.to_uppercase(), args.trim().to_owned()));
        pending.clear();
    }
    out
}

#[test]
fn the_image_runs_stagewise_directly_as_a_non_root_user() {
    let instructions = dockerfile();
    let all = |keyword: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    // Only ARG may come before the first FROM.
    assert_eq!(
        instructions
            .iter()
            .find(|(k, _)| k != "ARG")
            .map(|(k, _)| k.as_str()),
        Some("FROM"),
        "a Dockerfile's first instruction is FROM"
    );
    assert!(
        all("RUN")
            .iter()
            .any(|r| r.contains("cargo build --release --locked")),
        "the binary is built from Cargo.lock"
    );

    let entrypoints = all("ENTRYPOINT");
    assert_eq!(entrypoints.len(), 1, "one ENTRYPOINT");
    let entrypoint: Vec<String> = serde_json::from_str(entrypoints[0]).unwrap_or_else(|_| {
        panic!(
            "ENTRYPOINT {} must be exec form (a JSON array): in shell form /bin/sh is PID 1 and SIGTERM never reaches stagewise",
            entrypoints[0]
        )
    });
    assert!(
        entrypoint
            .first()
            .is_some_and(|p| p == "stagewise" || p.ends_with("/stagewise")),
        "ENTRYPOINT {entrypoint:?} must start stagewise itself"
    );
    assert!(
        !entrypoint
            .iter()
            .any(|a| a == "sh" || a.ends_with("/sh") || a == "-c"),
        "ENTRYPOINT {entrypoint:?} must not wrap stagewise in a shell"
    );
    let cmds = all("CMD");
    let cmd: Vec<String> =
        serde_json::from_str(cmds.last().expect("a CMD")).expect("CMD in exec form");
    assert!(
        cmd.windows(2).any(|w| w == ["--log-format", "json"]),
        "CMD {cmd:?} logs JSON for log collectors"
    );

    let user = *all("USER").last().expect("a USER instruction");
    let name = user.split(':').next().unwrap_or(user);
    assert!(
        name != "root" && name != "0",
        "the image must not run as root (USER {user})"
    );
    assert!(
        name.parse::<u32>().is_ok(),
        "USER {user} should be numeric, so Kubernetes' runAsNonRoot can check it"
    );
    assert_eq!(all("STOPSIGNAL"), ["SIGTERM"]);
    assert!(!all("VOLUME").is_empty(), "a VOLUME for the checkpoint");
}

/// A systemd unit's `Key=value` lines, section by section: (section, key, value).
fn unit(name: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in deploy_file(name).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_owned();
        } else if let Some((key, value)) = line.split_once('=') {
            out.push((
                section.clone(),
                key.trim().to_owned(),
                value.trim().to_owned(),
            ));
        }
    }
    out
}

/// The last value of `key` in `section` (systemd's rule for single-valued settings).
fn setting(unit: &[(String, String, String)], section: &str, key: &str) -> String {
    unit.iter()
        .rev()
        .find(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.clone())
        .unwrap_or_else(|| panic!("no {key}= in [{section}]"))
}

#[test]
fn the_systemd_unit_lets_the_run_drain_and_treats_75_as_success() {
    // The unit runs /etc/stagewise/pipeline.toml, installed from the ConfigMap's pipeline.
    let budget = budget(&carried_pipeline("cronjob.yaml"));
    let service = unit("stagewise.service");
    let exec: Vec<String> = setting(&service, "Service", "ExecStart")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert!(
        exec.first().is_some_and(|p| p.ends_with("/stagewise"))
            && exec.get(1).is_some_and(|a| a == "run"),
        "ExecStart {exec:?} runs `stagewise run` directly"
    );
    assert!(
        exec.windows(2).any(|w| w == ["--log-format", "json"]),
        "ExecStart {exec:?} logs JSON to the journal"
    );

    assert_eq!(setting(&service, "Service", "KillSignal"), "SIGTERM");
    let stop = systemd_span(&setting(&service, "Service", "TimeoutStopSec"));
    assert!(
        stop >= budget.shutdown_grace + MARGIN,
        "TimeoutStopSec ({stop:?}) must exceed shutdown_grace ({:?}) + {MARGIN:?}",
        budget.shutdown_grace
    );
    let runtime = systemd_span(&setting(&service, "Service", "RuntimeMaxSec"));
    assert!(
        runtime >= budget.max_run_time + budget.shutdown_grace + MARGIN,
        "RuntimeMaxSec ({runtime:?}) must exceed max_run_time ({:?}) + shutdown_grace ({:?}) + {MARGIN:?}",
        budget.max_run_time,
        budget.shutdown_grace
    );
    assert_ne!(
        setting(&service, "Service", "Type"),
        "oneshot",
        "RuntimeMaxSec has no effect on a oneshot service"
    );
    let codes = |key: &str| -> Vec<String> {
        setting(&service, "Service", key)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert!(
        codes("SuccessExitStatus").iter().any(|c| c == "75"),
        "SuccessExitStatus must include 75 (interrupted, progress saved)"
    );
    assert!(
        codes("RestartPreventExitStatus").iter().any(|c| c == "2"),
        "a configuration error (2) must not be restarted"
    );

    let timer = unit("stagewise.timer");
    setting(&timer, "Timer", "OnCalendar");
    assert_eq!(setting(&timer, "Timer", "Unit"), "stagewise.service");
}

/// The one line of stagewise.cron that runs something: its schedule, its user and its command
/// (split at white space, quotes removed).
fn cron_job() -> (String, String, Vec<String>) {
    let text = deploy_file("stagewise.cron");
    let jobs: Vec<Vec<&str>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        // `NAME=value` lines set the environment.
        .filter(|l| !l.split_whitespace().next().is_some_and(|w| w.contains('=')))
        // The words of the command, without the quotes around the shell's script.
        .map(|l| l.split_whitespace().map(|w| w.trim_matches('\'')).collect())
        .collect();
    assert_eq!(jobs.len(), 1, "stagewise.cron holds one job");
    let job = &jobs[0];
    assert!(
        job.len() > 6,
        "{job:?}: five schedule fields, a user, a command"
    );
    (
        job[..5].join(" "),
        job[5].to_owned(),
        job[6..].iter().map(|w| (*w).to_owned()).collect(),
    )
}

/// The pipeline a command runs with `[exec] <…/>stagewise run PIPELINE`.
fn pipeline_run_by(command: &[String]) -> String {
    let at = command
        .windows(2)
        .position(|w| w[0].ends_with("stagewise") && w[1] == "run")
        .unwrap_or_else(|| panic!("{command:?} does not run `stagewise run`"));
    command
        .get(at + 2)
        .unwrap_or_else(|| panic!("{command:?} names no pipeline"))
        .clone()
}

#[test]
fn the_cron_file_gives_each_machine_a_deadline_a_grace_period_and_one_run_at_a_time() {
    // Every machine runs the pipeline of cronjob-parallel.yaml's ConfigMap.
    let budget = budget(&carried_pipeline(PARALLEL));
    let (schedule, user, command) = cron_job();
    let period = every_n_minutes(&schedule);
    assert_ne!(user, "root", "the job runs as the service's user");
    assert!(
        !command.iter().any(|w| w.contains('%')),
        "cron turns % into a newline"
    );
    assert_eq!(
        command[..2],
        ["flock", "-n"],
        "a tick while this machine's last run still goes is skipped"
    );

    let at = command
        .iter()
        .position(|w| w == "timeout")
        .expect("timeout gives the run a deadline");
    let options: Vec<&str> = command[at + 1..]
        .iter()
        .take_while(|w| w.starts_with("--"))
        .map(String::as_str)
        .collect();
    for wanted in ["--foreground", "--preserve-status"] {
        assert!(
            options.contains(&wanted),
            "timeout {options:?} lacks {wanted}"
        );
    }
    let kill_after = options
        .iter()
        .find_map(|o| o.strip_prefix("--kill-after="))
        .map(systemd_span)
        .expect("--kill-after= gives the drain its grace period");
    let deadline = systemd_span(&command[at + 1 + options.len()]);
    assert!(
        deadline >= budget.max_run_time + budget.shutdown_grace + MARGIN,
        "timeout ({deadline:?}) must exceed max_run_time ({:?}) + shutdown_grace ({:?}) + {MARGIN:?}",
        budget.max_run_time,
        budget.shutdown_grace
    );
    assert!(
        kill_after >= budget.shutdown_grace + MARGIN,
        "--kill-after ({kill_after:?}) must exceed shutdown_grace ({:?}) + {MARGIN:?}",
        budget.shutdown_grace
    );
    assert!(
        deadline + kill_after <= period,
        "timeout + --kill-after ({:?}) should fit in the schedule's period ({period:?})",
        deadline + kill_after
    );
    // The shell that reads the variables becomes stagewise, so the SIGTERM reaches it.
    assert!(
        command.windows(2).any(|w| w == ["exec", "stagewise"]),
        "{command:?} must exec stagewise"
    );
    assert!(command.windows(2).any(|w| w == ["--log-format", "json"]));
    assert_eq!(
        pipeline_run_by(&command),
        "/var/lib/stagewise/pipeline.toml"
    );
}

#[test]
fn the_shared_drop_in_runs_the_parallel_pipeline_within_the_units_budget() {
    // stagewise.service with the drop-in runs cronjob-parallel.yaml's pipeline.
    let budget = budget(&carried_pipeline(PARALLEL));
    let drop_in = unit("stagewise-shared.conf");
    let starts: Vec<&str> = drop_in
        .iter()
        .filter(|(s, k, _)| s == "Service" && k == "ExecStart")
        .map(|(_, _, v)| v.as_str())
        .collect();
    assert_eq!(
        starts.first(),
        Some(&""),
        "an empty ExecStart= first clears the unit's own"
    );
    let exec: Vec<String> = setting(&drop_in, "Service", "ExecStart")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert!(exec.windows(2).any(|w| w == ["--log-format", "json"]));
    let (_, _, cron) = cron_job();
    assert_eq!(
        pipeline_run_by(&exec),
        pipeline_run_by(&cron),
        "the drop-in and the cron file run the same installed pipeline"
    );

    let service = unit("stagewise.service");
    let stop = systemd_span(&setting(&service, "Service", "TimeoutStopSec"));
    assert!(
        stop >= budget.shutdown_grace + MARGIN,
        "TimeoutStopSec ({stop:?}) must exceed shutdown_grace ({:?}) + {MARGIN:?}",
        budget.shutdown_grace
    );
    let runtime = systemd_span(&setting(&service, "Service", "RuntimeMaxSec"));
    assert!(
        runtime >= budget.max_run_time + budget.shutdown_grace + MARGIN,
        "RuntimeMaxSec ({runtime:?}) must exceed max_run_time ({:?}) + shutdown_grace ({:?}) + {MARGIN:?}",
        budget.max_run_time,
        budget.shutdown_grace
    );
}

#[test]
fn the_render_blueprint_is_a_docker_cron_job_running_stagewise_directly() {
    let docs = yaml_docs("render.yaml");
    assert_eq!(docs.len(), 1, "render.yaml is one document");
    let services = list_at(&docs[0]["services"], "services");
    let cron = services
        .iter()
        .find(|s| s["type"].as_str() == Some("cron"))
        .expect("a service of type cron");
    let period = every_n_minutes(str_at(&cron["schedule"], "schedule"));
    assert_eq!(cron["runtime"].as_str(), Some("docker"));
    assert_eq!(
        cron["dockerfilePath"].as_str(),
        Some("./examples/deploy/Dockerfile")
    );
    // Render refuses a disk on a cron job; the blueprint must not pretend to have one.
    assert!(
        cron["disk"].is_badvalue(),
        "Render cron jobs cannot have a persistent disk"
    );
    let command: Vec<&str> = str_at(&cron["dockerCommand"], "dockerCommand")
        .split_whitespace()
        .collect();
    assert!(
        command.starts_with(&["stagewise", "run"]),
        "dockerCommand {command:?} runs stagewise directly, no shell"
    );
    assert!(command.windows(2).any(|w| w == ["--log-format", "json"]));

    // The overrides it sets fit between two ticks.
    let env = list_at(&cron["envVars"], "envVars");
    let value = |key: &str| -> Duration {
        let entry = env
            .iter()
            .find(|e| e["key"].as_str() == Some(key))
            .unwrap_or_else(|| panic!("envVars sets no {key}"));
        humantime::parse_duration(str_at(&entry["value"], key)).expect("a duration")
    };
    let run =
        value("STAGEWISE_PIPELINE__MAX_RUN_TIME") + value("STAGEWISE_PIPELINE__SHUTDOWN_GRACE");
    assert!(
        run + MARGIN <= period,
        "max_run_time + shutdown_grace ({run:?}) must end before the next tick ({period:?})"
    );
    for secret in ["DATABASE_URL", "OPENAI_API_KEY"] {
        let entry = env
            .iter()
            .find(|e| e["key"].as_str() == Some(secret))
            .unwrap_or_else(|| panic!("envVars names no {secret}"));
        assert_eq!(
            entry["sync"].as_bool(),
            Some(false),
            "{secret} is set in the Dashboard, never in the file"
        );
    }

    // Without a disk, the checkpoint is kept in the database, its URL taken from the secret.
    let store = env
        .iter()
        .find(|e| e["key"].as_str() == Some("STAGEWISE_CHECKPOINT__STORE"))
        .expect("envVars keeps the checkpoint in PostgreSQL");
    let store = str_at(&store["value"], "STAGEWISE_CHECKPOINT__STORE");
    assert_eq!(store, "${DATABASE_URL}");
    let dir = TestDir::new();
    dir.write(
        "pipeline.toml",
        std::fs::read_to_string(workspace_root().join("examples/digest-postgres/pipeline.toml"))
            .expect("the blueprint's pipeline"),
    );
    let out = Cmd::new(dir.path(), "plan", "pipeline.toml")
        .env("STAGEWISE_CHECKPOINT__STORE", store)
        .env(
            "DATABASE_URL",
            "postgres://digest:secret@127.0.0.1:5432/news",
        )
        .env("OPENAI_API_KEY", "sk-test")
        .output();
    out.assert_code(0);
    assert!(
        out.stdout.contains(
            "\"postgres://digest:***@127.0.0.1:5432/news\"  env STAGEWISE_CHECKPOINT__STORE"
        ),
        "{out}"
    );
}

/// The services of the Render Blueprint `file`.
fn render_services(file: &str) -> Vec<Yaml> {
    let docs = yaml_docs(file);
    assert_eq!(docs.len(), 1, "{file} is one document");
    list_at(&docs[0]["services"], "services").to_vec()
}

/// The `value` a service's `envVars` give `key`.
fn env_value<'a>(service: &'a Yaml, key: &str) -> &'a str {
    let entry = list_at(&service["envVars"], "envVars")
        .iter()
        .find(|e| e["key"].as_str() == Some(key))
        .unwrap_or_else(|| panic!("envVars sets no {key}"));
    str_at(&entry["value"], key)
}

/// What a Render service that shares a run with others must hold: a Docker service of the
/// image, no disk, the secrets set in the Dashboard, the checkpoint in the database, and
/// stagewise run through the wrapper (`mode`) so that Render's SIGTERM reaches it. `plan`
/// accepts the pipeline with every override the service sets. Returns the service's
/// `STAGEWISE_PIPELINE__SHUTDOWN_GRACE`.
fn assert_shares_the_run_through_the_wrapper(service: &Yaml, mode: &str) -> Duration {
    let name = str_at(&service["name"], "name");
    assert_eq!(service["runtime"].as_str(), Some("docker"), "{name}");
    assert_eq!(
        service["dockerfilePath"].as_str(),
        Some("./examples/deploy/Dockerfile")
    );
    assert!(service["disk"].is_badvalue(), "{name}: no disk");

    // The wrapper, from the image: the Dockerfile copies examples/ into its /app.
    let command: Vec<&str> = str_at(&service["dockerCommand"], "dockerCommand")
        .split_whitespace()
        .collect();
    let wrapper = command[0]
        .strip_prefix("/app/")
        .unwrap_or_else(|| panic!("{name}: {command:?} starts with the wrapper in /app"));
    assert_eq!(wrapper, "examples/deploy/stagewise-wrap.sh");
    let instructions = dockerfile();
    assert!(
        instructions
            .iter()
            .any(|(k, a)| k == "COPY" && a.ends_with("examples ./examples"))
            && instructions
                .iter()
                .rev()
                .find(|(k, _)| k == "WORKDIR")
                .is_some_and(|(_, a)| a == "/app"),
        "the image holds examples/ in /app"
    );
    let mode_of = command.get(1).copied();
    assert_eq!(mode_of, Some(mode), "{name}: {command:?}");
    assert!(command.windows(2).any(|w| w == ["--log-format", "json"]));

    let env = list_at(&service["envVars"], "envVars");
    for secret in ["DATABASE_URL", "OPENAI_API_KEY"] {
        let entry = env
            .iter()
            .find(|e| e["key"].as_str() == Some(secret))
            .unwrap_or_else(|| panic!("{name}: envVars names no {secret}"));
        assert_eq!(
            entry["sync"].as_bool(),
            Some(false),
            "{secret} is set in the Dashboard, never in the file"
        );
    }
    assert_eq!(
        env_value(service, "STAGEWISE_CHECKPOINT__STORE"),
        "${DATABASE_URL}",
        "{name}: the run is shared through the database"
    );

    // The pipeline takes every override the service sets.
    let at = command
        .iter()
        .position(|w| *w == "run")
        .expect("the wrapper runs `stagewise run`");
    let dir = TestDir::new();
    dir.write(
        "pipeline.toml",
        fs::read_to_string(workspace_root().join(command[at + 1])).expect("the service's pipeline"),
    );
    let mut plan = Cmd::new(dir.path(), "plan", "pipeline.toml")
        .env(
            "DATABASE_URL",
            "postgres://digest:secret@127.0.0.1:5432/news",
        )
        .env("OPENAI_API_KEY", "sk-test");
    for entry in env {
        if let (Some(key), Some(value)) = (entry["key"].as_str(), entry["value"].as_str()) {
            plan = plan.env(key, value);
        }
    }
    let out = plan.output();
    out.assert_code(0);
    assert!(out.errors().is_empty(), "{out}");

    humantime::parse_duration(env_value(service, "STAGEWISE_PIPELINE__SHUTDOWN_GRACE"))
        .expect("a duration")
}

#[test]
fn the_render_worker_runs_two_instances_in_a_loop_and_waits_out_their_drain() {
    let services = render_services("render-worker.yaml");
    assert_eq!(services.len(), 1);
    let worker = &services[0];
    assert_eq!(worker["type"].as_str(), Some("worker"));
    let instances = worker["numInstances"]
        .as_i64()
        .expect("numInstances is set");
    assert!(instances >= 2, "numInstances {instances}: one runner");
    let grace = assert_shares_the_run_through_the_wrapper(worker, "loop");
    // Render's maximum for maxShutdownDelaySeconds is 300.
    let delay = secs_at(
        &worker["maxShutdownDelaySeconds"],
        "maxShutdownDelaySeconds",
    );
    assert!(
        delay >= grace + MARGIN && delay <= Duration::from_secs(300),
        "maxShutdownDelaySeconds ({delay:?}) must exceed shutdown_grace ({grace:?}) + {MARGIN:?}, and at most 300 s"
    );
    let pause = env_value(worker, "STAGEWISE_WRAP_PAUSE");
    assert!(
        pause.parse::<u64>().is_ok(),
        "STAGEWISE_WRAP_PAUSE {pause:?} is a whole number of seconds"
    );
}

#[test]
fn the_render_cron_jobs_are_two_runners_on_one_schedule_that_fit_between_ticks() {
    let services = render_services("render-crons.yaml");
    assert!(services.len() >= 2, "two cron jobs or more: two runners");
    let first = &services[0];
    let mut names = Vec::new();
    for cron in &services {
        assert_eq!(cron["type"].as_str(), Some("cron"));
        assert_eq!(cron["schedule"], first["schedule"], "one schedule");
        assert_eq!(cron["dockerCommand"], first["dockerCommand"], "one command");
        names.push(str_at(&cron["name"], "name"));
        let grace = assert_shares_the_run_through_the_wrapper(cron, "once");
        let period = every_n_minutes(str_at(&cron["schedule"], "schedule"));
        let run = humantime::parse_duration(env_value(cron, "STAGEWISE_PIPELINE__MAX_RUN_TIME"))
            .expect("a duration")
            + grace;
        assert!(
            run + MARGIN <= period,
            "max_run_time + shutdown_grace ({run:?}) must end before the next tick ({period:?})"
        );
    }
    names.sort_unstable();
    names.dedup();
    assert_eq!(
        names.len(),
        services.len(),
        "each cron job has a name of its own"
    );
}

fn wrapper() -> PathBuf {
    workspace_root().join("examples/deploy/stagewise-wrap.sh")
}

#[test]
fn the_wrapper_is_executable() {
    let mode = fs::metadata(wrapper())
        .expect("the wrapper")
        .permissions()
        .mode();
    assert!(
        mode & 0o111 != 0,
        "the image runs it by its path: it must be executable"
    );
}

/// Eight items that nap 30 s each, four at a time, with a 1 s grace: a run is under way when
/// it is signalled, and drains at once.
fn naps(name: &str, settings: &str) -> Pipeline {
    Pipeline::new(&format!(
        r#"
        [pipeline]
        name = "{name}"
        shutdown_grace = "1s"
        heartbeat = "200ms"
        {settings}

        [[stage]]
        name = "src"
        kind = "generate"
        count = 8

        [[stage]]
        name = "nap"
        kind = "sleep"
        duration = "30s"
        timeout = "60s"
        concurrency = 4

        [[stage]]
        name = "out"
        kind = "jsonl"
        path = "out.jsonl"
        "#
    ))
}

#[test]
fn the_wrapper_passes_sigterm_on_and_reports_75_as_0() {
    let p = naps("wrap-once", "");
    let mut running = p.cmd("run").through(&wrapper(), &["once"]).spawn();
    assert!(
        running.wait_for_stderr("run started", Duration::from_secs(20)),
        "{}",
        running.stderr_so_far()
    );
    // To the wrapper's shell, as the platform sends it to PID 1.
    running.signal(libc::SIGTERM);
    let out = running.wait();
    out.assert_code(0);
    out.assert_stderr_contains("stopping: no new items");
    out.assert_stderr_contains("reported as 0");
    assert_eq!(p.summary("wrap-once")["exit_code"], 75, "{out}");
}

#[test]
fn the_wrapper_loop_resumes_at_once_after_75_and_stops_on_sigterm() {
    // Each run stops itself after 3 s (exit 75); the loop starts the next at once, and it
    // resumes.
    let p = naps("wrap-loop", "max_run_time = \"3s\"");
    let mut running = p
        .cmd("run")
        .through(&wrapper(), &["loop"])
        .env("STAGEWISE_WRAP_PAUSE", "30")
        .spawn();
    assert!(
        running.wait_for_stderr("resumed=true", Duration::from_secs(30)),
        "{}",
        running.stderr_so_far()
    );
    running.signal(libc::SIGTERM);
    let out = running.wait();
    out.assert_code(75);
    out.assert_stderr_contains("interrupted, progress saved: running again now");
    out.assert_stderr_contains("stopping: no new items");
    out.assert_stderr_contains("stopped by SIGTERM: stagewise exited 75");
}
