//! What the running sidecar knows about its backups, for `/status`,
//! `/metrics` and `/readyz`: one small state behind a mutex, updated by the
//! loop after each piece of work and read by the HTTP endpoint. This module
//! is the state only; `metrics` renders it (`metrics::render`), and the
//! endpoint (`daemon::serve`) puts the two together.
//!
//! Staleness is a pure function of (last success, start, limit, now), so it
//! is tested on a fixed clock.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Settings;
use crate::manifest::Manifest;
use crate::store::{AnyTarget, Target};

/// Whether backups are stale: the last success (or, with none yet, the
/// start of this process) lies further back than `limit`. No limit (a
/// schedule that never fires, no `LIFEBOAT_STALE_AFTER`) is never stale.
pub fn is_stale(
    last_success: Option<DateTime<Utc>>,
    started: DateTime<Utc>,
    limit: Option<Duration>,
    now: DateTime<Utc>,
) -> bool {
    let Some(limit) = limit.and_then(|l| chrono::Duration::from_std(l).ok()) else {
        return false;
    };
    now - last_success.unwrap_or(started) > limit
}

/// `LIFEBOAT_STALE_AFTER`, else twice the schedule's longest upcoming gap.
pub fn stale_limit(settings: &Settings, now: DateTime<Utc>) -> Option<Duration> {
    settings
        .ops
        .stale_after
        .or_else(|| Some(settings.schedule.interval(now)?.to_std().ok()? * 2))
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    pub success: u64,
    pub failure: u64,
}

impl Counts {
    fn add(&mut self, ok: bool) {
        if ok {
            self.success += 1
        } else {
            self.failure += 1
        }
    }
}

/// The most recent backup attempt, successful or not.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub ok: bool,
    /// The artifact, when it was committed.
    pub id: Option<String>,
    pub error: Option<String>,
}

/// The newest committed backup: what a restore would put back.
#[derive(Debug, Clone, Serialize)]
pub struct Success {
    pub id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub bytes_in: u64,
    pub size: u64,
    pub entries: u64,
}

impl From<&Manifest> for Success {
    fn from(m: &Manifest) -> Self {
        Success {
            id: m.id.clone(),
            started_at: m.started_at,
            finished_at: m.finished_at,
            bytes_in: m.bytes_in,
            size: m.size,
            entries: m.entries,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub at: DateTime<Utc>,
    pub ok: bool,
    pub id: String,
    pub error: Option<String>,
}

/// One target as last seen.
#[derive(Debug, Clone, Serialize)]
pub struct TargetState {
    pub target: String,
    pub primary: bool,
    pub artifacts: usize,
    pub newest: Option<String>,
    pub newest_started_at: Option<DateTime<Utc>>,
    /// When the newest artifact last passed `verify`.
    pub newest_verified_at: Option<DateTime<Utc>>,
    /// Artifacts the primary keeps that this secondary still lacks.
    pub backlog: usize,
    /// Why the last listing failed, when it did.
    pub error: Option<String>,
    pub last_verify: Option<Verification>,
    /// The newest restore drill of any artifact on this target.
    pub last_drill: Option<DrillState>,
    /// When a drill on this target last passed.
    pub last_drill_success_at: Option<DateTime<Utc>>,
}

/// A restore drill's result as `/status` shows it (README, "Restore drills").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrillState {
    pub id: String,
    pub at: DateTime<Utc>,
    pub passed: bool,
    pub verdict: crate::drill::Verdict,
    pub restore_seconds: f64,
    pub check: String,
    /// The end of the check's output, when it did not pass.
    pub output_tail: Option<String>,
}

impl DrillState {
    /// The newest drill record among `artifacts`, and when one last passed.
    pub fn newest(
        artifacts: &[crate::store::Stored],
    ) -> (Option<DrillState>, Option<DateTime<Utc>>) {
        let records = || artifacts.iter().filter_map(|a| a.drill.as_ref());
        let newest = records().max_by_key(|d| d.at).map(|d| DrillState {
            id: d.id.clone(),
            at: d.at,
            passed: d.has_passed(),
            verdict: d.verdict(),
            restore_seconds: d.restore_seconds,
            check: d.check.clone(),
            output_tail: (!d.has_passed()).then(|| d.output_tail.clone()),
        });
        let passed = records().filter(|d| d.has_passed()).map(|d| d.at).max();
        (newest, passed)
    }
}

/// What is running right now.
#[derive(Debug, Clone, Serialize)]
pub struct Running {
    /// `backup`, `verify` or `load`.
    pub work: &'static str,
    pub trigger: String,
    pub since: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct State {
    pub version: &'static str,
    pub name: String,
    pub namespace: String,
    pub source: &'static str,
    pub schedule: String,
    pub next_run: Option<DateTime<Utc>>,
    pub verify_schedule: Option<String>,
    pub started_at: DateTime<Utc>,
    /// Effective `LIFEBOAT_STALE_AFTER` in seconds.
    pub stale_after_s: Option<u64>,
    /// Effective `LIFEBOAT_DRILL_STALE_AFTER` in seconds, when drills are
    /// configured for this pod.
    pub drill_stale_after_s: Option<u64>,
    /// Longest gap between upcoming runs, in seconds.
    pub schedule_interval_s: Option<u64>,
    pub last_success: Option<Success>,
    pub last_attempt: Option<Attempt>,
    pub running: Option<Running>,
    /// The id of a restored dump that waits to be loaded (not ready).
    pub pending_load: Option<String>,
    /// Why the server refused the pending dump; the sidecar no longer
    /// retries it and backs up the server as it is.
    pub load_refused: Option<String>,
    pub backups: Counts,
    pub loads: Counts,
    pub verifications: Counts,
    pub targets: Vec<TargetState>,
    /// The continuous WAL archive (`LIFEBOAT_POSTGRES_WAL=on`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalState>,
}

/// Where the WAL archive stands (docs/ARCHITECTURE.md, "Continuous WAL").
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalState {
    /// The archive reaches this position (`16/B374D848`) ...
    pub archived_lsn: Option<String>,
    /// ... as a byte offset, for the metric.
    pub archived_bytes: u64,
    pub timeline: Option<u32>,
    /// When a pass last found nothing flushed that was not archived: the
    /// newest archived byte is at most this old.
    pub caught_up_at: Option<DateTime<Utc>>,
    pub objects: u64,
    pub passes: Counts,
    pub last_error: Option<String>,
    /// Times the slot was dropped with WAL never archived (past
    /// `LIFEBOAT_WAL_MAX_RETAINED`, or by the server).
    pub slot_dropped: u64,
    /// When it was last found dropped.
    pub slot_dropped_at: Option<DateTime<Utc>>,
    /// The last pass found the server in recovery: nothing to archive.
    pub waiting: bool,
    /// The archive is stale once it has not caught up for this long
    /// ([`wal_stale_after`]).
    pub stale_after_s: u64,
    /// When archiving was turned on (the process's start, or an
    /// annotation's change): what staleness counts from before the first
    /// pass caught up.
    pub since: Option<DateTime<Utc>>,
}

/// How long the WAL archive may go without catching up with the server
/// before it counts as stale: ten intervals, at least five minutes (an
/// upload of a backlog, a store that answers slowly for a while).
pub fn wal_stale_after(interval: Duration) -> Duration {
    (interval * 10).max(Duration::from_secs(300))
}

impl WalState {
    /// Stale: no pass caught up with the server's flush (with none yet,
    /// since archiving was turned on, or `started`) for longer than
    /// `stale_after_s`, unless the server is in recovery and has nothing to
    /// archive.
    pub fn is_stale(&self, started: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        !self.waiting
            && is_stale(
                self.caught_up_at,
                self.since.unwrap_or(started),
                Some(Duration::from_secs(self.stale_after_s)),
                now,
            )
    }
}

/// `State` plus what is derived from the clock when asked.
#[derive(Serialize)]
struct Report<'a> {
    now: DateTime<Utc>,
    stale: bool,
    /// Drills configured, and none passed within their limit.
    drill_stale: Option<bool>,
    /// WAL archived, and it has not caught up within its limit (part of
    /// `stale` too).
    #[serde(skip_serializing_if = "Option::is_none")]
    wal_stale: Option<bool>,
    #[serde(flatten)]
    state: &'a State,
}

pub struct Status {
    state: Mutex<State>,
}

impl Status {
    pub fn new(settings: &Settings, now: DateTime<Utc>) -> Self {
        let mut state = State {
            version: env!("CARGO_PKG_VERSION"),
            name: settings.name.clone(),
            namespace: settings.namespace.clone(),
            source: settings.source.kind.label(),
            schedule: String::new(),
            next_run: None,
            verify_schedule: None,
            started_at: now,
            stale_after_s: None,
            drill_stale_after_s: None,
            schedule_interval_s: None,
            last_success: None,
            last_attempt: None,
            running: None,
            pending_load: None,
            load_refused: None,
            backups: Counts::default(),
            loads: Counts::default(),
            verifications: Counts::default(),
            wal: None,
            targets: settings
                .targets
                .iter()
                .enumerate()
                .map(|(i, t)| TargetState {
                    target: t.to_string(),
                    primary: i == 0,
                    artifacts: 0,
                    newest: None,
                    newest_started_at: None,
                    newest_verified_at: None,
                    backlog: 0,
                    error: None,
                    last_verify: None,
                    last_drill: None,
                    last_drill_success_at: None,
                })
                .collect(),
        };
        apply_settings(&mut state, settings, now);
        Status {
            state: Mutex::new(state),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A panic elsewhere while holding the lock must not take the
        // endpoint down with it: the data is plain values, still usable.
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    pub fn snapshot(&self) -> State {
        self.with(|s| s.clone())
    }

    /// Reads the state under the lock without copying it (`/metrics`
    /// renders it this way).
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        self.with(|s| f(s))
    }

    pub fn settings_changed(&self, settings: &Settings, now: DateTime<Utc>) {
        self.with(|s| apply_settings(s, settings, now));
    }

    pub fn next_run(&self, at: Option<DateTime<Utc>>) {
        self.with(|s| s.next_run = at);
    }

    pub fn started(&self, work: &'static str, trigger: &str, now: DateTime<Utc>) {
        self.with(|s| {
            s.running = Some(Running {
                work,
                trigger: trigger.into(),
                since: now,
            })
        });
    }

    pub fn idle(&self) {
        self.with(|s| s.running = None);
    }

    /// A pass of the WAL archiver ended: `Ok((position, bytes, timeline,
    /// objects))` when it caught up with the server's flush.
    pub fn wal_pass(
        &self,
        result: std::result::Result<(String, u64, u32, u64), String>,
        waiting: bool,
        slot_dropped: bool,
        now: DateTime<Utc>,
    ) {
        self.with(|s| {
            let w = s.wal.get_or_insert_with(WalState::default);
            w.waiting = waiting;
            match result {
                Ok((lsn, bytes, timeline, objects)) => {
                    w.archived_lsn = Some(lsn);
                    w.archived_bytes = bytes;
                    w.timeline = Some(timeline);
                    w.caught_up_at = Some(now);
                    w.objects += objects;
                    w.passes.success += 1;
                    w.last_error = None;
                }
                Err(e) => {
                    w.passes.failure += 1;
                    w.last_error = Some(e);
                }
            }
            if slot_dropped {
                w.slot_dropped += 1;
                w.slot_dropped_at = Some(now);
            }
        });
    }

    /// WAL found lost before this process (recorded in the store): its
    /// time, unless this process found a later one.
    pub fn wal_lost_before(&self, at: DateTime<Utc>) {
        self.with(|s| {
            let w = s.wal.get_or_insert_with(WalState::default);
            if w.slot_dropped_at.is_none_or(|t| t < at) {
                w.slot_dropped_at = Some(at);
            }
        });
    }

    pub fn pending_load(&self, id: Option<String>) {
        self.with(|s| s.pending_load = id);
    }

    pub fn load_refused(&self, why: Option<String>) {
        self.with(|s| s.load_refused = why);
    }

    pub fn load_finished(&self, ok: bool) {
        self.with(|s| s.loads.add(ok));
    }

    /// Records a finished backup attempt; `result` is the manifest or the error text.
    pub fn backup_finished(
        &self,
        trigger: &str,
        started_at: DateTime<Utc>,
        result: std::result::Result<&Manifest, String>,
        now: DateTime<Utc>,
    ) {
        self.with(|s| {
            s.backups.add(result.is_ok());
            let (id, error) = match &result {
                Ok(m) => {
                    s.last_success = Some(Success::from(*m));
                    (Some(m.id.clone()), None)
                }
                Err(e) => (None, Some(e.clone())),
            };
            s.last_attempt = Some(Attempt {
                trigger: trigger.into(),
                started_at,
                finished_at: now,
                ok: result.is_ok(),
                id,
                error,
            });
        });
    }

    pub fn verified(&self, target: usize, v: Verification) {
        self.with(|s| {
            s.verifications.add(v.ok);
            if let Some(t) = s.targets.get_mut(target) {
                t.last_verify = Some(v);
            }
        });
    }

    /// Secondary targets' backlog, in target order after the primary.
    pub fn backlog(&self, per_secondary: &[usize]) {
        self.with(|s| {
            for (t, b) in s.targets.iter_mut().skip(1).zip(per_secondary) {
                t.backlog = *b;
            }
        });
    }

    /// Lists every target to count artifacts. At start, the primary's
    /// newest artifact is the last success: a restarted sidecar is not
    /// stale because it forgot.
    pub async fn refresh_targets(&self, targets: &[AnyTarget]) {
        for (i, t) in targets.iter().enumerate() {
            let listing = t.list().await;
            self.with(|s| {
                let Some(ts) = s.targets.get_mut(i) else {
                    return;
                };
                match &listing {
                    Ok(l) => {
                        let newest = l.artifacts.first();
                        ts.artifacts = l.artifacts.len();
                        ts.newest = newest.map(|a| a.manifest.id.clone());
                        ts.newest_started_at = newest.map(|a| a.manifest.started_at);
                        ts.newest_verified_at = newest.and_then(|a| a.verified_at);
                        (ts.last_drill, ts.last_drill_success_at) =
                            DrillState::newest(&l.artifacts);
                        ts.error = None;
                        if i == 0 {
                            if let Some(a) = newest {
                                let known = s.last_success.as_ref().map(|l| l.finished_at);
                                if known.is_none_or(|k| k < a.manifest.finished_at) {
                                    s.last_success = Some(Success::from(&a.manifest));
                                }
                            }
                        }
                    }
                    Err(e) => ts.error = Some(e.to_string()),
                }
            });
        }
    }

    pub fn is_stale(&self, now: DateTime<Utc>) -> bool {
        self.with(|s| s.is_stale(now))
    }

    /// Whether a backup must wait: a restored dump that the server has not
    /// refused is still to be loaded (a backup would record the server
    /// without it). After a refusal, backups of the server as it is run.
    pub fn backup_blocked(&self) -> std::result::Result<(), String> {
        self.with(|s| match (&s.pending_load, &s.load_refused) {
            (Some(id), None) => Err(format!("restored dump {id} is not loaded yet")),
            _ => Ok(()),
        })
    }

    /// `/readyz`: not ready while a restored dump waits to be loaded.
    pub fn ready(&self) -> std::result::Result<(), String> {
        self.with(|s| match (&s.pending_load, &s.load_refused) {
            (None, _) => Ok(()),
            (Some(id), None) => Err(format!("restored dump {id} is not loaded yet")),
            (Some(id), Some(why)) => Err(format!(
                "restored dump {id} was refused by the server and is not loaded: {why}"
            )),
        })
    }

    pub fn to_json(&self, now: DateTime<Utc>) -> String {
        self.with(|s| {
            let r = Report {
                now,
                stale: s.is_stale(now),
                drill_stale: s.is_drill_stale(now),
                wal_stale: s.is_wal_stale(now),
                state: s,
            };
            serde_json::to_string_pretty(&r).unwrap_or_default()
        })
    }
}

impl State {
    /// What `/status` reports as `stale` and `/metrics` as
    /// `lifeboat_stale`: backups are stale ([`State::are_backups_stale`]),
    /// or the WAL archive is ([`State::is_wal_stale`]).
    pub fn is_stale(&self, now: DateTime<Utc>) -> bool {
        self.are_backups_stale(now) || self.is_wal_stale(now) == Some(true)
    }

    /// [`is_stale`] for the base backups.
    pub fn are_backups_stale(&self, now: DateTime<Utc>) -> bool {
        is_stale(
            self.last_success.as_ref().map(|l| l.finished_at),
            self.started_at,
            self.stale_after_s.map(Duration::from_secs),
            now,
        )
    }

    /// Whether the WAL archive is stale ([`WalState::is_stale`]); `None`
    /// when WAL is not archived.
    pub fn is_wal_stale(&self, now: DateTime<Utc>) -> Option<bool> {
        self.wal.as_ref().map(|w| w.is_stale(self.started_at, now))
    }

    /// Whether restore drills are stale: configured, and no drill on the
    /// primary passed within `LIFEBOAT_DRILL_STALE_AFTER` (measured from
    /// this process's start while none ever did). `None` without drills.
    pub fn is_drill_stale(&self, now: DateTime<Utc>) -> Option<bool> {
        let limit = self.drill_stale_after_s.map(Duration::from_secs)?;
        let passed = self.targets.first().and_then(|t| t.last_drill_success_at);
        Some(is_stale(passed, self.started_at, Some(limit), now))
    }
}

fn apply_settings(s: &mut State, settings: &Settings, now: DateTime<Utc>) {
    // WAL turned on or off by an annotation: its state comes and goes with
    // it (an archive no one runs must not count as stale).
    let was = s.wal.take();
    s.wal = settings.source.wal.as_ref().map(|w| WalState {
        stale_after_s: wal_stale_after(w.interval).as_secs(),
        ..was.unwrap_or(WalState {
            since: Some(now),
            ..WalState::default()
        })
    });
    s.schedule = settings.schedule.as_str().into();
    s.verify_schedule = settings
        .ops
        .verify_schedule
        .as_ref()
        .map(|v| v.as_str().into());
    s.stale_after_s = stale_limit(settings, now).map(|d| d.as_secs());
    s.drill_stale_after_s = settings.ops.drill_stale_after.map(|d| d.as_secs());
    s.schedule_interval_s = settings
        .schedule
        .interval(now)
        .and_then(|d| d.to_std().ok())
        .map(|d| d.as_secs());
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, h, m, 0).unwrap()
    }

    #[test]
    fn staleness_on_a_fixed_clock() {
        let limit = Some(Duration::from_secs(3600));
        let started = at(0, 0);
        // No success yet: counted from the start of the process.
        assert!(!is_stale(None, started, limit, at(1, 0)));
        assert!(is_stale(None, started, limit, at(1, 1)));
        // A success resets the clock; it goes stale once it is too old.
        let ok = Some(at(1, 30));
        assert!(!is_stale(ok, started, limit, at(2, 30)));
        assert!(is_stale(ok, started, limit, at(2, 31)));
        // No limit (a schedule that never fires): never stale.
        assert!(!is_stale(None, started, None, at(23, 0)));
    }

    #[test]
    fn the_wal_archive_is_stale_once_it_has_not_caught_up_for_its_limit() {
        assert_eq!(wal_stale_after(Duration::from_secs(60)).as_secs(), 600);
        assert_eq!(wal_stale_after(Duration::from_secs(1)).as_secs(), 300);
        let started = at(0, 0);
        let mut w = WalState {
            stale_after_s: 600,
            ..WalState::default()
        };
        // Never caught up: counted from the start of the process.
        assert!(!w.is_stale(started, at(0, 10)));
        assert!(w.is_stale(started, at(0, 11)));
        w.caught_up_at = Some(at(1, 0));
        assert!(!w.is_stale(started, at(1, 10)));
        assert!(w.is_stale(started, at(1, 11)));
        // A server in recovery has nothing to archive.
        w.waiting = true;
        assert!(!w.is_stale(started, at(5, 0)));
    }
}
