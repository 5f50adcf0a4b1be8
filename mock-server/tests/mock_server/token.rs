//! `/oauth/token`: both grants, GET and POST, the error shapes, expiry and revocation.

use std::time::Duration;

use serde_json::json;

use crate::common::{
    PASSWORD_GRANT, access_token, client, demo_catalog, demo_server, download_url, get_json, json,
    token,
};

fn token_url(uri: &str, query: &str) -> String {
    format!("{uri}/oauth/token?{query}")
}

fn is_token(value: &serde_json::Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[tokio::test]
async fn password_grant_by_get_answers_like_spring() {
    let server = demo_server().await;
    let response = client()
        .get(token_url(&server.uri(), PASSWORD_GRANT))
        .send()
        .await
        .unwrap();
    let (status, headers, body) = json(response).await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert!(is_token(&body["access_token"]), "{body}");
    assert!(is_token(&body["refresh_token"]), "{body}");
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 11999);
    assert_eq!(body["scope"], "read write trust");
    assert_eq!(body.as_object().unwrap().len(), 5);

    // Spring hands out the live token again, with the seconds it has left.
    server.advance_token_clock(Duration::from_secs(100));
    let again = token(&server).await;
    assert_eq!(again["access_token"], body["access_token"]);
    assert_eq!(again["expires_in"], 11899);
}

#[tokio::test]
async fn post_takes_a_form_body_or_query_parameters() {
    let server = demo_server().await;
    let form = [
        ("client_id", "mobile_1"),
        ("client_secret", "secret_1"),
        ("grant_type", "password"),
        ("username", "aa"),
        ("password", "aa"),
    ];
    let (status, _, body) = json(
        client()
            .post(format!("{}/oauth/token", server.uri()))
            .form(&form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(is_token(&body["access_token"]));

    let (status, _, body) = json(
        client()
            .post(token_url(&server.uri(), PASSWORD_GRANT))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(is_token(&body["access_token"]));
}

#[tokio::test]
async fn errors_have_spring_security_shapes() {
    let server = demo_server().await;
    let cases = [
        (
            "client_id=mobile_1&client_secret=secret_1&grant_type=password&username=aa&password=bad",
            400,
            json!({"error":"invalid_grant","error_description":"Bad credentials"}),
        ),
        (
            "client_id=mobile_1&client_secret=secret_1&grant_type=password&username=nobody&password=aa",
            400,
            json!({"error":"invalid_grant","error_description":"Bad credentials"}),
        ),
        (
            "client_id=mobile_1&client_secret=secret_1&grant_type=password&password=aa",
            400,
            json!({"error":"invalid_grant","error_description":"Bad credentials"}),
        ),
        (
            "client_id=mobile_1&client_secret=wrong&grant_type=password&username=aa&password=aa",
            401,
            json!({"error":"invalid_client","error_description":"Bad client credentials"}),
        ),
        (
            "client_id=stranger&client_secret=secret_1&grant_type=password&username=aa&password=aa",
            401,
            json!({"error":"invalid_client","error_description":"Bad client credentials"}),
        ),
        (
            "client_secret=secret_1&grant_type=password&username=aa&password=aa",
            401,
            json!({"error":"unauthorized","error_description":"Full authentication is required to access this resource"}),
        ),
        (
            "client_id=mobile_1&client_secret=secret_1&grant_type=client_magic",
            400,
            json!({"error":"unsupported_grant_type","error_description":"Unsupported grant type: client_magic"}),
        ),
        (
            "client_id=mobile_1&client_secret=secret_1&username=aa&password=aa",
            400,
            json!({"error":"invalid_request","error_description":"Missing grant_type"}),
        ),
        (
            "client_id=mobile_1&client_secret=secret_1&grant_type=refresh_token&refresh_token=",
            400,
            json!({"error":"invalid_request","error_description":"Missing refresh_token"}),
        ),
        (
            "client_id=mobile_1&client_secret=secret_1&grant_type=refresh_token&refresh_token=nope",
            400,
            json!({"error":"invalid_grant","error_description":"Invalid refresh token: nope"}),
        ),
    ];
    for (query, status, expected) in cases {
        let (got_status, body) = get_json(&token_url(&server.uri(), query)).await;
        assert_eq!((got_status, &body), (status, &expected), "for {query}");
    }
}

#[tokio::test]
async fn refresh_gives_a_new_access_token_and_keeps_the_refresh_token() {
    let server = demo_server().await;
    let first = token(&server).await;
    let refresh = first["refresh_token"].as_str().unwrap();
    let query = format!(
        "client_id=mobile_1&client_secret=secret_1&grant_type=refresh_token&refresh_token={refresh}"
    );
    let (status, second) = get_json(&token_url(&server.uri(), &query)).await;
    assert_eq!(status, 200, "{second}");
    assert_ne!(second["access_token"], first["access_token"]);
    assert_eq!(second["refresh_token"], first["refresh_token"]);
    assert_eq!(second["expires_in"], 11999);

    let old = first["access_token"].as_str().unwrap();
    let (status, body) = get_json(&download_url(&server, old, "16")).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"error":"invalid_token","error_description":format!("Invalid access token: {old}")})
    );
    let new = second["access_token"].as_str().unwrap();
    let (status, body) = get_json(&download_url(&server, new, "16")).await;
    assert_eq!((status, &body["code"]), (200, &json!("100")));

    // An unknown refresh token is refused.
    let other_client = format!(
        "client_id=mobile_1&client_secret=secret_1&grant_type=refresh_token&refresh_token={refresh}x"
    );
    let (status, _) = get_json(&token_url(&server.uri(), &other_client)).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn tokens_expire_on_the_server_clock() {
    let mut catalog = demo_catalog();
    catalog.set_expires_in(30);
    let server = ota_mock_server::MockServer::start(catalog).await.unwrap();
    let first = token(&server).await;
    assert_eq!(first["expires_in"], 30);
    let access = first["access_token"].as_str().unwrap();

    server.advance_token_clock(Duration::from_secs(31));
    let (status, body) = get_json(&download_url(&server, access, "16")).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"error":"invalid_token","error_description":format!("Access token expired: {access}")})
    );
    // Spring forgets an expired token once it has reported it.
    let (status, body) = get_json(&download_url(&server, access, "16")).await;
    assert_eq!(status, 401);
    assert_eq!(
        body["error_description"],
        format!("Invalid access token: {access}")
    );

    // The refresh token lives longer and still works.
    let refresh = first["refresh_token"].as_str().unwrap();
    let query = format!(
        "client_id=mobile_1&client_secret=secret_1&grant_type=refresh_token&refresh_token={refresh}"
    );
    let (status, second) = get_json(&token_url(&server.uri(), &query)).await;
    assert_eq!(status, 200, "{second}");

    // The admin endpoint moves the same clock.
    let response = client()
        .post(format!("{}/admin/advance-time", server.uri()))
        .body(r#"{"seconds": 31}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let access = second["access_token"].as_str().unwrap();
    let (status, body) = get_json(&download_url(&server, access, "16")).await;
    assert_eq!(status, 401);
    assert_eq!(
        body["error_description"],
        format!("Access token expired: {access}")
    );
}

#[tokio::test]
async fn revoked_tokens_are_refused() {
    let server = demo_server().await;
    let first = token(&server).await;
    let access = first["access_token"].as_str().unwrap();
    server.revoke_tokens();
    let (status, body) = get_json(&download_url(&server, access, "16")).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_token");
    let refresh = first["refresh_token"].as_str().unwrap();
    let query = format!(
        "client_id=mobile_1&client_secret=secret_1&grant_type=refresh_token&refresh_token={refresh}"
    );
    let (status, body) = get_json(&token_url(&server.uri(), &query)).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["error_description"],
        format!("Invalid refresh token: {refresh}")
    );

    // One token through the admin endpoint.
    let access = access_token(&server).await;
    let response = client()
        .post(format!("{}/admin/revoke", server.uri()))
        .body(json!({"access_token": access}).to_string())
        .send()
        .await
        .unwrap();
    let (status, _, body) = json(response).await;
    assert_eq!((status, &body["revoked"]), (200, &json!(true)));
    let (status, _) = get_json(&download_url(&server, &access, "16")).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn get_can_be_switched_off_like_newer_servers() {
    let server = demo_server().await;
    server.set_token_get_allowed(false);
    let response = client()
        .get(token_url(&server.uri(), PASSWORD_GRANT))
        .send()
        .await
        .unwrap();
    let (status, headers, body) = json(response).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "POST");
    assert!(body["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(body["status"], 405);
    assert_eq!(body["error"], "Method Not Allowed");
    assert_eq!(body["message"], "Request method 'GET' not supported");
    assert_eq!(body["path"], "/oauth/token");

    let (status, _, body) = json(
        client()
            .post(token_url(&server.uri(), PASSWORD_GRANT))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let response = client()
        .post(format!("{}/admin/token-get", server.uri()))
        .body(r#"{"allowed": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    token(&server).await;

    let mut catalog = demo_catalog();
    catalog.set_token_get(false);
    let post_only = ota_mock_server::MockServer::start(catalog).await.unwrap();
    let (status, _) = get_json(&token_url(&post_only.uri(), PASSWORD_GRANT)).await;
    assert_eq!(status, 405);
}
