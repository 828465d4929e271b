//! A restore's WAL: the archived objects that continue the base backup,
//! each verified on its own and only then moved into the staged PGDATA's
//! `pg_wal/`, and the recovery settings that make the server replay them
//! (docs/ARCHITECTURE.md, "Continuous WAL", restore). Runs before the
//! staged PGDATA is moved into place, so a restore that stops here leaves
//! the volume as it was.

use std::fs;
use std::path::Path;

use tracing::{info, warn};

use super::object::{self, BaseEnd};
use super::recovery;
use crate::encryption::Identities;
use crate::error::IoContext;
use crate::layout::STAGING_PREFIX;
use crate::manifest::Manifest;
use crate::store::{AnyTarget, Target};
use crate::tar_read::{Mapping, Step};
use crate::{Error, Result};

/// What was staged.
#[derive(Debug, Default)]
pub struct Staged {
    pub objects: usize,
    /// Where the staged WAL ends (the base's own end without objects).
    pub end: Option<super::position::Lsn>,
    /// Why less than the whole archive was staged, for the log and the
    /// restored marker.
    pub problems: Vec<String>,
}

/// Stages the WAL after `base` (restored into `staging`, the staged copy of
/// PGDATA inside `dest`) and writes the recovery settings. An object that
/// is proven bad ends the WAL before it, loudly; any other failure (the
/// store, the disk) fails the restore, which is tried again: recovering to
/// an earlier point because the newest WAL could not be read right now
/// would go unnoticed.
pub async fn stage(
    target: &AnyTarget,
    base: &Manifest,
    dest: &Path,
    staging: &Path,
    keys: Option<&Identities>,
    every: std::time::Duration,
) -> Result<Staged> {
    let mut staged = Staged::default();
    let origin = base
        .paths
        .first()
        .ok_or_else(|| Error::Internal("a base backup without a path".into()))?;
    match BaseEnd::of(&base.source_meta) {
        None => staged.problems.push(format!(
            "{} records no WAL position (an older backup); no archived WAL follows it",
            base.id
        )),
        Some(end) => {
            staged.end = Some(end.stop);
            let listing = target.list_wal().await?;
            for p in listing.problems {
                warn!("WAL archive: {p}");
                staged.problems.push(p);
            }
            let objects = listing
                .objects
                .into_iter()
                .filter_map(|m| m.wal.clone().map(|w| (w, m)))
                .collect();
            let plan = object::plan(end, objects);
            if let Some(gap) = &plan.gap {
                warn!("{gap}");
                staged.problems.push(gap.clone());
            }
            let pg_wal = staging.join("pg_wal");
            fs::create_dir_all(&pg_wal).ctx("creating", &pg_wal)?;
            for m in &plan.objects {
                match stage_one(target, m, origin, dest, &pg_wal, keys, every).await {
                    Ok(()) => {
                        staged.objects += 1;
                        staged.end = m.wal.as_ref().map(|w| w.to);
                    }
                    Err(e) if e.proves_artifact_bad() => {
                        let why = format!(
                            "WAL object {} is bad ({e}); recovery stops before it, at {}",
                            m.id,
                            staged.end.map(|l| l.to_string()).unwrap_or_default()
                        );
                        warn!("{why}");
                        staged.problems.push(why);
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    recovery::write(staging, None)?;
    info!(
        objects = staged.objects,
        end = staged.end.map(|l| l.to_string()),
        "archived WAL staged; the server replays it and promotes when it starts"
    );
    Ok(staged)
}

/// One object: extracted into a staging folder of its own, verified whole,
/// then its `pg_wal/` files (segments and timeline histories, nothing
/// else) moved into the staged `pg_wal`, replacing older copies.
async fn stage_one(
    target: &AnyTarget,
    m: &Manifest,
    origin: &str,
    dest: &Path,
    pg_wal: &Path,
    keys: Option<&Identities>,
    every: std::time::Duration,
) -> Result<()> {
    let own = dest.join(format!("{STAGING_PREFIX}{}", m.id));
    if own.exists() {
        fs::remove_dir_all(&own).ctx("removing", &own)?;
    }
    fs::create_dir(&own).ctx("creating", &own)?;
    let mappings = vec![Mapping {
        origin: origin.into(),
        staging: own.clone(),
    }];
    let read = crate::artifact_read::read(
        target,
        m,
        keys,
        Some((mappings, Step::only())),
        every,
        "WAL",
    )
    .await;
    let moved = read.and_then(|_| move_wal(&own.join("pg_wal"), pg_wal, &m.id));
    let _ = fs::remove_dir_all(&own);
    moved
}

/// Moves segment and history files from `from` into `to`. Anything else an
/// object holds is not WAL and is left behind (and removed with its
/// staging folder).
fn move_wal(from: &Path, to: &Path, id: &str) -> Result<()> {
    let Ok(entries) = fs::read_dir(from) else {
        return Err(Error::Corrupt {
            id: id.into(),
            reason: "holds no pg_wal folder".into(),
        });
    };
    for e in entries {
        let e = e.ctx("reading", from)?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        let is_wal = super::position::is_segment_name(&name) || is_history_name(&name);
        if !is_wal || !e.file_type().ctx("reading", &e.path())?.is_file() {
            warn!(id, entry = %name, "not a WAL file; left out");
            continue;
        }
        let into = to.join(&*name);
        fs::rename(e.path(), &into).ctx("moving into place", &into)?;
    }
    Ok(())
}

/// `<8 hex digits>.history`.
fn is_history_name(name: &str) -> bool {
    name.strip_suffix(".history").is_some_and(|t| {
        t.len() == 8
            && t.bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    })
}
