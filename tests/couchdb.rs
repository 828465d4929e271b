//! CouchDB logical dumps against real CouchDB-API servers, each test body
//! run twice: against PouchDB Server (npm `pouchdb-server`) and against a
//! real Apache CouchDB 3.5 (the release named by
//! `LIFEBOAT_TEST_COUCHDB_RELEASE`; see `support/couchdb_server.rs` for
//! what happens without it). Both are started and stopped by these tests on
//! 127.0.0.1 with an admin configured.
//!
//! Round trip through the init container (verify and stage) and the sidecar
//! (load with `new_edits:false`): every document, revision path, conflict,
//! deleted document, attachment byte and `_security` object comes back.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use base64::Engine;
use lifeboat_tests::couchdb_server::{CouchServer as Couch, Flavor, PASSWORD};
use lifeboat_tests::*;
use serde_json::{json, Value};

/// The volume, the backup folder, and a password file for the admin.
fn setup(tmp: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (vol, backup) = volume_and_backup(tmp);
    let pwfile = tmp.join("pw");
    fs::write(&pwfile, PASSWORD).unwrap();
    (vol, backup, pwfile)
}

fn enc(id: &str) -> String {
    match id.strip_prefix("_design/") {
        Some(rest) => format!("_design/{}", urlencode(rest)),
        None => urlencode(id),
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Everything a user would compare, read through other endpoints than the
/// ones lifeboat uses: every leaf of every document with its revision path
/// and attachments (`open_revs=all`), and `_security`.
fn snapshot(c: &Couch, dbs: &[&str]) -> Vec<Value> {
    let mut out = Vec::new();
    for db in dbs {
        let changes = c.ok(
            "GET",
            &format!("{}/_changes?style=all_docs", urlencode(db)),
            None,
        );
        let mut ids: Vec<String> = changes["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        for id in ids {
            let mut leaves = c.ok(
                "GET",
                &format!(
                    "{}/{}?open_revs=all&revs=true&attachments=true",
                    urlencode(db),
                    enc(&id)
                ),
                None,
            );
            let arr = leaves.as_array_mut().unwrap();
            arr.sort_by_key(|l| l["ok"]["_rev"].as_str().unwrap_or_default().to_string());
            out.push(json!({ "db": db, "id": id, "leaves": arr }));
        }
        out.push(json!({ "db": db, "security": c.ok("GET", &format!("{}/_security", urlencode(db)), None) }));
    }
    out
}

/// Asserts two snapshots are equal, naming the entries that differ with
/// long strings (inline attachments) cut short.
fn assert_same_snapshot(got: &[Value], want: &[Value]) {
    fn short(v: &Value) -> Value {
        match v {
            Value::String(s) if s.len() > 80 => Value::String(format!(
                "{}… ({} bytes)",
                &s[..s.floor_char_boundary(60)],
                s.len()
            )),
            Value::Array(a) => Value::Array(a.iter().map(short).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), short(v))).collect())
            }
            other => other.clone(),
        }
    }
    let key = |v: &Value| format!("{} {} {}", v["db"], v["id"], v.get("security").is_some());
    let mut diffs = Vec::new();
    for w in want {
        match got.iter().find(|g| key(g) == key(w)) {
            None => diffs.push(format!("missing after restore: {}", short(w))),
            Some(g) if g != w => diffs.push(format!(
                "differs:\n  before: {}\n  after:  {}",
                short(w),
                short(g)
            )),
            _ => {}
        }
    }
    for g in got
        .iter()
        .filter(|g| !want.iter().any(|w| key(w) == key(g)))
    {
        diffs.push(format!("extra after restore: {}", short(g)));
    }
    assert!(diffs.is_empty(), "snapshots differ:\n{}", diffs.join("\n"));
    assert_eq!(got.len(), want.len());
}

#[test]
fn databases_with_revisions_conflicts_deletions_and_attachments_round_trip_pouchdb() {
    round_trip(Flavor::PouchDb);
}

#[test]
fn databases_with_revisions_conflicts_deletions_and_attachments_round_trip_couchdb_3_5() {
    if Flavor::CouchDb35.available(
        "databases_with_revisions_conflicts_deletions_and_attachments_round_trip_couchdb_3_5",
    ) {
        round_trip(Flavor::CouchDb35);
    }
}

fn round_trip(flavor: Flavor) {
    let tmp = tempfile::tempdir().unwrap();
    let (vol, backup, pwfile) = setup(tmp.path());
    let mut couch = Couch::start(flavor, &tmp.path().join("couch1"));
    couch.settle();

    // notes: three revisions, a deleted document, a conflict, a design document.
    couch.ok("PUT", "notes", None);
    let r1 = couch.ok("PUT", "notes/three", Some(json!({ "v": 1 })));
    let r2 = couch.ok(
        "PUT",
        "notes/three",
        Some(json!({ "v": 2, "_rev": r1["rev"] })),
    );
    couch.ok(
        "PUT",
        "notes/three",
        Some(json!({ "v": 3, "_rev": r2["rev"], "text": "ünïcode ✓" })),
    );
    let g = couch.ok("PUT", "notes/gone", Some(json!({ "soon": "deleted" })));
    couch.ok(
        "DELETE",
        &format!("notes/gone?rev={}", g["rev"].as_str().unwrap()),
        None,
    );
    couch.ok(
        "POST",
        "notes/_bulk_docs",
        Some(json!({ "new_edits": false, "docs": [
            { "_id": "clash", "_rev": "1-aaaa", "side": "left" },
            { "_id": "clash", "_rev": "1-bbbb", "side": "right" },
        ]})),
    );
    couch.ok(
        "PUT",
        "notes/_design/app",
        Some(json!({ "views": { "by_v": { "map": "function (doc) { if (doc.v) emit(doc.v, null); }" } } })),
    );
    couch.ok(
        "PUT",
        "notes/_security",
        Some(json!({ "admins": { "names": ["boss"], "roles": [] }, "members": { "names": [], "roles": ["staff"] } })),
    );
    // media: an attachment of a few MB.
    couch.ok("PUT", "media", None);
    let blob = noise(3 * 1024 * 1024 + 17, 7);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&blob);
    couch.ok(
        "PUT",
        "media/photo",
        Some(json!({ "title": "big", "_attachments": { "photo.bin": { "content_type": "application/octet-stream", "data": b64 } } })),
    );
    let dbs = ["_users", "media", "notes"];
    let before = snapshot(&couch, &dbs);

    let env = couch.env(&vol, &backup, &pwfile);
    run_ok(lifeboat("lifeboat-sidecar", &pairs(&env)).arg("backup-now"));
    let hist = history(&backup, "couch-0");
    let artifact = artifacts(&hist).pop().unwrap();
    let manifest = manifest_of(&artifact);
    assert_eq!(manifest["source"], "couchdb");
    assert_eq!(manifest["layout"], "logical");
    let notes = manifest["source_meta"]["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "notes")
        .unwrap();
    // three, gone (deleted), two sides of clash, the design document.
    assert_eq!(
        (
            notes["revisions"].as_u64(),
            notes["deleted_revisions"].as_u64()
        ),
        (Some(5), Some(1))
    );
    assert_eq!(notes["exact"], true);

    // A new pod: the init container stages, the sidecar starts before the
    // new (empty) server answers and loads the dump once it does.
    couch.kill();
    let port = free_port();
    let env = with_env(
        &couch.env(&vol, &backup, &pwfile),
        &[("LIFEBOAT_COUCHDB_URL", format!("http://127.0.0.1:{port}/"))],
    );
    let out = run_ok(&mut lifeboat("lifeboat-restore", &pairs(&env)));
    assert!(stderr(&out).contains("staged"), "{}", stderr(&out));
    // The readiness probe keeps the pod out of Service endpoints meanwhile,
    // as an exec probe and on the endpoint.
    fails_with(
        lifeboat("lifeboat-sidecar", &pairs(&env)).arg("ready"),
        1,
        "not loaded yet",
    );
    let log = tmp.path().join("sidecar.log");
    let sc = RunningSidecar::start(&pairs(&env), &log);
    let (code, body) = sc.get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not loaded yet"), "{body}");
    assert_eq!(sc.scrape()["lifeboat_restore_pending"], 1.0);
    let couch = Couch::start_on(flavor, &tmp.path().join("couch2"), port);
    sc.wait_for("the restored dump to be loaded", 120, |s| {
        s.get("/readyz").0 == 200
    });
    let m = sc.scrape();
    assert_eq!(m["lifeboat_restore_pending"], 0.0);
    assert_eq!(m["lifeboat_restore_loads_total{result=\"success\"}"], 1.0);
    assert!(sc.stop().success());
    assert!(!vol.join(".lifeboat-pending").exists());
    assert_same_snapshot(&snapshot(&couch, &dbs), &before);
    run_ok(lifeboat("lifeboat-sidecar", &pairs(&env)).arg("ready"));

    // Loading the same dump again (a restore forced over the data) changes nothing.
    let again = with_env(&env, &[("LIFEBOAT_RESTORE", "always".into())]);
    run_ok(&mut lifeboat("lifeboat-restore", &pairs(&again)));
    load_staged_dump(lifeboat("lifeboat-sidecar", &pairs(&env)), &log);
    assert_same_snapshot(&snapshot(&couch, &dbs), &before);
}

#[test]
fn server_down_wrong_password_and_a_database_deleted_mid_dump_are_clear_errors_pouchdb() {
    clear_errors(Flavor::PouchDb);
}

#[test]
fn server_down_wrong_password_and_a_database_deleted_mid_dump_are_clear_errors_couchdb_3_5() {
    if Flavor::CouchDb35.available(
        "server_down_wrong_password_and_a_database_deleted_mid_dump_are_clear_errors_couchdb_3_5",
    ) {
        clear_errors(Flavor::CouchDb35);
    }
}

fn clear_errors(flavor: Flavor) {
    let tmp = tempfile::tempdir().unwrap();
    let (vol, backup, pwfile) = setup(tmp.path());
    let wrong = tmp.path().join("wrong");
    fs::write(&wrong, "nope").unwrap();
    let couch = Couch::start(flavor, &tmp.path().join("couch"));
    let env = couch.env(&vol, &backup, &pwfile);
    let hist = history(&backup, "couch-0");

    let expect_failure = |extra: &[(&'static str, String)], needle: &str| {
        let e = with_env(&env, extra);
        fails_with(
            lifeboat("lifeboat-sidecar", &pairs(&e)).arg("backup-now"),
            1,
            needle,
        );
    };
    expect_failure(
        &[(
            "LIFEBOAT_COUCHDB_URL",
            format!("http://127.0.0.1:{}", free_port()),
        )],
        "is CouchDB running? check LIFEBOAT_COUCHDB_URL",
    );
    expect_failure(
        &[("COUCHDB_PASSWORD_FILE", wrong.display().to_string())],
        "check COUCHDB_USER and COUCHDB_PASSWORD",
    );
    expect_failure(&[("LIFEBOAT_DATABASES", "nosuchdb".into())], "do not exist");
    assert!(artifacts(&hist).is_empty());

    // Big enough that the dump takes a while; deleted while it runs.
    couch.ok("PUT", "big", None);
    for batch in 0..20 {
        let docs: Vec<Value> = (0..1000)
            .map(|i| json!({ "_id": format!("doc{:06}", batch * 1000 + i), "n": i, "pad": "x".repeat(200) }))
            .collect();
        couch.ok("POST", "big/_bulk_docs", Some(json!({ "docs": docs })));
    }
    // Once the first page of `big` (20 pages) is read, the database goes
    // away under the dump.
    let e = with_env(
        &env,
        &[
            ("LIFEBOAT_DATABASES", "big".into()),
            ("LIFEBOAT_LOG", "info,lifeboat=debug".into()),
        ],
    );
    let mut child = lifeboat("lifeboat-sidecar", &pairs(&e))
        .arg("backup-now")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = String::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap());
    loop {
        let mut line = String::new();
        assert!(
            lines.read_line(&mut line).unwrap() > 0,
            "backup ended before the delete:\n{log}"
        );
        log.push_str(&line);
        if line.contains("read a page of changes") && line.contains("database=big") {
            break;
        }
    }
    couch.ok("DELETE", "big", None);
    lines.read_to_string(&mut log).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("disappeared during the dump"), "{log}");
    assert!(artifacts(&hist).is_empty());
}

/// On one server only (the data set is large): the real CouchDB when its
/// release is there (it loads and serves 200k documents in half the time),
/// else PouchDB Server.
#[test]
fn memory_stays_flat_while_dumping_200k_documents() {
    let test = "memory_stays_flat_while_dumping_200k_documents";
    memory_200k(Flavor::CouchDb35.or_pouchdb(test));
}

fn memory_200k(flavor: Flavor) {
    let tmp = tempfile::tempdir().unwrap();
    let (vol, backup, pwfile) = setup(tmp.path());
    let couch = Couch::start(flavor, &tmp.path().join("couch"));
    couch.ok("PUT", "many", None);
    for batch in 0..40 {
        let docs: Vec<Value> = (0..5000)
            .map(|i| json!({ "_id": format!("d{:07}", batch * 5000 + i), "i": i, "s": "small document" }))
            .collect();
        couch.ok("POST", "many/_bulk_docs", Some(json!({ "docs": docs })));
    }
    let env = with_env(
        &couch.env(&vol, &backup, &pwfile),
        &[("LIFEBOAT_DATABASES", "many".into())],
    );
    let out = run_ok(lifeboat("lifeboat-sidecar", &pairs(&env)).arg("backup-now"));
    let err = stderr(&out);
    let peak: u64 = err
        .split("peak_rss_mib=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("the result line reports peak RSS");
    println!("peak RSS dumping 200k documents: {peak} MiB");
    assert!(peak <= 64, "peak RSS {peak} MiB:\n{err}");
    let m = manifest_of(&artifacts(&history(&backup, "couch-0")).pop().unwrap());
    assert_eq!(m["source_meta"]["databases"][0]["revisions"], 200_000);
    assert_eq!(m["source_meta"]["databases"][0]["doc_count"], 200_000);
}
