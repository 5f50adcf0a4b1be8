//! The running server: the handle tests hold and the loop that accepts its connections.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::catalog::{Catalog, PatchInfo};
use crate::faults::{Endpoint, Fault};
use crate::state::{AppState, CallbackRecord, RequestRecord};
use crate::tls::{TlsConfig, TlsError};
use crate::{conn, routes};

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
        let state = Arc::new(AppState::new(catalog, base_url));
        let app = routes::router(Arc::clone(&state));
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
                    connections.spawn(conn::serve(
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
