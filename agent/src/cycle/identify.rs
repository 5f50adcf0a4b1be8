//! Identify: which version the managed file is, from what the agent can check.
//!
//! A bsdiff patch carries no checksum of the file it applies to: applied to another file it
//! still makes a file of the right size, just no version. So the agent patches a file only
//! when it knows which version it is, and it knows from, most trusted first:
//! - its state: the version and sha256 it last installed or identified, while the file still
//!   has that sha256;
//! - the file's own record (`user.ota-agent.version`, see `managed`), when the sha256 in it is
//!   the file's;
//! - the config's `version_sha256`, which pins the config's `version`;
//! - the sha256s the vendor signed for the versions of an offered chain (the verify and apply
//!   steps call [`by_signatures`]);
//! - on first sight only, and unverified: the config's `version`. Not after the state was
//!   lost: the config then says what the file was before the agent last changed it.
//!
//! A file that none of these identifies is *unidentified*: its offers end with `3` (nothing is
//! wrong with the patches), and it is neither patched nor checked for updates until it is
//! identified again (a record, a pin, `ota-agent adopt`, or its recorded sha256 back).

use super::{Agent, CycleError, Known, Outcome, Transition, all_codes, chain_codes};
use crate::config::Package;
use crate::managed::{Examined, examine_async};
use crate::store::ResultCode;
use crate::store::{Update, VersionSource};

/// The version the file's record or the config's pin give a file, if either does: not for
/// bytes the vendor's signatures showed to be none of its versions.
fn by_record_or_pin(agent: &Agent, pkg: &Package, found: &Examined) -> Option<Known> {
    let disproved = agent.state.packages[&pkg.key()]
        .unidentified
        .as_ref()
        .and_then(|u| u.disproved.as_deref());
    if disproved == Some(found.sha256.as_str()) {
        return None;
    }
    if let Some(version) = found.recorded_version(&agent.owner(pkg)) {
        return Some(Known {
            version: version.to_owned(),
            sha256: found.sha256.clone(),
            source: VersionSource::Record,
        });
    }
    let pin = pkg.version_sha256.as_deref()?;
    pin.eq_ignore_ascii_case(&found.sha256).then(|| Known {
        version: pkg.version.clone(),
        sha256: found.sha256.clone(),
        source: VersionSource::Pin,
    })
}

/// Why a file that neither its record nor a pin identifies cannot be taken for the config's
/// version, if it cannot.
fn not_configured_version(agent: &Agent, pkg: &Package, found: &Examined) -> Option<String> {
    let fix = format!("if it is version N, run `ota-agent adopt {} N`", pkg.key());
    if let Some(pin) = &pkg.version_sha256 {
        return Some(format!(
            "{} has sha256 {}, not the version_sha256 {pin} that the config gives version {}; it is not patched ({fix}, or correct version and version_sha256 in the config)",
            pkg.path.display(),
            found.sha256,
            pkg.version
        ));
    }
    agent.state.packages[&pkg.key()].after_state_loss.then(|| {
        format!(
            "the agent's state was lost and {} carries no record of its version, so the config's version {} may be one the agent has since moved it on from; it is not patched ({fix})",
            pkg.path.display(),
            pkg.version
        )
    })
}

/// The first look at a file: what it is, by its record, a pin, or the config's word.
pub(super) async fn first_sight(agent: &mut Agent, pkg: &Package) -> Result<(), CycleError> {
    let key = pkg.key();
    let found = examine_async(&pkg.path, &agent.shutdown).await?;
    let shared = agent.config.shares_file(pkg);
    let outcome = match found {
        None => Err((None, format!("{} does not exist", pkg.path.display()))),
        Some(found) if shared.is_some() => {
            let (other, how) = shared.expect("checked in the guard");
            Err((
                Some(found.sha256),
                format!("it is also {other}'s file ({how}); a file can have only one owner"),
            ))
        }
        Some(found) => match by_record_or_pin(agent, pkg, &found) {
            Some(known) => Ok(known),
            None => match not_configured_version(agent, pkg, &found) {
                Some(reason) => Err((Some(found.sha256), reason)),
                None => Ok(Known {
                    version: pkg.version.clone(),
                    sha256: found.sha256,
                    source: VersionSource::Config,
                }),
            },
        },
    };
    match outcome {
        Ok(known) => {
            log::info!(
                "{key}: now managing {} as version {} (sha256 {}; {})",
                pkg.path.display(),
                known.version,
                known.sha256,
                known.source.describe()
            );
            if known.source == VersionSource::Config {
                log::warn!(
                    "{key}: version {} is the config's word, and nothing checks it: set version_sha256, or [security] public_keys, for the agent to know",
                    known.version
                );
            }
            agent.identified(&key, known);
        }
        Err((sha256, reason)) => {
            agent.unidentified(&key, sha256, reason);
        }
    }
    agent.save()?;
    Ok(())
}

/// Another look at an unidentified file; `Some(reason)` while it stays so.
pub(super) async fn again(agent: &mut Agent, pkg: &Package) -> Result<Option<String>, CycleError> {
    let found = examine_async(&pkg.path, &agent.shutdown).await?;
    let ps = &agent.state.packages[&pkg.key()];
    // Back to what the agent recorded before it lost track of it.
    let back = found
        .as_ref()
        .filter(|f| ps.sha256.as_deref() == Some(f.sha256.as_str()))
        .map(|f| Known {
            version: ps.version.clone(),
            sha256: f.sha256.clone(),
            source: ps.source,
        });
    settle(agent, pkg, found, back)
}

/// Takes `known`, or what the file's record or a pin say, for the file's version; without
/// either the file is unidentified, and `Some(reason)` says why.
fn settle(
    agent: &mut Agent,
    pkg: &Package,
    found: Option<Examined>,
    known: Option<Known>,
) -> Result<Option<String>, CycleError> {
    let key = pkg.key();
    let shared = agent.config.shares_file(pkg);
    let known = match shared {
        Some(_) => None,
        None => known.or_else(|| found.as_ref().and_then(|f| by_record_or_pin(agent, pkg, f))),
    };
    if let Some(known) = known {
        log::info!(
            "{key}: {} is identified: version {} ({})",
            pkg.path.display(),
            known.version,
            known.source.describe()
        );
        agent.identified(&key, known);
        agent.save()?;
        return Ok(None);
    }
    let reason = match (&found, shared) {
        (_, Some((other, how))) => {
            format!("it is also {other}'s file ({how}); a file can have only one owner")
        }
        (None, None) => format!("{} does not exist", pkg.path.display()),
        (Some(f), None) => not_configured_version(agent, pkg, f).unwrap_or_else(|| {
            format!(
                "{} (sha256 {}) is none of the versions the agent knows, and carries no record of its own; run `ota-agent adopt {key} N` if it is version N",
                pkg.path.display(),
                f.sha256
            )
        }),
    };
    if agent.unidentified(&key, found.map(|f| f.sha256), reason.clone()) {
        agent.save()?;
    }
    Ok(Some(reason))
}

/// The file is not what the agent recorded, before anything was patched: the offered `ids`
/// end with `3` (nothing is wrong with their patches), and the file is identified anew, or
/// held as unidentified.
pub(super) async fn changed(
    agent: &mut Agent,
    pkg: &Package,
    ids: &[String],
) -> Result<Transition, CycleError> {
    let key = pkg.key();
    let found = examine_async(&pkg.path, &agent.shutdown).await?;
    let recorded = agent.state.packages[&key].sha256.clone();
    log::error!(
        "{key}: {} is not the file the agent recorded (sha256 {}, now {}); it is not patched",
        pkg.path.display(),
        recorded.as_deref().unwrap_or("none"),
        found.as_ref().map_or("missing", |f| f.sha256.as_str())
    );
    agent.finish(pkg, &all_codes(ids, ResultCode::NotUpdated), None)?;
    // What the file was is no knowledge of what it is now.
    match settle(agent, pkg, found, None)? {
        None => Ok(Transition::Check),
        Some(reason) => Ok(Transition::Report(Outcome::Unidentified { reason })),
    }
}

/// Before an install: another package's path names the file too (a directory became a link
/// since the start): the update ends with `3` and the file is held as unidentified, or one
/// owner's version would land in the other's file.
pub(super) fn shared(
    agent: &mut Agent,
    pkg: &Package,
    ids: &[String],
) -> Result<Option<Transition>, CycleError> {
    let Some((other, how)) = agent.config.shares_file(pkg) else {
        return Ok(None);
    };
    let key = pkg.key();
    let reason = format!("it is also {other}'s file ({how}); a file can have only one owner");
    log::error!("{key}: {} is not installed: {reason}", pkg.path.display());
    agent.finish(pkg, &all_codes(ids, ResultCode::NotUpdated), None)?;
    let sha256 = agent.state.packages[&key].sha256.clone();
    agent.unidentified(&key, sha256, reason.clone());
    agent.save()?;
    Ok(Some(Transition::Report(Outcome::Unidentified { reason })))
}

/// The vendor's signatures say the file is not the chain's base (format 3), or the first patch
/// did not make the signed result from a base nothing had verified (formats 1 and 2): which
/// version is it? A file that is the result of patch *k*, or the base of patch *k + 1*, has
/// the patches up to *k* installed (reported `1`, the rest `3`); any other file is
/// unidentified (all `3`). Either way the update ends, and the server is asked again.
pub(super) fn by_signatures(
    agent: &mut Agent,
    pkg: &Package,
    update: &Update,
    problem: &str,
) -> Result<Transition, CycleError> {
    let key = pkg.key();
    let sha = update.from_sha256.as_str();
    let signed = |k: usize| update.patches[k].signed.as_ref();
    let usable = update.usable();
    let installed = (0..usable)
        .rev()
        .find(|&k| signed(k).is_some_and(|s| s.result_sha256 == sha))
        .map(|k| k + 1)
        .or_else(|| {
            (1..usable).find(|&k| signed(k).is_some_and(|s| s.from_sha256.as_deref() == Some(sha)))
        });
    let ids = update.ids();
    let Some(applied) = installed else {
        let reason = format!(
            "{problem}, and {} (sha256 {sha}) is none of the versions the vendor signed for updates {}; run `ota-agent adopt {key} N` if it is version N",
            pkg.path.display(),
            ids.join(", ")
        );
        log::error!("{key}: {reason}");
        agent.finish(pkg, &all_codes(&ids, ResultCode::NotUpdated), None)?;
        // The recorded version of this very sha256 is what the signatures disproved: the file
        // staying as it is must not identify it again, not by the state, a record or a pin.
        agent.pkg_state(&key).sha256 = None;
        agent.unidentified(&key, Some(sha.to_owned()), reason.clone());
        if let Some(u) = agent.pkg_state(&key).unidentified.as_mut() {
            u.disproved = Some(sha.to_owned());
        }
        agent.save()?;
        return Ok(Transition::Report(Outcome::Unidentified { reason }));
    };
    let version = update.patches[applied - 1].to_version.clone();
    log::warn!(
        "{key}: {problem}: {} is version {version}, as the vendor signed it, not version {}; updates {} are installed already",
        pkg.path.display(),
        update.from_version,
        ids[..applied].join(", ")
    );
    let known = Known {
        version,
        sha256: sha.to_owned(),
        source: VersionSource::Signed,
    };
    agent.finish(pkg, &chain_codes(&ids, applied, None), Some(known))?;
    Ok(Transition::Check)
}
