//! Transfer: one attempt at one patch's body. It resumes the partial file where its validator
//! still holds, streams the rest between `min_download_rate` and `max_download_rate` with
//! checkpoints that make the bytes durable, and holds the whole body to what was announced and
//! signed before it counts as downloaded.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{Agent, CycleError};
use crate::client::{ClientError, Fetch};
use crate::store::{PatchState, Signed, StoreError};

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

/// One attempt at one patch: resume the partial file, stream the rest, hash, make it durable.
pub(super) async fn fetch_one(
    agent: &mut Agent,
    key: &str,
    index: usize,
    patch: &PatchState,
) -> Result<(), CycleError> {
    let mut transfer = open_transfer(agent, key, index, patch).await?;
    receive(agent, key, index, patch, &mut transfer).await?;
    check_body(agent, key, index, patch, transfer)
}

/// A patch download under way: the partial file, how much of it is there, and its hash so far.
struct Transfer {
    out: BufWriter<File>,
    have: u64,
    hasher: Sha256,
    fetch: Fetch,
    bounds: Bounds,
    /// Where this attempt's body started: more than zero for a resumed download.
    started_at: u64,
}

/// What a patch's body may be, from all that the config, the server and the signature said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bounds {
    /// `max_patch_size`.
    max: u64,
    /// The signed patch's size.
    signed: Option<u64>,
    /// The length the server announced anywhere: this answer, the HEAD before it, the signature.
    announced: Option<u64>,
}

impl Bounds {
    /// Why a body of `have` bytes so far is not the patch offered, if it is not: the next
    /// attempt starts over.
    fn overrun(&self, have: u64) -> Option<String> {
        if let Some(signed) = self.signed.filter(|&s| have > s) {
            return Some(format!(
                "the server sent more than the signed {signed} bytes"
            ));
        }
        if have > self.max || self.announced.is_some_and(|t| have > t) {
            // Not the body that was announced (republished since the HEAD?): the next attempt
            // starts over, with no length known.
            return Some(format!(
                "the body is longer than announced ({have} bytes so far)"
            ));
        }
        None
    }

    /// Why a body that ended at `have` bytes is short of what was announced, if it is: the
    /// next attempt resumes it.
    fn short(&self, have: u64) -> Option<String> {
        self.announced
            .filter(|&total| have != total)
            .map(|total| format!("the body ended after {have} of {total} bytes"))
    }
}

/// Opens the partial file and the server's answer for the rest of it: a resume where the
/// validator still holds, else from byte zero.
async fn open_transfer(
    agent: &mut Agent,
    key: &str,
    index: usize,
    patch: &PatchState,
) -> Result<Transfer, CycleError> {
    let max = agent.config.agent.max_patch_size;
    let (mut file, mut have) = agent.store.open_partial(key, &patch.id, patch.durable)?;
    let mut hasher = Sha256::new();
    if have > 0 && patch.validator.is_none() {
        // Without a validator a resumed range could splice two different files.
        have = 0;
        file.set_len(0).map_err(partial_io(&patch.id, "truncate"))?;
    }
    if have > 0 {
        (file, hasher) = hash_partial(agent, &patch.id, file, have).await?;
    }
    let fetch = match agent
        .client
        .fetch(&patch.url, have, patch.validator.as_deref(), patch.size)
        .await
    {
        Ok(f) => f,
        Err(e @ ClientError::Invalid { .. }) => {
            // A range answer that does not match: start this patch over next time.
            let p = &mut agent.update_mut(key).patches[index];
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
    if fetch.total.is_some_and(|t| t > max) {
        return Err(ClientError::TooLarge {
            what: "download",
            limit: max,
        }
        .into());
    }
    let signed = patch.signed.as_ref().map(|s| s.patch_size);
    if let (Some(total), Some(signed)) = (fetch.total, signed) {
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
    let bounds = Bounds {
        max,
        signed,
        announced: fetch.total.or(patch.size).or(signed),
    };
    {
        let p = &mut agent.update_mut(key).patches[index];
        // A 206 carries the validator the range was asked with (the client checked it).
        if fetch.validator.is_some() || fetch.offset == 0 {
            p.validator = fetch.validator.clone();
        }
        p.size = fetch.total.or(p.size);
        p.durable = p.durable.min(have);
    }
    agent.save()?;
    file.set_len(have)
        .map_err(partial_io(&patch.id, "truncate"))?;
    file.seek(SeekFrom::Start(have))
        .map_err(partial_io(&patch.id, "seek"))?;
    Ok(Transfer {
        out: BufWriter::with_capacity(256 * 1024, file),
        have,
        hasher,
        started_at: fetch.offset,
        fetch,
        bounds,
    })
}

/// Hashes the `have` bytes already in the partial file. That can take a while on a robot: off
/// the runtime thread, and given up at a stop.
async fn hash_partial(
    agent: &Agent,
    id: &str,
    mut file: File,
    have: u64,
) -> Result<(File, Sha256), CycleError> {
    let stop = agent.shutdown.clone();
    let work = move || -> std::io::Result<(File, Sha256, bool)> {
        let mut hasher = Sha256::new();
        file.seek(SeekFrom::Start(0))?;
        let done = hash_prefix(&mut file, have, &mut hasher, &|| stop.is_set())?;
        Ok((file, hasher, done))
    };
    let (file, hasher, done) = match tokio::task::spawn_blocking(work).await {
        Ok(done) => done.map_err(partial_io(id, "read"))?,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    if !done {
        return Err(CycleError::Stopped);
    }
    Ok((file, hasher))
}

/// Receives the body to its end: at most `max_download_rate`, at least `min_download_rate`,
/// with a checkpoint at least every second that bytes arrive or stall, and at a stop.
async fn receive(
    agent: &mut Agent,
    key: &str,
    index: usize,
    patch: &PatchState,
    t: &mut Transfer,
) -> Result<(), CycleError> {
    let mut progress = Progress::new(&patch.id, t.have, t.fetch.total);
    log::info!("{}", progress.line(t.have));
    agent.notifier.status(&progress.line(t.have));
    let mut shutdown = agent.shutdown.clone();
    // The stop signal and the checkpoint timer live across chunks: made anew for every chunk,
    // they would cost more than the chunk itself on a fast link.
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut synced = (t.have, Instant::now());
    // How much had arrived when the checkpoint timer last fired.
    let mut tick = t.have;
    let mut next_sync = synced.1 + CHECKPOINT_EVERY;
    let server = &agent.config.server;
    let mut pace = Pace::new(server.min_download_rate, server.read_timeout.0, t.have);
    let mut throttle = server.max_download_rate.map(|r| Throttle::new(r.0));
    let stall = tokio::time::sleep_until(next_sync);
    tokio::pin!(stall);
    loop {
        let chunk = tokio::select! {
            c = t.fetch.chunk() => c,
            () = &mut stop => {
                checkpoint(agent, key, index, &mut t.out, t.have)?;
                return Err(CycleError::Stopped);
            }
            () = &mut stall, if t.have > synced.0 => {
                // A stall (nothing new for a second) is worth a checkpoint at once; a drip
                // (a few bytes every second) waits for enough of them.
                if t.have == tick || checkpoint_due(synced, t.have) {
                    checkpoint(agent, key, index, &mut t.out, t.have)?;
                    synced = (t.have, Instant::now());
                }
                tick = t.have;
                next_sync = Instant::now() + CHECKPOINT_EVERY;
                stall.as_mut().reset(next_sync);
                continue;
            }
        };
        let chunk = match chunk {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(()),
            Err(e) => {
                // Keep every byte that arrived: the next attempt resumes right after them.
                checkpoint(agent, key, index, &mut t.out, t.have)?;
                return Err(e.into());
            }
        };
        t.have += chunk.len() as u64;
        if let Some(reason) = t.bounds.overrun(t.have) {
            start_over(agent, key, index)?;
            let id = patch.id.clone();
            return Err(CycleError::Interrupted { id, reason });
        }
        t.hasher.update(&chunk);
        t.out
            .write_all(&chunk)
            .map_err(partial_io(&patch.id, "write"))?;
        agent.notifier.alive();
        agent.events.progress(key, &patch.id, t.have, t.fetch.total);
        if progress.due(t.have) {
            agent.notifier.status(&progress.line(t.have));
        }
        if let Some(wait) = throttle.as_mut().map(|r| r.take(chunk.len())) {
            if !wait_for_rate(agent, wait, &mut stop).await {
                checkpoint(agent, key, index, &mut t.out, t.have)?;
                return Err(CycleError::Stopped);
            }
        }
        if Instant::now() >= next_sync && checkpoint_due(synced, t.have) {
            checkpoint(agent, key, index, &mut t.out, t.have)?;
            synced = (t.have, Instant::now());
            next_sync = synced.1 + CHECKPOINT_EVERY;
            stall.as_mut().reset(next_sync);
        }
        if let Some(rate) = pace.too_slow(t.have) {
            checkpoint(agent, key, index, &mut t.out, t.have)?;
            return Err(CycleError::Interrupted {
                id: patch.id.clone(),
                reason: format!(
                    "the body arrives at {rate} bytes/s, slower than min_download_rate ({})",
                    agent.config.server.min_download_rate
                ),
            });
        }
    }
}

/// Waits `wait` for `max_download_rate`, in steps of a second, each one progress to the
/// watchdog; false when a stop came first.
async fn wait_for_rate(
    agent: &Agent,
    wait: Duration,
    stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> bool {
    let until = Instant::now() + wait;
    while Instant::now() < until {
        let step = (until - Instant::now()).min(Duration::from_secs(1));
        tokio::select! {
            () = tokio::time::sleep(step) => agent.notifier.alive(),
            () = stop.as_mut() => return false,
        }
    }
    true
}

/// What a whole body's length and hash say against its signature.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The body is the signed patch (or there is no signature to hold it to).
    Good,
    /// The body ended before the signed size, with no length announced: resume it.
    Short { signed: u64 },
    /// Other bytes than the signed ones. A resumed download may have spliced two versions of
    /// the file: it gets one more try from the start (`again`). Wrong bytes from a download
    /// that started at zero, or a second time, are the server's answer.
    Mismatch { again: bool, reason: String },
}

impl Verdict {
    /// `mismatches`: how many bodies of this patch were other bytes before, this one included.
    fn of(have: u64, sha: &str, signed: &Signed, resumed: bool, mismatches: u32) -> Verdict {
        if have < signed.patch_size {
            return Verdict::Short {
                signed: signed.patch_size,
            };
        }
        if sha == signed.patch_sha256 {
            return Verdict::Good;
        }
        Verdict::Mismatch {
            again: resumed && mismatches < 2,
            reason: format!(
                "{have} bytes with sha256 {sha}; signed: {} bytes with sha256 {}",
                signed.patch_size, signed.patch_sha256
            ),
        }
    }
}

/// Checks the body that arrived whole against what was announced and signed, makes it durable
/// and records it as downloaded.
fn check_body(
    agent: &mut Agent,
    key: &str,
    index: usize,
    patch: &PatchState,
    mut t: Transfer,
) -> Result<(), CycleError> {
    let (have, id) = (t.have, patch.id.clone());
    if let Some(reason) = t.bounds.short(have) {
        checkpoint(agent, key, index, &mut t.out, have)?;
        return Err(CycleError::Interrupted { id, reason });
    }
    let file = t
        .out
        .into_inner()
        .map_err(|e| partial_io(&id, "write")(e.into_error()))?;
    crate::io_stats::fsynced();
    file.sync_all().map_err(partial_io(&patch.id, "fsync"))?;
    let sha = crate::managed::hex(&t.hasher.finalize());
    if !is_patch(&file) {
        // A captive portal's page, an error page with a 200: whatever it is, it is not what the
        // server offered. The download failed and starts over; the patch is not judged by it.
        start_over(agent, key, index)?;
        let reason =
            format!("the {have} bytes received are not a bsdiff patch (no BSDIFF40 magic)");
        return Err(CycleError::Interrupted { id, reason });
    }
    if let Some(signed) = &patch.signed {
        let mismatches = patch.mismatches + u32::from(sha != signed.patch_sha256);
        match Verdict::of(have, &sha, signed, t.started_at > 0, mismatches) {
            Verdict::Good => {}
            Verdict::Short { signed } => {
                // The bytes are synced: resume them.
                agent.update_mut(key).patches[index].durable = have;
                agent.save()?;
                let reason = format!("the body ended after {have} of {signed} bytes");
                return Err(CycleError::Interrupted { id, reason });
            }
            Verdict::Mismatch { again, reason } => {
                let p = &mut agent.update_mut(key).patches[index];
                p.durable = 0;
                p.validator = None;
                p.mismatches = mismatches;
                agent.save()?;
                if again {
                    let reason = format!(
                        "the resumed download does not match its signature ({reason}); starting over"
                    );
                    return Err(CycleError::Interrupted { id, reason });
                }
                return Err(CycleError::Unauthentic { id, reason });
            }
        }
    }
    agent.store.complete_partial(key, &patch.id)?;
    log::info!("update {id}: downloaded {have} bytes (sha256 {sha})");
    let p = &mut agent.update_mut(key).patches[index];
    p.sha256 = Some(sha);
    // `size` stays what the server announced, if it announced anything: a body with no length
    // anywhere is judged differently when it does not apply (see the apply step).
    p.durable = have;
    agent.save()?;
    Ok(())
}

/// The error of an I/O operation `op` on the partial download of update `id`, its path made
/// only when there is an error: a write per chunk passes through here.
fn partial_io<'a>(id: &'a str, op: &'static str) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: format!("partial download of update {id}").into(),
        source,
    }
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
    let p = &mut agent.update_mut(key).patches[index];
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
    let id = agent.update(key).patches[index].id.clone();
    out.flush().map_err(partial_io(&id, "write"))?;
    crate::io_stats::fsynced();
    out.get_ref()
        .sync_data()
        .map_err(partial_io(&id, "fsync"))?;
    agent.update_mut(key).patches[index].durable = have;
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

    #[test]
    fn a_body_past_its_signed_or_announced_length_is_an_overrun() {
        let bounds = Bounds {
            max: 1000,
            signed: Some(500),
            announced: Some(500),
        };
        assert_eq!(bounds.overrun(500), None);
        let past_signed = bounds.overrun(501).unwrap();
        assert!(
            past_signed.contains("more than the signed 500 bytes"),
            "{past_signed}"
        );
        let unsigned = Bounds {
            signed: None,
            ..bounds
        };
        let past_announced = unsigned.overrun(501).unwrap();
        assert!(
            past_announced.contains("longer than announced (501 bytes"),
            "{past_announced}"
        );
        // With no length anywhere, only max_patch_size holds it.
        let unknown = Bounds {
            max: 1000,
            signed: None,
            announced: None,
        };
        assert_eq!(unknown.overrun(1000), None);
        assert!(unknown.overrun(1001).is_some());
    }

    #[test]
    fn a_body_short_of_its_announced_length_is_resumed() {
        let bounds = Bounds {
            max: 1000,
            signed: None,
            announced: Some(500),
        };
        assert_eq!(bounds.short(500), None);
        assert_eq!(
            bounds.short(499).as_deref(),
            Some("the body ended after 499 of 500 bytes")
        );
        let unknown = Bounds {
            announced: None,
            ..bounds
        };
        assert_eq!(unknown.short(3), None);
    }

    #[test]
    fn only_a_whole_body_with_other_bytes_is_judged_and_a_resumed_one_gets_one_more_try() {
        let signed = Signed {
            key: "k".into(),
            patch_size: 10,
            patch_sha256: "good".into(),
            result_size: 0,
            result_sha256: String::new(),
            from_sha256: None,
        };
        assert_eq!(Verdict::of(10, "good", &signed, false, 0), Verdict::Good);
        assert_eq!(
            Verdict::of(9, "other", &signed, true, 1),
            Verdict::Short { signed: 10 }
        );
        let again = |resumed, mismatches| match Verdict::of(10, "bad", &signed, resumed, mismatches)
        {
            Verdict::Mismatch { again, reason } => {
                assert!(reason.contains("sha256 bad; signed: 10 bytes"), "{reason}");
                again
            }
            other => panic!("{other:?}"),
        };
        // A resumed download may have spliced two versions: one more try from the start.
        assert!(again(true, 1));
        // From byte zero, or a second time: the server's answer, refused.
        assert!(!again(false, 1));
        assert!(!again(true, 2));
    }
}
