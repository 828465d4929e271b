//! The `postgres` source: a physical backup of a running server that the
//! init container can restore before the server starts (docs/ARCHITECTURE.md §2).
//!
//! Over one SQL session kept open for the whole copy: a temporary physical
//! replication slot (keeps WAL from being recycled during a long copy), the
//! non-exclusive backup API, a tar of PGDATA without the runtime-only files,
//! then — after the stop, which writes the end-of-backup record — the WAL
//! from the start segment through the stop segment, and `backup_label`.
//! Restored into an empty PGDATA, the server starts, replays that WAL, and
//! is consistent; no `recovery.signal` is needed.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio_postgres::{Client, NoTls};

use super::files::FilesSource;
use super::kind::SourceKind;
use super::seam::{Source, SourceCtx, SourceReport};
use crate::compression::ArtifactOut;
use crate::error::IoContext;
use crate::{Error, Result};

/// Folders whose contents are runtime state, not data: kept empty in the tar.
const EMPTY_DIRS: &[&str] = &[
    "pg_wal",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];
/// Files never copied. `backup_label` and `tablespace_map` are written from
/// what the stop returns; a leftover from an older backup must not win.
const SKIP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "pg_internal.init",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
];
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Connection settings from the standard `PG*` variables.
#[derive(Clone, PartialEq, Eq)]
pub struct PgConn {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
}

/// Never the password: settings end up in debug logs.
impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .finish()
    }
}

impl PgConn {
    pub fn from_env(env: &BTreeMap<String, String>) -> std::result::Result<Self, String> {
        let port = match env.get("PGPORT") {
            Some(p) => p
                .parse()
                .map_err(|_| format!("PGPORT={p:?}: accepted: a port number"))?,
            None => 5432,
        };
        Ok(PgConn {
            host: env
                .get("PGHOST")
                .cloned()
                .unwrap_or_else(|| "localhost".into()),
            port,
            user: env
                .get("PGUSER")
                .cloned()
                .unwrap_or_else(|| "postgres".into()),
            password: env.get("PGPASSWORD").cloned(),
            dbname: env
                .get("PGDATABASE")
                .cloned()
                .unwrap_or_else(|| "postgres".into()),
        })
    }

    pub(crate) fn describe(&self) -> String {
        format!("PostgreSQL at {}:{} as {}", self.host, self.port, self.user)
    }

    /// The same server and user, another database.
    pub(crate) fn with_dbname(&self, dbname: &str) -> PgConn {
        PgConn {
            dbname: dbname.into(),
            ..self.clone()
        }
    }

    /// The variables libpq tools (`pg_dump`, `pg_restore`) read, so they
    /// reach the same server as we do; the password may have come from
    /// `PGPASSWORD_FILE`, which libpq does not know.
    pub(crate) fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT.as_secs().to_string()),
            ("PGAPPNAME", "lifeboat".into()),
        ];
        if let Some(p) = &self.password {
            env.push(("PGPASSWORD", p.clone()));
        }
        env
    }

    pub(crate) async fn connect(&self) -> Result<Client> {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("lifeboat")
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(p) = &self.password {
            c.password(p);
        }
        // A name (not a socket folder) is resolved here: libc cannot in the
        // static release image (crate::dns).
        if !self.host.starts_with('/') {
            let ips = crate::dns::lookup(&self.host)
                .await
                .map_err(|e| Error::Source(format!("PGHOST={}: {e}", self.host)))?;
            c.hostaddr(ips[0]);
        }
        let (client, connection) = c.connect(NoTls).await.map_err(|e| self.error(e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "PostgreSQL session ended with an error");
            }
        });
        Ok(client)
    }

    pub(crate) fn error(&self, e: tokio_postgres::Error) -> Error {
        let detail = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| crate::error::error_chain(&e));
        let hint = if detail.contains("password authentication failed")
            || detail.contains("password")
        {
            " (check PGUSER and PGPASSWORD / PGPASSWORD_FILE)"
        } else if detail.contains("refused")
            || detail.contains("timed out")
            || detail.contains("error connecting")
        {
            " (is the server running? check PGHOST and PGPORT)"
        } else if detail.contains("permission denied") || detail.contains("must be superuser") {
            " (the user needs the pg_backup_start/pg_backup_stop rights, e.g. a superuser or REPLICATION role)"
        } else {
            ""
        };
        Error::Source(format!("{}: {detail}{hint}", self.describe()))
    }
}

pub struct PostgresSource {
    files: FilesSource,
    conn: PgConn,
}

impl PostgresSource {
    /// `files` names PGDATA (exactly one path) and the user's excludes.
    pub fn new(mut files: FilesSource, conn: PgConn) -> Self {
        files.filter = Some(excluded);
        // Torn pages are expected: WAL from the backup start replays over them.
        files.changes_expected = true;
        PostgresSource { files, conn }
    }

    fn pgdata(&self) -> &Path {
        &self.files.paths[0]
    }
}

/// The runtime-only parts of PGDATA, which a restored server recreates.
fn excluded(root: &Path, path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if SKIP_FILES.contains(&name) || name.starts_with("pgsql_tmp") {
        return true;
    }
    let rel = path.strip_prefix(root).unwrap_or(path);
    let mut parts = rel.components();
    match (parts.next(), parts.next()) {
        (Some(first), Some(_)) => EMPTY_DIRS.iter().any(|d| first.as_os_str() == *d),
        _ => false,
    }
}

/// `START WAL LOCATION: 0/2000028 (file 000000010000000000000002)` -> the file.
fn start_wal_file(label: &str) -> Option<String> {
    let line = label
        .lines()
        .find(|l| l.starts_with("START WAL LOCATION:"))?;
    let file = line.split("(file ").nth(1)?.trim_end_matches(')').trim();
    Some(file.to_string())
}

fn label_field<'a>(label: &'a str, key: &str) -> Option<&'a str> {
    label
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
}

impl Source for PostgresSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Postgres
    }

    fn paths(&self) -> Vec<String> {
        self.files.paths()
    }

    fn write_tar<W: ArtifactOut>(
        &self,
        tar: &mut tar::Builder<W>,
        ctx: &SourceCtx,
    ) -> Result<SourceReport> {
        let pgdata = self.pgdata().to_path_buf();
        if !pgdata.join("PG_VERSION").is_file() {
            return Err(Error::Source(format!(
                "{} is not a PostgreSQL data directory (no PG_VERSION); LIFEBOAT_PATHS must name PGDATA",
                pgdata.display()
            )));
        }
        let rt = Handle::current();
        // One session for the whole backup: if it breaks, the server ends
        // the backup by itself and stays in normal mode.
        let client = rt.block_on(self.conn.connect())?;
        let session = Session {
            rt: &rt,
            client: &client,
            conn: &self.conn,
        };
        let started = session.start()?;
        let mut report = self.files.write_tar(tar, ctx)?;
        let stopped = session.stop(started.version_num)?;
        let wal_files = self.append_wal(tar, ctx, &mut report, &pgdata, &stopped)?;
        append_label_files(tar, &mut report, &pgdata, &stopped)?;
        if let Some(slot) = &started.slot {
            let _ = rt.block_on(client.query("SELECT pg_drop_replication_slot($1)", &[slot]));
        }
        tracing::info!(
            stop_lsn = stopped.stop_lsn,
            wal_files,
            "PostgreSQL backup stopped"
        );
        let timeline = &stopped.start_wal[..8];
        report.meta = serde_json::json!({
            "server_version": started.version,
            "server_version_num": started.version_num,
            "major": started.version_num / 10000,
            "start_lsn": started.start_lsn,
            "stop_lsn": stopped.stop_lsn,
            "timeline": u32::from_str_radix(timeline, 16).unwrap_or(0),
            "system_identifier": stopped.system_id,
            "start_wal": stopped.start_wal,
            "stop_wal": stopped.stop_wal,
            "label": label_field(&stopped.labelfile, "LABEL:").unwrap_or_default(),
        });
        Ok(report)
    }
}

/// The one SQL session a physical backup runs in.
struct Session<'a> {
    rt: &'a Handle,
    client: &'a Client,
    conn: &'a PgConn,
}

/// What `pg_backup_start` left us.
struct Started {
    version_num: i32,
    version: String,
    /// The temporary replication slot holding WAL, when the user may create one.
    slot: Option<String>,
    start_lsn: String,
}

/// What `pg_backup_stop` returned, and the WAL span the backup needs.
struct Stopped {
    stop_lsn: String,
    labelfile: String,
    spcmap: Option<String>,
    system_id: String,
    start_wal: String,
    stop_wal: String,
}

impl Session<'_> {
    fn sql(&self, q: &str) -> Result<Vec<tokio_postgres::Row>> {
        self.rt
            .block_on(self.client.query(q, &[]))
            .map_err(|e| self.conn.error(e))
    }

    /// Checks the version, takes a temporary slot if allowed, starts the backup.
    fn start(&self) -> Result<Started> {
        let (rt, client, conn) = (self.rt, self.client, self.conn);
        let version_num: i32 = self.sql("SHOW server_version_num")?[0]
            .get::<_, String>(0)
            .parse()
            .unwrap_or(0);
        let version: String = self.sql("SHOW server_version")?[0].get(0);
        if version_num < 120000 {
            return Err(Error::Source(format!(
                "{}: PostgreSQL {version} is older than 12, which lifeboat supports",
                conn.describe()
            )));
        }
        let slot = format!("lifeboat_{}", std::process::id());
        let with_slot = match rt.block_on(client.query(
            "SELECT 1 FROM pg_create_physical_replication_slot($1, true, true)",
            &[&slot],
        )) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %conn.error(e), "no temporary replication slot; WAL could be recycled during a very long copy");
                false
            }
        };
        let label = format!("lifeboat {}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"));
        let start_sql = if version_num >= 150000 {
            "SELECT pg_backup_start($1, true)::text"
        } else {
            "SELECT pg_start_backup($1, true, false)::text"
        };
        let start_lsn: String = rt
            .block_on(client.query_one(start_sql, &[&label]))
            .map_err(|e| conn.error(e))?
            .get(0);
        tracing::info!(
            start_lsn,
            version,
            slot = with_slot,
            "PostgreSQL backup started"
        );
        Ok(Started {
            version_num,
            version,
            slot: with_slot.then_some(slot),
            start_lsn,
        })
    }

    /// Stops the backup and names the first and last WAL segment it needs.
    fn stop(&self, version_num: i32) -> Result<Stopped> {
        let (rt, client, conn) = (self.rt, self.client, self.conn);
        let stop_sql = if version_num >= 150000 {
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
        } else {
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)"
        };
        let row = rt
            .block_on(client.query_one(stop_sql, &[]))
            .map_err(|e| conn.error(e))?;
        let (stop_lsn, labelfile, spcmap): (String, String, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        let stop_wal: String = rt
            .block_on(client.query_one("SELECT pg_walfile_name($1::text::pg_lsn)", &[&stop_lsn]))
            .map_err(|e| conn.error(e))?
            .get(0);
        let system_id: String =
            self.sql("SELECT system_identifier::text FROM pg_control_system()")?[0].get(0);
        let start_wal = start_wal_file(&labelfile).ok_or_else(|| {
            Error::Source(format!(
                "unexpected backup label from the server: {labelfile:?}"
            ))
        })?;
        Ok(Stopped {
            stop_lsn,
            labelfile,
            spcmap,
            system_id,
            start_wal,
            stop_wal,
        })
    }
}

impl PostgresSource {
    /// The WAL from the start segment through the stop segment, read now
    /// that the stop has written the end-of-backup record, plus timeline
    /// history files, which recovery on a later timeline needs. Returns how
    /// many files were added.
    fn append_wal<W: ArtifactOut>(
        &self,
        tar: &mut tar::Builder<W>,
        ctx: &SourceCtx,
        report: &mut SourceReport,
        pgdata: &Path,
        stopped: &Stopped,
    ) -> Result<usize> {
        let (start_wal, stop_wal) = (&stopped.start_wal, &stopped.stop_wal);
        let wal_dir = pgdata.join("pg_wal");
        let mut names: Vec<String> = fs::read_dir(&wal_dir)
            .ctx("listing", &wal_dir)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        // Fixed-width hex names: text order is timeline, then position.
        let wanted: Vec<&String> = names
            .iter()
            .filter(|n| {
                (crate::wal::position::is_segment_name(n)
                    && n.as_str() >= start_wal.as_str()
                    && n.as_str() <= stop_wal.as_str())
                    || n.ends_with(".history")
            })
            .collect();
        for expect in [start_wal, stop_wal] {
            if !names.contains(expect) {
                return Err(Error::Source(format!(
                    "WAL segment {expect} is gone from {} before it could be copied; the backup is not usable (give the user REPLICATION rights so a slot keeps WAL)",
                    wal_dir.display()
                )));
            }
        }
        for n in &wanted {
            self.files
                .append_file(tar, ctx, report, &wal_dir.join(n.as_str()))?;
        }
        Ok(wanted.len())
    }
}

/// `backup_label` (and `tablespace_map`, when there are tablespaces), which
/// recovery reads first: written into PGDATA as the stop returned them.
fn append_label_files<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    report: &mut SourceReport,
    pgdata: &Path,
    stopped: &Stopped,
) -> Result<()> {
    let root_meta = fs::metadata(pgdata).ctx("reading", pgdata)?;
    FilesSource::append_bytes(
        tar,
        report,
        &pgdata.join("backup_label"),
        stopped.labelfile.as_bytes(),
        &root_meta,
    )?;
    if let Some(map) = stopped.spcmap.as_ref().filter(|m| !m.is_empty()) {
        FilesSource::append_bytes(
            tar,
            report,
            &pgdata.join("tablespace_map"),
            map.as_bytes(),
            &root_meta,
        )?;
    }
    Ok(())
}

/// The major version an artifact was taken on, if it is a postgres one.
pub fn artifact_major(meta: &serde_json::Value) -> Option<u64> {
    meta.get("major")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_files_are_left_out_but_their_folders_kept() {
        let root = Path::new("/var/lib/postgresql/data");
        for (p, out) in [
            ("pg_wal", false),
            ("pg_wal/000000010000000000000001", true),
            ("pg_wal/archive_status", true),
            ("pg_stat_tmp/global.stat", true),
            ("postmaster.pid", true),
            ("base/1/pg_internal.init", true),
            ("base/pgsql_tmp", true),
            ("base/1/1259", false),
            ("global/pg_control", false),
            ("backup_label", true),
            ("postgresql.conf", false),
        ] {
            assert_eq!(excluded(root, &root.join(p)), out, "{p}");
        }
    }

    #[test]
    fn reads_the_start_segment_from_the_label() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nLABEL: lifeboat x\n";
        assert_eq!(
            start_wal_file(label).as_deref(),
            Some("000000010000000000000002")
        );
        assert_eq!(label_field(label, "LABEL:"), Some("lifeboat x"));
    }
}
