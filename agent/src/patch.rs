//! Classic bsdiff 4.x patches (`BSDIFF40` and three bzip2 streams): header checks and applying.
//!
//! The old file and the patch are both read in bounded pieces from wherever they lie (a
//! [`Source`]: a file or bytes in memory), the old one through a few windows of its bytes, and
//! the new one streams out through a writer that refuses to grow past the size the header
//! promised: memory stays a few MiB whatever the files' sizes, so a large update does not take
//! a robot's memory, nor a hostile patch exhaust it or fill the disk; the produced size is
//! compared with the promise at the end. Every
//! control must move the output forward (bar a small allowance), so a patch of empty controls
//! cannot keep a core busy for hours, and the caller can stop an application at any control.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
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
    /// The file to patch could not be read, or changed while it was: not the patch's fault.
    #[error("reading the file to patch failed")]
    OldFile(#[source] io::Error),
    #[error("cannot start the threads that decompress the patch")]
    Threads(#[source] io::Error),
    #[error("patch produced {produced} bytes but its header promised {promised}")]
    SizeMismatch { produced: u64, promised: u64 },
    #[error(
        "patch makes no progress: {controls} controls for a {new_size}-byte file (at most one per byte, and {IDLE_CONTROLS} more)"
    )]
    NoProgress { controls: u64, new_size: u64 },
    #[error("applying the patch was stopped")]
    Stopped,
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

/// Where a patch's bytes are read from: a file (read in bounded pieces, never whole) or memory.
pub trait Source: Sync {
    /// The patch's length in bytes.
    fn size(&self) -> u64;
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl Source for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl Source for Vec<u8> {
    fn size(&self) -> u64 {
        self.as_slice().size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.as_slice().read_at(buf, offset)
    }
}

/// A patch file, which must not change while it is applied (the agent's own download).
#[derive(Debug)]
pub struct FileSource {
    file: File,
    len: u64,
}

impl FileSource {
    pub fn new(file: File) -> io::Result<FileSource> {
        let len = file.metadata()?.len();
        Ok(FileSource { file, len })
    }
}

impl Source for FileSource {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match self.file.read_at(&mut buf[n..], offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

/// One block of a patch as a reader.
struct Section<'a, S: ?Sized> {
    source: &'a S,
    pos: u64,
    end: u64,
}

impl<S: Source + ?Sized> io::Read for Section<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.end - self.pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.source.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

pub fn header<S: Source + ?Sized>(patch: &S) -> Result<Header, PatchError> {
    let mut head = [0u8; HEADER_LEN];
    let len = patch.size();
    let got = patch.read_at(&mut head, 0).map_err(PatchError::Corrupt)?;
    if got < HEADER_LEN {
        return Err(PatchError::Header(format!("only {len} bytes long")));
    }
    if &head[..8] != MAGIC {
        return Err(PatchError::Header("no BSDIFF40 magic".into()));
    }
    let field = |at: usize, name: &str| {
        let v = offtin(&head[at..at + 8]);
        // A set sign bit is refused even on a zero magnitude: no bsdiff writes that "-0", and
        // other readers (qbsdiff) take it as -2^63, which overflowed their length checks.
        if head[at + 7] & 0x80 != 0 {
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
    if blocks.is_none_or(|b| b > len) {
        return Err(PatchError::Header(format!(
            "its blocks ({} + {} bytes) do not fit in its {len} bytes",
            h.control_len, h.diff_len,
        )));
    }
    Ok(h)
}

/// Applies `patch` to `old`, writing the new file to `out`; returns the new file's size.
pub fn apply<O: Source + ?Sized, S: Source + ?Sized, W: Write>(
    old: &O,
    patch: &S,
    out: W,
    max_size: u64,
) -> Result<u64, PatchError> {
    apply_until(old, patch, out, max_size, &|| false)
}

/// [`apply`], giving up with [`PatchError::Stopped`] soon after `stop` returns true (it is
/// asked every few controls and every chunk of output).
///
/// The diff and extra streams are decompressed on two threads of their own while this one adds
/// and writes: bzip2 is most of the work, and a robot's board has more than one core. The
/// threads hand over bounded chunks, so memory stays a few MiB whatever the patch's size.
pub fn apply_until<O: Source + ?Sized, S: Source + ?Sized, W: Write>(
    old: &O,
    patch: &S,
    out: W,
    max_size: u64,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<u64, PatchError> {
    let h = header(patch)?;
    if h.new_size > max_size {
        return Err(PatchError::TooLarge {
            promised: h.new_size,
            limit: max_size,
        });
    }
    // `header` checked that the blocks fit in the patch.
    let ctrl_end = HEADER_LEN as u64 + h.control_len;
    let diff_end = ctrl_end + h.diff_len;
    let section = |pos, end| Section {
        source: patch,
        pos,
        end,
    };
    let mut limited = Limited {
        inner: out,
        left: h.new_size,
    };
    let produced = std::thread::scope(|scope| {
        let mut run = Run {
            old: OldFile::new(old),
            // Read 24 bytes at a time, the controls are decompressed in larger pieces: a call
            // into bzip2 for each control cost more than decoding it.
            ctrl: io::BufReader::with_capacity(
                CONTROLS_AHEAD,
                bzip2::read::BzDecoder::new(section(HEADER_LEN as u64, ctrl_end)),
            ),
            diff: Stream::spawn(scope, section(ctrl_end, diff_end)).map_err(PatchError::Threads)?,
            extra: Stream::spawn(scope, section(diff_end, patch.size()))
                .map_err(PatchError::Threads)?,
            out: &mut limited,
            scratch: vec![0; CHUNK],
            stop,
        };
        run.apply(h.new_size)
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

/// How much of the new file is written at a time.
pub const WRITE_BUFFER: usize = 256 * 1024;

/// How many bytes of controls are decompressed at a time.
const CONTROLS_AHEAD: usize = 16 * 1024;

/// How much a decompression thread hands over at a time, and how many chunks may wait.
pub(crate) const CHUNK: usize = 64 * 1024;
const CHUNKS_AHEAD: usize = 16;
/// Controls beyond one per output byte that a patch may have: bsdiff's own output has one
/// per matched region, each producing bytes, and now and then an empty one.
const IDLE_CONTROLS: u64 = 4096;
/// How many controls pass between two looks at the stop signal.
const STOP_EVERY: u64 = 1024;

fn corrupt(what: &str) -> PatchError {
    PatchError::Corrupt(invalid(what))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// The state of one application: bsdiff's loop of (add, copy, seek) controls.
struct Run<'a, O: ?Sized, R, W> {
    old: OldFile<'a, O>,
    ctrl: R,
    diff: Stream,
    extra: Stream,
    out: W,
    scratch: Vec<u8>,
    stop: &'a (dyn Fn() -> bool + Sync),
}

impl<O: Source + ?Sized, R: io::Read, W: Write> Run<'_, O, R, W> {
    fn apply(&mut self, new_size: u64) -> Result<u64, PatchError> {
        let mut new_pos: u64 = 0;
        let mut old_pos: i64 = 0;
        let mut control = [0u8; 24];
        let mut controls: u64 = 0;
        let budget = new_size.saturating_add(IDLE_CONTROLS);
        while new_pos < new_size {
            controls += 1;
            if controls > budget {
                return Err(PatchError::NoProgress { controls, new_size });
            }
            if controls % STOP_EVERY == 0 && (self.stop)() {
                return Err(PatchError::Stopped);
            }
            // Controls that end early leave the file short, which the caller reports as such.
            match fill(&mut self.ctrl, &mut control).map_err(PatchError::Corrupt)? {
                0 => break,
                24 => {}
                _ => return Err(corrupt("the control block ends inside a control")),
            }
            self.control(&control, new_size, &mut new_pos, &mut old_pos)?;
        }
        Ok(new_pos)
    }

    /// Carries out one control: add from the old file, copy from the extra block, seek.
    fn control(
        &mut self,
        control: &[u8; 24],
        new_size: u64,
        new_pos: &mut u64,
        old_pos: &mut i64,
    ) -> Result<(), PatchError> {
        let (add, copy, seek) = (
            offtin(&control[0..]),
            offtin(&control[8..]),
            offtin(&control[16..]),
        );
        let (Ok(add), Ok(copy)) = (u64::try_from(add), u64::try_from(copy)) else {
            return Err(corrupt("a control with a negative length"));
        };
        let fits = |pos: u64, len: u64| pos.checked_add(len).is_some_and(|end| end <= new_size);
        if !fits(*new_pos, add) || !fits(*new_pos + add, copy) {
            return Err(corrupt("a control writes past the promised size"));
        }
        self.add(*old_pos, add)?;
        self.copy(copy)?;
        *new_pos += add + copy;
        *old_pos = (old_pos.checked_add(add as i64))
            .and_then(|p| p.checked_add(seek))
            .ok_or_else(|| corrupt("a control seeks outside any file"))?;
        Ok(())
    }

    /// [`PatchError::Stopped`] once the stop signal is set, between two chunks of output.
    fn check_stop(&self) -> Result<(), PatchError> {
        if (self.stop)() {
            return Err(PatchError::Stopped);
        }
        Ok(())
    }

    /// Writes `len` bytes of the old file from `at`, each plus its diff byte.
    fn add(&mut self, at: i64, len: u64) -> Result<(), PatchError> {
        let start =
            u64::try_from(at).map_err(|_| corrupt("a control reads before the old file"))?;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= self.old.len)
            .ok_or_else(|| corrupt("a control reads past the end of the old file"))?;
        let mut pos = start;
        while pos < end {
            let want = usize::try_from(end - pos).unwrap_or(usize::MAX);
            let old = self.old.read(pos, want).map_err(PatchError::OldFile)?;
            let diff = self.diff.take(old.len()).map_err(PatchError::Corrupt)?;
            let n = diff.len();
            let out = &mut self.scratch[..n];
            add_bytes(out, diff, &old[..n]);
            self.out.write_all(out).map_err(PatchError::Corrupt)?;
            pos += n as u64;
            self.check_stop()?;
        }
        Ok(())
    }

    fn copy(&mut self, len: u64) -> Result<(), PatchError> {
        let mut left = len;
        while left > 0 {
            let extra = self
                .extra
                .take(usize::try_from(left).unwrap_or(usize::MAX))
                .map_err(PatchError::Corrupt)?;
            left -= extra.len() as u64;
            self.out.write_all(extra).map_err(PatchError::Corrupt)?;
            self.check_stop()?;
        }
        Ok(())
    }
}

/// `out[i] = diff[i] + old[i]` (mod 256) for slices of one length, eight bytes at a time with
/// no carry from one byte into the next: the release build is optimised for size, which leaves
/// a loop of single bytes unvectorised, and this one runs for every byte of every update.
fn add_bytes(out: &mut [u8], diff: &[u8], old: &[u8]) {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let word = |b: &[u8]| u64::from_ne_bytes(b.try_into().expect("chunks of eight"));
    let mut outs = out.chunks_exact_mut(8);
    let (diffs, olds) = (diff.chunks_exact(8), old.chunks_exact(8));
    let (diff_rest, old_rest) = (diffs.remainder(), olds.remainder());
    for ((o, d), b) in (&mut outs).zip(diffs).zip(olds) {
        let (x, y) = (word(d), word(b));
        let sum = ((x & !HIGH) + (y & !HIGH)) ^ ((x ^ y) & HIGH);
        o.copy_from_slice(&sum.to_ne_bytes());
    }
    let rest = outs.into_remainder().iter_mut();
    for ((o, d), b) in rest.zip(diff_rest).zip(old_rest) {
        *o = d.wrapping_add(*b);
    }
}

/// The old file is read through [`WINDOWS`] windows of up to [`WINDOW`] bytes each. bsdiff's
/// adds walk the old file forward in long runs, with short adds far away in between: a long
/// run is read a whole window at a time, a short add only the pages it needs, so that the
/// runs' windows stay and a short add costs one small read.
const WINDOW: usize = 64 * 1024;
const WINDOWS: usize = 8;
const PAGE: u64 = 4096;

/// The old file, read through windows of its bytes, the least recently used one read again on
/// a miss: memory stays at their size whatever the file's.
struct OldFile<'a, O: ?Sized> {
    source: &'a O,
    /// The size when the application started; a file that shrinks after is an error to read.
    len: u64,
    windows: Vec<Window>,
    /// The window of the last read, looked at first.
    last: usize,
    clock: u64,
}

#[derive(Default)]
struct Window {
    start: u64,
    bytes: Vec<u8>,
    used: u64,
}

impl Window {
    fn holds(&self, pos: u64) -> bool {
        pos >= self.start && pos - self.start < self.bytes.len() as u64
    }
}

impl<'a, O: Source + ?Sized> OldFile<'a, O> {
    fn new(source: &'a O) -> Self {
        OldFile {
            source,
            len: source.size(),
            windows: (0..WINDOWS).map(|_| Window::default()).collect(),
            last: 0,
            clock: 0,
        }
    }

    /// Up to `want` (at least one) bytes from `pos`, which is inside the file.
    fn read(&mut self, pos: u64, want: usize) -> io::Result<&[u8]> {
        let i = if self.windows[self.last].holds(pos) {
            self.last
        } else {
            match self.windows.iter().position(|w| w.holds(pos)) {
                Some(i) => i,
                None => self.load(pos, want)?,
            }
        };
        self.clock += 1;
        self.last = i;
        let window = &mut self.windows[i];
        window.used = self.clock;
        let at = (pos - window.start) as usize;
        let n = want.min(window.bytes.len() - at);
        Ok(&window.bytes[at..at + n])
    }

    /// Reads the pages that hold `want` bytes from `pos` (up to a window's worth) into the
    /// least recently used window; returns its index.
    fn load(&mut self, pos: u64, want: usize) -> io::Result<usize> {
        let (i, window) = (self.windows.iter_mut().enumerate())
            .min_by_key(|(_, w)| w.used)
            .expect("there are windows");
        let start = pos - pos % PAGE;
        let end = (pos.saturating_add(want as u64))
            .div_ceil(PAGE)
            .saturating_mul(PAGE)
            .min(start + WINDOW as u64)
            .min(self.len);
        let n = (end - start) as usize;
        window.bytes.resize(n, 0);
        let got = self.source.read_at(&mut window.bytes, start)?;
        if got < n {
            window.bytes.clear();
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the file shrank while it was patched: {got} bytes at {start}, {n} expected"
                ),
            ));
        }
        window.start = start;
        Ok(i)
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
    fn spawn<'scope, S: Source + ?Sized>(
        scope: &'scope std::thread::Scope<'scope, '_>,
        block: Section<'scope, S>,
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
                    return Err(invalid("a control reads past the end of a data block"));
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

/// `bspatch OLDFILE NEWFILE PATCHFILE`, as the reference tool does it, with the agent's code.
pub fn bspatch_files(old: &Path, new: &Path, patch: &Path) -> Result<u64, PatchError> {
    let io = |op, p: &Path| {
        let path = p.display().to_string();
        move |source| PatchError::Io { op, path, source }
    };
    let source = File::open(patch)
        .and_then(FileSource::new)
        .map_err(io("open", patch))?;
    let old_file = File::open(old)
        .and_then(FileSource::new)
        .map_err(io("open", old))?;
    let out = File::create(new).map_err(io("create", new))?;
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER, out);
    let size = apply(&old_file, &source, &mut writer, u64::MAX >> 1)?;
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

        assert!(matches!(
            header(&b"BSDIFF4"[..]),
            Err(PatchError::Header(_))
        ));
        assert!(matches!(
            header(&[b'x'; 40][..]),
            Err(PatchError::Header(_))
        ));

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

    fn bz(data: &[u8]) -> Vec<u8> {
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    /// A patch by hand: these controls, an all-zero diff block and this extra block.
    fn patch_of(
        controls: &[(i64, i64, i64)],
        diff_len: usize,
        extra: &[u8],
        new_size: u64,
    ) -> Vec<u8> {
        let mut ctrl = Vec::new();
        for &(add, copy, seek) in controls {
            for v in [add, copy, seek] {
                let mut b = v.unsigned_abs().to_le_bytes();
                if v < 0 {
                    b[7] |= 0x80;
                }
                ctrl.extend_from_slice(&b);
            }
        }
        let (ctrl, diff, extra) = (bz(&ctrl), bz(&vec![0; diff_len]), bz(extra));
        let mut patch = b"BSDIFF40".to_vec();
        for n in [ctrl.len() as u64, diff.len() as u64, new_size] {
            patch.extend_from_slice(&n.to_le_bytes());
        }
        [patch, ctrl, diff, extra].concat()
    }

    #[test]
    fn a_patch_of_empty_controls_is_refused_at_once() {
        // A few KB of bzip2 that unpack to millions of controls that write nothing: each costs
        // no output, and the old loop spent minutes of CPU on them.
        let mut controls = vec![(0, 0, 0); 2_000_000];
        controls.push((4, 0, 0));
        let patch = patch_of(&controls, 4, b"", 4);
        assert!(patch.len() < 100_000, "{} bytes", patch.len());
        let e = apply(&b"abcd"[..], &patch, Vec::new(), 1 << 30).unwrap_err();
        assert!(
            matches!(e, PatchError::NoProgress { controls, new_size: 4 } if controls == 4 + IDLE_CONTROLS + 1),
            "{e}"
        );
        // bsdiff's own few empty controls pass.
        let few = [vec![(0, 0, 0); 100], vec![(4, 0, 0)]].concat();
        let mut out = Vec::new();
        apply(&b"abcd"[..], &patch_of(&few, 4, b"", 4), &mut out, 1 << 30).unwrap();
        assert_eq!(out, b"abcd");
    }

    #[test]
    fn a_stop_ends_an_application() {
        let controls = vec![(1, 0, -1); 100_000];
        let patch = patch_of(&controls, 100_000, b"", 100_000);
        let e = apply_until(&b"x"[..], &patch, Vec::new(), 1 << 30, &|| true).unwrap_err();
        assert!(matches!(e, PatchError::Stopped), "{e}");
        let mut out = Vec::new();
        assert_eq!(
            apply(&b"x"[..], &patch, &mut out, 1 << 30).unwrap(),
            100_000
        );
        assert!(out.iter().all(|&b| b == b'x'));
    }

    #[test]
    fn reads_that_jump_around_a_large_old_file_are_right() {
        // Twelve windows' worth of old file, read in runs that start anywhere.
        let old: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut rng = fastrand::Rng::with_seed(5);
        let runs: Vec<(i64, i64)> = (0..300)
            .map(|_| {
                let len = rng.i64(1..70_000);
                (rng.i64(0..old.len() as i64 - len), len)
            })
            .collect();
        let mut controls = vec![(0, 0, runs[0].0)];
        for (i, &(at, len)) in runs.iter().enumerate() {
            let next = runs.get(i + 1).map_or(at + len, |r| r.0);
            controls.push((len, 0, next - (at + len)));
        }
        let expected: Vec<u8> = (runs.iter())
            .flat_map(|&(at, len)| old[at as usize..(at + len) as usize].iter().copied())
            .collect();
        let patch = patch_of(&controls, expected.len(), b"", expected.len() as u64);
        let mut out = Vec::new();
        apply(&old, &patch, &mut out, u64::MAX).unwrap();
        assert!(out == expected, "another file");
    }

    /// An old file that says it has `len` bytes and then has only `left`.
    struct Shrinking {
        len: u64,
        left: u64,
    }

    impl Source for Shrinking {
        fn size(&self) -> u64 {
            self.len
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let n = (self.left.saturating_sub(offset) as usize).min(buf.len());
            buf[..n].fill(7);
            Ok(n)
        }
    }

    #[test]
    fn bytes_add_without_carries_at_any_length() {
        let mut rng = fastrand::Rng::with_seed(9);
        for len in [0, 1, 7, 8, 9, 63, 64, 1000] {
            let diff: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let old: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let mut out = vec![0; len];
            add_bytes(&mut out, &diff, &old);
            let want: Vec<u8> = (diff.iter().zip(&old))
                .map(|(d, b)| d.wrapping_add(*b))
                .collect();
            assert_eq!(out, want, "length {len}");
        }
        let mut out = [0; 9];
        add_bytes(&mut out, &[0xff; 9], &[0x81; 9]);
        assert_eq!(out, [0x80; 9]);
    }

    #[test]
    fn an_old_file_that_shrinks_is_not_the_patchs_fault() {
        let len = 4 * WINDOW as u64;
        let patch = patch_of(&[(len as i64, 0, 0)], len as usize, b"", len);
        let old = Shrinking { len, left: len };
        let mut out = Vec::new();
        assert_eq!(apply(&old, &patch, &mut out, u64::MAX).unwrap(), len);
        let shrunk = Shrinking {
            len,
            left: len - 10,
        };
        let e = apply(&shrunk, &patch, Vec::new(), u64::MAX).unwrap_err();
        assert!(matches!(e, PatchError::OldFile(_)), "{e}");
    }

    #[test]
    fn a_patch_file_is_read_in_pieces() {
        let old: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut new = old.clone();
        new[1000..5000].fill(1);
        let patch = diff(&old, &new);
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&patch).unwrap();
        let source = FileSource::new(file).unwrap();
        assert_eq!(header(&source).unwrap(), header(&patch).unwrap());
        let mut out = Vec::new();
        apply(&old, &source, &mut out, u64::MAX).unwrap();
        assert_eq!(out, new);
    }
}
