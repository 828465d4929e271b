//! An artifact streamed from its target through the tar reader
//! ([`crate::tar_read::read_artifact`]), extracting or only checking: the
//! one read that restores, verification, and a restore's WAL objects share
//! (docs/ARCHITECTURE.md §6, "Attempts": a stream the store broke off is
//! told apart from a damaged artifact here).

use std::sync::Arc;

use crate::encryption::Identities;
use crate::manifest::Manifest;
use crate::pipe::{self, ChunkReader};
use crate::progress::{self, Cancel, Progress};
use crate::store::{AnyTarget, Target};
use crate::tar_read::{self, Mapping, Mode, ReadReport, Step};
use crate::{Error, Result};

/// Streams an artifact from `target` through [`tar_read::read_artifact`]:
/// extracting into `extract`'s staging folders (at that step of its
/// chain), or only checking when `None`.
pub async fn read(
    target: &AnyTarget,
    m: &Manifest,
    keys: Option<&Identities>,
    extract: Option<(Vec<Mapping>, Step)>,
    every: std::time::Duration,
    what: &'static str,
) -> Result<ReadReport> {
    // `open` never reads far past the recorded size (READ_PAST_SIZE).
    let failed = StoreFailure::default();
    let reader = Watched {
        inner: target.open(m).await?,
        failed: failed.clone(),
    };
    let (tx, rx) = pipe::read_channel();
    let (chunks, spares) = ChunkReader::recycling(rx, pipe::CHUNK_SIZE);
    let feeder = tokio::spawn(pipe::feed(reader, tx, spares));
    let progress = Arc::new(Progress::default());
    let _report = progress::report(progress.clone(), every, what);
    let manifest = m.clone();
    let keys = keys.cloned();
    let cancel: Cancel = Default::default();
    let res = tokio::task::spawn_blocking(move || {
        let (mappings, step) = match extract {
            Some((m, step)) => (Some(m), step),
            None => (None, Step::only()),
        };
        let mode = match &mappings {
            Some(m) => Mode::Extract(m),
            None => Mode::Verify,
        };
        tar_read::read_artifact(
            chunks,
            &manifest,
            keys.as_ref(),
            mode,
            step,
            &progress,
            &cancel,
        )
    })
    .await
    .map_err(|e| Error::Internal(format!("the {what} worker crashed: {e}")))?;
    feeder.abort();
    // A stream the store broke off looks like a truncated artifact to the
    // reader; it proves nothing about the artifact, so say what it was.
    match (res, failed.get()) {
        (Err(e), Some(cause)) if !matches!(e, Error::Config(_)) => Err(Error::Target {
            target: target.describe(),
            message: format!("reading {} broke off: {cause}", m.artifact),
        }),
        (res, _) => res,
    }
}

/// The first error the store's stream returned, if any.
#[derive(Clone, Default)]
struct StoreFailure(Arc<std::sync::Mutex<Option<String>>>);

impl StoreFailure {
    fn get(&self) -> Option<String> {
        self.0.lock().map(|g| g.clone()).unwrap_or(None)
    }
}

/// A store's stream that remembers its first error.
struct Watched<R> {
    inner: R,
    failed: StoreFailure,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Err(e)) = &r {
            if let Ok(mut g) = self.failed.0.lock() {
                g.get_or_insert_with(|| crate::error::error_chain(e));
            }
        }
        r
    }
}
