//! A folder's names in sorted order, in bounded memory however many names
//! the folder holds.
//!
//! The walker lists every folder whole and sorts the names, so an archive
//! of the same tree is the same archive (and restores, diffs and dedup
//! tools see entries in a stable order). Kept as one `OsString` each, a
//! folder of a million names took ~50 MiB. Here names are packed into one
//! byte arena (each ends with a NUL, which no name contains), with a `u32`
//! offset per name, and sorted as offsets. When the arena passes its budget,
//! the sorted names go to an unlinked file in `TMPDIR` as one sorted run and
//! the arena starts again; the runs and the last arena are merged while the
//! walker takes the names, each run read through a small buffer. So a folder
//! costs at most its budget plus [`MERGE_MEMORY`], whatever its size.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Names the walker holds in memory at once, over all the folders it is in
/// (arena bytes plus 4 bytes per name). A folder that does not fit in what
/// is left is sorted in runs through `TMPDIR`. ~400,000 names of 15 bytes.
pub const LISTING_MEMORY: usize = 8 * 1024 * 1024;
/// The least a folder may hold in memory before it spills, when folders
/// above it in the walk took the rest of [`LISTING_MEMORY`].
pub const MIN_LISTING_MEMORY: usize = 256 * 1024;
/// Read buffers of one folder's merge, over all its runs ...
pub const MERGE_MEMORY: usize = 1024 * 1024;
/// ... each between these sizes.
const RUN_BUFFER_MAX: usize = 64 * 1024;
const RUN_BUFFER_MIN: usize = 4 * 1024;

/// Names packed into one buffer, each followed by a NUL.
#[derive(Default)]
struct Arena {
    bytes: Vec<u8>,
    starts: Vec<u32>,
}

impl Arena {
    fn memory(&self) -> usize {
        self.bytes.capacity() + self.starts.capacity() * 4
    }

    fn used(&self) -> usize {
        self.bytes.len() + self.starts.len() * 4
    }

    fn push(&mut self, name: &[u8]) -> io::Result<()> {
        let start = u32::try_from(self.bytes.len())
            .ok()
            .filter(|s| s.checked_add(name.len() as u32 + 1).is_some())
            .ok_or_else(|| io::Error::other("more than 4 GiB of names to sort in memory"))?;
        self.bytes.extend_from_slice(name);
        self.bytes.push(0);
        self.starts.push(start);
        Ok(())
    }

    fn sort(&mut self) {
        let bytes = &self.bytes;
        self.starts
            .sort_unstable_by(|&a, &b| cmp_nul(&bytes[a as usize..], &bytes[b as usize..]));
    }

    /// The name at `starts[i]`, without its NUL.
    fn name(&self, i: usize) -> &[u8] {
        let s = self.starts[i] as usize;
        let len = self.bytes[s..]
            .iter()
            .position(|&b| b == 0)
            .expect("every name ends with a NUL");
        &self.bytes[s..s + len]
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.starts.clear();
    }
}

/// Compares two NUL-terminated names as `OsStr`s compare (byte by byte, a
/// prefix first): NUL sorts below every byte a name can hold.
fn cmp_nul(a: &[u8], b: &[u8]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
        if *x == 0 {
            return Ordering::Equal;
        }
    }
    Ordering::Equal
}

/// Collects one folder's names; [`Sorter::finish`] gives them sorted.
pub struct Sorter<'a> {
    arena: Arena,
    /// Arena bytes (plus offsets) that make a run.
    budget: usize,
    spool_dir: &'a Path,
    spill: Option<Spill>,
    /// Spilling failed once (no usable `TMPDIR`): the rest stays in memory.
    in_memory: bool,
}

/// The sorted runs written so far: `(offset, length)` in `file`.
struct Spill {
    file: File,
    runs: Vec<(u64, u64)>,
    end: u64,
}

impl<'a> Sorter<'a> {
    /// `budget`: bytes of names to hold before a run goes to `spool_dir`.
    pub fn new(budget: usize, spool_dir: &'a Path) -> Self {
        Sorter {
            arena: Arena::default(),
            budget,
            spool_dir,
            spill: None,
            in_memory: false,
        }
    }

    pub fn push(&mut self, name: &[u8]) -> io::Result<()> {
        if !self.in_memory && self.arena.used() + name.len() + 5 > self.budget {
            if let Err(e) = self.spill_run() {
                tracing::warn!(
                    dir = %self.spool_dir.display(),
                    "cannot sort a large folder's names in TMPDIR ({e}); sorting them in memory"
                );
                self.in_memory = true;
            }
        }
        self.arena.push(name)
    }

    /// Writes the arena, sorted, as one more run, and empties it.
    fn spill_run(&mut self) -> io::Result<()> {
        if self.arena.starts.is_empty() {
            return Ok(());
        }
        if self.spill.is_none() {
            self.spill = Some(Spill {
                file: tempfile::tempfile_in(self.spool_dir)?,
                runs: Vec::new(),
                end: 0,
            });
        }
        let spill = self.spill.as_mut().expect("just made");
        self.arena.sort();
        let mut out = io::BufWriter::with_capacity(RUN_BUFFER_MAX, &spill.file);
        let mut len = 0u64;
        for i in 0..self.arena.starts.len() {
            let name = self.arena.name(i);
            out.write_all(name)?;
            out.write_all(&[0])?;
            len += name.len() as u64 + 1;
        }
        out.flush()?;
        drop(out);
        spill.runs.push((spill.end, len));
        spill.end += len;
        self.arena.clear();
        Ok(())
    }

    /// The names, sorted; what is left in memory is merged with the runs.
    pub fn finish(mut self) -> Listing {
        self.arena.sort();
        let memory = Memory {
            arena: self.arena,
            next: 0,
        };
        let Some(spill) = self.spill else {
            return Listing::Memory(memory);
        };
        let buffer = (MERGE_MEMORY / (spill.runs.len() + 1)).clamp(RUN_BUFFER_MIN, RUN_BUFFER_MAX);
        let file = std::sync::Arc::new(spill.file);
        let mut sources: Vec<Source> = spill
            .runs
            .into_iter()
            .map(|(off, len)| {
                Source::Run(Run {
                    file: file.clone(),
                    start: off,
                    off,
                    end: off + len,
                    buf: Vec::with_capacity(buffer),
                    lo: 0,
                })
            })
            .collect();
        sources.push(Source::Memory(memory));
        Listing::Merge(Merge {
            sources,
            heap: BinaryHeap::new(),
            started: false,
        })
    }
}

/// One folder's names in order: `next` until `None`.
pub enum Listing {
    Memory(Memory),
    Merge(Merge),
}

impl Listing {
    pub fn empty() -> Listing {
        Listing::Memory(Memory {
            arena: Arena::default(),
            next: 0,
        })
    }

    pub fn next_name(&mut self) -> io::Result<Option<OsString>> {
        match self {
            Listing::Memory(m) => Ok(m.next_name().map(|n| OsString::from_vec(n.to_vec()))),
            Listing::Merge(m) => m.next_name(),
        }
    }

    /// Starts again from the first name: an incremental link reads a
    /// folder's names twice (its folder list first, then its content).
    pub fn rewind(&mut self) {
        match self {
            Listing::Memory(m) => m.next = 0,
            Listing::Merge(m) => {
                for s in &mut m.sources {
                    match s {
                        Source::Memory(mem) => mem.next = 0,
                        Source::Run(r) => {
                            r.off = r.start;
                            r.buf.clear();
                            r.lo = 0;
                        }
                    }
                }
                m.heap.clear();
                m.started = false;
            }
        }
    }

    /// Bytes it holds, for the walker's budget.
    pub fn memory(&self) -> usize {
        match self {
            Listing::Memory(m) => m.arena.memory(),
            Listing::Merge(m) => m
                .sources
                .iter()
                .map(|s| match s {
                    Source::Memory(m) => m.arena.memory(),
                    Source::Run(r) => r.buf.capacity(),
                })
                .sum(),
        }
    }
}

pub struct Memory {
    arena: Arena,
    next: usize,
}

impl Memory {
    fn next_name(&mut self) -> Option<&[u8]> {
        if self.next == self.arena.starts.len() {
            return None;
        }
        self.next += 1;
        Some(self.arena.name(self.next - 1))
    }
}

/// A sorted run in the spill file, read through `buf[lo..]`.
struct Run {
    file: std::sync::Arc<File>,
    /// Where the run begins (for [`Listing::rewind`]).
    start: u64,
    /// Next offset to read, and the run's end.
    off: u64,
    end: u64,
    buf: Vec<u8>,
    lo: usize,
}

impl Run {
    fn next_name(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(n) = self.buf[self.lo..].iter().position(|&b| b == 0) {
                let name = self.buf[self.lo..self.lo + n].to_vec();
                self.lo += n + 1;
                return Ok(Some(name));
            }
            if self.off == self.end {
                if self.lo == self.buf.len() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a sorted run of names ends inside a name",
                ));
            }
            // Keep the start of a name cut by the buffer's end; a name longer
            // than the buffer (not on Linux, where names are ≤ 255 bytes)
            // grows it.
            self.buf.drain(..self.lo);
            self.lo = 0;
            let have = self.buf.len();
            if have == self.buf.capacity() {
                self.buf.reserve(have);
            }
            let want = ((self.buf.capacity() - have) as u64).min(self.end - self.off) as usize;
            self.buf.resize(have + want, 0);
            let n = self.file.read_at(&mut self.buf[have..], self.off)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file of sorted names is shorter than written",
                ));
            }
            self.buf.truncate(have + n);
            self.off += n as u64;
        }
    }
}

enum Source {
    Run(Run),
    Memory(Memory),
}

impl Source {
    fn next_name(&mut self) -> io::Result<Option<Vec<u8>>> {
        match self {
            Source::Run(r) => r.next_name(),
            Source::Memory(m) => Ok(m.next_name().map(<[u8]>::to_vec)),
        }
    }
}

/// The smallest next name of every source.
pub struct Merge {
    sources: Vec<Source>,
    /// `(name, source)`, smallest name on top.
    heap: BinaryHeap<std::cmp::Reverse<(Vec<u8>, usize)>>,
    started: bool,
}

impl Merge {
    fn next_name(&mut self) -> io::Result<Option<OsString>> {
        if !self.started {
            self.started = true;
            for i in 0..self.sources.len() {
                if let Some(name) = self.sources[i].next_name()? {
                    self.heap.push(std::cmp::Reverse((name, i)));
                }
            }
        }
        let Some(std::cmp::Reverse((name, i))) = self.heap.pop() else {
            return Ok(None);
        };
        if let Some(next) = self.sources[i].next_name()? {
            self.heap.push(std::cmp::Reverse((next, i)));
        }
        Ok(Some(OsString::from_vec(name)))
    }
}

/// Where runs are spilled: `TMPDIR`, else `/tmp` (as the dump sources spool).
pub fn spool_dir() -> PathBuf {
    std::env::temp_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(count: usize, seed: u64) -> Vec<Vec<u8>> {
        let mut x = seed | 1;
        (0..count)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Prefixes of each other, bytes above 0x7f, one byte long.
                match i % 4 {
                    0 => format!("f{}", x % 100_000).into_bytes(),
                    1 => format!("f{}-{i}", x % 1000).into_bytes(),
                    2 => vec![b'a' + (x % 26) as u8, 0xe9, (i % 250 + 1) as u8],
                    _ => format!("{i}").into_bytes(),
                }
            })
            .collect()
    }

    fn sorted(names: &[Vec<u8>], budget: usize) -> (Vec<Vec<u8>>, bool) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sorter::new(budget, dir.path());
        for n in names {
            s.push(n).unwrap();
        }
        let mut l = s.finish();
        let spilled = matches!(l, Listing::Merge(_));
        let mut out = Vec::new();
        // Halfway, then again from the start after a rewind: the same names.
        for _ in 0..names.len() / 2 {
            l.next_name().unwrap();
        }
        l.rewind();
        while let Some(n) = l.next_name().unwrap() {
            out.push(n.into_vec());
        }
        let mut again = Vec::new();
        l.rewind();
        while let Some(n) = l.next_name().unwrap() {
            again.push(n.into_vec());
        }
        assert!(again == out, "a rewound listing gives the same names");
        (out, spilled)
    }

    #[test]
    fn names_come_out_in_byte_order_in_memory_and_through_runs() {
        let mut all = names(20_000, 7);
        all.sort();
        all.dedup();
        let mut shuffled = all.clone();
        shuffled.reverse();
        shuffled.rotate_left(777);
        for budget in [usize::MAX / 2, 1 << 20, 50_000, 300] {
            let (out, spilled) = sorted(&shuffled, budget);
            assert_eq!(out.len(), all.len(), "budget {budget}");
            assert!(out == all, "budget {budget}: not in order");
            assert_eq!(spilled, budget < 1 << 20, "budget {budget}");
        }
        assert_eq!(sorted(&[], 16).0, Vec::<Vec<u8>>::new());
    }

    #[test]
    fn a_name_longer_than_a_run_buffer_is_read_whole() {
        let long = vec![b'x'; RUN_BUFFER_MAX * 3];
        let mut v = names(3000, 3);
        v.push(long.clone());
        v.sort();
        v.dedup();
        let (out, spilled) = sorted(&v, 10_000);
        assert!(spilled);
        assert!(out == v);
    }

    #[test]
    fn nul_terminated_names_compare_as_os_strings() {
        let c = |a: &[u8], b: &[u8]| {
            let (mut x, mut y) = (a.to_vec(), b.to_vec());
            x.push(0);
            y.push(0);
            cmp_nul(&x, &y)
        };
        assert_eq!(c(b"a", b"ab"), Ordering::Less);
        assert_eq!(c(b"ab", b"a"), Ordering::Greater);
        assert_eq!(c(b"ab", b"ab"), Ordering::Equal);
        assert_eq!(c(b"B", b"a"), Ordering::Less);
        assert_eq!(c(b"\xff", b"a"), Ordering::Greater);
    }
}
