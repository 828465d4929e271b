//! Opening a file the walk found, safely against an app that swaps names
//! at any moment (docs/ARCHITECTURE.md, "The files source").

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

#[derive(Debug)]
pub(super) struct Replaced(String);

impl std::fmt::Display for Replaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Replaced {}

/// The reason, when `e` says a walked file was replaced.
pub(super) fn replaced(e: &io::Error) -> Option<String> {
    e.get_ref()
        .and_then(|r| r.downcast_ref::<Replaced>())
        .map(|r| r.0.clone())
}

/// Opens a file the walk saw as regular, as a regular file or not at all:
/// without following a symlink and without blocking on a FIFO that took
/// its name since, and checked by `fstat` to be a regular file. The app may
/// swap names at any moment; we must never read anything but the volume's
/// own files (a link to `/proc/self/environ` would put the sidecar's
/// secrets in the artifact). A different inode than the walk saw is read
/// and reported as a change by the caller.
pub(super) fn open_walked(path: &Path) -> io::Result<File> {
    let file = match open_noatime(path, libc::O_NOFOLLOW | libc::O_NONBLOCK) {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(io::Error::other(Replaced(
                "was replaced by a symlink while the backup ran".into(),
            )))
        }
        r => r?,
    };
    let now = file.metadata()?;
    let kind = now.file_type();
    let what = if !kind.is_file() {
        Some(if kind.is_dir() {
            "a folder"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "a device node"
        })
    } else {
        // Another regular file under the same name (written to a temp name
        // and renamed over, as PostgreSQL does with pg_filenode.map) is the
        // volume's own current file: read it; `changed` reports it.
        None
    };
    match what {
        Some(w) => Err(io::Error::other(Replaced(format!(
            "was replaced by {w} while the backup ran"
        )))),
        None => Ok(file),
    }
}

/// Opens a file to read without touching its access time: reading a whole
/// volume would otherwise dirty every inode the app has not read since its
/// last change, and those writes land on the app's disk. O_NOATIME is only
/// allowed to the file's owner (or CAP_FOWNER); others open it plainly.
pub(super) fn open_noatime(path: &Path, flags: i32) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = |extra: i32| {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags | extra)
            .open(path)
    };
    match open(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        r => r,
    }
}
