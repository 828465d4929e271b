//! The one table of settings: every `LIFEBOAT_*` variable, the pod annotation
//! that overrides it, its help line and whether the restore init container
//! reads it. Both binaries' `--help`, the unknown-variable and
//! unknown-annotation warnings and the settings' reader all come from here,
//! so they cannot disagree.

/// One setting.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// The environment variable (also read as `<env>_FILE`).
    pub env: &'static str,
    /// The `lifeboat.dev/<annotation>` that wins over the variable, if any.
    pub annotation: Option<&'static str>,
    pub help: &'static str,
    /// The restore init container uses it too (what and where to restore,
    /// from which targets, with which key); without it, only the sidecar's
    /// work depends on it. `lifeboat-restore --help` lists exactly these.
    pub restore: bool,
}

pub const KEYS: &[Key] = &[
    Key {
        env: "LIFEBOAT_SOURCE",
        annotation: Some("source"),
        help: "what to back up: files (default), postgres, couchdb or arangodb",
        restore: true,
    },
    Key {
        env: "LIFEBOAT_PATHS",
        annotation: Some("paths"),
        help: "absolute folders, comma-separated (required)",
        restore: true,
    },
    Key {
        env: "LIFEBOAT_EXCLUDE",
        annotation: Some("exclude"),
        help: "globs to leave out, e.g. **/.ipynb_checkpoints",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_SCHEDULE",
        annotation: Some("schedule"),
        help: "5-field cron in UTC, or @daily etc. (default: 0 2 * * *)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_BACKUP_AT_START",
        annotation: None,
        help: "on: back up when the sidecar starts if the history has no backup yet or missed its last scheduled run (first deploy, a pod down over the schedule); off (default)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_JITTER",
        annotation: None,
        help: "spread pods on one schedule: each pod's runs move later by its own stable offset within this window, e.g. 1h (default: 0)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_RETENTION",
        annotation: Some("retention"),
        help: "default: last=3,daily=7,weekly=4,monthly=6; off: the sidecar deletes nothing (write-only credentials, expiry by the bucket's lifecycle rules)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_TARGETS",
        annotation: None,
        help: "e.g. file:///backup; first is primary (required)",
        restore: true,
    },
    Key {
        env: "LIFEBOAT_FULL_EVERY",
        annotation: Some("full-every"),
        help: "incremental chains (files source): a full backup every 24h, 7d or N backups; off (default): every backup full",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_COMPRESSION",
        annotation: Some("compression"),
        help: "zstd[:1-19], gzip[:1-9] or none (default: zstd:3)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_RESTORE",
        annotation: Some("restore"),
        help: "if-empty (default), always or never",
        restore: true,
    },
    Key {
        env: "LIFEBOAT_RESTORE_FAILED_DRILLS",
        annotation: Some("restore-failed-drills"),
        help: "skip (default): restores pass over artifacts that failed a drill; allow: not",
        restore: true,
    },
    Key {
        env: "LIFEBOAT_NAME",
        annotation: None,
        help: "name of the backup history (default: HOSTNAME)",
        restore: true,
    },
    Key {
        env: "LIFEBOAT_NAMESPACE",
        annotation: None,
        help: "its namespace folder (default: POD_NAMESPACE, default)",
        restore: true,
    },
    Key {
        env: "LIFEBOAT_ANNOTATIONS_FILE",
        annotation: None,
        help: "downward-API annotations (default: /etc/lifeboat/annotations)",
        restore: true,
    },
    Key {
        env: "LIFEBOAT_GRACE_PERIOD",
        annotation: None,
        help: "time a backup may finish after SIGTERM (default: 25s)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_PROGRESS_INTERVAL",
        annotation: None,
        help: "how often long work logs progress (default: 10s)",
        restore: true,
    },
    Key {
        env: "LIFEBOAT_POSTGRES_MODE",
        annotation: None,
        help: "physical (default: PGDATA + WAL) or logical (pg_dump per database)",
        restore: true,
    },
    Key {
        env: "LIFEBOAT_POSTGRES_WAL",
        annotation: Some("postgres-wal"),
        help: "on: archive WAL continuously and restore to minutes ago (physical postgres); off (default)",
        restore: true,
    },
    Key {
        env: "LIFEBOAT_WAL_INTERVAL",
        annotation: None,
        help: "with LIFEBOAT_POSTGRES_WAL: how old the newest archived WAL may get (default: 60s)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_WAL_QUIET_MAX",
        annotation: None,
        help: "with LIFEBOAT_POSTGRES_WAL: how long WAL without a commit (checkpoints, autovacuum) may wait before it is archived anyway; 0: never waits (default: 10m)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_WAL_SLOT",
        annotation: None,
        help: "with LIFEBOAT_POSTGRES_WAL: the replication slot's name (default: lifeboat)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_WAL_MAX_RETAINED",
        annotation: None,
        help: "with LIFEBOAT_POSTGRES_WAL: WAL the slot may hold before it is dropped (default: 4GiB)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_RESTORE_TARGET_TIME",
        annotation: Some("restore-target-time"),
        help: "with LIFEBOAT_POSTGRES_WAL: a restore brings back the state at this time (RFC 3339, e.g. 2026-12-01T09:30:00Z), not the newest; unset it once restored",
        restore: true,
    },
    Key {
        env: "LIFEBOAT_DATABASES",
        annotation: None,
        help: "logical dumps: databases, comma-separated; !name leaves one out (default: all)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_COUCHDB_URL",
        annotation: None,
        help: "CouchDB's URL (default: http://127.0.0.1:5984)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_ARANGODB_URL",
        annotation: None,
        help: "ArangoDB's URL (default: http://127.0.0.1:8529)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_ARANGODB_USER",
        annotation: None,
        help: "ArangoDB user (default: root)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_ARANGODB_PASSWORD",
        annotation: None,
        help: "its password (default: ARANGO_ROOT_PASSWORD)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_S3_ENDPOINT",
        annotation: None,
        help: "S3-compatible endpoint URL, e.g. http://minio:9000",
        restore: true,
    },
    Key {
        env: "LIFEBOAT_S3_REGION",
        annotation: None,
        help: "S3 region (default: the AWS chain, else us-east-1)",
        restore: true,
    },
    Key {
        env: "LIFEBOAT_S3_PATH_STYLE",
        annotation: None,
        help: "true for path-style URLs (most S3-compatible stores)",
        restore: true,
    },
    Key {
        env: "LIFEBOAT_S3_OBJECT_LOCK",
        annotation: None,
        help: "governance or compliance[:PERIOD]: lock every object written for PERIOD (default: the retention's daily window); retention deletes only what the lock allows (default: off)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_LOG",
        annotation: None,
        help: "log filter: a level (error, warn, info, debug, trace, off) or levels per module, e.g. info,lifeboat::store=debug (default: info)",
        restore: true,
    },
    Key {
        env: "LIFEBOAT_INCLUDE_KUBE",
        annotation: None,
        help: "also store the namespace's configmaps and/or secrets under kubernetes/ (needs the API)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_ALLOW_PLAINTEXT_SECRETS",
        annotation: None,
        help: "true to store Secrets in artifacts without encryption",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_AGE_RECIPIENTS",
        annotation: None,
        help: "encrypt artifacts with age to these public keys (age1…, comma-separated)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_AGE_IDENTITY_FILE",
        annotation: None,
        help: "age secret key file (age-keygen's output) for restore and verify of encrypted artifacts",
        restore: true,
    },
    Key {
        env: "LIFEBOAT_LISTEN",
        annotation: None,
        help: "/metrics, /healthz, /readyz, /status: :PORT, ADDR:PORT or off (default: :9746)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_STALE_AFTER",
        annotation: None,
        help: "backups count as stale after this, e.g. 36h, 2d (default: twice the schedule's interval)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_VERIFY_SCHEDULE",
        annotation: None,
        help: "cron for re-reading the newest artifact on each target (default: off)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_NOTIFY_URL",
        annotation: None,
        help: "POST a JSON message here when a backup fails",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_NOTIFY_ON",
        annotation: None,
        help: "failure (default) or always (also on success)",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_NOTIFY_FORMAT",
        annotation: None,
        help: "json (default) or slack",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_PRE_COMMAND",
        annotation: None,
        help: "program and arguments run before each backup (no shell); failing fails the backup",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_POST_COMMAND",
        annotation: None,
        help: "program and arguments run after each backup, with LIFEBOAT_RESULT set",
        restore: false,
    },
    Key {
        env: "LIFEBOAT_HOOK_TIMEOUT",
        annotation: None,
        help: "a hook running longer is killed and fails (default: 5m)",
        restore: false,
    },
];

/// Annotations that are not a variable's override: `backup-now` asks for a
/// backup, `enabled` is the label-like switch the kustomize components select on.
pub const OTHER_ANNOTATIONS: &[&str] = &["backup-now", "enabled"];

/// The drill CronJob's schedule: an annotation of the StatefulSet, read by
/// kustomize (`components/drill`), never by a pod; one on a pod is a
/// mistake worth its own warning.
pub const DRILL_SCHEDULE_ANNOTATION: &str = "drill-schedule";

/// Every `lifeboat.dev/*` annotation lifeboat knows (without the prefix).
pub fn known_annotations() -> impl Iterator<Item = &'static str> {
    KEYS.iter()
        .filter_map(|k| k.annotation)
        .chain(OTHER_ANNOTATIONS.iter().copied())
}

/// Whether `name` is one of the settings.
pub fn is_setting(name: &str) -> bool {
    KEYS.iter().any(|k| k.env == name) || DRILL_SETTINGS.contains(&name)
}

/// The restore drills' settings (README, "Restore drills"): read by
/// `lifeboat-sidecar drill check` (its own flags), and by the sidecar for
/// whether drills are configured and when they are stale
/// (`LIFEBOAT_DRILL_CHECK`, `LIFEBOAT_DRILL_NAME`, `LIFEBOAT_DRILL_SCHEDULE`,
/// `LIFEBOAT_DRILL_STALE_AFTER`). Set in the `lifeboat` ConfigMap every
/// container reads: not a typo to warn about.
pub const DRILL_SETTINGS: [&str; 7] = [
    "LIFEBOAT_DRILL_CHECK",
    "LIFEBOAT_DRILL_NAME",
    "LIFEBOAT_DRILL_SCHEDULE",
    "LIFEBOAT_DRILL_STALE_AFTER",
    "LIFEBOAT_DRILL_READY",
    "LIFEBOAT_DRILL_TIMEOUT",
    "LIFEBOAT_DRILL_REPORT",
];

const ENV_HEADING: &str =
    "Environment (each variable also accepts a _FILE form that names a file holding the value):\n";

/// One `--help` line per key.
fn key_lines<'a>(keys: impl Iterator<Item = &'a Key>) -> String {
    keys.map(|k| format!("  {:<28} {}\n", k.env, k.help))
        .collect()
}

/// `lifeboat.dev/{a,b}`: the annotations that override these keys.
fn overrides<'a>(keys: impl Iterator<Item = &'a Key>) -> String {
    let names: Vec<&str> = keys.filter_map(|k| k.annotation).collect();
    format!("{}{{{}}}", crate::annotations::PREFIX, names.join(","))
}

/// The environment part of the sidecar's `--help`: every key.
pub fn env_help() -> String {
    let mut s = String::from(ENV_HEADING);
    s.push_str(&key_lines(KEYS.iter()));
    s.push_str(
        "\nLogins use the servers' own variables (also as _FILE): PGHOST, PGPORT, PGUSER,\n",
    );
    s.push_str(
        "PGPASSWORD (postgres); COUCHDB_USER, COUCHDB_PASSWORD (couchdb); ARANGO_ROOT_PASSWORD\n",
    );
    s.push_str(
        "(arangodb). Logical dumps spool one database at a time in TMPDIR (default /tmp).\n",
    );
    s.push_str(&format!("\nPod annotations {}\n", overrides(KEYS.iter())));
    s.push_str("override the variables; changing lifeboat.dev/backup-now starts a backup.\n");
    s.push_str("\nExit codes: 0 success, 1 the operation failed, 64 invalid configuration.");
    s
}

/// The keys the restore init container reads (marked `restore`).
pub fn restore_keys() -> impl Iterator<Item = &'static Key> {
    KEYS.iter().filter(|k| k.restore)
}

/// The environment part of the restore init container's `--help`: the
/// keys marked `restore`, and the annotations that override them. The
/// binary adds what it alone reads and its exit codes.
pub fn restore_env_help() -> String {
    let mut s = String::from(ENV_HEADING);
    s.push_str(&key_lines(restore_keys()));
    s.push_str(&format!(
        "\nPod annotations {} override the variables.\n",
        overrides(restore_keys())
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The drill's settings share the ConfigMap: no "unknown variable"
    /// warning in every sidecar for them, still one for a typo.
    #[test]
    fn drill_settings_are_not_typos() {
        assert!(DRILL_SETTINGS.iter().all(|s| is_setting(s)));
        assert!(!is_setting("LIFEBOAT_DRILL_CHEK"));
    }

    /// The README's settings table documents exactly the key table: every
    /// variable in a row, each with its overriding annotation in the same
    /// row, and no variable or annotation the table does not know.
    #[test]
    fn the_readme_documents_every_setting_and_no_other() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("## Configuration")
            .expect("a Configuration section");
        let rows: Vec<&str> = readme[start..]
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .collect();
        assert!(rows.len() > 20, "found {} rows", rows.len());
        let names_in = |cell: &str, prefix: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .filter(|n| n.starts_with(prefix))
                .map(String::from)
                .collect()
        };
        let mut documented = Vec::new();
        for row in &rows {
            let cells: Vec<&str> = row.split('|').collect();
            let (vars, annotations) = (
                names_in(cells[2], "LIFEBOAT_"),
                names_in(cells[3], "lifeboat.dev/"),
            );
            for v in &vars {
                let key = KEYS.iter().find(|k| k.env == v).unwrap_or_else(|| {
                    panic!("the README documents {v}, which is not in the key table")
                });
                if let Some(a) = key.annotation {
                    let a = format!("lifeboat.dev/{a}");
                    assert!(
                        annotations.contains(&a),
                        "the README's row for {v} lacks {a}"
                    );
                }
            }
            for a in &annotations {
                let short = &a["lifeboat.dev/".len()..];
                assert!(
                    known_annotations().any(|k| k == short),
                    "the README documents {a}, which lifeboat does not know"
                );
            }
            documented.extend(vars);
        }
        for k in KEYS {
            assert!(
                documented.iter().any(|d| d == k.env),
                "{} is missing from the README's settings table",
                k.env
            );
        }
    }

    #[test]
    fn every_variable_once_and_every_override_names_one() {
        let mut names: Vec<&str> = KEYS.iter().map(|k| k.env).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), KEYS.len());
        assert!(KEYS.iter().all(|k| k.env.starts_with("LIFEBOAT_")));
        assert_eq!(known_annotations().count(), 13);
    }

    #[test]
    fn restore_help_lists_the_restore_keys_and_no_other() {
        let help = restore_env_help();
        for k in KEYS {
            let listed = help.contains(&format!("  {} ", k.env));
            assert_eq!(listed, k.restore, "{} in:\n{help}", k.env);
        }
        // What a restore cannot do without, and what only a backup reads.
        let names: Vec<&str> = restore_keys().map(|k| k.env).collect();
        for needed in ["LIFEBOAT_PATHS", "LIFEBOAT_TARGETS", "LIFEBOAT_RESTORE"] {
            assert!(names.contains(&needed), "{needed}");
        }
        for backup_only in ["LIFEBOAT_SCHEDULE", "LIFEBOAT_RETENTION", "LIFEBOAT_LISTEN"] {
            assert!(!names.contains(&backup_only), "{backup_only}");
        }
        assert!(
            help.contains(
                "lifeboat.dev/{source,paths,restore,restore-failed-drills,postgres-wal,restore-target-time}"
            ),
            "{help}"
        );
    }
}
