//! Start-up: the state as loaded is reconciled with the config before any cycle runs.

use super::Agent;
use crate::config::Package;
use crate::store::{PackageState, StoreError, VersionSource};

impl Agent {
    /// Adds packages seen for the first time, takes up a corrected version from the config,
    /// and drops files no update needs any more. The facts of a file no longer configured are
    /// kept (not acted on), so that configuring it again cannot make the agent forget its
    /// version and the updates it applied. After a lost state (`lost`), every package is seen
    /// for the first time again, and the config's version no longer counts.
    pub(super) fn reconcile(&mut self, lost: bool) -> Result<(), StoreError> {
        for p in &self.config.packages {
            let key = p.key();
            let ps = self.state.packages.entry(key.clone()).or_insert_with(|| {
                let mut ps = PackageState::new(&p.version);
                ps.after_state_loss = lost;
                ps
            });
            if ps.source == VersionSource::State {
                // A state from before sources were kept: its version is the agent's own install
                // once it applied an update, else the config's word on first sight.
                ps.source = if ps.applied.is_empty() {
                    VersionSource::Config
                } else {
                    VersionSource::Installed
                };
            }
            if ps.update.is_none() {
                adopt_configured_version(&key, p, ps);
                self.store.clear_package(&key)?;
                crate::managed::discard_prepared(&p.path);
            }
        }
        self.save()
    }

    /// Says once, at start-up, what an attacker on the network could do with this config.
    pub(super) fn warn_about_trust(&self) {
        let security = &self.config.security;
        if security.public_keys.is_empty() {
            log::warn!(
                "no [security] public_keys: patches are unauthenticated, so whoever can answer as the update server can install any file"
            );
        } else if !security.require_signatures {
            log::warn!(
                "signatures are checked but not required: a patch without signed metadata is installed unauthenticated"
            );
        }
        if crate::client::is_plain_http(&self.config.server.url) {
            log::warn!(
                "server.url is plain http: credentials and tokens cross the network unencrypted"
            );
        }
    }
}

/// The config's `version` is what the file is when the agent first sees it; later the agent's
/// own record wins, since the agent moves the file on. A config whose version was changed since
/// the last start is a correction (the package's example value at first, say) and is taken up,
/// unless the agent has installed another version since: then the file was replaced (its
/// sha256 is not the recorded one) for the new version to count.
fn adopt_configured_version(key: &str, p: &Package, ps: &mut PackageState) {
    if ps.configured_version.as_deref() == Some(p.version.as_str()) {
        return;
    }
    if ps.version != p.version {
        // Without a record of the configured version (a state from an older agent) the agent
        // may have moved the file itself: only a replaced file makes the config right.
        let moved_by_agent = ps
            .configured_version
            .as_ref()
            .is_none_or(|c| *c != ps.version);
        let current = crate::managed::sha256_file(&p.path).ok().flatten();
        let replaced = current.is_some() && current != ps.sha256;
        if !moved_by_agent || replaced {
            // A first sight again: the file's record or a pin still outrank the config.
            log::info!(
                "{key}: the config now names version {} (it named {}); looking at {} afresh",
                p.version,
                ps.configured_version.as_deref().unwrap_or("another"),
                p.path.display()
            );
            let lost = ps.after_state_loss;
            *ps = PackageState {
                applied: std::mem::take(&mut ps.applied),
                failed: std::mem::take(&mut ps.failed),
                last_check: ps.last_check.take(),
                statement: ps.statement.take(),
                ..PackageState::new(&p.version)
            };
            ps.after_state_loss = lost;
        } else {
            log::info!(
                "{key}: the config names version {}, but the agent installed version {} since; keeping {}",
                p.version,
                ps.version,
                ps.version
            );
        }
    }
    ps.configured_version = Some(p.version.clone());
}
