//! A tree with every kind of entry survives backup -> wipe -> restore byte
//! for byte, with owners, modes, mtimes, links and odd names; and the same
//! artifact restores by hand with zstd, tar and sha256sum.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use lifeboat_tests::*;

/// Builds a tree with every kind of entry the files source must keep
/// (tests/incremental.rs changes it between the links of a chain).
pub(crate) fn build_tree(root: &Path) {
    let d = |p: &str| fs::create_dir_all(root.join(p)).unwrap();
    let w = |p: &str, data: &[u8]| fs::write(root.join(p), data).unwrap();
    d("notebooks/deep/er");
    d("models");
    d("empty-dir");
    d("shared");
    d("sticky");
    w(
        "notebooks/a.ipynb",
        br#"{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}"#,
    );
    w(
        "notebooks/deep/er/b.ipynb",
        &b"{\"cells\": [{\"source\": \"print(1)\"}]}\n".repeat(500),
    );
    w("models/blob.bin", &noise(5 * 1024 * 1024 + 17, 1));
    w("empty.txt", b"");
    w("secret", b"token");
    w("run.sh", b"#!/bin/sh\necho hi\n");
    w("setuid-tool", b"binary");
    // Hard links: a pair and a triple.
    fs::hard_link(root.join("models/blob.bin"), root.join("models/blob-hard")).unwrap();
    w("three", b"three names, one file");
    fs::hard_link(root.join("three"), root.join("notebooks/three-b")).unwrap();
    fs::hard_link(root.join("three"), root.join("notebooks/deep/three-c")).unwrap();
    // Symlinks: relative, dangling-but-inside, absolute-inside, long target.
    symlink("notebooks/a.ipynb", root.join("link-to-a")).unwrap();
    symlink("does-not-exist", root.join("dangling")).unwrap();
    symlink(root.join("notebooks"), root.join("abs-link")).unwrap();
    let long_target = format!("notebooks/{}a.ipynb", "./".repeat(80));
    symlink(&long_target, root.join("long-link")).unwrap();
    // Long names: one component of 200 bytes, and a path past 255 bytes.
    w(&"n".repeat(200), b"long name");
    let deep = format!("{}/{}", "l".repeat(120), "m".repeat(120));
    d(&deep);
    w(&format!("{deep}/{}.txt", "o".repeat(150)), b"long path");
    // Names that are not UTF-8.
    let latin1 = root.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt"));
    fs::write(&latin1, b"latin-1 name").unwrap();
    fs::create_dir(root.join(std::ffi::OsStr::from_bytes(b"r\xe9sum\xe9"))).unwrap();

    let chmod =
        |p: &str, m: u32| fs::set_permissions(root.join(p), fs::Permissions::from_mode(m)).unwrap();
    let chown = |p: &str, u: u32, g: u32| {
        std::os::unix::fs::lchown(root.join(p), Some(u), Some(g)).unwrap()
    };
    chown("notebooks", 1000, 100);
    chown("notebooks/a.ipynb", 1000, 100);
    chown("models/blob.bin", 12345, 54321);
    chown("link-to-a", 1000, 100);
    chown("shared", 0, 100);
    chmod("secret", 0o600);
    chmod("run.sh", 0o755);
    chmod("setuid-tool", 0o4755);
    chmod("shared", 0o2775);
    chmod("sticky", 0o1777);
    chmod("empty-dir", 0o700);
    chmod("notebooks/deep/er/b.ipynb", 0o444);
    chown("", 1000, 100);
    chmod("", 0o750);

    // Fixed mtimes, deepest first so folders keep theirs.
    let mut all: Vec<_> = snapshot(root).into_keys().collect();
    all.sort_by_key(|k| std::cmp::Reverse(k.len()));
    for (i, rel) in all.iter().enumerate() {
        let p = root.join(std::ffi::OsStr::from_bytes(rel));
        set_mtime(&p, 1_600_000_000 + i as i64 * 3600);
    }
}

fn env<'a>(data: &'a str, backup: &'a str) -> Vec<(&'a str, String)> {
    vec![
        ("LIFEBOAT_PATHS", data.to_string()),
        ("LIFEBOAT_TARGETS", format!("file://{backup}")),
        ("HOSTNAME", "nb-0".to_string()),
    ]
}

fn cmd(name: &str, env: &[(&str, String)]) -> Command {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    lifeboat(name, &pairs)
}

#[test]
fn every_kind_of_entry_round_trips_byte_for_byte() {
    assert!(
        is_root(),
        "this test checks ownership and must run as root (CI does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("home/jovyan");
    let backup = tmp.path().join("backup");
    fs::create_dir_all(&data).unwrap();
    fs::create_dir_all(&backup).unwrap();
    build_tree(&data);
    let before = snapshot(&data);
    assert!(before.len() > 25, "tree too small: {}", before.len());

    let env = env(data.to_str().unwrap(), backup.to_str().unwrap());
    let out = run_ok(cmd("lifeboat-sidecar", &env).arg("backup-now"));
    let id = stdout(&out).trim().to_string();
    assert!(id.ends_with("-files"), "{id}");
    assert!(
        stderr(&out).contains("backup committed"),
        "{}",
        stderr(&out)
    );

    fs::remove_dir_all(&data).unwrap();
    let out = run_ok(&mut cmd("lifeboat-restore", &env));
    assert!(stderr(&out).contains(&id), "{}", stderr(&out));
    assert_same(&before, &snapshot(&data));

    let marker: serde_json::Value =
        serde_json::from_slice(&fs::read(data.join(".lifeboat-restored")).unwrap()).unwrap();
    assert_eq!(marker["id"], id.as_str());
    // No staging folder is left behind.
    let leftovers: Vec<_> = fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.as_bytes().starts_with(b".lifeboat-staging"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A second start finds data and leaves it alone.
    fs::write(data.join("new-work.txt"), b"written after the restore").unwrap();
    let out = run_ok(&mut cmd("lifeboat-restore", &env));
    assert!(stderr(&out).contains("restore skipped"), "{}", stderr(&out));
    assert_eq!(
        fs::read(data.join("new-work.txt")).unwrap(),
        b"written after the restore"
    );
}

#[test]
fn artifact_restores_by_hand_with_zstd_tar_and_sha256sum() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let backup = tmp.path().join("backup");
    fs::create_dir_all(&data).unwrap();
    fs::create_dir_all(&backup).unwrap();
    build_tree(&data);
    let env = env(data.to_str().unwrap(), backup.to_str().unwrap());
    run_ok(cmd("lifeboat-sidecar", &env).arg("backup-now"));

    let hist = history(&backup, "nb-0");
    let arts = artifacts(&hist);
    assert_eq!(arts.len(), 1);
    let art = &arts[0];
    let manifest_path = hist.join(
        art.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .replace(".tar.zst", ".manifest.json"),
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(&manifest_path).unwrap()).unwrap();

    let sum = run_ok(Command::new("sha256sum").arg(art));
    let hex = stdout(&sum).split_whitespace().next().unwrap().to_string();
    assert_eq!(manifest["sha256"], hex.as_str());
    assert_eq!(manifest["size"], fs::metadata(art).unwrap().len());
    assert_eq!(manifest["format"], "lifeboat/v1");
    assert_eq!(manifest["compression"], "zstd:3");
    assert_eq!(manifest["paths"][0], data.to_str().unwrap());

    let listing = run_ok(
        Command::new("sh")
            .arg("-c")
            .arg(format!("zstd -dc '{}' | tar -tf -", art.display())),
    );
    let names = stdout(&listing);
    let rel = data.strip_prefix("/").unwrap().to_str().unwrap();
    assert!(
        names
            .lines()
            .any(|l| l == format!("{rel}/notebooks/a.ipynb")),
        "{names}"
    );
    assert!(names.lines().all(|l| !l.starts_with('/')), "{names}");

    // Extract exactly as the README tells a person to, and compare.
    let by_hand = tmp.path().join("by-hand");
    fs::create_dir(&by_hand).unwrap();
    run_ok(Command::new("sh").arg("-c").arg(format!(
        "zstd -dc '{}' | tar -xpf - -C '{}'",
        art.display(),
        by_hand.display()
    )));
    assert_same_tree(&data, &by_hand.join(rel));
}

#[test]
fn retention_and_list_and_verify_after_several_backups() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let backup = tmp.path().join("backup");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), b"x").unwrap();
    let mut env = env(data.to_str().unwrap(), backup.to_str().unwrap());
    env.push(("LIFEBOAT_RETENTION", "last=2".into()));
    env.push(("LIFEBOAT_COMPRESSION", "gzip".into()));
    fs::create_dir_all(&backup).unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        fs::write(data.join("f"), format!("version {i}")).unwrap();
        let out = run_ok(cmd("lifeboat-sidecar", &env).arg("backup-now"));
        ids.push(stdout(&out).trim().to_string());
    }
    let all: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(
        all.len(),
        3,
        "ids must differ even within one second: {ids:?}"
    );
    let hist = history(&backup, "nb-0");
    assert_eq!(artifacts(&hist).len(), 2);
    assert!(artifacts(&hist)[0].to_str().unwrap().ends_with(".tar.gz"));

    let out = run_ok(cmd("lifeboat-sidecar", &env).arg("list"));
    let table = stdout(&out);
    assert!(
        !table.contains(&ids[0]) && table.contains(&ids[1]) && table.contains(&ids[2]),
        "{table}"
    );

    let out = run_ok(cmd("lifeboat-sidecar", &env).args(["verify", "--all"]));
    assert_eq!(stdout(&out).matches("ok ").count(), 2, "{}", stdout(&out));
    let out = run_ok(cmd("lifeboat-sidecar", &env).arg("list"));
    let table = stdout(&out);
    let verified = verified_column(&table);
    assert!(
        verified.len() == 2 && !verified.contains(&"no"),
        "verified column: {table}"
    );

    // Operator restore of an older artifact into a fresh folder.
    let inspect = tmp.path().join("inspect");
    run_ok(cmd("lifeboat-sidecar", &env).args([
        "restore",
        "--to",
        inspect.to_str().unwrap(),
        "--id",
        &ids[1],
    ]));
    let rel = data.strip_prefix("/").unwrap();
    assert_eq!(fs::read(inspect.join(rel).join("f")).unwrap(), b"version 1");
}

#[test]
fn a_missing_path_fails_that_backup_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("not-mounted");
    let backup = tmp.path().join("backup");
    fs::create_dir_all(&backup).unwrap();
    let env = env(data.to_str().unwrap(), backup.to_str().unwrap());
    let out = cmd("lifeboat-sidecar", &env)
        .arg("backup-now")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("path {} does not exist", data.display())),
        "{err}"
    );
    let hist = history(&backup, "nb-0");
    let names: Vec<_> = fs::read_dir(&hist)
        .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(names.is_empty(), "nothing may be left behind: {names:?}");
    // Once the path exists, the next backup works.
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), b"x").unwrap();
    run_ok(cmd("lifeboat-sidecar", &env).arg("backup-now"));
}

#[test]
fn two_paths_restore_together_even_with_a_hard_link_between_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("vol/a"), tmp.path().join("vol/b"));
    let backup = tmp.path().join("backup");
    for d in [&a, &b, &backup] {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(a.join("shared"), b"one inode, two paths").unwrap();
    fs::hard_link(a.join("shared"), b.join("shared-too")).unwrap();
    fs::write(b.join("own"), b"b's own file").unwrap();
    let (before_a, before_b) = (snapshot(&a), snapshot(&b));
    let paths = format!("{},{}", a.display(), b.display());
    let env = env(&paths, backup.to_str().unwrap());
    run_ok(cmd("lifeboat-sidecar", &env).arg("backup-now"));
    fs::remove_dir_all(tmp.path().join("vol")).unwrap();
    run_ok(&mut cmd("lifeboat-restore", &env));
    // Each path restores on its own, so the cross-path link comes back as two
    // files with the same content: the hard-link groups differ, nothing else.
    let strip = |s: Snapshot| -> Snapshot {
        s.into_iter()
            .map(|(k, mut n)| {
                n.hardlinks.clear();
                (k, n)
            })
            .collect()
    };
    assert_same(&strip(before_a), &strip(snapshot(&a)));
    assert_same(&strip(before_b), &strip(snapshot(&b)));
}

/// Backups that start within one second get distinct ids, and each
/// manifest's `started_at` is its real start: never after `finished_at`.
#[test]
fn backups_in_the_same_second_keep_their_real_start_times() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let backup = tmp.path().join("backup");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("v"), "x").unwrap();
    let targets = format!("file://{}", backup.display());
    let env = [
        ("LIFEBOAT_PATHS", data.to_str().unwrap()),
        ("LIFEBOAT_TARGETS", targets.as_str()),
        ("HOSTNAME", "nb-0"),
    ];
    let mut ids = Vec::new();
    for _ in 0..4 {
        let out = run_ok(lifeboat("lifeboat-sidecar", &env).arg("backup-now"));
        ids.push(stdout(&out).trim().to_string());
    }
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), 4, "{ids:?}");
    for art in artifacts(&history(&backup, "nb-0")) {
        let m = manifest_of(&art);
        let started: chrono::DateTime<chrono::Utc> =
            m["started_at"].as_str().unwrap().parse().unwrap();
        let finished: chrono::DateTime<chrono::Utc> =
            m["finished_at"].as_str().unwrap().parse().unwrap();
        assert!(started <= finished, "{m}");
        // The id's stamp is the start's second or a later free one.
        let stamp = lifeboat::artifact::id_time(m["id"].as_str().unwrap()).unwrap();
        assert!(stamp.timestamp() >= started.timestamp(), "{m}");
    }
}
