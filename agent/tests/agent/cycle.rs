//! The cycle driven in-process against a scripted server: offers the agent must refuse.

use ota_agent::Shutdown;
use ota_agent::config::Config;
use ota_agent::cycle::{Agent, CycleError, Declined, Outcome};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{managed_path, write_config};

async fn agent_with_answer(answer: serde_json::Value) -> (tempfile::TempDir, MockServer, Agent) {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/oauth/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token":"t","token_type":"bearer","refresh_token":"r","expires_in":11999,"scope":"read write trust"
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/file/download"))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer))
        .mount(&server)
        .await;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("robot")).unwrap();
    std::fs::write(managed_path(tmp.path()), b"version 16").unwrap();
    let config = Config::load(&write_config(tmp.path(), &server.uri(), "", "")).unwrap();
    let agent = Agent::open(config, Shutdown::never(), Default::default()).unwrap();
    (tmp, server, agent)
}

fn patch_gets(requests: &[wiremock::Request]) -> usize {
    requests
        .iter()
        .filter(|r| r.url.path().ends_with(".patch"))
        .count()
}

#[tokio::test]
async fn a_name_without_a_version_is_refused_before_any_download() {
    let (_tmp, server, mut agent) = agent_with_answer(json!({
        "code":"100","data":"http://127.0.0.1:9/a--17--f.patch;http://127.0.0.1:9/firmware.patch","id":"23;25"
    }))
    .await;
    let err = agent.cycle(0).await.unwrap_err();
    assert!(
        matches!(&err, CycleError::Refused(r) if r.contains("firmware.patch") && r.contains("25")),
        "{err}"
    );
    assert_eq!(patch_gets(&server.received_requests().await.unwrap()), 0);
    assert!(agent.state.outbox.is_empty());
    assert!(agent.state.packages.values().all(|p| p.update.is_none()));
}

#[tokio::test]
async fn a_downgrade_is_refused() {
    let (_tmp, _server, mut agent) = agent_with_answer(json!({
        "code":"100","data":"http://127.0.0.1:9/a--15--f.patch","id":"23"
    }))
    .await;
    let err = agent.cycle(0).await.unwrap_err();
    assert!(err.to_string().contains("not above version 16"), "{err}");
}

#[tokio::test]
async fn declines_are_not_errors() {
    for (code, why) in [("103", Declined::NotAllowed), ("104", Declined::NoLanguage)] {
        let (_tmp, _server, mut agent) =
            agent_with_answer(json!({"code": code, "data": "", "id": ""})).await;
        assert_eq!(agent.cycle(0).await.unwrap(), Outcome::Declined(why));
        let last = agent
            .state
            .packages
            .values()
            .next()
            .unwrap()
            .last_check
            .clone()
            .unwrap();
        assert!(last.ok && last.result.contains(code));
    }
}

#[tokio::test]
async fn an_oversized_patch_fails_without_downloading_it() {
    let server = MockServer::start().await;
    let (tmp, _s, _a) = agent_with_answer(json!({})).await;
    drop((_s, _a));
    Mock::given(method("GET"))
        .and(path("/oauth/token"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"access_token":"t","expires_in":100})),
        )
        .mount(&server)
        .await;
    let answer = json!({"code":"100","data": format!("{}/a--17--f.patch", server.uri()),"id":"23"});
    Mock::given(method("GET"))
        .and(path("/file/download"))
        .respond_with(ResponseTemplate::new(200).set_body_json(answer))
        .mount(&server)
        .await;
    Mock::given(method("HEAD"))
        .and(path("/a--17--f.patch"))
        .respond_with(ResponseTemplate::new(200).insert_header("content-length", "5000000"))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/file/callback"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"code":"100"})))
        .mount(&server)
        .await;
    let config = Config::load(&write_config(
        tmp.path(),
        &server.uri(),
        "",
        "max_patch_size = 1000000",
    ))
    .unwrap();
    let mut agent = Agent::open(config, Shutdown::never(), Default::default()).unwrap();
    let outcome = agent.cycle(0).await.unwrap();
    assert!(
        matches!(&outcome, Outcome::Failed { reason } if reason.contains("max_patch_size")),
        "{outcome:?}"
    );
    let requests = server.received_requests().await.unwrap();
    assert!(
        requests
            .iter()
            .all(|r| !(r.method.as_str() == "GET" && r.url.path().ends_with(".patch")))
    );
    let callback = requests
        .iter()
        .find(|r| r.url.path() == "/file/callback")
        .unwrap();
    assert!(callback.url.query().unwrap().contains("code=2"));
}
