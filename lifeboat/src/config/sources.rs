//! The source section of the settings: `LIFEBOAT_SOURCE` and what each
//! source reads (PostgreSQL mode and `PG*`, the CouchDB and ArangoDB
//! connections, `LIFEBOAT_DATABASES`, `PG_MAJOR`, `TMPDIR`), with the rule
//! that a database source takes exactly one path. The result is the
//! sources' own [`SourceSettings`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::reader::{Problems, Reader};
use crate::problem::Problem;
use crate::source::{ArangoConn, CouchConn, DbFilter, PgConn, PgMode, SourceKind, SourceSettings};

/// `LIFEBOAT_SOURCE`: one of the known sources, `files` when unset.
fn source_kind(r: &Reader, problems: &mut Problems) -> SourceKind {
    let Some(v) = r.pick("LIFEBOAT_SOURCE") else {
        return SourceKind::Files;
    };
    match v.text.trim() {
        "" => SourceKind::Files,
        name => SourceKind::from_name(name).unwrap_or_else(|| {
            problems.fail(
                &v,
                "unknown source; accepted: files, postgres, couchdb, arangodb".into(),
            );
            SourceKind::Files
        }),
    }
}

/// The source section: which source, and its own settings and rules.
pub(super) fn source_settings(
    r: &Reader,
    paths: &[PathBuf],
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> SourceSettings {
    let source = source_kind(r, problems);
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
    let couchdb = CouchConn::new(
        couchdb_url.as_deref(),
        env.get("COUCHDB_USER").map(String::as_str),
        env.get("COUCHDB_PASSWORD").map(String::as_str),
    )
    .unwrap_or_else(|m| {
        problems.fail_env("LIFEBOAT_COUCHDB_URL", &couchdb_url, m);
        CouchConn::new(None, None, None).expect("the default URL parses")
    });
    let arangodb_url = r.raw.opt("LIFEBOAT_ARANGODB_URL");
    let arangodb = ArangoConn::new(
        arangodb_url.as_deref(),
        r.raw.opt("LIFEBOAT_ARANGODB_USER").as_deref(),
        r.raw
            .opt("LIFEBOAT_ARANGODB_PASSWORD")
            .as_deref()
            .or(env.get("ARANGO_ROOT_PASSWORD").map(String::as_str)),
    )
    .unwrap_or_else(|m| {
        problems.fail_env("LIFEBOAT_ARANGODB_URL", &arangodb_url, m);
        ArangoConn::new(None, None, None).expect("the default URL parses")
    });
    one_path_rules(r, &source, postgres_mode, paths, problems);
    let postgres = PgConn::from_env(env).unwrap_or_else(|m| {
        problems.0.push(Problem {
            setting: "PGPORT".into(),
            value: env.get("PGPORT").cloned().unwrap_or_default(),
            message: m,
        });
        PgConn::from_env(&BTreeMap::new()).expect("defaults parse")
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
    let wal = super::wal::wal_settings(r, &source, postgres_mode, problems);
    SourceSettings {
        wal,
        kind: source,
        postgres_mode,
        databases,
        couchdb,
        arangodb,
        postgres,
        pg_major,
        spool_dir: env
            .get("TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp")),
    }
}

/// A database source stages its dump in (or backs up) exactly one path.
fn one_path_rules(
    r: &Reader,
    source: &SourceKind,
    mode: PgMode,
    paths: &[PathBuf],
    problems: &mut Problems,
) {
    if paths.len() <= 1 {
        return;
    }
    let message = match (source, mode) {
        (SourceKind::Files | SourceKind::Unknown(_), _) => return,
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
