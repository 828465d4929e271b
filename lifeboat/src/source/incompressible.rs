//! Whether a large file's bytes will shrink, judged before its entry is
//! written: packed model weights, archives, media and compressed columns
//! cost a zstd backup most of its CPU for nothing. Such a file's bytes are
//! stored raw in the artifact (`compression::RawHint`); what comes back is
//! the same either way (docs/ARCHITECTURE.md, "Being changed", issue 26).

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Smaller files are compressed whatever they hold: ending a compressed
/// frame waits for zstd's workers to drain their jobs (one job is 1 MiB,
/// `compression::ZSTD_JOB_SIZE`), which a smaller file does not pay back.
/// The samples read are then at most a sixteenth of the file.
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
pub fn will_not_shrink(file: &File, len: u64) -> bool {
    if len < RAW_MIN {
        return false;
    }
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
        for i in 1..=SAMPLES {
            let at = len / (SAMPLES + 1) * i;
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
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    #[test]
    fn packed_bytes_are_stored_raw_and_text_is_compressed() {
        let (f, len) = file_of(&noise(6 << 20));
        assert!(will_not_shrink(f.as_file(), len));
        let (f, len) = file_of(&noise(RAW_MIN as usize));
        assert!(will_not_shrink(f.as_file(), len));

        let text = b"{\"cell\": 1, \"output\": \"loss 0.25\"}\n".repeat(200_000);
        let (f, len) = file_of(&text);
        assert!(!will_not_shrink(f.as_file(), len));

        // Mostly noise but with text in the middle: compressed, to keep
        // the artifact's size.
        let mut mixed = noise(6 << 20);
        let third = mixed.len() / 3;
        mixed[third..2 * third].copy_from_slice(&text[..third]);
        let (f, len) = file_of(&mixed);
        assert!(!will_not_shrink(f.as_file(), len));

        // Small files are never judged.
        let (f, len) = file_of(&noise((RAW_MIN - 1) as usize));
        assert!(!will_not_shrink(f.as_file(), len));
    }
}
