//! One error type for the library. Each variant names what failed; `main` in
//! each binary decides the exit code from the variant.

use std::io;
use std::path::Path;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Settings are wrong. Every problem is listed, one per line.
    #[error("invalid configuration ({} problem{}):\n{}", .0.len(), if .0.len() == 1 { "" } else { "s" }, crate::problem::format_problems(.0))]
    Config(Vec<crate::problem::Problem>),

    /// A local file operation failed; `what` says which and where.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },

    /// The data to back up cannot be read as configured (e.g. a path is missing).
    /// The sidecar reports it and tries again at the next scheduled run.
    #[error("source: {0}")]
    Source(String),

    /// A pre- or post-backup hook failed, did not finish in time, or could
    /// not be started.
    #[error("hook {0}")]
    Hook(String),

    /// The Kubernetes API refused or failed a call lifeboat needed.
    #[error("Kubernetes API: {0}")]
    Kube(String),

    /// A worker thread of ours died: a bug, not the data or the settings.
    #[error("internal error: {0}; this is a bug in lifeboat, please report it with the log")]
    Internal(String),

    /// A restored dump still waits to be loaded (or was refused), so the
    /// pod is not ready.
    #[error("{0}")]
    NotReady(String),

    /// A target could not store or serve an artifact.
    #[error("target {target}: {message}")]
    Target { target: String, message: String },

    /// An artifact failed verification: checksum, size, compression or tar structure.
    #[error("artifact {id} is not usable: {reason}")]
    Corrupt { id: String, reason: String },

    /// A tar entry would land outside the destination; the artifact is refused.
    #[error("artifact {id} refused: entry {entry:?} {reason}")]
    UnsafeEntry {
        id: String,
        entry: String,
        reason: String,
    },

    /// Artifacts exist but none could be restored. The app must not start on
    /// an empty volume while a history exists that a person can still rescue.
    #[error("{}", nothing_restorable(*.tried, .failures))]
    NothingRestorable { tried: usize, failures: Vec<String> },

    /// Restoring the newest good artifact failed for a reason that may pass
    /// (a store that stalls, a full or failing disk) after every retry. No
    /// older artifact is tried: that would bring back older data unasked.
    #[error("{what} failed after {attempts} attempts: {cause}; no older artifact was tried (it would bring back older data). Live data was left as it was: fix the cause and restart the pod, or pick an artifact by hand with `{cmd} restore --to DIR --id ID`", cmd = crate::cli::SIDECAR_COMMAND)]
    RestoreStopped {
        what: String,
        cause: String,
        attempts: u32,
    },

    /// The server refused a restored dump for a reason retrying cannot fix
    /// (a catalog error, an extension the server lacks). The sidecar stops
    /// retrying the load; the staged dump stays for a person.
    #[error("{what} was refused by the server, and retrying cannot fix that: {cause}")]
    LoadRefused { what: String, cause: String },

    /// `verify` re-read artifacts and some failed; each was reported as it failed.
    #[error("{failed} of {checked} artifact(s) failed verification; see the FAILED lines")]
    VerifyFailed { failed: usize, checked: usize },

    /// An artifact or ID asked for by name does not exist.
    #[error("no committed artifact with id {0:?} (run `{cmd} list`)", cmd = crate::cli::SIDECAR_COMMAND)]
    NotFound(String),

    /// A restore drill could not be carried out (nothing restored, the
    /// artifact gone, its record not written).
    #[error("restore drill: {0}")]
    Drill(String),

    /// A restore drill ran and did not pass (failed or inconclusive).
    #[error(
        "the restore drill of {id} {}: {}; it printed: {output}", .verdict.as_str().to_uppercase(), .verdict.meaning()
    )]
    DrillFailed {
        id: String,
        verdict: crate::drill::Verdict,
        output: String,
    },

    /// The work was cancelled (shutdown); nothing was committed.
    #[error("cancelled before completion; nothing was committed")]
    Cancelled,
}

impl Error {
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// Whether the error proves the artifact itself bad (damaged, hostile,
    /// or not this pod's), so a restore may try the next candidate. Every
    /// other failure (a disk, a store, a key) says nothing about the
    /// artifact, and moving on to an older one would bring back older data
    /// without anyone deciding so (docs/ARCHITECTURE.md §6).
    pub fn proves_artifact_bad(&self) -> bool {
        matches!(self, Error::Corrupt { .. } | Error::UnsafeEntry { .. })
    }

    /// The id of the artifact this error proves bad: with a chain, the
    /// link that failed, which may be older than the one asked for.
    pub fn bad_artifact_id(&self) -> Option<&str> {
        match self {
            Error::Corrupt { id, .. } | Error::UnsafeEntry { id, .. } => Some(id),
            _ => None,
        }
    }

    /// The process exit code for this error: 64 (EX_USAGE) for settings a
    /// person must fix, 1 for everything else. Both binaries use it.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => 64,
            _ => 1,
        }
    }

    /// Whether the same operation may succeed later without a person changing anything.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Io { .. }
                | Error::Source(_)
                | Error::Hook(_)
                | Error::Kube(_)
                | Error::Internal(_)
                | Error::Target { .. }
                | Error::Cancelled
                | Error::RestoreStopped { .. }
        )
    }
}

/// Adds the operation and path to an `io::Error`.
pub trait IoContext<T> {
    fn ctx(self, verb: &str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, verb: &str, path: &Path) -> Result<T> {
        self.map_err(|e| Error::io(format!("{verb} {}", path.display()), e))
    }
}

/// An error with all its causes, `outer: inner: innermost`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// [`Error::NothingRestorable`]'s words: "none verified" only when some
/// artifact was tried.
fn nothing_restorable(tried: usize, failures: &[String]) -> String {
    let lines = failures.join("\n");
    match (tried, failures.is_empty()) {
        (0, true) => format!(
            "no artifact fits what was asked for (`{} list` shows what the targets hold); the volume was left untouched",
            crate::cli::SIDECAR_COMMAND
        ),
        (0, false) => format!(
            "no artifact could be tried (each was unreadable or does not fit); the volume was left untouched:\n{lines}"
        ),
        _ => format!(
            "{tried} artifact(s) found but none verified; the volume was left untouched:\n{lines}"
        ),
    }
}
