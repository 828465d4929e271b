//! The WAL archiver's loop beside the backup loop (docs/ARCHITECTURE.md,
//! "Continuous WAL"): a pass every `LIFEBOAT_WAL_INTERVAL`, and a base
//! backup asked for when the archive cannot be restored without a new one.

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::serve::Reply;
use crate::config::Settings;
use crate::wal::archiver::{Archiver, NeedsBase, Pass};
use crate::wal::settings::WalSettings;

/// The archiver for these settings, on the primary target; None when WAL
/// is not archived.
pub(super) async fn archiver(settings: &Settings) -> Option<Archiver> {
    let wal: WalSettings = settings.source.wal.clone()?;
    let spec = settings.targets.first()?;
    let target = spec
        .open(&settings.namespace, &settings.name, &settings.s3)
        .await;
    Some(Archiver::new(
        wal,
        settings.source.postgres.clone(),
        settings.paths.first()?.clone(),
        target,
        settings.compression,
        settings.recipients.clone(),
        settings.name.clone(),
        settings.namespace.clone(),
    ))
}

/// Archives until the task is aborted (the sidecar's exit). An abort in
/// the middle of an object leaves an upload no manifest covers: a
/// leftover, never a WAL object.
pub(super) async fn run(mut a: Archiver, requests: mpsc::Sender<Reply>) {
    let mut every = tokio::time::interval(a.settings.interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        interval_s = a.settings.interval.as_secs(),
        slot = %a.settings.slot,
        "archiving WAL continuously"
    );
    let mut waiting_said = false;
    loop {
        every.tick().await;
        let mut asks = Vec::new();
        let result = a.pass(&mut asks).await;
        for NeedsBase(why) in asks {
            info!(reason = %why, "asking for a base backup: archived WAL restores only on top of one taken after this");
            // Nobody waits for the answer: the backup reports itself.
            let (reply, _) = oneshot::channel();
            if requests.try_send(reply).is_err() {
                warn!("the backup queue is full; the base backup waits for the next request or the schedule");
            }
        }
        match result {
            Ok(Pass::Archived { objects, archived }) => {
                waiting_said = false;
                info!(objects, archived = %archived, "WAL archived");
            }
            Ok(Pass::Idle { archived }) => debug!(archived = %archived, "no new WAL"),
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
