//! What the events socket says: the events, one JSON object a line, and the text `ota-agent
//! watch` prints for each.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::logger::utc;
use crate::redact::printable;
use crate::store::ResultCode;

/// A step of the update cycle, as `step` events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Check,
    Verify,
    Download,
    Apply,
    Install,
    Report,
}

/// One line of the events socket. `package` is the package key (`name/file_name`), null for
/// the events of the whole agent; `at_unix` is when the event happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The first line to every client: the events that describe the present, in order.
    Snapshot {
        package: Option<String>,
        at_unix: u64,
        events: Vec<Event>,
    },
    /// A step of a package's cycle began, for the update of `ids` (none yet for `check`);
    /// `hook` names the hook that the install step runs.
    Step {
        package: String,
        at_unix: u64,
        step: Step,
        ids: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hook: Option<String>,
    },
    /// Bytes of patch `id` arrived: at most once a second per download, and at its end.
    Progress {
        package: String,
        at_unix: u64,
        id: String,
        bytes: u64,
        total: Option<u64>,
        percent: Option<u8>,
    },
    /// The update waits for the robot (`reason`), until `until_unix` at the latest.
    Deferred {
        package: String,
        at_unix: u64,
        ids: Vec<String>,
        reason: String,
        until_unix: u64,
    },
    /// The update waits for its update window, which opens at `until_unix`.
    WaitingForWindow {
        package: String,
        at_unix: u64,
        ids: Vec<String>,
        until_unix: u64,
    },
    /// The result `code` of update `id` was queued for the server (1 installed, 2 failed,
    /// 3 not updated yet).
    Result {
        package: String,
        at_unix: u64,
        id: String,
        code: ResultCode,
        queued_at_unix: u64,
    },
    /// The package's file is no version the agent can tell (`reason`): it is neither patched
    /// nor checked for updates until something identifies it (`ota-agent adopt`, say).
    Unidentified {
        package: String,
        at_unix: u64,
        reason: String,
    },
    /// Nothing is under way until the next check.
    Idle {
        package: Option<String>,
        at_unix: u64,
        next_check_unix: u64,
    },
    /// The last line to a client the agent turns away or drops, and why (`reason`). An agent
    /// that stops closes every connection without it.
    Closed { at_unix: u64, reason: String },
}

impl Event {
    /// What `ota-agent watch` prints: one line, or one per event of a snapshot.
    pub fn to_text(&self) -> String {
        let updates = |ids: &[String]| printable(&ids.join(", ")).into_owned();
        match self {
            Event::Snapshot { events, .. } => events
                .iter()
                .map(Event::to_text)
                .collect::<Vec<_>>()
                .join("\n"),
            Event::Step {
                package,
                step: Step::Check,
                ..
            } => format!("{}: checking for updates", printable(package)),
            Event::Step {
                package,
                step,
                ids,
                hook,
                ..
            } => {
                let doing = match (step, hook) {
                    (Step::Install, Some(hook)) => {
                        format!("installing (running the {} hook)", printable(hook))
                    }
                    (Step::Verify, _) => "verifying".to_owned(),
                    (Step::Download, _) => "downloading".to_owned(),
                    (Step::Apply, _) => "applying".to_owned(),
                    (Step::Install, None) => "installing".to_owned(),
                    (Step::Report | Step::Check, _) => "sending the results".to_owned(),
                };
                format!("{}: update {}: {doing}", printable(package), updates(ids))
            }
            Event::Progress {
                package,
                id,
                bytes,
                total,
                percent,
                ..
            } => match (total, percent) {
                (Some(total), Some(percent)) => format!(
                    "{}: update {}: downloading {percent}% ({bytes} of {total} bytes)",
                    printable(package),
                    printable(id)
                ),
                _ => format!(
                    "{}: update {}: downloading ({bytes} bytes so far)",
                    printable(package),
                    printable(id)
                ),
            },
            Event::Deferred {
                package,
                ids,
                reason,
                until_unix,
                ..
            } => format!(
                "{}: update {}: deferred until {}: {}",
                printable(package),
                updates(ids),
                utc(*until_unix),
                printable(reason)
            ),
            Event::WaitingForWindow {
                package,
                ids,
                until_unix,
                ..
            } => format!(
                "{}: update {}: waiting for the update window, which opens at {}",
                printable(package),
                updates(ids),
                utc(*until_unix)
            ),
            Event::Result {
                package, id, code, ..
            } => {
                let meaning = code.meaning();
                format!(
                    "{}: update {}: result {code} ({meaning})",
                    printable(package),
                    printable(id)
                )
            }
            Event::Unidentified {
                package, reason, ..
            } => format!(
                "{}: unidentified: {}",
                printable(package),
                printable(reason)
            ),
            Event::Idle {
                next_check_unix, ..
            } => format!("idle; next check at {}", utc(*next_check_unix)),
            Event::Closed { reason, .. } => {
                format!("the agent closed the connection: {}", printable(reason))
            }
        }
    }
}

/// `event` as one line of the socket: JSON with no control character left raw, and a newline.
pub(super) fn line(event: &Event) -> Arc<str> {
    let text = serde_json::to_string(event).expect("an event is plain data");
    let mut text = crate::redact::json_printable(text);
    text.push('\n');
    text.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PKG: &str = "com.ubtechinc.alpha2services/service5mic";

    #[test]
    fn events_read_as_one_line_each() {
        let progress = Event::Progress {
            package: PKG.into(),
            at_unix: 1_800_000_000,
            id: "23".into(),
            bytes: 86_016,
            total: Some(200_000),
            percent: Some(43),
        };
        assert_eq!(
            progress.to_text(),
            format!("{PKG}: update 23: downloading 43% (86016 of 200000 bytes)")
        );
        let json = line(&progress);
        assert!(
            json.starts_with(r#"{"event":"progress","package":"#),
            "{json}"
        );
        assert!(json.ends_with("}\n") && json.matches('\n').count() == 1);
        let waiting = Event::WaitingForWindow {
            package: PKG.into(),
            at_unix: 0,
            ids: vec!["23".into(), "25".into()],
            until_unix: 1_800_000_000,
        };
        assert_eq!(
            waiting.to_text(),
            format!(
                "{PKG}: update 23, 25: waiting for the update window, which opens at {}",
                utc(1_800_000_000)
            )
        );
        // An id from the server cannot forge a line of its own.
        let result = Event::Result {
            package: PKG.into(),
            at_unix: 0,
            id: "23\nfake".into(),
            code: ResultCode::Failed,
            queued_at_unix: 0,
        };
        assert!(!result.to_text().contains('\n'));
        assert!(!line(&result).trim_end().contains('\n'));
    }
}
