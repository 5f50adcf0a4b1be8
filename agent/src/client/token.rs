//! The OAuth2 token: password grant, refresh before expiry, and the POST fallback (rule 6).

use std::time::Duration;

use reqwest::StatusCode;
use tokio::time::Instant;

use super::Client;
use super::error::{ClientError, transport};
use super::response::{read_limited, status_error};
use super::wire::{TokenBody, parse_token};
use crate::config;
use crate::redact;

/// The longest the agent keeps a token before it refreshes it early.
const EARLY: Duration = Duration::from_secs(300);

pub(super) struct TokenCache {
    client_id: String,
    client_secret: String,
    username: String,
    password: String,
    access: Option<(String, Instant)>,
    refresh: Option<String>,
    /// Set once the server answered 405 to a GET: newer servers want a POST form.
    post: bool,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("has_access", &self.access.is_some())
            .field("has_refresh", &self.refresh.is_some())
            .field("post", &self.post)
            .finish()
    }
}

impl TokenCache {
    pub(super) fn new(server: &config::Server) -> TokenCache {
        TokenCache {
            client_id: server.client_id.clone(),
            client_secret: server.client_secret.clone(),
            username: server.username.clone(),
            password: server.password.clone(),
            access: None,
            refresh: None,
            post: false,
        }
    }

    /// Drops the access token (the server refused it); the refresh token is kept.
    pub(super) fn forget(&mut self) {
        self.access = None;
    }

    pub(super) fn secrets(&self) -> Vec<String> {
        self.access
            .iter()
            .map(|(t, _)| t.clone())
            .chain(self.refresh.clone())
            .collect()
    }

    fn store(&mut self, body: TokenBody) -> String {
        // Keep the token until shortly before it runs out: a tenth of its life, at most five minutes.
        // A server may promise anything; a day is plenty, and keeps the arithmetic in range.
        let life = Duration::from_secs(body.expires_in.unwrap_or(3600).min(86_400));
        let keep = life.saturating_sub((life / 10).min(EARLY));
        self.access = Some((body.access_token.clone(), Instant::now() + keep));
        if let Some(r) = body.refresh_token.filter(|r| !r.is_empty()) {
            self.refresh = Some(r);
        }
        body.access_token
    }
}

enum Grant {
    Password,
    Refresh(String),
}

impl Client {
    /// A valid access token: the cached one, a refreshed one, or a new one from the password grant.
    pub(super) async fn access_token(&self) -> Result<String, ClientError> {
        let refresh = {
            let cache = self.tokens.lock().expect("token lock");
            if let Some((token, until)) = &cache.access {
                if Instant::now() < *until {
                    return Ok(token.clone());
                }
            }
            cache.refresh.clone()
        };
        if let Some(refresh) = refresh {
            match self.token_request(Grant::Refresh(refresh)).await {
                Ok(body) => return Ok(self.tokens.lock().expect("token lock").store(body)),
                Err(e) => {
                    log::info!(
                        "token refresh failed ({}); using the password grant",
                        crate::error_chain(&e)
                    );
                    self.tokens.lock().expect("token lock").refresh = None;
                }
            }
        }
        let body = self.token_request(Grant::Password).await?;
        log::debug!("got a new access token");
        Ok(self.tokens.lock().expect("token lock").store(body))
    }

    async fn token_request(&self, grant: Grant) -> Result<TokenBody, ClientError> {
        self.bounded("token", self.request_timeout, self.token_exchange(grant))
            .await
    }

    /// The token request as such: GET, or POST after a 405, and the answer read whole.
    async fn token_exchange(&self, grant: Grant) -> Result<TokenBody, ClientError> {
        let what = "token";
        let (params, post) = {
            let c = self.tokens.lock().expect("token lock");
            let mut params = vec![
                ("client_id", c.client_id.clone()),
                ("client_secret", c.client_secret.clone()),
            ];
            match grant {
                Grant::Password => params.extend([
                    ("grant_type", "password".to_owned()),
                    ("username", c.username.clone()),
                    ("password", c.password.clone()),
                ]),
                Grant::Refresh(r) => params.extend([
                    ("grant_type", "refresh_token".to_owned()),
                    ("refresh_token", r),
                ]),
            }
            (params, c.post)
        };
        let url = format!("{}/oauth/token", self.base);
        let mut resp = None;
        if !post {
            let req = self
                .api
                .get(&url)
                .query(&params)
                .build()
                .map_err(|e| transport(what, e))?;
            log::debug!("GET {}", redact::url(req.url().as_str()));
            let r = self
                .api
                .execute(req)
                .await
                .map_err(|e| transport(what, e))?;
            if r.status() == StatusCode::METHOD_NOT_ALLOWED {
                log::info!("the server refuses GET for tokens (405); asking with POST from now on");
                self.tokens.lock().expect("token lock").post = true;
            } else {
                resp = Some(r);
            }
        }
        let resp = match resp {
            Some(r) => r,
            None => {
                log::debug!("POST {url}");
                self.api
                    .post(&url)
                    .form(&params)
                    .send()
                    .await
                    .map_err(|e| transport(what, e))?
            }
        };
        let status = resp.status();
        if !status.is_success() {
            return Err(status_error(what, resp, status, &self.secrets()).await);
        }
        let body = read_limited(what, resp, super::MAX_ANSWER).await?;
        parse_token(&body).map_err(|reason| self.unusable(what, &reason))
    }
}
