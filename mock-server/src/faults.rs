//! Injected faults: what a test asks for, and the response body that carries the fault out.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, SizeHint};
use serde::{Deserialize, Serialize};

use crate::conn::ConnControl;

/// The endpoints a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `/oauth/token`.
    Token,
    /// `/file/download`, the patch list.
    Download,
    /// `/file/callback`.
    Callback,
    /// The patch files under `/version/`.
    Patch,
    /// The signed metadata next to each patch: `<patch>.meta.json` and `<patch>.meta.json.sig`.
    Metadata,
}

impl std::fmt::Display for Endpoint {
    /// The endpoint's name in JSON.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Endpoint::Token => "token",
            Endpoint::Download => "download",
            Endpoint::Callback => "callback",
            Endpoint::Patch => "patch",
            Endpoint::Metadata => "metadata",
        })
    }
}

impl Endpoint {
    /// The endpoint a request path belongs to, if any.
    pub(crate) fn of_path(path: &str) -> Option<Endpoint> {
        match path {
            "/oauth/token" => Some(Endpoint::Token),
            "/file/download" => Some(Endpoint::Download),
            "/file/callback" => Some(Endpoint::Callback),
            p if p.starts_with("/version/")
                && [
                    ".meta.json",
                    ".meta.json.sig",
                    ".latest.json",
                    ".latest.json.sig",
                ]
                .iter()
                .any(|end| p.ends_with(end)) =>
            {
                Some(Endpoint::Metadata)
            }
            p if p.starts_with("/version/") => Some(Endpoint::Patch),
            _ => None,
        }
    }
}

/// What goes wrong. Byte counts refer to the response body; `Corrupt` uses the offset within
/// the whole resource, so it also hits a resumed (ranged) download at the same place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Answers with this status, body and content type instead of the real answer.
    Status {
        status: u16,
        body: String,
        #[serde(default = "json_content_type")]
        content_type: String,
    },
    /// Waits this long, then answers normally.
    #[serde(rename = "delay_ms", with = "millis")]
    Delay(Duration),
    /// Sends the headers (with the full `Content-Length`) and `after` body bytes, then closes
    /// the connection.
    Truncate { after: u64 },
    /// Sends `after` body bytes, pauses, then sends the rest.
    Stall {
        after: u64,
        #[serde(rename = "pause_ms", with = "millis")]
        pause: Duration,
    },
    /// Sends `after` body bytes, pauses, then closes the connection.
    StallThenClose {
        after: u64,
        #[serde(rename = "pause_ms", with = "millis")]
        pause: Duration,
    },
    /// Flips every bit of the byte at this offset of the served resource.
    Corrupt { offset: u64 },
    /// Sends the body one byte at a time, each after this pause: a server (or a middlebox)
    /// that never falls silent for long enough to trip a read timeout, yet never finishes.
    #[serde(rename = "drip_ms", with = "millis")]
    Drip(Duration),
    /// Resets the TCP connection before any byte of the answer.
    Reset,
    /// Answers with another file the server serves under `/version/` (a patch or a sidecar,
    /// named by its URL path), as if it were the one asked for: a replayed patch. Only for the
    /// `patch` and `metadata` endpoints.
    ServeInstead { path: String },
}

/// Why a fault cannot be injected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("serve_instead works only on the patch and metadata endpoints, not {0}")]
    ServeInsteadEndpoint(Endpoint),
    #[error("serve_instead needs a path under /version/, not {0:?}")]
    ServeInsteadPath(String),
}

fn json_content_type() -> String {
    "application/json;charset=UTF-8".to_string()
}

fn one() -> u32 {
    1
}

/// A fault for the next `times` requests to `endpoint` whose path and query contain
/// `path_contains`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub endpoint: Endpoint,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_contains: Option<String>,
    #[serde(default = "one")]
    pub times: u32,
    pub kind: FaultKind,
}

impl Fault {
    /// A fault for the next request to `endpoint`.
    pub fn new(endpoint: Endpoint, kind: FaultKind) -> Fault {
        Fault {
            endpoint,
            path_contains: None,
            times: 1,
            kind,
        }
    }

    /// Applies the fault to the next `n` matching requests instead of one.
    pub fn times(mut self, n: u32) -> Fault {
        self.times = n;
        self
    }

    /// Applies the fault only to requests whose path and query contain `s`.
    pub fn path_contains(mut self, s: &str) -> Fault {
        self.path_contains = Some(s.to_string());
        self
    }

    /// Answers with `status` and the JSON `body`.
    pub fn status(endpoint: Endpoint, status: u16, body: &str) -> Fault {
        Fault::new(
            endpoint,
            FaultKind::Status {
                status,
                body: body.to_string(),
                content_type: json_content_type(),
            },
        )
    }

    /// Answers 200 with an HTML page, as a captive portal or a misconfigured proxy would.
    pub fn html(endpoint: Endpoint) -> Fault {
        Fault::new(
            endpoint,
            FaultKind::Status {
                status: 200,
                body: "<!DOCTYPE html><html><head><title>Login</title></head><body><h1>Please log in</h1></body></html>".to_string(),
                content_type: "text/html;charset=UTF-8".to_string(),
            },
        )
    }

    /// Answers requests to `endpoint` with the file the server serves at `path` instead.
    pub fn serve_instead(endpoint: Endpoint, path: &str) -> Fault {
        Fault::new(
            endpoint,
            FaultKind::ServeInstead {
                path: path.to_string(),
            },
        )
    }

    /// Checks that the kind of fault makes sense for its endpoint.
    pub fn check(&self) -> Result<(), FaultError> {
        if let FaultKind::ServeInstead { path } = &self.kind {
            if !matches!(self.endpoint, Endpoint::Patch | Endpoint::Metadata) {
                return Err(FaultError::ServeInsteadEndpoint(self.endpoint));
            }
            if !path.starts_with("/version/") {
                return Err(FaultError::ServeInsteadPath(path.clone()));
            }
        }
        Ok(())
    }

    fn matches(&self, endpoint: Endpoint, target: &str) -> bool {
        self.times > 0
            && self.endpoint == endpoint
            && self
                .path_contains
                .as_deref()
                .is_none_or(|s| target.contains(s))
    }
}

/// Pending faults, used in the order they were injected.
#[derive(Debug, Default)]
pub(crate) struct FaultQueue {
    faults: Vec<Fault>,
}

impl FaultQueue {
    pub(crate) fn push(&mut self, fault: Fault) {
        if fault.times > 0 {
            self.faults.push(fault);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.faults.clear();
    }

    /// Uses up one application of the first fault that matches the request.
    pub(crate) fn take(&mut self, endpoint: Endpoint, target: &str) -> Option<FaultKind> {
        let at = self
            .faults
            .iter()
            .position(|f| f.matches(endpoint, target))?;
        let fault = &mut self.faults[at];
        fault.times -= 1;
        let kind = fault.kind.clone();
        if fault.times == 0 {
            self.faults.remove(at);
        }
        Some(kind)
    }
}

/// The part of a fault that acts on the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFault {
    Truncate {
        after: u64,
    },
    Stall {
        after: u64,
        pause: Duration,
        close: bool,
    },
    Corrupt {
        offset: u64,
    },
    Drip {
        every: Duration,
    },
}

impl BodyFault {
    pub(crate) fn of(kind: &FaultKind) -> Option<BodyFault> {
        match *kind {
            FaultKind::Truncate { after } => Some(BodyFault::Truncate { after }),
            FaultKind::Stall { after, pause } => Some(BodyFault::Stall {
                after,
                pause,
                close: false,
            }),
            FaultKind::StallThenClose { after, pause } => Some(BodyFault::Stall {
                after,
                pause,
                close: true,
            }),
            FaultKind::Corrupt { offset } => Some(BodyFault::Corrupt { offset }),
            FaultKind::Drip(every) => Some(BodyFault::Drip { every }),
            _ => None,
        }
    }
}

/// A response body that counts the bytes it hands to the connection and carries out a body
/// fault.
pub(crate) struct FaultBody {
    inner: axum::body::Body,
    fault: Option<BodyFault>,
    emitted: u64,
    offset: u64,
    sent: Arc<AtomicU64>,
    conn: Arc<ConnControl>,
    held: Option<Bytes>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    closing: bool,
}

impl std::fmt::Debug for FaultBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultBody")
            .field("fault", &self.fault)
            .field("emitted", &self.emitted)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl FaultBody {
    /// Wraps `inner`, whose first byte is at `offset` of the resource.
    pub(crate) fn new(
        inner: axum::body::Body,
        fault: Option<BodyFault>,
        offset: u64,
        sent: Arc<AtomicU64>,
        conn: Arc<ConnControl>,
    ) -> FaultBody {
        FaultBody {
            inner,
            fault,
            emitted: 0,
            offset,
            sent,
            conn,
            held: None,
            pause: None,
            closing: false,
        }
    }

    /// The next byte of the body once `every` has passed since the last one.
    fn drip(
        &mut self,
        every: Duration,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let pause = self
            .pause
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
        ready!(pause.as_mut().poll(cx));
        self.pause = None;
        let mut chunk = match self.held.take() {
            Some(chunk) => chunk,
            None => match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            },
        };
        if chunk.len() > 1 {
            self.held = Some(chunk.split_off(1));
        }
        let n = chunk.len() as u64;
        self.emitted += n;
        self.offset += n;
        self.sent.fetch_add(n, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn close(&mut self) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        // The connection closes once hyper has flushed what was sent so far; until then the
        // body simply has nothing more to give.
        self.closing = true;
        self.conn.close_after_flush();
        Poll::Pending
    }
}

impl Body for FaultBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if this.closing {
            return Poll::Pending;
        }
        if let Some(BodyFault::Drip { every }) = this.fault {
            return this.drip(every, cx);
        }
        if let Some(pause) = &mut this.pause {
            ready!(pause.as_mut().poll(cx));
            this.pause = None;
            if let Some(BodyFault::Stall { close: true, .. }) = this.fault.take() {
                return this.close();
            }
        }
        let cut = match this.fault {
            Some(BodyFault::Truncate { after } | BodyFault::Stall { after, .. }) => Some(after),
            _ => None,
        };
        if cut == Some(this.emitted) {
            match this.fault {
                Some(BodyFault::Stall { pause, .. }) => {
                    let mut sleep = Box::pin(tokio::time::sleep(pause));
                    if sleep.as_mut().poll(cx).is_pending() {
                        this.pause = Some(sleep);
                        return Poll::Pending;
                    }
                    if let Some(BodyFault::Stall { close: true, .. }) = this.fault.take() {
                        return this.close();
                    }
                }
                _ => return this.close(),
            }
        }
        let mut chunk = match this.held.take() {
            Some(chunk) => chunk,
            None => match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
            },
        };
        let cut = match this.fault {
            Some(BodyFault::Truncate { after } | BodyFault::Stall { after, .. }) => Some(after),
            _ => None,
        };
        if let Some(cut) = cut
            && this.emitted + chunk.len() as u64 > cut
        {
            let rest = chunk.split_off((cut - this.emitted) as usize);
            this.held = Some(rest);
        }
        if let Some(BodyFault::Corrupt { offset }) = this.fault
            && offset >= this.offset
            && offset < this.offset + chunk.len() as u64
        {
            let mut bytes = chunk.to_vec();
            bytes[(offset - this.offset) as usize] ^= 0xff;
            chunk = Bytes::from(bytes);
        }
        let n = chunk.len() as u64;
        this.emitted += n;
        this.offset += n;
        this.sent.fetch_add(n, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        !self.closing && self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.emitted == 0 && self.held.is_none() {
            self.inner.size_hint()
        } else {
            SizeHint::default()
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_round_trip_through_json() {
        let fault = Fault::new(
            Endpoint::Patch,
            FaultKind::Stall {
                after: 10,
                pause: Duration::from_millis(1500),
            },
        )
        .path_contains("--18--")
        .times(2);
        let json = serde_json::to_value(&fault).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"endpoint":"patch","path_contains":"--18--","times":2,
                "kind":{"stall":{"after":10,"pause_ms":1500}}})
        );
        assert_eq!(serde_json::from_value::<Fault>(json).unwrap(), fault);
        let reset: Fault = serde_json::from_str(r#"{"endpoint":"token","kind":"reset"}"#).unwrap();
        assert_eq!(reset, Fault::new(Endpoint::Token, FaultKind::Reset));
        let delay: Fault =
            serde_json::from_str(r#"{"endpoint":"download","kind":{"delay_ms":250}}"#).unwrap();
        assert_eq!(delay.kind, FaultKind::Delay(Duration::from_millis(250)));
        let instead: Fault = serde_json::from_str(
            r#"{"endpoint":"metadata","kind":{"serve_instead":{"path":"/version/a--17--b.patch.meta.json"}}}"#,
        )
        .unwrap();
        assert_eq!(
            instead,
            Fault::serve_instead(Endpoint::Metadata, "/version/a--17--b.patch.meta.json")
        );
        assert_eq!(instead.check(), Ok(()));
    }

    #[test]
    fn serve_instead_is_only_for_files_under_version() {
        assert_eq!(
            Fault::serve_instead(Endpoint::Token, "/version/a.patch").check(),
            Err(FaultError::ServeInsteadEndpoint(Endpoint::Token))
        );
        assert_eq!(
            Fault::serve_instead(Endpoint::Patch, "/oauth/token").check(),
            Err(FaultError::ServeInsteadPath("/oauth/token".to_string()))
        );
        assert_eq!(
            Fault::new(Endpoint::Token, FaultKind::Reset).check(),
            Ok(())
        );
    }

    #[test]
    fn sidecars_are_their_own_endpoint() {
        let patch = "/version/p/CN/N-1.1--17--f.patch";
        assert_eq!(Endpoint::of_path(patch), Some(Endpoint::Patch));
        for sidecar in [
            format!("{patch}.meta.json"),
            format!("{patch}.meta.json.sig"),
        ] {
            assert_eq!(Endpoint::of_path(&sidecar), Some(Endpoint::Metadata));
        }
        assert_eq!(Endpoint::of_path("/meta.json"), None);
    }

    #[test]
    fn queue_uses_faults_in_order_and_counts_them_down() {
        let mut queue = FaultQueue::default();
        queue.push(Fault::new(Endpoint::Patch, FaultKind::Reset).path_contains("--18--"));
        queue.push(Fault::new(Endpoint::Patch, FaultKind::Corrupt { offset: 3 }).times(2));
        assert_eq!(queue.take(Endpoint::Token, "/oauth/token"), None);
        assert_eq!(
            queue.take(Endpoint::Patch, "/version/a--17--b.patch"),
            Some(FaultKind::Corrupt { offset: 3 })
        );
        assert_eq!(
            queue.take(Endpoint::Patch, "/version/a--18--b.patch"),
            Some(FaultKind::Reset)
        );
        assert_eq!(
            queue.take(Endpoint::Patch, "/version/a--18--b.patch"),
            Some(FaultKind::Corrupt { offset: 3 })
        );
        assert_eq!(queue.take(Endpoint::Patch, "/version/a--18--b.patch"), None);
    }
}
