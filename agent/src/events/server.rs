//! The events socket as a local service for apps the vendor did not write. A client has
//! nothing to say: one that writes is dropped. One that leaves what it was sent unread for
//! [`UNREAD_LIMIT`] is dropped, as is one that falls [`super::BACKLOG`] events behind or takes
//! a line for longer than [`super::WRITE_TIMEOUT`]. One user (by `SO_PEERCRED`) has at most
//! [`PER_USER`] clients at once, and the last [`ROOT_RESERVE`] of the [`MAX_CLIENTS`] places
//! are root's, so that an administrator's `ota-agent watch` gets in whatever the apps do. A
//! user whose client was dropped waits [`PENALTY`] before it is served again, and refusals
//! are paced ([`REFUSE_BURST`] in a row, then a pause), so that a loop of them can neither keep
//! the agent's one runtime thread busy nor keep root waiting behind them for long. A client
//! turned away or dropped is told why, in a `closed` event, when it still reads. A client that closed is noticed within
//! seconds even while the agent is quiet, so a closed `watch` holds no place.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;

use super::schema::{Event, line};
use super::{Inner, WRITE_TIMEOUT};
use crate::unix_now;

/// Clients at once.
pub const MAX_CLIENTS: usize = 32;
/// Of [`MAX_CLIENTS`], the places only root may take.
pub const ROOT_RESERVE: usize = 4;
/// Clients one user other than root may have at once.
pub const PER_USER: usize = 4;
/// How long a client may leave what it was sent unread.
pub const UNREAD_LIMIT: Duration = Duration::from_secs(30);
/// How long a user whose client wrote, or did not read, is turned away.
pub const PENALTY: Duration = Duration::from_secs(10);
/// How often a client's unread bytes are looked at.
const UNREAD_EVERY: Duration = Duration::from_secs(5);
/// The listener's pause after [`REFUSE_BURST`] clients turned away in a row: at most 800
/// refusals a second, so a loop of connections costs little CPU (under 4 % of a core,
/// measured), and a queue of them drains in about a second per 800, so root's `watch` behind
/// them gets in.
const REFUSE_PAUSE: Duration = Duration::from_millis(20);
const REFUSE_BURST: u32 = 16;

/// Who holds the places, and who is turned away until when.
#[derive(Debug, Default)]
struct Places {
    per_user: HashMap<u32, usize>,
    penalty: HashMap<u32, Instant>,
}

type Shared = Arc<Mutex<Places>>;

fn lock(places: &Shared) -> std::sync::MutexGuard<'_, Places> {
    places.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A client's place; given back when dropped.
#[derive(Debug)]
struct Place {
    uid: u32,
    places: Shared,
}

impl std::ops::Drop for Place {
    fn drop(&mut self) {
        let mut places = lock(&self.places);
        if let Some(n) = places.per_user.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                places.per_user.remove(&self.uid);
            }
        }
    }
}

pub(super) fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    // A socket left by an agent that did not stop cleanly. No other agent is using it: the
    // state directory's lock, taken before, says so.
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    // Any app may connect: the socket only speaks, says nothing secret, and its limits keep
    // one app from locking out the others (see the module's doc).
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

pub(super) async fn listen(listener: UnixListener, inner: Arc<Inner>) {
    let places = Shared::default();
    let mut refused_in_a_row = 0;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait for some to be freed rather than spin.
                log::warn!("events socket: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let uid = stream.peer_cred().map_or(u32::MAX, |c| c.uid());
        match admit(&places, uid) {
            Ok(place) => {
                refused_in_a_row = 0;
                let (snapshot, rx) = inner.subscribe();
                tokio::spawn(serve_client(stream, snapshot, rx, place));
            }
            Err(reason) => {
                log::debug!("events socket: turning a client of uid {uid} away: {reason}");
                say_closed(&stream, &reason);
                drop(stream);
                refused_in_a_row += 1;
                if refused_in_a_row % REFUSE_BURST == 0 {
                    tokio::time::sleep(REFUSE_PAUSE).await;
                }
            }
        }
    }
}

fn admit(places: &Shared, uid: u32) -> Result<Place, String> {
    let mut p = lock(places);
    let total: usize = p.per_user.values().sum();
    let now = Instant::now();
    p.penalty.retain(|_, until| *until > now);
    if total >= MAX_CLIENTS {
        return Err(format!("{MAX_CLIENTS} clients are connected already"));
    }
    if uid != 0 {
        if total >= MAX_CLIENTS - ROOT_RESERVE {
            return Err(format!("the last {ROOT_RESERVE} places are kept for root"));
        }
        if p.penalty.contains_key(&uid) {
            return Err(
                "a client of this user wrote to the socket or read nothing; try again later".into(),
            );
        }
        if p.per_user.get(&uid).copied().unwrap_or(0) >= PER_USER {
            return Err(format!(
                "this user has {PER_USER} clients connected already"
            ));
        }
    }
    *p.per_user.entry(uid).or_insert(0) += 1;
    Ok(Place {
        uid,
        places: places.clone(),
    })
}

/// Tells a client why its connection ends, if it has room to hear it; never waits.
fn say_closed(stream: &UnixStream, reason: &str) {
    let closed = Event::Closed {
        at_unix: unix_now(),
        reason: reason.to_owned(),
    };
    let _ = stream.try_write(line(&closed).as_bytes());
}

async fn serve_client(
    mut stream: UnixStream,
    snapshot: Arc<str>,
    rx: broadcast::Receiver<Arc<str>>,
    place: Place,
) {
    let fd = stream.as_raw_fd();
    let Some(reason) = serve(&mut stream, fd, snapshot, rx).await else {
        return;
    };
    // Whatever the reason (it wrote, it read nothing, it could not keep up), its user waits
    // before it is served again: a loop of such clients costs the agent nothing.
    let until = Instant::now() + PENALTY;
    lock(&place.places).penalty.insert(place.uid, until);
    log::debug!(
        "events socket: dropping a client of uid {}: {reason}",
        place.uid
    );
    say_closed(&stream, &reason);
    // What the client wrote is taken off the socket (a little, never waiting): a socket closed
    // with unread bytes resets the connection, and the client would not read why.
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        if !matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {
            break;
        }
    }
}

/// Sends `snapshot` and every event after it until the client or the agent goes (`None`), or
/// the client must be dropped.
async fn serve(
    stream: &mut UnixStream,
    fd: RawFd,
    snapshot: Arc<str>,
    mut rx: broadcast::Receiver<Arc<str>>,
) -> Option<String> {
    let (mut read, mut write) = stream.split();
    let mut byte = [0u8; 1];
    // Reading tells when a client has gone, however long the agent stays quiet; a client that
    // only closed its writing side still gets the events.
    let mut reading = true;
    let mut ticker = tokio::time::interval(UNREAD_EVERY);
    let mut unread_since: Option<Instant> = None;
    let mut next = Ok(snapshot);
    loop {
        let text = match next {
            Ok(text) => text,
            Err(RecvError::Lagged(n)) => {
                return Some(format!("it fell {n} events behind"));
            }
            Err(RecvError::Closed) => return None,
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(text.as_bytes())).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return None,
            Err(_) => return Some("it took no event for 10 s".into()),
        }
        next = loop {
            tokio::select! {
                line = rx.recv() => break line,
                n = read.read(&mut byte), if reading => match n {
                    Ok(0) => reading = false,
                    Ok(_) => return Some("a client has nothing to say, and it wrote".into()),
                    Err(_) => return None,
                },
                _ = ticker.tick() => {
                    // A client gone while the agent is quiet shows only here: its end of the
                    // socket hung up (a client that only closed its writing side has not).
                    if hung_up(fd) {
                        return None;
                    }
                    if unread_bytes(fd) == 0 {
                        unread_since = None;
                    } else if unread_since.get_or_insert_with(Instant::now).elapsed() >= UNREAD_LIMIT {
                        return Some(format!(
                            "it left what it was sent unread for {} s",
                            UNREAD_LIMIT.as_secs()
                        ));
                    }
                }
            }
        };
    }
}

/// True once the client closed its end of the socket `fd` (both directions).
#[allow(unsafe_code)]
fn hung_up(fd: RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: one pollfd, alive for the call, and a zero timeout: poll only reads and writes it.
    let rc = unsafe { libc::poll(&mut poll, 1, 0) };
    rc > 0 && poll.revents & libc::POLLHUP != 0
}

/// Bytes this end sent on the socket `fd` that the client has not read yet.
#[allow(unsafe_code)]
fn unread_bytes(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one c_int through the pointer, which points to `n`,
    // alive for the call; `fd` is the open socket of the caller's stream.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    if rc == 0 {
        usize::try_from(n).unwrap_or(0)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Events;
    use tokio::io::AsyncBufReadExt;

    #[test]
    fn each_user_is_capped_and_the_last_places_are_roots() {
        let places = Shared::default();
        let mut held = Vec::new();
        for _ in 0..PER_USER {
            held.push(admit(&places, 1000).unwrap());
        }
        assert!(admit(&places, 1000).unwrap_err().contains("this user"));
        let mut uid = 1001;
        while held.len() < MAX_CLIENTS - ROOT_RESERVE {
            held.push(admit(&places, uid).unwrap_or_else(|_| {
                uid += 1;
                admit(&places, uid).unwrap()
            }));
        }
        assert!(admit(&places, 4242).unwrap_err().contains("kept for root"));
        for _ in 0..ROOT_RESERVE {
            held.push(admit(&places, 0).unwrap());
        }
        assert!(admit(&places, 0).unwrap_err().contains("connected already"));
        held.truncate(MAX_CLIENTS - ROOT_RESERVE - 1);
        assert!(
            admit(&places, 4242).is_ok(),
            "a place given back is free again"
        );
    }

    /// A client of the socket of a fresh publisher, with the first line read.
    async fn client() -> (tempfile::TempDir, Events, tokio::io::BufReader<UnixStream>) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("events.sock");
        let events = Events::serve(&path);
        let stream = UnixStream::connect(&path).await.unwrap();
        (tmp, events, tokio::io::BufReader::new(stream))
    }

    async fn next_line(reader: &mut tokio::io::BufReader<UnixStream>) -> String {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        line
    }

    #[tokio::test]
    async fn a_client_that_writes_is_dropped_and_told_why() {
        let (_tmp, _events, mut reader) = client().await;
        assert!(next_line(&mut reader).await.contains("snapshot"));
        reader.get_mut().write_all(b"hello").await.unwrap();
        let closed = next_line(&mut reader).await;
        assert!(closed.contains(r#""event":"closed""#), "{closed}");
        assert!(closed.contains("nothing to say"), "{closed}");
        assert_eq!(next_line(&mut reader).await, "", "then the connection ends");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_closed_gives_its_place_back_while_the_agent_is_quiet() {
        // A `watch` ended with Ctrl-C held its place until the agent next had something to
        // say (up to a poll interval): enough of them locked everyone out, root included.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("events.sock");
        let _events = Events::serve(&path);
        for _ in 0..MAX_CLIENTS {
            let stream = UnixStream::connect(&path).await.unwrap();
            let mut reader = tokio::io::BufReader::new(stream);
            assert!(next_line(&mut reader).await.contains("snapshot"));
        }
        tokio::time::sleep(UNREAD_EVERY * 2).await;
        let stream = UnixStream::connect(&path).await.unwrap();
        let mut reader = tokio::io::BufReader::new(stream);
        let first = next_line(&mut reader).await;
        assert!(first.contains("snapshot"), "{first}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_nothing_is_dropped() {
        let (_tmp, _events, mut reader) = client().await;
        // Nothing is read for longer than the limit (virtual time)...
        tokio::time::sleep(UNREAD_LIMIT + UNREAD_EVERY * 2).await;
        // ...and what waits unread is the snapshot, then the reason, then the end (within the
        // virtual hour: without the limit the connection stays open for good).
        let read = async {
            assert!(next_line(&mut reader).await.contains("snapshot"));
            let closed = next_line(&mut reader).await;
            assert!(closed.contains("unread"), "{closed}");
            assert_eq!(next_line(&mut reader).await, "");
        };
        tokio::time::timeout(Duration::from_secs(3600), read)
            .await
            .expect("the client was never dropped");
    }
}
