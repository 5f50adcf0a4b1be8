//! The update cycle of one managed file, as an explicit state machine, one file per step.
//!
//! ```text
//!                  start-up: an update was under way ──────────────────────────────┐
//!                          │ (patches recorded)                                    │ (install
//!                          v                                                       v  marker)
//!   ┌───────┐  offer  ┌────────┐ metadata  ┌──────────┐ chain    ┌───────┐ k ≥ 1 ┌─────────┐
//!   │ Check │ ──────> │ Verify │ ────────> │ Download │ ───────> │ Apply │ ────> │ Install │
//!   └───────┘         └────────┘ signed,   └──────────┘ fetched  └───────┘       └─────────┘
//!       │ up to date,   (or patch k        (or patch k              │ nothing       │ installed,
//!       │ 102, 103, 104  refused)           failed for good)        │ applied       │ rolled back
//!       v                                                           v               v or deferred
//!   ┌────────┐ <────────────────────────────────────────────────────────────────────┘
//!   │ Report │   drain the outbox: every (id, code) until the server took it
//!   └────────┘
//!
//!   Any step's error ends the cycle; the daemon turns it into a back-off and tries again,
//!   resuming from the facts in the state file (see `daemon`).
//! ```
//!
//! The steps share an [`Agent`]: the config, the server client, the store and the state. Every
//! fact a step learns is saved before the step acts on it, so that a restart at any point
//! continues from the last fact rather than from the in-memory step.

mod apply;
mod check;
mod download;
mod install;
mod report;
mod verify;

use std::fmt;
use std::sync::Arc;

use crate::client::{Client, ClientError};
use crate::config::{Config, Package};
use crate::install::InstallError;
use crate::notify::Notifier;
use crate::store::{Callback, PackageState, State, Store, StoreError, Update};
use crate::{Shutdown, unix_now};

/// The result codes of `/file/callback`.
pub mod code {
    pub const SUCCESS: u8 = 1;
    pub const FAILED: u8 = 2;
    pub const NOT_UPDATED: u8 = 3;
}

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error("the server's answer was refused: {0}")]
    Refused(String),
    #[error("not enough free space in the state directory: {needed} bytes needed, {free} free")]
    NoSpace { needed: u64, free: u64 },
    #[error("download of update {id} was interrupted: {reason}")]
    Interrupted { id: String, reason: String },
    #[error("update {id} is not the patch the vendor signed: {reason}")]
    Unauthentic { id: String, reason: String },
    #[error("stopped by a signal")]
    Stopped,
    #[error("the update cycle made no progress in {steps} steps")]
    NoProgress { steps: usize },
}

impl CycleError {
    /// How long the server asked the agent to wait before the next try.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            CycleError::Client(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// More steps than any cycle needs, even one that downloads a vanished patch again.
const MAX_STEPS: usize = 32;

/// How a cycle ended for one managed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do (`100` with no patches, or `102`).
    UpToDate { version: String },
    /// `103` or `104`: the server declines; not an error of the agent.
    Declined { code: String },
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
    /// `pre_install` asked to wait; the update is reported `3` and tried at the next poll.
    Deferred,
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
            Outcome::Declined { code } => write!(f, "server declined the update (code {code})"),
            Outcome::Updated { from, to } => write!(f, "updated from version {from} to {to}"),
            Outcome::Partial { from, to, failed } => {
                write!(f, "updated from version {from} to {to}; {failed}")
            }
            Outcome::Failed { reason } => write!(f, "update failed: {reason}"),
            Outcome::Deferred => write!(f, "update deferred by the pre_install hook"),
        }
    }
}

/// Where a cycle goes next.
#[derive(Debug)]
enum Step {
    Check,
    Verify,
    Download,
    Apply,
    Install(apply::Staged),
    Report(Outcome),
}

/// Everything the steps share.
#[derive(Debug)]
pub struct Agent {
    pub config: Config,
    pub client: Client,
    pub store: Store,
    pub state: State,
    pub shutdown: Shutdown,
    pub notifier: Arc<Notifier>,
}

impl Agent {
    /// Opens the state directory, loads the state and reconciles it with the config.
    pub fn open(
        config: Config,
        shutdown: Shutdown,
        notifier: Arc<Notifier>,
    ) -> Result<Agent, crate::Error> {
        let client = Client::new(&config)?;
        let store = Store::open(&config.agent.state_dir)?;
        let state = store.load()?;
        let mut agent = Agent {
            config,
            client,
            store,
            state,
            shutdown,
            notifier,
        };
        agent.reconcile()?;
        agent.warn_about_trust();
        Ok(agent)
    }

    /// Adds packages seen for the first time and drops files no update needs any more. The
    /// facts of a file no longer configured are kept (not acted on), so that configuring it
    /// again cannot make the agent forget its version and the updates it applied.
    fn reconcile(&mut self) -> Result<(), StoreError> {
        for p in &self.config.packages {
            let ps = self
                .state
                .packages
                .entry(p.key())
                .or_insert_with(|| PackageState::new(&p.version));
            if ps.update.is_none() {
                self.store.clear_package(&p.key())?;
                crate::install::discard_prepared(&p.path);
            }
        }
        self.store.save(&self.state)
    }

    /// Says once, at start-up, what an attacker on the network could do with this config.
    fn warn_about_trust(&self) {
        let security = &self.config.security;
        if security.public_keys.is_empty() {
            log::warn!(
                "no [security] public_keys: patches are unauthenticated, so whoever can answer as the update server can install any file"
            );
        } else if !security.require_signatures {
            log::warn!(
                "signatures are checked but not required: a patch without signed metadata is installed unauthenticated"
            );
        }
        if self.config.server.url.starts_with("http://") {
            log::warn!(
                "server.url is plain http: credentials and tokens cross the network unencrypted"
            );
        }
    }

    pub fn save(&self) -> Result<(), StoreError> {
        self.store.save(&self.state)
    }

    /// True when a package has an update that a restart interrupted, or callbacks wait.
    pub fn has_unfinished_work(&self) -> bool {
        !self.state.outbox.is_empty() || self.state.packages.values().any(|p| p.update.is_some())
    }

    pub(crate) fn pkg_state(&mut self, key: &str) -> &mut PackageState {
        self.state
            .packages
            .get_mut(key)
            .expect("reconcile() adds every configured package")
    }

    /// Runs one cycle for the package at `index` of the config, from wherever its facts say.
    pub async fn cycle(&mut self, index: usize) -> Result<Outcome, CycleError> {
        let pkg = self.config.packages[index].clone();
        let key = pkg.key();
        let mut step = match &self.pkg_state(&key).update {
            Some(Update {
                install: Some(_), ..
            }) => Step::Install(apply::Staged::Resumed),
            Some(_) => Step::Verify,
            None => Step::Check,
        };
        // A cycle takes a handful of steps; many more means two steps keep sending the work back
        // to each other, and a back-off is better than a busy loop.
        for _ in 0..MAX_STEPS {
            if self.shutdown.is_set() {
                return Err(CycleError::Stopped);
            }
            log::debug!("{key}: {step:?}");
            step = match step {
                Step::Check => check::run(self, &pkg).await?,
                Step::Verify => verify::run(self, &pkg).await?,
                Step::Download => download::run(self, &pkg).await?,
                Step::Apply => apply::run(self, &pkg).await?,
                Step::Install(staged) => install::run(self, &pkg, staged).await?,
                Step::Report(outcome) => {
                    report::run(self).await?;
                    return Ok(outcome);
                }
            };
        }
        Err(CycleError::NoProgress { steps: MAX_STEPS })
    }

    /// Sends the callbacks waiting in the outbox.
    pub async fn drain_outbox(&mut self) -> Result<(), CycleError> {
        report::run(self).await
    }

    /// Ends the package's update: records what is installed, queues a callback for every id
    /// and deletes the update's files, all in one atomic write of the state.
    fn finish(
        &mut self,
        pkg: &Package,
        codes: &[(String, u8)],
        installed: Option<(String, String)>,
    ) -> Result<(), StoreError> {
        let key = pkg.key();
        let now = unix_now();
        let ps = self.pkg_state(&key);
        if let Some((version, sha)) = installed {
            ps.version = version;
            ps.sha256 = Some(sha);
        }
        for (id, code) in codes {
            match *code {
                code::SUCCESS => ps.remember_applied(id),
                code::FAILED => ps.remember_failed(id),
                _ => {}
            }
        }
        ps.update = None;
        for (id, code) in codes {
            log::info!("{key}: update {id} ends with result {code}");
            self.state.outbox.push(Callback {
                package: key.clone(),
                id: id.clone(),
                code: *code,
                queued_at_unix: now,
            });
        }
        self.save()?;
        self.store.clear_package(&key)?;
        crate::install::discard_prepared(&pkg.path);
        Ok(())
    }
}

/// The codes of rule 3: applied ids `1`, the failed one `2`, the ones after it `3`.
fn chain_codes(ids: &[String], applied: usize, failed: Option<usize>) -> Vec<(String, u8)> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let code = if i < applied {
                code::SUCCESS
            } else if failed == Some(i) {
                code::FAILED
            } else {
                code::NOT_UPDATED
            };
            (id.clone(), code)
        })
        .collect()
}

fn all_codes(ids: &[String], code: u8) -> Vec<(String, u8)> {
    ids.iter().map(|id| (id.clone(), code)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_three_codes() {
        let ids: Vec<String> = ["23", "25", "27"].map(String::from).to_vec();
        let codes = |applied, failed| -> Vec<u8> {
            chain_codes(&ids, applied, failed)
                .into_iter()
                .map(|(_, c)| c)
                .collect()
        };
        assert_eq!(codes(3, None), [1, 1, 1]);
        assert_eq!(codes(1, Some(1)), [1, 2, 3]);
        assert_eq!(codes(0, Some(0)), [2, 3, 3]);
        assert_eq!(all_codes(&ids, 3).len(), 3);
    }
}
