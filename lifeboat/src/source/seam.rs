//! The backup half of the source seam: the trait every source implements,
//! what it reports, and the helpers sources share to write tar entries.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use super::databases::DbFilter;
use super::kind::SourceKind;
use crate::compression::ArtifactOut;
use crate::manifest::Layout;
use crate::progress::{Cancel, Progress};
use crate::{Error, Result};

/// Read buffer per file. Large sequential reads keep syscalls few on big files.
pub const READ_BUFFER: usize = 256 * 1024;

/// What a source reports once all its entries are written.
#[derive(Debug, Default, Clone)]
pub struct SourceReport {
    pub entries: u64,
    pub bytes_in: u64,
    pub warnings: Vec<String>,
    pub meta: serde_json::Value,
}

pub use crate::manifest::MAX_WARNINGS;

impl SourceReport {
    /// The report with the source's own facts (`source_meta`), written
    /// from the source's typed meta.
    pub fn with_meta(mut self, meta: &impl serde::Serialize) -> SourceReport {
        self.meta = serde_json::to_value(meta).expect("source_meta serializes");
        self
    }

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
    /// On while a source writes bytes that will not shrink: the encoder
    /// stores them raw (`compression::RawHint`).
    pub raw: crate::compression::RawHint,
}

pub trait Source {
    /// Which source this is: the suffix of artifact ids and the manifest's `source`.
    fn kind(&self) -> SourceKind;
    /// Whether entries are files under their paths or a logical dump.
    fn layout(&self) -> Layout {
        Layout::Paths
    }
    /// Absolute paths this source covers, for the manifest.
    fn paths(&self) -> Vec<String>;
    /// Writes every entry into `tar`. Runs on a blocking thread.
    fn write_tar<W: ArtifactOut>(
        &self,
        tar: &mut tar::Builder<W>,
        ctx: &SourceCtx,
    ) -> Result<SourceReport>;
}

/// Writes one entry that is not a file on disk (a dump, generated SQL),
/// readable by the user who restores it and dated now.
pub fn append_stream<W: Write>(
    tar: &mut tar::Builder<W>,
    report: &mut SourceReport,
    name: &str,
    size: u64,
    data: impl std::io::Read,
) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o600);
    // SAFETY: geteuid/getegid have no preconditions and cannot fail.
    h.set_uid(unsafe { libc::geteuid() } as u64);
    h.set_gid(unsafe { libc::getegid() } as u64);
    h.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
    h.set_size(size);
    tar.append_data(&mut h, name, data)
        .map_err(|e| Error::io(format!("writing the tar entry {name}"), e))?;
    report.entries += 1;
    report.bytes_in += size;
    Ok(())
}

/// A dump whose size is known only at its end, waiting for its tar header
/// (which comes first): an unlinked file in `TMPDIR`, so memory stays flat,
/// the disk holds one dump at a time, and a crash leaves nothing behind.
pub struct Spool {
    file: std::fs::File,
    /// What is being spooled, for errors: `database "app"`.
    what: String,
    dir: std::path::PathBuf,
}

impl Spool {
    pub fn new(dir: &std::path::Path, what: impl Into<String>) -> Result<Spool> {
        let what = what.into();
        match tempfile::tempfile_in(dir) {
            Ok(file) => Ok(Spool {
                file,
                what,
                dir: dir.to_path_buf(),
            }),
            Err(e) => Err(Spool::error_for(&what, dir, e)),
        }
    }

    fn error_for(what: &str, dir: &std::path::Path, e: std::io::Error) -> Error {
        Error::io(
            format!(
                "spooling {what} to {} (TMPDIR; it must hold the largest dump)",
                dir.display()
            ),
            e,
        )
    }

    pub fn error(&self, e: std::io::Error) -> Error {
        Spool::error_for(&self.what, &self.dir, e)
    }

    /// The file, to write into (`&File` is `Write`) or hand to a child.
    pub fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// Appends what was spooled as the tar entry `name`; returns its size.
    pub fn append_to<W: Write>(
        self,
        tar: &mut tar::Builder<W>,
        report: &mut SourceReport,
        name: &str,
    ) -> Result<u64> {
        use std::io::Seek;
        let mut file = self.file;
        let size = file
            .metadata()
            .map_err(|e| Spool::error_for(&self.what, &self.dir, e))?
            .len();
        file.rewind()
            .map_err(|e| Spool::error_for(&self.what, &self.dir, e))?;
        let reader = std::io::BufReader::with_capacity(READ_BUFFER, file);
        append_stream(tar, report, name, size, reader)?;
        Ok(size)
    }
}

/// Paths as the manifest lists them.
pub fn path_strings(paths: &[std::path::PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

/// A logical source: the server it dumps, which databases, its one path
/// (where a restore stages the dump) and where dumps spool (`TMPDIR`).
/// CouchDB, ArangoDB and PostgreSQL's `pg_dump` differ only in [`Dump`].
#[derive(Debug, Clone)]
pub struct Logical<C> {
    pub conn: C,
    /// `LIFEBOAT_DATABASES`; every database by default.
    pub databases: DbFilter,
    pub paths: Vec<PathBuf>,
    /// Where a dump waits for its tar header.
    pub spool_dir: PathBuf,
}

/// The server side of a logical source: how its databases are dumped.
pub trait Dump: Sized {
    const KIND: SourceKind;
    /// Writes every selected database under `<kind>/` in the tar.
    fn dump<W: Write>(
        source: &Logical<Self>,
        tar: &mut tar::Builder<W>,
        ctx: &SourceCtx,
    ) -> Result<SourceReport>;
}

impl<C: Dump> Source for Logical<C> {
    fn kind(&self) -> SourceKind {
        C::KIND
    }

    fn layout(&self) -> Layout {
        Layout::Logical
    }

    fn paths(&self) -> Vec<String> {
        path_strings(&self.paths)
    }

    fn write_tar<W: ArtifactOut>(
        &self,
        tar: &mut tar::Builder<W>,
        ctx: &SourceCtx,
    ) -> Result<SourceReport> {
        C::dump(self, tar, ctx)
    }
}
