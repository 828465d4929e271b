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
            Value::String(s) if s.len() > 80 => {
                let cut = (0..=60).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                Value::String(format!("{}… ({} bytes)", &s[..cut], s.len()))
            }
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

/// Peak RSS allowed to the sidecar while it dumps or loads documents with
/// attachments of any size.
const MAX_PEAK_MIB: u64 = 64;
const MB: usize = 1_000_000;

/// Every leaf of every document of `dbs` with its revision path and, per
/// attachment, what the server serves for it: content type, length, md5
/// digest, revpos (left out for PouchDB Server, which renumbers it on a
/// multipart PUT) and the sha256 of its bytes, read one by one.
fn attachment_snapshot(c: &Couch, dbs: &[&str]) -> Vec<Value> {
    let mut out = Vec::new();
    for db in dbs {
        let changes = c.ok("GET", &format!("{db}/_changes?style=all_docs"), None);
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
                &format!("{db}/{}?open_revs=all&revs=true", enc(&id)),
                None,
            );
            let arr = leaves.as_array_mut().unwrap();
            arr.sort_by_key(|l| l["ok"]["_rev"].as_str().unwrap_or_default().to_string());
            for leaf in arr.iter_mut() {
                let rev = leaf["ok"]["_rev"].as_str().unwrap().to_string();
                let Some(atts) = leaf["ok"]
                    .get_mut("_attachments")
                    .and_then(Value::as_object_mut)
                else {
                    continue;
                };
                for (name, stub) in atts.iter_mut() {
                    let bytes =
                        c.get_bytes(&format!("{db}/{}/{}?rev={rev}", enc(&id), urlencode(name)));
                    assert_eq!(
                        stub["length"].as_u64(),
                        Some(bytes.len() as u64),
                        "{id} {name}"
                    );
                    let mut seen = json!({
                        "content_type": stub["content_type"],
                        "length": stub["length"],
                        "digest": stub["digest"],
                        "sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
                    });
                    if c.flavor != Flavor::PouchDb {
                        seen["revpos"] = stub["revpos"].clone();
                    }
                    *stub = seen;
                }
            }
            out.push(json!({ "db": db, "id": id, "leaves": arr }));
        }
    }
    out
}

/// `lifeboat-restore` stages the newest artifact (again, over an earlier
/// restore); then the sidecar loads it into the server `env` names. Returns
/// the sidecar's peak RSS in MiB over its whole run.
fn restore_and_load(env: &[(&'static str, String)], log: &Path) -> u64 {
    let again = with_env(env, &[("LIFEBOAT_RESTORE", "always".into())]);
    run_ok(&mut lifeboat("lifeboat-restore", &pairs(&again)));
    let mut child = spawn_until_logged(
        lifeboat("lifeboat-sidecar", &pairs(env)),
        log,
        "next scheduled backup",
    );
    let status = fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let text = fs::read_to_string(log).unwrap();
    assert!(text.contains("restored dump loaded"), "{text}");
    for l in text.lines().filter(|l| l.contains("attachments loaded")) {
        eprintln!("{l}");
    }
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib / 1024
}

/// A backup of `dbs`; returns its peak RSS in MiB from the result line.
fn backup_peak(env: &[(&'static str, String)], dbs: &str) -> u64 {
    let e = with_env(env, &[("LIFEBOAT_DATABASES", dbs.into())]);
    let out = run_ok(lifeboat("lifeboat-sidecar", &pairs(&e)).arg("backup-now"));
    let err = stderr(&out);
    for l in err.lines().filter(|l| l.contains("attachment dumped")) {
        eprintln!("{l}");
    }
    err.split("peak_rss_mib=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no peak_rss_mib in:\n{err}"))
}

#[test]
fn documents_with_60_and_160_mb_of_attachments_round_trip_in_bounded_memory_couchdb_3_5() {
    let test =
        "documents_with_60_and_160_mb_of_attachments_round_trip_in_bounded_memory_couchdb_3_5";
    if Flavor::CouchDb35.available(test) {
        big_attachments(Flavor::CouchDb35, 1);
    }
}

/// The same at a tenth of the sizes: PouchDB Server takes two minutes to
/// store the test's own 160 MB (the dump and load themselves take 22 s,
/// at the same peaks as on CouchDB).
#[test]
fn documents_with_attachment_files_round_trip_in_bounded_memory_pouchdb() {
    big_attachments(Flavor::PouchDb, 10);
}

/// Attachments of 60 MB and 60 + 100 MB (divided by `scale`) through a
/// dump and a load each, bytes and peak RSS checked.
fn big_attachments(flavor: Flavor, scale: usize) {
    let started = std::time::Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (vol, backup, pwfile) = setup(tmp.path());
    let mut c1 = Couch::start(flavor, &tmp.path().join("couch1"));

    // one: a document whose second revision added a 60 MB attachment.
    c1.ok("PUT", "one", None);
    let r1 = c1.ok("PUT", "one/film", Some(json!({ "title": "one" })));
    c1.put_bytes(
        &format!("one/film/film.bin?rev={}", r1["rev"].as_str().unwrap()),
        "application/octet-stream",
        &noise(60 * MB / scale, 1),
    );
    let phase = |what: &str| {
        eprintln!(
            "{:>6.1}s {}: {what}",
            started.elapsed().as_secs_f64(),
            flavor.name()
        )
    };
    phase("60 MB stored");
    let want_one = attachment_snapshot(&c1, &["one"]);
    phase("read back");
    let env = c1.env(&vol, &backup, &pwfile);
    let dump_one = backup_peak(&env, "one");
    phase("dumped");
    let names = entry_names(&artifacts(&history(&backup, "couch-0")).pop().unwrap());

    c1.kill();
    let c2 = Couch::start(flavor, &tmp.path().join("couch2"));
    let env = c2.env(&vol, &backup, &pwfile);
    let load_one = restore_and_load(&env, &tmp.path().join("load1.log"));
    phase("restored and loaded");
    assert_same_snapshot(&attachment_snapshot(&c2, &["one"]), &want_one);
    phase("compared");

    // two: 60 MB + 100 MB (text, which CouchDB stores gzipped) in one
    // revision, a conflicting leaf with its own 2 MB attachment, a deleted
    // leaf that kept a 1 MB one, and a document with a small attachment.
    c2.ok("PUT", "two", None);
    let r1 = c2.ok("PUT", "two/pair", Some(json!({ "title": "two" })));
    let r2 = c2.put_bytes(
        &format!("two/pair/a.bin?rev={}", r1["rev"].as_str().unwrap()),
        "application/octet-stream",
        &noise(60 * MB / scale, 2),
    );
    c2.put_bytes(
        &format!("two/pair/b%20notes.txt?rev={}", r2["rev"].as_str().unwrap()),
        "text/plain",
        &noise(100 * MB / scale, 3),
    );
    let first = r1["rev"]
        .as_str()
        .unwrap()
        .split_once('-')
        .unwrap()
        .1
        .to_string();
    let b64 =
        |n: usize, seed: u64| base64::engine::general_purpose::STANDARD.encode(noise(n, seed));
    c2.ok(
        "POST",
        "two/_bulk_docs",
        Some(json!({ "new_edits": false, "docs": [
            { "_id": "pair", "_rev": "2-cccccccccccccccccccccccccccccccc", "side": "theirs",
              "_revisions": { "start": 2, "ids": ["cccccccccccccccccccccccccccccccc", first] },
              "_attachments": { "their.bin": { "content_type": "image/png", "data": b64(2 * MB / scale, 4) } } },
            { "_id": "pair", "_rev": "2-dddddddddddddddddddddddddddddddd", "_deleted": true,
              "_revisions": { "start": 2, "ids": ["dddddddddddddddddddddddddddddddd", first] },
              "_attachments": { "kept.bin": { "content_type": "application/x-kept", "data": b64(MB / scale, 5) } } },
            { "_id": "note", "_rev": "1-eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee",
              "_attachments": { "tiny.txt": { "content_type": "text/plain", "data": b64(1000, 6) } } },
        ]})),
    );
    phase("60 + 100 MB stored");
    let want_two = attachment_snapshot(&c2, &["two"]);
    phase("read back");
    let dump_two = backup_peak(&env, "two");
    phase("dumped");

    drop(c2);
    let c3 = Couch::start(flavor, &tmp.path().join("couch3"));
    let env = c3.env(&vol, &backup, &pwfile);
    let load_two = restore_and_load(&env, &tmp.path().join("load2.log"));
    phase("restored and loaded");
    assert_same_snapshot(&attachment_snapshot(&c3, &["two"]), &want_two);
    phase("compared");

    println!(
        "{}: peak RSS MiB: {} MB dump {dump_one} load {load_one}; {}+{} MB dump {dump_two} load {load_two}; {:.0}s",
        flavor.name(),
        60 / scale,
        60 / scale,
        100 / scale,
        started.elapsed().as_secs_f64()
    );
    for (what, peak) in [
        ("dumping 60 MB", dump_one),
        ("loading 60 MB", load_one),
        ("dumping 60+100 MB", dump_two),
        ("loading 60+100 MB", load_two),
    ] {
        assert!(peak <= MAX_PEAK_MIB, "{what}: peak RSS {peak} MiB");
    }
    // The big attachment is a file of its own in the tar.
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("couchdb/one/attachments/") && n.ends_with("film.bin")),
        "{names:?}"
    );
}

/// A test double standing between the sidecar and a real server: it
/// forwards every request, but answers attachment reads (`db/doc/att?rev=`)
/// with their bytes changed by `mangle`, which returns how many bytes to
/// declare and send.
struct Mangler {
    port: u16,
}

impl Mangler {
    fn start(upstream: String, mangle: fn(&mut Vec<u8>) -> usize) -> Mangler {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let upstream = upstream.clone();
                std::thread::spawn(move || {
                    let mut w = conn.try_clone().unwrap();
                    let mut r = BufReader::new(conn);
                    while let Some(req) = read_request(&mut r) {
                        let query: Vec<String> = req
                            .query
                            .iter()
                            .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
                            .collect();
                        let url = format!("{upstream}{}?{}", &req.path[1..], query.join("&"));
                        let mut fwd = ureq::request(&req.method, &url);
                        for h in ["authorization", "content-type", "accept"] {
                            if !req.header(h).is_empty() {
                                fwd = fwd.set(h, req.header(h));
                            }
                        }
                        let resp = match fwd.send_bytes(&req.body) {
                            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
                            Err(_) => return,
                        };
                        let status = resp.status();
                        let content_type = resp.content_type().to_string();
                        let mut body = Vec::new();
                        resp.into_reader().read_to_end(&mut body).unwrap();
                        let attachment = req.method == "GET"
                            && req.query.contains_key("rev")
                            && !req.query.contains_key("revs")
                            && req.path.matches('/').count() >= 3;
                        let len = if attachment && status == 200 {
                            mangle(&mut body)
                        } else {
                            body.len()
                        };
                        let head = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\r\n"
                        );
                        use std::io::Write;
                        if w.write_all(head.as_bytes()).is_err()
                            || w.write_all(&body[..len]).is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Mangler { port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

#[test]
fn an_attachment_whose_bytes_differ_from_its_stub_fails_the_backup() {
    let test = "an_attachment_whose_bytes_differ_from_its_stub_fails_the_backup";
    let flavor = Flavor::CouchDb35.or_pouchdb(test);
    let tmp = tempfile::tempdir().unwrap();
    let (vol, backup, pwfile) = setup(tmp.path());
    let couch = Couch::start(flavor, &tmp.path().join("couch"));
    couch.ok("PUT", "media", None);
    let r = couch.ok("PUT", "media/clip", Some(json!({ "title": "clip" })));
    couch.put_bytes(
        &format!("media/clip/clip.bin?rev={}", r["rev"].as_str().unwrap()),
        "application/octet-stream",
        &noise(MB, 8),
    );
    let env = couch.env(&vol, &backup, &pwfile);
    let hist = history(&backup, "couch-0");
    let flip: fn(&mut Vec<u8>) -> usize = |b| {
        let mid = b.len() / 2;
        b[mid] ^= 1;
        b.len()
    };
    let cut: fn(&mut Vec<u8>) -> usize = |b| b.len() - 1;
    for (mangle, says) in [
        (flip, "the bytes' digest is md5-"),
        (
            cut,
            "the server sent 999999 of the 1000000 bytes its stub says",
        ),
    ] {
        let proxy = Mangler::start(couch.url(""), mangle);
        let e = with_env(&env, &[("LIFEBOAT_COUCHDB_URL", proxy.url())]);
        let err = fails_with(
            lifeboat("lifeboat-sidecar", &pairs(&e)).arg("backup-now"),
            1,
            says,
        );
        assert!(err.contains("attachment \"clip.bin\""), "{err}");
        assert!(artifacts(&hist).is_empty());
    }
    // Straight from the server, the same backup works.
    run_ok(lifeboat("lifeboat-sidecar", &pairs(&env)).arg("backup-now"));
    assert_eq!(artifacts(&hist).len(), 1);
}

/// Artifacts written before attachments were files (every attachment
/// inline in `docs.ndjson`, base64) are in users' stores: they still load.
#[test]
fn an_artifact_with_inline_attachments_from_before_files_still_loads_pouchdb() {
    old_format(Flavor::PouchDb);
}

#[test]
fn an_artifact_with_inline_attachments_from_before_files_still_loads_couchdb_3_5() {
    let test = "an_artifact_with_inline_attachments_from_before_files_still_loads_couchdb_3_5";
    if Flavor::CouchDb35.available(test) {
        old_format(Flavor::CouchDb35);
    }
}

fn old_format(flavor: Flavor) {
    use lifeboat_tests::hostile::{e, Plant};
    let tmp = tempfile::tempdir().unwrap();
    let (vol, backup, pwfile) = setup(tmp.path());
    let couch = Couch::start(flavor, &tmp.path().join("couch"));
    let b64 = |data: &[u8]| base64::engine::general_purpose::STANDARD.encode(data);
    let photo = noise(3 * MB + 17, 9);
    let note = b"a small note".to_vec();
    // As the previous format wrote them: two leaves of `photo` (a conflict),
    // a deleted document; attachments inline with the server's stub fields.
    let (a, b, c, d) = (
        "a".repeat(32),
        "b".repeat(32),
        "c".repeat(32),
        "d".repeat(32),
    );
    let lines = [
        json!({ "_id": "photo", "_rev": format!("2-{b}"), "title": "old",
            "_revisions": { "start": 2, "ids": [&b, &a] },
            "_attachments": { "photo.bin": { "content_type": "image/jpeg", "revpos": 2,
                "digest": "md5-AAAAAAAAAAAAAAAAAAAAAA==", "data": b64(&photo) } } }),
        json!({ "_id": "photo", "_rev": format!("2-{c}"), "title": "theirs",
            "_revisions": { "start": 2, "ids": [&c, &a] },
            "_attachments": { "note.txt": { "content_type": "text/plain", "revpos": 2,
                "digest": "md5-AAAAAAAAAAAAAAAAAAAAAA==", "data": b64(&note) } } }),
        json!({ "_id": "gone", "_rev": format!("2-{d}"), "_deleted": true,
            "_revisions": { "start": 2, "ids": [&d, &a] } }),
    ];
    let ndjson: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let security = json!({ "admins": { "names": ["boss"], "roles": [] }, "members": { "names": [], "roles": [] } })
        .to_string();
    let entries = [
        e(
            b"couchdb/legacy/security.json",
            tar::EntryType::Regular,
            b"",
            security.as_bytes(),
        ),
        e(
            b"couchdb/legacy/docs.ndjson",
            tar::EntryType::Regular,
            b"",
            ndjson.as_bytes(),
        ),
    ];
    let plant = Plant {
        backup: &backup,
        pod: "couch-0",
        id: "20260101T000000Z-couchdb",
        source: "couchdb",
        layout: "logical",
        paths: vec![vol.display().to_string()],
    };
    let tar = lifeboat_tests::hostile::hostile_tar(&entries);
    let bytes_in = (security.len() + ndjson.len()) as u64;
    plant.stored_with(&lifeboat_tests::hostile::zstd(&tar), 2, bytes_in, |m| {
        m["source_meta"] = json!({ "databases": [{ "name": "legacy", "dir": "legacy",
            "revisions": 3, "deleted_revisions": 1, "doc_count": 1, "doc_del_count": 1,
            "exact": true }] });
    });

    let env = couch.env(&vol, &backup, &pwfile);
    restore_and_load(&env, &tmp.path().join("load.log"));
    let got = attachment_snapshot(&couch, &["legacy"]);
    let sha = |data: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data));
    let leaves = &got.iter().find(|d| d["id"] == "photo").unwrap()["leaves"];
    let leaf = |rev: &str| {
        leaves
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["ok"]["_rev"] == rev)
            .unwrap_or_else(|| panic!("no leaf {rev} in {leaves}"))["ok"]
            .clone()
    };
    let ours = leaf(&format!("2-{b}"));
    assert_eq!(ours["_attachments"]["photo.bin"]["sha256"], sha(&photo));
    assert_eq!(
        ours["_attachments"]["photo.bin"]["content_type"],
        "image/jpeg"
    );
    assert_eq!(ours["_revisions"]["ids"], json!([&b, &a]));
    let theirs = leaf(&format!("2-{c}"));
    assert_eq!(theirs["_attachments"]["note.txt"]["sha256"], sha(&note));
    let gone = &got.iter().find(|d| d["id"] == "gone").unwrap()["leaves"][0]["ok"];
    assert_eq!(gone["_deleted"], true);
    assert_eq!(
        couch.ok("GET", "legacy/_security", None)["admins"]["names"],
        json!(["boss"])
    );
}
