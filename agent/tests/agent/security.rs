//! What the robot trusts: signed metadata, TLS roots and pins, download hosts. Each refusal is
//! played against the mock server over real HTTP(S): nothing is installed, and the server records
//! the results of rule 3 for the refused patch and the ones around it.

use base64::Engine as _;
use ota_mock_server::{Endpoint, Fault, FaultKind, TestCertificates};
use sha2::{Digest, Sha256};

use crate::helpers::{Serve, World, agent_with_env, pairs, patch_gets, stderr};

const SIGNED: Serve = Serve {
    signed: true,
    tls: false,
    valid_from: None,
};

async fn signed_world(extra: &str) -> World {
    let w = World::serving(SIGNED, "", "").await;
    w.secure(&format!(
        "public_keys = [\"{}\"]\nrequire_signatures = true\n{extra}",
        w.vendor_key()
    ));
    w
}

/// Runs `check`, which must fail, leave version `installed` in place, make the server record
/// `callbacks` and log `says`.
async fn refused(w: &World, installed: u32, callbacks: &[(&str, &str)], says: &str) {
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert_eq!(w.installed(), w.version(installed));
    assert_eq!(w.callbacks(), pairs(callbacks));
    assert!(stderr(&out).contains(says), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_chain_installs() {
    let w = signed_world("").await;
    let out = w.agent(&["check"]).await;
    assert!(out.status.success());
    assert_eq!(w.installed(), w.version(18));
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "1")]));
    assert!(stderr(&out).contains("update 25: good signature for version 17 → 18"));
    assert!(!stderr(&out).contains("unauthenticated"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_patch_is_refused() {
    let w = signed_world("").await;
    w.server.inject(
        Fault::new(Endpoint::Patch, FaultKind::Corrupt { offset: 100 })
            .path_contains("--18--")
            .times(100),
    );
    refused(
        &w,
        17,
        &[("23", "1"), ("25", "2")],
        "update 25 is not the patch the vendor signed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_metadata_is_refused_before_the_patch_is_fetched() {
    let w = signed_world("").await;
    // The agent fetches the metadata before its signature: the first match is the .meta.json.
    w.server.inject(
        Fault::new(Endpoint::Metadata, FaultKind::Corrupt { offset: 60 })
            .path_contains("--17--")
            .times(1),
    );
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert_eq!(w.installed(), w.version(16));
    assert_eq!(w.callbacks(), pairs(&[("23", "2"), ("25", "3")]));
    assert_eq!(patch_gets(&w), 0, "nothing is downloaded");
    assert!(
        stderr(&out)
            .contains("update 23 is refused: the metadata is not signed by any trusted key")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_by_an_unknown_key_is_refused() {
    let w = World::serving(SIGNED, "", "").await;
    let stranger = ota_signing::SecretKey::generate()
        .unwrap()
        .public()
        .to_text();
    w.secure(&format!("public_keys = [\"{stranger}\"]"));
    refused(
        &w,
        16,
        &[("23", "2"), ("25", "3")],
        "not signed by any trusted key",
    )
    .await;
    assert_eq!(patch_gets(&w), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_key_allows_rotation() {
    let w = World::serving(SIGNED, "", "").await;
    let next = ota_signing::SecretKey::generate()
        .unwrap()
        .public()
        .to_text();
    w.secure(&format!(
        "public_keys = [\"{next}\", \"{}\"]\nrequire_signatures = true",
        w.vendor_key()
    ));
    assert!(w.agent(&["check"]).await.status.success());
    assert_eq!(w.installed(), w.version(18));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_older_signed_patch_is_refused() {
    let w = signed_world("").await;
    let patches = w.server.catalog().patches();
    let older = patches.iter().find(|p| p.id == "23").unwrap();
    let newer = patches.iter().find(|p| p.id == "25").unwrap();
    // Update 25's URL serves update 23's patch with its valid signature: 16 → 17 once more.
    w.server.replay_patch(older, newer);
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert_eq!(w.installed(), w.version(17));
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "2")]));
    assert!(
        stderr(&out).contains(
            "update 25 is refused: the signed metadata is for from-version `16`, not `17`"
        ),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_signature_is_refused_when_required_and_warned_about_otherwise() {
    let w = signed_world("").await;
    let missing = || {
        Fault::status(Endpoint::Metadata, 404, "{}")
            .path_contains("--18--")
            .times(100)
    };
    w.server.inject(missing());
    refused(
        &w,
        17,
        &[("23", "1"), ("25", "2")],
        "it has no signed metadata, and signatures are required",
    )
    .await;

    // Not required: the same patch is installed, with a warning.
    let w = World::serving(SIGNED, "", "").await;
    w.secure(&format!("public_keys = [\"{}\"]", w.vendor_key()));
    w.server.inject(missing());
    let out = w.agent(&["check"]).await;
    assert!(out.status.success());
    assert_eq!(w.installed(), w.version(18));
    assert!(
        stderr(&out).contains("update 25 has no signed metadata; it is downloaded unauthenticated")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_the_agent_warns_once_and_updates() {
    let w = World::new("").await;
    let out = w.agent(&["check"]).await;
    assert!(out.status.success());
    assert_eq!(w.installed(), w.version(18));
    let err = stderr(&out);
    assert_eq!(
        err.matches("patches are unauthenticated").count(),
        1,
        "{err}"
    );
    assert_eq!(err.matches("server.url is plain http").count(), 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_outside_the_allowed_hosts_is_never_fetched() {
    let w = World::new("").await;
    w.secure("allowed_download_hosts = [\"updates.example.com\"]");
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert_eq!(w.installed(), w.version(16));
    assert_eq!(w.callbacks(), pairs(&[("23", "2"), ("25", "3")]));
    assert!(
        !w.server
            .requests()
            .iter()
            .any(|r| r.path.starts_with("/version/")),
        "nothing is fetched from a host outside the list"
    );
    assert!(stderr(&out).contains("which is not in allowed_download_hosts"));

    // The server's own host (any port) is allowed.
    let w = World::new("").await;
    w.secure("allowed_download_hosts = [\"127.0.0.1\"]");
    assert!(w.agent(&["check"]).await.status.success());
    assert_eq!(w.installed(), w.version(18));
}

const TLS: Serve = Serve {
    signed: true,
    tls: true,
    valid_from: None,
};

/// A world over HTTPS whose robot trusts `ca_pem` (default: the server's CA) and the vendor's
/// key; `extra` adds to the `[security]` section, given the server's certificates.
async fn tls_world(ca_pem: Option<&str>, extra: impl FnOnce(&TestCertificates) -> String) -> World {
    let w = World::serving(TLS, "", "").await;
    assert!(w.server.uri().starts_with("https://"));
    let certs = w.certs.as_ref().unwrap();
    let ca = w.dir().join("ca.pem");
    std::fs::write(&ca, ca_pem.unwrap_or(&certs.ca_pem)).unwrap();
    w.secure(&format!(
        "public_keys = [\"{}\"]\nrequire_signatures = true\nca_file = \"{}\"\n{}",
        w.vendor_key(),
        ca.display(),
        extra(certs)
    ));
    w
}

/// Runs `check`, which must fail in the TLS handshake: no request reaches the server, nothing
/// is installed, and the log says `says`.
async fn refused_at_the_handshake(w: &World, says: &str) {
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert_eq!(w.installed(), w.version(16));
    assert!(w.callbacks().is_empty());
    assert!(w.server.requests().is_empty(), "no request got through");
    assert!(stderr(&out).contains(says), "{}", stderr(&out));
}

fn pin_of(spki_der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki_der))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_fleet_ca_and_the_right_pin_updates() {
    let other = pin_of(&TestCertificates::generate().spki_der);
    let w = tls_world(None, |certs| {
        format!(
            "pinned_keys = [\"{other}\", \"sha256//{}\"]",
            pin_of(&certs.spki_der)
        )
    })
    .await;
    let out = w.agent(&["check"]).await;
    assert!(out.status.success());
    assert_eq!(w.installed(), w.version(18));
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "1")]));
    assert!(!stderr(&out).contains("plain http"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let stranger = TestCertificates::generate();
    let w = tls_world(Some(&stranger.ca_pem), |_| String::new()).await;
    refused_at_the_handshake(&w, "invalid peer certificate").await;

    // Without a CA file the system's roots are used, and they do not know the test CA either.
    let w = World::serving(TLS, "", "").await;
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert!(w.server.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_key_mismatch_is_refused() {
    let other = pin_of(&TestCertificates::generate().spki_der);
    let w = tls_world(None, |_| format!("pinned_keys = [\"{other}\"]")).await;
    refused_at_the_handshake(&w, "carries none of the pinned public keys").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_for_another_base_file_is_refused_by_the_signed_base() {
    let w = signed_world("").await;
    // The robot's file is not the catalog's version 16, though the config says it is: a bsdiff
    // patch would apply to it all the same, to a file the vendor never made. The signed base
    // (metadata format 3) says so before a byte of a patch is fetched; nothing is wrong with
    // the patches, so they are "not updated yet", and the file is held as unidentified.
    let mut other = w.version(16);
    for i in (100..other.len()).step_by(4096) {
        other[i] ^= 0x5a;
    }
    std::fs::write(crate::helpers::managed_path(w.dir()), &other).unwrap();
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert_eq!(w.installed(), other, "nothing is installed");
    assert_eq!(w.callbacks(), pairs(&[("23", "3"), ("25", "3")]));
    assert_eq!(crate::helpers::patch_gets(&w), 0);
    assert!(
        stderr(&out).contains("update 23 is signed for a file with sha256"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_directory_is_private_and_planted_symlinks_are_not_followed() {
    use std::os::unix::fs::PermissionsExt;
    let w = signed_world("").await;
    let state = w.dir().join("state");
    let elsewhere = w.dir().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, state.join("packages")).unwrap();

    let out = w.agent(&["check"]).await;
    assert!(out.status.success());
    assert_eq!(w.installed(), w.version(18));
    let mode =
        |p: &std::path::Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("state.json")), 0o600);
    assert!(
        std::fs::symlink_metadata(state.join("packages"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "nothing went through the link"
    );
    assert!(stderr(&out).contains("is a symlink or a file, not a directory"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_dropped_mid_update_stops_counting() {
    let w = signed_world("").await;
    // The first run verifies both patches, then cannot download the second.
    w.server.inject(
        Fault::status(Endpoint::Patch, 503, "{}")
            .path_contains("--18--")
            .times(1000),
    );
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert!(w.callbacks().is_empty(), "the update is still under way");
    // The vendor's key is revoked on the robot; the facts verified with it no longer count.
    w.distrust_vendor_key();
    w.server.clear_faults();
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert_eq!(w.installed(), w.version(16));
    assert_eq!(w.callbacks(), pairs(&[("23", "2"), ("25", "3")]));
    assert!(
        stderr(&out)
            .contains("update 23 is refused: the metadata is not signed by any trusted key")
    );
}

/// A wiremock server that records what it is sent and answers 404.
async fn elsewhere() -> wiremock::MockServer {
    wiremock::MockServer::start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_follow_a_redirect_to_another_origin() {
    use wiremock::matchers::path;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let thief = elsewhere().await;
    let server = MockServer::start().await;
    // The token endpoint sends the robot elsewhere, with a 307 that keeps a POST's form.
    Mock::given(path("/oauth/token"))
        .respond_with(
            ResponseTemplate::new(307)
                .insert_header("location", format!("{}/oauth/token", thief.uri()).as_str()),
        )
        .mount(&server)
        .await;
    let (_robot, config) = crate::helpers::plain_robot(&server.uri());
    let out = crate::helpers::agent(&config, &["check"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("away from the server's own origin"),
        "{}",
        stderr(&out)
    );
    let stolen = thief.received_requests().await.unwrap();
    assert!(stolen.is_empty(), "the other host got {stolen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_says_where_it_came_from() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let other = elsewhere().await;
    let server = MockServer::start().await;
    crate::helpers::mount_token(&server).await;
    let patch = format!("{}/v/A-1--17--f.patch", server.uri());
    Mock::given(method("GET"))
        .and(path("/file/download"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"code":"100","data": patch,"id":"23"})),
        )
        .mount(&server)
        .await;
    // The patch moved to another host: the redirect is followed (no allowed_download_hosts),
    // but the other host must not learn the URL the agent came from, with its token.
    Mock::given(path("/v/A-1--17--f.patch"))
        .respond_with(ResponseTemplate::new(302).insert_header(
            "location",
            format!("{}/v/A-1--17--f.patch", other.uri()).as_str(),
        ))
        .mount(&server)
        .await;
    Mock::given(path("/file/callback"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"code":"100"})))
        .mount(&server)
        .await;
    let (_robot, config) = crate::helpers::plain_robot(&server.uri());
    crate::helpers::agent(&config, &["check"]).await;
    let seen = other.received_requests().await.unwrap();
    assert!(!seen.is_empty(), "the redirect was followed");
    for r in &seen {
        assert!(
            !r.headers.contains_key("referer"),
            "{} {} came with Referer {:?}",
            r.method,
            r.url,
            r.headers.get("referer")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_text_cannot_forge_log_lines() {
    use wiremock::matchers::path;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    // Under journald every line starts with its priority: a newline in server text would make a
    // line of the server's choosing, at the priority of its choosing.
    let forged = "\n<2>CRIT forged by the server \u{1b}[31m";
    for (endpoint, answer) in [
        (
            "/oauth/token",
            ResponseTemplate::new(400).set_body_json(serde_json::json!({
                "error": "invalid_grant", "error_description": format!("Bad credentials{forged}")
            })),
        ),
        (
            "/file/download",
            ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "code": "100", "data": "http://127.0.0.1:9/A-1--17--f.patch", "id": format!("23{forged}")
            })),
        ),
    ] {
        let server = MockServer::start().await;
        Mock::given(path("/oauth/token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"access_token":"t1","expires_in":11999})))
            .with_priority(5)
            .mount(&server)
            .await;
        Mock::given(path(endpoint))
            .respond_with(answer)
            .with_priority(1)
            .mount(&server)
            .await;
        let (_robot, config) = crate::helpers::plain_robot(&server.uri());
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ota-agent"))
            .arg("--config")
            .arg(&config)
            .arg("check")
            .env("OTA_AGENT_LOG", "debug")
            .env("JOURNAL_STREAM", "8:1234")
            .output()
            .await
            .unwrap();
        let log = stderr(&out);
        assert!(log.contains("forged by the server"), "{endpoint}: {log}");
        for line in log.lines() {
            assert!(
                line.starts_with('<') && !line.starts_with("<2>"),
                "{endpoint}: a line of the server's: {line:?}"
            );
            assert!(!line.contains('\u{1b}'), "{endpoint}: an escape sequence: {line:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth_error_that_echoes_a_secret_is_masked() {
    use wiremock::matchers::path;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    // A server that echoes what it was sent, in `error` as well as in its description.
    Mock::given(path("/oauth/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(serde_json::json!({
            "error": "invalid_client secret_1", "error_description": "client mobile_1/secret_1"
        })))
        .mount(&server)
        .await;
    let (_robot, config) = crate::helpers::plain_robot(&server.uri());
    let out = crate::helpers::agent(&config, &["check"]).await;
    let all = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(all.contains("invalid_client"), "{all}");
    assert!(!all.contains("secret_1"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_server_offering_a_plain_http_patch_is_refused_without_keys() {
    let w = World::serving(TLS, "", "").await;
    let certs = w.certs.as_ref().unwrap();
    let ca = w.dir().join("ca.pem");
    std::fs::write(&ca, &certs.ca_pem).unwrap();
    w.secure(&format!("ca_file = \"{}\"", ca.display()));
    // Spelled three ways: the rule once compared the raw text's prefix, and the other two were
    // fetched over plain http, installed and reported `1`.
    for spelling in ["http://", "HTTP://", "http:"] {
        let plain = format!(
            "{{\"code\":\"100\",\"data\":\"{spelling}127.0.0.1:9/version/A-1.1.1--17--service5mic.patch\",\"id\":\"23\"}}"
        );
        w.server
            .inject(Fault::status(Endpoint::Download, 200, &plain));
        let out = w.agent(&["check"]).await;
        assert!(!out.status.success(), "{spelling}");
        assert!(
            stderr(&out).contains("offered over plain http"),
            "{spelling}: {}",
            stderr(&out)
        );
        assert!(w.status().await["packages"][0]["update"].is_null());
        assert_eq!(w.installed(), w.version(16));
    }
}

/// A signed world whose robot requires signatures, from a catalog passed through `edit`.
async fn signed_edited(edit: impl FnOnce(&std::path::Path, String) -> String) -> World {
    let w = World::edited(SIGNED, edit, "", "").await;
    w.secure(&format!(
        "public_keys = [\"{}\"]\nrequire_signatures = true",
        w.vendor_key()
    ));
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_languages_signed_patch_is_refused() {
    // CN and EN share version 16 and differ at 17; a man in the middle hands the CN robot the
    // EN patch with its own, validly signed sidecars.
    let w = signed_edited(|dir, catalog| {
        let mut en = std::fs::read(dir.join("versions").join("17")).unwrap();
        en[100..200].fill(b'E');
        std::fs::write(dir.join("versions").join("17en"), en).unwrap();
        format!(
            "{catalog}\n[[package.file]]\nfile_name = \"service5mic\"\nlanguage = \"EN\"\n\n\
             [[package.file.version]]\ncode = 16\nname = \"1.1.0.32\"\nfile = \"versions/16\"\n\n\
             [[package.file.version]]\ncode = 17\nname = \"1.1.1.32\"\nid = \"33\"\nfile = \"versions/17en\"\n"
        )
    })
    .await;
    let patches = w.server.catalog().patches();
    let en = patches.iter().find(|p| p.id == "33").unwrap();
    let cn = patches.iter().find(|p| p.id == "23").unwrap();
    w.server.replay_patch(en, cn);
    refused(
        &w,
        16,
        &[("23", "2"), ("25", "3")],
        "update 23 is refused: the signed metadata is for language `EN`, not `CN`",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_robot_models_signed_patch_is_refused() {
    // The server's patches are signed for model 2; this robot is model 1.
    let w = signed_edited(|_, catalog| {
        catalog.replace(
            "language = \"CN\"",
            "language = \"CN\"\nrobot_version = \"2\"",
        )
    })
    .await;
    refused(
        &w,
        16,
        &[("23", "2"), ("25", "3")],
        "update 23 is refused: the signed metadata is for robot model `2`, not `1`",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_1_metadata_counts_only_while_signatures_are_not_required() {
    use wiremock::matchers::path;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let old = b"version 16 of the services, with some text to patch".to_vec();
    let new = b"version 17 of the services, with other text to patch!".to_vec();
    let mut patch = Vec::new();
    qbsdiff::Bsdiff::new(&old, &new)
        .compare(std::io::Cursor::new(&mut patch))
        .unwrap();
    let key = ota_signing::SecretKey::generate().unwrap();
    let expected = ota_signing::Expected {
        package: crate::helpers::PACKAGE,
        file_name: crate::helpers::FILE_NAME,
        language: "CN",
        robot_version: "1",
        from_version: 16,
        to_version: 17,
    };
    // What a vendor's older pipeline signed: no language, no robot model.
    let mut meta = ota_signing::Metadata::describe(&expected, &old, &patch, &new);
    (
        meta.format,
        meta.language,
        meta.robot_version,
        meta.from_sha256,
    ) = (1, None, None, None);
    let (json, sig) = meta.sign(&key);
    for require in [true, false] {
        let server = MockServer::start().await;
        crate::helpers::mount_token(&server).await;
        let url = format!("{}/v/A-1--17--service5mic.patch", server.uri());
        Mock::given(path("/file/download"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"code":"100","data": url,"id":"23"})),
            )
            .mount(&server)
            .await;
        for (p, body) in [
            ("/v/A-1--17--service5mic.patch", patch.clone()),
            ("/v/A-1--17--service5mic.patch.meta.json", json.clone()),
            (
                "/v/A-1--17--service5mic.patch.meta.json.sig",
                sig.clone().into_bytes(),
            ),
        ] {
            Mock::given(path(p))
                .respond_with(
                    ResponseTemplate::new(200).set_body_raw(body, "application/octet-stream"),
                )
                .mount(&server)
                .await;
        }
        Mock::given(path("/file/callback"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(serde_json::json!({"code":"100"})),
            )
            .mount(&server)
            .await;
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("robot")).unwrap();
        std::fs::write(crate::helpers::managed_path(tmp.path()), &old).unwrap();
        let config = crate::helpers::write_config(tmp.path(), &server.uri(), "", "");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "\n[security]\npublic_keys = [\"{}\"]\nrequire_signatures = {require}\n",
            key.public().to_text()
        ));
        std::fs::write(&config, text).unwrap();
        let out = crate::helpers::agent(&config, &["check"]).await;
        let installed = std::fs::read(crate::helpers::managed_path(tmp.path())).unwrap();
        if require {
            assert!(
                stderr(&out).contains(
                    "format 1, which names no language or robot model, and signatures are required"
                ),
                "{}",
                stderr(&out)
            );
            assert_eq!(installed, old);
        } else {
            assert!(
                stderr(&out).contains("accepted since signatures are not required"),
                "{}",
                stderr(&out)
            );
            assert_eq!(installed, new);
        }
    }
}

/// The statement URL template for a world's server.
fn statement_url(w: &World) -> String {
    format!(
        "statement_url = \"{}/version/{{package}}/{{language}}/{{file_name}}--{{robot_version}}.latest.json\"",
        w.server.uri()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_answer_is_refused_when_the_vendor_states_a_newer_version() {
    let w = World::serving(SIGNED, "", "").await;
    w.secure(&format!(
        "public_keys = [\"{}\"]\nrequire_signatures = true\n{}",
        w.vendor_key(),
        statement_url(&w)
    ));
    // A man in the middle answers "up to date" for version 16; the vendor says 18 is out.
    let frozen = "{\"code\":\"100\",\"data\":\"\",\"id\":\"\"}";
    w.server
        .inject(Fault::status(Endpoint::Download, 200, frozen).times(2));
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the server says version 16 is up to date, but the vendor's signed statement names version 18 as the newest"),
        "{}",
        stderr(&out)
    );
    assert!(w.callbacks().is_empty());
    let status = w.status().await;
    assert_eq!(status["packages"][0]["last_check"]["ok"], false);
    // Once the answer is honest, the update goes through, and "up to date" at 18 is believed.
    w.server.clear_faults();
    assert!(w.agent(&["check"]).await.status.success());
    assert_eq!(w.installed(), w.version(18));
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "1")]));
    let out = w.agent(&["check"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_or_replayed_statement_cannot_vouch_for_up_to_date() {
    use wiremock::matchers::path;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let key = ota_signing::SecretKey::generate().unwrap();
    let target = ota_signing::Target {
        package: crate::helpers::PACKAGE,
        file_name: crate::helpers::FILE_NAME,
        language: "CN",
        robot_version: "1",
    };
    let now = ota_agent::unix_now();
    let statement_path = "/s/latest.json";
    let robot = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(robot.path().join("robot")).unwrap();
    std::fs::write(crate::helpers::managed_path(robot.path()), b"version 16").unwrap();
    // Each round: a statement (latest 16, so "up to date" is true), and what the log must say.
    let rounds = [
        (
            ota_signing::Statement::new(&target, 16, now - 100, 86_400),
            None,
        ),
        (
            ota_signing::Statement::new(&target, 16, now - 200, 86_400),
            Some("before the one seen already"),
        ),
        (
            ota_signing::Statement::new(&target, 16, now - 50, 10),
            Some("expired at"),
        ),
    ];
    let mut previous = None;
    for (statement, refusal) in rounds {
        let server = MockServer::start().await;
        crate::helpers::mount_token(&server).await;
        Mock::given(path("/file/download"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(serde_json::json!({"code":"100","data":"","id":""})),
            )
            .mount(&server)
            .await;
        let (json, sig) = statement.sign(&key);
        Mock::given(path(statement_path))
            .respond_with(ResponseTemplate::new(200).set_body_raw(json, "application/json"))
            .mount(&server)
            .await;
        Mock::given(path(format!("{statement_path}.sig")))
            .respond_with(ResponseTemplate::new(200).set_body_raw(sig, "text/plain"))
            .mount(&server)
            .await;
        let config = crate::helpers::write_config(robot.path(), &server.uri(), "", "");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "\n[security]\npublic_keys = [\"{}\"]\nstatement_url = \"{}{statement_path}\"\n",
            key.public().to_text(),
            server.uri()
        ));
        std::fs::write(&config, text).unwrap();
        let out = crate::helpers::agent(&config, &["check"]).await;
        match refusal {
            None => assert!(out.status.success(), "{}", stderr(&out)),
            Some(says) => {
                assert!(!out.status.success());
                assert!(stderr(&out).contains(says), "{}", stderr(&out));
                assert!(
                    stderr(&out).contains("cannot confirm it"),
                    "{}",
                    stderr(&out)
                );
            }
        }
        previous = Some(server);
    }
    drop(previous);
}

/// The system's CA store emptied for the agent: `SSL_CERT_FILE` and `SSL_CERT_DIR`, which the
/// system trust roots are read from, name an empty file and an empty directory (as on a minimal
/// Debian board without the ca-certificates package).
fn no_system_roots(w: &World) -> [(&'static str, std::path::PathBuf); 2] {
    let file = w.dir().join("no-certs.pem");
    std::fs::write(&file, "").unwrap();
    let dir = w.dir().join("no-certs");
    std::fs::create_dir_all(&dir).unwrap();
    [("SSL_CERT_FILE", file), ("SSL_CERT_DIR", dir)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_robot_without_ca_certificates_still_updates_over_http() {
    // Found on the emulated board (scripts/robot-vm.sh): the agent would not even start there.
    let w = signed_world("").await;
    let env = no_system_roots(&w);
    let env: Vec<(&str, &std::path::Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
    let out = agent_with_env(&w.config, &["check"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(w.installed(), w.version(18));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_without_any_ca_certificate_fails_naming_the_missing_roots() {
    let w = World::serving(TLS, "", "").await;
    w.secure(&format!(
        "public_keys = [\"{}\"]\nrequire_signatures = true",
        w.vendor_key()
    ));
    let env = no_system_roots(&w);
    let env: Vec<(&str, &std::path::Path)> = env.iter().map(|(k, v)| (*k, v.as_path())).collect();
    let out = agent_with_env(&w.config, &["check"], &env).await;
    assert!(!out.status.success());
    assert_eq!(w.installed(), w.version(16));
    assert!(w.server.requests().is_empty(), "no request got through");
    let err = stderr(&out);
    assert!(
        err.contains("no trusted CA certificate") && err.contains("security.ca_file"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_text_reaches_no_output_raw() {
    // A 503 whose body forges lines and hides what follows: it reached `status` and the `check`
    // summary as it was (the log line was escaped, the other exits were not).
    let w = World::new("").await;
    let forged = "busy\n  version:    18 (sha256 0000)\n  update:     none\n\u{1b}[8m";
    // Once as a page of text, once in Spring's OAuth2 error shape.
    w.server
        .inject(Fault::status(Endpoint::Download, 503, forged).times(1));
    let oauth = serde_json::json!({ "error": "unavailable", "error_description": forged });
    w.server
        .inject(Fault::status(Endpoint::Download, 503, &oauth.to_string()).times(1));
    for _ in 0..2 {
        let check = w.agent(&["check"]).await;
        let status = w.agent(&["status"]).await;
        for (exit, bytes) in [
            ("the check summary", &check.stdout),
            ("the check's log", &check.stderr),
            ("status", &status.stdout),
        ] {
            let text = String::from_utf8_lossy(bytes);
            assert!(!text.contains('\u{1b}'), "{exit} holds an escape: {text}");
            assert!(
                !text.lines().any(|l| l.starts_with("  version:    18")),
                "{exit} holds a forged line: {text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_text_reaches_no_output_raw() {
    // A hook's output went straight to the agent's stdout and stderr: an escape sequence
    // reached the terminal, and a `<0>` line would be read by journald as an emergency.
    let hook = r"printf 'hook says \033[31mRED\033[0m\n<0>forged emergency line\n'";
    let w = World::new(&format!("post_install = '''{hook}'''")).await;
    let out = w.agent(&["check"]).await;
    assert!(w.installed() == w.version(18), "{}", stderr(&out));
    for (exit, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains('\u{1b}'), "{exit} holds an escape: {text}");
        assert!(
            !text.lines().any(|l| l.starts_with("<0>")),
            "{exit} holds a forged line: {text}"
        );
    }
    assert!(
        stderr(&out).contains("post_install hook: hook says"),
        "{}",
        stderr(&out)
    );
}
