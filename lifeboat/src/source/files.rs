//! The `files` source: walks folders and writes them as tar entries named by
//! their absolute path without the leading `/` (as `tar cf - /data` does).
//! Keeps modes, owners, mtimes, symlinks, hard links and empty folders.
//!
//! Three kinds of thread share the work: one walks the folders, a few read
//! small files ahead ([`super::read_ahead`]), and the calling thread writes
//! the tar stream in the walker's order.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Mutex;

use crate::glob::GlobSet;
use tar::{EntryType, Header};

use super::increment::{rel_bytes, Increment, Todo};
use super::kind::SourceKind;
use super::listing::{self, Listing, Sorter};
use super::open::{open_walked, replaced};
use super::read_ahead::{self, Batch, Entry, Fetch, Found, Kind};
use super::seam::{path_strings, Source, SourceCtx, SourceReport, READ_BUFFER};
use super::stat_at::Stat;
use crate::chain::dumpdir;
use crate::compression::{ArtifactOut, RawHint};
use crate::error::IoContext;
use crate::progress::is_cancelled;
use crate::{Error, Result};

pub struct FilesSource {
    pub paths: Vec<PathBuf>,
    pub exclude: GlobSet,
    /// Folders never to include, e.g. a backup target that lies inside a path.
    pub skip: Vec<PathBuf>,
    /// The same by device and inode: a backup folder reached through a bind
    /// mount or a symlinked mount point inside a path is never backed up
    /// into itself (each artifact would hold all the older ones).
    pub skip_dirs: Vec<(u64, u64)>,
    /// A source's own rule for what to leave out: `(root, path) -> leave out`.
    pub filter: Option<fn(&Path, &Path) -> bool>,
    /// Files change while read and something else repairs that (PostgreSQL
    /// replays WAL over torn pages): say so at debug level, not as warnings.
    pub changes_expected: bool,
    /// Bytes of folder listings held in memory ([`listing::LISTING_MEMORY`]);
    /// a folder with more names is sorted in runs through `spool_dir`.
    pub listing_memory: usize,
    /// Where those runs go: `TMPDIR`.
    pub spool_dir: PathBuf,
    /// An incremental link's state, old and new (docs/ARCHITECTURE.md,
    /// "Incremental chains"); `None` for a full backup. The walk takes it
    /// and gives it back, so the caller can finish the new state after.
    pub increment: Mutex<Option<Increment>>,
}

impl FilesSource {
    pub fn new(paths: Vec<PathBuf>, exclude: GlobSet) -> Self {
        FilesSource {
            paths,
            exclude,
            skip: Vec::new(),
            skip_dirs: Vec::new(),
            filter: None,
            changes_expected: false,
            listing_memory: listing::LISTING_MEMORY,
            spool_dir: listing::spool_dir(),
            increment: Mutex::new(None),
        }
    }

    /// The increment given back by the walk, to finish its new state.
    pub fn take_increment(&self) -> Option<Increment> {
        self.increment
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Writes one more file (found after the walk, e.g. WAL) as an entry.
    pub fn append_file<W: ArtifactOut>(
        &self,
        tar: &mut tar::Builder<W>,
        ctx: &SourceCtx,
        report: &mut SourceReport,
        path: &Path,
    ) -> Result<bool> {
        let meta = fs::symlink_metadata(path).ctx("reading", path)?;
        let found = Planner::new(self, false).plan(path.to_path_buf(), meta)?;
        let mut writer = Writer::new(tar, ctx, std::mem::take(report), self.changes_expected);
        let r = writer.write(found, &[], 0);
        *report = std::mem::take(&mut writer.report);
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
    fn kind(&self) -> SourceKind {
        SourceKind::Files
    }

    fn write_tar<W: ArtifactOut>(
        &self,
        tar: &mut tar::Builder<W>,
        ctx: &SourceCtx,
    ) -> Result<SourceReport> {
        let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Batch>(read_ahead::BATCHES_AHEAD);
        let jobs_rx = Mutex::new(jobs_rx);
        let (done_tx, done_rx) = mpsc::channel::<Batch>();
        // The empty batches are the walker's tickets: it waits for one, so
        // no more than BATCHES_AHEAD are ever on their way.
        let (free_tx, free_rx) = mpsc::channel::<Batch>();
        for _ in 0..read_ahead::BATCHES_AHEAD {
            let _ = free_tx.send(Batch::default());
        }
        let mut writer = Writer::new(tar, ctx, SourceReport::default(), self.changes_expected);
        std::thread::scope(|s| {
            let walker = Walker {
                planner: Planner::new(self, true),
                ctx,
                free: free_rx,
                jobs: jobs_tx,
                batch: None,
                seq: 0,
                increment: self.take_increment(),
            };
            let walker = s.spawn(move || walker.run());
            for _ in 0..read_ahead::READERS {
                let done = done_tx.clone();
                let jobs = &jobs_rx;
                s.spawn(move || read_ahead::read_batches(jobs, done, &ctx.cancel));
            }
            drop(done_tx);
            // Returning (on an error too) drops the ends the other threads
            // wait on, so they stop and the scope can end.
            let written = writer.write_batches(done_rx, free_tx);
            let walked = walker
                .join()
                .unwrap_or_else(|_| Err(Error::Source("the folder walker crashed".into())));
            written.and(walked)
        })?;
        Ok(std::mem::take(&mut writer.report))
    }

    fn paths(&self) -> Vec<String> {
        path_strings(&self.paths)
    }
}

/// Decides what each path becomes in the archive, in walking order.
struct Planner<'a> {
    src: &'a FilesSource,
    links: Links,
    read_ahead: bool,
}

impl<'a> Planner<'a> {
    fn new(src: &'a FilesSource, read_ahead: bool) -> Self {
        Planner {
            src,
            links: Links::default(),
            read_ahead,
        }
    }

    fn plan(&mut self, path: PathBuf, meta: Metadata) -> Result<Found> {
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).ctx("reading the symlink", &path)?;
            Kind::Symlink(target.into_os_string().into_vec())
        } else if ft.is_file() {
            let first = match meta.nlink() > 1 {
                true => self.links.first(&path, &meta)?,
                false => None,
            };
            match first {
                Some(first) => Kind::Link(first),
                None if self.read_ahead && meta.len() <= read_ahead::READ_AHEAD_MAX_FILE => {
                    Kind::Small(Fetch::Pending)
                }
                None => Kind::Large,
            }
        } else {
            let kind = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "FIFO"
            } else {
                "device node"
            };
            return Ok(Found::Warning(format!(
                "{} is a {kind}; skipped (only files, folders and links are backed up)",
                path.display()
            )));
        };
        Ok(Found::Entry(Entry { path, meta, kind }))
    }
}

/// Files with several links whose other names the walk has still to meet:
/// (device, inode) to the tar name of the first one met, which the others
/// become hard links to. Compact, as a volume may hold hundreds of
/// thousands: 24 bytes per file in the map plus its leaf name in `names`;
/// folder names are kept once per run of files in one folder. A file is
/// forgotten once as many names were met as it has links, and when none is
/// left the names are dropped too, so memory grows only with the files whose
/// other names come much later in the walk (GNU tar keeps every one).
#[derive(Default)]
struct Links {
    pending: HashMap<(u64, u64), Pending>,
    /// Tar names of folders, each ending with a NUL.
    folders: Vec<u8>,
    /// Per pending file: its folder's offset in `folders` (u32, little
    /// endian), its leaf name, a NUL.
    names: Vec<u8>,
    /// The folder of the last name kept, and its offset in `folders`.
    last_folder: Option<(PathBuf, u32)>,
}

#[derive(Clone, Copy)]
struct Pending {
    /// Offset in `Links::names`.
    name: u32,
    /// Names met so far.
    seen: u32,
}

impl Links {
    /// The tar name of the first name met of the file at `path`, or None
    /// when this is the first (then it is kept for the later ones).
    fn first(&mut self, path: &Path, meta: &Metadata) -> Result<Option<PathBuf>> {
        let key = (meta.dev(), meta.ino());
        if let Some(p) = self.pending.get_mut(&key) {
            p.seen = p.seen.saturating_add(1);
            let p = *p;
            let name = self.name(p.name);
            // A link made during the walk raises nlink, so it is still met.
            if u64::from(p.seen) >= meta.nlink() {
                self.pending.remove(&key);
                if self.pending.is_empty() {
                    self.clear();
                }
            }
            return Ok(Some(name));
        }
        let too_many = || Error::Source("more hard-linked files than lifeboat can track".into());
        let (dir, leaf) = match (path.parent(), path.file_name()) {
            (Some(dir), Some(leaf)) => (dir, leaf.as_bytes()),
            _ => (Path::new(""), path.as_os_str().as_bytes()),
        };
        let folder = match &self.last_folder {
            Some((last, at)) if last == dir => *at,
            _ => {
                let at = u32::try_from(self.folders.len()).map_err(|_| too_many())?;
                self.folders
                    .extend_from_slice(tar_name(dir).as_os_str().as_bytes());
                self.folders.push(0);
                self.last_folder = Some((dir.to_path_buf(), at));
                at
            }
        };
        let name = u32::try_from(self.names.len()).map_err(|_| too_many())?;
        self.names.extend_from_slice(&folder.to_le_bytes());
        self.names.extend_from_slice(leaf);
        self.names.push(0);
        if self.folders.len() > u32::MAX as usize || self.names.len() > u32::MAX as usize {
            return Err(too_many());
        }
        self.pending.insert(key, Pending { name, seen: 1 });
        Ok(None)
    }

    /// The tar name kept at `at` in `names`.
    fn name(&self, at: u32) -> PathBuf {
        let until_nul = |b: &[u8]| b.iter().position(|&c| c == 0).unwrap_or(b.len());
        let at = at as usize;
        let mut folder = [0u8; 4];
        folder.copy_from_slice(&self.names[at..at + 4]);
        let folder = &self.folders[u32::from_le_bytes(folder) as usize..];
        let folder = &folder[..until_nul(folder)];
        let leaf = &self.names[at + 4..];
        let leaf = &leaf[..until_nul(leaf)];
        Path::new(OsStr::from_bytes(folder)).join(OsStr::from_bytes(leaf))
    }

    fn clear(&mut self) {
        self.pending.clear();
        self.folders.clear();
        self.names.clear();
        self.last_folder = None;
    }
}

/// The walking thread: folders depth first, children sorted once by name
/// for stable archives, into batches for the readers.
struct Walker<'a> {
    planner: Planner<'a>,
    ctx: &'a SourceCtx,
    free: Receiver<Batch>,
    jobs: SyncSender<Batch>,
    batch: Option<Batch>,
    seq: u64,
    /// Set for an incremental link: folders become `D` entries with their
    /// list, and only what changed is stored.
    increment: Option<Increment>,
}

/// A folder the walk is in: its names, and in an incremental link what to
/// do with each (by its place in the listing).
struct Open {
    dir: PathBuf,
    listing: Listing,
    todo: Option<Vec<Todo>>,
    at: usize,
}

impl Walker<'_> {
    fn run(mut self) -> Result<()> {
        let src = self.planner.src;
        for (index, root) in src.paths.iter().enumerate() {
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
            self.planner.links.clear();
            self.tree(index as u32, root, meta)?;
        }
        self.flush()?;
        *src.increment.lock().unwrap_or_else(|p| p.into_inner()) = self.increment.take();
        Ok(())
    }

    /// Depth-first with an explicit stack, so a very deep tree cannot overflow
    /// the thread's stack.
    fn tree(&mut self, index: u32, root: &Path, root_meta: Metadata) -> Result<()> {
        let mut stack = vec![self.enter(index, root, root, root_meta, 0)?];
        while let Some(top) = stack.last_mut() {
            let Some(name) = top
                .listing
                .next_name()
                .map_err(|e| sort_failed(&top.dir, e))?
            else {
                stack.pop();
                continue;
            };
            let todo = top.todo.as_ref().map(|t| t.get(top.at).copied());
            top.at += 1;
            if is_cancelled(&self.ctx.cancel) {
                return Err(Error::Cancelled);
            }
            // Most names of an incremental link: already decided.
            if todo == Some(Some(Todo::Skip)) {
                continue;
            }
            let path = top.dir.join(&name);
            let src = self.planner.src;
            if excluded(src, root, &path, &name) {
                continue;
            }
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.push(Found::Vanished(path))?;
                    continue;
                }
                Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
            };
            if is_backup_folder(src, meta.is_dir(), (meta.dev(), meta.ino())) {
                tracing::debug!(path = %path.display(), "the backup folder is inside a backed-up path; left out");
                continue;
            }
            if todo == Some(Some(Todo::MeetLink)) {
                // Stored by an earlier link; a later name may link to it.
                if meta.is_file() && meta.nlink() > 1 {
                    self.planner.links.first(&path, &meta)?;
                }
                continue;
            }
            if meta.is_dir() {
                let held = stack.iter().map(|o| o.listing.memory()).sum();
                let open = self.enter(index, root, &path, meta, held)?;
                stack.push(open);
            } else {
                let found = self.planner.plan(path, meta)?;
                self.push(found)?;
            }
        }
        Ok(())
    }

    /// A folder met: its entry, then its names to walk. In an incremental
    /// link the names are compared with the chain's state first, and the
    /// entry carries the folder's list.
    fn enter(
        &mut self,
        index: u32,
        root: &Path,
        dir: &Path,
        meta: Metadata,
        held: usize,
    ) -> Result<Open> {
        let found = self.planner.plan(dir.to_path_buf(), meta)?;
        if self.increment.is_none() {
            self.push(found)?;
            let listing = self.children(dir, held)?;
            return Ok(Open {
                dir: dir.to_path_buf(),
                listing,
                todo: None,
                at: 0,
            });
        }
        let mut listing = self.children(dir, held)?;
        let src = self.planner.src;
        let mut leave_out = |p: &Path, n: &OsStr, st: &Stat| {
            excluded(src, root, p, n) || is_backup_folder(src, st.is_dir(), (st.dev(), st.ino()))
        };
        let increment = self.increment.as_mut().expect("checked above");
        let folder = increment.folder(
            index,
            rel_bytes(root, dir),
            dir,
            &mut listing,
            &mut leave_out,
            &src.spool_dir,
        )?;
        let found = match found {
            Found::Entry(mut e) => {
                e.kind = Kind::ListedDir {
                    len: folder.list_len,
                    list: folder.list,
                };
                Found::Entry(e)
            }
            other => other,
        };
        self.push(found)?;
        Ok(Open {
            dir: dir.to_path_buf(),
            listing,
            todo: Some(folder.todo),
            at: 0,
        })
    }

    /// The names in `dir`, sorted, holding at most what is left of the
    /// listing memory after the `held` bytes of the folders above.
    fn children(&mut self, dir: &Path, held: usize) -> Result<Listing> {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.push(Found::Vanished(dir.to_path_buf()))?;
                return Ok(Listing::empty());
            }
            Err(e) => return Err(unreadable(dir, e)),
        };
        let src = self.planner.src;
        let budget = src
            .listing_memory
            .saturating_sub(held)
            .max(src.listing_memory.min(listing::MIN_LISTING_MEMORY));
        let mut names = Sorter::new(budget, &src.spool_dir);
        for ent in rd {
            let name = ent.map_err(|e| unreadable(dir, e))?.file_name();
            names
                .push(name.as_bytes())
                .map_err(|e| sort_failed(dir, e))?;
        }
        Ok(names.finish())
    }

    fn push(&mut self, found: Found) -> Result<()> {
        let batch = match &mut self.batch {
            Some(b) => b,
            None => self.batch.insert(self.free.recv().map_err(|_| stopped())?),
        };
        if let Found::Entry(Entry {
            meta,
            kind: Kind::Small(_),
            ..
        }) = &found
        {
            batch.reserved += meta.len() as usize + 1;
        }
        batch.found.push(found);
        if batch.is_full() {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let Some(mut batch) = self.batch.take() else {
            return Ok(());
        };
        batch.seq = self.seq;
        self.seq += 1;
        // Allocated here, where the buffer is reused, never on a reader.
        batch.data.reserve(batch.reserved);
        self.jobs.send(batch).map_err(|_| stopped())
    }
}

/// Whether the walk leaves `path` (`name` in its folder) of the
/// configured path `root` out.
fn excluded(src: &FilesSource, root: &Path, path: &Path, name: &OsStr) -> bool {
    // Names lifeboat itself leaves in a data folder are never backed up.
    if crate::layout::is_ours(name.as_bytes()) || src.skip.iter().any(|s| s == path) {
        return true;
    }
    if src.filter.is_some_and(|f| f(root, path)) {
        return true;
    }
    // No globs (the default): not even the relative path is worked out.
    if src.exclude.is_empty() {
        return false;
    }
    let rel = path.strip_prefix(root).unwrap_or(path);
    src.exclude.is_match(path) || src.exclude.is_match(rel)
}

/// Whether a name (a folder or not, its device and inode) is the backup
/// folder itself, met inside a backed-up path.
fn is_backup_folder(src: &FilesSource, is_dir: bool, id: (u64, u64)) -> bool {
    is_dir && src.skip_dirs.contains(&id)
}

/// The walker learns the tar writer stopped; the writer reports why.
fn stopped() -> Error {
    Error::Source("the tar writer stopped".into())
}

/// The calling thread's part: entries into the tar stream, in order.
struct Writer<'a, W: ArtifactOut> {
    tar: &'a mut tar::Builder<W>,
    ctx: &'a SourceCtx,
    report: SourceReport,
    changes_expected: bool,
    /// Hard-linked files whose first name was planned to carry the data
    /// but vanished or was replaced before it was read, to the name that
    /// carries it instead (None until a later link has been stored with
    /// its data): a link entry must never name an entry that is not there.
    lost_firsts: HashMap<PathBuf, Option<PathBuf>>,
    /// The last entry with bytes was stored raw: the stream is in a raw
    /// stretch, which a packed file of any size can stay in for free.
    raw_now: bool,
    /// The buffer large files are read into, reused from file to file.
    buf: Vec<u8>,
}

/// Small packed files (`Fetch::Read::packed`) are stored raw, when the
/// stream is not in a raw stretch already, only in a run of at least this
/// many bytes within a batch: leaving a compressed frame waits for zstd's
/// workers, which a lone thumbnail among text files does not pay back.
const SMALL_RUN_MIN: u64 = 256 << 10;

/// A file's entry with its bytes written straight after its header: no
/// 8 KiB staging copy (`io::copy` inside `tar::Builder::append_data`), and
/// big blocks for the encoder. `body` returns how many bytes it wrote; the
/// entry is padded to its 512-byte boundary after them. With `raw`, only
/// the body is stored raw (`compression::RawHint`): headers and padding
/// compress to a few dozen bytes.
fn append_body<W: ArtifactOut>(
    tar: &mut tar::Builder<W>,
    h: &mut Header,
    name: &Path,
    (hint, raw): (&RawHint, bool),
    body: impl FnOnce(&mut W) -> io::Result<u64>,
) -> io::Result<()> {
    // The header (with a long name's extension entries) and nothing else:
    // append_data pads only what it copied, here nothing.
    tar.append_data(h, name, io::empty())?;
    let w = tar.get_mut();
    hint.set(raw);
    let n = body(w);
    hint.set(false);
    let n = n?;
    let pad = (512 - n % 512) % 512;
    w.write_all(&[0u8; 512][..pad as usize])
}

impl<'a, W: ArtifactOut> Writer<'a, W> {
    fn new(
        tar: &'a mut tar::Builder<W>,
        ctx: &'a SourceCtx,
        report: SourceReport,
        changes_expected: bool,
    ) -> Self {
        Writer {
            tar,
            ctx,
            report,
            changes_expected,
            lost_firsts: HashMap::new(),
            raw_now: false,
            buf: Vec::new(),
        }
    }

    /// Per entry of a batch, the bytes of small packed files from it to
    /// the end of its run (entries of only a header do not end a run).
    fn packed_runs(found: &[Found]) -> Vec<u64> {
        let mut runs = vec![0u64; found.len()];
        let mut run = 0u64;
        for (i, f) in found.iter().enumerate().rev() {
            run = match f {
                Found::Entry(Entry {
                    kind:
                        Kind::Small(Fetch::Read {
                            len, packed: true, ..
                        }),
                    ..
                }) => run + *len as u64,
                Found::Entry(Entry {
                    kind: Kind::Dir | Kind::Symlink(_) | Kind::Link(_),
                    ..
                })
                | Found::Warning(_)
                | Found::Vanished(_) => run,
                _ => 0,
            };
            runs[i] = run;
        }
        runs
    }

    /// Takes the read batches in the walker's order and gives them back to
    /// the walker empty. Ends when the readers are done.
    fn write_batches(&mut self, done: Receiver<Batch>, free: mpsc::Sender<Batch>) -> Result<()> {
        let mut next = 0u64;
        let mut early: Vec<Batch> = Vec::new();
        loop {
            let mut batch = match early.iter().position(|b| b.seq == next) {
                Some(i) => early.swap_remove(i),
                None => match done.recv() {
                    Ok(b) if b.seq == next => b,
                    Ok(b) => {
                        early.push(b);
                        continue;
                    }
                    Err(_) => break,
                },
            };
            next += 1;
            if is_cancelled(&self.ctx.cancel) {
                return Err(Error::Cancelled);
            }
            let Batch { found, data, .. } = &mut batch;
            let runs = Self::packed_runs(found);
            for (f, run) in found.drain(..).zip(runs) {
                self.write(f, data, run)?;
            }
            batch.recycle();
            // The walker may have finished; then the batch is simply dropped.
            let _ = free.send(batch);
        }
        if !early.is_empty() {
            return Err(Error::Source(
                "the folder walk ended with batches missing".into(),
            ));
        }
        Ok(())
    }

    /// Writes one entry; `data` holds the bytes of a batch's small files,
    /// `run` the bytes of the run of small packed files it starts.
    fn write(&mut self, found: Found, data: &[u8], run: u64) -> Result<bool> {
        let first = match &found {
            Found::Entry(e)
                if e.meta.nlink() > 1 && matches!(e.kind, Kind::Small(_) | Kind::Large) =>
            {
                Some(tar_name(&e.path))
            }
            _ => None,
        };
        let written = self.write_entry(found, data, run)?;
        if let (Some(first), false) = (first, written) {
            self.lost_firsts.insert(first, None);
        }
        Ok(written)
    }

    fn write_entry(&mut self, found: Found, data: &[u8], run: u64) -> Result<bool> {
        let Entry { path, meta, kind } = match found {
            Found::Entry(e) => e,
            Found::Warning(w) => {
                self.report.warn(w);
                return Ok(false);
            }
            Found::Vanished(path) => {
                self.vanished(&path);
                return Ok(false);
            }
        };
        let name = tar_name(&path);
        let mut h = Header::new_gnu();
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(meta.uid() as u64);
        h.set_gid(meta.gid() as u64);
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_size(0);
        let tar_err =
            |e: io::Error| Error::io(format!("writing the tar entry for {}", path.display()), e);
        match kind {
            Kind::Dir => {
                h.set_entry_type(EntryType::Directory);
                append_mtime_nanos(self.tar, &meta).map_err(tar_err)?;
                self.tar
                    .append_data(&mut h, &name, io::empty())
                    .map_err(tar_err)?;
            }
            Kind::ListedDir { len, list } => {
                h.set_entry_type(EntryType::new(dumpdir::TYPEFLAG));
                h.set_size(len);
                append_mtime_nanos(self.tar, &meta).map_err(tar_err)?;
                self.tar.append_data(&mut h, &name, list).map_err(tar_err)?;
            }
            Kind::Symlink(target) => {
                h.set_entry_type(EntryType::Symlink);
                append_mtime_nanos(self.tar, &meta).map_err(tar_err)?;
                append_symlink(self.tar, &mut h, &name, &target).map_err(tar_err)?;
            }
            Kind::Link(first) => match self.lost_firsts.get(&first).cloned() {
                None => {
                    h.set_entry_type(EntryType::Link);
                    self.tar
                        .append_link(&mut h, &name, &first)
                        .map_err(tar_err)?;
                }
                Some(Some(carrier)) => {
                    h.set_entry_type(EntryType::Link);
                    self.tar
                        .append_link(&mut h, &name, &carrier)
                        .map_err(tar_err)?;
                }
                // The first name was not stored: this one carries the data.
                Some(None) => {
                    if !self.file(&path, &meta, h, &name)? {
                        return Ok(false);
                    }
                    self.lost_firsts.insert(first, Some(name.clone()));
                }
            },
            Kind::Small(Fetch::Read {
                start,
                len,
                after,
                packed,
            }) => {
                h.set_entry_type(EntryType::Regular);
                h.set_size(meta.len());
                self.raw_now = packed && (self.raw_now || run >= SMALL_RUN_MIN);
                append_mtime_nanos(self.tar, &meta).map_err(tar_err)?;
                // What was read, cut or padded with zeros to the walked size.
                let kept = len.min(meta.len() as usize);
                let padded = meta.len() - kept as u64;
                let raw = (&self.ctx.raw, self.raw_now);
                append_body(self.tar, &mut h, &name, raw, |w| {
                    w.write_all(&data[start..start + kept])?;
                    write_zeros(w, padded)?;
                    Ok(meta.len())
                })
                .map_err(tar_err)?;
                self.ctx.progress.add_bytes(meta.len());
                // The reader took one byte more than walked when it could.
                let grew =
                    len as u64 > meta.len() || after.as_ref().is_some_and(|a| a.len() > meta.len());
                self.changed(&path, &meta, padded, grew, after.as_ref());
                self.report.bytes_in += meta.len();
            }
            Kind::Small(Fetch::Vanished) => {
                self.vanished(&path);
                return Ok(false);
            }
            Kind::Small(Fetch::Replaced(why)) => {
                self.report
                    .warn(format!("{} {why}; left out", path.display()));
                return Ok(false);
            }
            Kind::Small(Fetch::Failed(e)) => return Err(unreadable(&path, e)),
            Kind::Small(Fetch::Pending) => {
                // Readers skip a batch only once the backup is cancelled.
                return Err(if is_cancelled(&self.ctx.cancel) {
                    Error::Cancelled
                } else {
                    Error::Source(format!("{} was not read", path.display()))
                });
            }
            Kind::Large => {
                if !self.file(&path, &meta, h, &name)? {
                    return Ok(false);
                }
            }
        }
        self.report.entries += 1;
        self.ctx.progress.add_entry();
        Ok(true)
    }

    /// Streams a large file with big reads. Returns false when it vanished.
    fn file(&mut self, path: &Path, meta: &Metadata, mut h: Header, name: &Path) -> Result<bool> {
        let file = match open_walked(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.vanished(path);
                return Ok(false);
            }
            Err(e) if replaced(&e).is_some() => {
                self.report.warn(format!(
                    "{} {}; left out",
                    path.display(),
                    replaced(&e).unwrap_or_default()
                ));
                return Ok(false);
            }
            Err(e) => return Err(unreadable(path, e)),
        };
        h.set_entry_type(EntryType::Regular);
        h.set_size(meta.len());
        let ctx = self.ctx;
        // Bytes that will not shrink go into the artifact raw (the encoder
        // switches lazily, at the next byte); the headers between two raw
        // files become a small frame of their own (`compression::Zstd`).
        let raw = super::incompressible::will_not_shrink(&file, meta.len(), self.raw_now);
        self.raw_now = raw;
        if raw {
            tracing::debug!(path = %path.display(), bytes = meta.len(), "stored raw: its bytes will not shrink");
        }
        append_mtime_nanos(self.tar, meta)
            .map_err(|e| Error::io(format!("writing the tar entry for {}", path.display()), e))?;
        let mut file = file;
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(READ_BUFFER, 0);
        let mut padded = 0;
        let appended = append_body(self.tar, &mut h, name, (&ctx.raw, raw), |w| {
            padded = copy_exact(&mut file, w, meta.len(), &mut buf, ctx)?;
            Ok(meta.len())
        });
        self.buf = buf;
        if let Err(e) = appended {
            if is_cancelled(&self.ctx.cancel) {
                return Err(Error::Cancelled);
            }
            return Err(Error::io(format!("reading {}", path.display()), e));
        }
        let grew = matches!(file.read(&mut [0u8; 1]), Ok(1));
        let after = file.metadata().ok();
        self.changed(path, meta, padded, grew, after.as_ref());
        self.report.bytes_in += meta.len();
        Ok(true)
    }

    /// A live database removes its temporary files; WAL replay does not
    /// need them (pg_basebackup skips them the same way).
    fn vanished(&mut self, path: &Path) {
        self.note(format!("{} vanished while the backup ran", path.display()));
    }

    /// A warning in the report, or a debug line for a source whose files
    /// change while read and are repaired on restore.
    fn note(&mut self, note: String) {
        if self.changes_expected {
            tracing::debug!("{note} (expected while the database runs; WAL replay repairs it)");
        } else {
            self.report.warn(note);
        }
    }

    /// The header already promised a size; what changed since is recorded,
    /// so nobody mistakes a torn copy for a clean one.
    fn changed(
        &mut self,
        path: &Path,
        meta: &Metadata,
        padded: u64,
        grew: bool,
        after: Option<&Metadata>,
    ) {
        let changed = after.is_some_and(|m| {
            m.mtime() != meta.mtime()
                || m.mtime_nsec() != meta.mtime_nsec()
                || m.len() != meta.len()
                || (m.dev(), m.ino()) != (meta.dev(), meta.ino())
        });
        let note = if padded > 0 {
            format!(
                "{} shrank while read; padded {padded} byte(s) with zeros",
                path.display()
            )
        } else if grew {
            format!(
                "{} grew while read; cut at {} bytes",
                path.display(),
                meta.len()
            )
        } else if changed {
            format!(
                "{} changed while read; its copy may be inconsistent",
                path.display()
            )
        } else {
            return;
        };
        self.note(note);
    }
}

fn sort_failed(dir: &Path, e: io::Error) -> Error {
    Error::io(
        format!("sorting the names in {} (spilled to TMPDIR)", dir.display()),
        e,
    )
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

/// Writes the sub-second part of an mtime, which a tar header has no room
/// for, as a PAX record `mtime=<seconds>.<9 digits>` for the entry that
/// follows, as `tar --format=posix` does; GNU tar and our restore apply it.
/// Call it only right before that entry is written: the record describes
/// whatever entry comes next. Left out when the nanoseconds are zero (or the
/// time is before 1970, which the header cannot hold either): each record
/// is a 512-byte header and a 512-byte block before compression.
fn append_mtime_nanos<W: Write>(tar: &mut tar::Builder<W>, meta: &Metadata) -> io::Result<()> {
    if meta.mtime_nsec() == 0 || meta.mtime() < 0 {
        return Ok(());
    }
    let value = format!("{}.{:09}", meta.mtime(), meta.mtime_nsec());
    tar.append_pax_extensions([("mtime", value.as_bytes())])
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

/// Copies exactly `len` bytes of `r` to `w` through `buf`: cuts a file
/// that grew, pads one that shrank with zeros. Returns the bytes padded.
///
/// Bytes stored raw are read straight into the artifact's outgoing chunk
/// where the stream can take them so ([`ArtifactOut::read_raw`]), else
/// through `buf`.
fn copy_exact<R: Read, W: ArtifactOut>(
    r: &mut R,
    w: &mut W,
    len: u64,
    buf: &mut [u8],
    ctx: &SourceCtx,
) -> io::Result<u64> {
    let mut left = len;
    while left > 0 {
        if is_cancelled(&ctx.cancel) {
            return Err(io::Error::other("cancelled"));
        }
        let want = left.min(buf.len() as u64) as usize;
        let read = match w.read_raw(r, want) {
            Some(read) => read,
            None => r
                .read(&mut buf[..want])
                .and_then(|n| w.write_all(&buf[..n]).map(|()| n)),
        };
        let n = match read {
            Ok(0) => {
                write_zeros(w, left)?;
                ctx.progress.add_bytes(left);
                return Ok(left);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        left -= n as u64;
        ctx.progress.add_bytes(n as u64);
    }
    Ok(0)
}

fn write_zeros<W: Write>(w: &mut W, mut n: u64) -> io::Result<()> {
    const ZEROS: [u8; 4096] = [0; 4096];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        w.write_all(&ZEROS[..k])?;
        n -= k as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Progress;
    use std::sync::Arc;

    fn exact(data: &[u8], promised: u64) -> (Vec<u8>, u64) {
        let ctx = SourceCtx {
            progress: Arc::new(Progress::default()),
            cancel: Default::default(),
            raw: Default::default(),
        };
        let mut out = Vec::new();
        let padded = copy_exact(&mut &data[..], &mut out, promised, &mut [0; 2], &ctx).unwrap();
        (out, padded)
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
        impl ArtifactOut for Shrinker {}
        let mut tar = tar::Builder::new(Shrinker {
            path: root.join("f"),
            done: false,
        });
        let ctx = SourceCtx {
            progress: Arc::new(Progress::default()),
            cancel: Default::default(),
            raw: Default::default(),
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

    /// Walked, then changed before a reader got to it: the entry keeps the
    /// walked size (cut or padded) and the report says so.
    fn walk_change_read(before: &[u8], after: &[u8]) -> (Vec<u8>, Vec<String>) {
        assert!(before.len() as u64 <= read_ahead::READ_AHEAD_MAX_FILE);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, before).unwrap();
        let (bytes, written, warnings) = plan_change_write(dir.path(), &["f"], || {
            if after != before {
                fs::write(&f, after).unwrap();
            }
        });
        assert_eq!(written, [true]);
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        (content, warnings)
    }

    #[test]
    fn a_small_file_changed_between_walk_and_read_keeps_its_size_and_is_reported() {
        let (content, warnings) = walk_change_read(b"0123456789", b"0123456789abc");
        assert_eq!(content, b"0123456789");
        assert!(
            warnings[0].contains("grew while read; cut at 10 bytes"),
            "{warnings:?}"
        );
        let (content, warnings) = walk_change_read(b"0123456789", b"0123");
        assert_eq!(content, b"0123\0\0\0\0\0\0");
        assert!(
            warnings[0].contains("shrank while read; padded 6 byte(s)"),
            "{warnings:?}"
        );
        let (content, warnings) = walk_change_read(b"0123456789", b"0123456789");
        assert_eq!(content, b"0123456789");
        assert!(warnings.is_empty(), "{warnings:?}");
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
            raw: Default::default(),
        };
        src.write_tar(&mut tar, &ctx).unwrap();
        let atime = fs::metadata(&f).unwrap().atime();
        // Only the owner (or root) may ask for O_NOATIME; tests run as either.
        assert_eq!(atime, 1_600_000_000);
    }

    /// Plans every path (in order), lets `between` change the folder, then
    /// reads and writes them as a backup would. Returns the tar, whether
    /// each entry was written, and the warnings.
    fn plan_change_write(
        root: &Path,
        names: &[&str],
        between: impl FnOnce(),
    ) -> (Vec<u8>, Vec<bool>, Vec<String>) {
        let src = FilesSource::new(vec![root.to_path_buf()], GlobSet::empty());
        let mut planner = Planner::new(&src, true);
        let found: Vec<Found> = names
            .iter()
            .map(|n| {
                let p = root.join(n);
                let meta = fs::symlink_metadata(&p).unwrap();
                planner.plan(p, meta).unwrap()
            })
            .collect();
        between();
        let mut batch = Batch {
            found,
            reserved: 1 << 20,
            ..Default::default()
        };
        batch.data.reserve(batch.reserved);
        read_ahead::fill(&mut batch);
        let mut tar = tar::Builder::new(Vec::new());
        let ctx = SourceCtx {
            progress: Arc::new(Progress::default()),
            cancel: Default::default(),
            raw: Default::default(),
        };
        let mut w = Writer::new(&mut tar, &ctx, SourceReport::default(), false);
        let written = batch
            .found
            .drain(..)
            .map(|f| w.write(f, &batch.data, 0).unwrap())
            .collect();
        let warnings = w.report.warnings;
        (tar.into_inner().unwrap(), written, warnings)
    }

    /// A file swapped, between the walk and the read, for a symlink to a
    /// secret, a FIFO, a folder or another file is left out with a
    /// warning: never read through, never blocked on, never a failed backup.
    #[test]
    fn a_file_replaced_after_the_walk_is_left_out_never_read_through() {
        for size in [100usize, 200 * 1024] {
            for swap in ["symlink", "fifo", "folder", "other"] {
                let dir = tempfile::tempdir().unwrap();
                let root = dir.path().join("data");
                fs::create_dir(&root).unwrap();
                let secret = dir.path().join("secret");
                fs::write(&secret, b"AWS_SECRET_ACCESS_KEY=hunter2").unwrap();
                let f = root.join("f");
                fs::write(&f, vec![b'a'; size]).unwrap();
                let (tar, written, warnings) = plan_change_write(&root, &["f"], || {
                    // Kept alive elsewhere, so "another file" cannot reuse its inode.
                    fs::hard_link(&f, dir.path().join("old")).unwrap();
                    fs::remove_file(&f).unwrap();
                    match swap {
                        "symlink" => std::os::unix::fs::symlink(&secret, &f).unwrap(),
                        "fifo" => {
                            let c = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
                            // SAFETY: a valid NUL-terminated path.
                            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
                        }
                        "folder" => fs::create_dir(&f).unwrap(),
                        _ => fs::write(&f, vec![b'b'; size]).unwrap(),
                    }
                });
                // Another regular file is the volume's own: read, reported.
                assert_eq!(written, [swap == "other"], "{swap} {size}");
                let want = match swap {
                    "symlink" => "replaced by a symlink",
                    "fifo" => "replaced by a FIFO",
                    "folder" => "replaced by a folder",
                    _ => "changed while read",
                };
                assert!(
                    warnings.iter().any(|w| w.contains(want)),
                    "{swap} {size}: {warnings:?}"
                );
                let hay = String::from_utf8_lossy(&tar);
                assert!(
                    !hay.contains("hunter2"),
                    "{swap} {size}: the secret was read"
                );
            }
        }
    }

    /// Two names of one file; the first vanishes before it is read: the
    /// second carries the data, and a third links to the second, so the
    /// archive restores (no link names an entry that is not there).
    #[test]
    fn when_a_first_hard_link_vanishes_the_next_name_carries_the_data() {
        for size in [100usize, 200 * 1024] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("data");
            fs::create_dir(&root).unwrap();
            fs::write(root.join("a"), vec![7u8; size]).unwrap();
            fs::hard_link(root.join("a"), root.join("b")).unwrap();
            fs::hard_link(root.join("a"), root.join("c")).unwrap();
            let a = root.join("a");
            let (tar, written, warnings) =
                plan_change_write(&root, &["a", "b", "c"], || fs::remove_file(&a).unwrap());
            assert_eq!(written, [false, true, true], "{size}: {warnings:?}");
            let mut archive = tar::Archive::new(&tar[..]);
            let entries: Vec<(String, EntryType, Option<String>, usize)> = archive
                .entries()
                .unwrap()
                .map(|e| {
                    let mut e = e.unwrap();
                    let name = e.path().unwrap().display().to_string();
                    let kind = e.header().entry_type();
                    let link = e.link_name().unwrap().map(|l| l.display().to_string());
                    let mut body = Vec::new();
                    e.read_to_end(&mut body).unwrap();
                    (name, kind, link, body.len())
                })
                .collect();
            let b = tar_name(&root.join("b")).display().to_string();
            let c = tar_name(&root.join("c")).display().to_string();
            assert_eq!(entries.len(), 2, "{entries:?}");
            assert_eq!(entries[0], (b.clone(), EntryType::Regular, None, size));
            assert_eq!(entries[1], (c, EntryType::Link, Some(b), 0));
        }
    }

    /// The whole tar of `root`, walked with `listing_memory` bytes for
    /// folder listings.
    fn tar_of(root: &Path, listing_memory: usize) -> Vec<u8> {
        let mut src = FilesSource::new(vec![root.to_path_buf()], GlobSet::empty());
        src.listing_memory = listing_memory;
        let spool = tempfile::tempdir().unwrap();
        src.spool_dir = spool.path().to_path_buf();
        let mut tar = tar::Builder::new(Vec::new());
        let ctx = SourceCtx {
            progress: Arc::new(Progress::default()),
            cancel: Default::default(),
            raw: Default::default(),
        };
        src.write_tar(&mut tar, &ctx).unwrap();
        // Nothing is left in TMPDIR: the runs' file was never linked.
        assert_eq!(fs::read_dir(spool.path()).unwrap().count(), 0);
        tar.into_inner().unwrap()
    }

    /// A folder with more names than the listing memory is sorted in runs
    /// through TMPDIR, also when folders above it hold their own listings;
    /// the archive is the same byte for byte.
    #[test]
    fn a_folder_too_big_for_the_listing_memory_gives_the_same_archive() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let big = root.join("m/big");
        fs::create_dir_all(&big).unwrap();
        for i in 0..3000u32 {
            // Names that sort differently from their creation order.
            let name = format!("{}-{i}", (i * 7919) % 3001);
            fs::write(big.join(name), i.to_le_bytes()).unwrap();
        }
        for i in 0..300 {
            fs::write(root.join(format!("top-{i}")), b"t").unwrap();
            fs::write(root.join(format!("m/mid-{i}")), b"m").unwrap();
        }
        fs::create_dir(big.join("sub")).unwrap();
        fs::write(big.join("sub/x"), b"x").unwrap();
        let in_memory = tar_of(&root, listing::LISTING_MEMORY);
        let spilled = tar_of(&root, 4096);
        assert!(in_memory == spilled, "the archives differ");
        let mut archive = tar::Archive::new(&in_memory[..]);
        let names: Vec<Vec<u8>> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path_bytes().into_owned())
            .filter(|n| n.starts_with(tar_name(&big).as_os_str().as_bytes()))
            .collect();
        assert_eq!(names.len(), 3003);
        let mut sorted = names.clone();
        sorted.sort();
        assert!(names == sorted, "entries are not in name order");
    }

    /// Hard links in other folders than their first name, three names of
    /// one file, and a file whose other name is outside the path: each
    /// later name links to the first one, and the table empties.
    #[test]
    fn hard_links_point_at_the_first_name_and_are_forgotten_once_all_are_met() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        for d in ["a", "b", "c"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for i in 0..50 {
            let first = root.join(format!("a/f{i:02}"));
            fs::write(&first, format!("file {i}")).unwrap();
            fs::hard_link(&first, root.join(format!("b/f{i:02}"))).unwrap();
            if i % 10 == 0 {
                fs::hard_link(&first, root.join(format!("c/f{i:02}"))).unwrap();
            }
        }
        fs::write(root.join("a/out"), b"also outside").unwrap();
        fs::hard_link(root.join("a/out"), dir.path().join("outside")).unwrap();

        let src = FilesSource::new(vec![root.clone()], GlobSet::empty());
        let mut planner = Planner::new(&src, true);
        let mut firsts = HashMap::new();
        for d in ["a", "b", "c"] {
            let mut names: Vec<_> = fs::read_dir(root.join(d))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                let p = root.join(d).join(&n);
                let meta = fs::symlink_metadata(&p).unwrap();
                let Found::Entry(e) = planner.plan(p.clone(), meta).unwrap() else {
                    panic!("not an entry");
                };
                match e.kind {
                    Kind::Link(first) => {
                        assert_ne!(d, "a");
                        assert_eq!(first, tar_name(&root.join("a").join(&n)));
                        firsts.insert(n, first);
                    }
                    _ => assert_eq!(d, "a", "{}", p.display()),
                }
            }
            if d == "a" {
                assert_eq!(planner.links.pending.len(), 51);
            }
        }
        assert_eq!(firsts.len(), 50);
        // Only the file with a name outside the path is still waiting.
        assert_eq!(planner.links.pending.len(), 1);
        assert_eq!(
            planner
                .links
                .name(planner.links.pending.values().next().unwrap().name),
            tar_name(&root.join("a/out"))
        );
    }

    /// What a volume's packed files become: a large packed file raw, the
    /// smaller packed files after it raw too (the stream is in a raw
    /// stretch), a run of them after text raw, a lone one among text
    /// compressed; the tar headers, PAX records and padding never raw.
    /// The frames read back to the tar an uncompressed backup writes.
    #[test]
    fn packed_files_go_raw_alone_when_large_and_in_runs_when_small() {
        use crate::compression::{testing::frames, Compression};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let mut seed = 0;
        let mut noise = |n: usize| {
            seed += 1;
            crate::compression::testing::noise(n, seed)
        };
        let text =
            |n: usize| b"cell 7: loss 0.0412 accuracy 0.981\n".repeat(n / 30 + 1)[..n].to_vec();
        let mut files: Vec<(String, Vec<u8>, bool)> = Vec::new();
        files.push(("a.log".into(), text(300 << 10), false));
        files.push(("b.bin".into(), noise((2 << 20) + 7), true));
        // Streamed, too small to be judged after text, judged in the
        // raw stretch b.bin began.
        files.push(("bb.bin".into(), noise(100 << 10), true));
        for i in 0..10 {
            files.push((format!("c/{i:02}.jpg"), noise(5000 + i * 100), true));
        }
        for i in 0..5 {
            files.push((format!("d/{i:02}.txt"), text(3000), false));
        }
        for i in 0..40 {
            files.push((format!("e/{i:02}.jpg"), noise(8192 + i), true));
        }
        for i in 0..6 {
            let (name, data) = match i {
                3 => (format!("f/{i:02}.jpg"), noise(9000)),
                _ => (format!("f/{i:02}.txt"), text(4000)),
            };
            files.push((name, data, false));
        }
        for (name, data, _) in &files {
            let p = root.join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, data).unwrap();
        }
        let src = FilesSource::new(vec![root.clone()], GlobSet::empty());
        let written = |c: Compression| {
            let e = c.encoder(Vec::new()).unwrap();
            let ctx = SourceCtx {
                progress: Arc::new(Progress::default()),
                cancel: Default::default(),
                raw: e.raw_hint(),
            };
            let mut tar = tar::Builder::new(e);
            src.write_tar(&mut tar, &ctx).unwrap();
            tar.into_inner().unwrap().finish().unwrap()
        };
        let stored = written(Compression::Zstd(3));
        let frames = frames(&stored);
        let all: Vec<u8> = frames.iter().flat_map(|f| f.bytes.clone()).collect();
        assert!(
            all == written(Compression::None),
            "the frames read back to the tar"
        );
        let raw: Vec<&[u8]> = frames
            .iter()
            .filter(|f| f.raw)
            .map(|f| &f.bytes[..])
            .collect();
        for (name, data, want_raw) in &files {
            assert_eq!(raw.contains(&&data[..]), *want_raw, "{name}");
        }
        for r in &raw {
            assert!(
                !r.windows(6).any(|w| w == b"mtime="),
                "a PAX record went raw"
            );
        }
    }
}
