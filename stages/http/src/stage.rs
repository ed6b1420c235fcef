//! The download itself: one request per redirect hop, each checked and bounded, the body read
//! up to `max_bytes`, then decoded to text.

use std::io::Read;
use std::time::SystemTime;

use stagewise_core::stage::{BlockingStage, Context, ErrorKind, Lane, Outcome, Record, StageError};
use stagewise_stages_net::{classify, parse_retry_after, read_error};
use url::Url;

use crate::decode::decode;
use crate::guard;

/// A downloaded body and what came with it.
struct Page {
    status: u16,
    final_url: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// `http-download`.
/// The fields a page's record gains besides `output`, as [`Download`] sets them.
pub(crate) const METADATA: [&str; 4] = ["status", "final_url", "content_type", "fetched_at"];

pub(crate) struct Download {
    pub input: String,
    pub output: String,
    pub max_bytes: u64,
    pub max_redirects: u32,
    /// Sent only to the item's own origin (see `fetch`).
    pub headers: Vec<(String, String)>,
    pub allow_binary: bool,
    /// The canonical folder `file://` URLs may read from; `None`: they are refused.
    pub files_root: Option<std::path::PathBuf>,
    /// What URLs without a scheme are relative to.
    pub base_url: Option<Url>,
    pub agent: ureq::Agent,
    /// Requests to one host at once: the width of the stage's lanes, one per host.
    pub per_host_concurrency: usize,
    /// Each host's lane has a circuit breaker of its own.
    pub per_host_breaker: bool,
}

impl BlockingStage for Download {
    /// One lane per host, `per_host_concurrency` wide: the runner holds an item back while its
    /// host has that many requests under way, before its attempt starts. (Redirect hops are part
    /// of the item's request, under its first host's place.) With `per_host_breaker`, each
    /// host's lane has a circuit breaker of its own.
    fn lane(&self, record: &Record) -> Option<Lane> {
        let url = self.url(record).ok()?;
        Some(Lane {
            name: url.host_str()?.to_owned(),
            width: self.per_host_concurrency,
            breaker: self.per_host_breaker,
        })
    }

    /// Every error says its kind: what is not the server's (`timeout`, `connect`, `network`,
    /// `http_*`) is the item's own URL or page (`invalid_input`).
    fn process(&self, record: Record, cx: &Context) -> Result<Outcome, StageError> {
        self.download(record, cx).map_err(|e| match e.kind {
            ErrorKind::Other => e.with_kind(ErrorKind::InvalidInput),
            _ => e,
        })
    }
}

impl Download {
    fn download(&self, mut record: Record, cx: &Context) -> Result<Outcome, StageError> {
        let url = self.url(&record)?;
        let page = match url.scheme() {
            "http" | "https" => self.fetch(url, cx)?,
            "file" => self.read_file(&url)?,
            other => {
                return Err(StageError::permanent(format!(
                    "unsupported URL scheme `{other}`: use http, https or file"
                )))
            }
        };
        if let Some(ct) = page.content_type.as_deref().filter(|ct| is_binary(ct)) {
            if !self.allow_binary {
                return Ok(Outcome::Skip {
                    reason: format!("binary content ({ct}); set `allow_binary = true` to keep it"),
                });
            }
        }
        let (text, _) = decode(&page.body, page.content_type.as_deref());
        let fields = &mut record.fields;
        fields.insert(self.output.clone(), text.into());
        fields.insert("status".into(), page.status.into());
        fields.insert("final_url".into(), page.final_url.into());
        fields.insert(
            "content_type".into(),
            page.content_type
                .map_or(serde_json::Value::Null, Into::into),
        );
        fields.insert(
            "fetched_at".into(),
            humantime::format_rfc3339_seconds(SystemTime::now())
                .to_string()
                .into(),
        );
        Ok(Outcome::Continue(record))
    }
}

impl Download {
    /// The item's URL.
    fn url(&self, record: &Record) -> Result<Url, StageError> {
        let raw = record.get_str(&self.input).ok_or_else(|| {
            StageError::permanent(format!(
                "the record has no text field `{}` with a URL",
                self.input
            ))
        })?;
        match &self.base_url {
            Some(base) => base.join(raw.trim()),
            None => Url::parse(raw.trim()),
        }
        .map_err(|e| StageError::permanent(format!("invalid URL {raw:?}: {e}")))
    }

    fn fetch(&self, mut url: Url, cx: &Context) -> Result<Page, StageError> {
        let mut chain = vec![url.to_string()];
        let origin = url.origin();
        for _ in 0..=self.max_redirects {
            if url.host_str().is_none() {
                return Err(StageError::permanent(format!("the URL {url} has no host")));
            }
            let remaining = cx.remaining();
            if remaining.is_zero() {
                return Err(
                    StageError::transient("no time left before the attempt's deadline")
                        .with_kind(ErrorKind::Timeout),
                );
            }
            let mut request = self.agent.get(url.as_str());
            // The configured headers (credentials, often) are for the item's own origin: a
            // redirect to another scheme, host or port does not get them, as curl does.
            if url.origin() == origin {
                for (k, v) in &self.headers {
                    request = request.header(k, v);
                }
            }
            // The addresses are resolved and checked inside the call (`guard.rs`), within
            // this timeout like the rest of the request.
            let response = request
                .config()
                .timeout_global(Some(remaining))
                .build()
                .call()
                .map_err(|e| guard::stage_error(&e).unwrap_or_else(|| classify(&e)))?;
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            if (300..400).contains(&status) && status != 304 {
                let Some(location) = header("location") else {
                    return Err(StageError::permanent(format!(
                        "HTTP {status} without a Location to follow"
                    ))
                    .with_kind(ErrorKind::Network));
                };
                {
                    let next = url.join(&location).map_err(|e| {
                        StageError::permanent(format!(
                            "HTTP {status} to an invalid location {location:?}: {e}"
                        ))
                        .with_kind(ErrorKind::Network)
                    })?;
                    let looped = chain.contains(&next.to_string());
                    chain.push(next.to_string());
                    if looped {
                        return Err(StageError::permanent(format!(
                            "redirect loop: {}",
                            chain.join(" → ")
                        ))
                        .with_kind(ErrorKind::Network));
                    }
                    url = next;
                    continue;
                }
            }
            let reason = response.status().canonical_reason().unwrap_or("");
            let kind = ErrorKind::of_status(status).unwrap_or(ErrorKind::Network);
            if status == 429 || status == 503 {
                let error =
                    StageError::transient(format!("HTTP {status} {reason}")).with_kind(kind);
                return Err(
                    match header("retry-after").and_then(|v| parse_retry_after(&v)) {
                        Some(wait) => error.with_retry_after(wait),
                        None => error,
                    },
                );
            }
            if status == 408 || status >= 500 {
                return Err(
                    StageError::transient(format!("HTTP {status} {reason}")).with_kind(kind)
                );
            }
            if status >= 400 {
                return Err(
                    StageError::permanent(format!("HTTP {status} {reason}")).with_kind(kind)
                );
            }
            // Only gzip is asked for and decoded: a body in another encoding (deflate, br, …,
            // sent unasked) would be kept as text, garbled, and the item done.
            if let Some(encoding) = header("content-encoding") {
                let name = encoding.trim().to_ascii_lowercase();
                if !matches!(name.as_str(), "" | "identity" | "gzip") {
                    return Err(StageError::permanent(format!(
                        "the server sent its body in the encoding `{}`, which this stage does \
                         not decode (it asks for gzip)",
                        stagewise_core::text::printable(encoding.trim())
                    ))
                    .with_kind(ErrorKind::Network));
                }
            }
            if let Some(length) =
                header("content-length").and_then(|v| v.trim().parse::<u64>().ok())
            {
                if length > self.max_bytes {
                    return Err(self.too_big(Some(length)));
                }
            }
            let content_type = header("content-type");
            let body = self.read_limited(response.into_body().into_reader())?;
            return Ok(Page {
                status,
                final_url: url.to_string(),
                content_type,
                body,
            });
        }
        Err(StageError::permanent(format!(
            "too many redirects (more than {}): {}",
            self.max_redirects,
            chain.join(" → ")
        )))
    }

    fn read_file(&self, url: &Url) -> Result<Page, StageError> {
        let root = self.files_root.as_ref().ok_or_else(|| {
            StageError::permanent(format!(
                "refused: {url} is a local file; set `files_root` to the folder such URLs may read"
            ))
        })?;
        let path = url
            .to_file_path()
            .map_err(|()| StageError::permanent(format!("{url} is not a local file path")))?;
        let path = path
            .canonicalize()
            .map_err(|e| StageError::permanent(format!("cannot open {}: {e}", path.display())))?;
        if !path.starts_with(root) {
            return Err(StageError::permanent(format!(
                "refused: {} is outside `files_root` ({})",
                path.display(),
                root.display()
            )));
        }
        // Not a FIFO or a device: reading one could block past any deadline.
        let regular = std::fs::metadata(&path)
            .map(|m| m.is_file())
            .unwrap_or(false);
        if !regular {
            return Err(StageError::permanent(format!(
                "refused: {} is not a regular file",
                path.display()
            )));
        }
        let file = std::fs::File::open(&path)
            .map_err(|e| StageError::permanent(format!("cannot open {}: {e}", path.display())))?;
        if let Ok(meta) = file.metadata() {
            if meta.len() > self.max_bytes {
                return Err(self.too_big(Some(meta.len())));
            }
        }
        let body = self.read_limited(file)?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let content_type = match ext.as_str() {
            "html" | "htm" => Some("text/html".to_owned()),
            "txt" => Some("text/plain".to_owned()),
            _ => None,
        };
        Ok(Page {
            status: 200,
            final_url: url.to_string(),
            content_type,
            body,
        })
    }

    /// Read at most `max_bytes` (one more byte tells that the body is larger).
    fn read_limited(&self, reader: impl Read) -> Result<Vec<u8>, StageError> {
        let mut body = Vec::new();
        reader
            .take(self.max_bytes.saturating_add(1))
            .read_to_end(&mut body)
            .map_err(|e| read_error(&e))?;
        if body.len() as u64 > self.max_bytes {
            return Err(self.too_big(None));
        }
        Ok(body)
    }

    fn too_big(&self, length: Option<u64>) -> StageError {
        let limit = bytesize::ByteSize(self.max_bytes);
        StageError::permanent(match length {
            Some(n) => format!(
                "the body is {} bytes, more than `max_bytes` ({limit}); not read",
                n
            ),
            None => format!("the body is larger than `max_bytes` ({limit}); reading stopped there"),
        })
    }
}

/// Anything not text-like: images, audio, video, fonts, PDFs, archives, octet streams.
fn is_binary(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime.is_empty() || mime.starts_with("text/") {
        return false;
    }
    !["html", "xml", "json", "javascript"]
        .iter()
        .any(|t| mime.contains(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_types() {
        for ct in [
            "application/pdf",
            "image/png",
            "application/octet-stream",
            "video/mp4",
        ] {
            assert!(is_binary(ct), "{ct}");
        }
        for ct in [
            "text/html; charset=utf-8",
            "application/xhtml+xml",
            "application/json",
            "",
        ] {
            assert!(!is_binary(ct), "{ct}");
        }
    }
}
