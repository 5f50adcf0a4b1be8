//! Signed patch metadata: what the vendor's release pipeline publishes next to every patch, and
//! what the agent checks before it trusts one.
//!
//! Next to `<patch-url>` live `<patch-url>.meta.json` (a [`Metadata`]) and
//! `<patch-url>.meta.json.sig`, the base64 ed25519 signature of the metadata file's exact bytes.
//! The metadata binds a patch to one package, file and version step, so that a valid signature
//! cannot be replayed for another file or to move a robot backwards.
//!
//! - [`keys`]: ed25519 key pairs and signatures, as one-line base64 texts.
//! - [`metadata`]: the metadata format, its signature check and the identity check.
//! - [`release`]: the release side: make a key pair, sign a patch, check a signed patch;
//!   `ota-sign` is a thin command line over it.

pub mod keys;
pub mod metadata;
pub mod release;
pub mod statement;

pub use keys::{KeyError, PublicKey, SecretKey};
pub use metadata::{
    Expected, FORMAT, FORMAT_1, FORMAT_2, Metadata, VerifyError, meta_url, sig_url, verify,
    verify_signed,
};
pub use statement::{Statement, Target, statement_path, verify_statement};
