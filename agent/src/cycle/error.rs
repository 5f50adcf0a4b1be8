//! The ways a cycle can fail, and the room a step lacked: every one of them is a state the
//! daemon backs off from, never an exit.

use crate::client::ClientError;
use crate::managed::InstallError;
use crate::store::StoreError;

/// The room a step lacked, and where: beside the managed file or in the state directory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Room {
    pub(crate) needed: u64,
    pub(crate) beside: bool,
}

impl Room {
    pub(crate) fn new(place: &str, needed: u64) -> Self {
        Room {
            needed,
            beside: place == BESIDE,
        }
    }
}

/// Where [`CycleError::NoSpace`] names the managed file's file system.
pub(crate) const BESIDE: &str = "beside the managed file";
/// Where [`CycleError::NoSpace`] names the state directory's file system.
pub(crate) const IN_STATE_DIR: &str = "in the state directory";

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error(transparent)]
    Client(ClientError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Install(InstallError),
    #[error("the server's answer was refused: {0}")]
    Refused(String),
    #[error("not enough free space {place}: {needed} bytes needed, {free} free")]
    NoSpace {
        place: &'static str,
        needed: u64,
        free: u64,
    },
    #[error("download of update {id} was interrupted: {reason}")]
    Interrupted { id: String, reason: String },
    #[error("update {id} is not the patch the vendor signed: {reason}")]
    Unauthentic { id: String, reason: String },
    #[error("stopped by a signal")]
    Stopped,
    #[error("the update cycle made no progress in {steps} steps")]
    NoProgress { steps: usize },
}

impl From<InstallError> for CycleError {
    fn from(e: InstallError) -> Self {
        match e {
            InstallError::Stopped { .. } => CycleError::Stopped,
            e => CycleError::Install(e),
        }
    }
}

impl From<ClientError> for CycleError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Stopped { .. } => CycleError::Stopped,
            e => CycleError::Client(e),
        }
    }
}

impl CycleError {
    /// True when TLS refused a certificate that is not valid yet (see
    /// [`ClientError::is_clock_behind`]).
    pub fn is_clock_behind(&self) -> bool {
        matches!(self, CycleError::Client(e) if e.is_clock_behind())
    }

    /// How long the server asked the agent to wait before the next try.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            CycleError::Client(e) => e.retry_after(),
            _ => None,
        }
    }
}
