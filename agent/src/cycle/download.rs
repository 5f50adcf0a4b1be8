//! Download: fetch the chain's patches in order into the state directory, resuming where a
//! connection cut or a restart left off.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{Agent, CycleError, Outcome, Step, all_codes, code};
use crate::client::ClientError;
use crate::config::Package;
use crate::store::{Failure, PatchState, StoreError};

/// Immediate resumes of one patch within a cycle before the cycle backs off.
const QUICK_RESUMES: u32 = 3;
/// Cycles in a row without room for the chain before its ids are reported "not updated yet".
const SPACE_TRIES: u32 = 3;
/// How often progress is logged (and at every tenth of the patch).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How often the partial file is made durable (an fsync and a state save) while bytes arrive,
/// or while the connection stalls with bytes not yet synced, at the most. More often would cost
/// a fast link more than the download itself.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// How many new bytes make a checkpoint worth its writes: a body that drips would otherwise cost
/// a state save a second for a few bytes each (the flash's wear, over `update_deadline`).
const CHECKPOINT_BYTES: u64 = 64 * 1024;
/// The longest a few new bytes wait for their checkpoint.
const CHECKPOINT_SLOW: Duration = Duration::from_secs(60);

pub(super) async fn run(agent: &mut Agent, pkg: &Package) -> Result<Step, CycleError> {
    let key = pkg.key();
    if let Some(cmd) = &pkg.pre_download {
        let u = update(agent, &key);
        let usable = u.usable();
        if (0..usable).any(|i| u.patches[i].sha256.is_none()) {
            let env =
                super::install::hook_env(pkg, &u.from_version, &u.patches[usable - 1].to_version);
            match super::install::run_hook(agent, pkg, "pre_download", cmd, &env).await {
                Ok(()) => super::wait::end(agent, &key)?,
                Err(crate::hooks::HookError::Stopped { .. }) => return Err(CycleError::Stopped),
                Err(e) => {
                    let problem = crate::error_chain(&e);
                    return super::wait::defer(agent, pkg, "pre_download", &problem);
                }
            }
        }
    }
    let ids = update(agent, &key).ids();
    agent.events.step(&key, crate::events::Step::Download, &ids);
    match check_space(agent, pkg).await {
        Ok(()) => {
            if update(agent, &key).space_failures > 0 {
                update_mut(agent, &key).space_failures = 0;
                agent.save()?;
            }
        }
        Err(e @ CycleError::NoSpace { place, needed, .. }) => {
            let tries = update(agent, &key).space_failures + 1;
            update_mut(agent, &key).space_failures = tries;
            agent.save()?;
            if tries < SPACE_TRIES {
                return Err(e);
            }
            // Give the ids back to the server as "not updated yet" rather than wait forever.
            let reason = crate::error_chain(&e);
            log::error!("{key}: {reason}; giving up on this update for now");
            let ids = update(agent, &key).ids();
            agent.note_no_room(&key, &ids, Some(super::Room::new(place, needed)));
            agent.finish(pkg, &all_codes(&ids, code::NOT_UPDATED), None)?;
            return Ok(Step::Report(Outcome::Failed { reason }));
        }
        Err(e) => return Err(e),
    }
    let count = update(agent, &key).patches.len();
    for index in 0..count {
        // Patches before a failed one are still fetched: they install (rule 3).
        if index >= update(agent, &key).usable() {
            break;
        }
        if update(agent, &key).patches[index].sha256.is_some() {
            continue;
        }
        let mut quick = 0;
        loop {
            let patch = update(agent, &key).patches[index].clone();
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
            let p = &mut update_mut(agent, &key).patches[index];
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
                update_mut(agent, &key).failed = Some(Failure {
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
    Ok(Step::Apply)
}

fn update<'a>(agent: &'a Agent, key: &str) -> &'a crate::store::Update {
    agent.state.packages[key]
        .update
        .as_ref()
        .expect("download runs with an update")
}

fn update_mut<'a>(agent: &'a mut Agent, key: &str) -> &'a mut crate::store::Update {
    agent
        .pkg_state(key)
        .update
        .as_mut()
        .expect("download runs with an update")
}

/// `max_download_rate` as a token bucket: a download may run ahead of the rate by at most a
/// quarter of a second's worth of bytes, so that every 10-second window stays within a few per
/// cent of the rate. The bucket starts empty, so a resumed download gets no head start.
#[derive(Debug)]
struct Throttle {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Throttle {
    fn new(rate: u64) -> Throttle {
        let rate = rate as f64;
        Throttle {
            rate,
            burst: rate / 4.0,
            tokens: 0.0,
            at: Instant::now(),
        }
    }

    /// Takes `bytes` that just arrived; returns how long to wait before reading more.
    fn take(&mut self, bytes: usize) -> Duration {
        let now = Instant::now();
        let earned = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.at = now;
        self.tokens = (self.tokens + earned).min(self.burst) - bytes as f64;
        if self.tokens >= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(-self.tokens / self.rate)
    }
}

/// Refuses to start when the whole chain and the files made from it cannot fit in the state
/// directory, or the new file beside the managed one.
async fn check_space(agent: &mut Agent, pkg: &Package) -> Result<(), CycleError> {
    let key = pkg.key();
    let mut needed: u64 = 0;
    // One HEAD that fails is enough for a cycle: a host where they hang would otherwise hold
    // the cycle for a request timeout per patch.
    let mut heads = true;
    for index in 0..update(agent, &key).usable() {
        agent.notifier.alive();
        let p = update(agent, &key).patches[index].clone();
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
                update_mut(agent, &key).failed = Some(Failure { index, reason });
                break;
            }
            update_mut(agent, &key).patches[index].size = Some(size);
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
    let u = update(agent, &key);
    let result = u.patches[..u.usable()]
        .iter()
        .rev()
        .find_map(|p| p.signed.as_ref().map(|s| s.result_size))
        .unwrap_or(file_size);
    let beside = crate::install::free_space(&pkg.path)?;
    if result > beside {
        return Err(CycleError::NoSpace {
            place: super::BESIDE,
            needed: result,
            free: beside,
        });
    }
    Ok(())
}

/// One attempt at one patch: resume the partial file, stream the rest, hash, make it durable.
async fn fetch_one(
    agent: &mut Agent,
    key: &str,
    index: usize,
    patch: &PatchState,
) -> Result<(), CycleError> {
    let max = agent.config.agent.max_patch_size;
    let (mut file, mut have) = agent.store.open_partial(key, &patch.id, patch.durable)?;
    let io = |op| {
        move |source| StoreError::Io {
            op,
            path: format!("partial download of update {}", patch.id).into(),
            source,
        }
    };
    let mut hasher = Sha256::new();
    if have > 0 && patch.validator.is_none() {
        // Without a validator a resumed range could splice two different files.
        have = 0;
        file.set_len(0).map_err(io("truncate"))?;
    }
    if have > 0 {
        // Hashing what is already there can take a while on a robot: off the runtime thread,
        // and given up at a stop.
        let stop = agent.shutdown.clone();
        let work = move || -> std::io::Result<(File, Sha256, bool)> {
            file.seek(SeekFrom::Start(0))?;
            let done = hash_prefix(&mut file, have, &mut hasher, &|| stop.is_set())?;
            Ok((file, hasher, done))
        };
        let done;
        (file, hasher, done) = match tokio::task::spawn_blocking(work).await {
            Ok(done) => done.map_err(io("read"))?,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        if !done {
            return Err(CycleError::Stopped);
        }
    }
    let mut fetch = match agent
        .client
        .fetch(&patch.url, have, patch.validator.as_deref(), patch.size)
        .await
    {
        Ok(f) => f,
        Err(e @ ClientError::Invalid { .. }) => {
            // A range answer that does not match: start this patch over next time.
            let p = &mut update_mut(agent, key).patches[index];
            p.durable = 0;
            p.validator = None;
            agent.save()?;
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    if fetch.offset == 0 && have > 0 {
        log::info!(
            "update {}: the server sent the whole patch again; starting over",
            patch.id
        );
        have = 0;
        hasher = Sha256::new();
    }
    if let Some(total) = fetch.total {
        if total > max {
            return Err(ClientError::TooLarge {
                what: "download",
                limit: max,
            }
            .into());
        }
    }
    let signed_size = patch.signed.as_ref().map(|s| s.patch_size);
    if let (Some(total), Some(signed)) = (fetch.total, signed_size) {
        if total != signed {
            // Something else answers for the patch (a captive portal, a proxy's error page):
            // a failed download to try again, not a verdict on the patch.
            start_over(agent, key, index)?;
            return Err(CycleError::Interrupted {
                id: patch.id.clone(),
                reason: format!(
                    "the server's answer is {total} bytes, the signed patch is {signed}"
                ),
            });
        }
    }
    // The length the server announced anywhere: this answer, the HEAD before it, the signature.
    let announced = fetch.total.or(patch.size).or(signed_size);
    let started_at = fetch.offset;
    {
        let p = &mut update_mut(agent, key).patches[index];
        // A 206 carries the validator the range was asked with (the client checked it).
        if fetch.validator.is_some() || fetch.offset == 0 {
            p.validator = fetch.validator.clone();
        }
        p.size = fetch.total.or(p.size);
        p.durable = p.durable.min(have);
    }
    agent.save()?;
    file.set_len(have).map_err(io("truncate"))?;
    file.seek(SeekFrom::Start(have)).map_err(io("seek"))?;
    let mut out = BufWriter::with_capacity(256 * 1024, file);
    let mut progress = Progress::new(&patch.id, have, fetch.total);
    log::info!("{}", progress.line(have));
    agent.notifier.status(&progress.line(have));
    let mut shutdown = agent.shutdown.clone();
    // The stop signal and the checkpoint timer live across chunks: made anew for every chunk,
    // they would cost more than the chunk itself on a fast link.
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut synced = (have, Instant::now());
    // How much had arrived when the checkpoint timer last fired.
    let mut tick = have;
    let mut next_sync = synced.1 + CHECKPOINT_EVERY;
    let mut pace = Pace::new(
        agent.config.server.min_download_rate,
        agent.config.server.read_timeout.0,
        have,
    );
    let mut throttle = agent
        .config
        .server
        .max_download_rate
        .map(|r| Throttle::new(r.0));
    let stall = tokio::time::sleep_until(next_sync);
    tokio::pin!(stall);
    loop {
        let chunk = tokio::select! {
            c = fetch.chunk() => c,
            () = &mut stop => {
                checkpoint(agent, key, index, &mut out, have)?;
                return Err(CycleError::Stopped);
            }
            () = &mut stall, if have > synced.0 => {
                // A stall (nothing new for a second) is worth a checkpoint at once; a drip
                // (a few bytes every second) waits for enough of them.
                if have == tick || checkpoint_due(synced, have) {
                    checkpoint(agent, key, index, &mut out, have)?;
                    synced = (have, Instant::now());
                }
                tick = have;
                next_sync = Instant::now() + CHECKPOINT_EVERY;
                stall.as_mut().reset(next_sync);
                continue;
            }
        };
        let chunk = match chunk {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                // Keep every byte that arrived: the next attempt resumes right after them.
                checkpoint(agent, key, index, &mut out, have)?;
                return Err(e.into());
            }
        };
        have += chunk.len() as u64;
        if let Some(signed) = signed_size.filter(|&s| have > s) {
            start_over(agent, key, index)?;
            return Err(CycleError::Interrupted {
                id: patch.id.clone(),
                reason: format!("the server sent more than the signed {signed} bytes"),
            });
        }
        if have > max || announced.is_some_and(|t| have > t) {
            // Not the body that was announced (republished since the HEAD?): the next attempt
            // starts over, with no length known.
            start_over(agent, key, index)?;
            return Err(CycleError::Interrupted {
                id: patch.id.clone(),
                reason: format!("the body is longer than announced ({have} bytes so far)"),
            });
        }
        hasher.update(&chunk);
        out.write_all(&chunk).map_err(io("write"))?;
        agent.notifier.alive();
        agent.events.progress(key, &patch.id, have, fetch.total);
        if progress.due(have) {
            agent.notifier.status(&progress.line(have));
        }
        if let Some(wait) = throttle.as_mut().map(|t| t.take(chunk.len())) {
            // In steps of a second, each one progress to the watchdog, and a stop cuts it short.
            let until = Instant::now() + wait;
            while Instant::now() < until {
                let step = (until - Instant::now()).min(Duration::from_secs(1));
                tokio::select! {
                    () = tokio::time::sleep(step) => agent.notifier.alive(),
                    () = &mut stop => {
                        checkpoint(agent, key, index, &mut out, have)?;
                        return Err(CycleError::Stopped);
                    }
                }
            }
        }
        if Instant::now() >= next_sync && checkpoint_due(synced, have) {
            checkpoint(agent, key, index, &mut out, have)?;
            synced = (have, Instant::now());
            next_sync = synced.1 + CHECKPOINT_EVERY;
            stall.as_mut().reset(next_sync);
        }
        if let Some(rate) = pace.too_slow(have) {
            checkpoint(agent, key, index, &mut out, have)?;
            return Err(CycleError::Interrupted {
                id: patch.id.clone(),
                reason: format!(
                    "the body arrives at {rate} bytes/s, slower than min_download_rate ({})",
                    agent.config.server.min_download_rate
                ),
            });
        }
    }
    if let Some(total) = announced {
        if have != total {
            checkpoint(agent, key, index, &mut out, have)?;
            return Err(CycleError::Interrupted {
                id: patch.id.clone(),
                reason: format!("the body ended after {have} of {total} bytes"),
            });
        }
    }
    let file = out.into_inner().map_err(|e| io("write")(e.into_error()))?;
    crate::io_stats::fsynced();
    file.sync_all().map_err(io("fsync"))?;
    let sha = crate::install::hex(&hasher.finalize());
    if !is_patch(&file) {
        // A captive portal's page, an error page with a 200: whatever it is, it is not what the
        // server offered. The download failed and starts over; the patch is not judged by it.
        start_over(agent, key, index)?;
        return Err(CycleError::Interrupted {
            id: patch.id.clone(),
            reason: format!("the {have} bytes received are not a bsdiff patch (no BSDIFF40 magic)"),
        });
    }
    if let Some(signed) = &patch.signed {
        if have < signed.patch_size {
            // A body that just ended early (no length was announced; the bytes are synced):
            // resume it.
            update_mut(agent, key).patches[index].durable = have;
            agent.save()?;
            return Err(CycleError::Interrupted {
                id: patch.id.clone(),
                reason: format!("the body ended after {have} of {} bytes", signed.patch_size),
            });
        }
        if sha != signed.patch_sha256 {
            // A resumed download may have spliced two versions of the file: it gets one more try
            // from the start. Wrong bytes from a download that started at zero, or a second time,
            // are the server's answer, and are refused.
            let p = &mut update_mut(agent, key).patches[index];
            p.durable = 0;
            p.validator = None;
            p.mismatches += 1;
            let again = started_at > 0 && p.mismatches < 2;
            agent.save()?;
            let reason = format!(
                "{have} bytes with sha256 {sha}; signed: {} bytes with sha256 {}",
                signed.patch_size, signed.patch_sha256
            );
            if again {
                return Err(CycleError::Interrupted {
                    id: patch.id.clone(),
                    reason: format!(
                        "the resumed download does not match its signature ({reason}); starting over"
                    ),
                });
            }
            return Err(CycleError::Unauthentic {
                id: patch.id.clone(),
                reason,
            });
        }
    }
    agent.store.complete_partial(key, &patch.id)?;
    log::info!(
        "update {}: downloaded {have} bytes (sha256 {sha})",
        patch.id
    );
    let p = &mut update_mut(agent, key).patches[index];
    p.sha256 = Some(sha);
    // `size` stays what the server announced, if it announced anything: a body with no length
    // anywhere is judged differently when it does not apply (see the apply step).
    p.durable = have;
    agent.save()?;
    Ok(())
}

/// Whether the bytes that arrived since the last checkpoint (`synced`: length and time) are
/// worth one: a second after it at the soonest, and with enough of them, or after a long while.
fn checkpoint_due(synced: (u64, Instant), have: u64) -> bool {
    let since = synced.1.elapsed();
    have > synced.0
        && since >= CHECKPOINT_EVERY
        && (have - synced.0 >= CHECKPOINT_BYTES || since >= CHECKPOINT_SLOW)
}

/// True when the file starts like a bsdiff 4.x patch.
fn is_patch(file: &File) -> bool {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 8];
    file.read_exact_at(&mut magic, 0).is_ok() && &magic == b"BSDIFF40"
}

/// Forgets the partial download of patch `index`: the next attempt starts at byte zero.
fn start_over(agent: &mut Agent, key: &str, index: usize) -> Result<(), CycleError> {
    let p = &mut update_mut(agent, key).patches[index];
    p.durable = 0;
    p.validator = None;
    p.size = None;
    agent.save()?;
    Ok(())
}

/// Holds a body to `min_download_rate`: every window of `read_timeout`, the bytes that
/// arrived in it must make the rate. reqwest's read timeout restarts at every byte, so a server
/// that drips would otherwise hold the agent for weeks.
struct Pace {
    min_rate: u64,
    window: Duration,
    started: Instant,
    at_start: u64,
}

impl Pace {
    fn new(min_rate: u64, window: Duration, have: u64) -> Pace {
        Pace {
            min_rate,
            window,
            started: Instant::now(),
            at_start: have,
        }
    }

    /// The rate of the window that just ended, when it was too slow.
    fn too_slow(&mut self, have: u64) -> Option<u64> {
        let elapsed = self.started.elapsed();
        if elapsed < self.window {
            return None;
        }
        let rate = ((have - self.at_start) as f64 / elapsed.as_secs_f64()) as u64;
        (self.started, self.at_start) = (Instant::now(), have);
        (rate < self.min_rate).then_some(rate)
    }
}

/// Hashes the first `len` bytes of `file`; false when `stop` said so before the end.
fn hash_prefix(
    file: &mut File,
    len: u64,
    hasher: &mut Sha256,
    stop: &dyn Fn() -> bool,
) -> std::io::Result<bool> {
    let mut limited = file.take(len);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        if stop() {
            return Ok(false);
        }
        let n = limited.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        hasher.update(&buf[..n]);
    }
}

/// Makes what was written so far durable and records its length as a fact.
fn checkpoint(
    agent: &mut Agent,
    key: &str,
    index: usize,
    out: &mut BufWriter<File>,
    have: u64,
) -> Result<(), CycleError> {
    let io = |op| {
        move |source| StoreError::Io {
            op,
            path: "partial download".into(),
            source,
        }
    };
    out.flush().map_err(io("write"))?;
    crate::io_stats::fsynced();
    out.get_ref().sync_data().map_err(io("fsync"))?;
    update_mut(agent, key).patches[index].durable = have;
    agent.save()?;
    Ok(())
}

/// Logs percent and rate at least every 10 % or 5 s.
struct Progress {
    id: String,
    total: Option<u64>,
    started: Instant,
    start_bytes: u64,
    last_log: Instant,
    last_tenth: u64,
}

impl Progress {
    fn new(id: &str, have: u64, total: Option<u64>) -> Progress {
        let now = Instant::now();
        Progress {
            id: id.to_owned(),
            total,
            started: now,
            start_bytes: have,
            last_log: now,
            last_tenth: total.map_or(0, |t| tenth(have, t)),
        }
    }

    fn due(&mut self, have: u64) -> bool {
        let now = Instant::now();
        let tenth_now = self.total.map_or(0, |t| tenth(have, t));
        if now.duration_since(self.last_log) < PROGRESS_EVERY && tenth_now == self.last_tenth {
            return false;
        }
        self.last_log = now;
        self.last_tenth = tenth_now;
        log::info!("{}", self.line(have));
        true
    }

    /// `update 23: downloaded 45% (… of … bytes, … KiB/s)`, for the log and systemd's status.
    fn line(&self, have: u64) -> String {
        let secs = Instant::now()
            .duration_since(self.started)
            .as_secs_f64()
            .max(0.001);
        let rate = (have - self.start_bytes) as f64 / secs / 1024.0;
        match self.total {
            Some(t) if t > 0 => format!(
                "update {}: downloaded {}% ({have} of {t} bytes, {rate:.0} KiB/s)",
                self.id,
                have * 100 / t
            ),
            _ => format!(
                "update {}: downloaded {have} bytes ({rate:.0} KiB/s)",
                self.id
            ),
        }
    }
}

fn tenth(have: u64, total: u64) -> u64 {
    have.saturating_mul(10).checked_div(total).unwrap_or(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link much faster than the cap, read as fast as the throttle lets it: over every
    /// 10-second window the bytes stay within 10 % of the rate.
    #[tokio::test(start_paused = true)]
    async fn the_throttle_holds_every_ten_second_window_to_the_rate() {
        let rate = 512 * 1024;
        let mut throttle = Throttle::new(rate);
        let start = Instant::now();
        let mut arrivals = Vec::new();
        let mut chunk_len = 1usize;
        while start.elapsed() < Duration::from_secs(60) {
            // Chunks of every size from a byte to 64 KiB, as a real connection delivers them.
            chunk_len = chunk_len * 7 % 65_536 + 1;
            arrivals.push((start.elapsed(), chunk_len as u64));
            let wait = throttle.take(chunk_len);
            tokio::time::sleep(wait).await;
        }
        let total: u64 = arrivals.iter().map(|a| a.1).sum();
        assert!(total > rate * 55, "only {total} bytes in 60 s");
        for from in 0..50 {
            let from = Duration::from_secs(from);
            let to = from + Duration::from_secs(10);
            let bytes: u64 = arrivals
                .iter()
                .filter(|(t, _)| *t >= from && *t < to)
                .map(|a| a.1)
                .sum();
            assert!(
                bytes as f64 <= rate as f64 * 10.0 * 1.1,
                "{bytes} bytes in the 10 s from {from:?}"
            );
        }
        // A new throttle (a resumed download) starts without credit.
        let mut fresh = Throttle::new(rate);
        assert!(fresh.take(65_536) >= Duration::from_millis(120));
    }
}
