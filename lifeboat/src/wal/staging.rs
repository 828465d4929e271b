//! A restore's WAL: the archived objects that continue the base backup,
//! each verified on its own and only then moved into the staged PGDATA's
//! `pg_wal/`, and the recovery settings that make the server replay them
//! (docs/ARCHITECTURE.md, "Continuous WAL", restore). Runs before the
//! staged PGDATA is moved into place, so a restore that stops here leaves
//! the volume as it was.

use std::fs;
use std::path::Path;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::object::{self, BaseEnd};
use super::position::{Lsn, SegmentSize};
pub use super::settings::Until;
use super::{records, recovery};
use crate::encryption::Identities;
use crate::error::IoContext;
use crate::layout::STAGING_PREFIX;
use crate::manifest::Manifest;
use crate::store::{AnyTarget, Target};
use crate::tar_read::{Mapping, Step};
use crate::{Error, Result};

/// What was staged.
#[derive(Debug, Default)]
struct Staged {
    objects: usize,
    /// Where the staged WAL ends (the base's own end without objects).
    end: Option<Lsn>,
    /// The staged WAL's parts, one per timeline, oldest first.
    legs: Vec<Leg>,
    /// Every transaction that ended by then is in the staged WAL
    /// (`WalSection::reaches`).
    reaches: Option<DateTime<Utc>>,
    /// The time recovery stops at, when it stops before the end.
    target_time: Option<DateTime<Utc>>,
}

/// The staged WAL of one timeline: from the start of its first object's
/// first segment to where it ends (at the latest, its fork).
#[derive(Debug, Clone, Copy)]
struct Leg {
    timeline: u32,
    from: Lsn,
    to: Lsn,
    /// Where the staged files of this timeline end: past `to` when an
    /// object runs over the timeline's fork.
    files_to: Lsn,
    size: SegmentSize,
}

impl Staged {
    /// Counts in one staged object; `cap` is where its timeline's part of
    /// the plan ends.
    fn add(&mut self, w: &super::object::WalSection, cap: Lsn) {
        self.objects += 1;
        let to = w.to.min(cap);
        match self.legs.last_mut() {
            Some(l) if l.timeline == w.timeline => {
                l.to = to;
                l.files_to = w.to;
            }
            _ => self.legs.push(Leg {
                timeline: w.timeline,
                from: w.covers_from(),
                to,
                files_to: w.to,
                size: SegmentSize::new(w.segment_size).unwrap_or(SegmentSize::DEFAULT),
            }),
        }
        self.end = Some(to);
        if to == w.to {
            self.reaches = self.reaches.max(w.reaches());
        }
    }
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
    until: &Until,
) -> Result<()> {
    let mut staged = Staged::default();
    let origin = base
        .paths
        .first()
        .ok_or_else(|| Error::Internal("a base backup without a path".into()))?;
    match BaseEnd::of(&base.source_meta) {
        None => warn!(
            base = %base.id,
            "the base backup records no WAL position (an older backup); no archived WAL follows it"
        ),
        Some(end) => {
            staged.end = Some(end.stop);
            let listing = target.list_wal().await?;
            for p in listing.problems {
                warn!("WAL archive: {p}");
            }
            let objects = listing
                .objects
                .into_iter()
                .filter_map(|m| m.wal.clone().map(|w| (w, m)))
                .collect();
            let plan = object::plan(end, objects);
            if let Some(gap) = &plan.gap {
                warn!("{gap}");
            }
            if plan.objects.is_empty() {
                // Archived WAL lives on the primary target only: a base
                // restored from a copy elsewhere recovers to its own end.
                warn!(target = %target.describe(), base = %base.id, "no archived WAL follows this base backup on this target; the server recovers to the base's end");
            }
            let pg_wal = staging.join("pg_wal");
            fs::create_dir_all(&pg_wal).ctx("creating", &pg_wal)?;
            write_histories(&pg_wal, &plan.all, staging)?;
            for m in &plan.objects {
                match stage_one(target, m, origin, dest, &pg_wal, keys, every).await {
                    Ok(()) => {
                        if let Some(w) = &m.wal {
                            let cap = plan.legs.iter().find(|(t, _)| *t == w.timeline);
                            staged.add(w, cap.map_or(w.to, |(_, end)| *end));
                        }
                    }
                    Err(e) if e.proves_artifact_bad() => {
                        let why = format!(
                            "WAL object {} is bad ({e}); recovery stops before it, at {}",
                            m.id,
                            staged.end.map(|l| l.to_string()).unwrap_or_default()
                        );
                        warn!("{why}");
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    if let Some(last) = staged.legs.last() {
        if last.files_to > last.to {
            cut_at(&staging.join("pg_wal"), last)?;
        }
    }
    if let Until::Time { at, setting } = until {
        staged.target_time = stop_at(&staged, base, staging, *at, setting)?;
    }
    let timeline = staged
        .legs
        .last()
        .map(|l| l.timeline)
        .or(BaseEnd::of(&base.source_meta).map(|e| e.timeline));
    recovery::write(staging, staged.target_time, timeline)?;
    info!(
        objects = staged.objects,
        end = staged.end.map(|l| l.to_string()),
        timeline,
        target_time = staged.target_time.map(|t| t.to_rfc3339()),
        "archived WAL staged; the server replays it and promotes when it starts"
    );
    Ok(())
}

/// The staged WAL of the last leg's timeline ends at its `to` (a fork the
/// restore could not follow: a gap, a bad object): the bytes after it in
/// its segment become zeros, which end WAL, and its later segments go, so
/// the server never replays what that timeline wrote after the fork.
fn cut_at(pg_wal: &Path, leg: &Leg) -> Result<()> {
    let seg = leg.size.segment_of(leg.to);
    let offset = leg.size.offset_in(leg.to);
    for e in fs::read_dir(pg_wal).ctx("reading", pg_wal)? {
        let path = e.ctx("reading", pg_wal)?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let Some(s) = name.and_then(|n| super::position::Segment::parse(&n, leg.size)) else {
            continue;
        };
        if s.timeline != leg.timeline || s.segno < seg {
            continue;
        }
        if s.segno == seg && offset > 0 {
            // Cut and grown back: zeros to the segment's size, with no
            // buffer of a segment's size (up to 1 GiB) in memory.
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .ctx("opening", &path)?;
            f.set_len(offset).ctx("cutting", &path)?;
            f.set_len(leg.size.bytes()).ctx("cutting", &path)?;
            f.sync_all().ctx("syncing", &path)?;
        } else {
            fs::remove_file(&path).ctx("removing", &path)?;
        }
    }
    warn!(timeline = leg.timeline, at = %leg.to, "the staged WAL of this timeline is cut at its fork: what it wrote after it was abandoned");
    Ok(())
}

/// A `<timeline>.history` in `pg_wal` for every timeline from 2 to the
/// newest the archive knows (of its objects, or named in their forks) that
/// has none there yet, rebuilt from the newest object's forks, or a comment
/// when none recorded them: a server that promotes takes the number after
/// the first missing history, and must never take one the archive already
/// holds WAL of. Only the target timeline's history is read, and that one
/// is real (the base's own, or its first object's, which replaces this).
fn write_histories(pg_wal: &Path, all: &[super::object::WalSection], staging: &Path) -> Result<()> {
    let mut newest: std::collections::BTreeMap<u32, &super::object::WalSection> =
        Default::default();
    for w in all.iter().filter(|w| !w.forks.is_empty()) {
        let e = newest.entry(w.timeline).or_insert(w);
        if w.sequence > e.sequence {
            *e = w;
        }
    }
    let known = all
        .iter()
        .flat_map(|w| std::iter::once(w.timeline).chain(w.forks.iter().map(|f| f.timeline)))
        .max()
        .unwrap_or(1);
    for timeline in 2..=known {
        let path = pg_wal.join(format!("{timeline:08X}.history"));
        if fs::symlink_metadata(&path).is_ok_and(|md| md.is_file()) {
            continue;
        }
        let text: String = match newest.get(&timeline) {
            Some(w) => w
                .forks
                .iter()
                .map(|f| {
                    format!(
                        "{}\t{}\tlifeboat: rebuilt from the archive\n",
                        f.timeline, f.end
                    )
                })
                .collect(),
            None => format!(
                "# lifeboat: timeline {timeline} is in the archive; its history was not archived\n"
            ),
        };
        crate::durable::write_synced(&path, text.as_bytes())?;
        recovery::give_cluster_owner(staging, &path)?;
    }
    Ok(())
}

/// Where recovery to `at` stops: at `at` when a transaction ended after it
/// in the staged WAL (PostgreSQL stops before that one's record, and
/// refuses to start when there is none); at the end of the staged WAL when
/// none did but the archive was read past `at` (the end is then the state
/// at `at`). An archive that ends before `at` cannot give it: that is an
/// error naming how far it reaches, never a quietly older state.
fn stop_at(
    staged: &Staged,
    base: &Manifest,
    staging: &Path,
    at: DateTime<Utc>,
    setting: &str,
) -> Result<Option<DateTime<Utc>>> {
    let reaches = staged.reaches.unwrap_or(base.finished_at);
    let pg_wal = staging.join("pg_wal");
    for leg in &staged.legs {
        let found = records::first_end_after(&pg_wal, leg.timeline, leg.size, leg.from, leg.to, at)
            .map_err(|e| match e {
                // WAL that cannot be read now cannot be read on a retry.
                Error::Source(why) => Error::Config(vec![crate::problem::Problem {
                    setting: setting.to_string(),
                    value: at.to_rfc3339(),
                    message: format!("{why}; leave it unset to restore to the end of the archive"),
                }]),
                e => e,
            })?;
        if let Some(end) = found {
            info!(target_time = %at.to_rfc3339(), next_lsn = %end.lsn, next_time = %end.time.to_rfc3339(), timeline = leg.timeline, "recovery stops at the target time, before the first transaction that ended after it");
            return Ok(Some(at));
        }
    }
    if reaches > at && base.finished_at <= at {
        info!(target_time = %at.to_rfc3339(), "no transaction ended between the target time and the end of the archived WAL; recovering to the end, which is the state at the target time");
        return Ok(None);
    }
    let why = if base.finished_at > at {
        format!(
            "base backup {} finished at {}, after that time",
            base.id,
            base.finished_at.to_rfc3339()
        )
    } else {
        format!(
            "the WAL archived after base backup {} reaches {} (LSN {}), not that time",
            base.id,
            reaches.to_rfc3339(),
            staged.end.map(|l| l.to_string()).unwrap_or_default()
        )
    };
    Err(crate::Error::Config(vec![crate::problem::Problem {
        setting: setting.to_string(),
        value: at.to_rfc3339(),
        message: format!(
            "{why}; give an earlier time, or leave it unset to restore to the end of the archive"
        ),
    }]))
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
        only: None,
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
    let moved = read.and_then(|_| move_wal(&own.join("pg_wal"), pg_wal, m));
    let _ = fs::remove_dir_all(&own);
    moved
}

/// Moves the files the object's `wal` section speaks for from `from` into
/// `to`: the segments of its timeline in its span, and history files of
/// its timeline or earlier ones. Anything else is not this object's WAL and
/// is left behind (and removed with its staging folder); `from` must be a
/// real folder, never a link to one elsewhere.
fn move_wal(from: &Path, to: &Path, m: &Manifest) -> Result<()> {
    let corrupt = |reason: String| Error::Corrupt {
        id: m.id.clone(),
        reason,
    };
    let Some(w) = &m.wal else {
        return Err(corrupt("has no wal section".into()));
    };
    match fs::symlink_metadata(from) {
        Ok(md) if md.is_dir() => {}
        _ => return Err(corrupt("holds no pg_wal folder".into())),
    }
    let size = super::position::SegmentSize::new(w.segment_size).map_err(corrupt)?;
    let first = size.segment_of(w.from);
    let last = size.segment_of(super::position::Lsn(w.to.0.saturating_sub(1)));
    let belongs = |name: &str| match super::position::Segment::parse(name, size) {
        Some(seg) => seg.timeline == w.timeline && (first..=last).contains(&seg.segno),
        None => history_timeline(name).is_some_and(|t| t <= w.timeline),
    };
    for e in fs::read_dir(from).ctx("reading", from)? {
        let e = e.ctx("reading", from)?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        // The entry's own type: a symlink is not followed.
        if !belongs(&name) || !e.file_type().ctx("reading", &e.path())?.is_file() {
            warn!(id = %m.id, entry = %name, "not WAL this object speaks for; left out");
            continue;
        }
        let into = to.join(&*name);
        fs::rename(e.path(), &into).ctx("moving into place", &into)?;
    }
    Ok(())
}

/// The timeline a `<8 hex digits>.history` file is of.
fn history_timeline(name: &str) -> Option<u32> {
    let t = name.strip_suffix(".history")?;
    let hex = t.len() == 8
        && t.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    hex.then(|| u32::from_str_radix(t, 16).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> Manifest {
        let id = object::id(2, 5);
        let json = serde_json::json!({
            "format": "lifeboat/v1", "id": id, "artifact": format!("{id}.tar.zst"),
            "name": "n", "namespace": "ns", "source": "postgres", "layout": "paths",
            "paths": ["/data"], "started_at": "2026-01-02T00:00:00Z",
            "finished_at": "2026-01-02T00:00:00Z", "compression": "zstd:3",
            "encryption": "none", "size": 4, "sha256": "00", "entries": 1, "bytes_in": 1,
            "warnings": [], "tool_version": "t", "source_meta": {},
            "wal": {"timeline": 2, "sequence": 5, "from": "0/3000010", "to": "0/4000100",
                    "segment_size": 16777216, "system_identifier": "7"}
        });
        Manifest::from_json(json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn only_the_wal_an_object_speaks_for_is_moved() {
        let tmp = tempfile::tempdir().unwrap();
        let (from, to) = (tmp.path().join("own"), tmp.path().join("pg_wal"));
        fs::create_dir_all(&from).unwrap();
        fs::create_dir_all(&to).unwrap();
        for name in [
            "000000020000000000000003",
            "000000020000000000000004",
            "000000020000000000000005", // past its span
            "000000010000000000000003", // another timeline
            "00000002.history",
            "00000003.history", // a later timeline's
            "postgresql.conf",
        ] {
            fs::write(from.join(name), name).unwrap();
        }
        std::os::unix::fs::symlink("/etc/passwd", from.join("000000020000000000000004.partial"))
            .unwrap();
        move_wal(&from, &to, &object()).unwrap();
        let mut moved: Vec<String> = fs::read_dir(&to)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        moved.sort();
        assert_eq!(
            moved,
            [
                "00000002.history",
                "000000020000000000000003",
                "000000020000000000000004",
            ]
        );
    }

    #[test]
    fn every_timeline_the_archive_knows_gets_a_history_so_none_is_reused() {
        use super::super::object::Fork;
        let tmp = tempfile::tempdir().unwrap();
        let pg_wal = tmp.path().join("pg_wal");
        fs::create_dir_all(&pg_wal).unwrap();
        fs::write(tmp.path().join("PG_VERSION"), "17").unwrap();
        fs::write(pg_wal.join("00000002.history"), "the base's own").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", pg_wal.join("00000004.history")).unwrap();
        let fork = |timeline, end| Fork {
            timeline,
            end: Lsn(end),
        };
        let mut on4 = object().wal.unwrap();
        on4.timeline = 4;
        on4.forks = vec![fork(1, 0x100), fork(3, 0x200)];
        write_histories(&pg_wal, &[on4], tmp.path()).unwrap();
        let read = |n: &str| fs::read_to_string(pg_wal.join(n)).unwrap();
        assert_eq!(read("00000002.history"), "the base's own");
        assert!(read("00000003.history").starts_with("# lifeboat: timeline 3"));
        assert_eq!(
            read("00000004.history"),
            "1\t0/100\tlifeboat: rebuilt from the archive\n3\t0/200\tlifeboat: rebuilt from the archive\n"
        );
        assert!(!fs::symlink_metadata(pg_wal.join("00000004.history"))
            .unwrap()
            .is_symlink());
    }

    #[test]
    fn a_timeline_cut_at_its_fork_keeps_nothing_written_after_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mib = 1u64 << 20;
        let size = SegmentSize::new(mib).unwrap();
        for name in [
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",
            "000000020000000000000004",
        ] {
            fs::write(tmp.path().join(name), vec![0xAA; mib as usize]).unwrap();
        }
        let leg = Leg {
            timeline: 1,
            from: Lsn(3 * mib),
            to: Lsn(4 * mib + 100),
            files_to: Lsn(5 * mib + 7),
            size,
        };
        cut_at(tmp.path(), &leg).unwrap();
        let read = |n: &str| fs::read(tmp.path().join(n)).unwrap();
        assert!(read("000000010000000000000003").iter().all(|b| *b == 0xAA));
        let cut = read("000000010000000000000004");
        assert_eq!(cut.len() as u64, mib);
        assert!(cut[..100].iter().all(|b| *b == 0xAA));
        assert!(cut[100..].iter().all(|b| *b == 0));
        assert!(!tmp.path().join("000000010000000000000005").exists());
        assert!(read("000000020000000000000004").iter().all(|b| *b == 0xAA));
    }

    #[test]
    fn a_pg_wal_that_is_a_link_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir_all(&elsewhere).unwrap();
        fs::write(elsewhere.join("000000020000000000000003"), "not ours").unwrap();
        let own = tmp.path().join("own");
        std::os::unix::fs::symlink(&elsewhere, &own).unwrap();
        let to = tmp.path().join("pg_wal");
        fs::create_dir_all(&to).unwrap();
        let e = move_wal(&own, &to, &object()).unwrap_err();
        assert!(e.proves_artifact_bad(), "{e}");
        assert!(elsewhere.join("000000020000000000000003").exists());
    }
}
