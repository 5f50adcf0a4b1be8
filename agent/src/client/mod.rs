//! The edge to the update server: owns reqwest, the wire types and the token.
//!
//! Everything here speaks the contract of `docs/contract.md` and nothing more: which patches to
//! take, when to retry and what to report are decided by the cycle. URLs are logged redacted and
//! errors never carry a secret.

mod tls;
mod token;
mod wire;

use std::sync::Mutex;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{
    CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE, RETRY_AFTER,
};

use crate::Shutdown;
use crate::config::Config;
use crate::redact;
use crate::store::ResultCode;
pub use wire::{CheckAnswer, OfferedPatch, TokenBody, parse_callback, parse_check, parse_token};

use token::TokenCache;

/// Largest JSON answer the agent reads; the contract's answers are a few hundred bytes.
const MAX_ANSWER: usize = 1024 * 1024;
/// Largest error body the agent reads.
const MAX_ERROR_BODY: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{what}: request failed")]
    Transport {
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what}: server answered HTTP {status}{detail}")]
    Status {
        what: &'static str,
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("{what}: refused with `{error}`{detail}")]
    OAuth {
        what: &'static str,
        status: u16,
        error: String,
        detail: String,
    },
    #[error("{what}: cannot use the answer: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("{what}: server answered code {code}")]
    Code { what: &'static str, code: String },
    #[error("{what}: answer is larger than {limit} bytes")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("cannot set up TLS: {0}")]
    TlsSetup(String),
    #[error("{what}: no answer within {after:?}")]
    Deadline { what: &'static str, after: Duration },
    #[error("{what}: stopped by a signal")]
    Stopped { what: &'static str },
    #[error("{what}: the server sent a web page (text/html), not the file: a captive portal?")]
    WebPage { what: &'static str },
}

impl ClientError {
    /// How long the server asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// True when the server could not be reached at all (a certificate it presented and the
    /// agent refused is not that: it is a server, just not a trusted one).
    pub fn is_connect(&self) -> bool {
        matches!(self, ClientError::Transport { source, .. } if source.is_connect())
            && !self.is_tls()
    }

    /// True when TLS refused the peer: an untrusted certificate or a pin mismatch.
    pub fn is_tls(&self) -> bool {
        let ClientError::Transport { source, .. } = self else {
            return false;
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
        while let Some(e) = cause {
            if is_rustls(e) {
                return true;
            }
            cause = e.source();
        }
        false
    }

    /// True when TLS refused a certificate only because it is not valid yet: on a robot without
    /// a clock battery that says the clock is behind, and the same request succeeds once the
    /// clock is set. Never a verdict on the update.
    pub fn is_clock_behind(&self) -> bool {
        use rustls::{CertificateError, Error};
        let ClientError::Transport { source, .. } = self else {
            return false;
        };
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
        while let Some(e) = cause {
            if let Some(Error::InvalidCertificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
            )) = rustls_error(e)
            {
                return true;
            }
            cause = e.source();
        }
        false
    }

    /// True for an HTTP 4xx other than 408 and 429, in either of the server's error shapes.
    pub fn is_client_error(&self) -> bool {
        match self {
            ClientError::Status { status, .. } | ClientError::OAuth { status, .. } => {
                refusal(*status)
            }
            _ => false,
        }
    }

    /// True when repeating the same request cannot help: a 4xx other than 408 and 429, in
    /// either of the server's error shapes (Spring's own error page has an `error` key too).
    pub fn is_permanent(&self) -> bool {
        self.is_client_error() || matches!(self, ClientError::TooLarge { .. })
    }
}

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
pub struct Robot {
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

/// A patch download in flight.
#[derive(Debug)]
pub struct Fetch {
    response: Option<reqwest::Response>,
    /// Where the body starts in the file: the resume offset on a matching `206`, else zero.
    pub offset: u64,
    /// The whole patch's size, when the server said it.
    pub total: Option<u64>,
    /// What a later `If-Range` may name: a strong ETag, or else `Last-Modified`.
    pub validator: Option<String>,
}

impl Fetch {
    /// The next piece of the body, `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, ClientError> {
        let Some(resp) = self.response.as_mut() else {
            return Ok(None);
        };
        resp.chunk().await.map_err(|e| transport("download", e))
    }
}

/// The update server as the agent sees it.
pub struct Client {
    /// For patches and their sidecars: redirects within `allowed_download_hosts`.
    http: reqwest::Client,
    /// For the token, the check and the callbacks: redirects within the server's origin only.
    api: reqwest::Client,
    base: String,
    robot: Robot,
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
        let allowed = config.security.allowed_download_hosts.clone();
        let server = host_forms(&config.server.url);
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
            .redirect(reqwest::redirect::Policy::custom(
                move |attempt| match redirect_refusal(
                    attempt.previous(),
                    attempt.url(),
                    allowed.as_deref(),
                    server.as_ref(),
                ) {
                    Some(reason) => attempt.error(reason),
                    None => attempt.follow(),
                },
            ))
            .build()
            .map_err(|e| transport("http client", e))?;
        // The requests that carry credentials or a token stay with the server's own origin,
        // whatever the config allows for patches: a redirect elsewhere is an error.
        let origin = origin_of(&config.server.url);
        let api =
            builder()
                .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                    match api_redirect_refusal(attempt.previous(), attempt.url(), origin.as_ref()) {
                        Some(reason) => attempt.error(reason),
                        None => attempt.follow(),
                    }
                }))
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
            robot: Robot {
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

    /// Asks which patches the installed file needs.
    pub async fn check(&self, req: &CheckRequest<'_>) -> Result<CheckAnswer, ClientError> {
        let what = "check";
        let body = self
            .authed(what, |token| {
                self.api
                    .get(format!("{}/file/download", self.base))
                    .query(&[
                        ("access_token", token),
                        ("package_name", req.package_name),
                        ("version", req.version),
                        ("file_name", req.file_name),
                        ("language", req.language),
                        ("robot_version", self.robot.version.as_str()),
                        ("robot_id", self.robot.id.as_str()),
                    ])
            })
            .await?;
        parse_check(&body).map_err(|reason| ClientError::Invalid {
            what,
            reason: redact::text(&reason, &self.secrets()),
        })
    }

    /// Reports the result of one update id.
    pub async fn callback(&self, id: &str, code: ResultCode) -> Result<Ack, ClientError> {
        let what = "callback";
        let code = code.to_string();
        let body = self
            .authed(what, |token| {
                self.api
                    .post(format!("{}/file/callback", self.base))
                    .query(&[
                        ("access_token", token),
                        ("id", id),
                        ("robot_id", self.robot.id.as_str()),
                        ("code", code.as_str()),
                    ])
            })
            .await?;
        match parse_callback(&body) {
            Ok(code) if code == "100" || code == "101" => Ok(Ack::Accepted),
            Ok(code) if matches!(code.as_str(), "102" | "103" | "104") => Ok(Ack::Rejected(code)),
            Ok(code) => Err(ClientError::Code { what, code }),
            Err(reason) => Err(ClientError::Invalid {
                what,
                reason: redact::text(&reason, &self.secrets()),
            }),
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

    /// Starts (or resumes, when `offset > 0` and a validator is known) the download of a patch.
    ///
    /// A `206` is trusted only when its `Content-Range` starts exactly at `offset` and it
    /// carries what the first answer said of the file (RFC 9110 §14.4): the same strong ETag
    /// (or date), and the same total size when `total` is known. A server that ignores
    /// `If-Range` would otherwise splice two versions of the file. A `200` means the body starts
    /// over at zero. The answer's headers must arrive within the request timeout; the body is
    /// the caller's to pace.
    pub async fn fetch(
        &self,
        url: &str,
        offset: u64,
        validator: Option<&str>,
        total: Option<u64>,
    ) -> Result<Fetch, ClientError> {
        let what = "download";
        let mut req = self.http.get(url);
        let resuming = offset > 0 && validator.is_some();
        if let (true, Some(tag)) = (resuming, validator) {
            req = req
                .header(RANGE, format!("bytes={offset}-"))
                .header(IF_RANGE, tag);
        }
        log::debug!(
            "GET {}{}",
            redact::url(url),
            if resuming {
                format!(" from byte {offset}")
            } else {
                String::new()
            }
        );
        let resp = self
            .bounded(what, self.request_timeout, async {
                req.send().await.map_err(|e| transport(what, e))
            })
            .await?;
        let recorded = validator;
        let recorded_total = total;
        let validator = validator_of(&resp);
        let length = header_u64(&resp, CONTENT_LENGTH);
        if resp.status().is_success() && is_html(&resp) {
            return Err(html_instead(what));
        }
        match resp.status() {
            StatusCode::OK => Ok(Fetch {
                total: length,
                response: Some(resp),
                offset: 0,
                validator,
            }),
            StatusCode::PARTIAL_CONTENT if resuming => {
                let range = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok());
                let same_file = validator.as_deref() == recorded;
                match range.and_then(parse_content_range) {
                    Some((Some((_, _)), Some(t))) if recorded_total.is_some_and(|r| r != t) => {
                        Err(ClientError::Invalid {
                            what,
                            reason: format!(
                                "a 206 for a {t}-byte file, but the file was {} bytes: it changed",
                                recorded_total.unwrap_or_default()
                            ),
                        })
                    }
                    Some((Some(_), _)) if !same_file => Err(ClientError::Invalid {
                        what,
                        reason: format!(
                            "a 206 whose validator {validator:?} is not the recorded {recorded:?}: the file changed"
                        ),
                    }),
                    Some((Some((start, end)), total))
                        if start == offset
                            && total.is_none_or(|t| end.checked_add(1) == Some(t)) =>
                    {
                        Ok(Fetch {
                            total: total.or(length.and_then(|l| offset.checked_add(l))),
                            response: Some(resp),
                            offset,
                            validator,
                        })
                    }
                    _ => Err(ClientError::Invalid {
                        what,
                        reason: format!(
                            "a 206 whose Content-Range {range:?} does not start at byte {offset}"
                        ),
                    }),
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE if resuming => {
                let range = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok());
                match range.and_then(parse_content_range) {
                    // The partial file already holds the whole patch.
                    Some((None, Some(total))) if total == offset => Ok(Fetch {
                        response: None,
                        offset,
                        total: Some(total),
                        validator,
                    }),
                    _ => Err(ClientError::Invalid {
                        what,
                        reason: format!(
                            "416 with Content-Range {range:?} for a resume at byte {offset}"
                        ),
                    }),
                }
            }
            // The error page is read within the deadline too: a server may drip it.
            status => Err(self
                .bounded(what, self.request_timeout, async {
                    Ok(status_error(what, resp, status, &self.secrets()).await)
                })
                .await
                .unwrap_or_else(|e| e)),
        }
    }

    /// Sends a request that carries `access_token`, re-authenticating once on `401 invalid_token`.
    async fn authed<F>(&self, what: &'static str, build: F) -> Result<Vec<u8>, ClientError>
    where
        F: Fn(&str) -> reqwest::RequestBuilder,
    {
        for attempt in 0..2 {
            let token = self.access_token().await?;
            let req = build(&token).build().map_err(|e| transport(what, e))?;
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

/// True for a `rustls::Error`, also when it travels inside a `std::io::Error`: hyper hands TLS
/// failures on that way, and `io::Error::source()` skips the error it wraps (it returns the
/// wrapped error's own source), so a plain walk of the chain never meets it.
fn is_rustls(e: &(dyn std::error::Error + 'static)) -> bool {
    rustls_error(e).is_some()
}

fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut e = e;
    // An io::Error's `source()` skips the error it wraps, and the connector wraps rustls's
    // error in one io::Error inside another: each is unwrapped by hand.
    for _ in 0..8 {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
        e = inner;
    }
    None
}

/// A 4xx that asking again will not change (408 and 429 ask for exactly that).
fn refusal(status: u16) -> bool {
    (400..500).contains(&status) && status != 408 && status != 429
}

fn transport(what: &'static str, e: reqwest::Error) -> ClientError {
    // reqwest's message would otherwise carry the URL, and with it the access token.
    ClientError::Transport {
        what,
        source: e.without_url(),
    }
}

/// Why a redirect to `next` is not followed, if it is not: a loop, a step down from https to
/// http, or a host outside `allowed_download_hosts` (other than the server's own).
fn redirect_refusal(
    previous: &[reqwest::Url],
    next: &reqwest::Url,
    allowed: Option<&[String]>,
    server: Option<&(String, String)>,
) -> Option<String> {
    const MAX_REDIRECTS: usize = 5;
    if previous.len() > MAX_REDIRECTS {
        return Some(format!("more than {MAX_REDIRECTS} redirects"));
    }
    if previous.iter().any(|u| u.scheme() == "https") && next.scheme() != "https" {
        return Some("a redirect from https to plain http".into());
    }
    let allowed = allowed?;
    let target = host_forms(next.as_str());
    if target.is_some() && target.as_ref() == server {
        return None;
    }
    if !target.as_ref().is_some_and(|t| host_in(allowed, t)) {
        return Some(format!(
            "a redirect to {}, which is not in allowed_download_hosts",
            next.host_str().unwrap_or("a URL without a host")
        ));
    }
    None
}

/// A URL's origin: scheme, host and port.
type Origin = (String, String, u16);

fn origin_of(url: &str) -> Option<Origin> {
    let u = reqwest::Url::parse(url).ok()?;
    Some((
        u.scheme().to_owned(),
        u.host_str()?.to_ascii_lowercase(),
        u.port_or_known_default()?,
    ))
}

/// Why a redirect of a request that carries credentials is not followed: it leaves the server's
/// origin, or there were too many.
fn api_redirect_refusal(
    previous: &[reqwest::Url],
    next: &reqwest::Url,
    server: Option<&Origin>,
) -> Option<String> {
    const MAX_REDIRECTS: usize = 5;
    if previous.len() > MAX_REDIRECTS {
        return Some(format!("more than {MAX_REDIRECTS} redirects"));
    }
    if server.is_some() && origin_of(next.as_str()).as_ref() == server {
        return None;
    }
    Some(format!(
        "a redirect to {}, away from the server's own origin, with credentials in the request",
        next.host_str().unwrap_or("a URL without a host")
    ))
}

/// True when `host` (its `host` and `host:port` forms) is in an `allowed_download_hosts` list.
pub fn host_in(allowed: &[String], (host, host_port): &(String, String)) -> bool {
    allowed.iter().any(|a| {
        let a = a.trim().to_ascii_lowercase();
        a == *host || a == *host_port
    })
}

/// The `host` and `host:port` forms of a URL's authority, lower-case, for
/// `allowed_download_hosts`; `None` when the URL has no host.
/// True for a URL whose scheme, as the URL parser reads it, is plain `http`.
pub fn is_plain_http(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| u.scheme() == "http")
}

/// True for a URL whose scheme, as the URL parser reads it, is `https`.
pub fn is_https(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| u.scheme() == "https")
}

pub fn host_forms(url: &str) -> Option<(String, String)> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str()?.to_ascii_lowercase();
    let port = parsed.port_or_known_default()?;
    Some((host.clone(), format!("{host}:{port}")))
}

/// A web page where a file was asked for: a captive portal or a proxy's error page, which
/// says nothing of the file itself.
fn is_html(resp: &reqwest::Response) -> bool {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("text/html"))
}

fn html_instead(what: &'static str) -> ClientError {
    ClientError::WebPage { what }
}

/// `If-Range` takes a strong ETag or a date; a weak ETag (`W/"…"`) may not be used.
fn validator_of(resp: &reqwest::Response) -> Option<String> {
    let header = |name| resp.headers().get(name)?.to_str().ok().map(str::to_owned);
    header(ETAG)
        .filter(|tag| !tag.starts_with("W/"))
        .or_else(|| header(LAST_MODIFIED))
}

fn header_u64(resp: &reqwest::Response, name: reqwest::header::HeaderName) -> Option<u64> {
    resp.headers().get(name)?.to_str().ok()?.trim().parse().ok()
}

/// A `Content-Range`: the inclusive byte range (absent in `*/total`) and the total (absent in `a-b/*`).
type ContentRange = (Option<(u64, u64)>, Option<u64>);

/// Parses `bytes a-b/total`, `bytes a-b/*` or `bytes */total`.
fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    let range = match range.trim() {
        "*" => None,
        r => {
            let (a, b) = r.split_once('-')?;
            let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
            if b < a {
                return None;
            }
            Some((a, b))
        }
    };
    Some((range, total))
}

async fn read_limited(
    what: &'static str,
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ClientError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport(what, e))? {
        if body.len() + chunk.len() > limit {
            return Err(ClientError::TooLarge {
                what,
                limit: limit as u64,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Turns a non-success answer into an error: the OAuth2 shape when the body has one.
async fn status_error(
    what: &'static str,
    resp: reqwest::Response,
    status: StatusCode,
    secrets: &[String],
) -> ClientError {
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    // An error page says what went wrong in its first lines; more is not read.
    let body = read_limited(what, resp, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    if let Some((error, description)) = wire::parse_oauth_error(&body) {
        return ClientError::OAuth {
            what,
            status: status.as_u16(),
            // The server's own words, which may echo what it was sent.
            error: redact::text(&error, secrets),
            detail: description
                .map(|d| format!(": {}", redact::text(&d, secrets)))
                .unwrap_or_default(),
        };
    }
    let text = String::from_utf8_lossy(&body);
    let snippet: String = text.trim().chars().take(120).collect();
    ClientError::Status {
        what,
        status: status.as_u16(),
        detail: if snippet.is_empty() {
            String::new()
        } else {
            format!(": {}", redact::text(&snippet, secrets))
        },
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        let server = host_forms("http://server:8080/");
        let allowed = vec!["cdn.example.com".to_owned()];
        let refusal = |prev: &str, next: &str, allowed: Option<&[String]>| {
            redirect_refusal(&[url(prev)], &url(next), allowed, server.as_ref())
        };
        assert_eq!(refusal("http://a/x", "http://b/y", None), None);
        assert!(
            refusal("https://a/x", "http://a/x", None)
                .unwrap()
                .contains("https to plain http")
        );
        assert_eq!(
            refusal(
                "http://server:8080/p",
                "https://cdn.example.com/p",
                Some(&allowed)
            ),
            None
        );
        assert_eq!(
            refusal(
                "http://cdn.example.com/p",
                "http://server:8080/p",
                Some(&allowed)
            ),
            None
        );
        assert!(
            refusal(
                "http://cdn.example.com/p",
                "http://10.0.0.1/p",
                Some(&allowed)
            )
            .unwrap()
            .contains("10.0.0.1, which is not in allowed_download_hosts")
        );
        let many: Vec<reqwest::Url> = (0..6).map(|i| url(&format!("http://a/{i}"))).collect();
        assert!(redirect_refusal(&many, &url("http://a/7"), None, None).is_some());
    }

    #[test]
    fn credentials_never_leave_the_servers_origin() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        let origin = origin_of("http://server:8080/");
        let refusal = |next: &str| {
            api_redirect_refusal(
                &[url("http://server:8080/oauth/token")],
                &url(next),
                origin.as_ref(),
            )
        };
        assert_eq!(refusal("http://server:8080/oauth/token2"), None);
        assert_eq!(refusal("http://SERVER:8080/x"), None);
        for elsewhere in [
            "http://server:8081/x",
            "https://server:8080/x",
            "http://evil/x",
            "http://server.evil:8080/x",
        ] {
            assert!(refusal(elsewhere).is_some(), "{elsewhere}");
        }
    }

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((Some((10, 99)), Some(100)))
        );
        assert_eq!(
            parse_content_range("bytes 10-99/*"),
            Some((Some((10, 99)), None))
        );
        assert_eq!(parse_content_range("bytes */100"), Some((None, Some(100))));
        assert_eq!(parse_content_range("bytes 9-1/100"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
