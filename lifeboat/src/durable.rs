//! Writes that are on disk before we say so: a small file written and
//! synced with its folder, a whole filesystem synced. Restore and the
//! pending load use them for markers and records (docs/ARCHITECTURE.md,
//! "Commit protocol and crash safety").

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use crate::error::IoContext;
use crate::{Error, Result};

/// Writes a small file durably. A file or symlink already at `path` is
/// removed first and the new one created exclusively, so nothing is ever
/// written through a link planted under our marker's name.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) if !md.is_dir() => fs::remove_file(path).ctx("replacing", path)?,
        _ => {}
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .ctx("writing", path)?;
    f.write_all(bytes).ctx("writing", path)?;
    f.sync_all().ctx("syncing", path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes a folder's entries (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("syncing", dir)
}

/// Syncs the filesystems of `paths` every `every` until `stop` ends (its
/// sender is dropped): data written meanwhile goes to disk while the writer
/// is busy with something else. Failures are left to the final
/// [`sync_fs`], which is the one that counts.
pub fn sync_fs_every(paths: &[PathBuf], every: Duration, stop: &Receiver<()>) {
    use std::os::unix::fs::MetadataExt;
    // Opened once, one per filesystem: paths on one filesystem need one call.
    let mut filesystems: Vec<(u64, fs::File)> = Vec::new();
    for p in paths {
        if let Ok(f) = fs::File::open(p) {
            match f.metadata() {
                Ok(md) if filesystems.iter().any(|(dev, _)| *dev == md.dev()) => {}
                Ok(md) => filesystems.push((md.dev(), f)),
                Err(_) => {}
            }
        }
    }
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
        for (_, f) in &filesystems {
            let _ = syncfs(f);
        }
    }
}

/// `syncfs(2)` on the filesystem `f` is on.
fn syncfs(f: &fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is valid for the life of `f`.
    match unsafe { libc::syncfs(f.as_raw_fd()) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Syncs the whole filesystem `path` is on: after a restore wrote many files.
pub fn sync_fs(path: &Path) -> Result<()> {
    let f = fs::File::open(path).ctx("opening", path)?;
    syncfs(&f).map_err(|e| Error::io(format!("syncing the filesystem of {}", path.display()), e))
}
