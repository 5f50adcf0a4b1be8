//! Knowing which version is patched: the file's own record, a pin, the vendor's signed bases,
//! one owner per file, no symbolic link, a state from a newer agent, and `ota-agent adopt`.
//! A bsdiff patch applied to the wrong file still makes a file of the right size, so each of
//! these would otherwise end in a broken file reported as success.

use std::path::PathBuf;

use ota_mock_server::{Endpoint, Fault};

use crate::helpers::{Serve, World, managed_path, pairs, patch_gets, stderr, stdout};

fn state_dir(w: &World) -> PathBuf {
    w.dir().join("state")
}

/// The robot updated from 16 to 18, with the results sent.
async fn updated_to_18(w: &World) {
    let out = w.agent(&["check"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(w.installed(), w.version(18));
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "1")]));
}

/// The managed file with the same bytes but no record: a copy, as another tool would make it.
fn strip_record(w: &World) {
    let bytes = w.installed();
    std::fs::remove_file(managed_path(w.dir())).unwrap();
    std::fs::write(managed_path(w.dir()), bytes).unwrap();
}

fn sha256_hex(bytes: &[u8]) -> String {
    ota_signing::metadata::hex_sha256(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_state_is_rebuilt_from_the_files_own_record() {
    let w = World::new("").await;
    updated_to_18(&w).await;
    std::fs::remove_dir_all(state_dir(&w)).unwrap();
    let out = w.agent(&["check"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    // Before the record, the config's 16 was taken and both patches went onto version 18.
    assert_eq!(w.installed(), w.version(18), "the file is still version 18");
    assert_eq!(w.callbacks().len(), 2, "nothing was offered again");
    assert!(
        stdout(&out).contains("up to date at version 18"),
        "{}",
        stdout(&out)
    );
    let status = w.status().await;
    assert_eq!(status["packages"][0]["version"], "18");
    assert_eq!(status["packages"][0]["version_source"], "record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_and_copy_fall_back_to_the_records_not_the_config() {
    let w = World::new("").await;
    updated_to_18(&w).await;
    for file in ["state.json", "state.json.prev"] {
        std::fs::write(state_dir(&w).join(file), b"{\"format\": 1, \"packages\": 7").unwrap();
    }
    let out = w.agent(&["check"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(w.installed(), w.version(18));
    assert_eq!(w.callbacks().len(), 2);
    assert!(
        stderr(&out).contains("starting from what the managed files themselves record"),
        "{}",
        stderr(&out)
    );

    // The same loss with a file that carries no record: nothing can tell its version, and the
    // config's 16 is no knowledge after a lost state. It is not patched, nor checked.
    strip_record(&w);
    for file in ["state.json", "state.json.prev"] {
        std::fs::write(state_dir(&w).join(file), b"garbage").unwrap();
    }
    let gets = patch_gets(&w);
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert!(stdout(&out).contains("not checked"), "{}", stdout(&out));
    assert_eq!(w.installed(), w.version(18));
    assert_eq!(patch_gets(&w), gets, "no patch was fetched");
    assert_eq!(w.callbacks().len(), 2);
    let status = w.status().await;
    let unidentified = status["packages"][0]["unidentified"].as_str().unwrap();
    assert!(unidentified.contains("state was lost"), "{unidentified}");
    assert!(unidentified.contains("ota-agent adopt"), "{unidentified}");

    // `adopt` says which version it is, and the agent goes on from there.
    let key = format!("{}/{}", crate::helpers::PACKAGE, crate::helpers::FILE_NAME);
    let out = w.agent(&["adopt", &key, "18"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let status = w.status().await;
    assert_eq!(status["packages"][0]["version"], "18");
    assert_eq!(status["packages"][0]["version_source"], "adopted");
    assert!(status["packages"][0]["unidentified"].is_null());
    let out = w.agent(&["check"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(w.callbacks().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_of_a_newer_format_is_left_alone_and_stops_the_agent() {
    let w = World::new("").await;
    updated_to_18(&w).await;
    let path = state_dir(&w).join("state.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let newer = text.replacen("\"format\": 1", "\"format\": 9", 1);
    assert_ne!(newer, text);
    std::fs::write(&path, &newer).unwrap();
    let out = w.agent(&["check"]).await;
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("has format 9, newer than"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), newer, "untouched");
    let aside = std::fs::read_dir(state_dir(&w))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("corrupt")
        })
        .count();
    assert_eq!(aside, 0, "nothing was moved aside");
    assert_eq!(w.installed(), w.version(18));
    assert_eq!(w.callbacks().len(), 2);
    let status = w.agent(&["status"]).await;
    assert_eq!(status.status.code(), Some(65));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_packages_naming_one_file_are_refused_with_both_lines() {
    let w = World::new("").await;
    let second = format!(
        "\n[[package]]\nname = \"com.ubtechinc.other\"\nfile_name = \"other\"\npath = \"{}\"\nversion = \"16\"\n",
        managed_path(w.dir()).display()
    );
    let mut text = std::fs::read_to_string(&w.config).unwrap();
    text.push_str(&second);
    std::fs::write(&w.config, &text).unwrap();
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("[[package]]"))
        .map(|(n, _)| n + 1)
        .collect();
    let message = stderr(&out);
    assert!(
        message.contains(&format!("at line {}", lines[0]))
            && message.contains(&format!("at line {}", lines[1]))
            && message.contains("name one file"),
        "{message}"
    );
    assert_eq!(w.installed(), w.version(16));
    assert!(w.server.requests().is_empty(), "nothing was asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_links_and_linked_directories_are_one_file() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::write(real.join("a.bin"), b"x").unwrap();
    std::fs::hard_link(real.join("a.bin"), real.join("b.bin")).unwrap();
    std::os::unix::fs::symlink(&real, tmp.path().join("linked")).unwrap();
    for (first, second, how) in [
        ("real/a.bin", "real/b.bin", "hard links"),
        (
            "real/a.bin",
            "linked/a.bin",
            "one path through a symbolic link",
        ),
        (
            "real/new.bin",
            "linked/new.bin",
            "one path through a symbolic link",
        ),
    ] {
        let config = crate::helpers::write_config(tmp.path(), "http://127.0.0.1:9", "", "");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text = text.replace(
            &managed_path(tmp.path()).display().to_string(),
            &tmp.path().join(first).display().to_string(),
        );
        text.push_str(&format!(
            "\n[[package]]\nname = \"b\"\nfile_name = \"b\"\npath = \"{}\"\nversion = \"1\"\n",
            tmp.path().join(second).display()
        ));
        std::fs::write(&config, text).unwrap();
        let e = ota_agent::config::Config::load(&config)
            .unwrap_err()
            .to_string();
        assert!(e.contains(how), "{first} and {second}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_managed_path_is_refused_at_start() {
    let w = World::new("").await;
    let target = w.dir().join("robot").join("versions-16.apk");
    std::fs::rename(managed_path(w.dir()), &target).unwrap();
    std::os::unix::fs::symlink(&target, managed_path(w.dir())).unwrap();
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    assert!(
        std::fs::symlink_metadata(managed_path(w.dir()))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link is kept"
    );
    assert_eq!(std::fs::read(&target).unwrap(), w.version(16));
    assert!(w.server.requests().is_empty());
}

/// A robot flashed with version 18, whose config (fleet-wide, or the package's example) says 16.
async fn flashed_with_18(serve: Serve, catalog_extra: &'static str) -> World {
    let w = World::edited(
        serve,
        |_, text| text.replacen("[server]\n", &format!("[server]\n{catalog_extra}"), 1),
        "",
        "",
    )
    .await;
    std::fs::write(managed_path(w.dir()), w.version(18)).unwrap();
    w
}

/// [`flashed_with_18`] with signed metadata, which the robot requires.
async fn signed_and_flashed_with_18(catalog_extra: &'static str) -> World {
    let signed = Serve {
        signed: true,
        ..Serve::default()
    };
    let w = flashed_with_18(signed, catalog_extra).await;
    w.secure(&format!(
        "public_keys = [\"{}\"]\nrequire_signatures = true",
        w.vendor_key()
    ));
    w
}

/// Pins the config's version 16 to its sha256, as a fleet's config would; returns the pin.
fn pin_16(w: &World) -> String {
    let pin = sha256_hex(&w.version(16));
    w.edit_config(
        "version = \"16\"",
        &format!("version = \"16\"\nversion_sha256 = \"{pin}\""),
    );
    pin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_behind_the_file_is_refused_by_its_pin() {
    let w = flashed_with_18(Serve::default(), "").await;
    let pin = pin_16(&w);
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert_eq!(w.installed(), w.version(18), "never patched");
    assert_eq!(patch_gets(&w), 0);
    assert!(w.callbacks().is_empty());
    let status = w.status().await;
    let reason = status["packages"][0]["unidentified"].as_str().unwrap();
    assert!(
        reason.contains(&sha256_hex(&w.version(18))) && reason.contains(&pin),
        "both hashes: {reason}"
    );
    assert!(reason.contains("ota-agent adopt"), "how to fix: {reason}");
    // The text status says so too, on one line.
    let text = stdout(&w.agent(&["status"]).await);
    assert!(text.contains("version:    unidentified:"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_pin_verifies_the_configured_version() {
    let w = World::new("").await;
    pin_16(&w);
    updated_to_18(&w).await;
    assert_eq!(
        w.status().await["packages"][0]["version_source"],
        "installed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_format_3_keys_a_config_behind_the_file_is_identified_before_any_download() {
    let w = signed_and_flashed_with_18("").await;
    let out = w.agent(&["check"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(w.installed(), w.version(18));
    assert_eq!(
        patch_gets(&w),
        0,
        "the signed base said so before any download"
    );
    // Both versions are installed: the server hears so, and the file is version 18 from now on.
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "1")]));
    let status = w.status().await;
    assert_eq!(status["packages"][0]["version"], "18");
    assert_eq!(status["packages"][0]["version_source"], "signed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_format_2_keys_a_wrong_base_is_no_final_failure() {
    let w = signed_and_flashed_with_18("metadata_format = 2\n").await;
    let out = w.agent(&["check"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(w.installed(), w.version(18));
    // Before: 23 got a final 2 (its result was not the signed one) and was never tried again.
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "1")]));
    assert_eq!(w.status().await["packages"][0]["version_source"], "signed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_no_signature_names_is_held_not_failed() {
    let w = World::serving(
        Serve {
            signed: true,
            ..Serve::default()
        },
        "",
        "",
    )
    .await;
    w.secure(&format!("public_keys = [\"{}\"]", w.vendor_key()));
    std::fs::write(managed_path(w.dir()), b"a file of another origin").unwrap();
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert_eq!(w.installed(), b"a file of another origin");
    assert_eq!(w.callbacks(), pairs(&[("23", "3"), ("25", "3")]));
    let status = w.status().await;
    assert!(
        status["packages"][0]["unidentified"]
            .as_str()
            .unwrap()
            .contains("none of the versions the vendor signed"),
        "{status}"
    );
    // Held: the next check does not ask the server again.
    let asked = w.server.requests().len();
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert_eq!(w.server.requests().len(), asked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_gets_not_updated_yet_and_is_found_again_by_its_sha256() {
    let w = World::new("").await;
    w.server.inject(Fault::status(
        Endpoint::Download,
        200,
        r#"{"code":"100","data":"","id":""}"#,
    ));
    assert!(w.agent(&["check"]).await.status.success());
    let original = w.installed();
    std::fs::write(managed_path(w.dir()), b"changed by hand").unwrap();
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert_eq!(w.installed(), b"changed by hand");
    assert_eq!(w.callbacks(), pairs(&[("23", "3"), ("25", "3")]));
    // Put back, the file is the version the agent recorded, and it updates.
    std::fs::write(managed_path(w.dir()), &original).unwrap();
    let out = w.agent(&["check"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(w.installed(), w.version(18));
    assert_eq!(
        w.callbacks(),
        pairs(&[("23", "3"), ("25", "3"), ("23", "1"), ("25", "1")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_of_an_unidentified_file() {
    use crate::daemon::{listen_as_systemd, signal, spawn_with, stderr_of, until};
    let w = flashed_with_18(Serve::default(), "").await;
    pin_16(&w);
    let (path, heard) = listen_as_systemd(&w);
    let child = spawn_with(&w, &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    until("the idle status line", || {
        heard
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("idle; next check at") && m.contains("1 file(s) unidentified"))
    })
    .await;
    signal(&child, rustix::process::Signal::TERM);
    let (status, _) = stderr_of(child).await;
    assert!(status.success());
    assert_eq!(w.installed(), w.version(18));
    assert_eq!(patch_gets(&w), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_missing_at_first_sight_is_first_seen_once_it_is_there() {
    let w = World::new("").await;
    let bytes = w.installed();
    std::fs::remove_file(managed_path(w.dir())).unwrap();
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert!(
        w.status().await["packages"][0]["unidentified"]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );
    std::fs::write(managed_path(w.dir()), bytes).unwrap();
    updated_to_18(&w).await;
}
