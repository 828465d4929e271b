//! Faults of the machine around a backup: a full backup disk (a small tmpfs
//! mounted as the target, so it needs root, which CI has), also one with
//! room for the artifact but not for its manifest.

use std::fs;
use std::path::Path;

use lifeboat_tests::*;
use sha2::{Digest, Sha256};

fn sha(p: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(p).unwrap()))
}

#[test]
fn a_full_backup_disk_fails_the_backup_cleanly_and_the_next_one_succeeds() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let backup = tmp.path().join("backup");
    let disk = Tmpfs::mount(&backup, "6m");
    full_disk_fails_cleanly(tmp.path(), &backup, &[], || disk.resize("32m"));
}

/// The same on ext4, where the artifact is written past the page cache
/// (`direct_write.rs`): a direct write that finds the disk full fails the
/// backup as cleanly as a buffered one.
#[test]
fn a_full_ext4_disk_written_past_the_page_cache_fails_cleanly_too() {
    if !is_root() {
        eprintln!("skipped: loop-mounting an ext4 image needs root (CI runs as root)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let backup = tmp.path().join("backup");
    let _disk = Ext4Image::mount(&tmp.path().join("disk.img"), &backup, 40);
    // Leave about 6 MiB free, as on the tmpfs above.
    let filler = backup.join("filler");
    let free = fs2_free(&backup);
    fs::write(&filler, vec![1u8; (free - (6 << 20)) as usize]).unwrap();
    let log = [("LIFEBOAT_LOG", "info,lifeboat::direct_write=debug")];
    let out = full_disk_fails_cleanly(tmp.path(), &backup, &log, || {
        fs::remove_file(&filler).unwrap()
    });
    assert!(out.contains("past the page cache (O_DIRECT)"), "{out}");
}

/// Free bytes of the filesystem at `dir`, as `df` counts them.
fn fs2_free(dir: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A backup that fits, one that does not (nothing committed, nothing left
/// behind, the older artifact untouched), then `make_room` and a backup
/// that succeeds, verifies and restores. Returns the stderr of the runs.
fn full_disk_fails_cleanly(
    tmp: &Path,
    backup: &Path,
    extra: &[(&str, &str)],
    make_room: impl FnOnce(),
) -> String {
    let data = tmp.join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("small.bin"), noise(1 << 20, 1)).unwrap();
    let mut env = vec![
        ("LIFEBOAT_PATHS", data.to_str().unwrap()),
        ("LIFEBOAT_TARGETS", backup.to_str().unwrap()),
        ("LIFEBOAT_RETENTION", "last=1"),
        ("HOSTNAME", "nb-0"),
    ];
    env.extend_from_slice(extra);
    let out = run_ok(lifeboat("lifeboat-sidecar", &env).arg("backup-now"));
    let mut log = stderr(&out);
    let first = stdout(&out).trim().to_string();
    let history = history(backup, "nb-0");
    let before = names(&history);
    let first_artifact = history.join(format!("{first}.tar.zst"));
    let first_sha = sha(&first_artifact);

    // 8 MiB that does not compress cannot fit in what is left of 6 MiB.
    fs::write(data.join("big.bin"), noise(8 << 20, 2)).unwrap();
    let out = lifeboat("lifeboat-sidecar", &env)
        .arg("backup-now")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("nothing was committed"), "{err}");
    // No partial file left behind, the older artifact untouched, and
    // retention (last=1) did not run: it would have had nothing newer to keep.
    assert_eq!(names(&history), before);
    assert_eq!(sha(&first_artifact), first_sha);
    let listed = stdout(&run_ok(lifeboat("lifeboat-sidecar", &env).arg("list")));
    assert!(listed.contains(&first), "{listed}");

    // Space comes back: the next backup succeeds, and only then does
    // retention remove the older one.
    make_room();
    let out = run_ok(lifeboat("lifeboat-sidecar", &env).arg("backup-now"));
    log.push_str(&stderr(&out));
    let second = stdout(&out).trim().to_string();
    assert_ne!(first, second);
    assert!(!first_artifact.exists());
    run_ok(lifeboat("lifeboat-sidecar", &env).args(["verify", "--all"]));
    let restored = tmp.join("restored");
    run_ok(
        lifeboat("lifeboat-sidecar", &env)
            .args(["restore", "--to"])
            .arg(&restored),
    );
    assert_same_tree(&data, &restored.join(data.strip_prefix("/").unwrap()));
    log
}

/// The release containers run as uid 65532 (images/Dockerfile); a volume
/// that belongs to the app's uid must give a message that says so and how
/// to fix it, not a panic or a bare "Permission denied".
#[test]
fn a_non_root_uid_on_a_volume_owned_by_another_uid_gets_a_clear_error() {
    use std::os::unix::fs::{chown, PermissionsExt};
    use std::os::unix::process::CommandExt;
    if !is_root() {
        eprintln!("skipped: changing owners and uids needs root (CI runs as root)");
        return;
    }
    const APP: u32 = 1000;
    const US: u32 = 65532;
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let data = tmp.path().join("data");
    fs::create_dir_all(data.join("private")).unwrap();
    fs::write(data.join("private/notes"), "mine\n").unwrap();
    for p in [&data, &data.join("private"), &data.join("private/notes")] {
        chown(p, Some(APP), Some(APP)).unwrap();
    }
    let backup = tmp.path().join("backup");
    fs::create_dir_all(&backup).unwrap();
    fs::set_permissions(&backup, fs::Permissions::from_mode(0o777)).unwrap();
    let env = [
        ("LIFEBOAT_PATHS", data.to_str().unwrap()),
        ("LIFEBOAT_TARGETS", backup.to_str().unwrap()),
        ("HOSTNAME", "nb-0"),
    ];
    let as_us = |name: &str, args: &[&str]| {
        let mut c = lifeboat(name, &env);
        c.args(args).uid(US).gid(US);
        c
    };
    let no_panic = |err: &str| assert!(!err.contains("panicked"), "{err}");

    // The volume itself is closed to us: refused at start, for both commands.
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).unwrap();
    for args in [&["backup-now"][..], &["run"][..]] {
        let err = fails_with(&mut as_us("lifeboat-sidecar", args), 64, "may not read");
        assert!(err.contains(&format!("uid {US}")), "{err}");
        assert!(err.contains(&format!("runAsUser: {APP}")), "{err}");
        assert!(err.contains("fsGroup"), "{err}");
        no_panic(&err);
    }
    // Open, but a folder inside is not: the backup fails naming that folder.
    fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(data.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    let err = fails_with(
        &mut as_us("lifeboat-sidecar", &["backup-now"]),
        1,
        &format!("reading {}", data.join("private").display()),
    );
    assert!(
        err.contains("run the sidecar as a user that can read it"),
        "{err}"
    );
    no_panic(&err);
    assert!(artifacts(&history(&backup, "nb-0")).is_empty());

    // Restore into a volume we may not write to: refused before any work.
    run_ok(lifeboat("lifeboat-sidecar", &env).arg("backup-now"));
    fs::remove_dir_all(data.join("private")).unwrap();
    let err = fails_with(
        as_us("lifeboat-restore", &[]).env("LIFEBOAT_RESTORE", "always"),
        64,
        "may not write to",
    );
    assert!(err.contains(&format!("runAsUser: {APP}")), "{err}");
    no_panic(&err);
    assert!(!data.join("private").exists());

    // A backup folder we may not write to.
    let closed = tmp.path().join("closed");
    fs::create_dir_all(&closed).unwrap();
    chown(&closed, Some(APP), Some(APP)).unwrap();
    let mut c = lifeboat(
        "lifeboat-sidecar",
        &[
            ("LIFEBOAT_PATHS", data.to_str().unwrap()),
            ("LIFEBOAT_TARGETS", closed.to_str().unwrap()),
            ("HOSTNAME", "nb-0"),
        ],
    );
    c.arg("backup-now").uid(US).gid(US);
    let err = fails_with(&mut c, 64, "LIFEBOAT_TARGETS");
    assert!(
        err.contains("may not write to") || err.contains("Permission denied"),
        "{err}"
    );
    no_panic(&err);
}

/// Free bytes on the filesystem of `p`.
fn free_bytes(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a valid path and a zeroed out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

/// Room for the artifact but not for its manifest: the backup fails, says
/// so, and publishes nothing (no empty manifest, no artifact), and the
/// next backup with room succeeds.
#[test]
fn room_for_the_artifact_but_not_the_manifest_commits_nothing() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let backup = tmp.path().join("backup");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("blob"), noise(300_000, 5)).unwrap();
    let disk = Tmpfs::mount(&backup, "2m");
    let cmd = || {
        lifeboat(
            "lifeboat-sidecar",
            &[
                ("LIFEBOAT_PATHS", data.to_str().unwrap()),
                ("LIFEBOAT_TARGETS", &format!("file://{}", backup.display())),
                ("LIFEBOAT_COMPRESSION", "none"),
                ("HOSTNAME", "db-0"),
            ],
        )
    };
    // A first backup tells the artifact's size (uncompressed: the same
    // next time); then it is removed and the disk filled to leave exactly
    // the artifact's pages free.
    run_ok(cmd().arg("backup-now"));
    let hist = history(&backup, "db-0");
    let art = artifacts(&hist).pop().unwrap();
    let size = fs::metadata(&art).unwrap().len();
    for n in names(&hist) {
        fs::remove_file(hist.join(n)).unwrap();
    }
    let pages = size.div_ceil(4096) * 4096;
    let filler = backup.join("filler");
    let f = fs::File::create(&filler).unwrap();
    let fill = free_bytes(&backup) - pages;
    std::io::Write::write_all(&mut &f, &vec![1u8; fill as usize]).unwrap();
    f.sync_all().unwrap();
    // Closed, so removing it later frees its space.
    drop(f);
    assert_eq!(free_bytes(&backup), pages);

    let out = cmd().arg("backup-now").output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(!err.contains("backup committed"), "{err}");
    assert!(
        stdout(&out).trim().is_empty(),
        "an id was printed: {}",
        stdout(&out)
    );
    assert_eq!(
        names(&hist),
        Vec::<String>::new(),
        "something was published"
    );
    let list = run_ok(cmd().args(["list", "--json"]));
    assert!(stdout(&list).trim().is_empty(), "{}", stdout(&list));

    fs::remove_file(&filler).unwrap();
    run_ok(cmd().arg("backup-now"));
    run_ok(cmd().args(["verify", "--all"]));
    drop(disk);
}

/// Backups killed mid-write leave partial files; the next backup, holding
/// the history's lock (so no other backup of this container is writing),
/// removes them all at its start instead of a day later.
#[test]
fn partials_of_killed_backups_are_removed_by_the_next_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let backup = tmp.path().join("backup");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("blob"), noise(256 << 20, 2)).unwrap();
    let cmd = || {
        lifeboat(
            "lifeboat-sidecar",
            &[
                ("LIFEBOAT_PATHS", data.to_str().unwrap()),
                ("LIFEBOAT_TARGETS", &format!("file://{}", backup.display())),
                ("LIFEBOAT_COMPRESSION", "none"),
                ("HOSTNAME", "db-0"),
            ],
        )
    };
    let hist = history(&backup, "db-0");
    let partials = || -> Vec<String> {
        fs::read_dir(&hist)
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".partial"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..3 {
        let mut child = cmd().arg("backup-now").spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        // Killed once its own partial artifact holds some data.
        let name = loop {
            let new = partials().into_iter().find(|n| {
                !seen.contains(n) && fs::metadata(hist.join(n)).is_ok_and(|m| m.len() > 1 << 20)
            });
            if let Some(n) = new {
                break n;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the backup ended before the kill"
            );
            assert!(std::time::Instant::now() < deadline, "no partial appeared");
            std::thread::sleep(std::time::Duration::from_millis(2));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        seen.push(name);
    }
    // Each backup removed the partial of the one killed before it.
    assert_eq!(partials(), [seen[2].clone()]);
    run_ok(cmd().arg("backup-now"));
    assert!(partials().is_empty(), "{:?}", partials());
    assert_eq!(names(&hist).len(), 2, "{:?}", names(&hist));
}
