//! The release side: make a key pair, sign a patch, and check a signed patch as a robot would.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::keys::{KeyError, PublicKey, SecretKey};
use crate::metadata::{self, Expected, Metadata, VerifyError};

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("key file {path} is unusable")]
    Key { path: PathBuf, source: KeyError },
    #[error("the patch {patch} does not turn {old} into {new}: {reason}")]
    WrongPatch {
        patch: PathBuf,
        old: PathBuf,
        new: PathBuf,
        reason: String,
    },
    #[error("{path} is refused")]
    Verify { path: PathBuf, source: VerifyError },
    #[error("{path} is not the patch its metadata describes: {reason}")]
    Tampered { path: PathBuf, reason: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ReleaseError + 'a {
    move |source| ReleaseError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The files a key pair lives in: `<prefix>.key` (secret, mode 0600) and `<prefix>.pub`.
pub fn key_paths(prefix: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut name = prefix.as_os_str().to_owned();
        name.push(ext);
        PathBuf::from(name)
    };
    (with(".key"), with(".pub"))
}

/// Makes a key pair; never overwrites a key file.
pub fn keygen(prefix: &Path) -> Result<PublicKey, ReleaseError> {
    let (secret_path, public_path) = key_paths(prefix);
    let key = SecretKey::generate().map_err(|source| ReleaseError::Key {
        path: secret_path.clone(),
        source,
    })?;
    write_new(
        &secret_path,
        format!("{}\n", key.to_text()).as_bytes(),
        0o600,
    )?;
    write_new(
        &public_path,
        format!("{}\n", key.public().to_text()).as_bytes(),
        0o644,
    )?;
    Ok(key.public())
}

pub fn read_secret_key(path: &Path) -> Result<SecretKey, ReleaseError> {
    let text = fs::read_to_string(path).map_err(io_err("read", path))?;
    SecretKey::from_text(&text).map_err(|source| ReleaseError::Key {
        path: path.to_owned(),
        source,
    })
}

/// Reads a public key given inline or as the path of a `.pub` file.
pub fn read_public_key(text_or_path: &str) -> Result<PublicKey, ReleaseError> {
    if let Ok(key) = PublicKey::from_text(text_or_path) {
        return Ok(key);
    }
    let path = Path::new(text_or_path);
    let text = fs::read_to_string(path).map_err(io_err("read", path))?;
    PublicKey::from_text(&text).map_err(|source| ReleaseError::Key {
        path: path.to_owned(),
        source,
    })
}

/// The two sidecar files of a patch file.
pub fn sidecar_paths(patch: &Path) -> (PathBuf, PathBuf) {
    let meta = metadata::meta_url(&patch.to_string_lossy());
    let sig = metadata::sig_url(&patch.to_string_lossy());
    (PathBuf::from(meta), PathBuf::from(sig))
}

/// Signs `patch` after checking that it turns `old` into `new`; writes the two sidecar files.
pub fn sign(
    key: &SecretKey,
    expected: &Expected<'_>,
    old: &Path,
    new: &Path,
    patch: &Path,
) -> Result<Metadata, ReleaseError> {
    let read = |p: &Path| fs::read(p).map_err(io_err("read", p));
    let (old_bytes, new_bytes, patch_bytes) = (read(old)?, read(new)?, read(patch)?);
    let wrong = |reason: String| ReleaseError::WrongPatch {
        patch: patch.to_owned(),
        old: old.to_owned(),
        new: new.to_owned(),
        reason,
    };
    let mut made = Vec::with_capacity(new_bytes.len());
    qbsdiff::Bspatch::new(&patch_bytes)
        .and_then(|p| p.apply(&old_bytes, io::Cursor::new(&mut made)))
        .map_err(|e| wrong(e.to_string()))?;
    if made != new_bytes {
        return Err(wrong(format!(
            "it makes {} bytes that differ from the new file",
            made.len()
        )));
    }
    let meta = Metadata::describe(expected, &old_bytes, &patch_bytes, &new_bytes);
    let (json, signature) = meta.sign(key);
    let (meta_path, sig_path) = sidecar_paths(patch);
    write_replacing(&meta_path, &json)?;
    write_replacing(&sig_path, signature.as_bytes())?;
    Ok(meta)
}

/// Checks a signed patch on disk as the agent would check it after download.
pub fn check(
    keys: &[PublicKey],
    expected: &Expected<'_>,
    patch: &Path,
) -> Result<Metadata, ReleaseError> {
    let (meta_path, sig_path) = sidecar_paths(patch);
    let json = fs::read(&meta_path).map_err(io_err("read", &meta_path))?;
    let sig = fs::read(&sig_path).map_err(io_err("read", &sig_path))?;
    let refused = |source| ReleaseError::Verify {
        path: meta_path.clone(),
        source,
    };
    let meta = metadata::verify(keys, &json, &sig).map_err(refused)?;
    meta.check(expected).map_err(refused)?;
    let bytes = fs::read(patch).map_err(io_err("read", patch))?;
    let sha = metadata::hex_sha256(&bytes);
    if bytes.len() as u64 != meta.patch_size || sha != meta.patch_sha256 {
        return Err(ReleaseError::Tampered {
            path: patch.to_owned(),
            reason: format!(
                "{} bytes with sha256 {sha}; signed: {} bytes with sha256 {}",
                bytes.len(),
                meta.patch_size,
                meta.patch_sha256
            ),
        });
    }
    Ok(meta)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ReleaseError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err("create", path))?;
    f.write_all(bytes).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("fsync", path))
}

/// Writes through a temporary file and a rename, so that a reader never sees half a file.
fn write_replacing(path: &Path, bytes: &[u8]) -> Result<(), ReleaseError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes).map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", &tmp))
}
