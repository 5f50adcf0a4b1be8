//! A reproducible demo catalog: a firmware-like file in versions 16, 17 and 18.
//!
//! The data comes from a PRNG with a fixed seed, so the same size always gives the same files,
//! and a directory that already holds them is reused as it is. [`generate_signed`] adds a
//! signing key, so that the server also serves signed metadata next to each patch.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ota_signing::PublicKey;
use ota_signing::release::{self, ReleaseError};

/// The default size of the demo firmware file, in bytes.
pub const DEFAULT_SIZE: usize = 16 * 1024 * 1024;

const SEED: u64 = 0x0a1f_a220_1611_2916;
const FORMAT: &str = "ota-mock-server demo 1";

/// The demo's versions: code, name, update id of the patch leading to it.
const VERSIONS: [(u64, &str, Option<&str>); 3] = [
    (16, "1.1.0.32", None),
    (17, "1.1.1.32", Some("23")),
    (18, "1.1.2.32", Some("25")),
];

/// Errors of writing the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot write demo file {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("demo size {0} is too small, it needs at least 4096 bytes")]
    TooSmall(usize),
    #[error("cannot make or read the demo signing key {}", path.display())]
    Key { path: PathBuf, source: ReleaseError },
}

/// The signing key of a signed demo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoKey {
    /// The secret key file the catalog names, `DIR/vendor.key`.
    pub secret: PathBuf,
    /// The public key file, `DIR/vendor.pub`, for the agent's config.
    pub public_file: PathBuf,
    /// The public key itself.
    pub public: PublicKey,
}

/// Writes the demo catalog into `dir` (unless `dir` already holds the same demo) and returns
/// the path of `dir/catalog.toml`.
pub fn generate(dir: &Path, size: usize) -> Result<PathBuf, DemoError> {
    write_demo(dir, size, false)
}

/// Like [`generate`], with a key pair `dir/vendor.key` and `dir/vendor.pub` (made unless the
/// secret key exists) that the catalog names as its signing key.
pub fn generate_signed(dir: &Path, size: usize) -> Result<(PathBuf, DemoKey), DemoError> {
    fs::create_dir_all(dir).map_err(|source| DemoError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let key = demo_key(dir)?;
    Ok((write_demo(dir, size, true)?, key))
}

fn demo_key(dir: &Path) -> Result<DemoKey, DemoError> {
    let prefix = dir.join("vendor");
    let (secret, public_file) = release::key_paths(&prefix);
    let key_error = |source| DemoError::Key {
        path: secret.clone(),
        source,
    };
    let public = if secret.exists() {
        let public = release::read_secret_key(&secret)
            .map_err(key_error)?
            .public();
        if !public_file.exists() {
            fs::write(&public_file, format!("{}\n", public.to_text())).map_err(|source| {
                DemoError::Write {
                    path: public_file.clone(),
                    source,
                }
            })?;
        }
        public
    } else {
        log::info!("making the demo signing key {}", secret.display());
        release::keygen(&prefix).map_err(key_error)?
    };
    Ok(DemoKey {
        secret,
        public_file,
        public,
    })
}

fn write_demo(dir: &Path, size: usize, signed: bool) -> Result<PathBuf, DemoError> {
    if size < 4096 {
        return Err(DemoError::TooSmall(size));
    }
    let catalog = dir.join("catalog.toml");
    let stamp_path = dir.join("demo.stamp");
    let stamp = format!("{FORMAT} seed={SEED:x} size={size}\n");
    let versions = dir.join("versions");
    let text = catalog_text(signed);
    let write = |path: &Path, data: &[u8]| {
        fs::write(path, data).map_err(|source| DemoError::Write {
            path: path.to_path_buf(),
            source,
        })
    };
    let complete = fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp)
        && catalog.is_file()
        && VERSIONS
            .iter()
            .all(|(code, _, _)| versions.join(code.to_string()).is_file());
    if complete {
        log::info!("reusing the demo in {}", dir.display());
        // The same versions serve signed or not; only the catalog differs.
        if fs::read_to_string(&catalog).is_ok_and(|t| t != text) {
            write(&catalog, text.as_bytes())?;
        }
        return Ok(catalog);
    }
    fs::create_dir_all(&versions).map_err(|source| DemoError::Write {
        path: versions.clone(),
        source,
    })?;
    // The stamp goes first and last, so an interrupted run is never mistaken for a finished one.
    let _ = fs::remove_file(&stamp_path);
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut data = firmware(&mut rng, size);
    for (i, (code, _, _)) in VERSIONS.iter().enumerate() {
        if i > 0 {
            data = edit(&mut rng, &data);
        }
        write(&versions.join(code.to_string()), &data)?;
    }
    write(&catalog, text.as_bytes())?;
    write(&stamp_path, stamp.as_bytes())?;
    log::info!(
        "wrote a demo of {size} bytes per version in {}",
        dir.display()
    );
    Ok(catalog)
}

fn catalog_text(signed: bool) -> String {
    let mut text = String::from(
        "# The demo catalog of ota-mock-server, with the values of the contract's examples.\n\
         [server]\nexpires_in = 11999\n",
    );
    if signed {
        text.push_str("signing_key = \"vendor.key\"\n");
    }
    text.push_str(
        "\n\
         [[client]]\nid = \"mobile_1\"\nsecret = \"secret_1\"\n\n\
         [[user]]\nusername = \"aa\"\npassword = \"aa\"\n\n\
         [[package]]\nname = \"com.ubtechinc.alpha2services\"\nlabel = \"Alpha2Services\"\n\n\
         [[package.file]]\nfile_name = \"service5mic\"\nlanguage = \"CN\"\n",
    );
    for (code, name, id) in VERSIONS {
        text.push_str(&format!(
            "\n[[package.file.version]]\ncode = {code}\nname = \"{name}\"\n"
        ));
        if let Some(id) = id {
            text.push_str(&format!("id = \"{id}\"\n"));
        }
        text.push_str(&format!("file = \"versions/{code}\"\n"));
    }
    text
}

const WORDS: [&str; 24] = [
    "robot", "servo", "motion", "speech", "wakeup", "mic", "array", "beam", "error", "init", "ok",
    "failed", "timeout", "volume", "audio", "frame", "buffer", "config", "service", "ubtech",
    "alpha2", "version", "update", "%d",
];

/// Bytes that look like machine code: 32-bit words from a small set of opcodes.
fn code(rng: &mut fastrand::Rng, out: &mut Vec<u8>, len: usize) {
    let end = out.len() + len;
    while out.len() < end {
        let op = [0xe5u32, 0xe1, 0xe3, 0xea, 0xeb, 0xe2, 0xe8, 0xe9][rng.usize(..8)];
        let word = (op << 24) | (rng.u32(..) & 0x00ff_f0ff);
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.truncate(end);
}

/// Log and configuration strings, which compress well.
fn text(rng: &mut fastrand::Rng, out: &mut Vec<u8>, len: usize) {
    let end = out.len() + len;
    while out.len() < end {
        out.extend_from_slice(WORDS[rng.usize(..WORDS.len())].as_bytes());
        out.push(if rng.u8(..8) == 0 { b'\n' } else { b' ' });
    }
    out.truncate(end);
}

fn random(rng: &mut fastrand::Rng, out: &mut Vec<u8>, len: usize) {
    out.extend((0..len).map(|_| rng.u8(..)));
}

fn segment(rng: &mut fastrand::Rng, out: &mut Vec<u8>, max: usize) {
    let len = |rng: &mut fastrand::Rng, lo: usize, hi: usize| rng.usize(lo..hi).min(max).max(1);
    match rng.u8(..20) {
        0..10 => {
            let n = len(rng, 4096, 65536);
            code(rng, out, n);
        }
        10..15 => {
            let n = len(rng, 1024, 16384);
            text(rng, out, n);
        }
        15..17 => {
            let n = len(rng, 256, 8192);
            out.resize(out.len() + n, 0);
        }
        _ => {
            let n = len(rng, 1024, 8192);
            random(rng, out, n);
        }
    }
}

fn firmware(rng: &mut fastrand::Rng, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(b"UBTA2FW\0");
    while out.len() < size {
        let max = size - out.len();
        segment(rng, &mut out, max);
    }
    out
}

/// The next version: a few percent of the file changed, inserted or deleted in small regions.
fn edit(rng: &mut fastrand::Rng, old: &[u8]) -> Vec<u8> {
    let mut data = old.to_vec();
    let edits = 3 + old.len() / (256 * 1024);
    let average = (old.len() * 3 / 100 / edits).max(16);
    for _ in 0..edits {
        let len = rng.usize(1..=2 * average);
        let at = rng.usize(8..data.len().max(9));
        let mut fresh = Vec::with_capacity(len);
        match rng.u8(..3) {
            0 => {
                code(rng, &mut fresh, len);
                let end = (at + len).min(data.len());
                data.splice(at..end, fresh);
            }
            1 => {
                text(rng, &mut fresh, len);
                data.splice(at..at, fresh);
            }
            _ => {
                let end = (at + len).min(data.len());
                data.drain(at..end);
            }
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_reproducible_and_differ_a_little() {
        let first = firmware(&mut fastrand::Rng::with_seed(SEED), 200_000);
        let again = firmware(&mut fastrand::Rng::with_seed(SEED), 200_000);
        assert_eq!(first, again);
        assert_eq!(first.len(), 200_000);
        let next = edit(&mut fastrand::Rng::with_seed(1), &first);
        assert_ne!(next, first);
        let len_change = next.len().abs_diff(first.len());
        assert!(len_change < 200_000 / 10, "{len_change}");
    }
}
