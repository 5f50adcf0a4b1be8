//! End-to-end tests: the real `ota-mock-server` and `ota-agent` binaries, each in its own
//! process, talking real HTTP on an ephemeral port.

mod helpers;

use std::process::Stdio;
use std::time::Duration;

use helpers::{Server, binary, installed, pairs, robot};
use tokio::process::Command;

#[tokio::test]
async fn demo_update_across_processes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::demo(&tmp.path().join("server"), &[]).await;
    let config = robot(tmp.path(), &server);
    let out = Command::new(binary("ota-agent"))
        .arg("--config")
        .arg(&config)
        .arg("check")
        .output()
        .await
        .expect("run ota-agent");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert_eq!(installed(tmp.path()), server.version(18));
    assert_eq!(server.callbacks().await, pairs(&[("23", "1"), ("25", "1")]));

    let status = Command::new(binary("ota-agent"))
        .arg("--config")
        .arg(&config)
        .args(["status", "--json"])
        .output()
        .await
        .expect("run ota-agent status");
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(json["packages"][0]["version"], "18");
}

#[tokio::test]
async fn daemon_against_a_server_that_wants_post_for_tokens() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::demo(&tmp.path().join("server"), &[]).await;
    // Newer servers answer 405 to a GET for a token; the agent must switch to a POST form.
    let switched = helpers::http()
        .post(format!("{}/admin/token-get", server.url))
        .json(&serde_json::json!({"allowed": false}))
        .send()
        .await
        .expect("admin request");
    assert!(switched.status().is_success());
    let config = robot(tmp.path(), &server);
    let mut agent = Command::new(binary("ota-agent"))
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the daemon");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while server.callbacks().await.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no callbacks within a minute"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.start_kill().expect("stop the daemon");
    let _ = agent.wait().await;
    assert_eq!(installed(tmp.path()), server.version(18));
    assert_eq!(server.callbacks().await, pairs(&[("23", "1"), ("25", "1")]));
}
