//! Wait: an update that a `pre_download` or `pre_install` hook deferred, or whose install window
//! is closed, keeps what it downloaded and staged, and is tried again soon: after `defer_retry`
//! for a deferral, when the window opens for an install. A deferral that lasts `defer_timeout`
//! ends the update with `3` (not updated yet), so that the server may offer it again later.
//!
//! Waiting is not failing: it counts toward neither `max_failed_cycles` nor a back-off.

use std::time::Duration;

use super::{Agent, CycleError, Deadline, Outcome, Step, all_codes, code};
use crate::config::Package;
use crate::schedule::human;
use crate::store::Waiting;
use crate::unix_now;

/// A hook asked to wait (`problem` says how): the update is tried again after `defer_retry`, or
/// ends once it has been deferred for `defer_timeout`.
pub(super) fn defer(
    agent: &mut Agent,
    pkg: &Package,
    hook: &'static str,
    problem: &str,
) -> Result<Step, CycleError> {
    let key = pkg.key();
    let now = unix_now();
    let timeout = agent.config.agent.defer_timeout.0;
    let update = agent.update_mut(&key);
    let since = *update.deferred_since_unix.get_or_insert(now);
    match Deadline::of(since, now, timeout) {
        Deadline::Running => {}
        Deadline::Restart => update.deferred_since_unix = Some(now),
        Deadline::Passed => {
            let ids = update.ids();
            log::warn!(
                "{key}: {problem}; the update was deferred for more than {} (defer_timeout), so it ends as not updated",
                human(timeout)
            );
            agent.finish(pkg, &all_codes(&ids, code::NOT_UPDATED), None)?;
            return Ok(Step::Report(Outcome::Deferred));
        }
    }
    let retry = agent.config.agent.defer_retry.0;
    let retry_in = retry + random_up_to(retry / 5);
    let ids = agent.update_mut(&key).ids().join(", ");
    let reason = format!("update {ids} deferred by the {hook} hook");
    log::warn!(
        "{key}: {problem}; {reason}, trying again in {}",
        human(retry_in)
    );
    let step = wait(agent, &key, reason.clone(), retry_in)?;
    let ids = agent.update_mut(&key).ids();
    agent.events.deferred(
        &key,
        &ids,
        &reason,
        unix_now().saturating_add(retry_in.as_secs()),
    );
    Ok(step)
}

/// How long until an install window opens; zero when one is open or none is configured.
pub(super) fn until_window(agent: &Agent) -> Duration {
    let windows = &agent.config.agent.install_window;
    if windows.is_empty() {
        return Duration::ZERO;
    }
    let (minute, second) = crate::window::local_minute(unix_now());
    crate::window::wait(windows, minute, second)
}

/// The install window is closed: the staged update waits for it to open.
pub(super) fn for_window(
    agent: &mut Agent,
    pkg: &Package,
    opens_in: Duration,
) -> Result<Step, CycleError> {
    let key = pkg.key();
    let ids = agent.update_mut(&key).ids().join(", ");
    let windows = crate::window::describe(&agent.config.agent.install_window);
    let reason = format!("update {ids} is ready and waits for the install window ({windows})");
    log::info!("{key}: {reason}; it opens in {}", human(opens_in));
    let step = wait(agent, &key, reason, opens_in)?;
    let ids = agent.update_mut(&key).ids();
    agent
        .events
        .waiting_for_window(&key, &ids, unix_now().saturating_add(opens_in.as_secs()));
    Ok(step)
}

fn wait(
    agent: &mut Agent,
    key: &str,
    reason: String,
    retry_in: Duration,
) -> Result<Step, CycleError> {
    let until_unix = unix_now().saturating_add(retry_in.as_secs());
    agent.update_mut(key).waiting = Some(Waiting {
        reason: reason.clone(),
        until_unix,
    });
    agent.save()?;
    agent.notifier.status(&format!(
        "{reason}; next try at {}",
        crate::logger::utc(until_unix)
    ));
    Ok(Step::Report(Outcome::Waiting { reason, retry_in }))
}

/// The wait is over (a hook let the update through, the window is open): its facts go, and a
/// later deferral counts `defer_timeout` from its own start.
pub(super) fn end(agent: &mut Agent, key: &str) -> Result<(), CycleError> {
    let update = agent.update_mut(key);
    if update.waiting.is_some() || update.deferred_since_unix.is_some() {
        update.waiting = None;
        update.deferred_since_unix = None;
        agent.save()?;
    }
    Ok(())
}

fn random_up_to(limit: Duration) -> Duration {
    let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(0..=ms))
}
