//! HTTPS: the rustls configuration and the certificate it presents, re-read
//! from disk so that a renewed certificate is served without a restart.
//!
//! Kubernetes updates a mounted Secret by swapping a `..data` symlink, which
//! file-change notifications report unreliably; the files are small, so they are
//! simply read again every [`ROTATION_CHECK`]. A new pair is taken only when it
//! loads and the key matches the certificate: a half-written update (certificate
//! replaced, key not yet) keeps the old pair until the next check. Connections
//! already open keep their session; only new handshakes see the new certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{Error as RustlsError, InconsistentKeys, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// How often the certificate and key files are read again.
pub const ROTATION_CHECK: Duration = Duration::from_secs(2);

/// Why a certificate and key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: invalid certificate: {reason}")]
    InvalidCertificate { path: PathBuf, reason: String },
    #[error("{path}: no usable private key (PEM PKCS#8, PKCS#1 or SEC1): {reason}")]
    InvalidKey { path: PathBuf, reason: String },
    #[error("the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS setup: {0}")]
    Setup(RustlsError),
}

/// The contents of the certificate and key files as last read.
#[derive(Clone, PartialEq, Eq)]
struct Pem {
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// Presents whatever certificate is current to every handshake.
#[derive(Debug)]
pub struct RotatingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl RotatingCert {
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        RotatingCert { current: RwLock::new(key) }
    }

    /// The certificate and key new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn replace(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
    }
}

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads the certificate and key of `config`, and starts re-reading them every
/// [`ROTATION_CHECK`] for as long as the returned acceptor (or a clone) lives.
pub async fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let provider = provider();
    let pem = read(config).await?;
    let key = certified_key(config, &pem, &provider)?;
    let resolver = Arc::new(RotatingCert::new(Arc::new(key)));
    let server = server_config(provider.clone(), resolver.clone())?;
    tokio::spawn(rotate(config.clone(), pem, Arc::downgrade(&resolver), provider));
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// TLS 1.2 and 1.3, no client certificates, HTTP/2 preferred over HTTP/1.1.
pub fn server_config(
    provider: Arc<CryptoProvider>,
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

async fn read(config: &TlsConfig) -> Result<Pem, TlsError> {
    let read =
        |path: PathBuf| async move { tokio::fs::read(&path).await.map_err(|source| TlsError::Read { path, source }) };
    Ok(Pem { cert: read(config.cert_file.clone()).await?, key: read(config.key_file.clone()).await? })
}

/// Parses a PEM chain (leaf first) and key, and checks that they belong together.
fn certified_key(config: &TlsConfig, pem: &Pem, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = chain(&config.cert_file, &pem.cert)?;
    let invalid_key = |reason: String| TlsError::InvalidKey { path: config.key_file.clone(), reason };
    let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|e| invalid_key(e.to_string()))?;
    let key = provider.key_provider.load_private_key(key).map_err(|e| invalid_key(e.to_string()))?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        // A key type that cannot tell its public key is taken on trust, as rustls does.
        Ok(()) | Err(RustlsError::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(RustlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch { cert: config.cert_file.clone(), key: config.key_file.clone() })
        }
        Err(e) => Err(TlsError::InvalidCertificate { path: config.cert_file.clone(), reason: e.to_string() }),
    }
}

fn chain(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::InvalidCertificate { path: path.into(), reason: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: path.into() });
    }
    Ok(chain)
}

/// What the rotation task remembers between checks.
struct Rotation {
    config: TlsConfig,
    provider: Arc<CryptoProvider>,
    /// The files as they were when the served pair was loaded.
    served: Pem,
    /// The last content (or read error) that was refused, so it is logged once.
    refused: Option<Result<Pem, String>>,
}

async fn rotate(config: TlsConfig, served: Pem, resolver: Weak<RotatingCert>, provider: Arc<CryptoProvider>) {
    let mut rotation = Rotation { config, provider, served, refused: None };
    let mut every = tokio::time::interval(ROTATION_CHECK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(resolver) = resolver.upgrade() else { return };
        let seen = read(&rotation.config).await.map_err(|e| e.to_string());
        rotation.check(seen, &resolver);
    }
}

impl Rotation {
    /// Takes `seen` if it changed and is valid; otherwise keeps the served pair.
    fn check(&mut self, seen: Result<Pem, String>, resolver: &RotatingCert) {
        if seen.as_ref().is_ok_and(|pem| *pem == self.served) || self.refused.as_ref() == Some(&seen) {
            return;
        }
        let pem = match seen {
            Ok(pem) => pem,
            Err(error) => return self.refuse(error.clone(), Err(error)),
        };
        match certified_key(&self.config, &pem, &self.provider) {
            Ok(key) => {
                resolver.replace(Arc::new(key));
                self.served = pem;
                self.refused = None;
                tracing::info!(cert = %self.config.cert_file.display(), "serving a new TLS certificate");
            }
            Err(e) => self.refuse(e.to_string(), Ok(pem)),
        }
    }

    fn refuse(&mut self, error: String, seen: Result<Pem, String>) {
        tracing::warn!(%error, "keeping the current TLS certificate; will retry");
        self.refused = Some(seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> Pem {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
        Pem { cert: cert.pem().into_bytes(), key: key.serialize_pem().into_bytes() }
    }

    fn rotation(served: &Pem) -> (Rotation, RotatingCert) {
        let config = TlsConfig { cert_file: "tls.crt".into(), key_file: "tls.key".into() };
        let provider = provider();
        let key = certified_key(&config, served, &provider).unwrap();
        let rotation = Rotation { config, provider, served: served.clone(), refused: None };
        (rotation, RotatingCert::new(Arc::new(key)))
    }

    fn leaf(resolver: &RotatingCert) -> Vec<u8> {
        resolver.current().cert[0].to_vec()
    }

    #[test]
    fn a_valid_new_pair_replaces_the_served_one() {
        let (old, new) = (pair(), pair());
        let (mut rotation, resolver) = rotation(&old);
        let before = leaf(&resolver);
        rotation.check(Ok(old.clone()), &resolver);
        assert_eq!(leaf(&resolver), before, "unchanged files");
        rotation.check(Ok(new.clone()), &resolver);
        assert_ne!(leaf(&resolver), before);
        assert!(rotation.served == new && rotation.refused.is_none());
    }

    #[test]
    fn an_invalid_pair_is_remembered_and_the_served_one_kept() {
        let (old, new) = (pair(), pair());
        let (mut rotation, resolver) = rotation(&old);
        let before = leaf(&resolver);
        let half = Pem { cert: new.cert.clone(), key: old.key.clone() };
        for seen in [Ok(half), Err("reading tls.crt: gone".to_owned()), Ok(Pem { cert: Vec::new(), key: Vec::new() })] {
            rotation.check(seen.clone(), &resolver);
            assert_eq!(leaf(&resolver), before);
            assert!(rotation.refused == Some(seen), "remembered, so it is logged once");
        }
        rotation.check(Ok(new), &resolver);
        assert_ne!(leaf(&resolver), before, "taken once the update is complete");
        assert!(rotation.refused.is_none());
    }

    #[test]
    fn errors_name_the_problem() {
        let (one, other) = (pair(), pair());
        let config = TlsConfig { cert_file: "tls.crt".into(), key_file: "tls.key".into() };
        let load = |cert: &[u8], key: &[u8]| {
            certified_key(&config, &Pem { cert: cert.to_vec(), key: key.to_vec() }, &provider()).map(|_| ())
        };
        assert!(load(&one.cert, &one.key).is_ok());
        assert!(matches!(load(&one.cert, &other.key), Err(TlsError::KeyMismatch { .. })));
        assert!(matches!(load(b"", &one.key), Err(TlsError::NoCertificate { .. })));
        assert!(matches!(load(&one.key, &one.key), Err(TlsError::NoCertificate { .. })));
        assert!(matches!(load(&one.cert, b""), Err(TlsError::InvalidKey { .. })));
        assert!(matches!(load(&one.cert, &one.cert), Err(TlsError::InvalidKey { .. })));
        let garbled = String::from_utf8(one.cert.clone())
            .unwrap()
            .replace("BEGIN CERTIFICATE-----\n", "BEGIN CERTIFICATE-----\n!!");
        assert!(matches!(load(garbled.as_bytes(), &one.key), Err(TlsError::InvalidCertificate { .. })));
    }
}
