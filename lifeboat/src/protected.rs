//! Folders a restore never counts as the app's data and never removes or
//! replaces: the backup folders of folder targets, when they are mounted
//! inside a restored path — directly (`/data/backups`), deeper
//! (`/data/a/backups`), by a bind mount, or behind a symlink. Known by
//! device and inode, not by name. Replacing also never descends into
//! another filesystem mounted inside a path. See docs/ARCHITECTURE.md §6.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::IoContext;
use crate::file_out::{self, DirMeta};
use crate::store::AnyTarget;
use crate::{Error, Result};

#[derive(Debug, Default, Clone)]
pub struct Protected(Vec<(u64, u64)>);

impl Protected {
    /// The backup folders of `targets` that exist.
    pub fn of(targets: &[AnyTarget]) -> Self {
        Protected(
            targets
                .iter()
                .filter_map(|t| fs::metadata(t.local_folder()?).ok())
                .map(|m| (m.dev(), m.ino()))
                .collect(),
        )
    }

    /// Whether `path` is a protected folder (following a symlink to it).
    pub fn is(&self, path: &Path) -> bool {
        !self.0.is_empty()
            && fs::metadata(path).is_ok_and(|m| m.is_dir() && self.0.contains(&(m.dev(), m.ino())))
    }

    /// Whether `path` holds nothing but protected folders and the folders
    /// that lead to them, so it is not the app's data. A plain empty folder
    /// is data: somebody made it.
    pub fn only_shelters(&self, path: &Path) -> bool {
        if self.0.is_empty() {
            return false;
        }
        if self.is(path) {
            return true;
        }
        let is_dir = fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
        let Ok(rd) = fs::read_dir(path)
            .map_err(|_| ())
            .and_then(|rd| is_dir.then_some(rd).ok_or(()))
        else {
            return false;
        };
        let mut any = false;
        for ent in rd {
            match ent {
                Ok(ent) if self.only_shelters(&ent.path()) => any = true,
                _ => return false,
            }
        }
        any
    }

    /// Removes `path` — a file, a link, or a folder with all it holds —
    /// except protected folders, folders on another filesystem than `dev`
    /// (a mount inside the path is not ours to empty), and the folders that
    /// lead to them. Returns whether `path` is gone.
    pub fn remove(&self, path: &Path, dev: u64) -> Result<bool> {
        let md = fs::symlink_metadata(path).ctx("checking", path)?;
        if !md.is_dir() {
            fs::remove_file(path).ctx("removing the old", path)?;
            return Ok(true);
        }
        if self.is(path) || md.dev() != dev {
            return Ok(false);
        }
        let mut all = true;
        for ent in fs::read_dir(path).ctx("reading", path)? {
            let ent = ent.ctx("reading", path)?;
            all &= self.remove(&ent.path(), dev)?;
        }
        if all {
            fs::remove_dir(path).ctx("removing the old", path)?;
        }
        Ok(all)
    }

    /// Moves a staged entry to `dst`. Where a folder was kept because it
    /// leads to a protected one, the staged folder's content is merged into
    /// it and the staged folder's owner, mode and mtime applied. An entry
    /// that would land on a protected folder is not restored (an older
    /// artifact may hold a bind-mounted backup folder).
    pub fn move_into(&self, src: &Path, dst: &Path, as_root: bool) -> Result<()> {
        match fs::symlink_metadata(dst) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::rename(src, dst).ctx("moving into place", dst)
            }
            Err(e) => Err(Error::io(format!("checking {}", dst.display()), e)),
            Ok(_) if self.is(dst) => {
                tracing::warn!(path = %dst.display(), "the artifact holds an entry where a backup folder is mounted; that entry is not restored");
                Ok(())
            }
            Ok(d) if d.is_dir() && fs::symlink_metadata(src).is_ok_and(|s| s.is_dir()) => {
                for ent in fs::read_dir(src).ctx("reading", src)? {
                    let ent = ent.ctx("reading", src)?;
                    self.move_into(&ent.path(), &dst.join(ent.file_name()), as_root)?;
                }
                let s = fs::symlink_metadata(src).ctx("checking", src)?;
                let meta = DirMeta {
                    mode: s.mode() & 0o7777,
                    uid: s.uid().into(),
                    gid: s.gid().into(),
                    mtime: s.mtime().max(0) as u64,
                    mtime_nsec: s.mtime_nsec().clamp(0, 999_999_999) as u32,
                };
                file_out::apply_dir_meta(dst, meta, as_root)
            }
            Ok(_) => Err(Error::io(
                format!("restoring into {}", dst.display()),
                io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "something appeared there during the restore",
                ),
            )),
        }
    }
}
