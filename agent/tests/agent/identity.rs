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
    let newer = text.replacen("\"format\":1", "\"format\":9", 1);
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
    let aside = moved_aside(&w);
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

/// How many state files were moved aside as corrupt.
fn moved_aside(w: &World) -> usize {
    std::fs::read_dir(state_dir(w))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("corrupt")
        })
        .count()
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
    let w = signed_keys_not_required().await;
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

// The cases below were found by a review of this module's change as an adversary: each failed
// before its fix.

const KEY: &str = "com.ubtechinc.alpha2services/service5mic";

/// Puts a version record on `path` as the agent writes it, for `package` of this robot.
fn set_record(path: &std::path::Path, package: &str, version: &str, sha256: &str) {
    let value = serde_json::json!({
        "package": package, "language": "CN", "robot_version": "1",
        "version": version, "sha256": sha256,
    })
    .to_string();
    rustix::fs::setxattr(
        path,
        "user.ota-agent.version",
        value.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

fn outbox(w: &World) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(state_dir(w).join("state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    state["outbox"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_owned(),
                c["code"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Review: A record whose sha256 is the file's but whose version is no version code (here one
/// past u64) is taken as the file's version: the check sends it, the server answers 102, and the
/// agent says "up to date" with exit 0 while the file is 16 and 17 and 18 exist. Silently stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_naming_no_version_code_is_not_taken() {
    let w = World::new("").await;
    let path = managed_path(w.dir());
    set_record(
        &path,
        KEY,
        "99999999999999999999",
        &sha256_hex(&w.installed()),
    );
    let out = w.agent(&["check"]).await;
    assert!(
        !stdout(&out).contains("up to date at version 99999999999999999999"),
        "a version that is no version code was believed: {}",
        stdout(&out)
    );
    assert!(w.installed() == w.version(18), "the robot never updates");
}

/// Review: The same record after the file was replaced behind the agent's back: the agent saves
/// the bogus version, its own load then finds the state file (and its copy) "inconsistent", moves
/// it aside and starts from nothing: the results still queued in the outbox are lost for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_naming_no_version_code_costs_no_queued_result() {
    let w = World::new("").await;
    // The update goes through, but the server does not take results for now.
    w.server
        .inject(Fault::status(Endpoint::Callback, 500, "{}").times(1000));
    let _ = w.agent(&["check"]).await;
    assert_eq!(w.installed(), w.version(18));
    assert_eq!(outbox(&w), [("23".into(), 1), ("25".into(), 1)]);

    // The file is replaced by version 17 carrying a record that lies about its version.
    let path = managed_path(w.dir());
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, w.version(17)).unwrap();
    set_record(
        &path,
        KEY,
        "99999999999999999999",
        &sha256_hex(&w.version(17)),
    );
    // A newer version is offered: the agent notices the file changed and identifies it anew.
    let url = format!(
        "{}/version/x/CN/Alpha2Services-1.1.3.32--19--service5mic.patch",
        w.server.uri()
    );
    w.server.inject(Fault::status(
        Endpoint::Download,
        200,
        &format!(r#"{{"code":"100","data":"{url}","id":"27"}}"#),
    ));
    let out = w.agent(&["check"]).await;
    eprintln!("{}", stdout(&out));

    // The server is back: every queued result must reach it.
    w.server.clear_faults();
    let _ = w.agent(&["check"]).await;
    let _ = w.agent(&["check"]).await;
    let corrupt = moved_aside(&w);
    let got = w.callbacks();
    assert!(
        got.contains(&("23".into(), "1".into())) && got.contains(&("25".into(), "1".into())),
        "results 23:1 and 25:1 were lost (state files moved aside: {corrupt}); the server got {got:?}"
    );
}

/// Review: After a lost state, `ota-agent adopt` for one package saves a state that no longer says
/// it was lost: every other package is then first seen with the config's version as if nothing
/// had happened, and a file the agent had moved on is patched from the wrong base.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopting_one_package_after_a_lost_state_keeps_the_loss_for_the_others() {
    let w = World::new("").await;
    let other = w.dir().join("robot").join("other.bin");
    std::fs::write(&other, b"the other package's file").unwrap();
    let mut text = std::fs::read_to_string(&w.config).unwrap();
    text.push_str(&format!(
        "\n[[package]]\nname = \"com.example.other\"\nfile_name = \"other\"\npath = \"{}\"\nversion = \"1\"\n",
        other.display()
    ));
    std::fs::write(&w.config, text).unwrap();
    // The agent moves the demo file from 16 to 18 (on a file system without xattrs: no record).
    let out = w.agent(&["check"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(w.installed(), w.version(18));
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "1")]));
    strip_record(&w);
    // The state is lost.
    for file in ["state.json", "state.json.prev"] {
        std::fs::write(state_dir(&w).join(file), b"garbage").unwrap();
    }
    // The operator adopts the *other* package's file.
    let out = w.agent(&["adopt", "com.example.other/other", "1"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    // The demo file is still the one the agent lost track of: 18, with config 16.
    let out = w.agent(&["check"]).await;
    eprintln!("{}", stdout(&out));
    assert!(
        w.installed() == w.version(18),
        "the agent patched version 18 with the patches for 16 (callbacks {:?})",
        w.callbacks()
    );
    assert_eq!(
        w.callbacks(),
        pairs(&[("23", "1"), ("25", "1")]),
        "results were sent for patches applied to the wrong base"
    );
}

/// Review: A record the vendor's signatures disproved (here one an operator wrote with `adopt` and
/// a wrong version) identifies the file again at the next check: the unidentified file is
/// checked, its metadata fetched and its ids reported `3` again at every cycle, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_signatures_disproved_stays_disproved() {
    let w = World::serving(
        Serve {
            signed: true,
            ..Serve::default()
        },
        "",
        "",
    )
    .await;
    w.secure(&format!(
        "public_keys = [\"{}\"]\nrequire_signatures = true",
        w.vendor_key()
    ));
    std::fs::write(managed_path(w.dir()), b"a file of another origin").unwrap();
    let out = w.agent(&["adopt", KEY, "16"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert_eq!(w.callbacks(), pairs(&[("23", "3"), ("25", "3")]));
    assert!(
        w.status().await["packages"][0]["unidentified"]
            .as_str()
            .unwrap()
            .contains("none of the versions the vendor signed")
    );
    // Held: the next checks must not ask the server again (as for a file without a record).
    let asked = w.server.requests().len();
    for _ in 0..3 {
        let _ = w.agent(&["check"]).await;
    }
    assert_eq!(
        w.server.requests().len(),
        asked,
        "the unidentified file was checked again; callbacks now: {:?}",
        w.callbacks()
    );
}

/// A signed catalog, and the vendor's key configured without requiring signatures.
async fn signed_keys_not_required() -> World {
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
    w
}

/// Signed metadata of format 2 (no base named), signatures required.
async fn signed_format_2() -> World {
    let w = World::edited(
        Serve {
            signed: true,
            ..Serve::default()
        },
        |_, text| text.replacen("[server]\n", "[server]\nmetadata_format = 2\n", 1),
        "",
        "",
    )
    .await;
    w.secure(&format!(
        "public_keys = [\"{}\"]\nrequire_signatures = true",
        w.vendor_key()
    ));
    w
}

/// Another build of 16 (same length, other bytes) in place of the managed file, with the record
/// another robot's agent (another package) wrote on it.
fn plant_another_robots_16(w: &World) {
    let mut other_build = w.version(16);
    for b in other_build.iter_mut().step_by(97) {
        *b ^= 0x5a;
    }
    let path = managed_path(w.dir());
    std::fs::write(&path, &other_build).unwrap();
    set_record(
        &path,
        "com.ubtechinc.alpha2services/service6mic",
        "16",
        &sha256_hex(&other_build),
    );
}

/// Review: The record binds no package, file, language or robot model: a file copied from another
/// robot (another language's build of version 16, with the record that robot's agent wrote) is
/// "known" as 16, so with format-2 signatures a good patch that cannot apply to it gets a final
/// `2` and is never tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_copied_from_another_robot_gets_no_final_2() {
    let w = signed_format_2().await;
    plant_another_robots_16(&w);
    let _ = w.agent(&["check"]).await;
    assert!(
        !w.callbacks().iter().any(|(_, code)| code == "2"),
        "a good, vendor-signed patch got a final 2 on a base that was not its own: {:?}",
        w.callbacks()
    );
}

/// Review: The same copied file without keys: the copied record was taken as the agent's own
/// knowledge, so the chain applied to the wrong bytes and both ids were reported `1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_copied_from_another_robot_is_not_taken() {
    // Without keys or a pin, such a file is the documented gap: the config's word, unverified,
    // and `status` says so. What the review found was worse: the copied record was taken as
    // the agent's own knowledge.
    let w = World::new("").await;
    plant_another_robots_16(&w);
    let out = w.agent(&["check"]).await;
    assert!(
        stderr(&out).contains("as version 16 (sha256") && stderr(&out).contains("unverified"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_agents_first_sight_guess_stays_unverified() {
    let w = signed_format_2().await;
    // Flashed with 18, config says 16; the previous agent's first sight recorded 16 and this
    // sha256 (its check.rs: `sha256 = sha256_file(path)`, version from the config).
    std::fs::write(managed_path(w.dir()), w.version(18)).unwrap();
    std::fs::create_dir_all(state_dir(&w)).unwrap();
    let old = serde_json::json!({
        "format": 1,
        "packages": { KEY: {
            "version": "16",
            "sha256": sha256_hex(&w.version(18)),
            "applied": [], "update": null, "last_check": null,
        }},
        "outbox": [],
    });
    std::fs::write(state_dir(&w).join("state.json"), old.to_string()).unwrap();
    let _ = w.agent(&["check"]).await;
    assert_eq!(
        w.callbacks(),
        pairs(&[("23", "1"), ("25", "1")]),
        "a guess by the previous agent made a good patch fail for good"
    );
}

/// Review: `ota-agent adopt` takes any string of digits, also one past u64 that the agent's own
/// state check calls "not a version code": the adoption succeeds, and the next start finds its
/// own state unusable and moves it aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_refuses_a_version_that_is_no_version_code() {
    let w = World::new("").await;
    let out = w.agent(&["adopt", KEY, "99999999999999999999"]).await;
    let adopted = out.status.success();
    let out = w.agent(&["check"]).await;
    assert!(
        !adopted,
        "adopt accepted 99999999999999999999; the next start said: {}",
        stderr(&out)
            .lines()
            .find(|l| l.contains("unusable"))
            .unwrap_or("(nothing)")
    );
}

/// Review: "One file, one owner" is checked only when the config is loaded. A directory that
/// becomes a symbolic link to another package's directory while the daemon runs makes two
/// packages manage one file; the second takes the first's version record (which names no
/// package) for its own version and installs its own update over the first package's file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_linked_after_start_gives_no_file_two_owners() {
    use crate::daemon::{signal, spawn, stderr_of, until};
    let w = World::edited(
        Serve::default(),
        |_, mut text| {
            text.push_str(
                "\n[[package.file]]\nfile_name = \"service6mic\"\nlanguage = \"CN\"\n\
                 \n[[package.file.version]]\ncode = 18\nname = \"1.1.2.32\"\nfile = \"versions/18\"\n\
                 \n[[package.file.version]]\ncode = 19\nname = \"1.1.3.32\"\nid = \"37\"\nfile = \"versions/16\"\n",
            );
            text
        },
        "",
        "",
    )
    .await;
    let linked_dir = w.dir().join("robot2");
    let mut text = std::fs::read_to_string(&w.config).unwrap();
    text = text.replace("poll_interval = \"1h\"", "poll_interval = \"1s\"");
    text.push_str(&format!(
        "\n[[package]]\nname = \"com.ubtechinc.alpha2services\"\nfile_name = \"service6mic\"\npath = \"{}\"\nversion = \"17\"\nversion_sha256 = \"{}\"\n",
        linked_dir.join("Alpha2Services.apk").display(),
        // A pin that the file does not match: without the other package's record, the file
        // would be held as unidentified.
        sha256_hex(b"service6mic version 17")
    ));
    std::fs::write(&w.config, text).unwrap();
    let child = spawn(&w);
    until("the first package's update", || w.callbacks().len() == 2).await;
    assert!(w.installed() == w.version(18));
    // While the daemon runs, robot2 becomes a link to robot (a remount, a package's postinst).
    std::os::unix::fs::symlink(w.dir().join("robot"), &linked_dir).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
    while std::time::Instant::now() < deadline && w.callbacks().len() == 2 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    signal(&child, rustix::process::Signal::TERM);
    let (_, log) = stderr_of(child).await;
    let took = log
        .lines()
        .find(|l| l.contains("service6mic: now managing"))
        .unwrap_or("(not seen)")
        .to_owned();
    assert!(
        w.installed() == w.version(18) && w.callbacks().len() == 2,
        "the first package's file was replaced by the second package's update (is 16's bytes: {}); callbacks {:?}; {took}",
        w.installed() == w.version(16),
        w.callbacks()
    );
}

/// Review: Keys configured, signatures not required, the first patch's metadata missing (404): the
/// unsigned first patch is applied to a file whose version is only the config's word (flashed
/// with 18, config 16), its result is "checked" by nothing, and the good, vendor-signed second
/// patch then fails on it with a final `2` while a file that is no version is installed and
/// reported `1` as version 17.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_first_patch_on_a_guessed_base_fails_no_good_signed_patch() {
    let w = signed_keys_not_required().await;
    std::fs::write(managed_path(w.dir()), w.version(18)).unwrap();
    w.server.inject(
        Fault::status(Endpoint::Metadata, 404, "")
            .path_contains("--17--")
            .times(10),
    );
    let _ = w.agent(&["check"]).await;
    let installed = w.installed();
    assert!(
        !w.callbacks().iter().any(|(_, c)| c == "2"),
        "callbacks {:?}; installed is 17: {}, is 18: {}",
        w.callbacks(),
        installed == w.version(17),
        installed == w.version(18)
    );
}

/// Review: A newer agent's state whose format number does not fit in a u32 is not
/// recognised as newer: it is called corrupt and moved aside, and the agent goes on (exit 0)
/// instead of leaving it alone and exiting 65.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_format_beyond_u32_is_left_alone_too() {
    let w = World::new("").await;
    assert!(w.agent(&["check"]).await.status.success());
    let path = state_dir(&w).join("state.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let newer = text.replacen("\"format\":1", "\"format\":4294967296", 1);
    std::fs::write(&path, &newer).unwrap();
    let out = w.agent(&["check"]).await;
    assert_eq!(
        out.status.code(),
        Some(65),
        "{}",
        stderr(&out)
            .lines()
            .find(|l| l.contains("unusable"))
            .unwrap_or("")
    );
}
