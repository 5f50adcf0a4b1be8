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
//!   progress, or that is older than `update_deadline`, ends in `GiveUp` with rule 3's results
//!   for where it stuck, and goes to Report; the next poll asks the server again.
//! ```
//!
//! The steps share an [`Agent`]: the config, the server client, the store and the state. Every
//! fact a step learns is saved before the step acts on it, so that a restart at any point
//! continues from the last fact rather than from the in-memory step.

mod apply;
mod check;
mod download;
mod identify;
mod install;
mod report;
mod statement;
mod verify;
mod wait;

use std::fmt;
use std::sync::Arc;

use crate::client::{Client, ClientError};
use crate::config::{Config, Package};
use crate::install::{InstallError, sha256_file_async};
use crate::notify::Notifier;
use crate::store::{
    Callback, PackageState, State, Store, StoreError, Unidentified, Update, VersionSource,
};
use crate::{Shutdown, unix_now};

/// The result codes of `/file/callback`.
pub mod code {
    pub const SUCCESS: u8 = 1;
    pub const FAILED: u8 = 2;
    pub const NOT_UPDATED: u8 = 3;
}

/// The room a step lacked, and where: beside the managed file or in the state directory.
#[derive(Debug, Clone, Copy)]
pub(super) struct Room {
    needed: u64,
    beside: bool,
}

impl Room {
    pub(super) fn new(place: &str, needed: u64) -> Self {
        Room {
            needed,
            beside: place == BESIDE,
        }
    }
}

/// Where [`CycleError::NoSpace`] names the managed file's file system.
pub(super) const BESIDE: &str = "beside the managed file";
/// Where [`CycleError::NoSpace`] names the state directory's file system.
pub(super) const IN_STATE_DIR: &str = "in the state directory";

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

/// More steps than any cycle needs, even one that downloads a vanished patch again.
const MAX_STEPS: usize = 32;

/// A time before any robot ran this agent: a recorded time before it comes from a clock that
/// had not been set (a board without a clock battery), and means nothing.
pub(crate) const PLAUSIBLE_UNIX: u64 = 1_700_000_000;

/// What `update_deadline` says of an update accepted at `accepted` when the clock says `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// Within the deadline.
    Running,
    /// The recorded time means nothing (unknown, from an unset clock, or in the future after
    /// the clock went back): the deadline starts again from now.
    Restart,
    /// Past the deadline: the update ends.
    Passed,
}

impl Deadline {
    pub fn of(accepted: u64, now: u64, deadline: std::time::Duration) -> Deadline {
        if now < PLAUSIBLE_UNIX {
            // The clock is the one that is wrong: it can tell nothing, and a good record must
            // not be overwritten with its time.
            return Deadline::Running;
        }
        if accepted < PLAUSIBLE_UNIX || accepted > now {
            return Deadline::Restart;
        }
        if now - accepted > deadline.as_secs() {
            Deadline::Passed
        } else {
            Deadline::Running
        }
    }
}

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
            Outcome::Declined { code } => write!(f, "server declined the update (code {code})"),
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

    /// Adds packages seen for the first time, takes up a corrected version from the config,
    /// and drops files no update needs any more. The facts of a file no longer configured are
    /// kept (not acted on), so that configuring it again cannot make the agent forget its
    /// version and the updates it applied. After a lost state (`lost`), every package is seen
    /// for the first time again, and the config's version no longer counts.
    fn reconcile(&mut self, lost: bool) -> Result<(), StoreError> {
        for p in &self.config.packages {
            let key = p.key();
            let ps = self.state.packages.entry(key.clone()).or_insert_with(|| {
                let mut ps = PackageState::new(&p.version);
                ps.after_state_loss = lost;
                ps
            });
            if ps.source == VersionSource::State {
                // A state from before sources were kept: its version is the agent's own install
                // once it applied an update, else the config's word on first sight.
                ps.source = if ps.applied.is_empty() {
                    VersionSource::Config
                } else {
                    VersionSource::Installed
                };
            }
            if ps.update.is_none() {
                adopt_configured_version(&key, p, ps);
                self.store.clear_package(&key)?;
                crate::install::discard_prepared(&p.path);
            }
        }
        self.save()
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
        if crate::client::is_plain_http(&self.config.server.url) {
            log::warn!(
                "server.url is plain http: credentials and tokens cross the network unencrypted"
            );
        }
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
    pub(crate) fn owner(&self, pkg: &Package) -> crate::install::Owner {
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

    /// Runs one cycle for the package at `index` of the config, from wherever its facts say,
    /// and holds a recorded update to its bounds: a cycle that fails without progress counts
    /// toward `max_failed_cycles`, and an update past `update_deadline` or over that count ends.
    pub async fn cycle(&mut self, index: usize) -> Result<Outcome, CycleError> {
        let pkg = self.config.packages[index].clone();
        let key = pkg.key();
        let deadline = self.config.agent.update_deadline.0;
        // Once the new file may be in place, the install's own bounded steps (its hooks, a
        // rollback) finish it; the deadline must not cut across them.
        let accepted = self.state.packages[&key]
            .update
            .as_ref()
            .filter(|u| u.install.is_none())
            .map(|u| u.accepted_at_unix);
        if let Some(accepted) = accepted {
            match Deadline::of(accepted, unix_now(), deadline) {
                Deadline::Running => {}
                Deadline::Restart => {
                    self.update_mut(&key).accepted_at_unix = unix_now();
                    self.save()?;
                }
                Deadline::Passed => {
                    let reason = format!(
                        "it was accepted more than {} ago (update_deadline)",
                        crate::schedule::human(deadline)
                    );
                    match self.end_stuck(&pkg, reason, None).await {
                        // The patches before the stuck one are still installed, in this cycle.
                        Err(CycleError::Refused(_)) => {}
                        other => return other,
                    }
                }
            }
        }
        let before = self.pkg_state(&key).update.as_ref().map(Update::progress);
        let err = match self.steps(&pkg).await {
            Err(CycleError::Stopped) => return Err(CycleError::Stopped),
            Err(e) => e,
            ok => return ok,
        };
        let Some(update) = self.pkg_state(&key).update.as_mut() else {
            return Err(err);
        };
        if update.progress() > before.unwrap_or(0) {
            update.failed_cycles = 0;
        } else if err.is_clock_behind() {
            log::warn!(
                "{key}: a certificate is not valid yet, so the robot's clock ({}) is probably behind; this cycle does not count toward max_failed_cycles",
                crate::logger::utc(unix_now())
            );
            return Err(err);
        } else {
            update.failed_cycles = update.failed_cycles.saturating_add(1);
        }
        let failed = update.failed_cycles;
        self.save()?;
        let limit = self.config.agent.max_failed_cycles;
        if failed < limit {
            return Err(err);
        }
        let reason = format!(
            "{failed} cycles in a row failed without progress (max_failed_cycles); the last: {}",
            crate::error_chain(&err)
        );
        let room = self.room_lacking(&pkg, &err);
        match self.end_stuck(&pkg, reason, room).await {
            Err(CycleError::Refused(_)) => Err(err),
            other => other,
        }
    }

    /// The file's sha256, `None` when it is missing or cannot be read; only a stop is an error.
    async fn sha256_or_none(&self, path: &std::path::Path) -> Result<Option<String>, CycleError> {
        match sha256_file_async(path, &self.shutdown).await {
            Ok(sha) => Ok(sha),
            Err(InstallError::Stopped { .. }) => Err(CycleError::Stopped),
            Err(e) => {
                log::warn!("cannot read {}: {}", path.display(), crate::error_chain(&e));
                Ok(None)
            }
        }
    }

    /// The room `err` says the update lacked: a full disk ends it with `3`, never `2`, however
    /// the error came (a write that found no room, as well as the check before it).
    fn room_lacking(&self, pkg: &Package, err: &CycleError) -> Option<Room> {
        match err {
            CycleError::NoSpace { place, needed, .. } => Some(Room::new(place, *needed)),
            // The size a failed write needed is not known: room is "more than there is now".
            CycleError::Install(e) if e.is_full() => {
                let free = crate::install::free_space(&pkg.path).unwrap_or(0);
                Some(Room::new(BESIDE, free.saturating_add(1)))
            }
            CycleError::Store(e) if e.is_full() => {
                let free = self.store.free_space().unwrap_or(0);
                Some(Room::new(IN_STATE_DIR, free.saturating_add(1)))
            }
            _ => None,
        }
    }

    /// Remembers the room an update that ends for want of it needed, so that the same chain is
    /// not downloaded again until it is there (saved with the results that follow).
    pub(super) fn note_no_room(&mut self, key: &str, ids: &[String], room: Option<Room>) {
        if let Some(room) = room {
            self.pkg_state(key).no_room = Some(crate::store::NoRoom {
                ids: ids.to_vec(),
                needed: room.needed,
                beside: room.beside,
            });
        }
    }

    fn update_mut(&mut self, key: &str) -> &mut Update {
        self.pkg_state(key).update.as_mut().expect("an update")
    }

    /// Ends an update that cannot get further, with rule 3's results for where it stuck:
    /// - stuck fetching patch *k* > 0: patch *k* fails (the ones before it still install, at the
    ///   next cycle; `Refused` is returned to say the update goes on);
    /// - stuck fetching the first patch: it gets `2`, the rest `3`;
    /// - stuck applying or installing: the previous file stays (or is restored) and the ids get
    ///   `2`, those after a failed patch `3`; for want of space all get `3` (not updated yet,
    ///   so the server may offer them again once there is room, and the same chain is not
    ///   downloaded again before then).
    async fn end_stuck(
        &mut self,
        pkg: &Package,
        reason: String,
        room: Option<Room>,
    ) -> Result<Outcome, CycleError> {
        let key = pkg.key();
        let update = self.pkg_state(&key).update.clone().expect("an update");
        let ids = update.ids();
        let usable = update.usable();
        let unfetched = (0..usable).find(|&i| update.patches[i].sha256.is_none());
        if update.install.is_none() {
            match unfetched {
                Some(_) if room.is_some() => {
                    log::error!("{key}: updates {} end: {reason}", ids.join(", "));
                    self.note_no_room(&key, &ids, room);
                    self.finish(pkg, &all_codes(&ids, code::NOT_UPDATED), None)?;
                    report::run(self).await?;
                    return Ok(Outcome::Failed { reason });
                }
                Some(k) if k > 0 => {
                    let id = &update.patches[k].id;
                    log::error!("{key}: update {id} fails: {reason}");
                    let u = self.update_mut(&key);
                    u.failed = Some(crate::store::Failure {
                        index: k,
                        reason: format!("update {id} fails: {reason}"),
                    });
                    // The patches before it get cycles of their own to install.
                    u.failed_cycles = 0;
                    self.save()?;
                    return Err(CycleError::Refused(reason));
                }
                Some(_) => {
                    log::error!("{key}: update {} fails: {reason}", ids[0]);
                    self.finish(pkg, &chain_codes(&ids, 0, Some(0)), None)?;
                    report::run(self).await?;
                    return Ok(Outcome::Failed { reason });
                }
                None => {}
            }
        }
        log::error!("{key}: updates {} end: {reason}", ids.join(", "));
        let mut installed = None;
        if let Some(marker) = &update.install {
            // The new file may be in place with its install unfinished: the previous one comes
            // back as after a failed health check, post_install included.
            // A file that cannot be read must not keep the update from ending: it counts as
            // not the new version.
            let current = self.sha256_or_none(&pkg.path).await?;
            if marker.rolling_back || current.as_deref() == Some(marker.to_sha256.as_str()) {
                let step =
                    install::roll_back(self, pkg, &update, marker.clone(), reason.clone()).await?;
                report::run(self).await?;
                return Ok(match step {
                    Step::Report(outcome) => outcome,
                    _ => Outcome::Failed { reason },
                });
            }
            crate::install::discard_prepared(&pkg.path);
            let now = self.sha256_or_none(&pkg.path).await?;
            let source = self.state.packages[&key].source;
            installed = installed_now(&update, marker, source, now.as_deref());
        }
        let codes: Vec<(String, u8)> = if room.is_some() {
            self.note_no_room(&key, &ids, room);
            all_codes(&ids, code::NOT_UPDATED)
        } else {
            let failed = update.failed.as_ref().map(|f| f.index);
            ids.iter()
                .enumerate()
                .map(|(i, id)| {
                    let c = if i < usable || failed == Some(i) {
                        code::FAILED
                    } else {
                        code::NOT_UPDATED
                    };
                    (id.clone(), c)
                })
                .collect()
        };
        self.finish(pkg, &codes, installed)?;
        report::run(self).await?;
        Ok(Outcome::Failed { reason })
    }

    /// The steps of one cycle, from wherever the package's facts say.
    async fn steps(&mut self, pkg: &Package) -> Result<Outcome, CycleError> {
        let key = pkg.key();
        let pkg = pkg.clone();
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
        installed: Option<Known>,
    ) -> Result<(), StoreError> {
        let key = pkg.key();
        let now = unix_now();
        if let Some(known) = installed {
            self.identified(&key, known);
        }
        let ps = self.pkg_state(&key);
        for (id, code) in codes {
            match *code {
                code::SUCCESS => ps.remember_applied(id),
                code::FAILED => ps.remember_failed(id),
                _ => {}
            }
        }
        ps.update = None;
        for (id, code) in codes {
            self.state.outbox.push(Callback {
                package: key.clone(),
                id: id.clone(),
                code: *code,
                queued_at_unix: now,
            });
        }
        // Saved before it is said: a result is a promise, and only a saved one is kept.
        self.save()?;
        self.hooks_passed = None;
        for (id, code) in codes {
            log::info!("{key}: update {id} ends with result {code}");
        }
        self.events.results(&key, codes, now);
        self.store.clear_package(&key)?;
        crate::install::discard_prepared(&pkg.path);
        Ok(())
    }
}

/// What is installed after an install that ended, when the file's sha256 is `now`: the
/// update's base (known as before), the new version (the agent's own install), or neither
/// (`None`: the next check finds the file changed, and identifies it).
fn installed_now(
    update: &Update,
    marker: &crate::store::InstallState,
    from_source: VersionSource,
    now: Option<&str>,
) -> Option<Known> {
    if now == Some(update.from_sha256.as_str()) {
        Some(Known {
            version: update.from_version.clone(),
            sha256: update.from_sha256.clone(),
            source: from_source,
        })
    } else if now == Some(marker.to_sha256.as_str()) {
        Some(Known {
            version: marker.to_version.clone(),
            sha256: marker.to_sha256.clone(),
            source: VersionSource::Installed,
        })
    } else {
        None
    }
}

/// The config's `version` is what the file is when the agent first sees it; later the agent's
/// own record wins, since the agent moves the file on. A config whose version was changed since
/// the last start is a correction (the package's example value at first, say) and is taken up,
/// unless the agent has installed another version since: then the file was replaced (its
/// sha256 is not the recorded one) for the new version to count.
fn adopt_configured_version(key: &str, p: &Package, ps: &mut PackageState) {
    if ps.configured_version.as_deref() == Some(p.version.as_str()) {
        return;
    }
    if ps.version != p.version {
        // Without a record of the configured version (a state from an older agent) the agent
        // may have moved the file itself: only a replaced file makes the config right.
        let moved_by_agent = ps
            .configured_version
            .as_ref()
            .is_none_or(|c| *c != ps.version);
        let current = crate::install::sha256_file(&p.path).ok().flatten();
        let replaced = current.is_some() && current != ps.sha256;
        if !moved_by_agent || replaced {
            // A first sight again: the file's record or a pin still outrank the config.
            log::info!(
                "{key}: the config now names version {} (it named {}); looking at {} afresh",
                p.version,
                ps.configured_version.as_deref().unwrap_or("another"),
                p.path.display()
            );
            let lost = ps.after_state_loss;
            *ps = PackageState {
                applied: std::mem::take(&mut ps.applied),
                failed: std::mem::take(&mut ps.failed),
                last_check: ps.last_check.take(),
                statement: ps.statement.take(),
                ..PackageState::new(&p.version)
            };
            ps.after_state_loss = lost;
        } else {
            log::info!(
                "{key}: the config names version {}, but the agent installed version {} since; keeping {}",
                p.version,
                ps.version,
                ps.version
            );
        }
    }
    ps.configured_version = Some(p.version.clone());
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

    #[test]
    fn the_deadline_survives_a_wrong_clock() {
        let week = std::time::Duration::from_secs(7 * 86_400);
        let now = 1_800_000_000;
        assert_eq!(Deadline::of(now - 3600, now, week), Deadline::Running);
        assert_eq!(Deadline::of(now - 8 * 86_400, now, week), Deadline::Passed);
        // Accepted while the board still thought it was 1970, or "tomorrow" after the clock
        // went back: the recorded time means nothing, and the deadline starts again.
        assert_eq!(Deadline::of(120, now, week), Deadline::Restart);
        assert_eq!(Deadline::of(0, now, week), Deadline::Restart);
        assert_eq!(Deadline::of(now + 86_400, now, week), Deadline::Restart);
        // A clock that was never set judges nothing, and keeps the record as it is.
        assert_eq!(Deadline::of(now, 120, week), Deadline::Running);
    }
}
