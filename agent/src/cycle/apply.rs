//! Apply: run the downloaded patches in order into the staging area, never on the installed file.

use std::io::{BufWriter, Write};

use sha2::{Digest, Sha256};

use super::{Agent, CycleError, Outcome, Staged, Transition, chain_codes};
use crate::config::Package;
use crate::managed::{hex, sha256_file_async};
use crate::patch;
use crate::store::{Failure, StagedResult, StoreError, Update};

pub(super) async fn run(agent: &mut Agent, pkg: &Package) -> Result<Transition, CycleError> {
    let key = pkg.key();
    let update = agent.update(&key).clone();
    let ids = update.ids();
    if !still_the_base(agent, pkg, &update.from_sha256).await? {
        return super::identify::changed(agent, pkg, &ids).await;
    }
    let usable = update.usable();
    if let Some(staged) = &update.staged {
        if staged.applied >= 1 && staged.applied <= usable && staged_is(agent, &key, staged).await {
            log::info!(
                "{key}: version {} is still staged; not applying again",
                update.patches[staged.applied - 1].to_version
            );
            return Ok(Transition::Install(Staged::Fresh {
                applied: staged.applied,
                sha256: staged.sha256.clone(),
            }));
        }
        agent.update_mut(&key).staged = None;
        agent.save()?;
    }
    let mut failed = update.failed.clone();
    let mut applied = 0;
    let mut sha = String::new();
    // The sha256 of the file the next patch applies to: the installed file, then each result.
    let mut base = update.from_sha256.clone();
    for index in 0..usable {
        let p = &update.patches[index];
        if let Some(signed_base) = p.signed.as_ref().and_then(|s| s.from_sha256.as_deref()) {
            if signed_base != base {
                // A patch before it ran on a base nothing checked (unsigned, on the config's
                // word), or the file is not the one the chain starts from.
                let problem = format!(
                    "update {} is signed for a file with sha256 {signed_base}, and would apply to one with sha256 {base}",
                    p.id
                );
                return super::identify::by_signatures(agent, pkg, &update, &problem);
            }
        }
        let doing = format!("applying update {} (version {})", p.id, p.to_version);
        log::info!("{key}: {doing}");
        agent.notifier.status(&doing);
        agent.events.step(&key, crate::events::Step::Apply, &ids);
        match apply_step(agent, pkg, &update, index).await? {
            Applied::Staged(new_sha) => {
                applied = index + 1;
                base.clone_from(&new_sha);
                sha = new_sha;
            }
            Applied::Bad(failure) => {
                failed = Some(failure);
                break;
            }
            Applied::Elsewhere(next) => return Ok(next),
        }
    }
    if applied == 0 {
        let reason = failed.map_or_else(|| "nothing to apply".to_owned(), |f| f.reason);
        agent.finish(pkg, &chain_codes(&ids, 0, Some(0)), None)?;
        return Ok(Transition::Report(Outcome::Failed { reason }));
    }
    let u = agent.update_mut(&key);
    u.failed = failed;
    u.staged = Some(StagedResult {
        applied,
        sha256: sha.clone(),
    });
    agent.save()?;
    Ok(Transition::Install(Staged::Fresh {
        applied,
        sha256: sha,
    }))
}

/// What applying one patch of the chain came to.
enum Applied {
    /// The patch made the file it should: its result is staged, with this sha256.
    Staged(String),
    /// The patch is proven bad against the right file: the chain stops before it.
    Bad(Failure),
    /// The cycle goes elsewhere: the patch fetched again, the file identified, a stop.
    Elsewhere(Transition),
}

/// Applies patch `index` of the chain and judges what it did. A verdict against the patch
/// needs the right file under it: the first patch's base is hashed again before one.
async fn apply_step(
    agent: &mut Agent,
    pkg: &Package,
    update: &Update,
    index: usize,
) -> Result<Applied, CycleError> {
    let key = pkg.key();
    let ids = update.ids();
    let p = &update.patches[index];
    let base_changed = async |agent: &mut Agent| -> Result<Option<Applied>, CycleError> {
        if index == 0 && !still_the_base(agent, pkg, &update.from_sha256).await? {
            let next = super::identify::changed(agent, pkg, &ids).await?;
            return Ok(Some(Applied::Elsewhere(next)));
        }
        Ok(None)
    };
    match apply_one(agent, pkg, index).await {
        Ok((new_sha, new_size))
            if p.signed
                .as_ref()
                .is_some_and(|s| s.result_sha256 != new_sha || s.result_size != new_size) =>
        {
            if let Some(changed) = base_changed(agent).await? {
                return Ok(changed);
            }
            let signed = p.signed.as_ref().expect("checked in the guard");
            let reason = format!(
                "update {} does not make the file the vendor signed: {new_size} bytes with sha256 {new_sha}; signed: {} bytes with sha256 {}",
                p.id, signed.result_size, signed.result_sha256
            );
            agent.store.remove_staged(&key, index)?;
            if !base_checked(agent, &key, index, p) {
                let next = super::identify::by_signatures(agent, pkg, update, &reason)?;
                return Ok(Applied::Elsewhere(next));
            }
            log::error!("{key}: {reason}");
            Ok(Applied::Bad(Failure { index, reason }))
        }
        Ok((new_sha, _)) => {
            log::info!(
                "{key}: update {} applied: version {} staged",
                p.id,
                p.to_version
            );
            if index > 0 {
                agent.store.remove_staged(&key, index - 1)?;
            }
            Ok(Applied::Staged(new_sha))
        }
        Err(e @ (ApplyError::Missing | ApplyError::Changed { .. })) => {
            // The download vanished (cleaned up by hand?) or is not what was downloaded (a bad
            // disk): fetch it again, as an attempt of its own.
            log::warn!("{key}: update {}: {e}; downloading it again", p.id);
            fetch_again(agent, &key, index).map(Applied::Elsewhere)
        }
        Err(ApplyError::Patch(patch::PatchError::Stopped)) => Err(CycleError::Stopped),
        Err(ApplyError::Store(e)) => Err(e.into()),
        Err(ApplyError::NoSpace { needed, free }) => Err(CycleError::NoSpace {
            place: super::IN_STATE_DIR,
            needed,
            free,
        }),
        Err(ApplyError::Patch(e)) => {
            if let Some(changed) = base_changed(agent).await? {
                return Ok(changed);
            }
            let reason = format!("update {} does not apply: {}", p.id, crate::error_chain(&e));
            if p.signed.is_some() && !base_checked(agent, &key, index, p) {
                let next = super::identify::by_signatures(agent, pkg, update, &reason)?;
                return Ok(Applied::Elsewhere(next));
            }
            // No length was announced for it anywhere (no Content-Length, no HEAD, no
            // signature): a cut connection looks like the end of the body, so a patch that does
            // not apply proves nothing. Fetched again, as an attempt of its own; it fails for
            // good once `download_attempts` are used up.
            let limit = agent.config.agent.download_attempts;
            if p.size.is_none() && p.signed.is_none() && p.attempts + 1 < limit {
                log::warn!(
                    "{key}: {reason}; no length was announced for it, so it may have been cut: downloading it again"
                );
                return fetch_again(agent, &key, index).map(Applied::Elsewhere);
            }
            log::error!("{key}: {reason}");
            Ok(Applied::Bad(Failure { index, reason }))
        }
    }
}

/// Whether the installed file is still the one the chain starts from. Asked before the first
/// patch is applied, and again before what it did becomes a verdict on it: a file that changed
/// while it was read proves nothing about the patch.
async fn still_the_base(agent: &Agent, pkg: &Package, from: &str) -> Result<bool, CycleError> {
    let found = sha256_file_async(&pkg.path, &agent.shutdown).await?;
    Ok(found.as_deref() == Some(from))
}

/// Drops the download of patch `index`, to be fetched again as an attempt of its own.
fn fetch_again(agent: &mut Agent, key: &str, index: usize) -> Result<Transition, CycleError> {
    let p = &mut agent.update_mut(key).patches[index];
    p.sha256 = None;
    p.durable = 0;
    p.validator = None;
    p.attempts += 1;
    agent.save()?;
    Ok(Transition::Download)
}

/// Whether patch `index` failed on a file known to be its base, which proves the patch bad
/// (rule 3's final `2`). A later patch's base is the result the one before made and checked; the
/// first one's is the installed file, known when something verified its version or the
/// vendor signed the base (format 3). Otherwise a good patch may have met the wrong file.
fn base_checked(agent: &Agent, key: &str, index: usize, p: &crate::store::PatchState) -> bool {
    if p.signed.as_ref().is_some_and(|s| s.from_sha256.is_some()) {
        return true;
    }
    let update = agent.update(key);
    match index {
        0 => agent.state.packages[key].source.is_verified(),
        // The result of the patch before, checked against its signature, or made from a base
        // that was known (applied, without a signature, to a guess it is a guess too).
        k => {
            let before = &update.patches[k - 1];
            before.signed.is_some() || base_checked(agent, key, k - 1, before)
        }
    }
}

/// Whether the staging file of an earlier apply still holds what it held then (a wait may have
/// lasted hours, with restarts and power cuts).
async fn staged_is(agent: &Agent, key: &str, staged: &StagedResult) -> bool {
    let Ok(file) = agent.store.open_staged(key, staged.applied - 1) else {
        return false;
    };
    let stop = agent.shutdown.clone();
    let found =
        tokio::task::spawn_blocking(move || crate::managed::sha256_until(file, &|| stop.is_set()))
            .await;
    matches!(found, Ok(Ok(Some(sha))) if sha == staged.sha256)
}

#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error("the downloaded patch is missing")]
    Missing,
    #[error("the downloaded patch has sha256 {found}, not the {recorded} recorded at download")]
    Changed { recorded: String, found: String },
    #[error("not enough space for the patched file")]
    NoSpace { needed: u64, free: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Patch(#[from] patch::PatchError),
}

/// Applies patch `index` to the installed file (index 0) or to the previous staging file.
///
/// The work runs on a blocking thread: a large patch takes a while on a small board, and the
/// daemon's watchdog keeps being fed meanwhile.
async fn apply_one(
    agent: &Agent,
    pkg: &Package,
    index: usize,
) -> Result<(String, u64), ApplyError> {
    let key = pkg.key();
    let update = agent.update(&key);
    let p = &update.patches[index];
    let id = &p.id;
    let old = if index == 0 {
        std::fs::File::open(&pkg.path).map_err(io_err("open", &pkg.path.display().to_string()))?
    } else {
        agent.store.open_staged(&key, index - 1)?
    };
    let patch_file = agent
        .store
        .open_patch(&key, id)?
        .ok_or(ApplyError::Missing)?;
    let recorded = p.sha256.clone().unwrap_or_default();
    // The new version goes to the state directory's file system and then beside the managed
    // file. Larger than the managed file's whole file system, no robot can hold it: a bad
    // patch. Larger than the room in the state directory (even its whole file system, which
    // the robot's builder chose), a full disk: `3`, and the chain waits for room.
    let disk = crate::managed::total_space(&pkg.path).map_or(u64::MAX, |beside| beside);
    let room = agent.store.free_space()?;
    let out = agent.store.create_staged(&key, index)?;
    let shutdown = agent.shutdown.clone();
    let notifier = agent.notifier.clone();
    let work = move || -> Result<(String, u64), ApplyError> {
        // The patch is read from its file in pieces, never whole: a patch may be hundreds of
        // MiB, a robot's memory is not. It is the file the download step hashed, or nothing.
        let found = crate::managed::sha256_until(&patch_file, &|| shutdown.is_set())
            .map_err(io_err("read", "patch"))?
            .ok_or(ApplyError::Patch(patch::PatchError::Stopped))?;
        if found != recorded {
            return Err(ApplyError::Changed { recorded, found });
        }
        let source = patch::FileSource::new(patch_file).map_err(io_err("stat", "patch"))?;
        // The limits keep a hostile header from filling the disk, too.
        let promised = patch::header(&source)?.new_size;
        if promised > disk {
            return Err(ApplyError::Patch(patch::PatchError::TooLarge {
                promised,
                limit: disk,
            }));
        }
        if promised > room {
            return Err(ApplyError::NoSpace {
                needed: promised,
                free: room,
            });
        }
        let old = patch::FileSource::new(old).map_err(io_err("stat", "the file to patch"))?;
        let mut writer = HashingWriter {
            inner: BufWriter::with_capacity(patch::WRITE_BUFFER, out),
            hasher: Sha256::new(),
            written: 0,
            failed: None,
        };
        // Asked every few controls: it proves to the watchdog that the work moves, and lets a
        // SIGTERM stop it within moments.
        let stop = || {
            notifier.alive();
            shutdown.is_set()
        };
        if let Err(e) = patch::apply_until(&old, &source, &mut writer, room, &stop) {
            // A write that failed (ENOSPC, EFBIG) is the disk's fault, not the patch's.
            return Err(match (writer.failed.take(), e) {
                (Some(source), _) => ApplyError::Store(io_err("write", "staging file")(source)),
                // The machine's fault, not the patch's: tried again at the next cycle.
                (None, patch::PatchError::Threads(source)) => {
                    ApplyError::Store(io_err("start threads for", "the patch")(source))
                }
                // A file that cannot be read, or changes while it is, proves nothing about the
                // patch: tried again at the next cycle, after the file's hash is checked again.
                (None, patch::PatchError::OldFile(source)) => {
                    ApplyError::Store(io_err("read", "the file to patch")(source))
                }
                (None, e) => e.into(),
            });
        }
        writer
            .inner
            .flush()
            .map_err(io_err("write", "staging file"))?;
        Ok((hex(&writer.hasher.finalize()), writer.written))
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn io_err(op: &'static str, what: &str) -> impl FnOnce(std::io::Error) -> StoreError + use<> {
    let path = what.to_owned();
    move |source| StoreError::Io {
        op,
        path: path.into(),
        source,
    }
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
    /// The error of a write that failed, kept apart from errors of the patch itself.
    failed: Option<std::io::Error>,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.inner.write(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.written += n as u64;
                Ok(n)
            }
            Err(e) => {
                let kind = e.kind();
                self.failed = Some(e);
                Err(kind.into())
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
