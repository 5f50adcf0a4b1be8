//! How a cycle ended for one managed file, and what the agent knows of the file.

use std::fmt;

use crate::store::VersionSource;

/// How a cycle ended for one managed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do (`100` with no patches, or `102`).
    UpToDate { version: String },
    /// `103` or `104`: the server declines; not an error of the agent.
    Declined(Declined),
    /// The whole chain is installed.
    Updated { from: String, to: String },
    /// Part of the chain is installed; the rest failed.
    Partial {
        from: String,
        to: String,
        failed: String,
    },
    /// Nothing was installed: a patch failed, the install failed or was rolled back.
    Failed { reason: String },
    /// The hooks kept deferring the update for `defer_timeout`; it is reported `3`.
    Deferred,
    /// A hook deferred the update, or the install window is closed: it is tried again in
    /// `retry_in`, with what it downloaded and staged kept.
    Waiting {
        reason: String,
        retry_in: std::time::Duration,
    },
    /// The file is no version the agent can tell: it is neither patched nor checked.
    Unidentified { reason: String },
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::UpToDate { .. } | Outcome::Updated { .. })
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::UpToDate { version } => write!(f, "up to date at version {version}"),
            Outcome::Declined(why) => {
                write!(f, "server declined the update (code {})", why.code())
            }
            Outcome::Updated { from, to } => write!(f, "updated from version {from} to {to}"),
            Outcome::Partial { from, to, failed } => {
                write!(f, "updated from version {from} to {to}; {failed}")
            }
            Outcome::Failed { reason } => write!(f, "update failed: {reason}"),
            Outcome::Deferred => write!(f, "update deferred for longer than defer_timeout"),
            Outcome::Waiting { reason, retry_in } => write!(
                f,
                "{reason}; trying again in {}",
                crate::schedule::human(*retry_in)
            ),
            Outcome::Unidentified { reason } => write!(f, "not checked: {reason}"),
        }
    }
}

/// A file's version as the agent knows it, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Known {
    pub version: String,
    pub sha256: String,
    pub source: VersionSource,
}

/// Why the server declined to update this robot (rule 1): its choice, not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declined {
    /// `103`: this robot may not upgrade.
    NotAllowed,
    /// `104`: there is no version in this robot's language.
    NoLanguage,
}

impl Declined {
    /// The server's answer code.
    pub fn code(self) -> &'static str {
        match self {
            Declined::NotAllowed => "103",
            Declined::NoLanguage => "104",
        }
    }
}
