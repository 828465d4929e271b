//! Settings from the environment (`LIFEBOAT_*`, each also as `LIFEBOAT_*_FILE`)
//! and pod annotations (`lifeboat.dev/*`, which win), in three steps
//! (docs/ARCHITECTURE.md §2): gather the raw strings ([`Inputs::from_process`], the only I/O), validate
//! them all at once with no I/O ([`Settings::from_inputs`]), then let the
//! targets check themselves ([`crate::store::AnyTarget::check`]).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::annotations::{self, PREFIX};
use crate::compression::Compression;
use crate::retention::{self, Policy};
use crate::schedule::{self, Schedule};
use crate::store::{S3Options, TargetSpec};
use crate::{Error, Result};

pub mod keys;
mod ops;
pub mod setting_file;
pub use ops::{Hook, Notify, NotifyFormat, NotifyOn, Ops, DEFAULT_LISTEN};

pub use crate::problem::{format_problems, hide_url_credentials, Problem};

pub const DEFAULT_ANNOTATIONS_FILE: &str = "/etc/lifeboat/annotations";
pub const DEFAULT_SCHEDULE: &str = "0 2 * * *";

/// What the process is about to do; a restore does not need a valid schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Backup,
    Restore,
    /// `list`, `verify`, `restore --to`: only targets and the history's name matter.
    Inspect,
}

/// How the postgres source backs up (`LIFEBOAT_POSTGRES_MODE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PgMode {
    /// PGDATA and WAL: restored before the server starts, same major only.
    #[default]
    Physical,
    /// `pg_dump` per database: loaded after the server starts, any newer major.
    Logical,
}

/// Which databases a logical dump covers (`LIFEBOAT_DATABASES`): names to
/// include (all when none), and `!name` to leave out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbFilter {
    pub include: Option<Vec<String>>,
    pub exclude: Vec<String>,
}

impl DbFilter {
    pub fn parse(list: &str) -> std::result::Result<DbFilter, String> {
        let mut f = DbFilter::default();
        for item in split_list(list) {
            match item.strip_prefix('!') {
                Some(name) if !name.is_empty() => f.exclude.push(name.to_string()),
                Some(_) => return Err("\"!\" must be followed by a database name".into()),
                None => f
                    .include
                    .get_or_insert_with(Vec::new)
                    .push(item.to_string()),
            }
        }
        if f.include.is_none() && f.exclude.is_empty() {
            return Err("no database named; expected a comma list like app,analytics or !_replicator, or leave it unset for all".into());
        }
        Ok(f)
    }

    /// The databases to dump out of those that exist. A listed one that
    /// does not exist is an error: a typo must not silently skip data.
    pub fn select(&self, existing: &[String]) -> std::result::Result<Vec<String>, String> {
        let picked = match &self.include {
            None => existing.to_vec(),
            Some(list) => {
                let missing: Vec<&String> = list.iter().filter(|n| !existing.contains(n)).collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "database(s) {missing:?} named in LIFEBOAT_DATABASES do not exist (there are: {})",
                        existing.join(", ")
                    ));
                }
                list.clone()
            }
        };
        Ok(picked
            .into_iter()
            .filter(|n| !self.exclude.contains(n))
            .collect())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Files,
    Postgres,
    CouchDb,
    ArangoDb,
}

impl SourceKind {
    /// The kind a manifest's `source` names, if it is one we know.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            SourceKind::Files,
            SourceKind::Postgres,
            SourceKind::CouchDb,
            SourceKind::ArangoDb,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Files => "files",
            SourceKind::Postgres => "postgres",
            SourceKind::CouchDb => "couchdb",
            SourceKind::ArangoDb => "arangodb",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreMode {
    IfEmpty,
    Always,
    Never,
}

/// The raw strings, gathered once from the process environment and files.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub env: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Problems found while reading (`_FILE` unreadable, annotations file garbled).
    pub problems: Vec<Problem>,
}

impl Inputs {
    /// Reads the environment, resolves `*_FILE` variables, and reads the
    /// annotations file (missing is fine: it is optional).
    pub fn from_process() -> Self {
        let env: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Self::from_env(env)
    }

    pub fn from_env(raw: BTreeMap<String, String>) -> Self {
        let mut env = BTreeMap::new();
        let mut problems = Vec::new();
        for (k, v) in &raw {
            // A setting whose own name ends in _FILE (LIFEBOAT_ANNOTATIONS_FILE)
            // is a path, not the file form of another setting.
            let is_setting = keys::is_setting(k);
            let Some(base) = k.strip_suffix("_FILE").filter(|_| !is_setting) else {
                env.entry(k.clone()).or_insert_with(|| v.clone());
                continue;
            };
            if raw.contains_key(base) {
                problems.push(Problem {
                    setting: k.clone(),
                    value: v.clone(),
                    message: format!("both {base} and {k} are set; set only one"),
                });
                continue;
            }
            match setting_file::read(Path::new(v), setting_file::MAX_SETTING_FILE) {
                Ok(s) => {
                    env.insert(
                        base.to_string(),
                        s.trim_end_matches(['\n', '\r']).to_string(),
                    );
                }
                Err(e) if k.starts_with("LIFEBOAT_") || k.starts_with("PG") => {
                    problems.push(Problem {
                        setting: k.clone(),
                        value: v.clone(),
                        message: format!("cannot read the file: {e}"),
                    })
                }
                Err(_) => {}
            }
        }
        let mut inputs = Inputs {
            env,
            annotations: BTreeMap::new(),
            problems,
        };
        inputs.reload_annotations();
        inputs
    }

    pub fn annotations_file(&self) -> PathBuf {
        PathBuf::from(
            self.env
                .get("LIFEBOAT_ANNOTATIONS_FILE")
                .map(String::as_str)
                .unwrap_or(DEFAULT_ANNOTATIONS_FILE),
        )
    }

    /// Re-reads the annotations file. Returns whether anything changed.
    pub fn reload_annotations(&mut self) -> bool {
        let path = self.annotations_file();
        self.problems
            .retain(|p| p.setting != "LIFEBOAT_ANNOTATIONS_FILE");
        let parsed = match setting_file::read(&path, setting_file::MAX_ANNOTATIONS_FILE) {
            Ok(text) => match annotations::parse(&text) {
                Ok(m) => m,
                Err(e) => {
                    self.problems.push(Problem {
                        setting: "LIFEBOAT_ANNOTATIONS_FILE".into(),
                        value: path.display().to_string(),
                        message: format!("cannot parse: {e}; expected one key=\"value\" per line"),
                    });
                    return false;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                self.problems.push(Problem {
                    setting: "LIFEBOAT_ANNOTATIONS_FILE".into(),
                    value: path.display().to_string(),
                    message: format!("cannot read: {e}"),
                });
                return false;
            }
        };
        self.set_annotations(parsed)
    }

    /// Takes the pod's annotations (from the file or the API). Returns
    /// whether a setting may have changed: `lifeboat.dev/last-backup` is
    /// written by the sidecar itself and does not count.
    pub fn set_annotations(&mut self, all: BTreeMap<String, String>) -> bool {
        let ours: BTreeMap<String, String> = all
            .into_iter()
            .filter(|(k, _)| k.starts_with(PREFIX) && k != crate::cluster::LAST_BACKUP)
            .collect();
        let changed = ours != self.annotations;
        self.annotations = ours;
        changed
    }
}

pub use keys::{Key, KEYS};

/// The process's variables, read by their names in the key table.
pub(crate) struct Raw<'a>(&'a BTreeMap<String, String>);

impl Raw<'_> {
    /// The value of `name`, which must be in [`KEYS`].
    pub(crate) fn opt(&self, name: &str) -> Option<String> {
        debug_assert!(keys::is_setting(name), "{name} is not in the key table");
        self.0.get(name).cloned()
    }
}

/// Validated settings. Built only through [`Settings::from_inputs`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: SourceKind,
    pub paths: Vec<PathBuf>,
    pub exclude: Vec<String>,
    pub exclude_set: GlobSet,
    pub schedule: Schedule,
    pub retention: Policy,
    pub targets: Vec<TargetSpec>,
    pub compression: Compression,
    pub restore: RestoreMode,
    pub name: String,
    pub namespace: String,
    pub grace_period: Duration,
    pub progress_interval: Duration,
    pub s3: S3Options,
    /// `PG*` connection settings, for the postgres source.
    pub postgres: crate::source::PgConn,
    /// `PG_MAJOR`: restore refuses postgres artifacts of another major version.
    pub pg_major: Option<u64>,
    /// `LIFEBOAT_POSTGRES_MODE`.
    pub postgres_mode: PgMode,
    /// `LIFEBOAT_DATABASES`: which databases a logical dump covers.
    pub databases: DbFilter,
    /// `LIFEBOAT_COUCHDB_URL` and `COUCHDB_USER` / `COUCHDB_PASSWORD`.
    pub couchdb: crate::source::CouchConn,
    /// `LIFEBOAT_ARANGODB_*` (password also from `ARANGO_ROOT_PASSWORD`).
    pub arangodb: crate::source::ArangoConn,
    /// Where dumps wait for their tar header: `TMPDIR`, else `/tmp`.
    pub spool_dir: PathBuf,
    /// The current value of `lifeboat.dev/backup-now`, if set.
    pub backup_now: Option<String>,
    /// `LIFEBOAT_INCLUDE_KUBE`: `configmaps` and/or `secrets`, in that order.
    pub include_kube: Vec<crate::cluster::Exported>,
    /// `LIFEBOAT_AGE_RECIPIENTS`: new artifacts are encrypted to these.
    pub recipients: Option<crate::encryption::Recipients>,
    /// `LIFEBOAT_AGE_IDENTITY_FILE`, read at start: keys for encrypted artifacts.
    pub identities: Option<crate::encryption::Identities>,
    /// Endpoint, staleness, verification, notifications, hooks.
    pub ops: Ops,
    /// Not wrong, but worth a log line (unknown variables or annotations).
    pub warnings: Vec<String>,
}

/// A value with where it came from, so a problem names the right setting.
struct Value {
    setting: String,
    text: String,
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

        let source = source_kind(&r, &mut problems);
        let paths = paths(&r, &mut problems);
        let (exclude, exclude_set) = excludes(&r, &mut problems);
        let schedule = r.parsed(&mut problems, "LIFEBOAT_SCHEDULE", |t| {
            Schedule::parse(t).map_err(|e| format!("{e}; accepted: {}", schedule::ACCEPTED))
        });
        let schedule = schedule.unwrap_or_else(default_schedule);
        let retention = r
            .parsed(&mut problems, "LIFEBOAT_RETENTION", |t| {
                Policy::parse(t).map_err(|e| format!("{e}; accepted: {}", retention::ACCEPTED))
            })
            .unwrap_or_default();
        let compression = r
            .parsed(&mut problems, "LIFEBOAT_COMPRESSION", Compression::parse)
            .unwrap_or_default();
        let restore = restore_mode(&r, &mut problems);
        let targets = targets(&r, &mut problems);
        let (name, namespace) = history(&r, &mut problems);
        let (grace_period, progress_interval) = durations(&r, &mut problems);
        let s3 = s3_options(&r, &mut problems);
        let db = databases(&r, source, &paths, &mut problems, &mut warnings);
        access_problems(role, &paths, &targets, &mut problems);
        let (recipients, identities) = age_keys(&r.raw, &mut problems, &mut warnings);
        let include_kube = include_kube(&r.raw, &paths, recipients.is_some(), &mut problems);
        // Only a running sidecar or `backup-now` uses these; a restore must
        // not fail over a notification setting.
        let ops = if role == Role::Backup {
            ops::parse(&r.raw, &mut problems)
        } else {
            Ops::default()
        };

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
            restore,
            name,
            namespace,
            grace_period,
            progress_interval,
            s3,
            postgres: db.postgres,
            pg_major: db.pg_major,
            postgres_mode: db.postgres_mode,
            databases: db.databases,
            couchdb: db.couchdb,
            arangodb: db.arangodb,
            spool_dir: inputs
                .env
                .get("TMPDIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/tmp")),
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

/// What every section reads: the raw inputs and the role they serve.
struct Reader<'a> {
    inputs: &'a Inputs,
    raw: Raw<'a>,
    role: Role,
}

impl Reader<'_> {
    /// A setting's value: its annotation (from the key table) first, then
    /// its environment variable.
    fn pick(&self, env: &str) -> Option<Value> {
        let annotation = KEYS
            .iter()
            .find(|k| k.env == env)
            .and_then(|k| k.annotation);
        if let Some(a) = annotation {
            let key = format!("{PREFIX}{a}");
            if let Some(v) = self.inputs.annotations.get(&key) {
                return Some(Value {
                    setting: format!("annotation {key}"),
                    text: v.clone(),
                });
            }
        }
        self.raw.opt(env).map(|text| Value {
            setting: env.into(),
            text,
        })
    }

    /// A backup-only setting parsed by `parse`: `None` when unset, or when
    /// wrong (then a problem, but only for the backup role: a restore does
    /// not fail over a bad schedule).
    fn parsed<T>(
        &self,
        problems: &mut Problems,
        env: &str,
        parse: impl FnOnce(&str) -> std::result::Result<T, String>,
    ) -> Option<T> {
        let v = self.pick(env)?;
        match parse(&v.text) {
            Ok(t) => Some(t),
            Err(m) => {
                if self.role == Role::Backup {
                    problems.fail(&v, m);
                }
                None
            }
        }
    }

    /// An environment-only setting as a [`Value`], so a problem names it.
    fn env(&self, name: &str) -> Option<Value> {
        self.raw.opt(name).map(|text| Value {
            setting: name.into(),
            text,
        })
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
        if !keys::known_annotations().any(|a| a == short) {
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

fn source_kind(r: &Reader, problems: &mut Problems) -> SourceKind {
    let Some(v) = r.pick("LIFEBOAT_SOURCE") else {
        return SourceKind::Files;
    };
    match v.text.trim() {
        "files" | "" => SourceKind::Files,
        "postgres" => SourceKind::Postgres,
        "couchdb" => SourceKind::CouchDb,
        "arangodb" => SourceKind::ArangoDb,
        _ => {
            problems.fail(
                &v,
                "unknown source; accepted: files, postgres, couchdb, arangodb".into(),
            );
            SourceKind::Files
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
    let mut globs = GlobSetBuilder::new();
    if let Some(v) = r.pick("LIFEBOAT_EXCLUDE") {
        for g in split_list(&v.text) {
            match Glob::new(g) {
                Ok(glob) => {
                    globs.add(glob);
                    exclude.push(g.to_string());
                }
                Err(e) if r.role == Role::Backup => problems.fail(
                    &v,
                    format!(
                        "glob {g:?} is invalid: {}; accepted: globs like **/.ipynb_checkpoints or *.tmp",
                        e.kind()
                    ),
                ),
                Err(_) => {}
            }
        }
    }
    (exclude, globs.build().unwrap_or_else(|_| GlobSet::empty()))
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

fn s3_options(r: &Reader, problems: &mut Problems) -> S3Options {
    let mut s3 = S3Options {
        endpoint: None,
        region: r.raw.opt("LIFEBOAT_S3_REGION"),
        path_style: false,
    };
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

/// The database sources' settings, and their rules about paths.
struct DbSettings {
    postgres_mode: PgMode,
    databases: DbFilter,
    couchdb: crate::source::CouchConn,
    arangodb: crate::source::ArangoConn,
    postgres: crate::source::PgConn,
    pg_major: Option<u64>,
}

fn databases(
    r: &Reader,
    source: SourceKind,
    paths: &[PathBuf],
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> DbSettings {
    let env = &r.inputs.env;
    let postgres_mode = match r.env("LIFEBOAT_POSTGRES_MODE") {
        None => PgMode::Physical,
        Some(v) => match v.text.trim() {
            "physical" | "" => PgMode::Physical,
            "logical" => PgMode::Logical,
            _ => {
                problems.fail(
                    &v,
                    "accepted: physical (PGDATA and WAL, restored before the server starts) or logical (pg_dump per database)".into(),
                );
                PgMode::Physical
            }
        },
    };
    if r.raw.opt("LIFEBOAT_POSTGRES_MODE").is_some() && source != SourceKind::Postgres {
        warnings.push(format!(
            "LIFEBOAT_POSTGRES_MODE is ignored: the source is {}",
            source.as_str()
        ));
    }
    let databases = match r.env("LIFEBOAT_DATABASES") {
        None => DbFilter::default(),
        Some(v) => DbFilter::parse(&v.text).unwrap_or_else(|m| {
            problems.fail(&v, m);
            DbFilter::default()
        }),
    };
    let couchdb_url = r.raw.opt("LIFEBOAT_COUCHDB_URL");
    let couchdb = crate::source::CouchConn::new(
        couchdb_url.as_deref(),
        env.get("COUCHDB_USER").map(String::as_str),
        env.get("COUCHDB_PASSWORD").map(String::as_str),
    )
    .unwrap_or_else(|m| {
        problems.fail_env("LIFEBOAT_COUCHDB_URL", &couchdb_url, m);
        crate::source::CouchConn::new(None, None, None).expect("the default URL parses")
    });
    let arangodb_url = r.raw.opt("LIFEBOAT_ARANGODB_URL");
    let arangodb = crate::source::ArangoConn::new(
        arangodb_url.as_deref(),
        r.raw.opt("LIFEBOAT_ARANGODB_USER").as_deref(),
        r.raw
            .opt("LIFEBOAT_ARANGODB_PASSWORD")
            .as_deref()
            .or(env.get("ARANGO_ROOT_PASSWORD").map(String::as_str)),
    )
    .unwrap_or_else(|m| {
        problems.fail_env("LIFEBOAT_ARANGODB_URL", &arangodb_url, m);
        crate::source::ArangoConn::new(None, None, None).expect("the default URL parses")
    });
    one_path_rules(r, source, postgres_mode, paths, problems);
    let postgres = crate::source::PgConn::from_env(env).unwrap_or_else(|m| {
        problems.0.push(Problem {
            setting: "PGPORT".into(),
            value: env.get("PGPORT").cloned().unwrap_or_default(),
            message: m,
        });
        crate::source::PgConn::from_env(&BTreeMap::new()).expect("defaults parse")
    });
    let pg_major = env.get("PG_MAJOR").and_then(|v| {
        let n = v.trim().split('.').next().unwrap_or_default().parse().ok();
        if n.is_none() {
            problems.0.push(Problem {
                setting: "PG_MAJOR".into(),
                value: v.clone(),
                message: "accepted: a major version like 15".into(),
            });
        }
        n
    });
    DbSettings {
        postgres_mode,
        databases,
        couchdb,
        arangodb,
        postgres,
        pg_major,
    }
}

/// A database source stages its dump in (or backs up) exactly one path.
fn one_path_rules(
    r: &Reader,
    source: SourceKind,
    mode: PgMode,
    paths: &[PathBuf],
    problems: &mut Problems,
) {
    if paths.len() <= 1 {
        return;
    }
    let message = match (source, mode) {
        (SourceKind::Files, _) => return,
        (SourceKind::CouchDb | SourceKind::ArangoDb, _) => format!(
            "the {} source takes exactly one path: the data volume, where a restore stages the dump",
            source.as_str()
        ),
        (SourceKind::Postgres, PgMode::Physical) => {
            "the postgres source takes exactly one path: PGDATA".into()
        }
        (SourceKind::Postgres, PgMode::Logical) => "the logical postgres mode takes exactly one path: the volume where a restore stages the dump (PGDATA's parent)".into(),
    };
    problems.0.push(Problem {
        setting: "LIFEBOAT_PATHS".into(),
        value: r.raw.opt("LIFEBOAT_PATHS").unwrap_or_default(),
        message,
    });
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
) -> Vec<crate::cluster::Exported> {
    use crate::cluster::Exported;
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
        .find(|p| p.starts_with(crate::cluster::tar_origin()))
    {
        problems.fail(
            &v,
            format!("{} would share the artifact's kubernetes/ folder; back up another path or leave LIFEBOAT_INCLUDE_KUBE unset", p.display()),
        );
    }
    kinds
}

struct Problems(Vec<Problem>);

impl Problems {
    fn fail(&mut self, v: &Value, message: String) {
        self.0.push(Problem {
            setting: v.setting.clone(),
            value: v.text.clone(),
            message,
        });
    }

    /// A problem with an environment variable's value (empty when unset).
    fn fail_env(&mut self, setting: &str, value: &Option<String>, message: String) {
        self.0.push(Problem {
            setting: setting.into(),
            value: value.clone().unwrap_or_default(),
            message,
        });
    }
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

/// The longest duration any setting takes. Longer ones are mistakes (a
/// number of milliseconds, a copied `u64::MAX`), and adding them to a clock
/// would overflow it.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86400);

/// `90`, `90s`, `5m`, `1h`, `2d`; at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const ACCEPTED: &str = "accepted: a whole number of seconds, or with a unit: 30s, 5m, 1h, 2d";
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1),
        Some((i, 'm')) => (&t[..i], 60),
        Some((i, 'h')) => (&t[..i], 3600),
        Some((i, 'd')) => (&t[..i], 86400),
        _ => (t, 1),
    };
    let n = num
        .trim()
        .parse::<u64>()
        .map_err(|_| ACCEPTED.to_string())?;
    match n.checked_mul(mult).map(Duration::from_secs) {
        Some(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!(
            "longer than {}d, the most any duration setting takes; {ACCEPTED}",
            MAX_DURATION.as_secs() / 86400
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(s.retention, Policy::default());
        assert_eq!(s.compression, Compression::Zstd(3));
        assert_eq!(s.restore, RestoreMode::IfEmpty);
        assert_eq!((s.name.as_str(), s.namespace.as_str()), ("nb-0", "default"));
        assert_eq!(s.grace_period, Duration::from_secs(25));
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
    fn restore_ignores_backup_only_settings() {
        let i = inputs(&[
            ("LIFEBOAT_PATHS", "/data"),
            ("LIFEBOAT_TARGETS", "/backup"),
            ("LIFEBOAT_SCHEDULE", "nonsense"),
            ("HOSTNAME", "nb-0"),
        ]);
        assert!(Settings::from_inputs(&i, Role::Restore).is_ok());
        assert!(Settings::from_inputs(&i, Role::Backup).is_err());
    }

    #[test]
    fn annotations_override_env_and_file_forms_work() {
        let dir = tempfile::tempdir().unwrap();
        let ann = dir.path().join("annotations");
        std::fs::write(&ann, "lifeboat.dev/schedule=\"*/5 * * * *\"\nlifeboat.dev/backup-now=\"1\"\nlifeboat.dev/colour=\"red\"\n").unwrap();
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
