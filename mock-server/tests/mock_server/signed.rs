//! Signed metadata next to each patch: what is served, that it verifies, the catalog's key, and
//! the faults that play a missing, wrong or replayed signature.

use std::path::Path;

use ota_mock_server::{Catalog, Endpoint, Fault, FaultKind, MockServer, PatchInfo, demo};
use ota_signing::metadata::hex_sha256;
use ota_signing::{Expected, PublicKey, VerifyError, meta_url, sig_url, verify};
use serde_json::json;

use crate::common::{
    DEMO_SIZE, PACKAGE, chain, client, demo_dir, demo_server, fetch, get_json, ready_made_catalog,
};

/// A signed copy of the demo in its own directory.
async fn signed_server() -> (tempfile::TempDir, MockServer, PublicKey) {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, key) = demo::generate_signed(dir.path(), DEMO_SIZE).unwrap();
    let server = MockServer::start(Catalog::load(&catalog).unwrap())
        .await
        .unwrap();
    (dir, server, key.public)
}

fn expected(info: &PatchInfo) -> Expected<'static> {
    Expected {
        package: PACKAGE,
        file_name: "service5mic",
        language: "CN",
        robot_version: "1",
        from_version: info.from_code,
        to_version: info.to_code,
    }
}

/// Status, content type and body of a GET.
async fn get(url: &str) -> (u16, String, Vec<u8>) {
    let response = client().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (
        status,
        content_type,
        response.bytes().await.unwrap().to_vec(),
    )
}

#[tokio::test]
async fn every_patch_comes_with_metadata_that_verifies() {
    let (dir, server, public) = signed_server().await;
    assert_eq!(server.catalog().public_key(), Some(public));
    let on_disk = std::fs::read_to_string(dir.path().join("vendor.pub")).unwrap();
    assert_eq!(PublicKey::from_text(&on_disk).unwrap(), public);

    let (urls, ids) = chain(&server, "16").await;
    for (url, id) in urls.iter().zip(&ids) {
        let info = server.catalog().patch_by_id(id).unwrap();
        assert_eq!(
            meta_url(url),
            format!("{}{}", server.uri(), info.meta_url_path())
        );
        assert_eq!(
            sig_url(url),
            format!("{}{}", server.uri(), info.sig_url_path())
        );

        let (status, content_type, json) = get(&meta_url(url)).await;
        assert_eq!((status, content_type.as_str()), (200, "application/json"));
        let (status, content_type, sig) = get(&sig_url(url)).await;
        assert_eq!((status, content_type.as_str()), (200, "text/plain"));

        let meta = verify(&[public], &json, &sig).unwrap();
        meta.check(&expected(&info)).unwrap();
        let patch = fetch(url).await;
        assert_eq!(meta.patch_size, patch.len() as u64);
        assert_eq!(meta.patch_sha256, hex_sha256(&patch));
        let result = std::fs::read(dir.path().join(format!("versions/{}", info.to_code))).unwrap();
        assert_eq!(meta.result_size, result.len() as u64);
        assert_eq!(meta.result_sha256, hex_sha256(&result));

        let signed = info.signed.as_ref().unwrap();
        assert_eq!(
            (&signed.json, signed.signature.as_bytes()),
            (&json, &sig[..])
        );
        assert_eq!(signed.metadata, meta);
    }

    let head = client().head(meta_url(&urls[0])).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let info = server.catalog().patch_by_id("23").unwrap();
    let len = info.signed.as_ref().unwrap().json.len();
    assert_eq!(head.headers()["content-length"], len.to_string());
    assert!(head.bytes().await.unwrap().is_empty());
    let log = server.requests();
    let last = log.last().unwrap();
    assert_eq!((last.method.as_str(), last.status), ("HEAD", 200));
    assert_eq!(last.path, info.meta_url_path());
}

#[tokio::test]
async fn without_a_key_there_is_no_metadata() {
    let server = demo_server().await;
    assert_eq!(server.catalog().public_key(), None);
    let (urls, ids) = chain(&server, "16").await;
    for (url, id) in urls.iter().zip(&ids) {
        assert_eq!(server.catalog().patch_by_id(id).unwrap().signed, None);
        for sidecar in [meta_url(url), sig_url(url)] {
            let (status, body) = get_json(&sidecar).await;
            assert_eq!((status, &body["status"]), (404, &json!(404)), "{sidecar}");
        }
    }
}

#[test]
fn ready_made_patches_are_signed_with_the_version_they_make() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Catalog::load(&demo_dir().join("catalog.toml")).unwrap();
    std::fs::create_dir_all(dir.path().join("patches")).unwrap();
    for (id, to) in [("23", 17), ("25", 18)] {
        let made = demo.patch_by_id(id).unwrap().file;
        std::fs::copy(made, dir.path().join(format!("patches/{to}.patch"))).unwrap();
    }
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    let public = ota_signing::release::keygen(&dir.path().join("keys/vendor")).unwrap();
    let versions = demo_dir().join("versions");
    let path = ready_made_catalog(dir.path(), "[server]\nsigning_key = \"keys/vendor.key\"");
    let catalog = Catalog::load(&path).unwrap();
    assert_eq!(catalog.public_key(), Some(public));
    let patches = catalog.patches();
    assert_eq!(patches.len(), 2);
    for info in patches {
        let signed = info.signed.as_ref().unwrap();
        let meta = verify(&[public], &signed.json, signed.signature.as_bytes()).unwrap();
        meta.check(&expected(&info)).unwrap();
        let result = std::fs::read(versions.join(info.to_code.to_string())).unwrap();
        assert_eq!(meta.result_sha256, hex_sha256(&result), "{}", info.to_code);
        let patch = std::fs::read(&info.file).unwrap();
        assert_eq!(meta.patch_sha256, hex_sha256(&patch));
    }
}

fn load_error(dir: &Path, text: &str) -> String {
    let path = dir.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    Catalog::load(&path)
        .expect_err("the catalog is bad")
        .to_string()
}

#[test]
fn bad_keys_and_patches_that_cannot_be_signed_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "[[package]]\nname = \"p\"\n[[package.file]]\nfile_name = \"f\"\nlanguage = \"CN\"\n\
         [[package.file.version]]\ncode = 16\nname = \"a\"\nfile = \"{}\"\n\
         [[package.file.version]]\ncode = 17\nname = \"b\"\npatch = \"17.patch\"\n",
        demo_dir().join("versions/16").display()
    );
    std::fs::write(dir.path().join("17.patch"), b"BSDIFF40 but nothing else").unwrap();

    let error = load_error(
        dir.path(),
        &format!("[server]\nsigning_key = \"none.key\"\n{base}"),
    );
    assert!(error.contains("server signing_key"), "{error}");
    assert!(error.contains("none.key"), "{error}");

    std::fs::write(dir.path().join("bad.key"), "not a key\n").unwrap();
    let error = load_error(
        dir.path(),
        &format!("[server]\nsigning_key = \"bad.key\"\n{base}"),
    );
    assert!(
        error.contains("bad.key is not a secret key file"),
        "{error}"
    );

    ota_signing::release::keygen(&dir.path().join("good")).unwrap();
    let error = load_error(
        dir.path(),
        &format!("[server]\nsigning_key = \"good.key\"\n{base}"),
    );
    assert!(error.contains("version 17"), "{error}");
    assert!(
        error.contains("cannot apply the patch to version 16"),
        "{error}"
    );
    // Without a key, the same patch is served as it is.
    Catalog::load(&{
        let path = dir.path().join("unsigned.toml");
        std::fs::write(&path, &base).unwrap();
        path
    })
    .unwrap();
}

#[test]
fn the_signed_demo_keeps_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (catalog, key) = demo::generate_signed(dir.path(), 8192).unwrap();
    assert_eq!(key.secret, dir.path().join("vendor.key"));
    assert_eq!(key.public_file, dir.path().join("vendor.pub"));
    assert!(
        std::fs::read_to_string(&catalog)
            .unwrap()
            .contains("signing_key = \"vendor.key\"")
    );
    let (_, again) = demo::generate_signed(dir.path(), 8192).unwrap();
    assert_eq!(again, key);
    // The same directory can be served unsigned; the key stays for later.
    demo::generate(dir.path(), 8192).unwrap();
    assert_eq!(Catalog::load(&catalog).unwrap().public_key(), None);
    assert!(key.secret.is_file());
    let (_, again) = demo::generate_signed(dir.path(), 8192).unwrap();
    assert_eq!(again, key);
    assert_eq!(
        Catalog::load(&catalog).unwrap().public_key(),
        Some(key.public)
    );
}

#[tokio::test]
async fn patch_faults_and_metadata_faults_keep_apart() {
    let (_dir, server, public) = signed_server().await;
    let info = server.catalog().patch_by_id("25").unwrap();
    let url = format!("{}{}", server.uri(), info.url_path);
    let patch = std::fs::read(&info.file).unwrap();
    let signed = info.signed.clone().unwrap();

    server.inject(Fault::new(
        Endpoint::Patch,
        FaultKind::Truncate { after: 10 },
    ));
    assert_eq!(get(&meta_url(&url)).await.2, signed.json);
    assert_eq!(get(&sig_url(&url)).await.2, signed.signature.as_bytes());
    let response = client().get(&url).send().await.unwrap();
    assert!(response.bytes().await.is_err(), "the patch is cut");

    // A missing signature.
    server.inject(Fault::status(Endpoint::Metadata, 404, "{}").path_contains(".sig"));
    assert_eq!(fetch(&url).await, patch);
    assert_eq!(get(&meta_url(&url)).await.0, 200);
    assert_eq!(get(&sig_url(&url)).await.0, 404);
    assert_eq!(get(&sig_url(&url)).await.0, 200);

    // A wrong signature, and metadata changed after signing.
    server.inject(Fault::new(Endpoint::Metadata, FaultKind::Corrupt { offset: 3 }).times(2));
    let sig = get(&sig_url(&url)).await.2;
    assert_ne!(sig, signed.signature.as_bytes());
    assert!(matches!(
        verify(&[public], &signed.json, &sig),
        Err(VerifyError::Signature(_) | VerifyError::UnknownKey)
    ));
    let json = get(&meta_url(&url)).await.2;
    assert!(matches!(
        verify(&[public], &json, signed.signature.as_bytes()),
        Err(VerifyError::UnknownKey)
    ));
    assert_eq!(fetch(&url).await, patch);

    // The connection reset while fetching metadata.
    server.inject(Fault::new(Endpoint::Metadata, FaultKind::Reset));
    assert!(client().get(meta_url(&url)).send().await.is_err());
    assert_eq!(get(&meta_url(&url)).await.2, signed.json);
}

#[tokio::test]
async fn a_replayed_patch_comes_with_its_own_valid_signature() {
    let (_dir, server, public) = signed_server().await;
    let old = server.catalog().patch_by_id("23").unwrap();
    let new = server.catalog().patch_by_id("25").unwrap();
    let url = format!("{}{}", server.uri(), new.url_path);
    let old_signed = old.signed.clone().unwrap();

    server.replay_patch(&old, &new);
    for _ in 0..2 {
        assert_eq!(fetch(&url).await, std::fs::read(&old.file).unwrap());
        let json = get(&meta_url(&url)).await.2;
        let sig = get(&sig_url(&url)).await.2;
        assert_eq!(
            (&json, &sig[..]),
            (&old_signed.json, old_signed.signature.as_bytes())
        );
        let meta = verify(&[public], &json, &sig).expect("a valid signature");
        assert!(matches!(
            meta.check(&expected(&new)),
            Err(VerifyError::Mismatch {
                field: "from-version",
                ..
            })
        ));
    }
    let log = server.requests();
    assert_eq!(
        log.last().unwrap().path,
        new.sig_url_path(),
        "the log has what was asked"
    );
    server.clear_faults();
    assert_eq!(fetch(&url).await, std::fs::read(&new.file).unwrap());
    assert_eq!(
        get(&meta_url(&url)).await.2,
        new.signed.clone().unwrap().json
    );

    // A path that is not served answers 404 under the requested one.
    server.inject(Fault::serve_instead(
        Endpoint::Patch,
        "/version/nothing.patch",
    ));
    let (status, body) = get_json(&url).await;
    assert_eq!((status, &body["path"]), (404, &json!(new.url_path)));
}

#[tokio::test]
async fn the_admin_endpoint_takes_serve_instead_as_json() {
    let (_dir, server, _) = signed_server().await;
    let old = server.catalog().patch_by_id("23").unwrap();
    let new = server.catalog().patch_by_id("25").unwrap();
    let post = |body: serde_json::Value| {
        client()
            .post(format!("{}/admin/faults", server.uri()))
            .body(body.to_string())
            .send()
    };
    let response = post(json!({"endpoint": "metadata", "path_contains": "--18--",
        "kind": {"serve_instead": {"path": old.meta_url_path()}}}))
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let url = format!("{}{}", server.uri(), new.meta_url_path());
    assert_eq!(get(&url).await.2, old.signed.unwrap().json);

    for bad in [
        json!({"endpoint": "token", "kind": {"serve_instead": {"path": old.url_path}}}),
        json!({"endpoint": "patch", "kind": {"serve_instead": {"path": "/oauth/token"}}}),
    ] {
        let response = post(bad).await.unwrap();
        assert_eq!(response.status(), 400);
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("serve_instead"),
            "{body}"
        );
    }
}

#[tokio::test]
#[should_panic(expected = "serve_instead works only on the patch and metadata endpoints")]
async fn injecting_an_impossible_fault_panics() {
    let server = demo_server().await;
    server.inject(Fault::serve_instead(Endpoint::Download, "/version/x.patch"));
}
