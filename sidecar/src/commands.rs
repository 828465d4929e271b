//! One-shot operator commands.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use lifeboat::backup::Job;
use lifeboat::config::{Role, Settings};
use lifeboat::target::{Stored, Target};
use lifeboat::{pending, restore};
use lifeboat::{Error, Result};
use tracing::{debug, info, warn};

use crate::signals::Shutdown;

async fn settings(role: Role) -> Result<Settings> {
    let s = Settings::from_inputs(&lifeboat::cluster::pod_inputs("sidecar").await, role)?;
    for w in &s.warnings {
        warn!("{w}");
    }
    Ok(s)
}

/// Asks the running sidecar for a backup (so two never race), or, when no
/// sidecar listens (a CronJob, a laptop), takes it in this process.
pub async fn backup_now() -> Result<()> {
    let s = settings(Role::Backup).await?;
    if let Some(addr) = s.ops.loopback() {
        if let Some(id) = ask_running_sidecar(addr).await? {
            println!("{id}");
            return Ok(());
        }
        info!(address = %addr, "no running sidecar answers there; backing up in this process");
    }
    if let Some(p) = pending::find_for(&s)?.filter(|p| p.refused.is_none()) {
        return Err(Error::Source(format!(
            "restored dump {} in {} is not loaded yet (the running sidecar loads it once the server answers); \
             a backup now would record the server without it",
            p.manifest.id,
            p.dir.display()
        )));
    }
    let job = Arc::new(Job::open(&s).await);
    job.check().await?;
    let mut shutdown = Shutdown::new().map_err(|e| Error::io("installing signal handlers", e))?;
    let cancel: lifeboat::progress::Cancel = Default::default();
    let work = job.run(cancel.clone());
    tokio::pin!(work);
    let r = tokio::select! {
        r = &mut work => r,
        _ = shutdown.recv() => {
            warn!("interrupted; cancelling the backup");
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
            work.await
        }
    };
    crate::run::announce(&r).await;
    if let Some(message) = lifeboat::notify::message(&s, &r) {
        message.deliver().await;
    }
    let m = r?;
    println!("{}", m.id);
    Ok(())
}

/// `POST /backup-now` on the sidecar's endpoint; waits for the backup
/// that serves it (a running one, or one it starts). `None` when nothing
/// listens.
async fn ask_running_sidecar(addr: std::net::SocketAddr) -> Result<Option<String>> {
    let url = format!("http://{addr}/backup-now");
    let failed = |why: String| Error::Source(format!("the running sidecar at {addr}: {why}"));
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        // Loopback: an HTTP_PROXY in the pod's environment must not see it.
        .no_proxy()
        .build()
        .map_err(|e| failed(e.to_string()))?;
    debug!(address = %addr, "asking the running sidecar for a backup");
    let reply = match client.post(&url).send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Ok(None),
        Err(e) => return Err(failed(format!("no answer: {e}"))),
    };
    let code = reply.status();
    let body: serde_json::Value = reply
        .json()
        .await
        .map_err(|e| failed(format!("unreadable answer ({code}): {e}")))?;
    let text = |k: &str| body.get(k).and_then(|v| v.as_str()).map(String::from);
    match (code.is_success(), text("id"), text("error")) {
        (true, Some(id), _) => Ok(Some(id)),
        (_, _, Some(e)) => Err(Error::Source(format!("backup failed: {e}"))),
        _ => Err(failed(format!("unexpected answer {code}: {body}"))),
    }
}

/// Ready unless a restored dump is staged and not loaded yet. Reads only
/// the volume: a probe must be cheap and must not depend on the targets.
pub fn ready() -> Result<()> {
    // Without the API: a probe runs every few seconds and must stay cheap.
    let s = Settings::from_inputs(&lifeboat::config::Inputs::from_process(), Role::Restore)?;
    match pending::find_for(&s)? {
        None => {
            println!("ready");
            Ok(())
        }
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

pub async fn list(json: bool) -> Result<()> {
    let s = settings(Role::Inspect).await?;
    for t in lifeboat::target::open_all(&s).await {
        let listing = t.list().await?;
        for p in &listing.problems {
            warn!(target = %t.describe(), "unreadable manifest: {p}");
        }
        if json {
            for a in &listing.artifacts {
                println!("{}", serde_json::to_string(&a.manifest).unwrap_or_default());
            }
            continue;
        }
        println!("{}", t.describe());
        println!(
            "{:<28} {:<20} {:>10} {:>8} {:<8} VERIFIED",
            "ID", "STARTED (UTC)", "SIZE", "ENTRIES", "SOURCE"
        );
        for a in &listing.artifacts {
            let m = &a.manifest;
            println!(
                "{:<28} {:<20} {:>10} {:>8} {:<8} {}",
                m.id,
                m.started_at.format("%Y-%m-%d %H:%M:%S"),
                human(m.size),
                m.entries,
                m.source,
                a.verified_at
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_else(|| "no".into())
            );
        }
        if listing.artifacts.is_empty() {
            println!("(no committed artifacts)");
        }
    }
    Ok(())
}

pub async fn verify(id: Option<String>, all: bool) -> Result<()> {
    let s = settings(Role::Inspect).await?;
    let (mut checked, mut failed) = (0, 0);
    for t in lifeboat::target::open_all(&s).await {
        let listing = t.list().await?;
        // A manifest that cannot be read or parsed hides its artifact from
        // list, restore and retention: checking everything must say so.
        for p in &listing.problems {
            if all {
                println!("FAILED  {p}");
                checked += 1;
                failed += 1;
            } else {
                warn!(target = %t.describe(), "unreadable manifest: {p}");
            }
        }
        let chosen: Vec<&Stored> = match (&id, all) {
            (Some(id), _) => listing
                .artifacts
                .iter()
                .filter(|a| &a.manifest.id == id)
                .collect(),
            (None, true) => listing.artifacts.iter().collect(),
            (None, false) => listing.artifacts.iter().take(1).collect(),
        };
        for a in chosen {
            checked += 1;
            match restore::verify(&t, &a.manifest, s.identities.as_ref(), s.progress_interval).await {
                Ok(r) if !r.contents_checked => println!(
                    "ok      {} {} (sha256 only: encrypted, and no matching key in LIFEBOAT_AGE_IDENTITY_FILE)",
                    a.manifest.id,
                    t.describe()
                ),
                Ok(r) => match r.mark_not_recorded {
                    Some(why) => println!(
                        "ok      {} {} (verified; could not record the mark: {why})",
                        a.manifest.id,
                        t.describe()
                    ),
                    None => println!("ok      {} {}", a.manifest.id, t.describe()),
                },
                Err(e) => {
                    println!("FAILED  {} {}: {e}", a.manifest.id, t.describe());
                    failed += 1;
                }
            }
        }
    }
    if let Some(id) = id.filter(|_| checked == 0) {
        return Err(Error::NotFound(id));
    }
    if failed > 0 {
        return Err(Error::VerifyFailed { failed, checked });
    }
    Ok(())
}

pub async fn restore(to: PathBuf, id: Option<String>, before: Option<DateTime<Utc>>) -> Result<()> {
    let s = settings(Role::Inspect).await?;
    let targets = lifeboat::target::open_all(&s).await;
    // Newest first across all targets, copies of one artifact together, as
    // the init container orders them.
    let (all, mut failures) = restore::candidates(&targets).await?;
    let mut tried = 0;
    let candidates = all.iter().filter(|(_, a)| match (&id, before) {
        (Some(id), _) => &a.manifest.id == id,
        (None, Some(b)) => a.manifest.started_at < b,
        (None, None) => true,
    });
    for (t, a) in candidates {
        tried += 1;
        match restore::restore_to(
            t,
            a,
            &to,
            s.source,
            s.identities.as_ref(),
            s.progress_interval,
        )
        .await
        {
            Ok(()) => {
                info!(id = %a.manifest.id, to = %to.display(), "restored");
                println!("{}", a.manifest.id);
                return Ok(());
            }
            Err(e) if e.proves_artifact_bad() => {
                warn!(id = %a.manifest.id, target = %t.describe(), error = %e, "artifact skipped: it is bad; trying the next candidate");
                failures.push(format!("{} on {}: {e}", a.manifest.id, t.describe()));
            }
            // A missing key, a full disk, a stalled store: an older
            // artifact is not what was asked for; say why and stop.
            Err(e) => return Err(e),
        }
    }
    match id {
        Some(id) if tried == 0 => Err(Error::NotFound(id)),
        _ => Err(Error::NothingRestorable { tried, failures }),
    }
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
