//! Injected faults, as a client sees them, and the request log that proves what was sent.

use std::time::{Duration, Instant};

use ota_mock_server::{Endpoint, Fault, FaultKind, MockServer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{access_token, chain, client, demo_server, download_url, fetch, get_json};

/// Reads a body chunk by chunk: the bytes that arrived, and whether it ended in an error.
async fn read_body(url: &str, range: Option<&str>) -> (u16, Option<u64>, Vec<u8>, bool) {
    let mut request = client().get(url);
    if let Some(range) = range {
        request = request.header("range", range);
    }
    let mut response = request.send().await.expect("response headers");
    let status = response.status().as_u16();
    let length = response.content_length();
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => return (status, length, body, false),
            Err(_) => return (status, length, body, true),
        }
    }
}

async fn patch_17_to_18(server: &MockServer) -> (String, Vec<u8>) {
    let (urls, _) = chain(server, "17").await;
    let expected = std::fs::read(&server.catalog().patch_by_id("25").unwrap().file).unwrap();
    (urls[0].clone(), expected)
}

#[tokio::test]
async fn status_faults_replace_the_answer_once() {
    let server = demo_server().await;
    let token = access_token(&server).await;
    let url = download_url(&server, &token, "16");

    server.inject(Fault::status(
        Endpoint::Download,
        500,
        r#"{"error":"boom"}"#,
    ));
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 500);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(response.text().await.unwrap(), r#"{"error":"boom"}"#);

    server.inject(Fault::status(
        Endpoint::Download,
        200,
        r#"{"code":"100","data":"http://a/x--17--y.patch","id":"1;2"}"#,
    ));
    let (status, body) = get_json(&url).await;
    assert_eq!((status, &body["id"]), (200, &json!("1;2")));

    server.inject(Fault::status(
        Endpoint::Download,
        200,
        r#"{"code":"100","data":"#,
    ));
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), r#"{"code":"100","data":"#);

    server.inject(Fault::html(Endpoint::Token).times(2));
    for _ in 0..2 {
        let response = client()
            .get(format!("{}/oauth/token", server.uri()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
    }
    // Used up: the real answers are back.
    access_token(&server).await;
    let (status, body) = get_json(&url).await;
    assert_eq!((status, &body["id"]), (200, &json!("23;25")));
    assert_eq!(
        server.requests().iter().filter(|r| r.status == 500).count(),
        1
    );
}

#[tokio::test]
async fn a_delay_holds_the_answer_back() {
    let server = demo_server().await;
    let token = access_token(&server).await;
    server.inject(Fault::new(
        Endpoint::Download,
        FaultKind::Delay(Duration::from_millis(300)),
    ));
    let started = Instant::now();
    let (status, body) = get_json(&download_url(&server, &token, "16")).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!((status, &body["code"]), (200, &json!("100")));
}

#[tokio::test]
async fn a_truncated_body_promises_the_full_length_and_closes() {
    let server = demo_server().await;
    let (url, expected) = patch_17_to_18(&server).await;
    server.inject(Fault::new(
        Endpoint::Patch,
        FaultKind::Truncate { after: 1000 },
    ));
    let (status, length, body, failed) = read_body(&url, None).await;
    assert_eq!(status, 200);
    assert_eq!(length, Some(expected.len() as u64));
    assert!(failed, "the client must see an error");
    assert_eq!(body, &expected[..1000]);
    let last = server.requests().pop().unwrap();
    assert_eq!((last.status, last.bytes_sent), (200, 1000));

    // A resumed download gets the rest, and the log shows only the rest was sent.
    let (status, _, rest, failed) = read_body(&url, Some("bytes=1000-")).await;
    assert_eq!((status, failed), (206, false));
    assert_eq!(rest, &expected[1000..]);
    let last = server.requests().pop().unwrap();
    assert_eq!(last.bytes_sent, (expected.len() - 1000) as u64);
    assert_eq!(last.range.as_deref(), Some("bytes=1000-"));

    // A JSON answer can be cut too.
    let token = access_token(&server).await;
    server.inject(Fault::new(
        Endpoint::Download,
        FaultKind::Truncate { after: 5 },
    ));
    let (status, _, body, failed) = read_body(&download_url(&server, &token, "16"), None).await;
    assert_eq!((status, failed), (200, true));
    assert_eq!(body, b"{\"cod");
}

#[tokio::test]
async fn a_stall_pauses_then_continues_or_closes() {
    let server = demo_server().await;
    let (url, expected) = patch_17_to_18(&server).await;
    server.inject(Fault::new(
        Endpoint::Patch,
        FaultKind::Stall {
            after: 1000,
            pause: Duration::from_millis(300),
        },
    ));
    let started = Instant::now();
    let (status, _, body, failed) = read_body(&url, None).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!((status, failed), (200, false));
    assert_eq!(body, expected);

    server.inject(Fault::new(
        Endpoint::Patch,
        FaultKind::StallThenClose {
            after: 700,
            pause: Duration::from_millis(100),
        },
    ));
    let (status, _, body, failed) = read_body(&url, None).await;
    assert_eq!((status, failed), (200, true));
    assert_eq!(body, &expected[..700]);
    assert_eq!(server.requests().pop().unwrap().bytes_sent, 700);
}

#[tokio::test]
async fn corruption_flips_one_byte_of_the_resource() {
    let server = demo_server().await;
    let (url, expected) = patch_17_to_18(&server).await;
    server.inject(Fault::new(Endpoint::Patch, FaultKind::Corrupt { offset: 100 }).times(2));
    let body = fetch(&url).await;
    assert_eq!(body.len(), expected.len());
    let differ: Vec<usize> = (0..body.len())
        .filter(|&i| body[i] != expected[i])
        .collect();
    assert_eq!(differ, [100]);
    assert_eq!(body[100], expected[100] ^ 0xff);

    // The offset is within the whole patch, so a ranged request is hit at the same byte.
    let (status, _, body, _) = read_body(&url, Some("bytes=50-")).await;
    assert_eq!(status, 206);
    assert_eq!(body[50], expected[100] ^ 0xff);
    assert_eq!(body[..50], expected[50..100]);
    assert_eq!(body[51..], expected[101..]);

    assert_eq!(fetch(&url).await, expected);
}

#[tokio::test]
async fn a_reset_gives_no_answer_at_all() {
    let server = demo_server().await;
    server.inject(Fault::new(Endpoint::Token, FaultKind::Reset).times(2));
    let error = client()
        .get(format!("{}/oauth/token", server.uri()))
        .send()
        .await
        .expect_err("no answer");
    assert!(error.status().is_none());

    let mut stream = tokio::net::TcpStream::connect(server.address())
        .await
        .unwrap();
    stream
        .write_all(b"GET /oauth/token HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = stream.read(&mut buf).await;
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "a reset, not a clean close"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|r| r.status == 0 && r.bytes_sent == 0));
    access_token(&server).await;
}

#[tokio::test]
async fn faults_can_target_one_patch_of_a_chain() {
    let server = demo_server().await;
    let (urls, _) = chain(&server, "16").await;
    server.inject(
        Fault::new(Endpoint::Patch, FaultKind::Truncate { after: 10 })
            .path_contains("--18--")
            .times(2),
    );
    let (_, _, _, failed) = read_body(&urls[0], None).await;
    assert!(!failed, "the patch to 17 is not hit");
    for _ in 0..2 {
        let (_, _, body, failed) = read_body(&urls[1], None).await;
        assert!(failed);
        assert_eq!(body.len(), 10);
    }
    let (_, _, _, failed) = read_body(&urls[1], None).await;
    assert!(!failed);
}

#[tokio::test]
async fn the_admin_endpoint_takes_faults_as_json() {
    let server = demo_server().await;
    let (url, expected) = patch_17_to_18(&server).await;
    let post = |body: serde_json::Value| {
        client()
            .post(format!("{}/admin/faults", server.uri()))
            .body(body.to_string())
            .send()
    };
    let response = post(json!({"endpoint": "patch", "kind": {"truncate": {"after": 64}}}))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, _, body, failed) = read_body(&url, None).await;
    assert_eq!((body.len(), failed), (64, true));

    let response = post(json!({"endpoint": "patch", "kind": {"corrupt": {"offset": 0}}}))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client()
        .delete(format!("{}/admin/faults", server.uri()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(fetch(&url).await, expected);

    let response = post(json!({"endpoint": "nowhere", "kind": "reset"}))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let response = client()
        .get(format!("{}/admin/requests", server.uri()))
        .send()
        .await
        .unwrap();
    let log: serde_json::Value = response.json().await.unwrap();
    let entries = log.as_array().unwrap();
    let last = entries.last().unwrap();
    assert_eq!(last["method"], "GET");
    assert!(
        last["path"]
            .as_str()
            .unwrap()
            .ends_with("--18--service5mic.patch")
    );
    assert_eq!(last["status"], 200);
    assert_eq!(last["bytes_sent"], expected.len());
    assert_eq!(last["range"], serde_json::Value::Null);
    assert!(last["time_ms"].is_u64());
    assert!(entries.iter().any(|e| e["path"] == "/oauth/token"
        && e["query"].as_str().unwrap().contains("grant_type=password")));
    assert!(
        entries
            .iter()
            .all(|e| !e["path"].as_str().unwrap().starts_with("/admin"))
    );
}
