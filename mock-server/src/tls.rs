//! HTTPS: the certificate chain and private key the server presents, and the rustls setup.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Errors of reading or using a certificate and key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{what} is not valid pem: {source}")]
    Pem { what: String, source: pem::Error },
    #[error("{what} holds no certificate")]
    NoCertificate { what: String },
    #[error("the private key is not a pkcs#8, pkcs#1 or sec1 key in der form: {0}")]
    KeyDer(&'static str),
    #[error("the certificate and key are unusable: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The certificate chain (the server's own certificate first) and private key for HTTPS.
pub struct TlsConfig {
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

// Hand-written so that a debug print never shows the private key.
impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("certificates", &self.cert_chain.len())
            .finish_non_exhaustive()
    }
}

impl Clone for TlsConfig {
    fn clone(&self) -> TlsConfig {
        TlsConfig {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsConfig {
    /// A configuration from certificates and a key in rustls' types.
    pub fn new(cert_chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> TlsConfig {
        TlsConfig { cert_chain, key }
    }

    /// A configuration from DER certificates and a DER key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_der(cert_chain: Vec<Vec<u8>>, key: Vec<u8>) -> Result<TlsConfig, TlsError> {
        let key = PrivateKeyDer::try_from(key).map_err(TlsError::KeyDer)?;
        Ok(TlsConfig::new(
            cert_chain.into_iter().map(CertificateDer::from).collect(),
            key,
        ))
    }

    /// A configuration from PEM text: one or more certificates, and a private key.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<TlsConfig, TlsError> {
        TlsConfig::parse_pem(cert_chain, "the certificate chain", key, "the private key")
    }

    /// A configuration from PEM files, as `--tls-cert` and `--tls-key` name them.
    pub fn from_pem_files(cert_chain: &Path, key: &Path) -> Result<TlsConfig, TlsError> {
        let read = |path: &Path| {
            fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        TlsConfig::parse_pem(
            &read(cert_chain)?,
            &cert_chain.display().to_string(),
            &read(key)?,
            &key.display().to_string(),
        )
    }

    fn parse_pem(
        cert_chain: &[u8],
        cert_what: &str,
        key: &[u8],
        key_what: &str,
    ) -> Result<TlsConfig, TlsError> {
        let certs = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Pem {
                what: cert_what.to_string(),
                source,
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate {
                what: cert_what.to_string(),
            });
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|source| TlsError::Pem {
            what: key_what.to_string(),
            source,
        })?;
        Ok(TlsConfig::new(certs, key))
    }

    /// The acceptor for the server, on the ring provider, speaking HTTP/1.1 only.
    pub(crate) fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.cert_chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}
