//! Writes a file to disk while it is produced, not all at the end: an
//! artifact in a folder target, a file a restore puts back.
//!
//! Without this the kernel keeps the whole file as dirty page cache and
//! the final fsync writes it in one go, after compression has finished: the
//! disk idles while the CPU works and then the other way round. Starting
//! writeback of each step as soon as it is written overlaps the two, keeps
//! the dirty data a backup leaves behind to [`STEP`] × ([`LAG`] + 1), and drops written
//! steps from the page cache, so a backup does not push the database next to
//! it out of memory.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Bytes between writeback calls. Large enough that the calls cost nothing,
/// small enough that the final fsync has little left to do.
pub const STEP: u64 = 8 << 20;

/// Steps written after one before waiting for it: enough slack that a
/// moment of slow disk does not stall the pipeline (measured: waiting on the
/// step right before was ~5% slower on a noisy virtual disk).
pub const LAG: u64 = 4;

/// Tracks how far a file written from the start has been handed to the disk.
#[derive(Debug, Default)]
pub struct Writeback {
    /// Bytes written to the file so far.
    written: u64,
    /// Bytes whose writeback has been started.
    started: u64,
    /// Bytes known to be on disk and dropped from the page cache.
    settled: u64,
}

impl Writeback {
    /// For a file whose first `offset` bytes are on disk already (written
    /// past the page cache): only what comes after is tracked.
    pub fn from_offset(offset: u64) -> Self {
        Writeback {
            written: offset,
            started: offset,
            settled: offset,
        }
    }

    /// Records `n` more bytes written (or skipped as a hole: the count is
    /// the offset reached in the file); every [`STEP`] starts writeback of the
    /// new step and waits for the one [`LAG`] steps back. Errors are not fatal here:
    /// the final fsync reports any write error, and it is the one that counts.
    pub fn wrote(&mut self, file: &File, n: u64) {
        self.written += n;
        if self.written - self.started < STEP {
            return;
        }
        let fd = file.as_raw_fd();
        // SAFETY: plain syscalls on a file descriptor we own; no memory is shared.
        unsafe {
            libc::sync_file_range(
                fd,
                self.started as i64,
                (self.written - self.started) as i64,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        // The step LAG steps back has had that long to reach the disk; wait
        // for what is left of it, then let the cache forget it.
        let upto = self.started.saturating_sub((LAG - 1) * STEP);
        if upto > self.settled {
            let (from, len) = (self.settled as i64, (upto - self.settled) as i64);
            // SAFETY: as above.
            unsafe {
                libc::sync_file_range(
                    fd,
                    from,
                    len,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
                libc::posix_fadvise(fd, from, len, libc::POSIX_FADV_DONTNEED);
            }
            self.settled = upto;
        }
        self.started = self.written;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn steps_advance_and_the_file_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        let mut wb = Writeback::default();
        let chunk = vec![7u8; 3 << 20];
        for _ in 0..20 {
            f.write_all(&chunk).unwrap();
            wb.wrote(&f, chunk.len() as u64);
            // The bound on what is not yet known to be on disk.
            assert!(wb.written - wb.settled <= (LAG + 1) * STEP, "{wb:?}");
        }
        assert_eq!(wb.written, 60 << 20);
        assert!(wb.settled > 0, "{wb:?}");
        assert!(wb.settled <= wb.started && wb.started <= wb.written);
        f.sync_all().unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), 60 << 20);
        assert!(back.iter().all(|&b| b == 7));
    }
}
