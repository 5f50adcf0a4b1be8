//! The edge to the update server: owns reqwest, the wire types and the token.
//!
//! Everything here speaks the contract of `docs/contract.md` and nothing more: which patches to
//! take, when to retry and what to report are decided by the cycle. URLs are logged redacted and
//! errors never carry a secret.

mod error;
mod fetch;
mod redirect;
mod response;
mod tls;
mod token;
mod wire;

use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::CONTENT_LENGTH;
use reqwest::{Method, StatusCode};

use crate::Shutdown;
use crate::config::Config;
use crate::redact;
use crate::store::ResultCode;
use error::transport;
use response::{header_u64, html_instead, is_html, read_limited, status_error};
use token::TokenCache;

pub use error::ClientError;
pub use fetch::Fetch;
pub use redirect::{host_forms, host_in, is_https, is_plain_http};
pub use wire::{CheckAnswer, OfferedPatch, TokenBody, parse_callback, parse_check, parse_token};

/// Largest JSON answer the agent reads; the contract's answers are a few hundred bytes.
const MAX_ANSWER: usize = 1024 * 1024;

/// What the server said to one callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// `100` or `101`: the result is registered.
    Accepted,
    /// `102`–`104`: the server will never take this callback; keeping it would block the outbox.
    Rejected(String),
}

/// The robot identity sent with every check.
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: String,
    pub version: String,
}

/// A check request: the seven parameters of `/file/download` minus the token.
#[derive(Debug, Clone)]
pub struct CheckRequest<'a> {
    pub package_name: &'a str,
    pub version: &'a str,
    pub file_name: &'a str,
    pub language: &'a str,
}

/// The update server as the agent sees it.
pub struct Client {
    /// For patches and their sidecars: redirects within `allowed_download_hosts`.
    http: reqwest::Client,
    /// For the token, the check and the callbacks: redirects within the server's origin only.
    api: reqwest::Client,
    base: String,
    robot: Identity,
    tokens: Mutex<TokenCache>,
    config_secrets: Vec<String>,
    /// The total time an API request (token, check, callback, a sidecar, a size) may take.
    request_timeout: Duration,
    /// Every request gives way to this: SIGTERM must not wait for a slow server.
    shutdown: Shutdown,
}

// Hand-written so that a debug print never shows the secrets the client holds.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("robot", &self.robot)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(config: &Config) -> Result<Client, ClientError> {
        // reqwest is built without a default TLS provider so that no C crypto library is linked.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = tls::client_config(&config.security).map_err(ClientError::TlsSetup)?;
        // No request says where it came from: a `Referer` would carry the previous URL's query,
        // and with it a token or the credentials, to whatever host a redirect names.
        let proxy = match config.server.proxy.as_deref() {
            None => None,
            Some("") => Some(None),
            Some(url) => Some(Some(reqwest::Proxy::all(url).map_err(|e| {
                ClientError::Invalid {
                    what: "server.proxy",
                    reason: e.to_string(),
                }
            })?)),
        };
        let builder = || {
            let b = reqwest::Client::builder()
                .user_agent(concat!("ota-agent/", env!("CARGO_PKG_VERSION")))
                .referer(false)
                .connect_timeout(config.server.connect_timeout.0)
                .read_timeout(config.server.read_timeout.0)
                .tls_backend_preconfigured(tls.clone());
            // Without the key, reqwest takes HTTPS_PROXY, HTTP_PROXY and NO_PROXY from the
            // environment; with it, the key alone decides.
            match &proxy {
                None => b,
                Some(None) => b.no_proxy(),
                Some(Some(p)) => b.no_proxy().proxy(p.clone()),
            }
        };
        let http = builder()
            .redirect(redirect::download_policy(
                config.security.allowed_download_hosts.clone(),
                host_forms(&config.server.url),
            ))
            .build()
            .map_err(|e| transport("http client", e))?;
        // The requests that carry credentials or a token stay with the server's own origin,
        // whatever the config allows for patches: a redirect elsewhere is an error.
        let api = builder()
            .redirect(redirect::api_policy(&config.server.url))
            .build()
            .map_err(|e| transport("http client", e))?;
        let robot_id = config.robot_id().map_err(|e| ClientError::Invalid {
            what: "robot id",
            reason: e.to_string(),
        })?;
        Ok(Client {
            http,
            api,
            base: config.server.url.trim_end_matches('/').to_owned(),
            robot: Identity {
                id: robot_id,
                version: config.robot.version.clone(),
            },
            tokens: Mutex::new(TokenCache::new(&config.server)),
            config_secrets: config.secrets(),
            request_timeout: config.server.request_timeout.0,
            shutdown: Shutdown::never(),
        })
    }

    /// Makes every request of this client end with [`ClientError::Stopped`] once `shutdown` is
    /// set, instead of waiting for the server.
    pub fn stop_on(&mut self, shutdown: Shutdown) {
        self.shutdown = shutdown;
    }

    /// Runs a request to its end, its deadline or the stop signal, whichever comes first.
    async fn bounded<T>(
        &self,
        what: &'static str,
        limit: Duration,
        work: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let mut stop = self.shutdown.clone();
        tokio::select! {
            out = tokio::time::timeout(limit, work) => {
                out.unwrap_or(Err(ClientError::Deadline { what, after: limit }))
            }
            () = stop.wait() => Err(ClientError::Stopped { what }),
        }
    }

    /// Every secret this client knows now, for masking text the server sent.
    fn secrets(&self) -> Vec<String> {
        let mut all = self.config_secrets.clone();
        all.extend(self.tokens.lock().expect("token lock").secrets());
        all
    }

    /// An answer the agent cannot use, as an error: `reason`, with every secret it may echo
    /// masked.
    fn unusable(&self, what: &'static str, reason: &str) -> ClientError {
        ClientError::Invalid {
            what,
            reason: redact::text(reason, &self.secrets()),
        }
    }

    /// Asks which patches the installed file needs.
    pub async fn check(&self, req: &CheckRequest<'_>) -> Result<CheckAnswer, ClientError> {
        let what = "check";
        let params = [
            ("package_name", req.package_name),
            ("version", req.version),
            ("file_name", req.file_name),
            ("language", req.language),
            ("robot_version", self.robot.version.as_str()),
            ("robot_id", self.robot.id.as_str()),
        ];
        let body = self
            .authed(what, Method::GET, "/file/download", &params)
            .await?;
        parse_check(&body).map_err(|reason| self.unusable(what, &reason))
    }

    /// Reports the result of one update id.
    pub async fn callback(&self, id: &str, code: ResultCode) -> Result<Ack, ClientError> {
        let what = "callback";
        let code = code.to_string();
        let params = [
            ("id", id),
            ("robot_id", self.robot.id.as_str()),
            ("code", code.as_str()),
        ];
        let body = self
            .authed(what, Method::POST, "/file/callback", &params)
            .await?;
        match parse_callback(&body) {
            Ok(code) if code == "100" || code == "101" => Ok(Ack::Accepted),
            Ok(code) if matches!(code.as_str(), "102" | "103" | "104") => Ok(Ack::Rejected(code)),
            Ok(code) => Err(ClientError::Code { what, code }),
            Err(reason) => Err(self.unusable(what, &reason)),
        }
    }

    /// The size of a patch, from a `HEAD` request; `None` when the server does not say.
    pub async fn patch_size(&self, url: &str) -> Result<Option<u64>, ClientError> {
        log::debug!("HEAD {}", redact::url(url));
        let resp = self
            .bounded("size", self.request_timeout, async {
                self.http
                    .head(url)
                    .send()
                    .await
                    .map_err(|e| transport("size", e))
            })
            .await?;
        if !resp.status().is_success() || is_html(&resp) {
            return Ok(None);
        }
        Ok(header_u64(&resp, CONTENT_LENGTH))
    }

    /// Fetches a small file next to a patch (its signed metadata); `None` when the server has
    /// none (404 or 410).
    pub async fn sidecar(&self, url: &str) -> Result<Option<Vec<u8>>, ClientError> {
        let what = "signed metadata";
        log::debug!("GET {}", redact::url(url));
        self.bounded(what, self.request_timeout, async {
            let resp = self
                .http
                .get(url)
                .send()
                .await
                .map_err(|e| transport(what, e))?;
            match resp.status() {
                StatusCode::NOT_FOUND | StatusCode::GONE => Ok(None),
                s if s.is_success() && is_html(&resp) => Err(html_instead(what)),
                s if s.is_success() => read_limited(what, resp, ota_signing::metadata::MAX_SIDECAR)
                    .await
                    .map(Some),
                status => Err(status_error(what, resp, status, &self.secrets()).await),
            }
        })
        .await
    }

    /// Sends `method` to `path` with `access_token` and `params` in the query, getting a new
    /// token and sending once more when the server refuses the one it got.
    async fn authed(
        &self,
        what: &'static str,
        method: Method,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}{path}", self.base);
        for attempt in 0..2 {
            let token = self.access_token().await?;
            let mut query = vec![("access_token", token.as_str())];
            query.extend_from_slice(params);
            let req = self
                .api
                .request(method.clone(), &url)
                .query(&query)
                .build()
                .map_err(|e| transport(what, e))?;
            log::debug!("{} {}", req.method(), redact::url(req.url().as_str()));
            let answer = self
                .bounded(what, self.request_timeout, async {
                    let resp = self
                        .api
                        .execute(req)
                        .await
                        .map_err(|e| transport(what, e))?;
                    let status = resp.status();
                    if status.is_success() {
                        return read_limited(what, resp, MAX_ANSWER).await.map(Ok);
                    }
                    Ok(Err(status_error(what, resp, status, &self.secrets()).await))
                })
                .await?;
            let err = match answer {
                Ok(body) => return Ok(body),
                Err(err) => err,
            };
            // Every 401 on a call that carries a token says the token is dead: older Spring
            // servers say so in OAuth2 JSON (`invalid_token`), newer resource servers with an
            // empty body and `WWW-Authenticate: Bearer error="invalid_token"`.
            let dead_token = matches!(
                &err,
                ClientError::OAuth { status: 401, .. } | ClientError::Status { status: 401, .. }
            );
            if dead_token && attempt == 0 {
                log::info!("{what}: the server refused the access token; getting a new one");
                self.tokens.lock().expect("token lock").forget();
                continue;
            }
            return Err(err);
        }
        unreachable!("the loop returns on its second pass")
    }
}
