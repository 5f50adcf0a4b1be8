//! The client's errors, and what each says of the server: unreachable, refused by TLS, behind
//! the robot's clock, or refusing for good.

use std::time::Duration;

/// Why a request to the update server failed.
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
        self.rustls_errors().next().is_some()
    }

    /// True when TLS refused a certificate only because it is not valid yet: on a robot without
    /// a clock battery that says the clock is behind, and the same request succeeds once the
    /// clock is set. Never a verdict on the update.
    pub fn is_clock_behind(&self) -> bool {
        use rustls::{CertificateError, Error};
        self.rustls_errors().any(|e| {
            matches!(
                e,
                Error::InvalidCertificate(
                    CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }
                )
            )
        })
    }

    /// The TLS errors along the causes of a failed request, outermost first.
    fn rustls_errors(&self) -> impl Iterator<Item = &rustls::Error> {
        let first: Option<&(dyn std::error::Error + 'static)> = match self {
            ClientError::Transport { source, .. } => Some(source),
            _ => None,
        };
        std::iter::successors(first, |e| e.source()).filter_map(rustls_error)
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

/// `e` as a `rustls::Error`, also when it travels inside a `std::io::Error`: hyper hands TLS
/// failures on that way, and `io::Error::source()` skips the error it wraps (it returns the
/// wrapped error's own source), so a plain walk of the causes never meets it.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut e = e;
    // The connector wraps rustls's error in one io::Error inside another: each is unwrapped.
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

/// A failed request as an error that names neither the URL nor anything in it.
pub(super) fn transport(what: &'static str, e: reqwest::Error) -> ClientError {
    // reqwest's message would otherwise carry the URL, and with it the access token.
    ClientError::Transport {
        what,
        source: e.without_url(),
    }
}
