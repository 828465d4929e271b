//! Bad input gets one clear message that names every wrong setting, its
//! value and what is accepted, and exit code 64, before anything runs.

use lifeboat_tests::*;

#[test]
fn every_wrong_setting_is_listed_at_once() {
    let out = lifeboat(
        "lifeboat-sidecar",
        &[
            ("LIFEBOAT_SOURCE", "mongodb"),
            ("LIFEBOAT_PATHS", "relative/path"),
            ("LIFEBOAT_SCHEDULE", "0 2 * *"),
            ("LIFEBOAT_RETENTION", "last=three"),
            ("LIFEBOAT_COMPRESSION", "xz"),
            ("LIFEBOAT_RESTORE", "maybe"),
            ("HOSTNAME", "nb-0"),
        ],
    )
    .arg("backup-now")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    for needle in [
        "invalid configuration (7 problems)",
        "LIFEBOAT_SOURCE=\"mongodb\": unknown source; accepted: files, postgres, couchdb, arangodb",
        "LIFEBOAT_PATHS=\"relative/path\": \"relative/path\" is not absolute",
        "LIFEBOAT_SCHEDULE=\"0 2 * *\": has 4 field(s), expected 5",
        "LIFEBOAT_RETENTION=\"last=three\"",
        "LIFEBOAT_COMPRESSION=\"xz\": accepted: zstd, zstd:1..19, gzip, gzip:1..9, none",
        "LIFEBOAT_RESTORE=\"maybe\": accepted: if-empty, always, never",
        "LIFEBOAT_TARGETS=\"\": required",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn an_unwritable_target_is_named_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    std::fs::create_dir(tmp.path().join("data")).unwrap();
    let target = format!("file://{}/backup", file.display());
    let out = lifeboat(
        "lifeboat-sidecar",
        &[
            ("LIFEBOAT_PATHS", tmp.path().join("data").to_str().unwrap()),
            ("LIFEBOAT_TARGETS", &target),
            ("HOSTNAME", "nb-0"),
        ],
    )
    .arg("run")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    assert!(
        err.contains("LIFEBOAT_TARGETS")
            && err.contains(&target)
            && err.contains("Not a directory"),
        "{err}"
    );
}

#[test]
fn a_bad_annotation_names_the_annotation() {
    let tmp = tempfile::tempdir().unwrap();
    let ann = tmp.path().join("annotations");
    std::fs::write(
        &ann,
        "lifeboat.dev/schedule=\"every day\"\nlifeboat.dev/compression=\"brotli\"\n",
    )
    .unwrap();
    let out = lifeboat(
        "lifeboat-sidecar",
        &[
            ("LIFEBOAT_PATHS", "/data"),
            ("LIFEBOAT_TARGETS", "file:///backup"),
            ("LIFEBOAT_ANNOTATIONS_FILE", ann.to_str().unwrap()),
            ("HOSTNAME", "nb-0"),
        ],
    )
    .arg("run")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    assert!(
        err.contains("annotation lifeboat.dev/schedule=\"every day\""),
        "{err}"
    );
    assert!(
        err.contains("annotation lifeboat.dev/compression=\"brotli\""),
        "{err}"
    );
}

/// Durations out of range are configuration errors, never a panic after
/// the backup (a zero progress interval) nor an overflow (u64::MAX).
#[test]
fn durations_out_of_range_are_named_and_exit_64() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("data")).unwrap();
    let target = format!("file://{}/backup", tmp.path().display());
    let out = lifeboat(
        "lifeboat-sidecar",
        &[
            ("LIFEBOAT_PATHS", tmp.path().join("data").to_str().unwrap()),
            ("LIFEBOAT_TARGETS", &target),
            ("LIFEBOAT_PROGRESS_INTERVAL", "0"),
            ("LIFEBOAT_GRACE_PERIOD", "18446744073709551615"),
            ("LIFEBOAT_HOOK_TIMEOUT", "18446744073709551615d"),
            ("LIFEBOAT_STALE_AFTER", "400d"),
            ("HOSTNAME", "nb-0"),
        ],
    )
    .arg("backup-now")
    .output()
    .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for needle in [
        "LIFEBOAT_PROGRESS_INTERVAL=\"0\": must be at least 1s",
        "LIFEBOAT_GRACE_PERIOD=\"18446744073709551615\": longer than 366d",
        "LIFEBOAT_HOOK_TIMEOUT=\"18446744073709551615d\": longer than 366d",
        "LIFEBOAT_STALE_AFTER=\"400d\": longer than 366d",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    // Nothing was backed up.
    assert!(!tmp.path().join("backup").exists());
}

/// `*_FILE` settings read only regular files of a sane size: `/dev/zero`
/// and a FIFO are configuration errors at once, not a memory blow-up or a
/// hang.
#[test]
fn file_settings_refuse_devices_and_fifos() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("data")).unwrap();
    let fifo = tmp.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let target = format!("file://{}/backup", tmp.path().display());
    let mut child = lifeboat(
        "lifeboat-sidecar",
        &[
            ("LIFEBOAT_PATHS", tmp.path().join("data").to_str().unwrap()),
            ("LIFEBOAT_TARGETS", &target),
            ("LIFEBOAT_SCHEDULE_FILE", fifo.to_str().unwrap()),
            ("LIFEBOAT_RETENTION_FILE", "/dev/zero"),
            ("HOSTNAME", "nb-0"),
        ],
    )
    .arg("backup-now")
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("reading a *_FILE setting hung");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("LIFEBOAT_SCHEDULE_FILE") && err.contains("not a regular file"),
        "{err}"
    );
    assert!(
        err.contains(
            "LIFEBOAT_RETENTION_FILE=\"/dev/zero\": cannot read the file: not a regular file"
        ),
        "{err}"
    );
}

/// A URL with a password that does not parse (an unencoded `/` in the
/// password) is named in the error without the password.
#[test]
fn a_password_in_a_bad_url_is_never_echoed() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("data")).unwrap();
    let target = format!("file://{}/backup", tmp.path().display());
    for (source, var) in [
        ("couchdb", "LIFEBOAT_COUCHDB_URL"),
        ("arangodb", "LIFEBOAT_ARANGODB_URL"),
    ] {
        let out = lifeboat(
            "lifeboat-sidecar",
            &[
                ("LIFEBOAT_SOURCE", source),
                ("LIFEBOAT_PATHS", tmp.path().join("data").to_str().unwrap()),
                ("LIFEBOAT_TARGETS", &target),
                (var, "http://admin:s3cr/t-pw@db:5984"),
                ("HOSTNAME", "nb-0"),
            ],
        )
        .arg("backup-now")
        .output()
        .unwrap();
        let err = format!("{}{}", stderr(&out), stdout(&out));
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(err.contains(var), "{err}");
        assert!(!err.contains("s3cr"), "the password was echoed:\n{err}");
    }
}

/// A NUL byte in an annotation (the kubelet writes it as `\x00`) is a
/// setting error, exit 64, naming the annotation; not an I/O error later.
#[test]
fn a_nul_byte_in_an_annotation_is_exit_64() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("data")).unwrap();
    let ann = tmp.path().join("annotations");
    std::fs::write(
        &ann,
        format!(
            "lifeboat.dev/paths=\"{}\\x00/etc\"\n",
            tmp.path().join("data").display()
        ),
    )
    .unwrap();
    let target = format!("file://{}/backup", tmp.path().display());
    for cmd in ["backup-now", "run"] {
        let out = lifeboat(
            "lifeboat-sidecar",
            &[
                ("LIFEBOAT_PATHS", tmp.path().join("data").to_str().unwrap()),
                ("LIFEBOAT_TARGETS", &target),
                ("LIFEBOAT_ANNOTATIONS_FILE", ann.to_str().unwrap()),
                ("HOSTNAME", "nb-0"),
            ],
        )
        .arg(cmd)
        .output()
        .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(64), "{cmd}: {err}");
        assert!(
            err.contains("annotation lifeboat.dev/paths") && err.contains("NUL byte"),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn wrong_wal_settings_are_each_named_with_what_is_accepted() {
    let out = lifeboat(
        "lifeboat-sidecar",
        &[
            ("LIFEBOAT_SOURCE", "postgres"),
            ("LIFEBOAT_PATHS", "/var/lib/postgresql/data"),
            ("LIFEBOAT_TARGETS", "file:///backup"),
            ("LIFEBOAT_POSTGRES_WAL", "on"),
            ("LIFEBOAT_WAL_INTERVAL", "0s"),
            ("LIFEBOAT_WAL_QUIET_MAX", "ten minutes"),
            ("LIFEBOAT_WAL_MAX_RETAINED", "1MiB"),
            ("LIFEBOAT_WAL_SLOT", "Bad-Name"),
            ("HOSTNAME", "db-0"),
        ],
    )
    .arg("backup-now")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = stderr(&out);
    for needle in [
        "LIFEBOAT_WAL_INTERVAL=\"0s\": must be at least 1s",
        "LIFEBOAT_WAL_QUIET_MAX=\"ten minutes\": accepted: a whole number of seconds, or with a unit",
        "LIFEBOAT_WAL_MAX_RETAINED=\"1MiB\": must be at least 64MiB",
        "LIFEBOAT_WAL_SLOT=\"Bad-Name\"",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}
