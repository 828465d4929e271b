//! Which backup comes next (docs/ARCHITECTURE.md, "Incremental chains"): a
//! full one outside any chain, the first link of a new chain, or the next
//! link of the newest chain. Pure: the caller gives the newest link and the
//! chain's first, as its listing found them, and the clock.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::duration::parse_duration;

/// `LIFEBOAT_FULL_EVERY`: how long a chain runs before the next full backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullEvery {
    /// A new chain once its first link is this old (`24h`, `7d`).
    Age(Duration),
    /// A new chain after this many backups, the full one included (`24`).
    Links(u32),
}

/// The most links one chain has: past it a new chain starts, whatever
/// `LIFEBOAT_FULL_EVERY` says, and a manifest of a higher level is not one
/// of ours (`Manifest::check_chain`).
pub const MAX_LEVEL: u32 = 100_000;

pub const ACCEPTED: &str = "off (every backup is full; the default), a duration such as \
    24h or 7d (a full backup once the chain's first is that old), or a count of at least 2 \
    such as 24 (a full backup every 24 backups)";

impl FullEvery {
    /// `None` for `off`.
    pub fn parse(text: &str) -> Result<Option<FullEvery>, String> {
        let t = text.trim();
        if t.is_empty() || t == "off" {
            return Ok(None);
        }
        if t.bytes().all(|b| b.is_ascii_digit()) {
            return match t.parse::<u32>() {
                Ok(n) if n > MAX_LEVEL => Err(format!(
                    "{t} backups per chain is more than {MAX_LEVEL}; accepted: {ACCEPTED}"
                )),
                Ok(n) if n >= 2 => Ok(Some(FullEvery::Links(n))),
                Ok(_) => Err(format!(
                    "{t} backups per chain is every backup full; accepted: {ACCEPTED}"
                )),
                Err(_) => Err(format!("{t} is too many backups; accepted: {ACCEPTED}")),
            };
        }
        match parse_duration(t) {
            Ok(d) if d >= Duration::from_secs(60) => Ok(Some(FullEvery::Age(d))),
            Ok(_) => Err(format!("shorter than a minute; accepted: {ACCEPTED}")),
            Err(e) => Err(format!("{e}; accepted: {ACCEPTED}")),
        }
    }
}

/// A committed link, as much of its manifest as the plan needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub id: String,
    pub level: u32,
    /// The chain's first link's id.
    pub chain: String,
    pub started_at: DateTime<Utc>,
    pub paths: Vec<String>,
    /// Whether it left the state the next link compares with.
    pub has_state: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// `LIFEBOAT_FULL_EVERY` is off: a full backup outside any chain.
    Full,
    /// The first link of a new chain (a full backup that leaves a state);
    /// why a new one, for the log.
    Start(String),
    /// The next link of the chain whose newest link is `base`.
    Link {
        base: String,
        chain: String,
        level: u32,
    },
}

/// What the next backup is. `newest` is the newest committed backup of
/// the history (`None` when it has none, `Some(None)` when the newest is
/// a full backup outside any chain); `first` the newest's chain's first
/// link, when the listing still has it.
pub fn next(
    full_every: Option<FullEvery>,
    newest: Option<Option<&Link>>,
    first: Option<&Link>,
    paths: &[String],
    now: DateTime<Utc>,
) -> Next {
    let Some(every) = full_every else {
        return Next::Full;
    };
    let start = |why: &str| Next::Start(why.to_string());
    let newest = match newest {
        None => return start("no backup yet"),
        Some(None) => return start("the newest backup is a full one outside any chain"),
        Some(Some(l)) => l,
    };
    if newest.paths != paths {
        return start("the configured paths changed since the newest link");
    }
    if !newest.has_state {
        return start("the newest link left no state to compare with");
    }
    let Some(first) = first.filter(|f| f.id == newest.chain) else {
        return start("the chain's first link is gone");
    };
    if newest.level >= MAX_LEVEL {
        return Next::Start(format!(
            "the chain has {MAX_LEVEL} links, the most one may have"
        ));
    }
    match every {
        FullEvery::Age(d) => {
            let age = (now - first.started_at).to_std().unwrap_or_default();
            if age >= d {
                return Next::Start(format!(
                    "the chain began with {}, {} ago (LIFEBOAT_FULL_EVERY={})",
                    first.id,
                    humantime(age),
                    humantime(d)
                ));
            }
        }
        FullEvery::Links(n) => {
            if newest.level + 1 >= n {
                return Next::Start(format!(
                    "the chain has {} backups (LIFEBOAT_FULL_EVERY={n})",
                    newest.level + 1
                ));
            }
        }
    }
    Next::Link {
        base: newest.id.clone(),
        chain: newest.chain.clone(),
        level: newest.level + 1,
    }
}

/// `3d4h`, `25m`: whole units, for log lines.
fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins) = (s / 86400, s % 86400 / 3600, s % 3600 / 60);
    match (days, hours, mins) {
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h{m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: i64) -> DateTime<Utc> {
        "2026-12-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap() + chrono::Duration::hours(h)
    }

    fn link(id: &str, level: u32, chain: &str, h: i64) -> Link {
        Link {
            id: id.into(),
            level,
            chain: chain.into(),
            started_at: at(h),
            paths: vec!["/data".into()],
            has_state: true,
        }
    }

    #[test]
    fn full_every_forms() {
        let p = FullEvery::parse;
        assert_eq!(p("off"), Ok(None));
        assert_eq!(p(""), Ok(None));
        assert_eq!(p("24"), Ok(Some(FullEvery::Links(24))));
        assert_eq!(
            p("7d"),
            Ok(Some(FullEvery::Age(Duration::from_secs(7 * 86400))))
        );
        assert_eq!(
            p("24h"),
            Ok(Some(FullEvery::Age(Duration::from_secs(86400))))
        );
        for bad in ["1", "0", "10s", "weekly", "99999999999"] {
            let e = p(bad).unwrap_err();
            assert!(e.contains("accepted: off"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_chain_goes_on_until_its_age_or_length_says_start_again() {
        let paths = vec!["/data".to_string()];
        let first = link("c0", 0, "c0", 0);
        let third = link("c2", 2, "c0", 2);
        let day = Some(FullEvery::Age(Duration::from_secs(86400)));
        let next_link = Next::Link {
            base: "c2".into(),
            chain: "c0".into(),
            level: 3,
        };
        assert_eq!(
            next(day, Some(Some(&third)), Some(&first), &paths, at(3)),
            next_link
        );
        assert!(matches!(
            next(day, Some(Some(&third)), Some(&first), &paths, at(24)),
            Next::Start(why) if why.contains("1d ago")
        ));
        let four = Some(FullEvery::Links(4));
        assert_eq!(
            next(four, Some(Some(&third)), Some(&first), &paths, at(3)),
            next_link
        );
        let fourth = link("c3", 3, "c0", 3);
        assert!(matches!(
            next(four, Some(Some(&fourth)), Some(&first), &paths, at(4)),
            Next::Start(why) if why.contains("4 backups")
        ));
        assert_eq!(
            next(None, Some(Some(&third)), Some(&first), &paths, at(3)),
            Next::Full
        );
    }

    #[test]
    fn anything_unsure_starts_a_new_chain_and_says_why() {
        let paths = vec!["/data".to_string()];
        let first = link("c0", 0, "c0", 0);
        let every = Some(FullEvery::Links(24));
        let why = |newest: Option<Option<&Link>>, first: Option<&Link>, paths: &[String]| match next(
            every,
            newest,
            first,
            paths,
            at(1),
        ) {
            Next::Start(why) => why,
            other => panic!("{other:?}"),
        };
        assert!(why(None, None, &paths).contains("no backup yet"));
        assert!(why(Some(None), None, &paths).contains("outside any chain"));
        let mut stateless = link("c1", 1, "c0", 1);
        stateless.has_state = false;
        assert!(why(Some(Some(&stateless)), Some(&first), &paths).contains("no state"));
        let other = vec!["/home".to_string()];
        assert!(why(Some(Some(&first)), Some(&first), &other).contains("paths changed"));
        let orphan = link("c1", 1, "c0", 1);
        assert!(why(Some(Some(&orphan)), None, &paths).contains("first link is gone"));
        // Never past the most links a chain may have, whatever the setting.
        let last = link("cN", MAX_LEVEL, "c0", 1);
        let n = next(
            Some(FullEvery::Age(Duration::from_secs(366 * 86400))),
            Some(Some(&last)),
            Some(&first),
            &paths,
            at(2),
        );
        assert!(
            matches!(&n, Next::Start(w) if w.contains("the most one may have")),
            "{n:?}"
        );
        assert!(FullEvery::parse("100001")
            .unwrap_err()
            .contains("more than 100000"));
    }
}
