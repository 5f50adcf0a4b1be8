//! Check: ask the server which patches the installed file needs, and accept or refuse the offer.

use super::{Agent, CycleError, Declined, Outcome, Transition};
use crate::client::{CheckAnswer, CheckRequest, OfferedPatch};
use crate::config::Package;
use crate::managed::sha256_file_async;
use crate::store::ResultCode;
use crate::store::{Callback, LastCheck, PatchState, Update};
use crate::unix_now;

pub(super) async fn run(agent: &mut Agent, pkg: &Package) -> Result<Transition, CycleError> {
    let key = pkg.key();
    let ps = agent.pkg_state(&key);
    // Never looked at yet, or missing when it was: the unidentified that something disproved
    // carry the sha256 that was disproved.
    let first_sight = ps.sha256.is_none()
        && ps
            .unidentified
            .as_ref()
            .is_none_or(|u| u.sha256.is_none() && u.disproved.is_none());
    if !first_sight && ps.unidentified.is_some() {
        if let Some(reason) = super::identify::again(agent, pkg).await? {
            return Ok(Transition::Report(Outcome::Unidentified { reason }));
        }
    } else if first_sight {
        // First sight: what is there now is what later patches must apply to.
        super::identify::first_sight(agent, pkg).await?;
        if let Some(u) = &agent.state.packages[&key].unidentified {
            let reason = u.reason.clone();
            return Ok(Transition::Report(Outcome::Unidentified { reason }));
        }
    }
    let version = agent.pkg_state(&key).version.clone();
    let language = agent.config.language(pkg).to_owned();
    log::info!("{key}: checking for updates to version {version}");
    agent
        .notifier
        .status(&format!("checking for updates to {key} version {version}"));
    agent.events.step(&key, crate::events::Step::Check, &[]);
    let answer = match agent
        .client
        .check(&CheckRequest {
            package_name: &pkg.name,
            version: &version,
            file_name: &pkg.file_name,
            language: &language,
        })
        .await
    {
        Ok(answer) => super::statement::hold(agent, pkg, &version, answer).await,
        Err(e) => Err(e.into()),
    };
    let (ok, result) = match &answer {
        Ok(a) => (true, describe(a)),
        Err(e) => (false, crate::error_chain(e)),
    };
    agent.pkg_state(&key).last_check = Some(LastCheck {
        at_unix: unix_now(),
        ok,
        result,
    });
    agent.save()?;
    let patches = match answer? {
        CheckAnswer::UpToDate | CheckAnswer::NoSuchVersion => {
            log::info!("{key}: up to date at version {version}");
            return Ok(Transition::Report(Outcome::UpToDate { version }));
        }
        CheckAnswer::NotAllowed => return Ok(declined(&key, Declined::NotAllowed)),
        CheckAnswer::NoLanguage => return Ok(declined(&key, Declined::NoLanguage)),
        CheckAnswer::Failed(code) => {
            return Err(crate::client::ClientError::Code {
                what: "check",
                code,
            }
            .into());
        }
        CheckAnswer::Patches(p) => p,
    };
    accept(agent, pkg, &version, patches).await
}

fn describe(answer: &CheckAnswer) -> String {
    match answer {
        CheckAnswer::Patches(p) => format!("{} patch(es) offered", p.len()),
        CheckAnswer::UpToDate => "up to date".into(),
        CheckAnswer::NoSuchVersion => "up to date (102: no such version)".into(),
        CheckAnswer::NotAllowed => "declined (103: robot may not upgrade)".into(),
        CheckAnswer::NoLanguage => "declined (104: no version for this language)".into(),
        CheckAnswer::Failed(c) => format!("server error (code {c})"),
    }
}

/// Rule 1: `103` and `104` are not errors of the agent; it polls again at the usual pace.
fn declined(key: &str, why: Declined) -> Transition {
    log::warn!(
        "{key}: the server declines to update this robot (code {}); asking again at the next poll",
        why.code()
    );
    Transition::Report(Outcome::Declined(why))
}

/// The longest chain the agent takes from one answer; a longer one is taken in pieces of this
/// many. The state file holds a record per patch, saved at every checkpoint of a download, so a
/// chain of thousands would make each save (and the flash's wear) grow with it.
pub const MAX_CHAIN: usize = 64;

/// Turns a valid offer into an update, or refuses it before anything is downloaded.
async fn accept(
    agent: &mut Agent,
    pkg: &Package,
    version: &str,
    offered: Vec<OfferedPatch>,
) -> Result<Transition, CycleError> {
    let key = pkg.key();
    let (fresh, blocked_by) = send_results_again(agent, &key, offered)?;
    let (patches, last) = chain_of(agent, &key, version, fresh)?;
    if patches.is_empty() {
        if let Some(id) = blocked_by {
            return Ok(Transition::Report(Outcome::Failed {
                reason: format!("update {id} failed before; it is not tried again"),
            }));
        }
        return Ok(Transition::Report(Outcome::UpToDate {
            version: version.to_owned(),
        }));
    }
    let ids: Vec<String> = patches.iter().map(|p| p.id.clone()).collect();
    if let Some(reason) = still_no_room(agent, pkg, &ids)? {
        log::warn!("{key}: {reason}");
        return Ok(Transition::Report(Outcome::Failed { reason }));
    }
    let recorded = agent.state.packages[&key].sha256.clone();
    let current = sha256_file_async(&pkg.path, &agent.shutdown).await?;
    if current.is_none() || current != recorded {
        return super::identify::changed(agent, pkg, &ids).await;
    }
    log::info!(
        "{key}: updates {} lead from version {version} to {last}",
        ids.join(", ")
    );
    agent.pkg_state(&key).update = Some(Update {
        from_version: version.to_owned(),
        from_sha256: current.unwrap_or_default(),
        patches,
        failed: None,
        install: None,
        space_failures: 0,
        accepted_at_unix: unix_now(),
        failed_cycles: 0,
        deferred_since_unix: None,
        deferrals: 0,
        waiting: None,
        staged: None,
        prepared_sha256: None,
    });
    agent.save()?;
    Ok(Transition::Verify)
}

/// Rule 4, and its twin for failures: an id with a final result is never tried again; its
/// result is sent again instead. Ids after a failed one cannot apply: "not updated yet". Gives
/// the ids that are new, and the failed one that blocks the rest, if any.
fn send_results_again(
    agent: &mut Agent,
    key: &str,
    offered: Vec<OfferedPatch>,
) -> Result<(Vec<OfferedPatch>, Option<String>), CycleError> {
    let mut fresh = Vec::new();
    let mut again: Vec<(String, ResultCode)> = Vec::new();
    let mut blocked_by: Option<String> = None;
    let ps = &agent.state.packages[key];
    for p in offered {
        if ps.applied.contains(&p.id) {
            again.push((p.id, ResultCode::Success));
        } else if blocked_by.is_some() {
            again.push((p.id, ResultCode::NotUpdated));
        } else if ps.failed.contains(&p.id) {
            blocked_by = Some(p.id.clone());
            again.push((p.id, ResultCode::Failed));
        } else {
            fresh.push(p);
        }
    }
    for (id, code) in &again {
        let queued = agent
            .state
            .outbox
            .iter()
            .any(|c| c.package == key && c.id == *id && c.code == *code);
        if !queued {
            log::info!(
                "{key}: update {id} was offered again; its result {code} is sent again, it is not retried"
            );
            agent.state.outbox.push(Callback {
                package: key.to_owned(),
                id: id.clone(),
                code: *code,
                queued_at_unix: unix_now(),
            });
        }
    }
    if !again.is_empty() {
        agent.save()?;
    }
    Ok((fresh, blocked_by))
}

/// The new patches as a chain to record, up to [`MAX_CHAIN`] of them, each leading to a higher
/// version than the one before, from `version`; and the version the chain leads to.
fn chain_of(
    agent: &Agent,
    key: &str,
    version: &str,
    mut fresh: Vec<OfferedPatch>,
) -> Result<(Vec<PatchState>, u64), CycleError> {
    if fresh.len() > MAX_CHAIN {
        // The patches apply in order: the first ones are an update of their own, and the next
        // check, from the version they lead to, brings the rest. The ids left out get no
        // result; the server offers them again. (Ids after a failed one got theirs above,
        // however many: they cannot apply.)
        log::warn!(
            "{key}: {} patches offered in one answer; taking the first {MAX_CHAIN}, the rest come at the next check",
            fresh.len()
        );
        fresh.truncate(MAX_CHAIN);
    }
    let mut last: u64 = version.parse().map_err(|_| {
        CycleError::Refused(format!(
            "the installed version `{version}` is not a version code"
        ))
    })?;
    let https_server = crate::client::is_https(&agent.config.server.url);
    let keys = !agent.config.security.public_keys.is_empty();
    let mut patches = Vec::with_capacity(fresh.len());
    for p in &fresh {
        // An https server that names a plain-http patch hands its bytes to whoever is on the
        // path: without signatures to hold them to, that is refused; with them, said.
        if https_server && crate::client::is_plain_http(&p.url) {
            let url = crate::redact::url(&p.url);
            if !keys {
                return Err(CycleError::Refused(format!(
                    "update {} is offered over plain http ({url}) by an https server, and no [security] public_keys could check it",
                    p.id
                )));
            }
            log::warn!(
                "{key}: update {} is offered over plain http ({url}) by an https server; its signature still holds it",
                p.id
            );
        }
        let to = version_of(&p.url).ok_or_else(|| {
            CycleError::Refused(format!(
                "patch URL {} (id {}) does not name the version it leads to",
                crate::redact::url(&p.url),
                p.id
            ))
        })?;
        if to <= last {
            return Err(CycleError::Refused(format!(
                "update {} leads to version {to}, not above version {last}",
                p.id
            )));
        }
        last = to;
        patches.push(PatchState {
            id: p.id.clone(),
            url: p.url.clone(),
            to_version: to.to_string(),
            size: None,
            validator: None,
            durable: 0,
            sha256: None,
            attempts: 0,
            signed: None,
            unsigned: false,
            mismatches: 0,
        });
    }
    Ok((patches, last))
}

/// Says why the chain `ids` is not downloaded again: it ended with `3` for want of room, and the
/// free space is still less than it needed. A different chain, or the room, clears the fact.
fn still_no_room(
    agent: &mut Agent,
    pkg: &Package,
    ids: &[String],
) -> Result<Option<String>, CycleError> {
    let key = pkg.key();
    let Some(room) = agent.state.packages[&key].no_room.clone() else {
        return Ok(None);
    };
    if room.ids == ids {
        let (free, place) = if room.beside {
            (crate::managed::free_space(&pkg.path)?, super::BESIDE)
        } else {
            (agent.store.free_space()?, super::IN_STATE_DIR)
        };
        if free < room.needed {
            return Ok(Some(format!(
                "updates {} are not downloaded again until there is room: they need {} bytes {place}, {free} are free",
                ids.join(", "),
                room.needed
            )));
        }
    }
    agent.pkg_state(&key).no_room = None;
    agent.save()?;
    Ok(None)
}

/// The version code in a patch file name `<Name>-<versionName>--<versionCode>--<fileName>.patch`.
pub(crate) fn version_of(url: &str) -> Option<u64> {
    let path = url.split(['?', '#']).next()?;
    let name = path.rsplit('/').next()?;
    let stem = name.strip_suffix(".patch")?;
    let parts: Vec<&str> = stem.split("--").collect();
    if parts.len() < 3 {
        return None;
    }
    let code = parts[parts.len() - 2];
    if code.is_empty() || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::version_of;

    #[test]
    fn versions_from_names() {
        assert_eq!(
            version_of(
                "http://10.10.1.14:8080/version/2s/2s/Alpha2Services-1.1.1.32--17--5mic.patch"
            ),
            Some(17)
        );
        assert_eq!(
            version_of("http://h/a/Alpha2Services-1.1.2.32--18--5mic.patch?x=1"),
            Some(18)
        );
        assert_eq!(version_of("http://h/a/firmware.patch"), None);
        assert_eq!(version_of("http://h/a/A-1--x--f.patch"), None);
        assert_eq!(version_of("http://h/a/A-1--17--f.bin"), None);
        assert_eq!(version_of("http://h/17--18--/x.patch"), None);
    }
}
