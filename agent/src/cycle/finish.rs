//! Finish: the one place an update ends. What is installed is recorded, every id gets its
//! result in the outbox, and the update's files go, in one atomic write of the state.

use super::{Agent, Known};
use crate::config::Package;
use crate::store::{Callback, InstallState, ResultCode, StoreError, Update, VersionSource};
use crate::unix_now;

impl Agent {
    /// Ends the package's update: records what is installed, queues a callback for every id
    /// and deletes the update's files, all in one atomic write of the state.
    pub(super) fn finish(
        &mut self,
        pkg: &Package,
        codes: &[(String, ResultCode)],
        installed: Option<Known>,
    ) -> Result<(), StoreError> {
        let key = pkg.key();
        let now = unix_now();
        if let Some(known) = installed {
            self.identified(&key, known);
        }
        let ps = self.pkg_state(&key);
        for (id, code) in codes {
            match *code {
                ResultCode::Success => ps.remember_applied(id),
                ResultCode::Failed => ps.remember_failed(id),
                _ => {}
            }
        }
        ps.update = None;
        for (id, code) in codes {
            self.state.outbox.push(Callback {
                package: key.clone(),
                id: id.clone(),
                code: *code,
                queued_at_unix: now,
            });
        }
        // Saved before it is said: a result is a promise, and only a saved one is kept.
        self.save()?;
        self.hooks_passed = None;
        for (id, code) in codes {
            log::info!("{key}: update {id} ends with result {code}");
        }
        self.events.results(&key, codes, now);
        self.store.clear_package(&key)?;
        crate::managed::discard_prepared(&pkg.path);
        Ok(())
    }
}

impl Known {
    /// The new version an install put in place: the agent's own install.
    pub(super) fn installed(marker: &InstallState) -> Known {
        Known {
            version: marker.to_version.clone(),
            sha256: marker.to_sha256.clone(),
            source: VersionSource::Installed,
        }
    }
}

/// Which version the managed file is, of the two an install knows of, by its sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnDisk {
    /// The update's base: the version before the install.
    Base,
    /// The new version the install put in place.
    New,
    /// Neither (or unreadable): changed by someone else, not by a patch.
    Other,
}

impl OnDisk {
    /// A new version with the base's very bytes (the vendor released the same file again) is
    /// the new version: the install is in place, its hooks may have run, and it ends as one.
    pub(super) fn of(update: &Update, marker: &InstallState, sha256: Option<&str>) -> OnDisk {
        if sha256 == Some(marker.to_sha256.as_str()) {
            OnDisk::New
        } else if sha256 == Some(update.from_sha256.as_str()) {
            OnDisk::Base
        } else {
            OnDisk::Other
        }
    }

    /// What is installed after an install that ended: the update's base (known as before,
    /// from `base_source`), the new version (the agent's own install), or neither (`None`: the
    /// next check finds the file changed, and identifies it).
    pub(super) fn known(
        self,
        update: &Update,
        marker: &InstallState,
        base_source: VersionSource,
    ) -> Option<Known> {
        match self {
            OnDisk::Base => Some(Known {
                version: update.from_version.clone(),
                sha256: update.from_sha256.clone(),
                source: base_source,
            }),
            OnDisk::New => Some(Known::installed(marker)),
            OnDisk::Other => None,
        }
    }
}

/// The codes of rule 3: applied ids `1`, the failed one `2`, the ones after it `3`.
pub(super) fn chain_codes(
    ids: &[String],
    applied: usize,
    failed: Option<usize>,
) -> Vec<(String, ResultCode)> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let code = if i < applied {
                ResultCode::Success
            } else if failed == Some(i) {
                ResultCode::Failed
            } else {
                ResultCode::NotUpdated
            };
            (id.clone(), code)
        })
        .collect()
}

pub(super) fn all_codes(ids: &[String], code: ResultCode) -> Vec<(String, ResultCode)> {
    ids.iter().map(|id| (id.clone(), code)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_three_codes() {
        let ids: Vec<String> = ["23", "25", "27"].map(String::from).to_vec();
        let codes = |applied, failed| -> Vec<u8> {
            chain_codes(&ids, applied, failed)
                .into_iter()
                .map(|(_, c)| c.number())
                .collect()
        };
        assert_eq!(codes(3, None), [1, 1, 1]);
        assert_eq!(codes(1, Some(1)), [1, 2, 3]);
        assert_eq!(codes(0, Some(0)), [2, 3, 3]);
        assert_eq!(all_codes(&ids, ResultCode::NotUpdated).len(), 3);
    }
}
