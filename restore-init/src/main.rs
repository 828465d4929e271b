//! lifeboat-restore: the init container. If the data paths are empty, puts
//! back the newest artifact that verifies. Exits 0 when the app may start.

use std::process::ExitCode;

use clap::Parser;
use lifeboat::cluster::{self, Reason};
use lifeboat::config::{Role, Settings};
use lifeboat::restore::{self, Outcome};
use tracing::{error, info, warn};

const ABOUT: &str =
    "Init container: restores the newest verified backup into an empty volume before the app starts.";

const LONG_ABOUT: &str = "\
Init container: restores the newest verified backup into an empty volume before the app starts.

With LIFEBOAT_RESTORE=if-empty (the default) it restores only when every path is missing or
empty; always replaces what is there; never does nothing. Candidates are the artifacts on
every target, newest first; one that does not verify is skipped for the next older. A files
(or physical postgres) artifact is put back under LIFEBOAT_PATHS; a logical dump (couchdb,
arangodb, postgres logical mode) is verified and staged in the first path as
.lifeboat-pending/ for the sidecar to load once the server answers.";

/// What the init container reads beyond the settings table, and its exit codes.
const AFTER_SETTINGS: &str = "\
Also read: PG_MAJOR (postgres: refuse a physical artifact of another major version);
HOSTNAME and POD_NAMESPACE (defaults of LIFEBOAT_NAME and LIFEBOAT_NAMESPACE); POD_NAME and
POD_NAMESPACE (Kubernetes Events and, without the annotations file, the annotations);
LIFEBOAT_DRILL_REPORT (in a restore drill's pod: a file where the restored artifact's id and
the restore's seconds are written for `lifeboat-sidecar drill check`).

Exit codes:
  0   the app may start: restored, nothing to restore (first deploy), or skipped
  1   artifacts exist but none verified, or the newest good one could not be read or
      written after 3 attempts (a store that stalls, a full disk): live data is left
      as it was and no older artifact is restored in its place
  64  invalid configuration";

/// The settings part comes from the one key table (`lifeboat::config::keys`).
fn after_help() -> String {
    format!(
        "{}\n{AFTER_SETTINGS}",
        lifeboat::config::keys::restore_env_help()
    )
}

#[derive(Parser)]
#[command(
    name = "lifeboat-restore",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = after_help(),
)]
struct Cli {}

fn main() -> ExitCode {
    Cli::parse();
    lifeboat::cli::init_logging();
    let rt = match lifeboat::cli::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lifeboat-restore: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// In a drill's pod: what was restored and how long it took, for the check.
/// A drill with nothing restored has nothing to check: that is a failure.
/// So is a logical dump: it is only staged here, and loading it is the
/// sidecar's work, which a drill pod does not run; the check would find an
/// empty database and condemn a good artifact.
fn drill_report(outcome: &Outcome, seconds: f64, path: &std::path::Path) -> lifeboat::Result<()> {
    let (id, target) = match outcome {
        Outcome::Restored { id, target, .. } => (id, target),
        Outcome::Staged { id, .. } => {
            return Err(lifeboat::Error::Drill(format!(
                "{id} is a logical dump, which a drill cannot check yet (the dump is loaded by the sidecar, and a drill pod has none); drill physical backups (LIFEBOAT_POSTGRES_MODE=physical) or files"
            )))
        }
        Outcome::NoArtifacts => {
            return Err(lifeboat::Error::Drill(
                "no artifacts to restore: nothing to drill".into(),
            ))
        }
        Outcome::Skipped(why) => {
            return Err(lifeboat::Error::Drill(format!(
                "nothing was restored ({why}); a drill's volume must be empty"
            )))
        }
    };
    lifeboat::drill::Restored {
        id: id.clone(),
        target: target.clone(),
        seconds,
    }
    .write(path)
}

/// Newer artifacts that were skipped, for the Event a person reads.
fn skipped_note(skipped: &[String]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    format!(
        "; {} newer artifact(s) skipped as bad: {}",
        skipped.len(),
        skipped.join("; ")
    )
}

async fn run() -> lifeboat::Result<()> {
    let s = Settings::from_inputs(&cluster::pod_inputs("restore").await, Role::Restore)?;
    let r = restore(&s).await;
    if let Err(e) = &r {
        if let Some(c) = cluster::get("restore").await {
            c.event(Reason::RestoreFailed, &format!("restore failed: {e}"))
                .await;
        }
    }
    r
}

async fn restore(s: &Settings) -> lifeboat::Result<()> {
    for w in &s.warnings {
        warn!("{w}");
    }
    let targets = s.open_targets().await;
    let started = std::time::Instant::now();
    let outcome = restore::restore_newest(&targets, s).await?;
    if let Some(path) = std::env::var_os("LIFEBOAT_DRILL_REPORT").filter(|p| !p.is_empty()) {
        drill_report(&outcome, started.elapsed().as_secs_f64(), path.as_ref())?;
    }
    match outcome {
        Outcome::Restored {
            id,
            target,
            skipped,
        } => {
            info!(id, target, "restore completed; the app may start");
            if let Some(c) = cluster::get("restore").await {
                let msg = format!(
                    "restored {id} from {target}; the app may start{}",
                    skipped_note(&skipped)
                );
                c.event(Reason::RestoreCompleted, &msg).await;
            }
        }
        // RestoreCompleted comes from the sidecar once the dump is loaded.
        Outcome::Staged {
            id,
            target,
            skipped,
        } => {
            info!(
                id,
                target,
                "dump verified and staged; the app may start, and the sidecar loads the dump once the server answers"
            );
            if !skipped.is_empty() {
                if let Some(c) = cluster::get("restore").await {
                    let msg = format!("staged {id} from {target}{}", skipped_note(&skipped));
                    c.event(Reason::RestoreCompleted, &msg).await;
                }
            }
        }
        Outcome::NoArtifacts => {
            info!("no artifacts found (first deploy); the app starts with an empty volume")
        }
        Outcome::Skipped(why) => info!(reason = why, "restore skipped"),
    }
    Ok(())
}
