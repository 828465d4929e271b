//! Settings from the environment (`LIFEBOAT_*`, each also as `LIFEBOAT_*_FILE`)
//! and pod annotations (`lifeboat.dev/*`, which win), in three steps
//! (docs/ARCHITECTURE.md §2): gather the raw strings ([`Inputs::from_process`], the only I/O), validate
//! them all at once with no I/O ([`Settings::from_inputs`]), then let the
//! targets check themselves ([`crate::store::AnyTarget::check`]).

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::glob::{Glob, GlobError, GlobSet};

use crate::annotations::PREFIX;
use crate::chain::plan::FullEvery;
use crate::compression::Compression;
use crate::retention::{self, Policy};
use crate::schedule::{self, Schedule};
use crate::store::{S3Options, TargetSpec};
use crate::{Error, Result};

mod inputs;
pub mod keys;
mod ops;
mod reader;
mod sources;
mod wal;

pub use inputs::{Inputs, DEFAULT_ANNOTATIONS_FILE};
pub use keys::{Key, KEYS};
pub use ops::{Hook, Notify, NotifyFormat, NotifyOn, Ops, DEFAULT_LISTEN};
pub use reader::{parse_duration, Role, MAX_DURATION};
use reader::{Problems, Raw, Reader, Value};

pub use crate::problem::{format_problems, hide_url_credentials, Problem};
pub use crate::source::{DbFilter, PgMode, SourceKind, SourceSettings};

pub const DEFAULT_SCHEDULE: &str = "0 2 * * *";

/// What `LIFEBOAT_INCLUDE_KUBE` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exported {
    ConfigMaps,
    Secrets,
}

impl Exported {
    pub fn as_str(self) -> &'static str {
        match self {
            Exported::ConfigMaps => "configmaps",
            Exported::Secrets => "secrets",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreMode {
    IfEmpty,
    Always,
    Never,
}

/// Validated settings. Built only through [`Settings::from_inputs`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// Which source, and its own settings.
    pub source: SourceSettings,
    pub paths: Vec<PathBuf>,
    pub exclude: Vec<String>,
    pub exclude_set: GlobSet,
    pub schedule: Schedule,
    /// `None` with `LIFEBOAT_RETENTION=off`: the sidecar deletes nothing
    /// (write-only credentials; the bucket's lifecycle rules expire).
    pub retention: Option<Policy>,
    pub targets: Vec<TargetSpec>,
    pub compression: Compression,
    /// `LIFEBOAT_FULL_EVERY`: incremental chains; `None`: every backup full.
    pub full_every: Option<FullEvery>,
    pub restore: RestoreMode,
    /// `LIFEBOAT_RESTORE_FAILED_DRILLS=allow`: a failed drill's verdict is
    /// taken back for restores (README, "Restore drills").
    pub restore_failed_drills: bool,
    pub name: String,
    pub namespace: String,
    pub grace_period: Duration,
    pub progress_interval: Duration,
    pub s3: S3Options,
    /// The current value of `lifeboat.dev/backup-now`, if set.
    pub backup_now: Option<String>,
    /// `LIFEBOAT_INCLUDE_KUBE`: `configmaps` and/or `secrets`, in that order.
    pub include_kube: Vec<Exported>,
    /// `LIFEBOAT_AGE_RECIPIENTS`: new artifacts are encrypted to these.
    pub recipients: Option<crate::encryption::Recipients>,
    /// `LIFEBOAT_AGE_IDENTITY_FILE`, read at start: keys for encrypted artifacts.
    pub identities: Option<crate::encryption::Identities>,
    /// Endpoint, staleness, verification, notifications, hooks.
    pub ops: Ops,
    /// Not wrong, but worth a log line (unknown variables or annotations).
    pub warnings: Vec<String>,
}

impl Settings {
    /// Opens every configured target for this pod's history, in order.
    pub async fn open_targets(&self) -> Vec<crate::store::AnyTarget> {
        let mut out = Vec::new();
        for spec in &self.targets {
            out.push(spec.open(&self.namespace, &self.name, &self.s3).await);
        }
        out
    }

    /// Validates every setting at once: all problems come back together as
    /// `Error::Config`. Each section below reads its own settings and adds
    /// its own problems.
    pub fn from_inputs(inputs: &Inputs, role: Role) -> Result<Settings> {
        let r = Reader {
            inputs,
            raw: Raw(&inputs.env),
            role,
        };
        let mut problems = Problems(inputs.problems.clone());
        let mut warnings = unknown_names(inputs);
        nul_bytes(inputs, &mut problems);

        let paths = paths(&r, &mut problems);
        let (exclude, exclude_set) = excludes(&r, &mut problems);
        let schedule = r.parsed(&mut problems, "LIFEBOAT_SCHEDULE", |t| {
            Schedule::parse(t).map_err(|e| format!("{e}; accepted: {}", schedule::ACCEPTED))
        });
        let schedule = schedule.unwrap_or_else(default_schedule);
        let retention = r
            .parsed(
                &mut problems,
                "LIFEBOAT_RETENTION",
                retention::parse_setting,
            )
            .unwrap_or(Some(Policy::default()));
        let compression = r
            .parsed(&mut problems, "LIFEBOAT_COMPRESSION", Compression::parse)
            .unwrap_or_default();
        let restore = restore_mode(&r, &mut problems);
        let restore_failed_drills = failed_drills(&r, &mut problems);
        let targets = targets(&r, &mut problems);
        let (name, namespace) = history(&r, &mut problems);
        let (grace_period, progress_interval) = durations(&r, &mut problems);
        let mut s3 = s3_options(&r, &mut problems);
        s3.deletes = retention.is_some();
        let source = sources::source_settings(&r, &paths, &mut problems, &mut warnings);
        access_problems(role, &paths, &targets, &mut problems);
        let (recipients, identities) = age_keys(&r.raw, &mut problems, &mut warnings);
        let include_kube = include_kube(&r.raw, &paths, recipients.is_some(), &mut problems);
        let exports = !include_kube.is_empty();
        let full_every = full_every(
            &r,
            &source.kind,
            recipients.is_some(),
            exports,
            &mut problems,
        );
        // Only a running sidecar or `backup-now` uses these; a restore must
        // not fail over a notification setting.
        let mut ops = if role == Role::Backup {
            ops::parse(&r.raw, &name, &mut problems)
        } else {
            Ops::default()
        };
        let offset = jitter(&r, &namespace, &name, &mut problems);
        let schedule = schedule.shifted(offset);
        ops.verify_schedule = ops.verify_schedule.map(|v| v.shifted(offset));

        if !problems.0.is_empty() {
            return Err(Error::Config(problems.0));
        }
        Ok(Settings {
            source,
            paths,
            exclude,
            exclude_set,
            schedule,
            retention,
            targets,
            compression,
            full_every,
            restore,
            restore_failed_drills,
            name,
            namespace,
            grace_period,
            progress_interval,
            s3,
            backup_now: inputs
                .annotations
                .get(&format!("{PREFIX}backup-now"))
                .cloned(),
            include_kube,
            recipients,
            identities,
            ops,
            warnings,
        })
    }
}

/// `LIFEBOAT_FULL_EVERY`: incremental chains, for the files source and
/// without encryption (README, "Incremental backups").
fn full_every(
    r: &Reader,
    source: &SourceKind,
    encrypted: bool,
    exports_kube: bool,
    problems: &mut Problems,
) -> Option<FullEvery> {
    let every = r
        .parsed(problems, "LIFEBOAT_FULL_EVERY", FullEvery::parse)
        .flatten()?;
    let v = r.pick("LIFEBOAT_FULL_EVERY")?;
    let refuse = |why: String| Problem {
        setting: v.setting.clone(),
        value: v.text.clone(),
        message: why,
    };
    let problem = if *source != SourceKind::Files {
        Some(refuse(format!(
            "incremental chains are for LIFEBOAT_SOURCE=files; every {source} backup is full \
             (for PostgreSQL, continuous WAL archiving is what keeps data between base backups); \
             unset it or set it to off"
        )))
    } else if encrypted {
        Some(refuse(
            "incremental chains cannot be combined with LIFEBOAT_AGE_RECIPIENTS: the next link \
             compares the volume with the chain's state (every file's name, size and times), \
             which the sidecar would have to store unencrypted, as it holds no key to decrypt \
             it; unset one of the two"
                .into(),
        ))
    } else if exports_kube {
        Some(refuse(
            "incremental chains cannot be combined with LIFEBOAT_INCLUDE_KUBE: the exported \
             objects carry no folder lists, so a restored chain would bring back objects \
             deleted since its first link; unset one of the two"
                .into(),
        ))
    } else {
        None
    };
    match problem {
        Some(p) if r.role == Role::Backup => {
            problems.0.push(p);
            None
        }
        Some(_) => None,
        None => Some(every),
    }
}

fn default_schedule() -> Schedule {
    Schedule::parse(DEFAULT_SCHEDULE).expect("default schedule parses")
}

/// Warnings for `LIFEBOAT_*` variables and `lifeboat.dev/*` annotations
/// that are not settings (typos).
fn unknown_names(inputs: &Inputs) -> Vec<String> {
    let mut warnings = Vec::new();
    for k in inputs.env.keys().filter(|k| k.starts_with("LIFEBOAT_")) {
        if !keys::is_setting(k) {
            warnings.push(format!("unknown environment variable {k} is ignored"));
        }
    }
    for k in inputs.annotations.keys() {
        let short = &k[PREFIX.len()..];
        if short == keys::DRILL_SCHEDULE_ANNOTATION {
            warnings.push(format!(
                "annotation {k} on the pod is ignored: it belongs on the StatefulSet itself \
                 (its metadata.annotations), where components/drill reads it when the \
                 overlay is built"
            ));
        } else if !keys::known_annotations().any(|a| a == short) {
            warnings.push(format!(
                "unknown annotation {k} is ignored (known: {})",
                keys::known_annotations()
                    .map(|a| format!("{PREFIX}{a}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    warnings
}

/// No setting takes a NUL byte; one in a path or URL would otherwise fail
/// later as an I/O error (exit 1) instead of a setting error.
fn nul_bytes(inputs: &Inputs, problems: &mut Problems) {
    let env_values = inputs
        .env
        .iter()
        .filter(|(k, _)| k.starts_with("LIFEBOAT_") || k.starts_with("PG"))
        .map(|(k, v)| (k.clone(), v));
    let annotation_values = inputs
        .annotations
        .iter()
        .map(|(k, v)| (format!("annotation {k}"), v));
    for (setting, v) in env_values.chain(annotation_values) {
        if v.contains('\0') {
            problems.0.push(Problem {
                setting,
                value: v.replace('\0', "\\0"),
                message: "contains a NUL byte (shown as \\0); no setting accepts one".into(),
            });
        }
    }
}

/// `LIFEBOAT_PATHS`: absolute, clean, not nested in each other.
fn paths(r: &Reader, problems: &mut Problems) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    let Some(v) = r.pick("LIFEBOAT_PATHS") else {
        if r.role != Role::Inspect {
            problems.0.push(Problem {
                setting: "LIFEBOAT_PATHS".into(),
                value: String::new(),
                message: "required: comma list of absolute paths, e.g. /home/jovyan".into(),
            });
        }
        return paths;
    };
    for p in split_list(&v.text) {
        match check_abs_path(p) {
            Ok(p) => paths.push(p),
            Err(m) => problems.fail(&v, format!("{p:?} {m}")),
        }
    }
    if paths.is_empty() && split_list(&v.text).is_empty() {
        problems.fail(
            &v,
            "no paths given; expected comma list of absolute paths".into(),
        );
    }
    for (i, a) in paths.iter().enumerate() {
        for b in &paths[i + 1..] {
            if a.starts_with(b) || b.starts_with(a) {
                problems.fail(
                    &v,
                    format!(
                        "{} and {} overlap; list each folder once",
                        a.display(),
                        b.display()
                    ),
                );
            }
        }
    }
    paths
}

fn excludes(r: &Reader, problems: &mut Problems) -> (Vec<String>, GlobSet) {
    let mut exclude = Vec::new();
    let mut globs = Vec::new();
    if let Some(v) = r.pick("LIFEBOAT_EXCLUDE") {
        for g in split_list(&v.text) {
            match Glob::new(g) {
                Ok(glob) => {
                    globs.push(glob);
                    exclude.push(g.to_string());
                }
                Err(e) if r.role == Role::Backup => {
                    let split = if matches!(
                        e,
                        GlobError::UnclosedAlternates | GlobError::UnopenedAlternates
                    ) {
                        " (the list is split at commas, so {a,b} cannot be used here: list each glob)"
                    } else {
                        ""
                    };
                    problems.fail(
                        &v,
                        format!(
                            "glob {g:?} is invalid: {e}{split}; accepted: globs like **/.ipynb_checkpoints or *.tmp"
                        ),
                    )
                }
                Err(_) => {}
            }
        }
    }
    (exclude, GlobSet::new(globs))
}

fn restore_mode(r: &Reader, problems: &mut Problems) -> RestoreMode {
    let Some(v) = r.pick("LIFEBOAT_RESTORE") else {
        return RestoreMode::IfEmpty;
    };
    match v.text.trim() {
        "if-empty" | "" => RestoreMode::IfEmpty,
        "always" => RestoreMode::Always,
        "never" => RestoreMode::Never,
        _ => {
            problems.fail(&v, "accepted: if-empty, always, never".into());
            RestoreMode::IfEmpty
        }
    }
}

fn failed_drills(r: &Reader, problems: &mut Problems) -> bool {
    let Some(v) = r.pick("LIFEBOAT_RESTORE_FAILED_DRILLS") else {
        return false;
    };
    match v.text.trim() {
        "skip" | "" => false,
        "allow" => true,
        _ => {
            problems.fail(
                &v,
                "accepted: skip (restores pass over an artifact whose drill failed) or allow"
                    .into(),
            );
            false
        }
    }
}

fn targets(r: &Reader, problems: &mut Problems) -> Vec<TargetSpec> {
    let mut targets = Vec::new();
    let Some(v) = r.pick("LIFEBOAT_TARGETS") else {
        problems.0.push(Problem {
            setting: "LIFEBOAT_TARGETS".into(),
            value: String::new(),
            message: "required: comma list of targets, e.g. file:///backup".into(),
        });
        return targets;
    };
    for t in split_list(&v.text) {
        match TargetSpec::parse(t) {
            Ok(spec) => targets.push(spec),
            Err(m) => problems.fail(&v, format!("{t:?}: {m}")),
        }
    }
    if split_list(&v.text).is_empty() {
        problems.fail(&v, "no targets given; expected e.g. file:///backup".into());
    }
    targets
}

/// The history's name and namespace folder: `LIFEBOAT_NAME` else the pod's
/// `HOSTNAME`; `LIFEBOAT_NAMESPACE` else `POD_NAMESPACE` else `default`.
fn history(r: &Reader, problems: &mut Problems) -> (String, String) {
    let from_pod = |name: &str| {
        r.inputs.env.get(name).map(|text| Value {
            setting: name.into(),
            text: text.clone(),
        })
    };
    let name = match r.env("LIFEBOAT_NAME").or_else(|| from_pod("HOSTNAME")) {
        Some(v) => component(v, problems),
        None => {
            problems.0.push(Problem {
                setting: "LIFEBOAT_NAME".into(),
                value: String::new(),
                message: "required when HOSTNAME is not set: the name of this backup history"
                    .into(),
            });
            String::new()
        }
    };
    let namespace = match r
        .env("LIFEBOAT_NAMESPACE")
        .or_else(|| from_pod("POD_NAMESPACE"))
    {
        Some(v) => component(v, problems),
        None => "default".to_string(),
    };
    (name, namespace)
}

/// A folder name of the history: a Kubernetes name.
fn component(v: Value, problems: &mut Problems) -> String {
    if let Err(m) = check_component(&v.text) {
        problems.fail(&v, m);
    }
    v.text
}

/// `LIFEBOAT_GRACE_PERIOD` and `LIFEBOAT_PROGRESS_INTERVAL`.
fn durations(r: &Reader, problems: &mut Problems) -> (Duration, Duration) {
    let mut duration = |name: &str, default: Duration| match r.env(name) {
        None => default,
        Some(v) => parse_duration(&v.text).unwrap_or_else(|e| {
            problems.fail(&v, e);
            default
        }),
    };
    let grace_period = duration("LIFEBOAT_GRACE_PERIOD", Duration::from_secs(25));
    let progress_interval = duration("LIFEBOAT_PROGRESS_INTERVAL", Duration::from_secs(10));
    // A zero interval would make the progress ticker spin (and tokio's
    // interval panics on it).
    if progress_interval.is_zero() {
        problems.fail(
            &Value {
                setting: "LIFEBOAT_PROGRESS_INTERVAL".into(),
                text: r.raw.opt("LIFEBOAT_PROGRESS_INTERVAL").unwrap_or_default(),
            },
            "must be at least 1s; e.g. 10s (the default), 1m".into(),
        );
    }
    (grace_period, progress_interval)
}

/// `LIFEBOAT_JITTER`: this pod's runs (backups and verifies) move later by
/// its own offset within the window (`schedule::jitter_offset`).
fn jitter(r: &Reader, namespace: &str, name: &str, problems: &mut Problems) -> Duration {
    let Some(v) = r.env("LIFEBOAT_JITTER") else {
        return Duration::ZERO;
    };
    match parse_duration(&v.text) {
        Ok(window) => schedule::jitter_offset(&format!("{namespace}/{name}"), window),
        // A restore must not fail over a scheduling setting.
        Err(e) if r.role == Role::Backup => {
            problems.fail(&v, format!("{e}; e.g. 1h: each pod's runs move to its own time in the hour after the schedule's"));
            Duration::ZERO
        }
        Err(_) => Duration::ZERO,
    }
}

fn s3_options(r: &Reader, problems: &mut Problems) -> S3Options {
    let mut s3 = S3Options {
        endpoint: None,
        region: r.raw.opt("LIFEBOAT_S3_REGION"),
        path_style: false,
        lock: None,
        deletes: false,
    };
    if let Some(v) = r.env("LIFEBOAT_S3_OBJECT_LOCK") {
        // The period comes from the variable only, never the pod's
        // `lifeboat.dev/retention` annotation: whoever may annotate the pod
        // must not shorten the lock. (A bad value is reported by its own check.)
        let retention = r
            .raw
            .opt("LIFEBOAT_RETENTION")
            .map_or(Ok(Some(Policy::default())), |t| {
                retention::parse_setting(&t)
            })
            .unwrap_or(Some(Policy::default()));
        match crate::store::ObjectLock::parse(&v.text, retention.as_ref()) {
            Ok(lock) => s3.lock = lock,
            // What writes (a backup, verify's records) must lock as told; a
            // restore writes nothing to the store and must not fail on it.
            Err(e) if r.role != Role::Restore => problems.fail(&v, e),
            Err(_) => {}
        }
    }
    if let Some(v) = r.env("LIFEBOAT_S3_ENDPOINT") {
        if v.text.starts_with("http://") || v.text.starts_with("https://") {
            s3.endpoint = Some(v.text.trim_end_matches('/').to_string());
        } else {
            problems.fail(
                &v,
                "accepted: an http:// or https:// URL, e.g. https://s3.example.com".into(),
            );
        }
    }
    if let Some(v) = r.env("LIFEBOAT_S3_PATH_STYLE") {
        match v.text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => s3.path_style = true,
            "false" | "0" | "no" | "" => {}
            _ => problems.fail(&v, "accepted: true or false".into()),
        }
    }
    s3
}

/// Folders this process cannot use as its role needs: a clear start-up
/// error instead of a "Permission denied" at the first backup or in the
/// middle of a restore.
fn access_problems(role: Role, paths: &[PathBuf], targets: &[TargetSpec], problems: &mut Problems) {
    use crate::access::{problem, Need};
    let need = match role {
        Role::Backup => Need::Read,
        Role::Restore => Need::Write,
        Role::Inspect => return,
    };
    for p in paths {
        if let Some(message) = problem(p, need) {
            problems.0.push(Problem {
                setting: "LIFEBOAT_PATHS".into(),
                value: p.display().to_string(),
                message,
            });
        }
    }
    if role == Role::Backup {
        for t in targets {
            if let TargetSpec::Dir(d) = t {
                if let Some(message) = problem(d, Need::Write) {
                    problems.0.push(Problem {
                        setting: "LIFEBOAT_TARGETS".into(),
                        value: d.display().to_string(),
                        message,
                    });
                }
            }
        }
    }
}

/// `LIFEBOAT_AGE_RECIPIENTS` and `LIFEBOAT_AGE_IDENTITY_FILE`. The file is
/// read now, so a missing or malformed key stops the process at start
/// rather than at the first restore.
fn age_keys(
    raw: &Raw,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> (
    Option<crate::encryption::Recipients>,
    Option<crate::encryption::Identities>,
) {
    use crate::encryption::{Identities, Recipients};
    fn set(v: &Option<String>) -> Option<&str> {
        v.as_deref().map(str::trim).filter(|t| !t.is_empty())
    }
    let recipients = set(&raw.opt("LIFEBOAT_AGE_RECIPIENTS")).and_then(|text| {
        Recipients::parse(text)
            .map_err(|m| {
                // A secret key pasted here must not be echoed back.
                let shown = if text.contains("AGE-SECRET-KEY-") {
                    "(hidden)"
                } else {
                    text
                };
                problems.0.push(Problem {
                    setting: "LIFEBOAT_AGE_RECIPIENTS".into(),
                    value: shown.into(),
                    message: m,
                })
            })
            .ok()
    });
    let identities = set(&raw.opt("LIFEBOAT_AGE_IDENTITY_FILE")).and_then(|path| {
        Identities::load(Path::new(path))
            .map_err(|m| {
                problems.fail_env(
                    "LIFEBOAT_AGE_IDENTITY_FILE",
                    &raw.opt("LIFEBOAT_AGE_IDENTITY_FILE"),
                    m,
                )
            })
            .ok()
    });
    if let (Some(r), Some(i)) = (&recipients, &identities) {
        if !i.reads(&r.names()) {
            warnings.push(format!(
                "LIFEBOAT_AGE_IDENTITY_FILE holds the key(s) of {}, none of LIFEBOAT_AGE_RECIPIENTS ({}): new artifacts can only be checked by checksum here, and a restore needs another key",
                i.public_keys().join(", "),
                r.names().join(", ")
            ));
        }
    }
    (recipients, identities)
}

/// `LIFEBOAT_INCLUDE_KUBE`: which kinds, Secrets only into encrypted
/// artifacts unless allowed in plain text, and no backed-up path that
/// would share the `kubernetes/` folder in the tar.
fn include_kube(
    raw: &Raw,
    paths: &[PathBuf],
    encrypted: bool,
    problems: &mut Problems,
) -> Vec<Exported> {
    let value = raw.opt("LIFEBOAT_INCLUDE_KUBE");
    let Some(text) = value.as_deref().map(str::trim).filter(|t| !t.is_empty()) else {
        return Vec::new();
    };
    let v = Value {
        setting: "LIFEBOAT_INCLUDE_KUBE".into(),
        text: text.into(),
    };
    let mut kinds = Vec::new();
    for part in text.split(',').map(str::trim) {
        match part {
            "configmaps" => kinds.push(Exported::ConfigMaps),
            "secrets" => kinds.push(Exported::Secrets),
            other => problems.fail(
                &v,
                format!("unknown kind {other:?}; accepted: configmaps, secrets, or both comma-separated"),
            ),
        }
    }
    kinds.sort();
    kinds.dedup();
    let allowed = raw
        .opt("LIFEBOAT_ALLOW_PLAINTEXT_SECRETS")
        .as_deref()
        .map(str::trim)
        == Some("true");
    if kinds.contains(&Exported::Secrets) && !allowed && !encrypted {
        problems.fail(
            &v,
            "Secrets would be stored unencrypted; set LIFEBOAT_AGE_RECIPIENTS to encrypt artifacts, or LIFEBOAT_ALLOW_PLAINTEXT_SECRETS=true to accept plain text, or include only configmaps".into(),
        );
    }
    if let Some(p) = paths
        .iter()
        .find(|p| p.starts_with(crate::artifact::kube_tar_origin()))
    {
        problems.fail(
            &v,
            format!("{} would share the artifact's kubernetes/ folder; back up another path or leave LIFEBOAT_INCLUDE_KUBE unset", p.display()),
        );
    }
    kinds
}

fn split_list(s: &str) -> Vec<&str> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn check_abs_path(p: &str) -> Result<PathBuf, String> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err("is not absolute; paths must start with /".into());
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err("contains . or ..; give the plain absolute path".into());
    }
    if path == Path::new("/") {
        return Err("is the root folder; name the data folder itself".into());
    }
    // Normalizes trailing slashes and doubled separators.
    Ok(path.components().collect())
}

/// Names and namespaces become folder names in every target.
fn check_component(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err("accepted: letters, digits, '-', '_' and '.' (a Kubernetes name)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn inputs(pairs: &[(&str, &str)]) -> Inputs {
        let mut env: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.entry("LIFEBOAT_ANNOTATIONS_FILE".into())
            .or_insert_with(|| "/nonexistent/lifeboat-annotations".into());
        Inputs::from_env(env)
    }

    #[test]
    fn defaults() {
        let s = Settings::from_inputs(
            &inputs(&[
                ("LIFEBOAT_PATHS", "/data/"),
                ("LIFEBOAT_TARGETS", "file:///backup"),
                ("HOSTNAME", "nb-0"),
            ]),
            Role::Backup,
        )
        .unwrap();
        assert_eq!(s.paths, vec![PathBuf::from("/data")]);
        assert_eq!(s.schedule.as_str(), "0 2 * * *");
        assert_eq!(s.retention, Some(Policy::default()));
        assert_eq!(s.compression, Compression::Zstd(3));
        assert_eq!(s.restore, RestoreMode::IfEmpty);
        assert_eq!((s.name.as_str(), s.namespace.as_str()), ("nb-0", "default"));
        assert_eq!(s.grace_period, Duration::from_secs(25));
    }

    #[test]
    fn object_lock_and_retention_off_read_as_the_readme_shows() {
        let base = [
            ("LIFEBOAT_PATHS", "/data"),
            ("LIFEBOAT_TARGETS", "s3://bucket"),
            ("HOSTNAME", "nb-0"),
        ];
        let with = |extra: &[(&str, &str)], role| {
            let mut all = base.to_vec();
            all.extend_from_slice(extra);
            Settings::from_inputs(&inputs(&all), role)
        };
        let s = with(&[("LIFEBOAT_S3_OBJECT_LOCK", "compliance")], Role::Backup).unwrap();
        let lock = s.s3.lock.unwrap();
        assert_eq!(lock.to_string(), "compliance:7d", "the default daily=7");
        let s = with(&[("LIFEBOAT_RETENTION", "off")], Role::Backup).unwrap();
        assert_eq!(s.retention, None);
        let err = with(
            &[
                ("LIFEBOAT_RETENTION", "off"),
                ("LIFEBOAT_S3_OBJECT_LOCK", "governance"),
            ],
            Role::Backup,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("LIFEBOAT_S3_OBJECT_LOCK=\"governance\": LIFEBOAT_RETENTION=")
                && err.contains("e.g. governance:7d"),
            "{err}"
        );
        // A restore writes nothing; a lock setting it cannot read is no reason to fail.
        let s = with(&[("LIFEBOAT_S3_OBJECT_LOCK", "forever")], Role::Restore).unwrap();
        assert_eq!(s.s3.lock, None);
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let err = Settings::from_inputs(
            &inputs(&[
                ("LIFEBOAT_SOURCE", "mysql"),
                ("LIFEBOAT_PATHS", "data,/ok"),
                ("LIFEBOAT_SCHEDULE", "0 25 * * *"),
                ("LIFEBOAT_RETENTION", "yearly=3"),
                ("LIFEBOAT_COMPRESSION", "lz4"),
                ("LIFEBOAT_RESTORE", "sometimes"),
                ("HOSTNAME", "nb-0"),
            ]),
            Role::Backup,
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "7 problems",
            "LIFEBOAT_SOURCE=\"mysql\": unknown source; accepted: files",
            "LIFEBOAT_PATHS=\"data,/ok\": \"data\" is not absolute",
            "LIFEBOAT_SCHEDULE=\"0 25 * * *\": hour field: 25 is out of range 0-23",
            "LIFEBOAT_RETENTION=\"yearly=3\": unknown key \"yearly\"",
            "LIFEBOAT_COMPRESSION=\"lz4\": accepted: zstd",
            "LIFEBOAT_RESTORE=\"sometimes\": accepted: if-empty, always, never",
            "LIFEBOAT_TARGETS=\"\": required",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn full_every_is_for_unencrypted_files_backups() {
        let with = |extra: &[(&str, &str)]| {
            let mut env = vec![
                ("LIFEBOAT_PATHS", "/data"),
                ("LIFEBOAT_TARGETS", "file:///backup"),
                ("HOSTNAME", "nb-0"),
            ];
            env.extend_from_slice(extra);
            Settings::from_inputs(&inputs(&env), Role::Backup)
        };
        assert_eq!(with(&[]).unwrap().full_every, None);
        assert_eq!(
            with(&[("LIFEBOAT_FULL_EVERY", "24")]).unwrap().full_every,
            Some(FullEvery::Links(24))
        );
        assert_eq!(
            with(&[("LIFEBOAT_FULL_EVERY", "7d")]).unwrap().full_every,
            Some(FullEvery::Age(Duration::from_secs(7 * 86400)))
        );
        assert_eq!(
            with(&[("LIFEBOAT_FULL_EVERY", "off")]).unwrap().full_every,
            None
        );
        for (extra, needle) in [
            (
                vec![("LIFEBOAT_FULL_EVERY", "1")],
                "LIFEBOAT_FULL_EVERY=\"1\": 1 backups per chain is every backup full; accepted: off",
            ),
            (
                vec![("LIFEBOAT_FULL_EVERY", "daily")],
                "LIFEBOAT_FULL_EVERY=\"daily\":",
            ),
            (
                vec![("LIFEBOAT_FULL_EVERY", "24h"), ("LIFEBOAT_SOURCE", "couchdb")],
                "LIFEBOAT_FULL_EVERY=\"24h\": incremental chains are for LIFEBOAT_SOURCE=files; every couchdb backup is full",
            ),
            (
                vec![
                    ("LIFEBOAT_FULL_EVERY", "24h"),
                    ("LIFEBOAT_AGE_RECIPIENTS", "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"),
                ],
                "cannot be combined with LIFEBOAT_AGE_RECIPIENTS",
            ),
            (
                vec![
                    ("LIFEBOAT_FULL_EVERY", "24h"),
                    ("LIFEBOAT_INCLUDE_KUBE", "configmaps"),
                ],
                "cannot be combined with LIFEBOAT_INCLUDE_KUBE",
            ),
            (
                vec![("LIFEBOAT_FULL_EVERY", "100001")],
                "more than 100000",
            ),
        ] {
            let text = with(&extra).unwrap_err().to_string();
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        // A restore does not read it.
        let i = inputs(&[
            ("LIFEBOAT_PATHS", "/data"),
            ("LIFEBOAT_TARGETS", "/backup"),
            ("LIFEBOAT_FULL_EVERY", "nonsense"),
            ("HOSTNAME", "nb-0"),
        ]);
        assert!(Settings::from_inputs(&i, Role::Restore).is_ok());
    }

    #[test]
    fn jitter_gives_each_pod_its_own_time_in_the_window() {
        use chrono::TimeZone;
        let settings = |name: &str, jitter: &str| {
            Settings::from_inputs(
                &inputs(&[
                    ("LIFEBOAT_PATHS", "/data"),
                    ("LIFEBOAT_TARGETS", "/backup"),
                    ("LIFEBOAT_SCHEDULE", "0 2 * * *"),
                    ("LIFEBOAT_VERIFY_SCHEDULE", "0 12 * * *"),
                    ("LIFEBOAT_JITTER", jitter),
                    ("HOSTNAME", name),
                ]),
                Role::Backup,
            )
        };
        let midnight = chrono::Utc.with_ymd_and_hms(2026, 12, 3, 0, 0, 0).unwrap();
        let two = chrono::Utc.with_ymd_and_hms(2026, 12, 3, 2, 0, 0).unwrap();
        let mut times = std::collections::BTreeSet::new();
        for name in ["nb-0", "nb-1", "db-0"] {
            let s = settings(name, "1h").unwrap();
            let off =
                schedule::jitter_offset(&format!("default/{name}"), Duration::from_secs(3600));
            let next = s.schedule.next_after(midnight).unwrap();
            assert_eq!((next - two).num_seconds(), off.as_secs() as i64);
            assert_eq!(s.ops.verify_schedule.unwrap().offset(), off);
            times.insert(next);
        }
        assert_eq!(times.len(), 3, "{times:?}");
        let s = settings("nb-0", "0").unwrap();
        assert_eq!(s.schedule.next_after(midnight), Some(two));
        let Err(Error::Config(problems)) = settings("nb-0", "an hour") else {
            panic!("a bad window is an error");
        };
        assert_eq!(problems[0].setting, "LIFEBOAT_JITTER", "{problems:?}");
    }

    #[test]
    fn restore_ignores_backup_only_settings() {
        let i = inputs(&[
            ("LIFEBOAT_PATHS", "/data"),
            ("LIFEBOAT_TARGETS", "/backup"),
            ("LIFEBOAT_SCHEDULE", "nonsense"),
            ("LIFEBOAT_JITTER", "an hour"),
            ("HOSTNAME", "nb-0"),
        ]);
        assert!(Settings::from_inputs(&i, Role::Restore).is_ok());
        assert!(Settings::from_inputs(&i, Role::Backup).is_err());
    }

    #[test]
    fn annotations_override_env_and_file_forms_work() {
        let dir = tempfile::tempdir().unwrap();
        let ann = dir.path().join("annotations");
        std::fs::write(&ann, "lifeboat.dev/schedule=\"*/5 * * * *\"\nlifeboat.dev/backup-now=\"1\"\nlifeboat.dev/colour=\"red\"\nlifeboat.dev/drill-schedule=\"@daily\"\n").unwrap();
        let targets = dir.path().join("targets");
        std::fs::write(&targets, "file:///backup\n").unwrap();
        let i = inputs(&[
            ("LIFEBOAT_PATHS", "/data"),
            ("LIFEBOAT_TARGETS_FILE", targets.to_str().unwrap()),
            ("LIFEBOAT_SCHEDULE", "0 3 * * *"),
            ("LIFEBOAT_ANNOTATIONS_FILE", ann.to_str().unwrap()),
            ("HOSTNAME", "nb-0"),
        ]);
        let s = Settings::from_inputs(&i, Role::Backup).unwrap();
        assert_eq!(s.schedule.as_str(), "*/5 * * * *");
        assert_eq!(s.backup_now.as_deref(), Some("1"));
        assert_eq!(s.targets.len(), 1);
        assert!(s.warnings.iter().any(|w| w.contains("lifeboat.dev/colour")));
        assert!(
            s.warnings
                .iter()
                .any(|w| w.contains("drill-schedule on the pod") && w.contains("StatefulSet")),
            "{:?}",
            s.warnings
        );

        std::fs::write(&ann, "lifeboat.dev/schedule=\"61 * * * *\"\n").unwrap();
        let mut i = i;
        assert!(i.reload_annotations());
        let e = Settings::from_inputs(&i, Role::Backup)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("annotation lifeboat.dev/schedule=\"61 * * * *\": minute field: 61"),
            "{e}"
        );
    }

    #[test]
    fn url_credentials_are_hidden_even_when_the_url_does_not_parse() {
        assert_eq!(
            hide_url_credentials("http://admin:se/cr@t@db:5984/x"),
            "http://(credentials hidden)@db:5984/x"
        );
        assert_eq!(hide_url_credentials("http://db:5984"), "http://db:5984");
        assert_eq!(hide_url_credentials("a@b"), "a@b");
        let p = Problem {
            setting: "LIFEBOAT_COUCHDB_URL".into(),
            value: "https://u:p/w@h".into(),
            message: "m".into(),
        };
        assert!(!p.to_string().contains("p/w"), "{p}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("18446744073709551615").is_err());
        assert!(parse_duration("18446744073709551615d").is_err());
        assert!(parse_duration("367d").is_err());
        assert_eq!(parse_duration("366d").unwrap(), MAX_DURATION);
    }
}
