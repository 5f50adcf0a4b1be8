//! Liveness: every accepted update ends in bounded time. A recorded update whose cycles fail
//! `max_failed_cycles` times in a row without progress, or that is older than
//! `update_deadline`, ends with rule 3's results for where it stuck.

use super::{Agent, CycleError, Outcome, Transition, all_codes, chain_codes, install, report};
use super::{BESIDE, IN_STATE_DIR, OnDisk, Room};
use crate::config::Package;
use crate::managed::{InstallError, sha256_file_async};
use crate::store::{ResultCode, Update};
use crate::unix_now;

/// A time before any robot ran this agent: a recorded time before it comes from a clock that
/// had not been set (a board without a clock battery), and means nothing.
pub(crate) const PLAUSIBLE_UNIX: u64 = 1_700_000_000;

/// What `update_deadline` says of an update accepted at `accepted` when the clock says `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// Within the deadline.
    Running,
    /// The recorded time means nothing (unknown, from an unset clock, or in the future after
    /// the clock went back): the deadline starts again from now.
    Restart,
    /// Past the deadline: the update ends.
    Passed,
}

impl Deadline {
    pub fn of(accepted: u64, now: u64, deadline: std::time::Duration) -> Deadline {
        if now < PLAUSIBLE_UNIX {
            // The clock is the one that is wrong: it can tell nothing, and a good record must
            // not be overwritten with its time.
            return Deadline::Running;
        }
        if accepted < PLAUSIBLE_UNIX || accepted > now {
            return Deadline::Restart;
        }
        if now - accepted > deadline.as_secs() {
            Deadline::Passed
        } else {
            Deadline::Running
        }
    }
}

/// What ending a stuck update left to do.
#[derive(Debug)]
enum Ended {
    /// The update ended with its results queued and sent as far as the server took them.
    Reported(Outcome),
    /// Only the stuck patch failed; the ones before it still install, in a cycle of their own.
    PatchFailed,
}

impl Agent {
    /// Runs one cycle for the package at `index` of the config, from wherever its facts say,
    /// and holds a recorded update to its bounds: a cycle that fails without progress counts
    /// toward `max_failed_cycles`, and an update past `update_deadline` or over that count ends.
    pub async fn cycle(&mut self, index: usize) -> Result<Outcome, CycleError> {
        let pkg = self.config.packages[index].clone();
        let key = pkg.key();
        if let Some(outcome) = self.hold_to_deadline(&pkg).await? {
            return Ok(outcome);
        }
        let before = self.pkg_state(&key).update.as_ref().map(Update::progress);
        match self.steps(&pkg).await {
            Err(CycleError::Stopped) => Err(CycleError::Stopped),
            Err(err) => self.count_failure(&pkg, before, err).await,
            ok => ok,
        }
    }

    /// Ends the package's update when it is past `update_deadline`; `Some` when nothing is
    /// left to do in this cycle.
    async fn hold_to_deadline(&mut self, pkg: &Package) -> Result<Option<Outcome>, CycleError> {
        let key = pkg.key();
        let deadline = self.config.agent.update_deadline.0;
        // Once the new file may be in place, the install's own bounded steps (its hooks, a
        // rollback) finish it; the deadline must not cut across them.
        let accepted = self.state.packages[&key]
            .update
            .as_ref()
            .filter(|u| u.install.is_none())
            .map(|u| u.accepted_at_unix);
        let Some(accepted) = accepted else {
            return Ok(None);
        };
        match Deadline::of(accepted, unix_now(), deadline) {
            Deadline::Running => Ok(None),
            Deadline::Restart => {
                self.update_mut(&key).accepted_at_unix = unix_now();
                self.save()?;
                Ok(None)
            }
            Deadline::Passed => {
                let reason = format!(
                    "it was accepted more than {} ago (update_deadline)",
                    crate::schedule::human(deadline)
                );
                match self.end_stuck(pkg, reason, None).await? {
                    Ended::Reported(outcome) => Ok(Some(outcome)),
                    // The patches before the stuck one are still installed, in this cycle.
                    Ended::PatchFailed => Ok(None),
                }
            }
        }
    }

    /// Counts a cycle that failed with `err`: one without progress since `before` counts toward
    /// `max_failed_cycles`, and the count reached ends the update.
    async fn count_failure(
        &mut self,
        pkg: &Package,
        before: Option<u64>,
        err: CycleError,
    ) -> Result<Outcome, CycleError> {
        let key = pkg.key();
        let Some(update) = self.pkg_state(&key).update.as_mut() else {
            return Err(err);
        };
        if update.progress() > before.unwrap_or(0) {
            update.failed_cycles = 0;
        } else if err.is_clock_behind() {
            log::warn!(
                "{key}: a certificate is not valid yet, so the robot's clock ({}) is probably behind; this cycle does not count toward max_failed_cycles",
                crate::logger::utc(unix_now())
            );
            return Err(err);
        } else {
            update.failed_cycles = update.failed_cycles.saturating_add(1);
        }
        let failed = update.failed_cycles;
        self.save()?;
        if failed < self.config.agent.max_failed_cycles {
            return Err(err);
        }
        let reason = format!(
            "{failed} cycles in a row failed without progress (max_failed_cycles); the last: {}",
            crate::error_chain(&err)
        );
        let room = self.room_lacking(pkg, &err);
        match self.end_stuck(pkg, reason, room).await? {
            Ended::Reported(outcome) => Ok(outcome),
            Ended::PatchFailed => Err(err),
        }
    }

    /// The file's sha256, `None` when it is missing or cannot be read; only a stop is an error.
    async fn sha256_or_none(&self, path: &std::path::Path) -> Result<Option<String>, CycleError> {
        match sha256_file_async(path, &self.shutdown).await {
            Ok(sha) => Ok(sha),
            Err(InstallError::Stopped { .. }) => Err(CycleError::Stopped),
            Err(e) => {
                log::warn!("cannot read {}: {}", path.display(), crate::error_chain(&e));
                Ok(None)
            }
        }
    }

    /// The room `err` says the update lacked: a full disk ends it with `3`, never `2`, however
    /// the error came (a write that found no room, as well as the check before it).
    fn room_lacking(&self, pkg: &Package, err: &CycleError) -> Option<Room> {
        match err {
            CycleError::NoSpace { place, needed, .. } => Some(Room::new(place, *needed)),
            // The size a failed write needed is not known: room is "more than there is now".
            CycleError::Install(e) if e.is_full() => {
                let free = crate::managed::free_space(&pkg.path).unwrap_or(0);
                Some(Room::new(BESIDE, free.saturating_add(1)))
            }
            CycleError::Store(e) if e.is_full() => {
                let free = self.store.free_space().unwrap_or(0);
                Some(Room::new(IN_STATE_DIR, free.saturating_add(1)))
            }
            _ => None,
        }
    }

    /// Remembers the room an update that ends for want of it needed, so that the same chain is
    /// not downloaded again until it is there (saved with the results that follow).
    pub(super) fn note_no_room(&mut self, key: &str, ids: &[String], room: Option<Room>) {
        if let Some(room) = room {
            self.pkg_state(key).no_room = Some(crate::store::NoRoom {
                ids: ids.to_vec(),
                needed: room.needed,
                beside: room.beside,
            });
        }
    }

    /// Ends an update that cannot get further, with rule 3's results for where it stuck:
    /// - stuck fetching patch *k* > 0: patch *k* fails (the ones before it still install, at the
    ///   next cycle; [`Ended::PatchFailed`] says the update goes on);
    /// - stuck fetching the first patch: it gets `2`, the rest `3`;
    /// - stuck applying or installing: the previous file stays (or is restored) and the ids get
    ///   `2`, those after a failed patch `3`; for want of space all get `3` (not updated yet,
    ///   so the server may offer them again once there is room, and the same chain is not
    ///   downloaded again before then).
    async fn end_stuck(
        &mut self,
        pkg: &Package,
        reason: String,
        room: Option<Room>,
    ) -> Result<Ended, CycleError> {
        let key = pkg.key();
        let update = self.update(&key).clone();
        let ids = update.ids();
        let usable = update.usable();
        let unfetched = (0..usable).find(|&i| update.patches[i].sha256.is_none());
        if update.install.is_none() {
            match unfetched {
                Some(_) if room.is_some() => {
                    log::error!("{key}: updates {} end: {reason}", ids.join(", "));
                    self.note_no_room(&key, &ids, room);
                    self.finish(pkg, &all_codes(&ids, ResultCode::NotUpdated), None)?;
                    report::run(self).await?;
                    return Ok(Ended::Reported(Outcome::Failed { reason }));
                }
                Some(k) if k > 0 => {
                    let id = &update.patches[k].id;
                    log::error!("{key}: update {id} fails: {reason}");
                    let u = self.update_mut(&key);
                    u.failed = Some(crate::store::Failure {
                        index: k,
                        reason: format!("update {id} fails: {reason}"),
                    });
                    // The patches before it get cycles of their own to install.
                    u.failed_cycles = 0;
                    self.save()?;
                    return Ok(Ended::PatchFailed);
                }
                Some(_) => {
                    log::error!("{key}: update {} fails: {reason}", ids[0]);
                    self.finish(pkg, &chain_codes(&ids, 0, Some(0)), None)?;
                    report::run(self).await?;
                    return Ok(Ended::Reported(Outcome::Failed { reason }));
                }
                None => {}
            }
        }
        log::error!("{key}: updates {} end: {reason}", ids.join(", "));
        let mut installed = None;
        if let Some(marker) = &update.install {
            // The new file may be in place with its install unfinished: the previous one comes
            // back as after a failed health check, post_install included.
            // A file that cannot be read must not keep the update from ending: it counts as
            // not the new version.
            let current = self.sha256_or_none(&pkg.path).await?;
            if marker.rolling_back || current.as_deref() == Some(marker.to_sha256.as_str()) {
                let step =
                    install::roll_back(self, pkg, &update, marker.clone(), reason.clone()).await?;
                report::run(self).await?;
                return Ok(Ended::Reported(match step {
                    Transition::Report(outcome) => outcome,
                    _ => Outcome::Failed { reason },
                }));
            }
            crate::managed::discard_prepared(&pkg.path);
            let now = self.sha256_or_none(&pkg.path).await?;
            let source = self.state.packages[&key].source;
            installed = OnDisk::of(&update, marker, now.as_deref()).known(&update, marker, source);
        }
        let codes: Vec<(String, ResultCode)> = if room.is_some() {
            self.note_no_room(&key, &ids, room);
            all_codes(&ids, ResultCode::NotUpdated)
        } else {
            let failed = update.failed.as_ref().map(|f| f.index);
            ids.iter()
                .enumerate()
                .map(|(i, id)| {
                    let c = if i < usable || failed == Some(i) {
                        ResultCode::Failed
                    } else {
                        ResultCode::NotUpdated
                    };
                    (id.clone(), c)
                })
                .collect()
        };
        self.finish(pkg, &codes, installed)?;
        report::run(self).await?;
        Ok(Ended::Reported(Outcome::Failed { reason }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_survives_a_wrong_clock() {
        let week = std::time::Duration::from_secs(7 * 86_400);
        let now = 1_800_000_000;
        assert_eq!(Deadline::of(now - 3600, now, week), Deadline::Running);
        assert_eq!(Deadline::of(now - 8 * 86_400, now, week), Deadline::Passed);
        // Accepted while the board still thought it was 1970, or "tomorrow" after the clock
        // went back: the recorded time means nothing, and the deadline starts again.
        assert_eq!(Deadline::of(120, now, week), Deadline::Restart);
        assert_eq!(Deadline::of(0, now, week), Deadline::Restart);
        assert_eq!(Deadline::of(now + 86_400, now, week), Deadline::Restart);
        // A clock that was never set judges nothing, and keeps the record as it is.
        assert_eq!(Deadline::of(now, 120, week), Deadline::Running);
    }
}
