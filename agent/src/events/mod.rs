//! Progress for the robot's own apps: the agent's state as it changes, one JSON object per line
//! on a read-only Unix socket (`[agent] events_socket`), and `ota-agent watch`, which prints it.
//!
//! A socket of the agent's own rather than D-Bus: the board needs no bus and the agent no bus
//! library, and an app reads it with any line reader. Every client first gets a `snapshot` of
//! the present (each package's last step and download progress, and whether the agent is idle),
//! then every event as it happens. What clients write is ignored. Publishing never waits for a
//! client: one that falls [`BACKLOG`] events behind, or does not take a line within
//! [`WRITE_TIMEOUT`], is disconnected.

mod schema;
mod server;
mod watch;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;
// Tokio's clock, so that tests with paused time see the progress limit at work.
use tokio::time::Instant;

use crate::store::{Callback, ResultCode};
use crate::unix_now;
use schema::line;

pub use schema::{Event, Step};
pub use server::{MAX_CLIENTS, PENALTY, PER_USER, ROOT_RESERVE, UNREAD_LIMIT};
pub use watch::{EventsError, watch};

/// Events a client may fall behind before it is disconnected.
pub const BACKLOG: usize = 256;
/// How long a client may leave a line untaken before it is disconnected.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most often a download's progress is published (its end always is).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The publisher the cycle and the daemon tell what they do. Cheap to clone; [`Events::none`]
/// (the default) publishes nothing, for one-shot commands and tests.
#[derive(Debug, Clone, Default)]
pub struct Events(Option<Arc<Inner>>);

#[derive(Debug)]
struct Inner {
    tx: broadcast::Sender<Arc<str>>,
    /// What a new client's snapshot holds. Events are sent while it is locked, so that a client
    /// subscribed under the same lock misses none and sees none twice.
    now: Mutex<Present>,
}

#[derive(Debug, Default)]
struct Present {
    packages: BTreeMap<String, PackageNow>,
    idle: Option<Event>,
}

#[derive(Debug, Default)]
struct PackageNow {
    /// The last step, deferral or wait.
    state: Option<Event>,
    /// The step under way, so that a step is published once however often it is told.
    step: Option<(Step, Option<String>)>,
    /// The ids of the update under way, which a hook's event names.
    ids: Vec<String>,
    /// The last progress published, and when.
    progress: Option<(Event, Instant)>,
}

impl Events {
    /// A publisher that publishes nothing.
    pub fn none() -> Events {
        Events(None)
    }

    /// A publisher without a socket, read with [`Events::subscribe`].
    pub fn in_process() -> Events {
        let (tx, _) = broadcast::channel(BACKLOG);
        Events(Some(Arc::new(Inner {
            tx,
            now: Mutex::default(),
        })))
    }

    /// A publisher that serves every client of the socket at `path` (replacing a stale one);
    /// must be called within the runtime. A socket that cannot be made is logged, and the agent
    /// runs on without events.
    pub fn serve(path: &Path) -> Events {
        match server::bind(path) {
            Ok(listener) => {
                let events = Events::in_process();
                let inner = events.0.clone().expect("in_process publishes");
                tokio::spawn(server::listen(listener, inner));
                log::debug!("publishing events on {}", path.display());
                events
            }
            Err(e) => {
                log::warn!(
                    "cannot listen on {} (events_socket): {e}; the robot's apps get no progress events",
                    path.display()
                );
                Events::none()
            }
        }
    }

    /// The snapshot line a new client gets, and every line after it.
    pub fn subscribe(&self) -> Option<(Arc<str>, broadcast::Receiver<Arc<str>>)> {
        self.0.as_ref().map(|inner| inner.subscribe())
    }

    /// A step of `package`'s cycle begins, for the update of `ids`.
    pub fn step(&self, package: &str, step: Step, ids: &[String]) {
        self.with(package, |inner, now| {
            inner.step(now, package, step, ids.to_vec(), None);
        });
    }

    /// The install of `package`'s update runs its hook `hook`.
    pub fn hook(&self, package: &str, hook: &str) {
        self.with(package, |inner, now| {
            let ids = now.packages[package].ids.clone();
            inner.step(now, package, Step::Install, ids, Some(hook.to_owned()));
        });
    }

    /// `bytes` of patch `id` (of `total`, when known) are there; published at most once every
    /// [`PROGRESS_EVERY`] per download, and always when the last byte arrived.
    pub fn progress(&self, package: &str, id: &str, bytes: u64, total: Option<u64>) {
        self.with(package, |inner, now| {
            let pkg = now.packages.get_mut(package).expect("with() adds it");
            let at = Instant::now();
            if let Some((Event::Progress { id: last, .. }, sent)) = &pkg.progress {
                let done = total == Some(bytes);
                if last == id && !done && at.duration_since(*sent) < PROGRESS_EVERY {
                    return;
                }
            }
            let percent = total
                .filter(|&t| t > 0)
                .map(|t| u8::try_from(bytes.min(t).saturating_mul(100) / t).unwrap_or(100));
            let event = Event::Progress {
                package: package.to_owned(),
                at_unix: unix_now(),
                id: id.to_owned(),
                bytes,
                total,
                percent,
            };
            inner.send(&event);
            pkg.progress = Some((event, at));
        });
    }

    /// The update of `ids` waits for the robot (`reason`: the hook's message, say), until
    /// `until_unix` at the latest.
    pub fn deferred(&self, package: &str, ids: &[String], reason: &str, until_unix: u64) {
        let event = Event::Deferred {
            package: package.to_owned(),
            at_unix: unix_now(),
            ids: ids.to_vec(),
            reason: reason.to_owned(),
            until_unix,
        };
        self.with(package, |inner, now| {
            inner.waiting(now, package, ids, event)
        });
    }

    /// The update of `ids` waits for its update window, which opens at `until_unix`.
    pub fn waiting_for_window(&self, package: &str, ids: &[String], until_unix: u64) {
        let event = Event::WaitingForWindow {
            package: package.to_owned(),
            at_unix: unix_now(),
            ids: ids.to_vec(),
            until_unix,
        };
        self.with(package, |inner, now| {
            inner.waiting(now, package, ids, event)
        });
    }

    /// `package`'s file cannot be identified (`reason`); it stays so in the snapshot until a
    /// step of the package begins again.
    pub fn unidentified(&self, package: &str, reason: &str) {
        let event = Event::Unidentified {
            package: package.to_owned(),
            at_unix: unix_now(),
            reason: reason.to_owned(),
        };
        self.with(package, |inner, now| {
            inner.send(&event);
            let pkg = now.packages.get_mut(package).expect("with() adds it");
            pkg.state = Some(event);
            pkg.step = None;
            pkg.progress = None;
        });
    }

    /// The results `codes` (id, code) of `package`'s update were queued at `queued_at_unix`.
    pub fn results(&self, package: &str, codes: &[(String, ResultCode)], queued_at_unix: u64) {
        self.with(package, |inner, _| {
            for (id, code) in codes {
                inner.send(&Event::Result {
                    package: package.to_owned(),
                    at_unix: unix_now(),
                    id: id.clone(),
                    code: *code,
                    queued_at_unix,
                });
            }
        });
    }

    /// The results waiting in `outbox` are being sent: a report step for each package in it.
    pub fn reporting(&self, outbox: &[Callback]) {
        let mut waiting: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for c in outbox {
            waiting.entry(&c.package).or_default().push(c.id.clone());
        }
        for (package, ids) in waiting {
            self.step(package, Step::Report, &ids);
        }
    }

    /// Nothing is under way until `next_check_unix`.
    pub fn idle(&self, next_check_unix: u64) {
        let Some(inner) = &self.0 else { return };
        let mut now = inner.lock();
        let event = Event::Idle {
            package: None,
            at_unix: unix_now(),
            next_check_unix,
        };
        inner.send(&event);
        now.idle = Some(event);
        // The next cycle's steps are news even when they repeat the last ones.
        for pkg in now.packages.values_mut() {
            pkg.step = None;
        }
    }

    fn with(&self, package: &str, f: impl FnOnce(&Inner, &mut Present)) {
        let Some(inner) = &self.0 else { return };
        let mut now = inner.lock();
        if !now.packages.contains_key(package) {
            now.packages
                .insert(package.to_owned(), PackageNow::default());
        }
        f(inner, &mut now);
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Present> {
        self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn subscribe(&self) -> (Arc<str>, broadcast::Receiver<Arc<str>>) {
        let now = self.lock();
        let mut events = Vec::new();
        for pkg in now.packages.values() {
            events.extend(pkg.state.clone());
            events.extend(pkg.progress.as_ref().map(|(e, _)| e.clone()));
        }
        events.extend(now.idle.clone());
        let snapshot = Event::Snapshot {
            package: None,
            at_unix: unix_now(),
            events,
        };
        (line(&snapshot), self.tx.subscribe())
    }

    /// Sends `event` to every client; none at all is no error.
    fn send(&self, event: &Event) {
        let _ = self.tx.send(line(event));
    }

    fn step(
        &self,
        now: &mut Present,
        package: &str,
        step: Step,
        ids: Vec<String>,
        hook: Option<String>,
    ) {
        let pkg = now.packages.get_mut(package).expect("with() adds it");
        let key = (step, hook);
        if pkg.step.as_ref() == Some(&key) && pkg.ids == ids {
            return;
        }
        let event = Event::Step {
            package: package.to_owned(),
            at_unix: unix_now(),
            step,
            ids: ids.clone(),
            hook: key.1.clone(),
        };
        self.send(&event);
        pkg.state = Some(event);
        pkg.step = Some(key);
        pkg.ids = ids;
        pkg.progress = None;
        now.idle = None;
    }

    fn waiting(&self, now: &mut Present, package: &str, ids: &[String], event: Event) {
        let pkg = now.packages.get_mut(package).expect("with() adds it");
        self.send(&event);
        pkg.state = Some(event);
        pkg.step = None;
        pkg.ids = ids.to_vec();
        pkg.progress = None;
        now.idle = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PKG: &str = "com.ubtechinc.alpha2services/service5mic";

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn received(rx: &mut broadcast::Receiver<Arc<str>>) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(line) = rx.try_recv() {
            out.push(serde_json::from_str(&line).unwrap());
        }
        out
    }

    #[tokio::test]
    async fn progress_is_published_at_most_once_a_second() {
        tokio::time::pause();
        let events = Events::in_process();
        let (_, mut rx) = events.subscribe().unwrap();
        events.step(PKG, Step::Download, &ids(&["23", "25"]));
        // Ten seconds of a download told every tenth of a second.
        for i in 1..=100u64 {
            events.progress(PKG, "23", i * 1000, Some(100_000));
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        // The next download is news at once.
        events.progress(PKG, "25", 10, Some(1000));
        let percents: Vec<(String, u8)> = received(&mut rx)
            .into_iter()
            .filter_map(|e| match e {
                Event::Progress { id, percent, .. } => Some((id, percent.unwrap())),
                _ => None,
            })
            .collect();
        let of = |id: &str| -> Vec<u8> {
            percents
                .iter()
                .filter(|(i, _)| i == id)
                .map(|(_, p)| *p)
                .collect()
        };
        // Once a second (at 0 s, 1 s, … 9 s), and the end.
        assert_eq!(of("23"), [1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 100]);
        assert_eq!(of("25"), [1]);
    }

    #[test]
    fn a_new_client_gets_the_present_first() {
        let events = Events::in_process();
        let update = ids(&["23", "25"]);
        events.step(PKG, Step::Check, &[]);
        events.step(PKG, Step::Download, &update);
        events.progress(PKG, "23", 500, Some(1000));
        // The apply step is told once per patch and published once.
        events.step(PKG, Step::Apply, &update);
        let (_, mut rx) = events.subscribe().unwrap();
        events.step(PKG, Step::Apply, &update);
        events.hook(PKG, "post_install");
        events.results(
            PKG,
            &[
                ("23".into(), ResultCode::Success),
                ("25".into(), ResultCode::Success),
            ],
            7,
        );
        events.idle(1_800_000_000);
        let live = received(&mut rx);
        assert!(
            matches!(&live[0], Event::Step { step: Step::Install, hook: Some(h), ids, .. } if h == "post_install" && *ids == update),
            "{live:?}"
        );
        assert!(
            matches!(&live[1], Event::Result { id, code: ResultCode::Success, queued_at_unix: 7, .. } if id == "23")
        );
        assert_eq!(live.len(), 4, "{live:?}");

        let (snapshot, _) = events.subscribe().unwrap();
        let Event::Snapshot {
            events: present, ..
        } = serde_json::from_str(&snapshot).unwrap()
        else {
            panic!("{snapshot}");
        };
        assert_eq!(present.len(), 2, "{present:?}");
        assert!(matches!(
            &present[0],
            Event::Step {
                step: Step::Install,
                ..
            }
        ));
        assert!(matches!(
            &present[1],
            Event::Idle {
                next_check_unix: 1_800_000_000,
                ..
            }
        ));
        // After an idle wait the same step is news again.
        let (_, mut rx) = events.subscribe().unwrap();
        events.step(PKG, Step::Check, &[]);
        events.step(PKG, Step::Check, &[]);
        assert_eq!(received(&mut rx).len(), 1);
        // A deferral is the present until the next step.
        events.deferred(PKG, &update, "the robot is dancing", 1_800_000_600);
        let (snapshot, _) = events.subscribe().unwrap();
        assert!(snapshot.contains(r#""event":"deferred""#), "{snapshot}");
    }

    #[test]
    fn an_unidentified_file_is_told_and_stays_in_the_snapshot() {
        let events = Events::in_process();
        let (_, mut rx) = events.subscribe().unwrap();
        events.unidentified(PKG, "the state was lost\nand ESC[8m");
        let line = rx.try_recv().unwrap();
        let event: Event = serde_json::from_str(&line).unwrap();
        assert!(matches!(&event, Event::Unidentified { reason, .. } if reason.contains("lost")));
        assert_eq!(
            event.to_text(),
            format!("{PKG}: unidentified: the state was lost\\u{{a}}and ESC[8m")
        );
        let (snapshot, _) = events.subscribe().unwrap();
        assert!(
            snapshot.contains("\"event\":\"unidentified\""),
            "{snapshot}"
        );
    }

    /// A client that stops reading is disconnected; the publisher never waits for it.
    #[tokio::test]
    async fn a_client_that_falls_behind_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("events.sock");
        std::os::unix::net::UnixListener::bind(&path).unwrap();
        // A stale socket is replaced.
        let events = Events::serve(&path);
        assert!(events.0.is_some());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o666);
        let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut lines = tokio::io::BufReader::new(stream);
        let mut first = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut first)
            .await
            .unwrap();
        assert!(first.starts_with(r#"{"event":"snapshot""#), "{first}");
        let codes: Vec<(String, ResultCode)> = (0..BACKLOG * 4)
            .map(|i| (i.to_string(), ResultCode::Success))
            .collect();
        events.results(PKG, &codes, 0);
        let mut rest = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut lines, &mut rest)
            .await
            .unwrap();
        assert!(
            rest.lines().count() < codes.len(),
            "{}",
            rest.lines().count()
        );
    }
}
