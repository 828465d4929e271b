//! Secret values never leave the process: a full run with every kind of
//! secret set (S3 secret key, age secret key, a webhook URL with a password
//! and a token, database passwords), at `LIFEBOAT_LOG=debug`, through backup,
//! the endpoint, list, verify, restore, failures and configuration errors;
//! then every byte a person or a log collector could see is searched for
//! the secret values: logs, stdout, `/status`, `/metrics`, manifests,
//! verified records and the notification bodies.

use std::fs;
use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use lifeboat_tests::*;

const NOTIFY_PASSWORD: &str = "hook-pass-7Qx9";
const NOTIFY_TOKEN: &str = "T0KEN-slack-b2c4e6";
const PG_PASSWORD: &str = "pg-pass-Zr8m";
const COUCH_PASSWORD: &str = "couch-pass-Lk3v";
const ARANGO_PASSWORD: &str = "arango-pass-Wq5t";
const WRONG_S3_SECRET: &str = "wrong-s3-secret-Hy6u";

/// Accepts notifications and keeps their bodies (what a chat would show).
fn receiver() -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies: Arc<Mutex<Vec<u8>>> = Default::default();
    let seen = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let Some(req) = read_request(&mut BufReader::new(&stream)) else {
                continue;
            };
            seen.lock().unwrap().extend_from_slice(&req.body);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (port, bodies)
}

fn keygen(dir: &Path) -> (String, String, String) {
    let file = dir.join("age.txt");
    let ok = Command::new("age-keygen")
        .arg("-o")
        .arg(&file)
        .output()
        .expect("age-keygen (Debian package age)")
        .status
        .success();
    assert!(ok);
    let text = fs::read_to_string(&file).unwrap();
    let secret = text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    let public = Command::new("age-keygen")
        .arg("-y")
        .arg(&file)
        .output()
        .unwrap()
        .stdout;
    (
        file.display().to_string(),
        secret,
        String::from_utf8(public).unwrap().trim().to_string(),
    )
}

/// Every file below `dir`, as text.
fn all_files(dir: &Path, out: &mut String) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            all_files(&p, out);
        } else if p.to_string_lossy().ends_with(".json") {
            out.push_str(&fs::read_to_string(&p).unwrap());
        }
    }
}

#[test]
fn no_secret_value_appears_in_any_output_of_a_full_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    fs::create_dir_all(data.join("notebooks")).unwrap();
    fs::write(data.join("notebooks/a.ipynb"), "{\"cells\": []}\n").unwrap();
    fs::write(data.join("blob"), noise(1 << 20, 9)).unwrap();
    let backup = tmp.path().join("backup");
    fs::create_dir_all(&backup).unwrap();
    let (identity_file, age_secret, age_public) = keygen(tmp.path());
    let weed = Seaweed::start(&tmp.path().join("weed"));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(weed.create_bucket("offsite"));
    let (port, bodies) = receiver();
    let notify_url = format!("http://hook:{NOTIFY_PASSWORD}@127.0.0.1:{port}/hooks/{NOTIFY_TOKEN}");
    let listen = format!("127.0.0.1:{}", free_port());

    let mut env = weed.env();
    env.extend([
        ("LIFEBOAT_PATHS", data.display().to_string()),
        (
            "LIFEBOAT_TARGETS",
            format!("{},s3://offsite/lifeboat", backup.display()),
        ),
        ("HOSTNAME", "nb-0".into()),
        ("LIFEBOAT_LOG", "debug".into()),
        ("LIFEBOAT_SCHEDULE", "0 3 1 1 *".into()),
        ("LIFEBOAT_AGE_RECIPIENTS", age_public.clone()),
        ("LIFEBOAT_AGE_IDENTITY_FILE", identity_file.clone()),
        ("LIFEBOAT_NOTIFY_URL", notify_url.clone()),
        ("LIFEBOAT_NOTIFY_ON", "always".into()),
        ("PGPASSWORD", PG_PASSWORD.into()),
        ("COUCHDB_USER", "admin".into()),
        ("COUCHDB_PASSWORD", COUCH_PASSWORD.into()),
        ("LIFEBOAT_ARANGODB_PASSWORD", ARANGO_PASSWORD.into()),
        ("LIFEBOAT_LISTEN", listen.clone()),
    ]);
    let seen = std::cell::RefCell::new(String::new());
    let run = |env: &[(&'static str, String)], args: &[&str], name: &str| {
        let out = lifeboat(name, &pairs(env)).args(args).output().unwrap();
        seen.borrow_mut().push_str(&stdout(&out));
        seen.borrow_mut().push_str(&stderr(&out));
        out
    };

    // The long-running sidecar, a backup through it, and its endpoint.
    let log = tmp.path().join("sidecar.log");
    let sidecar = RunningSidecar::start(&pairs(&env), &log);
    assert!(run(&env, &["backup-now"], "lifeboat-sidecar")
        .status
        .success());
    sidecar.wait_for("the notification", 30, |_| {
        !bodies.lock().unwrap().is_empty()
    });
    let mut endpoint = String::new();
    for path in ["/status", "/metrics", "/healthz", "/readyz"] {
        endpoint.push_str(&sidecar.get(path).1);
    }
    assert!(endpoint.contains("lifeboat_backups_total"), "{endpoint}");
    assert_eq!(sidecar.stop().code(), Some(0));
    seen.borrow_mut()
        .push_str(&fs::read_to_string(&log).unwrap());
    seen.borrow_mut().push_str(&endpoint);

    // The commands a person runs at 2 AM, on both targets.
    let quiet = with_env(&env, &[("LIFEBOAT_LISTEN", "off".into())]);
    for args in [&["list"][..], &["list", "--json"], &["verify", "--all"]] {
        assert!(run(&quiet, args, "lifeboat-sidecar").status.success());
    }
    let to = tmp.path().join("look");
    let r = to.display().to_string();
    assert!(run(&quiet, &["restore", "--to", &r], "lifeboat-sidecar")
        .status
        .success());
    fs::remove_dir_all(&data).unwrap();
    assert!(run(&quiet, &[], "lifeboat-restore").status.success());
    assert_same_tree(&data, &to.join(data.strip_prefix("/").unwrap()));

    // Failures: a wrong S3 secret, a missing bucket, configuration errors
    // whose values hold secrets.
    let wrong_key = with_env(
        &quiet,
        &[
            ("AWS_SECRET_ACCESS_KEY", WRONG_S3_SECRET.into()),
            ("LIFEBOAT_TARGETS", "s3://offsite/lifeboat".into()),
        ],
    );
    assert!(!run(&wrong_key, &["backup-now"], "lifeboat-sidecar")
        .status
        .success());
    let no_bucket = with_env(
        &quiet,
        &[("LIFEBOAT_TARGETS", "s3://missing-bucket/x".into())],
    );
    assert!(!run(&no_bucket, &["backup-now"], "lifeboat-sidecar")
        .status
        .success());
    let bad_url = with_env(
        &quiet,
        &[(
            "LIFEBOAT_NOTIFY_URL",
            format!("ftp://hook:{NOTIFY_PASSWORD}@127.0.0.1/{NOTIFY_TOKEN}"),
        )],
    );
    assert_eq!(
        run(&bad_url, &["backup-now"], "lifeboat-sidecar")
            .status
            .code(),
        Some(64)
    );
    let pasted = with_env(&quiet, &[("LIFEBOAT_AGE_RECIPIENTS", age_secret.clone())]);
    assert_eq!(
        run(&pasted, &["backup-now"], "lifeboat-sidecar")
            .status
            .code(),
        Some(64)
    );
    let bad_pg = with_env(
        &quiet,
        &[
            ("LIFEBOAT_SOURCE", "postgres".into()),
            ("PGPORT", "1".into()),
            ("LIFEBOAT_TARGETS", backup.display().to_string()),
        ],
    );
    assert!(!run(&bad_pg, &["backup-now"], "lifeboat-sidecar")
        .status
        .success());

    // Everything stored beside the artifacts, and what the webhook got.
    let mut seen = seen.into_inner();
    all_files(&backup, &mut seen);
    let notified = String::from_utf8(bodies.lock().unwrap().clone()).unwrap();
    assert!(notified.contains("backup"), "{notified}");
    seen.push_str(&notified);

    assert!(
        seen.len() > 10_000,
        "too little output to mean anything: {}",
        seen.len()
    );
    for (what, secret) in [
        ("the S3 secret key", S3_SECRET),
        ("a wrong S3 secret key", WRONG_S3_SECRET),
        ("the age secret key", age_secret.as_str()),
        ("the age secret key, lower case", &age_secret.to_lowercase()),
        ("the webhook password", NOTIFY_PASSWORD),
        ("the webhook token", NOTIFY_TOKEN),
        ("PGPASSWORD", PG_PASSWORD),
        ("COUCHDB_PASSWORD", COUCH_PASSWORD),
        ("LIFEBOAT_ARANGODB_PASSWORD", ARANGO_PASSWORD),
    ] {
        if let Some(at) = seen.find(secret) {
            let from = seen[..at].rfind('\n').map_or(0, |i| i + 1);
            let to = seen[at..].find('\n').map_or(seen.len(), |i| at + i);
            panic!("{what} appears in the output:\n{}", &seen[from..to]);
        }
    }
    eprintln!("searched {} bytes of output", seen.len());
}
