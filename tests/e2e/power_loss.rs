//! Power loss: the daemon is SIGKILLed at random moments of a multi-patch update (during the
//! download, the apply, the install and its hooks, the callbacks), started again, and once it
//! has settled both invariants must hold. The file must never be broken between kills either.
//!
//! `POWER_LOSS_SEED` replays a run; `POWER_LOSS_KILLS` sets how many kills (default 100).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Robot, Server, VERSIONS, assert_invariants, settle};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Which step the facts on disk say the agent was in when it died.
fn step_of(state: &Value) -> &'static str {
    let pkg = state["packages"]
        .as_object()
        .and_then(|p| p.values().next())
        .cloned()
        .unwrap_or_default();
    let update = &pkg["update"];
    if !update.is_null() {
        if !update["install"].is_null() {
            return "install";
        }
        let patches = update["patches"].as_array().cloned().unwrap_or_default();
        if patches.iter().all(|p| !p["sha256"].is_null()) || !update["failed"].is_null() {
            return "apply";
        }
        return "download";
    }
    if state["outbox"].as_array().is_some_and(|o| !o.is_empty()) {
        return "callback";
    }
    if pkg["last_check"].is_null() {
        "start"
    } else {
        "done"
    }
}

async fn slow_server(server: &Server) {
    // Every patch response pauses once and every callback waits a little, so that kills land
    // in downloads and callbacks as often as in the rest.
    let stall = json!({"endpoint": "patch", "times": 100000, "kind": {"stall": {"after": 4096, "pause_ms": 40}}});
    server.inject(stall).await;
    let slow = json!({"endpoint": "callback", "times": 100000, "kind": {"delay_ms": 40}});
    server.inject(slow).await;
}

/// One run of `kills` kills; returns the kill count per step.
async fn run(seed: u64, kills: usize) -> BTreeMap<&'static str, usize> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::demo(&tmp.path().join("server"), 512 * 1024).await;
    slow_server(&server).await;
    let mut steps: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut done = 0;
    let started = Instant::now();
    for round in 0.. {
        if done >= kills || started.elapsed() > Duration::from_secs(300) {
            break;
        }
        // Half the robots have a slow post_install hook, so that kills land in hooks too.
        let hook = if round % 2 == 1 {
            "post_install = \"sleep 0.05\""
        } else {
            ""
        };
        let robot = Robot::new(
            &tmp.path().join(format!("round-{round}")),
            &server,
            "",
            hook,
        );
        let state_file = robot.dir.join("state").join("state.json");
        loop {
            let mut agent = robot
                .command(&["run"])
                .stderr(Stdio::null())
                .spawn()
                .expect("start the daemon");
            let moment = Duration::from_millis(rng.u64(0..=250));
            let exited = tokio::time::timeout(moment, agent.wait()).await;
            assert!(
                exited.is_err(),
                "seed {seed}: the daemon exited by itself: {exited:?}"
            );
            agent.start_kill().expect("SIGKILL");
            agent.wait().await.expect("reap the daemon");
            done += 1;
            let state: Value = std::fs::read(&state_file)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let step = step_of(&state);
            *steps.entry(step).or_default() += 1;
            let installed = robot.installed();
            assert!(
                VERSIONS.iter().any(|v| server.version(*v) == installed),
                "seed {seed}: kill {done} in {step} left a broken file"
            );
            if step == "done" || done >= kills {
                break;
            }
        }
        settle(&robot, &server).await;
        assert_invariants(&robot, &server).await;
        slow_server(&server).await;
    }
    steps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_sigkill_at_random_moments() {
    let seed = env_u64("POWER_LOSS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let kills = env_u64("POWER_LOSS_KILLS").map_or(100, |k| k as usize);
    let start =
        format!("power loss: seed {seed} (replay with POWER_LOSS_SEED={seed}), {kills} kills\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), start.as_bytes());
    let steps = run(seed, kills).await;
    let total: usize = steps.values().sum();
    let summary: Vec<String> = steps.iter().map(|(s, n)| format!("{s} {n}")).collect();
    // Written to the process's stderr directly, past the test harness's capture, so that every
    // run (CI's included) shows the figures.
    let line = format!(
        "power loss: survived {total} kill points (seed {seed}): {}\n",
        summary.join(", ")
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    assert!(total >= kills);
    for step in ["download", "apply", "install", "callback"] {
        assert!(
            steps.get(step).copied().unwrap_or(0) > 0,
            "no kill landed in {step}: {steps:?}"
        );
    }
}
