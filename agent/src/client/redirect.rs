//! Where a request may be redirected: patches within `allowed_download_hosts`, requests that
//! carry credentials within the server's own origin; and the URL tests the cycle's rules use.

use reqwest::redirect::Policy;

/// The policy of the client for patches and their sidecars: see [`redirect_refusal`].
pub(super) fn download_policy(
    allowed: Option<Vec<String>>,
    server: Option<(String, String)>,
) -> Policy {
    Policy::custom(move |attempt| {
        match redirect_refusal(
            attempt.previous(),
            attempt.url(),
            allowed.as_deref(),
            server.as_ref(),
        ) {
            Some(reason) => attempt.error(reason),
            None => attempt.follow(),
        }
    })
}

/// The policy of the client for the token, the check and the callbacks, which stay with the
/// origin of `server_url`: see [`api_redirect_refusal`].
pub(super) fn api_policy(server_url: &str) -> Policy {
    let origin = origin_of(server_url);
    Policy::custom(move |attempt| {
        match api_redirect_refusal(attempt.previous(), attempt.url(), origin.as_ref()) {
            Some(reason) => attempt.error(reason),
            None => attempt.follow(),
        }
    })
}

/// Why a redirect to `next` is not followed, if it is not: a loop, a step down from https to
/// http, or a host outside `allowed_download_hosts` (other than the server's own).
fn redirect_refusal(
    previous: &[reqwest::Url],
    next: &reqwest::Url,
    allowed: Option<&[String]>,
    server: Option<&(String, String)>,
) -> Option<String> {
    if let Some(reason) = too_many(previous) {
        return Some(reason);
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

/// Why a request is not redirected once more, if it is not: it has been too often already.
fn too_many(previous: &[reqwest::Url]) -> Option<String> {
    const MAX_REDIRECTS: usize = 5;
    (previous.len() > MAX_REDIRECTS).then(|| format!("more than {MAX_REDIRECTS} redirects"))
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
    if let Some(reason) = too_many(previous) {
        return Some(reason);
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

/// True for a URL whose scheme, as the URL parser reads it, is plain `http`.
pub fn is_plain_http(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| u.scheme() == "http")
}

/// True for a URL whose scheme, as the URL parser reads it, is `https`.
pub fn is_https(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| u.scheme() == "https")
}

/// The `host` and `host:port` forms of a URL's authority, lower-case, for
/// `allowed_download_hosts`; `None` when the URL has no host.
pub fn host_forms(url: &str) -> Option<(String, String)> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str()?.to_ascii_lowercase();
    let port = parsed.port_or_known_default()?;
    Some((host.clone(), format!("{host}:{port}")))
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
}
