//! The `ota-mock-server` binary: the `listening on` line, one request, a bad catalog, HTTPS and
//! the signed demo.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::common::{PASSWORD_GRANT, TestCerts, client, demo_dir};

const BIN: &str = env!("CARGO_BIN_EXE_ota-mock-server");

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary and reads the base URL from its one line of stdout.
/// `demo --dir DIR` on a free port with a small demo, plus `extra` arguments.
async fn start_demo(dir: &Path, extra: &[&str]) -> (Running, String) {
    let mut args: Vec<String> = ["demo", "--dir"].map(String::from).to_vec();
    args.push(dir.display().to_string());
    args.extend(["--listen", "127.0.0.1:0", "--size", "65536"].map(String::from));
    args.extend(extra.iter().map(|a| a.to_string()));
    start(args).await
}

async fn start(args: Vec<String>) -> (Running, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let uri = line
        .trim_end()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (running, uri)
}

#[tokio::test]
async fn the_binary_serves_a_catalog_on_a_free_port() {
    let catalog = demo_dir().join("catalog.toml");
    let (_running, uri) = start(vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--catalog".into(),
        catalog.display().to_string(),
        "--token-post-only".into(),
    ])
    .await;
    assert!(
        uri.starts_with("http://127.0.0.1:") && !uri.ends_with(":0"),
        "{uri}"
    );
    let query = PASSWORD_GRANT;
    let response = client()
        .get(format!("{uri}/oauth/token?{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let response = client()
        .post(format!("{uri}/oauth/token?{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_demo_subcommand_generates_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let (_running, uri) = start_demo(dir.path(), &[]).await;
    assert!(dir.path().join("catalog.toml").is_file());
    for code in [16, 17, 18] {
        let len = std::fs::metadata(dir.path().join(format!("versions/{code}")))
            .unwrap()
            .len();
        assert!(
            len.abs_diff(65536) < 65536 / 5,
            "version {code} has {len} bytes"
        );
    }
    let query = PASSWORD_GRANT;
    let token: serde_json::Value = client()
        .get(format!("{uri}/oauth/token?{query}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!(
        "{uri}/file/download?access_token={}&package_name=com.ubtechinc.alpha2services&version=16\
         &file_name=service5mic&language=CN&robot_version=1&robot_id=r",
        token["access_token"].as_str().unwrap()
    );
    let body: serde_json::Value = client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["id"], "23;25");
}

#[test]
fn a_bad_catalog_stops_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.toml");
    std::fs::write(
        &path,
        "[[package]]\nname = \"p\"\n[[package.file]]\nfile_name = \"f\"\nlanguage = \"CN\"\n\
         [[package.file.version]]\ncode = 16\nname = \"a\"\nfile = \"nowhere\"\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--catalog"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("package \"p\" file \"f\" language \"CN\" version 16"),
        "{stderr}"
    );
    assert!(stderr.contains("nowhere"), "{stderr}");
}

#[tokio::test]
async fn the_binary_serves_https_with_pem_files() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = TestCerts::shared()
        .write_pem(dir.path())
        .expect("write PEM");
    let catalog = demo_dir().join("catalog.toml");
    let (_running, uri) = start(vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--catalog".into(),
        catalog.display().to_string(),
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ])
    .await;
    assert!(uri.starts_with("https://127.0.0.1:"), "{uri}");
    let query = PASSWORD_GRANT;
    let response = client()
        .get(format!("{uri}/oauth/token?{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[test]
fn a_certificate_needs_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = TestCerts::shared()
        .write_pem(dir.path())
        .expect("write PEM");
    let catalog = demo_dir().join("catalog.toml");
    let output = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--catalog"])
        .arg(&catalog)
        .arg("--tls-cert")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--tls-key"), "{stderr}");

    std::fs::write(&key, "not a key").unwrap();
    let output = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--catalog"])
        .arg(&catalog)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&key.display().to_string()), "{stderr}");
}

#[tokio::test]
async fn the_signed_demo_makes_a_key_and_signs_every_patch() {
    let dir = tempfile::tempdir().unwrap();
    let (_running, uri) = start_demo(dir.path(), &["--sign"]).await;
    let public =
        ota_signing::release::read_public_key(&dir.path().join("vendor.pub").display().to_string())
            .unwrap();
    assert!(dir.path().join("vendor.key").is_file());
    let catalog = ota_mock_server::Catalog::load(&dir.path().join("catalog.toml")).unwrap();
    assert_eq!(catalog.public_key(), Some(public));
    for patch in catalog.patches() {
        let get = |path: String| {
            let url = format!("{uri}{path}");
            async move {
                let response = client().get(url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap()
            }
        };
        let json = get(patch.meta_url_path()).await;
        let sig = get(patch.sig_url_path()).await;
        let meta = ota_signing::verify(&[public], &json, &sig).unwrap();
        assert_eq!(
            (meta.from_version, meta.to_version),
            (patch.from_code, patch.to_code)
        );
    }
}
