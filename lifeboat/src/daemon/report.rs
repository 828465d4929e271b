//! What is said after a backup, by the loop and by a one-off `backup-now`
//! alike: the failure in the log, an Event and the `lifeboat.dev/last-backup`
//! annotation, and the notification.

use tracing::{error, warn};

use crate::cluster::{self, Reason};
use crate::config::Settings;
use crate::manifest::Manifest;
use crate::notify::{self, Message};
use crate::{Error, Result};

/// The loop's log line for a failed backup (a cancel is not a failure).
/// A backup asked to cancel that committed all the same: the cancel stops
/// only the source, and this one had read everything when it came.
pub fn log_late_cancel(cancelled: bool, r: &Result<Manifest>) {
    if cancelled && r.is_ok() {
        warn!("the backup had read everything before the cancel reached it and is committed");
    }
}

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

/// A restore drill that did not pass, seen in the listing: an ERROR line,
/// a `DrillFailed` Warning Event and a notification. What it means for
/// restores depends on the verdict.
pub async fn drill_failed(
    component: &'static str,
    settings: &Settings,
    d: &crate::status::DrillState,
) {
    let output = d.output_tail.as_deref().unwrap_or_default().trim();
    let meaning = d.verdict.meaning();
    error!(
        id = %d.id,
        at = %d.at.to_rfc3339(),
        check = %d.check,
        verdict = d.verdict.as_str(),
        "a restore drill {}: {meaning}; it printed: {output}",
        d.verdict.as_str().to_uppercase()
    );
    if let Some(c) = cluster::get(component).await {
        let head = format!(
            "restore drill of {} {} at {} ({meaning}); `{}` printed: ",
            d.id,
            d.verdict.as_str().to_uppercase(),
            d.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            d.check
        );
        // The Event holds about 1 KiB: keep the output's end, where the
        // error is, rather than let the API cut it off.
        let room = cluster::EVENT_MAX.saturating_sub(head.len() + 4);
        let tail = crate::drill::tail(output, room);
        let cut = if tail.len() < output.len() { "…" } else { "" };
        c.event(Reason::DrillFailed, &format!("{head}{cut}{tail}"))
            .await;
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

/// The WAL archive's slot was dropped with WAL never archived (by the
/// archiver past `LIFEBOAT_WAL_MAX_RETAINED`, or by the server past
/// `max_slot_wal_keep_size`): a `WalSlotDropped` Warning Event and a
/// notification (the ERROR line is the archiver's).
pub async fn wal_slot_dropped(component: &'static str, settings: &Settings, why: &str) {
    if let Some(c) = cluster::get(component).await {
        c.event(Reason::WalSlotDropped, why).await;
    }
    if let Some(m) = notify::wal_slot_dropped(settings, why) {
        m.deliver().await;
    }
}
