//! One backup: source -> tar -> compress -> sha256 -> target, manifest last.
//! Then copies to secondary targets, retention, and leftover cleanup.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use tracing::{info, warn, Instrument};

use crate::artifact;
use crate::config::Settings;
use crate::incremental;
use crate::manifest::{self, Manifest};
use crate::pipe::{self, HashCount};
use crate::progress::{self, mib_per_s, Cancel, Progress};
use crate::retention;
use crate::source::{AnySource, FilesSource, Source, SourceCtx, SourceKind, SourceReport};
use crate::store::{AnyTarget, Target, TargetSpec, Upload};
use crate::tar_upload::{upload_tar, StoredBytes, TarSink};
use crate::{Error, Result};

/// Uncommitted files younger than this may belong to a backup still running
/// in another process (`backup-now` beside the sidecar); older ones are debris.
pub const LEFTOVER_MAX_AGE: Duration = Duration::days(1);

/// Everything one backup needs, built from settings.
pub struct Job {
    pub source: AnySource,
    pub targets: Vec<AnyTarget>,
    pub settings: Settings,
    /// The Kubernetes API, when `LIFEBOAT_INCLUDE_KUBE` asks for objects.
    pub cluster: Option<std::sync::Arc<crate::cluster::Cluster>>,
    backlog: std::sync::Mutex<Vec<usize>>,
}

impl Job {
    /// `component`: who this process reports as to the Kubernetes API
    /// (`LIFEBOAT_INCLUDE_KUBE` connects to it).
    pub async fn open(settings: &Settings, component: &'static str) -> Self {
        let targets = settings.open_targets().await;
        // Never back up a backup folder that lies inside a backed-up path.
        let skip = settings
            .targets
            .iter()
            .filter_map(|t| match t {
                TargetSpec::Dir(base) => Some(base.clone()),
                TargetSpec::S3 { .. } => None,
            })
            .filter(|b| settings.paths.iter().any(|p| b.starts_with(p)))
            .collect();
        let mut files = FilesSource::new(settings.paths.clone(), settings.exclude_set.clone());
        files.skip = skip;
        files.skip_dirs = settings
            .targets
            .iter()
            .filter_map(|t| match t {
                TargetSpec::Dir(base) => std::fs::metadata(base).ok(),
                TargetSpec::S3 { .. } => None,
            })
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino())
            })
            .collect();
        let source = settings.source.source(&settings.paths, files);
        let cluster = if settings.include_kube.is_empty() {
            None
        } else {
            crate::cluster::get(component).await
        };
        Job {
            source,
            targets,
            settings: settings.clone(),
            cluster,
            backlog: Default::default(),
        }
    }

    /// Checks every target can be written and the source's tools exist.
    /// Failing either is a setup problem (wrong path, missing mount, wrong
    /// image), reported as such at start rather than at the first backup.
    pub async fn check(&self) -> Result<()> {
        let mut problems = Vec::new();
        if let AnySource::PgDump(_) = self.source {
            if let Err(message) = crate::source::pg_dump::check_tools() {
                problems.push(crate::config::Problem {
                    setting: "LIFEBOAT_POSTGRES_MODE".into(),
                    value: "logical".into(),
                    message,
                });
            }
        }
        for (spec, t) in self.settings.targets.iter().zip(&self.targets) {
            match t.check().await {
                Ok(()) => {}
                Err(e) if t.check_is_fatal() => problems.push(crate::config::Problem {
                    setting: "LIFEBOAT_TARGETS".into(),
                    value: spec.to_string(),
                    message: e.to_string(),
                }),
                // A store that is down now may be back by the next run.
                Err(e) => {
                    warn!(target = %spec, error = %e, "target check failed; backups to it are retried on schedule")
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(problems))
        }
    }

    /// A backup to the primary target, then copies, retention and cleanup.
    /// Only the primary's result decides success; the rest is logged.
    pub async fn run(self: &Arc<Self>, cancel: Cancel) -> Result<Manifest> {
        // Before the dump, not after it: the objects are part of the artifact.
        if !self.settings.include_kube.is_empty() && self.cluster.is_none() {
            return Err(Error::Source(
                "LIFEBOAT_INCLUDE_KUBE is set but the Kubernetes API is not usable (see the warning at start); unset it or grant the Role in manifests/rbac.yaml".into(),
            ));
        }
        // The same bucket on another S3 endpoint is another history.
        let history = match &self.settings.s3.endpoint {
            Some(endpoint) => format!("{} at {endpoint}", self.targets[0].describe()),
            None => self.targets[0].describe(),
        };
        let lock = crate::lock::BackupLock::acquire(
            &self.settings.source.spool_dir,
            &self.settings.name,
            &history,
        )?;
        // With retention off the sidecar deletes nothing (write-only
        // credentials): the bucket's lifecycle rules clean up.
        let deletes = self.settings.retention.is_some();
        for t in &self.targets {
            if let Err(e) = clean_dead_leftovers(t, &lock, deletes).await {
                warn!(target = %t.describe(), error = %e, "cleaning up after killed backups failed; retried at the next backup");
            }
        }
        let before: Vec<_> = self.targets.iter().map(|t| t.requests()).collect();
        crate::hooks::pre(&self.settings, &cancel).await?;
        let primary = &self.targets[0];
        let result = backup(self.clone(), primary, cancel.clone()).await;
        // Even after a cancel: a post hook may undo what the pre hook did.
        crate::hooks::post(&self.settings, &result, &Default::default()).await;
        let manifest = result?;
        self.sync_secondaries().await;
        for (t, before) in self.targets.iter().zip(&before) {
            let at_retention = t.requests();
            if let Some(policy) = &self.settings.retention {
                if let Err(e) = apply_retention(t, policy).await {
                    warn!(target = %t.describe(), error = %e, "retention failed; nothing was lost, it runs again after the next backup");
                }
            }
            if let Err(e) = clean_leftovers(t, Utc::now(), deletes).await {
                warn!(target = %t.describe(), error = %e, "leftover cleanup failed");
            }
            let retention = t.requests().since(&at_retention);
            let all = t.requests().since(before);
            if all.total() > 0 {
                // What this backup cost on a store that bills requests.
                info!(target = %t.describe(), requests = all.total(), retention_requests = retention.total(), by_operation = %all, "store requests of this backup");
            }
        }
        Ok(manifest)
    }

    /// Copies to every secondary target what the primary has and it lacks,
    /// oldest first, so a target that was unreachable catches up in order.
    /// Returns how many artifacts each secondary still lacks (its backlog).
    pub async fn sync_secondaries(&self) -> Vec<usize> {
        let backlog = self.sync_each().await;
        *self.backlog.lock().unwrap_or_else(|p| p.into_inner()) = backlog.clone();
        backlog
    }

    /// What [`Job::sync_secondaries`] last found missing, per secondary.
    pub fn backlog(&self) -> Vec<usize> {
        self.backlog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn sync_each(&self) -> Vec<usize> {
        let mut backlog = Vec::new();
        for secondary in &self.targets[1..] {
            match sync(
                &self.targets[0],
                secondary,
                self.settings.retention.as_ref(),
            )
            .await
            {
                Ok(()) => backlog.push(0),
                Err((missing, e)) => {
                    backlog.push(missing);
                    warn!(target = %secondary.describe(), backlog = missing, error = %e, "secondary target is behind; it catches up when it is reachable again");
                }
            }
        }
        backlog
    }
}

/// Copies what `to` lacks of what `from` keeps, oldest first. Stops at the
/// first error (the target is probably down) and reports what is left.
/// With retention off, everything the primary has.
async fn sync(
    from: &AnyTarget,
    to: &AnyTarget,
    policy: Option<&retention::Policy>,
) -> std::result::Result<(), (usize, Error)> {
    let have = from.list().await.map_err(|e| (0, e))?;
    let times: Vec<(String, DateTime<Utc>)> = have
        .artifacts
        .iter()
        .map(|a| (a.manifest.id.clone(), a.manifest.started_at))
        .collect();
    let kept: std::collections::HashSet<String> = match policy {
        Some(policy) => {
            let mut decisions = retention::plan(&times, policy);
            retention::keep_bases(&mut decisions, &bases_of(&have));
            decisions
                .into_iter()
                .filter(|d| d.keep())
                .map(|d| d.id)
                .collect()
        }
        None => times.into_iter().map(|(id, _)| id).collect(),
    };
    let mut wanted: Vec<&Manifest> = have
        .artifacts
        .iter()
        .map(|a| &a.manifest)
        .filter(|m| kept.contains(&m.id))
        .collect();
    let there = match to.list().await {
        Ok(l) => l,
        Err(e) => return Err((wanted.len(), e)),
    };
    wanted.retain(|m| !there.artifacts.iter().any(|a| a.manifest.id == m.id));
    wanted.reverse();
    let total = wanted.len();
    for (done, m) in wanted.into_iter().enumerate() {
        if let Err(e) = copy(from, to, m).await {
            return Err((total - done, e));
        }
    }
    Ok(())
}

/// Picks an id not used yet on this target: two backups in one second
/// (a manual one right after a scheduled one) must not collide.
async fn fresh_id(
    target: &AnyTarget,
    listing: &crate::store::Listing,
    source: &SourceKind,
    now: DateTime<Utc>,
) -> Result<(String, DateTime<Utc>)> {
    // A backup killed between storing its artifact and its manifest leaves
    // the artifact under its id until cleanup; a new one must not collide
    // with it (begin refuses to overwrite). Unlistable leftovers only cost
    // that refusal.
    let leftovers = target.leftovers().await.unwrap_or_default();
    let taken = |id: &str| {
        listing.artifacts.iter().any(|a| a.manifest.id == id)
            || leftovers
                .iter()
                .any(|l| l.name.split(".tar").next() == Some(id))
    };
    // The id's stamp moves on past taken ones; `started_at` stays the real
    // start, so a manifest never says it started after it finished. Ids
    // only grow: after a burst of backups in one second the stamps run
    // ahead of the clock, and a chain's link must be newer than its base
    // (as must anything after a clock stepped back).
    let newest = listing
        .artifacts
        .iter()
        .filter_map(|a| artifact::id_time(&a.manifest.id))
        .max();
    let mut t = match newest {
        Some(n) if n >= now => n + Duration::seconds(1),
        _ => now,
    };
    loop {
        let id = artifact::id(t, source.as_str());
        if !taken(&id) {
            return Ok((id, now));
        }
        t += Duration::seconds(1);
    }
}

async fn backup(job: Arc<Job>, target: &AnyTarget, cancel: Cancel) -> Result<Manifest> {
    let source_kind = job.source.kind();
    let listing = target.list().await?;
    let (id, started_at) = fresh_id(target, &listing, &source_kind, Utc::now()).await?;
    let span = tracing::info_span!("backup", id = %id, target = %target.describe());
    async move {
        let settings = &job.settings;
        let encryption = match &settings.recipients {
            Some(_) => crate::encryption::AGE,
            None => crate::encryption::NONE,
        };
        info!(source = %source_kind, paths = ?job.source.paths(), compression = %settings.compression, encryption, "backup started");
        let clock = Instant::now();
        let progress = Arc::new(Progress::default());
        let _report = progress::report(progress.clone(), settings.progress_interval, "backup");
        // An incremental link (LIFEBOAT_FULL_EVERY): the files source walks
        // with the chain's state; any other backup without one.
        let files = match &job.source {
            AnySource::Files(f) => Some(f),
            _ => None,
        };
        let mut prepared = match files {
            Some(f) => {
                let paths = job.source.paths();
                let every = settings.full_every;
                incremental::prepare(target, &listing, every, &paths, &id, &f.spool_dir, started_at)
                    .await
            }
            None => None,
        };
        if let Some(f) = files {
            *f.increment.lock().unwrap_or_else(|p| p.into_inner()) =
                prepared.as_mut().and_then(|p| p.increment.take());
        }
        let started = Started { id: &id, started_at, encryption, progress: &progress };
        let result = write_and_commit(&job, target, &started, prepared, files, cancel).await;
        // What the walk left of an increment after a failure goes; its
        // files in TMPDIR have no names and vanish with it.
        if let Some(f) = files {
            drop(f.take_increment());
        }
        let manifest = result?;
        let took = clock.elapsed();
        info!(
            size = manifest.size,
            bytes_in = manifest.bytes_in,
            entries = manifest.entries,
            warnings = manifest.warnings.len(),
            level = manifest.level,
            seconds = took.as_secs_f64(),
            mib_per_s = mib_per_s(manifest.bytes_in, took),
            peak_rss_mib = progress::peak_rss_mib().unwrap_or(0),
            "backup committed"
        );
        Ok(manifest)
    }
    .instrument(span)
    .await
}

/// What a backup settled before writing its bytes.
struct Started<'a> {
    id: &'a str,
    started_at: DateTime<Utc>,
    encryption: &'static str,
    progress: &'a Arc<Progress>,
}

/// The backup's bytes to the target, then (for a chain's link) its state,
/// and its manifest last.
async fn write_and_commit(
    job: &Arc<Job>,
    target: &AnyTarget,
    started: &Started<'_>,
    prepared: Option<incremental::Prepared>,
    files: Option<&FilesSource>,
    cancel: Cancel,
) -> Result<Manifest> {
    let settings = &job.settings;
    let recipients = settings.recipients.as_ref();
    let file_name = artifact::file_name(started.id, settings.compression, recipients.is_some());
    let mut upload = target.begin(&file_name).await?;
    let producer = {
        let job = job.clone();
        let (progress, cancel) = (started.progress.clone(), cancel.clone());
        move |tar: &mut TarSink| {
            let ctx = SourceCtx {
                progress,
                cancel,
                raw: tar.get_mut().raw_hint(),
            };
            produce(&job, tar, &ctx)
        }
    };
    let uploaded = upload_tar(
        &mut upload,
        settings.compression,
        recipients.cloned(),
        producer,
    )
    .await;
    let ((report, kubernetes), stored) = match uploaded {
        Ok(done) => done,
        Err(e) => {
            upload.abort().await;
            warn!(error = %e, "backup failed; nothing was committed");
            return Err(e);
        }
    };
    if crate::progress::is_cancelled(&cancel) {
        upload.abort().await;
        return Err(Error::Cancelled);
    }
    // A link whose state could not be stored still restores; the next
    // backup then starts a new chain.
    let (place, state) = match prepared {
        None => (None, None),
        Some(p) => {
            let place = p.place.clone();
            let walked = files.and_then(|f| f.take_increment());
            match p.store_state(walked, target, started.id).await {
                Ok(blob) => (Some(place), Some(blob)),
                Err(e) => {
                    warn!(error = %e, "the chain's state was not stored; this link restores, and the next backup starts a new chain");
                    (Some(place), None)
                }
            }
        }
    };

    let StoredBytes { sha256, size } = stored;
    let manifest = Manifest {
        format: manifest::FORMAT.into(),
        id: started.id.to_string(),
        artifact: file_name,
        name: settings.name.clone(),
        namespace: settings.namespace.clone(),
        source: job.source.kind(),
        layout: job.source.layout(),
        paths: job.source.paths(),
        started_at: started.started_at,
        finished_at: Utc::now(),
        compression: settings.compression.to_string(),
        encryption: started.encryption.into(),
        recipients: recipients.map(|r| r.names()).unwrap_or_default(),
        size,
        sha256,
        entries: report.entries,
        bytes_in: report.bytes_in,
        warnings: report.warnings,
        tool_version: crate::TOOL_VERSION.into(),
        source_meta: report.meta,
        kubernetes,
        level: place.as_ref().map_or(0, |p| p.level),
        base: place.as_ref().and_then(|p| p.base.clone()),
        chain: place.map(|p| p.chain),
        state,
        wal: None,
    };
    // A manifest restore would refuse as too large must not be committed:
    // the artifact would look backed up and never restore.
    let json_len = manifest.to_json().len() as u64;
    if json_len > crate::manifest::MAX_MANIFEST_BYTES {
        upload.abort().await;
        return Err(Error::Source(format!(
            "the manifest would be {json_len} bytes, more than restore reads ({}); back up fewer databases per pod (LIFEBOAT_DATABASES)",
            crate::manifest::MAX_MANIFEST_BYTES
        )));
    }
    // Nor one that `list` would refuse: it would be stored and never seen.
    if let Err(e) = Manifest::from_json(&manifest.to_json()) {
        upload.abort().await;
        return Err(Error::Internal(format!(
            "the manifest of {} would not be read back ({e}); nothing was committed",
            manifest.id
        )));
    }
    upload.commit(&manifest).await?;
    Ok(manifest)
}

/// What the producer leaves: the source's report and the exported
/// Kubernetes objects per kind.
type Produced = (SourceReport, Option<BTreeMap<String, u64>>);

/// The blocking half's entries: the source, then the Kubernetes objects.
fn produce(job: &Job, tar: &mut TarSink, ctx: &SourceCtx) -> Result<Produced> {
    let mut report = job.source.write_tar(tar, ctx)?;
    // Job::run refused to start with objects to export and no API.
    let kubernetes = match &job.cluster {
        Some(c) if !job.settings.include_kube.is_empty() => {
            let (counts, bytes) = c.export_into(&job.settings.include_kube, tar)?;
            report.entries += counts.values().sum::<u64>();
            report.bytes_in += bytes;
            Some(counts)
        }
        _ => None,
    };
    Ok((report, kubernetes))
}

/// Copies a committed artifact from one target to another, verifying the
/// bytes against the manifest before committing the copy.
pub async fn copy(from: &AnyTarget, to: &AnyTarget, m: &Manifest) -> Result<()> {
    let mut src = from.open(m).await?;
    let mut up = to.begin(&m.artifact).await?;
    let mut copied = HashCount::default();
    let mut spare = None;
    loop {
        let chunk = match pipe::read_chunk(&mut src, spare.take()).await {
            Ok(c) if c.is_empty() => break,
            Ok(c) => c,
            Err(e) => {
                up.abort().await;
                return Err(Error::io(
                    format!("reading {} from {}", m.artifact, from.describe()),
                    e,
                ));
            }
        };
        copied.update(&chunk);
        match up.write(chunk).await {
            Ok(back) => spare = back,
            Err(e) => {
                up.abort().await;
                return Err(e);
            }
        }
    }
    let (sha, size) = copied.finish();
    if sha != m.sha256 || size != m.size {
        up.abort().await;
        return Err(Error::Corrupt {
            id: m.id.clone(),
            reason: format!(
                "source copy on {} does not match its manifest",
                from.describe()
            ),
        });
    }
    // A link's state goes along, so that a secondary that becomes the
    // primary continues the chain. One that cannot be copied is left out:
    // the link restores as well without it, and the next backup there
    // starts a new chain; holding back the copy for it would leave the
    // secondary behind for good.
    let mut m = m.clone();
    if let Err(e) = copy_state(from, to, &m).await {
        warn!(id = %m.id, target = %to.describe(), error = %e, "the link's chain state was not copied; the copy restores as well without it");
        m.state = None;
    }
    up.commit(&m).await?;
    info!(id = %m.id, target = %to.describe(), "copied to secondary target");
    Ok(())
}

/// Copies the chain state a link left, checked against its manifest.
async fn copy_state(from: &AnyTarget, to: &AnyTarget, m: &Manifest) -> Result<()> {
    let (Some(want), Some(src)) = (&m.state, from.open_state(m).await?) else {
        return Ok(());
    };
    let got = to.put_state(&m.id, src).await?;
    if got.sha256 != want.sha256 || got.size != want.size {
        return Err(Error::Corrupt {
            id: m.id.clone(),
            reason: format!(
                "its chain state on {} does not match its manifest",
                from.describe()
            ),
        });
    }
    Ok(())
}

/// Deletes what the policy does not keep, with a log line for each decision.
pub async fn apply_retention(target: &AnyTarget, policy: &retention::Policy) -> Result<()> {
    let listing = target.list().await?;
    let times: Vec<(String, DateTime<Utc>)> = listing
        .artifacts
        .iter()
        .map(|a| (a.manifest.id.clone(), a.manifest.started_at))
        .collect();
    // The newest artifact that `verify` re-read successfully is the one a
    // person would trust most; it stays even when the policy would drop it.
    let newest_verified = listing
        .artifacts
        .iter()
        .find(|a| a.verified_at.is_some())
        .map(|a| a.manifest.id.clone());
    // Likewise the newest that a restore drill brought back: and with it
    // its record, so the drill metrics do not vanish between drills.
    let newest_drilled = listing
        .artifacts
        .iter()
        .find(|a| a.passed_drill())
        .map(|a| a.manifest.id.clone());
    let mut decisions = retention::plan(&times, policy);
    for d in &mut decisions {
        if Some(&d.id) == newest_verified.as_ref() {
            d.reasons.push("newest verified".into());
        }
        if Some(&d.id) == newest_drilled.as_ref() {
            d.reasons.push("newest that passed a restore drill".into());
        }
    }
    // What an object lock still holds stays (it could not go anyway), and
    // so, below, does what it builds on: a chain must not lose its base
    // while its newer links wait for their locks.
    let mut locked = 0;
    for d in decisions.iter_mut().filter(|d| !d.keep()) {
        let Some(a) = listing.artifacts.iter().find(|a| a.manifest.id == d.id) else {
            continue;
        };
        if let Some(until) = target.locked_until(&a.manifest).await? {
            locked += 1;
            info!(id = %d.id, locked_until = %until, target = %target.describe(), "retention deletes this artifact once its object lock ends");
            d.reasons.push(format!("object lock until {until}"));
        }
    }
    // Last: what any kept link builds on stays, whatever kept the link.
    retention::keep_bases(&mut decisions, &bases_of(&listing));
    let kept_bases: Vec<crate::wal::prune::KeptBase> = listing
        .artifacts
        .iter()
        .filter(|a| decisions.iter().any(|d| d.id == a.manifest.id && d.keep()))
        .filter_map(|a| {
            Some(crate::wal::prune::KeptBase {
                end: crate::wal::object::BaseEnd::of(&a.manifest.source_meta)?,
                started_at: a.manifest.started_at,
            })
        })
        .collect();
    // One refused delete must not hold back the others, nor the WAL's.
    let mut failed = None;
    for d in decisions {
        if d.keep() {
            tracing::debug!(id = %d.id, reasons = %d.reasons.join(", "), "retention keeps");
            continue;
        }
        if let Some(a) = listing.artifacts.iter().find(|a| a.manifest.id == d.id) {
            match target.delete(&a.manifest).await {
                Ok(crate::store::Removal::Removed) => {}
                Ok(crate::store::Removal::LockedUntil(until)) => {
                    locked += 1;
                    info!(id = %d.id, locked_until = %until, target = %target.describe(), "retention deletes this artifact once its object lock ends");
                    continue;
                }
                Err(e) => {
                    failed.get_or_insert(e);
                    continue;
                }
            }
            match &a.manifest.chain {
                Some(chain) => {
                    info!(id = %d.id, level = a.manifest.level, chain = %chain, policy = %policy, target = %target.describe(), "retention deleted a link of an incremental chain: no kept artifact builds on it")
                }
                None => {
                    info!(id = %d.id, policy = %policy, target = %target.describe(), "retention deleted artifact")
                }
            }
        }
    }
    if locked > 0 {
        info!(artifacts = locked, target = %target.describe(), "retention found artifacts it no longer keeps still under their object lock; they go at a later backup");
    }
    // The archived WAL follows the bases: what no kept one can use goes.
    let wal = crate::wal::prune::apply(target, &kept_bases, listing.problems.is_empty()).await;
    match failed {
        Some(e) => Err(e),
        None => wal,
    }
}

/// Each chain link's base, for [`retention::keep_bases`].
fn bases_of(listing: &crate::store::Listing) -> std::collections::HashMap<String, String> {
    listing
        .artifacts
        .iter()
        .filter_map(|a| Some((a.manifest.id.clone(), a.manifest.base.clone()?)))
        .collect()
}

/// Removes uncommitted files older than [`LEFTOVER_MAX_AGE`]; without
/// `deletes` (`LIFEBOAT_RETENTION=off`) only aborts unfinished uploads.
pub async fn clean_leftovers(target: &AnyTarget, now: DateTime<Utc>, deletes: bool) -> Result<()> {
    remove_leftovers(target, deletes, |modified| {
        now - modified > LEFTOVER_MAX_AGE
    })
    .await
}

/// Removes every uncommitted file: only while this process holds the
/// history's backup lock, which proves no other backup of this container
/// is writing there, so each leftover is from one that died. Without this,
/// a crash loop leaves one partial artifact per attempt for a day.
async fn clean_dead_leftovers(
    target: &AnyTarget,
    lock: &crate::lock::BackupLock,
    deletes: bool,
) -> Result<()> {
    if !lock.is_held() {
        return Ok(());
    }
    remove_leftovers(target, deletes, |_| true).await
}

async fn remove_leftovers(
    target: &AnyTarget,
    deletes: bool,
    remove: impl Fn(DateTime<Utc>) -> bool,
) -> Result<()> {
    for l in target.leftovers().await? {
        // The WAL archiver writes beside backups without their lock, and
        // cleans its own (`wal::archiver`).
        let ours = !l.blob.starts_with(crate::wal::object::ID_PREFIX);
        if remove(l.modified) && ours && (deletes || l.is_upload()) {
            match target.remove_leftover(&l).await? {
                crate::store::Removal::Removed => {
                    info!(file = %l.name, target = %target.describe(), "removed uncommitted leftover")
                }
                crate::store::Removal::LockedUntil(until) => {
                    tracing::debug!(file = %l.name, locked_until = %until, "an uncommitted leftover stays until its object lock ends")
                }
            }
        }
    }
    Ok(())
}
