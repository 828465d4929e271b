//! Reads small files on a few threads ahead of the tar writer.
//!
//! One file at a time is how `tar` works, and on a volume of many small files
//! it spends its time waiting: for each file's `open` and `read` on a warm
//! cache, for the disk on a cold one. Here the walker puts the entries it
//! finds, in archive order, into batches; [`READERS`] threads each take a
//! whole batch and read its small files into the batch's buffer; the tar
//! writer takes the batches back in order. Batches keep the hand-offs
//! between threads to one per [`BATCH_ENTRIES`] entries, and several readers
//! keep several reads in flight, which is what a cold disk needs.
//!
//! Memory is bounded by [`BATCHES_AHEAD`] × ([`BATCH_BYTES`] +
//! [`READ_AHEAD_MAX_FILE`]) bytes of file data plus [`BATCH_ENTRIES`] names
//! per batch, whatever the volume: the batches circulate (walker → readers →
//! writer → walker) and their data buffers are reused, so file bytes are
//! never allocated on one thread and freed on another (only the entries'
//! names are, a few hundred bytes each).

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Mutex;

use crate::progress::{is_cancelled, Cancel};

/// Files up to this size are read by the reader threads; larger ones are
/// streamed by the tar writer with large reads, where the kernel's own
/// read-ahead already keeps the disk busy.
pub const READ_AHEAD_MAX_FILE: u64 = 64 * 1024;
/// A batch is handed on once its files hold this many bytes ...
pub const BATCH_BYTES: usize = 512 * 1024;
/// ... or it holds this many entries.
pub const BATCH_ENTRIES: usize = 256;
/// Batches between the walker and the tar writer; with [`BATCH_BYTES`] the
/// bound of the read-ahead's memory. Six keeps every reader busy with two
/// batches ready for the writer, and a backup of small files to S3 under
/// 48 MiB (README "Bounds").
pub const BATCHES_AHEAD: usize = 6;
/// Threads reading small files: reads in flight on a cold disk.
pub const READERS: usize = 4;

/// What the walker found, in archive order.
// Nearly all are entries; boxing them would allocate once per file.
#[allow(clippy::large_enum_variant)]
pub enum Found {
    Entry(Entry),
    /// Said in order with the entries (e.g. a device node skipped).
    Warning(String),
    /// Deleted between listing its folder and reading it.
    Vanished(PathBuf),
}

pub struct Entry {
    pub path: PathBuf,
    /// From `lstat` when walked: the header's mode, owner, mtime and size.
    pub meta: Metadata,
    pub kind: Kind,
}

pub enum Kind {
    Dir,
    /// A folder of an incremental link: a GNU `D` entry whose data is the
    /// list of its names (`chain::dumpdir`), `len` bytes.
    ListedDir {
        len: u64,
        list: Box<dyn std::io::Read + Send>,
    },
    /// The link's target, byte for byte.
    Symlink(Vec<u8>),
    /// A hard link to the entry of that name, written before.
    Link(PathBuf),
    /// A regular file for a reader thread.
    Small(Fetch),
    /// A regular file the tar writer streams itself.
    Large,
}

pub enum Fetch {
    Pending,
    /// `data[start..start + len]` of the batch; `len` may differ from the
    /// walked size when the file changed. `after` is `fstat` after the read.
    /// `packed`: its bytes look like they will not shrink
    /// (`incompressible::looks_packed`), judged here, off the writer's thread.
    Read {
        start: usize,
        len: usize,
        after: Option<Metadata>,
        packed: bool,
    },
    Vanished,
    /// No longer the regular file the walk saw; why, for the warning.
    Replaced(String),
    Failed(io::Error),
}

/// Entries in archive order and the bytes of their small files.
#[derive(Default)]
pub struct Batch {
    pub seq: u64,
    pub found: Vec<Found>,
    pub data: Vec<u8>,
    /// Bytes the small files will take at most (each its size + 1).
    pub reserved: usize,
}

impl Batch {
    pub fn is_full(&self) -> bool {
        self.found.len() >= BATCH_ENTRIES || self.reserved >= BATCH_BYTES
    }

    /// Empties the batch for reuse, keeping its allocations.
    pub fn recycle(&mut self) {
        self.found.clear();
        self.data.clear();
        self.reserved = 0;
    }
}

/// One reader thread: takes batches until the walker is done, reads their
/// small files, hands each batch on. Returns early when nobody takes them.
pub fn read_batches(jobs: &Mutex<Receiver<Batch>>, done: Sender<Batch>, cancel: &Cancel) {
    loop {
        // The lock is held only to take a batch, not while reading it.
        let next = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(mut batch) = next else { return };
        if !is_cancelled(cancel) {
            fill(&mut batch);
        }
        if done.send(batch).is_err() {
            return;
        }
    }
}

pub(super) fn fill(batch: &mut Batch) {
    // Reserved by the walker, so reading never allocates on this thread.
    debug_assert!(batch.data.capacity() >= batch.reserved);
    let Batch { found, data, .. } = batch;
    for f in found.iter_mut() {
        let Found::Entry(Entry {
            path,
            meta,
            kind: Kind::Small(fetch),
        }) = f
        else {
            continue;
        };
        *fetch = match super::open::open_walked(path) {
            Ok(file) => read_small(file, meta.len(), data),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Fetch::Vanished,
            Err(e) => match super::open::replaced(&e) {
                Some(why) => Fetch::Replaced(why),
                None => Fetch::Failed(e),
            },
        };
    }
}

/// Reads a file of `size` bytes (as walked) onto the end of `data`: one
/// `read` when it did not change. Up to one byte more is taken, so a file
/// that grew shows as longer; the `fstat` after tells other changes.
fn read_small(mut file: File, size: u64, data: &mut Vec<u8>) -> Fetch {
    let size = size as usize;
    let start = data.len();
    data.resize(start + size + 1, 0);
    let buf = &mut data[start..];
    let mut got = 0;
    let outcome = loop {
        match file.read(&mut buf[got..]) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                got += n;
                // The walked size read: done, unless it grew (that shows in fstat).
                if got >= size {
                    break Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    data.truncate(start + got);
    match outcome {
        Ok(()) => Fetch::Read {
            start,
            len: got,
            after: file.metadata().ok(),
            packed: super::incompressible::looks_packed(&data[start..]),
        },
        Err(e) => {
            data.truncate(start);
            Fetch::Failed(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(content: &[u8], walked: u64) -> (Vec<u8>, usize) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, content).unwrap();
        let mut data = b"before".to_vec();
        match read_small(File::open(&p).unwrap(), walked, &mut data) {
            Fetch::Read {
                start, len, after, ..
            } => {
                assert_eq!(start, 6);
                assert_eq!(after.unwrap().len(), content.len() as u64);
                (data[start..].to_vec(), len)
            }
            _ => panic!("not read"),
        }
    }

    #[test]
    fn a_small_file_is_read_whole_and_a_change_of_size_shows() {
        assert_eq!(read(b"abcd", 4), (b"abcd".to_vec(), 4));
        // Grew since walked: one byte more tells it.
        assert_eq!(read(b"abcdef", 4), (b"abcde".to_vec(), 5));
        // Shrank: what is there.
        assert_eq!(read(b"ab", 4), (b"ab".to_vec(), 2));
        assert_eq!(read(b"", 0), (Vec::new(), 0));
    }
}
