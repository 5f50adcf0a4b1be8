//! Shared set-up: configs, a demo catalog served by the mock server, and the agent binary.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use ota_mock_server::{Catalog, MockServer, TestCertificates};

pub const PACKAGE: &str = "com.ubtechinc.alpha2services";
pub const FILE_NAME: &str = "service5mic";

/// A config for the agent, written with mode 0600 as the agent demands.
pub fn write_config(dir: &Path, url: &str, package_extra: &str, agent_extra: &str) -> PathBuf {
    let text = format!(
        r#"
[server]
url = "{url}"
client_id = "mobile_1"
client_secret = "secret_1"
username = "aa"
password = "aa"
connect_timeout = "5s"
read_timeout = "5s"

[robot]
id = "robot-0001"
version = "1"
language = "CN"

[agent]
state_dir = "{state}"
poll_interval = "1h"
retry_base = "1s"
retry_max = "2s"
events_socket = "{events}"
{agent_extra}

[[package]]
name = "{PACKAGE}"
file_name = "{FILE_NAME}"
path = "{path}"
version = "16"
{package_extra}
"#,
        state = dir.join("state").display(),
        events = events_path(dir).display(),
        path = managed_path(dir).display(),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The agent's events socket in a test's directory.
pub fn events_path(dir: &Path) -> PathBuf {
    dir.join("events.sock")
}

pub fn managed_path(dir: &Path) -> PathBuf {
    dir.join("robot").join("Alpha2Services.apk")
}

/// A mock server with a small demo catalog (versions 16, 17, 18) and a robot at version 16.
pub struct World {
    pub tmp: tempfile::TempDir,
    pub server: MockServer,
    pub config: PathBuf,
    /// The server's certificates, when it serves HTTPS.
    pub certs: Option<TestCertificates>,
}

/// How the server of a [`World`] differs from the plain demo.
#[derive(Debug, Default, Clone, Copy)]
pub struct Serve {
    /// Signed metadata next to every patch, with the demo's key.
    pub signed: bool,
    /// HTTPS with a throwaway CA.
    pub tls: bool,
    /// With `tls`: a server certificate valid only from the start of this year.
    pub valid_from: Option<i32>,
}

impl World {
    pub async fn new(package_extra: &str) -> World {
        Self::with(package_extra, "").await
    }

    pub async fn with(package_extra: &str, agent_extra: &str) -> World {
        Self::serving(Serve::default(), package_extra, agent_extra).await
    }

    pub async fn serving(serve: Serve, package_extra: &str, agent_extra: &str) -> World {
        Self::edited(serve, |_, catalog| catalog, package_extra, agent_extra).await
    }

    /// A world whose demo catalog (TOML) is first passed through `edit`, with the server's
    /// directory (where the catalog's files are).
    pub async fn edited(
        serve: Serve,
        edit: impl FnOnce(&Path, String) -> String,
        package_extra: &str,
        agent_extra: &str,
    ) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("server");
        let catalog = if serve.signed {
            ota_mock_server::demo::generate_signed(&dir, 200 * 1024)
                .unwrap()
                .0
        } else {
            ota_mock_server::demo::generate(&dir, 200 * 1024).unwrap()
        };
        let text = std::fs::read_to_string(&catalog).unwrap();
        std::fs::write(&catalog, edit(&dir, text)).unwrap();
        let catalog = Catalog::load(&catalog).unwrap();
        let certs = serve
            .tls
            .then(|| TestCertificates::generate_valid_from(serve.valid_from));
        let server = match &certs {
            Some(c) => MockServer::start_tls(catalog, c.tls_config()).await,
            None => MockServer::start(catalog).await,
        }
        .unwrap();
        std::fs::create_dir_all(tmp.path().join("robot")).unwrap();
        std::fs::copy(version_path(tmp.path(), 16), managed_path(tmp.path())).unwrap();
        let config = write_config(tmp.path(), &server.uri(), package_extra, agent_extra);
        World {
            tmp,
            server,
            config,
            certs,
        }
    }

    /// Appends a `[security]` section to the agent's config.
    pub fn secure(&self, section: &str) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(&format!("\n[security]\n{section}\n"));
        std::fs::write(&self.config, text).unwrap();
    }

    /// Replaces `from` with `to` in the agent's config.
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(from), "the config has no {from:?}");
        std::fs::write(&self.config, text.replace(from, to)).unwrap();
    }

    /// Revokes the vendor's key on the robot: the config lists a stranger's instead.
    pub fn distrust_vendor_key(&self) {
        let stranger = ota_signing::SecretKey::generate()
            .unwrap()
            .public()
            .to_text();
        self.edit_config(&self.vendor_key(), &stranger);
    }

    /// The public key of the demo's signing key, as the config lists it.
    pub fn vendor_key(&self) -> String {
        self.server.catalog().public_key().unwrap().to_text()
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    pub fn installed(&self) -> Vec<u8> {
        std::fs::read(managed_path(self.dir())).unwrap()
    }

    pub fn version(&self, code: u32) -> Vec<u8> {
        std::fs::read(version_path(self.dir(), code)).unwrap()
    }

    /// The (id, code) pairs the server recorded, in order.
    pub fn callbacks(&self) -> Vec<(String, String)> {
        self.server
            .callbacks()
            .into_iter()
            .map(|c| (c.id, c.code))
            .collect()
    }

    pub async fn agent(&self, args: &[&str]) -> Output {
        agent(&self.config, args).await
    }

    pub async fn status(&self) -> serde_json::Value {
        let out = self.agent(&["status", "--json"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

pub fn version_path(dir: &Path, code: u32) -> PathBuf {
    dir.join("server").join("versions").join(code.to_string())
}

pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Runs the agent binary to completion (off the test's runtime, which serves the mock).
pub async fn agent(config: &Path, args: &[&str]) -> Output {
    agent_with_env(config, args, &[]).await
}

/// Like [`agent`], with more environment variables.
pub async fn agent_with_env(config: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ota-agent"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("OTA_AGENT_LOG", "debug");
    for (key, value) in env {
        cmd.env(key, value);
    }
    let out = cmd.output().await.unwrap();
    eprintln!(
        "ota-agent {args:?} exited with {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A robot in a temporary directory whose managed file holds `version 16` (the words), with a
/// config for the server at `url`.
pub fn plain_robot(url: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("robot")).unwrap();
    std::fs::write(managed_path(tmp.path()), b"version 16").unwrap();
    let config = write_config(tmp.path(), url, "", "");
    (tmp, config)
}

/// A token endpoint on a wiremock server that hands out the access token `t1`.
pub async fn mount_token(server: &wiremock::MockServer) {
    wiremock::Mock::given(wiremock::matchers::path("/oauth/token"))
        .respond_with(
            wiremock::ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"access_token":"t1","expires_in":11999})),
        )
        .mount(server)
        .await;
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// GET requests for patch files (not their metadata).
pub fn patch_gets(w: &World) -> usize {
    w.server
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(".patch"))
        .count()
}

/// `HH:MM-HH:MM` (UTC): an install window that opens an hour from now and lasts a minute.
pub fn window_in_an_hour() -> String {
    let now_min = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60;
    let hm = |m: u64| format!("{:02}:{:02}", m / 60 % 24, m % 60);
    format!("{}-{}", hm(now_min + 60), hm(now_min + 61))
}

/// A request as a raw HTTP server sees it.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub method: String,
    /// The path with its query.
    pub target: String,
    /// Header lines, lower-cased names.
    pub headers: Vec<(String, String)>,
}

impl RawRequest {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// An HTTP/1.1 server on 127.0.0.1:0 that answers every request with the bytes `answer` makes
/// (status line, headers and body, exactly as they go on the wire) and then closes the
/// connection: for answers no well-behaved server gives (no Content-Length, a body cut short).
/// Returns its base URL and the requests it saw.
pub async fn raw_server(
    answer: impl Fn(&RawRequest) -> Vec<u8> + Send + Sync + 'static,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<RawRequest>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let answer = std::sync::Arc::new(answer);
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (answer, log) = (answer.clone(), log.clone());
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let mut parts = line.split_whitespace();
                let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let mut req = RawRequest {
                    method: method.to_owned(),
                    target: target.to_owned(),
                    headers: Vec::new(),
                };
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).await.unwrap_or(0) == 0
                        || header.trim().is_empty()
                    {
                        break;
                    }
                    if let Some((k, v)) = header.split_once(':') {
                        req.headers
                            .push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                    }
                }
                let bytes = answer(&req);
                log.lock().unwrap().push(req);
                let mut stream = reader.into_inner();
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (url, seen)
}

/// A raw HTTP answer: `status` line, `headers` (each `Name: value`), `Connection: close`, body.
pub fn raw_answer(status: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}
