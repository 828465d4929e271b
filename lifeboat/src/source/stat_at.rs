//! `lstat` of the names of one folder, relative to the open folder
//! (docs/ARCHITECTURE.md, "Incremental chains", backup): an incremental link
//! compares every name of the volume with the chain's state, and given a
//! whole path the kernel looks up every component of it again for each
//! name, most of such a link's system time. Relative to the folder it looks
//! up one.

use std::ffi::OsStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::chain::state::{Fields, Meta};

/// A folder whose names are looked up.
pub struct Folder {
    /// `O_PATH`: nothing is read through it. None if it could not be
    /// opened: then each name is looked up by its whole path, as before.
    fd: Option<OwnedFd>,
    /// The path (fallback) or the name being looked up, NUL-terminated.
    buf: Vec<u8>,
    dir_len: usize,
}

/// What an `lstat` says.
#[derive(Clone, Copy)]
pub struct Stat(libc::stat);

impl Folder {
    /// `dir`, opened without following a symlink in its place. Where it
    /// cannot be opened so (gone, swapped for a symlink, no descriptors
    /// left), its names are looked up by whole path, as the walk always did.
    pub fn open(dir: &Path) -> Folder {
        let mut buf = dir.as_os_str().as_bytes().to_vec();
        let dir_len = buf.len();
        buf.push(0);
        let fd = if buf[..dir_len].contains(&0) {
            None
        } else {
            // SAFETY: `buf` is NUL-terminated with no NUL before; the
            // result is checked before it is owned.
            let fd = unsafe {
                libc::open(
                    buf.as_ptr().cast(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            };
            // SAFETY: a descriptor the call just returned, owned by nobody else.
            (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
        };
        Folder { fd, buf, dir_len }
    }

    /// `lstat` of `name`, one component of this folder.
    pub fn lstat(&mut self, name: &OsStr) -> io::Result<Stat> {
        let name = name.as_bytes();
        if name.contains(&0) || name.contains(&b'/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a plain name",
            ));
        }
        let at = match &self.fd {
            Some(fd) => {
                self.buf.clear();
                fd.as_raw_fd()
            }
            None => {
                self.buf.truncate(self.dir_len);
                self.buf.push(b'/');
                libc::AT_FDCWD
            }
        };
        self.buf.extend_from_slice(name);
        self.buf.push(0);
        let mut st = MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `at` is an open folder or AT_FDCWD, `buf` a NUL-terminated
        // path, and `st` is written by the kernel when the call succeeds.
        let r = unsafe {
            libc::fstatat(
                at,
                self.buf.as_ptr().cast(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fstatat succeeded, so it filled `st`.
        Ok(Stat(unsafe { st.assume_init() }))
    }
}

impl Stat {
    pub fn is_dir(&self) -> bool {
        self.0.st_mode & libc::S_IFMT == libc::S_IFDIR
    }
    pub fn dev(&self) -> u64 {
        self.0.st_dev
    }
    pub fn ino(&self) -> u64 {
        self.0.st_ino
    }
    pub fn nlink(&self) -> u64 {
        self.0.st_nlink
    }
    pub fn mode(&self) -> u32 {
        self.0.st_mode
    }
    pub fn size(&self) -> u64 {
        self.0.st_size as u64
    }
    pub fn mtime(&self) -> (i64, i64) {
        (self.0.st_mtime, self.0.st_mtime_nsec)
    }
    pub fn ctime(&self) -> (i64, i64) {
        (self.0.st_ctime, self.0.st_ctime_nsec)
    }
    pub fn uid(&self) -> u32 {
        self.0.st_uid
    }
    pub fn gid(&self) -> u32 {
        self.0.st_gid
    }
    /// What the chain's state records of it ([`Meta::from_fields`]).
    pub fn meta(&self) -> Option<Meta> {
        Meta::from_fields(Fields {
            mode: self.mode(),
            size: self.size(),
            mtime: self.mtime(),
            ctime: self.ctime(),
            inode: self.ino(),
            uid: self.uid(),
            gid: self.gid(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn relative_and_whole_path_lookups_agree_with_std() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::os::unix::fs::symlink("nowhere", dir.path().join("l")).unwrap();
        let mut open = Folder::open(dir.path());
        assert!(open.fd.is_some());
        // A symlink in the folder's place is not followed: whole paths then.
        let link = dir.path().join("to-dir");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        let mut through = Folder::open(&link);
        assert!(through.fd.is_none());
        for name in ["f", "d", "l"] {
            let md = std::fs::symlink_metadata(dir.path().join(name)).unwrap();
            for st in [
                open.lstat(OsStr::new(name)).unwrap(),
                through.lstat(OsStr::new(name)).unwrap(),
            ] {
                assert_eq!(st.ino(), md.ino(), "{name}");
                assert_eq!(st.mode(), md.mode(), "{name}");
                assert_eq!(st.is_dir(), md.is_dir(), "{name}");
                assert_eq!(st.size(), md.size(), "{name}");
                assert_eq!(st.mtime(), (md.mtime(), md.mtime_nsec()), "{name}");
                assert_eq!(st.ctime(), (md.ctime(), md.ctime_nsec()), "{name}");
            }
        }
        let gone = open.lstat(OsStr::new("gone")).err().expect("no such name");
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        assert!(
            open.lstat(OsStr::new("../f")).is_err(),
            "one component only"
        );
    }
}
