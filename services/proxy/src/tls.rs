//! The rustls client configuration for `https` upstreams, built once per service.

use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::{self, PemObject};

/// Why the TLS client configuration of a service could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// The `ca_file` could not be read or is not PEM.
    #[error("CA file {path}: {}", pem_problem(source, PemContents::Certificate))]
    CaFile {
        /// The file named by `ca_file`.
        path: std::path::PathBuf,
        /// What went wrong.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The `ca_file` holds no certificate.
    #[error("CA file {path}: {}", pem_problem(&pem::Error::NoItemsFound, PemContents::Certificate))]
    EmptyCaFile {
        /// The file named by `ca_file`.
        path: std::path::PathBuf,
    },
    /// A certificate in the `ca_file` is not a valid trust anchor.
    #[error("CA file {path}: a certificate in it is not a usable X.509 trust anchor")]
    BadCertificate {
        /// The file named by `ca_file`.
        path: std::path::PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// No `ca_file`, and the system trust store yielded no certificate.
    #[error("no system root certificates found (set ca_file)")]
    NoSystemRoots,
    /// The host of an `https` upstream is not a valid TLS server name.
    #[error("{host:?} is not a valid TLS server name")]
    InvalidServerName {
        /// The upstream host.
        host: String,
    },
    /// rustls rejected the configuration.
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// What a PEM file was expected to hold (for [`pem_problem`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PemContents {
    /// Certificates (`-----BEGIN CERTIFICATE-----`).
    Certificate,
    /// A private key (PKCS#8, PKCS#1 or SEC1).
    PrivateKey,
}

/// A PEM reading error as a sentence for an operator (no Rust names, no byte dumps), e.g.
/// "the file holds no PEM certificate (…)". Used for CA files here and for listener
/// certificates and keys by the server.
pub fn pem_problem(e: &pem::Error, expected: PemContents) -> String {
    match e {
        pem::Error::Io(io) => format!("cannot read it: {io}"),
        pem::Error::NoItemsFound => match expected {
            PemContents::Certificate => {
                "the file holds no PEM certificate (a -----BEGIN CERTIFICATE----- block)".to_owned()
            }
            PemContents::PrivateKey => "the file holds no PEM private key (a -----BEGIN PRIVATE \
                                        KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY block)"
                .to_owned(),
        },
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a PEM block is not closed (no {} line)",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { .. } => "a PEM -----BEGIN line is malformed".to_owned(),
        pem::Error::Base64Decode(_) => "a PEM block's content is not valid base64".to_owned(),
        pem::Error::SectionTooLarge => "a PEM block is larger than 256 MiB".to_owned(),
        other => format!("it is not a valid PEM file: {other}"),
    }
}

/// The ALPN protocol ids we offer.
const H2: &[u8] = b"h2";
const HTTP11: &[u8] = b"http/1.1";

/// Builds the client configuration: trust from `ca_file` (PEM) or the system store, ALPN
/// `h2` + `http/1.1` when `http2`, else `http/1.1` only.
///
/// The crypto provider is named explicitly (aws-lc-rs), so this never depends on a process-wide
/// default having been installed.
pub(crate) fn client_config(
    ca_file: Option<&Path>,
    http2: bool,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|source| TlsConfigError::CaFile {
                    path: path.to_owned(),
                    source,
                })?;
            if certs.is_empty() {
                return Err(TlsConfigError::EmptyCaFile {
                    path: path.to_owned(),
                });
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|source| TlsConfigError::BadCertificate {
                        path: path.to_owned(),
                        source,
                    })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::warn!(%error, "while loading system root certificates");
            }
            let (added, ignored) = roots.add_parsable_certificates(native.certs);
            if ignored > 0 {
                tracing::debug!(added, ignored, "system root certificates");
            }
            if added == 0 {
                return Err(TlsConfigError::NoSystemRoots);
            }
        }
    }

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = if http2 {
        vec![H2.to_vec(), HTTP11.to_vec()]
    } else {
        vec![HTTP11.to_vec()]
    };
    Ok(Arc::new(config))
}
