//! `ota-agent watch`: a client of the events socket that prints what it reads.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::schema::Event;
use crate::redact::printable;

/// Why `ota-agent watch` failed: no agent to connect to, a read or a write that failed, or an
/// agent that turned it away or dropped it.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("cannot connect to the agent's events at {path} (is the agent running?)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the agent's events from {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the events")]
    Write(#[source] std::io::Error),
    #[error("the agent closed the connection: {reason}")]
    Closed { reason: String },
}

/// `ota-agent watch`: prints the events of the socket at `path` to `out` until the agent closes
/// it, as they come (`json`) or as a line of text each.
pub fn watch(path: &Path, json: bool, out: &mut dyn Write) -> Result<(), EventsError> {
    let stream =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| EventsError::Connect {
            path: path.to_owned(),
            source,
        })?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader
            .read_line(&mut line)
            .map_err(|source| EventsError::Read {
                path: path.to_owned(),
                source,
            })?;
        if n == 0 {
            return Ok(());
        }
        let raw = line.trim_end();
        let event = serde_json::from_str::<Event>(raw);
        if let Ok(Event::Closed { reason, .. }) = &event {
            return Err(EventsError::Closed {
                reason: printable(reason).into_owned(),
            });
        }
        let text = match event {
            Ok(event) if !json => event.to_text(),
            // A newer agent's event, or the raw lines asked for (JSON holds no raw control
            // character; a line that is not JSON is escaped like any outside text).
            _ => printable(raw).into_owned(),
        };
        if !text.is_empty() {
            writeln!(out, "{text}").map_err(EventsError::Write)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::schema::line;

    #[test]
    fn watch_fails_when_the_agent_turns_it_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let closed = Event::Closed {
                at_unix: 0,
                reason: "32 clients are connected already".into(),
            };
            std::io::Write::write_all(&mut stream, line(&closed).as_bytes()).unwrap();
        });
        let err = watch(&path, false, &mut Vec::new()).unwrap_err();
        server.join().unwrap();
        assert_eq!(
            err.to_string(),
            "the agent closed the connection: 32 clients are connected already"
        );
    }

    /// What `watch` prints of a socket that sends `line` and closes.
    fn watched(line: &'static [u8], json: bool) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            std::io::Write::write_all(&mut stream, line).unwrap();
        });
        let mut out = Vec::new();
        watch(&path, json, &mut out).unwrap();
        server.join().unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn watch_escapes_a_line_that_is_no_event() {
        for json in [false, true] {
            let out = watched(b"not an event \x1b[8m hidden \x07\r\n", json);
            assert!(out.contains("not an event"), "{out}");
            assert!(!out.contains(['\u{1b}', '\u{7}']), "{out:?}");
        }
    }
}
