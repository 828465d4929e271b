//! The sidecar as a service (docs/ARCHITECTURE.md §7): start-up, the
//! pending load, the run loop, the HTTP endpoint, what is said after a
//! backup, and the one-off `backup-now`. The sidecar binary parses its
//! arguments, calls [`run`] or [`backup_now`], and maps errors to exit codes.
//!
//! The loop takes its wall clock ([`Clock`]), its shutdown requests
//! ([`Shutdown`]) and its work ([`Open`], [`Work`]) from outside, so what it
//! decides (backup-now joining, annotation changes, verification
//! scheduling, the grace period) is unit-tested without a process, a
//! target or real time.

mod annotations;
mod drill_watch;
mod load;
mod report;
mod run_loop;
pub mod serve;
mod shutdown;
#[cfg(test)]
mod tests;
mod wal;
mod work;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{info, warn};

pub use annotations::BACKUP_NOW;
pub use load::{ready, LOAD_PATIENCE, LOAD_RETRY, LOAD_RETRY_MAX};
pub use report::{announce, log_failure};
pub use run_loop::{ANNOTATIONS_POLL, BACKLOG_RETRY, STALE_WARNING};
pub use shutdown::Shutdown;
pub use work::{Clock, Open, OpenJob, SystemClock, Work};

use crate::backup::Job;
use crate::cluster;
use crate::config::{Role, Settings};
use crate::pending;
use crate::status::Status;
use crate::{Error, Result};
use annotations::Annotations;
use run_loop::Daemon;

/// `backup-now` requests waiting to be taken by the loop; more wait in
/// their HTTP connections.
pub const REQUEST_QUEUE: usize = 16;

/// Who calls: the binary names itself, the library never does.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// The command a person runs, named in advice (`<command> backup-now`).
    pub command: &'static str,
    /// The component Events come from (`lifeboat.dev/<component>`).
    pub component: &'static str,
}

/// Runs the sidecar for the pod's life: settings, targets, signals, the
/// endpoint, a pending load, then the loop until a shutdown request.
pub async fn run(caller: Caller) -> Result<()> {
    let inputs = cluster::pod_inputs(caller.component).await;
    // Without the downward-API file, the pod's annotations come from the API.
    let from_api = match cluster::get(caller.component).await {
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
    let open = OpenJob {
        component: caller.component,
    };
    let work = open.open(&settings).await;
    work.check().await?;
    let shutdown = Shutdown::signals().map_err(|e| Error::io("installing signal handlers", e))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let status = Arc::new(Status::new(&settings, clock.now()));
    let pending = pending::find_for(&settings)?;
    status.pending_load(pending.as_ref().map(|p| p.manifest.id.clone()));
    // The sender stays here, so the queue never closes while the loop runs.
    let (request_tx, requests) = mpsc::channel(REQUEST_QUEUE);
    if let Some(addr) = settings.ops.listen {
        let listener = serve::bind(addr).await?;
        serve::spawn(listener, status.clone(), request_tx.clone(), caller.command);
    }
    info!(
        schedule = settings.schedule.as_str(),
        jitter_offset_s = settings.schedule.offset().as_secs(),
        paths = ?settings.paths,
        targets = ?settings.targets,
        retention = %settings.retention.map_or("off".to_string(), |p| p.to_string()),
        verify_schedule = settings.ops.verify_schedule.as_ref().map(|s| s.as_str()),
        "lifeboat sidecar started"
    );
    let mut d = Daemon {
        component: caller.component,
        open,
        clock,
        settings,
        work,
        status,
        requests,
        shutdown,
        annotations: Annotations::new(inputs, from_api),
        drills: drill_watch::DrillWatch::for_pod(),
        wal: Default::default(),
    };
    if let Some(p) = pending {
        let cx = load::Ctx {
            component: d.component,
            settings: &d.settings,
            status: &d.status,
            shutdown: &mut d.shutdown,
            clock: &*d.clock,
        };
        if load::at_start(p, cx).await {
            return Ok(());
        }
    }
    // After a pending load: WAL of the empty server before it is no use.
    d.wal = wal::WalTask::new(wal::Wiring {
        requests: request_tx.clone(),
        status: d.status.clone(),
        component: d.component,
    });
    d.wal.follow(&d.settings).await;
    d.work.refresh(&d.status).await;
    d.announce_drill().await;
    d.warn_if_stale();
    d.run().await;
    d.wal.stop();
    drop(request_tx);
    Ok(())
}

/// `backup-now`: asks the running sidecar for a backup (so two never race),
/// or, when no sidecar listens (a CronJob, a laptop), takes it in this
/// process. Returns the new artifact's id.
pub async fn backup_now(caller: Caller, s: &Settings) -> Result<String> {
    if let Some(addr) = s.ops.loopback() {
        if let Some(id) = serve::ask(addr).await? {
            return Ok(id);
        }
        info!(address = %addr, "no running sidecar answers there; backing up in this process");
    }
    if let Some(p) = pending::find_for(s)?.filter(|p| p.refused.is_none()) {
        return Err(Error::Source(format!(
            "restored dump {} in {} is not loaded yet (the running sidecar loads it once the server answers); \
             a backup now would record the server without it",
            p.manifest.id,
            p.dir.display()
        )));
    }
    let job = Arc::new(Job::open(s, caller.component).await);
    job.check().await?;
    let mut shutdown =
        Shutdown::signals().map_err(|e| Error::io("installing signal handlers", e))?;
    let cancel: crate::progress::Cancel = Default::default();
    let running = job.run(cancel.clone());
    tokio::pin!(running);
    let r = tokio::select! {
        r = &mut running => r,
        _ = shutdown.recv() => {
            warn!("interrupted; cancelling the backup");
            cancel.store(true, Ordering::Relaxed);
            let r = running.await;
            report::log_late_cancel(true, &r);
            r
        }
    };
    if let Some(message) = announce(caller.component, s, &r).await {
        message.deliver().await;
    }
    Ok(r?.id)
}
