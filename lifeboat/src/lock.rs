//! One backup at a time per history, also across processes: `backup-now`
//! in its own process (no sidecar listening) and the sidecar's schedule
//! must not write the same history at once. An advisory `flock` on a file
//! in the spool folder; the kernel drops it when the process dies, so a
//! killed backup never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::{Error, Result};

/// Held while a backup runs; released on drop (or death).
pub struct BackupLock {
    file: Option<File>,
}

impl BackupLock {
    /// Whether the lock is really held (no lock file could be made in a
    /// read-only folder: then it proves nothing about other backups).
    pub fn is_held(&self) -> bool {
        self.file.is_some()
    }

    /// Takes the lock for the history `key` (primary target, namespace and
    /// name: one history), or says it is taken. Where no
    /// lock file can be made (a read-only folder) backups go on unlocked,
    /// with a warning: refusing to back up would be worse.
    pub fn acquire(dir: &Path, name: &str, key: &str) -> Result<BackupLock> {
        use sha2::Digest;
        let digest = hex::encode(sha2::Sha256::digest(key.as_bytes()));
        let path: PathBuf = dir.join(crate::layout::lock_file_name(name, &digest[..12]));
        let file = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => {
                warn!(path = %path.display(), "cannot create the backup lock file ({e}); going on without it");
                return Ok(BackupLock { file: None });
            }
        };
        // SAFETY: flock on a descriptor we own; no memory is shared.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            return Err(Error::Source(format!(
                "another backup of {name} is running in this container (lock {}); this one did not start, try again when it is done",
                path.display()
            )));
        }
        Ok(BackupLock { file: Some(file) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let key = "file:///backup/default/web-0";
        let first = BackupLock::acquire(dir.path(), "web-0", key).unwrap();
        let err = BackupLock::acquire(dir.path(), "web-0", key).err().unwrap();
        assert!(err.to_string().contains("another backup of web-0"), "{err}");
        // Another history (same name, other target) is independent.
        BackupLock::acquire(dir.path(), "web-0", "file:///other/default/web-0").unwrap();
        drop(first);
        BackupLock::acquire(dir.path(), "web-0", key).unwrap();
    }
}
