//! The alert rules of `manifests/prometheusrule.yaml` evaluated by
//! Prometheus's own `promtool test rules` (Debian's `prometheus` package,
//! scripts/setup.sh), on series the tests read from a real sidecar's
//! `/metrics`: an alert is shown to fire on what the sidecar exports, not
//! on what we think it exports.

use std::fs;
use std::path::Path;
use std::process::Command;

/// A series for promtool: `name{labels}` and its values, one per minute
/// from test time 0 (promtool's `values` notation: `_` for none, `axN`).
pub struct Series {
    pub series: String,
    pub values: String,
}

/// One expectation: at `at` (e.g. `30m`), `alert` fires with exactly
/// these labels (besides the rule's own), or not at all when `labels` is
/// None.
pub struct Expect<'a> {
    pub at: &'a str,
    pub alert: &'a str,
    pub labels: Option<&'a [(&'a str, &'a str)]>,
}

/// The rule groups of the PrometheusRule, as a rules file promtool reads,
/// without annotations (promtool compares them too; what matters here is
/// whether the expression fires).
fn rules_file(dir: &Path) -> std::path::PathBuf {
    let crd: serde_json::Value = serde_saphyr::from_str(
        &fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/prometheusrule.yaml"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut spec = crd["spec"].clone();
    for group in spec["groups"].as_array_mut().unwrap() {
        for rule in group["rules"].as_array_mut().unwrap() {
            rule.as_object_mut().unwrap().remove("annotations");
        }
    }
    let path = dir.join("rules.yaml");
    // JSON is YAML too: promtool reads it as such.
    fs::write(&path, serde_json::to_string_pretty(&spec).unwrap()).unwrap();
    path
}

/// Runs `promtool test rules` with `series` and `expects`; panics with
/// promtool's output when an expectation does not hold.
pub fn check(series: &[Series], expects: &[Expect]) {
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_file(dir.path());
    let input: Vec<serde_json::Value> = series
        .iter()
        .map(|s| serde_json::json!({"series": s.series, "values": s.values}))
        .collect();
    let tests: Vec<serde_json::Value> = expects
        .iter()
        .map(|e| {
            let exp: Vec<serde_json::Value> = e
                .labels
                .map(|l| {
                    let mut m = serde_json::Map::new();
                    m.insert("severity".into(), "critical".into());
                    for (k, v) in l {
                        m.insert(k.to_string(), v.to_string().into());
                    }
                    vec![serde_json::json!({ "exp_labels": m })]
                })
                .unwrap_or_default();
            serde_json::json!({"eval_time": e.at, "alertname": e.alert, "exp_alerts": exp})
        })
        .collect();
    let test = serde_json::json!({
        "rule_files": [rules],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input, "alert_rule_test": tests}],
    });
    let file = dir.path().join("test.yaml");
    fs::write(&file, serde_json::to_vec(&test).unwrap()).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool (Debian package prometheus, scripts/setup.sh installs it): {e}")
        });
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
