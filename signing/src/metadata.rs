//! The signed metadata of one patch, and the checks that make a signature mean something.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::{self, KeyError, PublicKey, SecretKey};

/// The version of the metadata layout; the agent refuses any other.
pub const FORMAT: u32 = 1;

/// The largest metadata or signature file the agent reads.
pub const MAX_SIDECAR: usize = 64 * 1024;

const META_SUFFIX: &str = ".meta.json";
const SIG_SUFFIX: &str = ".meta.json.sig";

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature file is unusable")]
    Signature(#[source] KeyError),
    #[error("the metadata is not signed by any trusted key")]
    UnknownKey,
    #[error("the signed metadata is not valid")]
    Parse(#[source] serde_json::Error),
    #[error("the signed metadata has format {0}, not {FORMAT}")]
    Format(u32),
    #[error("the signed metadata is for {field} `{signed}`, not `{expected}`")]
    Mismatch {
        field: &'static str,
        signed: String,
        expected: String,
    },
    #[error("the signed metadata's {field} is not a sha256 in hex")]
    Digest { field: &'static str },
}

/// What the release pipeline states about one patch, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub format: u32,
    pub package: String,
    pub file_name: String,
    /// The version code the patch applies to.
    pub from_version: u64,
    /// The version code the patch leads to.
    pub to_version: u64,
    pub patch_size: u64,
    pub patch_sha256: String,
    pub result_size: u64,
    pub result_sha256: String,
}

/// What the agent expects of a patch before it has seen the metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected<'a> {
    pub package: &'a str,
    pub file_name: &'a str,
    pub from_version: u64,
    pub to_version: u64,
}

impl Metadata {
    /// The metadata of `patch`, which turns a file into `result`.
    pub fn describe(expected: &Expected<'_>, patch: &[u8], result: &[u8]) -> Metadata {
        Metadata {
            format: FORMAT,
            package: expected.package.to_owned(),
            file_name: expected.file_name.to_owned(),
            from_version: expected.from_version,
            to_version: expected.to_version,
            patch_size: patch.len() as u64,
            patch_sha256: hex_sha256(patch),
            result_size: result.len() as u64,
            result_sha256: hex_sha256(result),
        }
    }

    /// The metadata file's bytes and its signature file's text.
    pub fn sign(&self, key: &SecretKey) -> (Vec<u8>, String) {
        let mut json = serde_json::to_vec_pretty(self).expect("metadata serialises");
        json.push(b'\n');
        let signature = format!("{}\n", key.sign(&json));
        (json, signature)
    }

    /// Refuses metadata signed for another package, file or version step: a replayed or
    /// downgrading signature is as bad as a forged one.
    pub fn check(&self, expected: &Expected<'_>) -> Result<(), VerifyError> {
        let mismatch = |field, signed: String, expected: String| {
            Err(VerifyError::Mismatch {
                field,
                signed,
                expected,
            })
        };
        if self.package != expected.package {
            return mismatch("package", self.package.clone(), expected.package.into());
        }
        if self.file_name != expected.file_name {
            return mismatch(
                "file name",
                self.file_name.clone(),
                expected.file_name.into(),
            );
        }
        if self.from_version != expected.from_version {
            return mismatch(
                "from-version",
                self.from_version.to_string(),
                expected.from_version.to_string(),
            );
        }
        if self.to_version != expected.to_version {
            return mismatch(
                "to-version",
                self.to_version.to_string(),
                expected.to_version.to_string(),
            );
        }
        Ok(())
    }
}

/// Checks the signature over the metadata file's exact bytes, then parses it.
///
/// Any one of `keys` may have signed it, so that a vendor can roll keys over.
pub fn verify(keys: &[PublicKey], json: &[u8], signature: &[u8]) -> Result<Metadata, VerifyError> {
    verify_signed(keys, json, signature).map(|(meta, _)| meta)
}

/// [`verify`], also naming the key that signed.
pub fn verify_signed(
    keys: &[PublicKey],
    json: &[u8],
    signature: &[u8],
) -> Result<(Metadata, PublicKey), VerifyError> {
    let text = std::str::from_utf8(signature).unwrap_or("");
    let signature = keys::signature_from_text(text).map_err(VerifyError::Signature)?;
    let signer = *keys
        .iter()
        .find(|k| k.verifies(json, &signature))
        .ok_or(VerifyError::UnknownKey)?;
    let meta: Metadata = serde_json::from_slice(json).map_err(VerifyError::Parse)?;
    if meta.format != FORMAT {
        return Err(VerifyError::Format(meta.format));
    }
    for (field, value) in [
        ("patch_sha256", &meta.patch_sha256),
        ("result_sha256", &meta.result_sha256),
    ] {
        if value.len() != 64
            || !value
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(VerifyError::Digest { field });
        }
    }
    Ok((meta, signer))
}

/// Where the metadata of the patch at `patch_url` lives.
pub fn meta_url(patch_url: &str) -> String {
    with_suffix(patch_url, META_SUFFIX)
}

/// Where the signature of the patch at `patch_url`'s metadata lives.
pub fn sig_url(patch_url: &str) -> String {
    with_suffix(patch_url, SIG_SUFFIX)
}

/// Appends to the URL's path, before any query or fragment.
fn with_suffix(url: &str, suffix: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    format!("{}{suffix}{}", &url[..end], &url[end..])
}

pub fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected() -> Expected<'static> {
        Expected {
            package: "com.example",
            file_name: "fw",
            from_version: 17,
            to_version: 18,
        }
    }

    #[test]
    fn sign_verify_and_identity() {
        let key = SecretKey::generate().unwrap();
        let meta = Metadata::describe(&expected(), b"patch", b"result");
        let (json, sig) = meta.sign(&key);
        let got = verify(&[key.public()], &json, sig.as_bytes()).unwrap();
        assert_eq!(got, meta);
        got.check(&expected()).unwrap();

        let older = Expected {
            from_version: 16,
            to_version: 17,
            ..expected()
        };
        assert!(matches!(
            got.check(&older),
            Err(VerifyError::Mismatch {
                field: "from-version",
                ..
            })
        ));
        let other_file = Expected {
            file_name: "other",
            ..expected()
        };
        assert!(matches!(
            got.check(&other_file),
            Err(VerifyError::Mismatch {
                field: "file name",
                ..
            })
        ));

        let mut tampered = json.clone();
        let at = tampered.len() - 5;
        tampered[at] ^= 1;
        assert!(matches!(
            verify(&[key.public()], &tampered, sig.as_bytes()),
            Err(VerifyError::UnknownKey)
        ));
        let stranger = SecretKey::generate().unwrap().public();
        assert!(matches!(
            verify(&[stranger], &json, sig.as_bytes()),
            Err(VerifyError::UnknownKey)
        ));
        // Rotation: the old key still verifies while both are listed.
        verify(&[stranger, key.public()], &json, sig.as_bytes()).unwrap();
        assert!(matches!(
            verify(&[key.public()], &json, b"garbage"),
            Err(VerifyError::Signature(_))
        ));
    }

    #[test]
    fn sidecar_urls() {
        assert_eq!(meta_url("http://h/a.patch"), "http://h/a.patch.meta.json");
        assert_eq!(
            sig_url("http://h/a.patch?x=1"),
            "http://h/a.patch.meta.json.sig?x=1"
        );
    }
}
