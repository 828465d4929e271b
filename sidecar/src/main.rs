//! lifeboat-sidecar: scheduled backups next to the app, plus operator commands
//! (`kubectl exec -c lifeboat -- lifeboat-sidecar list`). Exit codes are
//! decided here and only here.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lifeboat-sidecar",
    version,
    about = "Backs up a pod's volume on a schedule as plain tarballs, and restores them.",
    after_long_help = env_help(),
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run for the pod's life: back up on LIFEBOAT_SCHEDULE, serve /metrics,
    /// /healthz, /readyz and /status on LIFEBOAT_LISTEN (the default command).
    #[command(after_long_help = env_help())]
    Run,
    /// Take one backup now and print its id (non-zero exit on failure). Asks
    /// the running sidecar on LIFEBOAT_LISTEN (loopback), so two backups
    /// never race: a backup already running serves the request. With no
    /// sidecar listening, backs up in this process.
    #[command(after_long_help = env_help())]
    BackupNow,
    /// List committed artifacts on every target, newest first.
    #[command(after_long_help = env_help())]
    List {
        /// Print JSON (one manifest per artifact) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-read artifacts end to end: sha256, decompression and tar structure.
    #[command(after_long_help = env_help())]
    Verify {
        /// Artifact id to verify (default: the newest on each target).
        id: Option<String>,
        /// Verify every committed artifact; a manifest that cannot be read
        /// or parsed is a failure too.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Readiness probe (exec): exits 1 while a restored dump waits to be
    /// loaded, so the pod stays out of Service endpoints until the data is in.
    #[command(after_long_help = env_help())]
    Ready,
    /// Restore drills, run by the drill component's CronJob (README, "Restore
    /// drills"): `install` copies this binary where the app's image can run
    /// it; `check` runs the user's check against the app started on the
    /// restored data and records the result beside the artifact.
    Drill {
        #[command(subcommand)]
        step: DrillStep,
    },
    /// Restore an artifact into an empty folder, for inspection or a manual fix.
    /// Each backed-up path lands below DIR (e.g. DIR/home/jovyan).
    #[command(after_long_help = env_help())]
    Restore {
        /// Empty or missing folder to restore into.
        #[arg(long, value_name = "DIR")]
        to: std::path::PathBuf,
        /// Artifact id (default: the newest that verifies).
        #[arg(long, conflicts_with = "before")]
        id: Option<String>,
        /// Newest artifact started before this time (RFC 3339, e.g. 2026-11-20T00:00:00Z).
        #[arg(long, value_name = "TIME")]
        before: Option<chrono::DateTime<chrono::Utc>>,
        /// PostgreSQL (physical) with archived WAL: the newest base backup
        /// finished by this time (RFC 3339), and the WAL up to it, staged in
        /// DIR's pg_wal with the recovery settings: `postgres -D` on the
        /// restored PGDATA recovers to exactly that time and promotes.
        #[arg(long, value_name = "TIME", conflicts_with = "before")]
        target_time: Option<chrono::DateTime<chrono::Utc>>,
        /// Only this path: a file, or a folder with all below it, named as
        /// backed up (home/jovyan/analysis.ipynb; a leading / is fine);
        /// `*` stays in a folder, `**` crosses folders. Repeat for more.
        /// The whole artifact is still read and its sha256 verified.
        #[arg(long = "path", value_name = "PATH", conflicts_with = "target_time")]
        paths: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DrillStep {
    /// Copies this (static) binary into DIR, for the check container, which
    /// runs the app's own image.
    Install {
        /// A folder shared with the check container (an emptyDir).
        dir: std::path::PathBuf,
    },
    /// Waits for the app, runs the check once it is up, and records
    /// pass/fail, the restore's seconds and the output's end as
    /// `<id>.drill.json` beside the restored artifact. Exits 1 if the check
    /// failed.
    #[command(after_long_help = env_help())]
    Check(commands::DrillCheck),
}

fn env_help() -> String {
    lifeboat::config::keys::env_help()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    lifeboat::cli::init_logging();
    let rt = match lifeboat::cli::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lifeboat-sidecar: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => commands::run().await,
            Command::BackupNow => commands::backup_now().await,
            Command::Ready => commands::ready(),
            Command::List { json } => commands::list(json).await,
            Command::Verify { id, all } => commands::verify(id, all).await,
            Command::Restore {
                to,
                id,
                before,
                target_time,
                paths,
            } => commands::restore(to, id, before, target_time, paths).await,
            Command::Drill {
                step: DrillStep::Install { dir },
            } => commands::drill_install(&dir),
            Command::Drill {
                step: DrillStep::Check(args),
            } => commands::drill_check(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
