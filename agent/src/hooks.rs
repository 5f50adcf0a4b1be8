//! Per-package hook commands (`pre_install`, `post_install`, `health_check`), each with a timeout.
//!
//! A hook runs in a process group of its own, so that what it starts ends with it on a timeout
//! or a stop: the whole group gets SIGTERM, then SIGKILL after [`GRACE`]. (A hook that exits in
//! time may leave a process of its own running; that is the hook's business.) A hook that ends
//! because the agent is being stopped (systemd signals the unit's whole cgroup) is not a failed
//! hook: the caller gets [`HookError::Stopped`] and runs the hooks again at the next start.

use std::process::Stdio;
use std::time::Duration;

use rustix::process::{Pid, Signal};

use crate::Shutdown;

/// How long a hook's processes get between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);

/// How long a failed hook waits for the agent's own stop signal: systemd signals every
/// process of the unit at once, and the hook may be the first to notice.
const SIGNAL_RACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{hook} hook could not be started")]
    Spawn {
        hook: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{hook} hook exited with {status}")]
    Failed {
        hook: &'static str,
        status: std::process::ExitStatus,
    },
    #[error("{hook} hook did not finish within {timeout:?} and was killed")]
    TimedOut {
        hook: &'static str,
        timeout: Duration,
    },
    #[error("{hook} hook was stopped with the agent")]
    Stopped { hook: &'static str },
}

/// Lines of a hook's output passed to the log, per stream; the rest is counted, not logged.
const MAX_LINES: usize = 200;
/// The longest piece of a hook's output logged as one line; a longer line is logged in pieces.
const MAX_LINE: u64 = 1024;

/// What a package's hook is told in its environment: which file, and from which version to
/// which.
#[derive(Debug, Clone)]
pub struct HookEnv(Vec<(&'static str, String)>);

impl HookEnv {
    pub fn new(pkg: &crate::config::Package, from: &str, to: &str) -> HookEnv {
        HookEnv(vec![
            ("OTA_PACKAGE", pkg.name.clone()),
            ("OTA_FILE_NAME", pkg.file_name.clone()),
            ("OTA_PATH", pkg.path.display().to_string()),
            ("OTA_PREVIOUS_VERSION", from.to_owned()),
            ("OTA_VERSION", to.to_owned()),
        ])
    }

    pub fn as_pairs(&self) -> Vec<(&str, &str)> {
        self.0.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }
}

/// Runs `command` with `/bin/sh -c`; its output goes to the agent's log a line at a time,
/// escaped like every log line (a hook's text cannot forge a line of the journal, nor reach a
/// terminal raw).
pub async fn run(
    hook: &'static str,
    command: &str,
    timeout: Duration,
    env: &[(&str, &str)],
    shutdown: &Shutdown,
) -> Result<(), HookError> {
    log::info!("running {hook} hook");
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HookError::Spawn { hook, source })?;
    // Relayed by tasks of their own: a background process of the hook may hold the pipes open
    // long after the hook has ended, and nothing waits for that.
    if let Some(out) = child.stdout.take() {
        tokio::spawn(relay(hook, out));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(relay(hook, err));
    }
    let group = child
        .id()
        .and_then(|id| Pid::from_raw(id as i32))
        .expect("a child just spawned has a pid");
    let mut stop = shutdown.clone();
    let waited = tokio::select! {
        waited = tokio::time::timeout(timeout, child.wait()) => waited,
        () = stop.wait() => {
            log::info!("stopping the {hook} hook");
            end_group(&mut child, group).await;
            return Err(HookError::Stopped { hook });
        }
    };
    let status = match waited {
        Ok(Ok(status)) => status,
        Ok(Err(source)) => return Err(HookError::Spawn { hook, source }),
        Err(_) => {
            end_group(&mut child, group).await;
            return Err(HookError::TimedOut { hook, timeout });
        }
    };
    if status.success() {
        return Ok(());
    }
    // A hook that ends with the agent's stop (systemd signals the whole cgroup) may exit with
    // a signal or with a code of its own (a trap), and may notice first: either way it is no
    // verdict on the update. So a failure waits a moment for the stop before it counts.
    let mut stop = shutdown.clone();
    if tokio::time::timeout(SIGNAL_RACE, stop.wait()).await.is_ok() {
        return Err(HookError::Stopped { hook });
    }
    Err(HookError::Failed { hook, status })
}

/// Passes what a hook prints to the log, a line at a time, at most [`MAX_LINES`] lines of at
/// most [`MAX_LINE`] bytes.
async fn relay(hook: &'static str, from: impl tokio::io::AsyncRead + Unpin) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut reader = tokio::io::BufReader::new(from);
    let mut line = Vec::new();
    let mut lines = 0;
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        lines += 1;
        if lines <= MAX_LINES {
            let text = String::from_utf8_lossy(&line);
            log::info!("{hook} hook: {}", text.trim_end_matches(['\n', '\r']));
        }
    }
    if lines > MAX_LINES {
        log::warn!("{hook} hook printed {lines} lines; the first {MAX_LINES} are logged");
    }
}

/// SIGTERM to the hook's process group, then SIGKILL once [`GRACE`] is over.
async fn end_group(child: &mut tokio::process::Child, group: Pid) {
    let _ = rustix::process::kill_process_group(group, Signal::TERM);
    if tokio::time::timeout(GRACE, child.wait()).await.is_err() {
        log::warn!("a hook did not end within {GRACE:?} of SIGTERM; killing it");
    }
    // The shell may be gone and its children not: the group goes whole.
    let _ = rustix::process::kill_process_group(group, Signal::KILL);
    let _ = child.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// True while the process exists and is no zombie (an orphan is reaped by whoever is
    /// PID 1 here, if anyone).
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        })
    }

    async fn pid_in(file: &std::path::Path) -> i32 {
        for _ in 0..500 {
            if let Ok(text) = std::fs::read_to_string(file) {
                if let Ok(pid) = text.trim().parse() {
                    return pid;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the hook never wrote its child's pid");
    }

    #[tokio::test]
    async fn a_timeout_kills_what_the_hook_started() {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("pid");
        let command = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let e = run(
            "health_check",
            &command,
            Duration::from_millis(500),
            &[],
            &Shutdown::never(),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, HookError::TimedOut { .. }), "{e}");
        let pid = pid_in(&pidfile).await;
        for _ in 0..100 {
            if !alive(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the hook's `sleep 300` (pid {pid}) outlived its timeout");
    }

    #[tokio::test]
    async fn a_stop_ends_the_hook_and_is_not_a_failure() {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("pid");
        let command = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let (tx, shutdown) = Shutdown::new();
        let hook = run(
            "post_install",
            &command,
            Duration::from_secs(300),
            &[],
            &shutdown,
        );
        let stopper = async {
            let pid = pid_in(&pidfile).await;
            tx.send(true).unwrap();
            pid
        };
        let (result, pid) = tokio::join!(hook, stopper);
        assert!(
            matches!(result, Err(HookError::Stopped { .. })),
            "{result:?}"
        );
        // SIGKILL is delivered asynchronously: on a loaded machine the child may take a moment.
        for _ in 0..100 {
            if !alive(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the hook's child (pid {pid}) survived the stop");
    }
}
