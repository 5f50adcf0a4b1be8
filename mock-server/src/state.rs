//! The state the handlers share: the catalog, tokens, pending faults, and the records of what
//! the server received.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::faults::FaultQueue;
use crate::tokens::TokenStore;

/// One call of `/file/callback`, as the robot sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackRecord {
    pub id: String,
    pub robot_id: String,
    pub code: String,
    /// When it arrived, in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// One request the server answered (admin requests are not recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    /// The raw query string, empty if there was none.
    pub query: String,
    /// The status sent, or 0 if the connection was reset before any answer.
    pub status: u16,
    /// Body bytes handed to the connection so far.
    pub bytes_sent: u64,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// When it arrived, in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// A request record that the response body keeps updating while it streams.
#[derive(Debug)]
pub(crate) struct LiveRecord {
    method: String,
    path: String,
    query: String,
    range: Option<String>,
    time_ms: u64,
    pub(crate) status: AtomicU16,
    pub(crate) bytes_sent: Arc<AtomicU64>,
}

impl LiveRecord {
    fn snapshot(&self) -> RequestRecord {
        RequestRecord {
            method: self.method.clone(),
            path: self.path.clone(),
            query: self.query.clone(),
            status: self.status.load(Ordering::SeqCst),
            bytes_sent: self.bytes_sent.load(Ordering::SeqCst),
            range: self.range.clone(),
            time_ms: self.time_ms,
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another request must not take the whole mock down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything the handlers share.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) catalog: Catalog,
    pub(crate) base_url: String,
    token_get: AtomicBool,
    tokens: Mutex<TokenStore>,
    faults: Mutex<FaultQueue>,
    callbacks: Mutex<Vec<CallbackRecord>>,
    requests: Mutex<Vec<Arc<LiveRecord>>>,
}

impl AppState {
    /// Fresh state for serving `catalog`, with patch URLs beginning with `base_url`.
    pub(crate) fn new(catalog: Catalog, base_url: String) -> AppState {
        AppState {
            token_get: AtomicBool::new(catalog.settings.token_get),
            catalog,
            base_url,
            tokens: Mutex::new(TokenStore::new()),
            faults: Mutex::new(FaultQueue::default()),
            callbacks: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn token_get_allowed(&self) -> bool {
        self.token_get.load(Ordering::SeqCst)
    }

    pub(crate) fn set_token_get_allowed(&self, allowed: bool) {
        self.token_get.store(allowed, Ordering::SeqCst);
    }

    pub(crate) fn tokens(&self) -> MutexGuard<'_, TokenStore> {
        lock(&self.tokens)
    }

    pub(crate) fn faults(&self) -> MutexGuard<'_, FaultQueue> {
        lock(&self.faults)
    }

    pub(crate) fn record_callback(&self, record: CallbackRecord) {
        lock(&self.callbacks).push(record);
    }

    pub(crate) fn callbacks(&self) -> Vec<CallbackRecord> {
        lock(&self.callbacks).clone()
    }

    pub(crate) fn record_request(
        &self,
        method: &str,
        path: &str,
        query: &str,
        range: Option<String>,
    ) -> Arc<LiveRecord> {
        let record = Arc::new(LiveRecord {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            range,
            time_ms: now_ms(),
            status: AtomicU16::new(0),
            bytes_sent: Arc::new(AtomicU64::new(0)),
        });
        lock(&self.requests).push(Arc::clone(&record));
        record
    }

    pub(crate) fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.requests).iter().map(|r| r.snapshot()).collect()
    }
}
