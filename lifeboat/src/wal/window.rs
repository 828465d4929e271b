//! The times a base backup can be restored to with the archived WAL after
//! it, as `list` shows them (docs/ARCHITECTURE.md, "Continuous WAL", point
//! in time).

use chrono::{DateTime, Utc};

use super::object::{self, BaseEnd};
use super::position::Lsn;
use crate::manifest::Manifest;

/// Any time from `from` to `to` is a target a restore from this base can
/// reach (`LIFEBOAT_RESTORE_TARGET_TIME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// When the base backup finished: recovery cannot stop before it.
    pub from: DateTime<Utc>,
    /// Every transaction that ended by then is archived
    /// (`WalSection::reaches` of the last object that continues it).
    pub to: DateTime<Utc>,
    /// The WAL objects that continue it.
    pub objects: usize,
    /// Where their WAL ends.
    pub end: Lsn,
    /// A later timeline that branched off before the base stopped (a
    /// restore to a point in time undid part of what it holds): a restore
    /// that picks the newest passes over it ([`object::abandoned_by`]).
    pub abandoned_by: Option<(u32, Lsn)>,
}

/// The window of `base` given the store's WAL objects; None for a backup
/// that records no WAL position (another source, an older backup).
pub fn of(base: &Manifest, wal: &[Manifest]) -> Option<Window> {
    let end = BaseEnd::of(&base.source_meta)?;
    let objects: Vec<_> = wal
        .iter()
        .filter_map(|m| m.wal.clone().map(|w| (w, m)))
        .collect();
    let sections: Vec<&object::WalSection> = objects.iter().map(|(w, _)| w).collect();
    let abandoned_by = object::abandoned_by(end, &sections);
    let plan = object::plan(end, objects);
    let to = plan
        .objects
        .iter()
        .filter_map(|m| m.wal.as_ref().and_then(|w| w.reaches()))
        .max()
        .map_or(base.finished_at, |t| t.max(base.finished_at));
    Some(Window {
        from: base.finished_at,
        to,
        objects: plan.objects.len(),
        end: plan.end,
        abandoned_by,
    })
}
