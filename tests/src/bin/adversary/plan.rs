//! A scenario's plan, all of it drawn from one seed: how hostile the server is to each request
//! (the n-th request of each kind gets the same act whenever the seed is replayed), which
//! signals reach the daemon when, which disk faults come and go, and whether the state is lost.

use std::fmt;

/// What a request is for, by its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Token,
    Check,
    Patch,
    Callback,
    Other,
}

impl Kind {
    pub fn of(path: &str) -> Kind {
        if path.starts_with("/oauth/token") {
            Kind::Token
        } else if path.starts_with("/file/download") {
            Kind::Check
        } else if path.starts_with("/file/callback") {
            Kind::Callback
        } else if path.starts_with("/version/") {
            Kind::Patch
        } else {
            Kind::Other
        }
    }
}

/// JSON a Spring/Jackson server or a proxy may send, that a client must take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OddJson {
    /// A UTF-8 byte-order mark before the object.
    Bom,
    /// Every key given twice, a bogus value first (Jackson keeps the last).
    DuplicateKeys,
    /// `expires_in` as a string of digits.
    ExpiresAsString,
    /// `data` and `id` ending with a separator (Java's `split` drops it).
    TrailingSeparators,
    /// Whitespace and newlines everywhere JSON allows them.
    Spaces,
}

/// What the hostile server does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Pass,
    /// Answers this status with a Spring-like error body, without asking the real server.
    Status(u16),
    /// `401`, with an OAuth2 error body or with none.
    Unauthorized {
        body: bool,
    },
    /// Closes the connection before any byte of the answer.
    Reset,
    /// Sends the answer a byte at a time, then the rest or a closed connection.
    Drip {
        pause_ms: u64,
        then_close: bool,
    },
    /// Sends the headers with the full `Content-Length`, then part of the body, and closes.
    CutWithLength {
        permille: u64,
    },
    /// Sends no `Content-Length`, part of the body, and closes: the end looks like the end.
    CutNoLength {
        permille: u64,
    },
    /// Sends no `Content-Length` and the whole body, then closes (legal).
    NoLength,
    /// Sends the body chunked, in chunks of random sizes (legal).
    Chunked,
    NoContentType,
    /// A `206` whose `Content-Range` starts a byte later than the body does.
    WrongContentRange,
    /// A new validator and other bytes in the second half: the patch was republished.
    Republished,
    /// A captive portal's login page, `200 text/html`.
    Portal,
    /// `307` to the same URL with a query added.
    Redirect,
    /// The `Range` header is dropped on its way: a full `200` answers a resume.
    IgnoreRange,
    Odd(OddJson),
    /// An id longer than any the wire takes.
    LongId,
    /// The same id twice in one answer.
    DuplicateId,
    /// 70 more patches after the real ones, past the chain's cap (their URLs lead nowhere).
    LongChain,
    /// `Content-Length` of 1 PiB, and the real body (cut) or none (HEAD).
    HugeLength,
    /// Random bytes of the patch's length.
    Garbage,
    /// The patch with a header that promises a 1 PiB result.
    HugeHeader,
    /// The callback reaches the server; the answer says `500`.
    LostAck,
}

impl Act {
    /// True when the answer is made here, without asking the real server.
    pub fn answers_alone(self) -> bool {
        matches!(
            self,
            Act::Status(_) | Act::Unauthorized { .. } | Act::Reset | Act::Portal | Act::Redirect
        )
    }

    /// True when the act makes the patch it answers bad (or says it is gone): a final `2`
    /// for its id is then what the contract asks. Glitches (cuts, drips, portals, resets,
    /// 5xx) never justify one.
    pub fn spoils_patch(self, method: &str) -> bool {
        match self {
            Act::Status(s) => method == "GET" && (400..500).contains(&s) && s != 408 && s != 429,
            Act::Unauthorized { .. } => method == "GET",
            Act::Garbage | Act::HugeHeader | Act::Republished | Act::HugeLength => true,
            _ => false,
        }
    }
}

impl fmt::Display for Act {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    Term,
    Kill,
    Hup,
}

/// Which file system a disk fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    State,
    Beside,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFault {
    /// The file system fills up (a file takes every free byte) from `at_ms` for `for_ms`.
    Full,
    /// The file system is remounted read-only from `at_ms` for `for_ms`.
    ReadOnly,
}

#[derive(Debug, Clone, Copy)]
pub struct Disk {
    pub fault: DiskFault,
    pub place: Place,
    pub at_ms: u64,
    pub for_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    /// How long the hostile phase lasts.
    pub hostile_ms: u64,
    /// The share of requests, in percent, that get a hostile act.
    pub intensity: u32,
    pub signals: Vec<(u64, Sig)>,
    pub disks: Vec<Disk>,
    /// The state directory is wiped after the first signal (with the daemon stopped).
    pub state_loss: bool,
    /// The config pins the version it names with `version_sha256`.
    pub pin: bool,
}

impl Plan {
    /// The plan of `seed`; disk faults only with `root` (they need mounts).
    pub fn new(seed: u64, root: bool) -> Plan {
        let mut rng = fastrand::Rng::with_seed(seed);
        let hostile_ms = rng.u64(300..2_500);
        let mut signals: Vec<(u64, Sig)> = (0..rng.usize(0..=3))
            .map(|_| {
                let sig = match rng.u8(0..3) {
                    0 => Sig::Term,
                    1 => Sig::Kill,
                    _ => Sig::Hup,
                };
                (rng.u64(50..hostile_ms), sig)
            })
            .collect();
        signals.sort_by_key(|s| s.0);
        let disks = if root {
            (0..rng.usize(0..=2))
                .map(|_| Disk {
                    fault: if rng.bool() {
                        DiskFault::Full
                    } else {
                        DiskFault::ReadOnly
                    },
                    place: if rng.bool() {
                        Place::State
                    } else {
                        Place::Beside
                    },
                    at_ms: rng.u64(0..hostile_ms),
                    for_ms: rng.u64(100..1_500),
                })
                .collect()
        } else {
            Vec::new()
        };
        Plan {
            seed,
            hostile_ms,
            intensity: rng.u32(20..90),
            state_loss: !signals.is_empty() && rng.u8(0..8) == 0,
            signals,
            disks,
            pin: rng.bool(),
        }
    }

    /// The act for the `n`-th request of `kind` (counted from 0), the same on every replay.
    pub fn act(&self, kind: Kind, method: &str, n: u64) -> Act {
        let mix = self.seed ^ (kind as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut rng = fastrand::Rng::with_seed(mix ^ n.wrapping_mul(0xbf58_476d_1ce4_e5b9));
        if rng.u32(0..100) >= self.intensity {
            return Act::Pass;
        }
        let acts = choices(kind, method, &mut rng);
        acts[rng.usize(0..acts.len())]
    }
}

/// The hostile acts that make sense for a request of `kind`.
fn choices(kind: Kind, method: &str, rng: &mut fastrand::Rng) -> Vec<Act> {
    let status = [500, 502, 503, 429, 404, 400][rng.usize(0..6)];
    let drip = Act::Drip {
        pause_ms: rng.u64(5..120),
        then_close: rng.bool(),
    };
    let permille = rng.u64(0..1_000);
    let mut acts = vec![
        Act::Status(status),
        Act::Reset,
        drip,
        Act::CutWithLength { permille },
        Act::CutNoLength { permille },
        Act::NoLength,
        Act::Chunked,
        Act::Portal,
        Act::NoContentType,
    ];
    let odd = [
        OddJson::Bom,
        OddJson::DuplicateKeys,
        OddJson::ExpiresAsString,
        OddJson::TrailingSeparators,
        OddJson::Spaces,
    ][rng.usize(0..5)];
    match kind {
        Kind::Token => acts.extend([
            Act::Unauthorized { body: rng.bool() },
            Act::Odd(odd),
            Act::Redirect,
        ]),
        Kind::Check => acts.extend([
            Act::Unauthorized { body: rng.bool() },
            Act::Odd(odd),
            Act::Odd(odd),
            Act::LongId,
            Act::DuplicateId,
            Act::LongChain,
        ]),
        Kind::Patch if method == "HEAD" => acts.extend([Act::HugeLength, Act::Redirect]),
        Kind::Patch => acts.extend([
            Act::WrongContentRange,
            Act::Republished,
            Act::Redirect,
            Act::IgnoreRange,
            Act::IgnoreRange,
            Act::HugeLength,
            Act::Garbage,
            Act::HugeHeader,
        ]),
        Kind::Callback => acts.extend([Act::Unauthorized { body: rng.bool() }, Act::LostAck]),
        Kind::Other => {}
    }
    acts
}
