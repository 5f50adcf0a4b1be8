//! When to poll next: the interval with random spread, and exponential back-off with full jitter.
//!
//! Pure functions of their inputs and a random source, so that tests and a fleet simulation
//! can run the agent's own timing without real time passing.

use std::time::Duration;

/// The shortest delay the agent ever waits before a retry, so that a run of failures never spins.
pub const MIN_RETRY: Duration = Duration::from_secs(1);

/// The timing knobs of the poll loop, from the `[agent]` section of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub interval: Duration,
    pub jitter: Duration,
    pub startup_delay: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Exponential back-off with full jitter after failures; without it every retry waits
    /// `retry_base` (only for comparisons, such as the fleet simulation's).
    pub backoff: bool,
}

impl Timing {
    pub fn from_config(agent: &crate::config::Settings) -> Timing {
        Timing {
            interval: agent.poll_interval.0,
            jitter: agent.poll_jitter(),
            startup_delay: agent.startup_delay.0,
            retry_base: agent.retry_base.0,
            retry_max: agent.retry_max.0,
            backoff: true,
        }
    }

    /// The same timing without any spread: no jitter, no start-up delay, no back-off.
    pub fn without_spread(self) -> Timing {
        Timing {
            jitter: Duration::ZERO,
            startup_delay: Duration::ZERO,
            backoff: false,
            ..self
        }
    }
}

/// The daemon's clock work: how long to wait before the first check and after each cycle.
#[derive(Debug)]
pub struct Scheduler {
    timing: Timing,
    failures: u32,
    rng: fastrand::Rng,
}

impl Scheduler {
    pub fn new(timing: Timing, rng: fastrand::Rng) -> Scheduler {
        Scheduler {
            timing,
            failures: 0,
            rng,
        }
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The delay before the first check after start (see [`first_check_delay`]).
    pub fn first(&mut self, last_check_unix: Option<u64>, now_unix: u64) -> Duration {
        let t = self.timing;
        first_check_delay(
            last_check_unix,
            now_unix,
            t.interval,
            t.startup_delay,
            &mut self.rng,
        )
    }

    /// The delay after a cycle: the poll interval with jitter after a success, a back-off after
    /// a failure (at least what the server asked for with `Retry-After`).
    pub fn after(&mut self, ok: bool, retry_after: Option<Duration>) -> Duration {
        let t = self.timing;
        if ok {
            self.failures = 0;
            return poll_delay(t.interval, t.jitter, &mut self.rng);
        }
        self.failures = self.failures.saturating_add(1);
        if !t.backoff {
            return t
                .retry_base
                .max(retry_after.unwrap_or_default().min(t.retry_max));
        }
        backoff_delay(
            self.failures,
            t.retry_base,
            t.retry_max,
            retry_after,
            &mut self.rng,
        )
    }
}

/// The delay until the next regular poll: the interval plus a random part of the jitter.
pub fn poll_delay(interval: Duration, jitter: Duration, rng: &mut fastrand::Rng) -> Duration {
    interval + random_up_to(jitter, rng)
}

/// The delay after `failures` failures in a row (1 for the first): a random point in
/// `[0, min(max, base · 2^(failures-1))]`, never below [`MIN_RETRY`] nor below `retry_after`
/// (which is itself held to `max`, so a server cannot silence the agent for good).
pub fn backoff_delay(
    failures: u32,
    base: Duration,
    max: Duration,
    retry_after: Option<Duration>,
    rng: &mut fastrand::Rng,
) -> Duration {
    let exp = failures.saturating_sub(1).min(32);
    let cap = base.saturating_mul(1u32 << exp.min(31)).min(max);
    random_up_to(cap, rng)
        .max(MIN_RETRY)
        .max(retry_after.unwrap_or_default().min(max))
}

/// The delay before the first check after start: the rest of the poll interval when the last
/// check is recent, otherwise a random delay up to `startup_delay`. A last check in the future
/// says the clock was wrong then or is now (a board without a clock battery): it is not recent.
pub fn first_check_delay(
    last_check_unix: Option<u64>,
    now_unix: u64,
    interval: Duration,
    startup_delay: Duration,
    rng: &mut fastrand::Rng,
) -> Duration {
    if let Some(last) = last_check_unix.filter(|&last| last <= now_unix) {
        let age = Duration::from_secs(now_unix - last);
        if age < interval {
            return interval - age;
        }
    }
    random_up_to(startup_delay, rng)
}

/// A random delay in `[0, limit]`, to the millisecond.
pub(crate) fn random_up_to(limit: Duration, rng: &mut fastrand::Rng) -> Duration {
    let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.u64(0..=ms))
}

/// `6h 2m`, `90s`, `250ms`: a duration as a person reads it in a log line.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..120 => format!("{s}s"),
        120..7200 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn backoff_grows_to_its_cap_and_honours_retry_after() {
        let mut rng = fastrand::Rng::with_seed(7);
        for failures in 1..40 {
            let cap = S(30)
                .saturating_mul(1 << (failures - 1).min(31))
                .min(S(3600));
            for _ in 0..50 {
                let d = backoff_delay(failures, S(30), S(3600), None, &mut rng);
                assert!(
                    d >= MIN_RETRY && d <= cap.max(MIN_RETRY),
                    "{failures}: {d:?}"
                );
            }
        }
        assert!(backoff_delay(1, S(30), S(3600), Some(S(600)), &mut rng) >= S(600));
        assert_eq!(
            backoff_delay(1, S(30), S(3600), Some(S(u64::MAX / 4)), &mut rng),
            S(3600)
        );
        // Full jitter spreads the retries over the whole window.
        let spread: Vec<Duration> = (0..200)
            .map(|_| backoff_delay(8, S(30), S(3600), None, &mut rng))
            .collect();
        assert!(spread.iter().any(|d| *d < S(900)) && spread.iter().any(|d| *d > S(2700)));
    }

    #[test]
    fn poll_and_first_check() {
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..100 {
            let d = poll_delay(S(3600), S(360), &mut rng);
            assert!(d >= S(3600) && d <= S(3960));
        }
        assert_eq!(
            first_check_delay(Some(1000), 1600, S(3600), S(60), &mut rng),
            S(3000)
        );
        assert!(first_check_delay(Some(1000), 9000, S(3600), S(60), &mut rng) <= S(60));
        assert!(first_check_delay(None, 9000, S(3600), S(0), &mut rng).is_zero());
    }

    #[test]
    fn a_last_check_in_the_future_is_not_recent() {
        // The boot clock was a day behind when the agent last checked; now it is right again,
        // or the other way round: either way the next check must not wait a whole interval.
        let mut rng = fastrand::Rng::with_seed(1);
        let now = 1_800_000_000;
        for future in [1, 3600, 86_400, 10 * 365 * 86_400] {
            let d = first_check_delay(Some(now + future), now, S(6 * 3600), S(60), &mut rng);
            assert!(d <= S(60), "last check {future} s ahead: waits {d:?}");
        }
    }

    #[test]
    fn scheduler_backs_off_and_recovers() {
        let timing = Timing {
            interval: S(3600),
            jitter: S(60),
            startup_delay: S(0),
            retry_base: S(10),
            retry_max: S(100),
            backoff: true,
        };
        let mut s = Scheduler::new(timing, fastrand::Rng::with_seed(3));
        for _ in 0..10 {
            assert!(s.after(false, None) <= S(100));
        }
        assert_eq!(s.failures(), 10);
        assert!(s.after(true, None) >= S(3600));
        assert_eq!(s.failures(), 0);
        let mut flat = Scheduler::new(timing.without_spread(), fastrand::Rng::with_seed(3));
        assert_eq!(flat.after(false, None), S(10));
        assert_eq!(flat.after(false, None), S(10));
        assert_eq!(flat.after(true, None), S(3600));
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(S(90)), "90s");
        assert_eq!(human(S(1830)), "30m 30s");
        assert_eq!(human(S(6 * 3600 + 120)), "6h 2m");
    }
}
