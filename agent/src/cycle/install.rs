//! Install: swap the staged file into place atomically, run the hooks, roll back on failure.
//!
//! The install marker in the state records how far an install got (swapped, hooks started,
//! rolling back), so that a restart at any point either finishes the install or rolls it back,
//! and never runs a version that failed, or hung in, its hooks. A stop (SIGTERM) while the
//! hooks run is neither: the marker goes back to "swapped" and the next start runs them again.
//!
//! The new file is copied beside the managed one before `pre_install` runs, so that a disk that
//! cannot take it fails the install before any service was stopped; and when the swap fails
//! after `pre_install`, `post_install` runs for the old version, so what it stopped starts again.

use super::{
    Agent, CycleError, Known, OnDisk, Outcome, Staged, Transition, all_codes, chain_codes,
};
use crate::config::Package;
use crate::hooks::{HookEnv, HookError};
use crate::managed::{self, sha256_file_async};
use crate::store::ResultCode;
use crate::store::{InstallState, Update};

pub(super) async fn run(
    agent: &mut Agent,
    pkg: &Package,
    staged: Staged,
) -> Result<Transition, CycleError> {
    let key = pkg.key();
    let update = agent.update(&key).clone();
    let placed = match staged {
        Staged::Fresh { applied, sha256 } => fresh(agent, pkg, &update, applied, sha256).await?,
        Staged::Resumed => resume(agent, pkg, &update).await?,
    };
    match placed {
        Placed::InPlace(marker) => run_hooks(agent, pkg, &update, marker).await,
        Placed::Elsewhere(next) => Ok(next),
    }
}

/// How far putting the new file in place got.
enum Placed {
    /// The new version is the managed file; its hooks are next.
    InPlace(InstallState),
    /// The cycle goes on elsewhere: a wait, a rollback, a step back, the end of the update.
    Elsewhere(Transition),
}

/// A fresh install: prepare the new file beside the managed one, run `pre_install`, swap.
async fn fresh(
    agent: &mut Agent,
    pkg: &Package,
    update: &Update,
    applied: usize,
    sha256: String,
) -> Result<Placed, CycleError> {
    let key = pkg.key();
    let ids = update.ids();
    let opens_in = super::wait::until_window(agent);
    if !opens_in.is_zero() {
        return super::wait::for_window(agent, pkg, opens_in).map(Placed::Elsewhere);
    }
    let marker = InstallState {
        applied,
        to_version: update.patches[applied - 1].to_version.clone(),
        to_sha256: sha256,
        hooks_started: false,
        rolling_back: false,
        hook_stops: 0,
    };
    let doing = format!("installing {key} version {}", marker.to_version);
    log::info!("{doing}");
    agent.notifier.status(&doing);
    agent.events.step(&key, crate::events::Step::Install, &ids);
    if let Some(next) = super::identify::shared(agent, pkg, &ids)? {
        return Ok(Placed::Elsewhere(next));
    }
    if let Some(next) = prepare(agent, pkg, update, &marker).await? {
        return Ok(Placed::Elsewhere(next));
    }
    if let Some(cmd) = &pkg.pre_install {
        let env = HookEnv::new(pkg, &update.from_version, &marker.to_version);
        match agent.run_hook(pkg, "pre_install", cmd, &env).await {
            Ok(()) => {}
            Err(HookError::Stopped { .. }) => {
                managed::discard_prepared(&pkg.path);
                return Err(CycleError::Stopped);
            }
            Err(e) => {
                // The new file stays prepared beside the managed one for the retry (an update
                // that ends deletes it).
                agent.update_mut(&key).prepared_sha256 = Some(marker.to_sha256.clone());
                let problem = crate::error_chain(&e);
                return super::wait::defer(agent, pkg, "pre_install", &problem)
                    .map(Placed::Elsewhere);
            }
        }
    }
    super::wait::end(agent, &key)?;
    save_marker(agent, &key, &marker)?;
    if let Err(e) = managed::swap(&pkg.path) {
        // Whatever pre_install stopped for the install starts again with the old version.
        if let (Some(_), Some(cmd)) = (&pkg.pre_install, &pkg.post_install) {
            log::error!(
                "{key}: {}; running post_install for the old version",
                crate::error_chain(&e)
            );
            let env = HookEnv::new(pkg, &marker.to_version, &update.from_version);
            if let Err(h) = agent.run_hook(pkg, "post_install", cmd, &env).await {
                log::error!("{key}: {}", crate::error_chain(&h));
            }
        }
        // The next cycle starts the install over, pre_install included.
        forget_install(agent, pkg)?;
        return Err(e.into());
    }
    Ok(Placed::InPlace(marker))
}

/// Writes the new file beside the managed one, whole and synced, unless a deferred install
/// already did; `Some` when the update ends instead.
async fn prepare(
    agent: &mut Agent,
    pkg: &Package,
    update: &Update,
    marker: &InstallState,
) -> Result<Option<Transition>, CycleError> {
    let key = pkg.key();
    let staged_file = agent.store.open_staged(&key, marker.applied - 1)?;
    let staged_len = staged_file.metadata().map_or(0, |m| m.len());
    let shutdown = agent.shutdown.clone();
    // Prepared in full before a deferral: writing it again at every retry would wear the flash
    // for nothing. Only the recorded fact counts, never the file alone, which a stop in the
    // middle of its preparing may have left unsynced.
    let kept = update.prepared_sha256.as_deref() == Some(marker.to_sha256.as_str())
        && sha256_file_async(&managed::new_path(&pkg.path), &agent.shutdown)
            .await
            .is_ok_and(|sha| sha.as_deref() == Some(marker.to_sha256.as_str()));
    if kept {
        return Ok(None);
    }
    let free = managed::free_space(&pkg.path)?;
    if free < staged_len {
        // Checked before a byte is written: a cycle that cannot fit the new version costs the
        // flash nothing (the check before the download could only guess).
        return Err(CycleError::NoSpace {
            place: super::BESIDE,
            needed: staged_len,
            free,
        });
    }
    let expect = managed::NewVersion {
        owner: agent.owner(pkg),
        version: marker.to_version.clone(),
        sha256: marker.to_sha256.clone(),
    };
    let result =
        managed::prepare_async(&pkg.path, staged_file, expect, move || shutdown.is_set()).await;
    match result {
        Ok(()) => Ok(None),
        Err(managed::InstallError::Stopped { .. }) => Err(CycleError::Stopped),
        Err(e) if e.is_full() => {
            // The room the new version needs is known now: its whole size.
            Err(CycleError::NoSpace {
                place: super::BESIDE,
                needed: staged_len,
                free: managed::free_space(&pkg.path).unwrap_or(0),
            })
        }
        Err(e @ managed::InstallError::Privileged { .. }) => {
            // Not a passing failure: no later cycle makes the file installable.
            let reason = crate::error_chain(&e);
            log::error!("{key}: {reason}");
            agent.finish(pkg, &all_codes(&update.ids(), ResultCode::Failed), None)?;
            Ok(Some(Transition::Report(Outcome::Failed { reason })))
        }
        Err(e) => Err(e.into()),
    }
}

/// An install a restart interrupted: finish it, roll it back, or start it over, as the install
/// marker and the file on disk say.
async fn resume(agent: &mut Agent, pkg: &Package, update: &Update) -> Result<Placed, CycleError> {
    let key = pkg.key();
    agent
        .events
        .step(&key, crate::events::Step::Install, &update.ids());
    let marker = update
        .install
        .clone()
        .expect("resumed with an install marker");
    let current = sha256_file_async(&pkg.path, &agent.shutdown).await?;
    let on_disk = OnDisk::of(update, &marker, current.as_deref());
    let is_new = on_disk == OnDisk::New;
    if !marker.rolling_back {
        if let Some(id) = untrusted(agent, update, marker.applied) {
            // Facts verified under a key since dropped (or a policy since tightened) no longer
            // count, here as in the verify step.
            let problem = format!(
                "update {id} was verified with a key or a policy that the config no longer holds"
            );
            if is_new {
                return roll_back(agent, pkg, update, marker, problem)
                    .await
                    .map(Placed::Elsewhere);
            }
            log::warn!("{key}: {problem}; verifying the chain again");
            forget_install(agent, pkg)?;
            return Ok(Placed::Elsewhere(Transition::Verify));
        }
    }
    let passed_here = agent.hooks_passed.as_ref() == Some(&(key.clone(), marker.to_sha256.clone()));
    if let Some(problem) = interrupted_for_good(pkg, &marker, is_new, passed_here) {
        return roll_back(agent, pkg, update, marker, problem)
            .await
            .map(Placed::Elsewhere);
    }
    if is_new && passed_here {
        // The hooks passed in this process; what failed was the save that ends the install.
        // Ending it again is all that is left.
        return finish_install(agent, pkg, update, &marker).map(Placed::Elsewhere);
    }
    match on_disk {
        OnDisk::New => log::info!(
            "{key}: finishing the install of version {} that a restart interrupted",
            marker.to_version
        ),
        OnDisk::Base => {
            let prepared =
                sha256_file_async(&managed::new_path(&pkg.path), &agent.shutdown).await?;
            if prepared.as_deref() != Some(marker.to_sha256.as_str()) {
                log::info!(
                    "{key}: a restart interrupted the install before the new file was ready; applying again"
                );
                forget_install(agent, pkg)?;
                return Ok(Placed::Elsewhere(Transition::Apply));
            }
            log::info!(
                "{key}: a restart interrupted the install of version {}; swapping it in now",
                marker.to_version
            );
            managed::swap(&pkg.path)?;
        }
        OnDisk::Other => {
            // Neither the old nor the new version: changed by someone else, not by a patch.
            let next = super::identify::changed(agent, pkg, &update.ids()).await?;
            return Ok(Placed::Elsewhere(next));
        }
    }
    Ok(Placed::InPlace(marker))
}

/// Why an interrupted install must be rolled back rather than resumed, if it must: a rollback
/// the restart cut short, hooks a restart cut short (the new version may have hung or rebooted
/// the robot), or hooks stopped so often that they stop the agent themselves.
fn interrupted_for_good(
    pkg: &Package,
    marker: &InstallState,
    is_new: bool,
    passed_here: bool,
) -> Option<String> {
    if marker.rolling_back {
        return Some("a restart interrupted its rollback".to_owned());
    }
    if is_new && marker.hook_stops >= MAX_HOOK_STOPS {
        // A hook that stops the agent (a reboot, the new version shutting the robot down)
        // would otherwise run again at every start, for ever.
        return Some(format!(
            "the hooks were stopped {} times before they finished",
            marker.hook_stops
        ));
    }
    let hooks = pkg.post_install.is_some() || pkg.health_check.is_some();
    // Hooks that passed in this process are no crash: only the save that ended them failed.
    if marker.hooks_started && is_new && hooks && !passed_here {
        return Some(
            "a restart interrupted its hooks; the new version may have hung or rebooted the robot"
                .to_owned(),
        );
    }
    None
}

/// With the new version in place: `post_install` and `health_check`, then the end of the
/// update, or a rollback when one of them fails.
async fn run_hooks(
    agent: &mut Agent,
    pkg: &Package,
    update: &Update,
    mut marker: InstallState,
) -> Result<Transition, CycleError> {
    let key = pkg.key();
    log::info!("{key}: version {} is in place", marker.to_version);
    // Only hooks can hang or reboot the robot: without any, a restart from here finishes the
    // install rather than rolling it back.
    if pkg.post_install.is_some() || pkg.health_check.is_some() {
        marker.hooks_started = true;
        save_marker(agent, &key, &marker)?;
    }
    let env = HookEnv::new(pkg, &update.from_version, &marker.to_version);
    for (name, cmd) in [
        ("post_install", &pkg.post_install),
        ("health_check", &pkg.health_check),
    ] {
        let Some(cmd) = cmd else { continue };
        match agent.run_hook(pkg, name, cmd, &env).await {
            Ok(()) => {}
            Err(HookError::Stopped { .. }) => {
                // A routine stop, not a verdict on the new version: the next start runs the
                // hooks again (a crash in them, with the marker still set, rolls back).
                log::info!(
                    "{key}: stopped during the {name} hook; the hooks run again at the next start"
                );
                marker.hooks_started = false;
                marker.hook_stops += 1;
                save_marker(agent, &key, &marker)?;
                return Err(CycleError::Stopped);
            }
            Err(e) => {
                return roll_back(agent, pkg, update, marker, crate::error_chain(&e)).await;
            }
        }
    }
    agent.hooks_passed = Some((key, marker.to_sha256.clone()));
    finish_install(agent, pkg, update, &marker)
}

/// Ends an install whose hooks passed: the new version is installed, with rule 3's codes.
fn finish_install(
    agent: &mut Agent,
    pkg: &Package,
    update: &Update,
    marker: &InstallState,
) -> Result<Transition, CycleError> {
    let key = pkg.key();
    let ids = update.ids();
    let failed = update.failed.as_ref().map(|f| f.index);
    let codes = chain_codes(&ids, marker.applied, failed);
    let installed = Some(Known::installed(marker));
    agent.finish(pkg, &codes, installed)?;
    let outcome = match &update.failed {
        None => Outcome::Updated {
            from: update.from_version.clone(),
            to: marker.to_version.clone(),
        },
        Some(f) => Outcome::Partial {
            from: update.from_version.clone(),
            to: marker.to_version.clone(),
            failed: f.reason.clone(),
        },
    };
    log::info!("{key}: {outcome}");
    Ok(Transition::Report(outcome))
}

/// Stops during the hooks before they count as a failed hook.
const MAX_HOOK_STOPS: u32 = 3;

/// Restores the previous file, runs `post_install` for it, and reports every id `2` (or, when
/// the new file could not be taken back, what is installed: rule 3's codes for it).
pub(super) async fn roll_back(
    agent: &mut Agent,
    pkg: &Package,
    update: &Update,
    mut marker: InstallState,
    problem: String,
) -> Result<Transition, CycleError> {
    let key = pkg.key();
    log::error!(
        "{key}: {problem}; rolling back to version {}",
        update.from_version
    );
    marker.rolling_back = true;
    save_marker(agent, &key, &marker)?;
    if !managed::rollback(&pkg.path)? {
        log::error!("{key}: no previous file to restore");
    }
    if let Some(cmd) = &pkg.post_install {
        let env = HookEnv::new(pkg, &marker.to_version, &update.from_version);
        match agent.run_hook(pkg, "post_install", cmd, &env).await {
            Ok(()) => {}
            // The marker says "rolling back": the next start runs post_install again.
            Err(HookError::Stopped { .. }) => return Err(CycleError::Stopped),
            Err(e) => log::error!("{key}: after the rollback: {}", crate::error_chain(&e)),
        }
    }
    // Record what is really there now, so that later checks patch the right base.
    let now = sha256_file_async(&pkg.path, &agent.shutdown).await?;
    let source = agent.state.packages[&key].source;
    let on_disk = OnDisk::of(update, &marker, now.as_deref());
    let installed = on_disk.known(update, &marker, source);
    let ids = update.ids();
    let still_new = on_disk == OnDisk::New;
    let codes = if still_new {
        log::error!("{key}: version {} stays installed", marker.to_version);
        chain_codes(
            &ids,
            marker.applied,
            update.failed.as_ref().map(|f| f.index),
        )
    } else {
        all_codes(&ids, ResultCode::Failed)
    };
    agent.finish(pkg, &codes, installed)?;
    Ok(Transition::Report(Outcome::Failed {
        reason: format!("version {} was rolled back: {problem}", marker.to_version),
    }))
}

/// The first of the chain's first `applied` patches that the current `[security]` would not let
/// through: signed by a key no longer listed, or unsigned where signatures are now required.
fn untrusted(agent: &Agent, update: &Update, applied: usize) -> Option<String> {
    let security = &agent.config.security;
    if security.public_keys.is_empty() {
        return None;
    }
    update.patches[..applied.min(update.patches.len())]
        .iter()
        .find(|p| !security.lets_through(p.signed.as_ref().map(|s| s.key.as_str()), p.unsigned))
        .map(|p| p.id.clone())
}

/// Drops the install marker and the new file prepared beside the managed one: the install starts
/// over from the staged chain (the managed file is still the old version).
fn forget_install(agent: &mut Agent, pkg: &Package) -> Result<(), CycleError> {
    managed::discard_prepared(&pkg.path);
    let update = agent.update_mut(&pkg.key());
    update.install = None;
    update.prepared_sha256 = None;
    agent.save()?;
    Ok(())
}

fn save_marker(agent: &mut Agent, key: &str, marker: &InstallState) -> Result<(), CycleError> {
    let update = agent.update_mut(key);
    update.install = Some(marker.clone());
    // From here the prepared file is the install's; a later prepare starts without the fact.
    update.prepared_sha256 = None;
    agent.save()?;
    Ok(())
}
