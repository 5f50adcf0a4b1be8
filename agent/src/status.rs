//! `ota-agent status`: what each managed file runs, what is under way, and what waits to be sent.

use serde::Serialize;

use crate::config::Config;
use crate::logger::utc;
use crate::redact::printable;
use crate::store::{PackageState, ResultCode, State, Update, VersionSource};

#[derive(Debug, Serialize)]
pub struct Status {
    pub packages: Vec<PackageStatus>,
}

#[derive(Debug, Serialize)]
pub struct PackageStatus {
    pub name: String,
    pub file_name: String,
    pub path: String,
    pub version: String,
    pub sha256: Option<String>,
    /// Where the version comes from (see [`crate::store::VersionSource`]).
    pub version_source: VersionSource,
    /// False when nothing checked the version: the config's word on first sight.
    pub verified: bool,
    /// Why the file cannot be identified, while it cannot: it is then neither patched nor
    /// checked for updates.
    pub unidentified: Option<String>,
    pub update: Option<UpdateStatus>,
    pub callbacks_waiting: Vec<WaitingCallback>,
    pub last_check: Option<LastCheckStatus>,
}

#[derive(Debug, Serialize)]
pub struct UpdateStatus {
    /// `downloading`, `applying`, `installing` or `waiting`.
    pub step: &'static str,
    /// While the update waits: why (a hook deferred it, the install window is closed).
    pub waiting: Option<String>,
    /// While the update waits: when it is tried again (Unix seconds).
    pub until_unix: Option<u64>,
    pub from_version: String,
    pub to_version: String,
    pub ids: Vec<String>,
    pub downloaded_bytes: u64,
    pub total_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct WaitingCallback {
    pub id: String,
    pub code: ResultCode,
}

#[derive(Debug, Serialize)]
pub struct LastCheckStatus {
    pub at_unix: u64,
    pub at: String,
    pub ok: bool,
    pub result: String,
}

impl Status {
    pub fn new(config: &Config, state: &State) -> Status {
        let packages = config
            .packages
            .iter()
            .map(|p| {
                let key = p.key();
                let ps = state
                    .packages
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| PackageState::new(&p.version));
                PackageStatus {
                    name: p.name.clone(),
                    file_name: p.file_name.clone(),
                    path: p.path.display().to_string(),
                    version: ps.version.clone(),
                    sha256: ps.sha256.clone(),
                    version_source: ps.source,
                    verified: ps.source.is_verified(),
                    unidentified: ps.unidentified.as_ref().map(|u| u.reason.clone()),
                    update: ps.update.as_ref().map(update_status),
                    callbacks_waiting: state
                        .outbox
                        .iter()
                        .filter(|c| c.package == key)
                        .map(|c| WaitingCallback {
                            id: c.id.clone(),
                            code: c.code,
                        })
                        .collect(),
                    last_check: ps.last_check.as_ref().map(|c| LastCheckStatus {
                        at_unix: c.at_unix,
                        at: utc(c.at_unix),
                        ok: c.ok,
                        result: c.result.clone(),
                    }),
                }
            })
            .collect();
        Status { packages }
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for p in &self.packages {
            out += &format!("{}/{}\n", p.name, p.file_name);
            out += &format!("  path:       {}\n", p.path);
            match (&p.unidentified, &p.sha256) {
                (Some(reason), _) => {
                    out += &format!("  version:    unidentified: {}\n", printable(reason));
                }
                (None, None) => {
                    out += &format!(
                        "  version:    {} (the config's; the file was not looked at yet)\n",
                        printable(&p.version)
                    );
                }
                (None, Some(sha)) => {
                    out += &format!(
                        "  version:    {} (sha256 {sha}; {})\n",
                        printable(&p.version),
                        p.version_source.describe()
                    );
                }
            }
            let update = match &p.update {
                None => "none".to_owned(),
                Some(u) => {
                    let bytes = match u.total_bytes {
                        Some(t) => format!(", {} of {t} bytes", u.downloaded_bytes),
                        None => String::new(),
                    };
                    format!(
                        "{} {} -> {} (updates {}{bytes})",
                        u.step,
                        printable(&u.from_version),
                        printable(&u.to_version),
                        printable(&u.ids.join(", "))
                    )
                }
            };
            out += &format!("  update:     {update}\n");
            if let Some((why, until)) = p
                .update
                .as_ref()
                .and_then(|u| Some((u.waiting.as_ref()?, u.until_unix?)))
            {
                out += &format!(
                    "  waiting:    {}; next try at {}\n",
                    printable(why),
                    utc(until)
                );
            }
            let waiting: Vec<String> = p
                .callbacks_waiting
                .iter()
                .map(|c| format!("{}={}", printable(&c.id), c.code))
                .collect();
            out += &format!(
                "  callbacks:  {}\n",
                if waiting.is_empty() {
                    "none waiting".to_owned()
                } else {
                    format!("waiting: {}", waiting.join(", "))
                }
            );
            out += &match &p.last_check {
                Some(c) => format!("  last check: {} ({})\n", c.at, printable(&c.result)),
                None => "  last check: never\n".to_owned(),
            };
        }
        out
    }
}

fn update_status(u: &Update) -> UpdateStatus {
    let step = if u.install.is_none() && u.waiting.is_some() {
        "waiting"
    } else if u.install.is_some() {
        "installing"
    } else if u
        .patches
        .iter()
        .enumerate()
        .all(|(i, p)| p.sha256.is_some() || u.failed.as_ref().is_some_and(|f| i >= f.index))
    {
        "applying"
    } else {
        "downloading"
    };
    let total = u.patches.iter().map(|p| p.size).sum::<Option<u64>>();
    UpdateStatus {
        step,
        waiting: u.waiting.as_ref().map(|w| w.reason.clone()),
        until_unix: u.waiting.as_ref().map(|w| w.until_unix),
        from_version: u.from_version.clone(),
        to_version: u
            .patches
            .last()
            .map(|p| p.to_version.clone())
            .unwrap_or_default(),
        ids: u.ids(),
        downloaded_bytes: u
            .patches
            .iter()
            .map(|p| {
                if p.sha256.is_some() {
                    p.size.unwrap_or(p.durable)
                } else {
                    p.durable
                }
            })
            .sum(),
        total_bytes: total,
    }
}
