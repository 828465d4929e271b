//! Which committed artifacts to keep. A pure function of the artifacts'
//! times and the policy, so it is tested with fixed clocks; each decision
//! carries its reasons so the logs can say why something was kept.
//!
//! Buckets work like restic's `--keep-daily` and friends: `daily=7` keeps the
//! newest artifact of each of the 7 most recent UTC days that have one.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use chrono::{DateTime, Datelike, Utc};

pub const ACCEPTED: &str = "comma list of last=N, daily=N, weekly=N, monthly=N (N ≥ 0), \
    e.g. \"last=3,daily=7,weekly=4,monthly=6\"";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub last: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            last: 3,
            daily: 7,
            weekly: 4,
            monthly: 6,
        }
    }
}

impl Policy {
    /// Keys not given are 0; at least one must be positive.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut p = Policy {
            last: 0,
            daily: 0,
            weekly: 0,
            monthly: 0,
        };
        let mut seen = BTreeSet::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not key=N"))?;
            let n: u32 = v
                .trim()
                .parse()
                .map_err(|_| format!("{item:?}: {v:?} is not a whole number"))?;
            let slot = match k.trim() {
                "last" => &mut p.last,
                "daily" => &mut p.daily,
                "weekly" => &mut p.weekly,
                "monthly" => &mut p.monthly,
                other => return Err(format!("unknown key {other:?}")),
            };
            if !seen.insert(k.trim().to_string()) {
                return Err(format!("{k:?} given twice"));
            }
            *slot = n;
        }
        if p.last + p.daily + p.weekly + p.monthly == 0 {
            return Err("keeps nothing; at least one count must be above 0".into());
        }
        Ok(p)
    }
}

/// `LIFEBOAT_RETENTION`: a policy, or `off` (`None`: the sidecar deletes
/// nothing).
pub fn parse_setting(s: &str) -> Result<Option<Policy>, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    Policy::parse(s)
        .map(Some)
        .map_err(|e| format!("{e}; accepted: {ACCEPTED}, or off"))
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "last={},daily={},weekly={},monthly={}",
            self.last, self.daily, self.weekly, self.monthly
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: String,
    pub time: DateTime<Utc>,
    /// Empty means: delete.
    pub reasons: Vec<String>,
}

impl Decision {
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// Decides for each artifact `(id, time)`. The result is newest first. The
/// newest artifact is always kept, whatever the policy says.
pub fn plan(artifacts: &[(String, DateTime<Utc>)], policy: &Policy) -> Vec<Decision> {
    let mut out: Vec<Decision> = artifacts
        .iter()
        .map(|(id, t)| Decision {
            id: id.clone(),
            time: *t,
            reasons: vec![],
        })
        .collect();
    out.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));

    if let Some(first) = out.first_mut() {
        first.reasons.push("newest".into());
    }
    for (i, d) in out.iter_mut().enumerate().take(policy.last as usize) {
        d.reasons.push(format!("last {}/{}", i + 1, policy.last));
    }
    keep_buckets(&mut out, policy.daily, "daily", |t| {
        t.format("%Y-%m-%d").to_string()
    });
    keep_buckets(&mut out, policy.weekly, "weekly", |t| {
        let w = t.iso_week();
        format!("{}-W{:02}", w.year(), w.week())
    });
    keep_buckets(&mut out, policy.monthly, "monthly", |t| {
        t.format("%Y-%m").to_string()
    });
    out
}

/// Keeps what kept links of incremental chains build on: from each kept
/// decision (newest first) the chain is followed through `bases` (a
/// link's id to its base's id), and each link on the way gets a reason
/// naming the newest kept link that needs it. So a chain is only ever cut
/// after its newest kept link, never in the middle, and deleting newest
/// first (the order of `decisions`) never leaves a link without its base.
pub fn keep_bases(decisions: &mut [Decision], bases: &HashMap<String, String>) {
    let index: HashMap<String, usize> = decisions
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.clone(), i))
        .collect();
    let mut needed = vec![false; decisions.len()];
    for i in 0..decisions.len() {
        if !decisions[i].keep() {
            continue;
        }
        let by = decisions[i].id.clone();
        let mut at = i;
        while let Some(&b) = bases
            .get(&decisions[at].id)
            .and_then(|base| index.get(base))
        {
            // Links are older than what builds on them: this ends.
            if needed[b] || b <= at {
                break;
            }
            needed[b] = true;
            decisions[b]
                .reasons
                .push(format!("base of {by} (its incremental chain)"));
            at = b;
        }
    }
}

fn keep_buckets(
    sorted_newest_first: &mut [Decision],
    count: u32,
    kind: &str,
    bucket: impl Fn(&DateTime<Utc>) -> String,
) {
    let mut seen = BTreeSet::new();
    for d in sorted_newest_first.iter_mut() {
        if seen.len() >= count as usize {
            break;
        }
        let b = bucket(&d.time);
        if seen.insert(b.clone()) {
            d.reasons.push(format!("{kind} {b}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    #[test]
    fn kept_links_keep_their_whole_chain_and_nothing_else() {
        // Hourly for two days; a new chain every 24 links (at 00:00).
        let start = Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0).unwrap();
        let times: Vec<(String, DateTime<Utc>)> = (0..48)
            .map(|h| start + Duration::hours(h))
            .map(|t| (crate::artifact::id(t, "files"), t))
            .collect();
        let bases: HashMap<String, String> = (1..48)
            .filter(|h| h % 24 != 0)
            .map(|h| (times[h].0.clone(), times[h - 1].0.clone()))
            .collect();
        let policy = Policy::parse("last=2").unwrap();
        let mut d = plan(&times, &policy);
        keep_bases(&mut d, &bases);
        let kept: Vec<&str> = d
            .iter()
            .filter(|d| d.keep())
            .map(|d| d.id.as_str())
            .collect();
        // The newest two links and every link of their chain: today's 24.
        assert_eq!(kept.len(), 24, "{kept:?}");
        assert!(d.iter().take(24).all(|d| d.keep()));
        assert!(d.iter().skip(24).all(|d| !d.keep()));
        let first = d.iter().find(|d| d.id == times[24].0).unwrap();
        assert_eq!(
            first.reasons,
            [format!("base of {} (its incremental chain)", times[47].0)]
        );
        // Yesterday's newest link (kept daily) keeps yesterday's chain whole.
        let mut d = plan(&times, &Policy::parse("last=1,daily=2").unwrap());
        keep_bases(&mut d, &bases);
        assert!(d.iter().all(|d| d.keep()));
        // Without bases (full backups) nothing more is kept.
        let mut d = plan(&times, &policy);
        keep_bases(&mut d, &HashMap::new());
        assert_eq!(d.iter().filter(|d| d.keep()).count(), 2);
    }

    fn history() -> Vec<(String, DateTime<Utc>)> {
        // One backup at 02:00 every day for 100 days, plus two extra today.
        let end = Utc.with_ymd_and_hms(2026, 11, 23, 2, 0, 0).unwrap();
        let mut v: Vec<_> = (0..100)
            .map(|d| end - Duration::days(d))
            .map(|t| (crate::artifact::id(t, "files"), t))
            .collect();
        for h in [10, 14] {
            let t = end + Duration::hours(h - 2);
            v.push((crate::artifact::id(t, "files"), t));
        }
        v
    }

    #[test]
    fn keeps_exactly_what_the_policy_says_and_why() {
        let policy = Policy::parse("last=3,daily=7,weekly=4,monthly=6").unwrap();
        let plan = plan(&history(), &policy);
        let kept: Vec<(&str, &[String])> = plan
            .iter()
            .filter(|d| d.keep())
            .map(|d| (d.id.as_str(), d.reasons.as_slice()))
            .collect();
        let expect: Vec<(&str, Vec<&str>)> = vec![
            (
                "20261123T140000Z-files",
                vec![
                    "newest",
                    "last 1/3",
                    "daily 2026-11-23",
                    "weekly 2026-W48",
                    "monthly 2026-11",
                ],
            ),
            ("20261123T100000Z-files", vec!["last 2/3"]),
            ("20261123T020000Z-files", vec!["last 3/3"]),
            (
                "20261122T020000Z-files",
                vec!["daily 2026-11-22", "weekly 2026-W47"],
            ),
            ("20261121T020000Z-files", vec!["daily 2026-11-21"]),
            ("20261120T020000Z-files", vec!["daily 2026-11-20"]),
            ("20261119T020000Z-files", vec!["daily 2026-11-19"]),
            ("20261118T020000Z-files", vec!["daily 2026-11-18"]),
            ("20261117T020000Z-files", vec!["daily 2026-11-17"]),
            ("20261115T020000Z-files", vec!["weekly 2026-W46"]),
            ("20261108T020000Z-files", vec!["weekly 2026-W45"]),
            ("20261031T020000Z-files", vec!["monthly 2026-10"]),
            ("20260930T020000Z-files", vec!["monthly 2026-09"]),
            ("20260831T020000Z-files", vec!["monthly 2026-08"]),
        ];
        let got: Vec<(&str, Vec<&str>)> = kept
            .iter()
            .map(|(id, r)| (*id, r.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(got, expect);
        assert_eq!(plan.len(), 102);
    }

    #[test]
    fn newest_is_kept_even_by_a_stingy_policy() {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let arts = vec![
            ("a".to_string(), t),
            ("b".to_string(), t + Duration::days(1)),
        ];
        let p = plan(
            &arts,
            &Policy {
                last: 0,
                daily: 0,
                weekly: 0,
                monthly: 1,
            },
        );
        assert_eq!(p[0].id, "b");
        assert!(p[0].keep());
        assert!(!p[1].keep());
        assert!(plan(&[], &Policy::default()).is_empty());
    }

    #[test]
    fn parse_errors() {
        assert_eq!(
            Policy::parse("last=2").unwrap(),
            Policy {
                last: 2,
                daily: 0,
                weekly: 0,
                monthly: 0
            }
        );
        for bad in ["last=x", "yearly=1", "last", "last=0", "last=1,last=2"] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
    }
}
