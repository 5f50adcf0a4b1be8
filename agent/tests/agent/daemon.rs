//! The daemon (`ota-agent run`): it updates on its own, resumes after a kill, stops on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use ota_mock_server::{Endpoint, Fault, FaultKind};
use rustix::process::{Pid, Signal, kill_process};
use tokio::process::{Child, Command};

use crate::helpers::{World, pairs};

pub(crate) fn spawn(w: &World) -> Child {
    spawn_with(w, &[])
}

pub(crate) fn spawn_with(w: &World, env: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ota-agent"))
        .envs(env.iter().copied())
        .arg("--config")
        .arg(&w.config)
        .arg("run")
        .env("OTA_AGENT_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

pub(crate) fn signal(child: &Child, signal: Signal) {
    let pid = Pid::from_raw(child.id().unwrap() as i32).unwrap();
    kill_process(pid, signal).unwrap();
}

/// Starts the daemon with the first patch stalling after 1000 bytes (for longer than any test
/// runs), and returns once those bytes are durable.
async fn spawn_stalled(w: &World) -> Child {
    let stall = FaultKind::Stall {
        after: 1000,
        pause: Duration::from_secs(30),
    };
    // Twice: the agent asks each patch's size with a HEAD before downloading.
    w.server.inject(
        Fault::new(Endpoint::Patch, stall)
            .path_contains("--17--")
            .times(2),
    );
    let child = spawn(w);
    let state = w.dir().join("state").join("state.json");
    until("the first 1000 bytes to be durable", || {
        std::fs::read_to_string(&state)
            .is_ok_and(|s| s.replace(' ', "").contains("\"durable\":1000"))
    })
    .await;
    child
}

/// Waits (bounded) until `done` holds; the agent works at its own pace.
pub(crate) async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn stderr_of(child: Child) -> (std::process::ExitStatus, String) {
    let out = child.wait_with_output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("--- agent stderr\n{text}");
    (out.status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_updates_then_waits_and_stops_on_sigterm() {
    let w = World::new("").await;
    let child = spawn(&w);
    until("both callbacks", || w.callbacks().len() == 2).await;
    assert_eq!(w.installed(), w.version(18));
    signal(&child, Signal::TERM);
    let (status, log) = stderr_of(child).await;
    assert!(status.success(), "{status}");
    assert!(
        log.contains("next check in"),
        "the daemon schedules its next poll"
    );
    assert!(log.contains("stopping"));
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "1")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_daemon_resumes_its_download() {
    let w = World::new("").await;
    let child = spawn_stalled(&w).await;
    signal(&child, Signal::KILL);
    let _ = stderr_of(child).await;
    assert_eq!(w.installed(), w.version(16));

    w.server.clear_faults();
    let child = spawn(&w);
    until("both callbacks", || w.callbacks().len() == 2).await;
    signal(&child, Signal::TERM);
    let (status, log) = stderr_of(child).await;
    assert!(status.success());
    assert!(
        log.contains("resuming the update a restart interrupted"),
        "{log}"
    );
    assert_eq!(w.installed(), w.version(18));
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "1")]));
    let resumed = w
        .server
        .requests()
        .into_iter()
        .any(|r| r.range.as_deref() == Some("bytes=1000-"));
    assert!(
        resumed,
        "the second run asked for the rest of the patch only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_download_saves_progress() {
    let w = World::new("").await;
    let child = spawn_stalled(&w).await;
    signal(&child, Signal::TERM);
    let (status, _) = stderr_of(child).await;
    assert!(status.success());
    let update = &w.status().await["packages"][0]["update"];
    assert_eq!(update["step"], "downloading");
    assert_eq!(update["downloaded_bytes"], 1000);
    assert!(w.callbacks().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_mid_download_stops_at_a_safe_point_and_the_unit_restarts_it() {
    // SIGHUP's default action killed the daemon (exit 129) with its progress unsaved, and
    // `Restart=on-failure` took that for a clean exit: nothing started it again.
    let w = World::new("").await;
    let child = spawn_stalled(&w).await;
    let stopped_at = tokio::time::Instant::now();
    signal(&child, Signal::HUP);
    let (status, log) = stderr_of(child).await;
    assert!(status.success(), "{status:?}");
    assert!(log.contains("SIGHUP received"), "{log}");
    assert!(stopped_at.elapsed() < Duration::from_secs(5));
    let update = &w.status().await["packages"][0]["update"];
    assert_eq!(update["downloaded_bytes"], 1000, "the progress is kept");
    let unit = include_str!("../../../systemd/ota-agent.service");
    assert!(unit.lines().any(|l| l == "Restart=always"), "{unit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_long_hash_stops_within_a_second() {
    // A 16 GiB managed file (sparse: it costs no disk), hashed at first sight: seconds of work
    // that did not look at the stop signal.
    let w = World::new("").await;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(crate::helpers::managed_path(w.dir()))
        .unwrap();
    file.set_len(16 << 30).unwrap();
    drop(file);
    let child = spawn(&w);
    let io = format!("/proc/{}/io", child.id().unwrap());
    let read = || {
        std::fs::read_to_string(&io)
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("rchar: ")?.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    until("the hash to be under way", || read() > 256 << 20).await;
    let stopped_at = tokio::time::Instant::now();
    signal(&child, Signal::TERM);
    let (status, _) = stderr_of(child).await;
    assert!(status.success());
    assert!(
        stopped_at.elapsed() < Duration::from_secs(1),
        "the stop took {:?}",
        stopped_at.elapsed()
    );
}

pub(crate) type Heard = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// A notification socket in the world's directory, and what the agent sends to it, as systemd
/// would hear it.
pub(crate) fn listen_as_systemd(w: &World) -> (std::path::PathBuf, Heard) {
    let path = w.dir().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
    let heard = Heard::default();
    let sink = heard.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf).await {
            sink.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    });
    (path, heard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_status_watchdog_and_stopping() {
    let w = World::new("").await;
    let (path, heard) = listen_as_systemd(&w);
    let child = spawn_with(
        &w,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let has = |needle: &str| heard.lock().unwrap().iter().any(|m| m.contains(needle));
    until("idle with a watchdog", || {
        has("STATUS=idle; next check at") && has("WATCHDOG=1")
    })
    .await;
    signal(&child, Signal::TERM);
    let (status, _) = stderr_of(child).await;
    assert!(status.success());
    until("STOPPING=1", || has("STOPPING=1")).await;
    let heard = heard.lock().unwrap().clone();
    assert!(heard[0].starts_with("READY=1"), "{heard:?}");
    for step in [
        "checking for updates",
        "downloaded 100%",
        "applying update 25",
        "installing",
        "sending 2 update result(s)",
    ] {
        assert!(
            heard.iter().any(|m| m.contains(step)),
            "no status for {step}: {heard:?}"
        );
    }
}

/// An update that waits for its install window says so to systemd, and the daemon stays
/// waiting (no result, nothing installed) until it is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_that_an_update_waits_for_its_window() {
    let window = crate::helpers::window_in_an_hour();
    let w = World::with("", &format!("install_window = [\"{window}\"]")).await;
    let (path, heard) = listen_as_systemd(&w);
    let child = spawn_with(
        &w,
        &[("NOTIFY_SOCKET", path.to_str().unwrap()), ("TZ", "UTC0")],
    );
    let has = |needle: &str| heard.lock().unwrap().iter().any(|m| m.contains(needle));
    until("the window's status line", || {
        has(&format!(
            "waits for the install window ({window}); next try at"
        ))
    })
    .await;
    assert_eq!(w.status().await["packages"][0]["update"]["step"], "waiting");
    signal(&child, Signal::TERM);
    let (status, log) = stderr_of(child).await;
    assert!(status.success());
    // The daemon sleeps until the window opens, not for the poll interval (an hour and more).
    assert!(
        log.contains("next check in 59m") || log.contains("next check in 60m 0s"),
        "{log}"
    );
    assert!(w.callbacks().is_empty());
    assert_eq!(w.installed(), w.version(16));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_the_health_check_rolls_back() {
    let w = World::new("health_check = \"sleep 30\"").await;
    let child = spawn(&w);
    let state = w.dir().join("state").join("state.json");
    until("the hooks to start", || {
        std::fs::read_to_string(&state).is_ok_and(|s| s.contains("\"hooks_started\":true"))
    })
    .await;
    // The new version "hung the robot": the agent dies in its health check. (Its orphaned
    // `sleep` keeps the stderr pipe open, so only the exit is awaited.)
    let mut child = child;
    signal(&child, Signal::KILL);
    child.wait().await.unwrap();
    assert_eq!(w.installed(), w.version(18));

    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rolling back to version 16"));
    assert_eq!(w.installed(), w.version(16));
    assert_eq!(w.callbacks(), pairs(&[("23", "2"), ("25", "2")]));
    assert_eq!(w.status().await["packages"][0]["version"], "16");
}

/// Sends SIGTERM to the agent's whole process group, as systemd does to the unit's cgroup: its
/// hooks get it too.
fn stop_like_systemd(child: &Child) {
    let pid = Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process_group(pid, Signal::TERM).unwrap();
}

/// The agent in a process group of its own, so that [`stop_like_systemd`] reaches its hooks.
fn spawn_grouped(w: &World) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ota-agent"))
        .arg("--config")
        .arg(&w.config)
        .arg("run")
        .env("OTA_AGENT_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_hook_runs_the_hooks_again_at_the_next_start() {
    // The health check takes long the first time only; a routine stop comes in the middle.
    let once = "test -e \"$OTA_PATH.once\" || { touch \"$OTA_PATH.once\"; sleep 30; }";
    let w = World::new(&format!("health_check = '{once}'")).await;
    let child = spawn_grouped(&w);
    let managed = crate::helpers::managed_path(w.dir());
    let marker = managed.with_extension("apk.once");
    until("the health check to start", || marker.exists()).await;
    let stopped_at = tokio::time::Instant::now();
    stop_like_systemd(&child);
    let (status, log) = stderr_of(child).await;
    assert!(status.success(), "{status}");
    assert!(
        stopped_at.elapsed() < Duration::from_secs(15),
        "the stop took {:?}",
        stopped_at.elapsed()
    );
    assert!(
        !log.contains("rolling back"),
        "a stop is no failed hook:\n{log}"
    );
    assert_eq!(w.installed(), w.version(18));
    assert!(w.callbacks().is_empty());

    let child = spawn(&w);
    until("both callbacks", || w.callbacks().len() == 2).await;
    signal(&child, Signal::TERM);
    let (_, log) = stderr_of(child).await;
    assert!(log.contains("running health_check hook"), "{log}");
    assert_eq!(w.installed(), w.version(18));
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "1")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_request_stops_within_seconds() {
    let w = World::new("").await;
    // The token answer drips one byte a second: a request that takes minutes.
    w.server
        .inject(Fault::new(Endpoint::Token, FaultKind::Drip(Duration::from_secs(1))).times(5));
    let child = spawn(&w);
    until("the token request", || {
        w.server.requests().iter().any(|r| r.path == "/oauth/token")
    })
    .await;
    let stopped_at = tokio::time::Instant::now();
    signal(&child, Signal::TERM);
    let (status, log) = stderr_of(child).await;
    assert!(status.success());
    assert!(log.contains("stopping"), "{log}");
    assert!(
        stopped_at.elapsed() < Duration::from_secs(5),
        "the stop took {:?}",
        stopped_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_check_in_the_future_does_not_delay_the_first_check() {
    let w = World::new("").await;
    // The state says the last check was a day from now: the clock was wrong then, or is now.
    std::fs::create_dir_all(w.dir().join("state")).unwrap();
    let out = w.agent(&["status", "--json"]).await;
    assert!(out.status.success());
    let state = w.dir().join("state").join("state.json");
    let tomorrow = ota_agent::unix_now() + 86_400;
    let facts = serde_json::json!({
        "format": 1,
        "packages": {"com.ubtechinc.alpha2services/service5mic": {
            "version": "16", "sha256": null, "update": null,
            "last_check": {"at_unix": tomorrow, "ok": true, "result": "up to date"}
        }},
        "outbox": []
    });
    std::fs::write(&state, serde_json::to_vec(&facts).unwrap()).unwrap();
    let child = spawn(&w);
    until("both callbacks", || w.callbacks().len() == 2).await;
    signal(&child, Signal::TERM);
    let (_, log) = stderr_of(child).await;
    assert!(!log.contains("next check in 59m"), "{log}");
}

/// `wchar` of `/proc/PID/io`: every byte the process handed to write(2) and its kin.
fn written(child: &Child) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{}/io", child.id().unwrap())).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_failure_costs_a_bounded_amount_of_flash_per_cycle() {
    // The install fails at every cycle (a directory stands where the new file goes), and the
    // daemon retries every second or two for as long as the test watches.
    let w = World::with("", "max_failed_cycles = 1000").await;
    let blocker =
        crate::helpers::managed_path(w.dir()).with_file_name(".Alpha2Services.apk.ota-new");
    std::fs::create_dir(&blocker).unwrap();
    let mut child = spawn(&w);
    let stderr = child.stderr.take().unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut reader = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    let passes = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains("the pass saved the state"))
            .count()
    };
    until("the first failed pass", || {
        passes(&lines.lock().unwrap()) >= 1
    })
    .await;
    let start = written(&child);
    until("five more failed passes", || {
        passes(&lines.lock().unwrap()) >= 6
    })
    .await;
    let bytes = written(&child) - start;
    signal(&child, Signal::TERM);
    child.wait().await.unwrap();
    let lines = lines.lock().unwrap().clone();
    let per_pass: Vec<(u64, u64)> = lines
        .iter()
        .filter_map(|l| {
            let rest = l.split("the pass saved the state ").nth(1)?;
            let n: Vec<u64> = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|s| s.parse().ok())
                .collect();
            Some((n[0], n[2]))
        })
        .collect();
    // Each pass re-applies the chain into the state directory (two 200 KiB versions) and
    // saves a few facts; the bound is three versions' worth and 16 fsyncs a pass.
    let file = w.version(16).len() as u64;
    eprintln!("{bytes} bytes written in 5 passes; (saves, fsyncs) per pass: {per_pass:?}");
    assert!(
        bytes / 5 < 3 * file + 64 * 1024,
        "{bytes} bytes in 5 passes"
    );
    for (saves, fsyncs) in &per_pass[1..] {
        assert!(*saves <= 8 && *fsyncs <= 16, "{per_pass:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_dropped_during_an_interrupted_install_rolls_it_back() {
    let once = "test -e \"$OTA_PATH.once\" || { touch \"$OTA_PATH.once\"; sleep 30; }";
    let signed = crate::helpers::Serve {
        signed: true,
        tls: false,
        valid_from: None,
    };
    let w = World::serving(signed, &format!("post_install = '{once}'"), "").await;
    w.secure(&format!(
        "public_keys = [\"{}\"]\nrequire_signatures = true",
        w.vendor_key()
    ));
    let child = spawn_grouped(&w);
    let marker = crate::helpers::managed_path(w.dir()).with_extension("apk.once");
    until("the post_install hook to start", || marker.exists()).await;
    stop_like_systemd(&child);
    let (status, _) = stderr_of(child).await;
    assert!(status.success());
    assert_eq!(w.installed(), w.version(18), "swapped, hooks not done");
    // The vendor's key is revoked on the robot before the next start.
    w.distrust_vendor_key();
    let out = w.agent(&["check"]).await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("no longer holds"), "{log}");
    assert_eq!(w.installed(), w.version(16));
    assert_eq!(w.callbacks(), pairs(&[("23", "2"), ("25", "2")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_keeps_stopping_the_agent_is_rolled_back() {
    // A post_install that shuts the robot down (a reboot, say) would run at every start.
    let w = World::new("post_install = 'echo run >> \"$OTA_PATH.runs\"; sleep 30'").await;
    let runs = crate::helpers::managed_path(w.dir()).with_extension("apk.runs");
    for stop in 1..=3 {
        let child = spawn_grouped(&w);
        until("the post_install hook to start", || {
            std::fs::read_to_string(&runs).is_ok_and(|r| r.lines().count() >= stop)
        })
        .await;
        stop_like_systemd(&child);
        let (status, _) = stderr_of(child).await;
        assert!(status.success());
        assert!(w.callbacks().is_empty());
    }
    let out = w.agent(&["check"]).await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("the hooks were stopped 3 times"), "{log}");
    assert_eq!(w.installed(), w.version(16));
    assert_eq!(w.callbacks(), pairs(&[("23", "2"), ("25", "2")]));
}

/// Versions 17 and 18 with the very bytes of 16: the new file's sha256 is the base's.
async fn identical_versions(extra: &str) -> World {
    let copies = |dir: &std::path::Path, text| {
        for code in [17, 18] {
            let to = dir.join(format!("versions/{code}"));
            std::fs::copy(dir.join("versions/16"), to).unwrap();
        }
        text
    };
    World::edited(crate::helpers::Serve::default(), copies, extra, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_with_the_old_bytes_whose_hooks_a_restart_cut_is_rolled_back() {
    // The hook hangs once, as a new version that hangs the robot would; it runs only once.
    let once = "echo run >> \"$OTA_PATH.runs\"; test -e \"$OTA_PATH.once\" || { touch \"$OTA_PATH.once\"; sleep 30; }";
    let w = identical_versions(&format!("health_check = '{once}'")).await;
    let child = spawn(&w);
    let state = w.dir().join("state").join("state.json");
    until("the hooks to start", || {
        std::fs::read_to_string(&state).is_ok_and(|s| s.contains("\"hooks_started\":true"))
    })
    .await;
    signal(&child, Signal::KILL);
    let mut child = child;
    child.wait().await.unwrap();
    let out = w.agent(&["check"]).await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("a restart interrupted its hooks"), "{log}");
    let runs = crate::helpers::managed_path(w.dir()).with_extension("apk.runs");
    assert_eq!(std::fs::read_to_string(runs).unwrap().lines().count(), 1);
    assert_eq!(w.installed(), w.version(16));
    // The file is both versions: the ids end, as installed.
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "1")]));
}
