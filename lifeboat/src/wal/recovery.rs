//! The recovery settings a restore writes into a PGDATA that has WAL
//! staged in `pg_wal/`, and their removal once the server has promoted
//! (docs/ARCHITECTURE.md, "Continuous WAL", restore).
//!
//! Recovery needs a `restore_command`. Ours always fails, so the server
//! reads only `pg_wal/`: `exit 1` is a shell builtin (a missing program
//! exits 127, and a status above 125 stops recovery with FATAL), and the
//! comment after it tells our setting from anyone else's.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use crate::error::IoContext;
use crate::source::postgres::PgConn;
use crate::Result;

/// The `restore_command` a restore writes.
pub const RESTORE_COMMAND: &str = "exit 1 # lifeboat: WAL was staged in pg_wal";

/// The settings a restore may write, which [`reset`] takes away again once
/// the server has promoted (only when `restore_command` is still ours).
const SETTINGS: &[&str] = &[
    "restore_command",
    "recovery_target_time",
    "recovery_target_inclusive",
    "recovery_target_action",
    "recovery_target_timeline",
];

/// Makes `pgdata` (a staged copy, before it is moved into place) start in
/// recovery: `recovery.signal`, and the settings appended to
/// `postgresql.auto.conf` (later lines win, and `ALTER SYSTEM` rewrites the
/// file without duplicates). The server replays every staged byte and
/// promotes; with `target_time`, it stops at that time (before the first
/// transaction that ended after it) and promotes there. `timeline` is the
/// one the staged WAL ends on, which the server follows to. A target time
/// is written only when there is one, or to clear one an earlier restore
/// left in a base backup's `postgresql.auto.conf` (PostgreSQL refuses two
/// kinds of target, even an empty one beside a user's own).
pub fn write(
    pgdata: &Path,
    target_time: Option<DateTime<Utc>>,
    timeline: Option<u32>,
) -> Result<()> {
    let signal = pgdata.join("recovery.signal");
    fs::write(&signal, b"").ctx("writing", &signal)?;
    // The server removes it when it promotes.
    give_cluster_owner(pgdata, &signal)?;
    let auto = pgdata.join("postgresql.auto.conf");
    let stale = fs::read_to_string(&auto)
        .unwrap_or_default()
        .lines()
        .any(|l| {
            l.trim_start()
                .strip_prefix("recovery_target_time")
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
    let mut lines = format!(
        "# lifeboat: recovery from the archived WAL; removed once the server has promoted\nrestore_command = '{RESTORE_COMMAND}'\n"
    );
    match target_time {
        // Microseconds, as PostgreSQL keeps commit times, in UTC; the
        // staged WAL was scanned with the inclusive rule.
        Some(t) => lines.push_str(&format!(
            "recovery_target_time = '{}'\nrecovery_target_inclusive = 'on'\nrecovery_target_action = 'promote'\n",
            t.format("%Y-%m-%d %H:%M:%S%.6f+00")
        )),
        None if stale => lines.push_str("recovery_target_time = ''\n"),
        None => {}
    }
    if let Some(tl) = timeline {
        lines.push_str(&format!("recovery_target_timeline = '{tl}'\n"));
    }
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&auto)
        .ctx("opening", &auto)?;
    f.write_all(lines.as_bytes()).ctx("writing", &auto)?;
    f.sync_all().ctx("syncing", &auto)
}

/// As root, gives `path` (a file we wrote into `pgdata`) the cluster's
/// owner, like every other file there.
pub fn give_cluster_owner(pgdata: &Path, path: &Path) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        use std::os::unix::fs::MetadataExt;
        let version = pgdata.join("PG_VERSION");
        let md = fs::metadata(&version).ctx("reading", &version)?;
        std::os::unix::fs::chown(path, Some(md.uid()), Some(md.gid()))
            .ctx("giving the cluster's owner", path)?;
    }
    Ok(())
}

/// Once the server runs as a primary, takes our recovery settings away
/// (each `ALTER SYSTEM` on its own: it cannot run in a transaction), so the
/// next start is an ordinary one. Settings that are not ours stay. Returns
/// whether anything was reset.
pub async fn reset(client: &Client, conn: &PgConn) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('restore_command')",
            &[],
        )
        .await
        .map_err(|e| conn.error(e))?;
    let (in_recovery, command): (bool, String) = (row.get(0), row.get(1));
    if in_recovery || command != RESTORE_COMMAND {
        return Ok(false);
    }
    for s in SETTINGS {
        client
            .batch_execute(&format!("ALTER SYSTEM RESET {s}"))
            .await
            .map_err(|e| conn.error(e))?;
    }
    client
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .map_err(|e| conn.error(e))?;
    Ok(true)
}
