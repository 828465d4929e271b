//! Compression choices and the streams that apply them. Artifacts use the
//! standard formats so `zstd -dc` or `gzip -dc` undo them by hand.

use std::fmt;
use std::io::{self, Read, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zstd(i32),
    Gzip(u32),
    None,
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd(3)
    }
}

pub const ACCEPTED: &str = "zstd, zstd:1..19, gzip, gzip:1..9, none";

impl Compression {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => (n, Some(l)),
            None => (s, None),
        };
        let bad = || format!("accepted: {ACCEPTED}");
        match (name, level) {
            ("zstd", None) => Ok(Compression::Zstd(3)),
            ("zstd", Some(l)) => match l.parse::<i32>() {
                Ok(l) if (1..=19).contains(&l) => Ok(Compression::Zstd(l)),
                _ => Err(bad()),
            },
            ("gzip", None) => Ok(Compression::Gzip(6)),
            ("gzip", Some(l)) => match l.parse::<u32>() {
                Ok(l) if (1..=9).contains(&l) => Ok(Compression::Gzip(l)),
                _ => Err(bad()),
            },
            ("none", None) => Ok(Compression::None),
            _ => Err(bad()),
        }
    }

    /// File name suffix after `.tar`.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Zstd(_) => ".tar.zst",
            Compression::Gzip(_) => ".tar.gz",
            Compression::None => ".tar",
        }
    }

    /// The compression named in a manifest (`zstd:3`, `gzip:6`, `none`).
    pub fn from_manifest(s: &str) -> Option<Self> {
        Self::parse(s).ok()
    }

    pub fn encoder<W: Write>(self, w: W) -> io::Result<Encoder<W>> {
        Ok(match self {
            Compression::Zstd(level) => Encoder::Zstd(zstd_encoder(w, level)?),
            Compression::Gzip(level) => Encoder::Gzip(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::new(level),
            )),
            Compression::None => Encoder::None(w),
        })
    }

    pub fn decoder<'a, R: Read + 'a>(self, r: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            // A single-frame reader would stop after the first frame; the
            // streaming decoder reads concatenated frames like `zstd -dc`.
            Compression::Zstd(_) => Box::new(zstd::stream::read::Decoder::new(r)?),
            Compression::Gzip(_) => Box::new(flate2::read::MultiGzDecoder::new(r)),
            Compression::None => Box::new(r),
        })
    }
}

/// Bytes of input each zstd worker compresses at a time. zstd's default
/// (4 windows, 8 MiB at level 3) would hold ~50 MiB across workers; 1 MiB
/// keeps every worker busy at a fraction of that, and the jobs overlap by
/// part of a window so the ratio barely moves.
pub const ZSTD_JOB_SIZE: u32 = 1024 * 1024;

/// Most zstd workers, whatever the machine: memory grows with each one.
pub const ZSTD_MAX_WORKERS: u32 = 4;

/// A zstd stream compressed on every core (up to [`ZSTD_MAX_WORKERS`]) in
/// jobs of [`ZSTD_JOB_SIZE`]. The output is one ordinary zstd frame,
/// byte-compatible with `zstd -dc`.
fn zstd_encoder<W: Write>(
    w: W,
    level: i32,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut e = zstd::stream::write::Encoder::new(w, level)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let workers = cores.min(ZSTD_MAX_WORKERS);
    if workers > 1 {
        e.multithread(workers)?;
        e.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))?;
    }
    Ok(e)
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::Zstd(l) => write!(f, "zstd:{l}"),
            Compression::Gzip(l) => write!(f, "gzip:{l}"),
            Compression::None => write!(f, "none"),
        }
    }
}

pub enum Encoder<W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Gzip(flate2::write::GzEncoder<W>),
    None(W),
}

impl<W: Write> Encoder<W> {
    /// Writes the end of the compressed stream and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Zstd(e) => e.finish(),
            Encoder::Gzip(e) => e.finish(),
            Encoder::None(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::None(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Zstd(e) => e.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::None(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_levels_and_rejects_others() {
        assert_eq!(Compression::parse("zstd").unwrap(), Compression::Zstd(3));
        assert_eq!(
            Compression::parse("zstd:19").unwrap(),
            Compression::Zstd(19)
        );
        assert_eq!(Compression::parse("gzip:1").unwrap(), Compression::Gzip(1));
        assert_eq!(Compression::parse("none").unwrap(), Compression::None);
        for bad in ["zstd:0", "zstd:22", "gzip:10", "lz4", "none:1", ""] {
            assert!(Compression::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Compression::Zstd(3).to_string(), "zstd:3");
    }
}
