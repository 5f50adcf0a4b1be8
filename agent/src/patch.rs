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
    #[error("cannot start the threads that decompress the patch")]
    Threads(#[source] io::Error),
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
        // A set sign bit is refused even on a zero magnitude: no bsdiff writes that "-0", and
        // other readers (qbsdiff) take it as -2^63, which overflowed their length checks.
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
///
/// The diff and extra streams are decompressed on two threads of their own while this one adds
/// and writes: bzip2 is most of the work, and a robot's board has more than one core. The
/// threads hand over bounded chunks, so memory stays a few MiB whatever the patch's size.
pub fn apply<W: Write>(old: &[u8], patch: &[u8], out: W, max_size: u64) -> Result<u64, PatchError> {
    let h = header(patch)?;
    if h.new_size > max_size {
        return Err(PatchError::TooLarge {
            promised: h.new_size,
            limit: max_size,
        });
    }
    // `header` checked that the blocks fit in the patch.
    let ctrl_end = HEADER_LEN + h.control_len as usize;
    let diff_end = ctrl_end + h.diff_len as usize;
    let mut limited = Limited {
        inner: out,
        left: h.new_size,
    };
    let produced = std::thread::scope(|scope| {
        let mut run = Run {
            old,
            ctrl: bzip2::read::BzDecoder::new(&patch[HEADER_LEN..ctrl_end]),
            diff: Stream::spawn(scope, &patch[ctrl_end..diff_end]).map_err(PatchError::Threads)?,
            extra: Stream::spawn(scope, &patch[diff_end..]).map_err(PatchError::Threads)?,
            out: &mut limited,
            scratch: vec![0; CHUNK],
        };
        run.apply(h.new_size).map_err(PatchError::Corrupt)
        // Returning drops the streams' receivers, which stops their threads at their next chunk.
    })?;
    limited.flush().map_err(PatchError::Corrupt)?;
    if produced != h.new_size {
        return Err(PatchError::SizeMismatch {
            produced,
            promised: h.new_size,
        });
    }
    Ok(produced)
}

/// How much a decompression thread hands over at a time, and how many chunks may wait.
pub(crate) const CHUNK: usize = 256 * 1024;
const CHUNKS_AHEAD: usize = 4;

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// The state of one application: bsdiff's loop of (add, copy, seek) controls.
struct Run<'a, R, W> {
    old: &'a [u8],
    ctrl: R,
    diff: Stream,
    extra: Stream,
    out: W,
    scratch: Vec<u8>,
}

impl<R: io::Read, W: Write> Run<'_, R, W> {
    fn apply(&mut self, new_size: u64) -> io::Result<u64> {
        let mut new_pos: u64 = 0;
        let mut old_pos: i64 = 0;
        let mut control = [0u8; 24];
        while new_pos < new_size {
            // Controls that end early leave the file short, which the caller reports as such.
            match fill(&mut self.ctrl, &mut control)? {
                0 => break,
                24 => {}
                _ => return Err(corrupt("the control block ends inside a control")),
            }
            let (add, copy, seek) = (
                offtin(&control[0..]),
                offtin(&control[8..]),
                offtin(&control[16..]),
            );
            let (Ok(add), Ok(copy)) = (u64::try_from(add), u64::try_from(copy)) else {
                return Err(corrupt("a control with a negative length"));
            };
            let fits = |pos: u64, len: u64| pos.checked_add(len).is_some_and(|end| end <= new_size);
            if !fits(new_pos, add) || !fits(new_pos + add, copy) {
                return Err(corrupt("a control writes past the promised size"));
            }
            self.add(old_pos, add)?;
            self.copy(copy)?;
            new_pos += add + copy;
            old_pos = (old_pos.checked_add(add as i64))
                .and_then(|p| p.checked_add(seek))
                .ok_or_else(|| corrupt("a control seeks outside any file"))?;
        }
        Ok(new_pos)
    }

    /// Writes `len` bytes of the old file from `at`, each plus its diff byte.
    fn add(&mut self, at: i64, len: u64) -> io::Result<()> {
        let start =
            usize::try_from(at).map_err(|_| corrupt("a control reads before the old file"))?;
        let end = start
            .checked_add(usize::try_from(len).unwrap_or(usize::MAX))
            .filter(|&end| end <= self.old.len())
            .ok_or_else(|| corrupt("a control reads past the end of the old file"))?;
        let mut pos = start;
        while pos < end {
            let diff = self.diff.take(end - pos)?;
            let n = diff.len();
            let out = &mut self.scratch[..n];
            for ((o, d), b) in out.iter_mut().zip(diff).zip(&self.old[pos..pos + n]) {
                *o = d.wrapping_add(*b);
            }
            self.out.write_all(out)?;
            pos += n;
        }
        Ok(())
    }

    fn copy(&mut self, len: u64) -> io::Result<()> {
        let mut left = len;
        while left > 0 {
            let extra = self
                .extra
                .take(usize::try_from(left).unwrap_or(usize::MAX))?;
            left -= extra.len() as u64;
            self.out.write_all(extra)?;
        }
        Ok(())
    }
}

/// One bzip2 stream, decompressed on its own thread and received in chunks.
struct Stream {
    chunks: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    /// Emptied chunks go back to the thread, so that it does not allocate for every one.
    spent: std::sync::mpsc::Sender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

impl Stream {
    fn spawn<'scope>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        block: &'scope [u8],
    ) -> io::Result<Stream> {
        let (tx, chunks) = std::sync::mpsc::sync_channel(CHUNKS_AHEAD);
        let (spent, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
        // A thread the system refuses (a task limit, no memory) is an error to retry later, not
        // the panic of `Scope::spawn`, which would abort the daemon.
        std::thread::Builder::new()
            .name("bspatch-stream".into())
            .spawn_scoped(scope, move || {
                let mut decoder = bzip2::read::BzDecoder::new(block);
                loop {
                    let mut chunk = recycled.try_recv().unwrap_or_default();
                    chunk.resize(CHUNK, 0);
                    let result = fill(&mut decoder, &mut chunk).map(|n| {
                        chunk.truncate(n);
                        chunk
                    });
                    let end = !matches!(&result, Ok(c) if !c.is_empty());
                    if tx.send(result).is_err() || end {
                        return;
                    }
                }
            })?;
        Ok(Stream {
            chunks,
            spent,
            current: Vec::new(),
            pos: 0,
        })
    }

    /// Up to `max` (at least one) next bytes of the stream; an error at its end.
    fn take(&mut self, max: usize) -> io::Result<&[u8]> {
        if self.pos == self.current.len() {
            let next = match self.chunks.recv() {
                Ok(Ok(chunk)) if !chunk.is_empty() => chunk,
                Ok(Err(e)) => return Err(e),
                Ok(Ok(_)) | Err(_) => {
                    return Err(corrupt("a control reads past the end of a data block"));
                }
            };
            let _ = self.spent.send(std::mem::replace(&mut self.current, next));
            self.pos = 0;
        }
        let n = max.min(self.current.len() - self.pos);
        let slice = &self.current[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn fill(reader: &mut impl io::Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
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
