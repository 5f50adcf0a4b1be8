//! Progress for the robot's apps: the daemon's events socket and `ota-agent watch`, through a
//! whole update against the mock server.

use std::process::Stdio;
use std::time::Duration;

use ota_mock_server::{Endpoint, Fault, FaultKind};
use rustix::process::Signal;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::daemon::{signal, spawn, stderr_of, until};
use crate::helpers::{FILE_NAME, PACKAGE, World, events_path};

/// A world whose first check the server answers only after 3 s, so that a client connects
/// before anything is fetched, and whose first patch pauses after 1000 bytes for 1.5 s, so that
/// its download is seen on the way.
async fn slow_world() -> World {
    let w = World::new("").await;
    w.server.inject(Fault::new(
        Endpoint::Download,
        FaultKind::Delay(Duration::from_secs(3)),
    ));
    let stall = FaultKind::Stall {
        after: 1000,
        pause: Duration::from_millis(1500),
    };
    // Twice: the agent asks each patch's size with a HEAD before downloading.
    w.server.inject(
        Fault::new(Endpoint::Patch, stall)
            .path_contains("--17--")
            .times(2),
    );
    w
}

/// Reads lines until one passes `last`, within a minute.
async fn read_until<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    mut last: impl FnMut(&str) -> bool,
) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no further event within a minute; seen: {seen:#?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the stream ended; seen: {seen:#?}"));
        let done = last(&line);
        seen.push(line);
        if done {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_see_a_whole_update_as_it_happens() {
    let w = slow_world().await;
    let child = spawn(&w);
    let socket = events_path(w.dir());
    until("the events socket", || socket.exists()).await;
    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let mut lines = BufReader::new(stream).lines();
    let mut results = 0;
    let raw = read_until(&mut lines, |line| {
        results += usize::from(line.contains(r#""event":"result""#));
        results == 2 && line.contains(r#""event":"idle""#)
    })
    .await;
    signal(&child, Signal::TERM);
    let (status, _) = stderr_of(child).await;
    assert!(status.success());

    let lines: Vec<Value> = raw
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["event"], "snapshot", "{raw:#?}");
    // The present the client connected to, then what happened: one list of events.
    let mut events: Vec<Value> = lines[0]["events"].as_array().unwrap().clone();
    events.extend(lines[1..].iter().cloned());
    let key = format!("{PACKAGE}/{FILE_NAME}");
    for e in &events {
        assert!(e["at_unix"].as_u64().unwrap() > 1_700_000_000, "{e}");
        if e["event"] != "idle" {
            assert_eq!(e["package"], key.as_str(), "{e}");
        }
    }
    let steps: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| e["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        ["check", "verify", "download", "apply", "install", "report"],
        "{raw:#?}"
    );
    let ids = &events.iter().find(|e| e["step"] == "download").unwrap()["ids"];
    assert_eq!(*ids, serde_json::json!(["23", "25"]));

    // Progress comes while downloading, rising to 100 % for each patch.
    let at = |step: &str| events.iter().position(|e| e["step"] == step).unwrap();
    let (download, apply) = (at("download"), at("apply"));
    for id in ["23", "25"] {
        let percents: Vec<(usize, u64)> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| e["event"] == "progress" && e["id"] == id)
            .map(|(i, e)| (i, e["percent"].as_u64().unwrap()))
            .collect();
        assert!(!percents.is_empty(), "no progress for update {id}");
        assert!(percents.iter().all(|(i, _)| (download..apply).contains(i)));
        assert!(
            percents.windows(2).all(|p| p[0].1 <= p[1].1),
            "{percents:?}"
        );
        assert_eq!(percents.last().unwrap().1, 100, "{percents:?}");
    }
    // The stalled patch was seen on the way, not only at its end.
    let first = events
        .iter()
        .find(|e| e["event"] == "progress" && e["id"] == "23")
        .unwrap();
    assert!(first["percent"].as_u64().unwrap() < 100, "{first}");
    assert!(first["bytes"].as_u64().unwrap() < first["total"].as_u64().unwrap());

    let results: Vec<(&str, u64)> = events
        .iter()
        .filter(|e| e["event"] == "result")
        .map(|e| (e["id"].as_str().unwrap(), e["code"].as_u64().unwrap()))
        .collect();
    assert_eq!(results, [("23", 1), ("25", 1)]);
    // Results are queued after the install and sent by the report step.
    let first_result = events.iter().position(|e| e["event"] == "result").unwrap();
    assert!(at("install") < first_result && first_result < at("report"));
    assert!(events.last().unwrap()["next_check_unix"].as_u64().is_some());
}

/// Spawns `ota-agent watch` with `args`, its output piped.
fn watch(w: &World, args: &[&str]) -> tokio::process::Child {
    Command::new(env!("CARGO_BIN_EXE_ota-agent"))
        .arg("--config")
        .arg(&w.config)
        .arg("watch")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_the_events_until_the_agent_stops() {
    let w = slow_world().await;
    let agent = spawn(&w);
    let socket = events_path(w.dir());
    until("the events socket", || socket.exists()).await;
    let mut json = watch(&w, &["--json"]);
    let mut text = watch(&w, &[]);
    let mut json_lines = BufReader::new(json.stdout.take().unwrap()).lines();
    let mut text_lines = BufReader::new(text.stdout.take().unwrap()).lines();
    let mut seen_json = read_until(&mut json_lines, |l| l.contains(r#""event":"idle""#)).await;
    let mut seen_text = read_until(&mut text_lines, |l| l.starts_with("idle; next check at")).await;
    signal(&agent, Signal::TERM);
    let (status, _) = stderr_of(agent).await;
    assert!(status.success());
    // The agent's stop closes the socket, and watch ends with it.
    while let Some(line) = json_lines.next_line().await.unwrap() {
        seen_json.push(line);
    }
    while let Some(line) = text_lines.next_line().await.unwrap() {
        seen_text.push(line);
    }
    assert!(json.wait().await.unwrap().success());
    assert!(text.wait().await.unwrap().success());

    let events: Vec<Value> = seen_json
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["event"], "snapshot");
    let results: Vec<&Value> = events.iter().filter(|e| e["event"] == "result").collect();
    assert_eq!(results.len(), 2, "{seen_json:#?}");
    assert!(results.iter().all(|e| e["code"] == 1));

    let key = format!("{PACKAGE}/{FILE_NAME}");
    for expected in [
        format!("{key}: update 23, 25: downloading"),
        format!("{key}: update 23: downloading 100% ("),
        format!("{key}: update 25: result 1 (installed)"),
    ] {
        assert!(
            seen_text.iter().any(|l| l.starts_with(&expected)),
            "no {expected:?} in {seen_text:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_without_an_agent_names_the_socket() {
    let w = World::new("").await;
    let out = w.agent(&["watch"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let socket = events_path(w.dir());
    assert!(
        stderr.contains(&socket.display().to_string()) && stderr.contains("is the agent running?"),
        "{stderr}"
    );
}

/// An update that waits for the robot says so to the apps: a deferral by a hook and a closed
/// install window each have their event, with the ids and when the agent tries again; a client
/// that connects while it waits gets the wait in its snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_see_a_deferral_and_a_closed_window() {
    let hooks = tempfile::tempdir().unwrap();
    let flag = hooks.path().join("go");
    let window = crate::helpers::window_in_an_hour();
    let w = World::with(
        &format!("pre_download = \"test -e '{}'\"", flag.display()),
        &format!("defer_retry = \"1s\"\ninstall_window = [\"{window}\"]"),
    )
    .await;
    let child = crate::daemon::spawn_with(&w, &[("TZ", "UTC0")]);
    let socket = events_path(w.dir());
    until("the events socket", || socket.exists()).await;
    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let mut lines = BufReader::new(stream).lines();
    let deferred = read_until(&mut lines, |l| l.contains(r#""event":"deferred""#)).await;
    let deferred: Value = serde_json::from_str(deferred.last().unwrap()).unwrap();
    assert_eq!(deferred["ids"], serde_json::json!(["23", "25"]));
    assert!(
        deferred["reason"]
            .as_str()
            .unwrap()
            .contains("pre_download")
    );
    assert!(deferred["until_unix"].as_u64().is_some());

    std::fs::write(&flag, "").unwrap();
    let waiting = read_until(&mut lines, |l| {
        l.contains(r#""event":"waiting_for_window""#)
    })
    .await;
    let waiting: Value = serde_json::from_str(waiting.last().unwrap()).unwrap();
    let opens = waiting["until_unix"].as_u64().unwrap();
    let now = waiting["at_unix"].as_u64().unwrap();
    assert!((now + 3500..=now + 3600).contains(&opens), "{waiting}");

    // A late client hears the wait first.
    let late = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let mut late = BufReader::new(late).lines();
    let first = read_until(&mut late, |_| true).await;
    assert!(first[0].contains(r#""event":"snapshot""#), "{first:?}");
    assert!(first[0].contains("waiting_for_window"), "{first:?}");
    signal(&child, Signal::TERM);
    let (status, _) = stderr_of(child).await;
    assert!(status.success());
    assert!(w.callbacks().is_empty());
}

/// 40 clients that connect and never read, 4 that write as fast as they can and connect again
/// when dropped, and one that keeps the listen queue full of connections (up to 900), as
/// another user than root: the robot's apps, by mistake or on purpose.
const FLOOD: &str = r#"
import socket, sys, threading, time
path, seconds = sys.argv[1], float(sys.argv[2])
end = time.time() + seconds
idle = []
for _ in range(40):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        idle.append(s)
    except OSError:
        pass
def queue():
    held = []
    while time.time() < end:
        s = socket.socket(socket.AF_UNIX)
        s.setblocking(False)
        try:
            s.connect(path)
            held.append(s)
        except OSError:
            s.close()
            time.sleep(0.001)
        if len(held) > 900:
            held.pop(0).close()
threading.Thread(target=queue, daemon=True).start()
def write():
    while time.time() < end:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            while time.time() < end:
                s.sendall(b"x" * 4096)
        except OSError:
            pass
        finally:
            s.close()
threads = [threading.Thread(target=write) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"#;

/// The daemon, quiet (a flood makes a debug line per client it drops).
fn quiet_daemon(w: &World) -> tokio::process::Child {
    Command::new(env!("CARGO_BIN_EXE_ota-agent"))
        .arg("--config")
        .arg(&w.config)
        .arg("run")
        .env("OTA_AGENT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// CPU time (user and system) of process `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Runs a whole update with the daemon (and, with `flood`, the flood on its socket from the
/// start); returns how long it took and the daemon's CPU ticks in the 5 s after it ended.
async fn update_under(flood: bool) -> (Duration, u64, Option<String>) {
    let w = World::new("").await;
    // The flood runs as nobody, who must reach the socket in the test's directory.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(w.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let started = tokio::time::Instant::now();
    let agent = quiet_daemon(&w);
    let socket = events_path(w.dir());
    until("the events socket", || socket.exists()).await;
    let flooding = flood.then(|| {
        use std::os::unix::process::CommandExt as _;
        std::process::Command::new("python3")
            .args(["-c", FLOOD])
            .arg(&socket)
            .arg("20")
            .uid(65534)
            .spawn()
            .expect("python3 for the flood")
    });
    until("both results", || w.callbacks().len() >= 2).await;
    let took = started.elapsed();
    // While the flood goes on: root's watch gets its snapshot, and the agent, idle, stays so.
    let snapshot = if flood {
        let mut watching = watch(&w, &["--json"]);
        let mut lines = BufReader::new(watching.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await;
        Some(format!("{first:?}"))
    } else {
        None
    };
    let pid = agent.id().unwrap();
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ticks = cpu_ticks(pid) - before;
    if let Some(mut f) = flooding {
        let _ = f.kill();
        let _ = f.wait();
    }
    signal(&agent, Signal::TERM);
    let _ = agent.wait_with_output().await;
    (took, ticks, snapshot)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_local_clients_locks_no_one_out_and_costs_no_cpu() {
    // Before: 40 silent clients took every place (`watch` printed nothing and exited 0), and 4
    // writing ones kept the idle agent at 98 % of a core.
    if !rustix::process::geteuid().is_root() {
        eprintln!("not played: the flood runs as another user, which needs root");
        return;
    }
    let (alone, _, _) = update_under(false).await;
    let (flooded, ticks, snapshot) = update_under(true).await;
    let snapshot = snapshot.unwrap();
    assert!(
        snapshot.contains(r#"\"event\":\"snapshot\""#),
        "watch got: {snapshot}"
    );
    // 10 % of a core over 5 s is 50 ticks at the usual 100 a second.
    assert!(
        ticks < 50,
        "the idle agent used {ticks} ticks of CPU in 5 s under the flood"
    );
    assert!(
        flooded.as_secs_f64() <= alone.as_secs_f64() * 1.2 + 1.0,
        "the update took {flooded:?} under the flood, {alone:?} without"
    );
    eprintln!("update alone {alone:?}, under the flood {flooded:?}; idle CPU {ticks} ticks in 5 s");
}
