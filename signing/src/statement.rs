//! The vendor's signed, short-lived statement of the newest version of one file, for one
//! language and robot model: what keeps a man in the middle from freezing a robot ("up to
//! date", for ever) or holding it on an older version. TUF's timestamp role is the model.
//!
//! It lives next to the patches, at [`statement_path`], as `<path>` (JSON) and `<path>.sig`
//! (the ed25519 signature of its exact bytes, base64), and it expires: a replayed old statement
//! is refused once its `expires_unix` has passed.

use serde::{Deserialize, Serialize};

use crate::keys::{PublicKey, SecretKey};
use crate::metadata::{VerifyError, signer_of};

/// The version of the statement's layout.
pub const STATEMENT_FORMAT: u32 = 1;

/// Which file a statement speaks of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub package: &'a str,
    pub file_name: &'a str,
    pub language: &'a str,
    pub robot_version: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub format: u32,
    pub package: String,
    pub file_name: String,
    pub language: String,
    pub robot_version: String,
    /// The newest version code the vendor publishes for this file.
    pub latest_version: u64,
    /// When it was signed, and until when it holds (Unix seconds).
    pub issued_unix: u64,
    pub expires_unix: u64,
}

impl Statement {
    pub fn new(target: &Target<'_>, latest_version: u64, issued_unix: u64, lifetime: u64) -> Self {
        Statement {
            format: STATEMENT_FORMAT,
            package: target.package.to_owned(),
            file_name: target.file_name.to_owned(),
            language: target.language.to_owned(),
            robot_version: target.robot_version.to_owned(),
            latest_version,
            issued_unix,
            expires_unix: issued_unix.saturating_add(lifetime),
        }
    }

    /// The statement file's bytes and its signature file's text.
    pub fn sign(&self, key: &SecretKey) -> (Vec<u8>, String) {
        let mut json = serde_json::to_vec_pretty(self).expect("statement serialises");
        json.push(b'\n');
        let signature = format!("{}\n", key.sign(&json));
        (json, signature)
    }

    /// Refuses a statement about another file, language or robot model.
    pub fn check(&self, target: &Target<'_>) -> Result<(), VerifyError> {
        for (field, signed, expected) in [
            ("package", &self.package, target.package),
            ("file name", &self.file_name, target.file_name),
            ("language", &self.language, target.language),
            ("robot model", &self.robot_version, target.robot_version),
        ] {
            if signed != expected {
                return Err(VerifyError::Mismatch {
                    field,
                    signed: signed.clone(),
                    expected: expected.to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// Checks the signature over the statement's exact bytes, then parses it.
pub fn verify_statement(
    keys: &[PublicKey],
    json: &[u8],
    signature: &[u8],
) -> Result<(Statement, PublicKey), VerifyError> {
    let signer = signer_of(keys, json, signature)?;
    let statement: Statement = serde_json::from_slice(json).map_err(VerifyError::Parse)?;
    if statement.format != STATEMENT_FORMAT {
        return Err(VerifyError::Format(statement.format));
    }
    Ok((statement, signer))
}

/// The statement's path below the server's `/version/`: `<package>/<language>/<file_name>--<robot_version>.latest.json`.
pub fn statement_path(target: &Target<'_>) -> String {
    format!(
        "{}/{}/{}--{}.latest.json",
        target.package, target.language, target.file_name, target.robot_version
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target<'static> {
        Target {
            package: "com.example",
            file_name: "fw",
            language: "CN",
            robot_version: "1",
        }
    }

    #[test]
    fn sign_verify_and_identity() {
        let key = SecretKey::generate().unwrap();
        let statement = Statement::new(&target(), 18, 1_800_000_000, 86_400);
        assert_eq!(statement.expires_unix, 1_800_086_400);
        let (json, sig) = statement.sign(&key);
        let (got, signer) = verify_statement(&[key.public()], &json, sig.as_bytes()).unwrap();
        assert_eq!((got.clone(), signer), (statement, key.public()));
        got.check(&target()).unwrap();
        let en = Target {
            language: "EN",
            ..target()
        };
        assert!(matches!(
            got.check(&en),
            Err(VerifyError::Mismatch {
                field: "language",
                ..
            })
        ));
        let stranger = SecretKey::generate().unwrap().public();
        assert!(matches!(
            verify_statement(&[stranger], &json, sig.as_bytes()),
            Err(VerifyError::UnknownKey)
        ));
        assert_eq!(
            statement_path(&target()),
            "com.example/CN/fw--1.latest.json"
        );
    }
}
