//! Reads an artifact stream: hashes the stored bytes, decompresses, walks the
//! tar, and either only checks it (`verify`) or extracts it into staging
//! folders (restore). Trusts nothing: names that would leave the destination
//! are refused, and nothing is ever written through a symlink.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Seek};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use tar::EntryType;

use crate::chain::digests::{ListDigest, Recorded, Recorder};
use crate::chain::dumpdir;
use crate::compression::Compression;
use crate::durable;
use crate::encryption::{self, Access, Identities, KeyProblem};
use crate::error::IoContext;
use crate::file_out::{
    apply_dir_meta, copy_out, read_full, remove_non_dir, CopyError, DirMeta, NewFile,
};
use crate::file_writes::{Writes, SMALL_FILE};
use crate::manifest::Manifest;
use crate::pipe::{Chunk, ChunkReader, HashReader, Spares};
use crate::progress::{is_cancelled, Cancel, Progress};
use crate::source::listing;
use crate::{Error, Result};

/// One configured path and where its entries go while staged.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// The path as backed up, e.g. `/home/jovyan`; tar names start with it minus `/`.
    pub origin: PathBuf,
    /// Where the path's content is written: `<dest>/.lifeboat-staging-<id>`.
    pub staging: PathBuf,
    /// `restore --path`: only the entries it wants are written (the rest
    /// is read and verified all the same).
    pub only: Option<std::sync::Arc<crate::path_filter::PathFilter>>,
}

/// A folder on the path to the entry being written, and the metadata it
/// gets when the walk leaves it: writing into a folder changes its mtime,
/// and a read-only mode would stop the writes.
struct OpenDir {
    path: PathBuf,
    /// None for a folder the archive does not list (created as a parent).
    meta: Option<DirMeta>,
    /// A chain link's folder that the link before left as a real folder
    /// (it listed it) and that this link has not purged, nor any folder
    /// above it: every folder it held then is still there, as only a purge
    /// removes a folder ([`remove_non_dir`] refuses to). So a folder below
    /// it that this link lists again with the same list needs no look on
    /// disk ([`Walker::folder_entry`]).
    intact: bool,
}

#[derive(Debug, Default)]
pub struct ReadReport {
    pub entries: u64,
    pub bytes_in: u64,
    pub sha256: String,
    pub size: u64,
    pub warnings: Vec<String>,
    /// Metadata of each mapping's own folder, by mapping index.
    pub roots: Vec<Option<DirMeta>>,
    /// False when only the stored bytes' sha256 was checked: an encrypted
    /// artifact verified without its key (the reason is in `warnings`).
    pub contents_checked: bool,
    /// `verify` only: why the artifact, which verified, could not be marked
    /// verified on its target (e.g. a read-only backup volume).
    pub mark_not_recorded: Option<String>,
    /// An incremental link's folder lists, for the next link ([`Step`]).
    pub lists: Option<Recorded>,
    /// A chain link's folders taken as the link before left them, without
    /// a look on disk ([`OpenDir::intact`]).
    pub folders_unread: u64,
}

/// Where an extraction stands in a chain (docs/ARCHITECTURE.md,
/// "Incremental chains", restore): what the link before left, and which
/// of the work only the first or the last link needs.
#[derive(Debug)]
pub struct Step {
    /// The folder lists the link before this one applied ([`ReadReport::lists`]);
    /// a folder whose list is the same is not read from disk again.
    pub before: Option<Recorded>,
    /// The staging folders were empty before this link: nothing to purge.
    pub fresh: bool,
    /// The chain's last link (or a full artifact): only it gives folders
    /// their owner, mode and mtime, as every later link lists every folder
    /// again, and it leaves no lists behind.
    pub last: bool,
}

impl Step {
    /// A full artifact, or a chain of one: into empty staging, and last.
    pub fn only() -> Step {
        Step {
            before: None,
            fresh: true,
            last: true,
        }
    }
}

pub enum Mode<'a> {
    Verify,
    Extract(&'a [Mapping]),
}

/// Decompressed bytes handed from the decompressing thread to the tar
/// walker at a time, and how many may wait: at most 1.5 MiB in flight.
pub const DECODED_CHUNK: usize = 256 * 1024;
pub const DECODED_QUEUE: usize = 4;

/// How often the staging folders' filesystems are synced while a restore
/// writes into them. Walking a tree of small folders keeps a core busy and
/// leaves the disk idle; syncing as it goes moves most of the final
/// `syncfs` there (mixed set on the root ext4, 3 alternating runs: 1.99 s
/// against 2.20 s; every 700 ms: 2.11 s).
pub const SYNC_EVERY: std::time::Duration = std::time::Duration::from_millis(300);

/// Reads `reader` to its end. Returns an error if the stored bytes do not
/// match the manifest, or the stream or tar is damaged, or an entry is unsafe.
///
/// Two threads, like `zstd -dc | tar -xf -`: one hashes and decompresses,
/// this one walks the tar and writes files, with a bounded queue between.
/// Small files it hands to helper threads (`file_writes.rs`).
///
/// An encrypted artifact needs a matching key in `keys`; without one a
/// restore fails with a configuration error, and `verify` checks only the
/// stored bytes' sha256 (see [`ReadReport::contents_checked`]).
pub fn read_artifact<R: Read + Send>(
    reader: R,
    manifest: &Manifest,
    keys: Option<&Identities>,
    mode: Mode<'_>,
    step: Step,
    progress: &Arc<Progress>,
    cancel: &Cancel,
) -> Result<ReadReport> {
    let id = manifest.id.clone();
    let corrupt = |reason: String| Error::Corrupt {
        id: id.clone(),
        reason,
    };
    let compression = Compression::from_manifest(&manifest.compression)
        .ok_or_else(|| corrupt(format!("unknown compression {:?}", manifest.compression)))?;
    let decrypt = match (encryption::access(manifest, keys), &mode) {
        (Ok(access), _) => access == Access::Decrypt,
        (Err(p @ KeyProblem::Unknown { .. }), _) => return Err(corrupt(p.to_string())),
        (Err(p), Mode::Verify) => return checksum_only(reader, manifest, p.to_string()),
        (Err(p), Mode::Extract(_)) => {
            return Err(Error::Config(vec![crate::problem::Problem {
                setting: "LIFEBOAT_AGE_IDENTITY_FILE".into(),
                value: keys
                    .map(|k| k.file().display().to_string())
                    .unwrap_or_default(),
                message: p.to_string(),
            }]))
        }
    };
    let keys = keys.filter(|_| decrypt);
    let mut report = ReadReport {
        contents_checked: true,
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(DECODED_QUEUE);
    let (chunks, spares) = ChunkReader::recycling(rx, DECODED_CHUNK);
    // Ended (dropped) when the walk is done.
    let (walking, walk_done) = std::sync::mpsc::channel::<()>();
    let (walk_result, decoded) = std::thread::scope(|scope| {
        if let Mode::Extract(m) = &mode {
            let stagings: Vec<PathBuf> = m.iter().map(|m| m.staging.clone()).collect();
            scope.spawn(move || durable::sync_fs_every(&stagings, SYNC_EVERY, &walk_done));
        }
        let limit = decoded_limit(manifest);
        let decoding = scope.spawn(move || decode(reader, compression, keys, limit, tx, spares));
        let walk_result = {
            let mut archive = tar::Archive::new(chunks);
            let mut walker = Walker::new(manifest, mode, step, progress, cancel, &mut report);
            let r = walker.walk(&mut archive);
            let lists = walker.recorder.take().and_then(|r| {
                r.finish()
                    .map_err(|e| tracing::debug!("cannot keep folder lists in TMPDIR: {e}"))
                    .ok()
                    .flatten()
            });
            drop(walker);
            report.lists = lists;
            // Read past the tar's end so a damaged compressed tail is noticed too.
            r.and_then(|()| {
                io::copy(&mut archive.into_inner(), &mut io::sink())
                    .map(|_| ())
                    .map_err(|e| corrupt(format!("damaged after the last entry: {e}")))
            })
            // The queue's end drops here: a decoder still sending stops.
        };
        drop(walking);
        (walk_result, decoding.join())
    });
    let (drained, sha256, size) =
        decoded.map_err(|_| Error::Internal("the decompression thread crashed".into()))?;
    if drained.is_ok() {
        check_stored(manifest, &sha256, size)?;
    }
    walk_result?;
    if let Err(e) = drained {
        return Err(Error::io(format!("reading artifact {id}"), e));
    }
    report.sha256 = sha256;
    report.size = size;
    Ok(report)
}

/// Decompressed bytes a stream may hold per entry beyond file contents:
/// the header, GNU long-name records for a name and a link target of up to
/// PATH_MAX each, and padding. What we write needs far less.
pub const TAR_OVERHEAD_PER_ENTRY: u64 = 16 * 1024;
/// ...and once per stream: the end-of-archive blocks and record padding.
pub const TAR_OVERHEAD_FIXED: u64 = 1024 * 1024;

/// The most decompressed bytes an artifact can hold given its manifest. A
/// stream that decompresses to more (a bomb, or a huge long-name record the
/// tar reader would buffer in memory) is stopped there, however well it
/// compresses.
fn decoded_limit(m: &Manifest) -> u64 {
    m.bytes_in
        .saturating_add(m.entries.saturating_mul(TAR_OVERHEAD_PER_ENTRY))
        .saturating_add(TAR_OVERHEAD_FIXED)
}

/// The stored bytes' size and sha256 against the manifest's.
fn check_stored(manifest: &Manifest, sha256: &str, size: u64) -> Result<()> {
    let reason = if size != manifest.size {
        format!(
            "stored size is {size} bytes, the manifest says {} (truncated or appended)",
            manifest.size
        )
    } else if sha256 != manifest.sha256 {
        format!("sha256 is {sha256}, the manifest says {}", manifest.sha256)
    } else {
        return Ok(());
    };
    Err(Error::Corrupt {
        id: manifest.id.clone(),
        reason,
    })
}

/// `verify` of an encrypted artifact without its key: the sha256 proves
/// the stored bytes are the ones written, not that they decrypt.
fn checksum_only<R: Read>(reader: R, manifest: &Manifest, why: String) -> Result<ReadReport> {
    let mut hashed = HashReader::new(reader);
    io::copy(&mut hashed, &mut io::sink())
        .map_err(|e| Error::io(format!("reading artifact {}", manifest.id), e))?;
    let (sha256, size) = hashed.finish();
    check_stored(manifest, &sha256, size)?;
    Ok(ReadReport {
        sha256,
        size,
        entries: manifest.entries,
        bytes_in: manifest.bytes_in,
        warnings: vec![format!("only the sha256 was checked: {why}")],
        contents_checked: false,
        ..Default::default()
    })
}

/// The decompressing half: hashes every stored byte and sends the
/// decompressed stream on. When the walker stops early (an unsafe entry),
/// the rest is still hashed, so a checksum mismatch is reported as such
/// even when the damage also broke decompression.
fn decode<R: Read>(
    reader: R,
    compression: Compression,
    keys: Option<&Identities>,
    limit: u64,
    tx: tokio::sync::mpsc::Sender<Chunk>,
    spares: Spares,
) -> (io::Result<u64>, String, u64) {
    let mut hashed = HashReader::new(reader);
    // Decrypted before decompression: the stored bytes are
    // compress-then-encrypt, and the hash covers them as stored.
    let plain: io::Result<Box<dyn Read + '_>> = match keys {
        Some(k) => k.open(&mut hashed).map(|r| Box::new(r) as Box<dyn Read>),
        None => Ok(Box::new(&mut hashed)),
    };
    match plain.and_then(|p| compression.decoder(p)).map(|d| Capped {
        inner: d,
        left: limit,
    }) {
        Err(e) => {
            let _ = tx.blocking_send(Err(io::Error::other(format!(
                "cannot start reading the stream: {e}"
            ))));
        }
        Ok(mut decoder) => loop {
            let mut buf = spares.take();
            match read_full(&mut decoder, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(buf)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        },
    }
    drop(tx);
    let drained = io::copy(&mut hashed, &mut io::sink());
    let (sha256, size) = hashed.finish();
    (drained, sha256, size)
}

/// A reader that fails once more than `left` bytes have come through.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Asking for one byte past the cap tells "ends exactly there" from "goes on".
        let want = buf
            .len()
            .min(usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "decompresses to more than its manifest's bytes_in and entries allow (a decompression bomb?); stopped there",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

struct Walker<'a> {
    manifest: &'a Manifest,
    mode: Mode<'a>,
    progress: &'a Arc<Progress>,
    cancel: &'a Cancel,
    report: &'a mut ReadReport,
    /// The folders from a staging root down to the last entry's folder,
    /// each checked to be a real folder. They stay real folders: no entry
    /// ever replaces a folder (see [`remove_non_dir`]). A tar lists a
    /// folder's content right after the folder, so this holds one path's
    /// depth, however many folders the volume has.
    open: Vec<OpenDir>,
    /// Per mapping: its own folder's list is the same as in the link
    /// before (nothing purged there), as [`OpenDir::intact`] for the
    /// folders the walk holds open.
    root_intact: Vec<bool>,
    /// Where folder lists too long for memory are spooled (TMPDIR, read once).
    spool: PathBuf,
    as_root: bool,
    warned_owner: bool,
    /// The link before's folder lists, and this link's for the next.
    before: Option<Recorded>,
    recorder: Option<Recorder>,
    fresh: bool,
    last: bool,
    /// Small files being written on helper threads, and what waits for
    /// them; `None` when only verifying.
    writes: Option<Writes>,
}

impl<'a> Walker<'a> {
    fn new(
        manifest: &'a Manifest,
        mode: Mode<'a>,
        step: Step,
        progress: &'a Arc<Progress>,
        cancel: &'a Cancel,
        report: &'a mut ReadReport,
    ) -> Self {
        let n = match &mode {
            Mode::Extract(m) => m.len(),
            Mode::Verify => 0,
        };
        report.roots = vec![None; n];
        // SAFETY: geteuid has no preconditions and cannot fail.
        let as_root = unsafe { libc::geteuid() } == 0;
        let writes = match &mode {
            // Without helper threads the walk writes every file itself.
            Mode::Extract(_) => Writes::new(as_root)
                .map_err(|e| tracing::debug!("writing files in turn: {e}"))
                .ok(),
            Mode::Verify => None,
        };
        // Without a place for the lists the next link only loses its
        // shortcut: it purges every folder.
        let recorder = match (&mode, step.last) {
            (Mode::Extract(_), false) => Recorder::new(&listing::spool_dir())
                .map_err(|e| tracing::debug!("cannot keep folder lists in TMPDIR: {e}"))
                .ok(),
            _ => None,
        };
        Walker {
            manifest,
            mode,
            progress,
            cancel,
            report,
            open: Vec::new(),
            root_intact: vec![false; n],
            spool: listing::spool_dir(),
            as_root,
            warned_owner: false,
            before: step.before,
            recorder,
            fresh: step.fresh,
            last: step.last,
            writes,
        }
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::Corrupt {
            id: self.manifest.id.clone(),
            reason,
        }
    }

    fn unsafe_entry(&self, entry: &Path, reason: &str) -> Error {
        Error::UnsafeEntry {
            id: self.manifest.id.clone(),
            entry: entry.display().to_string(),
            reason: reason.into(),
        }
    }

    fn warn(&mut self, w: String) {
        tracing::warn!(id = %self.manifest.id, "{w}");
        if self.report.warnings.len() < crate::manifest::MAX_WARNINGS {
            self.report.warnings.push(w);
        }
    }

    fn walk<R: Read + Seek>(&mut self, archive: &mut tar::Archive<R>) -> Result<()> {
        let entries = archive
            .entries_with_seek()
            .map_err(|e| self.corrupt(format!("not a tar stream: {e}")))?;
        for entry in entries {
            if is_cancelled(self.cancel) {
                return Err(Error::Cancelled);
            }
            let mut entry = entry.map_err(|e| self.corrupt(format!("damaged tar entry: {e}")))?;
            let raw = entry.path_bytes().into_owned();
            let name = clean_name(&raw)
                .map_err(|r| self.unsafe_entry(Path::new(OsStr::from_bytes(&raw)), r))?;
            self.report.entries += 1;
            if self.report.entries > self.manifest.entries {
                return Err(self.corrupt(format!(
                    "holds more than the {} entries the manifest records",
                    self.manifest.entries
                )));
            }
            self.progress.add_entry();
            self.settle()?;
            // A tar bomb: stop at the size the manifest promised, not at a full disk.
            // A folder list (an incremental link's `D` entry) is never
            // written out: read as a stream, it does not count.
            let listed = is_dumpdir(entry.header());
            let size = entry
                .header()
                .size()
                .map_err(|e| self.corrupt(format!("bad size in {}: {e}", name.display())))?;
            let size = if listed { 0 } else { size };
            if self.report.bytes_in + size > self.manifest.bytes_in {
                return Err(self.corrupt(format!(
                    "entries hold more than the {} bytes the manifest records",
                    self.manifest.bytes_in
                )));
            }
            match &self.mode {
                Mode::Verify if listed => {
                    let mut list = dumpdir::Reader::new(&mut entry);
                    while list
                        .next_entry()
                        .map_err(|r| self.corrupt(format!("{}: {r}", name.display())))?
                        .is_some()
                    {}
                }
                Mode::Verify => {
                    let n = io::copy(&mut entry, &mut io::sink()).map_err(|e| {
                        self.corrupt(format!("damaged data in {}: {e}", name.display()))
                    })?;
                    self.report.bytes_in += n;
                    self.progress.add_bytes(n);
                    if let Some(link) = entry.link_name_bytes() {
                        if entry.header().entry_type() == EntryType::Link {
                            clean_name(&link).map_err(|r| {
                                self.unsafe_entry(
                                    &name,
                                    &format!("is a hard link whose target {r}"),
                                )
                            })?;
                        }
                    }
                }
                Mode::Extract(mappings) => {
                    let mappings: &'a [Mapping] = mappings;
                    self.extract(&mut entry, &name, mappings)?;
                }
            }
        }
        if let Mode::Extract(_) = self.mode {
            self.leave_until(Path::new(""))?;
            self.drain()?;
        }
        if self.report.entries != self.manifest.entries {
            return Err(self.corrupt(format!(
                "holds {} entries, the manifest records {}",
                self.report.entries, self.manifest.entries
            )));
        }
        Ok(())
    }

    fn extract<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        name: &Path,
        mappings: &'a [Mapping],
    ) -> Result<()> {
        let Some((idx, rel)) = self.destination(name, mappings) else {
            return Ok(());
        };
        let m = &mappings[idx];
        if let Some(only) = &m.only {
            // The mapping's own folder and a chain's folder lists are
            // applied whatever the filter: the lists only remove what a
            // later link deleted. Parents of what is wanted are made as
            // they are needed.
            if !rel.as_os_str().is_empty() && !is_dumpdir(entry.header()) && !only.wants(name) {
                return Ok(());
            }
        }
        let (mtime, mtime_nsec) = entry_mtime(entry);
        let h = entry.header();
        let meta = DirMeta {
            mode: h.mode().unwrap_or(0o644) & 0o7777,
            uid: h.uid().unwrap_or(0),
            gid: h.gid().unwrap_or(0),
            mtime,
            mtime_nsec,
        };
        let kind = h.entry_type();
        let listed = is_dumpdir(h);
        if rel.as_os_str().is_empty() {
            if kind != EntryType::Directory && !listed {
                return Err(self.unsafe_entry(
                    name,
                    "replaces a configured path with something that is not a folder",
                ));
            }
            self.report.roots[idx] = Some(meta);
            if listed {
                // What the walk holds open is below this folder, which the
                // purge may empty: nothing of it may count as intact.
                self.leave_until(&m.staging)?;
                let (unchanged, purge) = self.read_list(entry, name, (idx, &rel))?;
                self.root_intact[idx] = unchanged;
                if let Some(mut list) = purge {
                    self.drain()?;
                    self.purge(&m.staging, &mut list, name)?;
                }
            }
            return Ok(());
        }
        let dest = m.staging.join(&rel);
        let parent = dest
            .parent()
            .expect("joined path has a parent")
            .to_path_buf();
        self.enter(&m.staging, &parent, name)?;
        self.wait_for_path(&dest)?;
        match kind {
            _ if listed => {
                let parent_intact = if parent == m.staging {
                    self.root_intact[idx]
                } else {
                    matches!(self.open.last(), Some(top) if top.intact
                        && top.path.as_os_str().as_bytes() == parent.as_os_str().as_bytes())
                };
                self.folder_entry(entry, dest, meta, name, (idx, &rel), parent_intact)?
            }
            EntryType::Directory => self.extract_dir(dest, meta, name, false)?,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.extract_file(entry, &dest, meta, name)?
            }
            EntryType::Symlink => {
                let target = self.link_target(entry, "symlink", name)?;
                self.extract_symlink(&dest, &target, meta)?
            }
            EntryType::Link => {
                let target = self.link_target(entry, "hard link", name)?;
                // Its target must be there, written.
                self.drain()?;
                self.extract_hard_link(&target, &dest, name, idx, mappings)?
            }
            other => {
                self.warn(format!(
                    "entry {} is a {:?}; skipped (devices, FIFOs and sockets are not restored)",
                    name.display(),
                    other
                ));
            }
        }
        Ok(())
    }

    /// Which mapping `name` belongs to and its path inside that mapping's
    /// folder, or None (with a warning where one is due) for an entry that
    /// is not restored.
    fn destination(&mut self, name: &Path, mappings: &[Mapping]) -> Option<(usize, PathBuf)> {
        let Some((idx, rel)) = map_name(name, mappings) else {
            // Exported Kubernetes objects the manifest declares are for a
            // person to apply; only `restore --to` asks for them.
            if self.manifest.kubernetes.is_some() && name.starts_with(crate::artifact::KUBE_TAR_DIR)
            {
                return None;
            }
            self.warn(format!(
                "entry {} is outside the configured paths; skipped",
                name.display()
            ));
            return None;
        };
        // Our own markers decide what the next start does: an artifact must
        // never bring one in (a `.lifeboat-restored` symlink would have the
        // marker written through it). Backups never contain them.
        if rel
            .components()
            .any(|c| crate::layout::is_ours(c.as_os_str().as_bytes()))
        {
            self.warn(format!(
                "entry {} has a name lifeboat keeps for itself; skipped",
                name.display()
            ));
            return None;
        }
        Some((idx, rel))
    }

    /// A folder entry: created, or reopened if already there; it stays open
    /// (its metadata applied when the walk leaves it).
    fn extract_dir(
        &mut self,
        dest: PathBuf,
        meta: DirMeta,
        name: &Path,
        intact: bool,
    ) -> Result<()> {
        // Made first and looked at only when something is there already
        // (one path lookup per folder less in a fresh staging folder).
        match fs::create_dir(&dest) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let md = fs::symlink_metadata(&dest).ctx("creating", &dest)?;
                if !md.is_dir() {
                    return Err(self.unsafe_entry(
                        name,
                        "is a folder where the archive already put something else",
                    ));
                }
                // Listed twice, or after its content: the newer metadata
                // wins. A chain's folders get theirs from its last link
                // (all of them are still ours to write into until then).
                if self.last {
                    self.reopen(&dest, &md)?;
                }
            }
            made => made.ctx("creating", &dest)?,
        }
        self.open.push(OpenDir {
            path: dest,
            meta: self.last.then_some(meta),
            intact,
        });
        Ok(())
    }

    /// An incremental link's folder (a `D` entry): the folder as
    /// [`Self::extract_dir`] makes it, then purged of what its list does not
    /// name ([`Self::read_list`] says when there is nothing to purge). A
    /// folder listed the same as in the link before, below folders this link
    /// has not purged ([`OpenDir::intact`]), is still the real folder the
    /// link before left: it is not looked at on disk at all, which is most
    /// of a chain restore's folders in every link but the first.
    fn folder_entry<R: Read>(
        &mut self,
        entry: &mut R,
        dest: PathBuf,
        meta: DirMeta,
        name: &Path,
        (idx, rel): (usize, &Path),
        parent_intact: bool,
    ) -> Result<()> {
        let (unchanged, purge) = self.read_list(entry, name, (idx, rel))?;
        let intact = unchanged && parent_intact;
        // A restore not run as root makes each folder it writes into
        // writable first ([`Self::reopen`]), which needs its mode.
        if intact && (self.as_root || !self.last) {
            self.report.folders_unread += 1;
            self.open.push(OpenDir {
                path: dest,
                meta: self.last.then_some(meta),
                intact: true,
            });
            return Ok(());
        }
        self.extract_dir(dest.clone(), meta, name, intact)?;
        if let Some(mut list) = purge {
            self.drain()?;
            self.purge(&dest, &mut list, name)?;
        }
        Ok(())
    }

    /// An incremental link's folder list (a `D` entry's data), recorded for
    /// the next link. Says whether the link before listed the same names
    /// ([`crate::chain::digests`]), and gives the list back to purge the
    /// folder with unless nothing can be in it that the list does not name:
    /// in the chain's first link (into empty staging), or when unchanged.
    fn read_list<R: Read>(
        &mut self,
        entry: &mut R,
        name: &Path,
        (idx, rel): (usize, &Path),
    ) -> Result<(bool, Option<Box<dyn Read + Send>>)> {
        let bad_list = |r: String| self.corrupt(format!("{}: {r}", name.display()));
        let spooling = |e| Error::io("spooling a folder list in TMPDIR".to_string(), e);
        let mut list = dumpdir::Reader::new(entry);
        let mut kept = dumpdir::Builder::new(&self.spool);
        let mut digest = ListDigest::default();
        while let Some((flag, n)) = list.next_entry().map_err(bad_list)? {
            digest.add(flag, &n);
            if !self.fresh {
                kept.push(flag, &n).map_err(spooling)?;
            }
        }
        let digest = digest.finish();
        let (root, rel) = (idx as u32, rel.as_os_str().as_bytes());
        if let Some(r) = &mut self.recorder {
            if let Err(e) = r.record(root, rel, &digest) {
                tracing::debug!("cannot keep folder lists in TMPDIR: {e}");
                self.recorder = None;
            }
        }
        // Into empty staging nothing the link before listed is there.
        let unchanged = !self.fresh
            && match &mut self.before {
                Some(before) => match before.find(root, rel) {
                    Ok(found) => found == Some(digest),
                    Err(e) => {
                        tracing::debug!("cannot read the folder lists kept in TMPDIR: {e}");
                        self.before = None;
                        false
                    }
                },
                None => false,
            };
        if self.fresh || unchanged {
            return Ok((unchanged, None));
        }
        let (_, spooled) = kept.finish().map_err(spooling)?;
        Ok((false, Some(spooled)))
    }

    /// An incremental link's folder: removes from `dir` (in staging, made
    /// by the links before) what the folder list in `entry` does not name,
    /// and what it says is a folder but is not, or is a stored file but is
    /// a folder, as `tar -x -G` does. Both sides are sorted by name and
    /// merged, so a folder of any size costs a bounded listing.
    fn purge<R: Read>(&self, dir: &Path, entry: &mut R, name: &Path) -> Result<()> {
        let bad_list = |r: String| self.corrupt(format!("{}: {r}", name.display()));
        let mut list = dumpdir::Reader::new(entry);
        let mut sorter = listing::Sorter::new(listing::MIN_LISTING_MEMORY, &self.spool);
        for ent in fs::read_dir(dir).ctx("listing", dir)? {
            let ent = ent.ctx("listing", dir)?;
            sorter
                .push(ent.file_name().as_bytes())
                .ctx("sorting the names of", dir)?;
        }
        let mut on_disk = sorter.finish();
        let mut wanted = list.next_entry().map_err(bad_list)?;
        while let Some(have) = on_disk.next_name().ctx("sorting the names of", dir)? {
            let have = have.as_bytes();
            while matches!(&wanted, Some((_, w)) if w.as_slice() < have) {
                wanted = list.next_entry().map_err(bad_list)?;
            }
            let path = dir.join(OsStr::from_bytes(have));
            let keep = match &wanted {
                Some((flag, w)) if w.as_slice() == have => match fs::symlink_metadata(&path) {
                    Ok(md) => match flag {
                        dumpdir::Flag::Folder => md.is_dir(),
                        dumpdir::Flag::Stored => !md.is_dir(),
                        dumpdir::Flag::Earlier => true,
                    },
                    Err(_) => true,
                },
                _ => false,
            };
            if !keep {
                remove_any(&path)?;
            }
        }
        while list.next_entry().map_err(bad_list)?.is_some() {}
        Ok(())
    }

    /// A regular (or contiguous, or sparse) file: written to a new file at
    /// `dest`, then given its owner, mode and mtime.
    fn extract_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        dest: &Path,
        meta: DirMeta,
        name: &Path,
    ) -> Result<()> {
        let size = entry.size();
        let chown = self.may_chown();
        let out = NewFile {
            dest: dest.to_path_buf(),
            meta,
            chown,
            volume_bytes: self.manifest.bytes_in,
        };
        let small = size <= SMALL_FILE
            && matches!(
                entry.header().entry_type(),
                EntryType::Regular | EntryType::Continuous
            );
        let damaged =
            |w: &Self, e: io::Error| w.corrupt(format!("damaged data in {}: {e}", name.display()));
        let n = match self.writes.is_some() && small {
            true => {
                let mut body = vec![0u8; size as usize];
                match read_full(entry, &mut body) {
                    Ok(got) if got as u64 == size => {}
                    Ok(_) => return Err(self.corrupt(format!("{} ends early", name.display()))),
                    Err(e) => return Err(damaged(self, e)),
                }
                if let Some(w) = &mut self.writes {
                    w.file(out, body)?;
                }
                size
            }
            false => {
                let mut f = out.create()?;
                let n = copy_out(entry, size, &mut f).map_err(|e| match e {
                    CopyError::Read(e) => damaged(self, e),
                    CopyError::Write(e) => out.write_failed(e),
                })?;
                out.written(&f)?;
                n
            }
        };
        self.report.bytes_in += n;
        self.progress.add_bytes(n);
        Ok(())
    }

    /// See [`Writes::settle`].
    fn settle(&mut self) -> Result<()> {
        self.writes.as_mut().map_or(Ok(()), Writes::settle)
    }

    /// See [`Writes::drain`].
    fn drain(&mut self) -> Result<()> {
        self.writes.as_mut().map_or(Ok(()), Writes::drain)
    }

    /// See [`Writes::wait_for_path`].
    fn wait_for_path(&mut self, path: &Path) -> Result<()> {
        self.writes
            .as_mut()
            .map_or(Ok(()), |w| w.wait_for_path(path))
    }

    /// The target a link entry (`what`: a symlink or a hard link) must name.
    fn link_target<R: Read>(
        &self,
        entry: &tar::Entry<R>,
        what: &str,
        name: &Path,
    ) -> Result<Vec<u8>> {
        Ok(entry
            .link_name_bytes()
            .ok_or_else(|| self.corrupt(format!("{what} {} has no target", name.display())))?
            .into_owned())
    }

    /// A symlink entry, created with its target text as stored.
    fn extract_symlink(&mut self, dest: &Path, target: &[u8], meta: DirMeta) -> Result<()> {
        // Kept verbatim, whatever it points at (`/opt/conda`,
        // `../shared`, nothing), as `tar -x` does: dropping a user's
        // links is data loss. Safety does not come from the link's
        // text but from never writing through one (see `enter`).
        let target = PathBuf::from(OsStr::from_bytes(target));
        remove_non_dir(dest)?;
        std::os::unix::fs::symlink(&target, dest).ctx("creating the symlink", dest)?;
        self.chown(dest, meta)?;
        let t = meta.mtime();
        filetime::set_symlink_file_times(dest, t, t).ctx("setting the mtime of", dest)?;
        Ok(())
    }

    /// A hard link entry: allowed only to a file restored before it, in the
    /// same mapping's folder, reached through real folders only.
    fn extract_hard_link(
        &mut self,
        raw: &[u8],
        dest: &Path,
        name: &Path,
        idx: usize,
        mappings: &[Mapping],
    ) -> Result<()> {
        let m = &mappings[idx];
        let target = clean_name(raw)
            .map_err(|r| self.unsafe_entry(name, &format!("is a hard link whose target {r}")))?;
        if m.only.as_ref().is_some_and(|f| !f.wants(&target)) {
            self.warn(format!(
                "{} is a hard link to {}, which --path leaves out; not restored (add --path {} to have both)",
                name.display(),
                target.display(),
                target.display()
            ));
            return Ok(());
        }
        let src = match map_name(&target, mappings) {
            Some((j, trel)) if j == idx && !trel.as_os_str().is_empty() => m.staging.join(trel),
            _ => return Err(self.unsafe_entry(name, "is a hard link to a file outside its folder")),
        };
        match fs::symlink_metadata(&src) {
            Ok(md) if md.is_file() => {}
            _ => {
                return Err(self.unsafe_entry(
                    name,
                    "is a hard link to something that is not a file restored before it",
                ))
            }
        }
        self.check_real_dirs(&m.staging, src.parent().expect("has parent"), name)?;
        remove_non_dir(dest)?;
        fs::hard_link(&src, dest).ctx("creating the hard link", dest)?;
        Ok(())
    }

    /// Makes `dir`, inside `staging`, the folder entries are written to:
    /// leaves the open folders that are not above it, then checks every
    /// folder from the deepest one still open down to `dir` is a real folder
    /// (creating missing ones), so nothing is ever written through a symlink.
    fn enter(&mut self, staging: &Path, dir: &Path, entry: &Path) -> Result<()> {
        self.leave_until(dir)?;
        let mut cur = match self.open.last() {
            Some(top) if within(&top.path, staging) => top.path.clone(),
            _ => staging.to_path_buf(),
        };
        let below = if within(dir, &cur) {
            dir.as_os_str().as_bytes()[cur.as_os_str().len()..].to_vec()
        } else {
            // Only a staging path given with a trailing `/` gets here.
            let rel = dir.strip_prefix(&cur).expect("inside staging");
            rel.as_os_str().as_bytes().to_vec()
        };
        for c in below.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            cur.push(OsStr::from_bytes(c));
            // What is there may be a file still being written, or a folder
            // whose metadata waits: looked at once that is done.
            self.wait_for_path(&cur)?;
            let meta = match fs::symlink_metadata(&cur) {
                // Entered again after the walk had left it (a tar not in
                // folder order): its metadata is given back on leaving.
                Ok(md) if md.is_dir() => Some(self.reopen(&cur, &md)?),
                Ok(_) => {
                    return Err(
                        self.unsafe_entry(entry, "would be written through a symlink or a file")
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&cur).ctx("creating", &cur)?;
                    None
                }
                Err(e) => return Err(Error::io(format!("checking {}", cur.display()), e)),
            };
            self.open.push(OpenDir {
                path: cur.clone(),
                meta,
                intact: false,
            });
        }
        Ok(())
    }

    /// Leaves, deepest first, every open folder that is not `dir` or above
    /// it, giving each its metadata now that nothing more is written into it.
    fn leave_until(&mut self, dir: &Path) -> Result<()> {
        while let Some(top) = self.open.last() {
            if within(dir, &top.path) {
                break;
            }
            let top = self.open.pop().expect("just seen");
            match (top.meta, &mut self.writes) {
                (Some(meta), Some(w)) => w.dir_left(top.path, meta)?,
                (Some(meta), None) => apply_dir_meta(&top.path, meta, self.as_root)?,
                (None, _) => {}
            }
        }
        Ok(())
    }

    /// An existing folder about to be written into again: its metadata as it
    /// is, to give back later, and write permission for us meanwhile (root
    /// needs none).
    fn reopen(&self, path: &Path, md: &fs::Metadata) -> Result<DirMeta> {
        use std::os::unix::fs::MetadataExt;
        let meta = DirMeta {
            mode: md.mode() & 0o7777,
            uid: md.uid().into(),
            gid: md.gid().into(),
            mtime: md.mtime().max(0) as u64,
            mtime_nsec: md.mtime_nsec() as u32,
        };
        if !self.as_root && meta.mode & 0o700 != 0o700 {
            fs::set_permissions(path, fs::Permissions::from_mode(meta.mode | 0o700))
                .ctx("making writable", path)?;
        }
        Ok(meta)
    }

    /// Checks, without creating anything, that every folder from `staging`
    /// down to `dir` is a real folder (a hard link's source).
    fn check_real_dirs(&self, staging: &Path, dir: &Path, entry: &Path) -> Result<()> {
        let rel = dir.strip_prefix(staging).expect("inside staging");
        let mut cur = staging.to_path_buf();
        for c in rel.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(md) if md.is_dir() => {}
                _ => {
                    return Err(
                        self.unsafe_entry(entry, "is a hard link through a symlink or a file")
                    )
                }
            }
        }
        Ok(())
    }

    fn chown(&mut self, path: &Path, meta: DirMeta) -> Result<()> {
        if !self.may_chown() {
            return Ok(());
        }
        std::os::unix::fs::lchown(path, Some(meta.uid as u32), Some(meta.gid as u32))
            .ctx("setting the owner of", path)
    }

    /// Entries get their stored owner only as root; otherwise one warning.
    fn may_chown(&mut self) -> bool {
        if !self.as_root && !self.warned_owner {
            self.warned_owner = true;
            self.warn("not running as root: files keep the restoring user as owner".into());
        }
        self.as_root
    }
}

/// `path` is `dir` or inside it. Compares bytes: the walk's paths are all
/// a staging folder joined with clean names ([`clean_name`]), so no `.`,
/// `..` or doubled `/` can make two spellings of one folder, and this is
/// the walk's most frequent question (once per entry and open folder).
fn within(path: &Path, dir: &Path) -> bool {
    let (p, d) = (path.as_os_str().as_bytes(), dir.as_os_str().as_bytes());
    p.starts_with(d) && (p.len() == d.len() || d.ends_with(b"/") || p[d.len()] == b'/')
}

/// An entry's mtime as (seconds, nanoseconds): from its PAX `mtime` record
/// when it has a readable one (`tar --format=posix` and our backups write
/// it when there are nanoseconds), else the header's whole seconds.
fn entry_mtime<R: Read>(entry: &mut tar::Entry<R>) -> (u64, u32) {
    let pax = match entry.pax_extensions() {
        // The last record wins, as in GNU tar.
        Ok(Some(records)) => records
            .filter_map(|r| r.ok())
            .filter(|r| r.key_bytes() == b"mtime")
            .filter_map(|r| parse_pax_time(r.value_bytes()))
            .last(),
        _ => None,
    };
    pax.unwrap_or_else(|| (entry.header().mtime().unwrap_or(0), 0))
}

/// A PAX time, `<seconds>[.<fraction>]`: `1700000000.5` is 500,000,000 ns;
/// digits past the ninth are dropped. None for anything else, including a
/// time before 1970 (which the header cannot hold either).
fn parse_pax_time(value: &[u8]) -> Option<(u64, u32)> {
    let (secs, frac) = match value.iter().position(|&b| b == b'.') {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &b""[..]),
    };
    let all_digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    if secs.is_empty() || !all_digits(secs) || !all_digits(frac) {
        return None;
    }
    let secs = std::str::from_utf8(secs).ok()?.parse().ok()?;
    let nanos = (0..9).fold(0u32, |n, i| {
        n * 10 + frac.get(i).map_or(0, |d| u32::from(d - b'0'))
    });
    Some((secs, nanos))
}

/// Whether an entry is a folder with a GNU dumpdir (an incremental link's
/// `D` entry).
fn is_dumpdir(h: &tar::Header) -> bool {
    h.entry_type().as_byte() == dumpdir::TYPEFLAG
}

/// Removes what a link's folder list no longer names: a folder with all it
/// holds (never following a symlink inside it), or anything else.
fn remove_any(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(p).ctx("removing", p),
        Ok(_) => fs::remove_file(p).ctx("removing", p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", p.display()), e)),
    }
}

/// Checks a tar name and drops `.` parts. Errors say why it is unsafe.
pub fn clean_name(raw: &[u8]) -> std::result::Result<PathBuf, &'static str> {
    if raw.contains(&0) {
        return Err("contains a NUL byte");
    }
    let p = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
            Component::ParentDir => return Err("contains '..'"),
        }
    }
    if out.as_os_str().is_empty() {
        return Err("is empty");
    }
    Ok(out)
}

/// Which mapping a name belongs to, and its path inside that mapping.
fn map_name(name: &Path, mappings: &[Mapping]) -> Option<(usize, PathBuf)> {
    mappings.iter().enumerate().find_map(|(i, m)| {
        let prefix = m.origin.strip_prefix("/").unwrap_or(&m.origin);
        name.strip_prefix(prefix)
            .ok()
            .map(|rel| (i, rel.to_path_buf()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            clean_name(b"home/a/./b").unwrap(),
            PathBuf::from("home/a/b")
        );
        assert_eq!(clean_name(b"../evil").unwrap_err(), "contains '..'");
        assert_eq!(clean_name(b"a/../../evil").unwrap_err(), "contains '..'");
        assert_eq!(
            clean_name(b"/etc/passwd").unwrap_err(),
            "is an absolute path"
        );
        assert!(clean_name(b"./").is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time(b"1700000000.123456789"),
            Some((1_700_000_000, 123_456_789))
        );
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(parse_pax_time(b"1.1234567891"), Some((1, 123_456_789)));
        for bad in [
            &b""[..],
            b"-1.5",
            b"+1",
            b".5",
            b"1.5x",
            b"1e9",
            b"99999999999999999999",
        ] {
            assert_eq!(
                parse_pax_time(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
