//! Wait: an update that a `pre_download` or `pre_install` hook deferred, or whose install window
//! is closed, keeps what it downloaded and staged, and is tried again soon: after `defer_retry`
//! for a deferral, when the window opens for an install. A deferral that lasts `defer_timeout`
//! ends the update with `3` (not updated yet), so that the server may offer it again later.
//!
//! Waiting is not failing: it counts toward neither `max_failed_cycles` nor a back-off.

use std::time::Duration;

use super::{Agent, CycleError, Deadline, Outcome, Transition, all_codes};
use crate::config::Package;
use crate::schedule::{human, random_up_to};
use crate::store::ResultCode;
use crate::store::Waiting;
use crate::unix_now;

/// A hook asked to wait (`problem` says how): the update is tried again after `defer_retry`, or
/// ends once it has been deferred for `defer_timeout`.
pub(super) fn defer(
    agent: &mut Agent,
    pkg: &Package,
    hook: &'static str,
    problem: &str,
) -> Result<Transition, CycleError> {
    let key = pkg.key();
    let now = unix_now();
    let timeout = agent.config.agent.defer_timeout.0;
    let retry = agent.config.agent.defer_retry.0;
    // A clock that was never set cannot tell when defer_timeout is up; the count of retries it
    // would take can (one more, for a restart's retry at once).
    let most = timeout.as_secs() / retry.as_secs().max(1) + 1;
    let update = agent.update_mut(&key);
    update.deferrals = update.deferrals.saturating_add(1);
    let since = *update.deferred_since_unix.get_or_insert(now);
    let by_clock = Deadline::of(since, now, timeout);
    if by_clock == Deadline::Restart {
        update.deferred_since_unix = Some(now);
    }
    let over = by_clock == Deadline::Passed || u64::from(update.deferrals) > most;
    if !over {
        return keep_waiting(agent, &key, hook, problem, retry);
    }
    let ids = update.ids();
    log::warn!(
        "{key}: {problem}; the update was deferred for more than {} (defer_timeout), so it ends as not updated",
        human(timeout)
    );
    agent.finish(pkg, &all_codes(&ids, ResultCode::NotUpdated), None)?;
    Ok(Transition::Report(Outcome::Deferred))
}

/// The update waits for `defer_retry` and up to a fifth more.
fn keep_waiting(
    agent: &mut Agent,
    key: &str,
    hook: &'static str,
    problem: &str,
    retry: Duration,
) -> Result<Transition, CycleError> {
    let retry_in = retry + random_up_to(retry / 5, &mut fastrand::Rng::new());
    let ids = agent.update_mut(key).ids().join(", ");
    let reason = format!("update {ids} deferred by the {hook} hook");
    log::warn!(
        "{key}: {problem}; {reason}, trying again in {}",
        human(retry_in)
    );
    let (step, until_unix) = wait(agent, key, reason.clone(), retry_in)?;
    let ids = agent.update_mut(key).ids();
    agent.events.deferred(key, &ids, &reason, until_unix);
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
) -> Result<Transition, CycleError> {
    let key = pkg.key();
    let ids = agent.update_mut(&key).ids().join(", ");
    let windows = crate::window::describe(&agent.config.agent.install_window);
    let reason = format!("update {ids} is ready and waits for the install window ({windows})");
    log::info!("{key}: {reason}; it opens in {}", human(opens_in));
    let (step, until_unix) = wait(agent, &key, reason, opens_in)?;
    let ids = agent.update_mut(&key).ids();
    agent.events.waiting_for_window(&key, &ids, until_unix);
    Ok(step)
}

/// Records the wait; returns the step and when the wait is over (Unix seconds).
fn wait(
    agent: &mut Agent,
    key: &str,
    reason: String,
    retry_in: Duration,
) -> Result<(Transition, u64), CycleError> {
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
    Ok((
        Transition::Report(Outcome::Waiting { reason, retry_in }),
        until_unix,
    ))
}

/// The wait is over (a hook let the update through, the window is open): its facts go, and a
/// later deferral counts `defer_timeout` from its own start.
pub(super) fn end(agent: &mut Agent, key: &str) -> Result<(), CycleError> {
    let update = agent.update_mut(key);
    if update.waiting.is_some() || update.deferred_since_unix.is_some() {
        update.waiting = None;
        update.deferred_since_unix = None;
        update.deferrals = 0;
        agent.save()?;
    }
    Ok(())
}
