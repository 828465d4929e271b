//! Reading a small file we do not control: a setting's value from a file
//! (`LIFEBOAT_*_FILE`, a Secret mount), the annotations file, a record in a
//! staged dump. Only a regular file (a symlink to one is
//! fine: Kubernetes mounts Secrets and downward-API files through links),
//! opened without blocking (a FIFO must not hang start-up), up to a cap
//! (`/dev/zero` must not grow until the memory limit), as UTF-8 text.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The largest `*_FILE` value: passwords, keys and URLs are far smaller.
pub const MAX_SETTING_FILE: u64 = 64 * 1024;
/// The largest annotations file: Kubernetes allows 256 KiB of annotations
/// per object, and the kubelet's quoting adds a little.
pub const MAX_ANNOTATIONS_FILE: u64 = 512 * 1024;

/// Reads `path` whole as text, refusing anything but a regular file of at
/// most `cap` bytes.
pub fn read(path: &Path, cap: u64) -> io::Result<String> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({:?})", meta.file_type()),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len().min(cap) as usize);
    f.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("larger than {cap} bytes, more than such a file may hold"),
        ));
    }
    if bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "contains a NUL byte",
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_text_files() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok");
        std::fs::write(&ok, "secret\n").unwrap();
        assert_eq!(read(&ok, 100).unwrap(), "secret\n");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        assert_eq!(read(&link, 100).unwrap(), "secret\n");
        assert!(read(Path::new("/dev/zero"), 100)
            .unwrap_err()
            .to_string()
            .contains("not a regular file"));
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(read(&fifo, 100).is_err());
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; 101]).unwrap();
        assert!(read(&big, 100)
            .unwrap_err()
            .to_string()
            .contains("larger than"));
        std::fs::write(&big, b"a\0b").unwrap();
        assert!(read(&big, 100).unwrap_err().to_string().contains("NUL"));
    }
}
