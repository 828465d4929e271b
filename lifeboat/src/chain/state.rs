//! What an incremental link continues from (docs/ARCHITECTURE.md,
//! "Incremental chains"): for every folder the walk met, every name in it
//! with what tells a change — type, size, mtime and ctime with nanoseconds,
//! inode, mode, owner. Stored beside each link of a chain and read back by
//! the next backup in walk order, one folder at a time, so memory stays
//! flat however many files the volume holds.
//!
//! The format (before compression), all integers little-endian:
//!
//! ```text
//! "LIFEBOAT-STATE 1\n"  u32 len  header JSON ({"id", "chain", "paths"})
//! per folder, in walk order:
//!   'F' u32 path-index  u32 len  path inside that path (bytes; "" for the path itself)
//!   per name, in byte order:  'C' u16 len  name  META
//!   'E'
//! 'Z' u64 folders  u64 names
//! META: kind u8 (0 file, 1 folder, 2 symlink)  size u64  mtime i64 u32
//!       ctime i64 u32  inode u64  mode u32  uid u32  gid u32
//! ```
//!
//! The trailer makes a cut-off file an error rather than a shorter state.

use std::cmp::Ordering;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

const MAGIC: &[u8] = b"LIFEBOAT-STATE 1\n";
/// A header larger than this is not ours.
const MAX_HEADER: u32 = 1024 * 1024;
const META_LEN: usize = 1 + 8 + 12 + 12 + 8 + 12;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The link this state was taken with.
    pub id: String,
    /// Its chain's first (level 0) link.
    pub chain: String,
    /// The configured paths, in order: a state of other paths is not
    /// continued from.
    pub paths: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Folder,
    Symlink,
}

/// What tells whether a name changed since the last link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// 0 for a folder (its size says nothing about its names).
    pub size: u64,
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    pub inode: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The fields of an `lstat` a [`Meta`] is made of.
pub struct Fields {
    pub mode: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub inode: u64,
    pub uid: u32,
    pub gid: u32,
}

impl Meta {
    /// What an `lstat` (the walk's, `source/stat_at.rs`) says of a name;
    /// `None` for what the walk does not store (sockets, FIFOs, devices).
    pub fn from_fields(st: Fields) -> Option<Meta> {
        let kind = match st.mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Folder,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFREG => Kind::File,
            _ => return None,
        };
        Some(Meta {
            kind,
            size: if kind == Kind::Folder { 0 } else { st.size },
            mtime: (st.mtime.0, st.mtime.1 as u32),
            ctime: (st.ctime.0, st.ctime.1 as u32),
            inode: st.inode,
            mode: st.mode,
            uid: st.uid,
            gid: st.gid,
        })
    }

    fn write(&self, w: &mut impl Write) -> io::Result<()> {
        let mut b = [0u8; META_LEN];
        b[0] = match self.kind {
            Kind::File => 0,
            Kind::Folder => 1,
            Kind::Symlink => 2,
        };
        b[1..9].copy_from_slice(&self.size.to_le_bytes());
        b[9..17].copy_from_slice(&self.mtime.0.to_le_bytes());
        b[17..21].copy_from_slice(&self.mtime.1.to_le_bytes());
        b[21..29].copy_from_slice(&self.ctime.0.to_le_bytes());
        b[29..33].copy_from_slice(&self.ctime.1.to_le_bytes());
        b[33..41].copy_from_slice(&self.inode.to_le_bytes());
        b[41..45].copy_from_slice(&self.mode.to_le_bytes());
        b[45..49].copy_from_slice(&self.uid.to_le_bytes());
        b[49..53].copy_from_slice(&self.gid.to_le_bytes());
        w.write_all(&b)
    }

    fn read(r: &mut impl Read) -> io::Result<Meta> {
        let mut b = [0u8; META_LEN];
        r.read_exact(&mut b)?;
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let kind = match b[0] {
            0 => Kind::File,
            1 => Kind::Folder,
            2 => Kind::Symlink,
            k => return Err(invalid(format!("unknown kind {k}"))),
        };
        Ok(Meta {
            kind,
            size: u64_at(1),
            mtime: (u64_at(9) as i64, u32_at(17)),
            ctime: (u64_at(21) as i64, u32_at(29)),
            inode: u64_at(33),
            mode: u32_at(41),
            uid: u32_at(45),
            gid: u32_at(49),
        })
    }
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("chain state: {why}"))
}

/// Orders folders as the walk meets them: by configured path, then
/// depth first with names in byte order, which is how `Path` compares
/// component by component.
pub fn walk_order(a: (u32, &[u8]), b: (u32, &[u8])) -> Ordering {
    a.0.cmp(&b.0)
        .then_with(|| Path::new(OsStr::from_bytes(a.1)).cmp(Path::new(OsStr::from_bytes(b.1))))
}

/// Writes a state as the walk goes.
pub struct Writer<W: Write> {
    out: W,
    in_folder: bool,
    folders: u64,
    names: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, header: &Header) -> io::Result<Self> {
        let json = serde_json::to_vec(header).expect("the header serializes");
        out.write_all(MAGIC)?;
        out.write_all(&(json.len() as u32).to_le_bytes())?;
        out.write_all(&json)?;
        Ok(Writer {
            out,
            in_folder: false,
            folders: 0,
            names: 0,
        })
    }

    /// Starts the folder `rel` (inside configured path number `root`);
    /// folders must come in [`walk_order`].
    pub fn folder(&mut self, root: u32, rel: &[u8]) -> io::Result<()> {
        self.end_folder()?;
        self.out.write_all(b"F")?;
        self.out.write_all(&root.to_le_bytes())?;
        self.out.write_all(&(rel.len() as u32).to_le_bytes())?;
        self.out.write_all(rel)?;
        self.in_folder = true;
        self.folders += 1;
        Ok(())
    }

    /// One name of the current folder; names in byte order.
    pub fn name(&mut self, name: &[u8], meta: &Meta) -> io::Result<()> {
        debug_assert!(self.in_folder, "a name outside a folder");
        let len = u16::try_from(name.len()).map_err(|_| invalid("a name over 64 KiB".into()))?;
        self.out.write_all(b"C")?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(name)?;
        meta.write(&mut self.out)?;
        self.names += 1;
        Ok(())
    }

    fn end_folder(&mut self) -> io::Result<()> {
        if self.in_folder {
            self.out.write_all(b"E")?;
            self.in_folder = false;
        }
        Ok(())
    }

    /// Writes the trailer; the caller flushes and finishes the stream.
    pub fn finish(mut self) -> io::Result<W> {
        self.end_folder()?;
        self.out.write_all(b"Z")?;
        self.out.write_all(&self.folders.to_le_bytes())?;
        self.out.write_all(&self.names.to_le_bytes())?;
        Ok(self.out)
    }
}

/// Reads a state in walk order: [`Reader::folder`] finds a folder's
/// names, skipping the folders before it.
pub struct Reader<R: Read> {
    inp: R,
    /// The next folder's key, read but not yet asked for.
    next: Option<(u32, Vec<u8>)>,
    /// Inside a folder whose names are still being read.
    in_names: bool,
    ended: bool,
    folders: u64,
    names: u64,
}

impl<R: Read> Reader<R> {
    pub fn new(mut inp: R) -> io::Result<(Header, Self)> {
        let mut magic = [0u8; MAGIC.len()];
        inp.read_exact(&mut magic)
            .map_err(|_| invalid("too short".into()))?;
        if magic != MAGIC {
            return Err(invalid("not a lifeboat chain state".into()));
        }
        let len = read_u32(&mut inp)?;
        if len > MAX_HEADER {
            return Err(invalid(format!("a header of {len} bytes")));
        }
        let mut json = vec![0u8; len as usize];
        inp.read_exact(&mut json)?;
        let header: Header =
            serde_json::from_slice(&json).map_err(|e| invalid(format!("header: {e}")))?;
        let mut r = Reader {
            inp,
            next: None,
            in_names: false,
            ended: false,
            folders: 0,
            names: 0,
        };
        r.read_folder_key()?;
        Ok((header, r))
    }

    /// Reads the next 'F' key, or the trailer.
    fn read_folder_key(&mut self) -> io::Result<()> {
        match read_u8(&mut self.inp)? {
            b'F' => {
                let root = read_u32(&mut self.inp)?;
                let len = read_u32(&mut self.inp)?;
                if len > 1 << 20 {
                    return Err(invalid(format!("a folder path of {len} bytes")));
                }
                let mut path = vec![0u8; len as usize];
                self.inp.read_exact(&mut path)?;
                if let Some(prev) = &self.next {
                    if walk_order((prev.0, prev.1.as_slice()), (root, &path)) != Ordering::Less {
                        return Err(invalid("folders out of walk order".into()));
                    }
                }
                self.folders += 1;
                self.next = Some((root, path));
            }
            b'Z' => {
                let folders = read_u64(&mut self.inp)?;
                let names = read_u64(&mut self.inp)?;
                if folders != self.folders || names != self.names {
                    return Err(invalid(format!(
                        "the trailer counts {folders} folders and {names} names, the file holds {} and {}",
                        self.folders, self.names
                    )));
                }
                self.next = None;
                self.ended = true;
            }
            b => return Err(invalid(format!("unexpected record {:?}", b as char))),
        }
        Ok(())
    }

    /// Moves to the folder `rel` of configured path `root`: `true` when the
    /// state has it (its names follow through [`Reader::next_name`]),
    /// `false` when it has not (a new folder). Folders must be asked for in
    /// walk order; those passed over are skipped.
    pub fn folder(&mut self, root: u32, rel: &[u8]) -> io::Result<bool> {
        self.skip_names()?;
        loop {
            let Some((r, p)) = &self.next else {
                return Ok(false);
            };
            match walk_order((*r, p.as_slice()), (root, rel)) {
                Ordering::Greater => return Ok(false),
                Ordering::Equal => {
                    self.in_names = true;
                    return Ok(true);
                }
                Ordering::Less => {
                    self.in_names = true;
                    self.skip_names()?;
                }
            }
        }
    }

    /// The next name of the current folder and its meta; `None` at its end.
    pub fn next_name(&mut self) -> io::Result<Option<(Vec<u8>, Meta)>> {
        if !self.in_names {
            return Ok(None);
        }
        match read_u8(&mut self.inp)? {
            b'C' => {
                let mut len = [0u8; 2];
                self.inp.read_exact(&mut len)?;
                let mut name = vec![0u8; u16::from_le_bytes(len) as usize];
                self.inp.read_exact(&mut name)?;
                let meta = Meta::read(&mut self.inp)?;
                self.names += 1;
                Ok(Some((name, meta)))
            }
            b'E' => {
                self.in_names = false;
                self.read_folder_key()?;
                Ok(None)
            }
            b => Err(invalid(format!("unexpected record {:?}", b as char))),
        }
    }

    fn skip_names(&mut self) -> io::Result<()> {
        while self.next_name()?.is_some() {}
        Ok(())
    }

    /// Reads to the end and checks the trailer: a state cut short is an
    /// error here, not a smaller volume.
    pub fn finish(mut self) -> io::Result<()> {
        while !self.ended {
            self.in_names = true;
            self.skip_names()?;
        }
        Ok(())
    }
}

fn read_u8(r: &mut impl Read) -> io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b).map_err(cut)?;
    Ok(b[0])
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(cut)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).map_err(cut)?;
    Ok(u64::from_le_bytes(b))
}

fn cut(e: io::Error) -> io::Error {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => invalid("cut short".into()),
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(n: u64) -> Meta {
        Meta {
            kind: if n.is_multiple_of(3) {
                Kind::Folder
            } else {
                Kind::File
            },
            size: n * 10,
            mtime: (1_700_000_000 + n as i64, 123_456_789),
            ctime: (1_700_000_100 + n as i64, 5),
            inode: 1000 + n,
            mode: 0o100644,
            uid: 1000,
            gid: 100,
        }
    }

    fn header() -> Header {
        Header {
            id: "20261201T020000Z-files".into(),
            chain: "20261130T020000Z-files".into(),
            paths: vec!["/data".into(), "/home".into()],
        }
    }

    /// Folders of two paths in walk order, with names.
    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        for (root, rel, names) in [
            (0u32, &b""[..], &["a", "a.b", "z"][..]),
            (0, b"a", &["x", "y"]),
            (0, b"a/x", &[]),
            (0, b"a.b", &["q"]),
            (1, b"", &["h"]),
        ] {
            w.folder(root, rel).unwrap();
            for (i, n) in names.iter().enumerate() {
                w.name(n.as_bytes(), &meta(i as u64)).unwrap();
            }
        }
        w.finish().unwrap()
    }

    #[test]
    fn the_walk_order_is_depth_first_by_name() {
        assert_eq!(walk_order((0, b"a/x"), (0, b"a.b")), Ordering::Less);
        assert_eq!(walk_order((0, b""), (0, b"a")), Ordering::Less);
        assert_eq!(walk_order((0, b"z"), (1, b"")), Ordering::Less);
        assert_eq!(walk_order((0, b"a/x"), (0, b"a/x")), Ordering::Equal);
    }

    #[test]
    fn folders_are_found_in_walk_order_and_the_others_skipped() {
        let bytes = sample();
        let (h, mut r) = Reader::new(bytes.as_slice()).unwrap();
        assert_eq!(h, header());
        assert!(r.folder(0, b"").unwrap());
        assert_eq!(r.next_name().unwrap().unwrap().0, b"a");
        // The rest of "" and all of "a", "a/x" are skipped.
        assert!(!r.folder(0, b"a/new").unwrap());
        assert!(r.folder(0, b"a.b").unwrap());
        let (name, m) = r.next_name().unwrap().unwrap();
        assert_eq!((name.as_slice(), m), (&b"q"[..], meta(0)));
        assert!(r.next_name().unwrap().is_none());
        assert!(r.folder(1, b"").unwrap());
        assert!(!r.folder(1, b"new").unwrap());
        r.finish().unwrap();
    }

    #[test]
    fn a_state_cut_short_or_altered_is_an_error() {
        let bytes = sample();
        for cut_at in [5, MAGIC.len() + 3, bytes.len() / 2, bytes.len() - 1] {
            let r = Reader::new(&bytes[..cut_at]).and_then(|(_, r)| r.finish());
            assert!(r.is_err(), "cut at {cut_at}");
        }
        // Folders out of order (a writer bug or a hostile store).
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        w.folder(0, b"b").unwrap();
        w.folder(0, b"a").unwrap();
        let bytes = w.finish().unwrap();
        let e = Reader::new(bytes.as_slice())
            .and_then(|(_, r)| r.finish())
            .unwrap_err();
        assert!(e.to_string().contains("out of walk order"), "{e}");
    }

    /// A [`Meta`] from std's `lstat`.
    fn meta_of(md: &std::fs::Metadata) -> Option<Meta> {
        use std::os::unix::fs::MetadataExt;
        Meta::from_fields(Fields {
            mode: md.mode(),
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
            inode: md.ino(),
            uid: md.uid(),
            gid: md.gid(),
        })
    }

    #[test]
    fn meta_of_a_real_file_and_its_changes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "one").unwrap();
        let a = meta_of(&std::fs::symlink_metadata(&f).unwrap()).unwrap();
        assert_eq!((a.kind, a.size), (Kind::File, 3));
        // Same size, mtime put back: the ctime still moves.
        let before =
            filetime::FileTime::from_last_modification_time(&std::fs::metadata(&f).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, "two").unwrap();
        filetime::set_file_mtime(&f, before).unwrap();
        let b = meta_of(&std::fs::symlink_metadata(&f).unwrap()).unwrap();
        assert_eq!((a.size, a.mtime), (b.size, b.mtime));
        assert_ne!(a, b, "ctime tells the change");
        let d = meta_of(&std::fs::symlink_metadata(dir.path()).unwrap()).unwrap();
        assert_eq!((d.kind, d.size), (Kind::Folder, 0));
    }
}
