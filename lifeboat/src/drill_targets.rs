//! A restore drill's result on the targets: the drilled artifact's manifest,
//! and its record written beside it (the record's format: `crate::drill`,
//! which the store's listing reads; this side writes through the store).

use tracing::{info, warn};

use crate::drill::{DrillRecord, Restored};
use crate::manifest::Manifest;
use crate::store::{AnyTarget, Target};
use crate::{Error, Result};

/// Leaves `record` beside the artifact on every target that lists it.
/// Fails when no target does (the restored artifact is gone, or the
/// record could not be written anywhere).
pub async fn record(
    targets: &[AnyTarget],
    restored: &Restored,
    record: &DrillRecord,
) -> Result<()> {
    let mut written = 0;
    let mut last_err = None;
    for t in targets {
        let listing = match t.list().await {
            Ok(l) => l,
            Err(e) => {
                warn!(target = %t.describe(), "cannot list the target to record the drill: {e}");
                last_err = Some(e);
                continue;
            }
        };
        let Some(stored) = listing
            .artifacts
            .iter()
            .find(|a| a.manifest.id == restored.id)
        else {
            continue;
        };
        if stored.manifest.sha256 != record.sha256 {
            continue;
        }
        match t.record_drill(&stored.manifest, record).await {
            Ok(()) => {
                written += 1;
                info!(id = %record.id, target = %t.describe(), passed = record.passed, "drill recorded");
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
            "the drilled artifact {} is on no target any more; the drill's result was not recorded",
            restored.id
        ))
    }))
}

/// The manifest of the artifact the drill restored, from the first target
/// that lists it.
pub async fn manifest_of(targets: &[AnyTarget], restored: &Restored) -> Result<Manifest> {
    for t in targets {
        if let Ok(l) = t.list().await {
            if let Some(a) = l
                .artifacts
                .into_iter()
                .find(|a| a.manifest.id == restored.id)
            {
                return Ok(a.manifest);
            }
        }
    }
    Err(Error::Drill(format!(
        "the drilled artifact {} ({}) is on no target",
        restored.id, restored.target
    )))
}
