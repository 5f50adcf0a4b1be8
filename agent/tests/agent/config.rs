//! The config file: refused with the file, the key and the reason; secrets kept private.

use std::os::unix::fs::PermissionsExt;

use ota_agent::config::{Config, ConfigError};

use crate::helpers::write_config;

fn load_with(edit: impl Fn(String) -> String) -> Result<Config, ConfigError> {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_config(tmp.path(), "http://127.0.0.1:9", "", "");
    let text = edit(std::fs::read_to_string(&path).unwrap());
    std::fs::write(&path, text).unwrap();
    Config::load(&path)
}

#[test]
fn a_good_config_loads_with_defaults() {
    let c = load_with(|t| t).unwrap();
    assert_eq!(c.packages.len(), 1);
    assert_eq!(c.agent.poll_interval.0.as_secs(), 3600);
    assert_eq!(c.agent.poll_jitter().as_secs(), 360);
    assert_eq!(c.robot_id().unwrap(), "robot-0001");
    assert!(!format!("{c:?}").contains("secret_1"));
}

#[test]
fn bad_configs_name_the_key() {
    let cases: [(&str, &str, &str); 6] = [
        (
            "poll_interval = \"1h\"",
            "poll_interval = \"1 hour\"",
            "poll_interval",
        ),
        (
            "url = \"http://127.0.0.1:9\"",
            "url = \"ftp://x\"",
            "server.url",
        ),
        (
            "version = \"16\"",
            "version = \"sixteen\"",
            "package[0].version",
        ),
        ("[robot]", "[robot]\ncolour = \"red\"", "colour"),
        ("id = \"robot-0001\"", "", "robot.id"),
        ("client_id = \"mobile_1\"", "", "client_id"),
    ];
    for (from, to, key) in cases {
        let err = load_with(|t| t.replacen(from, to, 1)).unwrap_err();
        let text = ota_agent::error_chain(&err);
        assert!(text.contains("agent.toml"), "{text}");
        assert!(text.contains(key), "{text} should name {key}");
    }
}

#[test]
fn a_config_with_secrets_readable_by_others_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_config(tmp.path(), "http://127.0.0.1:9", "", "");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Config::load(&path).unwrap_err();
    assert!(matches!(
        err,
        ConfigError::LoosePermissions { mode: 0o644, .. }
    ));
    assert!(err.to_string().contains("chmod 600"));
}

#[tokio::test]
async fn the_binary_refuses_a_bad_config_and_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_config(tmp.path(), "http://127.0.0.1:9", "", "retry_base = \"0s\"");
    let out = crate::helpers::agent(&path, &["check"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("agent.toml") && stderr.contains("retry"),
        "{stderr}"
    );
}

#[test]
fn the_example_config_is_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("agent.toml");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/agent.toml.example"),
        &path,
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(c.agent.poll_interval.0.as_secs(), 6 * 3600);
    assert_eq!(
        c.agent.events_socket.to_str(),
        Some("/run/ota-agent/events.sock")
    );
    assert_eq!(
        c.packages[0].path.to_str(),
        Some("/opt/alpha2/Alpha2Services.apk")
    );
}

#[test]
fn security_settings_are_checked() {
    let key = ota_signing::SecretKey::generate()
        .unwrap()
        .public()
        .to_text();
    let with = |section: &str| load_with(|t| format!("{t}\n[security]\n{section}\n"));
    let c = with(&format!(
        "public_keys = [\"{key}\"]\nrequire_signatures = true\nallowed_download_hosts = [\"10.10.1.14:8080\"]\npinned_keys = [\"sha256//{}\"]",
        "A".repeat(43) + "="
    ))
    .unwrap();
    assert_eq!(c.security.keys().len(), 1);
    assert!(c.security.require_signatures);
    let cases = [
        ("require_signatures = true", "security.require_signatures"),
        ("public_keys = [\"AAAA\"]", "public key has 3 bytes"),
        (
            "public_keys = [\"not base64!\"]",
            "public key is not base64",
        ),
        ("pinned_keys = [\"AAAA\"]", "not the 32 bytes of a sha256"),
        (
            "allowed_download_hosts = []",
            "leave it out to allow any host",
        ),
        (
            "allowed_download_hosts = [\"http://evil/\"]",
            "is not a host or host:port",
        ),
        ("require_signature = true", "require_signature"),
    ];
    for (section, expected) in cases {
        let err = with(section).unwrap_err();
        let text = ota_agent::error_chain(&err);
        assert!(text.contains(expected), "{section}: {text}");
    }
}

#[tokio::test]
async fn a_config_error_never_prints_a_secret() {
    // A missing quote, a number, a misspelled key: toml's own message quoted the line, and with
    // it the password, into the journal at every restart.
    for (from, to) in [
        ("password = \"aa\"", "password = \"Pa55-w0rd"),
        ("password = \"aa\"", "password = 12345678"),
        ("password = \"aa\"", "passwrod = \"Pa55-w0rd\""),
        ("client_secret = \"secret_1\"", "client_secret = Pa55-w0rd"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let path = write_config(tmp.path(), "http://127.0.0.1:9", "", "");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        let out = crate::helpers::agent(&path, &["check"]).await;
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("agent.toml") && stderr.contains("line"),
            "{stderr}"
        );
        for secret in ["Pa55-w0rd", "12345678"] {
            assert!(!stderr.contains(secret), "{to}: {stderr}");
        }
    }
}

#[test]
fn the_good_citizens_keys_are_checked() {
    let with = |server: &str, agent: &str| {
        load_with(|t| {
            t.replace(
                "read_timeout = \"5s\"",
                &format!("read_timeout = \"5s\"\n{server}"),
            )
            .replace(
                "retry_max = \"2s\"",
                &format!("retry_max = \"2s\"\n{agent}"),
            )
        })
    };
    let c = with(
        "max_download_rate = \"512k\"\nproxy = \"http://user:hunter2@proxy:3128\"",
        "install_window = [\"22:00-02:00\", \"13:00-14:00\"]\ndefer_retry = \"1m\"",
    )
    .unwrap();
    assert_eq!(c.server.max_download_rate.unwrap().0, 512 * 1024);
    assert_eq!(c.agent.install_window.len(), 2);
    assert_eq!(c.agent.defer_retry.0.as_secs(), 60);
    assert_eq!(c.agent.defer_timeout.0.as_secs(), 86_400);
    // A proxy's password is no more printed than the server's secrets.
    assert!(!format!("{c:?}").contains("hunter2"));
    assert_eq!(
        with("max_download_rate = \"2M\"", "")
            .unwrap()
            .server
            .max_download_rate
            .unwrap()
            .0,
        2 << 20
    );
    let defaults = with("", "").unwrap();
    assert!(defaults.server.max_download_rate.is_none());
    assert!(defaults.agent.install_window.is_empty());
    assert_eq!(defaults.agent.defer_retry.0.as_secs(), 900);
    for (server, agent, says) in [
        ("max_download_rate = \"512 kB\"", "", "unknown unit `kB`"),
        (
            "max_download_rate = 0",
            "",
            "a rate of 0 would never download",
        ),
        ("max_download_rate = \"fast\"", "", "not a rate"),
        (
            "proxy = \"not a url\"",
            "",
            "key `server.proxy` must be a URL",
        ),
        ("", "install_window = [\"1-5\"]", "not a window such as"),
        ("", "install_window = [\"05:00-05:00\"]", "an empty window"),
        (
            "",
            "defer_retry = \"100ms\"",
            "key `agent.defer_retry` must be at least 1s",
        ),
    ] {
        let err = with(server, agent).unwrap_err().to_string();
        assert!(err.contains(says), "{server} {agent}: {err}");
    }
}
