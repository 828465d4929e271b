//! age encryption end to end: keys made by the real `age-keygen`, artifacts
//! stored on a real S3 server (SeaweedFS on 127.0.0.1) and on a folder, read
//! back by `lifeboat-restore` with the identity file and by hand with the
//! Debian `age` CLI, `zstd` and `tar`, as a user would at 2 AM.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use lifeboat_tests::*;
use sha2::{Digest, Sha256};

/// A key pair from the real `age-keygen`: (identity file, public key).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let file = dir.join(name);
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&file)
        .output()
        .expect("age-keygen (Debian package age; scripts/setup.sh installs it)");
    assert!(out.status.success(), "{}", stderr(&out));
    let public = Command::new("age-keygen")
        .arg("-y")
        .arg(&file)
        .output()
        .unwrap();
    assert!(public.status.success());
    (
        file,
        String::from_utf8(public.stdout).unwrap().trim().to_string(),
    )
}

/// The secret line of an identity file.
fn secret_of(identity: &Path) -> String {
    fs::read_to_string(identity)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string()
}

fn fill(data: &Path) {
    fs::create_dir_all(data.join("notebooks/deep")).unwrap();
    for i in 0..200 {
        fs::write(
            data.join(format!("notebooks/deep/n{i}.ipynb")),
            format!("{{\"cells\": [{i}]}}\n").repeat(40),
        )
        .unwrap();
    }
    fs::write(data.join("model.bin"), noise(3 << 20, 7)).unwrap();
    std::os::unix::fs::symlink("model.bin", data.join("latest")).unwrap();
}

/// `age -d -i KEY | zstd -dc | tar -xf - -C DEST`, through a shell pipe.
fn restore_by_hand(artifact: &Path, identity: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    let status = Command::new("bash")
        .arg("-c")
        .arg(r#"set -o pipefail; age -d -i "$1" "$2" | zstd -dc | tar -xpf - -C "$3""#)
        .arg("bash")
        .arg(identity)
        .arg(artifact)
        .arg(dest)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "age -d | zstd -dc | tar -x failed");
}

#[test]
fn encrypted_round_trip_through_s3_with_the_identity_file_and_by_hand_with_the_age_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("home/jovyan");
    fill(&data);
    let before = snapshot(&data);
    let (identity, public) = keygen(tmp.path(), "key.txt");
    let weed = Seaweed::start(&tmp.path().join("weed"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(weed.create_bucket("sealed"));
    let targets = "s3://sealed/backups";
    let mut env = weed.env();
    env.extend([
        ("LIFEBOAT_PATHS", data.display().to_string()),
        ("LIFEBOAT_TARGETS", targets.to_string()),
        ("HOSTNAME", "nb-0".to_string()),
    ]);
    let backup_env = with_env(&env, &[("LIFEBOAT_AGE_RECIPIENTS", public.clone())]);
    let id = stdout(&run_ok(
        lifeboat("lifeboat-sidecar", &pairs(&backup_env)).arg("backup-now"),
    ))
    .trim()
    .to_string();

    // What is stored: an age file under a `.age` name, whose sha256 is the
    // manifest's, and a manifest that names the public key and nothing secret.
    let client = rt.block_on(weed.client());
    let get = |key: String| -> Vec<u8> {
        rt.block_on(async {
            let o = client
                .get_object()
                .bucket("sealed")
                .key(&key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("get {key}: {e:?}"));
            o.body.collect().await.unwrap().into_bytes().to_vec()
        })
    };
    let prefix = "backups/default/nb-0";
    let manifest_bytes = get(format!("{prefix}/{id}.manifest.json"));
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    assert_eq!(manifest["encryption"], "age");
    assert_eq!(manifest["recipients"], serde_json::json!([public]));
    assert_eq!(manifest["artifact"], format!("{id}.tar.zst.age"));
    let text = String::from_utf8_lossy(&manifest_bytes);
    assert!(!text.contains("AGE-SECRET-KEY"), "{text}");
    let stored = get(format!("{prefix}/{id}.tar.zst.age"));
    assert!(stored.starts_with(b"age-encryption.org/v1\n"));
    assert_eq!(hex::encode(Sha256::digest(&stored)), manifest["sha256"]);
    assert_eq!(stored.len() as u64, manifest["size"].as_u64().unwrap());

    // By hand, with nothing but the standard tools.
    let artifact = tmp.path().join(format!("{id}.tar.zst.age"));
    fs::write(&artifact, &stored).unwrap();
    let by_hand = tmp.path().join("by-hand");
    restore_by_hand(&artifact, &identity, &by_hand);
    // Entries are the backed-up path without its leading `/`, like GNU tar's.
    assert_same(
        &before,
        &snapshot(&by_hand.join(data.strip_prefix("/").unwrap())),
    );

    // verify and the init container, with the identity file.
    let key_env = with_env(
        &env,
        &[("LIFEBOAT_AGE_IDENTITY_FILE", identity.display().to_string())],
    );
    let out = run_ok(lifeboat("lifeboat-sidecar", &pairs(&key_env)).args(["verify", "--all"]));
    assert!(
        stdout(&out).starts_with(&format!("ok      {id} ")),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains("sha256 only"), "{}", stdout(&out));
    fs::remove_dir_all(&data).unwrap();
    run_ok(&mut lifeboat("lifeboat-restore", &pairs(&key_env)));
    assert_same(&before, &snapshot(&data));
}

/// The same for a folder target; the failure paths of keys.
#[test]
fn without_the_matching_key_restore_stops_and_verify_checks_the_checksum_only() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fill(&data);
    let backup = tmp.path().join("backup");
    fs::create_dir_all(&backup).unwrap();
    let (identity, public) = keygen(tmp.path(), "key.txt");
    let (other_identity, other_public) = keygen(tmp.path(), "other.txt");
    let env = vec![
        ("LIFEBOAT_PATHS", data.display().to_string()),
        ("LIFEBOAT_TARGETS", backup.display().to_string()),
        ("HOSTNAME", "db-0".to_string()),
    ];
    // An older plain artifact, then an encrypted one: a restore without the
    // key must not quietly fall back to the older one.
    run_ok(lifeboat("lifeboat-sidecar", &pairs(&env)).arg("backup-now"));
    fs::write(data.join("newer.txt"), "only in the encrypted one\n").unwrap();
    let before = snapshot(&data);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let enc_env = with_env(&env, &[("LIFEBOAT_AGE_RECIPIENTS", public.clone())]);
    let id = stdout(&run_ok(
        lifeboat("lifeboat-sidecar", &pairs(&enc_env)).arg("backup-now"),
    ))
    .trim()
    .to_string();
    let history = history(&backup, "db-0");
    assert!(history.join(format!("{id}.tar.zst.age")).is_file());

    // verify without a key: the stored bytes' sha256 only, and said so.
    let out = run_ok(lifeboat("lifeboat-sidecar", &pairs(&env)).args(["verify", "--all"]));
    let said = stdout(&out);
    assert!(said.contains(&format!("ok      {id} ")), "{said}");
    assert!(said.contains("sha256 only"), "{said}");
    assert!(!history.join(format!("{id}.verified.json")).exists());
    // ...which still notices a changed byte.
    let stored_path = history.join(format!("{id}.tar.zst.age"));
    let good = fs::read(&stored_path).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x20;
    fs::write(&stored_path, &bad).unwrap();
    let out = lifeboat("lifeboat-sidecar", &pairs(&env))
        .args(["verify", "--all"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains(&format!("FAILED  {id}")),
        "{}",
        stdout(&out)
    );
    fs::write(&stored_path, &good).unwrap();

    fs::remove_dir_all(&data).unwrap();
    // No key: a configuration error naming the setting and the key needed.
    let err = fails_with(
        &mut lifeboat("lifeboat-restore", &pairs(&env)),
        64,
        "LIFEBOAT_AGE_IDENTITY_FILE",
    );
    assert!(err.contains(&public), "{err}");
    assert!(!data.exists() || fs::read_dir(&data).unwrap().next().is_none());
    // Another key: names both public keys, never the secret one.
    let wrong = with_env(
        &env,
        &[(
            "LIFEBOAT_AGE_IDENTITY_FILE",
            other_identity.display().to_string(),
        )],
    );
    let err = fails_with(
        &mut lifeboat("lifeboat-restore", &pairs(&wrong)),
        64,
        &other_public,
    );
    assert!(err.contains(&public), "{err}");
    assert!(!err.contains(&secret_of(&other_identity)), "{err}");
    assert!(!data.exists() || fs::read_dir(&data).unwrap().next().is_none());

    // The right key restores the newest, encrypted, artifact.
    let right = with_env(
        &env,
        &[("LIFEBOAT_AGE_IDENTITY_FILE", identity.display().to_string())],
    );
    run_ok(&mut lifeboat("lifeboat-restore", &pairs(&right)));
    assert_same(&before, &snapshot(&data));
    // And `verify` with it reads the contents and records it.
    let out = run_ok(lifeboat("lifeboat-sidecar", &pairs(&right)).args(["verify", "--all"]));
    assert!(!stdout(&out).contains("sha256 only"), "{}", stdout(&out));
    assert!(history.join(format!("{id}.verified.json")).is_file());

    // Bad key settings stop the process at start, without echoing secrets.
    let secret = secret_of(&identity);
    let err = fails_with(
        lifeboat(
            "lifeboat-sidecar",
            &pairs(&with_env(
                &env,
                &[("LIFEBOAT_AGE_RECIPIENTS", secret.clone())],
            )),
        )
        .arg("backup-now"),
        64,
        "LIFEBOAT_AGE_RECIPIENTS",
    );
    assert!(err.contains("secret key"), "{err}");
    assert!(!err.contains(&secret), "{err}");
    let typo = tmp.path().join("typo.txt");
    fs::write(&typo, format!("# a comment\n{}Q\n", secret)).unwrap();
    let err = fails_with(
        &mut lifeboat(
            "lifeboat-restore",
            &pairs(&with_env(
                &env,
                &[("LIFEBOAT_AGE_IDENTITY_FILE", typo.display().to_string())],
            )),
        ),
        64,
        "line 2 is not an age secret key",
    );
    assert!(!err.contains(&secret), "{err}");
}
