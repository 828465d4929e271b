//! A span's segments read out of `pg_wal/` as tar entries `pg_wal/<name>`,
//! each checked to be the segment its name says before a byte is stored.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Take};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::position::{Lsn, Segment, SegmentSize};
use super::span::Span;
use crate::error::IoContext;
use crate::{Error, Result};

/// The server the segments must belong to: `pg_control_system()`'s
/// `system_identifier`, and its segment size.
#[derive(Debug, Clone, Copy)]
pub struct Server {
    pub system_id: u64,
    pub size: SegmentSize,
}

/// The first page's header of a segment file (`XLogLongPageHeaderData`,
/// native byte order): where the page sits in the WAL, and the server's
/// identifier and segment size.
const LONG_HEADER: usize = 40;
/// `XLP_LONG_HEADER`: the flag a segment's first page carries.
const XLP_LONG_HEADER: u16 = 0x0002;

/// Appends `span`'s segments from `pg_wal` to `tar` as `<entry_dir>/<name>`
/// (`entry_dir` is where `pg_wal` sits in the tar: PGDATA's path without
/// its leading `/`, then `pg_wal`), each as a whole segment file: its WAL
/// bytes, then zeros. Returns the WAL bytes read.
///
/// On an error the tar may end inside an entry: the object it was for
/// must be thrown away, never committed.
pub fn append_span<W: io::Write>(
    tar: &mut tar::Builder<W>,
    pg_wal: &Path,
    entry_dir: &str,
    span: &Span,
    server: &Server,
    mtime: u64,
) -> Result<u64> {
    let mut read = 0;
    for (segment, wal_bytes) in span.segments(server.size) {
        let name = segment.file_name(server.size);
        let path = pg_wal.join(&name);
        let (file, md) = open_wal_file(&path)?;
        if !md.is_file() || md.len() != server.size.bytes() {
            return Err(Error::Source(format!(
                "{} is not a {}-byte WAL segment file; not archived",
                path.display(),
                server.size.bytes()
            )));
        }
        let header = check_header(&file, &path, segment, server)?;
        let mut h = self::header(&md, mtime, server.size.bytes());
        let data = Flushed {
            wal: (&file).take(wal_bytes),
            zeros_left: server.size.bytes() - wal_bytes,
        };
        tar.append_data(&mut h, format!("{entry_dir}/{name}"), data)
            .map_err(|e| Error::io(format!("archiving the WAL segment {}", path.display()), e))?;
        // A segment the slot no longer held (dropped, or invalidated past
        // max_slot_wal_keep_size) may have been recycled while it was read:
        // the server rewrites a reused file from its first page on, so an
        // unchanged first page after the last byte means nothing was.
        if read_header(&file, &path)? != header {
            return Err(Error::Source(format!(
                "{} was rewritten while it was archived (recycled by the server?); this object is thrown away",
                path.display()
            )));
        }
        read += wal_bytes;
    }
    Ok(read)
}

/// A file in `pg_wal/`, never through a symlink and never waiting on a
/// FIFO someone put there: the volume is the app's to change.
fn open_wal_file(path: &Path) -> Result<(File, std::fs::Metadata)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ctx("opening", path)?;
    let md = file.metadata().ctx("reading", path)?;
    Ok((file, md))
}

/// A regular file's tar header: the file's owner, mode 0600 as PostgreSQL
/// keeps its files, the object's mtime.
fn header(md: &std::fs::Metadata, mtime: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o600);
    h.set_uid(u64::from(md.uid()));
    h.set_gid(u64::from(md.gid()));
    h.set_mtime(mtime);
    h.set_size(size);
    h
}

/// Hex SHA-256 of the WAL bytes from `from` to `to` (one segment's, in
/// `pg_wal`): what [`super::object::WalSection::tail_sha256`] records. None
/// when the file cannot be read or is not that long.
pub fn tail_sha256(
    pg_wal: &Path,
    segment: Segment,
    size: SegmentSize,
    from: Lsn,
    to: Lsn,
) -> Option<String> {
    use sha2::Digest;
    let start = size.start_of(segment.segno)?;
    let (file, md) = open_wal_file(&pg_wal.join(segment.file_name(size))).ok()?;
    let offset = from.0.checked_sub(start.0)?;
    let len = usize::try_from(to.0.checked_sub(from.0)?).ok()?;
    if !md.is_file() || offset + len as u64 > size.bytes() {
        return None;
    }
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, offset).ok()?;
    Some(hex::encode(sha2::Sha256::digest(&bytes)))
}

/// The forks `<timeline>.history` in `pg_wal` lists (none on timeline 1):
/// every object of a later timeline records them.
pub fn history_forks(pg_wal: &Path, timeline: u32) -> Result<Vec<super::object::Fork>> {
    if timeline <= 1 {
        return Ok(vec![]);
    }
    let (path, bytes, _) = read_history(pg_wal, timeline)?;
    super::object::parse_history(&String::from_utf8_lossy(&bytes))
        .map_err(|e| Error::Source(format!("{}: {e}", path.display())))
}

/// The largest timeline history file archived; PostgreSQL's hold a line
/// per earlier timeline.
const MAX_HISTORY_BYTES: u64 = 1 << 20;

/// `<timeline>.history` from `pg_wal`: its path, bytes and metadata. A
/// missing one is an error: the server writes it before it uses the
/// timeline.
fn read_history(
    pg_wal: &Path,
    timeline: u32,
) -> Result<(std::path::PathBuf, Vec<u8>, std::fs::Metadata)> {
    let path = pg_wal.join(format!("{timeline:08X}.history"));
    let (file, md) = open_wal_file(&path)?;
    if !md.is_file() || md.len() > MAX_HISTORY_BYTES {
        return Err(Error::Source(format!(
            "{} is not a timeline history file (a regular file of at most {MAX_HISTORY_BYTES} bytes)",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    (&file)
        .take(MAX_HISTORY_BYTES)
        .read_to_end(&mut bytes)
        .ctx("reading", &path)?;
    Ok((path, bytes, md))
}

/// Appends `<timeline>.history` from `pg_wal` (as `<entry_dir>/<name>`),
/// which a server recovering onto this timeline reads to follow it.
/// Timeline 1 has none. Returns the bytes stored.
pub fn append_history<W: io::Write>(
    tar: &mut tar::Builder<W>,
    pg_wal: &Path,
    entry_dir: &str,
    timeline: u32,
    mtime: u64,
) -> Result<u64> {
    if timeline <= 1 {
        return Ok(0);
    }
    let (path, bytes, md) = read_history(pg_wal, timeline)?;
    let name = format!("{timeline:08X}.history");
    let mut h = header(&md, mtime, bytes.len() as u64);
    tar.append_data(&mut h, format!("{entry_dir}/{name}"), bytes.as_slice())
        .map_err(|e| Error::io(format!("archiving {}", path.display()), e))?;
    Ok(bytes.len() as u64)
}

/// A segment file whose first page is not the first page of `segment` on
/// this server is not that segment: a recycled file under a new name, or
/// another cluster's. Nothing of it is stored.
fn check_header(
    file: &File,
    path: &Path,
    segment: Segment,
    server: &Server,
) -> Result<[u8; LONG_HEADER]> {
    let page = read_header(file, path)?;
    let u16_at = |i: usize| u16::from_ne_bytes([page[i], page[i + 1]]);
    let u32_at = |i: usize| u32::from_ne_bytes(page[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_ne_bytes(page[i..i + 8].try_into().expect("8 bytes"));
    let (info, tli, pageaddr) = (u16_at(2), u32_at(4), Lsn(u64_at(8)));
    let (sysid, seg_size) = (u64_at(24), u32_at(32));
    let Some(expected) = server.size.start_of(segment.segno) else {
        return Err(Error::Source(format!(
            "{} names a segment past the end of the WAL",
            path.display()
        )));
    };
    let wrong = if info & XLP_LONG_HEADER == 0 {
        Some("its first page has no segment header".to_string())
    } else if pageaddr != expected {
        Some(format!("its first page is at {pageaddr}, not {expected}"))
    } else if sysid != server.system_id {
        Some(format!(
            "it belongs to the server {sysid}, not {}",
            server.system_id
        ))
    } else if u64::from(seg_size) != server.size.bytes() {
        Some(format!("its segment size is {seg_size}"))
    } else if tli > segment.timeline {
        Some(format!("its first page is of the later timeline {tli}"))
    } else {
        None
    };
    match wrong {
        Some(why) => Err(Error::Source(format!(
            "{} is not the WAL segment its name says ({why}); not archived",
            path.display()
        ))),
        None => Ok(page),
    }
}

fn read_header(file: &File, path: &Path) -> Result<[u8; LONG_HEADER]> {
    let mut page = [0u8; LONG_HEADER];
    file.read_exact_at(&mut page, 0)
        .ctx("reading the WAL segment", path)?;
    Ok(page)
}

/// A segment's WAL bytes, which must all be there, then zeros.
struct Flushed<R> {
    wal: Take<R>,
    zeros_left: u64,
}

impl<R: Read> Read for Flushed<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.wal.limit() > 0 {
            let n = self.wal.read(out)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} flushed WAL bytes missing", self.wal.limit()),
                ));
            }
            return Ok(n);
        }
        let n = out
            .len()
            .min(usize::try_from(self.zeros_left).unwrap_or(usize::MAX));
        out[..n].fill(0);
        self.zeros_left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const SYSID: u64 = 7_441_204_283_659_113_520;

    fn server() -> Server {
        Server {
            system_id: SYSID,
            size: SegmentSize::new(MIB).unwrap(),
        }
    }

    /// A segment file as the server writes one: its long page header, then
    /// `fill` (the WAL) to the end.
    fn segment_file(dir: &Path, segment: Segment, sysid: u64, fill: u8) {
        let size = server().size;
        let mut bytes = vec![fill; size.bytes() as usize];
        bytes[..LONG_HEADER].fill(0);
        bytes[0..2].copy_from_slice(&0xD118u16.to_ne_bytes());
        bytes[2..4].copy_from_slice(&XLP_LONG_HEADER.to_ne_bytes());
        bytes[4..8].copy_from_slice(&segment.timeline.to_ne_bytes());
        let at = size.start_of(segment.segno).unwrap();
        bytes[8..16].copy_from_slice(&at.0.to_ne_bytes());
        bytes[24..32].copy_from_slice(&sysid.to_ne_bytes());
        bytes[32..36].copy_from_slice(&(size.bytes() as u32).to_ne_bytes());
        bytes[36..40].copy_from_slice(&8192u32.to_ne_bytes());
        std::fs::write(dir.join(segment.file_name(size)), bytes).unwrap();
    }

    fn seg(segno: u64) -> Segment {
        Segment { timeline: 1, segno }
    }

    fn archive(dir: &Path, span: &Span) -> Result<Vec<(String, Vec<u8>)>> {
        let mut tar = tar::Builder::new(Vec::new());
        append_span(&mut tar, dir, "pg_wal", span, &server(), 0)?;
        let bytes = tar.into_inner().unwrap();
        let mut out = Vec::new();
        let mut a = tar::Archive::new(&bytes[..]);
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.push((name, data));
        }
        Ok(out)
    }

    #[test]
    fn whole_segments_then_the_flushed_head_padded_with_zeros() {
        let dir = tempfile::tempdir().unwrap();
        segment_file(dir.path(), seg(5), SYSID, 0xAB);
        segment_file(dir.path(), seg(6), SYSID, 0xCD);
        // Flushed 1000 bytes into segment 6.
        let span = Span {
            timeline: 1,
            from: Lsn(5 * MIB + 77),
            to: Lsn(6 * MIB + 1000),
        };
        let got = archive(dir.path(), &span).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "pg_wal/000000010000000000000005");
        assert_eq!(
            got[0].1,
            std::fs::read(dir.path().join(&got[0].0[7..])).unwrap()
        );
        let (name, data) = &got[1];
        assert_eq!(name, "pg_wal/000000010000000000000006");
        assert_eq!(data.len() as u64, MIB);
        assert!(data[LONG_HEADER..1000].iter().all(|b| *b == 0xCD));
        assert!(
            data[1000..].iter().all(|b| *b == 0),
            "past the flush: zeros"
        );
    }

    #[test]
    fn a_file_that_is_not_the_segment_its_name_says_is_not_archived() {
        let dir = tempfile::tempdir().unwrap();
        // A recycled file: segment 2's content under segment 9's name.
        segment_file(dir.path(), seg(2), SYSID, 1);
        std::fs::rename(
            dir.path().join(seg(2).file_name(server().size)),
            dir.path().join(seg(9).file_name(server().size)),
        )
        .unwrap();
        let span = Span {
            timeline: 1,
            from: Lsn(9 * MIB),
            to: Lsn(9 * MIB + 10),
        };
        let e = archive(dir.path(), &span).unwrap_err().to_string();
        assert!(
            e.contains("is not the WAL segment its name says") && e.contains("0/200000"),
            "{e}"
        );
        // Another cluster's segment.
        segment_file(dir.path(), seg(3), SYSID + 1, 1);
        let span = Span {
            timeline: 1,
            from: Lsn(3 * MIB),
            to: Lsn(3 * MIB + 10),
        };
        let e = archive(dir.path(), &span).unwrap_err().to_string();
        assert!(e.contains("belongs to the server"), "{e}");
    }

    #[test]
    fn a_missing_or_short_segment_or_a_symlink_is_an_error_not_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let span = Span {
            timeline: 1,
            from: Lsn(4 * MIB),
            to: Lsn(4 * MIB + 10),
        };
        assert!(archive(dir.path(), &span).is_err());
        segment_file(dir.path(), seg(4), SYSID, 1);
        let path = dir.path().join(seg(4).file_name(server().size));
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(MIB / 2).unwrap();
        let e = archive(dir.path(), &span).unwrap_err().to_string();
        assert!(e.contains("is not a 1048576-byte WAL segment"), "{e}");
        std::fs::remove_file(&path).unwrap();
        segment_file(dir.path(), seg(1), SYSID, 1);
        std::os::unix::fs::symlink(seg(1).file_name(server().size), &path).unwrap();
        assert!(archive(dir.path(), &span).is_err());
        // A FIFO under the name: refused at once, not waited on.
        std::fs::remove_file(&path).unwrap();
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = archive(dir.path(), &span).unwrap_err().to_string();
        assert!(e.contains("is not a 1048576-byte WAL segment"), "{e}");
    }
}
