//! What the sources need from the settings, gathered in one place: which
//! source, its connection, which databases, where dumps spool. The config
//! section that reads them lives in `config/sources.rs`; this side turns
//! them into the source a backup runs and the server a load goes into.

use std::path::PathBuf;

use super::any::{AnyLoader, AnySource};
use super::arangodb::{ArangoConn, ArangoSource};
use super::couchdb::{CouchConn, CouchSource};
use super::databases::DbFilter;
use super::files::FilesSource;
use super::kind::SourceKind;
use super::pg_dump::PgDumpSource;
use super::postgres::{PgConn, PostgresSource};
use crate::manifest::{Layout, Manifest};

/// How the postgres source backs up (`LIFEBOAT_POSTGRES_MODE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PgMode {
    /// PGDATA and WAL: restored before the server starts, same major only.
    #[default]
    Physical,
    /// `pg_dump` per database: loaded after the server starts, any newer major.
    Logical,
}

/// The source settings, validated (by `config`, which refuses an unknown
/// source name, so `kind` is never `Unknown` here).
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// `LIFEBOAT_SOURCE`.
    pub kind: SourceKind,
    /// `LIFEBOAT_POSTGRES_MODE`.
    pub postgres_mode: PgMode,
    /// `PG*` connection settings, for the postgres source.
    pub postgres: PgConn,
    /// `PG_MAJOR`: restore refuses postgres artifacts of another major version.
    pub pg_major: Option<u64>,
    /// `LIFEBOAT_DATABASES`: which databases a logical dump covers.
    pub databases: DbFilter,
    /// `LIFEBOAT_COUCHDB_URL` and `COUCHDB_USER` / `COUCHDB_PASSWORD`.
    pub couchdb: CouchConn,
    /// `LIFEBOAT_ARANGODB_*` (password also from `ARANGO_ROOT_PASSWORD`).
    pub arangodb: ArangoConn,
    /// Where dumps wait for their tar header: `TMPDIR`, else `/tmp`.
    pub spool_dir: PathBuf,
    /// `LIFEBOAT_POSTGRES_WAL=on` (physical postgres only): the continuous
    /// WAL archive's settings.
    pub wal: Option<crate::wal::settings::WalSettings>,
}

impl SourceSettings {
    /// The physical `postgres` source: the only one with archived WAL.
    pub fn is_physical_postgres(&self) -> bool {
        self.kind == SourceKind::Postgres && self.postgres_mode == PgMode::Physical
    }

    /// The source a backup runs over `paths`. `files` is the walker the
    /// caller set up (what to skip); the physical postgres source reads
    /// PGDATA through it.
    pub fn source(&self, paths: &[PathBuf], files: FilesSource) -> AnySource {
        let paths = paths.to_vec();
        let (databases, spool_dir) = (self.databases.clone(), self.spool_dir.clone());
        match (&self.kind, self.postgres_mode) {
            (SourceKind::CouchDb, _) => AnySource::CouchDb(CouchSource {
                conn: self.couchdb.clone(),
                databases,
                paths,
                spool_dir,
            }),
            (SourceKind::ArangoDb, _) => AnySource::ArangoDb(ArangoSource {
                conn: self.arangodb.clone(),
                databases,
                paths,
                spool_dir,
            }),
            (SourceKind::Postgres, PgMode::Physical) => {
                AnySource::Postgres(PostgresSource::new(files, self.postgres.clone()))
            }
            (SourceKind::Postgres, PgMode::Logical) => AnySource::PgDump(PgDumpSource {
                conn: self.postgres.clone(),
                databases,
                paths,
                spool_dir,
            }),
            // `Unknown` never gets past config; files is the safe reading.
            (SourceKind::Files | SourceKind::Unknown(_), _) => AnySource::Files(files),
        }
    }

    /// The server a staged dump of `kind` loads into, if this sidecar can
    /// load that kind (only logical dumps are loaded; files and physical
    /// PostgreSQL are complete once extracted).
    pub fn loader(&self, kind: &SourceKind) -> Option<AnyLoader<'_>> {
        match kind {
            SourceKind::Postgres => Some(AnyLoader::Postgres(&self.postgres)),
            SourceKind::CouchDb => Some(AnyLoader::CouchDb(&self.couchdb)),
            SourceKind::ArangoDb => Some(AnyLoader::ArangoDb(&self.arangodb)),
            SourceKind::Files | SourceKind::Unknown(_) => None,
        }
    }

    /// Whether an artifact may be restored into this pod at all: its source
    /// must be the configured one, and a physical PostgreSQL one must be of
    /// the server's major version.
    pub fn fits(&self, m: &Manifest) -> Result<(), String> {
        if m.source != self.kind {
            return Err(format!(
                "artifact is a {} backup, but this pod's LIFEBOAT_SOURCE is {}; refused",
                m.source, self.kind
            ));
        }
        if m.source == SourceKind::Postgres {
            let want = match self.postgres_mode {
                PgMode::Physical => Layout::Paths,
                PgMode::Logical => Layout::Logical,
            };
            if m.layout != want {
                let name = |l: Layout| {
                    if l == Layout::Paths {
                        "physical"
                    } else {
                        "logical"
                    }
                };
                return Err(format!(
                    "artifact is a {} PostgreSQL backup, but LIFEBOAT_POSTGRES_MODE is {}; refused",
                    name(m.layout),
                    name(want),
                ));
            }
        }
        // A server refuses a data directory of another major version at start;
        // better a clear error now than a crash loop later. A logical dump loads
        // into a newer server, so only physical ones are checked.
        let major = super::postgres::artifact_major(&m.source_meta);
        if let (Some(want), Some(got), Layout::Paths) = (self.pg_major, major, m.layout) {
            if want != got {
                return Err(format!("taken on PostgreSQL {got}, but PG_MAJOR is {want}"));
            }
        }
        Ok(())
    }
}
