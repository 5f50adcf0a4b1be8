//! Reading the server's answers: a body within a limit, an error page as an error, what a
//! header says.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{HeaderName, RETRY_AFTER};

use super::error::{ClientError, transport};
use super::wire;
use crate::redact;

/// Largest error body the agent reads.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// A web page where a file was asked for: a captive portal or a proxy's error page, which
/// says nothing of the file itself.
pub(super) fn is_html(resp: &reqwest::Response) -> bool {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("text/html"))
}

pub(super) fn html_instead(what: &'static str) -> ClientError {
    ClientError::WebPage { what }
}

/// A header's value as a number, when it is one.
pub(super) fn header_u64(resp: &reqwest::Response, name: HeaderName) -> Option<u64> {
    resp.headers().get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The whole body of an answer, or [`ClientError::TooLarge`] past `limit` bytes.
pub(super) async fn read_limited(
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
pub(super) async fn status_error(
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
