//! TLS for listeners: rustls with ALPN (`h2`, `http/1.1`) and SNI certificates.
//!
//! Returning clients resume instead of repeating the full handshake ([`resumption`]): TLS 1.3
//! and TLS 1.2 session tickets, sealed with a key that rotates every 6 hours, and a bounded
//! session cache for TLS 1.2 clients without tickets. Both are shared by every listener and
//! survive reloads.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use snakeway_proxy::{PemContents, pem_problem};
use tokio_rustls::TlsAcceptor;

/// The crypto provider every TLS config uses (aws-lc-rs, with post-quantum key exchange).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// A TLS acceptor for a listener's `[listener.tls]` table.
pub(crate) fn acceptor(tls: &snakeway_config::Tls, http2: bool) -> Result<TlsAcceptor, String> {
    let provider = provider();
    let default = load_key(&provider, &tls.cert, &tls.key)?;
    let mut by_host = HashMap::new();
    let mut by_suffix = Vec::new();
    for (i, sni) in tls.sni.iter().enumerate() {
        let key = load_key(&provider, &sni.cert, &sni.key).map_err(|e| format!("sni[{i}]: {e}"))?;
        for host in &sni.hosts {
            let host = host.to_ascii_lowercase();
            match host.strip_prefix('*') {
                Some(suffix) => by_suffix.push((suffix.to_owned(), key.clone())),
                None => {
                    by_host.insert(host, key.clone());
                }
            }
        }
    }
    by_suffix.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
    let resolver = SniResolver {
        default,
        by_host,
        by_suffix,
    };

    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    resumption(&mut config);
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Session IDs the server remembers for TLS 1.2 clients that do not take tickets (about 200
/// bytes each, the oldest forgotten first).
const SESSION_CACHE_ENTRIES: usize = 4096;

/// Sets up session resumption on `config`: one process-wide rotating ticketer (stateless, so
/// resumption costs no server memory per client) and one bounded session cache. If the
/// ticketer cannot be made (its key comes from the system's random source), the session cache
/// still resumes TLS 1.3 sessions statefully.
fn resumption(config: &mut rustls::ServerConfig) {
    type Shared = (
        Option<Arc<dyn rustls::server::ProducesTickets>>,
        Arc<dyn rustls::server::StoresServerSessions>,
    );
    static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
    let (ticketer, cache) = SHARED.get_or_init(|| {
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
            .inspect_err(|e| tracing::warn!(error = %e, "no TLS session tickets"))
            .ok();
        let cache = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
        (ticketer, cache)
    });
    if let Some(ticketer) = ticketer {
        config.ticketer = ticketer.clone();
    }
    config.session_storage = cache.clone();
}

fn load_key(
    provider: &CryptoProvider,
    cert: &Path,
    key: &Path,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| {
            format!(
                "{}: {}",
                cert.display(),
                pem_problem(&e, PemContents::Certificate)
            )
        })?;
    if chain.is_empty() {
        let e = pem::Error::NoItemsFound;
        return Err(format!(
            "{}: {}",
            cert.display(),
            pem_problem(&e, PemContents::Certificate)
        ));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "{}: {}",
            key.display(),
            pem_problem(&e, PemContents::PrivateKey)
        )
    })?;
    let signing = provider.key_provider.load_private_key(der).map_err(|_| {
        format!(
            "{}: the private key is not a usable RSA, ECDSA or Ed25519 key",
            key.display()
        )
    })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "does not match the certificate"
            }
            rustls::Error::InconsistentKeys(_) => {
                "cannot be compared with the certificate (its public key cannot be derived)"
            }
            _ => {
                "cannot be checked against the certificate, which is not a valid X.509 certificate"
            }
        };
        format!("the key {} {why} {}", key.display(), cert.display())
    })?;
    Ok(Arc::new(certified))
}

/// Picks a certificate by SNI: exact host, then the longest matching `*.suffix`, then the
/// listener's default certificate.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    by_host: HashMap<String, Arc<CertifiedKey>>,
    by_suffix: Vec<(String, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(key) = self.by_host.get(&name) {
            return Some(key.clone());
        }
        let by_suffix = self
            .by_suffix
            .iter()
            .find(|(s, _)| name.len() > s.len() && name.ends_with(s.as_str()));
        Some(by_suffix.map_or(&self.default, |(_, k)| k).clone())
    }
}
