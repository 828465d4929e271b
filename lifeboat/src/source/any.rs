//! The closed sets of implementations: the source a pod backs up, and the
//! server a staged dump loads into. Each dispatches to its one
//! implementation; adding a database adds a variant here.

use std::path::Path;

use super::arangodb::{self, ArangoConn, ArangoSource};
use super::couchdb::{self, CouchConn, CouchSource};
use super::files::FilesSource;
use super::kind::SourceKind;
use super::load::Load;
use super::pg_dump::{self, PgDumpSource};
use super::postgres::{PgConn, PostgresSource};
use super::seam::{Source, SourceCtx, SourceReport};
use crate::compression::ArtifactOut;
use crate::manifest::{Layout, Manifest};
use crate::progress::Cancel;
use crate::Result;

/// The source a pod backs up: one of the closed set.
pub enum AnySource {
    Files(FilesSource),
    Postgres(PostgresSource),
    PgDump(PgDumpSource),
    CouchDb(CouchSource),
    ArangoDb(ArangoSource),
}

impl Source for AnySource {
    fn kind(&self) -> SourceKind {
        match self {
            AnySource::Files(s) => s.kind(),
            AnySource::Postgres(s) => s.kind(),
            AnySource::PgDump(s) => s.kind(),
            AnySource::CouchDb(s) => s.kind(),
            AnySource::ArangoDb(s) => s.kind(),
        }
    }
    fn paths(&self) -> Vec<String> {
        match self {
            AnySource::Files(s) => s.paths(),
            AnySource::Postgres(s) => s.paths(),
            AnySource::PgDump(s) => s.paths(),
            AnySource::CouchDb(s) => s.paths(),
            AnySource::ArangoDb(s) => s.paths(),
        }
    }
    fn layout(&self) -> Layout {
        match self {
            AnySource::Files(s) => s.layout(),
            AnySource::Postgres(s) => s.layout(),
            AnySource::PgDump(s) => s.layout(),
            AnySource::CouchDb(s) => s.layout(),
            AnySource::ArangoDb(s) => s.layout(),
        }
    }
    fn write_tar<W: ArtifactOut>(
        &self,
        tar: &mut tar::Builder<W>,
        ctx: &SourceCtx,
    ) -> Result<SourceReport> {
        match self {
            AnySource::Files(s) => s.write_tar(tar, ctx),
            AnySource::Postgres(s) => s.write_tar(tar, ctx),
            AnySource::PgDump(s) => s.write_tar(tar, ctx),
            AnySource::CouchDb(s) => s.write_tar(tar, ctx),
            AnySource::ArangoDb(s) => s.write_tar(tar, ctx),
        }
    }
}

/// The running server a staged logical dump loads into.
pub enum AnyLoader<'a> {
    Postgres(&'a PgConn),
    CouchDb(&'a CouchConn),
    ArangoDb(&'a ArangoConn),
}

impl Load for AnyLoader<'_> {
    async fn ready(&self) -> Result<()> {
        match self {
            AnyLoader::Postgres(c) => pg_dump::ready(c).await,
            AnyLoader::CouchDb(c) => couchdb::ready(c).await,
            AnyLoader::ArangoDb(c) => arangodb::ready(c).await,
        }
    }

    async fn load(&self, dir: &Path, m: &Manifest, cancel: &Cancel) -> Result<()> {
        match self {
            AnyLoader::Postgres(c) => pg_dump::load(c, dir, m, cancel).await,
            AnyLoader::CouchDb(c) => couchdb::load(c, dir, m, cancel).await,
            AnyLoader::ArangoDb(c) => arangodb::load(c, dir, m, cancel).await,
        }
    }
}
