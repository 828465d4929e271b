//! Faults of the machine around a backup: a full backup disk (a small tmpfs
//! mounted as the target, so it needs root, which CI has).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use lifeboat_tests::*;
use sha2::{Digest, Sha256};

/// A tmpfs of `size` mounted on `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Every name in a history folder, hidden ones included.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

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
    let data = tmp.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("small.bin"), noise(1 << 20, 1)).unwrap();
    let backup = tmp.path().join("backup");
    let disk = Tmpfs::mount(&backup, "6m");
    let env = [
        ("LIFEBOAT_PATHS", data.to_str().unwrap()),
        ("LIFEBOAT_TARGETS", backup.to_str().unwrap()),
        ("LIFEBOAT_RETENTION", "last=1"),
        ("HOSTNAME", "nb-0"),
    ];
    let first = stdout(&run_ok(
        lifeboat("lifeboat-sidecar", &env).arg("backup-now"),
    ))
    .trim()
    .to_string();
    let history = history(&backup, "nb-0");
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
    disk.resize("32m");
    let second = stdout(&run_ok(
        lifeboat("lifeboat-sidecar", &env).arg("backup-now"),
    ))
    .trim()
    .to_string();
    assert_ne!(first, second);
    assert!(!first_artifact.exists());
    run_ok(lifeboat("lifeboat-sidecar", &env).args(["verify", "--all"]));
    let restored = tmp.path().join("restored");
    run_ok(
        lifeboat("lifeboat-sidecar", &env)
            .args(["restore", "--to"])
            .arg(&restored),
    );
    assert_same_tree(&data, &restored.join(data.strip_prefix("/").unwrap()));
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
