//! Operating the sidecar: `/metrics` read by a real Prometheus parser,
//! `/status` and staleness, `backup-now` (command and annotation) never
//! racing a running backup, notifications with retries, pre/post hooks.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifeboat_tests::*;

/// A volume with a little data and a file target.
fn setup(tmp: &Path) -> Vec<(&'static str, String)> {
    let data = tmp.join("data");
    fs::create_dir_all(data.join("notes")).unwrap();
    fs::write(data.join("notes/a.ipynb"), "{\"cells\": []}").unwrap();
    fs::write(data.join("model.bin"), noise(200_000, 7)).unwrap();
    vec![
        ("LIFEBOAT_PATHS", data.display().to_string()),
        (
            "LIFEBOAT_TARGETS",
            format!("file://{}", tmp.join("backup").display()),
        ),
        // Only triggers back up in these tests.
        ("LIFEBOAT_SCHEDULE", "0 0 1 1 *".into()),
        ("HOSTNAME", "web-0".into()),
    ]
}

/// `lifeboat-sidecar backup-now` with the same environment as the running
/// sidecar, as `kubectl exec` would run it in the pod.
fn backup_now(env: &[(&str, &str)], sidecar: &RunningSidecar) -> std::process::Command {
    let listen = format!("127.0.0.1:{}", sidecar.port);
    let mut env = env.to_vec();
    env.push(("LIFEBOAT_LISTEN", &listen));
    let mut c = lifeboat("lifeboat-sidecar", &env);
    c.arg("backup-now");
    c
}

/// A hook (run without a shell, so `sh -c` is spelled out) that fails while
/// `flag` exists, saying so on stderr.
fn failing_while(flag: &Path) -> String {
    format!(
        "sh -c 'if [ -e {} ]; then echo \"pre-hook: app refused to flush\" >&2; exit 3; fi'",
        flag.display()
    )
}

#[test]
fn metrics_before_and_after_a_backup_and_after_a_failed_one() {
    let tmp = tempfile::tempdir().unwrap();
    let flag = tmp.path().join("fail");
    let mut env = setup(tmp.path());
    env.push(("LIFEBOAT_PRE_COMMAND", failing_while(&flag)));
    let env = pairs(&env);
    let sc = RunningSidecar::start(&env, &tmp.path().join("sidecar.log"));
    let target = format!("file://{}", tmp.path().join("backup").display());
    let per_target = |name: &str| format!("{name}{{target=\"{target}\"}}");

    let m = sc.scrape();
    assert_eq!(m["lifeboat_backups_total{result=\"success\"}"], 0.0);
    assert_eq!(m["lifeboat_backups_total{result=\"failure\"}"], 0.0);
    assert_eq!(m[&per_target("lifeboat_artifacts")], 0.0);
    assert_eq!(m["lifeboat_stale"], 0.0);
    assert!(!m.contains_key("lifeboat_last_success_timestamp_seconds"));
    let next_run = m["lifeboat_next_run_timestamp_seconds"];
    assert_eq!(
        chrono::DateTime::from_timestamp(next_run as i64, 0)
            .unwrap()
            .format("%m-%d %H:%M")
            .to_string(),
        "01-01 00:00"
    );

    let out = run_ok(&mut backup_now(&env, &sc));
    let id = stdout(&out).trim().to_string();
    let m = sc.scrape();
    assert_eq!(m["lifeboat_backups_total{result=\"success\"}"], 1.0);
    assert_eq!(m["lifeboat_last_attempt_success"], 1.0);
    assert_eq!(m[&per_target("lifeboat_artifacts")], 1.0);
    let artifact = artifacts(&history(&tmp.path().join("backup"), "web-0"))
        .pop()
        .unwrap();
    let manifest = manifest_of(&artifact);
    assert_eq!(manifest["id"], id.as_str());
    assert_eq!(
        m["lifeboat_last_backup_stored_bytes"],
        manifest["size"].as_f64().unwrap()
    );
    assert_eq!(
        m["lifeboat_last_backup_input_bytes"],
        manifest["bytes_in"].as_f64().unwrap()
    );
    assert_eq!(
        m["lifeboat_last_backup_entries"],
        manifest["entries"].as_f64().unwrap()
    );
    let finished: chrono::DateTime<chrono::Utc> =
        manifest["finished_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        m["lifeboat_last_success_timestamp_seconds"],
        finished.timestamp_millis() as f64 / 1000.0
    );
    let last_success = m["lifeboat_last_success_timestamp_seconds"];

    // The pre-hook refuses: the backup fails with what the hook said.
    fs::write(&flag, "").unwrap();
    let err = fails_with(
        &mut backup_now(&env, &sc),
        1,
        "pre-hook: app refused to flush",
    );
    assert!(err.contains("LIFEBOAT_PRE_COMMAND"), "{err}");
    let m = sc.scrape();
    assert_eq!(m["lifeboat_backups_total{result=\"success\"}"], 1.0);
    assert_eq!(m["lifeboat_backups_total{result=\"failure\"}"], 1.0);
    assert_eq!(m["lifeboat_last_attempt_success"], 0.0);
    assert!(m["lifeboat_last_attempt_timestamp_seconds"] >= last_success);
    // A failure does not move the last success or the artifacts.
    assert_eq!(m["lifeboat_last_success_timestamp_seconds"], last_success);
    assert_eq!(m[&per_target("lifeboat_artifacts")], 1.0);
    let st = sc.status();
    assert_eq!(st["last_attempt"]["ok"], false);
    assert!(st["last_attempt"]["error"]
        .as_str()
        .unwrap()
        .contains("refused to flush"));
    assert_eq!(st["last_success"]["id"], id.as_str());
    assert!(sc.stop().success());
}

#[test]
fn staleness_flips_and_a_backup_clears_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut env = setup(tmp.path());
    env.push(("LIFEBOAT_STALE_AFTER", "3s".into()));
    let env = pairs(&env);
    let sc = RunningSidecar::start(&env, &tmp.path().join("sidecar.log"));
    assert_eq!(sc.get("/healthz"), (200, "ok\n".into()));
    assert_eq!(sc.get("/readyz").0, 200);
    assert_eq!(sc.get("/nope").0, 404);
    let st = sc.status();
    assert_eq!(st["stale_after_s"], 3);
    // No backup since start: stale once the start is 3 s back.
    sc.wait_for("staleness", 30, |s| s.status()["stale"] == true);
    assert_eq!(sc.scrape()["lifeboat_stale"], 1.0);
    run_ok(&mut backup_now(&env, &sc));
    assert_eq!(sc.status()["stale"], false);
    assert_eq!(sc.scrape()["lifeboat_stale"], 0.0);
    sc.wait_for("staleness again", 30, |s| s.status()["stale"] == true);
    assert!(sc.stop().success());
    // A restarted sidecar takes the last success from the target, not
    // from its own (empty) memory.
    let env2: Vec<(&str, &str)> = env
        .iter()
        .map(|&(k, v)| {
            if k == "LIFEBOAT_STALE_AFTER" {
                (k, "1h")
            } else {
                (k, v)
            }
        })
        .collect();
    let sc = RunningSidecar::start(&env2, &tmp.path().join("sidecar2.log"));
    let st = sc.status();
    assert!(st["last_success"]["id"].is_string(), "{st}");
    assert_eq!(st["stale"], false);
    assert!(sc.stop().success());
}

#[test]
fn backup_now_during_a_backup_is_served_by_it_and_the_annotation_triggers_one() {
    let tmp = tempfile::tempdir().unwrap();
    let annotations = tmp.path().join("annotations");
    fs::write(&annotations, "lifeboat.dev/backup-now=\"1\"\n").unwrap();
    let mut env = setup(tmp.path());
    // Each backup takes 8 s: longer than an annotations poll (5 s), so the
    // sidecar reads the file at least once while it runs.
    env.push(("LIFEBOAT_PRE_COMMAND", "sleep 8".into()));
    env.push((
        "LIFEBOAT_ANNOTATIONS_FILE",
        annotations.display().to_string(),
    ));
    let env = pairs(&env);
    let sc = RunningSidecar::start(&env, &tmp.path().join("sidecar.log"));
    let hist = history(&tmp.path().join("backup"), "web-0");

    let first = backup_now(&env, &sc).output().unwrap();
    // That one is done; now two requests and an annotation change at once.
    let a = backup_now(&env, &sc).spawn_output();
    sc.wait_for("the backup to start", 30, |s| {
        s.status()["running"]["work"] == "backup"
    });
    let b = backup_now(&env, &sc).spawn_output();
    fs::write(&annotations, "lifeboat.dev/backup-now=\"2\"\n").unwrap();
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert!(first.status.success() && a.status.success() && b.status.success());
    assert_eq!(stdout(&a), stdout(&b), "both requests name the same backup");
    assert_ne!(stdout(&first), stdout(&a));
    assert_eq!(artifacts(&hist).len(), 2);
    let log = sc.log_text();
    assert_eq!(
        log.matches("request arrived during a running backup")
            .count(),
        1,
        "{log}"
    );
    assert!(
        log.contains("backup-now changed during a running backup"),
        "{log}"
    );
    // The served annotation does not start another backup afterwards.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(artifacts(&hist).len(), 2, "{}", sc.log_text());
    assert_eq!(sc.status()["backups"]["success"], 2);

    // Editing the annotation while idle starts exactly one backup.
    fs::write(&annotations, "lifeboat.dev/backup-now=\"3\"\n").unwrap();
    sc.wait_for("the annotation's backup", 60, |s| {
        s.status()["backups"]["success"] == 3
    });
    assert_eq!(artifacts(&hist).len(), 3);
    assert!(sc
        .log_text()
        .contains("trigger=annotation lifeboat.dev/backup-now"));
    assert!(sc.stop().success());
}

/// A notification receiver on 127.0.0.1: answers 500 to the first POST and
/// 200 to the rest, and keeps every body it got with the status it gave.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<(u16, serde_json::Value)>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got: Arc<Mutex<Vec<(u16, serde_json::Value)>>> = Default::default();
        let seen = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(req) = read_request(&mut BufReader::new(&stream)) else {
                    continue;
                };
                let mut seen = seen.lock().unwrap();
                let code = if seen.is_empty() { 500 } else { 200 };
                seen.push((code, serde_json::from_slice(&req.body).unwrap()));
                let _ = write!(
                    stream,
                    "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Receiver { port, got }
    }

    fn got(&self) -> Vec<(u16, serde_json::Value)> {
        self.got.lock().unwrap().clone()
    }
}

#[test]
fn one_notification_per_failed_backup_retried_after_a_500() {
    let tmp = tempfile::tempdir().unwrap();
    let flag = tmp.path().join("fail");
    let rx = Receiver::start();
    let mut env = setup(tmp.path());
    env.push(("LIFEBOAT_PRE_COMMAND", failing_while(&flag)));
    env.push((
        "LIFEBOAT_NOTIFY_URL",
        format!("http://127.0.0.1:{}/hooks/SECRET-TOKEN", rx.port),
    ));
    env.push(("POD_NAME", "web-0".into()));
    let env = pairs(&env);
    let sc = RunningSidecar::start(&env, &tmp.path().join("sidecar.log"));

    // A success sends nothing (LIFEBOAT_NOTIFY_ON defaults to failure).
    run_ok(&mut backup_now(&env, &sc));
    fs::write(&flag, "").unwrap();
    fails_with(&mut backup_now(&env, &sc), 1, "refused to flush");
    // First answer 500, the retry after 1 s gets 200.
    sc.wait_for("the retried notification", 30, |_| rx.got().len() == 2);
    let got = rx.got();
    assert_eq!((got[0].0, got[1].0), (500, 200));
    assert_eq!(got[0].1, got[1].1, "a retry sends the same message");
    let msg = &got[1].1;
    assert_eq!(msg["event"], "backup_failed");
    assert_eq!(msg["name"], "web-0");
    assert_eq!(msg["pod"], "web-0");
    assert!(msg["error"].as_str().unwrap().contains("refused to flush"));

    // A second failure: exactly one more message, delivered at once.
    fails_with(&mut backup_now(&env, &sc), 1, "refused to flush");
    sc.wait_for("the second notification", 30, |_| rx.got().len() == 3);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rx.got().len(), 3);
    assert_eq!(rx.got()[2].0, 200);
    let log = sc.log_text();
    assert_eq!(log.matches("notification sent").count(), 2, "{log}");
    // The webhook URL is a secret: the log shows its host only.
    assert!(!log.contains("SECRET-TOKEN"), "{log}");
    assert!(sc.stop().success());
}

#[test]
fn slack_format_and_notify_on_always() {
    let tmp = tempfile::tempdir().unwrap();
    let rx = Receiver::start();
    // Its first answer is a 500; this test wants plain deliveries.
    rx.got.lock().unwrap().push((0, serde_json::Value::Null));
    let mut env = setup(tmp.path());
    env.push((
        "LIFEBOAT_NOTIFY_URL",
        format!("http://127.0.0.1:{}/", rx.port),
    ));
    env.push(("LIFEBOAT_NOTIFY_ON", "always".into()));
    env.push(("LIFEBOAT_NOTIFY_FORMAT", "slack".into()));
    // Without a running sidecar, backup-now works in its own process and
    // still notifies before it exits.
    let out = run_ok(lifeboat("lifeboat-sidecar", &pairs(&env)).arg("backup-now"));
    let id = stdout(&out).trim().to_string();
    let got = rx.got();
    assert_eq!(got.len(), 2, "{got:?}");
    let text = got[1].1["text"].as_str().unwrap();
    assert!(text.contains("succeeded") && text.contains(&id), "{text}");
}

#[test]
fn post_hook_sees_the_result_and_a_hanging_pre_hook_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join("post.txt");
    let mut env = setup(tmp.path());
    env.push((
        "LIFEBOAT_POST_COMMAND",
        format!(
            "sh -c 'echo \"$LIFEBOAT_PHASE $LIFEBOAT_RESULT $LIFEBOAT_ARTIFACT_ID\" >> {}'",
            record.display()
        ),
    ));
    let out = run_ok(lifeboat("lifeboat-sidecar", &pairs(&env)).arg("backup-now"));
    let id = stdout(&out).trim().to_string();
    assert_eq!(
        fs::read_to_string(&record).unwrap(),
        format!("post success {id}\n")
    );

    let hang = with_env(
        &env,
        &[
            ("LIFEBOAT_PRE_COMMAND", "sleep 60".into()),
            ("LIFEBOAT_HOOK_TIMEOUT", "1s".into()),
        ],
    );
    let started = std::time::Instant::now();
    fails_with(
        lifeboat("lifeboat-sidecar", &pairs(&hang)).arg("backup-now"),
        1,
        "did not finish within 1s and was killed",
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // Without a shell in the image, a bad hook is a clear config error.
    fails_with(
        lifeboat(
            "lifeboat-sidecar",
            &pairs(&with_env(
                &env,
                &[("LIFEBOAT_PRE_COMMAND", "sh -c 'oops".into())],
            )),
        )
        .arg("backup-now"),
        64,
        "LIFEBOAT_PRE_COMMAND",
    );
}

#[test]
fn wrong_operations_settings_name_the_setting_and_what_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let env = setup(tmp.path());
    let cases: BTreeMap<&str, (&str, &str)> = BTreeMap::from([
        ("LIFEBOAT_LISTEN", ("9746", ":PORT")),
        ("LIFEBOAT_STALE_AFTER", ("two days", "2d")),
        ("LIFEBOAT_VERIFY_SCHEDULE", ("daily", "5-field cron")),
        ("LIFEBOAT_NOTIFY_ON", ("sometimes", "failure")),
        ("LIFEBOAT_NOTIFY_FORMAT", ("teams", "slack")),
        ("LIFEBOAT_NOTIFY_URL", ("ftp://x", "http://")),
    ]);
    for (name, (value, accepted)) in cases {
        let bad = with_env(&env, &[(name, value.into())]);
        let err = fails_with(
            lifeboat("lifeboat-sidecar", &pairs(&bad)).arg("run"),
            64,
            name,
        );
        assert!(err.contains(accepted), "{name}: {err}");
    }
    // A port already taken is a setup problem at start, not a crash.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = with_env(
        &env,
        &[("LIFEBOAT_LISTEN", taken.local_addr().unwrap().to_string())],
    );
    fails_with(
        lifeboat("lifeboat-sidecar", &pairs(&busy)).arg("run"),
        64,
        "cannot listen there",
    );
}

trait SpawnOutput {
    /// Runs the command on a thread; join for its output.
    fn spawn_output(self) -> std::thread::JoinHandle<std::process::Output>;
}

impl SpawnOutput for std::process::Command {
    fn spawn_output(mut self) -> std::thread::JoinHandle<std::process::Output> {
        std::thread::spawn(move || self.output().unwrap())
    }
}

#[test]
fn scheduled_verification_records_verified_at_and_catches_a_corrupted_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let mut env = setup(tmp.path());
    // Every minute: the shortest a cron schedule allows.
    env.push(("LIFEBOAT_VERIFY_SCHEDULE", "* * * * *".into()));
    let env = pairs(&env);
    let sc = RunningSidecar::start(&env, &tmp.path().join("sidecar.log"));
    let out = run_ok(&mut backup_now(&env, &sc));
    let id = stdout(&out).trim().to_string();
    let target = format!("file://{}", tmp.path().join("backup").display());
    let ok_key = format!("lifeboat_last_verify_success{{target=\"{target}\"}}");

    sc.wait_for("the first scheduled verification", 90, |s| {
        s.status()["verifications"]["success"] == 1
    });
    let m = sc.scrape();
    assert_eq!(m[&ok_key], 1.0);
    // The record sits beside the manifest, which stays as it was written.
    let hist = history(&tmp.path().join("backup"), "web-0");
    let artifact = artifacts(&hist).pop().unwrap();
    let manifest_before = manifest_of(&artifact);
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(hist.join(format!("{id}.verified.json"))).unwrap())
            .unwrap();
    assert_eq!(record["id"], id.as_str());
    assert_eq!(record["sha256"], manifest_before["sha256"]);
    let listed = stdout(&run_ok(lifeboat("lifeboat-sidecar", &env).arg("list")));
    let verified_cells = verified_column(&listed);
    assert!(
        !verified_cells.is_empty() && !verified_cells.contains(&"no"),
        "{listed}"
    );

    // One flipped byte in the stored artifact: the next run says so.
    let mut bytes = fs::read(&artifact).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&artifact, bytes).unwrap();
    sc.wait_for("the failed verification", 90, |s| {
        s.status()["verifications"]["failure"] == 1
    });
    let m = sc.scrape();
    assert_eq!(m[&ok_key], 0.0);
    let st = sc.status();
    assert!(st["targets"][0]["last_verify"]["error"]
        .as_str()
        .unwrap()
        .contains("sha256"));
    assert_eq!(manifest_of(&artifact), manifest_before);
    assert!(sc.log_text().contains("scheduled verification FAILED"));
    assert!(sc.stop().success());
}

/// With `LIFEBOAT_LISTEN=[::]:PORT` (dual stack), an in-pod `backup-now`
/// arrives as `::ffff:127.0.0.1`: that is loopback too, so it is served
/// (it was refused with 403).
#[test]
fn backup_now_through_a_dual_stack_listener_is_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let env = setup(tmp.path());
    let env = pairs(&env);
    let sc = RunningSidecar::start_on("[::]", &env, &tmp.path().join("sidecar.log"));
    let listen = format!("[::]:{}", sc.port);
    let mut with_listen = env.clone();
    with_listen.push(("LIFEBOAT_LISTEN", &listen));
    let out = lifeboat("lifeboat-sidecar", &with_listen)
        .arg("backup-now")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stderr(&out), sc.log_text());
    assert!(!stdout(&out).trim().is_empty(), "{}", stderr(&out));
    assert!(
        sc.log_text().contains("backup committed"),
        "{}",
        sc.log_text()
    );
    sc.stop();
}

/// The kubelet's probes are answered within a second while 64 idle TCP
/// connections are open and 20 `backup-now` requests wait for a backup
/// (a pre hook makes it take 8 s): idle connections cannot hold the
/// endpoint, and waiting requests wait apart from the probes.
#[test]
fn probes_answer_under_idle_connections_and_waiting_backup_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let mut env = setup(tmp.path());
    env.push(("LIFEBOAT_PRE_COMMAND", "sleep 8".into()));
    let env = pairs(&env);
    let sc = RunningSidecar::start(&env, &tmp.path().join("sidecar.log"));
    let probe = |what: &str| {
        for path in ["/healthz", "/readyz"] {
            let started = std::time::Instant::now();
            let r = ureq::get(&sc.url(path))
                .timeout(Duration::from_secs(1))
                .call();
            assert!(
                matches!(r, Ok(ref r) if r.status() == 200),
                "{path} {what}: {:?} after {:?}",
                r.map(|r| r.status()),
                started.elapsed()
            );
        }
    };
    let idle: Vec<std::net::TcpStream> = (0..64)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", sc.port)).unwrap())
        .collect();
    probe("with 64 idle connections");
    let url = sc.url("/backup-now");
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                match ureq::post(&url).timeout(Duration::from_secs(120)).call() {
                    Ok(r) => r.status(),
                    Err(ureq::Error::Status(code, _)) => code,
                    Err(e) => panic!("{e}"),
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    probe("with 20 backup-now requests waiting");
    drop(idle);
    let codes: Vec<u16> = waiters.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        codes.iter().filter(|c| **c == 200).count() >= 16,
        "{codes:?}"
    );
    assert!(codes.iter().all(|c| *c == 200 || *c == 503), "{codes:?}");
    sc.stop();
}
