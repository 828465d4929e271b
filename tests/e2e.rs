//! Every example on a real Kubernetes cluster, as a user runs it: apply the
//! project's own kustomize example (images overridden the way the README
//! says), write data through the app, back up on `lifeboat.dev/backup-now`
//! and on a one-minute schedule, check `list`, `verify`, Events and the
//! `lifeboat.dev/last-backup` annotation, delete the StatefulSet and its
//! data claim, apply again, and check that the init container restored
//! before the app started and the app serves the same data. The API
//! server's audit log shows that the shipped Role is all lifeboat uses.
//!
//! Needs a cluster: `bash tests/e2e/run.sh` starts one (docs/E2E.md);
//! without it every test here says it was skipped.

use std::time::Duration;

use lifeboat_tests::kube_cluster::{condition_time, container_status, Cluster};

const WAIT_READY: Duration = Duration::from_secs(240);
const WAIT_BACKUP: Duration = Duration::from_secs(180);

/// One example app: where it lives and how a user reads and writes its data.
struct App {
    /// `kustomize/examples/<example>` and `tests/e2e/overlays/<example>`.
    example: &'static str,
    ns: &'static str,
    set: &'static str,
    container: &'static str,
    /// Owner of the volumes the cluster provides (the pod's uid, fsGroup).
    uid: u32,
    gid: u32,
    /// A logical dump the sidecar loads after the restore (pod not Ready
    /// before), rather than files the init container puts back.
    logical: bool,
    /// The example has the drill component: a drill must pass.
    drill: bool,
    /// Also drill an artifact that is whole but lacks the app's data: the
    /// drill must fail, and the next restore skip it.
    break_for_drill: Option<fn(&Cluster, &App)>,
    /// Shell-free commands in the app container.
    is_empty: fn(&Cluster, &App) -> bool,
    write: fn(&Cluster, &App),
    read: fn(&Cluster, &App) -> String,
}

impl App {
    fn pod(&self) -> String {
        format!("{}-0", self.set)
    }

    fn overlay(&self) -> String {
        Cluster::repo_path(&format!("tests/e2e/overlays/{}", self.example))
            .display()
            .to_string()
    }

    /// Once: for writes, which must not be repeated.
    fn exec_once(&self, c: &Cluster, args: &[&str]) -> String {
        c.exec(self.ns, &self.pod(), self.container, args)
    }

    /// Retries `exec` while the app is still starting (its port not open):
    /// for reads only.
    fn exec_when_up(&self, c: &Cluster, args: &[&str]) -> String {
        let pod = self.pod();
        c.wait(
            &format!("{} in {pod} to answer", self.container),
            WAIT_READY,
            || {
                let mut all = vec![
                    "-n",
                    self.ns,
                    "exec",
                    pod.as_str(),
                    "-c",
                    self.container,
                    "--",
                ];
                all.extend_from_slice(args);
                let out = c.output(&all);
                if out.status.success() {
                    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
                } else {
                    Err(String::from_utf8_lossy(&out.stderr).into_owned())
                }
            },
        )
    }
}

// ---- PostgreSQL: rows through psql ----------------------------------------

const PSQL: &[&str] = &[
    "env",
    "PGPASSWORD=change-me",
    "psql",
    "-h",
    "127.0.0.1",
    "-U",
    "postgres",
    "-v",
    "ON_ERROR_STOP=1",
    "-At",
    "-c",
];

fn psql(c: &Cluster, app: &App, sql: &str) -> String {
    let mut args = PSQL.to_vec();
    args.push(sql);
    app.exec_when_up(c, &args)
}

fn psql_once(c: &Cluster, app: &App, sql: &str) -> String {
    let mut args = PSQL.to_vec();
    args.push(sql);
    app.exec_once(c, &args)
}

fn postgres_is_empty(c: &Cluster, app: &App) -> bool {
    psql(c, app, "select to_regclass('public.orders') is null").trim() == "t"
}

fn postgres_write(c: &Cluster, app: &App) {
    psql_once(
        c,
        app,
        "create table orders (id int primary key, item text, at timestamptz default now()); \
         insert into orders (id, item) select g, 'item ' || g from generate_series(1, 5000) g",
    );
}

fn postgres_read(c: &Cluster, app: &App) -> String {
    psql(
        c,
        app,
        "select count(*) || ' ' || md5(string_agg(id || ':' || item || ':' || at, ',' order by id)) from orders",
    )
}

// ---- Jupyter: a notebook through the server's REST API --------------------

/// Talks to the Jupyter server in its container with the Python it runs on.
const JUPYTER_CLIENT: &str = r#"
import json, sys, urllib.request
method, path = sys.argv[1], sys.argv[2]
body = sys.argv[3].encode() if len(sys.argv) > 3 else None
req = urllib.request.Request("http://127.0.0.1:8888" + path, data=body, method=method,
    headers={"Authorization": "token lifeboat-e2e", "Content-Type": "application/json"})
print(urllib.request.urlopen(req, timeout=10).read().decode())
"#;

fn jupyter(
    c: &Cluster,
    app: &App,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> serde_json::Value {
    let mut args = vec!["python3", "-c", JUPYTER_CLIENT, method, path];
    let out = match body {
        Some(b) => {
            args.push(b);
            app.exec_once(c, &args)
        }
        None => app.exec_when_up(c, &args),
    };
    serde_json::from_str(&out).expect("Jupyter answers JSON")
}

fn jupyter_is_empty(c: &Cluster, app: &App) -> bool {
    let listing = jupyter(c, app, "GET", "/api/contents/", None);
    listing["content"]
        .as_array()
        .expect("a folder listing")
        .iter()
        .all(|e| e["name"] != "orders.ipynb")
}

fn jupyter_write(c: &Cluster, app: &App) {
    let notebook = serde_json::json!({
        "type": "notebook",
        "content": {
            "nbformat": 4, "nbformat_minor": 5, "metadata": {},
            "cells": [
                {"cell_type": "markdown", "id": "a1", "metadata": {}, "source": "# Orders, ünïcödé"},
                {"cell_type": "code", "id": "a2", "metadata": {}, "execution_count": 1,
                 "source": "sum(range(10))", "outputs": [
                    {"output_type": "execute_result", "execution_count": 1, "metadata": {},
                     "data": {"text/plain": "45"}}]}
            ]
        }
    });
    jupyter(
        c,
        app,
        "PUT",
        "/api/contents/orders.ipynb",
        Some(&notebook.to_string()),
    );
}

fn jupyter_read(c: &Cluster, app: &App) -> String {
    let nb = jupyter(c, app, "GET", "/api/contents/orders.ipynb?content=1", None);
    format!("{} {}", nb["content"], nb["last_modified"])
}

// ---- CouchDB: documents through the HTTP API ------------------------------

/// `curl` in the app's container with a JSON body and `login`: once for a
/// write (`-X`), retried while the app starts for a read.
fn curl(c: &Cluster, app: &App, login: &str, args: &[&str]) -> String {
    let mut all = vec![
        "curl",
        "-fsS",
        "--max-time",
        "60",
        "-u",
        login,
        "-H",
        "Content-Type: application/json",
    ];
    all.extend_from_slice(args);
    if args.contains(&"-X") {
        app.exec_once(c, &all)
    } else {
        app.exec_when_up(c, &all)
    }
}

fn couch(c: &Cluster, app: &App, args: &[&str]) -> String {
    curl(c, app, "admin:change-me", args)
}

fn couchdb_is_empty(c: &Cluster, app: &App) -> bool {
    let dbs: serde_json::Value =
        serde_json::from_str(&couch(c, app, &["http://127.0.0.1:5984/_all_dbs"])).expect("json");
    !dbs.as_array().expect("list").iter().any(|d| d == "orders")
}

fn couchdb_write(c: &Cluster, app: &App) {
    couch(c, app, &["-X", "PUT", "http://127.0.0.1:5984/orders"]);
    let docs: Vec<_> = (1..=300)
        .map(|i| serde_json::json!({"_id": format!("order-{i:04}"), "item": format!("item {i}"), "qty": i}))
        .collect();
    let body = serde_json::json!({ "docs": docs }).to_string();
    couch(
        c,
        app,
        &[
            "-X",
            "POST",
            "http://127.0.0.1:5984/orders/_bulk_docs",
            "-d",
            &body,
        ],
    );
}

fn couchdb_read(c: &Cluster, app: &App) -> String {
    let all: serde_json::Value = serde_json::from_str(&couch(
        c,
        app,
        &["http://127.0.0.1:5984/orders/_all_docs?include_docs=true"],
    ))
    .expect("json");
    all["rows"].to_string()
}

// ---- ArangoDB (a stand-in): documents through the HTTP API -----------------

/// The ArangoDB of this suite is a TEST DOUBLE of its HTTP API
/// (`arangodb-standin`, `lifeboat_tests::fake_arango`): no ArangoDB server
/// installs here. It answers the endpoints lifeboat's dump and load use, and
/// these reads and writes, as ArangoDB documents them.
fn arango(c: &Cluster, app: &App, args: &[&str]) -> String {
    curl(c, app, "root:change-me", args)
}

fn arangodb_is_empty(c: &Cluster, app: &App) -> bool {
    let status = app.exec_when_up(
        c,
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-u",
            "root:change-me",
            "http://127.0.0.1:8529/_api/collection/orders/count",
        ],
    );
    status.trim() == "404"
}

fn arangodb_write(c: &Cluster, app: &App) {
    arango(
        c,
        app,
        &[
            "-X",
            "POST",
            "http://127.0.0.1:8529/_api/collection",
            "-d",
            r#"{"name": "orders", "type": 2}"#,
        ],
    );
    let lines: String = (1..=300)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"_key": format!("order-{i:04}"), "item": format!("item {i} ü"), "qty": i})
            )
        })
        .collect();
    arango(
        c,
        app,
        &[
            "-X",
            "POST",
            "http://127.0.0.1:8529/_api/import?collection=orders&type=documents&onDuplicate=replace",
            "--data-binary",
            &lines,
        ],
    );
}

/// Every document of `orders`, read the way arangodump does (a batch, then
/// the collection's dump).
fn arangodb_read(c: &Cluster, app: &App) -> String {
    let batch: serde_json::Value = serde_json::from_str(&arango(
        c,
        app,
        &[
            "-X",
            "POST",
            "http://127.0.0.1:8529/_api/replication/batch",
            "-d",
            r#"{"ttl": 60}"#,
        ],
    ))
    .expect("json");
    let id = batch["id"].as_str().expect("batch id");
    let dump = arango(
        c,
        app,
        &[&format!(
            "http://127.0.0.1:8529/_api/replication/dump?collection=orders&batchId={id}&chunkSize=16777216"
        )],
    );
    arango(
        c,
        app,
        &[
            "-X",
            "DELETE",
            &format!("http://127.0.0.1:8529/_api/replication/batch/{id}"),
        ],
    );
    let mut docs: Vec<String> = dump
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json line")["data"].to_string()
        })
        .collect();
    docs.sort();
    assert_eq!(docs.len(), 300, "orders holds {} documents", docs.len());
    docs.join("\n")
}

// ---- the flow every app goes through --------------------------------------

fn roundtrip(app: &App) {
    let test = format!("e2e {}", app.example);
    let Some(c) = Cluster::from_env(&test) else {
        return;
    };
    let (ns, pod) = (app.ns, app.pod());
    let started = std::time::Instant::now();
    let step = |what: &str| eprintln!("{test}: {what} ({:.0?} in)", started.elapsed());
    c.run(&[
        "delete",
        "namespace",
        ns,
        "--ignore-not-found",
        "--wait=true",
        "--timeout=180s",
    ]);
    let data_claim = format!("data-{}", pod);
    c.provide_volume(ns, &data_claim, app.uid, app.gid);
    c.provide_volume(ns, "lifeboat-backup", app.uid, app.gid);

    step("first deploy");
    c.run(&["apply", "-k", &app.overlay()]);
    c.wait_ready(ns, &pod, WAIT_READY);
    let restore_log = c.run(&["-n", ns, "logs", &pod, "-c", "lifeboat-restore"]);
    assert!(
        restore_log.contains("no artifacts found (first deploy)"),
        "{test}: the first deploy's init container should find nothing to restore:\n{restore_log}"
    );
    assert!(
        (app.is_empty)(&c, app),
        "{test}: the first deploy should start empty"
    );

    step("writing data");
    (app.write)(&c, app);
    let expected = (app.read)(&c, app);

    step("backup on lifeboat.dev/backup-now");
    let first = backup_now(&c, app);
    let list = c.exec(ns, &pod, "lifeboat", &["lifeboat-sidecar", "list"]);
    assert!(
        list.contains(&first),
        "{test}: `list` should show {first}:\n{list}"
    );
    let verify = c.exec(
        ns,
        &pod,
        "lifeboat",
        &["lifeboat-sidecar", "verify", &first],
    );
    eprintln!("{test}: verify: {}", verify.trim());
    let succeeded = c.events(ns, &pod, "BackupSucceeded");
    assert!(
        !succeeded.is_empty(),
        "{test}: no BackupSucceeded Event on {pod}"
    );

    step("backup on a one-minute schedule");
    c.run(&[
        "-n",
        ns,
        "annotate",
        "pod",
        &pod,
        "--overwrite",
        "lifeboat.dev/schedule=* * * * *",
    ]);
    let scheduled = c.wait("a scheduled backup", WAIT_BACKUP, || {
        let id = last_backup(&c, app).unwrap_or_default();
        if !id.is_empty() && id != first {
            Ok(id)
        } else {
            Err(format!("last-backup {id}"))
        }
    });
    // A schedule that does not fire during the rest of the test (one more
    // tick may still land before the sidecar sees it: restore must then
    // pick that newer one).
    c.run(&[
        "-n",
        ns,
        "annotate",
        "pod",
        &pod,
        "--overwrite",
        "lifeboat.dev/schedule=0 0 1 1 *",
    ]);
    let list = c.exec(ns, &pod, "lifeboat", &["lifeboat-sidecar", "list"]);
    assert!(
        list.contains(&scheduled),
        "{test}: `list` should show {scheduled}:\n{list}"
    );
    assert_eq!(
        (app.read)(&c, app),
        expected,
        "{test}: the data changed under the backups"
    );

    let mut broken = None;
    if app.drill {
        step("restore drill");
        assert!(
            run_drill(&c, app, "drill-1"),
            "{test}: the drill of the good backup failed"
        );
        let list = c.exec(ns, &pod, "lifeboat", &["lifeboat-sidecar", "list"]);
        let newest = list
            .lines()
            .find(|l| l.starts_with("20"))
            .unwrap_or_default();
        assert!(
            newest.contains("passed 20"),
            "{test}: the newest artifact should show a passed drill:\n{list}"
        );
        if let Some(breaks) = app.break_for_drill {
            step("a whole artifact without the data: its drill fails");
            breaks(&c, app);
            let bad = backup_now(&c, app);
            assert!(
                !run_drill(&c, app, "drill-2"),
                "{test}: the drill of {bad} passed"
            );
            let list = c.exec(ns, &pod, "lifeboat", &["lifeboat-sidecar", "list"]);
            let row = list
                .lines()
                .find(|l| l.starts_with(&bad))
                .unwrap_or_default();
            assert!(
                row.contains("FAILED 20"),
                "{test}: {bad} should show a failed drill:\n{list}"
            );
            broken = Some(bad);
        }
    }

    step("losing the data: delete the StatefulSet and its claim");
    let stop_order = watch_stop_order(&c, app);
    c.run(&[
        "-n",
        ns,
        "delete",
        "pvc",
        &data_claim,
        "--wait=true",
        "--timeout=120s",
    ]);
    c.provide_volume(ns, &data_claim, app.uid, app.gid);

    step("second deploy: restore before the app starts");
    c.run(&["apply", "-k", &app.overlay()]);
    let p = c.wait_ready(ns, &pod, WAIT_READY);
    let uid = p["metadata"]["uid"].as_str().expect("pod uid").to_string();
    let restore = container_status(&p, "lifeboat-restore").expect("init container status");
    assert_eq!(
        restore["state"]["terminated"]["exitCode"], 0,
        "{test}: {restore}"
    );
    let app_status = container_status(&p, app.container).expect("app status");
    let restored_at = restore["state"]["terminated"]["finishedAt"]
        .as_str()
        .expect("finishedAt");
    let app_started = app_status["state"]["running"]["startedAt"]
        .as_str()
        .expect("app running");
    assert!(
        restored_at <= app_started,
        "{test}: the app started at {app_started}, before the restore finished at {restored_at}"
    );
    assert_eq!(
        app_status["restartCount"], 0,
        "{test}: the app restarted: {app_status}"
    );
    let restore_log = c.run(&["-n", ns, "logs", &pod, "-c", "lifeboat-restore"]);
    let restored = restored_id(&restore_log).unwrap_or_else(|| {
        panic!("{test}: the init container names no restored id:\n{restore_log}")
    });
    // Ids begin with their UTC time: the newest artifact at deletion time.
    assert!(
        restored.as_str() >= scheduled.as_str(),
        "{test}: restored {restored}, older than the newest backup {scheduled}:\n{restore_log}"
    );
    if let Some(bad) = &broken {
        assert_ne!(
            &restored, bad,
            "{test}: restored the artifact that failed its drill"
        );
        assert!(
            restore_log.contains("it failed a restore drill"),
            "{test}: the init container should say why it skipped {bad}:\n{restore_log}"
        );
        // The new pod's sidecar lists the failed drill and says so.
        c.wait("a DrillFailed Event", Duration::from_secs(60), || {
            let n = c
                .events(ns, &pod, "DrillFailed")
                .into_iter()
                .filter(|e| e["involvedObject"]["uid"] == uid.as_str())
                .count();
            if n > 0 {
                Ok(())
            } else {
                Err("none yet".to_string())
            }
        });
    }
    let completed: Vec<_> = c
        .events(ns, &pod, "RestoreCompleted")
        .into_iter()
        .filter(|e| e["involvedObject"]["uid"] == uid.as_str())
        .collect();
    assert!(
        !completed.is_empty(),
        "{test}: no RestoreCompleted Event on the new pod"
    );
    if app.logical {
        // Ready only once the sidecar loaded the dump (the Event it posts then).
        let loaded = event_time(&completed[completed.len() - 1]);
        let ready = condition_time(&p, "Ready").expect("Ready time");
        assert!(
            loaded.as_str() <= ready,
            "{test}: Ready at {ready}, before the dump was loaded at {loaded}"
        );
    }
    assert_eq!(
        (app.read)(&c, app),
        expected,
        "{test}: the restored app serves other data"
    );

    step("stop order");
    let (app_stop, sidecar_stop) = stop_order;
    assert!(
        app_stop <= sidecar_stop,
        "{test}: on deletion the sidecar stopped at {sidecar_stop}, before the app at {app_stop}"
    );
    check_audit(&c, app);
    c.run(&["delete", "namespace", ns, "--wait=false"]);
    step("done");
}

/// The artifact id in the init container's last line ("restore completed;
/// the app may start id=…", or "dump verified and staged; the app may
/// start … id=…" for a logical dump).
fn restored_id(log: &str) -> Option<String> {
    let line = log
        .lines()
        .find(|l| l.contains("the app may start") && l.contains(" id="))?;
    let at = line.find(" id=")? + 4;
    let id: String = line[at..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    Some(id.trim_matches('"').to_string())
}

/// Runs the example's drill CronJob now, as `kubectl create job --from`
/// does; whether the Job succeeded.
fn run_drill(c: &Cluster, app: &App, job: &str) -> bool {
    c.run(&[
        "-n",
        app.ns,
        "create",
        "job",
        job,
        "--from=cronjob/lifeboat-drill",
    ]);
    let passed = c.wait(
        &format!("the drill Job {job}"),
        Duration::from_secs(360),
        || {
            let j = c
                .try_get(app.ns, &format!("job/{job}"))?
                .ok_or("no Job yet")?;
            let done = |kind: &str| {
                j["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|cond| cond["type"] == kind && cond["status"] == "True")
            };
            if done("Complete") {
                Ok(true)
            } else if done("Failed") {
                Ok(false)
            } else {
                Err(format!("{}", j["status"]))
            }
        },
    );
    let logs = c.output(&[
        "-n",
        app.ns,
        "logs",
        &format!("job/{job}"),
        "-c",
        "lifeboat-drill",
    ]);
    eprintln!(
        "e2e {}: drill {job} {}: {}",
        app.example,
        if passed { "passed" } else { "failed" },
        String::from_utf8_lossy(&logs.stdout)
            .lines()
            .last()
            .unwrap_or_default()
    );
    passed
}

fn postgres_break(c: &Cluster, app: &App) {
    psql_once(c, app, "drop table orders");
}

fn last_backup(c: &Cluster, app: &App) -> Option<String> {
    let p = c.get(app.ns, &format!("pod/{}", app.pod()))?;
    let raw = p["metadata"]["annotations"]["lifeboat.dev/last-backup"].as_str()?;
    let v: serde_json::Value = serde_json::from_str(raw).expect("last-backup is JSON");
    v["id"].as_str().map(str::to_string)
}

/// Asks for a backup the way the README shows and waits for the
/// annotation that says it was committed; its id.
fn backup_now(c: &Cluster, app: &App) -> String {
    let before = last_backup(c, app);
    let stamp = format!("lifeboat.dev/backup-now={}", chrono::Utc::now().timestamp());
    c.run(&[
        "-n",
        app.ns,
        "annotate",
        "pod",
        &app.pod(),
        "--overwrite",
        &stamp,
    ]);
    c.wait(
        "lifeboat.dev/last-backup after backup-now",
        WAIT_BACKUP,
        || match last_backup(c, app) {
            Some(id) if Some(&id) != before.as_ref() => Ok(id),
            other => Err(format!("{other:?}")),
        },
    )
}

fn event_time(e: &serde_json::Value) -> String {
    ["eventTime", "lastTimestamp", "firstTimestamp"]
        .iter()
        .find_map(|k| e[*k].as_str())
        .map(|t| {
            t.split('.')
                .next()
                .unwrap_or(t)
                .trim_end_matches('Z')
                .to_string()
                + "Z"
        })
        .expect("an Event time")
}

/// Deletes the StatefulSet while watching its pod, and returns when the app
/// container and the sidecar finished (RFC 3339), from the last status the
/// kubelet reported.
fn watch_stop_order(c: &Cluster, app: &App) -> (String, String) {
    use std::io::Read;
    let pod = app.pod();
    let mut watch = c
        .kubectl()
        .args([
            "-n",
            app.ns,
            "get",
            "pod",
            &pod,
            "-w",
            "-o",
            "json",
            "--output-watch-events",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let mut stdout = watch.stdout.take().expect("watch stdout");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = seen.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .expect("watch buffer")
                .extend_from_slice(&buf[..n]);
        }
    });
    let watch_says = |event: &str, limit: Duration| {
        c.wait(&format!("the watch's {event} event"), limit, || {
            let text = String::from_utf8_lossy(&seen.lock().expect("watch buffer")).into_owned();
            if text.contains(&format!("\"{event}\"")) {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        })
    };
    // Delete only once the watch has the pod, or it may start too late.
    watch_says("ADDED", Duration::from_secs(60));
    c.run(&[
        "-n",
        app.ns,
        "delete",
        "statefulset",
        app.set,
        "--wait=true",
        "--timeout=200s",
    ]);
    c.wait_gone(app.ns, &format!("pod/{pod}"), Duration::from_secs(200));
    // The watch may trail the get that found the pod gone: wait for its
    // DELETED event, which carries the final status.
    watch_says("DELETED", Duration::from_secs(30));
    let _ = watch.kill();
    let _ = watch.wait();
    let _ = reader.join();
    let bytes = seen.lock().expect("watch buffer").clone();
    let mut found = None;
    let mut states = Vec::new();
    for v in serde_json::Deserializer::from_slice(&bytes).into_iter::<serde_json::Value>() {
        let Ok(ev) = v else { break };
        let p = &ev["object"];
        states.push(lifeboat_tests::kube_cluster::describe_pod(p));
        let finished = |name: &str| {
            container_status(p, name)?["state"]["terminated"]["finishedAt"]
                .as_str()
                .map(str::to_string)
        };
        if let (Some(a), Some(s)) = (finished(app.container), finished("lifeboat")) {
            found = Some((a, s));
        }
    }
    found.unwrap_or_else(|| {
        panic!(
            "e2e {}: the watch never saw both containers terminated; it saw:\n{}",
            app.example,
            states.join("\n")
        )
    })
}

/// Every API request lifeboat's ServiceAccount made in this namespace is
/// allowed by the Role the project ships, and none was refused.
fn check_audit(c: &Cluster, app: &App) {
    let Some(log) = &c.audit_log else {
        eprintln!(
            "e2e {}: no audit log on this cluster; the Role check is skipped",
            app.example
        );
        return;
    };
    let rbac =
        std::fs::read_to_string(Cluster::repo_path("kustomize/base/rbac.yaml")).expect("rbac.yaml");
    let mut granted = std::collections::BTreeSet::new();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&rbac).expect("rbac yaml");
    for v in docs {
        if v["kind"] != "Role" {
            continue;
        }
        for rule in v["rules"].as_array().expect("rules") {
            for r in rule["resources"].as_array().expect("resources") {
                for verb in rule["verbs"].as_array().expect("verbs") {
                    granted.insert((
                        r.as_str().unwrap().to_string(),
                        verb.as_str().unwrap().to_string(),
                    ));
                }
            }
        }
    }
    let user = format!("system:serviceaccount:{}:lifeboat", app.ns);
    let mut used = std::collections::BTreeSet::new();
    let text = std::fs::read_to_string(log).expect("audit log");
    for line in text.lines() {
        // The API server is still writing: the last line may be partial.
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if e["user"]["username"] != user.as_str() || e["stage"] != "ResponseComplete" {
            continue;
        }
        let resource = e["objectRef"]["resource"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        let verb = e["verb"].as_str().unwrap_or("?").to_string();
        let code = e["responseStatus"]["code"].as_i64().unwrap_or(0);
        assert_ne!(
            code, 403,
            "e2e {}: refused: {verb} {resource}: {line}",
            app.example
        );
        let agent = e["userAgent"].as_str().unwrap_or_default();
        assert!(
            agent.starts_with("lifeboat/"),
            "e2e {}: a request without lifeboat's User-Agent ({agent:?}): {line}",
            app.example
        );
        assert!(
            granted.contains(&(resource.clone(), verb.clone())),
            "e2e {}: lifeboat used {verb} on {resource}, which the shipped Role does not grant",
            app.example
        );
        used.insert((resource, verb));
    }
    assert!(
        !used.is_empty(),
        "e2e {}: the audit log shows no request by {user}",
        app.example
    );
    let unused: Vec<_> = granted.difference(&used).collect();
    eprintln!(
        "e2e {}: API use {used:?}; granted and not used here: {unused:?}",
        app.example
    );
}

#[test]
fn postgres_example_on_a_real_cluster() {
    roundtrip(&App {
        example: "postgres",
        ns: "db",
        set: "postgres",
        container: "postgres",
        uid: 999,
        gid: 999,
        logical: false,
        drill: true,
        break_for_drill: Some(postgres_break),
        is_empty: postgres_is_empty,
        write: postgres_write,
        read: postgres_read,
    });
}

#[test]
fn jupyter_example_on_a_real_cluster() {
    roundtrip(&App {
        example: "jupyter",
        ns: "notebooks",
        set: "notebook",
        container: "notebook",
        uid: 1000,
        gid: 100,
        logical: false,
        drill: true,
        break_for_drill: None,
        is_empty: jupyter_is_empty,
        write: jupyter_write,
        read: jupyter_read,
    });
}

#[test]
fn couchdb_example_on_a_real_cluster() {
    roundtrip(&App {
        example: "couchdb",
        ns: "couchdb",
        set: "couchdb",
        container: "couchdb",
        uid: 5984,
        gid: 5984,
        logical: true,
        drill: false,
        break_for_drill: None,
        is_empty: couchdb_is_empty,
        write: couchdb_write,
        read: couchdb_read,
    });
}

#[test]
fn arangodb_example_on_a_real_cluster() {
    roundtrip(&App {
        example: "arangodb",
        ns: "arangodb",
        set: "arangodb",
        container: "arangodb",
        uid: 1000,
        gid: 1000,
        logical: true,
        drill: false,
        break_for_drill: None,
        is_empty: arangodb_is_empty,
        write: arangodb_write,
        read: arangodb_read,
    });
}
