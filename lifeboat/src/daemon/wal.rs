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

/// What the archiver is built from: when any of it changes (an annotation
/// turned WAL on or off, moved the target), the task restarts. The target
/// time is a restore's, not the archiver's.
#[derive(PartialEq)]
struct Built {
    wal: WalSettings,
    conn: crate::source::postgres::PgConn,
    pgdata: Option<std::path::PathBuf>,
    target: Option<crate::store::TargetSpec>,
    compression: crate::compression::Compression,
    recipients: Option<crate::encryption::Recipients>,
    name: String,
    namespace: String,
}

impl Built {
    fn of(s: &Settings) -> Option<Built> {
        let wal = s.source.wal.as_ref()?;
        Some(Built {
            wal: WalSettings {
                until: crate::wal::settings::Until::End,
                ..wal.clone()
            },
            conn: s.source.postgres.clone(),
            pgdata: s.paths.first().cloned(),
            target: s.targets.first().cloned(),
            compression: s.compression,
            recipients: s.recipients.clone(),
            name: s.name.clone(),
            namespace: s.namespace.clone(),
        })
    }
}

/// The archiver task as the settings in force call for it: started at
/// start-up, and stopped, started or restarted when an annotation changes
/// them (`lifeboat.dev/postgres-wal`). `Default` is one that never runs
/// (the loop's unit tests).
#[derive(Default)]
pub(super) struct WalTask {
    wiring: Option<Wiring>,
    running: Option<(Built, tokio::task::JoinHandle<()>)>,
}

/// What a running archiver talks to.
pub(super) struct Wiring {
    pub requests: mpsc::Sender<Reply>,
    pub status: Arc<Status>,
    pub component: &'static str,
}

impl WalTask {
    pub fn new(wiring: Wiring) -> WalTask {
        WalTask {
            wiring: Some(wiring),
            running: None,
        }
    }

    /// Makes the running archiver the one `settings` call for.
    pub async fn follow(&mut self, settings: &Settings) {
        let Some(w) = &self.wiring else {
            return;
        };
        let wanted = Built::of(settings);
        if self.running.as_ref().map(|(b, _)| b) == wanted.as_ref() {
            return;
        }
        if let Some((old, task)) = self.running.take() {
            // An object cut off mid-upload is a leftover, never an object.
            task.abort();
            info!("WAL archiving stopped: its settings changed");
            let slot_kept = wanted
                .as_ref()
                .is_some_and(|w| w.wal.slot == old.wal.slot && w.conn == old.conn);
            if !slot_kept {
                drop_slot(&old).await;
            }
        }
        let (Some(built), Some(a)) = (wanted, archiver(settings).await) else {
            return;
        };
        let told = Told {
            component: w.component,
            settings: Arc::new(settings.clone()),
        };
        let task = tokio::spawn(run(a, w.requests.clone(), w.status.clone(), told));
        self.running = Some((built, task));
    }

    /// Stops the archiver (the sidecar's exit).
    pub fn stop(&mut self) {
        if let Some((_, task)) = self.running.take() {
            task.abort();
        }
    }
}

/// Drops the slot an archiver that was turned off held: nobody moves it on
/// any more, and it would hold the server's WAL up to the bound.
async fn drop_slot(old: &Built) {
    let slot = &old.wal.slot;
    let dropped = async {
        let client = old.conn.connect().await?;
        crate::wal::slot::Slot::new(slot, &client, &old.conn)
            .remove()
            .await
    };
    match dropped.await {
        Ok(()) => {
            info!(slot = %slot, "the replication slot was dropped: WAL is no longer archived with it")
        }
        Err(e) => {
            warn!(slot = %slot, error = %e, "the replication slot of WAL archiving that was turned off could not be dropped; drop it by hand (SELECT pg_drop_replication_slot(...)): until then it holds WAL up to max_slot_wal_keep_size")
        }
    }
}

/// The archiver for these settings, on the primary target; None when WAL
/// is not archived.
async fn archiver(settings: &Settings) -> Option<Archiver> {
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
struct Told {
    pub component: &'static str,
    pub settings: Arc<Settings>,
}

/// Archives until the task is aborted (the sidecar's exit). An abort in
/// the middle of an object leaves an upload no manifest covers: a
/// leftover, never a WAL object.
async fn run(mut a: Archiver, requests: mpsc::Sender<Reply>, status: Arc<Status>, told: Told) {
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
