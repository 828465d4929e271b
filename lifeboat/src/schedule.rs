//! Five-field cron schedules in UTC (`min hour day-of-month month day-of-week`)
//! and the `@daily`-style macros. Our own small parser so an error can name the
//! field and the value that is wrong.

use chrono::{DateTime, Datelike, Duration, NaiveDate, Timelike, Utc};

pub const ACCEPTED: &str = "a 5-field cron expression in UTC \
    (\"minute hour day-of-month month day-of-week\", e.g. \"0 2 * * *\") \
    or one of @hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually";

/// How far ahead to look for the next run. Five years covers `29 2 *` (Feb 29).
const HORIZON_DAYS: u32 = 366 * 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    text: String,
    minutes: u64,
    hours: u64,
    dom: u64,
    months: u64,
    dow: u64,
    /// Classic cron: when both day fields are restricted, either may match.
    dom_or_dow: bool,
    /// Every run this much later than the expression says
    /// (`LIFEBOAT_JITTER`, [`jitter_offset`]).
    offset: Duration,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DOM: Field = Field {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
// 7 is accepted as Sunday and folded onto 0 after parsing.
const DOW: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

impl Schedule {
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let expanded = match trimmed.to_ascii_lowercase().as_str() {
            "@hourly" => "0 * * * *".to_string(),
            "@daily" | "@midnight" => "0 0 * * *".to_string(),
            "@weekly" => "0 0 * * 0".to_string(),
            "@monthly" => "0 0 1 * *".to_string(),
            "@yearly" | "@annually" => "0 0 1 1 *".to_string(),
            s if s.starts_with('@') => return Err(format!("unknown macro {trimmed:?}")),
            _ => trimmed.to_string(),
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(format!(
                "has {} field(s), expected 5 (seconds and years are not supported)",
                parts.len()
            ));
        }
        let mut dow = parse_field(parts[4], &DOW)?;
        if dow & (1 << 7) != 0 {
            dow = (dow & !(1 << 7)) | 1;
        }
        Ok(Schedule {
            text: trimmed.to_string(),
            minutes: parse_field(parts[0], &MINUTE)?,
            hours: parse_field(parts[1], &HOUR)?,
            dom: parse_field(parts[2], &DOM)?,
            months: parse_field(parts[3], &MONTH)?,
            dow,
            dom_or_dow: !parts[2].starts_with('*') && !parts[4].starts_with('*'),
            offset: Duration::zero(),
        })
    }

    /// The same schedule with every run `by` later.
    pub fn shifted(mut self, by: std::time::Duration) -> Self {
        self.offset = Duration::from_std(by).unwrap_or_else(|_| Duration::zero());
        self
    }

    /// How much later than the expression every run is.
    pub fn offset(&self) -> std::time::Duration {
        self.offset.to_std().unwrap_or_default()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn day_matches(&self, d: NaiveDate) -> bool {
        if self.months & (1 << d.month()) == 0 {
            return false;
        }
        let dom = self.dom & (1 << d.day()) != 0;
        let dow = self.dow & (1 << d.weekday().num_days_from_sunday()) != 0;
        if self.dom_or_dow {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// The first scheduled minute strictly after `t`; `None` for a date that
    /// never comes (`0 0 31 2 *`).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.offset.is_zero() {
            return self.next_minute_after(t);
        }
        let next = self.next_minute_after(t.checked_sub_signed(self.offset)?)?;
        next.checked_add_signed(self.offset)
    }

    /// The newest scheduled run at or before `t`; None when there was none
    /// within [`HORIZON_DAYS`]. Looks back an hour, then twice as far each
    /// time: a schedule's upcoming gaps say nothing of the gaps before
    /// (`*/5 2 * * *` at 09:00 ran seven hours ago).
    pub fn last_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut back = Duration::hours(1);
        let mut run = loop {
            match self.next_after(t.checked_sub_signed(back)?) {
                Some(run) if run <= t => break run,
                _ if back > Duration::days(i64::from(HORIZON_DAYS)) => return None,
                _ => back = back * 2,
            }
        };
        while let Some(next) = self.next_after(run).filter(|n| *n <= t) {
            run = next;
        }
        Some(run)
    }

    /// [`Schedule::next_after`] without the offset.
    fn next_minute_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = t.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let mut date = start.date_naive();
        for day in 0..HORIZON_DAYS {
            if self.day_matches(date) {
                let first_day = day == 0;
                let h0 = if first_day { start.hour() } else { 0 };
                for h in h0..24 {
                    if self.hours & (1 << h) == 0 {
                        continue;
                    }
                    let m0 = if first_day && h == h0 {
                        start.minute()
                    } else {
                        0
                    };
                    if let Some(m) = (m0..60).find(|m| self.minutes & (1 << m) != 0) {
                        return Some(date.and_hms_opt(h, m, 0)?.and_utc());
                    }
                }
            }
            date = date.succ_opt()?;
        }
        None
    }

    /// The longest gap between the next [`INTERVAL_RUNS`] runs after `t`:
    /// what "twice the interval" means for staleness. The longest, so a
    /// weekday schedule does not look late every Sunday. `None` when the
    /// schedule fires fewer than twice.
    pub fn interval(&self, t: DateTime<Utc>) -> Option<Duration> {
        let mut prev = self.next_after(t)?;
        let mut longest: Option<Duration> = None;
        for _ in 1..INTERVAL_RUNS {
            let Some(next) = self.next_after(prev) else {
                break;
            };
            let gap = next - prev;
            longest = Some(longest.map_or(gap, |l| l.max(gap)));
            prev = next;
        }
        longest
    }
}

/// Where in a `window` (`LIFEBOAT_JITTER`) the runs of the history `key`
/// (`namespace/name`) fall: a stable hash of the key, in whole seconds, so
/// that hundreds of pods on one schedule spread over the window instead of
/// meeting the store in the same second, and each pod keeps its own time
/// across restarts (k8up's `@daily-random` does the same). The hash is
/// FNV-1a (64 bit) and must never change: every pod's time would move.
pub fn jitter_offset(key: &str, window: std::time::Duration) -> std::time::Duration {
    let secs = window.as_secs();
    if secs == 0 {
        return std::time::Duration::ZERO;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    std::time::Duration::from_secs(h % secs)
}

/// How many upcoming runs [`Schedule::interval`] looks at: enough to see a
/// whole week of a daily or weekday schedule.
pub const INTERVAL_RUNS: usize = 9;

fn parse_value(s: &str, f: &Field) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = f.names.iter().position(|n| *n == lower) {
        return Ok(i as u32 + if f.min == 1 { 1 } else { 0 });
    }
    let v: u32 = s
        .parse()
        .map_err(|_| format!("{} field: {s:?} is not a number", f.name))?;
    if v < f.min || v > f.max {
        return Err(format!(
            "{} field: {v} is out of range {}-{}",
            f.name, f.min, f.max
        ));
    }
    Ok(v)
}

fn parse_field(text: &str, f: &Field) -> Result<u64, String> {
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    format!("{} field: step {s:?} must be a positive number", f.name)
                })?;
                (r, step)
            }
            None => (item, 1),
        };
        let (lo, hi) = if range == "*" {
            (f.min, f.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (parse_value(a, f)?, parse_value(b, f)?);
            if a > b {
                return Err(format!("{} field: range {range:?} runs backwards", f.name));
            }
            (a, b)
        } else {
            let a = parse_value(range, f)?;
            // `5/15` means from 5 to the end in steps of 15, as in Vixie cron.
            (a, if item.contains('/') { f.max } else { a })
        };
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn jitter_moves_every_run_by_the_pods_own_offset() {
        let hour = std::time::Duration::from_secs(3600);
        let off = jitter_offset("prod/db-0", hour);
        assert_eq!(off, jitter_offset("prod/db-0", hour), "stable");
        assert!(off < hour);
        let daily = Schedule::parse("@daily").unwrap().shifted(off);
        let t = at(2026, 12, 3, 12, 0, 0);
        let first = daily.next_after(t).unwrap();
        assert_eq!(
            first,
            at(2026, 12, 4, 0, 0, 0) + Duration::seconds(off.as_secs() as i64)
        );
        // Just before its own time, the run is still ahead; just after, the
        // next day's.
        assert_eq!(daily.next_after(first - Duration::seconds(1)), Some(first));
        assert_eq!(daily.next_after(first), Some(first + Duration::hours(24)));
        assert_eq!(daily.interval(t), Some(Duration::hours(24)));
        assert_eq!(daily.as_str(), "@daily");
        assert_eq!(
            jitter_offset("prod/db-0", std::time::Duration::ZERO),
            std::time::Duration::ZERO
        );
    }

    #[test]
    fn the_last_run_at_or_before_a_time() {
        let daily = Schedule::parse("0 2 * * *").unwrap();
        assert_eq!(
            daily.last_at_or_before(at(2026, 12, 3, 12, 0, 0)),
            Some(at(2026, 12, 3, 2, 0, 0))
        );
        assert_eq!(
            daily.last_at_or_before(at(2026, 12, 3, 2, 0, 0)),
            Some(at(2026, 12, 3, 2, 0, 0))
        );
        assert_eq!(
            daily.last_at_or_before(at(2026, 12, 3, 1, 59, 0)),
            Some(at(2026, 12, 2, 2, 0, 0))
        );
        let shifted = daily.clone().shifted(std::time::Duration::from_secs(600));
        assert_eq!(
            shifted.last_at_or_before(at(2026, 12, 3, 2, 5, 0)),
            Some(at(2026, 12, 2, 2, 10, 0))
        );
        let minutely = Schedule::parse("* * * * *").unwrap();
        assert_eq!(
            minutely.last_at_or_before(at(2026, 12, 3, 12, 0, 30)),
            Some(at(2026, 12, 3, 12, 0, 0))
        );
        assert_eq!(
            Schedule::parse("0 0 31 2 *")
                .unwrap()
                .last_at_or_before(at(2026, 12, 3, 0, 0, 0)),
            None
        );
    }

    #[test]
    fn the_last_run_of_sparse_and_clustered_schedules() {
        let clustered = Schedule::parse("*/5 2 * * *").unwrap();
        assert_eq!(
            clustered.last_at_or_before(at(2026, 12, 3, 9, 0, 0)),
            Some(at(2026, 12, 3, 2, 55, 0))
        );
        let yearly = Schedule::parse("@yearly").unwrap();
        assert_eq!(
            yearly.last_at_or_before(at(2026, 12, 3, 9, 0, 0)),
            Some(at(2026, 1, 1, 0, 0, 0))
        );
    }

    #[test]
    fn five_hundred_pods_spread_over_the_window() {
        let hour = std::time::Duration::from_secs(3600);
        let mut per_minute = [0u32; 60];
        for i in 0..500 {
            let off = jitter_offset(&format!("team-{}/notebook-{i}", i % 7), hour);
            per_minute[(off.as_secs() / 60) as usize] += 1;
        }
        // About 8 a minute; never a crowd in one.
        let most = per_minute.iter().max().copied().unwrap();
        let fewest = per_minute.iter().min().copied().unwrap();
        assert!(most <= 20 && fewest >= 1, "{per_minute:?}");
    }

    #[test]
    fn interval_is_the_longest_upcoming_gap() {
        let t = at(2026, 11, 23, 12, 0, 0); // a Monday
        let daily = Schedule::parse("0 2 * * *").unwrap();
        assert_eq!(daily.interval(t), Some(Duration::hours(24)));
        let weekdays = Schedule::parse("0 2 * * 1-5").unwrap();
        assert_eq!(weekdays.interval(t), Some(Duration::hours(72)));
        let every15 = Schedule::parse("*/15 * * * *").unwrap();
        assert_eq!(every15.interval(t), Some(Duration::minutes(15)));
        let never = Schedule::parse("0 0 31 2 *").unwrap();
        assert_eq!(never.interval(t), None);
    }

    #[test]
    fn daily_at_two() {
        let s = Schedule::parse("0 2 * * *").unwrap();
        assert_eq!(
            s.next_after(at(2026, 11, 23, 1, 59, 59)),
            Some(at(2026, 11, 23, 2, 0, 0))
        );
        assert_eq!(
            s.next_after(at(2026, 11, 23, 2, 0, 0)),
            Some(at(2026, 11, 24, 2, 0, 0))
        );
        assert_eq!(
            s.next_after(at(2026, 12, 31, 3, 0, 0)),
            Some(at(2027, 1, 1, 2, 0, 0))
        );
    }

    #[test]
    fn steps_lists_names_and_macros() {
        let s = Schedule::parse("*/15 9-17 * * mon-fri").unwrap();
        // 2026-11-21 is a Saturday.
        assert_eq!(
            s.next_after(at(2026, 11, 21, 12, 0, 0)),
            Some(at(2026, 11, 23, 9, 0, 0))
        );
        assert_eq!(
            s.next_after(at(2026, 11, 23, 9, 7, 0)),
            Some(at(2026, 11, 23, 9, 15, 0))
        );
        assert_eq!(
            s.next_after(at(2026, 11, 23, 17, 45, 0)),
            Some(at(2026, 11, 24, 9, 0, 0))
        );
        let w = Schedule::parse("@weekly").unwrap();
        assert_eq!(
            w.next_after(at(2026, 11, 23, 0, 0, 0)),
            Some(at(2026, 11, 29, 0, 0, 0))
        );
        let sun7 = Schedule::parse("0 0 * * 7").unwrap();
        assert_eq!(
            sun7,
            Schedule {
                text: "0 0 * * 7".into(),
                ..Schedule::parse("0 0 * * 0").unwrap()
            }
        );
        let m = Schedule::parse("30 4 1,15 * *").unwrap();
        assert_eq!(
            m.next_after(at(2026, 11, 2, 0, 0, 0)),
            Some(at(2026, 11, 15, 4, 30, 0))
        );
        let leap = Schedule::parse("0 0 29 feb *").unwrap();
        assert_eq!(
            leap.next_after(at(2026, 3, 1, 0, 0, 0)),
            Some(at(2028, 2, 29, 0, 0, 0))
        );
        assert_eq!(
            Schedule::parse("0 0 31 2 *")
                .unwrap()
                .next_after(at(2026, 1, 1, 0, 0, 0)),
            None
        );
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_given() {
        // Vixie cron: the 13th of the month, or any Friday.
        let s = Schedule::parse("0 0 13 * fri").unwrap();
        assert_eq!(
            s.next_after(at(2026, 11, 23, 0, 0, 0)),
            Some(at(2026, 11, 27, 0, 0, 0))
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (text, needle) in [
            ("0 25 * * *", "hour field: 25 is out of range 0-23"),
            ("0 2 * *", "has 4 field(s)"),
            ("0 0 0 2 * *", "has 6 field(s)"),
            ("*/0 * * * *", "minute field: step"),
            ("0 0 * foo *", "month field: \"foo\" is not a number"),
            ("@often", "unknown macro"),
            ("5-1 * * * *", "runs backwards"),
        ] {
            let e = Schedule::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
