//! The pod's own Kubernetes API, all of it optional: Events on the pod
//! (`BackupSucceeded`, `BackupFailed`, `RestoreCompleted`), the
//! `lifeboat.dev/last-backup` annotation, the pod's annotations when the
//! downward-API file is not mounted, and the namespace's ConfigMaps and
//! Secrets exported into the artifact (`LIFEBOAT_INCLUDE_KUBE`).
//!
//! The pod is only ever read and patched as metadata (`api::METADATA_ONLY`
//! asks the API server for a `PartialObjectMetadata`): lifeboat needs its
//! uid and annotations, and whole Pods (spec, status) would cost every
//! watch event. The calls are plain REST with JSON values (`api.rs`), not a
//! general Kubernetes client (README, "Binary size").
//!
//! Without `POD_NAME`/`POD_NAMESPACE`, an API server or RBAC, lifeboat backs
//! up and restores the same and says so once; only an explicit
//! `LIFEBOAT_INCLUDE_KUBE` makes the API a requirement.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Map, Value};
use tokio::sync::{watch, OnceCell};
use tracing::{debug, info, warn};

use crate::annotations::PREFIX;
use crate::error::{Error, Result};

use crate::annotations::LAST_BACKUP;
use crate::artifact::KUBE_TAR_DIR;

mod api;
mod connection;
mod yaml;

use api::{query_value, Api, ApiError, METADATA_ONLY};
/// Objects per list request while exporting, so memory stays bounded by a
/// page (each object is at most 1 MiB) however many the namespace holds.
pub const EXPORT_PAGE: u32 = 20;
/// A call that takes longer is treated as "no API" (start) or failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before watching the pod again after the watch broke.
const REWATCH_PAUSE: Duration = Duration::from_secs(5);
/// How often the pod is read when the Role allows `get` but not `watch`.
const POLL_EVERY: Duration = Duration::from_secs(30);
/// How long the API server keeps one watch of the pod open.
const WATCH_SECONDS: u64 = 290;

/// Which call of [`Cluster::follow`] failed.
#[derive(Debug, Clone, Copy)]
enum Step {
    Get,
    Watch,
}

use crate::config::Exported;

/// Which Event to post.
#[derive(Debug, Clone, Copy)]
pub enum Reason {
    BackupSucceeded,
    BackupFailed,
    RestoreCompleted,
    /// The init container stopped: the app does not start until a person acts
    /// or a retry succeeds.
    RestoreFailed,
    /// A restore drill's check did not pass on an artifact.
    DrillFailed,
    /// The WAL archive's replication slot was dropped with WAL never
    /// archived: point-in-time restores have a gap until the next base.
    WalSlotDropped,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::BackupSucceeded => "BackupSucceeded",
            Reason::BackupFailed => "BackupFailed",
            Reason::RestoreCompleted => "RestoreCompleted",
            Reason::RestoreFailed => "RestoreFailed",
            Reason::DrillFailed => "DrillFailed",
            Reason::WalSlotDropped => "WalSlotDropped",
        }
    }
    fn event_type(self) -> &'static str {
        match self {
            Reason::BackupFailed
            | Reason::RestoreFailed
            | Reason::DrillFailed
            | Reason::WalSlotDropped => "Warning",
            _ => "Normal",
        }
    }
}

pub struct Cluster {
    api: Api,
    namespace: String,
    pod: String,
    uid: Option<String>,
    /// The pod's `lifeboat.dev/*` annotations when we connected.
    annotations: BTreeMap<String, String>,
    /// Set after a 403, so a missing right costs one warning, not one per backup.
    events_forbidden: AtomicBool,
    patch_forbidden: AtomicBool,
    handle: tokio::runtime::Handle,
    component: &'static str,
}

static CLUSTER: OnceCell<Option<Arc<Cluster>>> = OnceCell::const_new();

/// The API for this process, connected on first use; `None` when there is
/// none (logged once, at that first use).
pub async fn get(component: &'static str) -> Option<Arc<Cluster>> {
    CLUSTER
        .get_or_init(|| async { connect(component).await.map(Arc::new) })
        .await
        .clone()
}

/// The settings' raw inputs for this process: the environment, and the
/// pod's annotations from the downward-API file or, when it is not mounted,
/// from the API. Every command reads settings this way, so a one-off
/// `backup-now` or `restore --to` obeys the same annotations as the
/// running sidecar.
pub async fn pod_inputs(component: &'static str) -> crate::config::Inputs {
    let mut inputs = crate::config::Inputs::from_process();
    if !inputs.annotations_file().exists() {
        if let Some(c) = get(component).await {
            inputs.set_annotations(c.annotations.clone());
        }
    }
    inputs
}

async fn connect(component: &'static str) -> Option<Cluster> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (Some(pod), Some(namespace)) = (env("POD_NAME"), env("POD_NAMESPACE")) else {
        debug!("POD_NAME or POD_NAMESPACE not set: no Kubernetes Events or annotations");
        return None;
    };
    let off = "no Events and no lifeboat.dev/last-backup annotation; backups and restores are not affected";
    // One crypto backend (ring) for every TLS client in the binary. Ours
    // and the S3 client's name it; installing it as the process default
    // covers reqwest's should another backend ever be linked in beside it;
    // an Err only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = match client(component) {
        Ok(c) => c,
        Err(e) => {
            warn!("no Kubernetes API configuration ({e}): {off}");
            return None;
        }
    };
    let path = pod_path(&namespace, &pod);
    let found = match tokio::time::timeout(CALL_TIMEOUT, api.get(&path, METADATA_ONLY)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            warn!(pod = %pod, namespace = %namespace, "cannot read this pod through the Kubernetes API ({}): {off}", describe_forbidden(&e, "get on pods", true));
            return None;
        }
        Err(_) => {
            warn!(pod = %pod, "the Kubernetes API did not answer within {}s: {off}", CALL_TIMEOUT.as_secs());
            return None;
        }
    };
    debug!(pod = %pod, namespace = %namespace, "Kubernetes API available");
    let uid = found["metadata"]["uid"].as_str().map(String::from);
    Some(Cluster {
        api,
        uid,
        annotations: ours(&found),
        namespace,
        pod,
        events_forbidden: AtomicBool::new(false),
        patch_forbidden: AtomicBool::new(false),
        handle: tokio::runtime::Handle::current(),
        component,
    })
}

/// A client from the pod's service account (or KUBECONFIG), whose requests
/// name lifeboat in their User-Agent, so an API server's audit log and
/// rate limits tell them apart from the app's.
fn client(component: &'static str) -> std::result::Result<Api, String> {
    let connection = connection::infer()?;
    let agent = format!("lifeboat/{} ({component})", env!("CARGO_PKG_VERSION"));
    Ok(Api::new(connection, agent, CALL_TIMEOUT))
}

fn pod_path(namespace: &str, pod: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{pod}")
}

/// A kube error as one line. A 403 says which right is missing and whether
/// the Role lifeboat ships grants it (`what`: "get on pods"; `shipped`: the
/// Role in manifests/rbac.yaml has it).
fn describe_forbidden(e: &ApiError, what: &str, shipped: bool) -> String {
    match e {
        ApiError::Status { code: 403, message, .. } if shipped => format!(
            "403 Forbidden: {message}; the Role lifeboat ships (kustomize/base/rbac.yaml, manifests/rbac.yaml) grants {what}: the Role in this namespace lacks it, or is not bound to this pod's ServiceAccount",
        ),
        ApiError::Status { code: 403, message, .. } => format!(
            "403 Forbidden: {message}; add {what} to the Role (manifests/rbac.yaml does not grant it)",
        ),
        other => other.to_string(),
    }
}

/// The `lifeboat.dev/*` annotations of an object (only they matter to
/// settings).
fn ours(object: &Value) -> BTreeMap<String, String> {
    let Some(all) = object["metadata"]["annotations"].as_object() else {
        return BTreeMap::new();
    };
    all.iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

/// The longest Event message we post (the API caps them at 1 KiB).
pub const EVENT_MAX: usize = 1000;

impl Cluster {
    /// Posts an Event on the pod. Failures are logged, never returned: an
    /// Event is a courtesy, the backup's result does not depend on it.
    pub async fn event(&self, reason: Reason, message: &str) {
        if self.events_forbidden.load(Ordering::Relaxed) {
            return;
        }
        let now = Utc::now();
        // The API caps messages at 1 KiB; cut on a character boundary.
        let mut message = message.to_string();
        if message.len() > EVENT_MAX {
            let mut cut = EVENT_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let stamp = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": format!("{}.{:x}", self.pod, now.timestamp_nanos_opt().unwrap_or_default()),
                "namespace": self.namespace,
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": self.pod,
                "namespace": self.namespace,
                "uid": self.uid,
            },
            "reason": reason.as_str(),
            "message": message,
            "type": reason.event_type(),
            "count": 1,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "source": { "component": self.component },
            "reportingComponent": format!("lifeboat.dev/{}", self.component),
            "reportingInstance": self.pod,
        });
        let path = format!("/api/v1/namespaces/{}/events", self.namespace);
        match tokio::time::timeout(CALL_TIMEOUT, self.api.create(&path, &body)).await {
            Ok(Ok(_)) => debug!(reason = reason.as_str(), "Event posted"),
            Ok(Err(e)) if e.is_forbidden() => {
                self.events_forbidden.store(true, Ordering::Relaxed);
                warn!(
                    "posting Events is not allowed ({}); not trying again",
                    describe_forbidden(&e, "create on events", true)
                );
            }
            Ok(Err(e)) => warn!(reason = reason.as_str(), "posting the Event failed: {}", e),
            Err(_) => warn!(reason = reason.as_str(), "posting the Event timed out"),
        }
    }

    /// Records the newest committed backup on the pod, for `kubectl get pod
    /// -o yaml` and dashboards: `{"id": …, "finishedAt": …}`.
    pub async fn patch_last_backup(&self, id: &str, finished_at: chrono::DateTime<Utc>) {
        if self.patch_forbidden.load(Ordering::Relaxed) {
            return;
        }
        let value = serde_json::json!({
            "id": id,
            "finishedAt": finished_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
        .to_string();
        let patch = serde_json::json!({ "metadata": { "annotations": { LAST_BACKUP: value } } });
        let path = pod_path(&self.namespace, &self.pod);
        let call = self.api.merge_patch(&path, METADATA_ONLY, &patch);
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(_)) => debug!(annotation = LAST_BACKUP, "pod annotated"),
            Ok(Err(e)) if e.is_forbidden() => {
                self.patch_forbidden.store(true, Ordering::Relaxed);
                warn!(
                    "patching {LAST_BACKUP} on the pod is not allowed ({}); not trying again",
                    describe_forbidden(&e, "patch on pods", true)
                );
            }
            Ok(Err(e)) => warn!("patching {LAST_BACKUP} failed: {}", e),
            Err(_) => warn!("patching {LAST_BACKUP} timed out"),
        }
    }

    /// The pod's `lifeboat.dev/*` annotations, kept current by a watch: for
    /// pods without the downward-API file. The watch reconnects on its own.
    /// A Role without `watch` costs one warning, then the pod is read every
    /// [`POLL_EVERY`] instead; a refused `get` is warned about once and tried
    /// again at that pace.
    pub fn watch_annotations(self: &Arc<Self>) -> watch::Receiver<BTreeMap<String, String>> {
        let (tx, rx) = watch::channel(self.annotations.clone());
        let me = self.clone();
        tokio::spawn(async move {
            let mut can_watch = true;
            let mut get_refused = false;
            loop {
                match me.follow(&tx, can_watch).await {
                    Ok(()) => get_refused = false,
                    Err((Step::Watch, e)) if e.is_forbidden() => {
                        warn!(
                            "watching this pod is not allowed ({}); reading its annotations every {}s instead",
                            describe_forbidden(&e, "watch on pods", true),
                            POLL_EVERY.as_secs()
                        );
                        can_watch = false;
                    }
                    Err((Step::Get, e)) if e.is_forbidden() => {
                        // Perhaps the Role is being re-applied: keep trying,
                        // slowly, and say it once.
                        if can_watch || !get_refused {
                            warn!(
                                "reading this pod is not allowed ({}); trying again every {}s",
                                describe_forbidden(&e, "get on pods", true),
                                POLL_EVERY.as_secs()
                            );
                        }
                        get_refused = true;
                        can_watch = false;
                    }
                    Err((_, e)) => warn!(
                        "following this pod's annotations failed ({}); retrying in {}s",
                        e,
                        if can_watch { REWATCH_PAUSE } else { POLL_EVERY }.as_secs()
                    ),
                }
                if tx.is_closed() {
                    return;
                }
                let pause = if can_watch { REWATCH_PAUSE } else { POLL_EVERY };
                tokio::time::sleep(pause).await;
            }
        });
        rx
    }

    /// One get, then (with `watch`) a watch until the server ends it.
    async fn follow(
        &self,
        tx: &watch::Sender<BTreeMap<String, String>>,
        watch: bool,
    ) -> std::result::Result<(), (Step, ApiError)> {
        let path = pod_path(&self.namespace, &self.pod);
        let timed_out = |step| {
            let what = format!("no answer within {}s", CALL_TIMEOUT.as_secs());
            (step, ApiError::Other(what))
        };
        let pod = tokio::time::timeout(CALL_TIMEOUT, self.api.get(&path, METADATA_ONLY))
            .await
            .map_err(|_| timed_out(Step::Get))?
            .map_err(|e| (Step::Get, e))?;
        let version = pod["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        tx.send_if_modified(|cur| replace(cur, &pod));
        if !watch {
            return Ok(());
        }
        let path = format!(
            "/api/v1/namespaces/{}/pods?watch=true&timeoutSeconds={WATCH_SECONDS}&allowWatchBookmarks=true&fieldSelector={}&resourceVersion={}",
            self.namespace,
            query_value(&format!("metadata.name={}", self.pod)),
            query_value(&version),
        );
        let watch_err = |e| (Step::Watch, e);
        // The server ends the watch after WATCH_SECONDS; one that goes
        // silent past that (a dead connection) is given up on.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(WATCH_SECONDS + 30);
        let mut events = tokio::time::timeout(CALL_TIMEOUT, self.api.watch(&path, METADATA_ONLY))
            .await
            .map_err(|_| timed_out(Step::Watch))?
            .map_err(watch_err)?;
        loop {
            let next = tokio::time::timeout_at(deadline, events.next()).await;
            let Ok(next) = next else {
                return Ok(());
            };
            let Some(ev) = next.map_err(watch_err)? else {
                return Ok(());
            };
            match ev["type"].as_str().unwrap_or_default() {
                "ADDED" | "MODIFIED" => {
                    tx.send_if_modified(|cur| replace(cur, &ev["object"]));
                }
                // 410 Gone and the like: start again from a fresh get.
                "ERROR" => {
                    let s = &ev["object"];
                    return Err((
                        Step::Watch,
                        ApiError::Status {
                            code: s["code"].as_u64().unwrap_or(500) as u16,
                            reason: s["reason"].as_str().unwrap_or_default().to_string(),
                            message: s["message"].as_str().unwrap_or_default().to_string(),
                        },
                    ));
                }
                _ => {}
            }
        }
    }

    /// Writes the namespace's objects of `kinds` into the artifact as YAML,
    /// a page at a time. Runs on the backup's blocking thread. Returns how
    /// many of each kind went in, and their bytes (restore checks the total).
    pub fn export_into<W: std::io::Write>(
        &self,
        kinds: &[Exported],
        tar: &mut tar::Builder<W>,
    ) -> Result<(BTreeMap<String, u64>, u64)> {
        let mut counts = BTreeMap::new();
        let mut bytes = 0u64;
        for &kind in kinds {
            let (n, b) = self.export_kind(kind, tar)?;
            info!(
                kind = kind.as_str(),
                objects = n,
                "Kubernetes objects added to the artifact"
            );
            counts.insert(kind.as_str().to_string(), n);
            bytes += b;
        }
        Ok((counts, bytes))
    }

    fn export_kind<W: std::io::Write>(
        &self,
        kind: Exported,
        tar: &mut tar::Builder<W>,
    ) -> Result<(u64, u64)> {
        let (resource, kind_name) = match kind {
            Exported::ConfigMaps => ("configmaps", "ConfigMap"),
            Exported::Secrets => ("secrets", "Secret"),
        };
        let what = format!("listing {} in {}", kind.as_str(), self.namespace);
        let mut token: Option<String> = None;
        let (mut n, mut bytes) = (0u64, 0u64);
        let mtime = Utc::now().timestamp().max(0) as u64;
        loop {
            let mut path = format!(
                "/api/v1/namespaces/{}/{resource}?limit={EXPORT_PAGE}",
                self.namespace
            );
            if let Some(t) = &token {
                path.push_str(&format!("&continue={}", query_value(t)));
            }
            let mut page = self
                .handle
                .block_on(tokio::time::timeout(
                    CALL_TIMEOUT * 3,
                    self.api.get(&path, "application/json"),
                ))
                .map_err(|_| Error::Kube(format!("{what}: timed out")))?
                .map_err(|e| {
                    let right = format!("list on {}", kind.as_str());
                    Error::Kube(format!("{what}: {}", describe_forbidden(&e, &right, false)))
                })?;
            let items = match page["items"].take() {
                Value::Array(items) => items,
                Value::Null => Vec::new(),
                _ => return Err(Error::Kube(format!("{what}: unexpected reply: no items"))),
            };
            for obj in items {
                let Value::Object(obj) = obj else {
                    return Err(Error::Kube(format!(
                        "{what}: unexpected reply: an item is not an object"
                    )));
                };
                let name = obj
                    .get("metadata")
                    .and_then(|m| m["name"].as_str())
                    .unwrap_or_default()
                    .to_string();
                let yaml = to_yaml(kind_name, obj);
                let path = format!(
                    "{KUBE_TAR_DIR}/{}/{}.yaml",
                    kind.as_str(),
                    crate::artifact::safe_file_name(&name)
                );
                let mut h = tar::Header::new_gnu();
                h.set_size(yaml.len() as u64);
                // Secrets stay readable by the owner only, also once extracted.
                h.set_mode(if kind == Exported::Secrets {
                    0o600
                } else {
                    0o644
                });
                h.set_mtime(mtime);
                h.set_entry_type(tar::EntryType::Regular);
                tar.append_data(&mut h, &path, yaml.as_bytes())
                    .map_err(|e| Error::io(format!("writing {path} into the artifact"), e))?;
                n += 1;
                bytes += yaml.len() as u64;
            }
            token = page["metadata"]["continue"]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(String::from);
            if token.is_none() {
                return Ok((n, bytes));
            }
        }
    }
}

/// What the server assigned and `kubectl apply -f` must not get back.
const ASSIGNED: [&str; 7] = [
    "uid",
    "resourceVersion",
    "managedFields",
    "creationTimestamp",
    "generation",
    "selfLink",
    "ownerReferences",
];

/// An object of a list (whose items carry no `apiVersion` and `kind`) as
/// `kubectl apply -f` takes it back.
fn to_yaml(kind: &str, mut obj: Map<String, Value>) -> String {
    obj.insert("apiVersion".into(), Value::from("v1"));
    obj.insert("kind".into(), Value::from(kind));
    if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
        for k in ASSIGNED {
            meta.remove(k);
        }
    }
    yaml::to_yaml(&obj)
}

/// Puts the pod's `lifeboat.dev/*` annotations into `cur`; whether they changed.
fn replace(cur: &mut BTreeMap<String, String>, pod: &Value) -> bool {
    let new = ours(pod);
    if *cur == new {
        return false;
    }
    *cur = new;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What users put in ConfigMaps comes back from `kubectl apply -f` as it
    /// was: no line of the YAML is indented with a tab (kubectl's parser
    /// refuses that), no value is retyped (`true`, `0755`, `1e3`, `null`
    /// stay strings), and each reads back exactly.
    #[test]
    fn exported_yaml_keeps_every_string_and_indents_with_spaces_only() {
        let values = [
            ("Makefile", "\tserver {\n\tlisten 80;\n}\n"),
            ("flag", "true"),
            ("mode", "0755"),
            ("number", "1e3"),
            ("nothing", "null"),
            ("spaced", "  two  spaces  and a trailing one "),
            ("long", &"word  ".repeat(30)),
            ("crlf", "a\r\nb"),
            ("app.kubernetes.io/name", "x: y # not a comment"),
            (
                "odd",
                "nel\u{85} ls\u{2028} bom\u{feff} del\u{7f} bell\u{7} emoji\u{1f600} \"q\" \\",
            ),
            ("yes", "- [a, b]"),
        ];
        let data: Map<String, Value> = values
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        let obj = serde_json::json!({
            "metadata": {"name": "tricky", "namespace": "apps", "uid": "gone", "resourceVersion": "7"},
            "data": data,
        });
        let Value::Object(obj) = obj else {
            unreachable!()
        };
        let yaml = to_yaml("ConfigMap", obj);
        for line in yaml.lines() {
            let indent: String = line.chars().take_while(|c| c.is_whitespace()).collect();
            assert!(
                !indent.contains('\t'),
                "tab in the indentation: {line:?}\n{yaml}"
            );
        }
        assert!(
            yaml.starts_with("apiVersion: v1\nkind: ConfigMap\nmetadata:\n"),
            "{yaml}"
        );
        assert!(
            !yaml.contains("uid") && !yaml.contains("resourceVersion"),
            "{yaml}"
        );
        let back: Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back["metadata"]["name"], "tricky", "{yaml}");
        for (k, v) in values {
            assert_eq!(back["data"][k].as_str(), Some(v), "{k}\n{yaml}");
        }
    }
}
