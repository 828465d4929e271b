//! The pending load (docs/ARCHITECTURE.md, "The pending load"): a logical dump needs a running server.
//!
//! The init container verifies the artifact, extracts it into a staging
//! folder, writes the manifest into it last, and renames it to
//! `<path>/.lifeboat-pending/`: the folder exists complete or not at all.
//! The sidecar finds it at start, waits until the server answers, loads it,
//! writes `.lifeboat-restored`, and removes the folder (manifest first, so a
//! folder half removed is never taken for a dump to load). Until then no
//! backup runs: it would record an empty server as the newest artifact.

use std::fs;
use std::path::{Path, PathBuf};

use chrono::Utc;
use tracing::{info, Instrument};

use crate::config::Settings;
use crate::durable::{sync_dir, sync_fs, write_synced};
use crate::error::IoContext;
use crate::layout::RESTORED_MARKER;
use crate::manifest::Manifest;
use crate::progress::Cancel;
use crate::source::Load;
use crate::{Error, Result};

pub use crate::layout::PENDING_DIR;
/// Written last into the pending folder: its presence means "complete".
pub const PENDING_MANIFEST: &str = "manifest.json";

/// Written when the server refused the dump (`Error::LoadRefused`): the
/// sidecar stops retrying and backs up the server as it is, and the staged
/// dump stays until a person removes this file (to retry) or the folder.
pub const LOAD_REFUSED: &str = "load-refused.json";

/// A staged dump waiting to be loaded.
#[derive(Debug)]
pub struct Pending {
    /// The configured path the dump was staged in.
    pub root: PathBuf,
    /// `<root>/.lifeboat-pending`.
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Why the server refused this dump, when it did: it is not loaded again
    /// until a person removes [`LOAD_REFUSED`].
    pub refused: Option<String>,
}

impl Pending {
    /// Records that the server refused the dump, so no restart retries it
    /// on top of what the app has written since.
    pub fn mark_refused(&mut self, why: &str) -> Result<()> {
        let record = serde_json::json!({ "refused_at": Utc::now(), "error": why });
        write_synced(&self.dir.join(LOAD_REFUSED), record.to_string().as_bytes())?;
        self.refused = Some(why.to_string());
        Ok(())
    }

    /// What a person can do about a refused dump, for logs and `/status`.
    pub fn refused_advice(&self) -> String {
        format!(
            "the staged dump stays in {}; remove {} there and restart the sidecar to try the load again, \
             or remove the folder to keep the server as it is",
            self.dir.display(),
            LOAD_REFUSED
        )
    }
}

/// The complete pending load under `root`, if there is one.
pub fn find(root: &Path) -> Result<Option<Pending>> {
    let dir = root.join(PENDING_DIR);
    let path = dir.join(PENDING_MANIFEST);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let manifest = Manifest::from_json(&bytes).map_err(|reason| Error::Corrupt {
        id: "pending load".into(),
        reason: format!("{}: {reason}", path.display()),
    })?;
    let refused = match crate::small_file::read(&dir.join(LOAD_REFUSED), 64 * 1024) {
        Ok(text) => Some(
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or(text),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(format!("{LOAD_REFUSED} is unreadable: {e}")),
    };
    Ok(Some(Pending {
        root: root.to_path_buf(),
        dir,
        manifest,
        refused,
    }))
}

/// The pending load of these settings: a dump is staged in the first path.
pub fn find_for(settings: &Settings) -> Result<Option<Pending>> {
    match settings.paths.first() {
        Some(root) => find(root),
        None => Ok(None),
    }
}

/// Makes a verified, extracted dump the pending load of `root`, replacing
/// an older one that was never loaded.
pub(crate) fn commit(staging: &Path, root: &Path, m: &Manifest) -> Result<()> {
    write_synced(&staging.join(PENDING_MANIFEST), &m.to_json())?;
    sync_fs(staging)?;
    let dir = root.join(PENDING_DIR);
    if dir.exists() {
        remove(&dir)?;
    }
    fs::rename(staging, &dir).ctx("moving the staged dump to", &dir)?;
    sync_dir(root)
}

/// Removes a pending folder so that no crash can leave it looking complete.
fn remove(dir: &Path) -> Result<()> {
    let manifest = dir.join(PENDING_MANIFEST);
    match fs::remove_file(&manifest) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("removing {}", manifest.display()), e)),
    }
    sync_dir(dir)?;
    fs::remove_dir_all(dir).ctx("removing", dir)
}

/// Loads `p` through the running server, then records the restore and
/// removes the staged dump. Safe to run again after any interruption.
pub async fn load(p: &Pending, settings: &Settings, cancel: &Cancel) -> Result<()> {
    let m = &p.manifest;
    let span = tracing::info_span!("load", id = %m.id, source = %m.source);
    async move {
        info!(dir = %p.dir.display(), "loading the restored dump into the server");
        let Some(loader) = settings.source.loader(&m.source) else {
            return Err(Error::Source(format!(
                "{} holds a {} dump, which this sidecar cannot load (its source is {})",
                p.dir.display(),
                m.source,
                settings.source.kind
            )));
        };
        loader.load(&p.dir, m, cancel).await?;
        let marker = serde_json::json!({
            "id": m.id,
            "restored_at": Utc::now(),
            "sha256": m.sha256,
            "loaded": true,
        });
        write_synced(&p.root.join(RESTORED_MARKER), marker.to_string().as_bytes())?;
        remove(&p.dir)?;
        info!("restored dump loaded; the staged copy was removed");
        Ok(())
    }
    .instrument(span)
    .await
}

/// Whether the server behind `settings`' source answers, so a load can start.
pub async fn server_ready(p: &Pending, settings: &Settings) -> Result<()> {
    match settings.source.loader(&p.manifest.source) {
        Some(loader) => loader.ready().await,
        None => Ok(()),
    }
}
