//! Sources produce a consistent set of tar entries, and the logical ones
//! load them back into a running server. The seams are in `seam.rs`
//! (backup) and `load.rs` (restore); this file holds the closed set of
//! implementations and re-exports what callers use (docs/ARCHITECTURE.md §3).

mod any;
pub mod arangodb;
pub mod couchdb;
pub mod databases;
pub mod files;
mod incompressible;
pub mod increment;
pub mod kind;
pub mod listing;
pub mod load;
mod open;
pub mod pg_dump;
pub mod pg_roles;
pub mod postgres;
pub mod read_ahead;
pub mod seam;
pub mod settings;
pub mod stat_at;

pub use any::{AnyLoader, AnySource};
pub use arangodb::{ArangoConn, ArangoSource};
pub use couchdb::{CouchConn, CouchSource};
pub use databases::DbFilter;
pub use files::FilesSource;
pub use kind::SourceKind;
pub use load::Load;
pub use pg_dump::PgDumpSource;
pub use postgres::{PgConn, PostgresSource};
pub use seam::{
    append_stream, path_strings, Source, SourceCtx, SourceReport, Spool, MAX_WARNINGS, READ_BUFFER,
};
pub use settings::{PgMode, SourceSettings};
