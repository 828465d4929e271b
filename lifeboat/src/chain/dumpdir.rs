//! GNU tar's dumpdir: what a folder held when an incremental link was
//! taken (docs/ARCHITECTURE.md, "Incremental chains").
//!
//! In a chain every folder is a `D` entry (GNU `GNUTYPE_DUMPDIR`) whose data
//! names everything in it, each name after a flag byte and ended by a NUL,
//! the list ended by one more NUL:
//!
//! - `Y` a file or link stored in this archive,
//! - `N` one stored by an earlier link and unchanged since,
//! - `D` a folder (it has a `D` entry of its own).
//!
//! `tar -x -G` (and `lifeboat-restore`) first removes from the folder what
//! the list does not name, and what the list says is a folder but is not
//! (or says is a stored file but is a folder), then extracts into it. So a
//! chain applied in order ends with exactly the last backup's names:
//! deletions, renames and a folder replaced by a file included. We never
//! write GNU's rename records (`R`, `T`, `X`); a renamed folder is stored
//! again under its new name.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::path::Path;

/// The tar type flag of a folder with a dumpdir.
pub const TYPEFLAG: u8 = b'D';

/// A dumpdir held in memory up to this many bytes; a larger one (a folder
/// of more than ~50,000 names) goes to an unlinked file in `TMPDIR`.
pub const SPOOL_MEMORY: usize = 1024 * 1024;

/// Longer names are refused: Linux names are at most 255 bytes.
pub const MAX_NAME: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    /// `Y`: a file, symlink or hard link stored in this archive.
    Stored,
    /// `N`: stored by an earlier link of the chain, unchanged since.
    Earlier,
    /// `D`: a folder.
    Folder,
}

impl Flag {
    pub fn byte(self) -> u8 {
        match self {
            Flag::Stored => b'Y',
            Flag::Earlier => b'N',
            Flag::Folder => b'D',
        }
    }

    pub fn from_byte(b: u8) -> Option<Flag> {
        match b {
            b'Y' => Some(Flag::Stored),
            b'N' => Some(Flag::Earlier),
            b'D' => Some(Flag::Folder),
            _ => None,
        }
    }
}

/// A folder's dumpdir being written, names in the walk's (sorted) order.
pub struct Builder<'a> {
    memory: Vec<u8>,
    spool: Option<File>,
    spool_dir: &'a Path,
    len: u64,
}

impl<'a> Builder<'a> {
    pub fn new(spool_dir: &'a Path) -> Self {
        Builder {
            memory: Vec::new(),
            spool: None,
            spool_dir,
            len: 0,
        }
    }

    pub fn push(&mut self, flag: Flag, name: &[u8]) -> io::Result<()> {
        self.memory.push(flag.byte());
        self.memory.extend_from_slice(name);
        self.memory.push(0);
        self.len += name.len() as u64 + 2;
        if self.memory.len() >= SPOOL_MEMORY {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        if self.spool.is_none() {
            self.spool = Some(tempfile::tempfile_in(self.spool_dir)?);
        }
        let f = self.spool.as_mut().expect("just made");
        f.write_all(&self.memory)?;
        self.memory.clear();
        Ok(())
    }

    /// The whole dumpdir, with its closing NUL: its length (the `D`
    /// entry's size) and its bytes.
    pub fn finish(mut self) -> io::Result<(u64, Box<dyn Read + Send>)> {
        self.memory.push(0);
        self.len += 1;
        match self.spool.take() {
            None => Ok((self.len, Box::new(io::Cursor::new(self.memory)))),
            Some(mut f) => {
                f.write_all(&self.memory)?;
                f.rewind()?;
                Ok((self.len, Box::new(BufReader::new(f))))
            }
        }
    }
}

/// Reads a dumpdir from a `D` entry's data. It is untrusted input: each
/// name must be one plain path component, the names strictly increasing
/// (as the walk writes them, so a restore can merge them with a sorted
/// listing), flags only `Y`, `N`, `D`, and nothing after the closing NUL.
pub struct Reader<R: Read> {
    inner: BufReader<R>,
    last: Vec<u8>,
    started: bool,
    done: bool,
}

impl<R: Read> Reader<R> {
    pub fn new(r: R) -> Self {
        Reader {
            inner: BufReader::with_capacity(16 * 1024, r),
            last: Vec::new(),
            started: false,
            done: false,
        }
    }

    /// The next flag and name; `None` after the last.
    pub fn next_entry(&mut self) -> Result<Option<(Flag, Vec<u8>)>, String> {
        if self.done {
            return Ok(None);
        }
        let mut raw = Vec::new();
        let n = (&mut self.inner)
            .take(MAX_NAME as u64 + 2)
            .read_until(0, &mut raw)
            .map_err(|e| format!("cannot read the folder list: {e}"))?;
        if n == 0 || raw.last() != Some(&0) {
            return Err(match raw.len() > MAX_NAME {
                true => format!("a name in the folder list is longer than {MAX_NAME} bytes"),
                false => "the folder list ends without its closing NUL".into(),
            });
        }
        raw.pop();
        if raw.is_empty() {
            self.done = true;
            let mut rest = [0u8; 1];
            return match self.inner.read(&mut rest) {
                Ok(0) => Ok(None),
                Ok(_) => Err("data after the end of the folder list".into()),
                Err(e) => Err(format!("cannot read the folder list: {e}")),
            };
        }
        let flag = Flag::from_byte(raw[0]).ok_or_else(|| {
            format!(
                "unknown flag {:?} in the folder list (lifeboat writes Y, N and D)",
                raw[0] as char
            )
        })?;
        let name = raw.split_off(1);
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Err(format!(
                "{:?} in the folder list is not a plain name",
                String::from_utf8_lossy(&name)
            ));
        }
        if self.started && name <= self.last {
            return Err(format!(
                "{:?} in the folder list is out of order",
                String::from_utf8_lossy(&name)
            ));
        }
        self.started = true;
        self.last.clone_from(&name);
        Ok(Some((flag, name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(entries: &[(Flag, &[u8])]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Builder::new(dir.path());
        for (f, n) in entries {
            b.push(*f, n).unwrap();
        }
        let (len, mut r) = b.finish().unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out.len() as u64, len);
        out
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(Flag, Vec<u8>)>, String> {
        let mut r = Reader::new(bytes);
        let mut v = Vec::new();
        while let Some(e) = r.next_entry()? {
            v.push(e);
        }
        Ok(v)
    }

    #[test]
    fn the_bytes_gnu_tar_writes() {
        // `tar -c -g snap d` for d/{a, sub/}: "Ya\0Dsub\0\0".
        let b = built(&[(Flag::Stored, b"a"), (Flag::Folder, b"sub")]);
        assert_eq!(b, b"Ya\0Dsub\0\0");
        assert_eq!(built(&[]), b"\0");
        assert_eq!(
            read_all(&b).unwrap(),
            vec![
                (Flag::Stored, b"a".to_vec()),
                (Flag::Folder, b"sub".to_vec())
            ]
        );
        assert_eq!(read_all(b"\0").unwrap(), vec![]);
    }

    #[test]
    fn a_large_list_spills_and_reads_back_whole() {
        let names: Vec<Vec<u8>> = (0..100_000)
            .map(|i| format!("file-{i:08}").into_bytes())
            .collect();
        let entries: Vec<(Flag, &[u8])> = names
            .iter()
            .map(|n| (Flag::Earlier, n.as_slice()))
            .collect();
        let b = built(&entries);
        assert!(b.len() > SPOOL_MEMORY);
        let back = read_all(&b).unwrap();
        assert_eq!(back.len(), names.len());
        assert_eq!(back[99_999].1, names[99_999]);
    }

    #[test]
    fn hostile_lists_are_refused_with_the_reason() {
        let bad: &[(&[u8], &str)] = &[
            (b"Ya\0", "without its closing NUL"),
            (b"Ya", "without its closing NUL"),
            (b"", "without its closing NUL"),
            (b"Y..\0\0", "not a plain name"),
            (b"Ya/b\0\0", "not a plain name"),
            (b"Y\0\0", "not a plain name"),
            (b"Rold\0Tnew\0\0", "unknown flag 'R'"),
            (b"Yb\0Ya\0\0", "out of order"),
            (b"Ya\0Ya\0\0", "out of order"),
            (b"Ya\0\0junk", "data after the end"),
        ];
        for (bytes, why) in bad {
            let e = read_all(bytes).unwrap_err();
            assert!(e.contains(why), "{bytes:?}: {e}");
        }
        let long = [b"Y".to_vec(), vec![b'x'; MAX_NAME + 10], b"\0\0".to_vec()].concat();
        assert!(read_all(&long).unwrap_err().contains("longer than"));
    }
}
