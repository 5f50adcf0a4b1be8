//! Test-only fsyncs to skip, for the power-cut loop of `scripts/robot-vm.sh` to show that it
//! catches a missing one (a SIGKILL cannot: the page cache survives it).
//!
//! Only a build with the `fault-injection` feature reads `OTA_AGENT_SKIP_FSYNC`, a comma-separated
//! list of the points below; no release build enables the feature, and without it
//! [`skip_fsync`] is a constant `false`.
//!
//! - `staged`: the new version's file beside the managed file, before it is renamed into place;
//! - `managed-dir`: the managed file's directory, after that rename;
//! - `state`: the state file's temporary copy, before it is renamed over the state file;
//! - `state-dir`: the state directory, after that rename.

/// Whether the fsync at `point` is to be skipped.
#[cfg(feature = "fault-injection")]
pub(crate) fn skip_fsync(point: &str) -> bool {
    let skip = std::env::var("OTA_AGENT_SKIP_FSYNC")
        .is_ok_and(|points| points.split(',').any(|p| p.trim() == point));
    if skip {
        log::debug!("fault injection: skipping the {point} fsync");
    }
    skip
}

/// Whether the fsync at `point` is to be skipped: never, without the `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn skip_fsync(_point: &str) -> bool {
    false
}
