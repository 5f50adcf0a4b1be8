//! ota-agent: keeps files on a UBTech Alpha2 robot up to date through the update server's
//! contract (`docs/contract.md`), crash-safe at every step.
//!
//! - [`config`]: the TOML configuration and the checks that refuse a bad one.
//! - [`client`]: the only module that speaks HTTP; owns reqwest, the wire types and the token.
//! - [`store`]: the only module that touches the state directory; the versioned state file.
//! - [`cycle`]: the update cycle as an explicit state machine, one file per step.
//! - [`daemon`]: start-up, the poll loop, back-off and signals around the cycle.
//! - [`schedule`]: the pure timing rules (poll jitter, back-off) the daemon follows.
//! - [`patch`]: bsdiff 4.x patches, applied with both files read in bounded pieces and the new
//!   one streamed.
//! - [`managed`]: the managed files: hashing, atomic swap and rollback.
//! - [`settle`]: large files written back as they are written, not left in the page cache.
//! - [`hooks`]: the per-package commands run around an install.
//! - [`status`]: what `ota-agent status` prints.
//! - [`adopt`]: `ota-agent adopt`, which says by hand which version a managed file is.
//! - [`notify`]: `READY`, `STATUS` and `WATCHDOG` notifications to systemd.
//! - [`events`]: progress for the robot's own apps, on a Unix socket, and `ota-agent watch`.
//! - [`logger`] and [`redact`]: log lines for a terminal or journald, with secrets masked.

pub mod adopt;
pub mod client;
pub mod config;
pub mod cycle;
pub mod daemon;
pub mod events;
mod fault;
pub mod hooks;
pub mod logger;
pub mod managed;
pub mod notify;
pub mod patch;
pub mod redact;
pub mod schedule;
pub mod settle;
pub mod status;
pub mod store;
pub mod window;

use std::fmt::Write as _;

use tokio::sync::watch;

/// The exit status of an agent that finds a state of a newer format than it reads (a downgrade):
/// it leaves the state as it is and stops; the unit lists it in `RestartPreventExitStatus=`.
pub const EXIT_NEWER_STATE: u8 = 65;

/// Errors that keep the agent from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Client(#[from] client::ClientError),
}

/// Tells long-running work that the process was asked to stop.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub fn new() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
    }

    /// A shutdown that never comes, for one-shot commands and tests.
    pub fn never() -> Shutdown {
        Shutdown::new().1
    }

    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the stop was asked for; never, if it cannot be asked for any more.
    pub async fn wait(&mut self) {
        loop {
            if *self.0.borrow_and_update() {
                return;
            }
            if self.0.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// An error and all its causes on one line, as logs and summaries show them.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let _ = write!(out, ": {cause}");
        source = cause.source();
    }
    out
}

/// Makes a rename or a new file in `dir` survive a power loss: the directory's own fsync.
pub(crate) fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    io_stats::fsynced();
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

/// What the agent writes to its flash, counted so that a cycle's cost can be logged and a
/// failure that repeats can be held to a bound (the tests read it from the debug log).
pub mod io_stats {
    use std::sync::atomic::{AtomicU64, Ordering};

    static SAVES: AtomicU64 = AtomicU64::new(0);
    static SAVED_BYTES: AtomicU64 = AtomicU64::new(0);
    static FSYNCS: AtomicU64 = AtomicU64::new(0);

    /// A state save of `bytes` bytes.
    pub fn saved(bytes: usize) {
        SAVES.fetch_add(1, Ordering::Relaxed);
        SAVED_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// One fsync of a file or directory.
    pub fn fsynced() {
        FSYNCS.fetch_add(1, Ordering::Relaxed);
    }

    /// (state saves, bytes saved, fsyncs) since the process started.
    pub fn totals() -> (u64, u64, u64) {
        (
            SAVES.load(Ordering::Relaxed),
            SAVED_BYTES.load(Ordering::Relaxed),
            FSYNCS.load(Ordering::Relaxed),
        )
    }
}

/// True when an I/O error says the file system had no room (or quota) left: a full disk, which
/// ends an update with `3`, never `2` (see ARCHITECTURE.md).
pub fn no_room(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code)
        if code == rustix::io::Errno::NOSPC.raw_os_error()
            || code == rustix::io::Errno::DQUOT.raw_os_error())
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_unit_does_not_restart_into_a_newer_state() {
        let unit = include_str!("../../systemd/ota-agent.service");
        let line = format!("RestartPreventExitStatus={}", super::EXIT_NEWER_STATE);
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
}
