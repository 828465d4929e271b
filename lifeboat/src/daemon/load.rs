//! The pending load (docs/ARCHITECTURE.md §6): a dump the init container
//! staged is loaded once the server answers, before any backup runs, and a
//! dump the server refuses is recorded, reported and left for a person.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::{error, info};

use super::shutdown::Shutdown;
use super::work::Clock;
use crate::cluster::{self, Reason};
use crate::config::Settings;
use crate::pending::{self, Pending};
use crate::progress::Cancel;
use crate::status::Status;
use crate::{Error, Result};

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

/// What the pending load needs of the sidecar.
pub(super) struct Ctx<'a> {
    pub component: &'static str,
    pub settings: &'a Settings,
    pub status: &'a Status,
    pub shutdown: &'a mut Shutdown,
    pub clock: &'a dyn Clock,
}

/// At start, with a staged dump: loads it, or says again that the server
/// refused it before. Returns whether the sidecar should exit (a shutdown
/// request during the load).
pub(super) async fn at_start(mut p: Pending, cx: Ctx<'_>) -> bool {
    if let Some(why) = &p.refused {
        // Refused before: loading it now would replace what the app
        // wrote since. A person decides (README, "A dump the server refuses").
        let advice = p.refused_advice();
        error!(id = %p.manifest.id, "the server refused this restored dump earlier ({why}); it is not loaded again; {advice}");
        cx.status.load_refused(Some(format!("{why}; {advice}")));
        return false;
    }
    cx.status.started("load", "restored dump", cx.clock.now());
    let (status, component, settings) = (cx.status, cx.component, cx.settings);
    match load_pending(&mut p, component, settings, status, cx.shutdown).await {
        LoadEnd::Exit => return true,
        LoadEnd::Loaded => status.pending_load(None),
        LoadEnd::Refused => {}
    }
    status.idle();
    false
}

/// Loads a dump the init container staged, retrying while the server may
/// still come up. No backup runs before: it would record the empty server
/// as the newest artifact. A dump the server refuses (retrying cannot fix
/// it) is recorded as refused, reported, and left for a person.
async fn load_pending(
    p: &mut Pending,
    component: &'static str,
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
                    if let Some(c) = cluster::get(component).await {
                        let msg = format!("restored dump {} loaded into the server", p.manifest.id);
                        c.event(Reason::RestoreCompleted, &msg).await;
                    }
                    return LoadEnd::Loaded;
                }
                Err((true, e @ Error::LoadRefused { .. })) => {
                    status.load_finished(false);
                    refused(p, component, settings, status, &e.to_string()).await;
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
async fn refused(
    p: &mut Pending,
    component: &'static str,
    settings: &Settings,
    status: &Status,
    why: &str,
) {
    if let Err(e) = p.mark_refused(why) {
        error!(dir = %p.dir.display(), "cannot record the refused load ({e}); the next start tries it again");
    }
    let advice = p.refused_advice();
    error!(id = %p.manifest.id, "{why}; scheduled backups of the server as it is go on; {advice}");
    status.load_refused(Some(format!("{why}; {advice}")));
    if let Some(c) = cluster::get(component).await {
        let msg = format!(
            "restored dump {} not loaded: {why}; {advice}",
            p.manifest.id
        );
        c.event(Reason::RestoreFailed, &msg).await;
    }
    if let Some(m) = crate::notify::load_refused(settings, &p.manifest.id, why) {
        m.deliver().await;
    }
}

/// The readiness probe (`lifeboat-sidecar ready`): ready unless a restored
/// dump is staged and not loaded yet. Reads only the volume: a probe must be
/// cheap and must not depend on the targets.
pub fn ready(s: &Settings) -> Result<()> {
    match pending::find_for(s)? {
        None => Ok(()),
        Some(p) => Err(Error::NotReady(match &p.refused {
            None => format!(
                "not ready: restored dump {} in {} is not loaded yet",
                p.manifest.id,
                p.dir.display()
            ),
            Some(why) => format!(
                "not ready: restored dump {} was refused by the server ({why}); {}",
                p.manifest.id,
                p.refused_advice()
            ),
        })),
    }
}
