//! One backup's place in an incremental chain (docs/ARCHITECTURE.md,
//! "Incremental chains"): before the walk, which kind of backup this is
//! (`chain::plan`) and the state it compares the volume with, fetched from
//! the target and checked; after the walk, the state it leaves, stored
//! beside the link before the link's manifest.
//!
//! Nothing here can make a backup fail that a full backup would have
//! survived: a base state that cannot be fetched or read starts a new
//! chain (a full backup), with a warning that says why.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::chain::plan::{self, FullEvery, Next};
use crate::chain::state::{self, Header};
use crate::manifest::{Manifest, StateBlob};
use crate::pipe::{self, HashCount};
use crate::source::increment::Increment;
use crate::store::{AnyTarget, Listing, Target};
use crate::{Error, Result};

/// zstd level of a stored state: it is small next to the data, and read
/// back once per backup. Level 1 (zstd's `fast` strategy): its compression
/// was a sixth of the CPU of a link with nothing to store (200,000 unchanged
/// files), and on that state it even compresses a little better than 3.
const STATE_LEVEL: i32 = 1;

/// The buffer between the state's writer or reader and zstd: the state is
/// written and read a field at a time (a few bytes), and each call into
/// zstd has a cost of its own.
const STATE_BUFFER: usize = 64 * 1024;

/// Where the coming backup sits in a chain, for its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub level: u32,
    pub base: Option<String>,
    pub chain: String,
}

/// A backup about to run as a chain's link: its place, the increment the
/// files source walks with, and where the new state goes.
pub struct Prepared {
    pub place: Place,
    /// Taken by the caller, for the files source to walk with.
    pub increment: Option<Increment>,
    new_state: NewState,
}

/// The new state as the walk writes it: zstd into an unnamed file in
/// `TMPDIR`, finished when the walk's writer is dropped.
struct NewState {
    /// A second handle on the file, to read it back for the upload.
    file: File,
    /// How finishing the zstd stream ended (`None` until it did).
    finished: Arc<Mutex<Option<io::Result<()>>>>,
}

/// Plans the backup `id` and prepares its increment. `None`: a full
/// backup outside any chain (`LIFEBOAT_FULL_EVERY` off, or no room in
/// `TMPDIR` for a state: then a warning).
pub async fn prepare(
    target: &AnyTarget,
    listing: &Listing,
    full_every: Option<FullEvery>,
    paths: &[String],
    id: &str,
    spool_dir: &Path,
    now: DateTime<Utc>,
) -> Option<Prepared> {
    let links: Vec<plan::Link> = listing
        .artifacts
        .iter()
        .filter_map(|a| link_of(&a.manifest))
        .collect();
    let newest = listing.artifacts.first().map(|a| {
        links
            .iter()
            .find(|l| l.id == a.manifest.id && a.manifest.chain.is_some())
    });
    let first = newest
        .flatten()
        .and_then(|n| links.iter().find(|l| l.id == n.chain));
    let mut next = plan::next(full_every, newest, first, paths, now);
    if let Next::Link { base, .. } = &next {
        // Every link down to the first must be there and fit: a link
        // added to a chain with a gap would never restore.
        if let Err(why) = whole_chain(listing, base) {
            next = Next::Start(why);
        }
    }
    let (place, old) = match next {
        Next::Full => return None,
        Next::Start(why) => {
            info!(reason = %why, "this backup starts a new incremental chain (a full backup)");
            (start(id), None)
        }
        Next::Link { base, chain, level } => {
            let base_manifest = listing
                .artifacts
                .iter()
                .map(|a| &a.manifest)
                .find(|m| m.id == base)
                .expect("the plan's base comes from the listing");
            match fetch_state(target, base_manifest, &chain, paths, spool_dir).await {
                Ok(old) => {
                    info!(base = %base, chain = %chain, level, "this backup is an incremental link: only what changed since {base}");
                    let place = Place {
                        level,
                        base: Some(base),
                        chain,
                    };
                    (place, Some(old))
                }
                Err(e) => {
                    warn!(base = %base, error = %e, "the chain's state could not be used; this backup starts a new incremental chain (a full backup)");
                    (start(id), None)
                }
            }
        }
    };
    let header = Header {
        id: id.to_string(),
        chain: place.chain.clone(),
        paths: paths.to_vec(),
    };
    match new_state(spool_dir, &header) {
        Ok((new, new_state)) => Some(Prepared {
            place,
            increment: Some(Increment { old, new }),
            new_state,
        }),
        Err(e) => {
            warn!(dir = %spool_dir.display(), error = %e, "no room for the chain's state in TMPDIR; this backup is a full one outside any chain");
            None
        }
    }
}

/// Whether the chain ending at `newest` is whole in `listing`: each base
/// listed, one level less, same chain and paths, down to level 0.
fn whole_chain(listing: &Listing, newest: &str) -> std::result::Result<(), String> {
    let by_id: std::collections::HashMap<&str, &Manifest> = listing
        .artifacts
        .iter()
        .map(|a| (a.manifest.id.as_str(), &a.manifest))
        .collect();
    by_id[newest]
        .chain_links(|id| by_id.get(id).copied())
        .map(|_| ())
        .map_err(|gap| {
            format!(
                "link {} of the chain is missing, unreadable or does not fit",
                gap.base()
            )
        })
}

fn start(id: &str) -> Place {
    Place {
        level: 0,
        base: None,
        chain: id.to_string(),
    }
}

/// What the plan needs of a listed chain link.
fn link_of(m: &Manifest) -> Option<plan::Link> {
    Some(plan::Link {
        id: m.id.clone(),
        level: m.level,
        chain: m.chain.clone()?,
        started_at: m.started_at,
        paths: m.paths.clone(),
        has_state: m.state.is_some(),
    })
}

/// Downloads the state `base` left into an unnamed file in `spool_dir`,
/// checking its size and sha256 against `base`'s manifest, and opens it:
/// its header must name `base`, `chain` and today's `paths`.
async fn fetch_state(
    target: &AnyTarget,
    base: &Manifest,
    chain: &str,
    paths: &[String],
    spool_dir: &Path,
) -> Result<state::Reader<Box<dyn Read + Send>>> {
    let want = base.state.as_ref().ok_or_else(|| Error::Corrupt {
        id: base.id.clone(),
        reason: "records no chain state".into(),
    })?;
    let mut src = target
        .open_state(base)
        .await?
        .ok_or_else(|| Error::Corrupt {
            id: base.id.clone(),
            reason: "records no chain state".into(),
        })?;
    let spool_err = |e| Error::io(format!("keeping {} in TMPDIR", want.file), e);
    let file = tempfile::tempfile_in(spool_dir).map_err(spool_err)?;
    let mut out = tokio::fs::File::from_std(file.try_clone().map_err(spool_err)?);
    let mut got = HashCount::default();
    let mut spare = None;
    loop {
        let chunk = pipe::read_chunk(&mut src, spare.take())
            .await
            .map_err(|e| {
                Error::io(
                    format!("reading {} from {}", want.file, target.describe()),
                    e,
                )
            })?;
        if chunk.is_empty() {
            break;
        }
        got.update(&chunk);
        tokio::io::AsyncWriteExt::write_all(&mut out, &chunk)
            .await
            .map_err(spool_err)?;
        spare = Some(chunk);
    }
    tokio::io::AsyncWriteExt::flush(&mut out)
        .await
        .map_err(spool_err)?;
    let (sha256, size) = got.finish();
    if sha256 != want.sha256 || size != want.size {
        return Err(Error::Corrupt {
            id: base.id.clone(),
            reason: format!(
                "its chain state {} is {size} bytes with sha256 {sha256}, the manifest says {} and {}",
                want.file, want.size, want.sha256
            ),
        });
    }
    let (base_id, chain, paths) = (base.id.clone(), chain.to_string(), paths.to_vec());
    tokio::task::spawn_blocking(move || open_state(file, &base_id, &chain, &paths))
        .await
        .map_err(|e| Error::Internal(format!("opening the chain's state crashed: {e}")))?
}

fn open_state(
    mut file: File,
    base: &str,
    chain: &str,
    paths: &[String],
) -> Result<state::Reader<Box<dyn Read + Send>>> {
    let bad = |reason: String| Error::Corrupt {
        id: base.to_string(),
        reason: format!("its chain state: {reason}"),
    };
    file.rewind()
        .map_err(|e| Error::io("rewinding the chain's state", e))?;
    let decoder = zstd::stream::read::Decoder::new(file).map_err(|e| bad(e.to_string()))?;
    // The state is read a few bytes at a time; each read straight from the
    // decoder is a call into zstd (see `STATE_BUFFER`).
    let inp: Box<dyn Read + Send> = Box::new(BufReader::with_capacity(STATE_BUFFER, decoder));
    let (header, reader) = state::Reader::new(inp).map_err(|e| bad(e.to_string()))?;
    if header.id != base || header.chain != chain || header.paths != paths {
        return Err(bad(format!(
            "it was taken for {} of chain {} over {:?}, not for {base} of {chain} over {paths:?}",
            header.id, header.chain, header.paths
        )));
    }
    Ok(reader)
}

/// The writer the walk fills, and the handle to read it back with.
fn new_state(
    spool_dir: &Path,
    header: &Header,
) -> io::Result<(state::Writer<Box<dyn Write + Send>>, NewState)> {
    let file = tempfile::tempfile_in(spool_dir)?;
    let reread = file.try_clone()?;
    let finished: Arc<Mutex<Option<io::Result<()>>>> = Default::default();
    let slot = finished.clone();
    let encoder = zstd::stream::write::Encoder::new(BufWriter::new(file), STATE_LEVEL)?.on_finish(
        move |r: io::Result<BufWriter<File>>| {
            let r = r.and_then(|mut w| w.flush());
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        },
    );
    // Flushed by `store_state` before the encoder is dropped (a BufWriter
    // dropped unflushed would lose its last bytes without an error).
    let out: Box<dyn Write + Send> = Box::new(BufWriter::with_capacity(STATE_BUFFER, encoder));
    let writer = state::Writer::new(out, header)?;
    Ok((
        writer,
        NewState {
            file: reread,
            finished,
        },
    ))
}

impl Prepared {
    /// After the walk: finishes the state the walk gave back (through the
    /// files source) and stores it beside the link `id`, before its
    /// manifest. Returns what the manifest records of it.
    pub async fn store_state(
        self,
        walked: Option<Increment>,
        target: &AnyTarget,
        id: &str,
    ) -> Result<StateBlob> {
        let Prepared { new_state, .. } = self;
        let increment = walked.ok_or_else(|| {
            Error::Internal("the walk did not give back the chain's state".into())
        })?;
        let state_err = |e| Error::io("finishing the chain's state in TMPDIR", e);
        // Dropping the writer's stream finishes the zstd frame; the buffer
        // in front of it is flushed first, so that a failure is seen here.
        let mut out = increment.new.finish().map_err(state_err)?;
        out.flush().map_err(state_err)?;
        drop(out);
        let finished = new_state
            .finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match finished {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(state_err(e)),
            None => return Err(Error::Internal("the chain's state was not finished".into())),
        }
        let mut file = new_state.file;
        file.rewind().map_err(state_err)?;
        target
            .put_state(id, Box::pin(tokio::fs::File::from_std(file)))
            .await
    }
}
