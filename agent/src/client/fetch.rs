//! The download of a patch: a `Range` request that resumes where a cut one stopped, and only
//! when the server still serves the same file.

use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};

use super::Client;
use super::error::{ClientError, transport};
use super::response::{header_u64, html_instead, is_html, status_error};
use crate::redact;

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

impl Client {
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
                let range = content_range(&resp);
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
                let range = content_range(&resp);
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
}

/// `If-Range` takes a strong ETag or a date; a weak ETag (`W/"…"`) may not be used.
fn validator_of(resp: &reqwest::Response) -> Option<String> {
    let header = |name| resp.headers().get(name)?.to_str().ok().map(str::to_owned);
    header(ETAG)
        .filter(|tag| !tag.starts_with("W/"))
        .or_else(|| header(LAST_MODIFIED))
}

/// The `Content-Range` header, as text.
fn content_range(resp: &reqwest::Response) -> Option<&str> {
    resp.headers().get(CONTENT_RANGE)?.to_str().ok()
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

#[cfg(test)]
mod tests {
    use super::*;

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
