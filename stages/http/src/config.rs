//! The keys of `http-download`.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::time::Duration;

use bytesize::ByteSize;
use schemars::JsonSchema;
use serde::Deserialize;

/// `http-download`: fetch the page a record's URL names.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DownloadConfig {
    /// The field holding the URL.
    #[schemars(extend("x-default" = "`\"url\"`"))]
    #[serde(default = "default_input")]
    pub input: String,
    /// The field the page's text goes to.
    #[schemars(extend("x-default" = "`\"html\"`"))]
    #[serde(default = "default_output")]
    pub output: String,
    /// Longest wait to connect.
    #[schemars(extend("x-default" = "`\"10s\"`"))]
    #[schemars(with = "Option<stagewise_core::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Longest wait for any single read: catches servers that drip a byte at a time; the attempt's
    /// `timeout` bounds the whole download.
    #[schemars(extend("x-default" = "`\"15s\"`"))]
    #[schemars(with = "Option<stagewise_core::stage::DurationText>")]
    #[serde(default, with = "humantime_serde")]
    pub read_timeout: Option<Duration>,
    /// Largest body, after decompression; a larger one is a permanent error and is never read into
    /// memory whole.
    #[schemars(extend("x-default" = "`\"10MB\"`"))]
    #[serde(default = "default_max_bytes")]
    #[schemars(with = "stagewise_core::stage::SizeText")]
    pub max_bytes: ByteSize,
    /// Redirects followed; more, or a loop, is a permanent error.
    #[schemars(extend("x-default" = "`5`"))]
    #[serde(default = "default_max_redirects")]
    pub max_redirects: u32,
    /// The `User-Agent` header.
    #[schemars(extend("x-default" = "`\"stagewise/<version>\"`"))]
    #[serde(default = "default_user_agent")]
    pub user_agent: String,
    /// Extra request headers, e.g. `{ Accept-Language = "en" }`. Sent only to the item's own
    /// origin: a redirect to another scheme, host or port drops them all, so credentials such as
    /// `Authorization` or `Cookie` never follow a redirect to another server. The item's URL comes
    /// from data, though: put a credential here only when the source's URLs are trusted, since
    /// any row can name any public host.
    #[schemars(extend("x-default" = "none"))]
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Requests to one host at once, whatever the stage's `concurrency`. An item waits for its host
    /// before its attempt starts: the wait uses neither the attempt's `timeout` nor a slot of the
    /// stage. A host's `Retry-After` hints lower this for that host only, for a while.
    #[schemars(extend("x-default" = "`2`"))]
    #[serde(default = "default_per_host")]
    pub per_host_concurrency: NonZeroUsize,
    /// A circuit breaker per host instead of one for the stage: a host's transient failures
    /// open its own breaker, which holds back that host's items only (they wait without using
    /// attempts, a place of the host or one of the stage), so the other sites' attempts go on.
    /// Each host's breaker has the stage's `breaker.*` settings, or their defaults if it sets
    /// none. Set `item_deadline` too: waiting items still count among the items in the process.
    #[schemars(extend("x-default" = "`false`"))]
    #[serde(default)]
    pub per_host_breaker: bool,
    /// Allow URLs resolving to loopback, private, link-local, cloud-metadata and other
    /// special-purpose addresses (refused by default, since the URLs come from data). Off, a
    /// name is resolved once per request and only its allowed addresses are connected to (none
    /// left is a permanent error), and proxies from the environment (`HTTPS_PROXY`…) are not
    /// used, since they would resolve names out of the check's sight.
    #[schemars(extend("x-default" = "`false`"))]
    #[serde(default)]
    pub allow_private_networks: bool,
    /// The folder `file://` URLs may read (relative to the pipeline file); unset, `file://` URLs
    /// are refused. Only regular files under it are read.
    #[schemars(extend("x-default" = "none"))]
    pub files_root: Option<std::path::PathBuf>,
    /// What URLs without a scheme (`pages/a.html`, `/news/1`) are relative to: an `http://`,
    /// `https://` or `file://` URL, or a folder (relative to the pipeline file), which is then also
    /// the `files_root` unless that is set. Unset, such URLs are invalid.
    #[schemars(extend("x-default" = "none"))]
    pub base_url: Option<String>,
    /// Keep binary bodies (PDFs, images, archives) instead of skipping the item with a reason.
    #[schemars(extend("x-default" = "`false`"))]
    #[serde(default)]
    pub allow_binary: bool,
}

fn default_input() -> String {
    "url".into()
}

fn default_output() -> String {
    "html".into()
}

fn default_max_bytes() -> ByteSize {
    ByteSize::mb(10)
}

fn default_max_redirects() -> u32 {
    5
}

fn default_user_agent() -> String {
    concat!("stagewise/", env!("CARGO_PKG_VERSION")).into()
}

fn default_per_host() -> NonZeroUsize {
    NonZeroUsize::MIN.saturating_add(1)
}

/// Defaults of the two timeouts.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(15);
