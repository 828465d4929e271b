//! A restore drill's result on the targets: the drilled artifact's manifest,
//! and its record written beside it (the record's format: `crate::drill`,
//! which the store's listing reads; this side writes through the store).

use tracing::{info, warn};

use crate::drill::{DrillRecord, Restored};
use crate::manifest::Manifest;
use crate::store::{AnyTarget, Target};
use crate::{Error, Result};

/// The artifact a drill restored, as the targets list it.
pub struct Drilled<'a> {
    pub manifest: Manifest,
    /// The targets that hold a copy with the same bytes (id and checksum):
    /// the record is written beside each.
    holders: Vec<&'a AnyTarget>,
}

/// Finds the artifact the drill's restore reported, on every target (one
/// listing each, before the check runs). Fails when no target lists it.
pub async fn locate<'a>(targets: &'a [AnyTarget], restored: &Restored) -> Result<Drilled<'a>> {
    let mut copies: Vec<(&AnyTarget, Manifest)> = Vec::new();
    for t in targets {
        match t.list().await {
            Ok(l) => copies.extend(
                l.artifacts
                    .into_iter()
                    .filter(|a| a.manifest.id == restored.id)
                    .map(|a| (t, a.manifest)),
            ),
            Err(e) => {
                warn!(target = %t.describe(), "cannot list the target; the drill's record will not be written there: {e}");
            }
        }
    }
    // The bytes drilled are the copy on the target restored from; a copy
    // with other bytes under the same id is not what the drill saw, so
    // without that target's listing no verdict is recorded.
    let Some(manifest) = copies
        .iter()
        .find(|(t, _)| t.describe() == restored.target)
        .map(|(_, m)| m.clone())
    else {
        return Err(Error::Drill(format!(
            "the drilled artifact {} is not listed on {}, where it was restored from; the drill's result was not recorded",
            restored.id, restored.target
        )));
    };
    let holders = copies
        .into_iter()
        .filter(|(_, m)| m.sha256 == manifest.sha256)
        .map(|(t, _)| t)
        .collect();
    Ok(Drilled { manifest, holders })
}

/// Leaves `record` beside every copy of the drilled artifact. Fails when it
/// could be written nowhere.
pub async fn record(drilled: &Drilled<'_>, record: &DrillRecord) -> Result<()> {
    let mut written = 0;
    let mut last_err = None;
    for t in &drilled.holders {
        match t.record_drill(&drilled.manifest, record).await {
            Ok(()) => {
                written += 1;
                info!(id = %record.id, target = %t.describe(), verdict = record.verdict().as_str(), "drill recorded");
            }
            Err(e) => {
                warn!(target = %t.describe(), "recording the drill failed: {e}");
                last_err = Some(e);
            }
        }
    }
    if written > 0 {
        return Ok(());
    }
    Err(last_err.unwrap_or_else(|| {
        Error::Drill(format!(
            "no target could take the drill's record of {}",
            record.id
        ))
    }))
}
