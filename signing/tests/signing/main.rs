//! The `ota-sign` command line, run as a vendor's release pipeline would.

use std::path::Path;
use std::process::{Command, Output};

fn ota_sign(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ota-sign"))
        .args(args)
        .output()
        .unwrap();
    eprintln!(
        "ota-sign {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Old and new "firmware" and the bsdiff patch between them.
fn release(dir: &Path) {
    let old: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut new = old.clone();
    new[1000..1100].fill(0x42);
    new.extend_from_slice(b"version 18");
    std::fs::write(dir.join("old"), &old).unwrap();
    std::fs::write(dir.join("new"), &new).unwrap();
    let mut patch = Vec::new();
    qbsdiff::Bsdiff::new(&old, &new)
        .compare(std::io::Cursor::new(&mut patch))
        .unwrap();
    std::fs::write(dir.join("A-1.2--18--fw.patch"), &patch).unwrap();
}

fn identity(from: &str, to: &str) -> Vec<String> {
    [
        "--package",
        "com.example",
        "--file-name",
        "fw",
        "--language",
        "CN",
        "--robot-version",
        "1",
        "--from-version",
        from,
        "--to-version",
        to,
    ]
    .map(String::from)
    .to_vec()
}

fn sign_args(dir: &Path, key: &str, from: &str, new: &str) -> Vec<String> {
    let mut args = vec!["sign".to_owned(), "--key".into(), key.into()];
    args.extend(identity(from, "18"));
    args.extend(
        [
            "--old",
            s(&dir.join("old")),
            "--new",
            s(&dir.join(new)),
            s(&dir.join("A-1.2--18--fw.patch")),
        ]
        .map(String::from),
    );
    args
}

fn run(args: &[String]) -> Output {
    ota_sign(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn keygen_sign_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    release(dir);
    let prefix = dir.join("vendor");
    assert!(ota_sign(&["keygen", "--out", s(&prefix)]).status.success());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("vendor.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the secret key is private");
    // A second keygen must not overwrite the key that signed the fleet's releases.
    let before = std::fs::read(dir.join("vendor.key")).unwrap();
    assert!(!ota_sign(&["keygen", "--out", s(&prefix)]).status.success());
    assert_eq!(std::fs::read(dir.join("vendor.key")).unwrap(), before);

    let key = dir.join("vendor.key");
    assert!(run(&sign_args(dir, s(&key), "17", "new")).status.success());
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("A-1.2--18--fw.patch.meta.json")).unwrap())
            .unwrap();
    assert_eq!(meta["to_version"], 18);
    assert_eq!(meta["from_version"], 17);

    let public = std::fs::read_to_string(dir.join("vendor.pub")).unwrap();
    let verify = |public: &str, from: &str, to: &str| {
        let mut args = vec!["verify".to_owned(), "--public-key".into(), public.into()];
        args.extend(identity(from, to));
        args.push(s(&dir.join("A-1.2--18--fw.patch")).into());
        run(&args)
    };
    assert!(verify(public.trim(), "17", "18").status.success());
    assert!(
        verify(s(&dir.join("vendor.pub")), "17", "18")
            .status
            .success()
    );
    // A replay to another version step is refused, and so is another key.
    let out = verify(public.trim(), "16", "17");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("from-version"));
    // So is the build of another language or robot model.
    for (flag, value, says) in [
        ("--language", "EN", "language"),
        ("--robot-version", "2", "robot model"),
    ] {
        let mut args = vec![
            "verify".to_owned(),
            "--public-key".into(),
            public.trim().into(),
        ];
        let mut id = identity("17", "18");
        let at = id.iter().position(|a| a == flag).unwrap();
        id[at + 1] = value.into();
        args.extend(id);
        args.push(s(&dir.join("A-1.2--18--fw.patch")).into());
        let out = run(&args);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        ota_sign(&["keygen", "--out", s(&dir.join("other"))])
            .status
            .success()
    );
    let out = verify(s(&dir.join("other.pub")), "17", "18");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not signed by any trusted key"));

    // A tampered patch no longer matches its signed metadata.
    let patch_path = dir.join("A-1.2--18--fw.patch");
    let mut patch = std::fs::read(&patch_path).unwrap();
    let last = patch.len() - 1;
    patch[last] ^= 0xff;
    std::fs::write(&patch_path, &patch).unwrap();
    let out = verify(public.trim(), "17", "18");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the patch its metadata describes"));
}

#[test]
fn a_patch_that_does_not_make_the_new_file_is_not_signed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    release(dir);
    assert!(
        ota_sign(&["keygen", "--out", s(&dir.join("vendor"))])
            .status
            .success()
    );
    std::fs::write(dir.join("other"), b"something else").unwrap();
    let out = run(&sign_args(dir, s(&dir.join("vendor.key")), "17", "other"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not turn"));
    assert!(!dir.join("A-1.2--18--fw.patch.meta.json").exists());
}

#[test]
fn a_statement_of_the_newest_version_is_signed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    assert!(
        ota_sign(&["keygen", "--out", s(&dir.join("vendor"))])
            .status
            .success()
    );
    let out = dir.join("service5mic--1.latest.json");
    let made = ota_sign(&[
        "statement",
        "--key",
        s(&dir.join("vendor.key")),
        "--package",
        "com.example",
        "--file-name",
        "fw",
        "--language",
        "CN",
        "--robot-version",
        "1",
        "--latest-version",
        "18",
        "--lifetime",
        "3600",
        "--out",
        s(&out),
    ]);
    assert!(made.status.success());
    let public = std::fs::read_to_string(dir.join("vendor.pub")).unwrap();
    let key = ota_signing::PublicKey::from_text(public.trim()).unwrap();
    let json = std::fs::read(&out).unwrap();
    let sig = std::fs::read(dir.join("service5mic--1.latest.json.sig")).unwrap();
    let (statement, _) = ota_signing::verify_statement(&[key], &json, &sig).unwrap();
    assert_eq!(statement.latest_version, 18);
    assert_eq!(statement.expires_unix - statement.issued_unix, 3600);
    statement
        .check(&ota_signing::Target {
            package: "com.example",
            file_name: "fw",
            language: "CN",
            robot_version: "1",
        })
        .unwrap();
}
