//! The one way a tar becomes stored bytes: tar -> compressor -> [age] ->
//! bounded pipe -> sha256 -> upload (docs/ARCHITECTURE.md §3). Backups and
//! WAL objects both go through here; what differs is only what writes the
//! tar and what the manifest says.

use crate::compression::{ArtifactOut, Compression, Encoder};
use crate::encryption::{Recipients, Sealed};
use crate::pipe::{self, ChunkWriter, HashCount};
use crate::store::Upload;
use crate::{Error, Result};

/// Where a producer writes its entries.
pub type TarSink = tar::Builder<Encoder<Sealed<ChunkWriter>>>;

/// A packed file's bytes are read straight into the pipe's chunk, where
/// nothing comes between the zstd stream and the pipe (not encrypted).
impl ArtifactOut for Encoder<Sealed<ChunkWriter>> {
    fn read_raw(
        &mut self,
        r: &mut dyn std::io::Read,
        max: usize,
    ) -> Option<std::io::Result<usize>> {
        self.raw_block_with(max, |sealed, max, head| match sealed {
            Sealed::Plain(chunks) => chunks.read_block(r, max, head),
            Sealed::Age(_) => None,
        })
    }
}

/// The stored bytes, as the manifest records them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBytes {
    pub sha256: String,
    pub size: u64,
}

/// Runs `produce` on a blocking thread, writing its tar through the
/// compressor (and age, with `recipients`) into `upload`, hashed on the
/// way. Returns what `produce` returned. On an error nothing is committed
/// and the caller must abort the upload; memory is the pipe's few chunks
/// whatever the tar's size.
pub async fn upload_tar<U, R, F>(
    upload: &mut U,
    compression: Compression,
    recipients: Option<Recipients>,
    produce: F,
) -> Result<(R, StoredBytes)>
where
    U: Upload,
    R: Send + 'static,
    F: FnOnce(&mut TarSink) -> Result<R> + Send + 'static,
{
    let (tx, mut rx) = pipe::channel();
    let (sink, returns) = ChunkWriter::recycling(tx);
    // The producer's own log lines belong to the caller's span too.
    let span = tracing::Span::current();
    let producer = tokio::task::spawn_blocking(move || {
        span.in_scope(|| write_tar(sink, compression, recipients.as_ref(), produce))
    });
    let mut upload_error = None;
    // Hashed here, not in the producer, so reading and hashing overlap on
    // two cores; the hash fetches a page ahead of the bytes another core
    // wrote (`pipe::update_ahead`).
    let mut stored = HashCount::default();
    while let Some(chunk) = rx.recv().await {
        stored.update(&chunk);
        match upload.write(chunk).await {
            Ok(Some(used)) => returns.give(used),
            Ok(None) => {}
            Err(e) => {
                upload_error = Some(e);
                break;
            }
        }
    }
    // Closing our end makes a blocked producer fail fast.
    drop(rx);
    // A pipe closed early looks like a clean end of stream: the
    // producer's own result decides whether the bytes are complete.
    let produced = producer
        .await
        .map_err(|e| Error::Internal(format!("the tar worker crashed: {e}")))
        .and_then(|r| r);
    // When the upload failed, the producer only saw the pipe close: the
    // upload's error is the cause worth reporting.
    match (produced, upload_error) {
        (Ok(r), None) => {
            let (sha256, size) = stored.finish();
            Ok((r, StoredBytes { sha256, size }))
        }
        (_, Some(e)) | (Err(e), None) => Err(e),
    }
}

/// The blocking half: tar -> compressor -> [age] -> pipe.
fn write_tar<R>(
    sink: ChunkWriter,
    compression: Compression,
    recipients: Option<&Recipients>,
    produce: impl FnOnce(&mut TarSink) -> Result<R>,
) -> Result<R> {
    // After compression: encrypted bytes do not compress.
    let sealed =
        Sealed::new(sink, recipients).map_err(|e| Error::io("starting age encryption", e))?;
    let encoder = compression
        .encoder(sealed)
        .map_err(|e| Error::io("starting the compressor", e))?;
    let mut tar = tar::Builder::new(encoder);
    tar.follow_symlinks(false);
    let r = produce(&mut tar)?;
    let write_err = |e| {
        Error::io(
            "finishing the artifact stream (the upload may have stopped)",
            e,
        )
    };
    let encoder = tar.into_inner().map_err(write_err)?;
    let sealed = encoder.finish().map_err(write_err)?;
    let chunks = sealed.finish().map_err(write_err)?;
    chunks.finish().map_err(write_err)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aligned::AlignedBuf;
    use crate::compression::testing::{frames, noise};
    use crate::pipe::CHUNK_SIZE;
    use std::io::Write;

    /// A file as the kernel may give it: short reads of varying length,
    /// and now and then an interrupted one.
    struct Uneven<'a> {
        rest: &'a [u8],
        calls: usize,
    }

    impl std::io::Read for Uneven<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(7) {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            let n = out
                .len()
                .min(self.rest.len())
                .min([1000, 3, 70_000][self.calls % 3]);
            out[..n].copy_from_slice(&self.rest[..n]);
            self.rest = &self.rest[n..];
            Ok(n)
        }
    }

    /// Text, then a packed file read in place (`read_raw`) in pieces of
    /// awkward sizes, with short and interrupted reads, then text again:
    /// the stream reads back as what went in, the packed bytes are stored
    /// raw, and every chunk sent but the last is whole (a folder target
    /// writes whole chunks as they are). (When a header and a byte no
    /// longer fit in a chunk is `pipe`'s own test.)
    #[test]
    fn packed_bytes_read_in_place_read_back_and_keep_the_chunks_whole() {
        let text: Vec<u8> = (0..300_000u32)
            .flat_map(|i| format!("line {} of text\n", i % 977).into_bytes())
            .collect();
        let packed = noise(5 * CHUNK_SIZE + 12_345, 7);
        let (tx, mut rx) = pipe::channel();
        let sealed = Sealed::new(ChunkWriter::new(tx), None).unwrap();
        let mut e = Compression::Zstd(3).encoder(sealed).unwrap();
        let hint = e.raw_hint();
        let (text2, packed2) = (text.clone(), packed.clone());
        let writer = std::thread::spawn(move || {
            e.write_all(&text2).unwrap();
            hint.set(true);
            let mut r = Uneven {
                rest: &packed2[..],
                calls: 0,
            };
            let mut in_place = 0;
            for piece in [1, 2, 3, 4, 5, 4093, 131_072, 1_000_000].iter().cycle() {
                match e.read_raw(&mut r, *piece) {
                    Some(Ok(0)) => break,
                    Some(Ok(n)) => in_place += n,
                    Some(Err(e)) => panic!("{e}"),
                    // A header would not fit in the chunk: written as usual.
                    None => {
                        let n = (*piece).min(r.rest.len());
                        e.write_all(&r.rest[..n]).unwrap();
                        r.rest = &r.rest[n..];
                    }
                }
            }
            hint.set(false);
            e.write_all(&text2).unwrap();
            e.finish().unwrap().finish().unwrap().finish().unwrap();
            in_place
        });
        let mut chunks: Vec<AlignedBuf> = Vec::new();
        while let Some(c) = rx.blocking_recv() {
            chunks.push(c);
        }
        let in_place = writer.join().unwrap();
        assert!(in_place > packed.len() * 9 / 10, "{in_place} read in place");
        let (last, whole) = chunks.split_last().unwrap();
        assert!(whole.iter().all(|c| c.len() == CHUNK_SIZE));
        assert!(last.len() <= CHUNK_SIZE);
        let stream: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let back = zstd::stream::decode_all(&stream[..]).unwrap();
        let want = [&text[..], &packed[..], &text[..]].concat();
        assert!(back == want, "the stream reads back as written");
        let raw: usize = frames(&stream)
            .iter()
            .filter(|f| f.raw)
            .map(|f| f.bytes.len())
            .sum();
        assert_eq!(raw, packed.len(), "the packed bytes, and only they, raw");
    }
}
