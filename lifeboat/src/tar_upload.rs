//! The one way a tar becomes stored bytes: tar -> compressor -> [age] ->
//! bounded pipe -> sha256 -> upload (docs/ARCHITECTURE.md §3). Backups and
//! WAL objects both go through here; what differs is only what writes the
//! tar and what the manifest says.

use crate::compression::{Compression, Encoder};
use crate::encryption::{Recipients, Sealed};
use crate::pipe::{self, ChunkWriter, HashCount};
use crate::store::Upload;
use crate::{Error, Result};

/// Where a producer writes its entries.
pub type TarSink = tar::Builder<Encoder<Sealed<ChunkWriter>>>;

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
    // Hashed here, not in the producer: its thread walks, reads and feeds
    // the compressor and is the one that bounds the speed.
    let mut stored = HashCount::default();
    while let Some(chunk) = rx.recv().await {
        // The producer only sends Ok chunks; errors come from its result.
        let Ok(chunk) = chunk else { continue };
        stored.update(&chunk);
        match upload.write(chunk).await {
            Ok(used) => returns.give(used),
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
