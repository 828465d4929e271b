//! Manifests and store files are untrusted input (issue 18). Every artifact
//! here has honest checksums (tests/support/hostile.rs); only a manifest's
//! other fields, or the kind of file the store holds, is hostile.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lifeboat_tests::hostile::{e, Plant};
use lifeboat_tests::*;
use tar::EntryType;

struct World {
    tmp: tempfile::TempDir,
    data: PathBuf,
    backup: PathBuf,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("vol/data");
    let backup = tmp.path().join("backup");
    fs::create_dir_all(&backup).unwrap();
    World { tmp, data, backup }
}

impl World {
    fn cmd(&self, bin: &str, pod: &str) -> Command {
        lifeboat(
            bin,
            &[
                ("LIFEBOAT_PATHS", self.data.to_str().unwrap()),
                (
                    "LIFEBOAT_TARGETS",
                    &format!("file://{}", self.backup.display()),
                ),
                ("HOSTNAME", pod),
            ],
        )
    }

    fn restore(&self) -> std::process::Output {
        self.cmd("lifeboat-restore", "x-0").output().unwrap()
    }

    fn hist(&self) -> PathBuf {
        history(&self.backup, "x-0")
    }

    /// A real backup of `data` holding `v` = `text`; returns its id.
    fn backup_with(&self, text: &str) -> String {
        fs::create_dir_all(&self.data).unwrap();
        fs::write(self.data.join("v"), text).unwrap();
        let out = run_ok(self.cmd("lifeboat-sidecar", "x-0").arg("backup-now"));
        stdout(&out).trim().to_string()
    }

    /// The planted artifact's entries: the data folder and one file.
    fn entries(&self) -> (String, String) {
        let rel = self.data.strip_prefix("/").unwrap().to_str().unwrap();
        (format!("{rel}/"), format!("{rel}/evil"))
    }
}

/// Runs `cmd` and fails the test if it has not ended within `secs`: a
/// store must never make `list`, `verify` or restore hang.
fn output_within(cmd: &mut Command, secs: u64) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} hung for more than {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Nothing named `evil` anywhere under `root`.
fn no_evil(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for ent in fs::read_dir(&p).into_iter().flatten() {
            let ent = ent.unwrap();
            assert_ne!(
                ent.file_name(),
                "evil",
                "{} was written",
                ent.path().display()
            );
            if ent.file_type().unwrap().is_dir() {
                stack.push(ent.path());
            }
        }
    }
}

#[test]
fn a_logical_manifest_naming_an_absolute_source_writes_nothing_there() {
    let w = world();
    let evil_dir = w.tmp.path().join("elsewhere");
    let (dir, file) = w.entries();
    let source = evil_dir.to_str().unwrap().to_string();
    let p = Plant {
        layout: "logical",
        source: &source,
        ..Plant::files(&w.backup, &w.data)
    };
    let tar = lifeboat_tests::hostile::hostile_tar(&[
        e(dir.as_bytes(), EntryType::Directory, b"", b""),
        e(file.as_bytes(), EntryType::Regular, b"", b"pwned"),
    ]);
    p.tar(&tar, 2, 5);
    let out = w.restore();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a valid manifest"),
        "{}",
        stderr(&out)
    );
    assert!(!evil_dir.exists(), "restore created {}", evil_dir.display());
    no_evil(w.tmp.path());
}

#[test]
fn restore_to_never_leaves_its_folder_whatever_the_manifest_paths_say() {
    let w = world();
    let escape = w.tmp.path().join("escaped");
    // `/../../../../<tmp>/escaped`: resolves outside `--to DIR`.
    let hostile_path = format!("/../../../..{}", escape.display());
    let rel = hostile_path.trim_start_matches('/');
    let p = Plant {
        paths: vec![hostile_path.clone()],
        ..Plant::files(&w.backup, &w.data)
    };
    p.entries(&[
        e(format!("{rel}/").as_bytes(), EntryType::Directory, b"", b""),
        e(
            format!("{rel}/evil").as_bytes(),
            EntryType::Regular,
            b"",
            b"pwned",
        ),
    ]);
    let to = w.tmp.path().join("inspect");
    let out = w
        .cmd("lifeboat-sidecar", "x-0")
        .args(["restore", "--to", to.to_str().unwrap()])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a clean absolute path"),
        "{}",
        stderr(&out)
    );
    assert!(!escape.exists());
    no_evil(w.tmp.path());
}

/// A CouchDB dump in a files pod's history is another pod's data: refused,
/// never staged, and restore goes on to the next candidate, saying so.
#[test]
fn an_artifact_of_another_source_is_refused_and_the_next_one_restored() {
    let w = world();
    let good = w.backup_with("mine");
    let (dir, file) = w.entries();
    let p = Plant {
        id: "20990101T000000Z-couchdb",
        source: "couchdb",
        layout: "logical",
        ..Plant::files(&w.backup, &w.data)
    };
    p.stored_with(
        &lifeboat_tests::hostile::zstd(&lifeboat_tests::hostile::hostile_tar(&[
            e(b"couchdb/", EntryType::Directory, b"", b""),
            e(b"couchdb/evil", EntryType::Regular, b"", b"pwned"),
        ])),
        2,
        5,
        |m| m["started_at"] = "2099-01-01T00:00:00Z".into(),
    );
    let _ = (dir, file);
    fs::remove_dir_all(&w.data).unwrap();
    let out = w.restore();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("is a couchdb backup, but this pod's LIFEBOAT_SOURCE is files"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(w.data.join("v")).unwrap(), "mine");
    assert!(!w.data.join(".lifeboat-pending").exists());
    no_evil(w.tmp.path());
    let marker: serde_json::Value =
        serde_json::from_slice(&fs::read(w.data.join(".lifeboat-restored")).unwrap()).unwrap();
    assert_eq!(marker["id"], good.as_str());
    let skipped = marker["skipped"].as_array().unwrap();
    assert!(
        skipped[0]
            .as_str()
            .unwrap()
            .contains("20990101T000000Z-couchdb"),
        "{marker}"
    );
}

/// An id such as `../x-1/…` must not make retention delete, or verify
/// write, anything in another pod's history.
#[test]
fn an_id_pointing_into_another_history_touches_nothing_there() {
    let w = world();
    // Pod x-1's history, with one real artifact.
    let other = history(&w.backup, "x-1");
    fs::create_dir_all(&w.data).unwrap();
    fs::write(w.data.join("v"), "x-1's").unwrap();
    run_ok(w.cmd("lifeboat-sidecar", "x-1").arg("backup-now"));
    let before: Vec<_> = artifacts(&other);
    let other_manifest = fs::read_dir(&other)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(".manifest.json"))
        .unwrap();
    let other_id = other_manifest
        .trim_end_matches(".manifest.json")
        .to_string();
    // In x-0's history: a manifest whose id climbs into x-1's.
    let hostile_id = format!("../x-1/{other_id}");
    let p = Plant::files(&w.backup, &w.data);
    let (dir, _) = w.entries();
    p.stored_with(
        &lifeboat_tests::hostile::zstd(&lifeboat_tests::hostile::hostile_tar(&[e(
            dir.as_bytes(),
            EntryType::Directory,
            b"",
            b"",
        )])),
        1,
        0,
        |m| m["id"] = hostile_id.clone().into(),
    );
    // Retention keeping one, after two real backups of x-0.
    w.backup_with("a");
    let out = run_ok(
        w.cmd("lifeboat-sidecar", "x-0")
            .env("LIFEBOAT_RETENTION", "last=1")
            .arg("backup-now"),
    );
    let _ = out;
    let out = w
        .cmd("lifeboat-sidecar", "x-0")
        .args(["verify", "--all"])
        .output()
        .unwrap();
    let _ = out;
    assert!(
        other.join(&other_manifest).exists(),
        "x-1's manifest was deleted"
    );
    assert_eq!(artifacts(&other), before);
    let stray: Vec<_> = fs::read_dir(&other)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".verified.json"))
        .collect();
    assert!(
        stray.is_empty(),
        "verify wrote into x-1's history: {stray:?}"
    );
    let list = run_ok(w.cmd("lifeboat-sidecar", "x-0").arg("list"));
    assert!(!stdout(&list).contains("../"), "{}", stdout(&list));
}

/// Store files that are not regular files, a manifest far too large, and
/// an artifact with gigabytes appended: skipped at once, never read whole,
/// never a hang; restore goes on to the good artifact.
#[test]
fn special_files_huge_manifests_and_appended_artifacts_are_skipped_at_once() {
    let w = world();
    let good = w.backup_with("good");
    let hist = w.hist();
    // A newer manifest that is a symlink to /dev/zero, one that is a FIFO,
    // and one of 200 MB (sparse: costs no disk).
    std::os::unix::fs::symlink(
        "/dev/zero",
        hist.join("20990101T000001Z-files.manifest.json"),
    )
    .unwrap();
    let fifo = hist.join("20990101T000002Z-files.manifest.json");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let big = fs::File::create(hist.join("20990101T000003Z-files.manifest.json")).unwrap();
    big.set_len(200 << 20).unwrap();
    // A newer artifact whose file is a symlink to /dev/zero, with an honest
    // manifest otherwise; and one with 3 GiB appended (sparse).
    let (dir, file) = w.entries();
    let tar = lifeboat_tests::hostile::hostile_tar(&[
        e(dir.as_bytes(), EntryType::Directory, b"", b""),
        e(file.as_bytes(), EntryType::Regular, b"", b"newer"),
    ]);
    for (id, at) in [
        ("20990101T000004Z-files", "2099-01-01T00:00:04Z"),
        ("20990101T000005Z-files", "2099-01-01T00:00:05Z"),
    ] {
        let p = Plant {
            id,
            ..Plant::files(&w.backup, &w.data)
        };
        p.stored_with(&lifeboat_tests::hostile::zstd(&tar), 2, 5, |m| {
            m["started_at"] = at.into()
        });
    }
    let art4 = hist.join("20990101T000004Z-files.tar.zst");
    fs::remove_file(&art4).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &art4).unwrap();
    let art5 = hist.join("20990101T000005Z-files.tar.zst");
    let f = fs::OpenOptions::new().write(true).open(&art5).unwrap();
    f.set_len(f.metadata().unwrap().len() + (3 << 30)).unwrap();

    let list = output_within(w.cmd("lifeboat-sidecar", "x-0").arg("list"), 60);
    let text = format!("{}{}", stdout(&list), stderr(&list));
    assert!(text.contains(&good), "{text}");
    let verify = output_within(
        w.cmd("lifeboat-sidecar", "x-0").args(["verify", "--all"]),
        120,
    );
    assert_eq!(verify.status.code(), Some(1), "{}", stderr(&verify));
    fs::remove_dir_all(&w.data).unwrap();
    let mut cmd = w.cmd("lifeboat-restore", "x-0");
    let out = output_within(&mut cmd, 120);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert_eq!(fs::read_to_string(w.data.join("v")).unwrap(), "good");
    assert!(err.contains("is a symlink"), "{err}");
    assert!(err.contains("is not a regular file"), "{err}");
    assert!(err.contains("more than the"), "{err}");
    assert!(err.contains("truncated or appended"), "{err}");
    no_evil(w.tmp.path());
}

/// The configured path itself is a symlink (`/data -> /mnt/other`): restore
/// refuses (exit 64) and touches nothing where the link points, even with
/// LIFEBOAT_RESTORE=always.
#[test]
fn a_configured_path_that_is_a_symlink_is_refused() {
    let w = world();
    w.backup_with("backed up");
    let real = w.tmp.path().join("mnt-other");
    fs::create_dir_all(&real).unwrap();
    fs::write(real.join("precious"), "keep me").unwrap();
    fs::remove_dir_all(&w.data).unwrap();
    std::os::unix::fs::symlink(&real, &w.data).unwrap();
    let err = fails_with(
        w.cmd("lifeboat-restore", "x-0")
            .env("LIFEBOAT_RESTORE", "always"),
        64,
        "is a symlink to",
    );
    assert!(err.contains("LIFEBOAT_PATHS"), "{err}");
    assert_eq!(
        fs::read_to_string(real.join("precious")).unwrap(),
        "keep me"
    );
    assert_eq!(fs::read_dir(&real).unwrap().count(), 1);
}

/// A files artifact in a postgres pod's history (a wrong LIFEBOAT_NAME, a
/// copied folder) is not a data directory: refused, never restored.
#[test]
fn a_files_artifact_is_refused_for_a_postgres_pod() {
    let w = world();
    w.backup_with("not a data directory");
    fs::remove_dir_all(&w.data).unwrap();
    let err = fails_with(
        w.cmd("lifeboat-restore", "x-0")
            .env("LIFEBOAT_SOURCE", "postgres"),
        1,
        "is a files backup, but this pod's LIFEBOAT_SOURCE is postgres",
    );
    assert!(err.contains("none verified"), "{err}");
    assert!(!w.data.join("v").exists());
}

/// Our marker names are never taken from an artifact, and a marker name
/// the app planted as a symlink is the app's data: nothing is written
/// through either, and a planted `.lifeboat-restoring` does not make
/// `if-empty` replace the live data.
#[test]
fn marker_names_are_never_taken_from_an_artifact_or_the_app() {
    let w = world();
    let outside = w.tmp.path().join("outside-file");
    fs::write(&outside, "do not touch").unwrap();
    let rel = w
        .data
        .strip_prefix("/")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let (root, marker, file) = (
        format!("{rel}/"),
        format!("{rel}/.lifeboat-restored"),
        format!("{rel}/f"),
    );
    Plant::files(&w.backup, &w.data).entries(&[
        e(root.as_bytes(), EntryType::Directory, b"", b""),
        e(
            marker.as_bytes(),
            EntryType::Symlink,
            outside.to_str().unwrap().as_bytes(),
            b"",
        ),
        e(file.as_bytes(), EntryType::Regular, b"", b"data"),
    ]);
    let out = w.restore();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("keeps for itself"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read_to_string(&outside).unwrap(), "do not touch");
    assert!(fs::symlink_metadata(w.data.join(".lifeboat-restored"))
        .unwrap()
        .is_file());
    assert_eq!(fs::read(w.data.join("f")).unwrap(), b"data");

    // The app's own volume, with a planted `.lifeboat-restoring` link.
    fs::remove_dir_all(&w.data).unwrap();
    fs::create_dir_all(&w.data).unwrap();
    fs::write(w.data.join("app.db"), "live").unwrap();
    std::os::unix::fs::symlink(&outside, w.data.join(".lifeboat-restoring")).unwrap();
    let out = w.restore();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("restore skipped"), "{}", stderr(&out));
    assert_eq!(fs::read_to_string(w.data.join("app.db")).unwrap(), "live");
    assert_eq!(fs::read_to_string(&outside).unwrap(), "do not touch");
}
