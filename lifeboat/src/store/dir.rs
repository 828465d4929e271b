//! A folder blob store, usually a mounted backup PVC. Every blob is written
//! to a hidden temp name, fsynced, published without replacing (a hard
//! link), and the folder fsynced: a crash at any moment leaves the old state
//! or the new one, plus at worst a temp file (an incomplete upload).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use tokio::fs;

use super::blobs::{Blobs, Entry, Opened, Put, Small};
use crate::aligned::AlignedBuf;
use crate::direct_write::DirectWrite;
use crate::{Error, Result};

const PARTIAL_SUFFIX: &str = ".partial";

/// Temp names are unique per process and write: an operator's `backup-now`
/// and the sidecar's scheduled run may write in the same folder at once.
fn partial_name(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(".{name}.{}-{n}{PARTIAL_SUFFIX}", std::process::id())
}

/// Moves `tmp` to `dst` unless `dst` exists. A hard link is the atomic
/// no-replace rename; where the filesystem has none, an exists check and a
/// rename is the best there is.
async fn publish(tmp: &Path, dst: &Path, replace: bool) -> std::io::Result<()> {
    if replace {
        return fs::rename(tmp, dst).await;
    }
    match fs::hard_link(tmp, dst).await {
        Ok(()) => fs::remove_file(tmp).await,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(std::io::Error::new(
            e.kind(),
            "another backup committed the same name first",
        )),
        Err(_) => {
            if fs::try_exists(dst).await.unwrap_or(false) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "another backup committed the same name first",
                ));
            }
            fs::rename(tmp, dst).await
        }
    }
}

/// A folder holding one pod's history.
#[derive(Clone)]
pub struct DirBlobs {
    /// The configured folder (the mount point of the backup volume).
    base: PathBuf,
    /// `<base>/<namespace>/<name>`: this pod's history.
    root: PathBuf,
}

impl DirBlobs {
    pub fn new(base: PathBuf, root: PathBuf) -> Self {
        DirBlobs { base, root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The configured folder (the backup volume's mount point).
    pub fn base(&self) -> &Path {
        &self.base
    }

    fn err(&self, message: String) -> Error {
        Error::Target {
            target: self.describe(),
            message,
        }
    }

    fn io_err(&self, what: &str, path: &Path, e: std::io::Error) -> Error {
        let hint = match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                " (the folder must be writable by the sidecar's user: check the PVC mount and fsGroup)"
            }
            std::io::ErrorKind::StorageFull => " (the backup volume is full: grow it or keep fewer artifacts)",
            _ => "",
        };
        self.err(format!("{what} {}: {e}{hint}", path.display()))
    }

    /// Makes the folder's entries (new names, removals) durable.
    async fn sync_root(&self) -> Result<()> {
        sync_dir(&self.root)
            .await
            .map_err(|e| self.io_err("syncing", &self.root, e))
    }

    /// Writes `bytes` under `name` durably: temp file, fsync, rename, fsync folder.
    async fn write_durable(&self, name: &str, bytes: Vec<u8>, replace: bool) -> Result<()> {
        let tmp = self.root.join(partial_name(name));
        let dst = self.root.join(name);
        // Plain blocking writes: tokio's File keeps a failed background
        // write's error for the *next* call, so `write_all` then `sync_all`
        // can both succeed on a full disk and publish an empty manifest.
        let t = tmp.clone();
        let written = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&t)?;
            f.write_all(&bytes)?;
            f.sync_all()
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        let res = match written {
            Ok(()) => publish(&tmp, &dst, replace).await,
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp).await;
            return Err(self.io_err("writing", &dst, e));
        }
        self.sync_root().await
    }

    /// Every entry of the history folder with its metadata (not following
    /// symlinks); none when the folder does not exist yet.
    async fn scan(&self) -> Result<Vec<(String, std::fs::Metadata)>> {
        let root = self.root.clone();
        let scanned = tokio::task::spawn_blocking(move || scan(&root))
            .await
            .map_err(|e| ("listing", self.root.clone(), std::io::Error::other(e)))
            .and_then(|r| r);
        scanned.map_err(|(what, path, e)| self.io_err(what, &path, e))
    }
}

type ScanError = (&'static str, PathBuf, std::io::Error);

fn scan(root: &Path) -> std::result::Result<Vec<(String, std::fs::Metadata)>, ScanError> {
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(("listing", root.to_path_buf(), e)),
    };
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| ("listing", root.to_path_buf(), e))?;
        match ent.metadata() {
            Ok(meta) => out.push((ent.file_name().to_string_lossy().into_owned(), meta)),
            // Removed since the folder was read (retention, another cleanup).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(("reading", ent.path(), e)),
        }
    }
    Ok(out)
}

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(std::io::Error::other)?
}

/// Opens a file a store holds without following a symlink and without
/// blocking on a FIFO, and checks it is a regular file: a store's files are
/// untrusted, and a planted `/dev/zero` link or FIFO must fail at once.
fn open_regular(path: &Path) -> std::io::Result<(std::fs::File, std::fs::Metadata)> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "is a symlink, not a file")
            } else {
                e
            }
        })?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("is not a regular file ({:?})", meta.file_type()),
        ));
    }
    Ok((f, meta))
}

/// Sorts a small read's result (see [`Small`]): `InvalidData` is what
/// [`open_regular`] and [`read_regular`] say of a file that is not
/// acceptable; any other error is the store failing.
fn small(r: std::io::Result<Vec<u8>>) -> std::io::Result<Small> {
    match r {
        Ok(b) => Ok(Small::Bytes(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Small::Gone),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Ok(Small::Refused(e.to_string())),
        Err(e) => Err(e),
    }
}

/// Reads a small file a store holds (a manifest, a verified record) whole,
/// refusing one larger than `cap` before reading it.
async fn read_regular(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let (f, meta) = open_regular(&path)?;
        if meta.len() > cap {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} bytes, more than the {cap} such a file may have",
                    meta.len()
                ),
            ));
        }
        let mut out = Vec::with_capacity(meta.len() as usize);
        // The size may grow after the fstat: read at most one byte past the cap.
        f.take(cap + 1).read_to_end(&mut out)?;
        if out.len() as u64 > cap {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("grew past the {cap} bytes such a file may have"),
            ));
        }
        Ok(out)
    })
    .await
    .map_err(std::io::Error::other)?
}

fn modified(meta: &std::fs::Metadata) -> DateTime<Utc> {
    meta.modified()
        .map(DateTime::<Utc>::from)
        .unwrap_or_else(|_| Utc::now())
}

/// A temp file a write never published (the process was killed, the disk
/// was full): `.<name>.<pid>-<n>.partial`.
#[derive(Debug, Clone)]
pub struct DirPartial(String);

impl super::blobs::Unfinished for DirPartial {
    /// `.<name>.<pid>-<n>.partial` was to become `<name>`.
    fn blob(&self) -> String {
        self.0
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(PARTIAL_SUFFIX))
            .and_then(|n| n.rsplit_once('.'))
            .map_or_else(|| self.0.clone(), |(name, _)| name.to_string())
    }
}

impl std::fmt::Display for DirPartial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Blobs for DirBlobs {
    type Put = DirPut;
    type Incomplete = DirPartial;

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn place(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }

    fn check_is_fatal(&self) -> bool {
        true
    }

    fn local_folder(&self) -> Option<&Path> {
        Some(&self.base)
    }

    async fn check(&self) -> Result<()> {
        fs::create_dir_all(&self.root)
            .await
            .map_err(|e| self.io_err("creating", &self.root, e))?;
        let probe = self
            .root
            .join(format!(".lifeboat-probe-{}", std::process::id()));
        fs::write(&probe, b"probe")
            .await
            .map_err(|e| self.io_err("writing to", &self.root, e))?;
        let _ = fs::remove_file(&probe).await;
        Ok(())
    }

    async fn names(&self) -> Result<Vec<Entry>> {
        let scanned = self.scan().await?;
        Ok(scanned
            .into_iter()
            .filter(|(name, _)| !name.ends_with(PARTIAL_SUFFIX))
            .map(|(name, meta)| Entry {
                modified: modified(&meta),
                plain: meta.is_file(),
                name,
            })
            .collect())
    }

    async fn confirm_empty(&self) -> Result<()> {
        // No history yet is normal on a first deploy; no backup volume at
        // all is a mount mistake, and must not look like "nothing to restore".
        if self.base.is_dir() {
            return Ok(());
        }
        Err(self.err(format!(
            "the folder {} does not exist; is the backup volume mounted there?",
            self.base.display()
        )))
    }

    async fn get_small(&self, name: &str, cap: u64) -> Result<Small> {
        let path = self.root.join(name);
        small(read_regular(&path, cap).await).map_err(|e| self.io_err("reading", &path, e))
    }

    async fn open(&self, name: &str) -> Result<Opened> {
        let path = self.root.join(name);
        let p = path.clone();
        let opened = tokio::task::spawn_blocking(move || open_regular(&p))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        match opened {
            Ok((f, _)) => Ok(Opened::Stream(Box::pin(fs::File::from_std(f)))),
            // Not there, or not a plain file (a symlink to /dev/zero, a FIFO).
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData
                ) =>
            {
                Ok(Opened::Unreadable(format!("{}: {e}", path.display())))
            }
            Err(e) => Err(self.io_err("opening", &path, e)),
        }
    }

    async fn put_small(&self, name: &str, bytes: Vec<u8>, replace: bool) -> Result<()> {
        self.write_durable(name, bytes, replace).await
    }

    async fn put_new(&self, name: &str) -> Result<DirPut> {
        fs::create_dir_all(&self.root)
            .await
            .map_err(|e| self.io_err("creating", &self.root, e))?;
        let dst = self.root.join(name);
        if fs::try_exists(&dst).await.unwrap_or(false) {
            return Err(self.err(format!(
                "{} exists already; refusing to overwrite",
                dst.display()
            )));
        }
        let tmp = self.root.join(partial_name(name));
        let file = fs::File::create(&tmp)
            .await
            .map_err(|e| self.io_err("creating", &tmp, e))?
            .into_std()
            .await;
        Ok(DirPut {
            blobs: self.clone(),
            file: Some(Writing::Idle(DirectWrite::artifact(file))),
            tmp,
            dst,
        })
    }

    async fn delete(&self, name: &str, durable: bool) -> Result<()> {
        let path = self.root.join(name);
        match fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io_err("deleting", &path, e)),
        }
        if durable {
            self.sync_root().await?;
        }
        Ok(())
    }

    async fn incomplete(&self) -> Result<Vec<(DirPartial, DateTime<Utc>)>> {
        let scanned = self.scan().await?;
        Ok(scanned
            .into_iter()
            .filter(|(name, meta)| meta.is_file() && name.ends_with(PARTIAL_SUFFIX))
            .map(|(name, meta)| (DirPartial(name), modified(&meta)))
            .collect())
    }

    async fn abort_incomplete(&self, partial: &DirPartial) -> Result<()> {
        let path = self.root.join(&partial.0);
        fs::remove_file(&path)
            .await
            .map_err(|e| self.io_err("removing", &path, e))
    }
}

pub struct DirPut {
    blobs: DirBlobs,
    /// The file, or the write of a chunk under way on a blocking thread;
    /// gone after a write that crashed and once finished.
    file: Option<Writing>,
    tmp: PathBuf,
    dst: PathBuf,
}

type Written = (DirectWrite, std::io::Result<AlignedBuf>);

/// One chunk is written while the next is hashed: both take about as long
/// (a direct write waits for the disk), so one after the other would
/// leave a core idle half the time.
enum Writing {
    Idle(DirectWrite),
    Busy(tokio::task::JoinHandle<Written>),
}

impl DirPut {
    /// Waits for the write under way, if any: the file, and the buffer it
    /// handed back (none when no write was under way). A failed write
    /// fails here.
    async fn settle(&mut self) -> std::io::Result<(DirectWrite, Option<AlignedBuf>)> {
        match self.file.take() {
            None => Err(std::io::Error::other(
                "an earlier write to this file crashed",
            )),
            Some(Writing::Idle(file)) => Ok((file, None)),
            Some(Writing::Busy(write)) => {
                let (file, res) = write.await.map_err(std::io::Error::other)?;
                Ok((file, Some(res?)))
            }
        }
    }
}

/// Whole chunks go to the disk as they are only if a chunk is the direct
/// writer's buffer size: otherwise every chunk would be copied, silently.
const _: () = assert!(crate::direct_write::BUFFER == crate::pipe::CHUNK_SIZE);

impl Put for DirPut {
    /// Starts writing the chunk on a blocking thread (plain `write` calls
    /// would stall the async workers) and hands back the one before it.
    async fn write(&mut self, chunk: AlignedBuf) -> Result<Option<AlignedBuf>> {
        let (mut file, written) = self
            .settle()
            .await
            .map_err(|e| self.blobs.io_err("writing", &self.tmp, e))?;
        self.file = Some(Writing::Busy(tokio::task::spawn_blocking(move || {
            let res = file.write_chunk(chunk);
            (file, res)
        })));
        Ok(written)
    }

    async fn finish(mut self) -> Result<()> {
        let res = async {
            let (file, _) = self.settle().await?;
            tokio::task::spawn_blocking(move || file.finish()?.sync_all())
                .await
                .map_err(std::io::Error::other)??;
            publish(&self.tmp, &self.dst, false).await
        }
        .await;
        if let Err(e) = res {
            let _ = fs::remove_file(&self.tmp).await;
            return Err(self.blobs.io_err("committing", &self.dst, e));
        }
        self.blobs.sync_root().await
    }

    async fn abort(mut self) {
        // A write under way ends (and the file is closed) before the
        // partial file is removed. Closing waits for the write-behind
        // thread's write, if one is out: not on an async worker.
        if let Ok((file, _)) = self.settle().await {
            let _ = tokio::task::spawn_blocking(move || drop(file)).await;
        }
        if let Err(e) = fs::remove_file(&self.tmp).await {
            tracing::warn!(file = %self.tmp.display(), error = %e, "could not remove the partial artifact; it is cleaned up later");
        }
    }
}

impl Drop for DirPut {
    /// Dropped without `finish` or `abort` (a cancelled backup): closing
    /// the file may wait for the write-behind thread's write, which is
    /// not for an async worker.
    fn drop(&mut self) {
        if let Some(Writing::Idle(file)) = self.file.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || drop(file))),
                Err(_) => drop(file),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::blobs::Unfinished;

    #[test]
    fn a_partial_file_names_the_blob_it_was_to_become() {
        for name in [
            "wal-00000001-00000002.tar.zst",
            "20261202T090000Z-files.tar",
        ] {
            assert_eq!(DirPartial(partial_name(name)).blob(), name);
        }
    }
}
