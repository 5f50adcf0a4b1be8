//! The oracle: what must hold after every scenario, whatever the plan did.
//!
//! - Never broken: the managed file, and the rollback copy beside it, are each one of the
//!   server's versions byte for byte (checked after every stop too), and nothing half-made is
//!   left beside it or in the state directory.
//! - Every final result is the one the contract's rules give: no id has both `1` and `2`; a `2`
//!   only for a patch the server spoiled (bad bytes, a 4xx, a size past every limit); a `1` only
//!   for a version the file has reached.
//! - Never lost, every update ends: within [`SETTLE_CHECKS`] honest checks nothing is under way
//!   and no result waits; unless the state was lost, every id has a result, and a robot whose
//!   patches were all good ends at the newest version.
//! - Bounded: every stop within 5 s of SIGTERM or SIGHUP; no daemon pass saves the state more
//!   than [`MAX_SAVES_PER_PASS`] times, writes more than [`MAX_BYTES_PER_PASS`] to it, or makes
//!   more than [`MAX_FSYNCS_PER_PASS`] fsyncs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::Shared;
use crate::plan::Plan;
use crate::scenario::SETTLE_CHECKS;

/// The demo catalog's updates and the version each leads to, in chain order.
pub const IDS: [(&str, u32); 2] = [("23", 17), ("25", 18)];
pub const NEWEST: u32 = 18;

pub const MAX_SAVES_PER_PASS: u64 = 64;
pub const MAX_BYTES_PER_PASS: u64 = 512 * 1024;
pub const MAX_FSYNCS_PER_PASS: u64 = 256;

/// What a scenario left behind.
#[derive(Debug, Default)]
pub struct Observed {
    pub installed: Option<Vec<u8>>,
    pub previous: Option<Vec<u8>>,
    pub new_left: bool,
    pub downloads_left: Vec<String>,
    pub callbacks: Vec<(String, String)>,
    pub spoiled: BTreeSet<String>,
    pub acts: Vec<String>,
    pub settled: Option<usize>,
    pub log: String,
    pub stops: usize,
}

#[derive(Debug, Default)]
pub struct Findings {
    pub violations: Vec<String>,
    pub notes: Vec<String>,
    pub slowest_stop: Duration,
    pub max_saves: u64,
    pub max_bytes: u64,
    pub max_fsyncs: u64,
    /// Daemon passes whose writes were counted.
    pub passes: u64,
    pub acts: Vec<String>,
    pub outcome: String,
    /// Where a failed scenario's logs were kept.
    pub logs: Option<std::path::PathBuf>,
}

impl Findings {
    pub fn violation(&mut self, what: String) {
        self.violations.push(what);
    }

    pub fn note(&mut self, what: String) {
        self.notes.push(what);
    }

    pub fn stop_took(&mut self, took: Duration) {
        self.slowest_stop = self.slowest_stop.max(took);
    }
}

fn version_of(shared: &Shared, bytes: &[u8]) -> Option<u32> {
    shared
        .versions
        .iter()
        .find(|(_, v)| v.as_slice() == bytes)
        .map(|(k, _)| *k)
}

pub fn judge(plan: &Plan, shared: &Shared, seen: &Observed, findings: &mut Findings) {
    findings.acts.clone_from(&seen.acts);
    let installed = seen
        .installed
        .as_deref()
        .and_then(|b| version_of(shared, b));
    let Some(installed) = installed else {
        findings.violation("never broken: the managed file is none of the versions".into());
        return;
    };
    if let Some(prev) = &seen.previous {
        if version_of(shared, prev).is_none() {
            findings.violation("never broken: the rollback copy is none of the versions".into());
        }
    }
    if seen.new_left {
        findings.violation("a half-made new version is left beside the file".into());
    }
    if seen.settled.is_none() {
        findings.violation(format!(
            "every update ends: not settled after {SETTLE_CHECKS} honest checks"
        ));
    } else if !seen.downloads_left.is_empty() {
        findings.violation(format!("downloads left: {:?}", seen.downloads_left));
    }
    let codes = codes_by_id(&seen.callbacks);
    judge_codes(plan, seen, &codes, installed, findings);
    if !plan.state_loss {
        judge_finals_stay(&seen.callbacks, findings);
    }
    judge_churn(&seen.log, findings);
    findings.outcome = format!(
        "v{installed}, {}",
        IDS.iter()
            .map(|(id, _)| format!("{id}={}", codes.get(*id).map_or("-".into(), |c| c.join(""))))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

fn codes_by_id(callbacks: &[(String, String)]) -> BTreeMap<String, Vec<String>> {
    let mut codes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (id, code) in callbacks {
        let list = codes.entry(id.clone()).or_default();
        if list.last() != Some(code) {
            list.push(code.clone());
        }
    }
    codes
}

/// A final result (`1` or `2`) is never followed by another code for the same id: the agent
/// sends it again when the id is offered again, nothing else.
fn judge_finals_stay(callbacks: &[(String, String)], findings: &mut Findings) {
    let mut finals: BTreeMap<&str, &str> = BTreeMap::new();
    for (id, code) in callbacks {
        match finals.get(id.as_str()) {
            Some(first) if first != code => findings.violation(format!(
                "update {id} was reported {first}, a final result, then {code}"
            )),
            Some(_) => {}
            None if code == "1" || code == "2" => {
                finals.insert(id, code);
            }
            None => {}
        }
    }
}

fn spoiled_ids(seen: &Observed) -> BTreeSet<&'static str> {
    IDS.iter()
        .filter(|(_, to)| {
            seen.spoiled
                .iter()
                .any(|p| p.contains(&format!("--{to}--")))
        })
        .map(|(id, _)| *id)
        .collect()
}

fn judge_codes(
    plan: &Plan,
    seen: &Observed,
    codes: &BTreeMap<String, Vec<String>>,
    installed: u32,
    findings: &mut Findings,
) {
    let spoiled = spoiled_ids(seen);
    let has = |id: &str, code: &str| codes.get(id).is_some_and(|c| c.iter().any(|x| x == code));
    let mut any_two = false;
    for (id, to) in IDS {
        // The finals an agent reported live in its state: after the state is lost, an id it
        // reported `2` may be offered again, and succeed (see ARCHITECTURE.md).
        if has(id, "1") && has(id, "2") && !plan.state_loss {
            findings.violation(format!("update {id} has both 1 and 2: {:?}", codes[id]));
        }
        if has(id, "2") {
            any_two = true;
            if !spoiled.contains(id) {
                findings.violation(format!(
                    "a final 2 for update {id}, whose patch the server never spoiled"
                ));
            }
        }
        if has(id, "1") && installed < to {
            findings.violation(format!(
                "update {id} was reported 1, yet the file is version {installed}"
            ));
        }
    }
    let lost = plan.state_loss;
    if seen.settled.is_some() && !lost {
        for (id, _) in IDS {
            if !codes.contains_key(id) {
                findings.violation(format!("never lost: update {id} has no result"));
            }
        }
    }
    if seen.settled.is_some() && !any_two && installed != NEWEST {
        findings.violation(format!(
            "no patch failed, yet the robot ended at version {installed}, not {NEWEST}"
        ));
    }
}

/// "the pass saved the state N times (B bytes) and made F fsyncs", per daemon pass.
fn judge_churn(log: &str, findings: &mut Findings) {
    for line in log.lines() {
        let Some(rest) = line.split("the pass saved the state ").nth(1) else {
            continue;
        };
        let numbers: Vec<u64> = rest
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        let [saves, bytes, fsyncs] = numbers[..] else {
            findings.violation(format!("the daemon's write counts cannot be read: {line}"));
            continue;
        };
        findings.passes += 1;
        findings.max_saves = findings.max_saves.max(saves);
        findings.max_bytes = findings.max_bytes.max(bytes);
        findings.max_fsyncs = findings.max_fsyncs.max(fsyncs);
    }
    if findings.max_saves > MAX_SAVES_PER_PASS
        || findings.max_bytes > MAX_BYTES_PER_PASS
        || findings.max_fsyncs > MAX_FSYNCS_PER_PASS
    {
        findings.violation(format!(
            "flash churn: a pass saved the state {} times ({} bytes) with {} fsyncs",
            findings.max_saves, findings.max_bytes, findings.max_fsyncs
        ));
    }
}
