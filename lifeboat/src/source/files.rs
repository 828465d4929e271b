//! The `files` source: walks folders and writes them as tar entries named by
//! their absolute path without the leading `/` (as `tar cf - /data` does).
//! Keeps modes, owners, mtimes, symlinks, hard links and empty folders.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use globset::GlobSet;
use tar::{EntryType, Header};

use super::{Source, SourceCtx, SourceReport};
use crate::error::IoContext;
use crate::progress::{is_cancelled, Progress};
use crate::{Error, Result};

/// Read buffer per file. Large sequential reads keep syscalls few on big files.
pub const READ_BUFFER: usize = 256 * 1024;

/// Names lifeboat itself leaves in a data folder; never part of a backup.
pub fn is_own_file(name: &[u8]) -> bool {
    name.starts_with(b".lifeboat-staging-")
        || name == b".lifeboat-restored"
        || name == b".lifeboat-restoring"
        || name == crate::pending::PENDING_DIR.as_bytes()
}

pub struct FilesSource {
    pub paths: Vec<PathBuf>,
    pub exclude: GlobSet,
    /// Folders never to include, e.g. a backup target that lies inside a path.
    pub skip: Vec<PathBuf>,
    /// A source's own rule for what to leave out: `(root, path) -> leave out`.
    pub filter: Option<fn(&Path, &Path) -> bool>,
    /// Files change while read and something else repairs that (PostgreSQL
    /// replays WAL over torn pages): say so at debug level, not as warnings.
    pub changes_expected: bool,
}

impl FilesSource {
    pub fn new(paths: Vec<PathBuf>, exclude: GlobSet) -> Self {
        FilesSource {
            paths,
            exclude,
            skip: Vec::new(),
            filter: None,
            changes_expected: false,
        }
    }

    /// Writes one more file (found after the walk, e.g. WAL) as an entry.
    pub fn append_file<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        ctx: &SourceCtx,
        report: &mut SourceReport,
        path: &Path,
    ) -> Result<bool> {
        let meta = fs::symlink_metadata(path).ctx("reading", path)?;
        let mut walk = Walk {
            tar,
            ctx,
            report: std::mem::take(report),
            links: HashMap::new(),
            src: self,
        };
        let r = walk.entry(path, &meta);
        *report = walk.report;
        r
    }

    /// Writes `data` as a regular file entry named after `path`.
    pub fn append_bytes<W: Write>(
        tar: &mut tar::Builder<W>,
        report: &mut SourceReport,
        path: &Path,
        data: &[u8],
        like: &Metadata,
    ) -> Result<()> {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o600);
        h.set_uid(like.uid() as u64);
        h.set_gid(like.gid() as u64);
        h.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, tar_name(path), data)
            .map_err(|e| Error::io(format!("writing the tar entry for {}", path.display()), e))?;
        report.entries += 1;
        report.bytes_in += data.len() as u64;
        Ok(())
    }
}

impl Source for FilesSource {
    fn kind(&self) -> &'static str {
        "files"
    }

    fn paths(&self) -> Vec<String> {
        super::path_strings(&self.paths)
    }

    fn write_tar<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        ctx: &SourceCtx,
    ) -> Result<SourceReport> {
        let mut walk = Walk {
            tar,
            ctx,
            report: SourceReport::default(),
            links: HashMap::new(),
            src: self,
        };
        for root in &self.paths {
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
                )));
            }
            // Restore maps each path on its own, so a hard link may only
            // point at a name inside the same path.
            walk.links.clear();
            walk.tree(root, &meta)?;
        }
        Ok(walk.report)
    }
}

struct Walk<'a, W: Write> {
    tar: &'a mut tar::Builder<W>,
    ctx: &'a SourceCtx,
    report: SourceReport,
    /// (device, inode) of files with several links, to their first entry name.
    links: HashMap<(u64, u64), PathBuf>,
    src: &'a FilesSource,
}

impl<W: Write> Walk<'_, W> {
    /// Depth-first with an explicit stack, so a very deep tree cannot overflow
    /// the thread's stack; children sorted once by name, for stable archives.
    fn tree(&mut self, root: &Path, root_meta: &Metadata) -> Result<()> {
        self.entry(root, root_meta)?;
        let mut stack: Vec<(PathBuf, std::vec::IntoIter<OsString>)> =
            vec![(root.to_path_buf(), self.children(root)?.into_iter())];
        while let Some((dir, iter)) = stack.last_mut() {
            let Some(name) = iter.next() else {
                stack.pop();
                continue;
            };
            if is_cancelled(&self.ctx.cancel) {
                return Err(Error::Cancelled);
            }
            let path = dir.join(&name);
            if self.excluded(root, &path, &name) {
                continue;
            }
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.report
                        .warn(format!("{} vanished while the backup ran", path.display()));
                    continue;
                }
                Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
            };
            if !self.entry(&path, &meta)? {
                continue;
            }
            if meta.is_dir() {
                let children = self.children(&path)?;
                stack.push((path, children.into_iter()));
            }
        }
        Ok(())
    }

    fn children(&mut self, dir: &Path) -> Result<Vec<OsString>> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.report
                    .warn(format!("{} vanished while the backup ran", dir.display()));
                return Ok(Vec::new());
            }
            Err(e) => return Err(unreadable(dir, e)),
        };
        let mut names = Vec::new();
        for ent in rd {
            names.push(ent.map_err(|e| unreadable(dir, e))?.file_name());
        }
        names.sort();
        Ok(names)
    }

    fn excluded(&self, root: &Path, path: &Path, name: &OsString) -> bool {
        use std::os::unix::ffi::OsStrExt;
        if is_own_file(name.as_bytes()) || self.src.skip.iter().any(|s| s == path) {
            return true;
        }
        if self.src.filter.is_some_and(|f| f(root, path)) {
            return true;
        }
        let rel = path.strip_prefix(root).unwrap_or(path);
        self.src.exclude.is_match(path) || self.src.exclude.is_match(rel)
    }

    /// Writes one entry. Returns false when it was skipped.
    fn entry(&mut self, path: &Path, meta: &Metadata) -> Result<bool> {
        let name = tar_name(path);
        let mut h = Header::new_gnu();
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(meta.uid() as u64);
        h.set_gid(meta.gid() as u64);
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_size(0);
        let ft = meta.file_type();
        let tar_err =
            |e: io::Error| Error::io(format!("writing the tar entry for {}", path.display()), e);
        if ft.is_dir() {
            h.set_entry_type(EntryType::Directory);
            self.tar
                .append_data(&mut h, &name, io::empty())
                .map_err(tar_err)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(path).ctx("reading the symlink", path)?;
            h.set_entry_type(EntryType::Symlink);
            append_symlink(self.tar, &mut h, &name, target.as_os_str().as_bytes())
                .map_err(tar_err)?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.links.get(&key) {
                    h.set_entry_type(EntryType::Link);
                    let first = first.clone();
                    self.tar
                        .append_link(&mut h, &name, &first)
                        .map_err(tar_err)?;
                    self.count();
                    return Ok(true);
                }
                self.links.insert(key, name.clone());
            }
            return self.file(path, meta, h, &name);
        } else {
            let kind = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "FIFO"
            } else {
                "device node"
            };
            self.report.warn(format!(
                "{} is a {kind}; skipped (only files, folders and links are backed up)",
                path.display()
            ));
            return Ok(false);
        }
        self.count();
        Ok(true)
    }

    fn file(&mut self, path: &Path, meta: &Metadata, mut h: Header, name: &Path) -> Result<bool> {
        let file = match open_noatime(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.report
                    .warn(format!("{} vanished while the backup ran", path.display()));
                return Ok(false);
            }
            Err(e) => return Err(unreadable(path, e)),
        };
        h.set_entry_type(EntryType::Regular);
        h.set_size(meta.len());
        let mut body = ExactSize {
            inner: BufReader::with_capacity(READ_BUFFER, file),
            remaining: meta.len(),
            padded: 0,
            progress: self.ctx.progress.clone(),
            cancel: self.ctx.cancel.clone(),
        };
        if let Err(e) = self.tar.append_data(&mut h, name, &mut body) {
            if is_cancelled(&self.ctx.cancel) {
                return Err(Error::Cancelled);
            }
            return Err(Error::io(format!("reading {}", path.display()), e));
        }
        // The header already promised a size; what changed since is recorded,
        // so nobody mistakes a torn copy for a clean one.
        let grew = matches!(body.inner.read(&mut [0u8; 1]), Ok(1));
        let changed = fs::symlink_metadata(path)
            .map(|m| {
                m.mtime() != meta.mtime()
                    || m.mtime_nsec() != meta.mtime_nsec()
                    || m.len() != meta.len()
            })
            .unwrap_or(false);
        let note = if body.padded > 0 {
            Some(format!(
                "{} shrank while read; padded {} byte(s) with zeros",
                path.display(),
                body.padded
            ))
        } else if grew {
            Some(format!(
                "{} grew while read; cut at {} bytes",
                path.display(),
                meta.len()
            ))
        } else if changed {
            Some(format!(
                "{} changed while read; its copy may be inconsistent",
                path.display()
            ))
        } else {
            None
        };
        match note {
            Some(n) if self.src.changes_expected => tracing::debug!("{n} (repaired on restore)"),
            Some(n) => self.report.warn(n),
            None => {}
        }
        self.report.bytes_in += meta.len();
        self.count();
        Ok(true)
    }

    fn count(&mut self) {
        self.report.entries += 1;
        self.ctx.progress.add_entry();
    }
}

fn unreadable(path: &Path, e: io::Error) -> Error {
    let hint = if e.kind() == io::ErrorKind::PermissionDenied {
        "; run the sidecar as a user that can read it (securityContext.runAsUser / fsGroup) or exclude it with LIFEBOAT_EXCLUDE"
    } else {
        ""
    };
    Error::Io {
        what: format!("reading {}{hint}", path.display()),
        source: e,
    }
}

/// Writes a symlink entry keeping the target's bytes exactly. The tar crate's
/// `append_link` normalises the target as a path (drops `./` and trailing
/// slashes), which would change what the link says.
fn append_symlink<W: Write>(
    tar: &mut tar::Builder<W>,
    h: &mut Header,
    name: &Path,
    target: &[u8],
) -> io::Result<()> {
    const FIELD: usize = 100;
    if target.len() > FIELD {
        // GNU long link name: a `K` entry whose data is the target, NUL-terminated.
        let mut long = Header::new_gnu();
        long.as_gnu_mut().expect("gnu header").name[..13].copy_from_slice(b"././@LongLink");
        long.set_mode(0o644);
        long.set_entry_type(EntryType::GNULongLink);
        long.set_size(target.len() as u64 + 1);
        long.set_cksum();
        let mut data = target.to_vec();
        data.push(0);
        tar.append(&long, &data[..])?;
    }
    let n = target.len().min(FIELD);
    let field = &mut h.as_old_mut().linkname;
    field.fill(0);
    field[..n].copy_from_slice(&target[..n]);
    tar.append_data(h, name, io::empty())
}

/// `/home/jovyan/a.ipynb` -> `home/jovyan/a.ipynb`.
pub fn tar_name(path: &Path) -> PathBuf {
    path.strip_prefix("/").unwrap_or(path).to_path_buf()
}

/// Yields exactly `remaining` bytes: cuts a file that grew, pads one that shrank.
struct ExactSize<R> {
    inner: R,
    remaining: u64,
    padded: u64,
    progress: Arc<Progress>,
    cancel: crate::progress::Cancel,
}

impl<R: Read> Read for ExactSize<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        if is_cancelled(&self.cancel) {
            return Err(io::Error::other("cancelled"));
        }
        let want = out.len().min(self.remaining as usize);
        let mut n = self.inner.read(&mut out[..want])?;
        if n == 0 {
            out[..want].fill(0);
            n = want;
            self.padded += n as u64;
        }
        self.remaining -= n as u64;
        self.progress.add_bytes(n as u64);
        Ok(n)
    }
}

/// Opens a file to read without touching its access time: reading a whole
/// volume would otherwise dirty every inode the app has not read since its
/// last change, and those writes land on the app's disk. O_NOATIME is only
/// allowed to the file's owner (or CAP_FOWNER); others open it plainly.
fn open_noatime(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => File::open(path),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(data: &[u8], promised: u64) -> (Vec<u8>, u64) {
        let mut r = ExactSize {
            inner: data,
            remaining: promised,
            padded: 0,
            progress: Arc::new(Progress::default()),
            cancel: Default::default(),
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        (out, r.padded)
    }

    #[test]
    fn a_file_that_shrank_is_padded_and_one_that_grew_is_cut() {
        assert_eq!(exact(b"abc", 5), (b"abc\0\0".to_vec(), 2));
        assert_eq!(exact(b"abcdef", 4), (b"abcd".to_vec(), 0));
        assert_eq!(exact(b"abcd", 4), (b"abcd".to_vec(), 0));
    }

    #[test]
    fn a_change_during_the_read_is_a_warning_in_the_report() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("f"), vec![1u8; 1 << 20]).unwrap();
        let src = FilesSource::new(vec![root.clone()], GlobSet::empty());
        // Truncate the file from inside the read, the moment its first bytes are taken.
        struct Shrinker {
            path: PathBuf,
            done: bool,
        }
        impl Write for Shrinker {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                if !self.done && b.len() > 512 {
                    self.done = true;
                    fs::OpenOptions::new()
                        .write(true)
                        .open(&self.path)?
                        .set_len(10)?;
                }
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut tar = tar::Builder::new(Shrinker {
            path: root.join("f"),
            done: false,
        });
        let ctx = SourceCtx {
            progress: Arc::new(Progress::default()),
            cancel: Default::default(),
        };
        let report = src.write_tar(&mut tar, &ctx).unwrap();
        assert_eq!(report.entries, 2);
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        assert!(
            report.warnings[0].contains("shrank while read"),
            "{:?}",
            report.warnings
        );
    }

    #[test]
    fn reading_a_file_leaves_its_access_time_alone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        fs::create_dir(&root).unwrap();
        let f = root.join("f");
        fs::write(&f, b"notebook").unwrap();
        // An atime older than the mtime is one relatime would update.
        let old = filetime::FileTime::from_unix_time(1_600_000_000, 0);
        filetime::set_file_atime(&f, old).unwrap();
        let src = FilesSource::new(vec![root.clone()], GlobSet::empty());
        let mut tar = tar::Builder::new(io::sink());
        let ctx = SourceCtx {
            progress: Arc::new(Progress::default()),
            cancel: Default::default(),
        };
        src.write_tar(&mut tar, &ctx).unwrap();
        let atime = fs::metadata(&f).unwrap().atime();
        // Only the owner (or root) may ask for O_NOATIME; tests run as either.
        assert_eq!(atime, 1_600_000_000);
    }
}
