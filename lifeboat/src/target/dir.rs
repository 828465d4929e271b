//! A folder target, usually a mounted backup PVC. Writes to a hidden temp
//! name, fsyncs, renames, fsyncs the folder, then writes the manifest the
//! same way: a crash at any moment leaves the old state or the new one.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use tokio::fs;

use super::{ByteStream, Leftover, Listing, Small, Stored, Target, Upload};
use crate::artifact::{self, MANIFEST_SUFFIX};
use crate::manifest::{Manifest, MAX_MANIFEST_BYTES};
use crate::writeback::Writeback;
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

pub struct DirTarget {
    /// The configured folder (the mount point of the backup volume).
    base: PathBuf,
    /// `<base>/<namespace>/<name>`: this pod's history.
    root: PathBuf,
}

impl DirTarget {
    pub fn new(base: PathBuf, root: PathBuf) -> Self {
        DirTarget { base, root }
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

    /// Writes `bytes` under `name` durably: temp file, fsync, rename, fsync folder.
    async fn write_durable(&self, name: &str, bytes: &[u8], replace: bool) -> Result<()> {
        let tmp = self.root.join(partial_name(name));
        let dst = self.root.join(name);
        // Plain blocking writes: tokio's File keeps a failed background
        // write's error for the *next* call, so `write_all` then `sync_all`
        // can both succeed on a full disk and publish an empty manifest.
        let (t, data) = (tmp.clone(), bytes.to_vec());
        let written = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&t)?;
            f.write_all(&data)?;
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
        sync_dir(&self.root)
            .await
            .map_err(|e| self.io_err("syncing", &self.root, e))
    }
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

impl Target for DirTarget {
    type Upload = DirUpload;

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
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

    async fn list(&self) -> Result<Listing> {
        let mut listing = Listing::default();
        let mut rd = match fs::read_dir(&self.root).await {
            Ok(rd) => rd,
            // No history yet is normal on a first deploy; no backup volume at
            // all is a mount mistake, and must not look like "nothing to restore".
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.base.is_dir() => {
                return Ok(listing)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.err(format!(
                    "the folder {} does not exist; is the backup volume mounted there?",
                    self.base.display()
                )))
            }
            Err(e) => return Err(self.io_err("listing", &self.root, e)),
        };
        while let Some(ent) = rd
            .next_entry()
            .await
            .map_err(|e| self.io_err("listing", &self.root, e))?
        {
            let name = ent.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(MANIFEST_SUFFIX) {
                continue;
            }
            let path = ent.path();
            let bytes = match small(read_regular(&path, MAX_MANIFEST_BYTES).await) {
                Ok(Small::Bytes(b)) => b,
                Ok(Small::Gone) => continue,
                Ok(Small::Refused(e)) => {
                    listing.problems.push(format!("{}: {e}", path.display()));
                    continue;
                }
                Err(e) => return Err(self.io_err("reading", &path, e)),
            };
            let manifest = match super::parse_listed(&name, &bytes) {
                Ok(m) => m,
                Err(e) => {
                    listing
                        .problems
                        .push(format!("{}: not a valid manifest: {e}", path.display()));
                    continue;
                }
            };
            let verified = self.root.join(artifact::verified_name(&manifest.id));
            let verified_at = read_regular(&verified, super::MAX_VERIFIED_BYTES)
                .await
                .ok()
                .and_then(|b| super::parse_verified(&b));
            listing.artifacts.push(Stored {
                manifest,
                verified_at,
            });
        }
        listing.sort_newest_first();
        Ok(listing)
    }

    async fn begin(&self, artifact_name: &str) -> Result<DirUpload> {
        artifact::check_file_name(artifact_name).map_err(|e| self.err(e))?;
        fs::create_dir_all(&self.root)
            .await
            .map_err(|e| self.io_err("creating", &self.root, e))?;
        let dst = self.root.join(artifact_name);
        if fs::try_exists(&dst).await.unwrap_or(false) {
            return Err(self.err(format!(
                "{} exists already; refusing to overwrite",
                dst.display()
            )));
        }
        let tmp = self.root.join(partial_name(artifact_name));
        let file = fs::File::create(&tmp)
            .await
            .map_err(|e| self.io_err("creating", &tmp, e))?
            .into_std()
            .await;
        Ok(DirUpload {
            target: DirTarget::new(self.base.clone(), self.root.clone()),
            file: Some((file, Writeback::default())),
            tmp,
            dst,
        })
    }

    async fn open(&self, m: &Manifest) -> Result<ByteStream> {
        let path = self.root.join(&m.artifact);
        let p = path.clone();
        let opened = tokio::task::spawn_blocking(move || open_regular(&p))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        match opened {
            Ok((f, _)) => Ok(Box::pin(fs::File::from_std(f))),
            // Not there, or not a plain file (a symlink to /dev/zero, a FIFO):
            // this artifact can never be read, whatever we retry.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData
                ) =>
            {
                Err(Error::Corrupt {
                    id: m.id.clone(),
                    reason: format!("{}: {e}", path.display()),
                })
            }
            Err(e) => Err(self.io_err("opening", &path, e)),
        }
    }

    async fn delete(&self, m: &Manifest) -> Result<()> {
        for name in [
            artifact::manifest_name(&m.id),
            m.artifact.clone(),
            artifact::verified_name(&m.id),
        ] {
            let path = self.root.join(&name);
            match fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io_err("deleting", &path, e)),
            }
            // The manifest's removal must be durable before the data goes.
            if name.ends_with(MANIFEST_SUFFIX) {
                sync_dir(&self.root)
                    .await
                    .map_err(|e| self.io_err("syncing", &self.root, e))?;
            }
        }
        Ok(())
    }

    async fn mark_verified(&self, m: &Manifest, at: DateTime<Utc>) -> Result<()> {
        self.write_durable(
            &artifact::verified_name(&m.id),
            &super::verified_record(m, at),
            true,
        )
        .await
    }

    async fn leftovers(&self) -> Result<Vec<Leftover>> {
        let mut out = Vec::new();
        let mut rd = match fs::read_dir(&self.root).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(self.io_err("listing", &self.root, e)),
        };
        let mut names = Vec::new();
        while let Some(ent) = rd
            .next_entry()
            .await
            .map_err(|e| self.io_err("listing", &self.root, e))?
        {
            let meta = ent
                .metadata()
                .await
                .map_err(|e| self.io_err("reading", &ent.path(), e))?;
            if meta.is_file() {
                names.push((
                    ent.file_name().to_string_lossy().into_owned(),
                    modified(&meta),
                ));
            }
        }
        let committed: std::collections::HashSet<&str> = names
            .iter()
            .filter_map(|(n, _)| n.strip_suffix(MANIFEST_SUFFIX))
            .filter(|n| !n.starts_with('.'))
            .collect();
        for (name, modified) in &names {
            if name.ends_with(PARTIAL_SUFFIX) || super::is_orphan(name, &committed) {
                out.push(Leftover {
                    name: name.clone(),
                    modified: *modified,
                });
            }
        }
        Ok(out)
    }

    async fn remove_leftover(&self, name: &str) -> Result<()> {
        if name.contains('/') {
            return Err(self.err(format!("refusing to remove {name:?}: not a file name")));
        }
        let path = self.root.join(name);
        fs::remove_file(&path)
            .await
            .map_err(|e| self.io_err("removing", &path, e))
    }
}

pub struct DirUpload {
    target: DirTarget,
    /// Away while a blocking write runs; gone after a write that crashed.
    file: Option<(std::fs::File, Writeback)>,
    tmp: PathBuf,
    dst: PathBuf,
}

impl DirUpload {
    /// Runs `f` on the file in the blocking pool (plain `write` and
    /// `sync_file_range` calls would stall the async workers).
    async fn with_file<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut std::fs::File, &mut Writeback) -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let Some((mut file, mut wb)) = self.file.take() else {
            return Err(std::io::Error::other(
                "an earlier write to this file crashed",
            ));
        };
        let (state, res) = tokio::task::spawn_blocking(move || {
            let res = f(&mut file, &mut wb);
            ((file, wb), res)
        })
        .await
        .map_err(std::io::Error::other)?;
        self.file = Some(state);
        res
    }
}

impl Upload for DirUpload {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        use std::io::Write;
        let data = chunk.to_vec();
        let res = self
            .with_file(move |f, wb| {
                f.write_all(&data)?;
                wb.wrote(f, data.len() as u64);
                Ok(())
            })
            .await;
        res.map_err(|e| self.target.io_err("writing", &self.tmp, e))
    }

    async fn commit(mut self, manifest: &Manifest) -> Result<()> {
        let res = async {
            self.with_file(|f, _| f.sync_all()).await?;
            self.file = None;
            publish(&self.tmp, &self.dst, false).await
        }
        .await;
        let t = &self.target;
        if let Err(e) = res {
            let _ = fs::remove_file(&self.tmp).await;
            return Err(t.io_err("committing", &self.dst, e));
        }
        sync_dir(t.root())
            .await
            .map_err(|e| t.io_err("syncing", t.root(), e))?;
        if let Err(e) = t
            .write_durable(
                &artifact::manifest_name(&manifest.id),
                &manifest.to_json(),
                false,
            )
            .await
        {
            // Without its manifest the artifact does not count; do not leave it behind.
            let _ = fs::remove_file(&self.dst).await;
            return Err(e);
        }
        Ok(())
    }

    async fn abort(self) {
        drop(self.file);
        if let Err(e) = fs::remove_file(&self.tmp).await {
            tracing::warn!(file = %self.tmp.display(), error = %e, "could not remove the partial artifact; it is cleaned up later");
        }
    }
}
