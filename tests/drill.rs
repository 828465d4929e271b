//! Restore drills with the real binaries, outside Kubernetes: the drill
//! pod's steps run here one after the other. `lifeboat-restore` with
//! `LIFEBOAT_DRILL_REPORT` restores into an empty volume and reports what it
//! restored; `lifeboat-sidecar drill check` runs the user's check and records
//! the result beside the artifact. A drill of an artifact that is whole
//! (its checksum is right) but lacks what the app needs fails, is shown by
//! `list`, and the next restore skips it for the older artifact that passes.
//! The same on a real cluster, through the drill component: tests/e2e.rs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use lifeboat_tests::*;

struct Pod {
    tmp: tempfile::TempDir,
    data: PathBuf,
    backup: PathBuf,
    /// LIFEBOAT_TARGETS: `backup`, and a secondary beside it for some tests.
    targets: String,
}

impl Pod {
    fn new() -> Pod {
        let tmp = tempfile::tempdir().unwrap();
        let (data, backup) = (tmp.path().join("data"), tmp.path().join("backup"));
        fs::create_dir_all(&data).unwrap();
        fs::create_dir_all(&backup).unwrap();
        let targets = format!("file://{}", backup.display());
        Pod {
            tmp,
            data,
            backup,
            targets,
        }
    }

    /// With a secondary target `<tmp>/secondary`, which each backup copies to.
    fn with_secondary() -> (Pod, PathBuf) {
        let mut pod = Pod::new();
        let secondary = pod.tmp.path().join("secondary");
        fs::create_dir_all(&secondary).unwrap();
        pod.targets = format!("{},file://{}", pod.targets, secondary.display());
        (pod, secondary)
    }

    fn cmd(&self, name: &str, extra: &[(&str, &str)]) -> Command {
        let targets = self.targets.clone();
        let mut env = vec![
            ("LIFEBOAT_PATHS", self.data.to_str().unwrap()),
            ("LIFEBOAT_TARGETS", targets.as_str()),
            ("HOSTNAME", "orders-0"),
        ];
        env.extend_from_slice(extra);
        lifeboat(name, &env)
    }

    fn backup(&self) -> String {
        stdout(&run_ok(self.cmd("lifeboat-sidecar", &[]).arg("backup-now")))
            .trim()
            .to_string()
    }

    /// The drill pod: an empty volume where the app's was, the restore with
    /// its report, then the check. The live volume is set aside meanwhile.
    fn drill(&self, check: &str) -> (std::process::Output, String) {
        let live = self.tmp.path().join("live");
        fs::rename(&self.data, &live).unwrap();
        let report = self.tmp.path().join("restored.json");
        let _ = fs::remove_file(&report);
        let report_s = report.to_str().unwrap();
        let restore = run_ok(
            self.cmd("lifeboat-restore", &[("LIFEBOAT_DRILL_REPORT", report_s)])
                .env("POD_NAME", "orders-drill-x1"),
        );
        let check_out = self
            .cmd(
                "lifeboat-sidecar",
                &[
                    ("LIFEBOAT_DRILL_REPORT", report_s),
                    ("LIFEBOAT_DRILL_CHECK", check),
                    ("LIFEBOAT_DRILL_TIMEOUT", "3s"),
                ],
            )
            .env("POD_NAME", "orders-drill-x1")
            .args(["drill", "check"])
            .output()
            .unwrap();
        fs::remove_dir_all(&self.data).unwrap();
        fs::rename(&live, &self.data).unwrap();
        (check_out, stderr(&restore))
    }

    fn sidecar_with(&self, log: &Path, extra: &[(&str, &str)]) -> RunningSidecar {
        let targets = self.targets.clone();
        let mut env = vec![
            ("LIFEBOAT_PATHS", self.data.to_str().unwrap()),
            ("LIFEBOAT_TARGETS", targets.as_str()),
            ("HOSTNAME", "orders-0"),
            ("LIFEBOAT_SCHEDULE", "0 0 1 1 *"),
        ];
        env.extend_from_slice(extra);
        RunningSidecar::start(&env, log)
    }

    fn list(&self) -> String {
        stdout(&run_ok(self.cmd("lifeboat-sidecar", &[]).arg("list")))
    }
}

fn row<'a>(list: &'a str, id: &str) -> &'a str {
    list.lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("{id} not listed:\n{list}"))
}

#[test]
fn a_failed_drill_is_recorded_listed_and_skipped_by_the_next_restore() {
    let pod = Pod::new();
    let orders = pod.data.join("orders.csv");
    let rows: String = (1..=5000).map(|i| format!("{i},item {i}\n")).collect();
    fs::write(&orders, &rows).unwrap();
    fs::write(pod.data.join("v"), "version 0").unwrap();
    let good = pod.backup();
    // Whole and checksummed, but the table is gone: only a drill tells.
    fs::remove_file(&orders).unwrap();
    fs::write(pod.data.join("v"), "version 1").unwrap();
    let broken = pod.backup();
    assert!(broken > good);
    fs::write(&orders, &rows).unwrap();
    let check = format!("test -s {}", orders.display());

    // The drill restores the newest and its check fails: exit 1, recorded.
    let (out, restore_log) = pod.drill(&check);
    assert!(restore_log.contains(&broken), "{restore_log}");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("the restore drill of {broken} FAILED")),
        "{err}"
    );
    let list = pod.list();
    let header = list
        .lines()
        .find(|l| l.starts_with("ID "))
        .unwrap_or_default();
    assert!(header.ends_with("DRILLED"), "{list}");
    assert!(row(&list, &broken).contains("FAILED 20"), "{list}");
    assert!(row(&list, &good).trim_end().ends_with("no"), "{list}");
    let record = history(&pod.backup, "orders-0").join(format!("{broken}.drill.json"));
    let r: serde_json::Value = serde_json::from_slice(&fs::read(&record).unwrap()).unwrap();
    assert_eq!(r["passed"], false);
    assert_eq!(r["verdict"], "failed");
    assert_eq!(r["check"], check.as_str());
    assert_eq!(r["pod"], "orders-drill-x1");
    assert!(r["restore_seconds"].as_f64().unwrap() > 0.0);

    // The app pod's sidecar says so: an ERROR line (and, in a cluster, a
    // DrillFailed Event and a notification), and its metrics.
    {
        let (port, got) = notifications::receiver();
        let url = format!("http://127.0.0.1:{port}/hook");
        let log = pod.tmp.path().join("sidecar-failed.log");
        let sc = pod.sidecar_with(&log, &[("LIFEBOAT_NOTIFY_URL", url.as_str())]);
        let text = wait_for_log(&log, "a restore drill FAILED: the app's check failed");
        assert!(text.contains(&broken), "{text}");
        wait_for_log(&log, "notification sent");
        let bodies = got.lock().unwrap().clone();
        assert_eq!(
            bodies.len(),
            1,
            "one notification per failed drill: {bodies:?}"
        );
        assert_eq!(bodies[0]["event"], "drill_failed");
        assert_eq!(bodies[0]["id"], broken.as_str());
        assert_eq!(bodies[0]["check"], check.as_str());
        assert_eq!(bodies[0]["verdict"], "failed");
        let (_, metrics) = sc.get("/metrics");
        assert!(
            metrics.contains("lifeboat_last_drill_success{") && metrics.contains("} 0"),
            "{metrics}"
        );
    }

    // The init container of a new pod skips it for the older artifact.
    fs::remove_dir_all(&pod.data).unwrap();
    let out = run_ok(&mut pod.cmd("lifeboat-restore", &[]));
    let err = stderr(&out);
    assert!(err.contains("it failed a restore drill at"), "{err}");
    assert!(err.contains(&good), "{err}");
    assert_eq!(fs::read_to_string(&orders).unwrap(), rows);
    assert_eq!(fs::read_to_string(pod.data.join("v")).unwrap(), "version 0");

    // The next drill skips it too, and passes on the older one.
    let (out, restore_log) = pod.drill(&check);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(restore_log.contains(&good), "{restore_log}");
    let list = pod.list();
    assert!(row(&list, &good).contains("passed 20"), "{list}");
    assert!(row(&list, &broken).contains("FAILED 20"), "{list}");

    // The sidecar serves the newest drill as metrics and in /status.
    let log = pod.tmp.path().join("sidecar.log");
    let sc = pod.sidecar_with(&log, &[("LIFEBOAT_DRILL_CHECK", check.as_str())]);
    let (_, metrics) = sc.get("/metrics");
    let value = |name: &str| -> Option<f64> {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    assert_eq!(
        value("lifeboat_last_drill_success{"),
        Some(1.0),
        "{metrics}"
    );
    assert!(value("lifeboat_last_drill_success_timestamp_seconds{").unwrap() > 1.7e9);
    assert!(
        value("lifeboat_last_drill_restore_seconds{").is_some(),
        "{metrics}"
    );
    let status = sc.status();
    let drill = &status["targets"][0]["last_drill"];
    assert_eq!(drill["id"], good.as_str(), "{status}");
    assert_eq!(drill["passed"], true);
    assert_eq!(drill["verdict"], "passed");
    assert_eq!(status["drill_stale"], false, "passed just now: {status}");
    assert_eq!(value("lifeboat_drill_stale"), Some(0.0), "{metrics}");
    drop(sc);

    // Retention keeps the newest artifact that passed a drill (and so its
    // record and the drill metrics), even where the policy would drop it.
    fs::write(pod.data.join("v"), "version 2").unwrap();
    let out = run_ok(
        pod.cmd("lifeboat-sidecar", &[("LIFEBOAT_RETENTION", "last=1")])
            .arg("backup-now"),
    );
    let newest = stdout(&out).trim().to_string();
    let list = pod.list();
    assert!(list.contains(&newest), "{list}");
    assert!(row(&list, &good).contains("passed 20"), "{list}");
    assert!(
        !list.contains(&broken),
        "retention drops the failed one:\n{list}"
    );
}

/// A verdict speaks for the artifact's bytes, wherever a copy is: a failed
/// drill whose record is beside one copy only (writeback copies artifacts,
/// not records) keeps every copy out of restores. A drill that could not
/// tell condemns nothing. And a person can take a failed verdict back.
#[test]
fn a_failed_verdict_follows_the_bytes_and_an_inconclusive_one_condemns_nothing() {
    let (pod, secondary) = Pod::with_secondary();
    let orders = pod.data.join("orders.csv");
    fs::write(&orders, "1,first\n").unwrap();
    fs::write(pod.data.join("v"), "version 0").unwrap();
    let good = pod.backup();
    fs::remove_file(&orders).unwrap();
    fs::write(pod.data.join("v"), "version 1").unwrap();
    let broken = pod.backup();
    let second = history(&secondary, "orders-0");
    assert!(
        second.join(format!("{broken}.manifest.json")).exists(),
        "the secondary holds a copy: {:?}",
        names(&second)
    );
    fs::write(&orders, "1,first\n").unwrap();
    let check = format!("test -s {}", orders.display());

    // A check that cannot start says nothing about the data.
    let (out, _) = pod.drill("/nonexistent/check --orders");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("the restore drill of {broken} INCONCLUSIVE"))
            && err.contains("cannot start /nonexistent/check"),
        "{err}"
    );
    assert!(row(&pod.list(), &broken).contains("INCONCLUSIVE 20"));
    let restore_into_empty = |extra: &[(&str, &str)]| {
        fs::remove_dir_all(&pod.data).unwrap();
        stderr(&run_ok(&mut pod.cmd("lifeboat-restore", extra)))
    };
    let log = restore_into_empty(&[]);
    assert!(!log.contains("failed a restore drill"), "{log}");
    assert_eq!(fs::read_to_string(pod.data.join("v")).unwrap(), "version 1");

    // The drill that says no: recorded beside both copies; then the
    // secondary's record is lost, as if writeback had copied it later.
    fs::write(&orders, "1,first\n").unwrap();
    let (out, _) = pod.drill(&check);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let on_secondary = second.join(format!("{broken}.drill.json"));
    assert!(on_secondary.exists(), "{:?}", names(&second));
    fs::remove_file(&on_secondary).unwrap();
    let log = restore_into_empty(&[]);
    assert_eq!(
        log.matches("it failed a restore drill at").count(),
        2,
        "both copies skipped: {log}"
    );
    assert!(
        log.contains("LIFEBOAT_RESTORE_FAILED_DRILLS=allow"),
        "{log}"
    );
    assert_eq!(fs::read_to_string(pod.data.join("v")).unwrap(), "version 0");
    assert!(log.contains(&good), "{log}");

    // Taken back by a person: restored as the newest again.
    let log = restore_into_empty(&[("LIFEBOAT_RESTORE_FAILED_DRILLS", "allow")]);
    assert!(log.contains("restoring it anyway"), "{log}");
    assert_eq!(fs::read_to_string(pod.data.join("v")).unwrap(), "version 1");
    fails_with(
        &mut pod.cmd(
            "lifeboat-restore",
            &[("LIFEBOAT_RESTORE_FAILED_DRILLS", "yes")],
        ),
        64,
        "LIFEBOAT_RESTORE_FAILED_DRILLS",
    );
}

#[test]
fn a_drill_without_its_report_or_check_says_what_is_missing() {
    let pod = Pod::new();
    fs::write(pod.data.join("a"), "x").unwrap();
    pod.backup();
    let missing = pod.tmp.path().join("nothing.json");
    fails_with(
        pod.cmd(
            "lifeboat-sidecar",
            &[
                ("LIFEBOAT_DRILL_REPORT", missing.to_str().unwrap()),
                ("LIFEBOAT_DRILL_CHECK", "true"),
            ],
        )
        .args(["drill", "check"]),
        1,
        "lifeboat-restore writes it when LIFEBOAT_DRILL_REPORT names it",
    );
    let out = pod
        .cmd(
            "lifeboat-sidecar",
            &[("LIFEBOAT_DRILL_CHECK", "psql -c 'unclosed")],
        )
        .args(["drill", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("quote as in a shell"),
        "{}",
        stderr(&out)
    );
    // A drill whose volume is not empty restores nothing, and fails.
    let report = pod.tmp.path().join("r.json");
    fails_with(
        &mut pod.cmd(
            "lifeboat-restore",
            &[("LIFEBOAT_DRILL_REPORT", report.to_str().unwrap())],
        ),
        1,
        "a drill's volume must be empty",
    );
}

/// Drills configured but none ever passed (the CronJob never ran, or every
/// drill failed): stale once LIFEBOAT_DRILL_STALE_AFTER has passed since the
/// sidecar started, so LifeboatDrillStale fires; for a pod whose history is
/// not the one drilled, no metric.
#[test]
fn drills_that_never_pass_go_stale() {
    let pod = Pod::new();
    fs::write(pod.data.join("a"), "x").unwrap();
    pod.backup();
    // The drill restores another history (orders-1 of a StatefulSet whose
    // first pod this is not): this sidecar does not wait for drills.
    let log = pod.tmp.path().join("plain.log");
    let sc = pod.sidecar_with(
        &log,
        &[
            ("LIFEBOAT_DRILL_CHECK", "test -f /data/a"),
            ("LIFEBOAT_DRILL_NAME", "orders-1"),
            ("LIFEBOAT_DRILL_STALE_AFTER", "1s"),
        ],
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (_, metrics) = sc.get("/metrics");
    assert!(!metrics.contains("lifeboat_drill_stale"), "{metrics}");
    assert_eq!(sc.status()["drill_stale"], serde_json::Value::Null);
    drop(sc);
    let log = pod.tmp.path().join("drills.log");
    let sc = pod.sidecar_with(
        &log,
        &[
            ("LIFEBOAT_DRILL_CHECK", "test -f /data/a"),
            ("LIFEBOAT_DRILL_STALE_AFTER", "1s"),
        ],
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (_, metrics) = sc.get("/metrics");
    assert!(metrics.contains("\nlifeboat_drill_stale 1"), "{metrics}");
    assert_eq!(sc.status()["drill_stale"], true);
}
