//! The keys of `http-download`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

/// `http-download`: fetch the page a record's URL names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadConfig {
    /// The field holding the URL (`http://`, `https://` or `file://`).
    #[serde(default = "default_input")]
    pub input: String,
    /// The field the page's text goes to. The stage also sets `status`, `final_url`,
    /// `content_type` and `fetched_at`.
    #[serde(default = "default_output")]
    pub output: String,
    /// Longest wait to connect (default 10s).
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Longest wait for any single read from the server (default 15s): catches servers that
    /// answer a byte at a time. The attempt's `timeout` bounds the whole download.
    #[serde(default, with = "humantime_serde")]
    pub read_timeout: Option<Duration>,
    /// Largest body accepted, after decompression (default "10MB"). A larger one is a
    /// permanent error and is never read into memory whole.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
    /// Redirects followed before giving up (default 5).
    #[serde(default = "default_max_redirects")]
    pub max_redirects: u32,
    /// The `User-Agent` header (default `stagewise/<version>`).
    #[serde(default = "default_user_agent")]
    pub user_agent: String,
    /// Extra request headers, e.g. `{ Accept-Language = "en" }`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Requests to one host at once, whatever the stage's `concurrency` (default 2).
    #[serde(default = "default_per_host")]
    pub per_host_concurrency: usize,
    /// Allow URLs that resolve to loopback, private, link-local or cloud-metadata addresses
    /// (default false: the URLs come from data the runner does not control).
    #[serde(default)]
    pub allow_private_networks: bool,
    /// The folder `file://` URLs may read from (relative to the pipeline file), for offline
    /// corpora. Unset (the default), `file://` URLs are refused: like private addresses, local
    /// files are not for URLs that come from data. Only regular files under it are read.
    pub files_root: Option<std::path::PathBuf>,
    /// What URLs without a scheme (`pages/a.html`, `/news/1`) are relative to: an `http://`,
    /// `https://` or `file://` URL, or a folder (relative to the pipeline file), which then also
    /// serves as `files_root` unless that is set. Unset, such URLs are invalid.
    pub base_url: Option<String>,
    /// Keep binary bodies (PDFs, images, archives) instead of skipping them (default false).
    /// They are decoded as text like any other body.
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

fn default_per_host() -> usize {
    2
}

/// Defaults of the two timeouts.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(15);
