//! One scenario: a robot's files (on small tmpfs mounts when root), the daemon behind the
//! hostile proxy for the plan's hostile phase with its signals and disk faults, then the
//! honest phase of `check` runs, and the oracle.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::Shared;
use crate::oracle::{Findings, Observed};
use crate::plan::{Disk, DiskFault, Place, Plan, Sig};
use crate::proxy::Proxy;

/// How long a stop may take after SIGTERM or SIGHUP.
pub const STOP_WITHIN: Duration = Duration::from_secs(5);
/// How long after its start a daemon gets before a signal: exec and the runtime's start, when
/// no process has its handlers yet.
const EXEC_WINDOW: Duration = Duration::from_millis(20);
/// How many `check` runs the honest phase may take to end every update.
pub const SETTLE_CHECKS: usize = 10;

const MANAGED: &str = "Alpha2Services.apk";

/// A robot's directories; the mounts are undone when it is dropped.
struct Robot {
    dir: tempfile::TempDir,
    mounts: Vec<PathBuf>,
}

impl Drop for Robot {
    fn drop(&mut self) {
        for m in &self.mounts {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(m)
                .status();
        }
    }
}

impl Robot {
    fn new(root: bool) -> std::io::Result<Robot> {
        let dir = tempfile::tempdir()?;
        let mut robot = Robot {
            dir,
            mounts: Vec::new(),
        };
        for (name, size) in [("state", "1m"), ("robot", "512k")] {
            let path = robot.dir.path().join(name);
            std::fs::create_dir_all(&path)?;
            if root {
                let ok = std::process::Command::new("mount")
                    .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                    .arg(&path)
                    .status()?
                    .success();
                if ok {
                    robot.mounts.push(path);
                }
            }
        }
        Ok(robot)
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn files(&self) -> PathBuf {
        self.dir.path().join("robot")
    }

    fn place(&self, place: Place) -> PathBuf {
        match place {
            Place::State => self.state(),
            Place::Beside => self.files(),
        }
    }

    fn managed(&self) -> PathBuf {
        self.files().join(MANAGED)
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }
}

fn write_config(robot: &Robot, id: &str, server: &str, pin: Option<String>) -> std::io::Result<()> {
    let pin = pin.map_or(String::new(), |p| format!("version_sha256 = \"{p}\"\n"));
    let text = format!(
        r#"[server]
url = "{server}"
client_id = "mobile_1"
client_secret = "secret_1"
username = "aa"
password = "aa"
connect_timeout = "2s"
read_timeout = "2s"
request_timeout = "10s"
[robot]
id = "{id}"
version = "1"
language = "CN"
[agent]
state_dir = "{state}"
poll_interval = "1s"
retry_base = "1s"
retry_max = "1s"
download_attempts = 100
max_failed_cycles = 100
update_deadline = "1h"
events_socket = "{events}"
[[package]]
name = "com.ubtechinc.alpha2services"
file_name = "service5mic"
path = "{path}"
version = "16"
{pin}"#,
        state = robot.state().display(),
        events = robot.dir.path().join("events.sock").display(),
        path = robot.managed().display(),
    );
    std::fs::write(robot.config(), text)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(robot.config(), std::fs::Permissions::from_mode(0o600))
}

/// Runs the scenario of `plan` as robot `id`, and returns what the oracle found.
pub async fn run(plan: &Plan, id: &str, shared: &Shared) -> Findings {
    let mut findings = Findings::default();
    if let Err(e) = play(plan, id, shared, &mut findings).await {
        findings.violation(format!("the scenario could not be played: {e}"));
    }
    findings
}

async fn play(
    plan: &Plan,
    id: &str,
    shared: &Shared,
    findings: &mut Findings,
) -> std::io::Result<()> {
    let robot = Robot::new(shared.root)?;
    std::fs::write(robot.managed(), &shared.versions[&16])?;
    let proxy = Proxy::start(plan.clone(), &shared.mock.uri()).await?;
    let pin = plan.pin.then(|| crate::sha256_hex(&shared.versions[&16]));
    write_config(&robot, id, &proxy.url, pin)?;
    let log = robot.dir.path().join("daemon.log");
    let mut daemon = spawn_daemon(shared, &robot, &log)?;
    let mut observed = Observed::default();
    hostile(
        plan,
        shared,
        &robot,
        &mut daemon,
        &log,
        &mut observed,
        findings,
    )
    .await?;
    proxy.turn_honest();
    // Writable first: a filler made before a read-only remount can only go after it.
    for place in [Place::State, Place::Beside] {
        remount(&robot.place(place), "rw");
        let _ = std::fs::remove_file(filler(&robot, place));
    }
    let settled = honest(shared, &robot, findings).await?;
    findings.logs = Some(robot.dir.path().to_owned());
    observed.settled = settled;
    observed.log = std::fs::read_to_string(&log).unwrap_or_default();
    observed.callbacks = shared
        .mock
        .callbacks()
        .into_iter()
        .filter(|c| c.robot_id == id)
        .map(|c| (c.id, c.code))
        .collect();
    observed.installed = std::fs::read(robot.managed()).ok();
    observed.previous = std::fs::read(
        robot
            .managed()
            .with_file_name(format!(".{MANAGED}.ota-prev")),
    )
    .ok();
    observed.new_left = robot
        .managed()
        .with_file_name(format!(".{MANAGED}.ota-new"))
        .exists();
    observed.downloads_left = downloads_left(&robot.state());
    {
        let record = proxy.record.lock().unwrap();
        observed.spoiled.clone_from(&record.spoiled);
        observed.acts.clone_from(&record.acts);
    }
    crate::oracle::judge(plan, shared, &observed, findings);
    if !findings.violations.is_empty() {
        findings.logs = keep_logs(&robot, plan.seed);
    } else {
        findings.logs = None;
    }
    Ok(())
}

/// Copies a failed scenario's logs where they outlive it; returns where.
fn keep_logs(robot: &Robot, seed: u64) -> Option<PathBuf> {
    let dest = std::env::temp_dir().join(format!("adversary-{seed}"));
    std::fs::create_dir_all(&dest).ok()?;
    for name in ["daemon.log", "checks.log", "agent.toml"] {
        let _ = std::fs::copy(robot.dir.path().join(name), dest.join(name));
    }
    Some(dest)
}

fn spawn_daemon(shared: &Shared, robot: &Robot, log: &Path) -> std::io::Result<Child> {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Command::new(&shared.agent)
        .arg("--config")
        .arg(robot.config())
        .arg("run")
        .env("OTA_AGENT_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
}

enum Event {
    Signal(Sig),
    DiskOn(usize),
    DiskOff(usize),
}

#[allow(clippy::too_many_arguments)]
async fn hostile(
    plan: &Plan,
    shared: &Shared,
    robot: &Robot,
    daemon: &mut Child,
    log: &Path,
    observed: &mut Observed,
    findings: &mut Findings,
) -> std::io::Result<()> {
    let mut events: Vec<(u64, Event)> = plan
        .signals
        .iter()
        .map(|&(at, sig)| (at, Event::Signal(sig)))
        .collect();
    for (i, d) in plan.disks.iter().enumerate() {
        events.push((d.at_ms, Event::DiskOn(i)));
        events.push((d.at_ms + d.for_ms, Event::DiskOff(i)));
    }
    events.retain(|e| e.0 < plan.hostile_ms);
    events.sort_by_key(|e| e.0);
    let start = Instant::now();
    let mut spawned = start;
    let mut lost = false;
    for (at, event) in events {
        tokio::time::sleep_until((start + Duration::from_millis(at)).into()).await;
        if restart_if_exited(shared, robot, daemon, log, findings)? {
            spawned = Instant::now();
        }
        match event {
            Event::DiskOn(i) => apply(robot, &plan.disks[i]),
            Event::DiskOff(i) => clear(robot, &plan.disks[i]),
            Event::Signal(sig) => {
                // The moments between exec and the agent's signal handlers are the default
                // actions' own, on any process; a signal waits them out.
                tokio::time::sleep_until((spawned + EXEC_WINDOW).into()).await;
                stop(daemon, sig, at, findings).await;
                observed.stops += 1;
                check_whole(
                    shared,
                    robot,
                    &format!("after {sig:?} at {at} ms"),
                    findings,
                );
                if plan.state_loss && !lost {
                    lost = true;
                    wipe(&robot.state());
                }
                *daemon = spawn_daemon(shared, robot, log)?;
                spawned = Instant::now();
            }
        }
    }
    tokio::time::sleep_until((start + Duration::from_millis(plan.hostile_ms)).into()).await;
    restart_if_exited(shared, robot, daemon, log, findings)?;
    tokio::time::sleep_until((spawned + EXEC_WINDOW).into()).await;
    stop(daemon, Sig::Term, plan.hostile_ms, findings).await;
    observed.stops += 1;
    check_whole(shared, robot, "after the hostile phase", findings);
    Ok(())
}

/// A daemon that ended by itself is started again, as `Restart=always` does; an exit the unit
/// does not restart (65: a newer state) is a finding.
fn restart_if_exited(
    shared: &Shared,
    robot: &Robot,
    daemon: &mut Child,
    log: &Path,
    findings: &mut Findings,
) -> std::io::Result<bool> {
    let Some(status) = daemon.try_wait()? else {
        return Ok(false);
    };
    {
        if status.code() == Some(65) {
            findings.violation(format!(
                "the daemon exited by itself with {status}, which the unit does not restart"
            ));
        } else {
            findings.note(format!("the daemon exited by itself ({status}); restarted"));
        }
        *daemon = spawn_daemon(shared, robot, log)?;
    }
    Ok(true)
}

async fn stop(daemon: &mut Child, sig: Sig, at: u64, findings: &mut Findings) {
    let Some(pid) = daemon
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    else {
        return;
    };
    let signal = match sig {
        Sig::Term => rustix::process::Signal::TERM,
        Sig::Kill => rustix::process::Signal::KILL,
        Sig::Hup => rustix::process::Signal::HUP,
    };
    let sent = Instant::now();
    let _ = rustix::process::kill_process(pid, signal);
    match tokio::time::timeout(STOP_WITHIN, daemon.wait()).await {
        Ok(status) => {
            if sig != Sig::Kill {
                findings.stop_took(sent.elapsed());
                // A stop at a safe point exits 0; a death by the signal saved nothing.
                match status {
                    Ok(status) if !status.success() => findings.violation(format!(
                        "{sig:?} at {at} ms did not stop the daemon cleanly: {status}"
                    )),
                    _ => {}
                }
            }
        }
        Err(_) => {
            findings.violation(format!(
                "the daemon did not stop within {} s of {sig:?} at {at} ms",
                STOP_WITHIN.as_secs()
            ));
            let _ = daemon.kill().await;
        }
    }
}

fn check_whole(shared: &Shared, robot: &Robot, when: &str, findings: &mut Findings) {
    match std::fs::read(robot.managed()) {
        Ok(bytes) if shared.versions.values().any(|v| *v == bytes) => {}
        Ok(bytes) => findings.violation(format!(
            "never broken: {when} the managed file ({} bytes) is none of the versions",
            bytes.len()
        )),
        Err(e) => findings.violation(format!(
            "never broken: {when} the managed file is gone: {e}"
        )),
    }
}

fn filler(robot: &Robot, place: Place) -> PathBuf {
    robot.place(place).join(".adversary-filler")
}

fn apply(robot: &Robot, disk: &Disk) {
    match disk.fault {
        DiskFault::Full => {
            use std::io::Write as _;
            if let Ok(mut f) = std::fs::File::create(filler(robot, disk.place)) {
                let chunk = vec![0u8; 16 * 1024];
                while f.write_all(&chunk).is_ok() {}
                let _ = f.write_all(&[0; 512]);
            }
        }
        DiskFault::ReadOnly => remount(&robot.place(disk.place), "ro"),
    }
}

fn clear(robot: &Robot, disk: &Disk) {
    match disk.fault {
        DiskFault::Full => {
            let _ = std::fs::remove_file(filler(robot, disk.place));
        }
        DiskFault::ReadOnly => remount(&robot.place(disk.place), "rw"),
    }
}

fn remount(dir: &Path, mode: &str) {
    let _ = std::process::Command::new("mount")
        .args(["-o", &format!("remount,{mode}")])
        .arg(dir)
        .stderr(Stdio::null())
        .status();
}

fn wipe(state: &Path) {
    for entry in std::fs::read_dir(state).into_iter().flatten().flatten() {
        let path = entry.path();
        let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
    }
}

fn downloads_left(state: &Path) -> Vec<String> {
    let mut left = Vec::new();
    for pkg in std::fs::read_dir(state.join("packages"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in std::fs::read_dir(pkg.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            left.push(f.file_name().to_string_lossy().into_owned());
        }
    }
    left
}

/// Checks until nothing is under way and no result waits; returns how many checks it took.
async fn honest(
    shared: &Shared,
    robot: &Robot,
    findings: &mut Findings,
) -> std::io::Result<Option<usize>> {
    let log = robot.dir.path().join("checks.log");
    for n in 1..=SETTLE_CHECKS {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let run = Command::new(&shared.agent)
            .arg("--config")
            .arg(robot.config())
            .arg("check")
            .env("OTA_AGENT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .kill_on_drop(true)
            .status();
        if tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .is_err()
        {
            findings.violation("every update ends: an honest check took more than 60 s".into());
            return Ok(None);
        }
        let out = Command::new(&shared.agent)
            .arg("--config")
            .arg(robot.config())
            .args(["status", "--json"])
            .output()
            .await?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let pkg = &status["packages"][0];
        let waiting = pkg["callbacks_waiting"].as_array().map_or(1, Vec::len);
        if pkg["update"].is_null() && waiting == 0 {
            return Ok(Some(n));
        }
    }
    Ok(None)
}
