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
