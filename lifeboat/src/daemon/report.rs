//! What is said after a backup, by the loop and by a one-off `backup-now`
//! alike: the failure in the log, an Event and the `lifeboat.dev/last-backup`
//! annotation, and the notification.

use tracing::error;

use crate::cluster::{self, Reason};
use crate::config::Settings;
use crate::manifest::Manifest;
use crate::notify::{self, Message};
use crate::{Error, Result};

/// The loop's log line for a failed backup (a cancel is not a failure).
pub fn log_failure(r: &Result<Manifest>) {
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

/// A failed restore drill, seen in the listing: an ERROR line, a
/// `DrillFailed` Warning Event and a notification.
pub async fn drill_failed(
    component: &'static str,
    settings: &Settings,
    d: &crate::status::DrillState,
) {
    let output = d.output_tail.as_deref().unwrap_or_default().trim();
    error!(
        id = %d.id,
        at = %d.at.to_rfc3339(),
        check = %d.check,
        "a restore drill FAILED: this artifact did not bring the app back and restores skip it; the check printed: {output}"
    );
    if let Some(c) = cluster::get(component).await {
        let msg = format!(
            "restore drill of {} FAILED at {}: `{}` did not pass: {output}",
            d.id,
            d.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            d.check
        );
        c.event(Reason::DrillFailed, &msg).await;
    }
    if let Some(m) = notify::drill_failed(settings, d) {
        m.deliver().await;
    }
}

/// Tells the cluster how a backup went: an Event on the pod, and the
/// `lifeboat.dev/last-backup` annotation after a success. A cancelled backup
/// (shutdown) is not a failure worth a Warning. Returns the notification
/// the result calls for, for the caller to deliver now or in the background.
pub async fn announce(
    component: &'static str,
    settings: &Settings,
    r: &Result<Manifest>,
) -> Option<Message> {
    if let Some(c) = cluster::get(component).await {
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
    notify::message(settings, r)
}
