//! Crash anywhere: `lifeboat-sidecar backup-now` is SIGKILLed at 30
//! pseudo-random moments (15 against a folder target, 15 against a real S3
//! server, SeaweedFS on 127.0.0.1), from before it has read its settings to
//! after it has committed and run retention. After every kill, `list` shows
//! only complete artifacts, `verify --all` passes, and `restore --to` of the
//! newest yields the volume as it was when that backup ran, byte for byte;
//! with incremental chains too, whose newest link restores through its chain.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lifeboat_tests::*;

const KILLS_PER_TARGET: usize = 15;

/// Deterministic moments (xorshift), so a failure names a reproducible one.
struct Moments(u64);

impl Moments {
    fn next_below(&mut self, max: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        max.mul_f64((self.0 % 10_000) as f64 / 10_000.0)
    }
}

fn fill(data: &Path) {
    fs::create_dir_all(data.join("notebooks")).unwrap();
    for i in 0..150 {
        fs::write(
            data.join(format!("notebooks/n{i:03}.ipynb")),
            format!("{{\"cells\": [\"{i}\"]}}\n").repeat(200),
        )
        .unwrap();
    }
    fs::write(data.join("weights.bin"), noise(12 << 20, 4)).unwrap();
}

/// Ids that `list --json` shows, newest first, after checking that each
/// listed artifact is whole where the test can see it (a folder target).
fn listed(cmd: &dyn Fn() -> Command, hist: Option<&Path>) -> Vec<String> {
    let out = run_ok(cmd().args(["list", "--json"]));
    stdout(&out)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(h) = hist {
                let art = h.join(v["artifact"].as_str().unwrap());
                assert_eq!(
                    fs::metadata(&art).map(|m| m.len()).ok(),
                    v["size"].as_u64(),
                    "{} is listed but not whole",
                    art.display()
                );
            }
            v["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// What `list` shows once a killed run's last request has landed: an S3
/// server finishes a PUT whose body it has whole even when the client is
/// gone, so a manifest can appear a moment after the kill. That artifact
/// is complete, and counts as the kill landing after the commit.
fn settled(cmd: &dyn Fn() -> Command, hist: Option<&Path>) -> Vec<String> {
    let mut seen = listed(cmd, hist);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(300));
        let now = listed(cmd, hist);
        if now == seen {
            return now;
        }
        seen = now;
    }
    panic!("`list` still changed 6 s after the kill: {seen:?}");
}

fn env_has_chain(env: &[(&'static str, String)]) -> bool {
    env.iter().any(|(k, _)| *k == "LIFEBOAT_FULL_EVERY")
}

fn crash_loop(
    label: &str,
    tmp: &Path,
    base_env: Vec<(&'static str, String)>,
    hist: Option<PathBuf>,
) {
    let data = tmp.join("data");
    fill(&data);
    let mut env = base_env;
    env.extend([
        ("LIFEBOAT_PATHS", data.display().to_string()),
        ("HOSTNAME", "nb-0".to_string()),
        // Retention runs after each commit: kills land in it too.
        ("LIFEBOAT_RETENTION", "last=3".to_string()),
    ]);
    let cmd = || lifeboat("lifeboat-sidecar", &pairs(&env));

    // Two uninterrupted backups: the baseline, and how long one takes
    // (the longer: a chain's full first link, not its quick second; for
    // full backups the warm one, as a new S3 bucket's first write is slower).
    let mut expected: BTreeMap<String, Snapshot> = BTreeMap::new();
    let mut took = Duration::ZERO;
    for warm in ["-2", "-1"] {
        fs::write(data.join("v"), format!("iteration {warm}\n")).unwrap();
        let clock = Instant::now();
        let id = stdout(&run_ok(cmd().arg("backup-now"))).trim().to_string();
        took = if warm == "-1" && took > clock.elapsed() && env_has_chain(&env) {
            took
        } else {
            clock.elapsed()
        };
        expected.insert(id, snapshot(&data));
    }
    eprintln!("{label}: one backup takes {took:?}");

    let mut moments = Moments(0x5EED_0000 + label.len() as u64);
    let mut outcomes = (0, 0);
    for i in 0..KILLS_PER_TARGET {
        fs::write(data.join("v"), format!("iteration {i}\n")).unwrap();
        let now = snapshot(&data);
        let before = listed(&cmd, hist.as_deref());
        // Up to 1.3x a backup's time: some kills land after the commit.
        let at = moments.next_below(took.mul_f64(1.3));
        let log = tmp.join("backup.log");
        let mut child = cmd()
            .arg("backup-now")
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        let finished = child.try_wait().unwrap();
        if let Some(status) = finished {
            // Not killed: then it must have succeeded.
            assert!(
                status.success(),
                "{label} run {i}: {status}\n{}",
                fs::read_to_string(&log).unwrap()
            );
        }
        let finished = finished.is_some();
        let _ = child.kill();
        let _ = child.wait();

        let after = settled(&cmd, hist.as_deref());
        let new: Vec<&String> = after.iter().filter(|id| !before.contains(id)).collect();
        assert!(new.len() <= 1, "{label} kill {i} at {at:?}: {new:?}");
        if let Some(id) = new.first() {
            expected.insert(id.to_string(), now);
            outcomes.1 += 1;
        } else {
            outcomes.0 += 1;
        }
        eprintln!(
            "{label} kill {i} at {at:?}: {} (finished before the kill: {finished})",
            if new.is_empty() {
                "nothing committed"
            } else {
                "committed"
            }
        );

        let v = cmd().args(["verify", "--all"]).output().unwrap();
        assert!(
            v.status.success(),
            "{label} kill {i} at {at:?}: verify --all failed:\n{}{}",
            stdout(&v),
            stderr(&v)
        );
        let newest = after.first().expect("the baseline stays listed");
        let to = tmp.join(format!("restored-{i}"));
        let out = run_ok(cmd().args(["restore", "--to"]).arg(&to));
        assert_eq!(stdout(&out).trim(), newest.as_str());
        assert_same(
            &expected[newest],
            &snapshot(&to.join(data.strip_prefix("/").unwrap())),
        );
        fs::remove_dir_all(&to).unwrap();
    }
    eprintln!(
        "{label}: {} kills left nothing committed, {} landed after a commit",
        outcomes.0, outcomes.1
    );
}

/// The crash loop against a folder target, then against SeaweedFS, each
/// with `extra` settings; the label names the run (and seeds its moments).
fn folder_then_s3(label: &str, extra: &[(&'static str, &str)]) {
    let tmp = tempfile::tempdir().unwrap();
    let backup = tmp.path().join("backup");
    fs::create_dir_all(&backup).unwrap();
    let extra: Vec<(&'static str, String)> =
        extra.iter().map(|(k, v)| (*k, v.to_string())).collect();
    let mut env = vec![("LIFEBOAT_TARGETS", backup.display().to_string())];
    env.extend(extra.iter().cloned());
    crash_loop(
        &format!("folder{label}"),
        &tmp.path().join("folder"),
        env,
        Some(history(&backup, "nb-0")),
    );

    let weed = Seaweed::start(&tmp.path().join("weed"));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(weed.create_bucket("crash"));
    let mut env = weed.env();
    env.push(("LIFEBOAT_TARGETS", format!("s3://crash/loop{label}")));
    env.extend(extra);
    crash_loop(&format!("s3{label}"), &tmp.path().join("s3"), env, None);
}

#[test]
fn sigkill_at_random_moments_never_leaves_a_listed_artifact_that_is_not_whole() {
    folder_then_s3("", &[]);
}

/// The same with incremental chains (`LIFEBOAT_FULL_EVERY=4`): kills land
/// while a base state is fetched, while a link or its state is stored, and
/// in retention that keeps whole chains; every chain stays restorable to
/// its last committed link.
#[test]
fn sigkill_at_random_moments_leaves_every_chain_restorable() {
    folder_then_s3("-chain", &[("LIFEBOAT_FULL_EVERY", "4")]);
}
