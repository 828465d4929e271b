//! Writes a large file past the page cache (`O_DIRECT`) where the
//! filesystem is a local disk's: the artifact of a backup to a folder.
//!
//! A buffered write allocates a page-cache page for every 4 KiB, copies the
//! bytes in, and `writeback` later writes, waits for and drops each page
//! again. On the virtual machines lifeboat runs on, fresh pages are the
//! expensive part: writing 1 GiB through the cache and `fdatasync` cost
//! 1.30 s of system time here, with `O_DIRECT` 0.11 s, and the disk wrote
//! no slower. A caller's whole aligned chunk goes to the disk as it is
//! ([`DirectWrite::write_chunk`]); other bytes are gathered in an aligned
//! buffer of this writer's own ([`BLOCK`]-aligned, [`BUFFER`] long). Only
//! the last partial block of the file is written through the cache.
//!
//! Only on ext4, XFS and btrfs: on network filesystems (NFS, EFS, CephFS)
//! a direct write is a synchronous round trip each, and tmpfs or FUSE may
//! refuse it. Anywhere else, and whenever the kernel refuses a direct
//! write, the same bytes are written through the cache as before, with
//! [`Writeback`] (docs/ARCHITECTURE.md §5, folder target).

use std::borrow::Borrow;
use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::aligned::{AlignedBuf, BLOCK};
use crate::writeback::Writeback;

/// Bytes gathered before one direct write: the pipe's chunk size, so a
/// write costs one system call per chunk as before.
pub const BUFFER: usize = 1 << 20;

/// Filesystems whose direct writes go to a local block device.
const LOCAL_DISKS: [u32; 3] = [
    0xEF53,      // ext2/3/4
    0x5846_5342, // XFS
    0x9123_683E, // btrfs
];

/// A backup artifact's buffers trade places with the pipe's chunks, which
/// are halves of huge pages (`aligned.rs`).
const _: () = assert!(BUFFER == crate::aligned::HALF_HUGE);

fn new_buffer(huge: bool) -> AlignedBuf {
    match huge {
        true => AlignedBuf::half_huge(),
        false => AlignedBuf::new(BUFFER),
    }
}

/// A new, empty file written front to back: owned (`File`), or borrowed
/// (`&File`) by a caller that goes on using it after [`Self::finish`].
pub struct DirectWrite<F: Borrow<File> = File> {
    /// Asked for by [`Self::write_behind`]: full buffers are written on a
    /// thread of their own (started at the second) while the next fills.
    /// First: fields drop in order, so the write out, if any, ends before
    /// `file` is closed.
    behind: Option<Behind>,
    behind_wanted: bool,
    file: F,
    /// `Some` while writes go past the cache: the bytes gathered for the
    /// next direct write.
    direct: Option<AlignedBuf>,
    /// For writes through the cache.
    writeback: Writeback,
    /// Buffers are halves of huge pages ([`Self::artifact`]).
    huge: bool,
}

/// The thread that writes a full buffer past the cache while the caller
/// fills the next (or hashes the next chunk): the caller's work and the
/// wait for the disk no longer take turns. It writes through its own
/// descriptor of the same open file, so the file position is shared; the
/// caller touches the file only once the buffer out is back
/// ([`DirectWrite::settle_behind`]).
struct Behind {
    to: Option<mpsc::SyncSender<AlignedBuf>>,
    back: mpsc::Receiver<(AlignedBuf, usize, io::Result<()>)>,
    /// A buffer is out.
    busy: bool,
    /// The buffer that came back, to be filled next.
    spare: Option<AlignedBuf>,
    /// A new buffer is half a huge page.
    huge: bool,
    thread: Option<JoinHandle<()>>,
}

impl Behind {
    fn start(file: &File, huge: bool) -> io::Result<Self> {
        let file = file.try_clone()?;
        let (to, full) = mpsc::sync_channel::<AlignedBuf>(1);
        let (done, back) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("lifeboat-write".into())
            .spawn(move || {
                for buf in full {
                    let (at, res) = write_whole(&file, &buf);
                    if done.send((buf, at, res)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Behind {
            to: Some(to),
            back,
            busy: false,
            spare: None,
            huge,
            thread: Some(thread),
        })
    }
}

impl Behind {
    /// Sends `full` to be written, and leaves in its place the buffer that
    /// came back last, emptied (a new one the first time). Called once the
    /// buffer out before, if any, is back (`settle_behind`).
    fn hand(&mut self, full: &mut AlignedBuf) -> io::Result<()> {
        let mut next = self.spare.take().unwrap_or_else(|| new_buffer(self.huge));
        next.clear();
        let full = std::mem::replace(full, next);
        let sent = self.to.as_ref().map(|to| to.send(full).is_ok());
        if sent != Some(true) {
            return Err(io::Error::other("the artifact's write thread stopped"));
        }
        self.busy = true;
        Ok(())
    }
}

impl Drop for Behind {
    fn drop(&mut self) {
        // The write out, if any, ends here: the caller may close or remove
        // the file next.
        self.to = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes all of `bytes` at the file position; returns how many were
/// written, and the error that stopped it.
fn write_whole(file: &File, bytes: &[u8]) -> (usize, io::Result<()>) {
    let mut at = 0;
    while at < bytes.len() {
        match (&*file).write(&bytes[at..]) {
            Ok(0) => return (at, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (at, Err(e)),
        }
    }
    (at, Ok(()))
}

impl<F: Borrow<File>> DirectWrite<F> {
    /// Writes to `file` (new and empty) past the cache when its filesystem
    /// is a local disk's and the kernel takes `O_DIRECT` for it.
    pub fn new(file: F) -> Self {
        Self::with(file, false)
    }

    /// A backup's artifact: written behind ([`Self::write_behind`]), from
    /// buffers that are halves of huge pages, as the pipe's chunks are
    /// that trade places with them ([`Self::write_chunk`]).
    pub fn artifact(file: F) -> Self {
        Self::with(file, true).write_behind()
    }

    fn with(file: F, huge: bool) -> Self {
        let direct = (on_local_disk(file.borrow()) && set_direct(file.borrow(), true).is_ok())
            .then(|| new_buffer(huge));
        tracing::debug!(
            "writing {}",
            match direct {
                Some(_) => "past the page cache (O_DIRECT)",
                None => "through the page cache",
            }
        );
        DirectWrite {
            file,
            direct,
            writeback: Writeback::default(),
            behind_wanted: false,
            behind: None,
            huge,
        }
    }

    /// Writes full buffers on a thread of its own while the next fills:
    /// for a long file whose writer has other work between writes (a
    /// backup's artifact, hashed chunk by chunk on the caller's side).
    pub fn write_behind(mut self) -> Self {
        self.behind_wanted = true;
        self
    }

    /// Through the cache, whatever the filesystem: small files, which a
    /// direct write would make wait for the disk one by one.
    pub fn buffered(file: F) -> Self {
        DirectWrite {
            file,
            direct: None,
            writeback: Writeback::default(),
            behind_wanted: false,
            behind: None,
            huge: false,
        }
    }

    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    fn out(&self) -> &File {
        self.file.borrow()
    }

    pub fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let Some(buf) = &mut self.direct else {
                let mut out = self.file.borrow();
                out.write_all(data)?;
                self.writeback.wrote(out, data.len() as u64);
                return Ok(());
            };
            let n = buf.extend_from_slice(data);
            data = &data[n..];
            if buf.is_full() {
                self.flush_full()?;
            }
        }
        Ok(())
    }

    /// Writes `chunk` and hands back an empty buffer to fill again. A full
    /// chunk ([`BUFFER`] bytes) at a buffer boundary of the file, once the
    /// write-behind thread runs, goes to the disk as it is, without a copy:
    /// the thread writes it while the caller goes on, and the buffer handed
    /// back is the one it wrote before (a new one the first time). Anything
    /// else is copied as by [`Self::write_all`], and `chunk` comes back
    /// emptied.
    pub fn write_chunk(&mut self, mut chunk: AlignedBuf) -> io::Result<AlignedBuf> {
        let at_boundary = matches!(&self.direct, Some(buf) if buf.is_empty());
        if chunk.len() == BUFFER && at_boundary && self.behind.is_some() {
            self.settle_behind()?;
            // A write refused behind sent the rest through the cache: then
            // this chunk goes there too, below.
            if let (Some(behind), Some(_)) = (&mut self.behind, &self.direct) {
                behind.hand(&mut chunk)?;
                return Ok(chunk);
            }
        }
        self.write_all(&chunk)?;
        chunk.clear();
        Ok(chunk)
    }

    /// Leaves `n` bytes of zeros as a hole: the file position moves on.
    /// Holes come at block boundaries (`file_out::SPARSE_BLOCK`), or at
    /// the end. Before one elsewhere, the bytes gathered go through the
    /// cache and so does the rest of the file; after one that ends
    /// elsewhere, the next direct write is refused and the rest goes
    /// through the cache too.
    pub fn skip(&mut self, n: u64) -> io::Result<()> {
        self.settle_behind()?;
        // After a hole the next full buffer is written here again, where a
        // refused direct write can fall back at once.
        self.behind = None;
        self.flush_blocks()?;
        if matches!(&self.direct, Some(buf) if !buf.is_empty()) {
            self.through_cache(0)?;
        }
        let mut out = self.out();
        out.seek(io::SeekFrom::Current(n as i64))?;
        if self.direct.is_none() {
            // A hole moves the writeback along too: its range has
            // nothing to write, and what follows lies that much further.
            self.writeback.wrote(self.file.borrow(), n);
        }
        Ok(())
    }

    /// Writes a full buffer: on the write-behind thread when there is one
    /// (the first full buffer is written here, where a refused direct write
    /// can still fall back), else here.
    fn flush_full(&mut self) -> io::Result<()> {
        if !self.behind_wanted || self.direct.is_none() {
            return self.flush_blocks();
        }
        if self.behind.is_none() {
            self.flush_blocks()?;
            if self.direct.is_some() {
                match Behind::start(self.file.borrow(), self.huge) {
                    Ok(behind) => self.behind = Some(behind),
                    // No descriptor or thread to spare: written here, as
                    // without write-behind.
                    Err(e) => {
                        tracing::debug!("no write-behind thread ({e}); writing in turn");
                        self.behind_wanted = false;
                    }
                }
            }
            return Ok(());
        }
        self.settle_behind()?;
        let (Some(behind), Some(gathered)) = (&mut self.behind, &mut self.direct) else {
            // The write that came back was refused: the rest goes through
            // the cache, this buffer included.
            return self.flush_blocks();
        };
        debug_assert!(gathered.is_full());
        behind.hand(gathered)
    }

    /// Waits for the buffer out on the write-behind thread, if any. A
    /// refused direct write sends what it did not write through the cache,
    /// and the rest after it.
    fn settle_behind(&mut self) -> io::Result<()> {
        let Some(behind) = &mut self.behind else {
            return Ok(());
        };
        if !behind.busy {
            return Ok(());
        }
        behind.busy = false;
        let (buf, at, res) = behind
            .back
            .recv()
            .map_err(|_| io::Error::other("the artifact's write thread stopped"))?;
        match res {
            Ok(()) => {
                behind.spare = Some(buf);
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!("direct write refused ({e}); writing through the page cache");
                self.behind = None;
                let mut out = self.file.borrow();
                set_direct(out, false)?;
                self.writeback = Writeback::from_offset(out.stream_position()?);
                out.write_all(&buf[at..])?;
                self.writeback.wrote(out, (buf.len() - at) as u64);
                // What was gathered since follows, through the cache too.
                if let Some(gathered) = self.direct.take() {
                    out.write_all(&gathered)?;
                    self.writeback.wrote(out, gathered.len() as u64);
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the whole blocks gathered; a partial last block stays.
    fn flush_blocks(&mut self) -> io::Result<()> {
        let Some(buf) = &mut self.direct else {
            return Ok(());
        };
        let whole = buf.len() / BLOCK * BLOCK;
        match write_whole(self.file.borrow(), &buf[..whole]) {
            (_, Ok(())) => {}
            // A block size above BLOCK, or a filesystem that takes the
            // flag but not the write (a refused write writes nothing):
            // the rest through the cache.
            (at, Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!("direct write refused ({e}); writing through the page cache");
                return self.through_cache(at);
            }
            (_, Err(e)) => return Err(e),
        }
        buf.drain_front(whole);
        Ok(())
    }

    /// Writes the gathered bytes from `from` on through the cache, and
    /// everything after them.
    fn through_cache(&mut self, from: usize) -> io::Result<()> {
        let Some(buf) = self.direct.take() else {
            return Ok(());
        };
        let mut out = self.file.borrow();
        set_direct(out, false)?;
        // What is before here went past the cache: writeback starts here.
        self.writeback = Writeback::from_offset(out.stream_position()?);
        let rest = &buf[from..];
        out.write_all(rest)?;
        self.writeback.wrote(out, rest.len() as u64);
        Ok(())
    }

    /// Writes what is left (the last partial block through the cache) and
    /// leaves the file as opened: without `O_DIRECT`, not yet synced.
    pub fn finish(mut self) -> io::Result<F> {
        self.settle_behind()?;
        self.behind = None;
        self.flush_blocks()?;
        self.through_cache(0)?;
        Ok(self.file)
    }
}

fn on_local_disk(file: &File) -> bool {
    // SAFETY: fstatfs fills the struct we hand it; zeroed is a valid start.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a plain syscall on a file descriptor we own.
    let ok = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } == 0;
    // f_type's width and sign differ by platform; the magic numbers are
    // 32-bit (btrfs's has its top bit set).
    #[allow(clippy::unnecessary_cast)]
    let kind = st.f_type as u32;
    ok && LOCAL_DISKS.contains(&kind)
}

fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: plain fcntl calls on a file descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        if libc::fcntl(fd, libc::F_SETFL, flags) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Files of awkward sizes, written in pieces of awkward sizes, read
    /// back exactly, past the cache where this machine's filesystem allows
    /// (ext4 in CI) and through it, with and without the write-behind
    /// thread; `finish` leaves the file without `O_DIRECT`.
    #[test]
    fn every_size_reads_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        for (i, size) in [
            0,
            1,
            4095,
            4096,
            4097,
            BUFFER,
            BUFFER + 3,
            3 * BUFFER + 4097,
        ]
        .into_iter()
        .enumerate()
        {
            let data = bytes(size, i as u8);
            for (mode, piece, behind) in [
                (true, 1000, false),
                (true, BUFFER, false),
                (false, 7777, false),
                (true, 1000, true),
                (true, BUFFER, true),
            ] {
                let path = dir.path().join(format!("f{i}-{piece}-{behind}"));
                let file = File::create(&path).unwrap();
                let local = on_local_disk(&file);
                let mut w = if mode {
                    DirectWrite::new(file)
                } else {
                    DirectWrite::buffered(file)
                };
                if behind {
                    w = w.write_behind();
                }
                assert_eq!(w.is_direct(), mode && local, "{size} in {piece}");
                for p in data.chunks(piece) {
                    w.write_all(p).unwrap();
                }
                let file = w.finish().unwrap();
                assert!(!is_direct(&file), "{size} in {piece}: O_DIRECT left on");
                drop(file);
                assert!(std::fs::read(&path).unwrap() == data, "{size} in {piece}");
            }
        }
    }

    fn is_direct(file: &File) -> bool {
        // SAFETY: a plain fcntl on a file descriptor we own.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        flags & libc::O_DIRECT != 0
    }

    /// A new file in `dir`, if `dir` is on a filesystem that takes direct
    /// writes; else the test says it skipped.
    fn file_on_local_disk(dir: &tempfile::TempDir) -> Option<(std::path::PathBuf, File)> {
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        if !on_local_disk(&file) {
            eprintln!(
                "skipped: {} is not on ext4, XFS or btrfs",
                dir.path().display()
            );
            return None;
        }
        Some((path, file))
    }

    /// A refused direct write in the middle of a file: what was written
    /// directly stays, the rest goes through the cache after it, and
    /// holes on either side stay holes. The kernel is made to refuse by a
    /// hole of 5 bytes, which leaves the file position off a block
    /// boundary (a disk with larger blocks refuses an aligned write so).
    #[test]
    fn a_refused_direct_write_goes_on_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let Some((path, file)) = file_on_local_disk(&dir) else {
            return;
        };
        let mut w = DirectWrite::new(&file).write_behind();
        assert!(w.is_direct());
        let mut want = bytes(2 * BUFFER, 1);
        w.write_all(&want).unwrap();
        w.skip(5).unwrap();
        want.extend_from_slice(&[0; 5]);
        assert!(w.is_direct());
        let odd = bytes(BUFFER + 100, 2);
        w.write_all(&odd).unwrap();
        want.extend_from_slice(&odd);
        assert!(
            !w.is_direct(),
            "the refused write sends the rest through the cache"
        );
        w.skip(5000).unwrap();
        want.extend_from_slice(&[0; 5000]);
        w.finish().unwrap();
        file.set_len(want.len() as u64).unwrap();
        assert!(std::fs::read(&path).unwrap() == want);
    }

    /// A direct write refused on the write-behind thread: the buffer it
    /// did not write, and everything after it, go through the cache. The
    /// refusal is forced by moving the shared file position off a block
    /// boundary behind the writer's back.
    #[test]
    fn a_write_refused_behind_goes_on_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let Some((path, file)) = file_on_local_disk(&dir) else {
            return;
        };
        let mut w = DirectWrite::new(&file).write_behind();
        let mut want = bytes(BUFFER, 1);
        // The first full buffer is written in the caller's thread.
        w.write_all(&want).unwrap();
        (&file).seek(io::SeekFrom::Current(5)).unwrap();
        want.extend_from_slice(&[0; 5]);
        let rest = bytes(3 * BUFFER + 100, 2);
        w.write_all(&rest).unwrap();
        want.extend_from_slice(&rest);
        assert!(!w.is_direct());
        w.finish().unwrap();
        assert!(std::fs::read(&path).unwrap() == want);
    }

    /// Whole chunks handed over with `write_chunk` go to the disk as they
    /// are once the write-behind thread runs: what comes back is another
    /// buffer (the one written before), not the chunk emptied. A piece of
    /// another size, and the whole chunks after it while the file position
    /// is off a buffer boundary, are copied; a write refused behind sends
    /// the chunk it did not write, and all after it, through the cache.
    /// The file reads back exactly either way.
    #[test]
    fn whole_chunks_are_written_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let Some((path, file)) = file_on_local_disk(&dir) else {
            return;
        };
        let mut w = DirectWrite::new(&file).write_behind();
        let mut want = Vec::new();
        let put = |w: &mut DirectWrite<&File>, want: &mut Vec<u8>, data: Vec<u8>| {
            want.extend_from_slice(&data);
            let chunk = AlignedBuf::from_slice(&data);
            let at = chunk.as_ptr();
            let back = w.write_chunk(chunk).unwrap();
            assert!(back.is_empty());
            let handed = back.as_ptr() != at;
            // A buffer another chunk can be filled into, never one of none.
            assert!(!handed || back.capacity() == BUFFER, "{}", back.capacity());
            handed
        };
        // The first is written on this thread (where a refusal falls back).
        assert!(!put(&mut w, &mut want, bytes(BUFFER, 1)));
        assert!(
            put(&mut w, &mut want, bytes(BUFFER, 2)),
            "handed to the thread"
        );
        assert!(
            put(&mut w, &mut want, bytes(BUFFER, 3)),
            "handed to the thread"
        );
        assert!(!put(&mut w, &mut want, bytes(100, 4)), "a piece is copied");
        assert!(
            !put(&mut w, &mut want, bytes(BUFFER, 5)),
            "off a boundary: copied"
        );
        assert!(w.is_direct());
        // Back on a boundary: as they are again.
        let fill = bytes(BUFFER - 100, 6);
        w.write_all(&fill).unwrap();
        want.extend_from_slice(&fill);
        assert!(
            put(&mut w, &mut want, bytes(BUFFER, 7)),
            "on a boundary again"
        );
        w.finish().unwrap();
        assert!(std::fs::read(&path).unwrap() == want);

        // Refused behind: the shared file position is moved off a block
        // boundary while no write is out (after the first, written here).
        let path = dir.path().join("g");
        let file = File::create(&path).unwrap();
        let mut w = DirectWrite::new(&file).write_behind();
        let mut want = Vec::new();
        for (seed, moved) in [(1, true), (2, false), (3, false)] {
            let data = bytes(BUFFER, seed);
            want.extend_from_slice(&data);
            w.write_chunk(AlignedBuf::from_slice(&data)).unwrap();
            if moved {
                (&file).seek(io::SeekFrom::Current(5)).unwrap();
                want.extend_from_slice(&[0; 5]);
            }
        }
        assert!(!w.is_direct(), "refused: the rest went through the cache");
        w.finish().unwrap();
        assert!(std::fs::read(&path).unwrap() == want);
    }
}
