//! One scenario per fault, injected through the mock server's admin API; each ends with both
//! invariants.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{Robot, Server, assert_invariants, settle};

const SIZE: usize = 256 * 1024;

async fn world(server_extra: &str, package_extra: &str) -> (tempfile::TempDir, Server, Robot) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::demo(&tmp.path().join("server"), SIZE).await;
    let robot = Robot::new(
        &tmp.path().join("robot"),
        &server,
        server_extra,
        package_extra,
    );
    (tmp, server, robot)
}

async fn patch_gets(server: &Server) -> Vec<serde_json::Value> {
    server
        .requests()
        .await
        .into_iter()
        .filter(|r| {
            r["method"] == "GET" && r["path"].as_str().is_some_and(|p| p.ends_with(".patch"))
        })
        .collect()
}

#[tokio::test]
async fn a_connection_cut_mid_download_resumes() {
    for after in [1, 1500, 5000] {
        let (_tmp, server, robot) = world("", "").await;
        // Three requests get cut: the HEAD that sizes the patch, the download, and its resume.
        let cut = json!({"endpoint": "patch", "path_contains": "--17--", "times": 3, "kind": {"truncate": {"after": after}}});
        server.inject(cut).await;
        assert!(robot.agent(&["check"]).await.status.success());
        settle(&robot, &server).await;
        assert_eq!(assert_invariants(&robot, &server).await, 18);
        let gets = patch_gets(&server).await;
        assert!(
            gets.iter().any(|r| r["range"] == format!("bytes={after}-")),
            "cut after {after}: no resume in {gets:?}"
        );
        let sent: u64 = gets
            .iter()
            .map(|r| r["bytes_sent"].as_u64().unwrap_or(0))
            .sum();
        assert!(
            sent * 2 < server.patch_bytes() * 3,
            "cut after {after}: {sent} bytes sent for {} bytes of patches",
            server.patch_bytes()
        );
    }
}

#[tokio::test]
async fn a_burst_of_server_errors_is_retried() {
    let (_tmp, server, robot) = world("", "").await;
    let burst = json!({"endpoint": "download", "times": 3, "kind": {"status": {"status": 500, "body": "{\"code\":\"500\"}"}}});
    server.inject(burst).await;
    assert!(!robot.agent(&["check"]).await.status.success());
    assert!(
        patch_gets(&server).await.is_empty(),
        "nothing is fetched after a failed check"
    );
    // An HTTP 500 and a code "500" in a 200 answer are both failed checks.
    let coded = json!({"endpoint": "download", "times": 2, "kind": {"status": {"status": 200, "body": "{\"code\":\"500\",\"data\":\"\",\"id\":\"\"}"}}});
    server.inject(coded).await;
    settle(&robot, &server).await;
    assert_eq!(assert_invariants(&robot, &server).await, 18);
}

#[tokio::test]
async fn a_token_revoked_mid_cycle_is_replaced() {
    let (_tmp, server, robot) = world("", "").await;
    let slow = json!({"endpoint": "patch", "path_contains": "--17--", "times": 2, "kind": {"delay_ms": 700}});
    server.inject(slow).await;
    let agent = robot.command(&["check"]).output();
    let revoke = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while server
            .requests()
            .await
            .iter()
            .all(|r| !r["path"].as_str().is_some_and(|p| p.ends_with(".patch")))
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the agent never started downloading"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.revoke_tokens().await;
    };
    let (out, ()) = tokio::join!(agent, revoke);
    let out = out.expect("run ota-agent");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tokens = server
        .requests()
        .await
        .iter()
        .filter(|r| r["path"] == "/oauth/token")
        .count();
    assert!(tokens >= 2, "a new token after the revocation");
    assert_eq!(assert_invariants(&robot, &server).await, 18);
}

#[tokio::test]
async fn a_server_that_refuses_get_for_tokens() {
    let (_tmp, server, robot) = world("", "").await;
    server.allow_token_get(false).await;
    assert!(robot.agent(&["check"]).await.status.success());
    assert_eq!(assert_invariants(&robot, &server).await, 18);
}

#[tokio::test]
async fn a_server_that_stalls_past_the_read_timeout() {
    let (_tmp, server, robot) = world("read_timeout = \"1s\"", "").await;
    let stall = json!({"endpoint": "patch", "path_contains": "--17--", "times": 2, "kind": {"stall": {"after": 2000, "pause_ms": 8000}}});
    server.inject(stall).await;
    let started = std::time::Instant::now();
    assert!(robot.agent(&["check"]).await.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the stall was cut short by the timeout"
    );
    assert_eq!(assert_invariants(&robot, &server).await, 18);
    assert!(
        patch_gets(&server)
            .await
            .iter()
            .any(|r| r["range"] == "bytes=2000-")
    );
}

#[tokio::test]
async fn a_corrupt_patch_installs_the_version_before_it() {
    let (_tmp, server, robot) = world("", "").await;
    let corrupt = json!({"endpoint": "patch", "path_contains": "--18--", "times": 100, "kind": {"corrupt": {"offset": 40}}});
    server.inject(corrupt).await;
    assert!(!robot.agent(&["check"]).await.status.success());
    settle(&robot, &server).await;
    assert_eq!(assert_invariants(&robot, &server).await, 17);
}

#[tokio::test]
async fn a_patch_for_another_base_file_is_refused() {
    let (_tmp, server, robot) = world("", "").await;
    // The robot claims version 16 but holds something shorter: the patch reads past its end.
    let other = server.version(16)[..SIZE / 2].to_vec();
    std::fs::write(robot.managed(), &other).expect("write the managed file");
    settle(&robot, &server).await;
    assert_eq!(robot.installed(), other, "nothing was installed");
    let callbacks = server.callbacks(&robot.id).await;
    assert_eq!(
        callbacks.first().map(|(i, c)| (i.as_str(), c.as_str())),
        Some(("23", "2"))
    );
    assert!(
        callbacks.iter().all(|(i, c)| i != "25" || c == "3"),
        "{callbacks:?}"
    );
}

#[tokio::test]
async fn bad_answers_are_refused_before_anything_is_fetched() {
    let mismatched = json!({"status": {"status": 200, "body": "{\"code\":\"100\",\"data\":\"http://127.0.0.1:9/A-1--17--f.patch;http://127.0.0.1:9/A-2--18--f.patch\",\"id\":\"23\"}"}});
    let html = json!({"status": {"status": 200, "body": "<html><body>Welcome</body></html>", "content_type": "text/html"}});
    let no_version = json!({"status": {"status": 200, "body": "{\"code\":\"100\",\"data\":\"http://127.0.0.1:9/firmware.patch\",\"id\":\"23\"}"}});
    for kind in [mismatched, html, no_version] {
        let (_tmp, server, robot) = world("", "").await;
        server
            .inject(json!({"endpoint": "download", "kind": kind}))
            .await;
        assert!(!robot.agent(&["check"]).await.status.success());
        assert!(
            patch_gets(&server).await.is_empty(),
            "nothing is fetched for {kind}"
        );
        assert!(server.callbacks(&robot.id).await.is_empty());
        settle(&robot, &server).await;
        assert_eq!(assert_invariants(&robot, &server).await, 18);
    }
}

#[tokio::test]
async fn html_from_the_token_endpoint_is_a_failed_check() {
    let (_tmp, server, robot) = world("", "").await;
    let html = json!({"endpoint": "token", "kind": {"status": {"status": 200, "body": "<html>login</html>", "content_type": "text/html"}}});
    server.inject(html).await;
    assert!(!robot.agent(&["check"]).await.status.success());
    settle(&robot, &server).await;
    assert_eq!(assert_invariants(&robot, &server).await, 18);
}

#[tokio::test]
async fn results_wait_out_a_callback_outage_and_arrive_once() {
    let (_tmp, server, robot) = world("", "").await;
    let down = json!({"endpoint": "callback", "times": 6, "kind": {"status": {"status": 503, "body": "unavailable", "content_type": "text/plain"}}});
    server.inject(down).await;
    assert!(!robot.agent(&["check"]).await.status.success());
    assert_eq!(robot.installed(), server.version(18));
    assert!(server.callbacks(&robot.id).await.is_empty());
    for _ in 0..4 {
        robot.agent(&["check"]).await;
    }
    settle(&robot, &server).await;
    assert_eq!(assert_invariants(&robot, &server).await, 18);
    let callbacks = server.callbacks(&robot.id).await;
    assert_eq!(
        callbacks.len(),
        2,
        "each result arrives once: {callbacks:?}"
    );
}

#[tokio::test]
async fn a_file_changed_behind_the_agents_back_is_not_patched() {
    let (_tmp, server, robot) = world("", "").await;
    // The first check records the file (the server says it is up to date).
    let up_to_date = json!({"endpoint": "download", "kind": {"status": {"status": 200, "body": "{\"code\":\"100\",\"data\":\"\",\"id\":\"\"}"}}});
    server.inject(up_to_date).await;
    assert!(robot.agent(&["check"]).await.status.success());
    let changed = b"changed by hand".to_vec();
    std::fs::write(robot.managed(), &changed).expect("change the file");
    settle(&robot, &server).await;
    assert_eq!(robot.installed(), changed);
    // Nothing is wrong with the patches: "not updated yet", and the file is unidentified.
    let callbacks = server.callbacks(&robot.id).await;
    assert!(callbacks.iter().all(|(_, c)| c == "3"), "{callbacks:?}");
    assert!(patch_gets(&server).await.is_empty());
    assert!(robot.status().await["packages"][0]["unidentified"].is_string());
}

#[tokio::test]
async fn a_lost_state_never_becomes_a_guess() {
    let (_tmp, server, robot) = world("", "").await;
    settle(&robot, &server).await;
    assert_eq!(assert_invariants(&robot, &server).await, 18);
    let state = robot.dir.join("state");
    let results = server.callbacks(&robot.id).await.len();
    // Wiped, then corrupt along with the copy of the save before: the file's own record says
    // it is version 18, where the config still says 16.
    std::fs::remove_dir_all(&state).expect("wipe the state");
    settle(&robot, &server).await;
    assert_eq!(assert_invariants(&robot, &server).await, 18);
    for file in ["state.json", "state.json.prev"] {
        std::fs::write(state.join(file), b"\0\0\0").expect("corrupt the state");
    }
    settle(&robot, &server).await;
    assert_eq!(assert_invariants(&robot, &server).await, 18);
    // Of a newer format: left alone, and the agent stops, until a person moves it aside.
    let newer = br#"{"format": 99}"#;
    std::fs::write(state.join("state.json"), newer).expect("a newer state");
    assert_eq!(robot.agent(&["check"]).await.status.code(), Some(65));
    assert_eq!(
        std::fs::read(state.join("state.json")).expect("state"),
        newer
    );
    std::fs::rename(
        state.join("state.json"),
        state.join("from-a-newer-agent.json"),
    )
    .expect("move it aside");
    std::fs::remove_file(state.join("state.json.prev")).expect("and its copy");
    settle(&robot, &server).await;
    assert_eq!(assert_invariants(&robot, &server).await, 18);
    assert_eq!(
        server.callbacks(&robot.id).await.len(),
        results,
        "nothing was offered, patched or reported again"
    );
}

/// Mounts a tmpfs of `size` on `dir`; false where the machine does not allow it (only root
/// may; CI runs as root).
fn mount_tmpfs(dir: &std::path::Path, size: &str) -> bool {
    std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

/// How many requests for a patch (of any method) the server has seen.
async fn patch_requests(server: &Server) -> usize {
    let requests = server.requests().await;
    let is_patch =
        |r: &&serde_json::Value| r["path"].as_str().is_some_and(|p| p.ends_with(".patch"));
    requests.iter().filter(is_patch).count()
}

#[tokio::test]
async fn a_full_disk_delays_the_update_and_loses_nothing() {
    let (_tmp, server, robot) = world("", "").await;
    let state = robot.dir.join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    // A small tmpfs where the machine allows mounting (CI runs as root); else a file-size limit.
    let mounted = mount_tmpfs(&state, "300k");
    if mounted {
        // Room for the patches, not for the patched file: three checks, then "not updated yet".
        for _ in 0..3 {
            assert!(!robot.agent(&["check"]).await.status.success());
        }
        assert_eq!(robot.installed(), server.version(16));
        let callbacks = server.callbacks(&robot.id).await;
        assert!(
            !callbacks.is_empty() && callbacks.iter().all(|(_, c)| c == "3"),
            "{callbacks:?}"
        );
        // Offered again with the disk as full: the same chain is not fetched again.
        let before = patch_requests(&server).await;
        let out = robot.agent(&["check"]).await;
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.contains("not downloaded again until there is room"),
            "{log}"
        );
        assert_eq!(patch_requests(&server).await, before);
        let grown = std::process::Command::new("mount")
            .args(["-o", "remount,size=4m"])
            .arg(&state)
            .status()
            .expect("remount");
        assert!(grown.success());
    } else {
        // Writes past 64 KiB fail with EFBIG: the staging file cannot be written.
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -f 64 && exec \"$0\" --config {} check",
                robot.config.display()
            ))
            .arg(crate::helpers::binary("ota-agent"))
            .output()
            .await
            .expect("run the agent under a file-size limit");
        assert!(!out.status.success());
        assert_eq!(robot.installed(), server.version(16));
        assert!(
            server
                .callbacks(&robot.id)
                .await
                .iter()
                .all(|(_, c)| c != "2"),
            "a full disk is not a failed update"
        );
    }
    settle(&robot, &server).await;
    let version = assert_invariants(&robot, &server).await;
    if mounted {
        let _ = std::process::Command::new("umount").arg(&state).status();
    }
    assert_eq!(version, 18);
}

#[tokio::test]
async fn a_state_disk_that_fills_during_the_health_check_keeps_the_install() {
    // The health check passes, and fills the state directory's file system on its way (as a
    // new service's logs might). The save that ends the install failed, and the next start
    // took the install marker for hooks a restart had interrupted: rolled back, `2` for both.
    let fill = "health_check = \"dd if=/dev/zero of=\\\"$(dirname \\\"$(dirname \\\"$OTA_PATH\\\")\\\")/state/filler\\\" bs=64k 2>/dev/null; true\"";
    let (_tmp, server, robot) = world("", fill).await;
    let state = robot.dir.join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let mounted = mount_tmpfs(&state, "8m");
    if !mounted {
        eprintln!("not played: mounting a tmpfs needs root");
        return;
    }
    robot.agent(&["check"]).await;
    assert!(state.join("filler").exists(), "the hook filled the disk");
    assert_eq!(robot.installed(), server.version(18));
    // Room again, and a routine restart: the install stands.
    std::fs::remove_file(state.join("filler")).expect("room again");
    settle(&robot, &server).await;
    let version = assert_invariants(&robot, &server).await;
    let _ = std::process::Command::new("umount").arg(&state).status();
    assert_eq!(version, 18);
    let callbacks = server.callbacks(&robot.id).await;
    assert!(callbacks.iter().all(|(_, c)| c == "1"), "{callbacks:?}");
}

#[tokio::test]
async fn a_full_disk_beside_the_managed_file_ends_in_not_updated_yet() {
    let (_tmp, server, robot) = world("", "").await;
    // The managed file's directory on a tmpfs with room for the file but not for its new
    // version beside it. Only root can mount one (CI runs as root); elsewhere this scenario
    // cannot be played and says so.
    let dir = robot.managed().parent().expect("robot dir").to_owned();
    let file = robot.installed();
    let mounted = mount_tmpfs(&dir, &format!("{}k", file.len() / 1024 + 32));
    if !mounted {
        eprintln!("not played: mounting a tmpfs needs root");
        return;
    }
    std::fs::write(robot.managed(), &file).expect("managed file on the tmpfs");
    let mut log = String::new();
    for _ in 0..3 {
        let out = robot.agent(&["check"]).await;
        log.push_str(&String::from_utf8_lossy(&out.stderr));
        if !server.callbacks(&robot.id).await.is_empty() {
            break;
        }
    }
    assert!(
        log.contains("not enough free space beside the managed file"),
        "{log}"
    );
    assert_eq!(robot.installed(), server.version(16));
    let callbacks = server.callbacks(&robot.id).await;
    assert!(
        !callbacks.is_empty() && callbacks.iter().all(|(_, c)| c == "3"),
        "{callbacks:?}"
    );
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=4m"])
        .arg(&dir)
        .status()
        .expect("remount");
    assert!(grown.success());
    settle(&robot, &server).await;
    let version = assert_invariants(&robot, &server).await;
    let _ = std::process::Command::new("umount").arg(&dir).status();
    assert_eq!(version, 18);
}

#[tokio::test]
async fn a_state_disk_full_at_start_is_waited_out_not_an_exit() {
    // Found by the adversary: a daemon that could not save its state at start exited 1, and
    // systemd could only restart it into the same failure, once every `RestartSec`.
    let (_tmp, server, robot) = world("", "").await;
    let state = robot.dir.join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let mounted = mount_tmpfs(&state, "4m");
    if !mounted {
        eprintln!("not played: mounting a tmpfs needs root");
        return;
    }
    let filler = state.join("filler");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).expect("filler");
        while f.write_all(&[0; 64 * 1024]).is_ok() {}
        while f.write_all(&[0; 512]).is_ok() {}
    }
    let mut daemon = robot
        .command(&["run"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the daemon");
    let early = tokio::time::timeout(std::time::Duration::from_secs(3), daemon.wait()).await;
    assert!(early.is_err(), "the daemon ended: {early:?}");
    std::fs::remove_file(&filler).expect("room again");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while server.callbacks(&robot.id).await.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no callbacks within a minute of room"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    daemon.start_kill().expect("stop the daemon");
    let _ = daemon.wait().await;
    let version = assert_invariants(&robot, &server).await;
    let _ = std::process::Command::new("umount").arg(&state).status();
    assert_eq!(version, 18);
}
