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

use super::apply::Staged;
use super::{Agent, CycleError, Outcome, Step, all_codes, chain_codes, code};
use crate::config::Package;
use crate::hooks;
use crate::install::{self, sha256_file_async};
use crate::store::{InstallState, Update};

pub(super) async fn run(
    agent: &mut Agent,
    pkg: &Package,
    staged: Staged,
) -> Result<Step, CycleError> {
    let key = pkg.key();
    let update = agent.state.packages[&key]
        .update
        .clone()
        .expect("install runs with an update");
    let ids = update.ids();
    let mut marker = match staged {
        Staged::Fresh { applied, sha256 } => {
            let opens_in = super::wait::until_window(agent);
            if !opens_in.is_zero() {
                return super::wait::for_window(agent, pkg, opens_in);
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
            if let Some(step) = super::identify::shared(agent, pkg, &ids)? {
                return Ok(step);
            }
            let staged_file = agent.store.open_staged(&key, applied - 1)?;
            let staged_len = staged_file.metadata().map_or(0, |m| m.len());
            let shutdown = agent.shutdown.clone();
            // Prepared in full before a deferral: writing it again at every retry would wear the
            // flash for nothing. Only the recorded fact counts, never the file alone, which a
            // stop in the middle of its preparing may have left unsynced.
            let kept = update.prepared_sha256.as_deref() == Some(marker.to_sha256.as_str())
                && sha256_file_async(&install::new_path(&pkg.path), &agent.shutdown)
                    .await
                    .is_ok_and(|sha| sha.as_deref() == Some(marker.to_sha256.as_str()));
            let free = install::free_space(&pkg.path)?;
            if !kept && free < staged_len {
                // Checked before a byte is written: a cycle that cannot fit the new version
                // costs the flash nothing (the check before the download could only guess).
                return Err(CycleError::NoSpace {
                    place: super::BESIDE,
                    needed: staged_len,
                    free,
                });
            }
            let result = if kept {
                Ok(())
            } else {
                let expect = install::NewVersion {
                    owner: agent.owner(pkg),
                    version: marker.to_version.clone(),
                    sha256: marker.to_sha256.clone(),
                };
                install::prepare_async(&pkg.path, staged_file, expect, move || shutdown.is_set())
                    .await
            };
            match result {
                Err(install::InstallError::Stopped { .. }) => return Err(CycleError::Stopped),
                Err(e) if e.is_full() => {
                    // The room the new version needs is known now: its whole size.
                    return Err(CycleError::NoSpace {
                        place: super::BESIDE,
                        needed: staged_len,
                        free: install::free_space(&pkg.path).unwrap_or(0),
                    });
                }
                Err(e @ install::InstallError::Privileged { .. }) => {
                    // Not a passing failure: no later cycle makes the file installable.
                    let reason = crate::error_chain(&e);
                    log::error!("{key}: {reason}");
                    agent.finish(pkg, &all_codes(&ids, code::FAILED), None)?;
                    return Ok(Step::Report(Outcome::Failed { reason }));
                }
                other => other?,
            }
            if let Some(cmd) = &pkg.pre_install {
                let env = hook_env(pkg, &update.from_version, &marker.to_version);
                match run_hook(agent, pkg, "pre_install", cmd, &env).await {
                    Ok(()) => {}
                    Err(hooks::HookError::Stopped { .. }) => {
                        install::discard_prepared(&pkg.path);
                        return Err(CycleError::Stopped);
                    }
                    Err(e) => {
                        // The new file stays prepared beside the managed one for the retry
                        // (an update that ends deletes it).
                        agent.update_mut(&key).prepared_sha256 = Some(marker.to_sha256.clone());
                        let problem = crate::error_chain(&e);
                        return super::wait::defer(agent, pkg, "pre_install", &problem);
                    }
                }
            }
            super::wait::end(agent, &key)?;
            save_marker(agent, &key, &marker)?;
            if let Err(e) = install::swap(&pkg.path) {
                // Whatever pre_install stopped for the install starts again with the old version.
                if let (Some(_), Some(cmd)) = (&pkg.pre_install, &pkg.post_install) {
                    log::error!(
                        "{key}: {}; running post_install for the old version",
                        crate::error_chain(&e)
                    );
                    let env = hook_env(pkg, &marker.to_version, &update.from_version);
                    if let Err(h) = run_hook(agent, pkg, "post_install", cmd, &env).await {
                        log::error!("{key}: {}", crate::error_chain(&h));
                    }
                }
                // The next cycle starts the install over, pre_install included.
                forget_install(agent, pkg)?;
                return Err(e.into());
            }
            marker
        }
        Staged::Resumed => {
            agent.events.step(&key, crate::events::Step::Install, &ids);
            let marker = update
                .install
                .clone()
                .expect("resumed with an install marker");
            let current = sha256_file_async(&pkg.path, &agent.shutdown).await?;
            let is_new = current.as_deref() == Some(marker.to_sha256.as_str());
            let is_old = current.as_deref() == Some(update.from_sha256.as_str());
            if !marker.rolling_back {
                if let Some(id) = untrusted(agent, &update, marker.applied) {
                    // Facts verified under a key since dropped (or a policy since tightened)
                    // no longer count, here as in the verify step.
                    let problem = format!(
                        "update {id} was verified with a key or a policy that the config no longer holds"
                    );
                    if is_new {
                        return roll_back(agent, pkg, &update, marker, problem).await;
                    }
                    log::warn!("{key}: {problem}; verifying the chain again");
                    forget_install(agent, pkg)?;
                    return Ok(Step::Verify);
                }
            }
            if !marker.rolling_back && is_new && marker.hook_stops >= MAX_HOOK_STOPS {
                // A hook that stops the agent (a reboot, the new version shutting the robot
                // down) would otherwise run again at every start, for ever.
                let problem = format!(
                    "the hooks were stopped {} times before they finished",
                    marker.hook_stops
                );
                return roll_back(agent, pkg, &update, marker, problem).await;
            }
            let hooks = pkg.post_install.is_some() || pkg.health_check.is_some();
            let passed_here =
                agent.hooks_passed.as_ref() == Some(&(key.clone(), marker.to_sha256.clone()));
            if !marker.rolling_back && is_new && passed_here {
                // The hooks passed in this process; what failed was the save that ends the
                // install. Ending it again is all that is left.
                return finish_install(agent, pkg, &update, &marker);
            }
            if marker.rolling_back || (marker.hooks_started && is_new && hooks) {
                let problem = if marker.rolling_back {
                    "a restart interrupted its rollback".to_owned()
                } else {
                    "a restart interrupted its hooks; the new version may have hung or rebooted the robot".to_owned()
                };
                return roll_back(agent, pkg, &update, marker, problem).await;
            }
            if is_new {
                log::info!(
                    "{key}: finishing the install of version {} that a restart interrupted",
                    marker.to_version
                );
            } else if is_old {
                let prepared =
                    sha256_file_async(&install::new_path(&pkg.path), &agent.shutdown).await?;
                if prepared.as_deref() == Some(marker.to_sha256.as_str()) {
                    log::info!(
                        "{key}: a restart interrupted the install of version {}; swapping it in now",
                        marker.to_version
                    );
                    install::swap(&pkg.path)?;
                } else {
                    log::info!(
                        "{key}: a restart interrupted the install before the new file was ready; applying again"
                    );
                    forget_install(agent, pkg)?;
                    return Ok(Step::Apply);
                }
            } else {
                // Neither the old nor the new version: changed by someone else, not by a patch.
                return super::identify::changed(agent, pkg, &ids).await;
            }
            marker
        }
    };
    log::info!("{key}: version {} is in place", marker.to_version);

    // Only hooks can hang or reboot the robot: without any, a restart from here finishes the
    // install rather than rolling it back.
    if pkg.post_install.is_some() || pkg.health_check.is_some() {
        marker.hooks_started = true;
        save_marker(agent, &key, &marker)?;
    }
    let env = hook_env(pkg, &update.from_version, &marker.to_version);
    for (name, cmd) in [
        ("post_install", &pkg.post_install),
        ("health_check", &pkg.health_check),
    ] {
        if let Some(cmd) = cmd {
            match run_hook(agent, pkg, name, cmd, &env).await {
                Ok(()) => {}
                Err(hooks::HookError::Stopped { .. }) => {
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
                    return roll_back(agent, pkg, &update, marker, crate::error_chain(&e)).await;
                }
            }
        }
    }

    agent.hooks_passed = Some((key, marker.to_sha256.clone()));
    finish_install(agent, pkg, &update, &marker)
}

/// Ends an install whose hooks passed: the new version is installed, with rule 3's codes.
fn finish_install(
    agent: &mut Agent,
    pkg: &Package,
    update: &Update,
    marker: &InstallState,
) -> Result<Step, CycleError> {
    let key = pkg.key();
    let ids = update.ids();
    let failed = update.failed.as_ref().map(|f| f.index);
    let codes = chain_codes(&ids, marker.applied, failed);
    let installed = Some(super::Known {
        version: marker.to_version.clone(),
        sha256: marker.to_sha256.clone(),
        source: crate::store::VersionSource::Installed,
    });
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
    Ok(Step::Report(outcome))
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
) -> Result<Step, CycleError> {
    let key = pkg.key();
    log::error!(
        "{key}: {problem}; rolling back to version {}",
        update.from_version
    );
    marker.rolling_back = true;
    save_marker(agent, &key, &marker)?;
    if !install::rollback(&pkg.path)? {
        log::error!("{key}: no previous file to restore");
    }
    if let Some(cmd) = &pkg.post_install {
        let env = hook_env(pkg, &marker.to_version, &update.from_version);
        match run_hook(agent, pkg, "post_install", cmd, &env).await {
            Ok(()) => {}
            // The marker says "rolling back": the next start runs post_install again.
            Err(hooks::HookError::Stopped { .. }) => return Err(CycleError::Stopped),
            Err(e) => log::error!("{key}: after the rollback: {}", crate::error_chain(&e)),
        }
    }
    // Record what is really there now, so that later checks patch the right base.
    let now = sha256_file_async(&pkg.path, &agent.shutdown).await?;
    let source = agent.state.packages[&key].source;
    let installed = super::installed_now(update, &marker, source, now.as_deref());
    let ids = update.ids();
    let still_new = now.as_deref() == Some(marker.to_sha256.as_str());
    let codes = if still_new {
        log::error!("{key}: version {} stays installed", marker.to_version);
        chain_codes(
            &ids,
            marker.applied,
            update.failed.as_ref().map(|f| f.index),
        )
    } else {
        all_codes(&ids, code::FAILED)
    };
    agent.finish(pkg, &codes, installed)?;
    Ok(Step::Report(Outcome::Failed {
        reason: format!("version {} was rolled back: {problem}", marker.to_version),
    }))
}

/// The first of the chain's first `applied` patches that the current `[security]` would not let
/// through: signed by a key no longer listed, or unsigned where signatures are now required.
fn untrusted(agent: &Agent, update: &Update, applied: usize) -> Option<String> {
    let security = &agent.config.security;
    let keys = security.keys();
    if keys.is_empty() {
        return None;
    }
    update.patches[..applied.min(update.patches.len())]
        .iter()
        .find(|p| {
            let trusted = p
                .signed
                .as_ref()
                .is_some_and(|s| keys.iter().any(|k| k.to_text() == s.key));
            !(trusted || (p.unsigned && !security.require_signatures))
        })
        .map(|p| p.id.clone())
}

/// Drops the install marker and the new file prepared beside the managed one: the install starts
/// over from the staged chain (the managed file is still the old version).
fn forget_install(agent: &mut Agent, pkg: &Package) -> Result<(), CycleError> {
    install::discard_prepared(&pkg.path);
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

/// Runs one hook, saying so in `STATUS=`: that line is progress to the watchdog, which the next
/// hook of a row would otherwise have to share with this one.
pub(super) async fn run_hook(
    agent: &Agent,
    pkg: &Package,
    name: &'static str,
    cmd: &str,
    env: &HookEnv,
) -> Result<(), hooks::HookError> {
    let doing = format!("running the {name} hook of {}", pkg.key());
    log::info!("{doing}");
    agent.notifier.status(&doing);
    agent.events.hook(&pkg.key(), name);
    hooks::run(
        name,
        cmd,
        timeout(agent, pkg),
        &env.as_slice(),
        &agent.shutdown,
    )
    .await
}

fn timeout(agent: &Agent, pkg: &Package) -> std::time::Duration {
    pkg.hook_timeout
        .unwrap_or(agent.config.agent.hook_timeout)
        .0
}

pub(super) fn hook_env(pkg: &Package, from: &str, to: &str) -> HookEnv {
    HookEnv(vec![
        ("OTA_PACKAGE", pkg.name.clone()),
        ("OTA_FILE_NAME", pkg.file_name.clone()),
        ("OTA_PATH", pkg.path.display().to_string()),
        ("OTA_PREVIOUS_VERSION", from.to_owned()),
        ("OTA_VERSION", to.to_owned()),
    ])
}

pub(super) struct HookEnv(Vec<(&'static str, String)>);

impl HookEnv {
    fn as_slice(&self) -> Vec<(&str, &str)> {
        self.0.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}
