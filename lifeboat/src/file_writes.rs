//! Small restored files, written by helper threads while the tar walk
//! reads on, and what has to wait for them (docs/ARCHITECTURE.md,
//! "Restore").
//!
//! Why: on a volume of many small files the kernel's work per file
//! (create, write, owner, mode, mtime) is most of a restore, and one thread
//! doing it all, between reading tar headers, left the second core idle.
//!
//! What waits, and for what:
//! - a folder's metadata, for every file queued before the walk left the
//!   folder (a file created in it changes its mtime);
//! - an entry at the path of a file still queued, or of a folder whose
//!   metadata waits (a tar may list a path twice), for everything queued;
//! - whatever looks at what is on disk (a hard link's target, a chain's
//!   purge, a folder the walk enters again) likewise: the walk calls
//!   [`Writes::drain`] first.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::file_out::{apply_dir_meta, DirMeta, NewFile};
use crate::job_pool::JobPool;
use crate::Result;

/// Files up to this size are written by the helper threads: read whole
/// into memory and handed over. Larger ones are written by the walk itself,
/// streaming (and past the page cache: `file_out::DIRECT_MIN`).
pub const SMALL_FILE: u64 = 256 * 1024;
/// Helper threads. On 2 cores two keep both busy beside the walk and the
/// decompressing thread (the walk still makes every folder itself).
pub const FILE_WRITERS: usize = 2;
/// At most this many files, and bytes of them, queued at once.
pub const FILES_OUT: usize = 128;
pub const FILE_BYTES_OUT: usize = 4 << 20;
/// Folders left whose metadata may wait for their files; past this the
/// walk waits for the oldest (each holds a path and its metadata).
pub const METAS_OUT: usize = 1024;

pub struct Writes {
    pool: JobPool,
    as_root: bool,
    /// Files queued and maybe not yet written: job number, path key.
    out: VecDeque<(u64, u64)>,
    /// Folders the walk has left, each with the number of jobs queued
    /// before it did, whose metadata waits for those jobs to end.
    metas: VecDeque<(u64, PathBuf, DirMeta)>,
    /// How many of `out` and `metas` have each path key: a path not here
    /// has nothing pending. Two paths with one key only wait needlessly.
    busy: HashMap<u64, u32>,
}

impl Writes {
    pub fn new(as_root: bool) -> Result<Self> {
        Ok(Writes {
            pool: JobPool::new("lifeboat-files", FILE_WRITERS, FILES_OUT, FILE_BYTES_OUT)?,
            as_root,
            out: VecDeque::new(),
            metas: VecDeque::new(),
            busy: HashMap::new(),
        })
    }

    /// Queues `file`, its bytes `body`; waits first for room. Returns the
    /// error of a file written before that failed.
    pub fn file(&mut self, file: NewFile, body: Vec<u8>) -> Result<()> {
        let key = key(&file.dest);
        // One folder's files on one helper: see `JobPool::submit`.
        let folder = file.dest.parent().map_or(0, self::key);
        let seq = self
            .pool
            .submit(body.len(), folder, move || file.write_from(&body))?;
        self.out.push_back((seq, key));
        *self.busy.entry(key).or_default() += 1;
        Ok(())
    }

    /// The walk has left folder `path`: its metadata now, or once the
    /// files queued before are written.
    pub fn dir_left(&mut self, path: PathBuf, meta: DirMeta) -> Result<()> {
        if self.metas.is_empty() && self.pool.done_below()? == self.pool.next_seq() {
            return apply_dir_meta(&path, meta, self.as_root);
        }
        *self.busy.entry(key(&path)).or_default() += 1;
        self.metas.push_back((self.pool.next_seq(), path, meta));
        Ok(())
    }

    /// Moves on what waited for files now written: gives their folders
    /// their metadata. Waits only when too many folders wait. Returns the
    /// error of a file that failed.
    pub fn settle(&mut self) -> Result<()> {
        if self.out.is_empty() && self.metas.is_empty() {
            return Ok(());
        }
        if self.metas.len() > METAS_OUT {
            let needed = self.metas.front().expect("not empty").0;
            self.pool.wait_for(needed)?;
        }
        // Also where a failed file is noticed: the walk stops at the
        // next entry, as it did when it wrote every file itself.
        let done = self.pool.done_below()?;
        while let Some(&(seq, key)) = self.out.front() {
            if seq >= done {
                break;
            }
            self.out.pop_front();
            self.unbusy(key);
        }
        while matches!(self.metas.front(), Some((needed, _, _)) if *needed <= done) {
            let (_, path, meta) = self.metas.pop_front().expect("just seen");
            self.unbusy(key(&path));
            apply_dir_meta(&path, meta, self.as_root)?;
        }
        Ok(())
    }

    /// Waits for every file queued, then gives every folder left its
    /// metadata: what is on disk is then what the walk wrote.
    pub fn drain(&mut self) -> Result<()> {
        // Even with nothing pending: a file that failed is reported here
        // once [`Self::settle`] has moved past it.
        self.pool.wait_for(self.pool.next_seq())?;
        self.out.clear();
        self.busy.clear();
        for (_, path, meta) in std::mem::take(&mut self.metas) {
            apply_dir_meta(&path, meta, self.as_root)?;
        }
        Ok(())
    }

    /// Drains when something is pending at `path`: what the walk does
    /// there comes after it.
    pub fn wait_for_path(&mut self, path: &Path) -> Result<()> {
        match self.busy.is_empty() || !self.busy.contains_key(&key(path)) {
            true => Ok(()),
            false => self.drain(),
        }
    }

    fn unbusy(&mut self, key: u64) {
        if let Some(n) = self.busy.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.busy.remove(&key);
            }
        }
    }
}

fn key(path: &Path) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    path.as_os_str().as_bytes().hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    fn meta(mode: u32, mtime: u64) -> DirMeta {
        // SAFETY: getuid and getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        DirMeta {
            mode,
            uid: uid.into(),
            gid: gid.into(),
            mtime,
            mtime_nsec: 7,
        }
    }

    fn new_file(dest: PathBuf, mtime: u64) -> NewFile {
        NewFile {
            dest,
            meta: meta(0o640, mtime),
            chown: false,
            volume_bytes: 0,
        }
    }

    /// More folders than may wait, each left while its files may still be
    /// queued: every file is there byte for byte, and every folder ends
    /// with its own mode and mtime, not the time of a late write into it.
    #[test]
    fn folders_get_their_metadata_after_their_files() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = Writes::new(false).unwrap();
        let folders = METAS_OUT + 300;
        for d in 0..folders {
            let dir = tmp.path().join(format!("d{d}"));
            fs::create_dir(&dir).unwrap();
            for i in 0..3u64 {
                let body = vec![d as u8; 5000 * i as usize];
                w.file(new_file(dir.join(format!("f{i}")), 1_600_000_000 + i), body)
                    .unwrap();
                w.settle().unwrap();
            }
            w.dir_left(dir, meta(0o750, 1_500_000_000 + d as u64))
                .unwrap();
            w.settle().unwrap();
        }
        w.drain().unwrap();
        for d in 0..folders {
            let dir = tmp.path().join(format!("d{d}"));
            let md = fs::metadata(&dir).unwrap();
            assert_eq!(md.mtime(), 1_500_000_000 + d as i64, "{d}");
            assert_eq!(md.mtime_nsec(), 7);
            assert_eq!(md.mode() & 0o7777, 0o750);
            for i in 0..3u64 {
                let f = dir.join(format!("f{i}"));
                assert_eq!(fs::read(&f).unwrap(), vec![d as u8; 5000 * i as usize]);
                let md = fs::metadata(&f).unwrap();
                assert_eq!(
                    (md.mode() & 0o7777, md.mtime()),
                    (0o640, 1_600_000_000 + i as i64)
                );
            }
        }
    }

    /// A path with a file still queued: what comes next there waits for it.
    #[test]
    fn a_path_still_being_written_is_waited_for() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = Writes::new(false).unwrap();
        let f = tmp.path().join("f");
        w.file(new_file(f.clone(), 1), vec![1; 100_000]).unwrap();
        w.wait_for_path(&f).unwrap();
        assert_eq!(fs::read(&f).unwrap(), vec![1; 100_000]);
        // A file listed again replaces the first.
        w.file(new_file(f.clone(), 2), b"again".to_vec()).unwrap();
        w.drain().unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"again");
    }

    /// A file that cannot be written fails the restore.
    #[test]
    fn a_failed_file_is_reported_by_the_end() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = Writes::new(false).unwrap();
        let missing = tmp.path().join("no-such-folder/f");
        w.file(new_file(missing, 1), b"x".to_vec()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        // Noticed at the walk's next entry, or at its end.
        let e = w.settle().and_then(|()| w.drain()).unwrap_err();
        assert!(e.to_string().contains("no-such-folder/f"), "{e}");
    }
}
