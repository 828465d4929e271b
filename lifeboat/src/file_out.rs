//! Writing one restored entry's data: a new file's bytes (with holes for
//! runs of zeros, large files past the page cache), and the owner, mode
//! and mtime of files and folders. The tar walk (`tar_read.rs`) decides
//! what is written where; this is how (docs/ARCHITECTURE.md, "Restore").

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;

use crate::direct_write::DirectWrite;
use crate::error::IoContext;
use crate::{Error, Result};

/// Metadata of a folder, applied after its content is written (writing
/// into a folder changes its mtime, and a read-only mode would stop us).
#[derive(Debug, Clone, Copy)]
pub struct DirMeta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since 1970.
    pub mtime: u64,
    /// The sub-second part, from the entry's PAX `mtime` record (0 without one).
    pub mtime_nsec: u32,
}

impl DirMeta {
    pub fn mtime(&self) -> FileTime {
        FileTime::from_unix_time(self.mtime as i64, self.mtime_nsec)
    }
}

/// Fills `buf` unless the stream ends first; returns the bytes read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

pub fn apply_dir_meta(path: &Path, meta: DirMeta, as_root: bool) -> Result<()> {
    if as_root {
        std::os::unix::fs::lchown(path, Some(meta.uid as u32), Some(meta.gid as u32))
            .ctx("setting the owner of", path)?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(meta.mode))
        .ctx("setting the mode of", path)?;
    let t = meta.mtime();
    filetime::set_symlink_file_times(path, t, t).ctx("setting the mtime of", path)
}

/// A regular file to create and write, and the metadata it gets.
pub struct NewFile {
    pub dest: PathBuf,
    pub meta: DirMeta,
    pub chown: bool,
    /// The artifact's file bytes, told when the volume is full.
    pub volume_bytes: u64,
}

impl NewFile {
    /// Creates the file, replacing anything there but a folder.
    pub fn create(&self) -> Result<fs::File> {
        let dest = &self.dest;
        // create_new refuses to follow a symlink planted at `dest`. In a
        // fresh staging folder nothing is there: only when something is
        // (a file listed twice, an earlier link's) is it looked at and
        // removed, which saves a path lookup per file.
        let create = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dest)
        };
        match create() {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                remove_non_dir(dest)?;
                create()
            }
            made => made,
        }
        .ctx("creating", dest)
    }

    /// Writing its bytes failed: our own disk (full or failing), which
    /// may pass, and not the artifact's fault, whatever the error (a write
    /// of nothing has no errno). A store's broken stream is told apart in
    /// `restore::read`.
    pub fn write_failed(&self, e: io::Error) -> Error {
        let dest = self.dest.display();
        if e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(libc::ENOSPC) {
            return Error::io(
                format!(
                    "writing {dest} (the volume is full: the artifact's files take {} bytes; grow the volume or free room on it)",
                    self.volume_bytes
                ),
                e,
            );
        }
        Error::io(format!("writing {dest}"), e)
    }

    /// Its bytes written: gives it its owner, mode and mtime.
    pub fn written(&self, f: &fs::File) -> Result<()> {
        let (dest, meta) = (&self.dest, self.meta);
        if self.chown {
            std::os::unix::fs::fchown(f, Some(meta.uid as u32), Some(meta.gid as u32))
                .ctx("setting the owner of", dest)?;
        }
        f.set_permissions(fs::Permissions::from_mode(meta.mode))
            .ctx("setting the mode of", dest)?;
        let t = meta.mtime();
        filetime::set_file_handle_times(f, Some(t), Some(t)).ctx("setting the mtime of", dest)
    }

    /// The whole file from `body`, its bytes in memory (a helper thread's job).
    pub fn write_from(&self, body: &[u8]) -> Result<()> {
        let f = self.create()?;
        write_out(body, &f).map_err(|e| self.write_failed(e))?;
        self.written(&f)
    }
}

/// Removes what is at `p` unless it is a folder: no entry ever replaces
/// a folder (a restore only ever removes one in a chain's purge).
pub(crate) fn remove_non_dir(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => Err(Error::io(
            format!("replacing {}", p.display()),
            io::Error::new(io::ErrorKind::AlreadyExists, "a folder is in the way"),
        )),
        Ok(_) => fs::remove_file(p).ctx("replacing", p),
        Err(_) => Ok(()),
    }
}

/// Bytes read from the archive per `write` while restoring a file: the
/// default 8 KiB of `io::copy` would mean 128 syscalls per MiB.
pub const WRITE_BUFFER: usize = 256 * 1024;

/// A run of zero bytes this long, at an offset that is a multiple of it, is
/// left as a hole instead of written (as `cp --sparse=auto` and `tar -x` of
/// a sparse member do): a 1 GiB file that is mostly holes must fit back into
/// the small volume it came from. The page size, and the block size of
/// ext4 and xfs by default: a smaller hole would still take a whole block.
pub const SPARSE_BLOCK: usize = 4096;

/// Restored files from this size are written past the page cache where
/// the disk allows (`direct_write.rs`); smaller ones through it, as a
/// direct write waits for the disk, file by file.
pub const DIRECT_MIN: u64 = 1 << 20;

/// Where copying a file's bytes failed.
#[derive(Debug)]
pub(crate) enum CopyError {
    /// Reading them from the archive: they do not decode.
    Read(io::Error),
    /// Writing them to the file: the disk's doing.
    Write(io::Error),
}

/// Copies an entry's body into `f` in writes of at most [`WRITE_BUFFER`]
/// (see [`Holes`]). Large files go past the page cache on a local disk,
/// written by a thread of their own while the next bytes are read; the
/// rest is handed to the disk step by step as it goes (see
/// [`crate::writeback`]), so the final `syncfs` has little left and dirty
/// pages stay bounded. `f` must be new and empty: a hole reads as zeros.
pub(crate) fn copy_out(
    entry: &mut impl Read,
    size: u64,
    f: &mut fs::File,
) -> std::result::Result<u64, CopyError> {
    // Sized to the file: most files are small, and a 256 KiB allocation per
    // file would be an mmap and munmap each. Every fill but the last is
    // whole, so each starts at a multiple of SPARSE_BLOCK in the file.
    let mut buf = vec![0u8; (size as usize).clamp(1, WRITE_BUFFER)];
    let mut out = Holes::new(match size >= DIRECT_MIN {
        true => DirectWrite::new(&*f).write_behind(),
        false => DirectWrite::buffered(&*f),
    });
    loop {
        // Filled, not one read: the archive hands out at most a tar block at
        // a time near entry boundaries.
        let filled = read_full(entry, &mut buf).map_err(CopyError::Read)?;
        if filled == 0 {
            break;
        }
        out.put(&buf[..filled]).map_err(CopyError::Write)?;
    }
    out.finish(f).map_err(CopyError::Write)
}

/// Writes a small file's bytes, already in memory, into `f` (new and
/// empty), through the page cache, with holes as [`copy_out`] makes them.
fn write_out(body: &[u8], f: &fs::File) -> io::Result<u64> {
    let mut out = Holes::new(DirectWrite::buffered(f));
    out.put(body)?;
    out.finish(f)
}

/// Writes a file's bytes in order, seeking over every aligned
/// [`SPARSE_BLOCK`] of zeros instead of writing it.
struct Holes<'f> {
    out: DirectWrite<&'f fs::File>,
    total: u64,
    /// Whether the last bytes were skipped: the file then ends short of
    /// `total` until `set_len` puts the end where it belongs.
    ends_in_hole: bool,
}

impl<'f> Holes<'f> {
    fn new(out: DirectWrite<&'f fs::File>) -> Self {
        Holes {
            out,
            total: 0,
            ends_in_hole: false,
        }
    }

    /// The next bytes; every call but the last must hand a multiple of
    /// [`SPARSE_BLOCK`] bytes, so blocks stay aligned in the file.
    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        let filled = data.len();
        let block_end = |at: usize| (at + SPARSE_BLOCK).min(filled);
        let mut at = 0;
        while at < filled {
            // One write or one seek for each run of like blocks.
            let zero = is_zero(&data[at..block_end(at)]);
            let mut end = block_end(at);
            while end < filled && is_zero(&data[end..block_end(end)]) == zero {
                end = block_end(end);
            }
            if zero {
                self.out.skip((end - at) as u64)?;
            } else {
                self.out.write_all(&data[at..end])?;
            }
            self.ends_in_hole = zero;
            at = end;
        }
        self.total += filled as u64;
        Ok(())
    }

    fn finish(self, f: &fs::File) -> io::Result<u64> {
        self.out.finish()?;
        if self.ends_in_hole {
            f.set_len(self.total)?;
        }
        Ok(self.total)
    }
}

/// Whether `block` holds only zeros, compared 16 bytes at a time (a byte
/// loop would cost more than the write it saves).
fn is_zero(block: &[u8]) -> bool {
    let mut words = block.chunks_exact(16);
    words.all(|w| u128::from_ne_bytes(w.try_into().expect("16 bytes")) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_blocks_become_holes_and_the_content_is_unchanged() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let restore = |name: &str, body: &[u8]| {
            let path = dir.path().join(name);
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .unwrap();
            let n = copy_out(&mut &body[..], body.len() as u64, &mut f).expect("copied");
            assert_eq!(n, body.len() as u64);
            drop(f);
            assert!(fs::read(&path).unwrap() == body, "{name}: content differs");
            fs::metadata(&path).unwrap().blocks() * 512
        };
        // Data in the first block, one lone block past a buffer's end, and
        // zeros to the end: the length comes from set_len.
        let mut body = vec![0u8; 3 * WRITE_BUFFER + 100];
        body[5] = 1;
        body[WRITE_BUFFER + SPARSE_BLOCK + 7] = 2;
        let stored = restore("holes", &body);
        assert!(stored <= 4 * SPARSE_BLOCK as u64, "{stored} bytes stored");
        // Ends in data that is not block-aligned.
        let n = body.len();
        body[n - 1] = 3;
        restore("data-at-the-end", &body);
        restore("small-zeros", &[0u8; 100]);
        restore("empty", &[]);

        // Large enough to be written past the page cache (on a local
        // disk): the same holes, and data around them.
        let mut body = vec![0u8; 5 * DIRECT_MIN as usize + 100];
        body[..3 * SPARSE_BLOCK + 11].fill(4);
        body[2 * DIRECT_MIN as usize + 7] = 5;
        let stored = restore("large-holes", &body);
        assert!(stored <= 16 * SPARSE_BLOCK as u64, "{stored} bytes stored");
        let n = body.len();
        body[n - 1] = 6;
        restore("large-data-at-the-end", &body);
        let noise: Vec<u8> = (0..3 * DIRECT_MIN + 4097)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        restore("large-dense", &noise);
    }

    /// A failed read is the archive's fault (an older artifact may be
    /// tried), a failed write the disk's (it may pass): told apart by
    /// where it happened, not by whether the error carries an errno.
    #[test]
    fn a_failed_read_and_a_failed_write_are_told_apart() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = fs::File::create_new(&path).unwrap();
        assert!(matches!(
            copy_out(&mut Failing, 10, &mut f),
            Err(CopyError::Read(_))
        ));
        let mut read_only = fs::File::open(&path).unwrap();
        assert!(matches!(
            copy_out(&mut &b"abc"[..], 3, &mut read_only),
            Err(CopyError::Write(_))
        ));
    }

    #[test]
    fn is_zero_looks_at_every_byte() {
        let mut b = vec![0u8; SPARSE_BLOCK + 5];
        assert!(is_zero(&b));
        for i in [0, 15, 16, SPARSE_BLOCK - 1, SPARSE_BLOCK + 4] {
            b[i] = 1;
            assert!(!is_zero(&b), "{i}");
            b[i] = 0;
        }
    }
}
