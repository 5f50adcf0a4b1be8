//! The state directory: the one versioned state file, the lock, downloads and staging files.
//!
//! No other module opens a path below `state_dir`; they get file handles from here. The state file
//! holds facts (what is installed, what was offered, what is downloaded, what must still be
//! reported), never the in-memory step of the cycle, and every write of it is atomic: temp file,
//! fsync, rename, fsync of the directory.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The version of the state file's layout; a file with another version is not trusted.
pub const FORMAT: u32 = 1;

/// How many applied (and failed) update ids are remembered per file, so that a re-offered one
/// is recognised.
const ID_MEMORY: usize = 256;

const STATE_FILE: &str = "state.json";
/// Room kept on the state directory's file system for the saves that end an update: a disk
/// that fills (a new service's logs, say) must not stop the agent from recording that an
/// install finished, or a restart would take it for one its hooks did not survive.
const RESERVE_FILE: &str = "reserve";
/// A state save writes the whole state next to the current one: 1 MiB covers the largest
/// (64 patches with ids and URLs at their caps, 256 remembered ids of each kind, an outbox).
const RESERVE_BYTES: u64 = 1 << 20;
/// The state as it was before the last save, for when the current file turns out unusable.
const PREV_FILE: &str = "state.json.prev";
const LOCK_FILE: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {path}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("state directory {path} is in use by another ota-agent (lock held)")]
    Locked { path: PathBuf },
    #[error("{path} is a symlink or a file, not a directory; the agent does not follow it")]
    NotADirectory { path: PathBuf },
    #[error(
        "state file {path} has format {found}, newer than the format {FORMAT} this agent reads: it was written by a newer ota-agent, which this one must not second-guess; it is left as it is (install the newer agent again, or move the file aside to start from what the files themselves record)"
    )]
    NewerFormat { path: PathBuf, found: u64 },
    #[error("{op} {path} failed")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl StoreError {
    /// True when the file system had no room (or quota) left.
    pub fn is_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if crate::no_room(source))
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub format: u32,
    #[serde(default)]
    pub packages: BTreeMap<String, PackageState>,
    /// Callbacks decided but not yet acknowledged by the server, oldest first.
    #[serde(default)]
    pub outbox: Vec<Callback>,
}

impl Default for State {
    fn default() -> Self {
        State {
            format: FORMAT,
            packages: BTreeMap::new(),
            outbox: Vec::new(),
        }
    }
}

/// What [`Store::load`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub state: State,
    /// Why the state could not be read, when neither the state file nor the copy of the save
    /// before it was usable: the agent knew its files once and has forgotten them.
    pub lost: Option<String>,
}

/// Where the agent's knowledge of a file's version comes from (see [`PackageState::source`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VersionSource {
    /// A state written before the agent kept where versions come from.
    #[default]
    State,
    /// The agent installed this version itself, or put it back in a rollback.
    Installed,
    /// The file's own record (`user.ota-agent.version`), whose sha256 matches the file.
    Record,
    /// The config's `version`, taken on first sight with nothing to check it against.
    Config,
    /// The config's `version`, whose `version_sha256` the file matches.
    Pin,
    /// A sha256 the vendor signed for a version: a patch's base or its result.
    Signed,
    /// `ota-agent adopt`: a person said which version the file is.
    Adopted,
}

impl VersionSource {
    /// False only for the config's word on first sight: a version nothing has checked.
    pub fn is_verified(self) -> bool {
        self != VersionSource::Config
    }

    /// Where the version comes from, for `status` and the log.
    pub fn describe(self) -> &'static str {
        match self {
            VersionSource::State => "the agent's state",
            VersionSource::Installed => "installed by the agent",
            VersionSource::Record => "the file's own record",
            VersionSource::Config => {
                "unverified: the config's version, nothing to check it against"
            }
            VersionSource::Pin => "the config's version, its version_sha256 matches",
            VersionSource::Signed => "a sha256 the vendor signed",
            VersionSource::Adopted => "adopted by hand (ota-agent adopt)",
        }
    }
}

/// An update that ended with `3` for want of room: its ids, and the room it needed where.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NoRoom {
    pub ids: Vec<String>,
    pub needed: u64,
    /// True beside the managed file, false in the state directory.
    pub beside: bool,
}

/// A managed file whose version the agent cannot tell: it is neither patched nor checked for
/// updates until something identifies it again (its record, a pin, `ota-agent adopt`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Unidentified {
    /// The file's sha256 when it was found so (`None`: the file was missing).
    pub sha256: Option<String>,
    pub reason: String,
    pub since_unix: u64,
    /// The sha256 the vendor's signatures showed to be no version of theirs: a record or a pin
    /// for those very bytes does not identify them (only `ota-agent adopt` does).
    #[serde(default)]
    pub disproved: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PackageState {
    /// The version code of the installed file.
    pub version: String,
    /// The sha256 of the installed file as the agent last saw or wrote it; `None` before the
    /// agent first looked at it.
    pub sha256: Option<String>,
    /// Where `version` comes from.
    #[serde(default)]
    pub source: VersionSource,
    /// Set while the agent cannot tell which version the file is.
    #[serde(default)]
    pub unidentified: Option<Unidentified>,
    /// Set for a file first seen after the agent's state was lost: the config's `version`,
    /// from before, is no knowledge of what the agent did since.
    #[serde(default)]
    pub after_state_loss: bool,
    /// The last update that ended for want of room: the same chain is not downloaded again
    /// until the room it needed is there.
    #[serde(default)]
    pub no_room: Option<NoRoom>,
    /// Update ids applied and reported as success, oldest first.
    #[serde(default)]
    pub applied: Vec<String>,
    /// Update ids reported as failed, oldest first: a failure is final, like a success.
    #[serde(default)]
    pub failed: Vec<String>,
    pub update: Option<Update>,
    pub last_check: Option<LastCheck>,
    /// The version the config named when the agent last started, to notice a corrected one.
    #[serde(default)]
    pub configured_version: Option<String>,
    /// The newest of the vendor's signed statements seen for this file.
    #[serde(default)]
    pub statement: Option<SeenStatement>,
}

/// What a verified statement of the newest version said, and when it was signed: an older one
/// is a replay.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeenStatement {
    pub issued_unix: u64,
    pub latest_version: u64,
}

impl PackageState {
    pub fn new(version: &str) -> Self {
        PackageState {
            version: version.to_owned(),
            sha256: None,
            source: VersionSource::Config,
            unidentified: None,
            after_state_loss: false,
            no_room: None,
            applied: Vec::new(),
            failed: Vec::new(),
            update: None,
            last_check: None,
            configured_version: Some(version.to_owned()),
            statement: None,
        }
    }

    pub fn remember_applied(&mut self, id: &str) {
        remember(&mut self.applied, id);
    }

    pub fn remember_failed(&mut self, id: &str) {
        remember(&mut self.failed, id);
    }
}

/// Adds `id` to a bounded memory of ids, oldest first.
fn remember(ids: &mut Vec<String>, id: &str) {
    if !ids.iter().any(|a| a == id) {
        ids.push(id.to_owned());
    }
    let excess = ids.len().saturating_sub(ID_MEMORY);
    ids.drain(..excess);
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LastCheck {
    pub at_unix: u64,
    pub ok: bool,
    pub result: String,
}

/// An update the server offered and the agent accepted, from the first fact to the last.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Update {
    pub from_version: String,
    pub from_sha256: String,
    pub patches: Vec<PatchState>,
    /// The first patch that failed for good (download, verification or bspatch).
    pub failed: Option<Failure>,
    /// Set just before the managed file is swapped, so a restart knows an install was under way.
    pub install: Option<InstallState>,
    /// Cycles in a row that found too little free space for the chain.
    #[serde(default)]
    pub space_failures: u32,
    /// When the offer was accepted (Unix seconds; 0 when not known), for `update_deadline`.
    #[serde(default)]
    pub accepted_at_unix: u64,
    /// Cycles in a row that failed without progress, for `max_failed_cycles`.
    #[serde(default)]
    pub failed_cycles: u32,
    /// When a hook first deferred the update (Unix seconds), for `defer_timeout`.
    #[serde(default)]
    pub deferred_since_unix: Option<u64>,
    /// Deferrals in a row: they bound a deferral by count where the clock cannot.
    #[serde(default)]
    pub deferrals: u32,
    /// Why the update waits and until when, while it does (a deferral, a closed install window).
    #[serde(default)]
    pub waiting: Option<Waiting>,
    /// The applied chain in the staging area, so that a wait does not apply it again.
    #[serde(default)]
    pub staged: Option<StagedResult>,
    /// The sha256 of the new file prepared beside the managed one, complete (owner, mode, fsync),
    /// when a `pre_install` deferral keeps it for the retry.
    #[serde(default)]
    pub prepared_sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub until_unix: u64,
}

/// The first `applied` patches are applied; the result, staging file `applied - 1`, has this
/// sha256.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StagedResult {
    pub applied: usize,
    pub sha256: String,
}

impl Update {
    /// The ids of the chain, in order.
    pub fn ids(&self) -> Vec<String> {
        self.patches.iter().map(|p| p.id.clone()).collect()
    }

    /// How many patches lead up to the first failed one (all of them when none failed): the
    /// ones still to fetch, verify and apply.
    pub fn usable(&self) -> usize {
        self.failed.as_ref().map_or(self.patches.len(), |f| f.index)
    }

    /// A number that grows whenever the update gets further: bytes made durable, patches
    /// fetched, an install begun. A failed cycle that moved it is not a cycle without progress.
    pub fn progress(&self) -> u64 {
        let bytes: u64 = self.patches.iter().map(|p| p.durable).sum();
        let done = self.patches.iter().filter(|p| p.sha256.is_some()).count() as u64;
        bytes + done + u64::from(self.install.is_some())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PatchState {
    pub id: String,
    pub url: String,
    pub to_version: String,
    /// The size the server announced, once known.
    pub size: Option<u64>,
    /// The validator for `If-Range` when the download resumes: a strong ETag, or else the
    /// `Last-Modified` date.
    pub validator: Option<String>,
    /// How many bytes of the partial download are known to be on disk (fsynced).
    #[serde(default)]
    pub durable: u64,
    /// The sha256 of the complete patch; set once the download finished.
    pub sha256: Option<String>,
    #[serde(default)]
    pub attempts: u32,
    /// What the vendor's signed metadata says of the patch, once its signature was verified.
    #[serde(default)]
    pub signed: Option<Signed>,
    /// Set once the patch was let through without a signature (signatures not required).
    #[serde(default)]
    pub unsigned: bool,
    /// Downloads whose bytes did not match the signed sha256; the second one is final.
    #[serde(default)]
    pub mismatches: u32,
}

/// The facts of a verified `.meta.json` that later steps check the patch and its result against.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Signed {
    /// The key that signed, so that a key dropped from the config stops counting at once.
    pub key: String,
    pub patch_size: u64,
    pub patch_sha256: String,
    pub result_size: u64,
    pub result_sha256: String,
    /// The sha256 of the file the patch applies to (signed metadata of format 3 on).
    #[serde(default)]
    pub from_sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failure {
    pub index: usize,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstallState {
    /// How many patches of the chain the new file has applied.
    pub applied: usize,
    pub to_version: String,
    pub to_sha256: String,
    /// Set once the new file is in place and its hooks are about to run: a restart from here
    /// means the new version may have hung or rebooted the robot, so it is rolled back.
    #[serde(default)]
    pub hooks_started: bool,
    /// Set once the install failed and the previous file is being restored.
    #[serde(default)]
    pub rolling_back: bool,
    /// Times a stop (SIGTERM) came while the hooks ran; a few are routine, more are a hook
    /// that stops the agent itself.
    #[serde(default)]
    pub hook_stops: u32,
}

/// The result of one update id, as `/file/callback` takes it. `0` ("no status") is the
/// server's, never the agent's: every update the agent ends has one of these three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum ResultCode {
    /// `1`: the file is this version.
    Success,
    /// `2`: the patch is proven bad against the right file.
    Failed,
    /// `3`: not updated yet; the server may offer the id again.
    NotUpdated,
}

impl ResultCode {
    /// The number the server and the state file know.
    pub fn number(self) -> u8 {
        match self {
            ResultCode::Success => 1,
            ResultCode::Failed => 2,
            ResultCode::NotUpdated => 3,
        }
    }

    /// What the result means to the robot's apps.
    pub fn meaning(self) -> &'static str {
        match self {
            ResultCode::Success => "installed",
            ResultCode::Failed => "failed",
            ResultCode::NotUpdated => "not updated yet",
        }
    }
}

impl From<ResultCode> for u8 {
    fn from(code: ResultCode) -> u8 {
        code.number()
    }
}

impl TryFrom<u8> for ResultCode {
    type Error = String;

    fn try_from(number: u8) -> Result<Self, String> {
        match number {
            1 => Ok(ResultCode::Success),
            2 => Ok(ResultCode::Failed),
            3 => Ok(ResultCode::NotUpdated),
            n => Err(format!("{n} is no result the agent sends (1, 2 or 3)")),
        }
    }
}

impl std::fmt::Display for ResultCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.number())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Callback {
    pub package: String,
    pub id: String,
    pub code: ResultCode,
    pub queued_at_unix: u64,
}

/// The state directory, locked against a second agent for as long as this value lives.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    _lock: File,
    /// Whether the reserve file is in place.
    reserved: std::sync::atomic::AtomicBool,
}

impl Store {
    /// Creates the directory (mode 0700) if needed and takes its lock.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        make_private(dir, 0o700)?;
        for file in [STATE_FILE, PREV_FILE] {
            make_private(&dir.join(file), 0o600)?;
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(StoreError::Locked {
                    path: dir.to_owned(),
                });
            }
            Err(e) => return Err(io_err("lock", &lock_path)(e.into())),
        }
        let store = Store {
            dir: dir.to_owned(),
            _lock: lock,
            reserved: std::sync::atomic::AtomicBool::new(false),
        };
        store.keep_reserve();
        Ok(store)
    }

    /// Makes the reserve file when it is missing and the file system has room to spare (four
    /// times the reserve): best effort, a state directory without it still works.
    fn keep_reserve(&self) {
        use std::sync::atomic::Ordering;
        if self.reserved.load(Ordering::Relaxed) {
            return;
        }
        let path = self.dir.join(RESERVE_FILE);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == RESERVE_BYTES) {
            self.reserved.store(true, Ordering::Relaxed);
            return;
        }
        if self.free_space().unwrap_or(0) < 4 * RESERVE_BYTES {
            return;
        }
        let made = open_private(&path, true).and_then(|f| {
            // Real blocks, not a sparse file: what it holds must be there to give back.
            let zeros = vec![0u8; 64 * 1024];
            let mut w = io::BufWriter::new(&f);
            for _ in 0..RESERVE_BYTES / zeros.len() as u64 {
                w.write_all(&zeros).map_err(io_err("write", &path))?;
            }
            w.flush().map_err(io_err("write", &path))?;
            drop(w);
            f.sync_all().map_err(io_err("fsync", &path))
        });
        match made {
            Ok(()) => self.reserved.store(true, Ordering::Relaxed),
            Err(e) => {
                log::debug!(
                    "no reserve in the state directory: {}",
                    crate::error_chain(&e)
                );
                let _ = fs::remove_file(&path);
            }
        }
    }

    /// Gives the reserve back to the file system; false when there was none.
    fn release_reserve(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.reserved.store(false, Ordering::Relaxed);
        fs::remove_file(self.dir.join(RESERVE_FILE)).is_ok()
    }

    /// Loads the state. A corrupt, foreign or inconsistent file is moved aside (and logged) and
    /// the copy kept by the save before is used instead; when that is unusable too, the state
    /// is lost (said in [`Loaded::lost`]). A state of a newer format is an error, and is left
    /// untouched: it holds facts and results this agent cannot read.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let path = self.dir.join(STATE_FILE);
        let prev = self.dir.join(PREV_FILE);
        // A save never leaves the copy without the file: a state file deleted by hand is lost.
        let missing = !path.exists() && prev.exists();
        let reason = match read_state(&path)? {
            Ok(_) if missing => "it is missing, but the copy from the save before is there".into(),
            Ok(state) => return Ok(Loaded { state, lost: None }),
            Err(reason) => reason,
        };
        let aside = self
            .dir
            .join(format!("{STATE_FILE}.corrupt-{}", crate::unix_now()));
        if !missing {
            fs::rename(&path, &aside).map_err(io_err("move aside", &path))?;
        }
        let fallback = if prev.exists() {
            read_state(&prev)?.ok()
        } else {
            None
        };
        let from = if fallback.is_some() {
            "the copy from the save before"
        } else {
            "what the managed files themselves record"
        };
        if missing {
            log::error!(
                "state file {} is unusable ({reason}); starting from {from}",
                path.display()
            );
        } else {
            log::error!(
                "state file {} is unusable ({reason}); moved it to {} and starting from {from}",
                path.display(),
                aside.display()
            );
        }
        Ok(match fallback {
            Some(state) => Loaded { state, lost: None },
            None => Loaded {
                state: State::default(),
                lost: Some(reason),
            },
        })
    }

    /// Reads the state without taking the lock, for `status` while the daemon runs.
    pub fn peek(dir: &Path) -> Result<State, StoreError> {
        let path = dir.join(STATE_FILE);
        read_state(&path)?.map_err(|reason| StoreError::Io {
            op: "parse",
            path,
            source: io::Error::new(io::ErrorKind::InvalidData, reason),
        })
    }

    /// Writes the whole state atomically. On a full disk the reserve makes room for it.
    pub fn save(&self, state: &State) -> Result<(), StoreError> {
        // Compact: every checkpoint of a download writes it whole.
        let bytes = serde_json::to_vec(state).expect("state serialises");
        let saved = match self.write_state(&bytes) {
            Err(e) if e.is_full() && self.release_reserve() => {
                log::warn!(
                    "the state directory's file system is full; saving the state in the room kept for it"
                );
                self.write_state(&bytes)
            }
            other => other,
        };
        if saved.is_ok() {
            self.keep_reserve();
        }
        saved
    }

    fn write_state(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        crate::io_stats::saved(bytes.len());
        write_new(&tmp, bytes)?;
        let prev = self.dir.join(PREV_FILE);
        remove_if_present(&prev)?;
        match fs::hard_link(&path, &prev) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("link", &prev)(e)),
        }
        fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
        if crate::fault::skip_fsync("state-dir") {
            return Ok(());
        }
        sync_dir(&self.dir)
    }

    fn package_dir(&self, key: &str) -> Result<PathBuf, StoreError> {
        let readable: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        // The hash keeps keys apart that read the same once sanitised (`a_b/c` and `a/b_c`).
        let digest =
            crate::managed::hex(&<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes())[..6]);
        let packages = self.dir.join("packages");
        let dir = packages.join(format!("{readable}-{digest}"));
        real_dir(&packages)?;
        real_dir(&dir)?;
        Ok(dir)
    }

    /// The download file of update `id`: readable, and one of its own for every id, since ids
    /// that read the same once sanitised (`1.0` and `1_0`) must not share a file.
    fn file_name(id: &str, ext: &str) -> String {
        let safe: String = id
            .chars()
            .take(64)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let digest =
            crate::managed::hex(&<sha2::Sha256 as sha2::Digest>::digest(id.as_bytes())[..8]);
        format!("{safe}-{digest}.{ext}")
    }

    /// Opens the partial download of a patch for appending, cut back to what is known durable.
    pub fn open_partial(
        &self,
        key: &str,
        id: &str,
        durable: u64,
    ) -> Result<(File, u64), StoreError> {
        let path = self.package_dir(key)?.join(Self::file_name(id, "part"));
        let file = open_private(&path, false)?;
        let len = file.metadata().map_err(io_err("stat", &path))?.len();
        let keep = len.min(durable);
        if keep != len {
            file.set_len(keep).map_err(io_err("truncate", &path))?;
        }
        Ok((file, keep))
    }

    /// Marks a finished download complete: the partial file becomes the patch.
    pub fn complete_partial(&self, key: &str, id: &str) -> Result<(), StoreError> {
        let dir = self.package_dir(key)?;
        let from = dir.join(Self::file_name(id, "part"));
        let to = dir.join(Self::file_name(id, "patch"));
        fs::rename(&from, &to).map_err(io_err("rename", &from))?;
        sync_dir(&dir)
    }

    pub fn open_patch(&self, key: &str, id: &str) -> Result<Option<File>, StoreError> {
        let path = self.package_dir(key)?.join(Self::file_name(id, "patch"));
        match open_read(&path) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("open", &path)(e)),
        }
    }

    /// Creates (empty) the staging file for the result of patch `index`.
    pub fn create_staged(&self, key: &str, index: usize) -> Result<File, StoreError> {
        let path = self.package_dir(key)?.join(format!("staged-{index}"));
        open_private(&path, true)
    }

    pub fn open_staged(&self, key: &str, index: usize) -> Result<File, StoreError> {
        let path = self.package_dir(key)?.join(format!("staged-{index}"));
        open_read(&path).map_err(io_err("open", &path))
    }

    pub fn remove_staged(&self, key: &str, index: usize) -> Result<(), StoreError> {
        let path = self.package_dir(key)?.join(format!("staged-{index}"));
        remove_if_present(&path)
    }

    /// Deletes every download and staging file of a package: its update is over.
    pub fn clear_package(&self, key: &str) -> Result<(), StoreError> {
        let dir = self.package_dir(key)?;
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            remove_if_present(&entry.path())?;
        }
        Ok(())
    }

    /// The size of the state directory's file system.
    pub fn total_space(&self) -> Result<u64, StoreError> {
        let st =
            rustix::fs::statvfs(&self.dir).map_err(|e| io_err("statvfs", &self.dir)(e.into()))?;
        Ok(st.f_blocks.saturating_mul(st.f_frsize))
    }

    /// Free bytes on the state directory's filesystem for an unprivileged writer.
    pub fn free_space(&self) -> Result<u64, StoreError> {
        let st =
            rustix::fs::statvfs(&self.dir).map_err(|e| io_err("statvfs", &self.dir)(e.into()))?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }
}

fn read_state(path: &Path) -> Result<Result<State, String>, StoreError> {
    let read = |path| {
        let mut bytes = Vec::new();
        open_read(path)?.read_to_end(&mut bytes)?;
        Ok::<_, io::Error>(bytes)
    };
    let bytes = match read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Ok(State::default())),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Ok(Err(
                "it is a symlink, which the agent does not follow".into()
            ));
        }
        Err(e) => return Err(io_err("read", path)(e)),
    };
    // The format first: a newer agent's state need not parse as this one's.
    #[derive(Deserialize)]
    struct Format {
        format: u64,
    }
    if let Ok(Format { format }) = serde_json::from_slice::<Format>(&bytes) {
        if format > u64::from(FORMAT) {
            return Err(StoreError::NewerFormat {
                path: path.to_owned(),
                found: format,
            });
        }
    }
    let state: State = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => return Ok(Err(format!("not valid: {e}"))),
    };
    if state.format != FORMAT {
        return Ok(Err(format!(
            "format {} is not the supported format {FORMAT}",
            state.format
        )));
    }
    Ok(check_facts(&state).map(|()| state))
}

/// Facts that cannot all be true together mean the file was damaged or edited by hand.
fn check_facts(state: &State) -> Result<(), String> {
    let number = |v: &str, what: &str| {
        v.parse::<u64>()
            .map(drop)
            .map_err(|_| format!("{what} `{v}` is not a version code"))
    };
    for (key, p) in &state.packages {
        number(&p.version, &format!("{key}: version"))?;
        let Some(u) = &p.update else { continue };
        number(&u.from_version, &format!("{key}: from_version"))?;
        if u.patches.is_empty() {
            return Err(format!("{key}: an update without patches"));
        }
        for patch in &u.patches {
            number(
                &patch.to_version,
                &format!("{key}: update {} to_version", patch.id),
            )?;
        }
        if u.failed
            .as_ref()
            .is_some_and(|f| f.index >= u.patches.len())
        {
            return Err(format!("{key}: the failed patch is not in the chain"));
        }
        if u.install
            .as_ref()
            .is_some_and(|i| i.applied == 0 || i.applied > u.patches.len())
        {
            return Err(format!(
                "{key}: the install marker names patches not in the chain"
            ));
        }
    }
    Ok(())
}

/// Opens a file of the state directory for reading, never through a symlink.
fn open_read(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// Creates a directory of the state directory (mode 0700) and makes sure it is one: a symlink
/// planted in its place would send downloads and staging files elsewhere, so it is moved aside
/// (not followed, not deleted) and a real directory takes its place.
fn real_dir(path: &Path) -> Result<(), StoreError> {
    for _ in 0..2 {
        match fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(StoreError::CreateDir {
                    path: path.to_owned(),
                    source,
                });
            }
        }
        let meta = fs::symlink_metadata(path).map_err(io_err("stat", path))?;
        if meta.is_dir() {
            return Ok(());
        }
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".unexpected-{}", crate::unix_now()));
        let aside = PathBuf::from(aside);
        log::error!(
            "{} is a symlink or a file, not a directory; moved it to {} and not following it",
            path.display(),
            aside.display()
        );
        fs::rename(path, &aside).map_err(io_err("move aside", path))?;
    }
    Err(StoreError::NotADirectory {
        path: path.to_owned(),
    })
}

/// Takes group and other permissions off a path of the state directory that has them.
fn make_private(path: &Path, mode: u32) -> Result<(), StoreError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat", path)(e)),
    };
    let current = meta.permissions().mode() & 0o7777;
    if meta.file_type().is_symlink() || current & 0o077 == 0 {
        return Ok(());
    }
    log::warn!(
        "{} had mode {current:04o}; setting {mode:04o}",
        path.display()
    );
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))
}

fn open_private(path: &Path, truncate: bool) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(truncate)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(io_err("open", path))
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = open_private(path, true)?;
    f.write_all(bytes).map_err(io_err("write", path))?;
    if crate::fault::skip_fsync("state") {
        return Ok(());
    }
    crate::io_stats::fsynced();
    f.sync_all().map_err(io_err("fsync", path))
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// Makes a rename or a new file in `dir` survive a power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    crate::sync_dir(dir).map_err(io_err("fsync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        assert!(matches!(
            Store::open(tmp.path()),
            Err(StoreError::Locked { .. })
        ));
        let mut state = store.load().unwrap().state;
        state.packages.insert("a/b".into(), PackageState::new("6"));
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap().state, state);
        assert_eq!(Store::peek(tmp.path()).unwrap(), state);
    }

    #[test]
    fn corrupt_state_is_moved_aside() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(STATE_FILE), b"{not json").unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.state, State::default());
        assert!(
            loaded.lost.is_some(),
            "without a copy to fall back on, the state is lost"
        );
        let names: Vec<String> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().any(|n| n.starts_with("state.json.corrupt-")),
            "{names:?}"
        );
    }

    #[test]
    fn a_corrupt_state_falls_back_to_the_previous_save() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let mut state = State::default();
        state.packages.insert("a/b".into(), PackageState::new("6"));
        store.save(&state).unwrap();
        let mut newer = state.clone();
        newer.packages.get_mut("a/b").unwrap().version = "7".into();
        store.save(&newer).unwrap();
        let inconsistent = br#"{"format":1,"packages":{"a/b":{"version":"x","update":null,"last_check":null,"sha256":null}}}"#;
        fs::write(tmp.path().join(STATE_FILE), inconsistent).unwrap();
        assert_eq!(store.load().unwrap(), Loaded { state, lost: None });
    }

    #[test]
    fn a_newer_format_is_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let newer = br#"{"format": 2, "packages": {}, "a field of the future": true}"#;
        fs::write(tmp.path().join(STATE_FILE), newer).unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let e = store.load().unwrap_err();
        assert!(matches!(e, StoreError::NewerFormat { found: 2, .. }), "{e}");
        assert_eq!(fs::read(tmp.path().join(STATE_FILE)).unwrap(), newer);
        let names: Vec<String> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != LOCK_FILE && n != RESERVE_FILE)
            .collect();
        assert_eq!(names, [STATE_FILE]);
        assert!(matches!(
            Store::peek(tmp.path()),
            Err(StoreError::NewerFormat { .. })
        ));
    }

    #[test]
    fn a_state_file_deleted_by_hand_falls_back_to_its_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let mut state = State::default();
        state.packages.insert("a/b".into(), PackageState::new("6"));
        store.save(&state).unwrap();
        store.save(&state).unwrap();
        fs::remove_file(tmp.path().join(STATE_FILE)).unwrap();
        assert_eq!(store.load().unwrap(), Loaded { state, lost: None });
    }

    #[test]
    fn planted_symlinks_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let victim = elsewhere.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let state_dir = tmp.path().join("state");
        let store = Store::open(&state_dir).unwrap();
        store.clear_package("p/f").unwrap();
        let dir = fs::read_dir(state_dir.join("packages"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::os::unix::fs::symlink(&victim, dir.join(Store::file_name("23", "part"))).unwrap();
        assert!(store.open_partial("p/f", "23", 0).is_err());
        std::os::unix::fs::symlink(&victim, dir.join("staged-0")).unwrap();
        assert!(store.open_staged("p/f", 0).is_err());
        assert!(store.create_staged("p/f", 0).is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");

        fs::remove_dir_all(state_dir.join("packages")).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), state_dir.join("packages")).unwrap();
        // The planted link is moved aside, not followed, and the download goes where it belongs.
        store.open_partial("p/f", "23", 0).unwrap();
        assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 1);
        assert!(
            fs::symlink_metadata(state_dir.join("packages"))
                .unwrap()
                .is_dir()
        );

        drop(store);
        fs::remove_file(state_dir.join("state.json")).ok();
        std::os::unix::fs::symlink(&victim, state_dir.join("state.json")).unwrap();
        let store = Store::open(&state_dir).unwrap();
        assert_eq!(store.load().unwrap().state, State::default());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn ids_that_read_the_same_get_files_of_their_own() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let names: std::collections::BTreeSet<String> = ["1.0", "1_0", "1-0", "1/0", "1 0"]
            .into_iter()
            .map(|id| Store::file_name(id, "patch"))
            .collect();
        assert_eq!(names.len(), 5, "{names:?}");
        for (id, bytes) in [("23.1", b"first"), ("23_1", b"other")] {
            let (mut f, _) = store.open_partial("p/f", id, 0).unwrap();
            f.write_all(bytes).unwrap();
            store.complete_partial("p/f", id).unwrap();
        }
        let mut first = String::new();
        store
            .open_patch("p/f", "23.1")
            .unwrap()
            .unwrap()
            .read_to_string(&mut first)
            .unwrap();
        assert_eq!(first, "first");
    }

    #[test]
    fn partial_is_cut_to_durable_length() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let (mut f, len) = store.open_partial("p/f", "23", 0).unwrap();
        assert_eq!(len, 0);
        f.write_all(b"0123456789").unwrap();
        drop(f);
        let (_, len) = store.open_partial("p/f", "23", 4).unwrap();
        assert_eq!(len, 4);
        store.complete_partial("p/f", "23").unwrap();
        assert!(store.open_patch("p/f", "23").unwrap().is_some());
        store.clear_package("p/f").unwrap();
        assert!(store.open_patch("p/f", "23").unwrap().is_none());
    }
}
