//! The running server: its shared state, what it records, and the handle tests hold.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, PatchInfo};
use crate::faults::{Endpoint, Fault, FaultQueue};
use crate::tls::{TlsConfig, TlsError};
use crate::tokens::TokenStore;

/// Errors of starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("bad public url {url:?}: it must start with http:// or https://")]
    PublicUrl { url: String },
    #[error("cannot serve https: {0}")]
    Tls(#[from] TlsError),
}

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

/// A running mock update server, in the style of wiremock's `MockServer`.
///
/// It runs on the Tokio runtime that started it and stops when shut down or dropped.
#[derive(Debug)]
pub struct MockServer {
    address: SocketAddr,
    uri: String,
    state: Arc<AppState>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl MockServer {
    /// Starts a server for `catalog` on a free port of 127.0.0.1.
    pub async fn start(catalog: Catalog) -> Result<MockServer, ServerError> {
        MockServer::bind(catalog, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a server for `catalog` on `addr`; patch URLs use the address actually bound.
    pub async fn bind(catalog: Catalog, addr: SocketAddr) -> Result<MockServer, ServerError> {
        MockServer::bind_with_public_url(catalog, addr, None).await
    }

    /// Starts a server whose patch URLs begin with `public_url` instead of the bound address,
    /// for a server behind a forwarded port or on a wildcard address.
    pub async fn bind_with_public_url(
        catalog: Catalog,
        addr: SocketAddr,
        public_url: Option<&str>,
    ) -> Result<MockServer, ServerError> {
        MockServer::bind_inner(catalog, addr, public_url, None).await
    }

    /// Starts an HTTPS server for `catalog` on a free port of 127.0.0.1.
    pub async fn start_tls(catalog: Catalog, tls: TlsConfig) -> Result<MockServer, ServerError> {
        MockServer::bind_tls(catalog, SocketAddr::from(([127, 0, 0, 1], 0)), tls).await
    }

    /// Starts an HTTPS server for `catalog` on `addr`; [`MockServer::uri`] and the patch URLs
    /// begin with `https://`.
    pub async fn bind_tls(
        catalog: Catalog,
        addr: SocketAddr,
        tls: TlsConfig,
    ) -> Result<MockServer, ServerError> {
        MockServer::bind_inner(catalog, addr, None, Some(tls)).await
    }

    /// [`MockServer::bind_with_public_url`] over HTTPS.
    pub async fn bind_tls_with_public_url(
        catalog: Catalog,
        addr: SocketAddr,
        public_url: Option<&str>,
        tls: TlsConfig,
    ) -> Result<MockServer, ServerError> {
        MockServer::bind_inner(catalog, addr, public_url, Some(tls)).await
    }

    async fn bind_inner(
        catalog: Catalog,
        addr: SocketAddr,
        public_url: Option<&str>,
        tls: Option<TlsConfig>,
    ) -> Result<MockServer, ServerError> {
        // A bad certificate or key is refused before the port is taken.
        let acceptor = tls.as_ref().map(TlsConfig::acceptor).transpose()?;
        if let Some(url) = public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ServerError::PublicUrl {
                url: url.to_string(),
            });
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let address = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let uri = format!("{scheme}://{address}");
        let base_url = public_url
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| uri.clone());
        let state = Arc::new(AppState {
            token_get: AtomicBool::new(catalog.settings.token_get),
            catalog,
            base_url,
            tokens: Mutex::new(TokenStore::new()),
            faults: Mutex::new(FaultQueue::default()),
            callbacks: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
        });
        let app = crate::routes::router(Arc::clone(&state));
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, app, acceptor, stop.clone()));
        log::info!("mock update server listening on {uri}");
        Ok(MockServer {
            address,
            uri,
            state,
            stop,
            task: Some(task),
        })
    }

    /// The server's base URL, e.g. `http://127.0.0.1:40123`, without a trailing slash.
    pub fn uri(&self) -> String {
        self.uri.clone()
    }

    /// The address the server listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The catalog the server answers from.
    pub fn catalog(&self) -> &Catalog {
        &self.state.catalog
    }

    /// Every callback received so far, oldest first.
    pub fn callbacks(&self) -> Vec<CallbackRecord> {
        self.state.callbacks()
    }

    /// Every request answered or being answered, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.requests()
    }

    /// Adds a fault; faults are used in the order they were added.
    ///
    /// # Panics
    ///
    /// If the fault is invalid (see [`Fault::check`]): a test that asks for the impossible
    /// should fail at once rather than pass without its fault.
    pub fn inject(&self, fault: Fault) {
        if let Err(e) = fault.check() {
            panic!("cannot inject {fault:?}: {e}");
        }
        self.state.faults().push(fault);
    }

    /// Answers every request for `instead_of`'s patch, metadata and signature with `served`'s,
    /// until [`MockServer::clear_faults`]: a replay of an older, validly signed patch.
    pub fn replay_patch(&self, served: &PatchInfo, instead_of: &PatchInfo) {
        // The signature's path contains the metadata's, so its fault must come first to be the
        // one that matches it.
        let mut faults = self.state.faults();
        for (endpoint, path, requested) in [
            (
                Endpoint::Patch,
                served.url_path.clone(),
                instead_of.url_path.clone(),
            ),
            (
                Endpoint::Metadata,
                served.sig_url_path(),
                instead_of.sig_url_path(),
            ),
            (
                Endpoint::Metadata,
                served.meta_url_path(),
                instead_of.meta_url_path(),
            ),
        ] {
            faults.push(
                Fault::serve_instead(endpoint, &path)
                    .path_contains(&requested)
                    .times(u32::MAX),
            );
        }
    }

    /// Removes every pending fault.
    pub fn clear_faults(&self) {
        self.state.faults().clear();
    }

    /// Revokes every access and refresh token.
    pub fn revoke_tokens(&self) {
        self.state.tokens().revoke_all();
    }

    /// Revokes one access or refresh token and its pair; false if it was not live.
    pub fn revoke_token(&self, token: &str) -> bool {
        self.state.tokens().revoke(token)
    }

    /// Chooses whether `GET /oauth/token` works or answers 405.
    pub fn set_token_get_allowed(&self, allowed: bool) {
        self.state.set_token_get_allowed(allowed);
    }

    /// Moves the token clock forward, so tokens expire without waiting.
    pub fn advance_token_clock(&self, by: Duration) {
        self.state.tokens().advance(by);
    }

    /// Stops accepting connections, ends open ones and waits for the server task.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn(crate::conn::serve(
                        stream,
                        peer,
                        app.clone(),
                        tls.clone(),
                        stop.clone(),
                    ));
                }
                Err(e) => {
                    // Running out of file descriptors is the usual cause; pausing avoids a
                    // busy loop while it lasts.
                    log::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}
