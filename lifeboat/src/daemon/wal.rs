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
        deletes: settings.retention.is_some(),
    }))
}

/// Who is told when the slot is dropped: the component the Event comes
/// from, and the settings that name the pod and the notification.
struct Told {
    pub component: &'static str,
    pub settings: Arc<Settings>,
}

/// The base backups the archiver asked for: one request covers every
/// reason until it is served; a condition that stays must not ask again
/// every interval, and one that failed (the store was down) is asked for
/// again, sooner at first, until one is taken: without it the archived
/// WAL restores nothing.
#[derive(Default)]
struct BaseAsked {
    /// The request in the backup queue, and the answer it will get.
    pending: Option<oneshot::Receiver<std::result::Result<crate::manifest::Manifest, String>>>,
    /// When the last one was served.
    served: Option<tokio::time::Instant>,
    /// A failed one: why it was asked, when to ask again, and the wait
    /// after that.
    failed: Option<(String, tokio::time::Instant, std::time::Duration)>,
}

/// The first wait before a failed base backup is asked for again; it
/// doubles up to [`ASK_AGAIN_AFTER`].
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(60);

impl BaseAsked {
    fn follow(&mut self, asks: Vec<NeedsBase>, requests: &mpsc::Sender<Reply>) {
        let now = tokio::time::Instant::now();
        if let Some(rx) = &mut self.pending {
            match rx.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => {}
                Ok(Ok(m)) => {
                    info!(id = %m.id, "the base backup the WAL archive asked for is taken");
                    self.pending = None;
                    self.served = Some(now);
                    self.failed = None;
                }
                answer => {
                    let error = match answer {
                        Ok(Err(e)) => e,
                        _ => "it was not run".into(),
                    };
                    let (why, wait) = match self.failed.take() {
                        Some((why, _, wait)) => (why, (wait * 2).min(ASK_AGAIN_AFTER)),
                        None => ("asked for before".to_string(), RETRY_FIRST),
                    };
                    warn!(error = %error, again_in_s = wait.as_secs(), "the base backup the WAL archive asked for failed; until one is taken, the archived WAL cannot be restored. Asking again later");
                    self.pending = None;
                    self.failed = Some((why, now + wait, wait));
                }
            }
        }
        let mut why = asks.into_iter().map(|NeedsBase(w)| w).next();
        if self.pending.is_some() {
            if let Some(w) = why {
                debug!(reason = %w, "a base backup is already asked for");
            }
            return;
        }
        if let Some((old, at, _)) = &self.failed {
            if now < *at {
                return;
            }
            why = why.or(Some(old.clone()));
        } else if self.served.is_some_and(|t| now - t < ASK_AGAIN_AFTER) {
            if let Some(w) = why {
                debug!(reason = %w, "a base backup was taken for the archive recently");
            }
            return;
        }
        let Some(why) = why else {
            return;
        };
        info!(reason = %why, "asking for a base backup: archived WAL restores only on top of one taken after this");
        let (reply, rx) = oneshot::channel();
        if requests.try_send(reply).is_err() {
            warn!("the backup queue is full; the base backup is asked for again later");
            let wait = self.failed.as_ref().map_or(RETRY_FIRST, |f| f.2);
            self.failed = Some((why, now + wait, wait));
            return;
        }
        if let Some(f) = &mut self.failed {
            f.0 = why;
        }
        self.pending = Some(rx);
    }
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
    let mut base = BaseAsked::default();
    let mut dropped_before = 0;
    loop {
        every.tick().await;
        let mut asks = Vec::new();
        let result = a.pass(&mut asks).await;
        base.follow(asks, &requests);
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
        if let Some(at) = a.lost_found_at.take() {
            // A loss a sidecar before this one found (a crash loop): the
            // alert goes on reading its time.
            status.wal_lost_before(at);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ask(why: &str) -> Vec<NeedsBase> {
        vec![NeedsBase(why.into())]
    }

    fn done() -> crate::manifest::Manifest {
        let json = serde_json::json!({
            "format": "lifeboat/v1", "id": "20261203T000000Z-postgres",
            "artifact": "20261203T000000Z-postgres.tar.zst",
            "name": "n", "namespace": "ns", "source": "postgres", "layout": "paths",
            "paths": ["/data"], "started_at": "2026-12-03T00:00:00Z",
            "finished_at": "2026-12-03T00:00:00Z", "compression": "zstd:3",
            "encryption": "none", "size": 1, "sha256": "00", "entries": 1, "bytes_in": 1,
            "warnings": [], "tool_version": "t", "source_meta": {}
        });
        crate::manifest::Manifest::from_json(json.to_string().as_bytes()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_base_backup_is_asked_for_again_until_one_is_taken() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut base = BaseAsked::default();
        base.follow(ask("the slot was created"), &tx);
        let reply = rx.try_recv().expect("asked");
        // While it runs, no second request, whatever the passes find.
        base.follow(ask("again"), &tx);
        assert!(rx.try_recv().is_err());
        reply.send(Err("the store is down".into())).unwrap();
        // Failed: asked again a minute later, without a new reason, then
        // after two minutes, and so on.
        base.follow(vec![], &tx);
        assert!(rx.try_recv().is_err());
        tokio::time::advance(Duration::from_secs(61)).await;
        base.follow(vec![], &tx);
        let reply = rx.try_recv().expect("asked again");
        reply.send(Err("still down".into())).unwrap();
        base.follow(vec![], &tx);
        tokio::time::advance(Duration::from_secs(61)).await;
        base.follow(vec![], &tx);
        assert!(rx.try_recv().is_err(), "the wait doubled");
        tokio::time::advance(Duration::from_secs(60)).await;
        base.follow(vec![], &tx);
        let reply = rx.try_recv().expect("asked a third time");
        reply.send(Ok(done())).unwrap();
        // Taken: nothing more, and a new reason within the hour waits for
        // the schedule.
        base.follow(vec![], &tx);
        tokio::time::advance(Duration::from_secs(3000)).await;
        base.follow(ask("another reason"), &tx);
        assert!(rx.try_recv().is_err());
        tokio::time::advance(Duration::from_secs(700)).await;
        base.follow(ask("another reason"), &tx);
        assert!(rx.try_recv().is_ok());
    }
}
