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

/// A throwaway CA and a server certificate it signed for `localhost` and 127.0.0.1, for tests
/// and demos of HTTPS.
pub struct TestCertificates {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
    /// The server key's subject public key info (DER), what a pin names.
    pub spki_der: Vec<u8>,
}

// Hand-written so that a debug print never shows the private key.
impl fmt::Debug for TestCertificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCertificates").finish_non_exhaustive()
    }
}

impl TestCertificates {
    /// Makes a new CA and server certificate.
    ///
    /// # Panics
    ///
    /// When rcgen cannot make a key or a certificate, which only a broken build would do.
    pub fn generate() -> TestCertificates {
        Self::generate_valid_from(None)
    }

    /// Like [`TestCertificates::generate`], with a server certificate that is valid only from
    /// the start of `year` (for a client whose clock is behind, say).
    ///
    /// # Panics
    ///
    /// As [`TestCertificates::generate`].
    pub fn generate_valid_from(year: Option<i32>) -> TestCertificates {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose, PublicKeyData as _,
        };
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "ota-mock-server test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().expect("server key");
        let mut server =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params");
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if let Some(year) = year {
            server.not_before = rcgen::date_time_ymd(year, 1, 1);
            server.not_after = rcgen::date_time_ymd(year + 1, 1, 1);
        }
        let cert = server.signed_by(&key, &issuer).expect("server certificate");
        TestCertificates {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
            spki_der: key.subject_public_key_info(),
        }
    }

    pub fn tls_config(&self) -> TlsConfig {
        TlsConfig::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
            .expect("rcgen writes valid PEM")
    }

    /// Writes the certificate and key as PEM files into `dir`, for the binary.
    pub fn write_pem(&self, dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
        let cert = dir.join("server.crt");
        let key = dir.join("server.key");
        fs::write(&cert, &self.cert_pem)?;
        fs::write(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}
