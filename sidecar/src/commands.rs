//! The commands: settings for the role each needs, one library call, and
//! what a person reads on stdout.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use lifeboat::config::{Inputs, Role, Settings};
use lifeboat::daemon::{self, Caller};
use lifeboat::restore::{self, Pick, Verified, Wanted};
use lifeboat::store::Target;
use lifeboat::{Error, Result};
use tracing::{info, warn};

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
            "{:<28} {:<20} {:>10} {:>8} {:<8} {:<30} {:<20} DRILLED",
            "ID", "STARTED (UTC)", "SIZE", "ENTRIES", "SOURCE", "KIND", "VERIFIED"
        );
        for a in &listing.artifacts {
            let m = &a.manifest;
            println!(
                "{:<28} {:<20} {:>10} {:>8} {:<8} {:<30} {:<20} {}",
                m.id,
                m.started_at.format("%Y-%m-%d %H:%M:%S"),
                human(m.size),
                m.entries,
                m.source,
                kind(m),
                a.verified_at
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_else(|| "no".into()),
                a.drill
                    .as_ref()
                    .map(|d| d.summary())
                    .unwrap_or_else(|| "no".into())
            );
        }
        if listing.artifacts.is_empty() {
            println!("(no committed artifacts)");
        }
        point_in_time_windows(&t, &listing).await;
    }
    Ok(())
}

/// For PostgreSQL base backups with archived WAL after them: the times a
/// restore can be sent to (`LIFEBOAT_RESTORE_TARGET_TIME`), one line each.
async fn point_in_time_windows(t: &lifeboat::store::AnyTarget, listing: &lifeboat::store::Listing) {
    let physical = |a: &&lifeboat::store::Stored| {
        lifeboat::wal::object::BaseEnd::of(&a.manifest.source_meta).is_some()
    };
    if !listing.artifacts.iter().any(|a| physical(&a)) {
        return;
    }
    let wal = match t.list_wal().await {
        Ok(w) => w,
        Err(e) => {
            warn!(target = %t.describe(), "archived WAL could not be listed: {e}");
            return;
        }
    };
    if wal.objects.is_empty() {
        return;
    }
    let fmt = |d: chrono::DateTime<Utc>| d.format("%Y-%m-%d %H:%M:%S").to_string();
    println!("point in time (UTC), per base backup: any second from … to");
    for a in listing.artifacts.iter().filter(physical) {
        if let Some(w) = lifeboat::wal::window::of(&a.manifest, &wal.objects) {
            if let Some((timeline, at)) = w.abandoned_by {
                println!(
                    "  {:<28} abandoned: timeline {timeline} branched off at {at}, before it (a restore to a point in time); a restore of the newest passes over it",
                    a.manifest.id
                );
                continue;
            }
            println!(
                "  {:<28} {} … {}  ({} WAL object(s), to {})",
                a.manifest.id,
                fmt(w.from),
                fmt(w.to),
                w.objects,
                w.end
            );
        }
    }
}

/// `full`, or a chain link: `L<level> of <chain's first id>` (level 0
/// is the chain's full first link).
fn kind(m: &lifeboat::manifest::Manifest) -> String {
    match &m.chain {
        None => "full".into(),
        Some(chain) => format!("L{} of {chain}", m.level),
    }
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

pub async fn restore(
    to: PathBuf,
    id: Option<String>,
    before: Option<DateTime<Utc>>,
    target_time: Option<DateTime<Utc>>,
    paths: Vec<String>,
) -> Result<()> {
    let only = if paths.is_empty() {
        None
    } else {
        let f = lifeboat::path_filter::PathFilter::new(&paths).map_err(|message| {
            lifeboat::Error::Config(vec![lifeboat::problem::Problem {
                setting: "--path".into(),
                value: paths.join(" "),
                message,
            }])
        })?;
        Some(std::sync::Arc::new(f))
    };
    let s = settings(Role::Inspect).await?;
    if target_time.is_some() && !s.source.is_physical_postgres() {
        return Err(lifeboat::Error::Config(vec![lifeboat::problem::Problem {
            setting: "--target-time".into(),
            value: target_time.map(|t| t.to_rfc3339()).unwrap_or_default(),
            message: "needs LIFEBOAT_SOURCE=postgres in the physical mode (the default): only those backups have archived WAL".into(),
        }]));
    }
    let targets = s.open_targets().await;
    let wanted = Wanted {
        id,
        before,
        target_time,
        only,
    };
    let id = restore::restore_to(&targets, &to, &wanted, &s).await?;
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

/// `drill check`'s settings: from the environment (the drill component
/// sets them from the `lifeboat` ConfigMap) or the command line.
#[derive(clap::Args)]
pub struct DrillCheck {
    /// The check, quoted as in a shell but not run by one (add `sh -c '…'`
    /// for a shell), run in the app's image: e.g. `psql -c 'select count(*) from orders'`.
    #[arg(long, env = "LIFEBOAT_DRILL_CHECK", value_parser = argv)]
    check: Option<Argv>,
    /// Run until it passes before the check runs once (e.g. `pg_isready`);
    /// without it the check itself is retried until it passes.
    #[arg(long, env = "LIFEBOAT_DRILL_READY", value_parser = argv)]
    ready: Option<Argv>,
    /// How long the app may take to come up and pass (30s, 5m, 1h).
    #[arg(long, env = "LIFEBOAT_DRILL_TIMEOUT", default_value = "5m", value_parser = duration)]
    timeout: std::time::Duration,
    /// What lifeboat-restore wrote in this pod (LIFEBOAT_DRILL_REPORT).
    #[arg(
        long,
        env = "LIFEBOAT_DRILL_REPORT",
        default_value = "/drill/restored.json"
    )]
    report: std::path::PathBuf,
}

/// A command line split as a shell would (one value for clap, not many).
#[derive(Debug, Clone)]
pub struct Argv(Vec<String>);

fn argv(s: &str) -> std::result::Result<Argv, String> {
    match shell_words::split(s) {
        Ok(v) if !v.is_empty() => Ok(Argv(v)),
        Ok(_) => Err("empty: give a program and its arguments".into()),
        Err(e) => Err(format!("{e}: quote as in a shell")),
    }
}

fn duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    lifeboat::config::parse_duration(s)
}

pub fn drill_install(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let me = std::env::current_exe().map_err(|e| Error::io("finding this program", e))?;
    let to = dir.join("lifeboat-sidecar");
    let tmp = dir.join(".lifeboat-sidecar.tmp");
    std::fs::copy(&me, &tmp)
        .and_then(|_| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)))
        .and_then(|()| std::fs::rename(&tmp, &to))
        .map_err(|e| Error::io(format!("copying {} to {}", me.display(), to.display()), e))?;
    println!("{}", to.display());
    Ok(())
}

pub async fn drill_check(args: DrillCheck) -> Result<()> {
    // Said here rather than by clap, whose message names only `--check`.
    let Some(check_argv) = args.check else {
        return Err(Error::Config(vec![lifeboat::config::Problem {
            setting: "LIFEBOAT_DRILL_CHECK".into(),
            value: String::new(),
            message: "is not set: give the drill's check in the lifeboat ConfigMap, e.g. LIFEBOAT_DRILL_CHECK=psql -h 127.0.0.1 -U postgres -c 'select count(*) from orders' (README, \"Restore drills\")".into(),
        }]));
    };
    let s = settings(Role::Inspect).await?;
    let restored = lifeboat::drill::Restored::read(&args.report)?;
    let targets = s.open_targets().await;
    let drilled = lifeboat::drill_targets::locate(&targets, &restored).await?;
    let span = tracing::info_span!("drill", id = %restored.id, target = %restored.target);
    let _guard = span.enter();
    info!(
        restore_seconds = restored.seconds,
        timeout_s = args.timeout.as_secs(),
        "drill: artifact restored; waiting for the app and running LIFEBOAT_DRILL_CHECK"
    );
    let check_text = shell_words::join(&check_argv.0);
    let check = lifeboat::drill::Check {
        argv: check_argv.0,
        ready: args.ready.map(|r| r.0),
        timeout: args.timeout,
        every: std::time::Duration::from_secs(5),
    };
    let (verdict, output) = tokio::task::spawn_blocking(move || check.run())
        .await
        .map_err(|e| Error::Internal(format!("the drill's check did not run: {e}")))?;
    let record = lifeboat::drill::DrillRecord::new(
        &drilled.manifest,
        verdict,
        restored.seconds,
        &check_text,
        &output,
    );
    lifeboat::drill_targets::record(&drilled, &record).await?;
    if verdict == lifeboat::drill::Verdict::Passed {
        info!(restore_seconds = restored.seconds, "drill PASSED");
        Ok(())
    } else {
        Err(Error::DrillFailed {
            id: restored.id,
            verdict,
            output: record.output_tail.trim().to_string(),
        })
    }
}
