//! The managed files: hashing, and the atomic swap with a copy kept for rollback.
//!
//! Beside a managed file `NAME` live at most two hidden siblings on the same filesystem:
//! `.NAME.ota-new`, the complete new version before it is renamed into place, and
//! `.NAME.ota-prev`, a hard link to the version before the last swap. A rename is atomic, so
//! after a power loss `NAME` is always either the old or the new version, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

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
    #[error("copying the new version beside {path} was stopped")]
    Stopped { path: PathBuf },
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
pub fn sha256_of(mut reader: impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex(&hasher.finalize()))
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

/// [`sha256_file`] on a blocking thread, so that the runtime (and the watchdog) keep going.
pub async fn sha256_file_async(path: &Path) -> Result<Option<String>, InstallError> {
    let path = path.to_owned();
    blocking(move || sha256_file(&path)).await
}

/// [`prepare`] on a blocking thread, giving up soon after `stop` says so.
pub async fn prepare_async(
    target: &Path,
    new: File,
    stop: impl Fn() -> bool + Send + 'static,
) -> Result<(), InstallError> {
    let target = target.to_owned();
    blocking(move || prepare_until(&target, new, &stop)).await
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
/// mode) and syncs it. A setuid or setgid target is refused: the agent runs as root, and a
/// server must not be able to hand out privileges through it.
pub fn prepare(target: &Path, new: impl Read) -> Result<(), InstallError> {
    prepare_until(target, new, &|| false)
}

fn prepare_until(
    target: &Path,
    mut new: impl Read,
    stop: &dyn Fn() -> bool,
) -> Result<(), InstallError> {
    use std::os::unix::fs::MetadataExt;
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
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&tmp)
        .map_err(err("create", &tmp))?;
    let mut buf = vec![0u8; 1 << 20];
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
        out.write_all(&buf[..n]).map_err(err("write", &tmp))?;
    }
    out.flush().map_err(err("write", &tmp))?;
    if let Some(m) = &meta {
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
    crate::io_stats::fsynced();
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("fsync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_and_rollback() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("app.apk");
        fs::write(&target, b"old").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o640)).unwrap();
        prepare(&target, &b"new"[..]).unwrap();
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
        prepare(&target, &b"new"[..]).unwrap();
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
                prepare(&target, &b"newer"[..]),
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
        let e = prepare(&target, &b"new"[..]).unwrap_err();
        assert!(matches!(e, InstallError::Blocked { .. }), "{e}");
        assert!(e.to_string().contains(".app.apk.ota-new"), "{e}");
    }
}
