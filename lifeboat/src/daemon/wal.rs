//! The WAL archiver's loop beside the backup loop (docs/ARCHITECTURE.md,
//! "Continuous WAL"): a pass every `LIFEBOAT_WAL_INTERVAL`, and a base
//! backup asked for when the archive cannot be restored without a new one.

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use std::sync::Arc;

use chrono::Utc;

use super::serve::Reply;
use crate::config::Settings;
use crate::status::Status;
use crate::wal::archiver::{Archiver, NeedsBase, Pass, Setup};
use crate::wal::settings::WalSettings;

/// How long after asking for a base backup the archiver may ask again.
const ASK_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// The archiver for these settings, on the primary target; None when WAL
/// is not archived.
pub(super) async fn archiver(settings: &Settings) -> Option<Archiver> {
    let wal: WalSettings = settings.source.wal.clone()?;
    let spec = settings.targets.first()?;
    let target = spec
        .open(&settings.namespace, &settings.name, &settings.s3)
        .await;
    Some(Archiver::new(Setup {
        settings: wal,
        conn: settings.source.postgres.clone(),
        pgdata: settings.paths.first()?.clone(),
        target,
        compression: settings.compression,
        recipients: settings.recipients.clone(),
        name: settings.name.clone(),
        namespace: settings.namespace.clone(),
    }))
}

/// Who is told when the slot is dropped: the component the Event comes
/// from, and the settings that name the pod and the notification.
pub(super) struct Told {
    pub component: &'static str,
    pub settings: Arc<Settings>,
}

/// Archives until the task is aborted (the sidecar's exit). An abort in
/// the middle of an object leaves an upload no manifest covers: a
/// leftover, never a WAL object.
pub(super) async fn run(
    mut a: Archiver,
    requests: mpsc::Sender<Reply>,
    status: Arc<Status>,
    told: Told,
) {
    let mut every = tokio::time::interval(a.setup.settings.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        interval_s = a.setup.settings.interval.as_secs(),
        slot = %a.setup.settings.slot,
        "archiving WAL continuously"
    );
    let mut waiting_said = false;
    let mut asked: Option<tokio::time::Instant> = None;
    let mut dropped_before = 0;
    loop {
        every.tick().await;
        let mut asks = Vec::new();
        let result = a.pass(&mut asks).await;
        for NeedsBase(why) in asks {
            // One request covers every reason until it is served; a
            // condition that stays (a backup that keeps failing) must not
            // ask again every interval.
            if asked.is_some_and(|t| t.elapsed() < ASK_AGAIN_AFTER) {
                debug!(reason = %why, "a base backup was asked for recently");
                continue;
            }
            asked = Some(tokio::time::Instant::now());
            info!(reason = %why, "asking for a base backup: archived WAL restores only on top of one taken after this");
            // Nobody waits for the answer: the backup reports itself.
            let (reply, _) = oneshot::channel();
            if requests.try_send(reply).is_err() {
                warn!("the backup queue is full; the base backup waits for the next request or the schedule");
            }
        }
        let drops = a.drops;
        let caught_up = match &result {
            Ok(Pass::Archived {
                archived,
                timeline,
                objects,
                ..
            }) => Ok((
                archived.to_string(),
                archived.0,
                *timeline,
                u64::from(*objects),
            )),
            Ok(Pass::Idle { archived, timeline }) => {
                Ok((archived.to_string(), archived.0, *timeline, 0))
            }
            Ok(Pass::Waiting(why)) => Err(why.clone()),
            Err(e) => Err(e.to_string()),
        };
        let waiting = matches!(result, Ok(Pass::Waiting(_)));
        status.wal_pass(caught_up, waiting, drops > dropped_before, Utc::now());
        if drops > dropped_before {
            if let Some(why) = &a.last_drop {
                // In the background: a receiver that is down must not
                // hold up archiving.
                let (component, settings, why) =
                    (told.component, told.settings.clone(), why.clone());
                tokio::spawn(async move {
                    super::report::wal_slot_dropped(component, &settings, &why).await
                });
            }
        }
        dropped_before = drops;
        match result {
            Ok(Pass::Archived {
                objects, archived, ..
            }) => {
                waiting_said = false;
                info!(objects, archived = %archived, "WAL archived");
            }
            Ok(Pass::Idle { archived, .. }) => debug!(archived = %archived, "no new WAL"),
            Ok(Pass::Waiting(why)) => {
                if !waiting_said {
                    info!(reason = %why, "not archiving WAL yet");
                    waiting_said = true;
                }
            }
            Err(e) => warn!(error = %e, "archiving WAL failed; trying again next interval"),
        }
    }
}
