//! HTTPS trust: the system's roots or the config's CA file, and optional public-key pins.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::config::{Pin, Security};

/// The rustls config for the `[security]` settings: the config's CA file or the system's roots,
/// and the pins if any.
///
/// A system without any root (a minimal board without the ca-certificates package) gets a
/// verifier that refuses every certificate, naming the cause: reqwest's own default would refuse
/// to build the client at all, and the agent would not even update over plain HTTP. The roots
/// are loaded once here, for both of the agent's HTTP clients.
pub(super) fn client_config(security: &Security) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut verifier: Arc<dyn ServerCertVerifier> = match &security.ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| format!("CA file {} is not PEM: {e}", path.display()))?;
                roots.add(cert).map_err(|e| {
                    format!(
                        "CA file {} holds an unusable certificate: {e}",
                        path.display()
                    )
                })?;
            }
            if roots.is_empty() {
                return Err(format!("CA file {} holds no certificate", path.display()));
            }
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| format!("cannot use CA file {}: {e}", path.display()))?
        }
        None => match rustls_platform_verifier::Verifier::new(provider.clone()) {
            Ok(verifier) => Arc::new(verifier),
            Err(e) => no_roots(&provider, e),
        },
    };
    if !security.pinned_keys.is_empty() {
        verifier = Arc::new(Pinned {
            inner: verifier,
            pins: security.pinned_keys.clone(),
        });
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

const NO_ROOTS: &str = "the system has no trusted CA certificate (install the ca-certificates package, or name the fleet's CA in security.ca_file)";

/// The verifier of a system without trust roots: plain HTTP still works, HTTPS fails naming why.
fn no_roots(
    provider: &rustls::crypto::CryptoProvider,
    cause: rustls::Error,
) -> Arc<dyn ServerCertVerifier> {
    log::warn!("{NO_ROOTS}: {cause}; HTTPS servers cannot be verified");
    Arc::new(NoRoots {
        schemes: provider.signature_verification_algorithms,
    })
}

#[derive(Debug)]
struct NoRoots {
    schemes: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoRoots {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::General(NO_ROOTS.into()))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.schemes)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.schemes)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.schemes.supported_schemes()
    }
}

/// Verifies as usual, then also demands that the server's own certificate carries a pinned key:
/// a CA that issues a certificate for the server's name to someone else is not enough.
///
/// Only the end-entity certificate counts, as with curl's `--pinnedpubkey`: the intermediates are
/// whatever the peer chose to send, and an impostor could append the real server's (public)
/// certificate to its own chain.
#[derive(Debug)]
struct Pinned {
    inner: Arc<dyn ServerCertVerifier>,
    pins: Vec<Pin>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let pinned = spki_sha256(end_entity).is_some_and(|h| self.pins.iter().any(|p| p.0 == h));
        if pinned {
            Ok(verified)
        } else {
            Err(rustls::Error::General(
                "the server's certificate carries none of the pinned public keys".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The sha256 of a certificate's DER subject public key info, as `pinned_keys` names it.
fn spki_sha256(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    Some(Sha256::digest(parsed.subject_public_key_info().as_ref()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts any certificate, so that only the pin decides.
    #[derive(Debug)]
    struct AcceptAll;

    impl ServerCertVerifier for AcceptAll {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            Vec::new()
        }
    }

    fn cert() -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn only_the_servers_own_certificate_satisfies_a_pin() {
        let (real, impostor) = (cert(), cert());
        let pinned = Pinned {
            inner: Arc::new(AcceptAll),
            pins: vec![Pin(spki_sha256(&real).unwrap())],
        };
        let name = ServerName::try_from("localhost").unwrap();
        let verify = |leaf: &CertificateDer<'_>, rest: &[CertificateDer<'_>]| {
            pinned.verify_server_cert(leaf, rest, &name, &[], UnixTime::now())
        };
        assert!(verify(&real, &[]).is_ok());
        assert!(verify(&impostor, &[]).is_err());
        // The real certificate appended to an impostor's chain does not help it.
        assert!(verify(&impostor, std::slice::from_ref(&real)).is_err());
    }
}
