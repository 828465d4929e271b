//! The sidecar's and the init container's Kubernetes API use, against
//! `FakeKubeApi`: an in-process FAKE of the few endpoints lifeboat calls
//! (get/patch/watch one pod, create Events, list ConfigMaps and Secrets in
//! pages), over real HTTP on 127.0.0.1. A fake can fail on demand in ways a
//! real API server will not (403s, dropped watches) and starts in
//! milliseconds; running the examples on a real cluster is a separate,
//! end-to-end matter (tests/e2e.rs, docs/ARCHITECTURE.md §9). The replies follow the
//! API's documented shapes: objects, `List` with `metadata.continue`,
//! `Status` on errors, and newline-delimited watch events on a chunked
//! stream.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lifeboat_tests::*;
use serde_json::{json, Value};

const NS: &str = "apps";
const POD: &str = "notebook-0";
const UID: &str = "6f1c0b7e-0000-4000-8000-000000000001";

#[derive(Default)]
struct State {
    annotations: BTreeMap<String, String>,
    version: u64,
    events: Vec<Value>,
    patches: Vec<Value>,
    configmaps: usize,
    secrets: usize,
    list_calls: usize,
    /// Answer 403 to these: "pods/get", "pods/patch", "pods/watch", "events".
    forbidden: Vec<&'static str>,
    /// The User-Agent of every request.
    user_agents: Vec<String>,
}

struct FakeKubeApi {
    state: Arc<Mutex<State>>,
    port: u16,
}

impl FakeKubeApi {
    fn start(state: State) -> FakeKubeApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(state));
        serve_connections(listener, state.clone(), serve);
        FakeKubeApi { state, port }
    }

    /// A kubeconfig pointing at the fake, as `kubectl` would use it.
    fn kubeconfig(&self, dir: &Path) -> String {
        let p = dir.join("kubeconfig");
        fs::write(
            &p,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
                 clusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{}\n\
                 users:\n- name: lifeboat\n  user:\n    token: fake-token\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: lifeboat\n    namespace: {NS}\n",
                self.port
            ),
        )
        .unwrap();
        p.display().to_string()
    }

    fn set_annotation(&self, k: &str, v: &str) {
        let mut s = self.state.lock().unwrap();
        s.annotations.insert(k.into(), v.into());
        s.version += 1;
    }
}

fn pod(s: &State) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": POD, "namespace": NS, "uid": UID,
            "resourceVersion": s.version.to_string(),
            "annotations": s.annotations,
        },
        "spec": { "containers": [{ "name": "app", "image": "app" }] },
    })
}

fn status(code: u16, reason: &str, message: &str) -> (u16, String) {
    let body = json!({ "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code });
    (code, body.to_string())
}

fn serve(conn: TcpStream, state: &Mutex<State>) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    // Keep-alive: kube reuses the connection for several requests.
    while let Some(req) = read_request(&mut r) {
        let (path, q) = (req.path.as_str(), &req.query);
        let mut w = conn.try_clone().unwrap();
        if req.header("authorization") != "Bearer fake-token" {
            let (c, b) = status(401, "Unauthorized", "Unauthorized");
            reply(&mut w, c, &b);
            continue;
        }
        state
            .lock()
            .unwrap()
            .user_agents
            .push(req.header("user-agent").to_string());
        if req.method == "GET"
            && path == format!("/api/v1/namespaces/{NS}/pods")
            && q.get("watch").map(String::as_str) == Some("true")
        {
            if state.lock().unwrap().forbidden.contains(&"pods/watch") {
                let (c, b) = status(
                    403,
                    "Forbidden",
                    "pods is forbidden: User \"system:serviceaccount:apps:default\" cannot watch resource \"pods\"",
                );
                reply(&mut w, c, &b);
                continue;
            }
            watch(
                w,
                state,
                q.get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            );
            return;
        }
        let (code, out) = handle(&mut state.lock().unwrap(), &req.method, path, q, &req.body);
        reply(&mut w, code, &out);
    }
}

fn reply(w: &mut TcpStream, code: u16, out: &str) {
    let head = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        out.len()
    );
    let _ = w.write_all(head.as_bytes());
    let _ = w.write_all(out.as_bytes());
}

/// A watch: one MODIFIED event per change of the pod, as chunks, until the
/// client goes away (or 60 s, as a server's timeout would).
fn watch(mut w: TcpStream, state: &Mutex<State>, mut seen: u64) {
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    if w.write_all(head.as_bytes()).is_err() {
        return;
    }
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        let ev = {
            let s = state.lock().unwrap();
            (s.version > seen).then(|| {
                seen = s.version;
                json!({ "type": "MODIFIED", "object": pod(&s) }).to_string() + "\n"
            })
        };
        if let Some(ev) = ev {
            let chunk = format!("{:x}\r\n{ev}\r\n", ev.len());
            if w.write_all(chunk.as_bytes()).is_err() {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = w.write_all(b"0\r\n\r\n");
}

fn handle(
    s: &mut State,
    method: &str,
    path: &str,
    q: &BTreeMap<String, String>,
    body: &[u8],
) -> (u16, String) {
    let pod_path = format!("/api/v1/namespaces/{NS}/pods/{POD}");
    let forbidden = |what: &str| {
        status(
            403,
            "Forbidden",
            &format!(
                "{what} is forbidden: User \"system:serviceaccount:{NS}:default\" cannot do it"
            ),
        )
    };
    match (method, path) {
        ("GET", p) if p == pod_path => {
            if s.forbidden.contains(&"pods/get") {
                return forbidden("pods \"notebook-0\"");
            }
            (200, pod(s).to_string())
        }
        ("PATCH", p) if p == pod_path => {
            if s.forbidden.contains(&"pods/patch") {
                return forbidden("pods \"notebook-0\"");
            }
            let patch: Value = serde_json::from_slice(body).unwrap();
            if let Some(a) = patch["metadata"]["annotations"].as_object() {
                for (k, v) in a {
                    s.annotations.insert(k.clone(), v.as_str().unwrap().into());
                }
            }
            s.version += 1;
            s.patches.push(patch);
            (200, pod(s).to_string())
        }
        ("POST", p) if p == format!("/api/v1/namespaces/{NS}/events") => {
            if s.forbidden.contains(&"events") {
                return forbidden("events");
            }
            let ev: Value = serde_json::from_slice(body).unwrap();
            s.events.push(ev.clone());
            (201, ev.to_string())
        }
        ("GET", p)
            if p == format!("/api/v1/namespaces/{NS}/configmaps")
                || p == format!("/api/v1/namespaces/{NS}/secrets") =>
        {
            s.list_calls += 1;
            let secrets = p.ends_with("secrets");
            let total = if secrets { s.secrets } else { s.configmaps };
            let limit: usize = q
                .get("limit")
                .and_then(|v| v.parse().ok())
                .unwrap_or(total.max(1));
            let from: usize = q.get("continue").and_then(|v| v.parse().ok()).unwrap_or(0);
            let to = (from + limit).min(total);
            let items: Vec<Value> = (from..to)
                .map(|i| {
                    let meta = json!({ "name": format!("obj-{i:03}"), "namespace": NS, "uid": format!("uid-{i}"),
                                       "resourceVersion": "7", "creationTimestamp": "2026-11-01T00:00:00Z",
                                       "managedFields": [{ "manager": "kubectl" }] });
                    if secrets {
                        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque",
                                "data": { "password": "c2VjcmV0LQ==" } })
                    } else {
                        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
                                "data": { "index": i.to_string(), "config.ini": format!("[main]\nline = {i}\n") } })
                    }
                })
                .collect();
            let cont = if to < total {
                to.to_string()
            } else {
                String::new()
            };
            let kind = if secrets {
                "SecretList"
            } else {
                "ConfigMapList"
            };
            (200, json!({ "apiVersion": "v1", "kind": kind, "metadata": { "resourceVersion": "9", "continue": cont }, "items": items }).to_string())
        }
        _ => status(
            404,
            "NotFound",
            &format!("{method} {path}: not served by this fake"),
        ),
    }
}

/// The environment a pod gives the sidecar (downward-API names, the API as a
/// kubeconfig) for `<tmp>/volume` backed up into `<tmp>/backup`.
impl FakeKubeApi {
    fn pod_env(&self, tmp: &Path) -> Vec<(&'static str, String)> {
        vec![
            ("KUBECONFIG", self.kubeconfig(tmp)),
            ("POD_NAME", POD.into()),
            ("POD_NAMESPACE", NS.into()),
            ("HOSTNAME", POD.into()),
            ("LIFEBOAT_PATHS", tmp.join("volume").display().to_string()),
            (
                "LIFEBOAT_TARGETS",
                format!("file://{}", tmp.join("backup").display()),
            ),
        ]
    }
}

#[test]
fn events_last_backup_annotation_and_exported_objects_against_fake_api() {
    let tmp = tempfile::tempdir().unwrap();
    let (vol, backup) = volume_and_backup(tmp.path());
    fs::write(vol.join("notes.ipynb"), noise(300_000, 1)).unwrap();
    let api = FakeKubeApi::start(State {
        configmaps: 45,
        secrets: 2,
        ..Default::default()
    });
    let mut env = api.pod_env(tmp.path());
    env.extend([
        ("LIFEBOAT_INCLUDE_KUBE", "configmaps,secrets".into()),
        ("LIFEBOAT_ALLOW_PLAINTEXT_SECRETS", "true".into()),
    ]);
    let out = run_ok(lifeboat("lifeboat-sidecar", &pairs(&env)).arg("backup-now"));
    let id = stdout(&out).trim().to_string();

    // The artifact holds every object, paged 20 at a time, without what the
    // server assigned; the manifest counts them.
    let art = artifacts(&backup.join(NS).join(POD)).pop().unwrap();
    let names = entry_names(&art);
    let cms: Vec<_> = names
        .iter()
        .filter(|n| n.starts_with("kubernetes/configmaps/"))
        .collect();
    assert_eq!(cms.len(), 45, "{names:?}");
    assert!(names.contains(&"kubernetes/secrets/obj-001.yaml".to_string()));
    assert_eq!(
        manifest_of(&art)["kubernetes"],
        json!({ "configmaps": 45, "secrets": 2 })
    );
    assert_eq!(
        api.state.lock().unwrap().list_calls,
        3 + 1,
        "45 configmaps in pages of 20, then secrets"
    );

    // Events and the annotation.
    {
        let s = api.state.lock().unwrap();
        assert_eq!(s.events.len(), 1, "{:?}", s.events);
        let ev = &s.events[0];
        assert_eq!(ev["reason"], "BackupSucceeded");
        assert_eq!(ev["type"], "Normal");
        assert_eq!(ev["involvedObject"]["uid"], UID);
        assert_eq!(ev["involvedObject"]["kind"], "Pod");
        assert!(ev["message"].as_str().unwrap().contains(&id));
        let last: Value = serde_json::from_str(&s.annotations["lifeboat.dev/last-backup"]).unwrap();
        assert_eq!(last["id"], id.as_str());
        assert!(last["finishedAt"].as_str().unwrap().ends_with('Z'));
    }

    // `restore --to` puts the objects where `tar -x` would, ready for
    // `kubectl apply -f`; a Secret stays owner-only.
    let out_dir = tmp.path().join("inspect");
    run_ok(
        lifeboat("lifeboat-sidecar", &pairs(&env))
            .args(["restore", "--to"])
            .arg(&out_dir),
    );
    let cm = fs::read_to_string(out_dir.join("kubernetes/configmaps/obj-007.yaml")).unwrap();
    assert!(
        cm.contains("kind: ConfigMap") && cm.contains("name: obj-007"),
        "{cm}"
    );
    assert!(cm.contains("line = 7"), "{cm}");
    for gone in [
        "uid:",
        "resourceVersion",
        "managedFields",
        "creationTimestamp",
    ] {
        assert!(!cm.contains(gone), "{gone} left in:\n{cm}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(out_dir.join("kubernetes/secrets/obj-000.yaml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The init container restores the files, not the objects, and says so
    // with a RestoreCompleted Event.
    fs::remove_dir_all(&vol).unwrap();
    fs::create_dir(&vol).unwrap();
    let out = run_ok(&mut lifeboat("lifeboat-restore", &pairs(&env)));
    assert!(
        !stderr(&out).contains("outside the configured paths"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        fs::read(vol.join("notes.ipynb")).unwrap(),
        noise(300_000, 1)
    );
    assert!(!tmp.path().join("kubernetes").exists());
    let s = api.state.lock().unwrap();
    assert_eq!(s.events.last().unwrap()["reason"], "RestoreCompleted");
    drop(s);

    // Without the plain-text allowance, Secrets go into encrypted artifacts.
    let key = tmp.path().join("age.txt");
    let made = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .expect("age-keygen (Debian package age)");
    assert!(made.status.success());
    let public = std::process::Command::new("age-keygen")
        .arg("-y")
        .arg(&key)
        .output()
        .unwrap();
    let public = String::from_utf8(public.stdout).unwrap().trim().to_string();
    env.retain(|(k, _)| *k != "LIFEBOAT_ALLOW_PLAINTEXT_SECRETS");
    env.push(("LIFEBOAT_AGE_RECIPIENTS", public));
    run_ok(lifeboat("lifeboat-sidecar", &pairs(&env)).arg("backup-now"));
    let sealed = artifacts(&backup.join(NS).join(POD)).pop().unwrap();
    assert!(
        sealed.to_string_lossy().ends_with(".tar.zst.age"),
        "{sealed:?}"
    );
    let m: serde_json::Value = serde_json::from_slice(
        &fs::read(
            sealed
                .to_string_lossy()
                .replace(".tar.zst.age", ".manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(m["encryption"], "age");
    assert_eq!(m["kubernetes"]["secrets"], 2);
}

#[test]
fn forbidden_api_costs_one_warning_and_no_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let (vol, backup) = volume_and_backup(tmp.path());
    fs::write(vol.join("a"), b"data").unwrap();

    // Events and the patch refused (a Role without them): warned, backup fine.
    let api = FakeKubeApi::start(State {
        forbidden: vec!["events", "pods/patch"],
        ..Default::default()
    });
    let env = api.pod_env(tmp.path());
    let out = run_ok(lifeboat("lifeboat-sidecar", &pairs(&env)).arg("backup-now"));
    let err = stderr(&out);
    assert_eq!(
        err.matches("posting Events is not allowed").count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("403 Forbidden") && err.contains("manifests/rbac.yaml"),
        "{err}"
    );
    assert_eq!(
        err.matches("patching lifeboat.dev/last-backup on the pod is not allowed")
            .count(),
        1,
        "{err}"
    );
    assert_eq!(artifacts(&backup.join(NS).join(POD)).len(), 1);

    // No right to read the pod at all: one warning at start, backup fine.
    let api = FakeKubeApi::start(State {
        forbidden: vec!["pods/get"],
        ..Default::default()
    });
    let mut env = api.pod_env(tmp.path());
    let out = run_ok(lifeboat("lifeboat-sidecar", &pairs(&env)).arg("backup-now"));
    let err = stderr(&out);
    assert_eq!(
        err.matches("cannot read this pod through the Kubernetes API")
            .count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("backups and restores are not affected"),
        "{err}"
    );
    assert_eq!(artifacts(&backup.join(NS).join(POD)).len(), 2);
    assert!(api.state.lock().unwrap().events.is_empty());

    // Asked to export objects without the API: the backup fails, saying why.
    env.push(("LIFEBOAT_INCLUDE_KUBE", "configmaps".into()));
    fails_with(
        lifeboat("lifeboat-sidecar", &pairs(&env)).arg("backup-now"),
        1,
        "LIFEBOAT_INCLUDE_KUBE is set but the Kubernetes API is not usable",
    );
    assert_eq!(artifacts(&backup.join(NS).join(POD)).len(), 2);

    // Secrets without the explicit allowance are a configuration error.
    let mut env = api.pod_env(tmp.path());
    env.push(("LIFEBOAT_INCLUDE_KUBE", "secrets".into()));
    fails_with(
        lifeboat("lifeboat-sidecar", &pairs(&env)).arg("backup-now"),
        64,
        "LIFEBOAT_ALLOW_PLAINTEXT_SECRETS=true",
    );
}

#[test]
fn annotations_come_through_the_api_when_the_file_is_not_mounted() {
    let tmp = tempfile::tempdir().unwrap();
    let (vol, backup) = volume_and_backup(tmp.path());
    fs::write(vol.join("a"), b"data").unwrap();
    let api = FakeKubeApi::start(State::default());
    // A schedule that will not fire during the test.
    api.set_annotation("lifeboat.dev/schedule", "0 0 1 1 *");
    let env = api.pod_env(tmp.path());
    let log = tmp.path().join("sidecar.log");
    let mut child = lifeboat("lifeboat-sidecar", &pairs(&env))
        .arg("run")
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let wait_for = |needle: &str| wait_for_log(&log, needle);
    let text = wait_for("lifeboat sidecar started");
    assert!(
        text.contains("following this pod's annotations through the API"),
        "{text}"
    );
    assert!(
        text.contains("0 0 1 1 *"),
        "the schedule annotation was not read from the API:\n{text}"
    );

    // `kubectl annotate pod notebook-0 lifeboat.dev/backup-now=…` starts a backup.
    api.set_annotation("lifeboat.dev/backup-now", "2026-11-23T10:00:00Z");
    wait_for("backup committed");
    // The sidecar's own last-backup patch must not count as a settings change.
    std::thread::sleep(Duration::from_secs(7));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let text = fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("annotations changed; settings reloaded")
            .count(),
        1,
        "{text}"
    );
    assert_eq!(artifacts(&backup.join(NS).join(POD)).len(), 1);
    assert!(api
        .state
        .lock()
        .unwrap()
        .annotations
        .contains_key("lifeboat.dev/last-backup"));
}

/// A Role with `get` but not `watch` on pods costs one warning, after which
/// the sidecar reads the pod every 30 s (it used to warn every 5 s, for
/// ever). Every request names lifeboat in its User-Agent.
#[test]
fn a_role_without_watch_costs_one_warning_and_requests_name_lifeboat() {
    let tmp = tempfile::tempdir().unwrap();
    let (vol, _backup) = volume_and_backup(tmp.path());
    fs::write(vol.join("a"), b"data").unwrap();
    let api = FakeKubeApi::start(State {
        forbidden: vec!["pods/watch"],
        ..Default::default()
    });
    api.set_annotation("lifeboat.dev/schedule", "0 0 1 1 *");
    let env = api.pod_env(tmp.path());
    let log = tmp.path().join("sidecar.log");
    let mut child = lifeboat("lifeboat-sidecar", &pairs(&env))
        .arg("run")
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_log(&log, "reading its annotations every 30s instead");
    // Two of the old 5 s retries.
    std::thread::sleep(Duration::from_secs(11));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let text = fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("watching this pod is not allowed").count(),
        1,
        "{text}"
    );
    assert!(
        text.contains("the Role lifeboat ships (kustomize/base/rbac.yaml, manifests/rbac.yaml) grants watch on pods"),
        "{text}"
    );
    let agents = api.state.lock().unwrap().user_agents.clone();
    assert!(!agents.is_empty());
    let version = env!("CARGO_PKG_VERSION");
    for a in &agents {
        assert!(
            a.starts_with(&format!("lifeboat/{version} (")),
            "User-Agent {a:?}"
        );
    }
}

/// Restore's Events say what a person must know: a `RestoreCompleted` that
/// names the newer artifact skipped as bad, and a `RestoreFailed` Warning
/// when the restore stops (here: the backup folder is not mounted).
#[test]
fn restore_events_name_skipped_artifacts_and_failures_against_fake_api() {
    let tmp = tempfile::tempdir().unwrap();
    let (vol, backup) = volume_and_backup(tmp.path());
    let api = FakeKubeApi::start(State::default());
    let env = api.pod_env(tmp.path());
    fs::write(vol.join("v"), "older").unwrap();
    run_ok(lifeboat("lifeboat-sidecar", &pairs(&env)).arg("backup-now"));
    fs::write(vol.join("v"), "newer").unwrap();
    let out = run_ok(lifeboat("lifeboat-sidecar", &pairs(&env)).arg("backup-now"));
    let newer = stdout(&out).trim().to_string();
    let art = artifacts(&backup.join(NS).join(POD))
        .into_iter()
        .find(|p| p.to_str().unwrap().contains(&newer))
        .unwrap();
    let mut bytes = fs::read(&art).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    fs::write(&art, bytes).unwrap();
    fs::remove_dir_all(&vol).unwrap();
    run_ok(&mut lifeboat("lifeboat-restore", &pairs(&env)));
    assert_eq!(fs::read_to_string(vol.join("v")).unwrap(), "older");
    {
        let s = api.state.lock().unwrap();
        let ev = s.events.last().unwrap();
        assert_eq!(ev["reason"], "RestoreCompleted", "{ev}");
        let msg = ev["message"].as_str().unwrap();
        assert!(
            msg.contains("skipped as bad") && msg.contains(&newer),
            "{msg}"
        );
    }

    let missing = with_env(
        &env,
        &[(
            "LIFEBOAT_TARGETS",
            format!("file://{}", tmp.path().join("not-mounted").display()),
        )],
    );
    fs::remove_dir_all(&vol).unwrap();
    fails_with(
        &mut lifeboat("lifeboat-restore", &pairs(&missing)),
        1,
        "is the backup volume mounted",
    );
    let s = api.state.lock().unwrap();
    let ev = s.events.last().unwrap();
    assert_eq!(ev["reason"], "RestoreFailed", "{ev}");
    assert_eq!(ev["type"], "Warning", "{ev}");
    assert!(
        ev["message"].as_str().unwrap().contains("restore failed"),
        "{ev}"
    );
}

/// `lifeboat-sidecar backup-now` run by hand (no sidecar listening, no
/// downward-API file) obeys the pod's annotations read through the API, as
/// the running sidecar does: here `lifeboat.dev/retention`.
#[test]
fn a_one_off_backup_now_obeys_the_pods_annotations_from_the_api() {
    let tmp = tempfile::tempdir().unwrap();
    let (vol, backup) = volume_and_backup(tmp.path());
    fs::write(vol.join("a"), b"data").unwrap();
    let api = FakeKubeApi::start(State::default());
    api.set_annotation("lifeboat.dev/retention", "last=1");
    let env = api.pod_env(tmp.path());
    for _ in 0..3 {
        run_ok(lifeboat("lifeboat-sidecar", &pairs(&env)).arg("backup-now"));
    }
    assert_eq!(
        artifacts(&backup.join(NS).join(POD)).len(),
        1,
        "retention last=1 from the pod's annotation was not applied"
    );
}

/// A `lifeboat.dev/backup-now` change is served even while another
/// `lifeboat.dev/*` annotation is invalid: the bad one is logged once with
/// its value, the backup runs with the settings in force.
#[test]
fn backup_now_annotation_is_served_while_another_annotation_is_invalid() {
    let tmp = tempfile::tempdir().unwrap();
    let (vol, backup) = volume_and_backup(tmp.path());
    fs::write(vol.join("a"), b"data").unwrap();
    let ann = tmp.path().join("annotations");
    fs::write(&ann, "lifeboat.dev/schedule=\"0 0 1 1 *\"\n").unwrap();
    let env = [
        ("HOSTNAME", POD.to_string()),
        ("POD_NAMESPACE", NS.to_string()),
        ("LIFEBOAT_PATHS", vol.display().to_string()),
        ("LIFEBOAT_TARGETS", format!("file://{}", backup.display())),
        ("LIFEBOAT_ANNOTATIONS_FILE", ann.display().to_string()),
    ];
    let log = tmp.path().join("sidecar.log");
    let mut child = lifeboat("lifeboat-sidecar", &pairs(&env))
        .arg("run")
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let wait_for = |needle: &str| wait_for_log(&log, needle);
    wait_for("next scheduled backup");
    fs::write(
        &ann,
        "lifeboat.dev/schedule=\"0 0 1 1 *\"\nlifeboat.dev/retention=\"keep everything\"\n\
         lifeboat.dev/backup-now=\"2026-12-01T10:00\"\n",
    )
    .unwrap();
    let text = wait_for("backup committed");
    assert!(
        text.contains("annotation lifeboat.dev/retention=\"keep everything\""),
        "the rejected annotation must be named with its value:\n{text}"
    );
    // The same request is not served twice on later polls.
    std::thread::sleep(Duration::from_secs(7));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let text = fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("backup committed").count(), 1, "{text}");
    assert_eq!(
        text.matches("annotation change rejected").count(),
        1,
        "{text}"
    );
    assert_eq!(artifacts(&backup.join(NS).join(POD)).len(), 1);
}
