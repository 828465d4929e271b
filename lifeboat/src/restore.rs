//! Restore (docs/ARCHITECTURE.md §4 and §6): stream the newest artifact into staging folders on
//! the same filesystem as each destination, verify everything, and only then
//! move it into place. A bad artifact is skipped for the next older one.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::Utc;
use tracing::{info, warn, Instrument};

use crate::artifact_read::read;
use crate::config::{RestoreMode, SourceKind};
use crate::drill::DrillRecord;
use crate::durable::{sync_dir, sync_fs, write_synced};
use crate::encryption::Identities;
use crate::error::IoContext;
use crate::file_out;
use crate::layout::PENDING_DIR;
use crate::manifest::{ChainGap, Layout, Manifest};
use crate::pending;
use crate::progress::mib_per_s;
use crate::protected::Protected;
use crate::store::{AnyTarget, Stored, Target};
use crate::tar_read::{Mapping, ReadReport, Step};
use crate::wal::settings::Until;
use crate::{Error, Result};

pub use crate::layout::RESTORED_MARKER;
/// Present while entries are being moved into place. If a restore dies
/// between the first and the last move, the next start sees this and
/// restores again instead of starting the app on half a volume.
pub use crate::layout::RESTORING_MARKER;
use crate::layout::STAGING_PREFIX;

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Restored {
        id: String,
        target: String,
        /// Newer artifacts skipped because they were proven bad, one line
        /// each (also in `.lifeboat-restored` and the Event).
        skipped: Vec<String>,
    },
    /// A logical dump was verified and staged in `<path>/.lifeboat-pending`;
    /// the sidecar loads it once the server answers.
    Staged {
        id: String,
        target: String,
        skipped: Vec<String>,
    },
    /// No artifact exists anywhere: a first deploy.
    NoArtifacts,
    /// The volume has data (if-empty) or restore is off (never).
    Skipped(String),
}

/// Attempts per artifact when reading or writing it fails for a reason that
/// may pass (a store that stalls or resets, a full or failing disk). After
/// the last one the restore stops: moving on to an older artifact would
/// bring back older data without anyone deciding so.
pub const ATTEMPTS: u32 = 3;
/// Pause before the second attempt; doubled before each further one
/// (2 s, 4 s: a stalled store gets a few seconds, a pod start is not held long).
pub const FIRST_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(2);

/// What a folder holds, as far as restore is concerned.
#[derive(Debug, PartialEq, Eq)]
enum State {
    Empty,
    /// A previous restore died while moving entries into place.
    Interrupted,
    HasData,
}

/// Names in a restored folder that belong to restore itself.
fn is_ours(n: &[u8]) -> bool {
    crate::layout::is_restore_work(n) || n == b"lost+found"
}

fn state(path: &Path, protected: &Protected) -> Result<State> {
    let rd = match fs::read_dir(path) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::Empty),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let mut s = State::Empty;
    for ent in rd {
        let ent = ent.ctx("reading", path)?;
        let name = ent.file_name();
        let n = name.as_bytes();
        // Only a plain file is our marker; anything else of that name (a
        // symlink the app planted) is data, and must not trigger a replace.
        if n == RESTORING_MARKER.as_bytes() && ent.file_type().is_ok_and(|t| t.is_file()) {
            return Ok(State::Interrupted);
        }
        // A staged dump alone is not data: the app never started on it.
        if is_ours(n) || n == PENDING_DIR.as_bytes() || protected.only_shelters(&ent.path()) {
            continue;
        }
        s = State::HasData;
    }
    Ok(s)
}

/// A configured path must be a real folder (or missing): restore replaces
/// what is in it, and must never do that to whatever a symlink points at.
fn check_not_symlink(paths: &[PathBuf]) -> Result<()> {
    let mut problems = Vec::new();
    for p in paths {
        if let Ok(md) = fs::symlink_metadata(p) {
            if md.file_type().is_symlink() {
                let to = fs::read_link(p)
                    .map(|t| t.display().to_string())
                    .unwrap_or_else(|_| "?".into());
                problems.push(crate::config::Problem {
                    setting: "LIFEBOAT_PATHS".into(),
                    value: p.display().to_string(),
                    message: format!(
                        "is a symlink to {to}; restore never writes through a symlink: set LIFEBOAT_PATHS to the real folder (and mount the volume there)"
                    ),
                });
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Config(problems))
    }
}

/// Lists one target, retrying a failure that may pass.
async fn list_with_retry(target: &AnyTarget) -> Result<crate::store::Listing> {
    let mut pause = FIRST_RETRY_PAUSE;
    for attempt in 1.. {
        match target.list().await {
            Ok(l) => return Ok(l),
            Err(e) if attempt < ATTEMPTS => {
                warn!(target = %target.describe(), error = %e, attempt, "cannot list artifacts; trying again in {}s", pause.as_secs());
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns")
}

/// Every committed artifact on every target, newest first, with the
/// copies of one artifact together in the order the targets are
/// configured; and the manifests that could not be read, one line each.
/// Of equally new artifacts, one that passed a restore drill comes first,
/// then one that passed `verify` (on any of its copies). A target that
/// cannot be listed (after retries) is an error: it may hold the newest
/// artifact, and restoring an older one from another target would go
/// unnoticed.
///
/// A drill's record is written beside the copies the drill found, and
/// writeback copies artifacts, not records: so each copy gets the newest
/// record of any copy with the same bytes (id and checksum), and a failed
/// drill is not escaped by restoring a secondary's copy.
pub async fn candidates(targets: &[AnyTarget]) -> Result<(Vec<(&AnyTarget, Stored)>, Vec<String>)> {
    let mut out: Vec<(&AnyTarget, Stored)> = Vec::new();
    let mut problems = Vec::new();
    for target in targets {
        let listing = list_with_retry(target)
            .await
            .map_err(|e| Error::RestoreStopped {
                what: format!("listing {}", target.describe()),
                cause: e.to_string(),
                attempts: ATTEMPTS,
            })?;
        for p in &listing.problems {
            warn!(target = %target.describe(), "skipping unreadable manifest: {p}");
            problems.push(p.clone());
        }
        out.extend(listing.artifacts.into_iter().map(|a| (target, a)));
    }
    share_drill_records(&mut out);
    // What any copy of an id has earned ranks the id, so its copies stay
    // together; a stable sort keeps them in target order.
    let mut earned: HashMap<String, (bool, bool)> = HashMap::new();
    for (_, a) in &out {
        let e = earned.entry(a.manifest.id.clone()).or_default();
        e.0 |= a.passed_drill();
        e.1 |= a.verified_at.is_some();
    }
    let rank = |a: &Stored| {
        let (drilled, verified) = earned.get(&a.manifest.id).copied().unwrap_or_default();
        (
            a.manifest.started_at,
            drilled,
            verified,
            a.manifest.id.clone(),
        )
    };
    out.sort_by_cached_key(|(_, a)| std::cmp::Reverse(rank(a)));
    Ok((out, problems))
}

/// Gives every copy the newest drill record of any copy with its bytes.
fn share_drill_records(all: &mut [(&AnyTarget, Stored)]) {
    let mut newest: HashMap<(String, String), DrillRecord> = HashMap::new();
    for (_, a) in all.iter() {
        if let Some(d) = &a.drill {
            let key = (a.manifest.id.clone(), a.manifest.sha256.clone());
            match newest.get(&key) {
                Some(seen) if seen.at >= d.at => {}
                _ => {
                    newest.insert(key, d.clone());
                }
            }
        }
    }
    for (_, a) in all.iter_mut() {
        let key = (a.manifest.id.clone(), a.manifest.sha256.clone());
        if let Some(d) = newest.get(&key) {
            a.drill = Some(d.clone());
        }
    }
}

/// The links a candidate restores from, oldest first: its chain's first
/// link and every link up to it, found on the same target by following
/// `base` (Manifest checks keep each base older, so this ends). A full
/// artifact is its own one link. `Err` says why the chain cannot be
/// applied; that proves the candidate unrestorable, not its target down.
pub fn chain_for(
    all: &[(&AnyTarget, Stored)],
    target: &AnyTarget,
    m: &Manifest,
) -> std::result::Result<Vec<Manifest>, String> {
    let on_target = |id: &str| {
        all.iter()
            .find(|(t, s)| std::ptr::eq(*t, target) && s.manifest.id == id)
            .map(|(_, s)| &s.manifest)
    };
    match m.chain_links(on_target) {
        Ok(links) => Ok(links.into_iter().cloned().collect()),
        Err(ChainGap::Missing { base, level }) => Err(format!(
            "its incremental chain is incomplete: link {base} (level {level}), which it builds on, is not on this target"
        )),
        Err(ChainGap::Misfit { link, level, base, base_level, base_chain }) => Err(format!(
            "its incremental chain does not fit together: link {link} (level {level}) names {base} as its base, which is level {base_level} of chain {}",
            base_chain.as_deref().unwrap_or("(none)")
        )),
    }
}

/// Links proven bad during this restore, by target and id: a candidate
/// whose chain holds one is not read again.
#[derive(Default)]
struct ProvenBad(std::collections::HashSet<(String, String)>);

impl ProvenBad {
    fn add(&mut self, target: &AnyTarget, id: &str) {
        self.0.insert((target.describe(), id.to_string()));
    }

    /// Why `links` cannot restore, if one of them was proven bad.
    fn in_chain(&self, target: &AnyTarget, links: &[Manifest]) -> Option<String> {
        let t = target.describe();
        let bad = links
            .iter()
            .find(|l| self.0.contains(&(t.clone(), l.id.clone())))?;
        Some(if Some(bad) == links.last() {
            "it was proven bad above, as a link of a newer one's chain".into()
        } else {
            format!(
                "link {} (level {}) of its incremental chain is bad (see above)",
                bad.id, bad.level
            )
        })
    }
}

/// Restore into the configured paths, as the init container does.
///
/// Candidates are every committed artifact on every target, newest first;
/// copies of one artifact on several targets are tried one after the other
/// before any older artifact. Only an artifact proven bad (checksum,
/// decoding, a refused entry, another source) lets restore move on; any
/// other failure is retried [`ATTEMPTS`] times and then stops the restore.
pub async fn restore_newest(targets: &[AnyTarget], s: &crate::config::Settings) -> Result<Outcome> {
    let paths = &s.paths;
    let mut replace = s.restore == RestoreMode::Always;
    if s.restore == RestoreMode::Never {
        return Ok(Outcome::Skipped("LIFEBOAT_RESTORE=never".into()));
    }
    check_not_symlink(paths)?;
    let protected = Protected::of(targets);
    if s.restore == RestoreMode::IfEmpty {
        // Every path first: one interrupted path means the restore must be
        // redone for all, even if another path already holds its part.
        let states = paths
            .iter()
            .map(|p| state(p, &protected))
            .collect::<Result<Vec<_>>>()?;
        if let Some(i) = states.iter().position(|st| *st == State::Interrupted) {
            warn!(path = %paths[i].display(), "a previous restore was interrupted; restoring all paths again");
            replace = true;
        } else if let Some(i) = states.iter().position(|st| *st == State::HasData) {
            return Ok(Outcome::Skipped(format!(
                "{} has data (LIFEBOAT_RESTORE=if-empty)",
                paths[i].display()
            )));
        }
    }
    let (candidates, mut skipped) = candidates(targets).await?;
    if candidates.is_empty() && skipped.is_empty() {
        return Ok(Outcome::NoArtifacts);
    }
    let tried = candidates.len();
    let mut wal_seen = None;
    // The id whose copies failed only for reasons that may pass.
    let mut stalled: Option<(String, Error)> = None;
    let mut bad = ProvenBad::default();
    for (target, stored) in &candidates {
        let m = &stored.manifest;
        if let Some((id, e)) = stalled.take() {
            if id != m.id {
                return Err(Error::RestoreStopped {
                    what: format!("restoring {id}"),
                    cause: e.to_string(),
                    attempts: ATTEMPTS,
                });
            }
            stalled = Some((id, e));
        }
        if let Err(reason) = fits(targets, m, s, &mut wal_seen).await {
            warn!(id = %m.id, target = %target.describe(), "{reason}; trying the next candidate");
            skipped.push(format!("{} on {}: {reason}", m.id, target.describe()));
            continue;
        }
        if let Some(d) = stored.drill.as_ref().filter(|d| d.has_failed()) {
            // A drill restored it and the app's own check failed: as proven
            // bad as a wrong checksum (docs/ARCHITECTURE.md §6), unless a
            // person has taken the verdict back.
            let at = d.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            if s.restore_failed_drills {
                warn!(id = %m.id, target = %target.describe(), "it failed a restore drill at {at} (check `{}`); restoring it anyway: LIFEBOAT_RESTORE_FAILED_DRILLS=allow", d.check);
            } else {
                let reason = format!(
                    "it failed a restore drill at {at} (check `{}`); to restore it anyway set LIFEBOAT_RESTORE_FAILED_DRILLS=allow (or delete {}.drill.json beside it)",
                    d.check, m.id
                );
                warn!(id = %m.id, target = %target.describe(), "{reason}; trying the next candidate");
                skipped.push(format!("{} on {}: {reason}", m.id, target.describe()));
                continue;
            }
        }
        let links = match chain_for(&candidates, target, m) {
            Ok(links) => links,
            Err(reason) => {
                warn!(id = %m.id, target = %target.describe(), "{reason}; trying the next candidate");
                skipped.push(format!("{} on {}: {reason}", m.id, target.describe()));
                continue;
            }
        };
        if let Some(reason) = bad.in_chain(target, &links) {
            warn!(id = %m.id, target = %target.describe(), "{reason}; trying the next candidate");
            skipped.push(format!("{} on {}: {reason}", m.id, target.describe()));
            continue;
        }
        let tried = try_candidate(
            target,
            &links,
            stored,
            s,
            &protected,
            &mut replace,
            &mut skipped,
        );
        match tried.await? {
            Tried::Done => {
                let (id, target) = (m.id.clone(), target.describe());
                return Ok(if m.layout == Layout::Logical {
                    Outcome::Staged {
                        id,
                        target,
                        skipped,
                    }
                } else {
                    Outcome::Restored {
                        id,
                        target,
                        skipped,
                    }
                });
            }
            Tried::Bad(id) => bad.add(target, &id),
            Tried::Stalled(e) => stalled = Some((m.id.clone(), e)),
        }
    }
    if let Some((id, e)) = stalled {
        return Err(Error::RestoreStopped {
            what: format!("restoring {id}"),
            cause: e.to_string(),
            attempts: ATTEMPTS,
        });
    }
    Err(Error::NothingRestorable {
        tried,
        failures: skipped,
    })
}

/// A restore to a point in time starts from a base backup that finished
/// by then: PostgreSQL cannot stop recovery before the base is consistent.
fn before_target_time(
    s: &crate::config::Settings,
    m: &Manifest,
) -> std::result::Result<(), String> {
    match s.source.wal.as_ref().map(|w| &w.until) {
        Some(Until::Time { at, setting }) if !finished_by(m, *at) => Err(format!(
            "it finished at {}, after the target time {setting}={}",
            m.finished_at.to_rfc3339(),
            at.to_rfc3339()
        )),
        _ => Ok(()),
    }
}

/// Whether `m` finished by `at`: recovery to `at` can start from it.
fn finished_by(m: &Manifest, at: chrono::DateTime<Utc>) -> bool {
    m.finished_at <= at
}

/// Whether a candidate is one this restore may use at all: of the
/// configured source, finished by a target time, not abandoned.
async fn fits(
    targets: &[AnyTarget],
    m: &Manifest,
    s: &crate::config::Settings,
    seen: &mut Option<Vec<crate::wal::object::WalSection>>,
) -> std::result::Result<(), String> {
    s.source.fits(m)?;
    before_target_time(s, m)?;
    if s.source.wal.is_none() {
        return Ok(());
    }
    abandoned(targets, m, seen).await
}

/// A PostgreSQL base taken on a timeline after a later timeline branched
/// off it (a restore to a point in time, whose new timeline has no base
/// backup yet) holds what that restore undid: restoring it would bring that
/// back. The archived WAL of every target is listed once (WAL lives on the
/// primary, a base's copies also elsewhere).
async fn abandoned(
    targets: &[AnyTarget],
    m: &Manifest,
    seen: &mut Option<Vec<crate::wal::object::WalSection>>,
) -> std::result::Result<(), String> {
    let Some(base) = crate::wal::object::BaseEnd::of(&m.source_meta) else {
        return Ok(());
    };
    if m.source != SourceKind::Postgres {
        return Ok(());
    }
    if seen.is_none() {
        let mut all = Vec::new();
        for t in targets {
            match t.list_wal().await {
                Ok(l) => all.extend(l.objects.into_iter().filter_map(|m| m.wal)),
                Err(e) => {
                    warn!(target = %t.describe(), error = %e, "archived WAL could not be listed; a base a point-in-time restore abandoned may not be recognised")
                }
            }
        }
        *seen = Some(all);
    }
    let sections: Vec<&crate::wal::object::WalSection> = seen.iter().flatten().collect();
    match crate::wal::object::abandoned_by(base, &sections) {
        Some((timeline, fork)) => Err(format!(
            "it was taken on timeline {} after timeline {timeline} branched off at {fork} (a restore to a point in time): it holds what that restore undid",
            base.timeline
        )),
        None => Ok(()),
    }
}

/// How [`try_candidate`] left one candidate, when it did not stop the restore.
enum Tried {
    /// Restored (or, a logical dump, staged for its load).
    Done,
    /// Proven bad, and recorded in `skipped`: the next candidate may be
    /// tried. The id of the link that was bad (the candidate's own, or,
    /// in a chain, one it builds on).
    Bad(String),
    /// Failed [`ATTEMPTS`] times for reasons that may pass: only another
    /// copy of the same artifact may be tried.
    Stalled(Error),
}

/// Restores one candidate, trying it again (up to [`ATTEMPTS`] times, with
/// a growing pause) after a failure that may pass. Only a configuration
/// error is returned as an error.
async fn try_candidate(
    target: &AnyTarget,
    links: &[Manifest],
    stored: &Stored,
    s: &crate::config::Settings,
    protected: &Protected,
    replace: &mut bool,
    skipped: &mut Vec<String>,
) -> Result<Tried> {
    let (m, paths) = (&stored.manifest, &s.paths);
    let mut pause = FIRST_RETRY_PAUSE;
    for attempt in 1..=ATTEMPTS {
        let (dests, finish) = match m.layout {
            Layout::Paths => (
                paths.iter().map(|p| (p.clone(), p.clone())).collect(),
                Finish::MoveIntoPlace {
                    replace: *replace,
                    protected,
                    skipped: skipped.as_slice(),
                    wal: s
                        .source
                        .wal
                        .as_ref()
                        .filter(|_| m.source == SourceKind::Postgres)
                        .map(|w| w.until.clone()),
                    only: None,
                },
            ),
            Layout::Logical => (
                vec![(logical_origin(&s.source.kind), paths[0].clone())],
                Finish::StageForLoad { root: &paths[0] },
            ),
        };
        let result = restore_one(
            target,
            links,
            stored,
            &dests,
            finish,
            s.identities.as_ref(),
            s.progress_interval,
        )
        .await;
        let (id, target) = (m.id.clone(), target.describe());
        match result {
            Ok(()) => return Ok(Tried::Done),
            // A missing or wrong age key is not damage: a person fixes
            // the key and restarts.
            Err(e @ Error::Config(_)) => return Err(e),
            Err(e) if e.proves_artifact_bad() => {
                warn!(id = %id, target = %target, error = %e, "artifact skipped: it is bad; trying the next candidate (a copy on another target, or an older artifact)");
                skipped.push(format!("{id} on {target}: {e}"));
                let bad = e.bad_artifact_id().unwrap_or(&id).to_string();
                return Ok(Tried::Bad(bad));
            }
            Err(e) if attempt < ATTEMPTS => {
                // A failure while moving into place leaves the markers
                // and part of the artifact: the next attempt replaces.
                if paths.iter().any(|p| {
                    fs::symlink_metadata(p.join(RESTORING_MARKER)).is_ok_and(|m| m.is_file())
                }) {
                    *replace = true;
                }
                warn!(id = %id, target = %target, error = %e, attempt, "restore failed for a reason that may pass; trying the same artifact again in {}s", pause.as_secs());
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => {
                warn!(id = %id, target = %target, error = %e, "restore failed {ATTEMPTS} times; only another copy of the same artifact may be tried");
                return Ok(Tried::Stalled(e));
            }
        }
    }
    unreachable!("the last attempt returns")
}

/// Which artifact `restore --to` puts back: `id`, else the newest started
/// before `before`, else the newest; with `target_time`, the newest
/// PostgreSQL base backup finished by then, and the archived WAL after it
/// up to that time.
#[derive(Debug, Default)]
pub struct Wanted {
    pub id: Option<String>,
    pub before: Option<chrono::DateTime<Utc>>,
    pub target_time: Option<chrono::DateTime<Utc>>,
    /// `--path`: only these entries are written (all is verified).
    pub only: Option<std::sync::Arc<crate::path_filter::PathFilter>>,
}

/// `restore --to DIR`: the wanted artifact, newest first across all targets
/// with the copies of one artifact together (as the init container orders
/// them), into `dir` (see [`restore_one_to`]). A candidate proven bad lets
/// the next one be tried; any other failure stops: an older artifact is not
/// what was asked for. Returns the id restored.
pub async fn restore_to(
    targets: &[AnyTarget],
    dir: &Path,
    wanted: &Wanted,
    s: &crate::config::Settings,
) -> Result<String> {
    let (all, mut failures) = candidates(targets).await?;
    let mut tried = 0;
    let chosen = all
        .iter()
        .filter(|(_, a)| match (&wanted.id, wanted.before) {
            (Some(id), _) => &a.manifest.id == id,
            (None, Some(b)) => a.manifest.started_at < b,
            (None, None) => true,
        })
        .filter(|(_, a)| {
            wanted
                .target_time
                .is_none_or(|t| finished_by(&a.manifest, t))
        });
    let until = wanted.target_time.map(|at| Until::Time {
        at,
        setting: "--target-time".into(),
    });
    let mut bad = ProvenBad::default();
    let mut wal_seen = None;
    for (t, a) in chosen {
        tried += 1;
        // Picking the newest: not one a point-in-time restore abandoned
        // (an id asked for by name is restored as asked).
        if wanted.id.is_none() {
            if let Err(reason) = abandoned(targets, &a.manifest, &mut wal_seen).await {
                warn!(id = %a.manifest.id, target = %t.describe(), "{reason}; trying the next candidate");
                failures.push(format!("{} on {}: {reason}", a.manifest.id, t.describe()));
                continue;
            }
        }
        let links = match chain_for(&all, t, &a.manifest) {
            Ok(links) => links,
            Err(reason) => {
                warn!(id = %a.manifest.id, target = %t.describe(), "{reason}; trying the next candidate");
                failures.push(format!("{} on {}: {reason}", a.manifest.id, t.describe()));
                continue;
            }
        };
        if let Some(reason) = bad.in_chain(t, &links) {
            warn!(id = %a.manifest.id, target = %t.describe(), "{reason}; trying the next candidate");
            failures.push(format!("{} on {}: {reason}", a.manifest.id, t.describe()));
            continue;
        }
        match restore_one_to(t, &links, a, dir, s, until.clone(), wanted.only.clone()).await {
            Ok(()) => {
                info!(id = %a.manifest.id, to = %dir.display(), "restored");
                return Ok(a.manifest.id.clone());
            }
            Err(e) if e.proves_artifact_bad() => {
                warn!(id = %a.manifest.id, target = %t.describe(), error = %e, "artifact skipped: it is bad; trying the next candidate");
                failures.push(format!("{} on {}: {e}", a.manifest.id, t.describe()));
                bad.add(t, e.bad_artifact_id().unwrap_or(&a.manifest.id));
            }
            // A missing key, a full disk, a stalled store: say why and stop.
            Err(e) => return Err(e),
        }
    }
    match &wanted.id {
        Some(id) if tried == 0 => Err(Error::NotFound(id.clone())),
        _ => Err(Error::NothingRestorable { tried, failures }),
    }
}

/// Restore one artifact into a folder for inspection (`restore --to DIR`):
/// each backed-up path lands at `DIR/<path>`, like `tar -xf - -C DIR`.
/// An artifact of another source than the configured one is refused. With
/// `wal`, a PostgreSQL base gets its archived WAL staged as the init
/// container's restore would.
async fn restore_one_to(
    target: &AnyTarget,
    links: &[Manifest],
    stored: &Stored,
    dir: &Path,
    s: &crate::config::Settings,
    wal: Option<Until>,
    only: Option<std::sync::Arc<crate::path_filter::PathFilter>>,
) -> Result<()> {
    let (source, keys) = (&s.source.kind, s.identities.as_ref());
    // A few files of a data directory are for a look, not a server to
    // recover: no WAL after them.
    let wal = wal.filter(|_| only.is_none());
    let m = &stored.manifest;
    if m.source != *source {
        return Err(Error::Corrupt {
            id: m.id.clone(),
            reason: format!(
                "it is a {} backup, but LIFEBOAT_SOURCE is {}; refused",
                m.source,
                source.as_str()
            ),
        });
    }
    let mut dests: Vec<(PathBuf, PathBuf)> = match m.layout {
        // The manifest's paths were checked to be clean and absolute
        // (Manifest::from_json), so each lands inside DIR.
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
        Layout::Logical => vec![(logical_origin(source), dir.join(source.as_str()))],
    };
    if m.kubernetes.is_some() {
        dests.push((
            crate::artifact::kube_tar_origin(),
            dir.join(crate::artifact::KUBE_TAR_DIR),
        ));
    }
    for (_, d) in &dests {
        if !d.starts_with(dir) {
            return Err(Error::UnsafeEntry {
                id: m.id.clone(),
                entry: d.display().to_string(),
                reason: format!("is outside {}", dir.display()),
            });
        }
        if state(d, &Protected::default())? != State::Empty {
            return Err(Error::io(
                format!("restoring into {}", d.display()),
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the folder is not empty; pick an empty --to folder",
                ),
            ));
        }
    }
    let finish = Finish::MoveIntoPlace {
        replace: false,
        protected: &Protected::default(),
        skipped: &[],
        wal,
        only,
    };
    restore_one(
        target,
        links,
        stored,
        &dests,
        finish,
        keys,
        s.progress_interval,
    )
    .await
}

/// A staging folder in each destination (old ones removed first), and the
/// mapping that writes into it; the folders to remove on failure.
fn staging_folders(
    m: &Manifest,
    dests: &[(PathBuf, PathBuf)],
    finish: &Finish<'_>,
) -> Result<(Vec<Mapping>, Vec<PathBuf>)> {
    let mut mappings = Vec::new();
    let mut cleanup = Vec::new();
    for (origin, dest) in dests {
        fs::create_dir_all(dest).ctx("creating", dest)?;
        clear_staging(dest)?;
        let staging_root = dest.join(format!("{STAGING_PREFIX}{}", m.id));
        fs::create_dir(&staging_root).ctx("creating the staging folder", &staging_root)?;
        // A logical dump keeps its `<source>/` folder, as in the tar.
        let (staging, only) = match finish {
            Finish::MoveIntoPlace { only, .. } => (staging_root.clone(), only.clone()),
            Finish::StageForLoad { .. } => {
                let s = staging_root.join(m.source.as_str());
                fs::create_dir(&s).ctx("creating the staging folder", &s)?;
                (s, None)
            }
        };
        cleanup.push(staging_root);
        mappings.push(Mapping {
            origin: origin.clone(),
            staging,
            only,
        });
    }
    Ok((mappings, cleanup))
}

/// Files and links (not folders) in the staging folders: what a `--path`
/// restore brings back. Never follows a link.
fn staged_files(mappings: &[Mapping]) -> u64 {
    let mut n = 0;
    let mut dirs: Vec<PathBuf> = mappings.iter().map(|m| m.staging.clone()).collect();
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => dirs.push(e.path()),
                Ok(_) => n += 1,
                Err(_) => {}
            }
        }
    }
    n
}

/// `--path` that matched no entry of `m`: a person's mistake, said with
/// what the names look like (the artifact itself is fine).
fn nothing_matched(only: &crate::path_filter::PathFilter, m: &Manifest) -> Error {
    let example = m
        .paths
        .first()
        .map(|p| p.trim_start_matches('/').to_string())
        .unwrap_or_else(|| m.source.as_str().to_string());
    Error::Config(vec![crate::problem::Problem {
        setting: "--path".into(),
        value: only.patterns().join(" "),
        message: format!(
            "matches no file of {}; entries are named as backed up without the leading /, e.g. {example}/…; `tar -tf` on the artifact lists them (an older artifact: --before or --id)",
            m.id
        ),
    }])
}

/// Where a logical dump's entries come from: `<source>/…` in the tar. Named
/// by the configured source, never by the manifest.
fn logical_origin(source: &SourceKind) -> PathBuf {
    Path::new("/").join(source.as_str())
}

/// What happens once an artifact has been extracted and verified.
enum Finish<'a> {
    /// Files: move the staged entries into each destination, all or none
    /// (see [`move_all_into_place`]).
    MoveIntoPlace {
        replace: bool,
        protected: &'a Protected,
        /// Newer artifacts skipped on the way, recorded in the marker.
        skipped: &'a [String],
        /// A physical PostgreSQL base with `LIFEBOAT_POSTGRES_WAL=on` (or
        /// `restore --target-time`): the archived WAL after it is staged
        /// too, this far (`crate::wal::staging`).
        wal: Option<Until>,
        /// `restore --to DIR --path`: only these entries.
        only: Option<std::sync::Arc<crate::path_filter::PathFilter>>,
    },
    /// A logical dump: the staging folder becomes `<root>/.lifeboat-pending`.
    StageForLoad { root: &'a Path },
}

/// An artifact covers its own paths; restoring it into others would
/// silently skip everything, so say so instead. Every link of a chain
/// covers the same paths (`chain_for` checks).
fn check_covers(m: &Manifest, dests: &[(PathBuf, PathBuf)]) -> Result<()> {
    for (origin, _) in dests {
        let covered = match m.layout {
            Layout::Paths => m.paths.iter().any(|p| Path::new(p) == origin),
            Layout::Logical => *origin == Path::new("/").join(m.source.as_str()),
        } || (m.kubernetes.is_some()
            && *origin == crate::artifact::kube_tar_origin());
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
    Ok(())
}

/// `dests` pairs each backed-up path (or a logical dump's `/<source>`) with
/// where it goes now (for a logical dump: the folder to stage it in).
/// `links` is the chain `stored` restores from, oldest first (only
/// `stored` itself for a full artifact): each is read into the same
/// staging folders in turn, each verified while it streams, and nothing
/// moves into place before the last has verified.
async fn restore_one(
    target: &AnyTarget,
    links: &[Manifest],
    stored: &Stored,
    dests: &[(PathBuf, PathBuf)],
    finish: Finish<'_>,
    keys: Option<&Identities>,
    progress_every: std::time::Duration,
) -> Result<()> {
    let m = &stored.manifest;
    debug_assert_eq!(links.last().map(|l| &l.id), Some(&m.id));
    let span = tracing::info_span!("restore", id = %m.id, target = %target.describe());
    async move {
        if links.len() > 1 {
            info!(size = m.size, entries = m.entries, chain = %links[0].id, links = links.len(), "restore started: an incremental chain, applied link by link");
        } else {
            info!(size = m.size, entries = m.entries, "restore started");
        }
        let clock = Instant::now();
        check_covers(m, dests)?;
        let (mappings, cleanup) = staging_folders(m, dests, &finish)?;
        let mut report: Option<ReadReport> = None;
        for (i, link) in links.iter().enumerate() {
            if links.len() > 1 {
                info!(link = %link.id, level = link.level, size = link.size, "applying link");
            }
            let step = Step {
                before: report.as_mut().and_then(|r| r.lists.take()),
                fresh: i == 0,
                last: i + 1 == links.len(),
            };
            let extract = Some((mappings.clone(), step));
            let result = read(target, link, keys, extract, progress_every, "restore").await;
            match result {
                // A link that does not list a mapping's own folder leaves
                // the metadata the link before set.
                Ok(mut r) => {
                    if let Some(prev) = report.take() {
                        for (now, before) in r.roots.iter_mut().zip(prev.roots) {
                            *now = now.or(before);
                        }
                    }
                    report = Some(r);
                }
                Err(e) => {
                    for dir in &cleanup {
                        let _ = fs::remove_dir_all(dir);
                    }
                    return Err(e);
                }
            }
        }
        let report = report.expect("a chain has one link at least");
        if let Some(only) = mappings.first().and_then(|m| m.only.as_ref()) {
            // What is staged now, not what matched on the way: a file a
            // later link deleted is gone again, and an older candidate
            // may not hold what a newer one did.
            let files = staged_files(&mappings);
            if files == 0 {
                cleanup.iter().for_each(|d| drop(fs::remove_dir_all(d)));
                return Err(nothing_matched(only, m));
            }
            info!(files, "restored only what --path names; the whole artifact verified");
        }
        if let (Finish::MoveIntoPlace { wal: Some(until), .. }, Some((_, dest)), Some(map)) =
            (&finish, dests.first(), mappings.first())
        {
            let wal = crate::wal::staging::stage(
                target,
                m,
                dest,
                &map.staging,
                keys,
                progress_every,
                until,
            );
            if let Err(e) = wal.await {
                cleanup.iter().for_each(|d| drop(fs::remove_dir_all(d)));
                return Err(e);
            }
        }
        // Entry warnings were logged as they happened (tar_read::Walker::warn).
        match finish {
            Finish::MoveIntoPlace {
                replace,
                protected,
                skipped,
                wal: _,
                only: _,
            } => {
                let places: Vec<Place> = dests
                    .iter()
                    .zip(&mappings)
                    .zip(&report.roots)
                    .map(|(((_, dest), map), root)| Place {
                        staging: &map.staging,
                        dest,
                        root: *root,
                    })
                    .collect();
                move_all_into_place(&places, replace, protected, m, skipped)?;
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

/// Which artifacts [`verify_targets`] re-reads on each target.
#[derive(Clone, Copy, Debug)]
pub enum Pick<'a> {
    Newest,
    Id(&'a str),
    All,
}

/// What [`verify_targets`] met on a target.
pub enum Verified<'a> {
    /// The target could not be listed.
    Unlisted(Error),
    /// A manifest that cannot be read or parsed: it hides its artifact.
    Unreadable(&'a str),
    /// An artifact re-read by [`verify`].
    Read {
        manifest: &'a Manifest,
        /// Boxed: a report is several times the size of the other variants.
        result: Result<Box<ReadReport>>,
    },
}

/// Lists each target and [`verify`]s the picked artifacts, telling `seen`
/// (with the target's index) what it met, in order. An error from `seen`
/// stops the walk and is returned.
pub async fn verify_targets(
    targets: &[AnyTarget],
    pick: Pick<'_>,
    keys: Option<&Identities>,
    every: std::time::Duration,
    mut seen: impl FnMut(usize, &AnyTarget, Verified<'_>) -> Result<()>,
) -> Result<()> {
    for (i, t) in targets.iter().enumerate() {
        let listing = match t.list().await {
            Ok(l) => l,
            Err(e) => {
                seen(i, t, Verified::Unlisted(e))?;
                continue;
            }
        };
        for p in &listing.problems {
            seen(i, t, Verified::Unreadable(p))?;
        }
        let chosen: Vec<&Stored> = match pick {
            Pick::Id(id) => listing
                .artifacts
                .iter()
                .filter(|a| a.manifest.id == id)
                .collect(),
            Pick::All => listing.artifacts.iter().collect(),
            Pick::Newest => listing.artifacts.iter().take(1).collect(),
        };
        // A link restores only with every link before it: checking one
        // checks its chain, link by link, oldest first; each link once.
        let listed: Vec<(&AnyTarget, Stored)> =
            listing.artifacts.iter().map(|a| (t, a.clone())).collect();
        let mut done = std::collections::HashSet::new();
        for a in chosen {
            let links = match chain_for(&listed, t, &a.manifest) {
                Ok(links) => links,
                Err(reason) => {
                    let result = Err(Error::Corrupt {
                        id: a.manifest.id.clone(),
                        reason,
                    });
                    let manifest = &a.manifest;
                    seen(i, t, Verified::Read { manifest, result })?;
                    continue;
                }
            };
            for manifest in &links {
                if done.insert(manifest.id.clone()) {
                    let result = verify(t, manifest, keys, every).await.map(Box::new);
                    seen(i, t, Verified::Read { manifest, result })?;
                }
            }
        }
    }
    Ok(())
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

/// One destination of a restore and what is staged for it.
struct Place<'a> {
    staging: &'a Path,
    dest: &'a Path,
    root: Option<file_out::DirMeta>,
}

/// Moves staged entries into every destination, all or none as far as a
/// later start can tell: every destination gets the `.lifeboat-restoring`
/// marker before the first move, and loses it only after the last one, so
/// a crash anywhere in between makes the next start restore all paths
/// again. Renames within one filesystem, after a `syncfs` so the data is on
/// disk before the names that point at it. Protected folders (a backup
/// folder mounted inside a path) are never removed.
fn move_all_into_place(
    places: &[Place],
    replace: bool,
    protected: &Protected,
    m: &Manifest,
    skipped: &[String],
) -> Result<()> {
    for p in places {
        sync_fs(p.staging)?;
    }
    for p in places {
        write_synced(&p.dest.join(RESTORING_MARKER), m.id.as_bytes())?;
    }
    for p in places {
        move_into_place(p, replace, protected)?;
    }
    let marker = serde_json::json!({
        "id": m.id, "restored_at": Utc::now(), "sha256": m.sha256, "skipped": skipped,
    });
    for p in places {
        write_synced(&p.dest.join(RESTORED_MARKER), marker.to_string().as_bytes())?;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    for p in places {
        // Owner and mode before the marker goes (a PGDATA left with the
        // init container's owner would keep PostgreSQL from starting, and
        // without the marker no later start would fix it) ...
        if let (Some(meta), true) = (p.root, as_root) {
            file_out::apply_dir_meta(p.dest, meta, as_root)?;
            sync_dir(p.dest)?;
        }
    }
    for p in places {
        let restoring = p.dest.join(RESTORING_MARKER);
        fs::remove_file(&restoring).ctx("removing", &restoring)?;
        // ... and again after it, because every change inside the folder
        // moves its mtime.
        if let Some(meta) = p.root {
            apply_root_meta(p.dest, meta, as_root)?;
        }
        sync_dir(p.dest)?;
    }
    Ok(())
}

/// A path's own mode and mtime from the artifact. Not as root, they can be
/// set only on a folder of ours: a volume's root that belongs to root (an
/// emptyDir, a claim whose fsGroup gives us the group only) keeps the mode
/// and mtime the volume has, with a warning; what is inside is restored.
fn apply_root_meta(dest: &Path, meta: file_out::DirMeta, as_root: bool) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    // Only the expected refusal is forgiven: a folder that belongs to
    // someone else (an emptyDir or an fsGroup volume's root is root's).
    // EPERM on a folder of our own says something is wrong, and is an error.
    // SAFETY: geteuid has no preconditions and cannot fail.
    let not_ours = || fs::metadata(dest).is_ok_and(|m| m.uid() != unsafe { libc::geteuid() });
    match file_out::apply_dir_meta(dest, meta, as_root) {
        Err(Error::Io { source, .. })
            if !as_root && source.raw_os_error() == Some(libc::EPERM) && not_ours() =>
        {
            warn!(
                path = %dest.display(),
                "not running as root, and the volume's root folder is not ours: it keeps its own mode and mtime"
            );
            Ok(())
        }
        r => r,
    }
}

/// Moves one destination's staged entries into place (see [`move_all_into_place`]).
fn move_into_place(p: &Place, replace: bool, protected: &Protected) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let (staging, dest) = (p.staging, p.dest);
    let dev = fs::metadata(dest).ctx("checking", dest)?.dev();
    for ent in fs::read_dir(dest).ctx("reading", dest)? {
        let ent = ent.ctx("reading", dest)?;
        let name = ent.file_name();
        let n = name.as_bytes();
        if is_ours(n) {
            continue;
        }
        let path = ent.path();
        if replace {
            // Keeps backup folders, other mounts and the folders to them.
            protected.remove(&path, dev)?;
        } else if !protected.only_shelters(&path) {
            return Err(Error::io(
                format!("restoring into {}", dest.display()),
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{:?} appeared during the restore", OsStr::from_bytes(n)),
                ),
            ));
        }
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    for ent in fs::read_dir(staging).ctx("reading", staging)? {
        let ent = ent.ctx("reading", staging)?;
        protected.move_into(&ent.path(), &dest.join(ent.file_name()), as_root)?;
    }
    // Whatever was not moved (an entry where a backup folder is mounted).
    fs::remove_dir_all(staging).ctx("removing", staging)
}
