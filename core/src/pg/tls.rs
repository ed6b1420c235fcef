//! The TLS side of a PostgreSQL connection: rustls with the ring provider, set up for each
//! `sslmode` as libpq checks the server's certificate, and the CA certificates it is checked
//! against.
//!
//! rustls checks a certificate's chain and its host name together; libpq's `require` (without
//! `sslrootcert`) and `prefer` check neither, and `verify-ca` the chain only. Those take the two
//! verifiers below. Both still check the handshake's signature, so the server must hold the
//! key of the certificate it shows.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::{RootCert, SslMode};

/// The one crypto provider: ring (no aws-lc, no system OpenSSL).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client's TLS settings for `mode`, checking against `roots` where the mode checks; `None`
/// roots for a mode that checks is a caller's error, refused before (see `PgTarget::new`).
pub(super) fn client_config(
    mode: SslMode,
    roots: Option<&RootCert>,
) -> Result<ClientConfig, String> {
    let provider = provider();
    let verifier = verifier(mode, roots, &provider)?;
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS cannot be set up: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// What checks the server's certificate for `mode`.
fn verifier(
    mode: SslMode,
    roots: Option<&RootCert>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, String> {
    Ok(match (mode, roots) {
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => {
            Arc::new(NoCertificateCheck(provider.clone()))
        }
        (SslMode::Require | SslMode::VerifyCa, Some(roots)) => {
            Arc::new(ChainOnly(webpki(roots, provider)?))
        }
        (SslMode::VerifyFull, Some(roots)) => webpki(roots, provider)?,
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(format!(
                "`sslmode={mode}` needs the CA certificates to check the server with"
            ))
        }
    })
}

/// rustls's own verifier (chain, dates and host name) over the certificates of `roots`.
fn webpki(
    roots: &RootCert,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    let store = match roots {
        RootCert::File(path) => file_roots(path)?,
        RootCert::System => system_roots()?,
    };
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
        .map_err(|e| format!("cannot check certificates against {}: {e}", roots.shown()))
}

/// The largest `sslrootcert` file read (a system's whole bundle is under 1 MiB).
const MAX_ROOTS_FILE: u64 = 16 << 20;

/// The certificates of a PEM file (`sslrootcert=/path/ca.pem`), every one of them usable.
pub(super) fn file_roots(path: &Path) -> Result<RootCertStore, String> {
    use std::io::Read;
    let shown = path.display();
    let cannot = |e: std::io::Error| format!("cannot read the `sslrootcert` file `{shown}`: {e}");
    // A regular file of a sane size: a FIFO would block the start, a device never end.
    let meta = std::fs::metadata(path).map_err(cannot)?;
    if !meta.is_file() {
        return Err(format!(
            "the `sslrootcert` file `{shown}` is not a regular file"
        ));
    }
    if meta.len() > MAX_ROOTS_FILE {
        return Err(format!(
            "the `sslrootcert` file `{shown}` is larger than {} MiB: not a file of CA certificates",
            MAX_ROOTS_FILE >> 20
        ));
    }
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_ROOTS_FILE + 1).read_to_end(&mut pem))
        .map_err(cannot)?;
    let mut store = RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| {
            format!(
                "the `sslrootcert` file `{shown}` is not valid PEM (certificate {}): {e}",
                i + 1
            )
        })?;
        store.add(cert).map_err(|e| {
            format!(
                "the `sslrootcert` file `{shown}`: certificate {} is not usable: {e}",
                i + 1
            )
        })?;
    }
    if store.is_empty() {
        return Err(format!(
            "the `sslrootcert` file `{shown}` holds no certificate (a PEM file with `-----BEGIN CERTIFICATE-----`)"
        ));
    }
    Ok(store)
}

/// The operating system's root certificates (`sslrootcert=system`).
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(found.certs);
    if store.is_empty() {
        let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(format!(
            "`sslrootcert=system`: no root certificate found on this system{}",
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({})", why.join("; "))
            }
        ));
    }
    Ok(store)
}

/// Takes any certificate (`prefer`, and `require` without `sslrootcert`): the connection is
/// encrypted, the server not authenticated.
#[derive(Debug)]
struct NoCertificateCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain, not the host name (`verify-ca`, and `require` with `sslrootcert`).
/// rustls's verifier checks the chain (signatures, dates, usage) before the name, so a name
/// error means the chain passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA, and a server certificate it signed for `names`.
    struct Certs {
        ca_pem: String,
        server: CertificateDer<'static>,
    }

    /// `ca` names the CA: two CAs of one name would be told apart by their signatures only.
    fn certs(ca: &str, names: &[&str]) -> Certs {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, ca);
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("params");
        let server = params.signed_by(&key, &ca).expect("signed");
        Certs {
            ca_pem: ca.pem(),
            server: server.der().clone(),
        }
    }

    fn checking_against(mode: SslMode, ca_pem: &str) -> Arc<dyn ServerCertVerifier> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca_pem).expect("write");
        verifier(mode, Some(&RootCert::File(path)), &provider()).expect("verifier")
    }

    fn check(
        v: &dyn ServerCertVerifier,
        cert: &CertificateDer<'_>,
        host: &str,
    ) -> Result<(), String> {
        let name = ServerName::try_from(host.to_owned()).expect("a name");
        v.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn each_mode_checks_what_libpq_checks() {
        let ours = certs("our CA", &["localhost", "127.0.0.1"]);
        let other = certs("another CA", &["localhost"]);
        // (mode, CA file, host, passes)
        let cases = [
            (SslMode::VerifyFull, &ours.ca_pem, "localhost", true),
            (SslMode::VerifyFull, &ours.ca_pem, "127.0.0.1", true),
            (SslMode::VerifyFull, &ours.ca_pem, "db.example", false),
            (SslMode::VerifyFull, &other.ca_pem, "localhost", false),
            (SslMode::VerifyCa, &ours.ca_pem, "db.example", true),
            (SslMode::VerifyCa, &other.ca_pem, "localhost", false),
            (SslMode::Require, &ours.ca_pem, "db.example", true),
            (SslMode::Require, &other.ca_pem, "localhost", false),
            (SslMode::Prefer, &other.ca_pem, "db.example", true),
        ];
        for (mode, ca, host, passes) in cases {
            let got = check(&*checking_against(mode, ca), &ours.server, host);
            assert_eq!(got.is_ok(), passes, "{mode} {host}: {got:?}");
            if let Err(e) = got {
                let expected = if host == "db.example" {
                    "not valid for name"
                } else {
                    "UnknownIssuer"
                };
                assert!(e.contains(expected), "{mode} {host}: {e}");
            }
        }
        // `require` without a CA takes anything.
        let v = verifier(SslMode::Require, None, &provider()).expect("verifier");
        assert!(check(&*v, &ours.server, "db.example").is_ok());
    }

    #[test]
    fn a_ca_file_that_cannot_be_used_is_named_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").expect("write");
        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let cases = [
            (&missing, "cannot read the `sslrootcert` file"),
            (&empty, "holds no certificate"),
            (&broken, "is not valid PEM"),
        ];
        for (path, reason) in cases {
            let e = file_roots(path).expect_err("refused");
            assert!(e.contains(reason), "{e}");
            assert!(e.contains(&path.display().to_string()), "{e}");
        }
    }

    #[test]
    fn a_ca_path_that_is_no_file_or_too_large_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A sparse file: its size says it all, nothing of it is read.
        let huge = dir.path().join("huge.pem");
        std::fs::File::create(&huge)
            .and_then(|f| f.set_len(MAX_ROOTS_FILE + 1))
            .expect("sparse file");
        // /dev/zero would never end; a folder is no file either.
        let cases = [
            (std::path::Path::new("/dev/zero"), "not a regular file"),
            (dir.path(), "not a regular file"),
            (huge.as_path(), "larger than 16 MiB"),
        ];
        for (path, reason) in cases {
            let started = std::time::Instant::now();
            let e = file_roots(path).expect_err("refused");
            assert!(e.contains(reason), "{e}");
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
        }
    }
}
