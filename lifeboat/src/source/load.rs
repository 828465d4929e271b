//! The restore half of the source seam: loading a staged logical dump into
//! the running server (docs/ARCHITECTURE.md, "The pending load"), and what
//! every loader shares: resumable progress and trusting nothing the staged
//! manifest names.

use std::fs;
use std::future::Future;
use std::path::Path;

use tracing::info;

use crate::durable::write_synced;
use crate::manifest::Manifest;
use crate::progress::Cancel;
use crate::{Error, Result};

/// A server a logical dump can be loaded into. The futures are `Send`: the
/// sidecar runs a load as a task beside its endpoint.
pub trait Load {
    /// Whether the server answers, so a load can start.
    fn ready(&self) -> impl Future<Output = Result<()>> + Send;
    /// Loads the dump staged in `dir` (described by `m`). Safe to run again
    /// after any interruption: finished databases are skipped.
    fn load(
        &self,
        dir: &Path,
        m: &Manifest,
        cancel: &Cancel,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// Records which databases a load has started and finished, so a load cut
/// short resumes: finished ones are skipped, a started one is redone.
const LOAD_STATE: &str = "load-state.json";

/// Progress of a load, kept in the pending folder.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LoadState {
    pub started: Vec<String>,
    pub done: Vec<String>,
}

impl LoadState {
    pub fn read(dir: &Path) -> Result<LoadState> {
        let p = dir.join(LOAD_STATE);
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
                id: "pending load".into(),
                reason: format!("{}: {e}", p.display()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LoadState::default()),
            Err(e) => Err(Error::io(format!("reading {}", p.display()), e)),
        }
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec(self).expect("state serializes");
        write_synced(&dir.join(LOAD_STATE), &json)
    }

    /// Records `name` as loaded, durably, before the next database starts.
    pub fn finish(&mut self, dir: &Path, name: &str) -> Result<()> {
        self.done.push(name.to_string());
        self.write(dir)
    }
}

/// Where a load of the dump staged in `dir` starts: the manifest's
/// `source_meta` as the source's own type, and what earlier attempts did.
pub fn resume<T: serde::de::DeserializeOwned>(dir: &Path, m: &Manifest) -> Result<(T, LoadState)> {
    Ok((source_meta(m)?, LoadState::read(dir)?))
}

/// The databases still to load, in the dump's order. Those an earlier
/// attempt finished are skipped (and said so); every staged name (`names`
/// gives a database's name and its file or folder) is checked before any
/// database is loaded, so a bad manifest changes nothing on the server.
pub fn to_load<'a, D>(
    state: &LoadState,
    m: &Manifest,
    dbs: &'a [D],
    names: impl Fn(&D) -> (&str, &str),
) -> Result<Vec<&'a D>> {
    let mut out = Vec::new();
    for db in dbs {
        let (name, staged) = names(db);
        check_name(m, staged)?;
        if state.done.iter().any(|d| d == name) {
            info!(database = %name, "already loaded by an earlier attempt");
        } else {
            out.push(db);
        }
    }
    Ok(out)
}

/// The source's own facts in a staged manifest (its database list).
pub fn source_meta<T: serde::de::DeserializeOwned>(m: &Manifest) -> Result<T> {
    serde_json::from_value(m.source_meta.clone()).map_err(|e| Error::Corrupt {
        id: m.id.clone(),
        reason: format!("source_meta has no usable database list: {e}"),
    })
}

/// A file or folder name from a manifest: never a path out of the staging.
pub fn check_name(m: &Manifest, name: &str) -> Result<()> {
    crate::artifact::check_file_name(name).map_err(|reason| Error::Corrupt {
        id: m.id.clone(),
        reason,
    })
}
