//! Restore trusts nothing: a corrupt or truncated newest artifact is skipped
//! for the previous one; when all are bad the init container fails and the
//! volume stays untouched; with none at all (first deploy) the app may start.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use lifeboat_tests::*;

struct Setup {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    backup: PathBuf,
    ids: Vec<String>,
}

impl Setup {
    /// Three backups; file `v` holds "version N" in backup N.
    fn new(versions: usize) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let backup = tmp.path().join("backup");
        fs::create_dir_all(&data).unwrap();
        fs::create_dir_all(&backup).unwrap();
        fs::write(data.join("blob"), noise(300_000, 7)).unwrap();
        let mut s = Setup {
            _tmp: tmp,
            data,
            backup,
            ids: vec![],
        };
        for i in 0..versions {
            fs::write(s.data.join("v"), format!("version {i}")).unwrap();
            let out = run_ok(s.cmd("lifeboat-sidecar").arg("backup-now"));
            s.ids.push(stdout(&out).trim().to_string());
        }
        s
    }

    fn cmd(&self, name: &str) -> Command {
        lifeboat(
            name,
            &[
                ("LIFEBOAT_PATHS", self.data.to_str().unwrap()),
                (
                    "LIFEBOAT_TARGETS",
                    &format!("file://{}", self.backup.display()),
                ),
                ("HOSTNAME", "pg-0"),
            ],
        )
    }

    fn artifact(&self, i: usize) -> PathBuf {
        artifacts(&history(&self.backup, "pg-0"))[i].clone()
    }

    fn wipe(&self) {
        fs::remove_dir_all(&self.data).unwrap();
        fs::create_dir(&self.data).unwrap();
    }
}

fn flip_byte(p: &Path) {
    let mut b = fs::read(p).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    fs::write(p, b).unwrap();
}

#[test]
fn one_flipped_byte_in_the_newest_falls_back_to_the_previous() {
    let s = Setup::new(3);
    flip_byte(&s.artifact(2));
    s.wipe();
    let out = run_ok(&mut s.cmd("lifeboat-restore"));
    assert_eq!(fs::read_to_string(s.data.join("v")).unwrap(), "version 1");
    let err = stderr(&out);
    assert!(
        err.contains(&s.ids[2]) && err.contains("artifact skipped"),
        "the bad artifact must be named:\n{err}"
    );
    assert!(err.contains("WARN"), "{err}");
}

#[test]
fn a_truncated_newest_falls_back_to_the_previous() {
    let s = Setup::new(3);
    let p = s.artifact(2);
    let len = fs::metadata(&p).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    s.wipe();
    let out = run_ok(&mut s.cmd("lifeboat-restore"));
    assert_eq!(fs::read_to_string(s.data.join("v")).unwrap(), "version 1");
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));
}

#[test]
fn when_every_artifact_is_bad_the_volume_is_untouched_and_the_exit_is_non_zero() {
    let s = Setup::new(2);
    flip_byte(&s.artifact(0));
    flip_byte(&s.artifact(1));
    s.wipe();
    fs::create_dir(s.data.join("lost+found")).unwrap();
    let out = s.cmd("lifeboat-restore").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("2 artifact(s) found but none verified"),
        "{}",
        stderr(&out)
    );
    assert_eq!(names(&s.data), vec!["lost+found"]);
}

#[test]
fn no_artifacts_at_all_is_a_first_deploy() {
    let s = Setup::new(0);
    s.wipe();
    let out = run_ok(&mut s.cmd("lifeboat-restore"));
    assert!(stderr(&out).contains("first deploy"), "{}", stderr(&out));
}

#[test]
fn a_missing_backup_volume_is_not_mistaken_for_a_first_deploy() {
    let s = Setup::new(0);
    s.wipe();
    fs::remove_dir_all(&s.backup).unwrap();
    let out = s.cmd("lifeboat-restore").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is the backup volume mounted"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_interrupted_restore_is_redone_on_the_next_start() {
    let s = Setup::new(1);
    s.wipe();
    // What a restore killed between its first and last move leaves.
    fs::write(s.data.join(".lifeboat-restoring"), &s.ids[0]).unwrap();
    fs::write(s.data.join("v"), "half-moved").unwrap();
    run_ok(&mut s.cmd("lifeboat-restore"));
    assert_eq!(fs::read_to_string(s.data.join("v")).unwrap(), "version 0");
    assert_eq!(fs::read(s.data.join("blob")).unwrap(), noise(300_000, 7));
    assert!(!s.data.join(".lifeboat-restoring").exists());
}

#[test]
fn restore_never_and_always() {
    let s = Setup::new(1);
    fs::write(s.data.join("v"), "local edit").unwrap();
    let out = run_ok(s.cmd("lifeboat-restore").env("LIFEBOAT_RESTORE", "never"));
    assert!(stderr(&out).contains("restore skipped"));
    run_ok(s.cmd("lifeboat-restore").env("LIFEBOAT_RESTORE", "always"));
    assert_eq!(fs::read_to_string(s.data.join("v")).unwrap(), "version 0");
}
