//! The Kubernetes packaging as a user gets it: every example overlay renders
//! with `kubectl kustomize`, every rendered object passes
//! `kubernetes-validate --strict` for Kubernetes 1.29 to 1.37, and each
//! lifeboat-enabled pod spec is wired as the design needs it (restore before
//! the sidecar and the app, one data volume shared, the annotations file,
//! non-root and read-only). `manifests/` holds the same renderings as plain
//! YAML; this test fails when they drift.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(root().join("kustomize/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("kustomization.yaml").is_file())
        .collect();
    v.sort();
    assert!(v.len() >= 6, "{v:?}");
    v
}

fn render(dir: &Path) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl is installed by scripts/setup.sh");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_str_multiple(yaml).unwrap()
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|s| {
            s.iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn container<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|c| c["name"] == name)
}

fn mount<'a>(c: &'a Value, volume: &str) -> Option<&'a str> {
    c["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == volume)
        .and_then(|m| m["mountPath"].as_str())
}

#[test]
fn every_example_renders_validates_and_wires_the_pod_as_designed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut sidecars = Vec::new();
    for dir in examples() {
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        let yaml = render(&dir);
        let f = tmp.path().join(format!("{name}.yaml"));
        fs::write(&f, &yaml).unwrap();
        files.push(f);
        let objs = docs(&yaml);
        let workloads: Vec<&Value> = objs
            .iter()
            .filter(|o| o["metadata"]["labels"]["lifeboat.dev/enabled"] == "true")
            .collect();
        assert_eq!(workloads.len(), 1, "{name}: one lifeboat workload");
        let spec = &workloads[0]["spec"]["template"]["spec"];
        let init = &spec["initContainers"];
        let apps = &spec["containers"];
        let classic = name.ends_with("-classic");
        let init_names = names(init);
        assert_eq!(
            init_names.first().map(String::as_str),
            Some("lifeboat-restore"),
            "{name}: {init_names:?}"
        );
        let sidecar = if classic {
            assert!(!init_names.contains(&"lifeboat".to_string()), "{name}");
            container(apps, "lifeboat").unwrap_or_else(|| panic!("{name}: sidecar in containers"))
        } else {
            assert_eq!(
                init_names.get(1).map(String::as_str),
                Some("lifeboat"),
                "{name}: sidecar right after the restore"
            );
            let s = container(init, "lifeboat").unwrap();
            assert_eq!(s["restartPolicy"], "Always", "{name}: native sidecar");
            s
        };
        let restore = container(init, "lifeboat-restore").unwrap();
        let app = apps
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] != "lifeboat")
            .expect("the app container");
        assert!(mount(app, "data").is_some(), "{name}: the app mounts data");
        for c in [restore, sidecar] {
            let who = format!("{name}/{}", c["name"].as_str().unwrap());
            assert_eq!(mount(c, "data"), Some("/data"), "{who}");
            assert_eq!(mount(c, "lifeboat-podinfo"), Some("/etc/lifeboat"), "{who}");
            assert_eq!(
                mount(c, "lifeboat-tmp"),
                Some("/tmp"),
                "{who}: TMPDIR on an emptyDir"
            );
            let sc = &c["securityContext"];
            assert_eq!(sc["runAsNonRoot"], true, "{who}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{who}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{who}");
            assert_eq!(sc["capabilities"]["drop"][0], "ALL", "{who}");
            assert!(c["resources"]["limits"]["memory"].is_string(), "{who}");
            let env = names(&c["env"]);
            assert!(
                env.contains(&"POD_NAME".into()) && env.contains(&"POD_NAMESPACE".into()),
                "{who}"
            );
        }
        // The probes ask the sidecar's endpoint (LIFEBOAT_LISTEN, :9746).
        assert_eq!(sidecar["ports"][0]["containerPort"], 9746, "{name}");
        assert_eq!(sidecar["ports"][0]["name"], "lifeboat", "{name}");
        assert_eq!(
            sidecar["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{name}"
        );
        assert_eq!(
            sidecar["readinessProbe"]["httpGet"]["port"], "lifeboat",
            "{name}"
        );
        assert_eq!(
            sidecar["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{name}"
        );
        let podinfo = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "lifeboat-podinfo")
            .unwrap();
        let item = &podinfo["downwardAPI"]["items"][0];
        assert_eq!(item["path"], "annotations");
        assert_eq!(item["fieldRef"]["fieldPath"], "metadata.annotations");
        assert_eq!(spec["serviceAccountName"], "lifeboat", "{name}");
        let mut s = sidecar.clone();
        if let Some(m) = s.as_object_mut() {
            m.remove("restartPolicy");
        }
        // The ConfigMap's content differs (classic sets LIFEBOAT_DRILL_NAME
        // off), and with it the generated name's hash.
        s["envFrom"][0]["configMapRef"]["name"] = "lifeboat".into();
        sidecars.push((name.clone(), s));

        drill_pod_is_wired(&name, &objs, workloads[0]);

        // manifests/<example>.yaml is this rendering, for users without kustomize.
        let plain = root().join("manifests").join(format!("{name}.yaml"));
        let committed = fs::read_to_string(&plain).unwrap_or_default();
        assert!(
            committed.ends_with(&yaml),
            "{} is not the rendering of kustomize/examples/{name}; run scripts/render-manifests.sh",
            plain.display()
        );
    }
    // The classic variant's sidecar is the native one minus restartPolicy
    // (the two are written out separately in the components).
    let get = |n: &str| &sidecars.iter().find(|(k, _)| k == n).unwrap().1;
    assert_eq!(get("jupyter"), get("jupyter-classic"));

    files.push(root().join("manifests/rbac.yaml"));
    for minor in 29..=37 {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", &format!("1.{minor}.0")])
            .args(&files)
            .output()
            .expect("kubernetes-validate is installed by scripts/setup.sh");
        assert!(
            out.status.success(),
            "Kubernetes 1.{minor}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The drill component's CronJob, where an example has one: the app's own
/// container as a native sidecar on a bounded scratch volume, never the
/// live claim; pinned beside the pods that mount a backup claim; the
/// kustomize plumbing not emitted; none on clusters without native sidecars.
fn drill_pod_is_wired(name: &str, objs: &[Value], workload: &Value) {
    assert!(
        !objs
            .iter()
            .any(|o| o["metadata"]["name"] == "lifeboat-drill-plumbing"),
        "{name}: the plumbing ConfigMap is local to kustomize"
    );
    let Some(cron) = objs.iter().find(|o| o["kind"] == "CronJob") else {
        return;
    };
    assert!(
        !name.ends_with("-classic"),
        "{name}: drills need native sidecars"
    );
    // When: the StatefulSet's annotation (the component adds the weekly
    // default), in UTC, and the same value for the sidecar's staleness.
    let schedule = &workload["metadata"]["annotations"]["lifeboat.dev/drill-schedule"];
    assert!(schedule.is_string(), "{name}: {:?}", workload["metadata"]);
    assert_eq!(&cron["spec"]["schedule"], schedule, "{name}");
    assert_eq!(cron["spec"]["timeZone"], "Etc/UTC", "{name}");
    let config = objs
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["data"]["LIFEBOAT_DRILL_NAME"].is_string())
        .unwrap_or_else(|| panic!("{name}: the lifeboat ConfigMap"));
    assert_eq!(
        &config["data"]["LIFEBOAT_DRILL_SCHEDULE"], schedule,
        "{name}"
    );
    let spec = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let app = &workload["spec"]["template"]["spec"]["containers"][0];
    let init = &spec["initContainers"];
    assert_eq!(
        names(init),
        [
            "lifeboat-tools",
            "lifeboat-restore",
            app["name"].as_str().unwrap()
        ],
        "{name}"
    );
    assert_eq!(init[2]["image"], app["image"], "{name}: the app's image");
    assert_eq!(
        init[2]["restartPolicy"], "Always",
        "{name}: a native sidecar"
    );
    let check = container(&spec["containers"], "lifeboat-drill").unwrap();
    assert_eq!(
        check["image"], app["image"],
        "{name}: the check in the app's image"
    );
    assert_eq!(
        check["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    for c in ["lifeboat-tools", "lifeboat-restore"] {
        let sc = &container(init, c).unwrap()["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true, "{name}/{c}");
    }
    let volume = |v: &str| {
        spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == v)
            .unwrap_or_else(|| panic!("{name}: volume {v}"))
            .clone()
    };
    let claim_size =
        &workload["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"];
    assert_eq!(
        &volume("data")["emptyDir"]["sizeLimit"],
        claim_size,
        "{name}: scratch bounded by the data claim"
    );
    let backup = volume("lifeboat-backup");
    if backup["persistentVolumeClaim"].is_object() {
        let term =
            &spec["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
        assert_eq!(
            term["labelSelector"]["matchLabels"]["lifeboat.dev/enabled"], "true",
            "{name}: beside the pods that mount the claim"
        );
        assert_eq!(term["topologyKey"], "kubernetes.io/hostname");
    }
}

/// The drill's schedule is the StatefulSet's `lifeboat.dev/drill-schedule`
/// annotation: copied into the CronJob and `LIFEBOAT_DRILL_SCHEDULE`; the
/// weekly default only where it is missing, without touching the
/// StatefulSet's other annotations.
#[test]
fn the_drill_schedule_is_the_statefulsets_annotation() {
    let tmp = tempfile::tempdir().unwrap();
    let example = root().join("kustomize/examples/postgres");
    // The example's own annotation (the default, spelled out) taken out.
    let example_annotation = "  annotations:\n    # When components/drill restores a backup to prove it (UTC; here the\n    # default, weekly). On the StatefulSet itself, not its pod template.\n    lifeboat.dev/drill-schedule: \"0 3 * * 0\"\n";
    let statefulset = fs::read_to_string(example.join("postgres.yaml")).unwrap();
    assert!(statefulset.contains(example_annotation), "{statefulset}");
    let statefulset = statefulset.replacen(example_annotation, "", 1);
    let overlay = |annotations: &str| {
        let dir = tempfile::tempdir_in(tmp.path()).unwrap();
        let annotated = statefulset.replacen(
            "kind: StatefulSet\nmetadata:\n",
            &format!("kind: StatefulSet\nmetadata:\n  annotations:\n{annotations}"),
            1,
        );
        assert_ne!(
            annotated, statefulset,
            "postgres.yaml has no StatefulSet header"
        );
        fs::write(dir.path().join("postgres.yaml"), annotated).unwrap();
        let kustomization = fs::read_to_string(example.join("kustomization.yaml"))
            .unwrap()
            // kustomize takes only relative paths: up to / and down again.
            .replace(
                "../../",
                &format!(
                    "{}{}/kustomize/",
                    "../".repeat(dir.path().components().count() - 1),
                    root().display().to_string().trim_start_matches('/')
                ),
            )
            .replace("  - namespace.yaml\n", "");
        fs::write(dir.path().join("kustomization.yaml"), kustomization).unwrap();
        let objs = docs(&render(dir.path()));
        let of = |kind: &str| objs.iter().find(|o| o["kind"] == kind).unwrap().clone();
        let config = objs
            .iter()
            .find(|o| o["data"]["LIFEBOAT_DRILL_NAME"].is_string())
            .unwrap()
            .clone();
        (of("StatefulSet"), of("CronJob"), config)
    };

    let (sts, cron, config) = overlay("    lifeboat.dev/drill-schedule: \"30 4 * * 6\"\n");
    assert_eq!(cron["spec"]["schedule"], "30 4 * * 6");
    assert_eq!(config["data"]["LIFEBOAT_DRILL_SCHEDULE"], "30 4 * * 6");
    assert_eq!(
        sts["metadata"]["annotations"]["lifeboat.dev/drill-schedule"],
        "30 4 * * 6"
    );

    let (sts, cron, config) = overlay("    team.example.com/owner: data\n");
    assert_eq!(cron["spec"]["schedule"], "0 3 * * 0", "the weekly default");
    assert_eq!(config["data"]["LIFEBOAT_DRILL_SCHEDULE"], "0 3 * * 0");
    assert_eq!(
        sts["metadata"]["annotations"]["team.example.com/owner"],
        "data"
    );
}

#[test]
fn rbac_manifest_is_the_base_role_and_grants_only_what_is_used() {
    let base = fs::read_to_string(root().join("kustomize/base/rbac.yaml")).unwrap();
    let plain = fs::read_to_string(root().join("manifests/rbac.yaml")).unwrap();
    assert_eq!(
        base, plain,
        "manifests/rbac.yaml must equal kustomize/base/rbac.yaml"
    );
    let role = docs(&plain)
        .into_iter()
        .find(|d| d["kind"] == "Role")
        .unwrap();
    let rules: Vec<(String, Vec<String>)> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let res = r["resources"][0].as_str().unwrap().to_string();
            let verbs = r["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            (res, verbs)
        })
        .collect();
    assert_eq!(
        rules,
        vec![
            ("events".into(), vec!["create".into()]),
            (
                "pods".into(),
                vec!["get".into(), "watch".into(), "patch".into()]
            ),
        ]
    );
}

/// A user's own workload that runs as its own ServiceAccount (a JupyterHub
/// user pod, an operator's pod) on a volume not named `data`: the
/// components leave the account as it is, the README's patch binds
/// lifeboat's Role to it beside the base's own account, and the README's
/// `lifeboat-wiring` merge makes every lifeboat mount (and the drill's
/// scratch volume, which the copied app container mounts) use its name.
#[test]
fn a_users_own_statefulset_keeps_its_account_and_volume_name() {
    let tmp = tempfile::tempdir().unwrap();
    // kustomize takes no absolute paths: up from the overlay to `/`, then
    // down to the repository.
    let up = "../".repeat(tmp.path().components().count() - 1);
    let k = PathBuf::from(up).join(root().join("kustomize").strip_prefix("/").unwrap());
    fs::write(
        tmp.path().join("statefulset.yaml"),
        "apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: hub
  labels:
    lifeboat.dev/enabled: \"true\"
spec:
  serviceName: hub
  selector:
    matchLabels: {app: hub}
  template:
    metadata:
      labels: {app: hub}
    spec:
      serviceAccountName: hub-user
      securityContext: {runAsUser: 1000, fsGroup: 100}
      containers:
        - name: notebook
          image: quay.io/jupyter/minimal-notebook:2024-12-09
          volumeMounts:
            - {name: home, mountPath: /home/jovyan}
  volumeClaimTemplates:
    - metadata: {name: home}
      spec:
        accessModes: [ReadWriteOnce]
        resources: {requests: {storage: 1Gi}}
",
    )
    .unwrap();
    fs::write(
        tmp.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {base}
  - statefulset.yaml
components:
  - {jupyter}
  - {drill}
  - {pvc}
configMapGenerator:
  - name: lifeboat-wiring
    behavior: merge
    literals: [dataVolume=home]
patches:
  - target: {{kind: RoleBinding, name: lifeboat}}
    patch: |-
      - op: add
        path: /subjects/-
        value: {{kind: ServiceAccount, name: hub-user}}
",
            base = k.join("base").display(),
            jupyter = k.join("components/jupyter").display(),
            drill = k.join("components/drill").display(),
            pvc = k.join("components/target-pvc").display(),
        ),
    )
    .unwrap();
    let objs = docs(&render(tmp.path()));
    let sts = objs.iter().find(|o| o["kind"] == "StatefulSet").unwrap();
    let spec = &sts["spec"]["template"]["spec"];
    assert_eq!(spec["serviceAccountName"], "hub-user");
    for c in ["lifeboat-restore", "lifeboat"] {
        let c = container(&spec["initContainers"], c).unwrap();
        assert_eq!(mount(c, "home"), Some("/data"), "{c:?}");
        assert_eq!(mount(c, "data"), None);
    }
    let drill = &objs.iter().find(|o| o["kind"] == "CronJob").unwrap()["spec"]["jobTemplate"]
        ["spec"]["template"]["spec"];
    let volumes = names(&drill["volumes"]);
    assert!(
        volumes.contains(&"home".to_string()) && !volumes.contains(&"data".to_string()),
        "{volumes:?}"
    );
    assert_eq!(
        mount(
            container(&drill["initContainers"], "lifeboat-restore").unwrap(),
            "home"
        ),
        Some("/data")
    );
    assert_eq!(
        mount(
            container(&drill["containers"], "lifeboat-drill").unwrap(),
            "home"
        ),
        Some("/data")
    );
    assert_eq!(
        mount(
            container(&drill["initContainers"], "notebook").unwrap(),
            "home"
        ),
        Some("/home/jovyan")
    );
    assert!(
        !objs
            .iter()
            .any(|o| o["metadata"]["name"] == "lifeboat-wiring"),
        "never deployed"
    );
    let binding = objs.iter().find(|o| o["kind"] == "RoleBinding").unwrap();
    assert_eq!(names(&binding["subjects"]), ["lifeboat", "hub-user"]);
}
