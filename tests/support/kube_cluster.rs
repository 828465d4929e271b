//! A real Kubernetes cluster for `tests/e2e.rs`, driven with `kubectl` as a
//! user drives it.
//!
//! `tests/e2e/run.sh` starts one (or takes an existing one from KUBECONFIG),
//! loads the images and then runs the e2e tests with
//! `LIFEBOAT_E2E_KUBECONFIG` set. Without that setting the tests say they
//! were skipped and pass: `cargo test --workspace` alone never needs a
//! cluster; run.sh is where a missing cluster fails CI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Set by run.sh: the admin kubeconfig of the cluster under test.
pub const KUBECONFIG_SETTING: &str = "LIFEBOAT_E2E_KUBECONFIG";
/// Set by run.sh when it started the cluster itself: where hostPath
/// PersistentVolumes live. Unset on an existing cluster, whose default
/// StorageClass provisions the claims.
pub const HOSTPATH_SETTING: &str = "LIFEBOAT_E2E_HOSTPATH";
/// Set by run.sh when it started the cluster: the API server's audit log.
pub const AUDIT_SETTING: &str = "LIFEBOAT_E2E_AUDIT_LOG";

pub struct Cluster {
    kubeconfig: PathBuf,
    hostpath: Option<PathBuf>,
    pub audit_log: Option<PathBuf>,
}

impl Cluster {
    /// The cluster run.sh prepared, or `None` after saying why the test is
    /// skipped.
    pub fn from_env(test: &str) -> Option<Cluster> {
        let Some(kubeconfig) = std::env::var_os(KUBECONFIG_SETTING) else {
            eprintln!(
                "SKIPPED {test}: {KUBECONFIG_SETTING} is not set; run `bash tests/e2e/run.sh` \
                 (with LIFEBOAT_E2E_K8S=<folder of Kubernetes binaries> or KUBECONFIG=<a cluster>)"
            );
            return None;
        };
        Some(Cluster {
            kubeconfig: kubeconfig.into(),
            hostpath: std::env::var_os(HOSTPATH_SETTING).map(PathBuf::from),
            audit_log: std::env::var_os(AUDIT_SETTING).map(PathBuf::from),
        })
    }

    pub fn kubectl(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// `kubectl ARGS`, which must succeed; its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "kubectl {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl ARGS` with a request timeout, so a stuck API server fails
    /// the test instead of hanging it.
    pub fn output(&self, args: &[&str]) -> Output {
        self.kubectl()
            .arg("--request-timeout=120s")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run kubectl {}: {e}", args.join(" ")))
    }

    /// `kubectl -n NS get KIND/NAME -o json`, parsed; `Ok(None)` when it
    /// does not exist, `Err` on any other failure (for polling loops to
    /// retry: an API server under load times out now and then).
    pub fn try_get(&self, ns: &str, what: &str) -> Result<Option<serde_json::Value>, String> {
        let out = self.output(&["-n", ns, "get", what, "-o", "json"]);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            return if err.contains("NotFound") {
                Ok(None)
            } else {
                Err(format!("kubectl get {what}: {err}"))
            };
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| format!("kubectl get {what} -o json: {e}"))
    }

    /// [`Cluster::try_get`] that must not fail.
    pub fn get(&self, ns: &str, what: &str) -> Option<serde_json::Value> {
        self.try_get(ns, what).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Polls `check` every second until it returns `Some`, or fails the
    /// test after `limit` naming `what` and the last state seen.
    pub fn wait<T>(
        &self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut() -> Result<T, String>,
    ) -> T {
        let start = Instant::now();
        loop {
            match check() {
                Ok(v) => return v,
                Err(last) if start.elapsed() > limit => {
                    panic!("timed out after {limit:?} waiting for {what}; last seen: {last}")
                }
                Err(_) => std::thread::sleep(Duration::from_secs(1)),
            }
        }
    }

    /// Waits until the pod is Ready; returns it.
    pub fn wait_ready(&self, ns: &str, pod: &str, limit: Duration) -> serde_json::Value {
        self.wait(&format!("pod {ns}/{pod} to be Ready"), limit, || {
            let Some(p) = self.try_get(ns, &format!("pod/{pod}"))? else {
                return Err("no pod yet".into());
            };
            if condition(&p, "Ready") == Some("True") {
                Ok(p)
            } else {
                Err(describe_pod(&p))
            }
        })
    }

    /// Waits until the pod is gone.
    pub fn wait_gone(&self, ns: &str, what: &str, limit: Duration) {
        self.wait(
            &format!("{ns}/{what} to be deleted"),
            limit,
            || match self.try_get(ns, what)? {
                None => Ok(()),
                Some(_) => Err("still there".into()),
            },
        )
    }

    /// Makes the PersistentVolume a claim binds to on a cluster run.sh
    /// started (hostPath, pre-bound by claimRef, owned by `uid:gid` with the
    /// setgid bit as fsGroup would leave it). On an existing cluster the
    /// default StorageClass does this and nothing happens here. A volume of
    /// the same name is deleted first, with its data, so a claim made again
    /// starts empty as a new disk would.
    pub fn provide_volume(&self, ns: &str, claim: &str, uid: u32, gid: u32) {
        let Some(base) = &self.hostpath else { return };
        let name = format!("e2e-{ns}-{claim}");
        let dir = base.join(&name);
        self.run(&[
            "delete",
            "pv",
            &name,
            "--wait=true",
            "--timeout=120s",
            "--ignore-not-found",
        ]);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("removing the old volume {}: {e}", dir.display()),
        }
        std::fs::create_dir_all(&dir).expect("hostPath folder");
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown hostPath");
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o2775))
            .expect("chmod hostPath");
        let pv = serde_json::json!({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {"lifeboat-e2e": "true"}},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "claimRef": {"namespace": ns, "name": claim},
                "hostPath": {"path": dir, "type": "Directory"},
            }
        });
        self.apply_json(&pv);
    }

    pub fn apply_json(&self, obj: &serde_json::Value) {
        use std::io::Write;
        let mut child = self
            .kubectl()
            .args(["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kubectl apply");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(obj.to_string().as_bytes())
            .expect("write to kubectl");
        let out = child.wait_with_output().expect("kubectl apply");
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl -n NS exec POD -c CONTAINER -- ARGS`; its output, which
    /// must be a success.
    pub fn exec(&self, ns: &str, pod: &str, container: &str, args: &[&str]) -> String {
        let mut all = vec!["-n", ns, "exec", pod, "-c", container, "--"];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// Events of `reason` on the object `name`.
    pub fn events(&self, ns: &str, name: &str, reason: &str) -> Vec<serde_json::Value> {
        let selector = format!("involvedObject.name={name},reason={reason}");
        let list: serde_json::Value = serde_json::from_str(&self.run(&[
            "-n",
            ns,
            "get",
            "events",
            "--field-selector",
            &selector,
            "-o",
            "json",
        ]))
        .expect("events json");
        list["items"].as_array().cloned().unwrap_or_default()
    }

    pub fn repo_path(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
    }
}

/// The status of a pod condition (`Ready`, `Initialized`, …).
pub fn condition<'a>(pod: &'a serde_json::Value, kind: &str) -> Option<&'a str> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)?["status"]
        .as_str()
}

/// The time a pod condition last changed.
pub fn condition_time<'a>(pod: &'a serde_json::Value, kind: &str) -> Option<&'a str> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)?["lastTransitionTime"]
        .as_str()
}

/// One line on what the pod's containers are doing, for timeout messages.
pub fn describe_pod(p: &serde_json::Value) -> String {
    let mut parts = vec![format!("phase {}", p["status"]["phase"])];
    for key in ["initContainerStatuses", "containerStatuses"] {
        for c in p["status"][key].as_array().into_iter().flatten() {
            parts.push(format!(
                "{}: {} ready={}",
                c["name"], c["state"], c["ready"]
            ));
        }
    }
    parts.join("; ")
}

/// The status of one container (init or app) by name.
pub fn container_status<'a>(p: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    ["initContainerStatuses", "containerStatuses"]
        .iter()
        .flat_map(|k| p["status"][*k].as_array().into_iter().flatten())
        .find(|c| c["name"] == name)
}
