//! WAL objects in a store (docs/ARCHITECTURE.md, "Continuous WAL"): their
//! names, the `wal` section of their manifests, and which of them a restore
//! stages after a base backup.
//!
//! An object is an artifact like any other (a tar, compressed, sha256,
//! manifest last), named `wal-<timeline>-<sequence>` in the pod's history.
//! The sequence counts objects in the order they were written, so name
//! order is the order to apply them in: a later object carries a segment
//! again with newer bytes (more of them, or, after the server crashed in
//! the middle of a record, rewritten ones), and the newest copy must win.

use serde::{Deserialize, Serialize};

use super::position::{Lsn, SegmentSize};

/// How WAL object ids begin; no backup's id does (those begin with a date).
pub const ID_PREFIX: &str = "wal-";

/// The id of the object with `sequence` on `timeline`:
/// `wal-<8 hex digits>-<8 hex digits>`, upper case as PostgreSQL writes
/// timelines. Fixed width, so ids sort as their numbers do.
pub fn id(timeline: u32, sequence: u32) -> String {
    format!("{ID_PREFIX}{timeline:08X}-{sequence:08X}")
}

/// The `(timeline, sequence)` an id names, if it is a WAL object's.
pub fn parse_id(id: &str) -> Option<(u32, u32)> {
    let rest = id.strip_prefix(ID_PREFIX)?;
    let (t, s) = rest.split_once('-')?;
    let hex = |p: &str| {
        (p.len() == 8
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)))
        .then(|| u32::from_str_radix(p, 16).ok())
        .flatten()
    };
    Some((hex(t)?, hex(s)?))
}

/// The manifest's `wal` section: what WAL an object holds. Its tar holds
/// `<PGDATA>/pg_wal/<segment>` files, each whole (zeros past `to`), and
/// any `<timeline>.history` files of the timelines before this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalSection {
    pub timeline: u32,
    /// Written after every object with a smaller one (of any timeline).
    pub sequence: u32,
    /// The archived position this object continues from; its first segment
    /// is the one holding it, stored from its start.
    #[serde(with = "lsn_text")]
    pub from: Lsn,
    /// Where its WAL ends: the server had flushed up to here.
    #[serde(with = "lsn_text")]
    pub to: Lsn,
    /// The server's `wal_segment_size`, in bytes.
    pub segment_size: u64,
    /// The server's system identifier: WAL of another cluster never
    /// follows a base backup of this one. A string, since JSON readers
    /// lose precision on 64-bit numbers.
    pub system_identifier: String,
    /// Hex SHA-256 of the WAL page that ends at `to` (from the start of the
    /// page holding the byte before `to`): the next pass compares it with
    /// `pg_wal/` to notice a server that crashed and rewrote that page
    /// (`super::archiver`). Absent when it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_sha256: Option<String>,
    /// When the archiver read the server's flush position, on the object
    /// that ends there (the last of its pass): every transaction that had
    /// ended by then is in this object or an earlier one. What a restore to
    /// a point in time counts as the archive's reach (`super::window`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flushed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The timeline's history, from its `.history` file: where each
    /// earlier timeline it descends from ended, oldest first. Empty on
    /// timeline 1. A restore follows a base onto this timeline only past
    /// these points, and never replays an ancestor's WAL beyond its end
    /// (that WAL was abandoned when this timeline began).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forks: Vec<Fork>,
    /// On the first object after a gap in the archive of its line: the WAL
    /// between the archive's end and where the new slot held WAL from was
    /// never archived. Kept in the store so that a restarted sidecar still
    /// reports a recent loss (the alert reads its time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<Gap>,
}

/// WAL an archive never got ([`WalSection::gap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The archive's end before the gap.
    #[serde(with = "lsn_text")]
    pub from: Lsn,
    /// Where the new slot held WAL from.
    #[serde(with = "lsn_text")]
    pub to: Lsn,
    /// When the archiver found it.
    pub found_at: chrono::DateTime<chrono::Utc>,
    /// WAL was lost (the slot was dropped past the bound, or invalidated
    /// by the server); false when archiving was off for a while or the
    /// slot was dropped by hand.
    pub lost: bool,
}

/// A transaction's time is taken just before its commit record is
/// written and flushed, so a transaction that ended just before the
/// archiver read the flush position may be flushed just after it; this
/// much is left for that (a busy disk's flush included).
pub const FLUSH_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

/// One line of a timeline history file: `timeline` ended at `end`, where
/// its successor began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fork {
    pub timeline: u32,
    #[serde(with = "lsn_text")]
    pub end: Lsn,
}

/// The forks a `<timeline>.history` file lists (`<parent timeline>
/// <switch point> <reason>` per line, `#` comments), oldest first. Each
/// end is cut to the smallest end after it: a second restore to an earlier
/// point from the same base writes a history whose ends go backwards (the
/// server names the timeline it aimed for as the parent even when it
/// stopped on an older one), and the WAL a timeline holds ends where any
/// later fork left it.
pub fn parse_history(text: &str) -> Result<Vec<Fork>, String> {
    let mut forks: Vec<Fork> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let bad = || format!("{line:?} is not a timeline history line");
        let timeline: u32 = parts.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
        let end: Lsn = parts.next().and_then(|l| l.parse().ok()).ok_or_else(bad)?;
        if forks.last().is_some_and(|f| f.timeline >= timeline) {
            return Err(format!("{line:?}: timelines must increase"));
        }
        forks.push(Fork { timeline, end });
    }
    let mut min = Lsn(u64::MAX);
    for f in forks.iter_mut().rev() {
        min = min.min(f.end);
        f.end = min;
    }
    Ok(forks)
}

/// A later timeline that branched off the base's line before the base
/// left it, if the archive has one: the base holds WAL that a restore to a
/// point in time abandoned, and restoring it would bring that back. The
/// base's line is its timeline up to where it stopped, and before that the
/// timelines its own history names (from the archive's objects of its
/// timeline): a later timeline that left one of them earlier than the
/// base's line did is a restore to before the base, whether it branched
/// off the base's timeline or off an ancestor (the base is then on a dead
/// sibling). Later means a higher number: PostgreSQL numbers a new
/// timeline past every one it knows, and follows the highest.
pub fn abandoned_by(base: BaseEnd, objects: &[&WalSection]) -> Option<(u32, Lsn)> {
    let mine: Vec<&WalSection> = objects
        .iter()
        .copied()
        .filter(|w| w.system_identifier.parse::<u64>().ok() == Some(base.system_identifier))
        .collect();
    // Where the base's line leaves each timeline on it.
    let mut line: Vec<Fork> = mine
        .iter()
        .find(|w| w.timeline == base.timeline && !w.forks.is_empty())
        .map(|w| w.forks.clone())
        .unwrap_or_default();
    line.retain(|f| f.timeline < base.timeline);
    line.push(Fork {
        timeline: base.timeline,
        end: base.stop,
    });
    mine.iter()
        .filter(|w| w.timeline > base.timeline)
        .flat_map(|w| {
            let line = &line;
            w.forks.iter().filter_map(move |f| {
                let left = line.iter().find(|b| b.timeline == f.timeline)?.end;
                (f.end < left).then_some((w.timeline, f.end))
            })
        })
        .min_by_key(|(_, end)| *end)
}

/// The unit [`WalSection::tail_sha256`] covers: PostgreSQL's WAL page
/// (`XLOG_BLCKSZ`, 8 KiB unless built otherwise; another size only makes
/// the compared range differ from a page, not wrong).
pub const TAIL_PAGE: u64 = 8192;

/// Where the tail that ends at `to` starts: the page holding `to - 1`,
/// never before the segment holding it.
pub fn tail_start(to: Lsn, size: SegmentSize) -> Lsn {
    let last = to.0.saturating_sub(1);
    let page = last - last % TAIL_PAGE;
    let seg = size.start_of(size.segment_of(Lsn(last))).unwrap_or(Lsn(0));
    Lsn(page.max(seg.0))
}

impl WalSection {
    /// The checks a manifest read from a store gets: the id must be this
    /// section's, the span must run forwards.
    pub fn check(&self, id: &str) -> Result<(), String> {
        if id != self::id(self.timeline, self.sequence) {
            return Err(format!(
                "id {id:?} is not {:?}, the id its wal section names",
                self::id(self.timeline, self.sequence)
            ));
        }
        if self.timeline == 0 || self.from >= self.to {
            return Err(format!(
                "wal section runs from {} to {} on timeline {}: not a span of WAL",
                self.from, self.to, self.timeline
            ));
        }
        SegmentSize::new(self.segment_size)?;
        if self.system_identifier.parse::<u64>().is_err() {
            return Err(format!(
                "system identifier {:?} is not a number",
                self.system_identifier
            ));
        }
        Ok(())
    }

    /// The time up to which every transaction that ended is in this
    /// object or an earlier one: its `flushed_at`, less
    /// [`FLUSH_MARGIN`]. None when it does not end at a pass's flush.
    pub fn reaches(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.flushed_at.map(|t| t - FLUSH_MARGIN)
    }

    /// Where this object's first segment starts: it holds everything from
    /// there to `to`.
    pub fn covers_from(&self) -> Lsn {
        let size = SegmentSize::new(self.segment_size).unwrap_or(SegmentSize::DEFAULT);
        size.start_of(size.segment_of(self.from))
            .unwrap_or(self.from)
    }
}

/// LSNs as PostgreSQL prints them (`16/B374D848`), which people search for.
mod lsn_text {
    use super::Lsn;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(lsn: &Lsn, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(lsn)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Lsn, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a base backup leaves off, as its manifest's `source_meta` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseEnd {
    pub timeline: u32,
    /// The backup holds the WAL up to here (`pg_backup_stop`'s LSN).
    pub stop: Lsn,
    pub system_identifier: u64,
}

impl BaseEnd {
    /// From a physical base backup's `source_meta`; None for anything else
    /// (older manifests, other sources).
    pub fn of(meta: &serde_json::Value) -> Option<BaseEnd> {
        Some(BaseEnd {
            timeline: u32::try_from(meta.get("timeline")?.as_u64()?).ok()?,
            stop: meta.get("stop_lsn")?.as_str()?.parse().ok()?,
            system_identifier: match meta.get("system_identifier")? {
                serde_json::Value::String(s) => s.parse().ok()?,
                v => v.as_u64()?,
            },
        })
    }
}

/// Which objects a restore stages after a base backup, in order, and
/// where the WAL they give ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<T> {
    pub objects: Vec<T>,
    /// The end of contiguous WAL from the base on: recovery replays up to
    /// here.
    pub end: Lsn,
    /// Each timeline the staged WAL runs on, oldest first, with where its
    /// part ends (the next one's fork, or `end`); the last is the timeline
    /// recovery ends on (`recovery_target_timeline`).
    pub legs: Vec<(u32, Lsn)>,
    /// Set when a later object does not follow on (an object lost from the
    /// store, an archive restarted after its slot was dropped): the WAL
    /// after it is not used, and a person should know why.
    pub gap: Option<String>,
    /// Every object's section of this cluster, in or out of the plan.
    pub all: Vec<WalSection>,
}

/// The timelines a restore from `base` follows, each with where it ends
/// (None: the last one, to the end of its archive). The newest timeline
/// whose history passes through the base's timeline at or after the base's
/// end, as PostgreSQL's `recovery_target_timeline = 'latest'` would pick:
/// a restore to a point in time started it, and the WAL its parent wrote
/// after the fork was abandoned then, never to be replayed again.
fn lineage(base: BaseEnd, objects: &[&WalSection]) -> Vec<(u32, Option<Lsn>)> {
    let descends = |w: &WalSection| {
        w.timeline == base.timeline
            || w.forks
                .iter()
                .any(|f| f.timeline == base.timeline && f.end >= base.stop)
    };
    let Some(newest) = objects
        .iter()
        .filter(|w| descends(w))
        .max_by_key(|w| (w.timeline, w.sequence))
    else {
        return vec![(base.timeline, None)];
    };
    let mut path: Vec<(u32, Option<Lsn>)> = newest
        .forks
        .iter()
        .filter(|f| f.timeline >= base.timeline)
        .map(|f| (f.timeline, Some(f.end)))
        .collect();
    path.push((newest.timeline, None));
    path
}

/// The objects that continue `base`, in the order they were written,
/// along the timelines [`lineage`] picks: each must start no later than
/// where the one before it (or the base) ends, or the WAL stops there.
/// On one timeline the WAL ends where the last object ends, even when an
/// older one reached further: after a crash the server rewrites from
/// inside its last record, and the newest copy of a segment is the truth.
/// A timeline's part ends at its fork, and its objects whose segments all
/// lie past the fork are left out. Objects that end before the base does add nothing; other
/// clusters' objects are ignored.
pub fn plan<T>(base: BaseEnd, objects: Vec<(WalSection, T)>) -> Plan<T> {
    let mut mine: Vec<(WalSection, T)> = objects
        .into_iter()
        .filter(|(w, _)| w.system_identifier.parse::<u64>().ok() == Some(base.system_identifier))
        .collect();
    mine.sort_by_key(|(w, _)| w.sequence);
    let all: Vec<WalSection> = mine.iter().map(|(w, _)| w.clone()).collect();
    let sections: Vec<&WalSection> = all.iter().collect();
    let path = lineage(base, &sections);
    let mut end = base.stop;
    let mut out = Vec::new();
    let mut legs = Vec::new();
    let mut gap = None;
    let mut by_timeline: std::collections::BTreeMap<u32, Vec<(WalSection, T)>> = Default::default();
    for (w, t) in mine {
        by_timeline.entry(w.timeline).or_default().push((w, t));
    }
    'path: for (timeline, fork) in path {
        let ends_at = fork.unwrap_or(Lsn(u64::MAX));
        for (w, t) in by_timeline.remove(&timeline).unwrap_or_default() {
            // By the segments it holds, not where it continued from: after
            // retention dropped the objects it supersedes, a later object
            // that starts past the fork still holds the fork's segment.
            if w.to <= base.stop || w.covers_from() >= ends_at {
                continue;
            }
            if w.covers_from() > end {
                gap = Some(format!(
                    "the archived WAL has a gap from {end} to {} (object {}); recovery stops at {end}",
                    w.covers_from(),
                    id(w.timeline, w.sequence)
                ));
                break;
            }
            end = w.to.min(ends_at);
            out.push(t);
        }
        legs.push((timeline, end));
        if gap.is_some() || fork.is_some_and(|f| end < f) {
            if gap.is_none() {
                gap = Some(format!(
                    "the archived WAL of timeline {timeline} ends at {end}, before timeline {} begins; recovery stops at {end}",
                    timeline + 1
                ));
            }
            break 'path;
        }
    }
    Plan {
        objects: out,
        end,
        legs,
        gap,
        all,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn section(sequence: u32, from: u64, to: u64) -> WalSection {
        WalSection {
            timeline: 1,
            sequence,
            from: Lsn(from),
            to: Lsn(to),
            segment_size: SEG,
            system_identifier: "7".into(),
            tail_sha256: None,
            gap: None,
            flushed_at: None,
            forks: vec![],
        }
    }

    fn base(stop: u64) -> BaseEnd {
        BaseEnd {
            timeline: 1,
            stop: Lsn(stop),
            system_identifier: 7,
        }
    }

    #[test]
    fn ids_sort_in_the_order_objects_were_written_and_read_back() {
        assert_eq!(id(1, 0x2a), "wal-00000001-0000002A");
        assert_eq!(parse_id("wal-00000002-0000002A"), Some((2, 42)));
        for bad in [
            "wal-1-2",
            "wal-0000000a-00000001",
            "wal-00000001-+0000001",
            "20261123T020005Z-postgres",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
        assert!(id(1, 9) < id(1, 10));
        assert!(section(3, 5, 9).check(&id(1, 3)).is_ok());
        assert!(section(3, 5, 9).check(&id(1, 4)).is_err());
        assert!(section(3, 9, 9).check(&id(1, 3)).is_err());
    }

    #[test]
    fn objects_after_the_base_follow_on_in_write_order() {
        let objects = vec![
            (section(3, 2 * SEG + 10, 3 * SEG), "c"),
            (section(1, SEG, SEG + 100), "a: ends before the base"),
            (section(2, SEG + 100, 2 * SEG + 10), "b"),
            (
                WalSection {
                    timeline: 2,
                    ..section(4, 3 * SEG, 3 * SEG + 5)
                },
                "another timeline",
            ),
            (
                WalSection {
                    system_identifier: "8".into(),
                    ..section(5, 3 * SEG, 3 * SEG + 5)
                },
                "another cluster",
            ),
        ];
        let p = plan(base(SEG + 200), objects);
        assert_eq!(p.objects, vec!["b", "c"]);
        assert_eq!(p.end, Lsn(3 * SEG));
        assert_eq!(p.gap, None);
    }

    #[test]
    fn a_later_timeline_is_followed_from_its_fork_and_the_abandoned_wal_left_out() {
        let fork = |timeline, end| Fork {
            timeline,
            end: Lsn(end),
        };
        let on2 = |sequence, from, to| WalSection {
            timeline: 2,
            forks: vec![fork(1, SEG + 500)],
            ..section(sequence, from, to)
        };
        let objects = vec![
            (section(1, SEG + 10, SEG + 300), "a"),
            (section(2, SEG + 300, SEG + 800), "b: across the fork"),
            (
                section(3, SEG + 800, 2 * SEG),
                "c: holds the fork's segment again",
            ),
            (section(7, 2 * SEG, 2 * SEG + 9), "abandoned after the fork"),
            (on2(4, SEG + 500, SEG + 900), "d: timeline 2"),
            (on2(5, SEG + 900, 2 * SEG + 7), "e"),
            (
                WalSection {
                    timeline: 3,
                    forks: vec![fork(1, SEG + 20)],
                    ..section(6, SEG + 20, SEG + 40)
                },
                "a sibling that forked before the base's end",
            ),
        ];
        let p = plan(base(SEG + 50), objects);
        assert_eq!(
            p.objects,
            vec![
                "a",
                "b: across the fork",
                "c: holds the fork's segment again",
                "d: timeline 2",
                "e"
            ]
        );
        assert_eq!(p.end, Lsn(2 * SEG + 7));
        assert_eq!(p.legs, vec![(1, Lsn(SEG + 500)), (2, Lsn(2 * SEG + 7))]);
        assert_eq!(p.gap, None);
        assert_eq!(
            parse_history(
                "1\t0/1000000\tno recovery target specified\n\n2\t0/2000000\tbefore 2026\n"
            ),
            Ok(vec![fork(1, Lsn(0x100_0000).0), fork(2, 0x200_0000)])
        );
        assert!(parse_history("2\t0/2000000\tx\n1\t0/1000000\ty\n").is_err());
        // A second, earlier restore from the same base: ends go backwards.
        assert_eq!(
            parse_history("1\t0/30001B0\ta\n2\t0/3000140\tb\n"),
            Ok(vec![fork(1, 0x300_0140), fork(2, 0x300_0140)])
        );
        let later = WalSection {
            timeline: 2,
            forks: vec![fork(1, SEG + 40)],
            ..section(9, SEG + 40, SEG + 90)
        };
        assert_eq!(
            abandoned_by(base(SEG + 50), &[&later]),
            Some((2, Lsn(SEG + 40)))
        );
        assert_eq!(abandoned_by(base(SEG + 30), &[&later]), None);
    }

    #[test]
    fn a_base_on_a_dead_sibling_timeline_is_abandoned() {
        let fork = |timeline, end| Fork {
            timeline,
            end: Lsn(end),
        };
        // Timeline 2 left 1 at SEG + 40; a base was taken on 2; then a
        // restore to before that, from a base on 1, made timeline 3 at
        // SEG + 20: the base on 2 holds what that restore undid.
        let on_two = WalSection {
            timeline: 2,
            forks: vec![fork(1, SEG + 40)],
            ..section(5, SEG + 40, SEG + 90)
        };
        let three = WalSection {
            timeline: 3,
            forks: vec![fork(1, SEG + 20)],
            ..section(9, SEG + 20, SEG + 60)
        };
        let base_on_two = BaseEnd {
            timeline: 2,
            ..base(SEG + 80)
        };
        assert_eq!(
            abandoned_by(base_on_two, &[&on_two, &three]),
            Some((3, Lsn(SEG + 20)))
        );
        // Timeline 3 descends from 2 after the base: the base is on its
        // line, not abandoned.
        let after = WalSection {
            timeline: 3,
            forks: vec![fork(1, SEG + 40), fork(2, SEG + 85)],
            ..section(9, SEG + 85, SEG + 99)
        };
        assert_eq!(abandoned_by(base_on_two, &[&on_two, &after]), None);
        // An older sibling (timeline 2 off 1 early) abandons nothing on 3.
        let base_on_three = BaseEnd {
            timeline: 3,
            ..base(SEG + 50)
        };
        let early_two = WalSection {
            timeline: 2,
            forks: vec![fork(1, SEG + 10)],
            ..section(5, SEG + 10, SEG + 30)
        };
        assert_eq!(abandoned_by(base_on_three, &[&early_two, &three]), None);
    }

    #[test]
    fn a_gap_ends_the_wal_and_says_where() {
        let objects = vec![
            (section(1, SEG, SEG + 100), "a"),
            (section(2, 3 * SEG + 1, 3 * SEG + 9), "after a gap"),
            (section(3, 3 * SEG + 9, 3 * SEG + 20), "after it"),
        ];
        let p = plan(base(SEG + 50), objects);
        assert_eq!(p.objects, vec!["a"]);
        assert_eq!(p.end, Lsn(SEG + 100));
        assert!(p.gap.unwrap().contains("gap from 0/1000064 to 0/3000000"));
    }

    #[test]
    fn a_segment_carried_again_after_a_crash_is_applied_after_the_longer_older_copy() {
        // Object 2 ended inside segment 1; the server crashed and rewrote
        // from there: object 3 carries segment 1 again, ending earlier.
        let objects = vec![
            (section(2, SEG, SEG + 900), "older, longer"),
            (section(3, SEG, SEG + 400), "newer"),
            (section(4, SEG + 400, SEG + 1000), "on"),
        ];
        let p = plan(base(SEG + 10), objects.clone());
        assert_eq!(p.objects, vec!["older, longer", "newer", "on"]);
        assert_eq!(p.end, Lsn(SEG + 1000));
        let p = plan(base(SEG + 10), objects[..2].to_vec());
        assert_eq!(p.end, Lsn(SEG + 400), "the newest copy says where WAL ends");
    }

    #[test]
    fn the_tail_is_the_page_holding_the_last_byte_within_its_segment() {
        let size = SegmentSize::new(SEG).unwrap();
        assert_eq!(tail_start(Lsn(SEG + 8192 + 10), size), Lsn(SEG + 8192));
        assert_eq!(tail_start(Lsn(SEG + 8192), size), Lsn(SEG));
        assert_eq!(tail_start(Lsn(2 * SEG), size), Lsn(2 * SEG - 8192));
        assert_eq!(tail_start(Lsn(1), size), Lsn(0));
    }

    #[test]
    fn a_base_section_comes_from_a_physical_backups_meta() {
        let meta =
            serde_json::json!({"timeline": 3, "stop_lsn": "0/5000100", "system_identifier": 7_u64});
        assert_eq!(
            BaseEnd::of(&meta),
            Some(BaseEnd {
                timeline: 3,
                stop: Lsn(0x500_0100),
                system_identifier: 7
            })
        );
        assert_eq!(BaseEnd::of(&serde_json::json!({"databases": []})), None);
    }
}
