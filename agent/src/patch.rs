//! Classic bsdiff 4.x patches (`BSDIFF40` and three bzip2 streams): header checks and applying.
//!
//! The old file is mapped, not read, and the new one streams out through a writer that refuses
//! to grow past the size the header promised, so a hostile patch can neither exhaust memory nor
//! fill the disk; the produced size is compared with the promise at the end.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"BSDIFF40";
const HEADER_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("not a bsdiff 4.x patch: {0}")]
    Header(String),
    #[error("patch promises a {promised}-byte file, more than the limit of {limit} bytes")]
    TooLarge { promised: u64, limit: u64 },
    #[error("patch is corrupt or does not fit the old file")]
    Corrupt(#[source] io::Error),
    #[error("patch produced {produced} bytes but its header promised {promised}")]
    SizeMismatch { produced: u64, promised: u64 },
    #[error("{op} {path} failed")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// The three numbers of a patch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub control_len: u64,
    pub diff_len: u64,
    pub new_size: u64,
}

/// bsdiff's integers are sign and magnitude, little endian.
fn offtin(b: &[u8]) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[..8]);
    let magnitude = (u64::from_le_bytes(raw) & !(1 << 63)) as i64;
    if b[7] & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

pub fn header(patch: &[u8]) -> Result<Header, PatchError> {
    if patch.len() < HEADER_LEN {
        return Err(PatchError::Header(format!(
            "only {} bytes long",
            patch.len()
        )));
    }
    if &patch[..8] != MAGIC {
        return Err(PatchError::Header("no BSDIFF40 magic".into()));
    }
    let field = |at: usize, name: &str| {
        let v = offtin(&patch[at..at + 8]);
        // A set sign bit is refused even on a zero magnitude: qbsdiff reads that "-0" as -2^63,
        // and two such block lengths overflow its own length check.
        if patch[at + 7] & 0x80 != 0 {
            return Err(PatchError::Header(format!(
                "negative {name} (-{})",
                v.unsigned_abs()
            )));
        }
        Ok(v as u64)
    };
    let h = Header {
        control_len: field(8, "control block length")?,
        diff_len: field(16, "diff block length")?,
        new_size: field(24, "new file size")?,
    };
    let blocks = h
        .control_len
        .checked_add(h.diff_len)
        .and_then(|b| b.checked_add(HEADER_LEN as u64));
    if blocks.is_none_or(|b| b > patch.len() as u64) {
        return Err(PatchError::Header(format!(
            "its blocks ({} + {} bytes) do not fit in its {} bytes",
            h.control_len,
            h.diff_len,
            patch.len()
        )));
    }
    Ok(h)
}

/// Applies `patch` to `old`, writing the new file to `out`; returns the new file's size.
pub fn apply<W: Write>(old: &[u8], patch: &[u8], out: W, max_size: u64) -> Result<u64, PatchError> {
    let h = header(patch)?;
    if h.new_size > max_size {
        return Err(PatchError::TooLarge {
            promised: h.new_size,
            limit: max_size,
        });
    }
    let mut limited = Limited {
        inner: out,
        left: h.new_size,
    };
    let produced = qbsdiff::Bspatch::new(patch)
        .map_err(|e| PatchError::Header(e.to_string()))?
        .apply(old, &mut limited)
        .map_err(PatchError::Corrupt)?;
    if produced != h.new_size {
        return Err(PatchError::SizeMismatch {
            produced,
            promised: h.new_size,
        });
    }
    Ok(produced)
}

/// Maps a file read-only; an empty file maps to an empty slice.
pub fn map(file: &File) -> io::Result<Mapped> {
    if file.metadata()?.len() == 0 {
        return Ok(Mapped::Empty);
    }
    // SAFETY: the map is read-only and private to this process. The agent maps only files it
    // owns (staging files) or the managed file, which it hashed just before; a truncation by
    // another process while mapped would fault, which is the price of not reading a whole
    // firmware file into a robot's memory.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(file)? };
    Ok(Mapped::Map(map))
}

#[derive(Debug)]
pub enum Mapped {
    Empty,
    Map(memmap2::Mmap),
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Mapped::Empty => &[],
            Mapped::Map(m) => m,
        }
    }
}

/// `bspatch OLDFILE NEWFILE PATCHFILE`, as the reference tool does it, with the agent's code.
pub fn bspatch_files(old: &Path, new: &Path, patch: &Path) -> Result<u64, PatchError> {
    let io = |op, p: &Path| {
        let path = p.display().to_string();
        move |source| PatchError::Io { op, path, source }
    };
    let patch_bytes = std::fs::read(patch).map_err(io("read", patch))?;
    let old_file = File::open(old).map_err(io("open", old))?;
    let old_map = map(&old_file).map_err(io("map", old))?;
    let out = File::create(new).map_err(io("create", new))?;
    let mut writer = BufWriter::with_capacity(1 << 20, out);
    let size = apply(&old_map, &patch_bytes, &mut writer, u64::MAX >> 1)?;
    writer.flush().map_err(io("write", new))?;
    Ok(size)
}

/// A writer that fails instead of writing more than the header promised.
struct Limited<W> {
    inner: W,
    left: u64,
}

impl<W: Write> Write for Limited<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "patch writes more than its header promised",
            ));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(old: &[u8], new: &[u8]) -> Vec<u8> {
        let mut patch = Vec::new();
        qbsdiff::Bsdiff::new(old, new)
            .compare(io::Cursor::new(&mut patch))
            .unwrap();
        patch
    }

    #[test]
    fn round_trip() {
        let old: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut new = old.clone();
        new[100..200].fill(9);
        new.extend_from_slice(b"tail");
        let patch = diff(&old, &new);
        let mut out = Vec::new();
        assert_eq!(
            apply(&old, &patch, &mut out, u64::MAX).unwrap(),
            new.len() as u64
        );
        assert_eq!(out, new);
    }

    #[test]
    fn refuses_bad_headers_and_lies() {
        let old = b"hello world".to_vec();
        let new = b"hello brave new world".to_vec();
        let patch = diff(&old, &new);

        assert!(matches!(header(b"BSDIFF4"), Err(PatchError::Header(_))));
        assert!(matches!(header(&[b'x'; 40]), Err(PatchError::Header(_))));

        let mut huge = patch.clone();
        huge[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(matches!(
            apply(&old, &huge, Vec::new(), 1 << 30),
            Err(PatchError::TooLarge { .. })
        ));

        let mut negative = patch.clone();
        negative[15] |= 0x80;
        assert!(matches!(header(&negative), Err(PatchError::Header(_))));

        let mut short = patch.clone();
        short[24..32].copy_from_slice(&5u64.to_le_bytes());
        assert!(apply(&old, &short, Vec::new(), 1 << 30).is_err());

        let mut long = patch.clone();
        long[24..32].copy_from_slice(&((new.len() + 5) as u64).to_le_bytes());
        assert!(matches!(
            apply(&old, &long, Vec::new(), 1 << 30),
            Err(PatchError::SizeMismatch { .. })
        ));

        let truncated = &patch[..patch.len() / 2];
        assert!(apply(&old, truncated, Vec::new(), 1 << 30).is_err());
    }
}
