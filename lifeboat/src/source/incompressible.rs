//! Whether a file's bytes will shrink, judged before its entry is written:
//! packed model weights, archives, media and compressed columns cost a zstd
//! backup most of its CPU for nothing. Large files are judged from samples
//! read with `pread`, small ones from their bytes in memory. Such a file's
//! bytes are stored raw in the artifact (`compression::RawHint`); what
//! comes back is the same either way (docs/ARCHITECTURE.md, "Being
//! changed", issue 26).

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Streamed files from this size are judged whatever came before them;
/// smaller ones only in a raw stretch ([`STAYING_MIN`]): ending a
/// compressed frame waits for zstd's workers to drain their jobs (one job
/// is 1 MiB, `compression::ZSTD_JOB_SIZE`), which a smaller file does not
/// pay back. The samples read are then at most a sixteenth of the file.
pub const RAW_MIN: u64 = 1 << 20;

/// Samples spread over the file, away from its start and end (headers and
/// indexes of packed formats often compress).
const SAMPLES: u64 = 8;
const SAMPLE: usize = 8 << 10;

/// Stored raw when the samples compress to more than this share of their
/// size at zstd's fastest level: nothing worth the CPU is left to gain.
const KEEP_PERCENT: usize = 97;

/// A level-1 compressor with its sample and output buffers, one per
/// thread that writes tar entries, made at its first large file.
type Judge = (zstd::bulk::Compressor<'static>, Vec<u8>, Vec<u8>);

thread_local! {
    static JUDGE: RefCell<Option<Judge>> = const { RefCell::new(None) };
}

/// Whether `file` (of `len` bytes) looks like data that will not shrink.
/// Reads a few samples with `pread`, so the file's position is untouched;
/// any failure reads as "compress it", the old way.
///
/// `staying_raw` says the stream is in a raw stretch already: keeping it
/// raw costs no frame switch, so files from [`STAYING_MIN`] are judged
/// (with fewer samples, a smaller file pays back less judging).
pub fn will_not_shrink(file: &File, len: u64, staying_raw: bool) -> bool {
    let min = if staying_raw { STAYING_MIN } else { RAW_MIN };
    if len < min {
        return false;
    }
    let samples = (len / SAMPLE_SPACING).clamp(2, SAMPLES);
    JUDGE.with(|j| {
        let mut j = j.borrow_mut();
        if j.is_none() {
            let Ok(c) = zstd::bulk::Compressor::new(1) else {
                return false;
            };
            *j = Some((c, vec![0; SAMPLE], Vec::with_capacity(SAMPLE + 512)));
        }
        let Some((compressor, sample, out)) = j.as_mut() else {
            return false;
        };
        let (mut read, mut packed) = (0usize, 0usize);
        for i in 1..=samples {
            let at = len / (samples + 1) * i;
            let Ok(n) = file.read_at(sample, at) else {
                return false;
            };
            if n == 0 {
                return false;
            }
            out.clear();
            if compressor.compress_to_buffer(&sample[..n], out).is_err() {
                return false;
            }
            read += n;
            packed += out.len();
        }
        packed * 100 > read * KEEP_PERCENT
    })
}

/// Files the read-ahead holds in memory are judged from all their bytes,
/// but only from this size: below it a tar header outweighs what a raw
/// copy saves, and too few bytes say little about their spread.
pub const SMALL_MIN: usize = 2 << 10;

/// In a raw stretch, streamed files from this size are judged too. In a
/// walk, streamed files are larger than the read-ahead's (64 KiB) anyway;
/// files appended one by one (WAL, a hard link's carrier) may be smaller.
pub const STAYING_MIN: u64 = 16 << 10;

/// A file of `len` bytes gets one sample per this many bytes, between 2
/// and [`SAMPLES`].
const SAMPLE_SPACING: u64 = 128 << 10;

/// Order-0 entropy, in bits per byte, from which bytes count as packed:
/// zstd's Huffman-coded literals could at best take them to 97.5 % of
/// their size, the same bar as [`KEEP_PERCENT`] (matches aside: a small
/// packed file seldom repeats itself).
const ENTROPY_MIN: f64 = 7.8;

/// Distinct byte values in a KiB from the middle below which the bytes
/// are surely not packed: text uses a few dozen; random bytes show ~251.
/// (The middle, not the start: a JPEG's EXIF header or a PNG's chunks
/// use few values, its entropy-coded data all of them.)
const DISTINCT_MIN: usize = 200;

/// Whether a small file's bytes, already in memory, look packed (JPEG,
/// PNG, gzip, encrypted): nearly every byte value equally likely. Far
/// cheaper than compressing them: a count of byte values, and for text a
/// look at one KiB only. The writer stores such files raw only in a raw
/// stretch or a run worth a frame switch (`source::files`).
pub fn looks_packed(bytes: &[u8]) -> bool {
    if bytes.len() < SMALL_MIN {
        return false;
    }
    let mid = bytes.len() / 2 - 512;
    let mut seen = [false; 256];
    for &b in &bytes[mid..mid + 1024] {
        seen[usize::from(b)] = true;
    }
    if seen.iter().filter(|&&s| s).count() < DISTINCT_MIN {
        return false;
    }
    // Four tables, so consecutive equal bytes do not wait on each other.
    let mut counts = [[0u32; 256]; 4];
    let mut quads = bytes.chunks_exact(4);
    for q in &mut quads {
        for (table, &b) in counts.iter_mut().zip(q) {
            table[usize::from(b)] += 1;
        }
    }
    for &b in quads.remainder() {
        counts[0][usize::from(b)] += 1;
    }
    let [c0, c1, c2, c3] = &counts;
    let n = bytes.len() as f64;
    let (mut bits, mut distinct) = (0.0f64, 0u32);
    for (((a, b), c), d) in c0.iter().zip(c1).zip(c2).zip(c3) {
        let c = a + b + c + d;
        if c > 0 {
            let p = f64::from(c) / n;
            bits -= p * p.log2();
            distinct += 1;
        }
    }
    // Miller-Madow: a sample's entropy falls short of its source's by
    // about (values seen - 1) / (2 n ln 2); 0.045 bits at 4 KiB.
    bits += f64::from(distinct.saturating_sub(1)) / (2.0 * n * std::f64::consts::LN_2);
    bits >= ENTROPY_MIN
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(bytes: &[u8]) -> (tempfile::NamedTempFile, u64) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        (f, bytes.len() as u64)
    }

    fn noise(n: usize) -> Vec<u8> {
        crate::compression::testing::noise(n, 0x9E37_79B9_7F4A_7C15)
    }

    #[test]
    fn packed_bytes_are_stored_raw_and_text_is_compressed() {
        let (f, len) = file_of(&noise(6 << 20));
        assert!(will_not_shrink(f.as_file(), len, false));
        let (f, len) = file_of(&noise(RAW_MIN as usize));
        assert!(will_not_shrink(f.as_file(), len, false));

        let text = b"{\"cell\": 1, \"output\": \"loss 0.25\"}\n".repeat(200_000);
        let (f, len) = file_of(&text);
        assert!(!will_not_shrink(f.as_file(), len, false));

        // Mostly noise but with text in the middle: compressed, to keep
        // the artifact's size.
        let mut mixed = noise(6 << 20);
        let third = mixed.len() / 3;
        mixed[third..2 * third].copy_from_slice(&text[..third]);
        let (f, len) = file_of(&mixed);
        assert!(!will_not_shrink(f.as_file(), len, false));

        // Small files are never judged.
        let (f, len) = file_of(&noise((RAW_MIN - 1) as usize));
        assert!(!will_not_shrink(f.as_file(), len, false));
    }

    #[test]
    fn small_files_are_judged_by_the_spread_of_their_bytes() {
        use std::io::Write as _;
        for n in [SMALL_MIN, 8 << 10, 64 << 10] {
            assert!(looks_packed(&noise(n)), "{n} random bytes");
        }
        let words = b"the quick brown fox jumps over the lazy dog 0123456789\n".repeat(400);
        assert!(!looks_packed(&words));
        // A gzip stream of text: packed, as a .gz log or a PNG's deflate is.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        let mut text = Vec::new();
        for i in 0..20_000u32 {
            text.extend_from_slice(
                format!(
                    "{} req={} {}\n",
                    i % 97,
                    i.wrapping_mul(2_654_435_761),
                    i % 13
                )
                .as_bytes(),
            );
        }
        gz.write_all(&text).unwrap();
        let gz = gz.finish().unwrap();
        assert!(gz.len() > 16 << 10, "{}", gz.len());
        assert!(looks_packed(&gz[..16 << 10]));
        // Every byte value but unevenly used (half the bytes zero, as in
        // machine code or sparse tables): compressed.
        let uneven: Vec<u8> = noise(64 << 10)
            .chunks(2)
            .map(|p| if p[1] & 1 == 1 { p[0] } else { 0 })
            .collect();
        assert!(!looks_packed(&uneven));
        // A JPEG-like file: a header of few byte values (EXIF), then
        // entropy-coded data.
        let mut jpeg = b"JFIF\0Exif\0\0MM\0*camera model 2024:11:30 ".repeat(24);
        jpeg.extend_from_slice(&noise(15 << 10));
        assert!(looks_packed(&jpeg));
        // Too small to say.
        assert!(!looks_packed(&noise(SMALL_MIN - 1)));
    }
}
