//! S3 Object Lock (`LIFEBOAT_S3_OBJECT_LOCK`): every object the sidecar
//! writes carries a retain-until date, so credentials that leak cannot
//! delete or shorten the history before then (docs/ARCHITECTURE.md,
//! "Immutable buckets"). Retention then removes only what the lock allows
//! and says what waits ([`crate::store::Removal`]).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::retention::Policy;

/// The lock mode S3 enforces: `Governance` can be lifted by an account with
/// `s3:BypassGovernanceRetention` (the sidecar never asks to); `Compliance`
/// by nobody, not even the bucket's owner, until the date passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Governance,
    Compliance,
}

/// How every new object is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    pub mode: LockMode,
    /// From the moment of writing.
    pub period: Duration,
}

/// How long past its retain-until date an object still counts as locked
/// (see [`ObjectLock::holds`]).
pub const CLOCK_MARGIN: Duration = Duration::from_secs(300);

pub const ACCEPTED: &str = "off, governance or compliance, optionally with how long each \
    object stays locked: e.g. compliance:30d (default period: the retention policy's \
    daily window)";

impl ObjectLock {
    /// `off`, `governance`, `compliance`, each mode optionally `:PERIOD`.
    /// Without a period, the one [`default_period`] derives from `policy`
    /// (`None`: retention is off).
    pub fn parse(text: &str, policy: Option<&Policy>) -> Result<Option<ObjectLock>, String> {
        let t = text.trim().to_ascii_lowercase();
        let (mode, period) = match t.split_once(':') {
            Some((m, p)) => (m.trim().to_string(), Some(p.trim().to_string())),
            None => (t.clone(), None),
        };
        let mode = match mode.as_str() {
            "off" | "" if period.is_none() => return Ok(None),
            "governance" => LockMode::Governance,
            "compliance" => LockMode::Compliance,
            _ => return Err(format!("accepted: {ACCEPTED}")),
        };
        let period = match period {
            Some(p) => crate::duration::parse_duration(&p)?,
            None => policy.and_then(default_period).ok_or_else(|| {
                let policy = policy.map_or("off".to_string(), |p| p.to_string());
                format!(
                    "LIFEBOAT_RETENTION={policy} keeps no daily, weekly or monthly history to \
                     take the lock's period from: give one, e.g. {}:7d",
                    mode_name(mode)
                )
            })?,
        };
        if period < Duration::from_secs(1) {
            return Err("the period must be at least 1s; e.g. compliance:30d".into());
        }
        Ok(Some(ObjectLock { mode, period }))
    }

    /// Whether an object locked until `until` is still to be treated as
    /// locked at `now`. The store judges by its own clock, so a pod whose
    /// clock runs ahead must not ask for a delete the store still refuses:
    /// the date counts as passed only [`CLOCK_MARGIN`] later (a tenth of a
    /// shorter period; those are for trying it out).
    pub fn holds(&self, until: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        let margin =
            chrono::TimeDelta::from_std(CLOCK_MARGIN.min(self.period / 10)).unwrap_or_default();
        until + margin > now
    }

    /// The date an object written at `now` stays locked until, in whole
    /// seconds (S3 keeps no finer).
    pub fn retain_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let secs = now.timestamp() + self.period.as_secs() as i64 + 1;
        DateTime::from_timestamp(secs, 0).unwrap_or(now)
    }
}

fn mode_name(m: LockMode) -> &'static str {
    match m {
        LockMode::Governance => "governance",
        LockMode::Compliance => "compliance",
    }
}

impl std::fmt::Display for ObjectLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let period = crate::duration::format_duration(self.period);
        write!(f, "{}:{period}", mode_name(self.mode))
    }
}

/// The window in which the policy keeps a backup of every day (its
/// `daily` count), else of every week, else of every month. Each backup is
/// then safe from deletion for as long as the policy promises a backup of
/// its day; those kept longer (weekly, monthly) are kept by retention
/// alone after that, unless a longer period is given. `last=N` alone
/// names no span of time.
pub fn default_period(policy: &Policy) -> Option<Duration> {
    let day = 86400u64;
    let days = if policy.daily > 0 {
        policy.daily as u64
    } else if policy.weekly > 0 {
        policy.weekly as u64 * 7
    } else if policy.monthly > 0 {
        policy.monthly as u64 * 31
    } else {
        return None;
    };
    Some(Duration::from_secs(days * day))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(s: &str) -> Policy {
        Policy::parse(s).unwrap()
    }

    #[test]
    fn the_period_comes_from_the_policy_unless_given() {
        let p = policy("last=3,daily=7,weekly=4");
        let p = Some(&p);
        assert_eq!(ObjectLock::parse("off", p), Ok(None));
        let l = ObjectLock::parse("compliance", p).unwrap().unwrap();
        assert_eq!(l.mode, LockMode::Compliance);
        assert_eq!(l.period, Duration::from_secs(7 * 86400));
        let l = ObjectLock::parse(" Governance:36h ", p).unwrap().unwrap();
        assert_eq!(
            (l.mode, l.period),
            (LockMode::Governance, Duration::from_secs(36 * 3600))
        );
        assert_eq!(
            default_period(&policy("weekly=4,monthly=6")),
            Some(Duration::from_secs(28 * 86400))
        );
        assert_eq!(
            default_period(&policy("monthly=2")),
            Some(Duration::from_secs(62 * 86400))
        );
    }

    #[test]
    fn wrong_values_say_what_would_be_right() {
        let p = policy("last=5");
        let p = Some(&p);
        let e = ObjectLock::parse("compliance", p).unwrap_err();
        assert!(e.contains("compliance:7d"), "{e}");
        let e = ObjectLock::parse("compliance", None).unwrap_err();
        assert!(e.starts_with("LIFEBOAT_RETENTION=off keeps no"), "{e}");
        let e = ObjectLock::parse("legal-hold", p).unwrap_err();
        assert!(e.contains("governance or compliance"), "{e}");
        assert!(ObjectLock::parse("compliance:soon", p).is_err());
        assert!(ObjectLock::parse("compliance:0", p).is_err());
        assert!(ObjectLock::parse("off:7d", p).is_err());
    }

    #[test]
    fn a_lock_holds_a_margin_past_its_date() {
        let until: DateTime<Utc> = "2026-12-03T10:00:00Z".parse().unwrap();
        let s = chrono::TimeDelta::seconds;
        let week = ObjectLock {
            mode: LockMode::Compliance,
            period: Duration::from_secs(7 * 86400),
        };
        assert!(week.holds(until, until + s(299)), "5 minutes for clocks");
        assert!(!week.holds(until, until + s(300)));
        let short = ObjectLock {
            period: Duration::from_secs(30),
            ..week
        };
        assert!(short.holds(until, until + s(2)), "a tenth of 30 s");
        assert!(!short.holds(until, until + s(3)));
    }

    #[test]
    fn the_date_is_whole_seconds_past_the_period() {
        let l = ObjectLock {
            mode: LockMode::Compliance,
            period: Duration::from_secs(60),
        };
        let now: DateTime<Utc> = "2026-12-03T10:00:00.700Z".parse().unwrap();
        assert_eq!(
            l.retain_until(now),
            "2026-12-03T10:01:01Z".parse::<DateTime<Utc>>().unwrap()
        );
    }
}
