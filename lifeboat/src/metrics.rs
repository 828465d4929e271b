//! `/metrics` in the Prometheus text exposition format (version 0.0.4),
//! written by hand: a dozen gauges and counters do not need a library.
//! Metrics whose value is not known yet (no backup since the volume was
//! new) are left out rather than reported as 0, so `time() - x` never
//! claims a backup from 1970.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use crate::status::{Counts, State};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: Option<f64>) {
        if let Some(v) = value {
            self.family(name, "gauge", help);
            self.sample(name, &[], v);
        }
    }

    fn counts(&mut self, name: &str, help: &str, c: Counts) {
        self.family(name, "counter", help);
        let total = format!("{name}_total");
        self.sample(&total, &[("result", "success")], c.success as f64);
        self.sample(&total, &[("result", "failure")], c.failure as f64);
    }

    /// One gauge with a `target` label per target that has a value.
    fn per_target<'a>(
        &mut self,
        name: &str,
        help: &str,
        values: impl Iterator<Item = (&'a str, Option<f64>)>,
    ) {
        let values: Vec<_> = values.filter_map(|(t, v)| Some((t, v?))).collect();
        if values.is_empty() {
            return;
        }
        self.family(name, "gauge", help);
        for (t, v) in values {
            self.sample(name, &[("target", t)], v);
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn ts(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// The `/metrics` page for `s` at `now` (staleness depends on the clock).
pub fn render(s: &State, now: DateTime<Utc>) -> String {
    let (stale, drill_stale) = (s.is_stale(now), s.is_drill_stale(now));
    let mut o = Out(String::with_capacity(4096));
    sidecar_metrics(&mut o, s, stale, drill_stale);
    backup_metrics(&mut o, s);
    target_metrics(&mut o, s);
    if let Some(w) = &s.wal {
        wal_metrics(&mut o, w, now);
    }
    o.0
}

/// The continuous WAL archive (README, "Continuous WAL").
fn wal_metrics(o: &mut Out, w: &crate::status::WalState, now: DateTime<Utc>) {
    o.gauge(
        "lifeboat_wal_archived_lsn",
        "Where the WAL archive reaches, as a byte position.",
        w.archived_lsn.as_ref().map(|_| w.archived_bytes as f64),
    );
    o.gauge(
        "lifeboat_wal_lag_seconds",
        "Since the archive last caught up with the server's flushed WAL: the newest archived byte is at most this old.",
        w.caught_up_at
            .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0),
    );
    o.family(
        "lifeboat_wal_objects",
        "counter",
        "WAL objects committed by this sidecar.",
    );
    o.sample("lifeboat_wal_objects_total", &[], w.objects as f64);
    o.counts(
        "lifeboat_wal_passes",
        "Archiver passes, by result.",
        w.passes,
    );
    o.family(
        "lifeboat_wal_slot_dropped",
        "counter",
        "Times the replication slot was dropped with WAL never archived (past LIFEBOAT_WAL_MAX_RETAINED, or by the server past max_slot_wal_keep_size): WAL from then until a new base backup is not restorable.",
    );
    o.sample(
        "lifeboat_wal_slot_dropped_total",
        &[],
        w.slot_dropped as f64,
    );
    // A time, not only the counter: a drop found in the first pass after
    // a restart is already 1 at the first scrape, which increase() misses.
    o.gauge(
        "lifeboat_wal_slot_dropped_timestamp_seconds",
        "When this sidecar last found the replication slot dropped with WAL never archived (Unix time).",
        w.slot_dropped_at
            .map(|t| t.timestamp_millis() as f64 / 1000.0),
    );
}

/// What the sidecar is and does: its identity, its schedule and whether
/// backups are stale, and the work running now.
fn sidecar_metrics(o: &mut Out, s: &State, stale: bool, drill_stale: Option<bool>) {
    o.family(
        "lifeboat_info",
        "gauge",
        "Version and what this sidecar backs up.",
    );
    o.sample(
        "lifeboat_info",
        &[
            ("version", s.version),
            ("name", &s.name),
            ("namespace", &s.namespace),
            ("source", s.source),
            ("schedule", &s.schedule),
        ],
        1.0,
    );
    o.gauge(
        "lifeboat_start_time_seconds",
        "When the sidecar started (Unix time).",
        Some(ts(s.started_at)),
    );
    o.gauge(
        "lifeboat_schedule_interval_seconds",
        "Longest gap between the schedule's upcoming runs.",
        s.schedule_interval_s.map(|v| v as f64),
    );
    o.gauge(
        "lifeboat_stale_after_seconds",
        "Age of the last success beyond which backups count as stale.",
        s.stale_after_s.map(|v| v as f64),
    );
    o.gauge(
        "lifeboat_stale",
        "1 when the last successful backup is older than lifeboat_stale_after_seconds.",
        Some(flag(stale)),
    );
    o.gauge(
        "lifeboat_drill_stale",
        "1 when restore drills are configured and none passed within LIFEBOAT_DRILL_STALE_AFTER (from the sidecar's start while none ever did).",
        drill_stale.map(flag),
    );
    o.gauge(
        "lifeboat_next_run_timestamp_seconds",
        "When the next scheduled backup starts (Unix time).",
        s.next_run.map(ts),
    );
    o.gauge(
        "lifeboat_backup_running",
        "1 while a backup runs.",
        Some(flag(s.running.as_ref().is_some_and(|r| r.work == "backup"))),
    );
    o.gauge(
        "lifeboat_restore_pending",
        "1 while a restored dump waits to be loaded (the pod is not ready).",
        Some(flag(s.pending_load.is_some())),
    );
}

/// The newest committed backup, the last attempt, and the result counters.
fn backup_metrics(o: &mut Out, s: &State) {
    o.gauge(
        "lifeboat_last_success_timestamp_seconds",
        "When the newest committed backup finished (Unix time).",
        s.last_success.as_ref().map(|l| ts(l.finished_at)),
    );
    if let Some(l) = &s.last_success {
        o.gauge(
            "lifeboat_last_backup_duration_seconds",
            "Wall time of the newest committed backup.",
            Some((l.finished_at - l.started_at).num_milliseconds() as f64 / 1000.0),
        );
        o.gauge(
            "lifeboat_last_backup_input_bytes",
            "Uncompressed bytes read by the newest committed backup.",
            Some(l.bytes_in as f64),
        );
        o.gauge(
            "lifeboat_last_backup_stored_bytes",
            "Bytes stored by the newest committed backup.",
            Some(l.size as f64),
        );
        o.gauge(
            "lifeboat_last_backup_entries",
            "Tar entries in the newest committed backup.",
            Some(l.entries as f64),
        );
    }
    o.gauge(
        "lifeboat_last_attempt_timestamp_seconds",
        "When the last backup attempt finished (Unix time).",
        s.last_attempt.as_ref().map(|a| ts(a.finished_at)),
    );
    o.gauge(
        "lifeboat_last_attempt_success",
        "1 when the last backup attempt succeeded, 0 when it failed.",
        s.last_attempt.as_ref().map(|a| flag(a.ok)),
    );
    o.counts(
        "lifeboat_backups",
        "Backups attempted by this sidecar, by result.",
        s.backups,
    );
    o.counts(
        "lifeboat_verifications",
        "Scheduled verifications of the newest artifact, by result.",
        s.verifications,
    );
    o.counts(
        "lifeboat_restore_loads",
        "Loads of a restored dump into the server, by result.",
        s.loads,
    );
}

/// One gauge per target for each family: listing, newest artifact,
/// backlog and scheduled verification.
fn target_metrics(o: &mut Out, s: &State) {
    let targets = || s.targets.iter().map(|t| (t.target.as_str(), t));
    o.per_target(
        "lifeboat_artifacts",
        "Committed artifacts on each target.",
        targets().map(|(n, t)| (n, t.error.is_none().then_some(t.artifacts as f64))),
    );
    o.per_target(
        "lifeboat_target_up",
        "1 when the target's last listing succeeded.",
        targets().map(|(n, t)| (n, Some(flag(t.error.is_none())))),
    );
    o.per_target(
        "lifeboat_newest_artifact_timestamp_seconds",
        "When the newest artifact on each target started (Unix time).",
        targets().map(|(n, t)| (n, t.newest_started_at.map(ts))),
    );
    o.per_target(
        "lifeboat_backlog_artifacts",
        "Artifacts a secondary target still lacks.",
        targets().map(|(n, t)| (n, (!t.primary).then_some(t.backlog as f64))),
    );
    o.per_target(
        "lifeboat_last_verify_timestamp_seconds",
        "When the newest artifact on each target was last verified by schedule.",
        targets().map(|(n, t)| (n, t.last_verify.as_ref().map(|v| ts(v.at)))),
    );
    o.per_target(
        "lifeboat_last_verify_success",
        "1 when the last scheduled verification on each target passed.",
        targets().map(|(n, t)| (n, t.last_verify.as_ref().map(|v| flag(v.ok)))),
    );
    o.per_target(
        "lifeboat_last_drill_success_timestamp_seconds",
        "When a restore drill of an artifact on each target last passed (Unix time).",
        targets().map(|(n, t)| (n, t.last_drill_success_at.map(ts))),
    );
    o.per_target(
        "lifeboat_last_drill_success",
        "1 when the newest restore drill on each target passed, 0 when it failed or was inconclusive.",
        targets().map(|(n, t)| (n, t.last_drill.as_ref().map(|d| flag(d.passed)))),
    );
    o.per_target(
        "lifeboat_last_drill_restore_seconds",
        "How long the newest restore drill's restore took.",
        targets().map(|(n, t)| (n, t.last_drill.as_ref().map(|d| d.restore_seconds))),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

#[cfg(test)]
mod rule_tests {
    use crate::config::{Inputs, Role, Settings};
    use crate::status::{Status, Verification};
    use chrono::Utc;

    /// Every metric the shipped PrometheusRule reads is one we serve.
    #[test]
    fn the_prometheus_rule_reads_only_served_metrics() {
        let env = [
            ("LIFEBOAT_PATHS", "/data"),
            ("LIFEBOAT_TARGETS", "file:///backup,s3://bucket"),
            ("HOSTNAME", "web-0"),
            ("LIFEBOAT_ANNOTATIONS_FILE", "/nonexistent/a"),
            // Drills configured: lifeboat_drill_stale is served.
            ("LIFEBOAT_DRILL_CHECK", "true"),
        ];
        let inputs = Inputs::from_env(
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        let settings = Settings::from_inputs(&inputs, Role::Backup).unwrap();
        let status = Status::new(&settings, Utc::now());
        status.backup_finished("schedule", Utc::now(), Err("boom".into()), Utc::now());
        status.backlog(&[2]);
        let v = Verification {
            at: Utc::now(),
            ok: true,
            id: "x".into(),
            error: None,
        };
        status.verified(0, v);
        // A drill seen in the listing (refresh_targets sets these).
        let mut state = status.snapshot();
        state.targets[0].last_drill = Some(crate::status::DrillState {
            id: "x".into(),
            at: Utc::now(),
            passed: false,
            verdict: crate::drill::Verdict::Failed,
            restore_seconds: 1.5,
            check: "true".into(),
            output_tail: Some(String::new()),
        });
        state.targets[0].last_drill_success_at = Some(Utc::now());
        // WAL archived, and its slot once dropped (wal_pass sets these).
        state.wal = Some(crate::status::WalState {
            slot_dropped: 1,
            slot_dropped_at: Some(Utc::now()),
            ..Default::default()
        });
        let served = super::render(&state, Utc::now());
        let rule = include_str!("../../manifests/prometheusrule.yaml");
        let mut names: Vec<&str> = rule
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("lifeboat_"))
            .collect();
        names.dedup();
        assert!(names.len() >= 4, "{names:?}");
        for n in names {
            assert!(
                served
                    .lines()
                    .any(|l| l.starts_with(&format!("{n} ")) || l.starts_with(&format!("{n}{{"))),
                "{n} is not served:\n{served}"
            );
        }
    }
}
