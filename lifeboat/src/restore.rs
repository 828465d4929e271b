//! Restore (DESIGN §4): stream the newest artifact into staging folders on
//! the same filesystem as each destination, verify everything, and only then
//! move it into place. A bad artifact is skipped for the next older one.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tracing::{info, warn, Instrument};

use crate::config::RestoreMode;
use crate::encryption::Identities;
use crate::error::IoContext;
use crate::manifest::{Layout, Manifest};
use crate::pending::{self, PENDING_DIR};
use crate::pipe::{self, ChunkReader};
use crate::progress::{self, mib_per_s, Cancel, Progress};
use crate::tar_read::{self, Mapping, Mode, ReadReport};
use crate::target::{AnyTarget, Stored, Target};
use crate::{Error, Result};

pub const RESTORED_MARKER: &str = ".lifeboat-restored";
/// Present while entries are being moved into place. If a restore dies
/// between the first and the last move, the next start sees this and
/// restores again instead of starting the app on half a volume.
pub const RESTORING_MARKER: &str = ".lifeboat-restoring";
const STAGING_PREFIX: &str = ".lifeboat-staging-";

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Restored {
        id: String,
        target: String,
    },
    /// A logical dump was verified and staged in `<path>/.lifeboat-pending`;
    /// the sidecar loads it once the server answers.
    Staged {
        id: String,
        target: String,
    },
    /// No artifact exists anywhere: a first deploy.
    NoArtifacts,
    /// The volume has data (if-empty) or restore is off (never).
    Skipped(String),
}

/// What a folder holds, as far as restore is concerned.
#[derive(Debug, PartialEq, Eq)]
enum State {
    Empty,
    /// A previous restore died while moving entries into place.
    Interrupted,
    HasData,
}

fn state(path: &Path) -> Result<State> {
    let rd = match fs::read_dir(path) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::Empty),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let mut s = State::Empty;
    for ent in rd {
        let name = ent.ctx("reading", path)?.file_name();
        let n = name.as_bytes();
        if n == RESTORING_MARKER.as_bytes() {
            return Ok(State::Interrupted);
        }
        // A staged dump alone is not data: the app never started on it.
        if n == b"lost+found"
            || n.starts_with(STAGING_PREFIX.as_bytes())
            || n == PENDING_DIR.as_bytes()
        {
            continue;
        }
        s = State::HasData;
    }
    Ok(s)
}

/// Restore into the configured paths, as the init container does.
pub async fn restore_newest(
    targets: &[AnyTarget],
    paths: &[PathBuf],
    mode: RestoreMode,
    pg_major: Option<u64>,
    keys: Option<&Identities>,
    progress_every: std::time::Duration,
) -> Result<Outcome> {
    let mut replace = mode == RestoreMode::Always;
    match mode {
        RestoreMode::Never => return Ok(Outcome::Skipped("LIFEBOAT_RESTORE=never".into())),
        RestoreMode::Always => {}
        RestoreMode::IfEmpty => {
            for p in paths {
                match state(p)? {
                    State::Empty => {}
                    State::Interrupted => {
                        warn!(path = %p.display(), "a previous restore was interrupted; restoring again");
                        replace = true;
                    }
                    State::HasData => {
                        return Ok(Outcome::Skipped(format!(
                            "{} has data (LIFEBOAT_RESTORE=if-empty)",
                            p.display()
                        )))
                    }
                }
            }
        }
    }
    let mut tried = 0;
    let mut failures = Vec::new();
    for target in targets {
        let listing = match target.list().await {
            Ok(l) => l,
            Err(e) => {
                warn!(target = %target.describe(), error = %e, "cannot list artifacts; trying the next target");
                failures.push(e.to_string());
                continue;
            }
        };
        for p in &listing.problems {
            warn!(target = %target.describe(), "skipping unreadable manifest: {p}");
            failures.push(p.clone());
        }
        for stored in &listing.artifacts {
            tried += 1;
            // A server refuses a data directory of another major version at
            // start; better a clear error now than a crash loop later.
            // A logical dump loads into a newer server, so only physical ones are checked.
            let major = crate::source::postgres::artifact_major(&stored.manifest.source_meta);
            if let (Some(want), Some(got), "postgres", Layout::Paths) = (
                pg_major,
                major,
                stored.manifest.source.as_str(),
                stored.manifest.layout,
            ) {
                if want != got {
                    warn!(id = %stored.manifest.id, "artifact is from PostgreSQL {got}, PG_MAJOR is {want}; skipped");
                    failures.push(format!(
                        "{}: taken on PostgreSQL {got}, but PG_MAJOR is {want}",
                        stored.manifest.id
                    ));
                    continue;
                }
            }
            let m = &stored.manifest;
            let result = match m.layout {
                Layout::Paths => {
                    let dests: Vec<(PathBuf, PathBuf)> =
                        paths.iter().map(|p| (p.clone(), p.clone())).collect();
                    let finish = Finish::MoveIntoPlace { replace };
                    restore_one(target, stored, &dests, finish, keys, progress_every).await
                }
                Layout::Logical => {
                    let finish = Finish::StageForLoad { root: &paths[0] };
                    let dests = [(logical_origin(m), paths[0].clone())];
                    restore_one(target, stored, &dests, finish, keys, progress_every).await
                }
            };
            let (id, target) = (m.id.clone(), target.describe());
            match result {
                Ok(()) if m.layout == Layout::Logical => return Ok(Outcome::Staged { id, target }),
                Ok(()) => return Ok(Outcome::Restored { id, target }),
                // A missing or wrong age key is not damage: an older
                // artifact would bring back older data without anyone
                // asking for it. A person fixes the key and restarts.
                Err(e @ Error::Config(_)) => return Err(e),
                Err(e) => {
                    warn!(id = %id, target = %target, error = %e, "artifact skipped; trying the next older one");
                    failures.push(format!("{id} on {target}: {e}"));
                }
            }
        }
    }
    if tried == 0 && failures.is_empty() {
        return Ok(Outcome::NoArtifacts);
    }
    Err(Error::NothingRestorable { tried, failures })
}

/// Restore one artifact into a folder for inspection (`restore --to DIR`):
/// each backed-up path lands at `DIR/<path>`, like `tar -xf - -C DIR`.
pub async fn restore_to(
    target: &AnyTarget,
    stored: &Stored,
    dir: &Path,
    keys: Option<&Identities>,
    progress_every: std::time::Duration,
) -> Result<()> {
    let m = &stored.manifest;
    let mut dests: Vec<(PathBuf, PathBuf)> = match m.layout {
        Layout::Paths => m
            .paths
            .iter()
            .map(|p| {
                let origin = PathBuf::from(p);
                let rel = origin.strip_prefix("/").unwrap_or(&origin).to_path_buf();
                (origin, dir.join(rel))
            })
            .collect(),
        // `DIR/postgres/app.dump`, as `tar -xf - -C DIR` would put it.
        Layout::Logical => vec![(logical_origin(m), dir.join(&m.source))],
    };
    if m.kubernetes.is_some() {
        dests.push((
            crate::cluster::tar_origin(),
            dir.join(crate::cluster::TAR_DIR),
        ));
    }
    for (_, d) in &dests {
        if state(d)? != State::Empty {
            return Err(Error::io(
                format!("restoring into {}", d.display()),
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the folder is not empty; pick an empty --to folder",
                ),
            ));
        }
    }
    let finish = Finish::MoveIntoPlace { replace: false };
    restore_one(target, stored, &dests, finish, keys, progress_every).await
}

/// Where a logical dump's entries come from: `<source>/…` in the tar.
fn logical_origin(m: &Manifest) -> PathBuf {
    Path::new("/").join(&m.source)
}

/// What happens once an artifact has been extracted and verified.
enum Finish<'a> {
    /// Files: move the staged entries into each destination.
    MoveIntoPlace { replace: bool },
    /// A logical dump: the staging folder becomes `<root>/.lifeboat-pending`.
    StageForLoad { root: &'a Path },
}

/// `dests` pairs each backed-up path (or a logical dump's `/<source>`) with
/// where it goes now (for a logical dump: the folder to stage it in).
async fn restore_one(
    target: &AnyTarget,
    stored: &Stored,
    dests: &[(PathBuf, PathBuf)],
    finish: Finish<'_>,
    keys: Option<&Identities>,
    progress_every: std::time::Duration,
) -> Result<()> {
    let m = &stored.manifest;
    let span = tracing::info_span!("restore", id = %m.id, target = %target.describe());
    async move {
        info!(size = m.size, entries = m.entries, "restore started");
        let clock = Instant::now();
        // An artifact covers its own paths; restoring it into others would
        // silently skip everything, so say so instead.
        for (origin, _) in dests {
            let covered = match m.layout {
                Layout::Paths => m.paths.iter().any(|p| Path::new(p) == origin),
                Layout::Logical => *origin == logical_origin(m),
            } || (m.kubernetes.is_some() && *origin == crate::cluster::tar_origin());
            if !covered {
                return Err(Error::Corrupt {
                    id: m.id.clone(),
                    reason: format!(
                        "does not contain {} (it holds {})",
                        origin.display(),
                        m.paths.join(", ")
                    ),
                });
            }
        }
        let mut mappings = Vec::new();
        let mut cleanup = Vec::new();
        for (origin, dest) in dests {
            fs::create_dir_all(dest).ctx("creating", dest)?;
            clear_staging(dest)?;
            let staging_root = dest.join(format!("{STAGING_PREFIX}{}", m.id));
            fs::create_dir(&staging_root).ctx("creating the staging folder", &staging_root)?;
            // A logical dump keeps its `<source>/` folder, as in the tar.
            let staging = match finish {
                Finish::MoveIntoPlace { .. } => staging_root.clone(),
                Finish::StageForLoad { .. } => {
                    let s = staging_root.join(&m.source);
                    fs::create_dir(&s).ctx("creating the staging folder", &s)?;
                    s
                }
            };
            cleanup.push(staging_root);
            mappings.push(Mapping {
                origin: origin.clone(),
                staging,
            });
        }
        let result = read(target, m, keys, Some(mappings.clone()), progress_every, "restore").await;
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                for dir in &cleanup {
                    let _ = fs::remove_dir_all(dir);
                }
                return Err(e);
            }
        };
        // Entry warnings were logged as they happened (tar_read::Walker::warn).
        match finish {
            Finish::MoveIntoPlace { replace } => {
                for (i, (_, dest)) in dests.iter().enumerate() {
                    move_into_place(&mappings[i].staging, dest, report.roots[i], replace, m)?;
                }
            }
            Finish::StageForLoad { root } => {
                pending::commit(&cleanup[0], root, m)?;
                info!(dir = %root.join(PENDING_DIR).display(), "dump verified and staged; the sidecar loads it once the server answers");
            }
        }
        let took = clock.elapsed();
        info!(
            bytes_in = report.bytes_in,
            entries = report.entries,
            seconds = took.as_secs_f64(),
            mib_per_s = mib_per_s(report.bytes_in, took),
            "restore completed and verified"
        );
        Ok(())
    }
    .instrument(span)
    .await
}

/// Streams an artifact from `target` through [`tar_read::read_artifact`]:
/// extracting into `mappings`' staging folders, or only checking when `None`.
async fn read(
    target: &AnyTarget,
    m: &Manifest,
    keys: Option<&Identities>,
    mappings: Option<Vec<Mapping>>,
    every: std::time::Duration,
    what: &'static str,
) -> Result<ReadReport> {
    let reader = target.open(m).await?;
    let (tx, rx) = pipe::channel();
    let (chunks, spares) = ChunkReader::recycling(rx, pipe::CHUNK_SIZE);
    let feeder = tokio::spawn(pipe::feed(reader, tx, spares));
    let progress = Arc::new(Progress::default());
    let _report = progress::report(progress.clone(), every, what);
    let manifest = m.clone();
    let keys = keys.cloned();
    let cancel: Cancel = Default::default();
    let res = tokio::task::spawn_blocking(move || {
        let mode = match &mappings {
            Some(m) => Mode::Extract(m),
            None => Mode::Verify,
        };
        tar_read::read_artifact(chunks, &manifest, keys.as_ref(), mode, &progress, &cancel)
    })
    .await
    .map_err(|e| Error::Source(format!("the {what} worker crashed: {e}")))?;
    feeder.abort();
    res
}

/// Re-reads an artifact end to end without writing anything but the
/// verified mark. An encrypted artifact without its key gets its sha256
/// checked only, and is not marked verified (that mark means a restore would
/// read it). A mark that cannot be written does not fail a good artifact: it
/// is logged and returned in [`ReadReport::mark_not_recorded`].
pub async fn verify(
    target: &AnyTarget,
    m: &Manifest,
    keys: Option<&Identities>,
    every: std::time::Duration,
) -> Result<ReadReport> {
    let span = tracing::info_span!("verify", id = %m.id, target = %target.describe());
    async move {
        let mut report = read(target, m, keys, None, every, "verify").await?;
        if !report.contents_checked {
            for w in &report.warnings {
                warn!("{w}");
            }
            info!(sha256 = %report.sha256, "stored bytes match the manifest; contents not checked");
            return Ok(report);
        }
        // Calling a good artifact FAILED because the record of it could not
        // be written (a read-only backup volume) would send a person after
        // damage that is not there.
        if let Err(e) = target.mark_verified(m, Utc::now()).await {
            warn!(error = %e, "artifact verified, but the mark could not be recorded");
            report.mark_not_recorded = Some(e.to_string());
        }
        info!(
            entries = report.entries,
            bytes_in = report.bytes_in,
            "artifact verified"
        );
        Ok(report)
    }
    .instrument(span)
    .await
}

fn clear_staging(dest: &Path) -> Result<()> {
    for ent in fs::read_dir(dest).ctx("reading", dest)? {
        let ent = ent.ctx("reading", dest)?;
        if ent
            .file_name()
            .as_bytes()
            .starts_with(STAGING_PREFIX.as_bytes())
        {
            fs::remove_dir_all(ent.path()).ctx("removing the old staging folder", &ent.path())?;
        }
    }
    Ok(())
}

/// Moves staged entries into `dest`. Renames within one filesystem, after a
/// `syncfs` so the data is on disk before the names that point at it.
fn move_into_place(
    staging: &Path,
    dest: &Path,
    root: Option<tar_read::DirMeta>,
    replace: bool,
    m: &Manifest,
) -> Result<()> {
    sync_fs(staging)?;
    let restoring = dest.join(RESTORING_MARKER);
    write_synced(&restoring, m.id.as_bytes())?;
    for ent in fs::read_dir(dest).ctx("reading", dest)? {
        let ent = ent.ctx("reading", dest)?;
        let name = ent.file_name();
        let n = name.as_bytes();
        let ours = n == RESTORING_MARKER.as_bytes()
            || n.starts_with(STAGING_PREFIX.as_bytes())
            || n == b"lost+found";
        if ours {
            continue;
        }
        if !replace {
            return Err(Error::io(
                format!("restoring into {}", dest.display()),
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{:?} appeared during the restore", OsStr::from_bytes(n)),
                ),
            ));
        }
        let p = ent.path();
        let r = if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        r.ctx("removing the old", &p)?;
    }
    for ent in fs::read_dir(staging).ctx("reading", staging)? {
        let ent = ent.ctx("reading", staging)?;
        let to = dest.join(ent.file_name());
        fs::rename(ent.path(), &to).ctx("moving into place", &to)?;
    }
    fs::remove_dir(staging).ctx("removing", staging)?;
    let marker = serde_json::json!({ "id": m.id, "restored_at": Utc::now(), "sha256": m.sha256 });
    write_synced(&dest.join(RESTORED_MARKER), marker.to_string().as_bytes())?;
    fs::remove_file(&restoring).ctx("removing", &restoring)?;
    // Last, because every change inside the folder above moves its mtime.
    if let Some(meta) = root {
        // SAFETY: geteuid has no preconditions and cannot fail.
        tar_read::apply_dir_meta(dest, meta, unsafe { libc::geteuid() } == 0)?;
    }
    fs::File::open(dest)
        .and_then(|d| d.sync_all())
        .ctx("syncing", dest)
}

pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = fs::File::create(path).ctx("writing", path)?;
    f.write_all(bytes).ctx("writing", path)?;
    f.sync_all().ctx("syncing", path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .ctx("syncing", dir)?;
    }
    Ok(())
}

pub(crate) fn sync_fs(path: &Path) -> Result<()> {
    let f = fs::File::open(path).ctx("opening", path)?;
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is valid for the life of `f`.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(Error::io(
            format!("syncing the filesystem of {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
