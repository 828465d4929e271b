//! WAL records read out of segment files, for what a restore to a point in
//! time must know before it asks the server for one (docs/ARCHITECTURE.md,
//! "Continuous WAL", point in time): whether the staged WAL holds a
//! transaction that ended after the target.
//!
//! PostgreSQL stops such a recovery before the first commit or abort
//! record whose time is after `recovery_target_time`; when the WAL ends
//! before one, PostgreSQL 14 and later refuse to start ("recovery ended
//! before configured recovery stop point was reached"). So the restore
//! looks for that record first, and without it recovers to the end, which
//! is then the same state.
//!
//! The format (PostgreSQL's `xlog_internal.h`, `xlogrecord.h`, stable from
//! 14 to 18 in what is read here), all in the server's byte order:
//! - pages of `xlp_xlog_blcksz` bytes (8 KiB), each starting with a header:
//!   `xlp_magic` u16, `xlp_info` u16, `xlp_tli` u32, `xlp_pageaddr` u64,
//!   `xlp_rem_len` u32 (24 bytes once aligned), and on a segment's first
//!   page also `xlp_sysid` u64, `xlp_seg_size` u32, `xlp_xlog_blcksz` u32
//!   (40 bytes);
//! - records, each starting at an 8-byte boundary: `xl_tot_len` u32,
//!   `xl_xid` u32, `xl_prev` u64, `xl_info` u8, `xl_rmid` u8, 2 bytes of
//!   padding, `xl_crc` u32, then block and data headers, then the data; a
//!   record runs on across page headers, and a page whose first bytes
//!   continue a record says so (`XLP_FIRST_IS_CONTRECORD`, `xlp_rem_len`);
//! - a transaction's commit or abort record (resource manager 1, opcodes
//!   0x00, 0x20, 0x30, 0x40) has main data that begins with its time,
//!   microseconds since 2000-01-01 UTC as an i64.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use chrono::{DateTime, Utc};

use super::position::{Lsn, Segment, SegmentSize};
use crate::error::IoContext;
use crate::{Error, Result};

const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
const SHORT_HEADER: u64 = 24;
const LONG_HEADER: u64 = 40;
const RECORD_HEADER: usize = 24;
const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_RESTORE_POINT: u8 = 0x70;
const RM_LOGICALMSG_ID: u8 = 21;
const XLOG_XACT_OPMASK: u8 = 0x70;
/// Commit, abort, commit prepared, abort prepared.
const XACT_ENDS: [u8; 4] = [0x00, 0x20, 0x30, 0x40];
/// How much of a transaction end's record is read to find its main data:
/// the record header, then at most an origin, a top-level transaction and
/// the main data's own header.
const HEADERS_READ: u64 = 16;
/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_UNIX: i64 = 946_684_800;

/// A transaction's end as its record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XactEnd {
    /// Where its record starts.
    pub lsn: Lsn,
    pub time: DateTime<Utc>,
}

/// The first commit or abort record after `from` (a segment's start) whose
/// time is after `after`, among the records that end by `to`, in the
/// segment files of `timeline` in `pg_wal`. None when there is none: the
/// WAL ends first.
pub fn first_end_after(
    pg_wal: &Path,
    timeline: u32,
    size: SegmentSize,
    from: Lsn,
    to: Lsn,
    after: DateTime<Utc>,
) -> Result<Option<XactEnd>> {
    let mut wal = Wal::new(pg_wal, timeline, size, from, to);
    while let Some(rec) = wal.next_record()? {
        if let Some(time) = rec.time {
            if time > after {
                return Ok(Some(XactEnd { lsn: rec.lsn, time }));
            }
        }
    }
    Ok(None)
}

/// Whether a record after `after` (a record that ends past it, so that
/// the WAL up to `after` does not hold it whole), among those that end by
/// `to`, is one a restore must not lose: any record of a transaction's
/// (its end, a prepare), a logical message or a named restore point. WAL
/// without one (checkpoints, standby snapshots, vacuum's pruning, hint
/// bits) changes nothing a client could see: every change a client makes
/// ends in a commit. `from` is the segment's start that holds `after`.
///
/// A record that cannot be read, WAL that cannot be read up to `to`, and a
/// record continued from the segment before (whose header is not read)
/// that ends after `after` count as ones that must not be lost.
pub fn changes_after(
    pg_wal: &Path,
    timeline: u32,
    size: SegmentSize,
    from: Lsn,
    to: Lsn,
    after: Lsn,
) -> Result<bool> {
    let mut wal = Wal::new(pg_wal, timeline, size, from, to);
    while let Some(rec) = wal.next_record()? {
        if rec.end > after && rec.matters() {
            return Ok(true);
        }
    }
    // A record begun in the segment before, whose kind cannot be told from
    // here, counts when it ends after `after`; so does WAL the scan could
    // not read to `to` (a missing file, a page that is not the one it
    // should be, zeros where flushed WAL should be): only a last record
    // not yet flushed whole may end the scan early.
    let continued = wal.continued_end.is_some_and(|end| end > after);
    Ok(continued || wal.pos < to)
}

/// A transaction end's time, or why its record does not give one.
type TimeRead = std::result::Result<DateTime<Utc>, String>;

/// One record, as much as the scan keeps of it.
struct Record {
    lsn: Lsn,
    /// Where the next record may start (the byte after this one).
    end: Lsn,
    rmid: u8,
    info: u8,
    /// A transaction end's time.
    time: Option<DateTime<Utc>>,
}

impl Record {
    /// See [`changes_after`].
    fn matters(&self) -> bool {
        match self.rmid {
            RM_XACT_ID | RM_LOGICALMSG_ID => true,
            RM_XLOG_ID => self.info & 0xF0 == XLOG_RESTORE_POINT,
            _ => false,
        }
    }
}

/// How reading on across a page boundary went.
enum Read {
    Done,
    /// The WAL ends (or `to` comes) first.
    End,
    /// The next page does not continue the record: the server abandoned
    /// it (a crash inside it) and wrote on after the page header.
    Abandoned,
}

/// A reader of the WAL stream of one timeline from `pg_wal`'s files, one
/// page in memory at a time.
struct Wal<'a> {
    dir: &'a Path,
    timeline: u32,
    size: SegmentSize,
    to: Lsn,
    /// The next byte to read.
    pos: Lsn,
    page: Vec<u8>,
    /// Where `page` starts in the WAL, once one is loaded.
    page_at: Option<Lsn>,
    page_size: u64,
    magic: Option<u16>,
    file: Option<(u64, File)>,
    /// Whether the first page was read (`from` is a page's start, not a
    /// record's).
    started: bool,
    /// Where a record begun before `from` ends, when the first page
    /// continues one (its kind is not known: its header is before `from`).
    continued_end: Option<Lsn>,
}

/// A page header as read.
struct PageHeader {
    info: u16,
    rem_len: u32,
    len: u64,
}

impl<'a> Wal<'a> {
    fn new(dir: &'a Path, timeline: u32, size: SegmentSize, from: Lsn, to: Lsn) -> Wal<'a> {
        Wal {
            dir,
            timeline,
            size,
            to,
            pos: from,
            page: Vec::new(),
            page_at: None,
            page_size: 8192,
            magic: None,
            file: None,
            started: false,
            continued_end: None,
        }
    }

    fn corrupt(&self, at: Lsn, why: impl std::fmt::Display) -> Error {
        Error::Source(format!(
            "the staged WAL at {at} (timeline {}) cannot be read: {why}",
            self.timeline
        ))
    }

    /// Loads the page starting at `at` and reads its header. None when the
    /// page is not that page of this timeline's WAL (a recycled file's old
    /// bytes): the WAL ends before it.
    fn load(&mut self, at: Lsn) -> Result<Option<PageHeader>> {
        let segno = self.size.segment_of(at);
        if self.file.as_ref().map(|(s, _)| *s) != Some(segno) {
            let name = Segment {
                timeline: self.timeline,
                segno,
            }
            .file_name(self.size);
            let path = self.dir.join(name);
            match File::open(&path) {
                Ok(f) => self.file = Some((segno, f)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e).ctx("opening the WAL segment", &path),
            }
        }
        let offset = self.size.offset_in(at);
        if offset == 0 {
            // A segment's first page says how long pages are.
            let mut long = [0u8; LONG_HEADER as usize];
            let file = &self.file.as_ref().expect("opened above").1;
            if file.read_exact_at(&mut long, 0).is_err() {
                return Ok(None);
            }
            let blcksz = u32::from_ne_bytes(long[36..40].try_into().expect("4 bytes"));
            let blcksz = u64::from(blcksz);
            if !(blcksz.is_power_of_two() && (1024..=65536).contains(&blcksz)) {
                return Ok(None);
            }
            self.page_size = blcksz;
        }
        self.page.resize(self.page_size as usize, 0);
        let file = &self.file.as_ref().expect("opened above").1;
        if file.read_exact_at(&mut self.page, offset).is_err() {
            return Ok(None);
        }
        let p = &self.page;
        let magic = u16::from_ne_bytes([p[0], p[1]]);
        let info = u16::from_ne_bytes([p[2], p[3]]);
        let tli = u32::from_ne_bytes(p[4..8].try_into().expect("4 bytes"));
        let pageaddr = u64::from_ne_bytes(p[8..16].try_into().expect("8 bytes"));
        let rem_len = u32::from_ne_bytes(p[16..20].try_into().expect("4 bytes"));
        if pageaddr != at.0 || magic == 0 || self.magic.is_some_and(|m| m != magic) {
            return Ok(None);
        }
        if tli > self.timeline {
            return Ok(None);
        }
        self.magic = Some(magic);
        self.page_at = Some(at);
        let len = if info & XLP_LONG_HEADER != 0 {
            LONG_HEADER
        } else {
            SHORT_HEADER
        };
        Ok(Some(PageHeader { info, rem_len, len }))
    }

    /// Reads `n` bytes of a record from `pos` on, across page headers,
    /// into `out` (or past them, when `out` is None). `owed` is how many
    /// bytes the record still has from `pos` on, when known: a page that
    /// continues it must say so (`xlp_rem_len`), as PostgreSQL checks.
    fn read(
        &mut self,
        mut n: u64,
        mut out: Option<&mut Vec<u8>>,
        owed: Option<u64>,
    ) -> Result<Read> {
        let mut owed = owed;
        while n > 0 {
            if self.pos >= self.to {
                return Ok(Read::End);
            }
            if self.pos.0.is_multiple_of(self.page_size) {
                let Some(h) = self.load(self.pos)? else {
                    return Ok(Read::End);
                };
                self.pos = Lsn(self.pos.0 + h.len);
                if h.info & XLP_FIRST_IS_CONTRECORD == 0 {
                    // PostgreSQL 15 and later mark the page where they
                    // wrote on after a record a crash cut short; without
                    // that mark the WAL ends here.
                    return Ok(if h.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 {
                        Read::Abandoned
                    } else {
                        Read::End
                    });
                }
                if owed.is_some_and(|o| o != u64::from(h.rem_len)) {
                    return Ok(Read::End);
                }
                continue;
            }
            let page_at = self.page_at.map_or(0, |l| l.0);
            let in_page = self.pos.0 - page_at;
            let take = n
                .min(self.page_size - in_page)
                .min(self.to.0.saturating_sub(self.pos.0));
            if take == 0 {
                return Ok(Read::End);
            }
            if let Some(out) = out.as_mut() {
                let start = in_page as usize;
                out.extend_from_slice(&self.page[start..start + take as usize]);
            }
            self.pos = Lsn(self.pos.0 + take);
            n -= take;
            owed = owed.map(|o| o.saturating_sub(take));
        }
        Ok(Read::Done)
    }

    /// Moves to where the next record starts: the next 8-byte boundary,
    /// past a page header there, and past the end of a record that the
    /// page continues (on the first page read: one that began before
    /// `from`). False once the WAL ends.
    fn seek_record(&mut self) -> Result<bool> {
        loop {
            if self.started {
                self.pos = Lsn(self.pos.0.div_ceil(8) * 8);
            }
            if self.pos >= self.to {
                return Ok(false);
            }
            if !self.pos.0.is_multiple_of(self.page_size) {
                return Ok(true);
            }
            let Some(h) = self.load(self.pos)? else {
                return Ok(false);
            };
            self.pos = Lsn(self.pos.0 + h.len);
            let first = !self.started;
            self.started = true;
            if h.info & XLP_FIRST_IS_CONTRECORD == 0 {
                return Ok(self.pos < self.to);
            }
            match self.read(u64::from(h.rem_len), None, Some(u64::from(h.rem_len)))? {
                Read::Done => {
                    if first {
                        self.continued_end = Some(self.pos);
                    }
                    continue;
                }
                Read::End => return Ok(false),
                // A record starts right after the page header passed.
                Read::Abandoned => return Ok(self.pos < self.to),
            }
        }
    }

    /// Reads the rest of a transaction end's record (`head`: its first
    /// bytes) and its time, keeping only its headers and the 8 bytes of
    /// time in memory however long it is. The time is an error when the
    /// record does not have the shape of a transaction end.
    fn read_xact_time(
        &mut self,
        mut rec: Vec<u8>,
        tot_len: u64,
    ) -> Result<(Read, Option<TimeRead>)> {
        let mut at = rec.len() as u64;
        let first = (tot_len - at).min(HEADERS_READ);
        let r = self.read(first, Some(&mut rec), Some(tot_len - at))?;
        at += first;
        if !matches!(r, Read::Done) {
            return Ok((r, None));
        }
        let main_at = match main_data_at(&rec, tot_len) {
            Ok(m) => m,
            Err(why) => {
                return Ok((
                    self.read(tot_len - at, None, Some(tot_len - at))?,
                    Some(Err(why)),
                ))
            }
        };
        let mut time = Vec::with_capacity(8);
        if main_at < at {
            let end = (main_at + 8).min(at) as usize;
            time.extend_from_slice(&rec[main_at as usize..end]);
        } else {
            let r = self.read(main_at - at, None, Some(tot_len - at))?;
            at = main_at;
            if !matches!(r, Read::Done) {
                return Ok((r, None));
            }
        }
        let need = 8 - time.len() as u64;
        let r = self.read(need, Some(&mut time), Some(tot_len - at))?;
        at += need;
        if !matches!(r, Read::Done) {
            return Ok((r, None));
        }
        let r = self.read(tot_len - at, None, Some(tot_len - at))?;
        let bytes: [u8; 8] = time.try_into().expect("8 bytes read");
        Ok((r, Some(pg_time(bytes))))
    }

    /// The next record that ends by `to`; None once the WAL ends.
    fn next_record(&mut self) -> Result<Option<Record>> {
        loop {
            if !self.seek_record()? {
                return Ok(None);
            }
            let lsn = self.pos;
            let mut head = Vec::with_capacity(RECORD_HEADER);
            match self.read(RECORD_HEADER as u64, Some(&mut head), None)? {
                Read::Done => {}
                Read::End => return Ok(None),
                Read::Abandoned => continue,
            }
            let tot_len = u32::from_ne_bytes(head[0..4].try_into().expect("4 bytes"));
            let (info, rmid) = (head[16], head[17]);
            if tot_len == 0 {
                // Zeros: nothing was written here (yet).
                return Ok(None);
            }
            if (tot_len as usize) < RECORD_HEADER {
                return Err(self.corrupt(lsn, format!("a record of {tot_len} bytes")));
            }
            let rest = u64::from(tot_len) - RECORD_HEADER as u64;
            let is_end = rmid == RM_XACT_ID && XACT_ENDS.contains(&(info & XLOG_XACT_OPMASK));
            let mut time = None;
            let read = if is_end {
                let (read, t) = self.read_xact_time(head, u64::from(tot_len))?;
                time = t
                    .map(|t| t.map_err(|why| self.corrupt(lsn, why)))
                    .transpose()?;
                read
            } else {
                self.read(rest, None, Some(rest))?
            };
            match read {
                Read::Done => {}
                Read::End => return Ok(None),
                Read::Abandoned => continue,
            }
            let end = self.pos;
            if rmid == RM_XLOG_ID && info & 0xF0 == XLOG_SWITCH {
                // The rest of the segment is unused.
                let next = self.size.segment_of(self.pos) + 1;
                match self.size.start_of(next) {
                    Some(l) if !self.pos.0.is_multiple_of(self.size.bytes()) => self.pos = l,
                    _ => {}
                }
            }
            return Ok(Some(Record {
                lsn,
                end,
                rmid,
                info,
                time,
            }));
        }
    }
}

/// Where the main data starts in a record of `tot_len` bytes whose
/// beginning is `rec`: the main data is the record's last `main_len`
/// bytes. A transaction's end carries no block references, only the
/// origin and top-level transaction headers before the main data's.
fn main_data_at(rec: &[u8], tot_len: u64) -> std::result::Result<u64, String> {
    let mut i = RECORD_HEADER;
    let byte = |i: usize| rec.get(i).copied().ok_or("the record ends in its headers");
    let main_len = loop {
        match byte(i)? {
            255 => break usize::from(byte(i + 1)?),
            254 => {
                let b = rec
                    .get(i + 1..i + 5)
                    .ok_or("the record ends in its headers")?;
                break u32::from_ne_bytes(b.try_into().expect("4 bytes")) as usize;
            }
            253 => i += 3, // replication origin
            252 => i += 5, // top-level transaction id
            id => return Err(format!("a transaction end with block header {id}")),
        }
    };
    let main_len = main_len as u64;
    if main_len < 8 || main_len > tot_len - i as u64 {
        return Err(format!("a transaction end with {main_len} bytes of data"));
    }
    Ok(tot_len - main_len)
}

/// A transaction end's time from its first 8 bytes of main data,
/// microseconds since 2000-01-01 UTC.
fn pg_time(bytes: [u8; 8]) -> std::result::Result<DateTime<Utc>, String> {
    let micros = i64::from_ne_bytes(bytes);
    DateTime::from_timestamp(PG_EPOCH_UNIX, 0)
        .and_then(|epoch| epoch.checked_add_signed(chrono::Duration::microseconds(micros)))
        .ok_or_else(|| format!("a transaction end at {micros} µs after 2000, out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const PAGE: u64 = 8192;

    /// WAL as a server lays it out: records at 8-byte boundaries, a page
    /// header on every page, continuation flags; written into segment
    /// files of timeline 1 with 1 MiB segments.
    struct Writer {
        wal: Vec<u8>,
        starts: Vec<Lsn>,
    }

    impl Writer {
        fn new() -> Writer {
            Writer {
                wal: Vec::new(),
                starts: Vec::new(),
            }
        }

        fn header(&mut self, rem_len: u32) {
            self.header_flagged(rem_len, 0);
        }

        fn header_flagged(&mut self, rem_len: u32, flags: u16) {
            let at = self.wal.len() as u64;
            let long = at.is_multiple_of(MIB);
            let mut info = flags | if long { XLP_LONG_HEADER } else { 0 };
            if rem_len > 0 {
                info |= XLP_FIRST_IS_CONTRECORD;
            }
            self.wal.extend_from_slice(&0xD116u16.to_ne_bytes());
            self.wal.extend_from_slice(&info.to_ne_bytes());
            self.wal.extend_from_slice(&1u32.to_ne_bytes());
            self.wal.extend_from_slice(&at.to_ne_bytes());
            self.wal.extend_from_slice(&rem_len.to_ne_bytes());
            self.wal.extend_from_slice(&[0; 4]);
            if long {
                self.wal.extend_from_slice(&7u64.to_ne_bytes());
                self.wal.extend_from_slice(&(MIB as u32).to_ne_bytes());
                self.wal.extend_from_slice(&(PAGE as u32).to_ne_bytes());
            }
        }

        /// Appends bytes of a record, page headers as they fall due.
        fn put(&mut self, mut bytes: &[u8]) {
            while !bytes.is_empty() {
                if (self.wal.len() as u64).is_multiple_of(PAGE) {
                    self.header(bytes.len() as u32);
                }
                let room = (PAGE - self.wal.len() as u64 % PAGE) as usize;
                let n = room.min(bytes.len());
                self.wal.extend_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
            }
        }

        fn record(&mut self, rmid: u8, info: u8, blocks: &[u8], main: &[u8]) {
            while !self.wal.len().is_multiple_of(8) {
                self.wal.push(0);
            }
            if (self.wal.len() as u64).is_multiple_of(PAGE) {
                self.header(0);
            }
            self.starts.push(Lsn(self.wal.len() as u64));
            let mut headers = blocks.to_vec();
            if main.len() < 256 {
                headers.extend_from_slice(&[255, main.len() as u8]);
            } else {
                headers.push(254);
                headers.extend_from_slice(&(main.len() as u32).to_ne_bytes());
            }
            let tot = (RECORD_HEADER + headers.len() + main.len()) as u32;
            let mut rec = tot.to_ne_bytes().to_vec();
            rec.extend_from_slice(&[0; 12]);
            rec.extend_from_slice(&[info, rmid, 0, 0, 0, 0, 0, 0]);
            rec.extend_from_slice(&headers);
            rec.extend_from_slice(main);
            self.put(&rec);
        }

        fn commit(&mut self, secs_after_2000: i64, extra: usize) {
            let mut main = (secs_after_2000 * 1_000_000).to_ne_bytes().to_vec();
            main.extend(std::iter::repeat_n(0xAB, extra));
            self.record(RM_XACT_ID, 0x00, &[252, 1, 2, 3, 4], &main);
        }

        fn other(&mut self, len: usize) {
            self.record(10, 0x00, &[], &vec![0x5A; len]);
        }

        fn switch(&mut self) {
            self.record(RM_XLOG_ID, XLOG_SWITCH, &[], &[]);
            let next = (self.wal.len() as u64).div_ceil(MIB) * MIB;
            self.wal.resize(next as usize, 0);
        }

        fn write(&self, dir: &Path) {
            let size = SegmentSize::new(MIB).unwrap();
            for (i, chunk) in self.wal.chunks(MIB as usize).enumerate() {
                let mut seg = chunk.to_vec();
                seg.resize(MIB as usize, 0);
                let name = Segment {
                    timeline: 1,
                    segno: i as u64,
                }
                .file_name(size);
                std::fs::write(dir.join(name), seg).unwrap();
            }
        }
    }

    fn at(secs_after_2000: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(PG_EPOCH_UNIX + secs_after_2000, 0).unwrap()
    }

    fn scan(w: &Writer, from: u64, to: u64, after: i64) -> Option<XactEnd> {
        let dir = tempfile::tempdir().unwrap();
        w.write(dir.path());
        let size = SegmentSize::new(MIB).unwrap();
        first_end_after(dir.path(), 1, size, Lsn(from), Lsn(to), at(after)).unwrap()
    }

    #[test]
    fn the_first_end_after_the_time_is_found_across_pages_and_segments() {
        let mut w = Writer::new();
        for i in 0..400 {
            w.other(700 + i % 13);
            w.commit(1000 + i as i64, i % 50);
        }
        // A commit that runs over a page and a segment boundary.
        while (w.wal.len() as u64) < MIB - 3200 {
            w.other(3000);
        }
        assert!(w.wal.len() as u64 > MIB - 3200 && (w.wal.len() as u64) < MIB);
        w.commit(5000, 20_000);
        w.other(100);
        w.switch();
        w.commit(6000, 0);
        let end = w.wal.len() as u64;
        let starts = w.starts.clone();
        let commits: Vec<&Lsn> = starts.iter().skip(1).step_by(2).take(400).collect();
        assert_eq!(scan(&w, 0, end, 999).map(|e| e.lsn), Some(*commits[0]));
        assert_eq!(scan(&w, 0, end, 1200).map(|e| e.lsn), Some(*commits[201]));
        let big = scan(&w, 0, end, 1399).unwrap();
        assert_eq!(big.time, at(5000));
        assert_eq!(scan(&w, 0, end, 5000).unwrap().time, at(6000));
        assert_eq!(scan(&w, 0, end, 6000), None);
        // A record that does not end by `to` does not count.
        assert_eq!(scan(&w, 0, big.lsn.0 + 9000, 1399), None);
        // From the second segment on: the big commit's end is skipped.
        assert_eq!(scan(&w, MIB, end, 1399).unwrap().time, at(6000));
    }

    /// A record cut short by a crash at a page's end, and the next page
    /// marked (or not) as written on after it.
    fn cut_short(overwrite_mark: bool) -> Writer {
        let mut w = Writer::new();
        w.commit(5, 0);
        while (w.wal.len() as u64 % PAGE) < PAGE - 200 {
            w.other(50);
        }
        while !w.wal.len().is_multiple_of(8) {
            w.wal.push(0);
        }
        let mut partial = 5000u32.to_ne_bytes().to_vec();
        partial.extend_from_slice(&[0; 12]);
        partial.extend_from_slice(&[0, 10, 0, 0, 0, 0, 0, 0]);
        w.wal.extend_from_slice(&partial);
        let room = (PAGE - w.wal.len() as u64 % PAGE) as usize;
        w.wal.extend(std::iter::repeat_n(0x77, room));
        let mark = if overwrite_mark {
            XLP_FIRST_IS_OVERWRITE_CONTRECORD
        } else {
            0
        };
        w.header_flagged(0, mark);
        w.commit(20, 0);
        w
    }

    #[test]
    fn a_record_cut_short_ends_the_wal_unless_the_server_marked_writing_on() {
        let on = cut_short(true);
        let end = on.wal.len() as u64;
        assert_eq!(scan(&on, 0, end, 10).unwrap().time, at(20));
        let off = cut_short(false);
        assert_eq!(scan(&off, 0, end, 10), None);
        assert_eq!(scan(&off, 0, end, 0).unwrap().time, at(5));
    }

    #[test]
    fn a_record_header_split_over_pages_and_a_huge_commit_are_read() {
        let mut w = Writer::new();
        // Ends 8 bytes before the page's end: the next header is split.
        while (w.wal.len() as u64 % PAGE) < PAGE - 400 {
            w.other(40);
        }
        let start = (w.wal.len() as u64).div_ceil(8) * 8;
        let page_end = start.div_ceil(PAGE) * PAGE;
        // Over 255 bytes of data: a 5-byte data header.
        w.other((page_end - 8 - start - 24 - 5) as usize);
        assert_eq!(PAGE - w.wal.len() as u64 % PAGE, 8, "set up the split");
        w.commit(30, 0);
        w.commit(40, 3 << 20);
        let end = w.wal.len() as u64;
        assert_eq!(scan(&w, 0, end, 0).unwrap().time, at(30));
        assert_eq!(scan(&w, 0, end, 30).unwrap().time, at(40));
    }

    fn changes(w: &Writer, to: u64, after: u64) -> bool {
        let dir = tempfile::tempdir().unwrap();
        w.write(dir.path());
        let size = SegmentSize::new(MIB).unwrap();
        changes_after(dir.path(), 1, size, Lsn(0), Lsn(to), Lsn(after)).unwrap()
    }

    #[test]
    fn only_wal_a_client_could_miss_counts_as_a_change() {
        let mut w = Writer::new();
        w.commit(10, 0);
        let archived = w.wal.len() as u64;
        // Checkpoints, standby snapshots, pruning: nothing a client sees.
        w.record(RM_XLOG_ID, 0x10, &[], &[0; 80]);
        w.record(8, 0x10, &[], &[0; 24]);
        w.other(9000);
        let background = w.wal.len() as u64;
        assert!(!changes(&w, background, archived));
        // A commit that is not flushed whole yet does not count yet.
        w.commit(20, 0);
        let committed = w.wal.len() as u64;
        assert!(!changes(&w, committed - 1, archived));
        assert!(changes(&w, committed, archived));
        // One the archive holds whole does not; from before it, it does.
        assert!(!changes(&w, committed, committed));
        assert!(changes(&w, background, 0));
        // A prepare, a logical message, a restore point: each counts.
        for (rmid, info) in [
            (RM_XACT_ID, 0x10),
            (RM_LOGICALMSG_ID, 0),
            (RM_XLOG_ID, XLOG_RESTORE_POINT),
        ] {
            let mut w = Writer::new();
            w.other(100);
            let before = w.wal.len() as u64;
            w.record(rmid, info, &[], &[7; 40]);
            assert!(
                changes(&w, w.wal.len() as u64, before),
                "rmid {rmid} info {info:#x}"
            );
        }
        // A commit begun before the archive's end and ended after it.
        let mut w = Writer::new();
        w.other(100);
        let start = (w.wal.len() as u64).div_ceil(8) * 8;
        w.commit(30, 500);
        assert!(changes(&w, w.wal.len() as u64, start + 100));
    }

    #[test]
    fn a_record_from_the_segment_before_and_unreadable_wal_count() {
        // A commit that begins in the first segment and ends in the
        // second; the archive ends at the second's start, inside it.
        let mut w = Writer::new();
        while (w.wal.len() as u64) < MIB - 3000 {
            w.other(2000);
        }
        w.commit(40, 8000);
        w.other(100);
        let end = w.wal.len() as u64;
        assert!(end > MIB + 4000, "set up the crossing");
        let dir = tempfile::tempdir().unwrap();
        w.write(dir.path());
        let size = SegmentSize::new(MIB).unwrap();
        let scan = |from: u64, to: u64, after: u64| {
            changes_after(dir.path(), 1, size, Lsn(from), Lsn(to), Lsn(after)).unwrap()
        };
        assert!(
            scan(MIB, end, MIB),
            "the commit's end is after the archive's"
        );
        assert!(!scan(MIB, end, end), "all of it archived");
        // Flushed WAL that is not there to read counts too.
        std::fs::remove_file(
            dir.path().join(
                Segment {
                    timeline: 1,
                    segno: 1,
                }
                .file_name(size),
            ),
        )
        .unwrap();
        assert!(scan(MIB, end, MIB + 5000));
    }

    #[test]
    fn zeros_and_missing_segments_end_the_wal() {
        let mut w = Writer::new();
        w.commit(10, 0);
        let end = w.wal.len() as u64;
        assert_eq!(scan(&w, 0, 4 * MIB, 0).unwrap().time, at(10));
        assert_eq!(scan(&w, 0, 4 * MIB, 10), None);
        assert_eq!(scan(&w, 0, end - 1, 0), None);
    }

    #[test]
    fn a_transaction_end_without_its_time_is_an_error() {
        let mut w = Writer::new();
        w.record(RM_XACT_ID, 0x00, &[3, 0, 0, 0], &[1; 8]);
        let dir = tempfile::tempdir().unwrap();
        w.write(dir.path());
        let size = SegmentSize::new(MIB).unwrap();
        let e = first_end_after(dir.path(), 1, size, Lsn(0), Lsn(MIB), at(0)).unwrap_err();
        assert!(e.to_string().contains("block header 3"), "{e}");
    }
}
