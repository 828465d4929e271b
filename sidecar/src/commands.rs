//! The commands: settings for the role each needs, one library call, and
//! what a person reads on stdout.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use lifeboat::config::{Inputs, Role, Settings};
use lifeboat::daemon::{self, Caller};
use lifeboat::restore::{self, Pick, Verified, Wanted};
use lifeboat::store::Target;
use lifeboat::{Error, Result};
use tracing::warn;

/// This binary, as the library names it in Events and advice.
pub const CALLER: Caller = Caller {
    command: lifeboat::cli::SIDECAR_COMMAND,
    component: "sidecar",
};

async fn settings(role: Role) -> Result<Settings> {
    let s = Settings::from_inputs(&lifeboat::cluster::pod_inputs(CALLER.component).await, role)?;
    for w in &s.warnings {
        warn!("{w}");
    }
    Ok(s)
}

pub async fn run() -> Result<()> {
    daemon::run(CALLER).await
}

pub async fn backup_now() -> Result<()> {
    let s = settings(Role::Backup).await?;
    println!("{}", daemon::backup_now(CALLER, &s).await?);
    Ok(())
}

pub fn ready() -> Result<()> {
    // Without the API: a probe runs every few seconds and must stay cheap.
    daemon::ready(&Settings::from_inputs(
        &Inputs::from_process(),
        Role::Restore,
    )?)?;
    println!("ready");
    Ok(())
}

pub async fn list(json: bool) -> Result<()> {
    let s = settings(Role::Inspect).await?;
    for t in s.open_targets().await {
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
    let pick = match (&id, all) {
        (Some(id), _) => Pick::Id(id),
        (None, true) => Pick::All,
        (None, false) => Pick::Newest,
    };
    let (mut checked, mut failed) = (0, 0);
    let targets = s.open_targets().await;
    let keys = s.identities.as_ref();
    restore::verify_targets(&targets, pick, keys, s.progress_interval, |_, t, v| {
        match v {
            Verified::Unlisted(e) => return Err(e),
            // A manifest that cannot be read or parsed hides its artifact
            // from list, restore and retention: checking everything must say so.
            Verified::Unreadable(p) if all => {
                println!("FAILED  {p}");
                checked += 1;
                failed += 1;
            }
            Verified::Unreadable(p) => warn!(target = %t.describe(), "unreadable manifest: {p}"),
            Verified::Read { manifest, result } => {
                checked += 1;
                let (id, at) = (&manifest.id, t.describe());
                match result {
                    Ok(r) if !r.contents_checked => println!(
                        "ok      {id} {at} (sha256 only: encrypted, and no matching key in LIFEBOAT_AGE_IDENTITY_FILE)"
                    ),
                    Ok(r) => match r.mark_not_recorded {
                        Some(why) => println!(
                            "ok      {id} {at} (verified; could not record the mark: {why})"
                        ),
                        None => println!("ok      {id} {at}"),
                    },
                    Err(e) => {
                        println!("FAILED  {id} {at}: {e}");
                        failed += 1;
                    }
                }
            }
        }
        Ok(())
    })
    .await?;
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
    let targets = s.open_targets().await;
    let id = restore::restore_to(&targets, &to, &Wanted { id, before }, &s).await?;
    println!("{id}");
    Ok(())
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
