//! Download: fetch the chain's patches in order into the state directory, resuming where a
//! connection cut or a restart left off.

use super::transfer::fetch_one;
use super::{Agent, CycleError, Outcome, Transition, all_codes};
use crate::client::ClientError;
use crate::config::Package;
use crate::hooks::HookEnv;
use crate::store::{Failure, ResultCode};

/// Immediate resumes of one patch within a cycle before the cycle backs off.
const QUICK_RESUMES: u32 = 3;
/// Cycles in a row without room for the chain before its ids are reported "not updated yet".
const SPACE_TRIES: u32 = 3;

pub(super) async fn run(agent: &mut Agent, pkg: &Package) -> Result<Transition, CycleError> {
    let key = pkg.key();
    if let Some(cmd) = &pkg.pre_download {
        let u = agent.update(&key);
        let usable = u.usable();
        if (0..usable).any(|i| u.patches[i].sha256.is_none()) {
            let env = HookEnv::new(pkg, &u.from_version, &u.patches[usable - 1].to_version);
            match agent.run_hook(pkg, "pre_download", cmd, &env).await {
                Ok(()) => super::wait::end(agent, &key)?,
                Err(crate::hooks::HookError::Stopped { .. }) => return Err(CycleError::Stopped),
                Err(e) => {
                    let problem = crate::error_chain(&e);
                    return super::wait::defer(agent, pkg, "pre_download", &problem);
                }
            }
        }
    }
    let ids = agent.update(&key).ids();
    agent.events.step(&key, crate::events::Step::Download, &ids);
    match check_space(agent, pkg).await {
        Ok(()) => {
            if agent.update(&key).space_failures > 0 {
                agent.update_mut(&key).space_failures = 0;
                agent.save()?;
            }
        }
        Err(e @ CycleError::NoSpace { place, needed, .. }) => {
            let tries = agent.update(&key).space_failures + 1;
            agent.update_mut(&key).space_failures = tries;
            agent.save()?;
            if tries < SPACE_TRIES {
                return Err(e);
            }
            // Give the ids back to the server as "not updated yet" rather than wait forever.
            let reason = crate::error_chain(&e);
            log::error!("{key}: {reason}; giving up on this update for now");
            let ids = agent.update(&key).ids();
            agent.note_no_room(&key, &ids, Some(super::Room::new(place, needed)));
            agent.finish(pkg, &all_codes(&ids, ResultCode::NotUpdated), None)?;
            return Ok(Transition::Report(Outcome::Failed { reason }));
        }
        Err(e) => return Err(e),
    }
    let count = agent.update(&key).patches.len();
    for index in 0..count {
        // Patches before a failed one are still fetched: they install (rule 3).
        if index >= agent.update(&key).usable() {
            break;
        }
        if agent.update(&key).patches[index].sha256.is_some() {
            continue;
        }
        let mut quick = 0;
        loop {
            let patch = agent.update(&key).patches[index].clone();
            let err = match fetch_one(agent, &key, index, &patch).await {
                Ok(()) => break,
                Err(e @ CycleError::Stopped) => return Err(e),
                Err(e) => e,
            };
            let permanent = matches!(&err, CycleError::Client(c) if c.is_permanent())
                || matches!(&err, CycleError::Unauthentic { .. });
            // A cut after progress does not use up attempts: they count downloads that go
            // nowhere. A host that cannot be reached (or whose certificate is refused) does:
            // once a cycle, so that the back-off between cycles spreads them out, and an update
            // whose patch host is gone ends instead of waiting for it for good.
            let unreachable = matches!(&err, CycleError::Client(c) if c.is_connect() || c.is_tls());
            if err.is_clock_behind() {
                // Not the host's fault, nor the patch's: the robot's clock is behind. The cycle
                // ends (and does not count, see `Agent::cycle`) until the clock is set.
                return Err(err);
            }
            let p = &mut agent.update_mut(&key).patches[index];
            if p.durable > patch.durable {
                p.attempts = 0;
            } else {
                p.attempts += 1;
            }
            let attempts = p.attempts;
            let id = p.id.clone();
            let limit = agent.config.agent.download_attempts;
            let reason = crate::error_chain(&err);
            if permanent || attempts >= limit {
                log::error!(
                    "{key}: update {id} cannot be downloaded ({reason}); giving up after {attempts} attempt(s)"
                );
                agent.update_mut(&key).failed = Some(Failure {
                    index,
                    reason: format!("download of update {id} failed: {reason}"),
                });
                agent.save()?;
                break;
            }
            agent.save()?;
            quick += 1;
            if unreachable {
                return Err(err);
            }
            if quick >= QUICK_RESUMES {
                return Err(CycleError::Interrupted { id, reason });
            }
            log::warn!("{key}: download of update {id} interrupted ({reason}); resuming");
        }
    }
    Ok(Transition::Apply)
}

/// Refuses to start when the whole chain and the files made from it cannot fit in the state
/// directory, or the new file beside the managed one.
async fn check_space(agent: &mut Agent, pkg: &Package) -> Result<(), CycleError> {
    let key = pkg.key();
    let mut needed: u64 = 0;
    // One HEAD that fails is enough for a cycle: a host where they hang would otherwise hold
    // the cycle for a request timeout per patch.
    let mut heads = true;
    for index in 0..agent.update(&key).usable() {
        agent.notifier.alive();
        let p = agent.update(&key).patches[index].clone();
        if p.sha256.is_some() {
            continue;
        }
        let size = match (&p.signed, p.size) {
            (Some(signed), _) => Some(signed.patch_size),
            (None, Some(s)) => Some(s),
            (None, None) if heads => match agent.client.patch_size(&p.url).await {
                Ok(size) => size,
                Err(e @ ClientError::Stopped { .. }) => return Err(e.into()),
                Err(_) => {
                    heads = false;
                    None
                }
            },
            (None, None) => None,
        };
        if let Some(size) = size {
            let max = agent.config.agent.max_patch_size;
            if size > max {
                let reason = format!(
                    "update {} is {size} bytes, more than max_patch_size ({max})",
                    p.id
                );
                log::error!("{key}: {reason}");
                agent.update_mut(&key).failed = Some(Failure { index, reason });
                break;
            }
            agent.update_mut(&key).patches[index].size = Some(size);
            needed += size.saturating_sub(p.durable);
        }
    }
    agent.save()?;
    // Applying needs room for two versions of the file at once (the last result and the next).
    let file_size = std::fs::metadata(&pkg.path).map(|m| m.len()).unwrap_or(0);
    needed = needed.saturating_add(file_size.saturating_mul(2));
    let free = agent.store.free_space()?;
    if needed > free {
        return Err(CycleError::NoSpace {
            place: super::IN_STATE_DIR,
            needed,
            free,
        });
    }
    // The new version is written beside the managed file before it replaces it; the signed
    // result size says how large it is, else the file as it is now is the best guess.
    let u = agent.update(&key);
    let result = u.patches[..u.usable()]
        .iter()
        .rev()
        .find_map(|p| p.signed.as_ref().map(|s| s.result_size))
        .unwrap_or(file_size);
    let beside = crate::managed::free_space(&pkg.path)?;
    if result > beside {
        return Err(CycleError::NoSpace {
            place: super::BESIDE,
            needed: result,
            free: beside,
        });
    }
    Ok(())
}
