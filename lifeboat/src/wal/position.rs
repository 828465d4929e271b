//! WAL positions and segment files, as PostgreSQL names them.

use std::fmt;
use std::str::FromStr;

/// A position in the WAL stream (PostgreSQL's LSN): a byte offset, written
/// `X/Y` (the high and low 32 bits in hex).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Lsn, String> {
        let bad = || format!("{s:?} is not a WAL position (LSN), which looks like 16/B374D848");
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let part = |p: &str| {
            // from_str_radix alone would also take a sign.
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u32::from_str_radix(p, 16).map_err(|_| bad())
        };
        Ok(Lsn((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The size of a server's WAL segments, fixed by `initdb --wal-segsize`: a
/// power of two from 1 MiB to 1 GiB (16 MiB unless chosen otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentSize(u64);

impl SegmentSize {
    pub const DEFAULT: SegmentSize = SegmentSize(16 << 20);

    pub fn new(bytes: u64) -> Result<SegmentSize, String> {
        if bytes.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&bytes) {
            Ok(SegmentSize(bytes))
        } else {
            Err(format!(
                "{bytes} bytes is not a WAL segment size (a power of two from 1 MiB to 1 GiB)"
            ))
        }
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// The number of the segment that holds the byte at `lsn`. (On a
    /// segment boundary that is the segment starting there, where
    /// `pg_walfile_name` names the one ending there.)
    pub fn segment_of(self, lsn: Lsn) -> u64 {
        lsn.0 / self.0
    }

    /// Where `lsn` is inside its segment.
    pub fn offset_in(self, lsn: Lsn) -> u64 {
        lsn.0 % self.0
    }

    /// The first position of segment `segno`; None past the end of the
    /// 64-bit WAL address space.
    pub fn start_of(self, segno: u64) -> Option<Lsn> {
        segno.checked_mul(self.0).map(Lsn)
    }

    /// Segments per 4 GiB: the file name splits the number there.
    fn per_xlogid(self) -> u64 {
        0x1_0000_0000 / self.0
    }
}

/// One segment file of one timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Segment {
    pub timeline: u32,
    pub segno: u64,
}

impl Segment {
    /// Its name in `pg_wal/`: the timeline, then the segment number split
    /// at 4 GiB, each as 8 upper-case hex digits.
    pub fn file_name(self, size: SegmentSize) -> String {
        let per = size.per_xlogid();
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.segno / per,
            self.segno % per
        )
    }

    /// The segment a `pg_wal/` file name stands for, if it names one.
    pub fn parse(name: &str, size: SegmentSize) -> Option<Segment> {
        if !is_segment_name(name) {
            return None;
        }
        let hex = |r: std::ops::Range<usize>| u64::from_str_radix(&name[r], 16).ok();
        let (timeline, log, seg) = (hex(0..8)?, hex(8..16)?, hex(16..24)?);
        if seg >= size.per_xlogid() || timeline == 0 {
            return None;
        }
        Some(Segment {
            timeline: u32::try_from(timeline).ok()?,
            segno: log * size.per_xlogid() + seg,
        })
    }
}

/// Whether `name` has a WAL segment file's shape: 24 upper-case hex digits
/// (PostgreSQL's `IsXLogFileName`).
pub fn is_segment_name(name: &str) -> bool {
    name.len() == 24
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_and_print_as_postgres_writes_them() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        for bad in [
            "",
            "16",
            "/1",
            "1/",
            "x/1",
            "1/123456789",
            "1/2/3",
            "+1/2",
            "1/-2",
        ] {
            let e = bad.parse::<Lsn>().unwrap_err();
            assert!(e.contains("16/B374D848"), "{e}");
        }
    }

    #[test]
    fn segment_names_match_pg_walfile_name() {
        let size = SegmentSize::DEFAULT;
        // SELECT pg_walfile_name('16/B374D848') on timeline 1.
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        let s = Segment {
            timeline: 1,
            segno: size.segment_of(lsn),
        };
        assert_eq!(s.file_name(size), "0000000100000016000000B3");
        assert_eq!(Segment::parse("0000000100000016000000B3", size), Some(s));
        assert_eq!(size.offset_in(lsn), 0x74D848);
        assert_eq!(size.start_of(s.segno), Some(Lsn(0x16_B300_0000)));
        assert_eq!(size.start_of(u64::MAX / 2), None);
        // What PostgreSQL writes is upper case; another spelling is another file.
        assert_eq!(Segment::parse("0000000100000016000000b3", size), None);
        // 1 GiB segments: four per 4 GiB.
        let big = SegmentSize::new(1 << 30).unwrap();
        let s = Segment {
            timeline: 2,
            segno: 7,
        };
        assert_eq!(s.file_name(big), "000000020000000100000003");
        assert_eq!(Segment::parse("000000020000000100000003", big), Some(s));
        assert_eq!(Segment::parse("000000020000000100000004", big), None);
        assert_eq!(Segment::parse("00000002.history", size), None);
        assert_eq!(Segment::parse("000000000000000100000003", size), None);
    }

    #[test]
    fn only_powers_of_two_from_1_mib_to_1_gib_are_segment_sizes() {
        assert!(SegmentSize::new(16 << 20).is_ok());
        assert!(SegmentSize::new(1 << 20).is_ok());
        assert!(SegmentSize::new(1 << 30).is_ok());
        for bad in [0, 1 << 19, 1 << 31, (16 << 20) + 1] {
            assert!(SegmentSize::new(bad).is_err(), "{bad}");
        }
    }
}
