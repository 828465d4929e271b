//! Compression choices and the streams that apply them. Artifacts use the
//! standard formats so `zstd -dc` or `gzip -dc` undo them by hand.

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::frame_pool::FramePool;

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
            Compression::Zstd(level) => Encoder::Zstd(Zstd::new(w, level, RawHint::default())?),
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

/// Bytes of input each zstd worker compresses at a time, into a frame of
/// their own ([`crate::frame_pool`]). zstd's own default job (8 MiB at
/// level 3) would hold ~50 MiB across workers; 1 MiB keeps every worker
/// busy at a fraction of that. Each job starts with an empty history: on
/// the bench's data sets that costs 0.1 % of artifact size against jobs
/// that re-read the last 256 KiB of the one before, which cost ~5 % of a
/// backup's CPU and one more job of memory (README "Bounds").
pub const ZSTD_JOB_SIZE: usize = 1024 * 1024;

/// Most zstd workers, whatever the machine: memory grows with each one.
pub const ZSTD_MAX_WORKERS: u32 = 4;

/// Memory the zstd workers' compression contexts may take together. A
/// context's tables grow with the level: at level 3 one takes ~1 MiB, at
/// level 19 ~80 MiB, so one worker per core at level 19 would take 320 MiB
/// on 4 cores, past the sidecar's 256 MiB limit in the kustomize overlay
/// (measured on 2 cores: a backup at `zstd:19` peaked at 179 MiB).
pub const ZSTD_CONTEXTS_MEMORY: usize = 100 << 20;

/// How many zstd workers compress at `level` on `cores` cores: one per core,
/// at most [`ZSTD_MAX_WORKERS`], and no more than fit in
/// [`ZSTD_CONTEXTS_MEMORY`] (at least one: a single context may be larger).
pub fn zstd_workers(level: i32, cores: u32) -> u32 {
    // SAFETY: a pure function of its argument, with no memory shared.
    let each = unsafe { zstd::zstd_safe::zstd_sys::ZSTD_estimateCCtxSize(level) };
    let fit = u32::try_from(ZSTD_CONTEXTS_MEMORY / each.max(1)).unwrap_or(u32::MAX);
    cores.min(ZSTD_MAX_WORKERS).min(fit).max(1)
}

/// Worker threads compressing at `level` ([`zstd_workers`]) in jobs of
/// [`ZSTD_JOB_SIZE`], each an ordinary zstd frame `zstd -dc` reads. Even
/// on one core the work goes to a worker in jobs: a single context's own
/// search over its whole window was 5x slower at level 19 (83 s against
/// 15 s for 48 MiB), where a job starts with an empty history.
fn zstd_pool(level: i32) -> io::Result<FramePool> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    FramePool::new(level, zstd_workers(level, cores), ZSTD_JOB_SIZE)
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
    Zstd(Zstd<W>),
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

    /// The switch a producer sets while it writes bytes that will not
    /// shrink (compressing them only costs CPU): they are stored as they
    /// are. Only zstd streams heed it; what comes back is the same either way.
    pub fn raw_hint(&self) -> RawHint {
        match self {
            Encoder::Zstd(z) => z.hint.clone(),
            Encoder::Gzip(_) | Encoder::None(_) => RawHint::default(),
        }
    }
}

impl<W: Write> Encoder<W> {
    /// Stores the next raw block of a zstd stream's raw stretch with
    /// `fill`, which reads at most the `usize` it is given straight into
    /// `W`'s buffer after the block's header (made by the function it is
    /// given, once the count is known). `None` when the stream is not in a
    /// raw stretch (the hint is off, or not zstd) or `fill` cannot: the
    /// caller writes as usual. See [`ArtifactOut`].
    pub fn raw_block_with(
        &mut self,
        max: usize,
        fill: impl FnOnce(&mut W, usize, fn(usize) -> [u8; 3]) -> Option<io::Result<usize>>,
    ) -> Option<io::Result<usize>> {
        let Encoder::Zstd(z) = self else {
            return None;
        };
        if z.broken {
            return Some(Err(io::Error::other("the zstd stream failed earlier")));
        }
        if let Err(e) = z.follow_hint() {
            return Some(Err(e));
        }
        if z.state != State::Raw {
            return None;
        }
        let got = fill(&mut z.w, max.min(RAW_BLOCK_MAX), raw_block_header)?;
        z.broken |= got.is_err();
        Some(got)
    }
}

/// What a source writes its tar into: a `Write` that may also take a
/// packed file's bytes straight from the file into the artifact's
/// outgoing chunk, stored raw, without a copy through the source's own
/// buffer (the backup's stream: `tar_upload::TarSink`'s encoder).
pub trait ArtifactOut: Write {
    /// Reads up to `max` bytes of `r` into the stream as raw bytes, where
    /// this stream can without a copy; `None` where it cannot (the caller
    /// reads and writes as usual). Ok(0) at the end of `r`.
    fn read_raw(&mut self, _r: &mut dyn Read, _max: usize) -> Option<io::Result<usize>> {
        None
    }
}

/// A tar in memory (`tests/chain_format.rs` writes a source's tar so).
impl ArtifactOut for Vec<u8> {}

/// Unit tests write a source's tar nowhere, or look at the frames its
/// bytes became.
#[cfg(test)]
mod test_outs {
    use super::*;
    impl ArtifactOut for io::Sink {}
    impl ArtifactOut for Encoder<Vec<u8>> {}
}

/// A raw block's header (RFC 8878 §3.1.1.2): not last, raw, `n` bytes.
fn raw_block_header(n: usize) -> [u8; 3] {
    let h = ((n as u32) << 3).to_le_bytes();
    [h[0], h[1], h[2]]
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

/// A zstd stream that is one or more frames: compressed frames, and frames
/// of raw blocks for bytes stored as they are. A zstd stream may hold
/// several frames back to back; `zstd -dc` and every streaming decoder
/// read them as one (docs/ARCHITECTURE.md, "Being changed", issue 26).
///
/// Compressible bytes go to worker threads ([`FramePool`]) in jobs, each a
/// frame. One pool serves the whole stream: a new one would start its
/// threads and fault in its tables again at each switch, which a volume of
/// alternating packed and text files pays per file.
///
/// After a raw stretch, compressible bytes are held back until there are
/// [`HOLD_MAX`] of them: the few between two raw files (the tar headers,
/// one file's padding) become a small frame of their own, compressed on
/// this thread, so a run of small packed files costs no drain of the
/// workers per file and no raw headers.
pub struct Zstd<W: Write> {
    w: W,
    pool: FramePool,
    /// The small frame of held bytes, on its way to `w`.
    out: Vec<u8>,
    state: State,
    hint: RawHint,
    /// Set when a write to `w` or the context failed, or a raw block read
    /// in place did (`raw_block_with`; a failed read of the file leaves
    /// the stream whole, but the backup stops then anyway): the stream is
    /// cut somewhere unknown.
    broken: bool,
    /// Compressible bytes held back after a raw stretch ([`State::Holding`]).
    held: Vec<u8>,
    /// Compresses the held bytes as one frame; made at the first use.
    small: Option<zstd::bulk::Compressor<'static>>,
    level: i32,
}

/// Compressible bytes after a raw stretch that are held back to become a
/// small frame of their own, if a raw stretch comes again before more
/// come: a run of small packed files has a KiB or two of tar headers and
/// padding between them.
pub const HOLD_MAX: usize = 64 << 10;

/// Set by the thread that writes into the encoder, read by the encoder on
/// every write: the bytes written while it is on are stored raw. The switch
/// happens at the next byte. Turned off for the tar headers between two raw
/// files, it costs one small frame for them (see [`Zstd`]'s holding), not
/// a drain of the workers.
#[derive(Clone, Debug, Default)]
pub struct RawHint(Arc<AtomicBool>);

impl RawHint {
    pub fn set(&self, raw: bool) {
        self.0.store(raw, Ordering::Relaxed);
    }
    fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames: the next byte starts one of either kind.
    Between,
    /// Inside a compressed frame.
    Compressing,
    /// Inside a frame of raw blocks, its header written.
    Raw,
    /// After a raw frame ended: compressible bytes go to `held`.
    Holding,
}

/// A raw frame's window: 128 KiB, the largest block, so a decoder needs no
/// bigger buffer for it however long the frame.
const RAW_WINDOW_LOG: u8 = 17;
const RAW_BLOCK_MAX: usize = 1 << RAW_WINDOW_LOG;

/// Frame header (RFC 8878 §3.1.1): the magic number; a descriptor with no
/// content size, no checksum, no dictionary and not single-segment; then
/// the window descriptor (exponent = window log − 10, mantissa 0).
const RAW_FRAME_HEADER: [u8; 6] = [0x28, 0xB5, 0x2F, 0xFD, 0x00, (RAW_WINDOW_LOG - 10) << 3];

/// The block that ends a raw frame: last, raw, 0 bytes.
const RAW_FRAME_END: [u8; 3] = [0x01, 0x00, 0x00];

impl<W: Write> Zstd<W> {
    fn new(w: W, level: i32, hint: RawHint) -> io::Result<Self> {
        Ok(Zstd {
            w,
            pool: zstd_pool(level)?,
            out: Vec::new(),
            state: State::Between,
            hint,
            broken: false,
            held: Vec::new(),
            small: None,
            level,
        })
    }

    /// Writes all of `bytes` to `w`, marking the stream broken if that fails.
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        let res = self.w.write_all(bytes);
        self.broken |= res.is_err();
        res
    }

    /// Ends the frame being written, if any, so the next begins clean.
    fn end_frame(&mut self) -> io::Result<()> {
        match self.state {
            State::Between => {}
            State::Raw => self.put(&RAW_FRAME_END)?,
            State::Holding => self.put_held()?,
            // The workers drain; the pool stays for the next frame.
            State::Compressing => self.drain()?,
        }
        self.state = State::Between;
        Ok(())
    }

    /// Writes the held bytes, if any, as one frame compressed on this
    /// thread.
    fn put_held(&mut self) -> io::Result<()> {
        if self.held.is_empty() {
            return Ok(());
        }
        let level = self.level;
        let small = match &mut self.small {
            Some(c) => c,
            None => self.small.insert(zstd::bulk::Compressor::new(level)?),
        };
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(self.held.len()));
        let made = small.compress_to_buffer(&self.held[..], &mut out);
        self.broken |= made.is_err();
        let written = made.and_then(|_| self.put(&out));
        self.out = out;
        self.held.clear();
        written
    }

    /// Moves to the frame kind the hint asks for, if it is not that already.
    fn follow_hint(&mut self) -> io::Result<()> {
        let raw = self.hint.get();
        match (self.state, raw) {
            (State::Raw, true) | (State::Compressing | State::Holding, false) => Ok(()),
            (State::Raw, false) => {
                self.put(&RAW_FRAME_END)?;
                self.state = State::Holding;
                Ok(())
            }
            (State::Between, false) => {
                self.state = State::Compressing;
                Ok(())
            }
            (State::Between | State::Compressing | State::Holding, true) => {
                self.end_frame()?;
                self.put(&RAW_FRAME_HEADER)?;
                self.state = State::Raw;
                Ok(())
            }
        }
    }

    /// Feeds `buf` to the workers; returns how much of it was taken.
    fn compress(&mut self, buf: &[u8]) -> io::Result<usize> {
        let taken = self.pool.write(buf, &mut self.w);
        self.broken |= taken.is_err();
        taken
    }

    /// Writes every frame of the workers still out.
    fn drain(&mut self) -> io::Result<()> {
        let drained = self.pool.drain(&mut self.w);
        self.broken |= drained.is_err();
        drained
    }

    fn finish(mut self) -> io::Result<W> {
        if self.broken {
            return Err(io::Error::other("the zstd stream failed earlier"));
        }
        // An empty stream is still one (empty) compressed frame, as before.
        if self.state == State::Between {
            let empty = zstd::bulk::compress(&[], self.level)?;
            self.put(&empty)?;
        }
        self.end_frame()?;
        Ok(self.w)
    }
}

impl<W: Write> Write for Zstd<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.broken {
            return Err(io::Error::other("the zstd stream failed earlier"));
        }
        self.follow_hint()?;
        match self.state {
            State::Raw => {
                // One block per call, at most the largest block: the bytes
                // go straight through, 3 bytes of header each.
                let n = buf.len().min(RAW_BLOCK_MAX);
                self.put(&raw_block_header(n))?;
                self.put(&buf[..n])?;
                Ok(n)
            }
            State::Holding if self.held.len() + buf.len() <= HOLD_MAX => {
                self.held.extend_from_slice(buf);
                Ok(buf.len())
            }
            State::Holding => {
                // Too many to be headers between raw files: a compressed
                // frame of the workers' after all, held bytes first.
                let held = std::mem::take(&mut self.held);
                self.state = State::Compressing;
                let mut at = 0;
                while at < held.len() {
                    at += self.compress(&held[at..])?;
                }
                self.held = held;
                self.held.clear();
                self.compress(buf)
            }
            State::Compressing | State::Between => self.compress(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other("the zstd stream failed earlier"));
        }
        match self.state {
            State::Compressing => self.drain()?,
            State::Holding => self.put_held()?,
            State::Between | State::Raw => {}
        }
        self.w.flush()
    }
}

/// For tests that check what went raw: the frames of a zstd stream, and
/// bytes that will not shrink.
#[cfg(test)]
pub(crate) mod testing {
    /// `n` xorshift bytes: the same for the same seed, and incompressible.
    pub fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    pub struct Frame {
        /// A frame of raw blocks, as `Zstd` writes them.
        pub raw: bool,
        pub stored: usize,
        pub bytes: Vec<u8>,
    }

    pub fn frames(mut stream: &[u8]) -> Vec<Frame> {
        let mut all = Vec::new();
        while !stream.is_empty() {
            let n = zstd::zstd_safe::find_frame_compressed_size(stream).expect("a whole frame");
            let bytes = zstd::stream::decode_all(&stream[..n]).expect("a frame that reads back");
            let raw = stream.starts_with(&super::RAW_FRAME_HEADER) && n > bytes.len();
            all.push(Frame {
                raw,
                stored: n,
                bytes,
            });
            stream = &stream[n..];
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_levels_get_fewer_zstd_workers_so_their_contexts_fit() {
        for cores in [1, 2, 4, 64] {
            assert_eq!(zstd_workers(3, cores), cores.min(ZSTD_MAX_WORKERS));
            for level in 1..=19 {
                let n = zstd_workers(level, cores);
                assert!((1..=cores.min(ZSTD_MAX_WORKERS)).contains(&n));
                // SAFETY: as in zstd_workers.
                let each = unsafe { zstd::zstd_safe::zstd_sys::ZSTD_estimateCCtxSize(level) };
                assert!(
                    n == 1 || n as usize * each <= ZSTD_CONTEXTS_MEMORY,
                    "{level}: {n}"
                );
            }
        }
        assert_eq!(zstd_workers(19, 64), 1);
    }

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

    /// A zstd stream read back as restore reads it.
    fn read_back(stored: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        Compression::Zstd(3)
            .decoder(stored)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        got
    }

    /// Compressed, raw, compressed again, and a raw end: one stream that
    /// reads back whole, through our decoder and through `zstd -dc`, with
    /// the raw part stored at 3 bytes per 128 KiB.
    #[test]
    fn raw_stretches_between_compressed_frames_read_back_as_one_stream() {
        let text: Vec<u8> = b"notebook cell output 42\n".repeat(40_000);
        let noise = testing::noise(3 << 20, 7);
        let mut e = Compression::Zstd(3).encoder(Vec::new()).unwrap();
        let hint = e.raw_hint();
        let mut want = Vec::new();
        e.write_all(&text).unwrap();
        want.extend_from_slice(&text);
        hint.set(true);
        hint.set(true);
        // Writes of every size, including ones larger than a block.
        for piece in [
            &noise[..1],
            &noise[1..513],
            &noise[513..(300 << 10)],
            &noise[(300 << 10)..],
        ] {
            e.write_all(piece).unwrap();
        }
        want.extend_from_slice(&noise);
        hint.set(false);
        e.write_all(&text).unwrap();
        want.extend_from_slice(&text);
        hint.set(true);
        e.write_all(&noise[..1000]).unwrap();
        want.extend_from_slice(&noise[..1000]);
        let stored = e.finish().unwrap();

        let got = read_back(&stored);
        assert!(
            got == want,
            "read back {} bytes, wrote {}",
            got.len(),
            want.len()
        );
        // The raw parts cost their headers and nothing else.
        let text_part = zstd::encode_all(&text[..], 3).unwrap().len();
        assert!(
            stored.len() < noise.len() + 1000 + 3 * text_part + 200,
            "{}",
            stored.len()
        );

        if let Some(out) = zstd_cli_reads(stored) {
            assert!(out == want, "zstd -dc gave {} bytes", out.len());
        }
    }

    /// What `zstd -dc` makes of `stored`; None (said on stderr) where the
    /// zstd program is missing.
    fn zstd_cli_reads(stored: Vec<u8>) -> Option<Vec<u8>> {
        let mut zstd_cli = std::process::Command::new("zstd");
        zstd_cli
            .args(["-dc"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        match zstd_cli.spawn() {
            Ok(mut child) => {
                let mut stdin = child.stdin.take().unwrap();
                let feed = std::thread::spawn(move || stdin.write_all(&stored));
                let out = child.wait_with_output().unwrap();
                feed.join().unwrap().unwrap();
                assert!(out.status.success());
                Some(out.stdout)
            }
            Err(e) => {
                eprintln!("skipped: zstd -dc not run ({e})");
                None
            }
        }
    }

    /// A volume of alternating packed and text files: hundreds of frame
    /// switches through the one context, flushes between, every piece back
    /// in order through both decoders.
    #[test]
    fn hundreds_of_switches_read_back_in_order() {
        let noise = testing::noise(1 << 20, 11);
        let mut e = Compression::Zstd(3).encoder(Vec::new()).unwrap();
        let hint = e.raw_hint();
        let mut want = Vec::new();
        for i in 0..300usize {
            let text = format!("cell {i}: loss {}\n", i * 7).repeat(1 + i % 50);
            hint.set(false);
            e.write_all(text.as_bytes()).unwrap();
            want.extend_from_slice(text.as_bytes());
            if i % 7 == 0 {
                e.flush().unwrap();
            }
            let piece = &noise[(i * 3001) % 4096..][..(i * 977) % (200 << 10)];
            hint.set(i % 5 != 0);
            e.write_all(piece).unwrap();
            want.extend_from_slice(piece);
        }
        let stored = e.finish().unwrap();
        assert!(read_back(&stored) == want);
        if let Some(out) = zstd_cli_reads(stored) {
            assert!(out == want, "zstd -dc gave {} bytes", out.len());
        }
    }

    /// A sink that takes `left` bytes, then fails every write.
    struct FailsAfter {
        left: usize,
    }

    impl Write for FailsAfter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Err(io::Error::other("disk full"));
            }
            let n = buf.len().min(self.left);
            self.left -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Once the sink failed, the stream is cut somewhere unknown: nothing
    /// after that may look like success, in either kind of frame.
    #[test]
    fn after_a_failed_write_every_call_fails() {
        for raw in [false, true] {
            let mut e = Compression::Zstd(3)
                .encoder(FailsAfter { left: 100 })
                .unwrap();
            e.raw_hint().set(raw);
            let noise = testing::noise(4 << 20, 3);
            assert!(e.write_all(&noise).is_err(), "raw {raw}");
            assert!(e.write(b"more").is_err(), "raw {raw}");
            assert!(e.flush().is_err(), "raw {raw}");
            assert!(e.finish().is_err(), "raw {raw}");
        }
    }

    #[test]
    fn an_empty_stream_is_a_valid_stream() {
        let e = Compression::Zstd(3).encoder(Vec::new()).unwrap();
        let stored = e.finish().unwrap();
        assert!(!stored.is_empty());
        assert!(read_back(&stored).is_empty());
    }

    #[test]
    fn a_stream_that_is_only_raw_is_a_valid_stream() {
        let mut e = Compression::Zstd(3).encoder(Vec::new()).unwrap();
        e.raw_hint().set(true);
        e.write_all(b"abc").unwrap();
        let stored = e.finish().unwrap();
        assert_eq!(read_back(&stored), b"abc");
    }

    /// A run of small packed pieces with a few KiB of headers between
    /// them: the pieces go raw, each gap is one small compressed frame of
    /// its own (no frame of the workers, so no drain per piece), and
    /// compressible bytes past HOLD_MAX after a raw stretch become an
    /// ordinary frame again. Everything reads back in order.
    #[test]
    fn headers_between_raw_pieces_become_small_frames() {
        let noise = testing::noise(2 << 20, 5);
        let mut e = Compression::Zstd(3).encoder(Vec::new()).unwrap();
        let hint = e.raw_hint();
        let mut want = Vec::new();
        let header = |i: usize| {
            format!(
                "{:0>1536}",
                format!("thumbs/t{i:06}.jpg mtime=1733280000.{i:09}")
            )
        };
        for i in 0..100usize {
            let h = header(i);
            e.write_all(h.as_bytes()).unwrap();
            want.extend_from_slice(h.as_bytes());
            let piece = &noise[i * 8192..][..8192];
            hint.set(true);
            e.write_all(piece).unwrap();
            hint.set(false);
            want.extend_from_slice(piece);
        }
        // Past HOLD_MAX after a raw stretch: the workers' frame again,
        // with the held header first.
        let text = b"notebook cell output 42\n".repeat(HOLD_MAX / 10);
        let h = header(100);
        e.write_all(h.as_bytes()).unwrap();
        want.extend_from_slice(h.as_bytes());
        e.write_all(&text).unwrap();
        want.extend_from_slice(&text);
        let stored = e.finish().unwrap();
        assert!(read_back(&stored) == want);

        let frames = testing::frames(&stored);
        // The first header starts the stream's ordinary frame; then 100
        // raw frames with 99 small frames between them, and the text.
        assert_eq!(frames.len(), 1 + 100 + 99 + 1);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.raw, i % 2 == 1, "frame {i}");
            let between = !f.raw && (2..frames.len() - 1).contains(&i);
            if f.raw {
                assert_eq!(f.bytes.len(), 8192, "frame {i}");
            } else if between {
                assert_eq!(f.bytes.len(), 1536, "frame {i}");
                assert!(f.stored < 300, "frame {i}: {} bytes", f.stored);
            }
        }
        assert_eq!(frames.last().unwrap().bytes.len(), 1536 + text.len());
        // The raw pieces cost their frame and block headers; the headers
        // between them a few dozen bytes each.
        assert!(stored.len() < 100 * (8192 + 12 + 300), "{}", stored.len());
        if let Some(out) = zstd_cli_reads(stored) {
            assert!(out == want, "zstd -dc gave {} bytes", out.len());
        }
    }

    /// Held bytes are written by a flush, and the stream goes on.
    #[test]
    fn a_flush_writes_what_is_held() {
        let mut e = Compression::Zstd(3).encoder(Vec::new()).unwrap();
        let hint = e.raw_hint();
        hint.set(true);
        e.write_all(&testing::noise(5000, 9)).unwrap();
        hint.set(false);
        e.write_all(b"held back").unwrap();
        e.flush().unwrap();
        let Encoder::Zstd(z) = &e else { panic!("zstd") };
        let flushed = z.w.clone();
        assert_eq!(
            testing::frames(&flushed).last().unwrap().bytes,
            b"held back"
        );
        e.write_all(b" and more").unwrap();
        let stored = e.finish().unwrap();
        let mut want = testing::noise(5000, 9);
        want.extend_from_slice(b"held back and more");
        assert!(read_back(&stored) == want);
    }
}
