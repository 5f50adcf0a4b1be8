//! Large files written without filling the page cache.
//!
//! A cgroup's memory includes the page cache of the files its processes write, and dirty pages
//! cannot be reclaimed before they are written back. An update writes hundreds of MiB: left to
//! the kernel, they pile up dirty until the unit's `MemoryMax=` (cgroup v1 has no per-cgroup
//! dirty limit), and every further write waits for reclaim; on a robot they also push the
//! services' own cache out. [`Settling`] starts the writeback of every [`SETTLE_EVERY`] bytes as
//! it goes and drops them once written: the same bytes reach the disk as at the final fsync,
//! only sooner.

use std::fs::File;
use std::io::{self, Write};

/// How many bytes may be written before they are written back and dropped from the cache.
pub const SETTLE_EVERY: u64 = 8 << 20;

/// A file writer that writes back and drops what it wrote, every [`SETTLE_EVERY`] bytes.
#[derive(Debug)]
pub struct Settling {
    file: File,
    written: u64,
    settled: u64,
    /// The range of the settle before the last, still being written back.
    previous: Option<(u64, u64)>,
    /// False where a fault switch skips the fsync this file would get (the test that checks
    /// the missing fsync is caught needs the data left unwritten, as it would be without it),
    /// and once the system refused sync_file_range.
    sync: bool,
    /// An error of a settle, returned by the next write or flush: the write whose bytes it
    /// followed had succeeded, and must say so.
    failed: Option<io::Error>,
}

impl Settling {
    pub fn new(file: File, sync: bool) -> Settling {
        Settling {
            file,
            written: 0,
            settled: 0,
            previous: None,
            sync,
            failed: None,
        }
    }

    pub fn into_inner(self) -> File {
        self.file
    }

    /// Starts writing back the bytes since the last settle, then waits for the settle before
    /// that one to be written and drops it from the page cache: at most two settles' worth is
    /// in the cache, and the writer waits only for writeback that had a whole settle's time.
    fn settle(&mut self) -> io::Result<()> {
        match self.write_back() {
            Err(e) if refused(&e) => {
                // A filter (seccomp, an old systemd's @sync on armv7, where glibc calls it
                // sync_file_range2) or a file system without it: the writes go on unsettled,
                // as they did before there was settling, and the final fsync is what counts.
                log::debug!(
                    "sync_file_range refused ({e}): the new file is not settled as it is written"
                );
                self.sync = false;
                Ok(())
            }
            result => result,
        }
    }

    fn write_back(&mut self) -> io::Result<()> {
        if self.sync {
            let latest = (self.settled, self.written - self.settled);
            sync_file_range(&self.file, latest, SYNC_FILE_RANGE_WRITE)?;
            if let Some(previous) = self.previous {
                let wait = SYNC_FILE_RANGE_WAIT_BEFORE
                    | SYNC_FILE_RANGE_WRITE
                    | SYNC_FILE_RANGE_WAIT_AFTER;
                sync_file_range(&self.file, previous, wait)?;
                // Advice only: a kernel that ignores it leaves the pages clean, which it can
                // reclaim at no cost.
                let _ = rustix::fs::fadvise(
                    &self.file,
                    previous.0,
                    std::num::NonZeroU64::new(previous.1),
                    rustix::fs::Advice::DontNeed,
                );
            }
            self.previous = Some(latest);
        }
        self.settled = self.written;
        Ok(())
    }
}

const SYNC_FILE_RANGE_WAIT_BEFORE: libc::c_uint = 1;
const SYNC_FILE_RANGE_WRITE: libc::c_uint = 2;
const SYNC_FILE_RANGE_WAIT_AFTER: libc::c_uint = 4;

/// sync_file_range(2) on `(offset, length)`; it writes data only, never metadata, so it costs
/// no journal commit. The file's final fsync is what makes it durable.
fn sync_file_range(file: &File, (offset, len): (u64, u64), flags: libc::c_uint) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return Ok(());
    };
    // SAFETY: the call takes a file descriptor that `file` keeps open, two integers and flags;
    // no memory is shared with the kernel.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether sync_file_range failed because it is not to be had here, not because the data
/// could not be written: EIO or ENOSPC must reach the writer, since the wait may have taken
/// the error that the final fsync would otherwise report.
fn refused(e: &io::Error) -> bool {
    [
        libc::EPERM,
        libc::ENOSYS,
        libc::EINVAL,
        libc::ESPIPE,
        libc::EOPNOTSUPP,
        libc::EINTR,
    ]
    .contains(&e.raw_os_error().unwrap_or(0))
}

impl Write for Settling {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.settled >= SETTLE_EVERY {
            if let Err(e) = self.settle() {
                self.failed = Some(e);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_written_arrives() {
        let mut file = Settling::new(tempfile::tempfile().unwrap(), true);
        let chunk = vec![7u8; 3 << 20];
        for _ in 0..5 {
            file.write_all(&chunk).unwrap();
        }
        // Settled once 8 MiB had been written: at 9 MiB, and not again by 15.
        assert_eq!(file.settled, 9 << 20);
        assert_eq!(file.previous, Some((0, 9 << 20)));
        let file = file.into_inner();
        assert_eq!(file.metadata().unwrap().len(), 15 << 20);
    }

    #[test]
    fn a_file_that_cannot_be_settled_is_written_all_the_same() {
        // sync_file_range on a character device fails with ESPIPE, as a seccomp filter's EPERM
        // or an old kernel's ENOSYS would: the writes go on, unsettled.
        let mut file = Settling::new(File::create("/dev/null").unwrap(), true);
        file.write_all(&vec![1u8; 20 << 20]).unwrap();
        file.flush().unwrap();
        assert!(!file.sync);
        assert_eq!(file.written, 20 << 20);
    }
}
