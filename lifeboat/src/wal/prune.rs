//! Retention of WAL objects (docs/ARCHITECTURE.md, "Continuous WAL",
//! retention): after backup retention has decided which base backups stay,
//! the WAL objects no restore from a kept base can use go too, each with
//! its reason in the log.
//!
//! Two reasons, both judged only from what a restore would stage:
//! - **superseded**: a later object of the same cluster and timeline holds
//!   every segment this one holds, to at least the same position. Staging
//!   applies objects in write order and a later copy of a segment replaces
//!   an earlier one, so this object's bytes never reach a restored
//!   `pg_wal/`. (Under a slow trickle each object carries the current
//!   segment again; without this the stored bytes grow with the square of
//!   a segment's fill time.)
//! - **before every kept base**: every kept base backup of its cluster
//!   stops at or after where the object ends, so no restore starts before
//!   its end; or no kept base is of its cluster and it is older than the
//!   newest kept base (the volume was initialised anew).
//!
//! The newest object always stays: the archiver continues from it. When a
//! backup manifest could not be read, only superseded objects go (the
//! unreadable one may be a base that needs the rest).

use chrono::{DateTime, Utc};

use super::object::{self, BaseEnd, WalSection};

/// A base backup retention keeps: where it stops, and when it started.
#[derive(Debug, Clone, Copy)]
pub struct KeptBase {
    pub end: BaseEnd,
    pub started_at: DateTime<Utc>,
}

/// A WAL object as retention judges it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub wal: WalSection,
    pub finished_at: DateTime<Utc>,
}

/// What goes, with why: indexes into `objects`, oldest first.
pub fn unneeded(
    objects: &[Listed],
    kept: &[KeptBase],
    bases_readable: bool,
) -> Vec<(usize, String)> {
    let newest = objects.iter().map(|o| o.wal.sequence).max();
    let newest_base = kept.iter().map(|b| b.started_at).max();
    let mut out = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        let w = &o.wal;
        if Some(w.sequence) == newest {
            continue;
        }
        if let Some(by) = superseded_by(w, objects) {
            out.push((
                i,
                format!(
                    "superseded: {} holds its segments again, to {}",
                    object::id(by.timeline, by.sequence),
                    by.to
                ),
            ));
            continue;
        }
        if !bases_readable {
            continue;
        }
        let system = w.system_identifier.parse::<u64>().ok();
        let mine: Vec<&KeptBase> = kept
            .iter()
            .filter(|b| Some(b.end.system_identifier) == system)
            .collect();
        if let Some(first) = mine.iter().map(|b| b.end.stop).min() {
            if w.to <= first {
                out.push((
                    i,
                    format!(
                        "before every kept base backup: it ends at {}, the oldest kept base stops at {first}",
                        w.to
                    ),
                ));
            }
        } else if newest_base.is_some_and(|t| o.finished_at < t) {
            out.push((
                i,
                format!(
                    "of cluster {}, of which no base backup is kept (the kept ones are of another cluster, and newer)",
                    w.system_identifier
                ),
            ));
        }
    }
    out
}

/// A later object of `w`'s cluster and timeline that holds every segment
/// `w` holds, from no later a segment and to no earlier a position.
fn superseded_by<'a>(w: &WalSection, objects: &'a [Listed]) -> Option<&'a WalSection> {
    let covers = |l: &WalSection, x: &WalSection| {
        l.timeline == x.timeline
            && l.system_identifier == x.system_identifier
            && l.segment_size == x.segment_size
            && l.forks == x.forks
            && l.covers_from() <= x.covers_from()
            && l.to >= x.to
            && (x.flushed_at.is_none() || l.flushed_at >= x.flushed_at)
    };
    let same_line = |l: &WalSection, x: &WalSection| {
        l.timeline == x.timeline && l.system_identifier == x.system_identifier
    };
    // A restore walks a timeline's objects in write order and stops at the
    // first that does not follow on: `l` may stand in for `w` only if it
    // also covers every object of that line written between them (those
    // go too), so the walk reaches `l` straight from what preceded `w`.
    objects
        .iter()
        .map(|o| &o.wal)
        .filter(|l| l.sequence > w.sequence && covers(l, w))
        .filter(|l| {
            objects.iter().map(|o| &o.wal).all(|x| {
                !(x.sequence > w.sequence && x.sequence < l.sequence && same_line(l, x))
                    || covers(l, x)
            })
        })
        .max_by_key(|l| l.sequence)
}

/// Deletes the WAL objects on `target` that no restore from a kept base
/// can use ([`unneeded`]), logging each with its reason. The newest
/// object always stays, so the archiver, which writes beside this without
/// a lock, never loses the object it continues from.
pub async fn apply(
    target: &crate::store::AnyTarget,
    kept: &[KeptBase],
    bases_readable: bool,
) -> crate::Result<()> {
    use crate::store::Target;
    // An unreadable WAL manifest changes nothing here: each reason rests on
    // readable objects and kept bases only.
    let listing = target.list_wal().await?;
    let objects: Vec<Listed> = listing
        .objects
        .iter()
        .filter_map(|m| {
            Some(Listed {
                wal: m.wal.clone()?,
                finished_at: m.finished_at,
            })
        })
        .collect();
    let manifests: Vec<&crate::manifest::Manifest> =
        listing.objects.iter().filter(|m| m.wal.is_some()).collect();
    for (i, reason) in unneeded(&objects, kept, bases_readable) {
        let m = manifests[i];
        target.delete(m).await?;
        tracing::info!(id = %m.id, target = %target.describe(), reason = %reason, "retention deleted a WAL object");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::position::Lsn;

    const SEG: u64 = 16 << 20;

    fn at(minute: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2026-12-02T10:{minute:02}:00Z"))
            .unwrap()
            .with_timezone(&Utc)
    }

    fn listed(timeline: u32, sequence: u32, from: u64, to: u64, system: &str) -> Listed {
        Listed {
            wal: WalSection {
                timeline,
                sequence,
                from: Lsn(from),
                to: Lsn(to),
                segment_size: SEG,
                system_identifier: system.into(),
                tail_sha256: None,
                flushed_at: None,
                forks: vec![],
            },
            finished_at: at(sequence),
        }
    }

    fn base(stop: u64, started: u32) -> KeptBase {
        KeptBase {
            end: BaseEnd {
                timeline: 1,
                stop: Lsn(stop),
                system_identifier: 7,
            },
            started_at: at(started),
        }
    }

    fn ids(out: &[(usize, String)]) -> Vec<usize> {
        out.iter().map(|(i, _)| *i).collect()
    }

    #[test]
    fn a_segment_carried_again_to_further_supersedes_the_shorter_copies() {
        // A trickle: three passes into segment 1, then one into segment 2.
        let objects = [
            listed(1, 0, SEG, SEG + 100, "7"),
            listed(1, 1, SEG + 100, SEG + 200, "7"),
            listed(1, 2, SEG + 200, 2 * SEG + 50, "7"),
            listed(1, 3, 2 * SEG + 50, 2 * SEG + 60, "7"),
        ];
        let out = unneeded(&objects, &[base(SEG, 0)], true);
        assert_eq!(ids(&out), vec![0, 1]);
        assert!(out[0].1.contains("superseded") && out[0].1.contains("wal-00000001-00000002"));
        // Object 2 holds segment 1, which object 3 does not: it stays.
    }

    #[test]
    fn a_copy_that_does_not_cover_the_objects_between_does_not_supersede() {
        // A, then a small C, then the server crashed and B carried again
        // from the segment before: without A a restore would stop at C.
        let objects = [
            listed(1, 1, SEG + 50, 2 * SEG + 100, "7"),
            listed(1, 2, 2 * SEG + 100, 2 * SEG + 200, "7"),
            listed(1, 3, SEG, 2 * SEG + 150, "7"),
            listed(1, 4, 2 * SEG + 150, 2 * SEG + 160, "7"),
        ];
        assert!(unneeded(&objects, &[base(SEG + 10, 0)], true).is_empty());
    }

    #[test]
    fn a_later_shorter_copy_after_a_crash_does_not_supersede() {
        // The server rewrote from inside its last record: the newer copy
        // ends earlier; the older stays until a copy reaches as far.
        let objects = [
            listed(1, 0, SEG, SEG + 500, "7"),
            listed(1, 1, SEG, SEG + 300, "7"),
        ];
        assert!(unneeded(&objects, &[base(SEG, 0)], true).is_empty());
    }

    #[test]
    fn objects_before_every_kept_base_go_and_the_rest_stay() {
        let objects = [
            listed(1, 0, SEG, 2 * SEG, "7"),
            listed(1, 1, 2 * SEG, 3 * SEG, "7"),
            listed(1, 2, 3 * SEG, 4 * SEG, "7"),
        ];
        // Kept bases stop inside object 1 and after object 2's start.
        let kept = [base(3 * SEG - 10, 20), base(3 * SEG + 10, 30)];
        let out = unneeded(&objects, &kept, true);
        assert_eq!(ids(&out), vec![0]);
        assert!(
            out[0].1.contains("before every kept base backup"),
            "{out:?}"
        );
        // An unreadable backup manifest may be a base that needs them.
        assert!(unneeded(&objects, &kept, false).is_empty());
    }

    #[test]
    fn another_clusters_older_objects_go_once_a_newer_base_is_kept() {
        let objects = [
            listed(1, 0, SEG, 2 * SEG, "99"),
            listed(1, 1, SEG, 2 * SEG, "7"),
            listed(1, 2, 2 * SEG, 3 * SEG, "7"),
        ];
        let out = unneeded(&objects, &[base(SEG + 1, 1)], true);
        assert_eq!(ids(&out), vec![0]);
        assert!(out[0].1.contains("cluster 99"), "{out:?}");
        // Its own newer objects, with no base of theirs yet: kept.
        let newer = [
            listed(1, 5, SEG, 2 * SEG, "99"),
            listed(1, 6, 2 * SEG, 3 * SEG, "99"),
        ];
        assert!(unneeded(&newer, &[base(SEG + 1, 1)], true).is_empty());
    }

    #[test]
    fn the_newest_object_stays_even_before_every_base() {
        // An idle server: the base stops after the last archived byte.
        let objects = [listed(1, 0, SEG, SEG + 100, "7")];
        assert!(unneeded(&objects, &[base(2 * SEG, 5)], true).is_empty());
    }
}
