//! The loop: wait for the schedule or a trigger, do one piece of work,
//! repeat (docs/ARCHITECTURE.md §7). Annotations are re-read while waiting
//! so `kubectl annotate` takes effect without a restart. One piece of work
//! runs at a time: a `backup-now` request or annotation change that arrives
//! during a backup is served by that backup, never by a second one beside it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::annotations::{Annotations, Change};
use super::report::{announce, log_failure, log_late_cancel};
use super::serve::Reply;
use super::shutdown::Shutdown;
use super::work::{Clock, Open, Work};
use crate::config::Settings;
use crate::progress::Cancel;
use crate::status::Status;

/// How often the annotations file is re-read. The kubelet refreshes it within
/// about a minute of a change, so a few seconds adds nothing noticeable.
pub const ANNOTATIONS_POLL: Duration = Duration::from_secs(5);

/// How often secondary targets that fell behind (a store that was down) are
/// offered their backlog between backups.
pub const BACKLOG_RETRY: Duration = Duration::from_secs(300);

/// A sleep that stands for "not before the pod is long gone".
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// How often a stale backup history is said again in the log.
pub const STALE_WARNING: Duration = Duration::from_secs(3600);

/// How often the targets are listed between backups to notice what a
/// restore drill (another pod) recorded. A listing reads every manifest, so
/// not more often: a failed drill is an Event within the hour.
pub const DRILL_REFRESH: Duration = Duration::from_secs(3600);

/// What the loop does next.
enum Next {
    Backup {
        trigger: String,
        waiters: Vec<Reply>,
    },
    Verify,
    /// Settings changed the schedule: compute the next run again.
    Reschedule,
    Exit,
}

/// The trigger of a backup taken at start (`LIFEBOAT_BACKUP_AT_START`).
const AT_START: &str = "start (LIFEBOAT_BACKUP_AT_START)";

/// The trigger of a backup asked for by annotation.
const BY_ANNOTATION: &str = "annotation lifeboat.dev/backup-now";

/// The sidecar's state between pieces of work.
pub(super) struct Daemon<O: Open> {
    pub component: &'static str,
    pub open: O,
    pub clock: Arc<dyn Clock>,
    pub settings: Settings,
    pub work: Arc<O::Work>,
    pub status: Arc<Status>,
    pub requests: mpsc::Receiver<Reply>,
    pub shutdown: Shutdown,
    pub annotations: Annotations,
    /// Restore drills: whether to look for them, and which was announced.
    pub drills: super::drill_watch::DrillWatch,
    /// The WAL archiver, following the settings in force.
    pub wal: super::wal::WalTask,
}

impl<O: Open> Daemon<O> {
    /// Runs until a shutdown request.
    pub async fn run(&mut self) {
        let mut poll = tokio::time::interval(ANNOTATIONS_POLL);
        let mut backlog_retry = tokio::time::interval(BACKLOG_RETRY);
        let mut stale_check = tokio::time::interval(STALE_WARNING);
        let mut drill_refresh = tokio::time::interval(DRILL_REFRESH);
        // An interval's first tick is immediate; these wait a whole period.
        backlog_retry.tick().await;
        stale_check.tick().await;
        drill_refresh.tick().await;
        if let Some(why) = self.due_at_start() {
            info!(reason = %why, "backing up at start (LIFEBOAT_BACKUP_AT_START=on)");
            if self.backup(AT_START, vec![], &mut poll).await {
                return;
            }
        }
        loop {
            let now = self.clock.now();
            let next = self.settings.schedule.next_after(now);
            self.status.next_run(next);
            match next {
                Some(t) => info!(next = %t.to_rfc3339(), "next scheduled backup"),
                None => warn!(
                    schedule = self.settings.schedule.as_str(),
                    "the schedule never fires; only manual backups will run"
                ),
            }
            let next_verify = self
                .settings
                .ops
                .verify_schedule
                .as_ref()
                .and_then(|v| v.next_after(now));
            let backup_at = tokio::time::sleep(until(next, now));
            let verify_at = tokio::time::sleep(until(next_verify, now));
            tokio::pin!(backup_at, verify_at);
            let next = loop {
                tokio::select! {
                    _ = &mut backup_at => break Next::Backup { trigger: "schedule".into(), waiters: vec![] },
                    _ = &mut verify_at => break Next::Verify,
                    Some(reply) = self.requests.recv() => {
                        break Next::Backup { trigger: "backup-now request".into(), waiters: vec![reply] };
                    }
                    _ = self.shutdown.recv() => break Next::Exit,
                    _ = backlog_retry.tick(), if self.work.has_secondaries() => {
                        let backlog = self.work.sync_secondaries().await;
                        self.status.backlog(&backlog);
                        self.work.refresh(&self.status).await;
                    }
                    _ = stale_check.tick() => self.warn_if_stale(),
                    _ = drill_refresh.tick(), if self.settings.ops.drill_stale_after.is_some() => {
                        self.work.refresh(&self.status).await;
                        self.announce_drill().await;
                    }
                    _ = poll.tick() => {
                        if let Some(w) = self.reload().await {
                            break w;
                        }
                    }
                }
            };
            match next {
                Next::Exit => {
                    info!("shutdown requested while idle; exiting");
                    return;
                }
                Next::Reschedule => continue,
                Next::Verify => {
                    if self.verify().await {
                        return;
                    }
                }
                Next::Backup { trigger, waiters } => {
                    info!(trigger = %trigger, "starting backup");
                    if self.backup(&trigger, waiters, &mut poll).await {
                        return;
                    }
                }
            }
        }
    }

    /// Why a backup is due as the sidecar starts (`LIFEBOAT_BACKUP_AT_START`):
    /// the history has none yet (a first deploy), or its newest started
    /// before the last scheduled run (the pod was down then, or a restore
    /// brought back an older one). A plain restart backs up nothing.
    fn due_at_start(&self) -> Option<String> {
        if !self.settings.ops.backup_at_start {
            return None;
        }
        let st = self.status.snapshot();
        if let Some(e) = st.targets.first().and_then(|t| t.error.as_ref()) {
            // Unknown, not empty: a crash loop against a store that is
            // down must not back up at every start.
            warn!(error = %e, "LIFEBOAT_BACKUP_AT_START: the primary target could not be listed, so whether a backup is due is not known; the schedule decides");
            return None;
        }
        let Some(last) = st.last_success.map(|s| s.started_at) else {
            return Some("this history has no backup yet".into());
        };
        let run = self.settings.schedule.last_at_or_before(self.clock.now())?;
        (last < run).then(|| {
            format!(
                "the newest backup started at {}, before the last scheduled run at {}",
                last.to_rfc3339(),
                run.to_rfc3339()
            )
        })
    }

    /// Reads the annotations again; returns the work a change calls for.
    async fn reload(&mut self) -> Option<Next> {
        let backup_now = Next::Backup {
            trigger: BY_ANNOTATION.into(),
            waiters: vec![],
        };
        let (new, manual, rescheduled) = match self.annotations.poll(&self.settings)? {
            Change::BackupNowAnyway => return Some(backup_now),
            Change::Accepted {
                settings,
                backup_now,
                rescheduled,
            } => (settings, backup_now, rescheduled),
        };
        self.settings = *new;
        self.work = self.open.open(&self.settings).await;
        self.wal.follow(&self.settings).await;
        self.status
            .settings_changed(&self.settings, self.clock.now());
        info!(
            schedule = self.settings.schedule.as_str(),
            "annotations changed; settings reloaded"
        );
        if manual {
            return Some(backup_now);
        }
        rescheduled.then_some(Next::Reschedule)
    }

    pub fn warn_if_stale(&self) {
        let now = self.clock.now();
        let st = self.status.snapshot();
        if st.are_backups_stale(now) {
            warn!(
                last_success = st.last_success.as_ref().map(|l| l.finished_at.to_rfc3339()),
                stale_after_s = st.stale_after_s,
                "backups are stale: no successful backup within LIFEBOAT_STALE_AFTER"
            );
        }
        if let (Some(true), Some(w)) = (st.is_wal_stale(now), &st.wal) {
            warn!(
                caught_up_at = w.caught_up_at.map(|t| t.to_rfc3339()),
                stale_after_s = w.stale_after_s,
                last_error = w.last_error.as_deref(),
                "the WAL archive is stale: it has not caught up with the server within ten LIFEBOAT_WAL_INTERVALs (at least 5 minutes)"
            );
        }
    }

    /// Runs one backup. A shutdown request lets it finish within the grace
    /// period, then cancels it (nothing is committed); a second request
    /// cancels at once. Returns whether the sidecar should exit.
    async fn backup(
        &mut self,
        trigger: &str,
        mut waiters: Vec<Reply>,
        poll: &mut tokio::time::Interval,
    ) -> bool {
        let work = self.work.clone();
        let started = self.clock.now();
        self.status.started("backup", trigger, started);
        let cancel: Cancel = Default::default();
        let running = work.backup(cancel.clone());
        tokio::pin!(running);
        let grace = self.settings.grace_period;
        let mut stopping = false;
        let deadline = tokio::time::sleep(NEVER);
        tokio::pin!(deadline);
        let result = loop {
            tokio::select! {
                r = &mut running => break r,
                Some(reply) = self.requests.recv(), if !stopping => {
                    info!("backup-now request arrived during a running backup; that backup serves it");
                    waiters.push(reply);
                }
                _ = poll.tick(), if !stopping => self.annotations.poll_during_backup(&self.settings),
                _ = self.shutdown.recv() => {
                    if stopping {
                        warn!("second shutdown request; cancelling the backup");
                        cancel.store(true, Ordering::Relaxed);
                    } else {
                        info!(grace_s = grace.as_secs(), "shutdown requested during a backup; letting it finish");
                        stopping = true;
                        deadline.as_mut().reset(tokio::time::Instant::now() + grace);
                    }
                }
                _ = &mut deadline, if stopping && !cancel.load(Ordering::Relaxed) => {
                    warn!("grace period over; cancelling the backup");
                    cancel.store(true, Ordering::Relaxed);
                }
            }
        };
        log_late_cancel(cancel.load(Ordering::Relaxed), &result);
        self.status.backup_finished(
            trigger,
            started,
            result.as_ref().map_err(|e| e.to_string()),
            self.clock.now(),
        );
        self.status.idle();
        log_failure(&result);
        for w in waiters {
            let _ = w.send(result.as_ref().cloned().map_err(|e| e.to_string()));
        }
        let message = announce(self.component, &self.settings, &result).await;
        if stopping {
            if let Some(m) = message {
                m.deliver().await;
            }
            return true;
        }
        if let Some(m) = message {
            tokio::spawn(m.deliver());
        }
        self.status.backlog(&work.backlog());
        work.refresh(&self.status).await;
        self.announce_drill().await;
        false
    }

    /// A restore drill that did not pass (failed or inconclusive) since the
    /// last look: logged, an Event on the pod and a notification, once each
    /// (README, "Restore drills").
    pub(super) async fn announce_drill(&mut self) {
        let newest = self
            .status
            .read(|s| s.targets.first().and_then(|t| t.last_drill.clone()));
        let Some(d) = newest.filter(|d| self.drills.take_new(d)) else {
            return;
        };
        super::report::drill_failed(self.component, &self.settings, &d).await;
    }

    /// `LIFEBOAT_VERIFY_SCHEDULE`: re-reads the newest artifact on each
    /// target end to end and records the outcome. Returns whether the
    /// sidecar should exit; verification only reads, so it just stops.
    async fn verify(&mut self) -> bool {
        self.status.started("verify", "schedule", self.clock.now());
        let work = self.work.clone();
        let verifying = work.verify_newest(&self.status, &*self.clock);
        let stop = tokio::select! {
            _ = verifying => false,
            _ = self.shutdown.recv() => {
                info!("shutdown requested during verification; stopping it");
                true
            }
        };
        self.status.idle();
        stop
    }
}

/// How long to sleep until `t` (a year when it never comes).
fn until(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Duration {
    match t {
        Some(t) => (t - now).to_std().unwrap_or_default(),
        None => NEVER,
    }
}
