//! The long-running loop: wait for the schedule or a trigger, back up, repeat.
//! Annotations are re-read while waiting so `kubectl annotate` takes effect
//! without a restart.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use lifeboat::backup::Job;
use lifeboat::cluster::{self, Reason};
use lifeboat::config::{Inputs, Role, Settings};
use lifeboat::manifest::Manifest;
use lifeboat::pending::{self, Pending};
use lifeboat::progress::Cancel;
use lifeboat::{Error, Result};
use tracing::{error, info, warn};

use crate::signals::Shutdown;

/// How often the annotations file is re-read. The kubelet refreshes it within
/// about a minute of a change, so a few seconds adds nothing noticeable.
pub const ANNOTATIONS_POLL: Duration = Duration::from_secs(5);

/// How often secondary targets that fell behind (a store that was down) are
/// offered their backlog between backups.
pub const BACKLOG_RETRY: Duration = Duration::from_secs(300);

/// Pause between attempts to load a restored dump: the server may still be
/// starting (the postgres image restarts once after its first init).
pub const LOAD_RETRY: Duration = Duration::from_secs(5);
/// Failed loads (not a server still starting) back off up to this pause, so
/// a load that needs a person does not flood the log.
pub const LOAD_RETRY_MAX: Duration = Duration::from_secs(300);
/// A server that does not answer for this long needs a person: from then on
/// each failed attempt is logged as an error, not as waiting.
pub const LOAD_PATIENCE: Duration = Duration::from_secs(300);

/// Loads a dump the init container staged, retrying until it is in. No
/// backup runs before: it would record the empty server as the newest
/// artifact. Returns whether the sidecar should exit (shutdown requested).
async fn load_pending(p: &Pending, settings: &Settings, shutdown: &mut Shutdown) -> bool {
    let since = Instant::now();
    let mut attempts = 0u32;
    let mut pause = LOAD_RETRY;
    loop {
        attempts += 1;
        let cancel: Cancel = Default::default();
        let attempt = async {
            if let Err(e) = pending::server_ready(p, settings).await {
                return Err((false, e));
            }
            pending::load(p, settings, &cancel)
                .await
                .map_err(|e| (true, e))
        };
        tokio::select! {
            r = attempt => match r {
                Ok(()) => {
                    if let Some(c) = cluster::get("sidecar").await {
                        let msg = format!("restored dump {} loaded into the server", p.manifest.id);
                        c.event(Reason::RestoreCompleted, &msg).await;
                    }
                    return false;
                }
                Err((false, e)) if since.elapsed() < LOAD_PATIENCE => {
                    pause = LOAD_RETRY;
                    info!(id = %p.manifest.id, attempts, "waiting for the server to answer before loading the restored dump: {e}");
                }
                Err((_, e)) => {
                    pause = (pause * 2).min(LOAD_RETRY_MAX);
                    error!(id = %p.manifest.id, attempts, retry_in_s = pause.as_secs(), dir = %p.dir.display(), "loading the restored dump failed; backups wait until it is loaded, retrying: {e}");
                }
            },
            _ = shutdown.recv() => {
                cancel.store(true, Ordering::Relaxed);
                info!("shutdown requested during the load; it resumes at the next start");
                return true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.recv() => return true,
        }
    }
}

pub async fn run() -> Result<()> {
    let mut inputs = Inputs::from_process();
    let cluster = cluster::get("sidecar").await;
    // Without the downward-API file, the pod's annotations come from the API.
    let mut from_api = match &cluster {
        Some(c) if !inputs.annotations_file().exists() => {
            info!("annotations file not mounted; following this pod's annotations through the API");
            let rx = c.watch_annotations();
            inputs.set_annotations(rx.borrow().clone());
            Some(rx)
        }
        _ => None,
    };
    let mut settings = Settings::from_inputs(&inputs, Role::Backup)?;
    for w in &settings.warnings {
        warn!("{w}");
    }
    let mut job = Arc::new(Job::open(&settings).await);
    job.check().await?;
    let mut shutdown = Shutdown::new().map_err(|e| Error::io("installing signal handlers", e))?;

    let mut poll = tokio::time::interval(ANNOTATIONS_POLL);
    let mut last_rejection: Option<String> = None;
    let mut backlog_retry = tokio::time::interval(BACKLOG_RETRY);
    backlog_retry.tick().await;
    info!(
        schedule = settings.schedule.as_str(),
        paths = ?settings.paths,
        targets = ?settings.targets,
        retention = %settings.retention,
        "lifeboat sidecar started"
    );
    if let Some(p) = pending::find_for(&settings)? {
        if load_pending(&p, &settings, &mut shutdown).await {
            return Ok(());
        }
    }
    loop {
        let now = Utc::now();
        let next = settings.schedule.next_after(now);
        let wait = match next {
            Some(t) => {
                info!(next = %t.to_rfc3339(), "next scheduled backup");
                (t - now).to_std().unwrap_or_default()
            }
            None => {
                warn!(
                    schedule = settings.schedule.as_str(),
                    "the schedule never fires; only manual backups will run"
                );
                Duration::from_secs(365 * 24 * 3600)
            }
        };
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        let trigger = loop {
            tokio::select! {
                _ = &mut sleep => break "schedule",
                _ = shutdown.recv() => {
                    info!("shutdown requested while idle; exiting");
                    return Ok(());
                }
                _ = backlog_retry.tick(), if job.targets.len() > 1 => {
                    job.sync_secondaries().await;
                }
                _ = poll.tick() => {
                    let changed = match &mut from_api {
                        Some(rx) => {
                            rx.has_changed().unwrap_or(false)
                                && inputs.set_annotations(rx.borrow_and_update().clone())
                        }
                        None => inputs.reload_annotations(),
                    };
                    if !changed && inputs.problems.is_empty() {
                        continue;
                    }
                    match Settings::from_inputs(&inputs, Role::Backup) {
                        Ok(new) => {
                            last_rejection = None;
                            let manual = new.backup_now.is_some() && new.backup_now != settings.backup_now;
                            let rescheduled = new.schedule != settings.schedule;
                            settings = new;
                            job = Arc::new(Job::open(&settings).await);
                            info!(schedule = settings.schedule.as_str(), "annotations changed; settings reloaded");
                            if manual {
                                break "annotation lifeboat.dev/backup-now";
                            }
                            if rescheduled {
                                break "";
                            }
                        }
                        Err(e) => {
                            // A garbled file fails the same way on every poll: say it once.
                            let text = e.to_string();
                            if last_rejection.as_ref() != Some(&text) {
                                error!("annotation change rejected, the previous settings stay in force: {text}");
                                last_rejection = Some(text);
                            }
                            inputs.problems.clear();
                        }
                    }
                }
            }
        };
        if trigger.is_empty() {
            continue;
        }
        info!(trigger, "starting backup");
        if backup_draining(&job, &mut shutdown, settings.grace_period).await {
            return Ok(());
        }
    }
}

/// Runs one backup. A shutdown request lets it finish within `grace`, then
/// cancels it (nothing is committed); a second request cancels at once.
/// Returns whether the sidecar should exit.
pub async fn backup_draining(job: &Arc<Job>, shutdown: &mut Shutdown, grace: Duration) -> bool {
    let cancel: Cancel = Default::default();
    let work = job.run(cancel.clone());
    tokio::pin!(work);
    let report = |r: Result<Manifest>| async move {
        if let Err(e) = &r {
            let hint = if e.is_retryable() {
                "; the next scheduled run tries again"
            } else {
                ""
            };
            error!("backup failed{hint}: {e}");
        }
        announce(&r).await;
    };
    tokio::select! {
        r = &mut work => { report(r).await; return false; }
        _ = shutdown.recv() => {}
    }
    info!(
        grace_s = grace.as_secs(),
        "shutdown requested during a backup; letting it finish"
    );
    tokio::select! {
        r = &mut work => { report(r).await; return true; }
        _ = tokio::time::sleep(grace) => warn!("grace period over; cancelling the backup"),
        _ = shutdown.recv() => warn!("second shutdown request; cancelling the backup"),
    }
    cancel.store(true, Ordering::Relaxed);
    report(work.await).await;
    true
}

/// Tells the cluster how a backup went: an Event on the pod, and the
/// `lifeboat.dev/last-backup` annotation after a success. A cancelled backup
/// (shutdown) is not a failure worth a Warning.
pub async fn announce(r: &Result<Manifest>) {
    let Some(c) = cluster::get("sidecar").await else {
        return;
    };
    match r {
        Ok(m) => {
            let msg = format!(
                "backup {} committed: {} entries, {} bytes stored",
                m.id, m.entries, m.size
            );
            c.event(Reason::BackupSucceeded, &msg).await;
            c.patch_last_backup(&m.id, m.finished_at).await;
        }
        Err(Error::Cancelled) => {}
        Err(e) => {
            c.event(Reason::BackupFailed, &format!("backup failed: {e}"))
                .await
        }
    }
}
