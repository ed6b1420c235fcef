//! PostgreSQL connection strings as libpq reads them, TLS included: the one way stagewise
//! connects to PostgreSQL, for the checkpoint store and the `db` stages alike.
//!
//! A connection string is a URL (`postgres://user:password@host:5432/db?sslmode=verify-full`)
//! or `key=value` pairs (`host=db user=app sslmode=require`). The `postgres` client reads both,
//! but of libpq's TLS keys it knows only three values of `sslmode` and no `sslrootcert`; so
//! [`ConnString::parse`] takes those two out (`conninfo.rs`) and gives them libpq's meaning:
//!
//! | `sslmode` | TLS | certificate chain | host name |
//! |---|---|---|---|
//! | `disable` | never | – | – |
//! | `prefer` (the default) | if the server has it | not checked | not checked |
//! | `require` | always | checked against `sslrootcert` when it is given | not checked |
//! | `verify-ca` | always | checked | not checked |
//! | `verify-full` | always | checked | checked |
//!
//! The chain is checked against the PEM file `sslrootcert` names, or the system's root
//! certificates for `sslrootcert=system` (which makes `verify-full` the default and refuses a
//! weaker mode, as libpq does); without `sslrootcert`, `verify-ca` and `verify-full` use
//! libpq's default file, `~/.postgresql/root.crt`. A Unix-socket host never uses TLS.
//!
//! [`ConnString`] is the string read without I/O (for `validate` and `plan`); a [`PgTarget`]
//! has its certificates loaded and connects ([`PgTarget::connect`]) and cancels
//! ([`Canceller`]) with the same TLS. [`PgTarget::tls_failure`] says in words why a connection
//! failed when the cause is its TLS: a configuration error that no retry mends.

mod conninfo;
mod tls;

use std::fmt;
use std::path::PathBuf;

use postgres::{CancelToken, Client};
use tokio_postgres::config::Host;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The TLS of a [`PgTarget`]'s connections, for clients of the asynchronous kind.
pub type Tls = MakeRustlsConnect;

/// How a connection uses TLS: libpq's `sslmode` (all of its values but `allow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server has it, its certificate not checked; plain text otherwise.
    Prefer,
    /// TLS; the certificate is checked against `sslrootcert` only when that is given.
    Require,
    /// TLS; the certificate must be signed by a CA of `sslrootcert`.
    VerifyCa,
    /// TLS; the certificate must be signed by a CA of `sslrootcert` and name the host.
    VerifyFull,
}

impl SslMode {
    /// Every mode, weakest first.
    pub const ALL: [SslMode; 5] = [
        SslMode::Disable,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// As written in a connection string.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(s: &str) -> Option<SslMode> {
        SslMode::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Whether a connection must be encrypted (`require` and stronger).
    pub fn requires_tls(self) -> bool {
        !matches!(self, SslMode::Disable | SslMode::Prefer)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the CA certificates that must have signed the server's come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file: `sslrootcert=/path/ca.pem` (relative to the working directory, as in libpq).
    File(PathBuf),
    /// The operating system's root certificates: `sslrootcert=system`.
    System,
}

impl RootCert {
    /// As messages name it.
    fn shown(&self) -> String {
        match self {
            RootCert::File(path) => format!("sslrootcert `{}`", path.display()),
            RootCert::System => "the system's root certificates (sslrootcert=system)".to_owned(),
        }
    }
}

/// A connection string that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgError {
    /// The client does not read it, or its `sslmode` or `sslrootcert` is refused.
    #[error("invalid PostgreSQL URL `{shown}`: {reason}")]
    Invalid {
        /// The string with its password hidden.
        shown: String,
        /// Why.
        reason: String,
    },
    /// The CA certificates to check the server with cannot be used (a file missing, unreadable
    /// or not PEM; no system certificates).
    #[error("{0}")]
    RootCert(String),
}

/// A connection string read without I/O: the client's settings, and the TLS ones it could not
/// take. What `validate` checks and `plan` shows.
#[derive(Clone)]
pub struct ConnString {
    config: tokio_postgres::Config,
    sslmode: SslMode,
    /// Whether the string set the mode (or `sslrootcert=system`, which implies one).
    sslmode_written: bool,
    sslrootcert: Option<RootCert>,
}

impl fmt::Debug for ConnString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client's settings hold the password: not shown.
        f.debug_struct("ConnString")
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .finish_non_exhaustive()
    }
}

impl ConnString {
    /// Read `s`, a `postgres://` URL or a `key=value` string, as libpq would.
    pub fn parse(s: &str) -> Result<ConnString, PgError> {
        let invalid = |reason: String| PgError::Invalid {
            shown: crate::text::redact_url(s),
            reason,
        };
        let (rest, keys) = conninfo::take_tls_keys(s);
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e: postgres::Error| invalid(crate::text::connection_string_error(s, &e)))?;
        let sslrootcert = match keys.sslrootcert.as_deref() {
            None => None,
            Some("") => {
                return Err(invalid(
                    "`sslrootcert` must name a PEM file of CA certificates, or be `system`".into(),
                ))
            }
            Some("system") => Some(RootCert::System),
            Some(path) => Some(RootCert::File(PathBuf::from(path))),
        };
        let sslmode = match keys.sslmode.as_deref() {
            Some(given) => SslMode::parse(given).ok_or_else(|| {
                let valid: Vec<&str> = SslMode::ALL.iter().map(|m| m.as_str()).collect();
                invalid(format!(
                    "`sslmode` must be one of {} (got `{}`)",
                    valid.join(", "),
                    crate::text::printable(given)
                ))
            })?,
            // libpq: the system's roots are only worth anything with the host name checked.
            None if sslrootcert == Some(RootCert::System) => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if sslrootcert == Some(RootCert::System) && sslmode != SslMode::VerifyFull {
            return Err(invalid(format!(
                "`sslrootcert=system` needs `sslmode=verify-full` (got `{sslmode}`): any certificate a public CA signed would pass without the host name check"
            )));
        }
        config.ssl_mode(match sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        // As libpq: no TLS over a Unix socket (the server would refuse it).
        if only_unix_sockets(&config) {
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        }
        Ok(ConnString {
            config,
            sslmode,
            sslmode_written: keys.sslmode.is_some() || sslrootcert.is_some(),
            sslrootcert,
        })
    }

    /// The mode the string sets, or the default (`prefer`; `verify-full` with
    /// `sslrootcert=system`).
    pub fn sslmode(&self) -> SslMode {
        self.sslmode
    }

    /// Whether [`sslmode`](Self::sslmode) is the default, the string saying nothing about TLS.
    pub fn sslmode_is_default(&self) -> bool {
        !self.sslmode_written
    }

    /// `sslrootcert`, if the string has it.
    pub fn sslrootcert(&self) -> Option<&RootCert> {
        self.sslrootcert.as_ref()
    }

    /// The client's settings (TLS keys taken out; its `ssl_mode` set for the mode).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

/// Whether every host is a Unix socket (none a TCP one).
fn only_unix_sockets(config: &tokio_postgres::Config) -> bool {
    let hosts = config.get_hosts();
    !hosts.is_empty() && !hosts.iter().any(|h| matches!(h, Host::Tcp(_)))
}

/// libpq's default CA file for `verify-ca` and `verify-full`: `~/.postgresql/root.crt`.
fn default_root_file(home: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    let home = home.filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(".postgresql").join("root.crt"))
}

/// A PostgreSQL server to connect to: the client's settings and the TLS that goes with them.
/// It dereferences to the client's [`tokio_postgres::Config`], for the settings callers add
/// (`application_name`, timeouts, keepalives); TLS is this type's.
#[derive(Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    sslmode: SslMode,
    sslmode_is_default: bool,
    /// The CA certificates the server's is checked against, if it is.
    roots: Option<RootCert>,
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTarget")
            .field("sslmode", &self.sslmode)
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

impl PgTarget {
    /// Read `s` ([`ConnString::parse`]) and load the certificates its TLS checks against.
    pub fn new(s: &str) -> Result<PgTarget, PgError> {
        PgTarget::from_conn_string(ConnString::parse(s)?)
    }

    /// Load the certificates `parsed`'s TLS checks against: `sslrootcert`, or for `verify-ca`
    /// and `verify-full` without it, `~/.postgresql/root.crt`.
    pub fn from_conn_string(parsed: ConnString) -> Result<PgTarget, PgError> {
        PgTarget::with_home(parsed, std::env::var_os("HOME").as_deref())
    }

    /// As [`from_conn_string`](Self::from_conn_string), with `home` as the home directory.
    fn with_home(parsed: ConnString, home: Option<&std::ffi::OsStr>) -> Result<PgTarget, PgError> {
        let ConnString {
            config,
            sslmode,
            sslmode_written,
            sslrootcert,
        } = parsed;
        let tls_used = config.get_ssl_mode() != tokio_postgres::config::SslMode::Disable;
        let roots = match (sslmode, sslrootcert) {
            _ if !tls_used => None,
            // `prefer` checks nothing: there TLS is a bonus, not a promise.
            (SslMode::Prefer, _) => None,
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                match default_root_file(home).filter(|f| f.exists()) {
                    Some(file) => Some(RootCert::File(file)),
                    None => {
                        return Err(PgError::RootCert(format!(
                            "`sslmode={sslmode}` checks the server's certificate against CA certificates: set `sslrootcert` to a PEM file of them (`sslrootcert=/path/to/ca.pem`), or `sslrootcert=system` for the system's; libpq's default, ~/.postgresql/root.crt, does not exist"
                        )))
                    }
                }
            }
            (_, roots) => roots,
        };
        // TLS settings are needed even where no TLS is used (the client's types want them).
        let checks = if tls_used { sslmode } else { SslMode::Disable };
        let tls = tls::client_config(checks, roots.as_ref()).map_err(PgError::RootCert)?;
        Ok(PgTarget {
            config,
            tls: MakeRustlsConnect::new(tls),
            sslmode,
            sslmode_is_default: !sslmode_written,
            roots,
        })
    }

    /// The `sslmode` in effect ([`ConnString::sslmode`]).
    pub fn sslmode(&self) -> SslMode {
        self.sslmode
    }

    /// Whether the string said nothing about TLS (the mode is the default).
    pub fn sslmode_is_default(&self) -> bool {
        self.sslmode_is_default
    }

    /// Whether connecting must succeed with TLS for this target: `require` and stronger, over
    /// TCP.
    pub fn requires_tls(&self) -> bool {
        self.sslmode.requires_tls()
            && self.config.get_ssl_mode() != tokio_postgres::config::SslMode::Disable
    }

    /// A new session, with this target's TLS.
    ///
    /// The `postgres` client is synchronous and runs a runtime of its own: call this off any
    /// async runtime's threads.
    pub fn connect(&self) -> Result<Client, postgres::Error> {
        postgres::Config::from(self.config.clone()).connect(self.tls.clone())
    }

    /// This target's TLS, for a client of the asynchronous kind (`tokio-postgres`).
    pub fn tls(&self) -> Tls {
        self.tls.clone()
    }

    /// What cancels `client`'s statement in progress, from any thread, over this target's TLS
    /// (a cancel request is a connection of its own).
    pub fn canceller(&self, client: &Client) -> Canceller {
        Canceller {
            token: client.cancel_token(),
            tls: self.tls.clone(),
        }
    }

    /// Why connecting failed, in words, when its TLS is the cause: the certificate not signed
    /// by a trusted CA, not made out to the host, or a server without TLS where the mode
    /// requires it. Those are configuration errors, the same on every try. `None` for any other
    /// failure (the server unreachable, a password refused, …).
    pub fn tls_failure(&self, e: &postgres::Error) -> Option<String> {
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            if let Some(tls) = rustls_error(cause) {
                return Some(self.explain(tls));
            }
            if cause.to_string().contains("server does not support TLS") {
                return Some(format!(
                    "the server does not support TLS (sslmode={})",
                    self.sslmode
                ));
            }
            source = cause.source();
        }
        None
    }

    fn explain(&self, e: &rustls::Error) -> String {
        use rustls::CertificateError as C;
        let mode = self.sslmode;
        let roots = self
            .roots
            .as_ref()
            .map_or_else(|| "no CA".to_owned(), RootCert::shown);
        match e {
            rustls::Error::InvalidCertificate(C::NotValidForNameContext {
                expected,
                presented,
            }) => {
                let names = if presented.is_empty() {
                    "no host name".to_owned()
                } else {
                    presented
                        .iter()
                        .map(|n| presented_name(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                format!(
                    "host name mismatch: the certificate is not valid for {} (it is for {names}); connect with a name it holds, or use sslmode=verify-ca to check its CA only",
                    expected.to_str()
                )
            }
            rustls::Error::InvalidCertificate(C::NotValidForName) => format!(
                "host name mismatch: the certificate is not valid for {}; connect with a name it holds, or use sslmode=verify-ca to check its CA only",
                self.host()
            ),
            rustls::Error::InvalidCertificate(C::UnknownIssuer) => format!(
                "certificate not trusted: the server's certificate is not signed by a CA of {roots} (sslmode={mode})"
            ),
            rustls::Error::InvalidCertificate(why) => {
                format!("certificate not trusted: {why} (sslmode={mode}, {roots})")
            }
            other => format!("TLS handshake failed: {other} (sslmode={mode})"),
        }
    }

    /// The first host, as messages name it.
    fn host(&self) -> String {
        match self.config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            #[cfg(unix)]
            Some(Host::Unix(path)) => path.display().to_string(),
            None => "the host".to_owned(),
        }
    }
}

/// A name rustls found in a certificate, as people write it: rustls shows them as
/// `DnsName("db.example")` and `IpAddress(10.0.0.1)`.
fn presented_name(name: &str) -> &str {
    let inner = |prefix: &str, suffix: &str| name.strip_prefix(prefix)?.strip_suffix(suffix);
    inner("DnsName(\"", "\")")
        .or_else(|| inner("IpAddress(", ")"))
        .unwrap_or(name)
}

/// The rustls error behind `e`: rustls's errors reach the client wrapped in an `io::Error`,
/// whose `source()` skips them, so they are looked for inside it too.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    e.downcast_ref::<rustls::Error>().or_else(|| {
        e.downcast_ref::<std::io::Error>()?
            .get_ref()?
            .downcast_ref::<rustls::Error>()
    })
}

impl std::ops::Deref for PgTarget {
    type Target = tokio_postgres::Config;

    fn deref(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

impl std::ops::DerefMut for PgTarget {
    fn deref_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.config
    }
}

/// Cancels one session's statement in progress, over the TLS its session uses.
#[derive(Clone)]
pub struct Canceller {
    token: CancelToken,
    tls: MakeRustlsConnect,
}

impl Canceller {
    /// Send the cancel request (a connection of its own; the server may or may not act on it).
    ///
    /// Synchronous, with a runtime of its own: call it off any async runtime's threads.
    pub fn cancel_query(&self) -> Result<(), postgres::Error> {
        self.token.cancel_query(self.tls.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_read_in_both_forms() {
        // (string, mode, its default?, sslrootcert, the client's mode)
        use tokio_postgres::config::SslMode as Client;
        let cases = [
            (
                "postgres://u:p@h/db",
                SslMode::Prefer,
                true,
                None,
                Client::Prefer,
            ),
            ("host=h user=u", SslMode::Prefer, true, None, Client::Prefer),
            (
                "postgres://h/db?sslmode=disable",
                SslMode::Disable,
                false,
                None,
                Client::Disable,
            ),
            (
                "host=h sslmode=require",
                SslMode::Require,
                false,
                None,
                Client::Require,
            ),
            (
                "postgres://h/db?sslmode=verify-ca&sslrootcert=/etc/ca.pem",
                SslMode::VerifyCa,
                false,
                Some(RootCert::File("/etc/ca.pem".into())),
                Client::Require,
            ),
            (
                "host=h sslmode=verify-full sslrootcert='/my certs/ca.pem'",
                SslMode::VerifyFull,
                false,
                Some(RootCert::File("/my certs/ca.pem".into())),
                Client::Require,
            ),
            (
                "postgres://h/db?sslrootcert=system",
                SslMode::VerifyFull,
                false,
                Some(RootCert::System),
                Client::Require,
            ),
            (
                // A Unix socket: no TLS, whatever the mode.
                "host=/var/run/postgresql sslmode=require",
                SslMode::Require,
                false,
                None,
                Client::Disable,
            ),
            (
                "postgres://%2Fvar%2Frun%2Fpostgresql/db?sslmode=verify-full",
                SslMode::VerifyFull,
                false,
                None,
                Client::Disable,
            ),
        ];
        for (s, mode, default, root, client) in cases {
            let parsed = ConnString::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(parsed.sslmode(), mode, "{s}");
            assert_eq!(parsed.sslmode_is_default(), default, "{s}");
            assert_eq!(parsed.sslrootcert(), root.as_ref(), "{s}");
            assert_eq!(parsed.config().get_ssl_mode(), client, "{s}");
        }
    }

    #[test]
    fn a_refused_sslmode_or_sslrootcert_says_why_without_the_password() {
        let cases = [
            (
                "postgres://u:Hunter2@h/db?sslmode=verify",
                "`sslmode` must be one of disable, prefer, require, verify-ca, verify-full (got `verify`)",
            ),
            (
                "host=h password=Hunter2 sslmode=allow",
                "`sslmode` must be one of disable, prefer, require, verify-ca, verify-full (got `allow`)",
            ),
            (
                "postgres://u:Hunter2@h/db?sslmode=require&sslrootcert=system",
                "`sslrootcert=system` needs `sslmode=verify-full` (got `require`)",
            ),
            (
                "host=h password=Hunter2 sslrootcert=''",
                "`sslrootcert` must name a PEM file",
            ),
            (
                "postgres://u:Hunter2@h:notaport/db?sslmode=require",
                "invalid value for option `port`",
            ),
        ];
        for (s, reason) in cases {
            let e = ConnString::parse(s).expect_err(s).to_string();
            assert!(e.starts_with("invalid PostgreSQL URL `"), "{e}");
            assert!(e.contains(reason), "{s}: {e}");
            assert!(!e.contains("Hunter2"), "{e}");
        }
    }

    #[test]
    fn verify_modes_without_sslrootcert_take_the_default_file_or_ask_for_one() {
        let home = tempfile::tempdir().expect("tempdir");
        let target = |s: &str| {
            PgTarget::with_home(
                ConnString::parse(s).expect("parses"),
                Some(home.path().as_os_str()),
            )
        };
        for mode in ["verify-ca", "verify-full"] {
            let e = target(&format!("host=h sslmode={mode}"))
                .expect_err("no CA")
                .to_string();
            assert!(e.contains("`sslrootcert`"), "{e}");
            assert!(e.contains("~/.postgresql/root.crt"), "{e}");
        }
        // A Unix socket uses no TLS, so it needs no CA; nor do modes that check nothing.
        for s in [
            "host=/tmp sslmode=verify-full",
            "host=h sslmode=disable",
            "host=h sslmode=prefer",
            "host=h sslmode=require",
        ] {
            let t = target(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(t.roots, None, "{s}");
        }
        // With ~/.postgresql/root.crt, that is the CA file.
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .self_signed(&rcgen::KeyPair::generate().expect("key"))
            .expect("CA");
        let file = home.path().join(".postgresql").join("root.crt");
        std::fs::create_dir(home.path().join(".postgresql")).expect("mkdir");
        std::fs::write(&file, ca.pem()).expect("write");
        let t = target("host=h sslmode=verify-full").expect("the default file");
        assert_eq!(t.roots, Some(RootCert::File(file)));
        assert!(t.requires_tls());
        // No home at all: as without the file.
        let e = PgTarget::with_home(
            ConnString::parse("host=h sslmode=verify-ca").expect("parses"),
            None,
        )
        .expect_err("no CA");
        assert!(e.to_string().contains("`sslrootcert`"), "{e}");
    }

    #[test]
    fn names_in_a_certificate_are_shown_as_written() {
        let cases = [
            ("DnsName(\"db.example\")", "db.example"),
            ("IpAddress(127.0.0.1)", "127.0.0.1"),
            ("IpAddress(::1)", "::1"),
            ("*.example.com", "*.example.com"),
        ];
        for (given, shown) in cases {
            assert_eq!(presented_name(given), shown);
        }
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let e = PgTarget::new("host=h sslmode=verify-ca sslrootcert=/nonexistent/ca.pem")
            .expect_err("no such file")
            .to_string();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        assert!(e.contains("cannot read"), "{e}");
    }
}
