//! The agent's TOML configuration: parsing, defaults and the checks that refuse a bad file.

use std::collections::HashSet;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the daemon looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/ota-agent/agent.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is invalid at line {line}{key}: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
        /// `` (key `agent.poll_interval`)``, when the line names one.
        key: String,
        reason: String,
    },
    #[error("config {path}: key `{key}` {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error(
        "config {path} holds secrets but is readable by group or others (mode {mode:04o}); run `chmod 600 {path}`"
    )]
    LoosePermissions { path: PathBuf, mode: u32 },
    #[error("cannot read the robot id from {path}")]
    RobotId {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "config {path}: the [[package]] at line {first_line} ({first}) and the one at line {second_line} ({second}) name one file ({how}); a file can have only one owner, or each would patch what the other installed"
    )]
    SameFile {
        path: PathBuf,
        first: String,
        first_line: usize,
        second: String,
        second_line: usize,
        how: String,
    },
    #[error(
        "config {path}: package `{package}` manages {file}, which is a symbolic link (to {target}); the agent installs a version by renaming a new file over the path, which would replace the link: name the file it points to as `path`"
    )]
    Symlink {
        path: PathBuf,
        package: String,
        file: PathBuf,
        target: PathBuf,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: Server,
    pub robot: Robot,
    #[serde(default)]
    pub agent: Settings,
    #[serde(default)]
    pub security: Security,
    #[serde(rename = "package", default)]
    pub packages: Vec<Package>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub url: String,
    pub client_id: String,
    pub client_secret: String,
    pub username: String,
    pub password: String,
    /// How long to wait for a TCP (and TLS) connection.
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Seconds,
    /// How long a response may stay silent before the request is abandoned.
    #[serde(default = "defaults::read_timeout")]
    pub read_timeout: Seconds,
    /// The total time a token, check, callback or metadata request may take, however the
    /// server paces its answer.
    #[serde(default = "defaults::request_timeout")]
    pub request_timeout: Seconds,
    /// The slowest a patch body may arrive, in bytes per second, averaged over `read_timeout`:
    /// a body that drips slower is an interrupted download.
    #[serde(default = "defaults::min_download_rate")]
    pub min_download_rate: u64,
    /// The fastest patches are downloaded, in bytes per second (`"512k"`); absent: no limit.
    pub max_download_rate: Option<Rate>,
    /// The forward proxy for every request (`http://host:port`), in place of `HTTPS_PROXY`,
    /// `HTTP_PROXY` and `NO_PROXY`; `""` turns proxies off, whatever the environment says.
    pub proxy: Option<String>,
}

// Hand-written so that a debug print of the config can never show a secret.
impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("min_download_rate", &self.min_download_rate)
            .field("max_download_rate", &self.max_download_rate)
            .field("proxy", &self.proxy.as_deref().map(without_password))
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Robot {
    pub id: Option<String>,
    pub id_file: Option<PathBuf>,
    pub version: String,
    pub language: String,
}

/// The `[agent]` table: where the agent keeps its state, and how it paces and bounds its work.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default = "defaults::state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "defaults::poll_interval")]
    pub poll_interval: Seconds,
    /// Upper bound of the random spread added to every poll interval; a fleet must not poll in step.
    pub poll_jitter: Option<Seconds>,
    #[serde(default = "defaults::zero")]
    pub startup_delay: Seconds,
    /// First delay after a failure; it doubles with every further failure.
    #[serde(default = "defaults::retry_base")]
    pub retry_base: Seconds,
    /// Longest delay between retries.
    #[serde(default = "defaults::retry_max")]
    pub retry_max: Seconds,
    /// Largest patch the agent accepts, in bytes.
    #[serde(default = "defaults::max_patch_size")]
    pub max_patch_size: u64,
    /// How many interrupted attempts a patch download gets before it counts as failed.
    #[serde(default = "defaults::download_attempts")]
    pub download_attempts: u32,
    #[serde(default = "defaults::hook_timeout")]
    pub hook_timeout: Seconds,
    /// The longest an accepted update may stay unfinished, whatever keeps failing; then it
    /// ends with its results (rule 3) and the next poll asks the server again.
    #[serde(default = "defaults::update_deadline")]
    pub update_deadline: Seconds,
    /// Cycles of one update in a row that fail without progress before it ends the same way.
    #[serde(default = "defaults::max_failed_cycles")]
    pub max_failed_cycles: u32,
    /// How soon an update that a `pre_download` or `pre_install` hook deferred is tried again
    /// (with up to a fifth more, at random).
    #[serde(default = "defaults::defer_retry")]
    pub defer_retry: Seconds,
    /// How long an update may stay deferred before it is reported `3` (not updated yet).
    #[serde(default = "defaults::defer_timeout")]
    pub defer_timeout: Seconds,
    /// The times of day (local time) when a new version may be installed; empty: any time.
    #[serde(default)]
    pub install_window: Vec<crate::window::Window>,
    /// The Unix socket where the robot's apps read the agent's progress (see `events`).
    #[serde(default = "defaults::events_socket")]
    pub events_socket: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            state_dir: defaults::state_dir(),
            poll_interval: defaults::poll_interval(),
            poll_jitter: None,
            startup_delay: defaults::zero(),
            retry_base: defaults::retry_base(),
            retry_max: defaults::retry_max(),
            max_patch_size: defaults::max_patch_size(),
            download_attempts: defaults::download_attempts(),
            hook_timeout: defaults::hook_timeout(),
            update_deadline: defaults::update_deadline(),
            max_failed_cycles: defaults::max_failed_cycles(),
            defer_retry: defaults::defer_retry(),
            defer_timeout: defaults::defer_timeout(),
            install_window: Vec::new(),
            events_socket: defaults::events_socket(),
        }
    }
}

impl Settings {
    pub fn poll_jitter(&self) -> Duration {
        self.poll_jitter
            .map(|s| s.0)
            .unwrap_or(self.poll_interval.0 / 10)
    }
}

/// What the agent trusts: the vendor's signing keys, the TLS roots and pins, the patch hosts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// The vendor's ed25519 public keys (base64); any one of them may sign a patch's metadata.
    #[serde(default)]
    pub public_keys: Vec<TrustedKey>,
    /// Refuse (report `2`) a patch without valid signed metadata, instead of warning.
    #[serde(default)]
    pub require_signatures: bool,
    /// PEM file of the CA certificates to trust for HTTPS instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// sha256 of the server's public key (its SPKI), in base64 as curl's `--pinnedpubkey`
    /// takes it; an HTTPS server must present one of them in its chain.
    #[serde(default)]
    pub pinned_keys: Vec<Pin>,
    /// Hosts (`host` or `host:port`) patches may be downloaded from; absent means any.
    pub allowed_download_hosts: Option<Vec<String>>,
    /// Where the vendor's signed statement of each file's newest version lives, with
    /// `{package}`, `{file_name}`, `{language}` and `{robot_version}` filled in: with it, an
    /// "up to date" below that version is refused (a frozen or held-back answer).
    pub statement_url: Option<String>,
}

impl Security {
    pub fn keys(&self) -> Vec<ota_signing::PublicKey> {
        self.public_keys.iter().map(|k| k.0).collect()
    }

    /// Whether a patch this policy is asked about again still gets through: signed by a key
    /// it lists (`signer`, the key as text), or `unsigned` where signatures are not required.
    /// Facts recorded under a key since dropped, or a policy since tightened, no longer count.
    pub fn lets_through(&self, signer: Option<&str>, unsigned: bool) -> bool {
        let listed = signer.is_some_and(|s| self.public_keys.iter().any(|k| k.0.to_text() == s));
        listed || (unsigned && !self.require_signatures)
    }
}

/// A public key of the vendor's, as `[security] public_keys` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedKey(pub ota_signing::PublicKey);

impl<'de> Deserialize<'de> for TrustedKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ota_signing::PublicKey::from_text(&text)
            .map(TrustedKey)
            .map_err(|e| serde::de::Error::custom(format!("`{text}`: {e}")))
    }
}

/// The sha256 of a subject public key info, as `[security] pinned_keys` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin(pub [u8; 32]);

impl<'de> Deserialize<'de> for Pin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let text = String::deserialize(d)?;
        let b64 = text.trim().trim_start_matches("sha256//");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| serde::de::Error::custom(format!("pin `{text}` is not base64")))?;
        bytes.try_into().map(Pin).map_err(|_| {
            serde::de::Error::custom(format!("pin `{text}` is not the 32 bytes of a sha256"))
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub name: String,
    pub file_name: String,
    pub path: PathBuf,
    pub version: String,
    /// The sha256 of the file at `version`: on first sight (no state, no record on the file) a
    /// file that does not match is not taken for `version`, and is never patched.
    pub version_sha256: Option<String>,
    /// Overrides `robot.language` for this package.
    pub language: Option<String>,
    /// Shell command run before the patches are downloaded; a non-zero exit defers the update.
    pub pre_download: Option<String>,
    /// Shell command run before the new file is put in place; a non-zero exit defers the update.
    pub pre_install: Option<String>,
    /// Shell command run after the file was replaced (and again after a rollback).
    pub post_install: Option<String>,
    /// Shell command that must exit 0 for the update to count as a success.
    pub health_check: Option<String>,
    pub hook_timeout: Option<Seconds>,
}

impl Package {
    /// The key under which the agent keeps this package's facts: a package may manage several files.
    pub fn key(&self) -> String {
        format!("{}/{}", self.name, self.file_name)
    }
}

/// How the paths `a` and `b` name one file, if they do: the same path, one path through a
/// symbolic link (their directories resolved), or hard links to one inode. A path that is the
/// other's new or rollback sibling (`.NAME.ota-new`, `.NAME.ota-prev`) counts as the same file.
pub fn one_file(a: &Path, b: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let lexical = |p: &Path| -> PathBuf { p.components().collect() };
    // The directory resolved, for paths whose directories are links to one another.
    let real = |p: &Path| {
        let dir = p.parent()?.canonicalize().ok()?;
        Some(dir.join(p.file_name()?))
    };
    let inode = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let (x, y) = (a.display(), b.display());
    let siblings =
        |p: &Path| [crate::managed::new_path(p), crate::managed::prev_path(p)].map(|s| lexical(&s));
    if lexical(a) == lexical(b) {
        Some(format!("both are {x}"))
    } else if siblings(a).contains(&lexical(b)) || siblings(b).contains(&lexical(a)) {
        Some(format!(
            "one of {x} and {y} is where the agent keeps the other's new or previous version"
        ))
    } else if real(a).is_some() && real(a) == real(b) {
        Some(format!("{x} and {y} are one path through a symbolic link"))
    } else if inode(a).is_some() && inode(a) == inode(b) {
        Some(format!("{x} and {y} are hard links to one file"))
    } else {
        None
    }
}

/// The line of the `index`-th `[[package]]` table in the config's text (0 when not found).
fn package_line(text: &str, index: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim().starts_with("[[package]]"))
        .nth(index)
        .map_or(0, |(n, _)| n + 1)
}

/// The keys whose values are secrets, wherever they stand.
const SECRET_KEYS: [&str; 2] = ["client_secret", "password"];

/// toml's own message quotes the offending line, and names a bad value: on a line of a secret
/// key that would print the secret (into the journal, at every restart). The error says where,
/// and what, but never quotes the file, and says nothing of a secret's value.
fn parse_error(text: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map_or(0, |s| s.start).min(text.len());
    let line = text[..at].matches('\n').count() + 1;
    let lines: Vec<&str> = text.lines().collect();
    // A string left open on a secret's line is reported on the line after it.
    let secret = [line.checked_sub(1), line.checked_sub(2)]
        .into_iter()
        .flatten()
        .filter_map(|i| lines.get(i))
        .any(|l| {
            let key = l
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches(['"', '\'']);
            SECRET_KEYS.iter().any(|s| key.eq_ignore_ascii_case(s))
        });
    let section = lines[..line.saturating_sub(1).min(lines.len())]
        .iter()
        .rev()
        .find_map(|l| {
            let l = l.trim();
            l.starts_with('[')
                .then(|| l.trim_matches(['[', ']']).trim().to_owned())
        });
    let key = lines
        .get(line - 1)
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim().trim_matches(['"', '\'']).to_owned())
        .filter(|k| !k.is_empty() && !k.contains(char::is_whitespace))
        .map(|k| match &section {
            Some(s) => format!(" (key `{s}.{k}`)"),
            None => format!(" (key `{k}`)"),
        })
        .unwrap_or_default();
    let reason = if secret {
        "the value of a secret key cannot be read (it is not shown); check its quotes".to_owned()
    } else {
        e.message().trim().to_owned()
    };
    ConfigError::Parse {
        path: path.to_owned(),
        line,
        key,
        reason,
    }
}

/// A duration written as `"90s"`, `"30m"`, `"6h"`, `"1d"` or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(n) => Ok(Seconds(Duration::from_secs(n))),
            NumberOrText::Text(s) => parse_duration(&s)
                .map(Seconds)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// A value written as a bare number or as text with a unit.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

/// A proxy URL with its password masked, for a debug print.
fn without_password(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("<redacted>"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<not a URL>".to_owned(),
    }
}

/// A rate in bytes per second, written `"512k"` (KiB), `"2M"` (MiB) or a bare number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub u64);

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let parsed = match NumberOrText::deserialize(d)? {
            NumberOrText::Number(n) => Ok(n),
            NumberOrText::Text(s) => parse_rate(&s),
        };
        match parsed {
            Ok(0) => Err(serde::de::Error::custom(
                "a rate of 0 would never download; leave the key out for no limit",
            )),
            Ok(n) => Ok(Rate(n)),
            Err(e) => Err(serde::de::Error::custom(e)),
        }
    }
}

/// `"90 s"` as `(90, "s")`; `None` without a number in front.
fn number_and_unit(text: &str) -> Option<(u64, &str)> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    Some((number.parse().ok()?, unit.trim()))
}

/// Parses `"512k"`, `"2M"`, `"64K"` or a plain number of bytes per second.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let (n, unit) = number_and_unit(text)
        .ok_or_else(|| format!("`{text}` is not a rate such as \"512k\" or \"2M\""))?;
    let scale: u64 = match unit {
        "" => 1,
        "k" | "K" => 1024,
        "M" => 1024 * 1024,
        other => {
            return Err(format!(
                "unknown unit `{other}` in rate `{text}` (use k or M)"
            ));
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("rate `{text}` is too large"))
}

/// Parses `"250ms"`, `"90s"`, `"30m"`, `"6h"`, `"1d"`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (n, unit) = number_and_unit(text)
        .ok_or_else(|| format!("`{text}` is not a duration such as \"90s\", \"30m\" or \"6h\""))?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unknown unit `{other}` in duration `{text}`")),
    };
    n.checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration `{text}` is too long"))
}

mod defaults {
    use super::Seconds;
    use std::path::PathBuf;
    use std::time::Duration;

    pub fn state_dir() -> PathBuf {
        PathBuf::from("/var/lib/ota-agent")
    }
    pub fn events_socket() -> PathBuf {
        PathBuf::from("/run/ota-agent/events.sock")
    }
    pub fn poll_interval() -> Seconds {
        Seconds(Duration::from_secs(6 * 3600))
    }
    pub fn zero() -> Seconds {
        Seconds(Duration::ZERO)
    }
    pub fn retry_base() -> Seconds {
        // Five minutes, not seconds: after an outage a fleet's retries then spread out instead
        // of arriving together (the fleet simulation in tests/ measures it).
        Seconds(Duration::from_secs(300))
    }
    pub fn retry_max() -> Seconds {
        Seconds(Duration::from_secs(3600))
    }
    pub fn connect_timeout() -> Seconds {
        Seconds(Duration::from_secs(15))
    }
    pub fn read_timeout() -> Seconds {
        Seconds(Duration::from_secs(60))
    }
    pub fn request_timeout() -> Seconds {
        Seconds(Duration::from_secs(120))
    }
    pub fn min_download_rate() -> u64 {
        // 256 bytes a second: a robot on a poor link still gets there, a drip does not.
        256
    }
    pub fn update_deadline() -> Seconds {
        Seconds(Duration::from_secs(7 * 86_400))
    }
    pub fn max_failed_cycles() -> u32 {
        // With the default back-off (5 minutes doubling to an hour) about half a day.
        16
    }
    pub fn defer_retry() -> Seconds {
        // Balena's interval for a locked update.
        Seconds(Duration::from_secs(15 * 60))
    }
    pub fn defer_timeout() -> Seconds {
        Seconds(Duration::from_secs(86_400))
    }
    pub fn hook_timeout() -> Seconds {
        Seconds(Duration::from_secs(300))
    }
    pub fn max_patch_size() -> u64 {
        512 * 1024 * 1024
    }
    pub fn download_attempts() -> u32 {
        8
    }
}

impl Config {
    /// Reads, parses and checks the file; the error names the file, the key and the problem.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::parse(&text, path)?;
        config.check_managed_files(&text, path)?;
        let has_secrets =
            !config.server.client_secret.is_empty() || !config.server.password.is_empty();
        if has_secrets {
            let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(ConfigError::LoosePermissions {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        Ok(config)
    }

    /// Parses and checks config text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| parse_error(text, path, &e))?;
        config.validate(path)?;
        Ok(config)
    }

    /// Checks what the types cannot: each key's value on its own, and the keys that must agree.
    /// The first problem found is the one reported.
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.check_server_and_robot()
            .and_then(|()| self.check_limits())
            .and_then(|()| self.check_security())
            .and_then(|()| self.check_packages())
            .map_err(|Invalid { key, reason }| ConfigError::Invalid {
                path: path.to_owned(),
                key,
                reason,
            })
    }

    /// The server to ask and the robot to ask for.
    fn check_server_and_robot(&self) -> Result<(), Invalid> {
        let url = self.server.url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || url.len() <= "https://".len()
        {
            return Err(invalid(
                "server.url",
                format!("must be an http or https URL, not `{url}`"),
            ));
        }
        for (key, value) in [
            ("server.client_id", &self.server.client_id),
            ("server.username", &self.server.username),
            ("robot.version", &self.robot.version),
            ("robot.language", &self.robot.language),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(key, "must not be empty".into()));
            }
        }
        match (&self.robot.id, &self.robot.id_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "robot.id",
                    "and `robot.id_file` are both set; keep one".into(),
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "robot.id",
                    "is missing (or set `robot.id_file`)".into(),
                ));
            }
            (Some(id), None) if id.trim().is_empty() => {
                return Err(invalid("robot.id", "must not be empty".into()));
            }
            _ => {}
        }
        Ok(())
    }

    /// The agent's pace and bounds: polls, retries, deadlines, rates and timeouts.
    fn check_limits(&self) -> Result<(), Invalid> {
        if self.agent.poll_interval.0 < Duration::from_secs(1) {
            return Err(invalid("agent.poll_interval", "must be at least 1s".into()));
        }
        if self.agent.retry_base.0.is_zero() || self.agent.retry_max.0 < self.agent.retry_base.0 {
            return Err(invalid(
                "agent.retry_max",
                "must be at least `agent.retry_base`, which must not be zero".into(),
            ));
        }
        if self.agent.max_failed_cycles == 0 {
            return Err(invalid(
                "agent.max_failed_cycles",
                "must be at least 1".into(),
            ));
        }
        if self.agent.update_deadline.0 < Duration::from_secs(60) {
            return Err(invalid(
                "agent.update_deadline",
                "must be at least 1m".into(),
            ));
        }
        if let Some(max) = self.server.max_download_rate {
            if max.0 < self.server.min_download_rate {
                return Err(invalid(
                    "server.max_download_rate",
                    format!(
                        "({} bytes/s) is below `server.min_download_rate` ({}), so every download would count as interrupted",
                        max.0, self.server.min_download_rate
                    ),
                ));
            }
        }
        if self.agent.defer_retry.0 < Duration::from_secs(1) {
            return Err(invalid("agent.defer_retry", "must be at least 1s".into()));
        }
        if let Some(proxy) = self.server.proxy.as_deref().filter(|p| !p.is_empty()) {
            if let Err(e) = reqwest::Url::parse(proxy) {
                return Err(invalid(
                    "server.proxy",
                    format!("must be a URL such as http://proxy:3128 ({e})"),
                ));
            }
        }
        if self.server.request_timeout.0.is_zero() || self.server.read_timeout.0.is_zero() {
            return Err(invalid(
                "server.request_timeout",
                "and `server.read_timeout` must not be zero".into(),
            ));
        }
        if self.agent.download_attempts == 0 {
            return Err(invalid(
                "agent.download_attempts",
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// What the robot trusts.
    fn check_security(&self) -> Result<(), Invalid> {
        if self.security.require_signatures && self.security.public_keys.is_empty() {
            return Err(invalid(
                "security.require_signatures",
                "needs at least one key in `security.public_keys`".into(),
            ));
        }
        if let Some(url) = &self.security.statement_url {
            if self.security.public_keys.is_empty() {
                return Err(invalid(
                    "security.statement_url",
                    "needs at least one key in `security.public_keys` to check the statement"
                        .into(),
                ));
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    "security.statement_url",
                    format!("must be an http or https URL, not `{url}`"),
                ));
            }
        }
        if let Some(hosts) = &self.security.allowed_download_hosts {
            if hosts.is_empty() {
                return Err(invalid(
                    "security.allowed_download_hosts",
                    "is empty, which would refuse every patch; leave it out to allow any host"
                        .into(),
                ));
            }
            if let Some(h) = hosts
                .iter()
                .find(|h| h.trim().is_empty() || h.contains(['/', '@', '?', '#', ' ']))
            {
                return Err(invalid(
                    "security.allowed_download_hosts",
                    format!("`{h}` is not a host or host:port"),
                ));
            }
        }
        Ok(())
    }

    /// The managed files: each named, versioned, at an absolute path, once.
    fn check_packages(&self) -> Result<(), Invalid> {
        if self.packages.is_empty() {
            return Err(invalid("package", "no [[package]] is configured".into()));
        }
        let mut seen = HashSet::new();
        for (i, p) in self.packages.iter().enumerate() {
            let key = |k: &str| format!("package[{i}].{k}");
            for (k, v) in [
                ("name", &p.name),
                ("file_name", &p.file_name),
                ("version", &p.version),
            ] {
                if v.trim().is_empty() {
                    return Err(invalid(&key(k), "must not be empty".into()));
                }
            }
            if p.version.parse::<u64>().is_err() {
                return Err(invalid(
                    &key("version"),
                    format!("must be an integer version code, not `{}`", p.version),
                ));
            }
            if !p.path.is_absolute() || p.path.file_name().is_none() {
                return Err(invalid(
                    &key("path"),
                    format!("must be an absolute file path, not `{}`", p.path.display()),
                ));
            }
            if !seen.insert(p.key()) {
                return Err(invalid(
                    &key("file_name"),
                    format!("`{}` is configured twice", p.key()),
                ));
            }
            if let Some(pin) = &p.version_sha256 {
                if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid(
                        &key("version_sha256"),
                        format!("must be a sha256 in hex (64 digits), not `{pin}`"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// One file, one owner, and no symbolic link in the managed paths: checked on the file
    /// system at start (the paths may not exist yet; a path made later is checked again when
    /// a new version is installed).
    fn check_managed_files(&self, text: &str, path: &Path) -> Result<(), ConfigError> {
        for p in &self.packages {
            if let Ok(target) = std::fs::read_link(&p.path) {
                return Err(ConfigError::Symlink {
                    path: path.to_owned(),
                    package: p.key(),
                    file: p.path.clone(),
                    target,
                });
            }
        }
        for (i, a) in self.packages.iter().enumerate() {
            for (j, b) in self.packages.iter().enumerate().skip(i + 1) {
                let Some(how) = one_file(&a.path, &b.path) else {
                    continue;
                };
                return Err(ConfigError::SameFile {
                    path: path.to_owned(),
                    first: a.key(),
                    first_line: package_line(text, i),
                    second: b.key(),
                    second_line: package_line(text, j),
                    how,
                });
            }
        }
        Ok(())
    }

    /// Another configured package whose path names the same file as `pkg`'s, now (a directory
    /// may have become a link since the start), and how.
    pub fn shares_file(&self, pkg: &Package) -> Option<(String, String)> {
        self.packages
            .iter()
            .filter(|p| p.key() != pkg.key())
            .find_map(|p| one_file(&pkg.path, &p.path).map(|how| (p.key(), how)))
    }

    /// Whose version a package's file is, as the version record on it names it.
    pub fn owner(&self, pkg: &Package) -> crate::managed::Owner {
        crate::managed::Owner {
            package: pkg.key(),
            language: self.language(pkg).to_owned(),
            robot_version: self.robot.version.clone(),
        }
    }

    /// The robot's machine id, read from `robot.id_file` when that is how it is configured.
    pub fn robot_id(&self) -> Result<String, ConfigError> {
        match (&self.robot.id, &self.robot.id_file) {
            (Some(id), _) => Ok(id.trim().to_owned()),
            (None, Some(file)) => {
                let text =
                    std::fs::read_to_string(file).map_err(|source| ConfigError::RobotId {
                        path: file.clone(),
                        source,
                    })?;
                let id = text.trim().to_owned();
                if id.is_empty() {
                    return Err(ConfigError::RobotId {
                        path: file.clone(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "file is empty",
                        ),
                    });
                }
                Ok(id)
            }
            (None, None) => unreachable!("validate() requires robot.id or robot.id_file"),
        }
    }

    /// The language sent for a package.
    pub fn language<'a>(&'a self, package: &'a Package) -> &'a str {
        package.language.as_deref().unwrap_or(&self.robot.language)
    }

    /// The values that must never reach a log line, a status output or an error message.
    pub fn secrets(&self) -> Vec<String> {
        [&self.server.client_secret, &self.server.password]
            .into_iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect()
    }
}

/// A key whose value the config may not have, and why.
#[derive(Debug)]
struct Invalid {
    key: String,
    reason: String,
}

fn invalid(key: &str, reason: String) -> Invalid {
    Invalid {
        key: key.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_never_show_a_secret() {
        let good = "[server]\nurl = \"http://host:8080\"\nclient_id = \"c\"\nclient_secret = \"Sup3rSecret\"\nusername = \"u\"\npassword = \"Pa55word\"\n[robot]\nid = \"r\"\nversion = \"1\"\nlanguage = \"CN\"\n[[package]]\nname = \"p\"\nfile_name = \"f\"\npath = \"/x/y\"\nversion = \"6\"\n";
        assert!(Config::parse(good, Path::new("a.toml")).is_ok());
        for (broken, line) in [
            (good.replace("\"Pa55word\"", "\"Pa55word"), 6),
            (good.replace("\"Pa55word\"", "12345678"), 6),
            (good.replace("\"Sup3rSecret\"", "Sup3rSecret"), 4),
            (good.replace("password = ", "passwrod = "), 6),
            (
                good.replace(
                    "client_secret = \"Sup3rSecret\"",
                    "client_secret = \"Sup3rSecret\" x",
                ),
                4,
            ),
        ] {
            let e = Config::parse(&broken, Path::new("a.toml")).unwrap_err();
            let text = crate::error_chain(&e);
            for secret in ["Pa55word", "Sup3rSecret", "12345678"] {
                assert!(!text.contains(secret), "{text}");
            }
            assert!(text.contains(&format!("at line {line}")), "{text}");
        }
        // Elsewhere the message says what is wrong.
        let e = Config::parse(
            &good.replace("version = \"6\"", "version = 6"),
            Path::new("a.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("line 15"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("6h"), Ok(Duration::from_secs(21600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert!(parse_duration("6 hours").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
