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
//!   Wait: a `pre_download` hook (Download) or a `pre_install` hook (Install) that defers, or a
//!   closed install window (Install), goes to Report with `Outcome::Waiting`; the update keeps
//!   its downloads and staged result, and the daemon runs the cycle again when the wait is over
//!   (after `defer_retry`, when the window opens). A deferral past `defer_timeout` ends the
//!   update with `3`.
//!
//!   Any step's error ends the cycle; the daemon turns it into a back-off and tries again,
//!   resuming from the facts in the state file (see `daemon`).
//!
//!   Liveness: a recorded update whose cycles fail `max_failed_cycles` times in a row without
//!   progress, or that is older than `update_deadline`, ends (see `liveness`) with rule 3's results
//!   for where it stuck, and goes to Report; the next poll asks the server again.
//! ```
//!
//! The steps share an [`Agent`]: the config, the server client, the store and the state. Every
//! fact a step learns is saved before the step acts on it, so that a restart at any point
//! continues from the last fact rather than from the in-memory step.

mod apply;
mod check;
mod download;
mod error;
mod finish;
mod identify;
mod install;
mod liveness;
mod outcome;
mod reconcile;
mod report;
mod statement;
mod transfer;
mod verify;
mod wait;

use std::sync::Arc;

use crate::client::Client;
use crate::config::{Config, Package};
use crate::hooks::{HookEnv, HookError};
use crate::notify::Notifier;
use crate::store::{PackageState, State, Store, StoreError, Unidentified, Update};
use crate::{Shutdown, unix_now};

pub use error::CycleError;
pub(crate) use error::{BESIDE, IN_STATE_DIR, Room};
use finish::{OnDisk, all_codes, chain_codes};
pub use liveness::Deadline;
pub(crate) use liveness::PLAUSIBLE_UNIX;
pub(crate) use outcome::Known;
pub use outcome::{Declined, Outcome};

/// More steps than any cycle needs, even one that downloads a vanished patch again.
const MAX_STEPS: usize = 32;

/// Where a cycle goes next.
#[derive(Debug)]
enum Transition {
    Check,
    Verify,
    Download,
    Apply,
    Install(Staged),
    Report(Outcome),
}

/// What the install step takes over from the apply step, or from a restart.
#[derive(Debug)]
enum Staged {
    /// The first `applied` patches are applied; the result is staging file `applied - 1`.
    Fresh { applied: usize, sha256: String },
    /// A restart found the install marker; the facts say where the install stood.
    Resumed,
}

/// Everything the steps share.
#[derive(Debug)]
pub struct Agent {
    pub config: Config,
    pub client: Client,
    pub store: Store,
    pub state: State,
    /// The state as it was last saved: a save that fails puts it back, so that no fact the
    /// disk does not hold is acted on (a marker that says the hooks had started, say).
    saved: State,
    /// The install whose hooks passed in this process (package key, new sha256), for when the
    /// save that ends it failed: the next cycle finishes it instead of taking the marker for
    /// hooks a restart interrupted.
    hooks_passed: Option<(String, String)>,
    pub shutdown: Shutdown,
    pub notifier: Arc<Notifier>,
    pub events: crate::events::Events,
}

impl Agent {
    /// Opens the state directory, loads the state and reconciles it with the config.
    pub fn open(
        config: Config,
        shutdown: Shutdown,
        notifier: Arc<Notifier>,
    ) -> Result<Agent, crate::Error> {
        let mut client = Client::new(&config)?;
        client.stop_on(shutdown.clone());
        let store = Store::open(&config.agent.state_dir)?;
        let loaded = store.load()?;
        let mut agent = Agent {
            config,
            client,
            store,
            saved: loaded.state.clone(),
            hooks_passed: None,
            state: loaded.state,
            shutdown,
            notifier,
            events: crate::events::Events::none(),
        };
        agent.reconcile(loaded.lost.is_some())?;
        agent.warn_about_trust();
        Ok(agent)
    }

    /// Saves the state; when that fails, the state in memory goes back to the last one saved.
    pub fn save(&mut self) -> Result<(), StoreError> {
        match self.store.save(&self.state) {
            Ok(()) => {
                self.saved.clone_from(&self.state);
                Ok(())
            }
            Err(e) => {
                self.state.clone_from(&self.saved);
                Err(e)
            }
        }
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

    /// Whose version the package's file is, as its version record names it.
    pub(crate) fn owner(&self, pkg: &Package) -> crate::managed::Owner {
        self.config.owner(pkg)
    }

    /// Takes `known` for what the package's file is (saved by the caller).
    pub(crate) fn identified(&mut self, key: &str, known: Known) {
        let ps = self.pkg_state(key);
        ps.version = known.version;
        ps.sha256 = Some(known.sha256);
        ps.source = known.source;
        ps.unidentified = None;
        ps.after_state_loss = false;
    }

    /// Holds the package's file as unidentified (saved by the caller), and says so: in the log
    /// when the reason is new, to systemd and to the robot's apps. True when anything changed.
    pub(crate) fn unidentified(
        &mut self,
        key: &str,
        sha256: Option<String>,
        reason: String,
    ) -> bool {
        let ps = self.pkg_state(key);
        let before = ps.unidentified.clone();
        let since_unix = match &before {
            Some(u) if u.sha256 == sha256 => u.since_unix,
            _ => unix_now(),
        };
        if before.as_ref().is_none_or(|u| u.reason != reason) {
            log::error!("{key}: unidentified: {reason}");
        }
        ps.unidentified = Some(Unidentified {
            sha256,
            reason: reason.clone(),
            since_unix,
            disproved: before.as_ref().and_then(|u| u.disproved.clone()),
        });
        let changed = ps.unidentified != before;
        self.notifier.status(&format!(
            "{key}: unidentified, not updated (see ota-agent status)"
        ));
        self.events.unidentified(key, &reason);
        changed
    }

    /// The package's recorded update. The driver runs the steps after Check only with one (see
    /// `steps`), so it is there.
    pub(crate) fn update(&self, key: &str) -> &Update {
        self.state.packages[key].update.as_ref().expect(HAS_UPDATE)
    }

    pub(crate) fn update_mut(&mut self, key: &str) -> &mut Update {
        self.pkg_state(key).update.as_mut().expect(HAS_UPDATE)
    }

    /// The steps of one cycle, from wherever the package's facts say.
    async fn steps(&mut self, pkg: &Package) -> Result<Outcome, CycleError> {
        let key = pkg.key();
        let pkg = pkg.clone();
        let mut step = match &self.pkg_state(&key).update {
            Some(Update {
                install: Some(_), ..
            }) => Transition::Install(Staged::Resumed),
            Some(_) => Transition::Verify,
            None => Transition::Check,
        };
        // A cycle takes a handful of steps; many more means two steps keep sending the work back
        // to each other, and a back-off is better than a busy loop.
        for _ in 0..MAX_STEPS {
            if self.shutdown.is_set() {
                return Err(CycleError::Stopped);
            }
            log::debug!("{key}: {step:?}");
            step = match step {
                Transition::Check => check::run(self, &pkg).await?,
                Transition::Verify => verify::run(self, &pkg).await?,
                Transition::Download => download::run(self, &pkg).await?,
                Transition::Apply => apply::run(self, &pkg).await?,
                Transition::Install(staged) => install::run(self, &pkg, staged).await?,
                Transition::Report(outcome) => {
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

    /// Runs one of the package's hooks, saying so in `STATUS=`: that line is progress to the
    /// watchdog, which the next hook of a row would otherwise have to share with this one.
    async fn run_hook(
        &self,
        pkg: &Package,
        name: &'static str,
        cmd: &str,
        env: &HookEnv,
    ) -> Result<(), HookError> {
        let doing = format!("running the {name} hook of {}", pkg.key());
        log::info!("{doing}");
        self.notifier.status(&doing);
        self.events.hook(&pkg.key(), name);
        let timeout = pkg.hook_timeout.unwrap_or(self.config.agent.hook_timeout).0;
        crate::hooks::run(name, cmd, timeout, &env.as_pairs(), &self.shutdown).await
    }
}

/// Why a step that runs after Check may take the package's update for granted.
const HAS_UPDATE: &str = "the steps after check run with a recorded update";
