//! The files source's part of an incremental link (docs/ARCHITECTURE.md,
//! "Incremental chains"): for each folder, before its content, every name
//! is compared with the chain's state; the folder's list (its `D` entry's
//! data) and its part of the new state are written, and the walk learns
//! which names to store. The walk then reads the folder's names a second
//! time, by the same sorted listing.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::listing::Listing;
use super::stat_at::{self, Stat};
use crate::chain::dumpdir::{self, Flag};
use crate::chain::state::{self, Kind};
use crate::{Error, Result};

/// The chain's state this link compares with (none for a chain's first
/// link, which stores everything) and the state it leaves for the next.
pub struct Increment {
    pub old: Option<state::Reader<Box<dyn Read + Send>>>,
    pub new: state::Writer<Box<dyn Write + Send>>,
}

/// What the walk does with a name, by its place in the folder's listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Todo {
    /// Left out: excluded, gone, or stored by an earlier link.
    Skip,
    /// Walked as in a full backup (a folder, or a new or changed file).
    Store,
    /// Stored earlier, but one of several names of a file: the walk must
    /// still meet it, so that a later name links to it.
    MeetLink,
}

/// A folder's list and what to do with each of its names.
pub struct Folder {
    pub list_len: u64,
    pub list: Box<dyn Read + Send>,
    pub todo: Vec<Todo>,
}

impl Increment {
    /// Compares the names of `dir` (folder `rel` of configured path `root`)
    /// with the state, one pass over `listing`, which is rewound for the
    /// walk. `leave_out` says what the walk would leave out anyway.
    pub fn folder(
        &mut self,
        root: u32,
        rel: &[u8],
        dir: &Path,
        listing: &mut Listing,
        leave_out: &mut dyn FnMut(&Path, &OsStr, &Stat) -> bool,
        spool_dir: &Path,
    ) -> Result<Folder> {
        let state_err = |e: io::Error| Error::io("reading the chain's state".to_string(), e);
        let known = match &mut self.old {
            Some(old) => old.folder(root, rel).map_err(state_err)?,
            None => false,
        };
        self.new
            .folder(root, rel)
            .map_err(|e| Error::io("writing the chain's state".to_string(), e))?;
        let mut before = match (&mut self.old, known) {
            (Some(old), true) => old.next_name().map_err(state_err)?,
            _ => None,
        };
        let mut list = dumpdir::Builder::new(spool_dir);
        let mut todo = Vec::new();
        let listing_err = |e: io::Error| {
            Error::io(
                format!("sorting the names in {} (spilled to TMPDIR)", dir.display()),
                e,
            )
        };
        let mut folder = stat_at::Folder::open(dir);
        while let Some(name) = listing.next_name().map_err(listing_err)? {
            let path = dir.join(&name);
            let md = match folder.lstat(&name) {
                Ok(md) => md,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    todo.push(Todo::Skip);
                    continue;
                }
                Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
            };
            if leave_out(&path, &name, &md) {
                todo.push(Todo::Skip);
                continue;
            }
            // A socket, FIFO or device: the walk says it skips it.
            let Some(meta) = md.meta() else {
                todo.push(Todo::Store);
                continue;
            };
            let name = name.as_bytes();
            while let (Some((seen, _)), Some(old)) = (&before, &mut self.old) {
                if seen.as_slice() >= name {
                    break;
                }
                before = old.next_name().map_err(state_err)?;
            }
            let unchanged = matches!(&before, Some((seen, m)) if seen == name && *m == meta);
            let (flag, what) = match meta.kind {
                Kind::Folder => (Flag::Folder, Todo::Store),
                _ if !unchanged => (Flag::Stored, Todo::Store),
                Kind::File if md.nlink() > 1 => (Flag::Earlier, Todo::MeetLink),
                _ => (Flag::Earlier, Todo::Skip),
            };
            list.push(flag, name)
                .map_err(|e| Error::io("spooling a folder list in TMPDIR".to_string(), e))?;
            self.new
                .name(name, &meta)
                .map_err(|e| Error::io("writing the chain's state".to_string(), e))?;
            todo.push(what);
        }
        listing.rewind();
        let (list_len, list) = list
            .finish()
            .map_err(|e| Error::io("spooling a folder list in TMPDIR".to_string(), e))?;
        Ok(Folder {
            list_len,
            list,
            todo,
        })
    }
}

/// The path of `dir` inside the configured path `root`, as the state
/// stores it ("" for the path itself).
pub fn rel_bytes<'p>(root: &Path, dir: &'p Path) -> &'p [u8] {
    dir.strip_prefix(root)
        .map(|r| r.as_os_str().as_bytes())
        .unwrap_or_default()
}
