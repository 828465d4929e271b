//! The WAL archive's settings (`LIFEBOAT_POSTGRES_WAL` and the
//! `LIFEBOAT_WAL_*` family; docs/ARCHITECTURE.md, "Continuous WAL"). Only
//! the physical `postgres` source archives WAL; asking for it elsewhere is
//! an error naming what would be right.

use std::time::Duration;

use super::reader::{Problems, Reader};
use crate::duration::parse_duration;
use crate::source::{PgMode, SourceKind};
use crate::wal::settings::{Until, WalSettings};
use crate::wal::slot::check_slot_name;

/// The shortest interval: each one is a query and, when WAL was written,
/// an upload.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// `LIFEBOAT_POSTGRES_WAL`: `on` gives the archive's settings, `off` (the
/// default) none.
pub(super) fn wal_settings(
    r: &Reader,
    source: &SourceKind,
    mode: PgMode,
    problems: &mut Problems,
) -> Option<WalSettings> {
    let until = until(r, problems);
    let v = r.pick("LIFEBOAT_POSTGRES_WAL");
    let off = v
        .as_ref()
        .is_none_or(|v| matches!(v.text.trim(), "" | "off" | "false"));
    if off {
        if let Some(t) = r.pick("LIFEBOAT_RESTORE_TARGET_TIME") {
            problems.fail(&t, "needs LIFEBOAT_POSTGRES_WAL=on: only archived WAL can bring back a point in time between base backups".into());
        }
        return None;
    }
    let v = v?;
    match v.text.trim() {
        "on" | "true" => {}
        _ => {
            problems.fail(
                &v,
                "accepted: on (archive WAL continuously, restore to minutes ago) or off (default)"
                    .into(),
            );
            return None;
        }
    }
    if *source != SourceKind::Postgres || mode != PgMode::Physical {
        problems.fail(
            &v,
            format!(
                "WAL is archived only with LIFEBOAT_SOURCE=postgres in the physical mode (here: {}{})",
                source.as_str(),
                if *source == SourceKind::Postgres { ", logical" } else { "" }
            ),
        );
        return None;
    }
    let mut s = WalSettings {
        until,
        ..WalSettings::default()
    };
    if let Some(v) = r.env("LIFEBOAT_WAL_INTERVAL") {
        match parse_duration(&v.text) {
            Ok(d) if d >= MIN_INTERVAL => s.interval = d,
            Ok(_) => problems.fail(
                &v,
                "must be at least 1s; e.g. 60s (the default), 10s".into(),
            ),
            Err(e) => problems.fail(&v, e),
        }
    }
    if let Some(v) = r.env("LIFEBOAT_WAL_QUIET_MAX") {
        match parse_duration(&v.text) {
            Ok(d) => s.quiet_max = d,
            // Only the archiver reads it: a restore must not fail over it.
            Err(e) if r.role == super::reader::Role::Backup => problems.fail(&v, e),
            Err(_) => {}
        }
    }
    if let Some(v) = r.env("LIFEBOAT_WAL_SLOT") {
        match check_slot_name(v.text.trim()) {
            Ok(()) => s.slot = v.text.trim().to_string(),
            Err(e) => problems.fail(&v, e),
        }
    }
    if let Some(v) = r.env("LIFEBOAT_WAL_MAX_RETAINED") {
        match parse_bytes(&v.text) {
            Ok(n) if n >= 64 << 20 => s.max_retained = n,
            Ok(_) => problems.fail(&v, "must be at least 64MiB; e.g. 4GiB (the default)".into()),
            Err(e) => problems.fail(&v, e),
        }
    }
    Some(s)
}

/// `LIFEBOAT_RESTORE_TARGET_TIME` (or its annotation): RFC 3339, with a
/// zone, so that no one restores to the wrong hour.
fn until(r: &Reader, problems: &mut Problems) -> Until {
    let Some(v) = r.pick("LIFEBOAT_RESTORE_TARGET_TIME") else {
        return Until::End;
    };
    match chrono::DateTime::parse_from_rfc3339(v.text.trim()) {
        Ok(t) => Until::Time {
            at: t.with_timezone(&chrono::Utc),
            setting: v.setting,
        },
        Err(_) if v.text.trim().is_empty() => Until::End,
        Err(e) => {
            problems.fail(
                &v,
                format!("{e}: not an RFC 3339 time; e.g. 2026-12-01T09:30:00Z or 2026-12-01T10:30:00+01:00"),
            );
            Until::End
        }
    }
}

/// `4GiB`, `512MiB`, `1TiB` or a number of bytes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad =
        || format!("{t:?} is not a size; accepted: bytes, or with a unit: 512MiB, 4GiB, 1TiB");
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => return Err(bad()),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(parse_bytes("4GiB"), Ok(4 << 30));
        assert_eq!(parse_bytes(" 512MiB "), Ok(512 << 20));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        for bad in ["4G", "GiB", "-1GiB", "99999999999TiB", "1.5GiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
