//! `/file/download`: the chain for each version, the answer codes and the error shapes.

use ota_mock_server::{Catalog, MockServer};
use serde_json::json;

use crate::common::{access_token, chain, demo_dir, demo_server, download_url, get_json, own_demo};

#[tokio::test]
async fn each_version_gets_the_chain_to_the_newest() {
    let server = demo_server().await;
    let base = format!(
        "{}/version/com.ubtechinc.alpha2services/CN/Alpha2Services-",
        server.uri()
    );
    let (urls, ids) = chain(&server, "16").await;
    assert_eq!(
        urls,
        [
            format!("{base}1.1.1.32--17--service5mic.patch"),
            format!("{base}1.1.2.32--18--service5mic.patch"),
        ]
    );
    assert_eq!(ids, ["23", "25"]);

    let (urls, ids) = chain(&server, "17").await;
    assert_eq!(urls, [format!("{base}1.1.2.32--18--service5mic.patch")]);
    assert_eq!(ids, ["25"]);

    let token = access_token(&server).await;
    let (status, body) = get_json(&download_url(&server, &token, "18")).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"code":"100","data":"","id":""}));
}

#[tokio::test]
async fn unknown_versions_languages_and_packages_get_their_codes() {
    let server = demo_server().await;
    let token = access_token(&server).await;
    let answer = |code: &str| json!({"code": code, "data": "", "id": ""});
    for version in ["15", "19", "x"] {
        let (status, body) = get_json(&download_url(&server, &token, version)).await;
        assert_eq!((status, body), (200, answer("102")), "version {version}");
    }
    let url = download_url(&server, &token, "16");
    let cases = [
        ("language=CN", "language=EN", "104"),
        (
            "package_name=com.ubtechinc.alpha2services",
            "package_name=com.other",
            "102",
        ),
        ("file_name=service5mic", "file_name=other", "102"),
    ];
    for (from, to, code) in cases {
        let (status, body) = get_json(&url.replace(from, to)).await;
        assert_eq!((status, body), (200, answer(code)), "{to}");
    }
}

#[tokio::test]
async fn only_listed_robots_may_upgrade() {
    let dir = demo_dir();
    let text = std::fs::read_to_string(dir.join("catalog.toml"))
        .unwrap()
        .replace(
            "label = \"Alpha2Services\"",
            "label = \"Alpha2Services\"\nrobots = [\"robot-a\", \"robot-b\"]",
        );
    let path = dir.join("robots.toml");
    std::fs::write(&path, text).unwrap();
    let server = MockServer::start(Catalog::load(&path).unwrap())
        .await
        .unwrap();
    let token = access_token(&server).await;
    let url = download_url(&server, &token, "16");
    let (status, body) = get_json(&url).await;
    assert_eq!(
        (status, body),
        (200, json!({"code":"103","data":"","id":""}))
    );
    let allowed = url.replace("robot_id=15ae48ecs171faef35fafa5feafew", "robot_id=robot-b");
    let (status, body) = get_json(&allowed).await;
    assert_eq!((status, &body["id"]), (200, &json!("23;25")));
}

#[tokio::test]
async fn token_problems_come_before_parameter_problems() {
    let server = demo_server().await;
    let url = download_url(&server, "x", "16");
    let (status, body) = get_json(&url.replace("access_token=x&", "")).await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"error":"unauthorized","error_description":"Full authentication is required to access this resource"})
    );
    let (status, body) = get_json(&format!(
        "{}/file/download?access_token=bogus",
        server.uri()
    ))
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!({"error":"invalid_token","error_description":"Invalid access token: bogus"})
    );
}

#[tokio::test]
async fn missing_parameters_get_spring_mvc_errors() {
    let server = demo_server().await;
    let token = access_token(&server).await;
    let url = download_url(&server, &token, "16");
    let (_, query) = url.split_once('?').unwrap();
    for pair in query.split('&').filter(|p| !p.starts_with("access_token=")) {
        let name = pair.split_once('=').unwrap().0;
        for replacement in [String::new(), format!("{name}=")] {
            let broken = url.replace(pair, &replacement);
            let (status, body) = get_json(&broken).await;
            assert_eq!(status, 400, "{broken}");
            assert_eq!(body["status"], 400);
            assert_eq!(body["error"], "Bad Request");
            assert_eq!(
                body["message"],
                format!("Required String parameter '{name}' is not present")
            );
            assert_eq!(body["path"], "/file/download");
            assert!(body["timestamp"].is_u64());
        }
    }
}

#[tokio::test]
async fn a_patch_missing_on_disk_is_a_server_error() {
    let (_dir, path) = own_demo();
    let catalog = Catalog::load(&path).unwrap();
    let patch = catalog.patch_by_id("25").unwrap();
    let server = MockServer::start(catalog).await.unwrap();
    std::fs::remove_file(&patch.file).unwrap();
    let token = access_token(&server).await;
    let (status, body) = get_json(&download_url(&server, &token, "16")).await;
    assert_eq!(
        (status, body),
        (200, json!({"code":"500","data":"","id":""}))
    );
    let (status, body) = get_json(&download_url(&server, &token, "18")).await;
    assert_eq!((status, &body["code"]), (200, &json!("100")));
}

#[tokio::test]
async fn a_public_url_replaces_the_bound_address_in_links() {
    let server = MockServer::bind_with_public_url(
        crate::common::demo_catalog(),
        "127.0.0.1:0".parse().unwrap(),
        Some("http://updates.example:8080/"),
    )
    .await
    .unwrap();
    let (urls, _) = chain(&server, "17").await;
    assert_eq!(
        urls,
        [
            "http://updates.example:8080/version/com.ubtechinc.alpha2services/CN/Alpha2Services-1.1.2.32--18--service5mic.patch"
        ]
    );
}
