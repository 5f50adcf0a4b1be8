//! The check's second opinion: the vendor's signed statement of the newest version of the file
//! (`[security] statement_url`). The server's answer cannot prove that nothing newer exists,
//! so a man in the middle could answer "up to date" for ever; with the statement, an "up to
//! date" below the newest signed version is refused, and so is a statement older than one seen
//! before (a replay) or past its expiry. An offer of patches goes ahead whatever the statement
//! says: each patch is signed and leads upwards.

use ota_signing::{Target, verify_statement};

use super::{Agent, CycleError, PLAUSIBLE_UNIX};
use crate::client::CheckAnswer;
use crate::config::Package;
use crate::logger::utc;
use crate::store::SeenStatement;
use crate::unix_now;

pub(super) async fn hold(
    agent: &mut Agent,
    pkg: &Package,
    version: &str,
    answer: CheckAnswer,
) -> Result<CheckAnswer, CycleError> {
    let Some(template) = agent.config.security.statement_url.clone() else {
        return Ok(answer);
    };
    let key = pkg.key();
    let up_to_date = matches!(answer, CheckAnswer::UpToDate | CheckAnswer::NoSuchVersion);
    match fetch(agent, pkg, &template).await {
        Ok(seen) => {
            if agent.pkg_state(&key).statement != Some(seen) {
                agent.pkg_state(&key).statement = Some(seen);
                agent.save()?;
            }
        }
        Err(problem) if up_to_date => {
            return Err(CycleError::Refused(format!(
                "the server says version {version} is up to date, and the vendor's statement cannot confirm it: {problem}"
            )));
        }
        Err(problem) => {
            log::warn!("{key}: {problem}; the offer goes ahead, since each patch is signed");
        }
    }
    let installed: u64 = version.parse().unwrap_or(0);
    match agent.pkg_state(&key).statement {
        Some(seen) if up_to_date && seen.latest_version > installed => {
            Err(CycleError::Refused(format!(
                "the server says version {installed} is up to date, but the vendor's signed statement names version {} as the newest: a frozen or held-back answer is refused",
                seen.latest_version
            )))
        }
        _ => Ok(answer),
    }
}

/// Fetches and checks the statement: signed by a trusted key, about this file, language and
/// robot model, not older than the last one seen, not expired.
async fn fetch(agent: &Agent, pkg: &Package, template: &str) -> Result<SeenStatement, String> {
    let target = Target {
        package: &pkg.name,
        file_name: &pkg.file_name,
        language: agent.config.language(pkg),
        robot_version: &agent.config.robot.version,
    };
    let url = template
        .replace("{package}", target.package)
        .replace("{file_name}", target.file_name)
        .replace("{language}", target.language)
        .replace("{robot_version}", target.robot_version);
    let shown = crate::redact::url(&url);
    let shown = shown.as_str();
    let get = |url: String| async move {
        match agent.client.sidecar(&url).await {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(format!("no statement of the newest version at {shown}")),
            Err(e) => Err(format!(
                "the statement at {shown} cannot be fetched: {}",
                crate::error_chain(&e)
            )),
        }
    };
    let json = get(url.clone()).await?;
    let sig = get(format!("{url}.sig")).await?;
    let keys = agent.config.security.keys();
    let (statement, _) = verify_statement(&keys, &json, &sig)
        .and_then(|(s, k)| s.check(&target).map(|()| (s, k)))
        .map_err(|e| {
            format!(
                "the statement at {shown} is refused: {}",
                crate::error_chain(&e)
            )
        })?;
    let previous = agent.state.packages[&pkg.key()].statement;
    if let Some(p) = previous.filter(|p| p.issued_unix > statement.issued_unix) {
        return Err(format!(
            "the statement at {shown} was signed at {}, before the one seen already ({}): a replay",
            utc(statement.issued_unix),
            utc(p.issued_unix)
        ));
    }
    freshness(statement.expires_unix, unix_now())
        .map_err(|problem| format!("the statement at {shown} {problem}"))?;
    Ok(SeenStatement {
        issued_unix: statement.issued_unix,
        latest_version: statement.latest_version,
    })
}

/// An expired statement may be a replay, or the robot's clock may be ahead: either way it says
/// nothing now. A clock that was never set (a board without a clock battery, before time sync)
/// cannot tell; then the statement counts, and the log says why.
fn freshness(expires_unix: u64, now: u64) -> Result<(), String> {
    if now < PLAUSIBLE_UNIX {
        log::warn!(
            "the clock says {}, so the freshness of the vendor's statement cannot be checked",
            utc(now)
        );
        return Ok(());
    }
    if now > expires_unix {
        return Err(format!(
            "expired at {}, and the robot's clock says {}: a replayed statement, or a clock that is wrong",
            utc(expires_unix),
            utc(now)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::freshness;

    #[test]
    fn expiry_and_an_unset_clock() {
        let expires = 1_800_000_000;
        assert!(freshness(expires, expires - 10).is_ok());
        let e = freshness(expires, expires + 10).unwrap_err();
        assert!(e.contains("expired at") && e.contains("clock"), "{e}");
        // A board that booted in 1970 cannot judge; it does not refuse for that.
        assert!(freshness(expires, 120).is_ok());
    }
}
