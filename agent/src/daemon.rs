//! The daemon around the cycle: resume what a restart interrupted, then poll on schedule, back
//! off after failures, and stop at a safe point on SIGTERM. An error never ends the process.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::cycle::{Agent, CycleError, Outcome};
use crate::logger::utc;
use crate::notify::Notifier;
use crate::schedule::{Scheduler, Timing, human};
use crate::store::StoreError;
use crate::{Error, Shutdown, error_chain, unix_now};

/// What one pass over every managed file gave, per package key.
pub type PassResult = Vec<(String, Result<Outcome, CycleError>)>;

impl Agent {
    /// One cycle for every managed file, in config order.
    pub async fn cycle_all(&mut self) -> PassResult {
        let io = crate::io_stats::totals();
        let results = self.cycle_packages(|_, _| true).await;
        log_writes(io);
        results
    }

    /// One cycle for each managed file that `wanted` picks, in config order, until a stop.
    async fn cycle_packages(&mut self, wanted: impl Fn(&Self, &str) -> bool) -> PassResult {
        let mut results = Vec::new();
        for index in 0..self.config.packages.len() {
            let key = self.config.packages[index].key();
            if !wanted(self, &key) {
                continue;
            }
            let result = self.cycle(index).await;
            if let Err(e) = &result {
                log::error!("{key}: {}", error_chain(e));
            }
            let stop = matches!(result, Err(CycleError::Stopped));
            results.push((key, result));
            if stop {
                break;
            }
        }
        results
    }

    /// Finishes what a restart interrupted: updates under way, then callbacks waiting.
    async fn resume_all(&mut self) -> PassResult {
        let io = crate::io_stats::totals();
        let results = self.resume_each().await;
        log_writes(io);
        results
    }

    async fn resume_each(&mut self) -> PassResult {
        let mut results = self
            .cycle_packages(|agent, key| {
                let resumed = agent
                    .state
                    .packages
                    .get(key)
                    .is_some_and(|p| p.update.is_some());
                if resumed {
                    log::info!("{key}: resuming the update a restart interrupted");
                }
                resumed
            })
            .await;
        if !self.state.outbox.is_empty() {
            log::info!(
                "sending {} result(s) that wait in the outbox",
                self.state.outbox.len()
            );
            if let Err(e) = self.drain_outbox().await {
                log::error!("{}", error_chain(&e));
                results.push(("outbox".into(), Err(e)));
            }
        }
        results
    }

    fn last_check(&self) -> Option<u64> {
        self.state
            .packages
            .values()
            .map(|p| p.last_check.as_ref().map(|c| c.at_unix))
            .min()
            .flatten()
    }
}

/// `; N file(s) unidentified ...` when the agent cannot tell some file's version, for the
/// status line systemd shows.
fn unidentified_note(agent: &Agent) -> String {
    let n = agent
        .config
        .packages
        .iter()
        .filter(|p| {
            agent
                .state
                .packages
                .get(&p.key())
                .is_some_and(|ps| ps.unidentified.is_some())
        })
        .count();
    if n == 0 {
        String::new()
    } else {
        format!("; {n} file(s) unidentified, not updated (see ota-agent status)")
    }
}

/// What a pass cost the flash since `before` (see [`crate::io_stats`]).
fn log_writes(before: (u64, u64, u64)) {
    let after = crate::io_stats::totals();
    log::debug!(
        "the pass saved the state {} times ({} bytes) and made {} fsyncs",
        after.0 - before.0,
        after.1 - before.1,
        after.2 - before.2
    );
}

/// Runs until `shutdown`; returns only for a stop or a start-up error.
pub async fn run(
    config: Config,
    mut shutdown: Shutdown,
    notifier: Arc<Notifier>,
) -> Result<(), Error> {
    let ping = notifier.watchdog_interval();
    let Some(mut agent) = open_when_possible(config, &mut shutdown, &notifier, ping).await? else {
        notifier.stopping();
        log::info!("stopping: nothing was started");
        return Ok(());
    };
    agent.events = crate::events::Events::serve(&agent.config.agent.events_socket);
    // The config is valid and the state reconciled: that is what systemd waits for.
    notifier.ready("started");
    let stall = stall_limit(&agent.config);
    log::info!(
        "ota-agent {} started: {} file(s), state in {}",
        env!("CARGO_PKG_VERSION"),
        agent.config.packages.len(),
        agent.config.agent.state_dir.display()
    );
    let mut schedule = Scheduler::new(
        Timing::from_config(&agent.config.agent),
        fastrand::Rng::new(),
    );
    let mut resuming = agent.has_unfinished_work();
    let mut delay = if resuming {
        Duration::ZERO
    } else {
        schedule.first(agent.last_check(), unix_now())
    };
    let mut waiting = false;
    loop {
        if !delay.is_zero() {
            log::info!("next check in {}", human(delay));
            let next = unix_now().saturating_add(delay.as_secs());
            let at = utc(next);
            agent.events.idle(next);
            match schedule.failures() {
                // The wait's own STATUS= line (see `cycle::wait`) says why and until when.
                _ if waiting => {}
                0 => notifier.status(&format!(
                    "idle; next check at {at}{}",
                    unidentified_note(&agent)
                )),
                n => notifier.status(&format!("{n} failure(s) in a row; next try at {at}")),
            }
            if sleep_watched(&notifier, ping, delay, &mut shutdown).await {
                break;
            }
        }
        notifier.alive();
        let results = if resuming {
            watched(&notifier, ping, Some(stall), agent.resume_all()).await
        } else {
            watched(&notifier, ping, Some(stall), agent.cycle_all()).await
        };

        if results
            .iter()
            .any(|(_, r)| matches!(r, Err(CycleError::Stopped)))
            || shutdown.is_set()
        {
            break;
        }
        let errors: Vec<&CycleError> = results
            .iter()
            .filter_map(|(_, r)| r.as_ref().err())
            .collect();
        delay = if errors.is_empty() && resuming {
            // Interrupted work is done; the regular schedule starts as if the agent just started.
            schedule.after(true, None);
            schedule.first(agent.last_check(), unix_now())
        } else {
            let retry_after = errors.iter().filter_map(|e| e.retry_after()).max();
            let d = schedule.after(errors.is_empty(), retry_after);
            if !errors.is_empty() {
                log::warn!(
                    "{} failure(s) in a row; retrying in {}",
                    schedule.failures(),
                    human(d)
                );
            }
            d
        };
        resuming = false;
        // An update that waits (a deferral, a closed install window) is tried again when its
        // wait is over, however long the regular schedule would wait.
        let waits = results.iter().filter_map(|(_, r)| match r {
            Ok(Outcome::Waiting { retry_in, .. }) => Some(*retry_in),
            _ => None,
        });
        if let Some(wait) = waits.min() {
            delay = delay.min(wait.max(crate::schedule::MIN_RETRY));
            waiting = true;
        } else {
            waiting = false;
        }
    }
    notifier.stopping();
    log::info!("stopping: progress is saved");
    Ok(())
}

/// Opens the agent, waiting out a state directory that cannot be written yet (full, read-only,
/// failing): an exit there would only be restarted by systemd into the same failure, and the
/// robot would stop updating with nothing to say why. Systemd is told the agent is up (it is,
/// and feeds the watchdog) and why it waits. `None` for a stop while waiting.
async fn open_when_possible(
    config: Config,
    shutdown: &mut Shutdown,
    notifier: &Arc<Notifier>,
    ping: Option<Duration>,
) -> Result<Option<Agent>, Error> {
    let timing = Timing::from_config(&config.agent);
    let mut schedule = Scheduler::new(timing, fastrand::Rng::new());
    let mut told = false;
    loop {
        let err = match Agent::open(config.clone(), shutdown.clone(), notifier.clone()) {
            Ok(agent) => return Ok(Some(agent)),
            Err(Error::Store(e @ (StoreError::Io { .. } | StoreError::CreateDir { .. }))) => e,
            Err(e) => return Err(e),
        };
        let delay = schedule.after(false, None);
        let problem = error_chain(&err);
        log::error!(
            "cannot start on the state directory: {problem}; trying again in {}",
            human(delay)
        );
        let status = format!("cannot use the state directory: {problem}");
        if told {
            notifier.status(&status);
        } else {
            notifier.ready(&status);
            told = true;
        }
        if sleep_watched(notifier, ping, delay, shutdown).await {
            return Ok(None);
        }
    }
}

/// Makes glibc return large buffers to the system as soon as they are freed. By default it
/// raises its mmap threshold after the first large free, and from then on keeps the patch
/// threads' bzip2 tables and buffers in their arenas' heaps, out of reach of `malloc_trim`:
/// idle RSS after a 64 MiB update measured 13.8 MiB against 4.8 MiB before any update. The
/// patch threads' chunks (`patch::CHUNK`) are at this threshold, so they are mapped too.
///
/// Call it before any other thread starts: glibc documents `mallopt` as not thread-safe.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    {
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        unsafe extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        // SAFETY: mallopt takes no pointers and only sets a tunable of glibc's allocator; it is
        // called (see above) while this is the process's only thread.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 256 * 1024);
        }
    }
}

/// The longest any step may go without showing progress: the longest bounded wait in it (a
/// request, a silent body, a hook and its grace period) and a margin. Past it the work is
/// hung, whatever the event loop does, and the watchdog is no longer fed.
fn stall_limit(config: &Config) -> Duration {
    let hooks = config
        .packages
        .iter()
        .filter_map(|p| p.hook_timeout.map(|t| t.0))
        .chain([config.agent.hook_timeout.0])
        .max()
        .unwrap_or_default();
    let server = &config.server;
    [
        server.request_timeout.0,
        server.read_timeout.0,
        hooks + crate::hooks::GRACE,
    ]
    .into_iter()
    .max()
    .unwrap_or_default()
        + Duration::from_secs(60)
}

/// Sleeps `delay` with the watchdog fed every `ping`; true when a stop came first.
async fn sleep_watched(
    notifier: &Notifier,
    ping: Option<Duration>,
    delay: Duration,
    shutdown: &mut Shutdown,
) -> bool {
    watched(notifier, ping, None, async {
        tokio::select! {
            () = tokio::time::sleep(delay) => false,
            () = shutdown.wait() => true,
        }
    })
    .await
}

/// Drives `work` to its end, sending `WATCHDOG=1` every `every` while it is pending and, when
/// `stall` is given, only while the work showed progress within it (see [`Notifier::alive`]):
/// a hung runtime or a step that hangs stops the pings, and systemd restarts the agent.
async fn watched<F: Future>(
    notifier: &Notifier,
    every: Option<Duration>,
    stall: Option<Duration>,
    work: F,
) -> F::Output {
    let Some(every) = every else {
        return work.await;
    };
    let mut work = std::pin::pin!(work);
    let mut ticker = tokio::time::interval(every);
    let mut warned = false;
    loop {
        tokio::select! {
            biased;
            out = &mut work => return out,
            _ = ticker.tick() => {
                let quiet = notifier.since_alive();
                if stall.is_none_or(|s| quiet < s) {
                    notifier.watchdog();
                } else if !warned {
                    warned = true;
                    log::error!("no progress for {}: no longer feeding the watchdog", human(quiet));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watchdog goes quiet once the work stops showing progress, though the loop that
    /// feeds it still runs: a hung step is a hung agent to systemd.
    #[tokio::test(start_paused = true)]
    async fn the_watchdog_is_fed_only_while_the_work_moves() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        let notifier = Notifier::to_socket(&path, Duration::from_secs(2)).unwrap();
        let pings = std::cell::Cell::new(0);
        // Read as they come, as systemd does: a socket's queue holds only a few datagrams.
        let drain = || {
            let mut buf = [0u8; 64];
            while socket.recv(&mut buf).is_ok() {
                pings.set(pings.get() + 1);
            }
        };
        let every = notifier.watchdog_interval();
        assert_eq!(every, Some(Duration::from_secs(1)));
        notifier.alive();
        // Thirty seconds of work that moves for its first five only.
        let work = async {
            for second in 0..30 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if second < 5 {
                    notifier.alive();
                }
                drain();
            }
        };
        watched(&notifier, every, Some(Duration::from_secs(10)), work).await;
        drain();
        // Fed while it moved and for the stall limit after (about 15 s), not for 30.
        let fed = pings.replace(0);
        assert!((13..=17).contains(&fed), "{fed} pings");
        // Idle waits (no stall limit) are fed throughout.
        let idle = async {
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                drain();
            }
        };
        watched(&notifier, every, None, idle).await;
        assert!(pings.get() >= 29, "{} pings", pings.get());
    }
}
