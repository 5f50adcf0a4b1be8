//! Install: swap the staged file into place atomically, run the hooks, roll back on failure.

use super::apply::Staged;
use super::{Agent, CycleError, Outcome, Step, all_codes, chain_codes, code};
use crate::config::Package;
use crate::hooks;
use crate::install::{self, sha256_file};
use crate::store::InstallState;

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
    let ids: Vec<String> = update.patches.iter().map(|p| p.id.clone()).collect();
    let timeout = pkg
        .hook_timeout
        .unwrap_or(agent.config.agent.hook_timeout)
        .0;
    let marker = match staged {
        Staged::Fresh { applied, sha256 } => {
            let marker = InstallState {
                applied,
                to_version: update.patches[applied - 1].to_version.clone(),
                to_sha256: sha256,
            };
            if let Some(cmd) = &pkg.pre_install {
                let env = hook_env(pkg, &update.from_version, &marker.to_version);
                if let Err(e) = hooks::run("pre_install", cmd, timeout, &env.as_slice()).await {
                    log::warn!(
                        "{key}: {}; the update is deferred to the next poll",
                        crate::error_chain(&e)
                    );
                    agent.finish(pkg, &all_codes(&ids, code::NOT_UPDATED), None)?;
                    return Ok(Step::Report(Outcome::Deferred));
                }
            }
            agent
                .notifier
                .status(&format!("installing {key} version {}", marker.to_version));
            install::prepare(&pkg.path, agent.store.open_staged(&key, applied - 1)?)?;
            agent
                .pkg_state(&key)
                .update
                .as_mut()
                .expect("update")
                .install = Some(marker.clone());
            agent.save()?;
            install::swap(&pkg.path)?;
            marker
        }
        Staged::Resumed => {
            let marker = update
                .install
                .clone()
                .expect("resumed with an install marker");
            let current = sha256_file(&pkg.path)?;
            if current.as_deref() == Some(marker.to_sha256.as_str()) {
                log::info!(
                    "{key}: finishing the install of version {} that a restart interrupted",
                    marker.to_version
                );
            } else if current.as_deref() == Some(update.from_sha256.as_str()) {
                if sha256_file(&install::new_path(&pkg.path))?.as_deref()
                    == Some(marker.to_sha256.as_str())
                {
                    log::info!(
                        "{key}: a restart interrupted the install of version {}; swapping it in now",
                        marker.to_version
                    );
                    install::swap(&pkg.path)?;
                } else {
                    log::info!(
                        "{key}: a restart interrupted the install before the new file was ready; applying again"
                    );
                    agent
                        .pkg_state(&key)
                        .update
                        .as_mut()
                        .expect("update")
                        .install = None;
                    agent.save()?;
                    return Ok(Step::Apply);
                }
            } else {
                let reason = format!(
                    "{} is neither the old nor the new version after an interrupted install",
                    pkg.path.display()
                );
                log::error!("{key}: {reason}; restoring the previous file");
                install::rollback(&pkg.path)?;
                agent.finish(pkg, &all_codes(&ids, code::FAILED), None)?;
                return Ok(Step::Report(Outcome::Failed { reason }));
            }
            marker
        }
    };
    log::info!("{key}: version {} is in place", marker.to_version);

    let env = hook_env(pkg, &update.from_version, &marker.to_version);
    let mut problem = None;
    for (name, cmd) in [
        ("post_install", &pkg.post_install),
        ("health_check", &pkg.health_check),
    ] {
        if let Some(cmd) = cmd {
            if let Err(e) = hooks::run(name, cmd, timeout, &env.as_slice()).await {
                problem = Some(crate::error_chain(&e));
                break;
            }
        }
    }
    if let Some(problem) = problem {
        log::error!(
            "{key}: {problem}; rolling back to version {}",
            update.from_version
        );
        if !install::rollback(&pkg.path)? {
            log::error!("{key}: no previous file to restore");
        }
        if let Some(cmd) = &pkg.post_install {
            let env = hook_env(pkg, &marker.to_version, &update.from_version);
            if let Err(e) = hooks::run("post_install", cmd, timeout, &env.as_slice()).await {
                log::error!("{key}: after the rollback: {}", crate::error_chain(&e));
            }
        }
        let restored = Some((update.from_version.clone(), update.from_sha256.clone()));
        agent.finish(pkg, &all_codes(&ids, code::FAILED), restored)?;
        return Ok(Step::Report(Outcome::Failed {
            reason: format!("version {} was rolled back: {problem}", marker.to_version),
        }));
    }

    let failed = update.failed.as_ref().map(|f| f.index);
    let codes = chain_codes(&ids, marker.applied, failed);
    let installed = Some((marker.to_version.clone(), marker.to_sha256.clone()));
    agent.finish(pkg, &codes, installed)?;
    let outcome = match &update.failed {
        None => Outcome::Updated {
            from: update.from_version,
            to: marker.to_version,
        },
        Some(f) => Outcome::Partial {
            from: update.from_version,
            to: marker.to_version,
            failed: f.reason.clone(),
        },
    };
    log::info!("{key}: {outcome}");
    Ok(Step::Report(outcome))
}

fn hook_env(pkg: &Package, from: &str, to: &str) -> HookEnv {
    HookEnv(vec![
        ("OTA_PACKAGE", pkg.name.clone()),
        ("OTA_FILE_NAME", pkg.file_name.clone()),
        ("OTA_PATH", pkg.path.display().to_string()),
        ("OTA_PREVIOUS_VERSION", from.to_owned()),
        ("OTA_VERSION", to.to_owned()),
    ])
}

struct HookEnv(Vec<(&'static str, String)>);

impl HookEnv {
    fn as_slice(&self) -> Vec<(&str, &str)> {
        self.0.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}
