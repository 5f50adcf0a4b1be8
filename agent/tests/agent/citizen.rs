//! A good citizen on a working robot: hooks that defer a download or an install and a retry soon
//! after, install windows, the download rate cap, the robot's clock, proxies, a battery gate.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ota_mock_server::{Endpoint, Fault, FaultKind};

use crate::helpers::{
    Serve, World, agent_with_env, events_path, pairs, patch_gets, stderr, stdout,
};

/// A hook that fails until `flag` exists, and counts its runs in `runs`.
fn gate(flag: &Path, runs: &Path) -> String {
    format!(
        "echo run >> '{}'; test -e '{}'",
        runs.display(),
        flag.display()
    )
}

/// Changes the recorded update in the agent's state file, as a test's stand-in for time passing
/// or for a stop at a moment no test can hit.
fn edit_update(w: &World, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = w.dir().join("state").join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let pkg = state["packages"]
        .as_object_mut()
        .unwrap()
        .values_mut()
        .next()
        .unwrap();
    edit(&mut pkg["update"]);
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
}

fn runs(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_download_defers_before_anything_is_fetched() {
    let hooks = tempfile::tempdir().unwrap();
    let (flag, count) = (hooks.path().join("go"), hooks.path().join("runs"));
    let w = World::new(&format!("pre_download = \"{}\"", gate(&flag, &count))).await;
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains("deferred by the pre_download hook"),
        "{}",
        stdout(&out)
    );
    // Asked before a byte was fetched, and nothing is reported: the update waits, it did not end.
    assert_eq!(patch_gets(&w), 0);
    assert!(
        w.server
            .requests()
            .iter()
            .all(|r| !r.path.ends_with(".patch"))
    );
    assert!(w.callbacks().is_empty());
    assert_eq!(w.installed(), w.version(16));
    let update = w.status().await["packages"][0]["update"].clone();
    assert_eq!(update["step"], "waiting", "{update}");
    assert!(update["waiting"].as_str().unwrap().contains("pre_download"));
    // The default defer_retry is 15 minutes (and up to a fifth more), not the poll interval.
    let wait = update["until_unix"].as_u64().unwrap() - now();
    assert!((14 * 60..=18 * 60 + 1).contains(&wait), "{wait} s");

    std::fs::write(&flag, "").unwrap();
    let out = w.agent(&["check"]).await;
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(w.installed(), w.version(18));
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "1")]));
    assert_eq!(runs(&count), 2);
    assert!(w.status().await["packages"][0]["update"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_install_defers_and_keeps_what_it_downloaded_and_staged() {
    let hooks = tempfile::tempdir().unwrap();
    let (flag, count) = (hooks.path().join("go"), hooks.path().join("runs"));
    let w = World::new(&format!("pre_install = \"{}\"", gate(&flag, &count))).await;
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert!(stdout(&out).contains("deferred by the pre_install hook"));
    assert_eq!(w.installed(), w.version(16));
    assert!(w.callbacks().is_empty(), "a deferral is not a result");
    let fetched = patch_gets(&w);
    assert_eq!(fetched, 2);
    let prepared = |w: &World| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(ota_agent::managed::new_path(&crate::helpers::managed_path(
            w.dir(),
        )))
        .expect("the new file stays prepared beside the managed one");
        (m.ino(), m.mtime_nsec(), m.len())
    };
    let before = prepared(&w);

    // Deferred again: nothing downloaded, applied or written beside the managed file again.
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert_eq!(patch_gets(&w), fetched);
    assert!(stderr(&out).contains("is still staged; not applying again"));
    assert_eq!(prepared(&w), before);

    // Without the fact that it was prepared in full (as after a stop in the middle of writing
    // it), the file beside the managed one is written again, however right it looks.
    edit_update(&w, |update| {
        assert!(update["prepared_sha256"].is_string());
        update["prepared_sha256"] = serde_json::Value::Null;
    });
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert_ne!(prepared(&w), before);

    std::fs::write(&flag, "").unwrap();
    let out = w.agent(&["check"]).await;
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(patch_gets(&w), fetched);
    assert_eq!(w.installed(), w.version(18));
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "1")]));
    assert_eq!(runs(&count), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferral_ends_with_not_updated_after_defer_timeout() {
    let w = World::with("pre_install = \"exit 3\"", "defer_timeout = \"1h\"").await;
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert!(w.callbacks().is_empty());
    // The first deferral was two hours ago, as the state file says (the injected clock).
    edit_update(&w, |update| {
        assert!(update["deferred_since_unix"].as_u64().is_some());
        update["deferred_since_unix"] = (now() - 7200).into();
    });

    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("deferred for more than 60m 0s (defer_timeout)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(w.installed(), w.version(16));
    assert_eq!(w.callbacks(), pairs(&[("23", "3"), ("25", "3")]));
    assert!(w.status().await["packages"][0]["update"].is_null());
}

/// The daemon tries a deferred update again after `defer_retry`, not after the poll interval
/// (an hour here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_retries_a_deferral_after_defer_retry() {
    let hooks = tempfile::tempdir().unwrap();
    let (flag, count) = (hooks.path().join("go"), hooks.path().join("runs"));
    let w = World::with(
        &format!("pre_download = \"{}\"", gate(&flag, &count)),
        "defer_retry = \"1s\"",
    )
    .await;
    let mut daemon = tokio::process::Command::new(env!("CARGO_BIN_EXE_ota-agent"))
        .arg("--config")
        .arg(&w.config)
        .arg("run")
        .env("OTA_AGENT_LOG", "debug")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while runs(&count) < 2 {
        assert!(
            Instant::now() < deadline,
            "the hook ran {} times",
            runs(&count)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(w.callbacks().is_empty());
    std::fs::write(&flag, "").unwrap();
    while w.callbacks().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no results after the hook let it through"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "1")]));
    assert_eq!(w.installed(), w.version(18));
    daemon.kill().await.unwrap();
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `HH:MM` of UTC now plus `hours` (and `minutes`), for a window in a test.
fn utc_plus(hours: i64, minutes: i64) -> String {
    let m = (now() as i64 / 60 + hours * 60 + minutes).rem_euclid(24 * 60);
    format!("{:02}:{:02}", m / 60, m % 60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_install_waits_for_its_window_in_local_time() {
    // Open from an hour before to an hour after the time of day three hours east of UTC.
    let window = format!("{}-{}", utc_plus(2, 0), utc_plus(4, 0));
    let w = World::with("", &format!("install_window = [\"{window}\"]")).await;
    let utc = Path::new("UTC0");
    let out = agent_with_env(&w.config, &["check"], &[("TZ", utc)]).await;
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains(&format!("waits for the install window ({window})")),
        "{}",
        stdout(&out)
    );
    // Downloaded and applied whenever the check found work; only the install waits.
    assert_eq!(patch_gets(&w), 2);
    assert_eq!(w.installed(), w.version(16));
    assert!(w.callbacks().is_empty());
    let update = w.status().await["packages"][0]["update"].clone();
    assert_eq!(update["step"], "waiting");
    // It opens in about two hours.
    let opens = update["until_unix"].as_u64().unwrap() - now();
    assert!((7000..=7200).contains(&opens), "{opens} s");

    // Three hours east of UTC (POSIX writes it UTC-3) the window is open.
    let east = Path::new("UTC-3");
    let out = agent_with_env(&w.config, &["check"], &[("TZ", east)]).await;
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(patch_gets(&w), 2);
    assert!(stderr(&out).contains("is still staged; not applying again"));
    assert_eq!(w.installed(), w.version(18));
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "1")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_crosses_midnight_is_open_on_both_sides() {
    // From an hour ago to an hour from now, written so that it crosses midnight in a time zone
    // where midnight is now.
    let midnight_now = format!("UTC{}", {
        let m = (now() / 60 % (24 * 60)) as i64;
        // The offset that makes local time 00:00 now: local = UTC - offset (POSIX sign).
        let off = m;
        format!("{:+}:{:02}", off / 60, off % 60)
    });
    let w = World::with("", "install_window = [\"23:00-01:00\"]").await;
    let out = agent_with_env(&w.config, &["check"], &[("TZ", Path::new(&midnight_now))]).await;
    assert!(out.status.success(), "TZ={midnight_now}: {}", stdout(&out));
    assert_eq!(w.installed(), w.version(18));
}

/// The cap measured as the robot's apps see it: the daemon's progress events, over a download of
/// about twelve seconds that a cut interrupts and a `Range` request resumes. Every 10-second
/// window stays within 10 % of the rate, and the download is not much slower than it either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_keep_to_max_download_rate_in_every_ten_seconds_across_a_resume() {
    use tokio::io::AsyncBufReadExt;
    // Version 17 is 3 MiB of noise, so its patch is about as large: bzip2 cannot shrink it.
    let w = World::edited(
        Serve::default(),
        |dir, text| {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let noise: Vec<u8> = (0..3 << 20)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            std::fs::write(dir.join("versions").join("17"), noise).unwrap();
            text
        },
        "",
        "",
    )
    .await;
    let total: u64 = w.server.catalog().patches().iter().map(|p| p.len).sum();
    assert!(total > 5 << 19, "{total} bytes of patches");
    let rate: u64 = 256 * 1024;
    w.edit_config(
        "read_timeout = \"5s\"",
        "read_timeout = \"5s\"\nmax_download_rate = \"256k\"",
    );
    w.server.inject(
        // Twice: the agent first asks every patch's size with a HEAD, then downloads.
        Fault::new(Endpoint::Patch, FaultKind::Truncate { after: 1 << 20 })
            .path_contains("--17--")
            .times(2),
    );
    let child = crate::daemon::spawn(&w);
    let socket = events_path(w.dir());
    crate::daemon::until("the events socket", || socket.exists()).await;
    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let mut lines = tokio::io::BufReader::new(stream).lines();
    // (when it was heard, bytes of all patches received so far)
    let mut samples: Vec<(Instant, u64)> = Vec::new();
    let mut per_id = std::collections::BTreeMap::<String, u64>::new();
    let mut results = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while results < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = tokio::time::timeout(left, lines.next_line())
            .await
            .expect("the update did not end within two minutes")
            .unwrap()
            .expect("the events stream ended");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        match event["event"].as_str() {
            Some("progress") => {
                let id = event["id"].as_str().unwrap().to_owned();
                per_id.insert(id, event["bytes"].as_u64().unwrap());
                samples.push((Instant::now(), per_id.values().sum()));
            }
            Some("result") => results += 1,
            _ => {}
        }
    }
    crate::daemon::until("both callbacks", || w.callbacks().len() == 2).await;
    crate::daemon::signal(&child, rustix::process::Signal::TERM);
    let (status, _) = crate::daemon::stderr_of(child).await;
    assert!(status.success());
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "1")]));
    assert_eq!(w.installed(), w.version(18));
    assert!(
        w.server
            .requests()
            .iter()
            .any(|r| r.range.as_deref() == Some("bytes=1048576-")),
        "the cut download was not resumed"
    );
    let limit = rate as f64 * 10.0 * 1.1;
    for (i, &(t0, b0)) in samples.iter().enumerate() {
        for &(t1, b1) in &samples[i..] {
            if t1 - t0 <= Duration::from_secs(10) {
                assert!(
                    (b1 - b0) as f64 <= limit,
                    "{} bytes in {:?}, more than 110 % of {rate} bytes/s",
                    b1 - b0,
                    t1 - t0
                );
            }
        }
    }
    let (first, last) = (samples[0], samples[samples.len() - 1]);
    let took = (last.0 - first.0).as_secs_f64();
    let expected = (last.1 - first.1) as f64 / rate as f64;
    assert!(
        took < expected * 1.5 + 2.0,
        "{} bytes took {took:.1} s at a cap of {rate} bytes/s",
        last.1 - first.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_below_min_download_rate_is_refused() {
    let w = World::new("").await;
    w.edit_config(
        "read_timeout = \"5s\"",
        "read_timeout = \"5s\"\nmax_download_rate = \"100\"",
    );
    let out = w.agent(&["check"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("key `server.max_download_rate` (100 bytes/s) is below"),
        "{}",
        stderr(&out)
    );
}

/// Debian's tinyproxy on a loopback port, logging every request it forwards.
struct Tinyproxy {
    _child: tokio::process::Child,
    url: String,
    log: std::path::PathBuf,
}

impl Tinyproxy {
    /// tinyproxy takes no port 0: a port the kernel just handed out (and this test let go) is
    /// the next best, with another try if something took it in between.
    async fn start(dir: &Path) -> Tinyproxy {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let log = dir.join(format!("tinyproxy-{port}.log"));
            let conf = dir.join(format!("tinyproxy-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogFile \"{}\"\nLogLevel Connect\nMaxClients 20\nAllow 127.0.0.1\n",
                    log.display()
                ),
            )
            .unwrap();
            let mut child = tokio::process::Command::new("tinyproxy")
                .arg("-d")
                .arg("-c")
                .arg(&conf)
                .kill_on_drop(true)
                .spawn()
                .expect("tinyproxy (Debian's tinyproxy-bin; .ci/run installs it)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return Tinyproxy {
                        _child: child,
                        url: format!("http://127.0.0.1:{port}"),
                        log,
                    };
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("tinyproxy did not start");
    }

    /// The requests it forwarded, as `GET http://… HTTP/1.1`.
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once("]: Request (file descriptor "))
            .filter_map(|(_, r)| r.split_once("): ").map(|(_, r)| r.to_owned()))
            .collect()
    }
}

/// An address where nothing listens: a proxy there fails every request that uses it.
fn dead_proxy() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_through_the_forward_proxy_the_config_names() {
    let w = World::new("").await;
    let proxy = Tinyproxy::start(w.dir()).await;
    w.edit_config(
        "read_timeout = \"5s\"",
        &format!("read_timeout = \"5s\"\nproxy = \"{}\"", proxy.url),
    );
    // The key wins over the environment.
    let dead = dead_proxy();
    let env = [
        ("HTTP_PROXY", Path::new(&dead)),
        ("http_proxy", Path::new(&dead)),
    ];
    let out = agent_with_env(&w.config, &["check"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(w.installed(), w.version(18));
    assert_eq!(w.callbacks(), pairs(&[("23", "1"), ("25", "1")]));
    let through = proxy.requests();
    let uri = w.server.uri();
    for path in [
        "/oauth/token",
        "/file/download",
        "--17--",
        "--18--",
        "/file/callback",
    ] {
        assert!(
            through.iter().any(|r| r.contains(&uri) && r.contains(path)),
            "no request for {path} went through the proxy: {through:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environments_proxy_is_used_and_an_empty_key_turns_proxies_off() {
    let w = World::new("").await;
    let proxy = Tinyproxy::start(w.dir()).await;
    let env = [("HTTP_PROXY", Path::new(&proxy.url))];
    let out = agent_with_env(&w.config, &["check"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(w.installed(), w.version(18));
    assert!(proxy.requests().iter().any(|r| r.contains("--18--")));

    let w = World::new("").await;
    w.edit_config(
        "read_timeout = \"5s\"",
        "read_timeout = \"5s\"\nproxy = \"\"",
    );
    let dead = dead_proxy();
    let env = [("HTTP_PROXY", Path::new(&dead))];
    let out = agent_with_env(&w.config, &["check"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(w.installed(), w.version(18));
}

/// The battery gate that docs/operating.md shows, against a fake `/sys/class/power_supply`.
fn battery_gate() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/hooks/battery-gate")
}

fn power_supply(dir: &Path, name: &str, files: &[(&str, &str)]) {
    let supply = dir.join(name);
    std::fs::create_dir_all(&supply).unwrap();
    for (file, text) in files {
        std::fs::write(supply.join(file), format!("{text}\n")).unwrap();
    }
}

fn gate_says(sysfs: &Path, args: &[&str]) -> bool {
    std::process::Command::new("sh")
        .arg(battery_gate())
        .args(args)
        .env("OTA_POWER_SUPPLY_DIR", sysfs)
        .status()
        .unwrap()
        .success()
}

#[test]
fn the_battery_gate_defers_on_a_low_battery_or_off_the_charger() {
    let tmp = tempfile::tempdir().unwrap();
    let sysfs = tmp.path();
    // No battery at all (a robot on a bench supply): never held back.
    assert!(gate_says(sysfs, &["--min", "30"]));
    power_supply(sysfs, "ac", &[("type", "Mains"), ("online", "0")]);
    power_supply(
        sysfs,
        "battery",
        &[
            ("type", "Battery"),
            ("capacity", "15"),
            ("status", "Discharging"),
        ],
    );
    assert!(!gate_says(sysfs, &["--min", "30"]));
    assert!(gate_says(sysfs, &["--min", "10"]));
    assert!(!gate_says(sysfs, &["--min", "10", "--charging"]));
    // On the charger: the mains supply is online.
    power_supply(sysfs, "ac", &[("online", "1")]);
    assert!(gate_says(sysfs, &["--min", "10", "--charging"]));
    assert!(!gate_says(sysfs, &["--min", "30", "--charging"]));
    // A second, emptier battery counts; a gauge that cannot be read does not.
    power_supply(
        sysfs,
        "battery",
        &[("capacity", "80"), ("status", "Charging")],
    );
    power_supply(sysfs, "aux", &[("type", "Battery"), ("capacity", "5")]);
    assert!(!gate_says(sysfs, &["--min", "30"]));
    power_supply(sysfs, "aux", &[("capacity", "")]);
    assert!(gate_says(sysfs, &["--min", "30", "--charging"]));
    assert!(!gate_says(sysfs, &["--min", "many"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_battery_gate_holds_the_download_until_the_battery_is_charged() {
    let w = World::new(&format!(
        "pre_download = \"{} --min 30\"",
        battery_gate().display()
    ))
    .await;
    let sysfs = w.dir().join("power_supply");
    power_supply(
        &sysfs,
        "battery",
        &[
            ("type", "Battery"),
            ("capacity", "12"),
            ("status", "Discharging"),
        ],
    );
    let env = [("OTA_POWER_SUPPLY_DIR", sysfs.as_path())];
    let out = agent_with_env(&w.config, &["check"], &env).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("battery at 12%, below 30%"),
        "{}",
        stderr(&out)
    );
    assert_eq!(patch_gets(&w), 0);
    power_supply(&sysfs, "battery", &[("capacity", "64")]);
    let out = agent_with_env(&w.config, &["check"], &env).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(w.installed(), w.version(18));
}

/// A clock that was never set (a board without a clock battery) cannot end a deferral, so the
/// count of retries `defer_timeout` allows does: here one hour of retries every 30 minutes, and
/// one more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferral_also_ends_after_as_many_retries_as_defer_timeout_allows() {
    let w = World::with(
        "pre_install = \"exit 3\"",
        "defer_timeout = \"1h\"\ndefer_retry = \"30m\"",
    )
    .await;
    for _ in 0..3 {
        let out = w.agent(&["check"]).await;
        assert!(!out.status.success());
        assert!(w.callbacks().is_empty(), "{}", stdout(&out));
    }
    let out = w.agent(&["check"]).await;
    assert!(stderr(&out).contains("(defer_timeout), so it ends as not updated"));
    assert_eq!(w.callbacks(), pairs(&[("23", "3"), ("25", "3")]));
    assert_eq!(w.installed(), w.version(16));
}
