//! `/file/callback`: what it records and answers.

use serde_json::json;

use crate::common::{access_token, client, demo_server, json};

#[tokio::test]
async fn callbacks_are_recorded_and_answered() {
    let server = demo_server().await;
    let token = access_token(&server).await;
    let post = |query: String| {
        let url = format!("{}/file/callback?{query}", server.uri());
        async move { json(client().post(url).send().await.unwrap()).await }
    };
    let (status, _, body) = post(format!("access_token={token}&id=23&robot_id=r1&code=1")).await;
    assert_eq!(
        (status, body),
        (200, json!({"code":"100","data":"regisiter information"}))
    );
    let (status, _, body) = post(format!("access_token={token}&id=99&robot_id=r1&code=2")).await;
    assert_eq!(status, 200);
    assert_eq!(body["code"], "102");

    let records = server.callbacks();
    assert_eq!(records.len(), 2);
    assert_eq!(
        (
            records[0].id.as_str(),
            records[0].robot_id.as_str(),
            records[0].code.as_str()
        ),
        ("23", "r1", "1")
    );
    assert!(records[0].time_ms > 1_600_000_000_000);
    assert_eq!(records[1].id, "99");

    let response = client()
        .get(format!("{}/admin/callbacks", server.uri()))
        .send()
        .await
        .unwrap();
    let (status, _, body) = json(response).await;
    assert_eq!(status, 200);
    assert_eq!(body[0]["id"], "23");
    assert_eq!(body[0]["robot_id"], "r1");
    assert_eq!(body[0]["code"], "1");
    assert!(body[0]["time_ms"].is_u64());
    assert_eq!(body.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn callback_errors_have_spring_shapes() {
    let server = demo_server().await;
    let token = access_token(&server).await;
    let url = |query: &str| format!("{}/file/callback?{query}", server.uri());

    let (status, _, body) = json(
        client()
            .post(url("id=23&robot_id=r1&code=1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &body["error"]), (401, &json!("unauthorized")));
    let (status, _, body) = json(
        client()
            .post(url("access_token=dead&id=23&robot_id=r1&code=1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error_description"], "Invalid access token: dead");

    for (query, name) in [
        (format!("access_token={token}&robot_id=r1&code=1"), "id"),
        (format!("access_token={token}&id=23&code=1"), "robot_id"),
        (
            format!("access_token={token}&id=23&robot_id=r1&code="),
            "code",
        ),
    ] {
        let (status, _, body) = json(client().post(url(&query)).send().await.unwrap()).await;
        assert_eq!(status, 400);
        assert_eq!(
            body["message"],
            format!("Required String parameter '{name}' is not present")
        );
        assert_eq!(body["path"], "/file/callback");
    }
    assert!(server.callbacks().is_empty());
}
