//! Access and refresh tokens with the lifecycle of Spring Security OAuth2's `DefaultTokenServices`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A token answer: the access token, its refresh token and the seconds it has left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) access_token: String,
    pub(crate) refresh_token: String,
    pub(crate) expires_in: u64,
}

/// Why an access token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenProblem {
    Invalid,
    Expired,
}

#[derive(Debug, Clone)]
struct Access {
    owner: (String, String),
    refresh: String,
    expires: Instant,
}

#[derive(Debug, Clone)]
struct Refresh {
    owner: (String, String),
    expires: Instant,
}

/// All live tokens, with a clock that tests can move forward.
#[derive(Debug)]
pub(crate) struct TokenStore {
    skew: Duration,
    access: HashMap<String, Access>,
    refresh: HashMap<String, Refresh>,
    by_owner: HashMap<(String, String), String>,
}

fn random_token() -> String {
    format!("{:032x}", fastrand::u128(..))
}

fn seconds_left(expires: Instant, now: Instant) -> u64 {
    let left = expires.saturating_duration_since(now);
    // Rounding up makes a fresh token report exactly the configured lifetime.
    left.as_secs() + u64::from(left.subsec_nanos() > 0)
}

impl TokenStore {
    pub(crate) fn new() -> TokenStore {
        TokenStore {
            skew: Duration::ZERO,
            access: HashMap::new(),
            refresh: HashMap::new(),
            by_owner: HashMap::new(),
        }
    }

    fn now(&self) -> Instant {
        Instant::now() + self.skew
    }

    /// Moves the token clock forward, so expiry can be tested without waiting.
    pub(crate) fn advance(&mut self, by: Duration) {
        self.skew += by;
    }

    /// The password grant: an unexpired token of the same client and user is handed out again.
    pub(crate) fn password_grant(
        &mut self,
        client: &str,
        user: &str,
        expires_in: u64,
        refresh_expires_in: u64,
    ) -> Grant {
        let now = self.now();
        let owner = (client.to_string(), user.to_string());
        let mut reuse_refresh = None;
        if let Some(existing) = self.by_owner.get(&owner).cloned() {
            match self.access.get(&existing) {
                Some(a) if a.expires > now => {
                    return Grant {
                        access_token: existing,
                        refresh_token: a.refresh.clone(),
                        expires_in: seconds_left(a.expires, now),
                    };
                }
                Some(a) => {
                    // Like Spring, a client may still hold the refresh token of an expired
                    // access token, so it stays valid and is reused.
                    if self
                        .refresh
                        .get(&a.refresh)
                        .is_some_and(|r| r.expires > now)
                    {
                        reuse_refresh = Some(a.refresh.clone());
                    }
                    self.access.remove(&existing);
                }
                None => {}
            }
            self.by_owner.remove(&owner);
        }
        let refresh_token = reuse_refresh.unwrap_or_else(|| {
            let token = random_token();
            self.refresh.insert(
                token.clone(),
                Refresh {
                    owner: owner.clone(),
                    expires: now + Duration::from_secs(refresh_expires_in),
                },
            );
            token
        });
        self.issue(owner, refresh_token, expires_in, now)
    }

    fn issue(
        &mut self,
        owner: (String, String),
        refresh_token: String,
        expires_in: u64,
        now: Instant,
    ) -> Grant {
        let access_token = random_token();
        let expires = now + Duration::from_secs(expires_in);
        self.access.insert(
            access_token.clone(),
            Access {
                owner: owner.clone(),
                refresh: refresh_token.clone(),
                expires,
            },
        );
        self.by_owner.insert(owner, access_token.clone());
        Grant {
            access_token,
            refresh_token,
            expires_in: seconds_left(expires, now),
        }
    }

    /// The refresh grant: a new access token, the same refresh token. `None` if it is dead.
    pub(crate) fn refresh_grant(
        &mut self,
        client: &str,
        refresh_token: &str,
        expires_in: u64,
    ) -> Option<Grant> {
        let now = self.now();
        let r = self.refresh.get(refresh_token)?.clone();
        if r.expires <= now {
            self.refresh.remove(refresh_token);
            return None;
        }
        if r.owner.0 != client {
            return None;
        }
        if let Some(old) = self.by_owner.remove(&r.owner) {
            self.access.remove(&old);
        }
        Some(self.issue(r.owner, refresh_token.to_string(), expires_in, now))
    }

    /// Checks an access token; an expired one is forgotten, as Spring does.
    pub(crate) fn check(&mut self, token: &str) -> Result<(), TokenProblem> {
        let now = self.now();
        let a = self.access.get(token).ok_or(TokenProblem::Invalid)?;
        if a.expires > now {
            return Ok(());
        }
        let owner = a.owner.clone();
        self.access.remove(token);
        if self.by_owner.get(&owner).is_some_and(|t| t == token) {
            self.by_owner.remove(&owner);
        }
        Err(TokenProblem::Expired)
    }

    pub(crate) fn revoke_all(&mut self) {
        self.access.clear();
        self.refresh.clear();
        self.by_owner.clear();
    }

    /// Revokes one access token or refresh token, and the token paired with it.
    pub(crate) fn revoke(&mut self, token: &str) -> bool {
        if let Some(a) = self.access.remove(token) {
            self.refresh.remove(&a.refresh);
            self.by_owner.remove(&a.owner);
            return true;
        }
        if self.refresh.remove(token).is_some() {
            self.access.retain(|_, a| a.refresh != token);
            let access = &self.access;
            self.by_owner.retain(|_, t| access.contains_key(t));
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_grant_reuses_a_live_token_and_replaces_an_expired_one() {
        let mut store = TokenStore::new();
        let first = store.password_grant("c", "u", 100, 1000);
        assert_eq!(first.expires_in, 100);
        assert_eq!(first.access_token.len(), 32);
        store.advance(Duration::from_secs(40));
        let again = store.password_grant("c", "u", 100, 1000);
        assert_eq!(again.access_token, first.access_token);
        assert_eq!(again.expires_in, 60);
        store.advance(Duration::from_secs(61));
        assert_eq!(store.check(&first.access_token), Err(TokenProblem::Expired));
        assert_eq!(store.check(&first.access_token), Err(TokenProblem::Invalid));
        let fresh = store.password_grant("c", "u", 100, 1000);
        assert_ne!(fresh.access_token, first.access_token);
        // The expired token was never used, so its refresh token carries over.
        store.advance(Duration::from_secs(101));
        let third = store.password_grant("c", "u", 100, 1000);
        assert_ne!(third.access_token, fresh.access_token);
        assert_eq!(third.refresh_token, fresh.refresh_token);
    }

    #[test]
    fn refresh_keeps_the_refresh_token_and_checks_the_client() {
        let mut store = TokenStore::new();
        let first = store.password_grant("c", "u", 100, 1000);
        assert!(
            store
                .refresh_grant("other", &first.refresh_token, 100)
                .is_none()
        );
        let next = store.refresh_grant("c", &first.refresh_token, 100).unwrap();
        assert_eq!(next.refresh_token, first.refresh_token);
        assert_ne!(next.access_token, first.access_token);
        assert_eq!(store.check(&first.access_token), Err(TokenProblem::Invalid));
        assert_eq!(store.check(&next.access_token), Ok(()));
        store.advance(Duration::from_secs(1001));
        assert!(
            store
                .refresh_grant("c", &first.refresh_token, 100)
                .is_none()
        );
    }

    #[test]
    fn revoking_one_token_revokes_its_pair() {
        let mut store = TokenStore::new();
        let a = store.password_grant("c", "u", 100, 1000);
        let b = store.password_grant("c", "v", 100, 1000);
        assert!(store.revoke(&a.access_token));
        assert!(!store.revoke(&a.access_token));
        assert!(store.refresh_grant("c", &a.refresh_token, 100).is_none());
        assert_eq!(store.check(&b.access_token), Ok(()));
        store.revoke_all();
        assert_eq!(store.check(&b.access_token), Err(TokenProblem::Invalid));
    }
}
