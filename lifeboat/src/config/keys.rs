//! The one table of settings: every `LIFEBOAT_*` variable, the pod annotation
//! that overrides it, and its help line. `--help`, the unknown-variable and
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
}

pub const KEYS: &[Key] = &[
    Key {
        env: "LIFEBOAT_SOURCE",
        annotation: Some("source"),
        help: "what to back up: files (default), postgres, couchdb or arangodb",
    },
    Key {
        env: "LIFEBOAT_PATHS",
        annotation: Some("paths"),
        help: "absolute folders, comma-separated (required)",
    },
    Key {
        env: "LIFEBOAT_EXCLUDE",
        annotation: Some("exclude"),
        help: "globs to leave out, e.g. **/.ipynb_checkpoints",
    },
    Key {
        env: "LIFEBOAT_SCHEDULE",
        annotation: Some("schedule"),
        help: "5-field cron in UTC, or @daily etc. (default: 0 2 * * *)",
    },
    Key {
        env: "LIFEBOAT_RETENTION",
        annotation: Some("retention"),
        help: "default: last=3,daily=7,weekly=4,monthly=6",
    },
    Key {
        env: "LIFEBOAT_TARGETS",
        annotation: None,
        help: "e.g. file:///backup; first is primary (required)",
    },
    Key {
        env: "LIFEBOAT_COMPRESSION",
        annotation: Some("compression"),
        help: "zstd[:1-19], gzip[:1-9] or none (default: zstd:3)",
    },
    Key {
        env: "LIFEBOAT_RESTORE",
        annotation: Some("restore"),
        help: "if-empty (default), always or never",
    },
    Key {
        env: "LIFEBOAT_NAME",
        annotation: None,
        help: "name of the backup history (default: HOSTNAME)",
    },
    Key {
        env: "LIFEBOAT_NAMESPACE",
        annotation: None,
        help: "its namespace folder (default: POD_NAMESPACE, default)",
    },
    Key {
        env: "LIFEBOAT_ANNOTATIONS_FILE",
        annotation: None,
        help: "default: /etc/lifeboat/annotations",
    },
    Key {
        env: "LIFEBOAT_GRACE_PERIOD",
        annotation: None,
        help: "time a backup may finish after SIGTERM (default: 25s)",
    },
    Key {
        env: "LIFEBOAT_PROGRESS_INTERVAL",
        annotation: None,
        help: "how often long work logs progress (default: 10s)",
    },
    Key {
        env: "LIFEBOAT_POSTGRES_MODE",
        annotation: None,
        help: "physical (default: PGDATA + WAL) or logical (pg_dump per database)",
    },
    Key {
        env: "LIFEBOAT_DATABASES",
        annotation: None,
        help: "logical dumps: databases, comma-separated; !name leaves one out (default: all)",
    },
    Key {
        env: "LIFEBOAT_COUCHDB_URL",
        annotation: None,
        help: "CouchDB's URL (default: http://127.0.0.1:5984)",
    },
    Key {
        env: "LIFEBOAT_ARANGODB_URL",
        annotation: None,
        help: "ArangoDB's URL (default: http://127.0.0.1:8529)",
    },
    Key {
        env: "LIFEBOAT_ARANGODB_USER",
        annotation: None,
        help: "ArangoDB user (default: root)",
    },
    Key {
        env: "LIFEBOAT_ARANGODB_PASSWORD",
        annotation: None,
        help: "its password (default: ARANGO_ROOT_PASSWORD)",
    },
    Key {
        env: "LIFEBOAT_S3_ENDPOINT",
        annotation: None,
        help: "S3-compatible endpoint URL, e.g. http://minio:9000",
    },
    Key {
        env: "LIFEBOAT_S3_REGION",
        annotation: None,
        help: "S3 region (default: the AWS chain, else us-east-1)",
    },
    Key {
        env: "LIFEBOAT_S3_PATH_STYLE",
        annotation: None,
        help: "true for path-style URLs (most S3-compatible stores)",
    },
    Key {
        env: "LIFEBOAT_LOG",
        annotation: None,
        help: "log filter, e.g. debug (default: info)",
    },
    Key {
        env: "LIFEBOAT_INCLUDE_KUBE",
        annotation: None,
        help: "also store the namespace's configmaps and/or secrets under kubernetes/ (needs the API)",
    },
    Key {
        env: "LIFEBOAT_ALLOW_PLAINTEXT_SECRETS",
        annotation: None,
        help: "true to store Secrets in artifacts without encryption",
    },
    Key {
        env: "LIFEBOAT_AGE_RECIPIENTS",
        annotation: None,
        help: "encrypt artifacts with age to these public keys (age1…, comma-separated)",
    },
    Key {
        env: "LIFEBOAT_AGE_IDENTITY_FILE",
        annotation: None,
        help: "age secret key file (age-keygen's output) for restore and verify of encrypted artifacts",
    },
    Key {
        env: "LIFEBOAT_LISTEN",
        annotation: None,
        help: "/metrics, /healthz, /readyz, /status: :PORT, ADDR:PORT or off (default: :9746)",
    },
    Key {
        env: "LIFEBOAT_STALE_AFTER",
        annotation: None,
        help: "backups count as stale after this, e.g. 36h, 2d (default: twice the schedule's interval)",
    },
    Key {
        env: "LIFEBOAT_VERIFY_SCHEDULE",
        annotation: None,
        help: "cron for re-reading the newest artifact on each target (default: off)",
    },
    Key {
        env: "LIFEBOAT_NOTIFY_URL",
        annotation: None,
        help: "POST a JSON message here when a backup fails",
    },
    Key {
        env: "LIFEBOAT_NOTIFY_ON",
        annotation: None,
        help: "failure (default) or always (also on success)",
    },
    Key {
        env: "LIFEBOAT_NOTIFY_FORMAT",
        annotation: None,
        help: "json (default) or slack",
    },
    Key {
        env: "LIFEBOAT_PRE_COMMAND",
        annotation: None,
        help: "program and arguments run before each backup (no shell); failing fails the backup",
    },
    Key {
        env: "LIFEBOAT_POST_COMMAND",
        annotation: None,
        help: "program and arguments run after each backup, with LIFEBOAT_RESULT set",
    },
    Key {
        env: "LIFEBOAT_HOOK_TIMEOUT",
        annotation: None,
        help: "a hook running longer is killed and fails (default: 5m)",
    },
];

/// Annotations that are not a variable's override: `backup-now` asks for a
/// backup, `enabled` is the label-like switch the kustomize components select on.
pub const OTHER_ANNOTATIONS: &[&str] = &["backup-now", "enabled"];

/// Every `lifeboat.dev/*` annotation lifeboat knows (without the prefix).
pub fn known_annotations() -> impl Iterator<Item = &'static str> {
    KEYS.iter()
        .filter_map(|k| k.annotation)
        .chain(OTHER_ANNOTATIONS.iter().copied())
}

/// Whether `name` is one of the settings.
pub fn is_setting(name: &str) -> bool {
    KEYS.iter().any(|k| k.env == name)
}

/// The environment part of the binaries' `--help`.
pub fn env_help() -> String {
    let mut s = String::from(
        "Environment (each variable also accepts a _FILE form that names a file holding the value):\n",
    );
    for k in KEYS {
        s.push_str(&format!("  {:<28} {}\n", k.env, k.help));
    }
    s.push_str(
        "\nLogins use the servers' own variables (also as _FILE): PGHOST, PGPORT, PGUSER,\n",
    );
    s.push_str(
        "PGPASSWORD (postgres); COUCHDB_USER, COUCHDB_PASSWORD (couchdb); ARANGO_ROOT_PASSWORD\n",
    );
    s.push_str(
        "(arangodb). Logical dumps spool one database at a time in TMPDIR (default /tmp).\n",
    );
    let overrides: Vec<&str> = KEYS.iter().filter_map(|k| k.annotation).collect();
    s.push_str(&format!(
        "\nPod annotations {}{{{}}}\n",
        crate::annotations::PREFIX,
        overrides.join(",")
    ));
    s.push_str("override the variables; changing lifeboat.dev/backup-now starts a backup.\n");
    s.push_str("\nExit codes: 0 success, 1 the operation failed, 64 invalid configuration.");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variable_once_and_every_override_names_one() {
        let mut names: Vec<&str> = KEYS.iter().map(|k| k.env).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), KEYS.len());
        assert!(KEYS.iter().all(|k| k.env.starts_with("LIFEBOAT_")));
        assert_eq!(known_annotations().count(), 9);
    }
}
