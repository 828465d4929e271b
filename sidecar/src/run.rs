//! The long-running loop: wait for the schedule or a trigger, back up,
//! repeat. Annotations are re-read while waiting so `kubectl annotate`
//! takes effect without a restart. One piece of work runs at a time: a
//! `backup-now` request or annotation change that arrives during a backup
//! is served by that backup, never by a second one beside it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lifeboat::backup::Job;
use lifeboat::cluster::{self, Reason};
use lifeboat::config::{Inputs, Role, Settings};
use lifeboat::manifest::Manifest;
use lifeboat::pending::{self, Pending};
use lifeboat::progress::Cancel;
use lifeboat::status::{Status, Verification};
use lifeboat::target::Target;
use lifeboat::{notify, restore, Error, Result};
use tokio::sync::mpsc;
use tracing::{error, info, warn, Instrument};

use crate::serve::{self, Reply};
use crate::signals::Shutdown;

/// The annotation that asks for a backup now.
const BACKUP_NOW: &str = "lifeboat.dev/backup-now";

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

/// `backup-now` requests waiting to be taken by the loop; more wait in
/// their HTTP connections.
pub const REQUEST_QUEUE: usize = 16;

/// Pause between attempts to load a restored dump: the server may still be
/// starting (the postgres image restarts once after its first init).
pub const LOAD_RETRY: Duration = Duration::from_secs(5);
/// Failed loads (not a server still starting) back off up to this pause, so
/// a load that needs a person does not flood the log.
pub const LOAD_RETRY_MAX: Duration = Duration::from_secs(300);
/// A server that does not answer for this long needs a person: from then on
/// each failed attempt is logged as an error, not as waiting.
pub const LOAD_PATIENCE: Duration = Duration::from_secs(300);

/// How a pending load ended.
#[derive(PartialEq, Eq)]
enum LoadEnd {
    Loaded,
    /// The server refused the dump; backups of the server as it is go on.
    Refused,
    /// Shutdown requested: the load resumes at the next start.
    Exit,
}

/// Loads a dump the init container staged, retrying while the server may
/// still come up. No backup runs before: it would record the empty server
/// as the newest artifact. A dump the server refuses (retrying cannot fix
/// it) is recorded as refused, reported, and left for a person.
async fn load_pending(
    p: &mut Pending,
    settings: &Settings,
    status: &Status,
    shutdown: &mut Shutdown,
) -> LoadEnd {
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
                    status.load_finished(true);
                    if let Some(c) = cluster::get("sidecar").await {
                        let msg = format!("restored dump {} loaded into the server", p.manifest.id);
                        c.event(Reason::RestoreCompleted, &msg).await;
                    }
                    return LoadEnd::Loaded;
                }
                Err((true, e @ Error::LoadRefused { .. })) => {
                    status.load_finished(false);
                    refused(p, settings, status, &e.to_string()).await;
                    return LoadEnd::Refused;
                }
                Err((false, e)) if since.elapsed() < LOAD_PATIENCE => {
                    pause = LOAD_RETRY;
                    info!(id = %p.manifest.id, attempts, "waiting for the server to answer before loading the restored dump: {e}");
                }
                Err((_, e)) => {
                    status.load_finished(false);
                    pause = (pause * 2).min(LOAD_RETRY_MAX);
                    error!(id = %p.manifest.id, attempts, retry_in_s = pause.as_secs(), dir = %p.dir.display(), "loading the restored dump failed; backups wait until it is loaded, retrying: {e}");
                }
            },
            _ = shutdown.recv() => {
                cancel.store(true, Ordering::Relaxed);
                info!("shutdown requested during the load; it resumes at the next start");
                return LoadEnd::Exit;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.recv() => return LoadEnd::Exit,
        }
    }
}

/// Records and reports a dump the server refused: the marker that keeps
/// restarts from loading it over newer writes, `/status`, a Warning Event
/// and a notification.
async fn refused(p: &mut Pending, settings: &Settings, status: &Status, why: &str) {
    if let Err(e) = p.mark_refused(why) {
        error!(dir = %p.dir.display(), "cannot record the refused load ({e}); the next start tries it again");
    }
    let advice = p.refused_advice();
    error!(id = %p.manifest.id, "{why}; scheduled backups of the server as it is go on; {advice}");
    status.load_refused(Some(format!("{why}; {advice}")));
    if let Some(c) = cluster::get("sidecar").await {
        let msg = format!(
            "restored dump {} not loaded: {why}; {advice}",
            p.manifest.id
        );
        c.event(Reason::RestoreFailed, &msg).await;
    }
    if let Some(m) = lifeboat::notify::load_refused(settings, &p.manifest.id, why) {
        m.deliver().await;
    }
}

/// What the loop does next.
enum Work {
    Backup {
        trigger: String,
        waiters: Vec<Reply>,
    },
    Verify,
    /// Settings changed the schedule: compute the next run again.
    Reschedule,
    Exit,
}

/// The sidecar's state between pieces of work.
struct Sidecar {
    inputs: Inputs,
    /// The pod's annotations through the API, when the file is not mounted.
    from_api: Option<tokio::sync::watch::Receiver<std::collections::BTreeMap<String, String>>>,
    settings: Settings,
    job: Arc<Job>,
    status: Arc<Status>,
    requests: mpsc::Receiver<Reply>,
    shutdown: Shutdown,
    last_rejection: Option<String>,
    /// Annotations changed during a backup; apply them once it is done.
    dirty: bool,
    /// A `backup-now` annotation value already served by a running backup.
    joined: Option<String>,
}

pub async fn run() -> Result<()> {
    let inputs = cluster::pod_inputs("sidecar").await;
    // Without the downward-API file, the pod's annotations come from the API.
    let from_api = match cluster::get("sidecar").await {
        Some(c) if !inputs.annotations_file().exists() => {
            info!("annotations file not mounted; following this pod's annotations through the API");
            Some(c.watch_annotations())
        }
        _ => None,
    };
    let settings = Settings::from_inputs(&inputs, Role::Backup)?;
    for w in &settings.warnings {
        warn!("{w}");
    }
    let job = Arc::new(Job::open(&settings).await);
    job.check().await?;
    let shutdown = Shutdown::new().map_err(|e| Error::io("installing signal handlers", e))?;
    let status = Arc::new(Status::new(&settings, Utc::now()));
    let pending = pending::find_for(&settings)?;
    status.pending_load(pending.as_ref().map(|p| p.manifest.id.clone()));
    // The sender stays here, so the queue never closes while the loop runs.
    let (request_tx, requests) = mpsc::channel(REQUEST_QUEUE);
    if let Some(addr) = settings.ops.listen {
        let listener = serve::bind(addr).await?;
        serve::spawn(listener, status.clone(), request_tx.clone());
    }
    info!(
        schedule = settings.schedule.as_str(),
        paths = ?settings.paths,
        targets = ?settings.targets,
        retention = %settings.retention,
        verify_schedule = settings.ops.verify_schedule.as_ref().map(|s| s.as_str()),
        "lifeboat sidecar started"
    );
    let mut s = Sidecar {
        inputs,
        from_api,
        settings,
        job,
        status,
        requests,
        shutdown,
        last_rejection: None,
        dirty: false,
        joined: None,
    };
    if let Some(mut p) = pending {
        if let Some(why) = &p.refused {
            // Refused before: loading it now would replace what the app
            // wrote since. A person decides (README, "A dump the server refuses").
            let advice = p.refused_advice();
            error!(id = %p.manifest.id, "the server refused this restored dump earlier ({why}); it is not loaded again; {advice}");
            s.status.load_refused(Some(format!("{why}; {advice}")));
        } else {
            s.status.started("load", "restored dump", Utc::now());
            match load_pending(&mut p, &s.settings, &s.status, &mut s.shutdown).await {
                LoadEnd::Exit => return Ok(()),
                LoadEnd::Loaded => s.status.pending_load(None),
                LoadEnd::Refused => {}
            }
            s.status.idle();
        }
    }
    s.status.refresh_targets(&s.job.targets).await;
    s.warn_if_stale();
    s.run().await;
    drop(request_tx);
    Ok(())
}

impl Sidecar {
    async fn run(&mut self) {
        let mut poll = tokio::time::interval(ANNOTATIONS_POLL);
        let mut backlog_retry = tokio::time::interval(BACKLOG_RETRY);
        let mut stale_check = tokio::time::interval(STALE_WARNING);
        // An interval's first tick is immediate; these wait a whole period.
        backlog_retry.tick().await;
        stale_check.tick().await;
        loop {
            let now = Utc::now();
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
            let work = loop {
                tokio::select! {
                    _ = &mut backup_at => break Work::Backup { trigger: "schedule".into(), waiters: vec![] },
                    _ = &mut verify_at => break Work::Verify,
                    Some(reply) = self.requests.recv() => {
                        break Work::Backup { trigger: "backup-now request".into(), waiters: vec![reply] };
                    }
                    _ = self.shutdown.recv() => break Work::Exit,
                    _ = backlog_retry.tick(), if self.job.targets.len() > 1 => {
                        let backlog = self.job.sync_secondaries().await;
                        self.status.backlog(&backlog);
                        self.status.refresh_targets(&self.job.targets).await;
                    }
                    _ = stale_check.tick() => self.warn_if_stale(),
                    _ = poll.tick() => {
                        if let Some(w) = self.reload().await {
                            break w;
                        }
                    }
                }
            };
            match work {
                Work::Exit => {
                    info!("shutdown requested while idle; exiting");
                    return;
                }
                Work::Reschedule => continue,
                Work::Verify => {
                    if self.verify().await {
                        return;
                    }
                }
                Work::Backup { trigger, waiters } => {
                    info!(trigger = %trigger, "starting backup");
                    if self.backup(&trigger, waiters, &mut poll).await {
                        return;
                    }
                }
            }
        }
    }

    /// Reads the annotations again; returns the work a change calls for.
    async fn reload(&mut self) -> Option<Work> {
        let changed = self.refresh_inputs();
        if !changed && !self.dirty && self.inputs.problems.is_empty() {
            return None;
        }
        self.dirty = false;
        match Settings::from_inputs(&self.inputs, Role::Backup) {
            Ok(new) => {
                self.last_rejection = None;
                let manual = self.new_request().is_some();
                let rescheduled = new.schedule != self.settings.schedule
                    || new.ops.verify_schedule != self.settings.ops.verify_schedule;
                self.settings = new;
                self.joined = None;
                self.job = Arc::new(Job::open(&self.settings).await);
                self.status.settings_changed(&self.settings, Utc::now());
                info!(
                    schedule = self.settings.schedule.as_str(),
                    "annotations changed; settings reloaded"
                );
                if manual {
                    return Some(Work::Backup {
                        trigger: "annotation lifeboat.dev/backup-now".into(),
                        waiters: vec![],
                    });
                }
                rescheduled.then_some(Work::Reschedule)
            }
            Err(e) => {
                // A garbled file fails the same way on every poll: say it once.
                let text = e.to_string();
                if self.last_rejection.as_ref() != Some(&text) {
                    error!(
                        "annotation change rejected, the previous settings stay in force: {text}"
                    );
                    self.last_rejection = Some(text);
                }
                self.inputs.problems.clear();
                // A person asking for a backup must not wait for someone
                // to fix an unrelated annotation: serve it with the
                // settings in force.
                let asked = self.new_request()?;
                info!(
                    value = %asked,
                    "annotation lifeboat.dev/backup-now changed; backing up with the previous settings while the rejected annotation stays as it is"
                );
                self.joined = Some(asked);
                Some(Work::Backup {
                    trigger: "annotation lifeboat.dev/backup-now".into(),
                    waiters: vec![],
                })
            }
        }
    }

    /// A `backup-now` annotation value no backup has served yet. Read from
    /// the raw annotations, so it counts even while another annotation is
    /// invalid.
    fn new_request(&self) -> Option<String> {
        let asked = self.inputs.annotations.get(BACKUP_NOW)?;
        let served = |v: &Option<String>| v.as_ref() == Some(asked);
        (!served(&self.settings.backup_now) && !served(&self.joined)).then(|| asked.clone())
    }

    fn refresh_inputs(&mut self) -> bool {
        match &mut self.from_api {
            Some(rx) => {
                rx.has_changed().unwrap_or(false)
                    && self.inputs.set_annotations(rx.borrow_and_update().clone())
            }
            None => self.inputs.reload_annotations(),
        }
    }

    /// During a backup: a new `backup-now` annotation is served by it.
    /// Other changes wait until it is done.
    fn note_during_backup(&mut self) {
        if self.refresh_inputs() {
            self.dirty = true;
        }
        if !self.dirty {
            return;
        }
        if let Some(asked) = self.new_request() {
            info!("annotation lifeboat.dev/backup-now changed during a running backup; that backup serves it");
            self.joined = Some(asked);
        }
    }

    fn warn_if_stale(&self) {
        if self.status.is_stale(Utc::now()) {
            let st = self.status.snapshot();
            warn!(
                last_success = st.last_success.as_ref().map(|l| l.finished_at.to_rfc3339()),
                stale_after_s = st.stale_after_s,
                "backups are stale: no successful backup within LIFEBOAT_STALE_AFTER"
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
        let job = self.job.clone();
        let started = Utc::now();
        self.status.started("backup", trigger, started);
        let cancel: Cancel = Default::default();
        let work = job.run(cancel.clone());
        tokio::pin!(work);
        let grace = self.settings.grace_period;
        let mut stopping = false;
        let deadline = tokio::time::sleep(NEVER);
        tokio::pin!(deadline);
        let result = loop {
            tokio::select! {
                r = &mut work => break r,
                Some(reply) = self.requests.recv(), if !stopping => {
                    info!("backup-now request arrived during a running backup; that backup serves it");
                    waiters.push(reply);
                }
                _ = poll.tick(), if !stopping => self.note_during_backup(),
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
        self.status.backup_finished(
            trigger,
            started,
            result.as_ref().map_err(|e| e.to_string()),
            Utc::now(),
        );
        self.status.idle();
        log_failure(&result);
        for w in waiters {
            let _ = w.send(result.as_ref().cloned().map_err(|e| e.to_string()));
        }
        announce(&result).await;
        let message = notify::message(&self.settings, &result);
        if stopping {
            if let Some(m) = message {
                m.deliver().await;
            }
            return true;
        }
        if let Some(m) = message {
            tokio::spawn(m.deliver());
        }
        self.status.backlog(&job.backlog());
        self.status.refresh_targets(&job.targets).await;
        false
    }

    /// `LIFEBOAT_VERIFY_SCHEDULE`: re-reads the newest artifact on each
    /// target end to end and records the outcome. Returns whether the
    /// sidecar should exit; verification only reads, so it just stops.
    async fn verify(&mut self) -> bool {
        self.status.started("verify", "schedule", Utc::now());
        let job = self.job.clone();
        let status = self.status.clone();
        let every = self.settings.progress_interval;
        let keys = self.settings.identities.clone();
        let work = async move {
            for (i, t) in job.targets.iter().enumerate() {
                let listing = match t.list().await {
                    Ok(l) => l,
                    Err(e) => {
                        warn!(target = %t.describe(), "scheduled verification cannot list the target: {e}");
                        continue;
                    }
                };
                let Some(newest) = listing.artifacts.first() else {
                    continue;
                };
                let m = &newest.manifest;
                let r = restore::verify(t, m, keys.as_ref(), every).await;
                if let Err(e) = &r {
                    error!(id = %m.id, target = %t.describe(), "scheduled verification FAILED: {e}");
                }
                status.verified(
                    i,
                    Verification {
                        at: Utc::now(),
                        ok: r.is_ok(),
                        id: m.id.clone(),
                        error: r.err().map(|e| e.to_string()),
                    },
                );
            }
            status.refresh_targets(&job.targets).await;
        }
        .instrument(tracing::info_span!("scheduled_verify"));
        let stop = tokio::select! {
            _ = work => false,
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

fn log_failure(r: &Result<Manifest>) {
    if let Err(e) = r {
        if matches!(e, Error::Cancelled) {
            return;
        }
        let hint = if e.is_retryable() {
            "; the next scheduled run tries again"
        } else {
            ""
        };
        error!("backup failed{hint}: {e}");
    }
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
