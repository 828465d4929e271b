//! Sources produce a consistent set of tar entries. One trait for the seam,
//! one enum for the closed set of implementations.

pub mod files;
pub mod postgres;

use std::io::Write;
use std::sync::Arc;

use crate::progress::{Cancel, Progress};
use crate::Result;

pub use files::FilesSource;
pub use postgres::{PgConn, PostgresSource};

/// What a source reports once all its entries are written.
#[derive(Debug, Default, Clone)]
pub struct SourceReport {
    pub entries: u64,
    pub bytes_in: u64,
    pub warnings: Vec<String>,
    pub meta: serde_json::Value,
}

/// At most this many warnings go into a manifest; the rest are counted.
/// A volume full of churning temp files must not make a manifest huge.
pub const MAX_WARNINGS: usize = 100;

impl SourceReport {
    pub fn warn(&mut self, w: String) {
        tracing::warn!("{w}");
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(w);
        } else if self.warnings.len() == MAX_WARNINGS {
            self.warnings
                .push("more warnings were left out; see the sidecar's log".into());
        }
    }
}

pub struct SourceCtx {
    pub progress: Arc<Progress>,
    pub cancel: Cancel,
}

pub trait Source {
    /// `files`, `postgres`, ...: the suffix of artifact ids.
    fn kind(&self) -> &'static str;
    /// Absolute paths this source covers, for the manifest.
    fn paths(&self) -> Vec<String>;
    /// Writes every entry into `tar`. Runs on a blocking thread.
    fn write_tar<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        ctx: &SourceCtx,
    ) -> Result<SourceReport>;
}

pub enum AnySource {
    Files(FilesSource),
    Postgres(PostgresSource),
}

impl Source for AnySource {
    fn kind(&self) -> &'static str {
        match self {
            AnySource::Files(s) => s.kind(),
            AnySource::Postgres(s) => s.kind(),
        }
    }
    fn paths(&self) -> Vec<String> {
        match self {
            AnySource::Files(s) => s.paths(),
            AnySource::Postgres(s) => s.paths(),
        }
    }
    fn write_tar<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        ctx: &SourceCtx,
    ) -> Result<SourceReport> {
        match self {
            AnySource::Files(s) => s.write_tar(tar, ctx),
            AnySource::Postgres(s) => s.write_tar(tar, ctx),
        }
    }
}
