//! The adversary: seeded hostile scenarios against the real `ota-agent` binary, each ended by
//! an honest phase and an oracle that holds the agent to its three invariants (see `oracle.rs`
//! for what is checked, `plan.rs` for what a plan can do).
//!
//! ```text
//! adversary [--scenarios N | --minutes M | --seed S] [--first-seed S] [--jobs J]
//!           [--corpus FILE] [--agent PATH]
//! ```
//!
//! Every scenario prints its seed; `--seed S` replays one (the same server acts for the same
//! requests and the same fault schedule; what depends on timing may differ). The corpus file
//! holds seeds that once failed, one per line (`#` starts a comment); they run before the
//! random ones. Disk faults need root (tmpfs mounts); without it they are left out, and said.

mod oracle;
mod plan;
mod proxy;
mod scenario;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ota_mock_server::{Catalog, MockServer};

/// What every scenario of a run shares: the honest server, its versions, the agent binary.
#[derive(Debug)]
pub struct Shared {
    pub mock: MockServer,
    pub versions: BTreeMap<u32, Vec<u8>>,
    pub agent: PathBuf,
    pub root: bool,
    _dir: tempfile::TempDir,
}

struct Options {
    scenarios: Option<u64>,
    minutes: Option<u64>,
    seeds: Vec<u64>,
    first_seed: Option<u64>,
    jobs: usize,
    corpus: Option<PathBuf>,
    agent: Option<PathBuf>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        scenarios: None,
        minutes: None,
        seeds: Vec::new(),
        first_seed: None,
        jobs: 4,
        corpus: None,
        agent: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--scenarios" => o.scenarios = Some(number()?),
            "--minutes" => o.minutes = Some(number()?),
            "--seed" => o.seeds.push(number()?),
            "--first-seed" => o.first_seed = Some(number()?),
            "--jobs" => o.jobs = number()?.clamp(1, 16) as usize,
            "--corpus" => o.corpus = Some(PathBuf::from(value)),
            "--agent" => o.agent = Some(PathBuf::from(value)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

fn corpus_seeds(path: &std::path::Path) -> Result<Vec<u64>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the corpus {}: {e}", path.display()))?;
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse()
                .map_err(|_| format!("{}: {l:?} is no seed", path.display()))
        })
        .collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The agent built beside this binary (`target/<profile>/ota-agent`).
fn agent_beside() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let agent = exe.with_file_name("ota-agent");
    if agent.exists() {
        Ok(agent)
    } else {
        Err(format!(
            "{} is missing: build it first (cargo build -p ota-agent) or name it with --agent",
            agent.display()
        ))
    }
}

async fn shared(agent: PathBuf) -> Result<Shared, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let catalog =
        ota_mock_server::demo::generate(dir.path(), 24 * 1024).map_err(|e| e.to_string())?;
    let catalog = Catalog::load(&catalog).map_err(|e| e.to_string())?;
    let mock = MockServer::start(catalog)
        .await
        .map_err(|e| e.to_string())?;
    let mut versions = BTreeMap::new();
    for (_, to) in oracle::IDS.iter().chain([&("", 16)]) {
        let path = dir.path().join("versions").join(to.to_string());
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        versions.insert(*to, bytes);
    }
    Ok(Shared {
        mock,
        versions,
        agent,
        root: rustix::process::geteuid().is_root(),
        _dir: dir,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("adversary: {e}");
        std::process::exit(2);
    }
}

async fn run() -> Result<(), String> {
    let o = options()?;
    let agent = match &o.agent {
        Some(a) => a.clone(),
        None => agent_beside()?,
    };
    let shared = Arc::new(shared(agent).await?);
    if !shared.root {
        println!(
            "not played: full and read-only disks (tmpfs mounts need root); everything else is"
        );
    }
    let mut seeds = o.seeds.clone();
    if let Some(corpus) = &o.corpus {
        seeds.extend(corpus_seeds(corpus)?);
    }
    let fixed = seeds.len();
    let first = o.first_seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let random = match (o.scenarios, o.minutes) {
        (Some(n), _) => n,
        (None, Some(_)) => u64::MAX,
        (None, None) if fixed > 0 => 0,
        (None, None) => 200,
    };
    let until = o
        .minutes
        .map(|m| Instant::now() + Duration::from_secs(m * 60));
    let started = Instant::now();
    let next = Arc::new(std::sync::Mutex::new((0usize, 0u64)));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let passes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..o.jobs {
        let (shared, next, failed, seeds, passes) = (
            shared.clone(),
            next.clone(),
            failed.clone(),
            seeds.clone(),
            passes.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let (k, seed) = {
                    let mut n = next.lock().unwrap();
                    let k = n.0;
                    let seed = if k < fixed {
                        seeds[k]
                    } else if n.1 < random && until.is_none_or(|u| Instant::now() < u) {
                        n.1 += 1;
                        first.wrapping_add(n.1 - 1)
                    } else {
                        return;
                    };
                    n.0 += 1;
                    (k, seed)
                };
                let plan = plan::Plan::new(seed, shared.root);
                let id = format!("adversary-{seed}-{k}");
                let findings = scenario::run(&plan, &id, &shared).await;
                print_result(seed, &plan, &findings);
                passes.fetch_add(findings.passes, std::sync::atomic::Ordering::Relaxed);
                if !findings.violations.is_empty() {
                    failed.lock().unwrap().push(seed);
                }
            }
        }));
    }
    for w in workers {
        w.await.map_err(|e| e.to_string())?;
    }
    let ran = next.lock().unwrap().0;
    let mut failed = failed.lock().unwrap().clone();
    let passes = passes.load(std::sync::atomic::Ordering::Relaxed);
    if ran >= 20 && passes == 0 {
        // The churn check reads the daemon's debug line; a run that never saw one checked
        // nothing (its wording or level changed).
        println!("the daemon's write counts were never seen: the churn check checked nothing");
        failed.push(0);
    }
    println!(
        "{ran} scenarios in {:.0} s, {} failed",
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    if failed.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = failed.iter().map(u64::to_string).collect();
    Err(format!(
        "seeds that broke an invariant: {}; replay one with `cargo run -p ota-e2e-tests --bin adversary -- --seed SEED`, and add it to tests/adversary.corpus once fixed",
        list.join(", ")
    ))
}

fn print_result(seed: u64, plan: &plan::Plan, f: &oracle::Findings) {
    let verdict = if f.violations.is_empty() {
        "ok"
    } else {
        "FAILED"
    };
    println!(
        "seed {seed}: {verdict} ({}; {} hostile acts, {} signals, {} disk faults{}; slowest stop {} ms; at most {} saves, {} bytes, {} fsyncs a pass)",
        f.outcome,
        f.acts.len(),
        plan.signals.len(),
        plan.disks.len(),
        if plan.state_loss { ", state lost" } else { "" },
        f.slowest_stop.as_millis(),
        f.max_saves,
        f.max_bytes,
        f.max_fsyncs
    );
    for v in &f.violations {
        println!("  violation: {v}");
    }
    if !f.violations.is_empty() {
        println!("  plan: {plan:?}");
        for a in &f.acts {
            println!("  act: {a}");
        }
        for n in &f.notes {
            println!("  note: {n}");
        }
        if let Some(logs) = &f.logs {
            println!("  logs: {}", logs.display());
        }
    }
}
