//! The two real binaries as processes on ephemeral ports, a robot's files, and the two
//! invariants every scenario ends with.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The demo catalog's versions, and the update id that leads to each.
pub const VERSIONS: [u32; 3] = [16, 17, 18];
pub const IDS: [(&str, u32); 2] = [("23", 17), ("25", 18)];

/// A binary of this workspace. `cargo test --workspace` builds them, with the features of the
/// same run, before any test starts: the agent's and the mock server's own integration tests
/// need them too. (Building them from here instead would build with other features and make
/// every run rebuild.)
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run the end-to-end tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// An HTTP client for the mock server's admin API.
pub fn http() -> reqwest::Client {
    // reqwest is built without a default TLS provider (see the workspace manifest).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// `ota-mock-server demo` in a process of its own, killed when dropped.
pub struct Server {
    _child: Child,
    pub url: String,
    pub dir: PathBuf,
}

impl Server {
    /// The demo catalog with firmware of `size` bytes.
    pub async fn demo(dir: &Path, size: usize) -> Server {
        let mut child = Command::new(binary("ota-mock-server"))
            .arg("demo")
            .arg("--dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--size", &size.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start ota-mock-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .expect("read the listening line");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Server {
            _child: child,
            url,
            dir: dir.to_owned(),
        }
    }

    pub fn version(&self, code: u32) -> Vec<u8> {
        std::fs::read(self.dir.join("versions").join(code.to_string())).expect("version file")
    }

    /// The bytes of every patch the server serves.
    pub fn patch_bytes(&self) -> u64 {
        std::fs::read_dir(self.dir.join("cache"))
            .expect("patch cache")
            .map(|e| e.expect("cache entry").metadata().expect("metadata").len())
            .sum()
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = http().request(method, format!("{}/admin/{path}", self.url));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("admin request");
        assert!(
            resp.status().is_success(),
            "admin {path}: {}",
            resp.status()
        );
        resp.json().await.expect("admin answer")
    }

    /// Injects a fault, in the admin API's JSON (see `mock-server/src/lib.rs`).
    pub async fn inject(&self, fault: Value) {
        self.admin(reqwest::Method::POST, "faults", Some(fault))
            .await;
    }

    pub async fn clear_faults(&self) {
        self.admin(reqwest::Method::DELETE, "faults", None).await;
    }

    pub async fn revoke_tokens(&self) {
        self.admin(reqwest::Method::POST, "revoke", Some(json!({})))
            .await;
    }

    pub async fn allow_token_get(&self, allowed: bool) {
        let body = json!({ "allowed": allowed });
        self.admin(reqwest::Method::POST, "token-get", Some(body))
            .await;
    }

    pub async fn requests(&self) -> Vec<Value> {
        let list = self.admin(reqwest::Method::GET, "requests", None).await;
        list.as_array().cloned().unwrap_or_default()
    }

    /// `(id, code)` of every callback the server recorded for one robot, in order.
    pub async fn callbacks(&self, robot_id: &str) -> Vec<(String, String)> {
        let list = self.admin(reqwest::Method::GET, "callbacks", None).await;
        list.as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["robot_id"] == robot_id)
            .map(|c| {
                let field = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
                (field("id"), field("code"))
            })
            .collect()
    }
}

/// A robot at version 16: its managed file, its state directory, and an agent config.
pub struct Robot {
    pub dir: PathBuf,
    pub id: String,
    pub config: PathBuf,
}

impl Robot {
    /// `server_extra` and `package_extra` are TOML lines added to those sections.
    pub fn new(dir: &Path, server: &Server, server_extra: &str, package_extra: &str) -> Robot {
        let id = format!(
            "robot-{}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("x")
        );
        std::fs::create_dir_all(dir.join("robot")).expect("robot dir");
        std::fs::write(
            dir.join("robot").join("Alpha2Services.apk"),
            server.version(16),
        )
        .expect("managed file");
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                r#"[server]
url = "{url}"
client_id = "mobile_1"
client_secret = "secret_1"
username = "aa"
password = "aa"
connect_timeout = "5s"
{server_extra}
[robot]
id = "{id}"
version = "1"
language = "CN"
[agent]
state_dir = "{state}"
retry_base = "1s"
retry_max = "2s"
events_socket = "{events}"
[[package]]
name = "com.ubtechinc.alpha2services"
file_name = "service5mic"
path = "{path}"
version = "16"
{package_extra}
"#,
                url = server.url,
                state = dir.join("state").display(),
                events = dir.join("events.sock").display(),
                path = dir.join("robot").join("Alpha2Services.apk").display(),
            ),
        )
        .expect("config");
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        Robot {
            dir: dir.to_owned(),
            id,
            config,
        }
    }

    pub fn managed(&self) -> PathBuf {
        self.dir.join("robot").join("Alpha2Services.apk")
    }

    pub fn installed(&self) -> Vec<u8> {
        std::fs::read(self.managed()).expect("managed file")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary("ota-agent"));
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .env("OTA_AGENT_LOG", "debug")
            .kill_on_drop(true);
        cmd
    }

    pub async fn agent(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().await.expect("run ota-agent");
        eprintln!(
            "ota-agent {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub async fn status(&self) -> Value {
        let out = self
            .command(&["status", "--json"])
            .output()
            .await
            .expect("run ota-agent status");
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status json")
    }
}

/// How many `check` runs any scenario may take, once its faults are gone, to end.
pub const SETTLE_CHECKS: usize = 6;

/// Lets the agent finish with the faults gone: checks until nothing is under way and no result
/// waits to be sent, then holds it to the third invariant, **every update ends**: within
/// [`SETTLE_CHECKS`] runs every id the server offered has a result, and the state directory
/// holds no download and the managed file's directory no half-made new version.
pub async fn settle(robot: &Robot, server: &Server) {
    server.clear_faults().await;
    for _ in 0..SETTLE_CHECKS {
        robot.agent(&["check"]).await;
        let status = robot.status().await;
        let pkg = &status["packages"][0];
        let waiting = pkg["callbacks_waiting"].as_array().map_or(0, Vec::len);
        if pkg["update"].is_null() && waiting == 0 {
            assert_ended(robot, server).await;
            return;
        }
    }
    panic!("every update ends: the agent did not settle in {SETTLE_CHECKS} checks");
}

/// Every update ends: each id has a result, and nothing of an update is left on disk.
pub async fn assert_ended(robot: &Robot, server: &Server) {
    let callbacks = server.callbacks(&robot.id).await;
    for (id, _) in IDS {
        assert!(
            callbacks.iter().any(|(i, _)| i == id),
            "every update ends: no result for update {id} in {callbacks:?}"
        );
    }
    let packages = robot.dir.join("state").join("packages");
    for dir in std::fs::read_dir(&packages).into_iter().flatten() {
        let left: Vec<_> = std::fs::read_dir(dir.expect("entry").path())
            .expect("package dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(
            left.is_empty(),
            "every update ends: downloads left: {left:?}"
        );
    }
    let new = robot
        .managed()
        .with_file_name(".Alpha2Services.apk.ota-new");
    assert!(
        !new.exists(),
        "every update ends: {} is left",
        new.display()
    );
}

/// Never broken: the managed file, and the copy kept for rollback beside it, are each one of
/// the catalog's versions byte for byte, and the agent says which the file is. Never lost:
/// every id ends with a callback that matches what is installed, and no id has two different
/// final codes (`3`, "not updated yet", is not final).
pub async fn assert_invariants(robot: &Robot, server: &Server) -> u32 {
    let installed = robot.installed();
    let version = VERSIONS
        .into_iter()
        .find(|v| server.version(*v) == installed)
        .expect("never broken: the managed file is none of the catalog's versions");
    let prev = robot
        .managed()
        .with_file_name(".Alpha2Services.apk.ota-prev");
    if let Ok(bytes) = std::fs::read(&prev) {
        assert!(
            VERSIONS.into_iter().any(|v| server.version(v) == bytes),
            "never broken: the rollback copy {} is none of the catalog's versions",
            prev.display()
        );
    }
    let status = robot.status().await;
    assert_eq!(
        status["packages"][0]["version"],
        version.to_string(),
        "status tells the installed version"
    );
    let callbacks = server.callbacks(&robot.id).await;
    for (id, leads_to) in IDS {
        let codes: Vec<&str> = callbacks
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, c)| c.as_str())
            .collect();
        let last = *codes
            .last()
            .unwrap_or_else(|| panic!("never lost: no result for update {id} in {callbacks:?}"));
        let finals: BTreeSet<&str> = codes.iter().copied().filter(|c| *c != "3").collect();
        assert!(
            finals.len() <= 1,
            "update {id} has different final results: {codes:?}"
        );
        if version >= leads_to {
            assert_eq!(last, "1", "update {id} is installed: {callbacks:?}");
        } else {
            assert!(
                last == "2" || last == "3",
                "update {id} is not installed: {callbacks:?}"
            );
        }
    }
    version
}
