//! Per-package hook commands (`pre_install`, `post_install`, `health_check`), each with a timeout.

use std::process::Stdio;
use std::time::Duration;

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
}

/// Runs `command` with `/bin/sh -c`; its output goes to the agent's stderr (the journal).
pub async fn run(
    hook: &'static str,
    command: &str,
    timeout: Duration,
    env: &[(&str, &str)],
) -> Result<(), HookError> {
    log::info!("running {hook} hook");
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HookError::Spawn { hook, source })?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(HookError::Failed { hook, status }),
        Ok(Err(source)) => Err(HookError::Spawn { hook, source }),
        Err(_) => {
            let _ = child.kill().await;
            Err(HookError::TimedOut { hook, timeout })
        }
    }
}
