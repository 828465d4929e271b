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
//!   a segment's fill time.) Not an object that records a gap
//!   (`WalSection::gap`): a restarted sidecar reads the loss back from it.
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

/// An object that can go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unneeded {
    /// Its index in the objects judged.
    pub index: usize,
    pub reason: String,
    /// The object that holds its bytes again, when it is superseded: it
    /// goes only once that one reads back whole.
    pub rests_on: Option<usize>,
}

/// What goes, with why, in the order of `objects`.
pub fn unneeded(objects: &[Listed], kept: &[KeptBase], bases_readable: bool) -> Vec<Unneeded> {
    let newest = objects.iter().map(|o| o.wal.sequence).max();
    let newest_base = kept.iter().map(|b| b.started_at).max();
    let mut out = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        let w = &o.wal;
        if Some(w.sequence) == newest {
            continue;
        }
        if let Some(by) = superseded_by(w, objects) {
            let l = &objects[by].wal;
            out.push(Unneeded {
                index: i,
                reason: format!(
                    "superseded: {} holds its segments again, to {}",
                    object::id(l.timeline, l.sequence),
                    l.to
                ),
                rests_on: Some(by),
            });
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
                out.push(Unneeded {
                    index: i,
                    reason: format!(
                        "before every kept base backup: it ends at {}, the oldest kept base stops at {first}",
                        w.to
                    ),
                    rests_on: None,
                });
            }
        } else if newest_base.is_some_and(|t| o.finished_at < t) {
            out.push(Unneeded {
                index: i,
                reason: format!(
                    "of cluster {}, of which no base backup is kept (the kept ones are of another cluster, and newer)",
                    w.system_identifier
                ),
                rests_on: None,
            });
        }
    }
    out
}

/// The index of a later object of `w`'s cluster and timeline that holds
/// every segment `w` holds, from no later a segment and to no earlier a
/// position.
fn superseded_by(w: &WalSection, objects: &[Listed]) -> Option<usize> {
    let covers = |l: &WalSection, x: &WalSection| {
        l.timeline == x.timeline
            && l.system_identifier == x.system_identifier
            && l.segment_size == x.segment_size
            && l.forks == x.forks
            && l.covers_from() <= x.covers_from()
            && l.to >= x.to
            && (x.flushed_at.is_none() || l.flushed_at >= x.flushed_at)
            // The object that records a gap keeps the record (a restarted
            // sidecar reads the loss back from it) until no kept base
            // needs it.
            && x.gap.is_none()
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
        .enumerate()
        .map(|(i, o)| (i, &o.wal))
        .filter(|(_, l)| l.sequence > w.sequence && covers(l, w))
        .filter(|(_, l)| {
            objects.iter().map(|o| &o.wal).all(|x| {
                !(x.sequence > w.sequence && x.sequence < l.sequence && same_line(l, x))
                    || covers(l, x)
            })
        })
        .max_by_key(|(_, l)| l.sequence)
        .map(|(i, _)| i)
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
    // Whether each object a superseded one rests on reads back whole:
    // deleting the only good copy of a segment for a damaged later one
    // would cut every restore short there. Each is read once.
    let mut sound: std::collections::HashMap<usize, bool> = Default::default();
    for u in unneeded(&objects, kept, bases_readable) {
        let m = manifests[u.index];
        if let Some(by) = u.rests_on {
            let later = manifests[by];
            let ok = match sound.get(&by) {
                Some(ok) => *ok,
                None => {
                    let read = crate::artifact_read::read(
                        target,
                        later,
                        None,
                        None,
                        std::time::Duration::from_secs(60),
                        "verify",
                    )
                    .await;
                    if let Err(e) = &read {
                        tracing::warn!(id = %later.id, target = %target.describe(), error = %e, "a WAL object did not read back whole; the objects it supersedes are kept");
                    }
                    sound.insert(by, read.is_ok());
                    read.is_ok()
                }
            };
            if !ok {
                tracing::info!(id = %m.id, superseded_by = %later.id, "retention keeps a superseded WAL object: the later copy did not read back whole");
                continue;
            }
        }
        match target.delete(m).await? {
            crate::store::Removal::Removed => {
                tracing::info!(id = %m.id, target = %target.describe(), reason = %u.reason, "retention deleted a WAL object")
            }
            crate::store::Removal::LockedUntil(until) => {
                tracing::info!(id = %m.id, target = %target.describe(), locked_until = %until, "retention deletes a WAL object once its object lock ends")
            }
        }
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
                gap: None,
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

    fn ids(out: &[Unneeded]) -> Vec<usize> {
        out.iter().map(|u| u.index).collect()
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
        assert!(
            out[0].reason.contains("superseded") && out[0].reason.contains("wal-00000001-00000002")
        );
        // Each goes only once object 2 reads back whole.
        assert_eq!(out[0].rests_on, Some(2));
        assert_eq!(out[1].rests_on, Some(2));
        // Object 2 holds segment 1, which object 3 does not: it stays.
    }

    #[test]
    fn the_object_that_records_a_gap_is_not_superseded() {
        let mut objects = [
            listed(1, 0, SEG, SEG + 100, "7"),
            listed(1, 1, SEG + 100, SEG + 200, "7"),
            listed(1, 2, SEG + 200, SEG + 300, "7"),
        ];
        objects[0].wal.gap = Some(crate::wal::object::Gap {
            from: Lsn(SEG / 2),
            to: Lsn(SEG),
            found_at: at(0),
            lost: true,
        });
        let out = unneeded(&objects, &[base(SEG, 0)], true);
        assert_eq!(ids(&out), vec![1]);
        // Once every kept base stops after it, it goes.
        let out = unneeded(&objects, &[base(SEG + 150, 0)], true);
        assert_eq!(ids(&out), vec![0, 1]);
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
            out[0].reason.contains("before every kept base backup"),
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
        assert!(out[0].reason.contains("cluster 99"), "{out:?}");
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

    /// Commits a WAL object of `w` to `target`: one small file in a real
    /// tar, with the manifest a restore reads.
    async fn store(target: &crate::store::AnyTarget, w: &WalSection) -> String {
        use crate::store::{Target, Upload};
        let id = object::id(w.timeline, w.sequence);
        let compression = crate::compression::Compression::None;
        let file = crate::artifact::file_name(&id, compression, false);
        let mut up = target.begin(&file).await.unwrap();
        let (_, stored) = crate::tar_upload::upload_tar(&mut up, compression, None, |tar| {
            let mut h = tar::Header::new_gnu();
            h.set_size(4);
            h.set_mode(0o600);
            h.set_cksum();
            tar.append_data(&mut h, "pgdata/pg_wal/x", &b"wal!"[..])
                .unwrap();
            Ok(())
        })
        .await
        .unwrap();
        let json = serde_json::json!({
            "format": "lifeboat/v1", "id": id, "artifact": file,
            "name": "n", "namespace": "ns", "source": "postgres", "layout": "paths",
            "paths": ["/pgdata"], "started_at": "2026-12-02T10:00:00Z",
            "finished_at": "2026-12-02T10:00:00Z", "compression": compression.to_string(),
            "encryption": "none", "size": stored.size, "sha256": stored.sha256,
            "entries": 1, "bytes_in": 4, "warnings": [], "tool_version": "t",
            "source_meta": {}, "wal": w,
        });
        let m = crate::manifest::Manifest::from_json(json.to_string().as_bytes()).unwrap();
        up.commit(&m).await.unwrap();
        file
    }

    #[tokio::test]
    async fn a_superseded_object_stays_while_the_later_copy_does_not_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let target = crate::store::TargetSpec::Dir(dir.path().into())
            .open("ns", "n", &Default::default())
            .await;
        let objects = [
            listed(1, 0, SEG, SEG + 100, "7"),
            listed(1, 1, SEG + 100, SEG + 200, "7"),
            listed(1, 2, SEG + 200, 2 * SEG + 50, "7"),
            listed(1, 3, 2 * SEG + 50, 2 * SEG + 60, "7"),
        ];
        let mut files = vec![];
        for o in &objects {
            files.push(store(&target, &o.wal).await);
        }
        let names = || -> Vec<String> {
            let mut n: Vec<String> = std::fs::read_dir(dir.path().join("ns/n"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tar"))
                .collect();
            n.sort();
            n
        };
        assert_eq!(names(), files);
        // Object 2, which 0 and 1 rest on, is damaged in the store.
        let damaged = dir.path().join("ns/n").join(&files[2]);
        let good = std::fs::read(&damaged).unwrap();
        let mut bad = good.clone();
        bad[600] ^= 1;
        std::fs::write(&damaged, &bad).unwrap();
        apply(&target, &[base(SEG, 0)], true).await.unwrap();
        assert_eq!(
            names(),
            files,
            "nothing rests on a copy that does not read back"
        );
        // Whole again: 0 and 1 go.
        std::fs::write(&damaged, &good).unwrap();
        apply(&target, &[base(SEG, 0)], true).await.unwrap();
        assert_eq!(names(), files[2..]);
    }
}
