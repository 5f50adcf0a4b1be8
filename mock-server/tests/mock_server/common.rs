//! Shared fixtures: a small demo catalog, an HTTP client, token helpers and test certificates.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ota_mock_server::{Catalog, MockServer, TestCertificates, demo};
use serde_json::Value;

/// Small enough that debug builds make the patches quickly, big enough for several chunks.
pub const DEMO_SIZE: usize = 160 * 1024;

pub const CLIENT: (&str, &str) = ("mobile_1", "secret_1");
pub const USER: (&str, &str) = ("aa", "aa");
/// The query of a password grant for [`CLIENT`] and [`USER`].
pub const PASSWORD_GRANT: &str =
    "client_id=mobile_1&client_secret=secret_1&grant_type=password&username=aa&password=aa";
pub const PACKAGE: &str = "com.ubtechinc.alpha2services";

/// A demo catalog shared by the tests that only read it; its patches are made once.
pub fn demo_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let catalog = demo::generate(dir.path(), DEMO_SIZE).expect("demo");
        Catalog::load(&catalog).expect("demo catalog loads");
        dir
    })
    .path()
}

/// A fresh copy of the demo in its own directory, for tests that change files.
pub fn own_demo() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let catalog = demo::generate(dir.path(), DEMO_SIZE).expect("demo");
    (dir, catalog)
}

pub fn demo_catalog() -> Catalog {
    Catalog::load(&demo_dir().join("catalog.toml")).expect("demo catalog loads")
}

pub async fn demo_server() -> MockServer {
    MockServer::start(demo_catalog())
        .await
        .expect("server starts")
}

/// A client for http and for https servers that use [`TestCerts::shared`].
pub fn client() -> reqwest::Client {
    client_trusting(&TestCerts::shared().ca_pem)
}

/// A client whose only trusted root is the CA in `ca_pem`.
pub fn client_trusting(ca_pem: &str) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA certificate");
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([ca])
        .build()
        .expect("http client")
}

/// The test certificates: one set for the whole binary, which [`client`] trusts.
pub struct TestCerts;

impl TestCerts {
    /// One set for the whole test binary, which [`client`] trusts.
    pub fn shared() -> &'static TestCertificates {
        static CERTS: OnceLock<TestCertificates> = OnceLock::new();
        CERTS.get_or_init(TestCertificates::generate)
    }
}

/// The demo over HTTPS with [`TestCerts::shared`].
pub async fn tls_demo_server() -> MockServer {
    MockServer::start_tls(demo_catalog(), TestCerts::shared().tls_config())
        .await
        .expect("server starts")
}

/// Status, headers and JSON body of a response.
pub async fn json(response: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, headers, value)
}

pub async fn get_json(url: &str) -> (u16, Value) {
    let (status, _, value) = json(client().get(url).send().await.expect("request")).await;
    (status, value)
}

pub async fn token(server: &MockServer) -> Value {
    let url = format!(
        "{}/oauth/token?client_id={}&client_secret={}&grant_type=password&username={}&password={}",
        server.uri(),
        CLIENT.0,
        CLIENT.1,
        USER.0,
        USER.1
    );
    let (status, body) = get_json(&url).await;
    assert_eq!(status, 200, "{body}");
    body
}

pub async fn access_token(server: &MockServer) -> String {
    token(server).await["access_token"]
        .as_str()
        .expect("access token")
        .to_string()
}

pub fn download_url(server: &MockServer, token: &str, version: &str) -> String {
    format!(
        "{}/file/download?access_token={token}&package_name={PACKAGE}&version={version}\
         &file_name=service5mic&language=CN&robot_version=1&robot_id=15ae48ecs171faef35fafa5feafew",
        server.uri()
    )
}

/// The patch URLs and ids the server offers to a robot at `version`.
pub async fn chain(server: &MockServer, version: &str) -> (Vec<String>, Vec<String>) {
    let token = access_token(server).await;
    let (status, body) = get_json(&download_url(server, &token, version)).await;
    assert_eq!(status, 200);
    assert_eq!(body["code"], "100", "{body}");
    let split = |s: &str| -> Vec<String> {
        if s.is_empty() {
            Vec::new()
        } else {
            s.split(';').map(str::to_string).collect()
        }
    };
    (
        split(body["data"].as_str().expect("data")),
        split(body["id"].as_str().expect("id")),
    )
}

pub async fn fetch(url: &str) -> Vec<u8> {
    let response = client().get(url).send().await.expect("request");
    assert_eq!(response.status(), 200);
    response.bytes().await.expect("body").to_vec()
}

/// Writes `dir/catalog.toml` for the demo's versions with ready-made patches
/// `dir/patches/17.patch` and `dir/patches/18.patch` (ids 23 and 25); `server` is the catalog's
/// `[server]` section, if any.
pub fn ready_made_catalog(dir: &Path, server: &str) -> PathBuf {
    let text = format!(
        r#"
{server}
[[client]]
id = "{}"
secret = "{}"
[[user]]
username = "{}"
password = "{}"
[[package]]
name = "{PACKAGE}"
label = "Alpha2Services"
[[package.file]]
file_name = "service5mic"
language = "CN"
[[package.file.version]]
code = 16
name = "1.1.0.32"
file = "{}"
[[package.file.version]]
code = 17
name = "1.1.1.32"
id = "23"
patch = "patches/17.patch"
[[package.file.version]]
code = 18
name = "1.1.2.32"
id = "25"
patch = "patches/18.patch"
"#,
        CLIENT.0,
        CLIENT.1,
        USER.0,
        USER.1,
        demo_dir().join("versions/16").display()
    );
    let path = dir.join("catalog.toml");
    std::fs::write(&path, text).expect("write the catalog");
    path
}
