//! The signed metadata of one patch, and the checks that make a signature mean something.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::{self, KeyError, PublicKey, SecretKey};

/// The version of the metadata layout that is written: format 3 also names the sha256 of the
/// file the patch applies to, so that an agent can check its base before it applies anything
/// (see [`Metadata::binds_base`]). Format 2 names the language and the robot model the patch
/// was built for; format 1 named neither. Both are still read (an agent takes format 1 only
/// while signatures are not required, see [`Metadata::binds_target`]).
pub const FORMAT: u32 = 3;
/// The second format: language and robot model, no base.
pub const FORMAT_2: u32 = 2;
/// The first format, without language and robot model.
pub const FORMAT_1: u32 = 1;

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
    #[error("the signed metadata has format {0}, not {FORMAT_1}, {FORMAT_2} or {FORMAT}")]
    Format(u32),
    #[error("the signed metadata of format {format} does not name its {field}")]
    Missing { format: u32, field: &'static str },
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
    /// The language variant (`language` of the check), from format 2 on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// The robot model (`robot_version` of the check), from format 2 on: the wrong build can
    /// brick a board of another model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robot_version: Option<String>,
    /// The version code the patch applies to.
    pub from_version: u64,
    /// The sha256 of the file the patch applies to, from format 3 on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_sha256: Option<String>,
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
    pub language: &'a str,
    pub robot_version: &'a str,
    pub from_version: u64,
    pub to_version: u64,
}

impl Metadata {
    /// The metadata of `patch`, which turns `base` into `result`.
    pub fn describe(expected: &Expected<'_>, base: &[u8], patch: &[u8], result: &[u8]) -> Metadata {
        Metadata {
            format: FORMAT,
            package: expected.package.to_owned(),
            file_name: expected.file_name.to_owned(),
            language: Some(expected.language.to_owned()),
            robot_version: Some(expected.robot_version.to_owned()),
            from_version: expected.from_version,
            from_sha256: Some(hex_sha256(base)),
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

    /// True when the metadata names the language and robot model (format 2 on). Format 1 does
    /// not, so its signature holds on any robot whose file happens to be the same version.
    pub fn binds_target(&self) -> bool {
        self.language.is_some() && self.robot_version.is_some()
    }

    /// True when the metadata names the sha256 of the file the patch applies to (format 3 on):
    /// a patch applied to another file still makes a file, just not a version, and before
    /// format 3 only the result's sha256 could tell, after the work was done.
    pub fn binds_base(&self) -> bool {
        self.from_sha256.is_some()
    }

    /// Refuses metadata signed for another package, file, language, robot model or version
    /// step: a replayed or downgrading signature is as bad as a forged one. (Format 1 names no
    /// language nor model; see [`Metadata::binds_target`].)
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
        if let Some(language) = &self.language {
            if language != expected.language {
                return mismatch("language", language.clone(), expected.language.into());
            }
        }
        if let Some(model) = &self.robot_version {
            if model != expected.robot_version {
                return mismatch("robot model", model.clone(), expected.robot_version.into());
            }
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
    let signer = signer_of(keys, json, signature)?;
    let meta: Metadata = serde_json::from_slice(json).map_err(VerifyError::Parse)?;
    let missing = |field| {
        Err(VerifyError::Missing {
            format: meta.format,
            field,
        })
    };
    match meta.format {
        FORMAT_1 => {}
        FORMAT_2 | FORMAT if meta.language.is_none() => return missing("language"),
        FORMAT_2 | FORMAT if meta.robot_version.is_none() => {
            return missing("robot model (robot_version)");
        }
        FORMAT if meta.from_sha256.is_none() => return missing("base (from_sha256)"),
        FORMAT_2 | FORMAT => {}
        other => return Err(VerifyError::Format(other)),
    }
    let base = meta.from_sha256.as_ref();
    for (field, value) in [
        ("patch_sha256", Some(&meta.patch_sha256)),
        ("result_sha256", Some(&meta.result_sha256)),
        ("from_sha256", base),
    ] {
        let Some(value) = value else { continue };
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

/// The one of `keys` whose signature `signature` (base64 text) is over `json`'s exact bytes.
pub(crate) fn signer_of(
    keys: &[PublicKey],
    json: &[u8],
    signature: &[u8],
) -> Result<PublicKey, VerifyError> {
    let text = std::str::from_utf8(signature).unwrap_or("");
    let signature = keys::signature_from_text(text).map_err(VerifyError::Signature)?;
    keys.iter()
        .find(|k| k.verifies(json, &signature))
        .copied()
        .ok_or(VerifyError::UnknownKey)
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
            language: "CN",
            robot_version: "1",
            from_version: 17,
            to_version: 18,
        }
    }

    #[test]
    fn sign_verify_and_identity() {
        let key = SecretKey::generate().unwrap();
        let meta = Metadata::describe(&expected(), b"base", b"patch", b"result");
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
    fn language_and_model_are_bound() {
        let key = SecretKey::generate().unwrap();
        let (json, sig) = Metadata::describe(&expected(), b"base", b"patch", b"result").sign(&key);
        let meta = verify(&[key.public()], &json, sig.as_bytes()).unwrap();
        assert_eq!(meta.format, FORMAT);
        assert!(meta.binds_target());
        for (other, field) in [
            (
                Expected {
                    language: "EN",
                    ..expected()
                },
                "language",
            ),
            (
                Expected {
                    robot_version: "2",
                    ..expected()
                },
                "robot model",
            ),
        ] {
            assert!(
                matches!(meta.check(&other), Err(VerifyError::Mismatch { field: f, .. }) if f == field),
                "{field}"
            );
        }
        // Format 1 still reads, and says that it binds neither.
        let mut old = meta.clone();
        (old.format, old.language, old.robot_version) = (FORMAT_1, None, None);
        let (json, sig) = old.sign(&key);
        let old = verify(&[key.public()], &json, sig.as_bytes()).unwrap();
        assert!(!old.binds_target());
        old.check(&Expected {
            language: "EN",
            ..expected()
        })
        .unwrap();
        // Formats 2 and 3 without them are refused.
        for format in [FORMAT_2, FORMAT] {
            let mut half = meta.clone();
            (half.format, half.robot_version) = (format, None);
            let (json, sig) = half.sign(&key);
            assert!(matches!(
                verify(&[key.public()], &json, sig.as_bytes()),
                Err(VerifyError::Missing { .. })
            ));
        }
    }

    #[test]
    fn format_3_binds_the_base_and_format_2_still_reads() {
        let key = SecretKey::generate().unwrap();
        let meta = Metadata::describe(&expected(), b"base", b"patch", b"result");
        assert_eq!(meta.format, FORMAT);
        assert_eq!(
            meta.from_sha256.as_deref(),
            Some(hex_sha256(b"base").as_str())
        );
        let (json, sig) = meta.sign(&key);
        assert!(
            verify(&[key.public()], &json, sig.as_bytes())
                .unwrap()
                .binds_base()
        );
        // Format 3 without its base is refused, and so is a base that is not a sha256.
        let mut no_base = meta.clone();
        no_base.from_sha256 = None;
        let (json, sig) = no_base.sign(&key);
        assert!(matches!(
            verify(&[key.public()], &json, sig.as_bytes()),
            Err(VerifyError::Missing {
                format: 3,
                field: "base (from_sha256)"
            })
        ));
        let mut bad = meta.clone();
        bad.from_sha256 = Some("not hex".into());
        let (json, sig) = bad.sign(&key);
        assert!(matches!(
            verify(&[key.public()], &json, sig.as_bytes()),
            Err(VerifyError::Digest {
                field: "from_sha256"
            })
        ));
        // Format 2 names no base, and is still taken.
        let mut older = meta.clone();
        (older.format, older.from_sha256) = (FORMAT_2, None);
        let (json, sig) = older.sign(&key);
        let older = verify(&[key.public()], &json, sig.as_bytes()).unwrap();
        assert!(older.binds_target() && !older.binds_base());
        assert!(!json.windows(11).any(|w| w == b"from_sha256"));
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
