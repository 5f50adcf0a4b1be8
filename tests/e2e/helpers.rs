//! The two real binaries, started as processes on ephemeral ports.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

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

/// `ota-mock-server demo` in a process of its own, killed when dropped.
pub struct Server {
    _child: Child,
    pub url: String,
    pub dir: PathBuf,
}

impl Server {
    pub async fn demo(dir: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(binary("ota-mock-server"))
            .args(extra)
            .arg("demo")
            .arg("--dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--size", "262144"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
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

    /// `(id, code)` of every callback the server recorded, through its admin API.
    pub async fn callbacks(&self) -> Vec<(String, String)> {
        let list: Vec<serde_json::Value> = http()
            .get(format!("{}/admin/callbacks", self.url))
            .send()
            .await
            .expect("admin request")
            .json()
            .await
            .expect("callbacks json");
        list.iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap_or_default().to_owned(),
                    c["code"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

/// An HTTP client for the mock server's admin API.
pub fn http() -> reqwest::Client {
    // reqwest is built without a default TLS provider (see the workspace manifest).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A robot at version 16 managed by an agent config pointing at `url`.
pub fn robot(dir: &Path, server: &Server) -> PathBuf {
    let robot = dir.join("robot");
    std::fs::create_dir_all(&robot).expect("robot dir");
    std::fs::write(robot.join("Alpha2Services.apk"), server.version(16)).expect("managed file");
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
[robot]
id = "15ae48ecs171faef35fafa5feafew"
version = "1"
language = "CN"
[agent]
state_dir = "{state}"
retry_base = "1s"
retry_max = "2s"
[[package]]
name = "com.ubtechinc.alpha2services"
file_name = "service5mic"
path = "{path}"
version = "16"
"#,
            url = server.url,
            state = dir.join("state").display(),
            path = robot.join("Alpha2Services.apk").display(),
        ),
    )
    .expect("config");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    config
}

pub fn installed(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("robot").join("Alpha2Services.apk")).expect("managed file")
}

pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}
