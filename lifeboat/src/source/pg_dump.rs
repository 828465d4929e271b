//! The logical mode of the `postgres` source (`LIFEBOAT_POSTGRES_MODE=logical`):
//! `pg_dump -Fc` of each database plus the roles as SQL, under `postgres/`
//! in the tar. It survives major upgrades and is smaller than PGDATA, but
//! needs a running server to load: the init container stages it, and the
//! sidecar loads it with `pg_restore --create` once the server answers
//! (docs/ARCHITECTURE.md, "The pending load").
//!
//! A tar entry's size comes before its bytes, so each database's dump is
//! spooled to an unlinked file in `TMPDIR` first: memory stays flat, disk
//! holds one database's dump at a time, and nothing is left behind.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tracing::info;

mod toc;

use super::kind::SourceKind;
use super::pg_roles::{self, quote_ident};
use super::postgres::PgConn;
use super::seam::{append_stream, Dump, Logical, SourceCtx, SourceReport, Spool};
use crate::error::IoContext;
use crate::manifest::Manifest;
use crate::progress::Cancel;
use crate::source::load::LoadState;
use crate::{program, Error, Result};

/// The folder inside the tar (and the staged dump) holding this source's files.
pub const DUMP_DIR: &str = "postgres";
pub const ROLES_FILE: &str = "roles.sql";
/// Where loads connect to create and drop databases: every cluster has it,
/// and it is never one of the databases being replaced.
const MAINTENANCE_DB: &str = "template1";

pub type PgDumpSource = Logical<PgConn>;

/// One database in `source_meta.databases`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DumpedDb {
    pub name: String,
    /// File name under `postgres/` in the tar.
    pub file: String,
    pub size: u64,
}

/// The manifest's `source_meta` for a logical PostgreSQL dump, written and
/// read as this type (a load needs only `databases`).
#[derive(Debug, Serialize, Deserialize)]
struct LogicalMeta {
    #[serde(default)]
    mode: String,
    #[serde(default)]
    server_version: String,
    #[serde(default)]
    server_version_num: i64,
    #[serde(default)]
    major: i64,
    #[serde(default)]
    pg_dump_version: String,
    #[serde(default)]
    roles: usize,
    databases: Vec<DumpedDb>,
}

/// `<database>.dump`, with the name made safe as a file name.
pub fn dump_file_name(db: &str) -> String {
    format!("{}.dump", crate::artifact::safe_file_name(db))
}

/// A libpq connection string naming only the database; host, port and user
/// come from the environment ([`PgConn::libpq_env`]). A bare `-d name` would
/// be parsed as a connection string when the name contains `=`.
fn conninfo(db: &str) -> String {
    format!("dbname='{}'", db.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn missing_tool(name: &str) -> Error {
    Error::Source(format!(
        "{name} is not on PATH; LIFEBOAT_POSTGRES_MODE=logical runs PostgreSQL's client tools \
         (run the sidecar from an image that has them, e.g. the postgres image, or use the physical mode)"
    ))
}

/// Checked at sidecar start, so a missing tool is a setup error, not a
/// failed backup at 2 AM.
pub fn check_tools() -> std::result::Result<(), String> {
    for tool in ["pg_dump", "pg_restore"] {
        if program::find(tool).is_none() {
            return Err(missing_tool(tool).to_string());
        }
    }
    Ok(())
}

impl Dump for PgConn {
    const KIND: SourceKind = SourceKind::Postgres;

    fn dump<W: std::io::Write>(
        this: &PgDumpSource,
        tar: &mut tar::Builder<W>,
        ctx: &SourceCtx,
    ) -> Result<SourceReport> {
        let pg_dump = program::find("pg_dump").ok_or_else(|| missing_tool("pg_dump"))?;
        let rt = Handle::current();
        let conn = &this.conn;
        let client = rt.block_on(conn.connect())?;
        let sql = |q: &str| rt.block_on(client.query(q, &[])).map_err(|e| conn.error(e));
        let version: String = sql("SHOW server_version")?[0].get(0);
        let version_num: i64 = sql("SHOW server_version_num")?[0]
            .get::<_, String>(0)
            .parse()
            .unwrap_or(0);
        let existing: Vec<String> = sql(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
        let names = this
            .databases
            .select(&existing)
            .map_err(|m| Error::Source(format!("{}: {m}", conn.describe())))?;
        let mut report = SourceReport::default();
        let roles = rt.block_on(pg_roles::dump(&client, conn))?;
        if !roles.with_passwords && roles.count > 0 {
            report.warn("role passwords could not be read (that needs a superuser); roles are restored without passwords".into());
        }
        append_stream(
            tar,
            &mut report,
            &format!("{DUMP_DIR}/{ROLES_FILE}"),
            roles.sql.len() as u64,
            roles.sql.as_bytes(),
        )?;
        let tool_version = Command::new(&pg_dump)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();

        let mut dumped = Vec::new();
        for db in &names {
            if crate::progress::is_cancelled(&ctx.cancel) {
                return Err(Error::Cancelled);
            }
            let spool = Spool::new(&this.spool_dir, format!("the dump of {db:?}"))?;
            let mut cmd = Command::new(&pg_dump);
            cmd.args(["--format=custom", "--no-password"])
                .arg(format!("--dbname={}", conninfo(db)))
                .envs(conn.libpq_env())
                .stdout(spool.file().try_clone().map_err(|e| spool.error(e))?);
            let said = program::run(cmd, &format!("pg_dump of database {db:?}"), &ctx.cancel)?;
            for line in said.lines().filter(|l| !l.trim().is_empty()) {
                report.warn(format!("pg_dump {db:?}: {line}"));
            }
            let file = dump_file_name(db);
            let size = spool.append_to(tar, &mut report, &format!("{DUMP_DIR}/{file}"))?;
            ctx.progress.add_entry();
            ctx.progress.add_bytes(size);
            info!(database = %db, size, "database dumped");
            dumped.push(DumpedDb {
                name: db.clone(),
                file,
                size,
            });
        }
        let meta = LogicalMeta {
            mode: "logical".into(),
            server_version: version,
            server_version_num: version_num,
            major: version_num / 10000,
            pg_dump_version: tool_version,
            roles: roles.count,
            databases: dumped,
        };
        Ok(report.with_meta(&meta))
    }
}

/// Loads a staged dump (`dir` holds `postgres/…`) into the running server:
/// roles first, then each database dropped (only if it is one we started
/// loading, or one without tables, e.g. the image's fresh `POSTGRES_DB`) and
/// recreated by `pg_restore --create`.
pub async fn load(conn: &PgConn, dir: &Path, m: &Manifest, cancel: &Cancel) -> Result<()> {
    let pg_restore = program::find("pg_restore").ok_or_else(|| missing_tool("pg_restore"))?;
    let (meta, mut state): (LogicalMeta, LoadState) = super::load::resume(dir, m)?;
    let admin = conn.with_dbname(MAINTENANCE_DB);
    let client = admin.connect().await?;
    let version_num: i64 = client
        .query_one("SHOW server_version_num", &[])
        .await
        .map_err(|e| conn.error(e))?
        .get::<_, String>(0)
        .parse()
        .unwrap_or(0);
    let roles = dir.join(DUMP_DIR).join(ROLES_FILE);
    if roles.is_file() {
        let sql = fs::read_to_string(&roles).ctx("reading", &roles)?;
        client.batch_execute(&sql).await.map_err(|e| {
            Error::Source(format!("loading {}: {}", roles.display(), conn.error(e)))
        })?;
        info!("roles loaded");
    }
    for db in super::load::to_load(&state, m, &meta.databases, |d| (&d.name, &d.file))? {
        let exists = !client
            .query("SELECT 1 FROM pg_database WHERE datname = $1", &[&db.name])
            .await
            .map_err(|e| conn.error(e))?
            .is_empty();
        if exists && !state.started.contains(&db.name) {
            let tables = user_tables(&conn.with_dbname(&db.name)).await?;
            if tables > 0 {
                return Err(Error::Source(format!(
                    "database {:?} already exists with {tables} table(s); lifeboat does not replace data it did not load. \
                     Drop that database to load the backup, or remove {} to keep what is there",
                    db.name,
                    dir.display()
                )));
            }
        }
        if !state.started.contains(&db.name) {
            state.started.push(db.name.clone());
            state.write(dir)?;
        }
        if exists {
            let force = if version_num >= 130000 {
                " WITH (FORCE)"
            } else {
                ""
            };
            client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {}{force}",
                    quote_ident(&db.name)
                ))
                .await
                .map_err(|e| conn.error(e))?;
        }
        let file = dir.join(DUMP_DIR).join(&db.file);
        let restore = Restore {
            pg_restore: &pg_restore,
            conn,
            file: &file,
            db: &db.name,
            cancel,
        };
        restore.run(dir).await?;
        state.finish(dir, &db.name)?;
        info!(database = %db.name, size = db.size, "database loaded");
    }
    Ok(())
}

/// One database's `pg_restore`, in the way its dump needs.
struct Restore<'a> {
    pg_restore: &'a Path,
    conn: &'a PgConn,
    file: &'a Path,
    db: &'a str,
    cancel: &'a Cancel,
}

impl Restore<'_> {
    /// A plain database: one `pg_restore --create`. One that uses
    /// TimescaleDB: its documented restore procedure (restore mode on
    /// while loading, `timescaledb_post_restore()` after), so chunks,
    /// compressed chunks and continuous aggregates come back whole and its
    /// background jobs never run against a half-loaded database.
    async fn run(&self, dir: &Path) -> Result<()> {
        // Work files beside the staged dump, replaced by each attempt.
        let work = |ext: &str| dir.join(format!("{}.{ext}", self.file_name()));
        let toc_file = work("toc");
        self.tool(
            &["--create", "--list"],
            None,
            Some(&toc_file),
            "listing the contents of",
        )
        .await?;
        let (create, extension, rest) = (
            work("create.list"),
            work("extension.list"),
            work("rest.list"),
        );
        let split = toc::split(&toc_file, &create, &extension, &rest)?;
        if !split.timescaledb {
            return self
                .tool(
                    &["--create", "--exit-on-error"],
                    Some(MAINTENANCE_DB),
                    None,
                    "pg_restore of",
                )
                .await;
        }
        info!(database = %self.db, "the dump uses TimescaleDB; loading it in TimescaleDB's restore mode");
        // 1. The database with its properties, owner, comment and grants.
        self.tool(
            &["--create", "--exit-on-error", &use_list(&create)],
            Some(MAINTENANCE_DB),
            None,
            "creating the database of",
        )
        .await?;
        // 2. The extension as dumped (its schema), then restore mode.
        let ext_sql = work("extension.sql");
        self.tool(
            &[&use_list(&extension)],
            None,
            Some(&ext_sql),
            "reading the extension of",
        )
        .await?;
        let sql = crate::small_file::read(&ext_sql, MAX_EXTENSION_SQL).ctx("reading", &ext_sql)?;
        // pg_restore's script output has psql meta-commands (`\restrict`
        // since 15.14) that only psql understands; the SQL is the rest.
        let sql: String = sql
            .lines()
            .filter(|l| !l.starts_with('\\'))
            .collect::<Vec<_>>()
            .join("\n");
        let client = self.conn.with_dbname(self.db).connect().await?;
        let refused = |e| self.refused("preparing TimescaleDB's restore mode in", e);
        client.batch_execute(&sql).await.map_err(refused)?;
        let schema: String = client
            .query_one(
                "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace \
                 WHERE e.extname = 'timescaledb'",
                &[],
            )
            .await
            .map_err(refused)?
            .get(0);
        let schema = quote_ident(&schema);
        client
            .batch_execute(&format!("SELECT {schema}.timescaledb_pre_restore()"))
            .await
            .map_err(refused)?;
        drop(client);
        // 3. Everything else, in restore mode (pre_restore set it for the
        // database, so pg_restore's own connections have it too).
        self.tool(
            &["--exit-on-error", &use_list(&rest)],
            Some(self.db),
            None,
            "pg_restore of",
        )
        .await?;
        // 4. Restore mode off, background jobs back.
        let client = self.conn.with_dbname(self.db).connect().await?;
        client
            .batch_execute(&format!("SELECT {schema}.timescaledb_post_restore()"))
            .await
            .map_err(|e| self.refused("finishing TimescaleDB's restore of", e))?;
        for p in [toc_file, create, extension, rest, ext_sql] {
            let _ = fs::remove_file(p);
        }
        Ok(())
    }

    fn file_name(&self) -> String {
        self.file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Runs `pg_restore ARGS FILE` against `dbname` (none: no server, the
    /// output goes to `out`). A failure that is not a lost connection is
    /// the server refusing the dump: retrying cannot fix it.
    async fn tool(
        &self,
        args: &[&str],
        dbname: Option<&str>,
        out: Option<&Path>,
        what: &str,
    ) -> Result<()> {
        let mut cmd = Command::new(self.pg_restore);
        cmd.args(args).arg("--no-password");
        if let Some(d) = dbname {
            cmd.arg(format!("--dbname={}", conninfo(d)));
        }
        match out {
            Some(p) => {
                cmd.arg(format!("--file={}", p.display()));
            }
            None => {
                cmd.stdout(Stdio::null());
            }
        }
        cmd.arg(self.file).envs(self.conn.libpq_env());
        let what = format!("{what} database {:?}", self.db);
        let cancel = self.cancel.clone();
        let label = what.clone();
        let result = tokio::task::spawn_blocking(move || program::run(cmd, &label, &cancel))
            .await
            .map_err(|e| Error::Internal(format!("the load worker crashed: {e}")))?;
        match result {
            Ok(said) => {
                for line in said.lines().filter(|l| !l.trim().is_empty()) {
                    tracing::warn!(database = %self.db, "pg_restore: {line}");
                }
                Ok(())
            }
            Err(Error::Source(m)) if dbname.is_some() && !toc::is_connection_failure(&m) => {
                Err(Error::LoadRefused { what, cause: m })
            }
            Err(e) => Err(e),
        }
    }

    /// A server error in SQL the load runs; a lost connection stays retryable.
    fn refused(&self, what: &str, e: tokio_postgres::Error) -> Error {
        match e.as_db_error() {
            Some(d)
                if !(d.code().code().starts_with("08") || d.code().code().starts_with("57")) =>
            {
                Error::LoadRefused {
                    what: format!("{what} database {:?}", self.db),
                    cause: format!("{}: {}", self.conn.describe(), d.message()),
                }
            }
            _ => self.conn.error(e),
        }
    }
}

/// `pg_restore -L` with a list file.
fn use_list(list: &Path) -> String {
    format!("--use-list={}", list.display())
}

/// The extension's SQL as `pg_restore` prints it: a few lines.
const MAX_EXTENSION_SQL: u64 = 64 * 1024;

/// Tables a person or an app created in `conn`'s database.
async fn user_tables(conn: &PgConn) -> Result<i64> {
    let client = conn.connect().await?;
    Ok(client
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND n.nspname NOT LIKE 'pg_toast%'",
            &[],
        )
        .await
        .map_err(|e| conn.error(e))?
        .get(0))
}

/// Whether the server answers at all: the sidecar waits for this before a load.
pub async fn ready(conn: &PgConn) -> Result<()> {
    conn.with_dbname(MAINTENANCE_DB).connect().await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_never_form_paths() {
        assert_eq!(dump_file_name("app"), "app.dump");
        assert_eq!(dump_file_name("a/b"), "a%2Fb.dump");
        assert_eq!(dump_file_name(".."), "%2E..dump");
        assert_eq!(dump_file_name("50% off"), "50%25 off.dump");
        assert_eq!(dump_file_name("Ünï \"q\""), "Ünï \"q\".dump");
    }

    #[test]
    fn conninfo_quotes_every_name() {
        assert_eq!(conninfo("a b=c"), "dbname='a b=c'");
        assert_eq!(conninfo(r"it's\"), r"dbname='it\'s\\'");
    }
}
