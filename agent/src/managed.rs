//! The managed files: hashing, and the atomic swap with a copy kept for rollback.
//!
//! Beside a managed file `NAME` live at most two hidden siblings on the same filesystem:
//! `.NAME.ota-new`, the complete new version before it is renamed into place, and
//! `.NAME.ota-prev`, a hard link to the version before the last swap. A rename is atomic, so
//! after a power loss `NAME` is always either the old or the new version, never a mix.
//!
//! A file the agent installs carries its version record, the extended attribute
//! `user.ota-agent.version` (`{"version":"18","sha256":"…"}`), written on the new file before
//! the rename, so that the file and what it says of itself change together, and a rename and
//! a rollback keep it. It is how the agent knows a file's version without its state (see
//! `cycle::identify`); it counts only while the sha256 in it is the file's own. A file system
//! without extended attributes keeps no record: the state is then the only memory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::settle::Settling;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{op} {path} failed")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is setuid or setgid (mode {mode:04o}); the agent does not install such a file")]
    Privileged { path: PathBuf, mode: u32 },
    #[error("{path} is in the way of the new file: it is not a regular file; remove it")]
    Blocked { path: PathBuf },
    #[error("reading or copying {path} was stopped")]
    Stopped { path: PathBuf },
    #[error(
        "{path} is a symbolic link; the agent installs a file by renaming a new one over the path, which would replace the link: name the file it points to as the package's path"
    )]
    Symlink { path: PathBuf },
    #[error(
        "the new version beside {path} has sha256 {found}, not the {expected} it had when it was made; the staged file changed"
    )]
    Changed {
        path: PathBuf,
        expected: String,
        found: String,
    },
}

impl InstallError {
    /// True when the file system had no room (or quota) left.
    pub fn is_full(&self) -> bool {
        matches!(self, InstallError::Io { source, .. } if crate::no_room(source))
    }
}

/// The extended attribute that carries a file's version record.
pub const RECORD_ATTR: &str = "user.ota-agent.version";

/// Whose version a record speaks of: the package (`name/file_name`) and the language and robot
/// model its updates are offered for. A file copied from another robot, or from another
/// package, carries a record about something else, which counts for nothing here.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    pub package: String,
    pub language: String,
    pub robot_version: String,
}

/// What a file the agent installed says of itself: whose it is, the version it was installed as,
/// and its sha256 (which must still be the file's for the record to count).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VersionRecord {
    #[serde(flatten)]
    pub owner: Owner,
    pub version: String,
    pub sha256: String,
}

/// A managed file as it is now: its sha256 and the version record it carries, read through one
/// open file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Examined {
    pub sha256: String,
    pub record: Option<VersionRecord>,
}

impl Examined {
    /// The version the file's own record names, when the record is about this very file, as
    /// `owner` has it, and names a version code.
    pub fn recorded_version(&self, owner: &Owner) -> Option<&str> {
        self.record
            .as_ref()
            .filter(|r| r.sha256 == self.sha256 && r.owner == *owner)
            .filter(|r| r.version.parse::<u64>().is_ok())
            .map(|r| r.version.as_str())
    }
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn sibling(target: &Path, suffix: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.{suffix}"))
}

pub fn new_path(target: &Path) -> PathBuf {
    sibling(target, "ota-new")
}

pub fn prev_path(target: &Path) -> PathBuf {
    sibling(target, "ota-prev")
}

/// Hex sha256 of everything `reader` yields.
pub fn sha256_of(reader: impl Read) -> io::Result<String> {
    sha256_until(reader, &|| false).map(|sha| sha.expect("never stopped"))
}

/// Hex sha256 of everything `reader` yields, or `None` once `stop` says so: it is asked
/// between pieces of 256 KiB, so that a stop never waits for a whole file to be read (a
/// gigabyte takes seconds on a robot's flash).
pub fn sha256_until(mut reader: impl Read, stop: &dyn Fn() -> bool) -> io::Result<Option<String>> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        if stop() {
            return Ok(None);
        }
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(hex(&hasher.finalize())))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of a file, `None` when it does not exist.
pub fn sha256_file(path: &Path) -> Result<Option<String>, InstallError> {
    match File::open(path) {
        Ok(f) => sha256_of(f).map(Some).map_err(err("hash", path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err("open", path)(e)),
    }
}

/// [`sha256_file`] on a blocking thread, so that the runtime (and the watchdog) keep going,
/// given up with [`InstallError::Stopped`] soon after `stop` is set.
pub async fn sha256_file_async(
    path: &Path,
    stop: &crate::Shutdown,
) -> Result<Option<String>, InstallError> {
    let (path, stop) = (path.to_owned(), stop.clone());
    blocking(move || match File::open(&path) {
        Ok(f) => match sha256_until(f, &|| stop.is_set()).map_err(err("hash", &path))? {
            Some(sha) => Ok(Some(sha)),
            None => Err(InstallError::Stopped { path }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err("open", &path)(e)),
    })
    .await
}

/// The file's sha256 and its version record; `None` when it does not exist.
pub fn examine(path: &Path) -> Result<Option<Examined>, InstallError> {
    examine_until(path, &|| false)
}

fn examine_until(path: &Path, stop: &dyn Fn() -> bool) -> Result<Option<Examined>, InstallError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err("open", path)(e)),
    };
    let record = read_record(&file);
    let Some(sha256) = sha256_until(&file, stop).map_err(err("hash", path))? else {
        return Err(InstallError::Stopped {
            path: path.to_owned(),
        });
    };
    Ok(Some(Examined { sha256, record }))
}

/// [`examine`] on a blocking thread, given up soon after `stop` is set.
pub async fn examine_async(
    path: &Path,
    stop: &crate::Shutdown,
) -> Result<Option<Examined>, InstallError> {
    let (path, stop) = (path.to_owned(), stop.clone());
    blocking(move || examine_until(&path, &|| stop.is_set())).await
}

/// The record on `file`, if it carries a readable one.
fn read_record(file: &File) -> Option<VersionRecord> {
    let mut buf = [0u8; 512];
    let len = rustix::fs::fgetxattr(file, RECORD_ATTR, &mut buf[..]).ok()?;
    serde_json::from_slice(&buf[..len]).ok()
}

/// Writes the record onto `file`; false when its file system keeps no extended attributes.
fn write_record(file: &File, record: &VersionRecord) -> io::Result<bool> {
    let value = serde_json::to_vec(record).expect("a record serialises");
    match rustix::fs::fsetxattr(file, RECORD_ATTR, &value, rustix::fs::XattrFlags::empty()) {
        Ok(()) => Ok(true),
        // ENOTSUP, which is EOPNOTSUPP on Linux.
        Err(rustix::io::Errno::NOTSUP) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Records the file as it is now as `owner`'s `version` (`ota-agent adopt`): its sha256, in a
/// record on the file itself, synced. Returns the sha256 and whether the file system kept it.
pub fn record_as(path: &Path, owner: Owner, version: &str) -> Result<(String, bool), InstallError> {
    refuse_symlink(path)?;
    let file = File::open(path).map_err(err("open", path))?;
    let sha256 = sha256_of(&file).map_err(err("hash", path))?;
    let record = VersionRecord {
        owner,
        version: version.to_owned(),
        sha256: sha256.clone(),
    };
    let kept = write_record(&file, &record).map_err(err("record the version on", path))?;
    file.sync_all().map_err(err("fsync", path))?;
    Ok((sha256, kept))
}

/// What the new file must be: whose, the version it is installed as, and the sha256 it was
/// made with.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub owner: Owner,
    pub version: String,
    pub sha256: String,
}

/// [`prepare`] on a blocking thread, giving up soon after `stop` says so.
pub async fn prepare_async(
    target: &Path,
    new: File,
    expect: NewVersion,
    stop: impl Fn() -> bool + Send + 'static,
) -> Result<(), InstallError> {
    let target = target.to_owned();
    blocking(move || prepare_until(&target, new, expect, &stop)).await
}

fn refuse_symlink(target: &Path) -> Result<(), InstallError> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_symlink() => Err(InstallError::Symlink {
            path: target.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// The size of the managed file's file system.
pub fn total_space(target: &Path) -> Result<u64, InstallError> {
    let dir = target.parent().unwrap_or(Path::new("/"));
    let st = rustix::fs::statvfs(dir).map_err(|e| err("statvfs", dir)(e.into()))?;
    Ok(st.f_blocks.saturating_mul(st.f_frsize))
}

/// Free bytes on the managed file's filesystem, where its new version is written first.
pub fn free_space(target: &Path) -> Result<u64, InstallError> {
    let dir = target.parent().unwrap_or(Path::new("/"));
    let st = rustix::fs::statvfs(dir).map_err(|e| err("statvfs", dir)(e.into()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(out) => out,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Copies the new version next to the target (same filesystem, the target's owner, group and
/// mode), checks that it is what was applied, gives it its version record and syncs it. A
/// setuid or setgid target is refused: the agent runs as root, and a server must not be able
/// to hand out privileges through it; so is a symbolic link, which the rename would replace.
pub fn prepare(target: &Path, new: impl Read, expect: NewVersion) -> Result<(), InstallError> {
    prepare_until(target, new, expect, &|| false)
}

fn prepare_until(
    target: &Path,
    new: impl Read,
    expect: NewVersion,
    stop: &dyn Fn() -> bool,
) -> Result<(), InstallError> {
    refuse_symlink(target)?;
    let tmp = new_path(target);
    let meta = match fs::metadata(target) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(err("stat", target)(e)),
    };
    let mode = meta
        .as_ref()
        .map_or(0o644, |m| m.permissions().mode() & 0o7777);
    if mode & 0o6000 != 0 {
        return Err(InstallError::Privileged {
            path: target.to_owned(),
            mode,
        });
    }
    match fs::symlink_metadata(&tmp) {
        Ok(m) if !m.file_type().is_file() => return Err(InstallError::Blocked { path: tmp }),
        Ok(_) => fs::remove_file(&tmp).map_err(err("remove", &tmp))?,
        Err(_) => {}
    }
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&tmp)
        .map_err(err("create", &tmp))?;
    let written = write_new(out, new, expect, meta.as_ref(), mode, stop, target);
    if written.is_err() {
        // A half-written new version (a full disk, a stop) would only take the room the next
        // try needs.
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Writes the new version into `out` (the file beside `target`), checks it is the one
/// expected, records its version on it, gives it the managed file's owner and mode, syncs it.
fn write_new(
    out: File,
    mut new: impl Read,
    expect: NewVersion,
    meta: Option<&fs::Metadata>,
    mode: u32,
    stop: &dyn Fn() -> bool,
    target: &Path,
) -> Result<(), InstallError> {
    use std::os::unix::fs::MetadataExt;
    let tmp = new_path(target);
    let mut out = Settling::new(out, !crate::fault::skip_fsync("staged"));
    let mut buf = vec![0u8; 1 << 20];
    let mut hasher = Sha256::new();
    loop {
        if stop() {
            drop(out);
            let _ = fs::remove_file(&tmp);
            return Err(InstallError::Stopped {
                path: target.to_owned(),
            });
        }
        let n = match new.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(err("read the new version for", target)(e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(err("write", &tmp))?;
    }
    out.flush().map_err(err("write", &tmp))?;
    let out = out.into_inner();
    let found = hex(&hasher.finalize());
    if found != expect.sha256 {
        drop(out);
        let _ = fs::remove_file(&tmp);
        return Err(InstallError::Changed {
            path: target.to_owned(),
            expected: expect.sha256,
            found,
        });
    }
    let record = VersionRecord {
        owner: expect.owner,
        version: expect.version,
        sha256: found,
    };
    if !write_record(&out, &record).map_err(err("record the version on", &tmp))? {
        log::warn!(
            "the file system of {} keeps no extended attributes: the new file carries no record of its version, and only the agent's state remembers it",
            target.display()
        );
    }
    if let Some(m) = meta {
        // Owner and group first: chown clears setuid and setgid, and may need CAP_CHOWN.
        let (uid, gid) = (m.uid(), m.gid());
        let ours = out.metadata().map_err(err("stat", &tmp))?;
        if (ours.uid(), ours.gid()) != (uid, gid) {
            rustix::fs::fchown(
                &out,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(|e| err("give the owner and group of the managed file to", &tmp)(e.into()))?;
        }
    }
    // The mode given to open is filtered by the umask; set it exactly.
    out.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err("chmod", &tmp))?;
    if crate::fault::skip_fsync("staged") {
        return Ok(());
    }
    crate::io_stats::fsynced();
    out.sync_all().map_err(err("fsync", &tmp))
}

/// Keeps the current file as the rollback copy and renames the prepared one into place.
pub fn swap(target: &Path) -> Result<(), InstallError> {
    let prev = prev_path(target);
    let _ = fs::remove_file(&prev);
    // Some filesystems (FAT on SD cards) have no hard links; they get a synced copy.
    if target.exists() && fs::hard_link(target, &prev).is_err() {
        let mut from = File::open(target).map_err(err("open", target))?;
        let mut to = File::create(&prev).map_err(err("create", &prev))?;
        io::copy(&mut from, &mut to).map_err(err("copy", target))?;
        to.sync_all().map_err(err("fsync", &prev))?;
    }
    let new = new_path(target);
    fs::rename(&new, target).map_err(err("rename", &new))?;
    if crate::fault::skip_fsync("managed-dir") {
        return Ok(());
    }
    sync_parent(target)
}

/// Puts the rollback copy back in place; false when there is none.
pub fn rollback(target: &Path) -> Result<bool, InstallError> {
    let prev = prev_path(target);
    if !prev.exists() {
        return Ok(false);
    }
    fs::rename(&prev, target).map_err(err("rename", &prev))?;
    sync_parent(target)?;
    Ok(true)
}

/// Removes a prepared file that was never swapped in.
pub fn discard_prepared(target: &Path) {
    let _ = fs::remove_file(new_path(target));
}

fn sync_parent(target: &Path) -> Result<(), InstallError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    crate::sync_dir(dir).map_err(err("fsync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    fn owner() -> Owner {
        Owner {
            package: "p/f".into(),
            language: "CN".into(),
            robot_version: "1".into(),
        }
    }

    /// Prepares `bytes` as version 2 of `target`.
    fn prepare_v2(target: &Path, bytes: &[u8]) -> Result<(), InstallError> {
        let expect = NewVersion {
            owner: owner(),
            version: "2".into(),
            sha256: sha(bytes),
        };
        prepare(target, bytes, expect)
    }

    #[test]
    fn swap_and_rollback() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("app.apk");
        fs::write(&target, b"old").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o640)).unwrap();
        prepare_v2(&target, b"new").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"old");
        swap(&target).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(fs::read(prev_path(&target)).unwrap(), b"old");
        assert!(rollback(&target).unwrap());
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert!(!rollback(&target).unwrap());
        assert_eq!(
            sha256_file(&target).unwrap().unwrap(),
            hex(&Sha256::digest(b"old"))
        );
    }

    #[test]
    fn owner_group_and_mode_are_kept_and_setuid_is_refused() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("app.apk");
        fs::write(&target, b"old").unwrap();
        let root = rustix::process::geteuid().is_root();
        if root {
            // nobody:nogroup, as on a robot whose service runs unprivileged.
            rustix::fs::chown(
                &target,
                Some(rustix::fs::Uid::from_raw(65534)),
                Some(rustix::fs::Gid::from_raw(65534)),
            )
            .unwrap();
        }
        fs::set_permissions(&target, fs::Permissions::from_mode(0o640)).unwrap();
        let before = fs::metadata(&target).unwrap();
        prepare_v2(&target, b"new").unwrap();
        swap(&target).unwrap();
        let after = fs::metadata(&target).unwrap();
        assert_eq!(after.uid(), before.uid());
        assert_eq!(after.gid(), before.gid());
        assert_eq!(after.permissions().mode() & 0o7777, 0o640);
        if root {
            assert_eq!((after.uid(), after.gid()), (65534, 65534));
        }

        for mode in [0o4755, 0o2755] {
            fs::set_permissions(&target, fs::Permissions::from_mode(mode)).unwrap();
            assert!(matches!(
                prepare_v2(&target, b"newer"),
                Err(InstallError::Privileged { .. })
            ));
            assert!(!new_path(&target).exists());
        }
    }

    #[test]
    fn a_directory_in_the_way_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("app.apk");
        fs::write(&target, b"old").unwrap();
        fs::create_dir(new_path(&target)).unwrap();
        let e = prepare_v2(&target, b"new").unwrap_err();
        assert!(matches!(e, InstallError::Blocked { .. }), "{e}");
        assert!(e.to_string().contains(".app.apk.ota-new"), "{e}");
    }

    #[test]
    fn a_new_file_carries_its_version_record_and_a_rollback_keeps_the_old_one() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("app.apk");
        fs::write(&target, b"old").unwrap();
        assert_eq!(examine(&target).unwrap().unwrap().record, None);
        let new_sha = sha(b"new");
        prepare_v2(&target, b"new").unwrap();
        swap(&target).unwrap();
        let found = examine(&target).unwrap().unwrap();
        let Some(record) = &found.record else {
            // A file system without extended attributes keeps no record; nothing more to see.
            return;
        };
        assert_eq!(
            record,
            &VersionRecord {
                owner: owner(),
                version: "2".into(),
                sha256: new_sha.clone()
            }
        );
        assert_eq!(found.recorded_version(&owner()), Some("2"));
        // A record about other bytes does not count.
        prepare_v2(&target, b"newer").unwrap();
        swap(&target).unwrap();
        assert!(rollback(&target).unwrap());
        assert_eq!(
            examine(&target)
                .unwrap()
                .unwrap()
                .recorded_version(&owner()),
            Some("2")
        );
        fs::write(&target, b"edited by hand").unwrap();
        let edited = examine(&target).unwrap().unwrap();
        assert_eq!(
            edited.record.as_ref().map(|r| r.sha256.as_str()),
            Some(new_sha.as_str())
        );
        assert_eq!(edited.recorded_version(&owner()), None);
        // Adopted by hand: the record names the file as it is now.
        let (now, kept) = record_as(&target, owner(), "7").unwrap();
        assert!(kept);
        assert_eq!(
            examine(&target)
                .unwrap()
                .unwrap()
                .recorded_version(&owner()),
            Some("7")
        );
        assert_eq!(now, sha(b"edited by hand"));
        assert_eq!(examine(&tmp.path().join("missing")).unwrap(), None);
    }

    #[test]
    fn a_staged_file_that_changed_and_a_symlinked_path_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("app.apk");
        fs::write(&target, b"old").unwrap();
        let expect = NewVersion {
            owner: owner(),
            version: "2".into(),
            sha256: sha(b"what was applied"),
        };
        let e = prepare(&target, &b"something else"[..], expect).unwrap_err();
        assert!(matches!(e, InstallError::Changed { .. }), "{e}");
        assert!(!new_path(&target).exists());
        let link = tmp.path().join("current");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = prepare_v2(&link, b"new").unwrap_err();
        assert!(matches!(e, InstallError::Symlink { .. }), "{e}");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(record_as(&link, owner(), "3").is_err());
        assert_eq!(fs::read(&target).unwrap(), b"old");
    }
}
