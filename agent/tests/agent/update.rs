//! Whole updates: the agent binary against the mock server, over real HTTP.

use ota_mock_server::{Endpoint, Fault, FaultKind};

use crate::helpers::{World, pairs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_patch_update() {
    let w = World::new("").await;
    let out = w.agent(&["check"]).await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("updated from version 16 to 18"));
    assert_eq!(w.installed(), w.version(18));
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "1")]));
    let status = w.status().await;
    let pkg = &status["packages"][0];
    assert_eq!(pkg["version"], "18");
    assert_eq!(pkg["name"], "com.ubtechinc.alpha2services");
    assert_eq!(pkg["file_name"], "service5mic");
    assert!(pkg["update"].is_null());
    assert_eq!(pkg["callbacks_waiting"].as_array().unwrap().len(), 0);

    // A second check finds nothing to do and reports nothing new.
    let out = w.agent(&["check"]).await;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date at version 18"));
    assert_eq!(w.callbacks().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_second_patch_installs_the_first() {
    let w = World::new("").await;
    w.server.inject(
        Fault::new(Endpoint::Patch, FaultKind::Corrupt { offset: 40 })
            .path_contains("--18--")
            .times(100),
    );
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert_eq!(w.installed(), w.version(17));
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "2")]));
    assert_eq!(w.status().await["packages"][0]["version"], "17");

    // A failure is final: offered again, update 25 is reported again, not fetched again.
    w.server.clear_faults();
    let fetched = |w: &World| {
        w.server
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.contains("--18--"))
            .count()
    };
    let before = fetched(&w);
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert_eq!(fetched(&w), before);
    assert_eq!(w.installed(), w.version(17));
    assert_eq!(
        w.callbacks(),
        pairs(&[("23", "1"), ("25", "2"), ("25", "2")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_check_rolls_back() {
    let hooks = tempfile::tempdir().unwrap();
    let runs = hooks.path().join("post-install-runs");
    let extra = format!(
        "post_install = \"echo $OTA_VERSION >> {}\"\nhealth_check = \"exit 1\"",
        runs.display()
    );
    let w2 = World::new(&extra).await;
    let out = w2.agent(&["check"]).await;
    assert!(!out.status.success());
    assert_eq!(w2.installed(), w2.version(16));
    assert_eq!(w2.callbacks(), pairs(&[("23", "2"), ("25", "2")]));
    // post_install ran for the new version, then again for the restored one.
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "18\n16\n");
    assert_eq!(w2.status().await["packages"][0]["version"], "16");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_download_resumes_with_a_range() {
    let w = World::new("").await;
    let sizes: u64 = w.server.catalog().patches().iter().map(|p| p.len).sum();
    w.server.inject(
        // Twice: the agent first asks every patch's size with a HEAD, then downloads.
        Fault::new(Endpoint::Patch, FaultKind::Truncate { after: 1000 })
            .path_contains("--17--")
            .times(2),
    );
    let out = w.agent(&["check"]).await;
    assert!(out.status.success());
    assert_eq!(w.installed(), w.version(18));
    let requests = w.server.requests();
    let patch_gets: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(".patch"))
        .collect();
    assert!(
        patch_gets
            .iter()
            .any(|r| r.range.as_deref() == Some("bytes=1000-")),
        "{patch_gets:?}"
    );
    let sent: u64 = patch_gets.iter().map(|r| r.bytes_sent).sum();
    assert!(
        sent < sizes + sizes / 2,
        "sent {sent} bytes for {sizes} bytes of patches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_survive_a_restart() {
    let w = World::new("").await;
    w.server
        .inject(Fault::status(Endpoint::Callback, 500, "{\"code\":\"500\"}").times(1000));
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert_eq!(w.installed(), w.version(18));
    assert!(w.callbacks().is_empty());
    let waiting = w.status().await["packages"][0]["callbacks_waiting"].clone();
    assert_eq!(waiting.as_array().unwrap().len(), 2, "{waiting}");

    w.server.clear_faults();
    let out = w.agent(&["check"]).await;
    assert!(out.status.success());
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "1")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reoffered_id_is_reported_not_applied() {
    let w = World::new("").await;
    assert!(w.agent(&["check"]).await.status.success());
    let patches = w.server.catalog().patches();
    let urls: Vec<String> = patches
        .iter()
        .map(|p| format!("{}{}", w.server.uri(), p.url_path))
        .collect();
    // The server forgets the robot's results and offers the whole chain again.
    let body = format!(
        r#"{{"code":"100","data":"{}","id":"23;25"}}"#,
        urls.join(";")
    );
    w.server
        .inject(Fault::status(Endpoint::Download, 200, &body));
    let out = w.agent(&["check"]).await;
    assert!(out.status.success());
    assert_eq!(w.installed(), w.version(18));
    assert_eq!(
        w.callbacks(),
        pairs(&[("23", "1"), ("25", "1"), ("23", "1"), ("25", "1")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_debug_output_or_state() {
    let w = World::new("").await;
    // A refused token on the way makes the agent log more, and get and use a second token.
    w.server.inject(Fault::status(
        Endpoint::Download,
        401,
        r#"{"error":"invalid_token","error_description":"Invalid access token: 0123"}"#,
    ));
    let out = w.agent(&["check"]).await;
    assert!(out.status.success());
    let tokens: Vec<String> = w
        .server
        .requests()
        .iter()
        .flat_map(|r| r.query.split('&').map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|pair| pair.strip_prefix("access_token=").map(str::to_owned))
        .collect();
    assert!(!tokens.is_empty());
    let mut seen = String::from_utf8_lossy(&out.stdout).into_owned();
    seen += &String::from_utf8_lossy(&out.stderr);
    seen += &std::fs::read_to_string(w.dir().join("state").join("state.json")).unwrap();
    let status = w.agent(&["status", "--json"]).await;
    seen += &String::from_utf8_lossy(&status.stdout);
    assert!(
        seen.contains("access_token=<redacted>"),
        "the debug log shows redacted URLs"
    );
    for secret in tokens.iter().map(String::as_str).chain(["secret_1"]) {
        assert!(!seen.contains(secret), "{secret} leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_callback_does_not_hold_up_the_others() {
    let w = World::new("").await;
    w.server.inject(
        Fault::status(Endpoint::Callback, 500, r#"{"code":"500"}"#)
            .path_contains("id=23")
            .times(1000),
    );
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert_eq!(w.callbacks(), pairs(&[("25", "1")]));
    w.server.clear_faults();
    assert!(w.agent(&["check"]).await.status.success());
    assert_eq!(w.callbacks(), pairs(&[("25", "1"), ("23", "1")]));
}
