//! The client against a scripted server (wiremock): every path of each endpoint of the contract.

use ota_agent::client::{Ack, CheckAnswer, CheckRequest, Client, ClientError};
use ota_agent::config::Config;
use ota_agent::store::ResultCode;
use serde_json::json;
use wiremock::matchers::{body_string_contains, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::write_config;

struct Setup {
    _tmp: tempfile::TempDir,
    server: MockServer,
    client: Client,
}

async fn setup() -> Setup {
    let server = MockServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let path = write_config(tmp.path(), &server.uri(), "", "");
    let client = Client::new(&Config::load(&path).unwrap()).unwrap();
    Setup {
        _tmp: tmp,
        server,
        client,
    }
}

fn token(access: &str, expires_in: u64) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "access_token": access, "token_type": "bearer", "refresh_token": format!("refresh-{access}"),
        "expires_in": expires_in, "scope": "read write trust"
    }))
}

fn request() -> CheckRequest<'static> {
    CheckRequest {
        package_name: "com.ubtechinc.alpha2services",
        version: "16",
        file_name: "service5mic",
        language: "CN",
    }
}

async fn answer(s: &Setup, body: ResponseTemplate) -> Result<CheckAnswer, ClientError> {
    Mock::given(method("GET"))
        .and(path("/oauth/token"))
        .respond_with(token("tok", 11999))
        .mount(&s.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/file/download"))
        .respond_with(body)
        .mount(&s.server)
        .await;
    s.client.check(&request()).await
}

#[tokio::test]
async fn check_sends_all_seven_parameters_and_reuses_the_token() {
    let s = setup().await;
    Mock::given(method("GET"))
        .and(path("/oauth/token"))
        .and(query_param("client_id", "mobile_1"))
        .and(query_param("client_secret", "secret_1"))
        .and(query_param("grant_type", "password"))
        .and(query_param("username", "aa"))
        .and(query_param("password", "aa"))
        .respond_with(token("tok-1", 11999))
        .expect(1)
        .mount(&s.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/file/download"))
        .and(query_param("access_token", "tok-1"))
        .and(query_param("package_name", "com.ubtechinc.alpha2services"))
        .and(query_param("version", "16"))
        .and(query_param("file_name", "service5mic"))
        .and(query_param("language", "CN"))
        .and(query_param("robot_version", "1"))
        .and(query_param("robot_id", "robot-0001"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"code":"100","data":"","id":""})),
        )
        .expect(2)
        .mount(&s.server)
        .await;
    assert_eq!(
        s.client.check(&request()).await.unwrap(),
        CheckAnswer::UpToDate
    );
    assert_eq!(
        s.client.check(&request()).await.unwrap(),
        CheckAnswer::UpToDate
    );
}

#[tokio::test]
async fn token_falls_back_to_a_post_form_on_405() {
    let s = setup().await;
    Mock::given(method("GET"))
        .and(path("/oauth/token"))
        .respond_with(
            ResponseTemplate::new(405)
                .set_body_json(json!({"status":405,"error":"Method Not Allowed"})),
        )
        .expect(1)
        .mount(&s.server)
        .await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(body_string_contains("grant_type=password"))
        .and(body_string_contains("client_secret=secret_1"))
        .respond_with(token("tok-post", 0))
        .expect(1)
        .mount(&s.server)
        .await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(body_string_contains("grant_type=refresh_token"))
        .and(body_string_contains("refresh_token=refresh-tok-post"))
        .respond_with(token("tok-refreshed", 11999))
        .expect(1)
        .mount(&s.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/file/download"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"code":"102"})))
        .expect(2)
        .mount(&s.server)
        .await;
    // The first token lives for zero seconds, so the second check refreshes it, by POST at once.
    assert_eq!(
        s.client.check(&request()).await.unwrap(),
        CheckAnswer::NoSuchVersion
    );
    assert_eq!(
        s.client.check(&request()).await.unwrap(),
        CheckAnswer::NoSuchVersion
    );
}

#[tokio::test]
async fn refused_refresh_falls_back_to_the_password_grant() {
    let s = setup().await;
    Mock::given(method("GET"))
        .and(path("/oauth/token"))
        .and(query_param("grant_type", "password"))
        .respond_with(token("short", 0))
        .expect(2)
        .mount(&s.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/oauth/token"))
        .and(query_param("grant_type", "refresh_token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({"error":"invalid_grant","error_description":"Invalid refresh token: refresh-short"}),
        ))
        .expect(1)
        .mount(&s.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/file/download"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"code":"100","data":"","id":""})),
        )
        .mount(&s.server)
        .await;
    s.client.check(&request()).await.unwrap();
    s.client.check(&request()).await.unwrap();
}

#[tokio::test]
async fn invalid_token_gets_one_new_token_and_one_retry() {
    let s = setup().await;
    Mock::given(method("GET"))
        .and(path("/oauth/token"))
        .and(query_param("grant_type", "password"))
        .respond_with(token("tok", 11999))
        .expect(2)
        .mount(&s.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/file/download"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!({"error":"invalid_token","error_description":"Invalid access token: tok"}),
        ))
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&s.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/file/download"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"code":"103"})))
        .expect(1)
        .mount(&s.server)
        .await;
    assert_eq!(
        s.client.check(&request()).await.unwrap(),
        CheckAnswer::NotAllowed
    );
}

#[tokio::test]
async fn a_token_refused_twice_is_an_error_without_the_token_in_it() {
    let s = setup().await;
    Mock::given(method("GET"))
        .and(path("/oauth/token"))
        .respond_with(token("c0ffee0123456789c0ffee0123456789", 11999))
        .expect(2)
        .mount(&s.server)
        .await;
    Mock::given(method("GET"))
        .and(path("/file/download"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "error":"invalid_token","error_description":"Invalid access token: c0ffee0123456789c0ffee0123456789"
        })))
        .expect(2)
        .mount(&s.server)
        .await;
    let err = s.client.check(&request()).await.unwrap_err();
    let text = ota_agent::error_chain(&err);
    assert!(text.contains("invalid_token"), "{text}");
    assert!(!text.contains("c0ffee"), "{text}");
}

#[tokio::test]
async fn bad_credentials_are_an_oauth_error() {
    let s = setup().await;
    Mock::given(method("GET"))
        .and(path("/oauth/token"))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(
                json!({"error":"invalid_grant","error_description":"Bad credentials"}),
            ),
        )
        .mount(&s.server)
        .await;
    let err = s.client.check(&request()).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::OAuth { status: 400, error, .. } if error == "invalid_grant"),
        "{err:?}"
    );
    assert!(!ota_agent::error_chain(&err).contains("secret_1"));
}

#[tokio::test]
async fn every_check_code() {
    let cases = [
        (
            json!({"code":"100","data":"","id":""}),
            CheckAnswer::UpToDate,
        ),
        (
            json!({"code":"101","data":"","id":""}),
            CheckAnswer::UpToDate,
        ),
        (
            json!({"code":"102","data":"","id":""}),
            CheckAnswer::NoSuchVersion,
        ),
        (
            json!({"code":"103","data":"","id":""}),
            CheckAnswer::NotAllowed,
        ),
        (
            json!({"code":104,"data":"","id":""}),
            CheckAnswer::NoLanguage,
        ),
    ];
    for (body, expected) in cases {
        let s = setup().await;
        assert_eq!(
            answer(&s, ResponseTemplate::new(200).set_body_json(body))
                .await
                .unwrap(),
            expected
        );
    }
    let s = setup().await;
    let failed = answer(
        &s,
        ResponseTemplate::new(200).set_body_json(json!({"code":"500","data":""})),
    )
    .await;
    assert_eq!(failed.unwrap(), CheckAnswer::Failed("500".into()));
}

#[tokio::test]
async fn bad_check_answers_are_refused() {
    let cases = [
        (ResponseTemplate::new(200).set_body_string("{\"code\":\"100\",\"data\":"), "malformed JSON"),
        (
            ResponseTemplate::new(200).set_body_raw("<html><body>Welcome to nginx</body></html>", "text/html"),
            "HTML",
        ),
        (
            ResponseTemplate::new(200).set_body_json(json!({"code":"100","data":"http://h/a--17--f.patch;http://h/b--18--f.patch","id":"23"})),
            "2 patch URLs but `id` lists 1",
        ),
        (
            ResponseTemplate::new(200).set_body_json(json!({"code":"100","data":"file:///etc/passwd--17--f.patch","id":"23"})),
            "not an http or https URL",
        ),
        (ResponseTemplate::new(502).set_body_string("bad gateway"), "HTTP 502"),
    ];
    for (body, expected) in cases {
        let s = setup().await;
        let err = answer(&s, body).await.unwrap_err();
        let text = ota_agent::error_chain(&err);
        assert!(text.contains(expected), "{text} should say {expected}");
    }
}

#[tokio::test]
async fn retry_after_is_read() {
    let s = setup().await;
    let err = answer(
        &s,
        ResponseTemplate::new(503).insert_header("retry-after", "120"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.retry_after(), Some(std::time::Duration::from_secs(120)));
    assert!(!err.is_permanent());
}

#[tokio::test]
async fn callback_answers() {
    let s = setup().await;
    Mock::given(method("GET"))
        .and(path("/oauth/token"))
        .respond_with(token("tok", 11999))
        .mount(&s.server)
        .await;
    for (id, body, expected) in [
        (
            "23",
            json!({"code":"100","data":"regisiter information"}),
            Some(Ack::Accepted),
        ),
        ("24", json!({"code":101}), Some(Ack::Accepted)),
        (
            "25",
            json!({"code":"102","data":"no such id"}),
            Some(Ack::Rejected("102".into())),
        ),
        ("26", json!({"code":"500"}), None),
    ] {
        Mock::given(method("POST"))
            .and(path("/file/callback"))
            .and(query_param("id", id))
            .and(query_param("code", "1"))
            .and(query_param("robot_id", "robot-0001"))
            .and(query_param("access_token", "tok"))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .expect(1)
            .mount(&s.server)
            .await;
        let got = s.client.callback(id, ResultCode::Success).await;
        match expected {
            Some(ack) => assert_eq!(got.unwrap(), ack),
            None => assert!(got.is_err()),
        }
    }
}

#[tokio::test]
async fn resume_trusts_only_a_matching_206() {
    let s = setup().await;
    let url = format!("{}/version/p/A-1--17--f.patch", s.server.uri());
    Mock::given(method("GET"))
        .and(path("/version/p/A-1--17--f.patch"))
        .and(header("range", "bytes=10-"))
        .and(header("if-range", "\"v1\""))
        .respond_with(
            ResponseTemplate::new(206)
                .insert_header("content-range", "bytes 10-19/20")
                .insert_header("etag", "\"v1\"")
                .set_body_raw("0123456789", "application/octet-stream"),
        )
        .mount(&s.server)
        .await;
    let mut fetch = s
        .client
        .fetch(&url, 10, Some("\"v1\""), Some(20))
        .await
        .unwrap();
    assert_eq!((fetch.offset, fetch.total), (10, Some(20)));
    assert_eq!(&fetch.chunk().await.unwrap().unwrap()[..], b"0123456789");

    // A 206 for another range is not spliced in.
    let err = s.client.fetch(&url, 5, Some("\"v1\""), Some(20)).await;
    assert!(err.is_err());

    // Without a validator the agent does not ask for a range: a plain 200 starts over.
    let s = setup().await;
    Mock::given(method("GET"))
        .and(path("/x--17--f.patch"))
        .respond_with(ResponseTemplate::new(200).set_body_raw("whole", "application/octet-stream"))
        .mount(&s.server)
        .await;
    let fetch = s
        .client
        .fetch(
            &format!("{}/x--17--f.patch", s.server.uri()),
            10,
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!((fetch.offset, fetch.total), (0, Some(5)));
}

/// A server that ignores `If-Range` answers a resume of a file that changed with a 206 of the
/// new file: its validator or its total gives it away (RFC 9110 §14.4), and it is not spliced.
#[tokio::test]
async fn a_206_of_a_changed_file_is_refused() {
    let s = setup().await;
    let url = format!("{}/version/p/A-1--17--f.patch", s.server.uri());
    Mock::given(method("GET"))
        .and(path("/version/p/A-1--17--f.patch"))
        .and(header("range", "bytes=10-"))
        .respond_with(
            ResponseTemplate::new(206)
                .insert_header("content-range", "bytes 10-29/30")
                .insert_header("etag", "\"v2\"")
                .set_body_raw("01234567890123456789", "application/octet-stream"),
        )
        .mount(&s.server)
        .await;
    for (validator, total, says) in [
        ("\"v2\"", Some(20), "the file was 20 bytes"),
        ("\"v1\"", None, "is not the recorded"),
        ("\"v1\"", Some(30), "is not the recorded"),
    ] {
        let err = s
            .client
            .fetch(&url, 10, Some(validator), total)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Invalid { reason, .. } if reason.contains(says)),
            "{validator} {total:?}: {err}"
        );
    }
}

#[tokio::test]
async fn an_absurd_expires_in_is_survived() {
    let s = setup().await;
    // Mounted first and with a higher priority, this token answer wins over the one of `answer`.
    Mock::given(method("GET"))
        .and(path("/oauth/token"))
        .respond_with(token("forever", u64::MAX))
        .with_priority(1)
        .mount(&s.server)
        .await;
    let reply = ResponseTemplate::new(200).set_body_json(json!({"code":"102"}));
    assert_eq!(answer(&s, reply).await.unwrap(), CheckAnswer::NoSuchVersion);
}

#[tokio::test]
async fn a_weak_etag_is_not_a_validator_but_last_modified_is() {
    let s = setup().await;
    Mock::given(method("GET"))
        .and(path("/p--17--f.patch"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("etag", "W/\"weak\"")
                .insert_header("last-modified", "Sun, 29 Nov 2026 07:00:00 GMT")
                .set_body_raw("data", "application/octet-stream"),
        )
        .mount(&s.server)
        .await;
    let fetch = s
        .client
        .fetch(&format!("{}/p--17--f.patch", s.server.uri()), 0, None, None)
        .await
        .unwrap();
    assert_eq!(
        fetch.validator.as_deref(),
        Some("Sun, 29 Nov 2026 07:00:00 GMT")
    );
}
