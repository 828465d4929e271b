//! What applying one link of a chain leaves for the next: a digest of each
//! folder's list (docs/ARCHITECTURE.md, "Incremental chains", restore).
//!
//! A restore applies a chain link by link into one staging folder. After a
//! link, each folder it listed holds exactly the names of its list (the
//! purge removed the rest; the link and the ones before wrote the others).
//! So when the next link lists a folder with the same names, each a folder
//! or not as before, there is nothing to remove, and the folder need not be
//! read from disk at all. Most folders of a volume do not change between two
//! backups; reading each of them once per link is what made a chain of 24
//! restore in several times the time of one full artifact.
//!
//! The digests are written in the order the link's `D` entries come (the
//! backup's walk: depth first, names sorted) to an unnamed file in `TMPDIR`,
//! and the next link reads them back in the same order, merging, so memory
//! stays flat however many folders there are. A digest that is missing or
//! out of order only costs a purge, never a wrong tree: the purge is always
//! right, the skip is an optimisation that needs proof.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::dumpdir::Flag;
use super::state::walk_order;

/// A folder list's digest: its names, and which of them are folders (the
/// only part of a flag a purge looks at).
pub type Digest = [u8; 32];

/// Builds one folder list's [`Digest`], name by name.
#[derive(Default)]
pub struct ListDigest(Sha256);

impl ListDigest {
    pub fn add(&mut self, flag: Flag, name: &[u8]) {
        let kind: &[u8] = match flag {
            Flag::Folder => b"D",
            Flag::Stored | Flag::Earlier => b"F",
        };
        self.0.update(kind);
        self.0.update(name);
        self.0.update([0u8]);
    }

    pub fn finish(self) -> Digest {
        self.0.finalize().into()
    }
}

/// Writes one link's digests, folder by folder.
pub struct Recorder {
    out: BufWriter<File>,
    last: Option<(u32, Vec<u8>)>,
    /// False once a folder came out of walk order (a tar we did not write,
    /// or a folder listed twice): the next link then trusts none of them.
    ordered: bool,
}

impl Recorder {
    pub fn new(spool_dir: &Path) -> io::Result<Self> {
        Ok(Recorder {
            out: BufWriter::with_capacity(64 * 1024, tempfile::tempfile_in(spool_dir)?),
            last: None,
            ordered: true,
        })
    }

    /// Records the list of `folder` inside configured path number `root`
    /// ("" for the path itself), as the chain's state names folders.
    pub fn record(&mut self, root: u32, folder: &[u8], digest: &Digest) -> io::Result<()> {
        if !self.ordered {
            return Ok(());
        }
        if let Some((r, last)) = &self.last {
            if walk_order((*r, last), (root, folder)) != Ordering::Less {
                self.ordered = false;
                return Ok(());
            }
        }
        self.out.write_all(&root.to_le_bytes())?;
        self.out.write_all(&(folder.len() as u32).to_le_bytes())?;
        self.out.write_all(folder)?;
        self.out.write_all(digest)?;
        // One buffer for the whole link, not an allocation per folder.
        match &mut self.last {
            Some((r, last)) => {
                *r = root;
                last.clear();
                last.extend_from_slice(folder);
            }
            None => self.last = Some((root, folder.to_vec())),
        }
        Ok(())
    }

    /// What the next link reads, or None when this link's folders came out
    /// of order (then nothing is known and every folder is purged).
    pub fn finish(self) -> io::Result<Option<Recorded>> {
        if !self.ordered {
            return Ok(None);
        }
        let mut f = self.out.into_inner().map_err(|e| e.into_error())?;
        f.rewind()?;
        Ok(Some(Recorded {
            input: BufReader::with_capacity(64 * 1024, f),
            current: None,
            started: false,
            asked: None,
            spent: false,
        }))
    }
}

/// One link's digests, read in walk order while the next link is applied.
#[derive(Debug)]
pub struct Recorded {
    input: BufReader<File>,
    current: Option<(u32, Vec<u8>, Digest)>,
    started: bool,
    /// The folder asked for last.
    asked: Option<(u32, Vec<u8>)>,
    /// Set once a folder was asked for twice or out of walk order.
    spent: bool,
}

impl Recorded {
    /// The digest the link before recorded for `folder`, if it listed it.
    /// Folders must be asked for in walk order, each once. Once one is asked
    /// for twice or out of order (a link listing a folder again, maybe after
    /// its first list purged it), nothing more is found in this link: the
    /// same list as the link before's no longer means the folder is as that
    /// link left it.
    pub fn find(&mut self, root: u32, folder: &[u8]) -> io::Result<Option<Digest>> {
        if self.spent {
            return Ok(None);
        }
        match &mut self.asked {
            Some((r, last)) if walk_order((*r, last), (root, folder)) != Ordering::Less => {
                self.spent = true;
                return Ok(None);
            }
            Some((r, last)) => {
                *r = root;
                last.clear();
                last.extend_from_slice(folder);
            }
            None => self.asked = Some((root, folder.to_vec())),
        }
        if !self.started {
            self.started = true;
            self.current = self.read_one()?;
        }
        while let Some((r, path, digest)) = &self.current {
            match walk_order((*r, path), (root, folder)) {
                Ordering::Less => self.current = self.read_one()?,
                Ordering::Equal => {
                    let found = *digest;
                    self.current = self.read_one()?;
                    return Ok(Some(found));
                }
                Ordering::Greater => return Ok(None),
            }
        }
        Ok(None)
    }

    fn read_one(&mut self) -> io::Result<Option<(u32, Vec<u8>, Digest)>> {
        if self.input.fill_buf()?.is_empty() {
            return Ok(None);
        }
        let mut root = [0u8; 4];
        self.input.read_exact(&mut root)?;
        let mut len = [0u8; 4];
        self.input.read_exact(&mut len)?;
        let mut path = vec![0u8; u32::from_le_bytes(len) as usize];
        self.input.read_exact(&mut path)?;
        let mut digest = [0u8; 32];
        self.input.read_exact(&mut digest)?;
        Ok(Some((u32::from_le_bytes(root), path, digest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(names: &[(Flag, &[u8])]) -> Digest {
        let mut d = ListDigest::default();
        for (f, n) in names {
            d.add(*f, n);
        }
        d.finish()
    }

    #[test]
    fn a_list_digest_sees_names_and_folders_but_not_stored_or_earlier() {
        let a = digest(&[(Flag::Stored, b"x"), (Flag::Folder, b"y")]);
        assert_eq!(a, digest(&[(Flag::Earlier, b"x"), (Flag::Folder, b"y")]));
        assert_ne!(a, digest(&[(Flag::Folder, b"x"), (Flag::Folder, b"y")]));
        assert_ne!(a, digest(&[(Flag::Stored, b"x")]));
        assert_ne!(a, digest(&[(Flag::Stored, b"xy")]));
        // Name boundaries count: "ab" + "c" is not "a" + "bc".
        assert_ne!(
            digest(&[(Flag::Stored, b"ab"), (Flag::Stored, b"c")]),
            digest(&[(Flag::Stored, b"a"), (Flag::Stored, b"bc")])
        );
    }

    #[test]
    fn the_next_link_finds_what_the_link_before_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let d1 = digest(&[(Flag::Stored, b"1")]);
        let d2 = digest(&[(Flag::Stored, b"2")]);
        let recorded = || {
            let mut r = Recorder::new(dir.path()).unwrap();
            for (p, d) in [(&b""[..], &d1), (b"a", &d2), (b"a/b", &d1), (b"a.txt", &d2)] {
                r.record(0, p, d).unwrap();
            }
            r.finish().unwrap().expect("in order")
        };
        let mut got = recorded();
        assert_eq!(got.find(0, b"").unwrap(), Some(d1));
        // Not recorded (a new folder): not found, and the merge has moved
        // past every folder before it.
        assert_eq!(got.find(0, b"a-new").unwrap(), None);
        assert_eq!(got.find(0, b"a").unwrap(), None, "asked out of order");
        assert_eq!(got.find(0, b"a/b").unwrap(), None, "nothing after that");
        let mut got = recorded();
        assert_eq!(got.find(0, b"a").unwrap(), Some(d2));
        assert_eq!(got.find(0, b"a").unwrap(), None, "asked twice");
        assert_eq!(got.find(0, b"a.txt").unwrap(), None, "nothing after that");
        let mut got = recorded();
        assert_eq!(got.find(0, b"a").unwrap(), Some(d2));
        assert_eq!(got.find(0, b"a/a").unwrap(), None);
        assert_eq!(got.find(0, b"a/b").unwrap(), Some(d1));
        assert_eq!(got.find(0, b"a.txt").unwrap(), Some(d2));
        assert_eq!(got.find(0, b"z").unwrap(), None);
        // The next configured path comes after all of the first.
        assert_eq!(got.find(1, b"").unwrap(), None);
    }

    #[test]
    fn folders_out_of_walk_order_leave_nothing_to_trust() {
        let dir = tempfile::tempdir().unwrap();
        let d = digest(&[(Flag::Stored, b"1")]);
        let mut r = Recorder::new(dir.path()).unwrap();
        r.record(0, b"a", &d).unwrap();
        r.record(0, b"b", &d).unwrap();
        // Listed twice: its later list may have changed the folder.
        r.record(0, b"a", &d).unwrap();
        assert!(r.finish().unwrap().is_none());
    }
}
