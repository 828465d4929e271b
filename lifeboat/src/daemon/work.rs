//! What the run loop takes from outside: the wall clock and the work it
//! schedules. The sidecar passes [`SystemClock`] and [`OpenJob`] (real
//! backups of real targets); unit tests pass a clock that follows tokio's
//! paused time and work that only records what it was asked.

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tracing::{error, warn, Instrument};

use crate::backup::Job;
use crate::config::Settings;
use crate::manifest::Manifest;
use crate::progress::Cancel;
use crate::restore::{self, Pick, Verified};
use crate::status::{Status, Verification};
use crate::store::Target;
use crate::Result;

/// The wall clock: schedules, `/status` times and staleness read it.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// `Utc::now()`.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The work the loop schedules, for one set of settings.
pub trait Work: Send + Sync + 'static {
    /// One backup; `cancel` stops it with nothing committed.
    fn backup(self: &Arc<Self>, cancel: Cancel) -> impl Future<Output = Result<Manifest>> + Send;
    /// `LIFEBOAT_VERIFY_SCHEDULE`: re-reads the newest artifact on each
    /// target and records each outcome in `status`.
    fn verify_newest(&self, status: &Status, clock: &dyn Clock) -> impl Future<Output = ()> + Send;
    /// Whether there are secondary targets to keep in step.
    fn has_secondaries(&self) -> bool;
    /// Copies what the secondaries lack; returns what each still lacks.
    fn sync_secondaries(&self) -> impl Future<Output = Vec<usize>> + Send;
    /// What each secondary lacks, as last seen.
    fn backlog(&self) -> Vec<usize>;
    /// Lists the targets again for `/status` and `/metrics`.
    fn refresh(&self, status: &Status) -> impl Future<Output = ()> + Send;
}

/// Builds the [`Work`] for the settings in force: at start, and after each
/// accepted annotation change.
pub trait Open: Send + Sync {
    type Work: Work;
    fn open(&self, settings: &Settings) -> impl Future<Output = Arc<Self::Work>> + Send;
}

/// Real backups: a [`Job`] over the configured source and targets.
pub struct OpenJob {
    /// Who reports to the Kubernetes API (`LIFEBOAT_INCLUDE_KUBE` connects).
    pub component: &'static str,
}

impl Open for OpenJob {
    type Work = Job;

    async fn open(&self, settings: &Settings) -> Arc<Job> {
        Arc::new(Job::open(settings, self.component).await)
    }
}

impl Work for Job {
    async fn backup(self: &Arc<Self>, cancel: Cancel) -> Result<Manifest> {
        self.run(cancel).await
    }

    async fn verify_newest(&self, status: &Status, clock: &dyn Clock) {
        let s = &self.settings;
        let seen = |i: usize, t: &crate::store::AnyTarget, v: Verified<'_>| {
            match v {
                Verified::Unlisted(e) => {
                    warn!(target = %t.describe(), "scheduled verification cannot list the target: {e}")
                }
                // Only the newest artifact is checked here; `verify --all` reports these.
                Verified::Unreadable(_) => {}
                Verified::Read {
                    manifest: m,
                    result: r,
                } => {
                    if let Err(e) = &r {
                        error!(id = %m.id, target = %t.describe(), "scheduled verification FAILED: {e}");
                    }
                    let v = Verification {
                        at: clock.now(),
                        ok: r.is_ok(),
                        id: m.id.clone(),
                        error: r.err().map(|e| e.to_string()),
                    };
                    status.verified(i, v);
                }
            }
            Ok(())
        };
        let work = async {
            // `seen` never fails, so neither does the walk.
            let _ = restore::verify_targets(
                &self.targets,
                Pick::Newest,
                s.identities.as_ref(),
                s.progress_interval,
                seen,
            )
            .await;
            status.refresh_targets(&self.targets).await;
        };
        work.instrument(tracing::info_span!("scheduled_verify"))
            .await
    }

    fn has_secondaries(&self) -> bool {
        self.targets.len() > 1
    }

    async fn sync_secondaries(&self) -> Vec<usize> {
        Job::sync_secondaries(self).await
    }

    fn backlog(&self) -> Vec<usize> {
        Job::backlog(self)
    }

    async fn refresh(&self, status: &Status) {
        status.refresh_targets(&self.targets).await
    }
}
