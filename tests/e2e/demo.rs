//! The demo's update, as a one-shot check and as the daemon.

use std::process::Stdio;
use std::time::Duration;

use crate::helpers::{Robot, Server, assert_invariants};

#[tokio::test]
async fn demo_update_across_processes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::demo(&tmp.path().join("server"), 256 * 1024).await;
    let robot = Robot::new(&tmp.path().join("a"), &server, "", "");
    assert!(robot.agent(&["check"]).await.status.success());
    assert_eq!(robot.installed(), server.version(18));
    assert_eq!(assert_invariants(&robot, &server).await, 18);
}

#[tokio::test]
async fn daemon_against_a_server_that_wants_post_for_tokens() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let server = Server::demo(&tmp.path().join("server"), 256 * 1024).await;
    // Newer servers answer 405 to a GET for a token; the agent must switch to a POST form.
    server.allow_token_get(false).await;
    let robot = Robot::new(&tmp.path().join("a"), &server, "", "");
    let mut agent = robot
        .command(&["run"])
        .stderr(Stdio::null())
        .spawn()
        .expect("start the daemon");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while server.callbacks(&robot.id).await.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no callbacks within a minute"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.start_kill().expect("stop the daemon");
    let _ = agent.wait().await;
    assert_eq!(assert_invariants(&robot, &server).await, 18);
    let posts = server
        .requests()
        .await
        .iter()
        .filter(|r| r["method"] == "POST" && r["path"] == "/oauth/token")
        .count();
    assert!(posts >= 1);
}
