//! Ed25519 keys and signatures as one-line base64 texts, on ring (already linked for TLS).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::rand::SecureRandom as _;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{what} is not base64")]
    Base64 {
        what: &'static str,
        source: base64::DecodeError,
    },
    #[error("{what} has {len} bytes, not {expected}")]
    Length {
        what: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("the system's random number generator failed")]
    Random,
    #[error("ed25519 refused the key")]
    Rejected,
}

/// A secret signing key: the 32-byte ed25519 seed, kept by the vendor only.
pub struct SecretKey {
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

// Hand-written so that a debug print never shows the seed.
impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKey")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| KeyError::Random)?;
        SecretKey::from_seed(seed)
    }

    fn from_seed(seed: [u8; 32]) -> Result<SecretKey, KeyError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| KeyError::Rejected)?;
        Ok(SecretKey { seed, pair })
    }

    /// Reads the text [`SecretKey::to_text`] wrote.
    pub fn from_text(text: &str) -> Result<SecretKey, KeyError> {
        SecretKey::from_seed(decode::<32>("secret key", text)?)
    }

    /// The seed as one line of base64.
    pub fn to_text(&self) -> String {
        STANDARD.encode(self.seed)
    }

    pub fn public(&self) -> PublicKey {
        let mut key = [0u8; 32];
        key.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(key)
    }

    /// The signature of `message`, as one line of base64.
    pub fn sign(&self, message: &[u8]) -> String {
        STANDARD.encode(self.pair.sign(message).as_ref())
    }
}

/// A public key as the agent's config lists it: 32 bytes in base64.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_text())
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl PublicKey {
    pub fn from_text(text: &str) -> Result<PublicKey, KeyError> {
        decode::<32>("public key", text).map(PublicKey)
    }

    pub fn to_text(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// True when `signature` signs `message` with this key.
    pub fn verifies(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

/// Decodes a signature file's text.
pub fn signature_from_text(text: &str) -> Result<[u8; 64], KeyError> {
    decode::<64>("signature", text)
}

fn decode<const N: usize>(what: &'static str, text: &str) -> Result<[u8; N], KeyError> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|source| KeyError::Base64 { what, source })?;
    bytes.try_into().map_err(|b: Vec<u8>| KeyError::Length {
        what,
        len: b.len(),
        expected: N,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_signs() {
        let key = SecretKey::generate().unwrap();
        let again = SecretKey::from_text(&format!("{}\n", key.to_text())).unwrap();
        assert_eq!(key.public(), again.public());
        let public = PublicKey::from_text(&key.public().to_text()).unwrap();
        let sig = signature_from_text(&key.sign(b"hello")).unwrap();
        assert!(public.verifies(b"hello", &sig));
        assert!(!public.verifies(b"hellO", &sig));
        let other = SecretKey::generate().unwrap().public();
        assert!(!other.verifies(b"hello", &sig));
        assert!(matches!(
            PublicKey::from_text("AAAA"),
            Err(KeyError::Length { len: 3, .. })
        ));
        assert!(matches!(
            PublicKey::from_text("not base64!"),
            Err(KeyError::Base64 { .. })
        ));
    }
}
