//! The `http-download` stage of stagewise: fetches the page a record's URL names, on the
//! stage's blocking pool, so that no server, however broken, can stall a run.
//!
//! Every request is bounded: `connect_timeout` to connect, `read_timeout` for any single read
//! (a server dripping a byte at a time), the attempt's `timeout` for the whole download,
//! `max_bytes` for the body (never read into memory whole), `max_redirects` for the chain (a
//! loop is detected). Failures are classified: connection errors, timeouts, 408, 429 and 5xx
//! are transient (a 429's or 503's `Retry-After` becomes the retry-after hint); other 4xx and
//! bad URLs are permanent. At most `per_host_concurrency` requests go to one host at once, and
//! by default only public addresses are connected to: a name is resolved once per request by
//! the stage's own resolver, which drops loopback, private, link-local, metadata and other
//! special-purpose addresses (`guard.rs`), so the addresses checked are the addresses used.
//! The configured `headers` go only to the item's own origin, never across a redirect to
//! another. `file://` URLs read local files with the same limits.

mod config;
mod decode;
mod guard;
mod stage;

use std::sync::Arc;

use stagewise_core::stage::{
    BuildContext, FieldsOut, Probe, ProbeContext, Role, StageError, StageImpl, StageKind,
};
use stagewise_core::Registry;

pub use config::DownloadConfig;
use config::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT};
use stage::Download;

/// Register `http-download`.
pub fn register(registry: &mut Registry) {
    registry.register(DownloadKind);
}

/// The `http-download` kind.
#[derive(Debug, Clone, Copy, Default)]
pub struct DownloadKind;

impl StageKind for DownloadKind {
    type Config = DownloadConfig;

    fn kind(&self) -> &'static str {
        "http-download"
    }

    fn roles(&self) -> &'static [Role] {
        &[Role::Transform]
    }

    fn check(&self, config: &DownloadConfig, _role: Role) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if config.max_bytes.as_u64() == 0 {
            problems.push(("max_bytes".into(), "`max_bytes` must be more than 0".into()));
        }
        for (name, value) in &config.headers {
            if ureq::http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || ureq::http::HeaderValue::from_str(value).is_err()
            {
                problems.push((
                    format!("headers.{name}"),
                    format!("`{name}` is not a valid header"),
                ));
            }
        }
        problems
    }

    /// Reads `input`; adds `output`, `status`, `final_url`, `content_type` and `fetched_at`;
    /// the folders `base_url` and `files_root` name are there. (Its URLs come from the data: no
    /// request is made.)
    fn probe(&self, config: &DownloadConfig, cx: &ProbeContext<'_>) -> Probe {
        let mut probe = Probe::giving(FieldsOut::adding(&config.output, &stage::METADATA));
        probe.reads("input", config.input.clone());
        let folders = [
            (
                "base_url",
                config.base_url.as_deref().filter(|b| !b.contains("://")),
            ),
            (
                "files_root",
                config.files_root.as_deref().and_then(|p| p.to_str()),
            ),
        ];
        for (key, folder) in folders {
            let Some(folder) = folder else { continue };
            let path = cx.resolve(std::path::Path::new(folder));
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => {
                    probe.passed(format!("`{key}`: {} is a folder", path.display()))
                }
                Ok(_) => probe.config(key, format!("`{key}`: {} is not a folder", path.display())),
                Err(e) => probe.config(key, format!("`{key}`: cannot use {}: {e}", path.display())),
            }
        }
        probe
    }

    fn build(&self, config: DownloadConfig, cx: &BuildContext) -> Result<StageImpl, StageError> {
        let canonical = |key: &str, path: &std::path::Path| {
            let path = cx.resolve(path);
            path.canonicalize().map_err(|e| {
                StageError::fatal(format!("`{key}`: cannot use {}: {e}", path.display()))
            })
        };
        let (base_url, base_folder) = match config.base_url.as_deref() {
            None => (None, None),
            Some(base) if base.contains("://") => {
                let mut url = url::Url::parse(base)
                    .map_err(|e| StageError::fatal(format!("`base_url` {base:?}: {e}")))?;
                if !url.path().ends_with('/') {
                    // `join` would replace the last segment: a base is a folder.
                    let path = format!("{}/", url.path());
                    url.set_path(&path);
                }
                (Some(url), None)
            }
            Some(folder) => {
                let folder = canonical("base_url", std::path::Path::new(folder))?;
                let url = url::Url::from_directory_path(&folder).map_err(|()| {
                    StageError::fatal(format!(
                        "`base_url`: {} is not a usable folder",
                        folder.display()
                    ))
                })?;
                (Some(url), Some(folder))
            }
        };
        let files_root = match &config.files_root {
            None => base_folder,
            Some(root) => Some(canonical("files_root", root)?),
        };
        let test = guard::TestResolve::from_env().map_err(StageError::fatal)?;
        if test.is_some() {
            tracing::warn!(
                variable = guard::TEST_RESOLVE_VAR,
                "a testing aid is set: some `.test` names resolve as it says"
            );
        }
        let mut builder = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(config.user_agent.as_str())
            .timeout_connect(Some(
                config.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
            ))
            .timeout_per_read(Some(config.read_timeout.unwrap_or(DEFAULT_READ_TIMEOUT)));
        if !config.allow_private_networks {
            // A proxy (`HTTPS_PROXY`…) would resolve the names itself, out of the guard's sight.
            builder = builder.proxy(None);
        }
        // Every request's names are resolved by the guard, which hands ureq only the addresses
        // it approved: those are the ones connected to.
        let agent = ureq::Agent::with_parts(
            builder.build(),
            ureq::unversioned::transport::DefaultConnector::default(),
            guard::GuardedResolver {
                allow_private_networks: config.allow_private_networks,
                test,
            },
        );
        Ok(StageImpl::Blocking(Arc::new(Download {
            input: config.input,
            output: config.output,
            max_bytes: config.max_bytes.as_u64(),
            max_redirects: config.max_redirects,
            headers: config.headers.into_iter().collect(),
            allow_binary: config.allow_binary,
            files_root,
            base_url,
            agent,
            per_host_concurrency: config.per_host_concurrency.get(),
            per_host_breaker: config.per_host_breaker,
        })))
    }
}
