//! Walks the folders one step ahead of the thread that writes the tar.
//!
//! The tar thread also feeds the compressor, and a profile of a backup showed
//! it was the thread that bounded the whole run, much of it waiting for the
//! disk: directory blocks read one at a time, small files read one at a time,
//! each a round trip to the device. The scout does that waiting on its own
//! thread: it lists folders, reads metadata, reads small files whole and asks
//! the kernel to start reading the head of larger ones, and hands each entry
//! over a bounded queue. The tar thread is left with headers, copying and
//! compression.
//!
//! Memory: at most [`QUEUE`] entries wait, each holding at most
//! [`SMALL_FILE`] bytes, so the scout holds no more than 4 MiB whatever the
//! size of the tree.

use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::SyncSender;

use super::files::{is_own_file, unreadable, FilesSource};
use crate::progress::{is_cancelled, Cancel};
use crate::{Error, Result};

/// Entries that may wait between the scout and the tar thread.
pub const QUEUE: usize = 64;

/// Files up to this size are read whole by the scout.
pub const SMALL_FILE: u64 = 64 * 1024;

/// Bytes at the head of a larger file the kernel is asked to read ahead of
/// time; the kernel's own readahead takes over once the tar thread reads.
pub const PREFETCH_HEAD: i64 = 2 << 20;

/// What the scout found, in the order the tar must have it.
pub enum Found {
    /// A new root of `LIFEBOAT_PATHS` begins (hard links do not cross roots).
    Root,
    Entry {
        path: PathBuf,
        meta: Metadata,
        body: Body,
    },
    /// Something the report should say (a file vanished, a socket skipped).
    Warning(String),
    /// The walk cannot go on; nothing follows.
    Failed(Error),
}

pub enum Body {
    /// A folder, or a file that is a second name of one already seen.
    None,
    /// A symlink's target, as bytes.
    Link(Vec<u8>),
    /// A small regular file, exactly `meta.len()` bytes, and what changed
    /// while it was read.
    Small(Vec<u8>, Option<String>),
    /// A larger regular file, open, its head being read ahead.
    Open(File),
}

/// Walks `src`'s paths and sends what it finds to `tx` until the end, an
/// error, a cancel, or the receiver going away.
pub fn run(src: &FilesSource, cancel: &Cancel, tx: SyncSender<Found>) {
    let mut scout = Scout { src, cancel, tx };
    for root in &src.paths {
        let result = scout.send(Found::Root).and_then(|()| scout.tree(root));
        match result {
            Ok(()) => {}
            Err(Stop::Receiver) => return,
            Err(Stop::Failed(e)) => {
                let _ = scout.tx.send(Found::Failed(e));
                return;
            }
        }
    }
}

enum Stop {
    /// The tar thread stopped listening (it failed or finished early).
    Receiver,
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Failed(e)
    }
}

struct Scout<'a> {
    src: &'a FilesSource,
    cancel: &'a Cancel,
    tx: SyncSender<Found>,
}

impl Scout<'_> {
    fn send(&self, found: Found) -> std::result::Result<(), Stop> {
        self.tx.send(found).map_err(|_| Stop::Receiver)
    }

    fn warn(&self, message: String) -> std::result::Result<(), Stop> {
        self.send(Found::Warning(message))
    }

    /// Depth-first with an explicit stack, so a very deep tree cannot overflow
    /// the thread's stack; children sorted once by name, for stable archives.
    fn tree(&mut self, root: &Path) -> std::result::Result<(), Stop> {
        let meta = fs::symlink_metadata(root).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::Source(format!(
                "path {} does not exist; check LIFEBOAT_PATHS and the volume mount",
                root.display()
            )),
            _ => Error::io(format!("reading {}", root.display()), e),
        })?;
        if !meta.is_dir() {
            return Err(Error::Source(format!(
                "path {} is not a folder; LIFEBOAT_PATHS lists folders",
                root.display()
            ))
            .into());
        }
        self.send(Found::Entry {
            path: root.to_path_buf(),
            meta,
            body: Body::None,
        })?;
        let mut stack: Vec<(PathBuf, std::vec::IntoIter<OsString>)> =
            vec![(root.to_path_buf(), self.children(root)?.into_iter())];
        while let Some((dir, iter)) = stack.last_mut() {
            let Some(name) = iter.next() else {
                stack.pop();
                continue;
            };
            if is_cancelled(self.cancel) {
                return Err(Error::Cancelled.into());
            }
            let path = dir.join(&name);
            if self.excluded(root, &path, &name) {
                continue;
            }
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.warn(format!("{} vanished while the backup ran", path.display()))?;
                    continue;
                }
                Err(e) => return Err(Error::io(format!("reading {}", path.display()), e).into()),
            };
            let is_dir = meta.is_dir();
            let Some(body) = self.body(&path, &meta)? else {
                continue;
            };
            self.send(Found::Entry {
                path: path.clone(),
                meta,
                body,
            })?;
            if is_dir {
                let children = self.children(&path)?;
                stack.push((path, children.into_iter()));
            }
        }
        Ok(())
    }

    fn children(&mut self, dir: &Path) -> std::result::Result<Vec<OsString>, Stop> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.warn(format!("{} vanished while the backup ran", dir.display()))?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(unreadable(dir, e).into()),
        };
        let mut names = Vec::new();
        for ent in rd {
            names.push(ent.map_err(|e| unreadable(dir, e))?.file_name());
        }
        names.sort();
        Ok(names)
    }

    fn excluded(&self, root: &Path, path: &Path, name: &OsString) -> bool {
        if is_own_file(name.as_bytes()) || self.src.skip.iter().any(|s| s == path) {
            return true;
        }
        if self.src.filter.is_some_and(|f| f(root, path)) {
            return true;
        }
        let rel = path.strip_prefix(root).unwrap_or(path);
        self.src.exclude.is_match(path) || self.src.exclude.is_match(rel)
    }

    /// What the tar thread needs for this entry; `None` when it vanished.
    fn body(&mut self, path: &Path, meta: &Metadata) -> std::result::Result<Option<Body>, Stop> {
        let body = body(path, meta)?;
        if body.is_none() {
            self.warn(format!("{} vanished while the backup ran", path.display()))?;
        }
        Ok(body)
    }
}

/// Reads what the tar needs of one entry besides its metadata: a symlink's
/// target, a small file's bytes, a larger file opened with its head being
/// read ahead. `None` when the entry vanished since it was listed.
pub fn body(path: &Path, meta: &Metadata) -> Result<Option<Body>> {
    let ft = meta.file_type();
    let vanished = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    if ft.is_symlink() {
        return match fs::read_link(path) {
            Ok(t) => Ok(Some(Body::Link(t.into_os_string().into_vec()))),
            Err(e) if vanished(&e) => Ok(None),
            Err(e) => Err(Error::io(
                format!("reading the symlink {}", path.display()),
                e,
            )),
        };
    }
    if !ft.is_file() {
        // Folders; sockets, FIFOs and devices, which the tar thread skips.
        return Ok(Some(Body::None));
    }
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if vanished(&e) => return Ok(None),
        Err(e) => return Err(unreadable(path, e)),
    };
    if meta.len() > SMALL_FILE {
        // SAFETY: an advisory syscall on a descriptor we own.
        unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                0,
                PREFETCH_HEAD,
                libc::POSIX_FADV_WILLNEED,
            );
        }
        return Ok(Some(Body::Open(file)));
    }
    let (data, note) = read_small(path, meta, file).map_err(|e| unreadable(path, e))?;
    Ok(Some(Body::Small(data, note)))
}

/// Reads a small file as the header will promise it, `meta.len()` bytes:
/// cut where it grew, padded with zeros where it shrank, with a note saying so.
fn read_small(path: &Path, meta: &Metadata, file: File) -> io::Result<(Vec<u8>, Option<String>)> {
    let want = meta.len() as usize;
    let mut data = Vec::with_capacity(want + 1);
    // One byte more than promised tells a file that grew.
    file.take(want as u64 + 1).read_to_end(&mut data)?;
    let grew = data.len() > want;
    let padded = want.saturating_sub(data.len()) as u64;
    data.resize(want, 0);
    let changed = fs::symlink_metadata(path)
        .map(|m| {
            m.mtime() != meta.mtime()
                || m.mtime_nsec() != meta.mtime_nsec()
                || m.len() != meta.len()
        })
        .unwrap_or(false);
    Ok((
        data,
        super::files::change_note(path, meta.len(), padded, grew, changed),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size in the header is the size at listing time; the bytes must match it.
    #[test]
    fn a_small_file_that_changed_after_listing_is_cut_or_padded_with_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"0123456789").unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();

        fs::write(&path, b"0123456789abc").unwrap();
        let (data, note) = read_small(&path, &meta, File::open(&path).unwrap()).unwrap();
        assert_eq!(data, b"0123456789");
        assert!(note.unwrap().contains("grew while read; cut at 10 bytes"));

        fs::write(&path, b"0123").unwrap();
        let (data, note) = read_small(&path, &meta, File::open(&path).unwrap()).unwrap();
        assert_eq!(data, b"0123\0\0\0\0\0\0");
        assert!(note.unwrap().contains("padded 6 byte(s)"));

        fs::write(&path, b"0123456789").unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        let (data, note) = read_small(&path, &meta, File::open(&path).unwrap()).unwrap();
        assert_eq!((data.as_slice(), note), (&b"0123456789"[..], None));
    }
}
