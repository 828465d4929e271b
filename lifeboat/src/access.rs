//! Whether this process may use a folder as it is about to, checked at
//! start. Containers run as a fixed non-root uid (65532 in our images) and
//! volumes often belong to the app's uid: a bare "Permission denied" deep in
//! a backup says nothing about the fix, so this says who we are, who owns
//! the folder, and what to change in the pod.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What the process does with the folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Read everything below it (backup).
    Read,
    /// Create entries in it (restore, a folder target).
    Write,
}

/// `None` when `path` is usable for `need` (or does not exist yet and its
/// nearest existing parent is writable); otherwise what is wrong and how to
/// fix it. A missing path is not reported here: its users say so better.
pub fn problem(path: &Path, need: Need) -> Option<String> {
    // A folder that does not exist yet is created in its nearest parent.
    let mut at = path;
    let mut need = need;
    while std::fs::symlink_metadata(at).is_err() {
        match at.parent() {
            Some(p) if need == Need::Write => at = p,
            _ => return None,
        }
        need = Need::Write;
    }
    let md = std::fs::metadata(at).ok()?;
    // Not a folder, a read-only mount, ...: not about who we are; the
    // code that uses the path reports those in its own words.
    if !md.is_dir() {
        return None;
    }
    let mode = match need {
        Need::Read => libc::R_OK | libc::X_OK,
        Need::Write => libc::W_OK | libc::X_OK,
    };
    match denied(at, mode) {
        Some(libc::EACCES) | Some(libc::EPERM) => {}
        _ => return None,
    }
    // SAFETY: no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let verb = match need {
        Need::Read => "read",
        Need::Write => "write to",
    };
    Some(format!(
        "this process (uid {uid}, gid {gid}) may not {verb} {} (owner uid {}, gid {}, mode {:04o}); run the container as the owner (securityContext.runAsUser: {}) or give the pod securityContext.fsGroup: {} so the volume is group-{}",
        at.display(),
        md.uid(),
        md.gid(),
        md.mode() & 0o7777,
        md.uid(),
        md.gid(),
        match need {
            Need::Read => "readable",
            Need::Write => "writable",
        }
    ))
}

/// faccessat with the effective ids, as the kernel checks a real open:
/// the errno when access is denied, `None` when allowed.
fn denied(path: &Path, mode: libc::c_int) -> Option<i32> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path for the call's duration.
    let r = unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), mode, libc::AT_EACCESS) };
    (r != 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_and_missing_folders_are_not_problems() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(problem(dir.path(), Need::Read), None);
        assert_eq!(problem(dir.path(), Need::Write), None);
        assert_eq!(problem(&dir.path().join("not/yet"), Need::Write), None);
        assert_eq!(problem(&dir.path().join("missing"), Need::Read), None);
        // A file where a folder should be is reported by its users, not here.
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert_eq!(problem(&file.join("below"), Need::Write), None);
    }
}
