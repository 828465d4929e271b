//! Nothing half-written ever counts: SIGKILL in the middle of a backup leaves
//! no artifact that `list` shows, and the next restore takes the last good
//! one. SIGTERM during a backup drains within the grace period or cancels.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lifeboat_tests::*;

struct Setup {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    backup: PathBuf,
    annotations: PathBuf,
}

fn setup(blob_mib: usize) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let backup = tmp.path().join("backup");
    fs::create_dir_all(&data).unwrap();
    fs::create_dir_all(&backup).unwrap();
    fs::write(data.join("blob"), slow_to_compress(blob_mib << 20)).unwrap();
    fs::write(data.join("v"), "good").unwrap();
    let annotations = tmp.path().join("annotations");
    Setup {
        _tmp: tmp,
        data,
        backup,
        annotations,
    }
}

/// Hex digits of random bytes: they halve under zstd, so lifeboat compresses
/// them (random bytes it would store raw, fast), and at level 19 slowly.
fn slow_to_compress(len: usize) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    noise(len.div_ceil(2), 3)
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]])
        .take(len)
        .collect()
}

impl Setup {
    /// zstd at level 19 on `slow_to_compress` data gives the test a long
    /// window in which the backup is surely in flight.
    fn cmd(&self, name: &str, compression: &str) -> Command {
        lifeboat(
            name,
            &[
                ("LIFEBOAT_PATHS", self.data.to_str().unwrap()),
                (
                    "LIFEBOAT_TARGETS",
                    &format!("file://{}", self.backup.display()),
                ),
                ("LIFEBOAT_COMPRESSION", compression),
                (
                    "LIFEBOAT_ANNOTATIONS_FILE",
                    self.annotations.to_str().unwrap(),
                ),
                ("HOSTNAME", "nb-0"),
            ],
        )
    }

    fn hist(&self) -> PathBuf {
        history(&self.backup, "nb-0")
    }
}

/// Waits until a partial artifact with data appears in `hist`.
fn wait_for_partial(hist: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let partial = fs::read_dir(hist).into_iter().flatten().flatten().any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with('.')
                && n.ends_with(".partial")
                && e.metadata().map(|m| m.len() > 0).unwrap_or(false)
        });
        if partial {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the backup ended ({status}) before the test could interrupt it");
        }
        assert!(Instant::now() < deadline, "no partial artifact appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn visible(hist: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(hist)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: the pid is our own child's, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

#[test]
fn sigkill_mid_backup_leaves_no_visible_artifact_and_restore_takes_the_last_good_one() {
    let s = setup(24);
    run_ok(s.cmd("lifeboat-sidecar", "zstd:1").arg("backup-now"));
    let good = snapshot(&s.data);
    let before = visible(&s.hist());
    assert_eq!(before.len(), 2, "{before:?}");

    fs::write(s.data.join("v"), "newer, never committed").unwrap();
    let mut child = s
        .cmd("lifeboat-sidecar", "zstd:19")
        .arg("backup-now")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_partial(&s.hist(), &mut child);
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();

    assert_eq!(
        visible(&s.hist()),
        before,
        "a killed backup must not add visible files"
    );
    let out = run_ok(s.cmd("lifeboat-sidecar", "zstd:1").arg("list"));
    assert_eq!(
        stdout(&out).matches("-files ").count(),
        1,
        "{}",
        stdout(&out)
    );
    run_ok(
        s.cmd("lifeboat-sidecar", "zstd:1")
            .args(["verify", "--all"]),
    );

    fs::remove_dir_all(&s.data).unwrap();
    run_ok(&mut s.cmd("lifeboat-restore", "zstd:1"));
    assert_same(&good, &snapshot(&s.data));

    // The debris does not get in the way of the next backup.
    run_ok(s.cmd("lifeboat-sidecar", "zstd:1").arg("backup-now"));
    assert_eq!(artifacts(&s.hist()).len(), 2);
}

/// Starts `run`, waiting on a schedule that never comes soon, then triggers
/// a backup by changing the `lifeboat.dev/backup-now` annotation.
fn run_and_trigger(s: &Setup, grace: &str) -> (Child, PathBuf) {
    fs::write(&s.annotations, "lifeboat.dev/schedule=\"0 0 1 1 *\"\n").unwrap();
    let log = s.annotations.with_file_name("sidecar.log");
    let mut cmd = s.cmd("lifeboat-sidecar", "zstd:19");
    cmd.arg("run").env("LIFEBOAT_GRACE_PERIOD", grace);
    // The annotation must change after the sidecar has read it once: a
    // value it finds at start is not a request. Its schedule comes from
    // that first read, so the log line about it says the read happened.
    let mut child = spawn_until_logged(cmd, &log, "next scheduled backup");
    fs::write(
        &s.annotations,
        "lifeboat.dev/schedule=\"0 0 1 1 *\"\nlifeboat.dev/backup-now=\"2026-11-23T10:00\"\n",
    )
    .unwrap();
    wait_for_partial(&s.hist(), &mut child);
    (child, log)
}

#[test]
fn sigterm_after_the_grace_period_cancels_cleanly_and_exits_zero() {
    let s = setup(24);
    let (mut child, log) = run_and_trigger(&s, "0s");
    signal(&child, libc::SIGTERM);
    let out = wait_output(&mut child, &log);
    assert_eq!(out.0.code(), Some(0), "{}", out.1);
    assert!(out.1.contains("cancelling the backup"), "{}", out.1);
    assert!(
        out.1.contains("annotation lifeboat.dev/backup-now"),
        "{}",
        out.1
    );
    let left: Vec<_> = fs::read_dir(s.hist())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.is_empty(),
        "a cancelled backup must leave nothing: {left:?}"
    );
}

#[test]
fn sigterm_within_the_grace_period_lets_the_backup_finish() {
    let s = setup(3);
    let (mut child, log) = run_and_trigger(&s, "120s");
    signal(&child, libc::SIGTERM);
    let out = wait_output(&mut child, &log);
    assert_eq!(out.0.code(), Some(0), "{}", out.1);
    assert!(out.1.contains("backup committed"), "{}", out.1);
    assert_eq!(visible(&s.hist()).len(), 2);
}

fn wait_output(child: &mut Child, log: &Path) -> (std::process::ExitStatus, String) {
    let status = child.wait().unwrap();
    (status, fs::read_to_string(log).unwrap())
}
