//! Patch files: ranges, entity tags, HEAD, and interop with Debian's bsdiff and bspatch.

use std::path::Path;
use std::process::Command;

use ota_mock_server::{Catalog, MockServer};

use crate::common::{chain, client, demo_dir, demo_server, fetch, get_json, ready_made_catalog};

async fn first_patch(server: &MockServer) -> (String, Vec<u8>) {
    let (urls, _) = chain(server, "17").await;
    let on_disk = std::fs::read(&server.catalog().patch_by_id("25").unwrap().file).unwrap();
    (urls[0].clone(), on_disk)
}

#[tokio::test]
async fn a_full_download_has_length_etag_and_ranges() {
    let server = demo_server().await;
    let (url, expected) = first_patch(&server).await;
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-length"], expected.len().to_string());
    assert_eq!(headers["accept-ranges"], "bytes");
    let etag = headers["etag"].to_str().unwrap();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 10,
        "{etag}"
    );
    assert_eq!(response.bytes().await.unwrap(), expected);
    assert!(expected.starts_with(b"BSDIFF40"));

    let last = server.requests().pop().unwrap();
    assert_eq!(last.method, "GET");
    assert_eq!(last.status, 200);
    assert_eq!(last.bytes_sent, expected.len() as u64);
    assert_eq!(last.range, None);
}

#[tokio::test]
async fn ranges_get_206_or_416() {
    let server = demo_server().await;
    let (url, expected) = first_patch(&server).await;
    let len = expected.len();
    let cases = [
        ("bytes=0-99", 0, 99),
        ("bytes=100-", 100, len - 1),
        ("bytes=-50", len - 50, len - 1),
        (&format!("bytes=10-{}", len + 1000), 10, len - 1),
    ];
    for (range, start, end) in cases {
        let response = client()
            .get(&url)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 206, "{range}");
        assert_eq!(
            response.headers()["content-range"],
            format!("bytes {start}-{end}/{len}")
        );
        assert_eq!(
            response.headers()["content-length"],
            (end - start + 1).to_string()
        );
        assert_eq!(
            response.bytes().await.unwrap(),
            &expected[start..=end],
            "{range}"
        );
        let last = server.requests().pop().unwrap();
        assert_eq!(last.range.as_deref(), Some(range));
        assert_eq!(last.bytes_sent, (end - start + 1) as u64);
    }
    for range in [format!("bytes={len}-"), "bytes=-0".to_string()] {
        let response = client()
            .get(&url)
            .header("range", &range)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 416, "{range}");
        assert_eq!(
            response.headers()["content-range"],
            format!("bytes */{len}")
        );
    }
    // A range that cannot be parsed is ignored.
    let response = client()
        .get(&url)
        .header("range", "bytes=9-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap(), expected);
}

#[tokio::test]
async fn if_range_needs_the_current_etag() {
    let server = demo_server().await;
    let (url, expected) = first_patch(&server).await;
    let head = client().head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], expected.len().to_string());
    assert_eq!(head.headers()["accept-ranges"], "bytes");
    let etag = head.headers()["etag"].to_str().unwrap().to_string();
    assert!(head.bytes().await.unwrap().is_empty());
    assert_eq!(server.requests().pop().unwrap().method, "HEAD");

    let response = client()
        .get(&url)
        .header("range", "bytes=1000-")
        .header("if-range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(response.bytes().await.unwrap(), &expected[1000..]);

    let response = client()
        .get(&url)
        .header("range", "bytes=1000-")
        .header("if-range", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("content-range").is_none());
    assert_eq!(response.bytes().await.unwrap(), expected);
}

#[tokio::test]
async fn unknown_patch_paths_are_404() {
    let server = demo_server().await;
    let (status, body) = get_json(&format!(
        "{}/version/com.ubtechinc.alpha2services/CN/Nothing--1--x.patch",
        server.uri()
    ))
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["status"], 404);
}

fn bspatch(old: &Path, new: &Path, patch: &Path) {
    let status = Command::new("/usr/bin/bspatch")
        .arg(old)
        .arg(new)
        .arg(patch)
        .status()
        .expect("/usr/bin/bspatch runs (apt-get install bsdiff)");
    assert!(status.success(), "bspatch failed");
}

#[tokio::test]
async fn debian_bspatch_applies_the_served_chain() {
    let server = demo_server().await;
    let (urls, _) = chain(&server, "16").await;
    let work = tempfile::tempdir().unwrap();
    let mut current = demo_dir().join("versions/16");
    for (i, url) in urls.iter().enumerate() {
        let patch = work.path().join(format!("{i}.patch"));
        std::fs::write(&patch, fetch(url).await).unwrap();
        let next = work.path().join(format!("{i}.out"));
        bspatch(&current, &next, &patch);
        current = next;
        let expected = demo_dir().join(if i == 0 { "versions/17" } else { "versions/18" });
        assert_eq!(
            std::fs::read(&current).unwrap(),
            std::fs::read(&expected).unwrap(),
            "after patch {i}"
        );
    }
}

#[tokio::test]
async fn patches_made_by_debian_bsdiff_are_served_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("patches")).unwrap();
    let versions = demo_dir().join("versions");
    for (from, to) in [(16, 17), (17, 18)] {
        let status = Command::new("/usr/bin/bsdiff")
            .arg(versions.join(from.to_string()))
            .arg(versions.join(to.to_string()))
            .arg(dir.path().join(format!("patches/{to}.patch")))
            .status()
            .expect("/usr/bin/bsdiff runs (apt-get install bsdiff)");
        assert!(status.success());
    }
    let path = ready_made_catalog(dir.path(), "");
    let server = MockServer::start(Catalog::load(&path).unwrap())
        .await
        .unwrap();
    let (urls, ids) = chain(&server, "16").await;
    assert_eq!(ids, ["23", "25"]);
    for (url, to) in urls.iter().zip([17, 18]) {
        let served = fetch(url).await;
        let made = std::fs::read(dir.path().join(format!("patches/{to}.patch"))).unwrap();
        assert_eq!(served, made, "patch to {to}");
    }
    assert!(!dir.path().join("cache").exists(), "no patch was made");
}
