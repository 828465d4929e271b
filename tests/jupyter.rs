//! Against a real Jupyter server (PyPI `jupyter_server`, on 127.0.0.1 with a
//! token): notebooks created through its REST API in nested folders survive
//! backup -> wipe -> `lifeboat-restore`, and a restarted Jupyter lists and
//! reads the same notebooks.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lifeboat_tests::*;
use serde_json::{json, Value};

const TOKEN: &str = "lifeboat-test-token";

/// A Jupyter server we started; stopped by its PID when dropped.
struct Jupyter {
    child: Child,
    base: String,
}

impl Jupyter {
    fn start(root: &Path, state: &Path) -> Jupyter {
        let probe = Command::new("python3")
            .args(["-c", "import jupyter_server"])
            .output()
            .unwrap();
        assert!(
            probe.status.success(),
            "jupyter_server is not installed: pip install jupyter_server (scripts/setup.sh does)"
        );
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "jupyter_server", "--allow-root", "--no-browser"])
            .arg("--ServerApp.ip=127.0.0.1")
            .arg(format!("--ServerApp.port={port}"))
            .arg("--ServerApp.port_retries=0")
            .arg(format!("--IdentityProvider.token={TOKEN}"))
            .arg(format!("--ServerApp.root_dir={}", root.display()))
            .env("HOME", state)
            .env("JUPYTER_CONFIG_DIR", state.join("config"))
            .env("JUPYTER_DATA_DIR", state.join("data"))
            .env("JUPYTER_RUNTIME_DIR", state.join("runtime"))
            .env("JUPYTER_NO_CONFIG", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start jupyter_server");
        let mut j = Jupyter {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if j.get("api/status").is_ok() {
                return j;
            }
            if let Some(st) = j.child.try_wait().unwrap() {
                panic!("jupyter_server exited early: {st}");
            }
            assert!(
                Instant::now() < deadline,
                "jupyter_server did not answer within 90 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, encode(path))
    }

    fn get(&self, path: &str) -> Result<Value, Box<ureq::Error>> {
        Ok(ureq::get(&self.url(path))
            .set("Authorization", &format!("token {TOKEN}"))
            .timeout(Duration::from_secs(10))
            .call()
            .map_err(Box::new)?
            .into_json()
            .unwrap())
    }

    fn put(&self, path: &str, body: Value) {
        ureq::put(&self.url(path))
            .set("Authorization", &format!("token {TOKEN}"))
            .send_json(body)
            .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
    }

    fn post(&self, path: &str) {
        ureq::post(&self.url(path))
            .set("Authorization", &format!("token {TOKEN}"))
            .call()
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    }
}

impl Drop for Jupyter {
    fn drop(&mut self) {
        // SAFETY: our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Percent-encodes a URL path, keeping `/` and `?`/`=` of our own queries.
fn encode(path: &str) -> String {
    let (p, q) = path
        .split_once('?')
        .map(|(p, q)| (p, Some(q)))
        .unwrap_or((path, None));
    let mut out = String::new();
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if let Some(q) = q {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn notebook(source: &str) -> Value {
    json!({
        "cells": [
            {"cell_type": "markdown", "id": "intro", "metadata": {}, "source": format!("# {source}")},
            {"cell_type": "code", "execution_count": 1, "id": "code1", "metadata": {},
             "outputs": [{"output_type": "stream", "name": "stdout", "text": "42\n"}],
             "source": format!("print({source:?})")}
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5
    })
}

const NOTEBOOKS: &[&str] = &[
    "Untitled.ipynb",
    "projects/analysis.ipynb",
    "projects/2026/q4/forecast model.ipynb",
    "projects/2026/q4/Ünïcode — notes.ipynb",
];

fn contents(j: &Jupyter) -> Vec<(String, Value)> {
    let mut v = Vec::new();
    for nb in NOTEBOOKS {
        let model = j.get(&format!("api/contents/{nb}?content=1")).unwrap();
        assert_eq!(model["type"], "notebook");
        v.push((nb.to_string(), model["content"].clone()));
    }
    let text = j.get("api/contents/projects/README.md?content=1").unwrap();
    v.push(("projects/README.md".into(), text["content"].clone()));
    v
}

fn listing(j: &Jupyter, dir: &str) -> Vec<String> {
    let model = j.get(&format!("api/contents/{dir}?content=1")).unwrap();
    let mut names: Vec<String> = model["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["type"].as_str().unwrap(),
                e["name"].as_str().unwrap()
            )
        })
        .collect();
    names.sort();
    names
}

#[test]
fn notebooks_come_back_through_a_restarted_jupyter() {
    let tmp = tempfile::tempdir().unwrap();
    let root: PathBuf = tmp.path().join("home/jovyan");
    let backup = tmp.path().join("backup");
    let state = tmp.path().join("jupyter-state");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&backup).unwrap();
    fs::create_dir_all(&state).unwrap();

    let (before, tree_before) = {
        let j = Jupyter::start(&root, &state);
        for dir in [
            "projects",
            "projects/2026",
            "projects/2026/q4",
            "projects/empty folder",
        ] {
            j.put(&format!("api/contents/{dir}"), json!({"type": "directory"}));
        }
        for nb in NOTEBOOKS {
            j.put(
                &format!("api/contents/{nb}"),
                json!({"type": "notebook", "format": "json", "content": notebook(nb)}),
            );
        }
        j.put(
            "api/contents/projects/README.md",
            json!({"type": "file", "format": "text", "content": "# Projects\nkept by lifeboat\n"}),
        );
        // Jupyter writes checkpoints into .ipynb_checkpoints/ folders.
        j.post("api/contents/projects/analysis.ipynb/checkpoints");
        assert!(root.join("projects/.ipynb_checkpoints").is_dir());
        let before = (
            contents(&j),
            listing(&j, "projects"),
            listing(&j, "projects/2026/q4"),
        );
        (before, snapshot(&root))
    };

    let env = [
        ("LIFEBOAT_PATHS", root.to_str().unwrap()),
        ("LIFEBOAT_TARGETS", &format!("file://{}", backup.display())),
        ("LIFEBOAT_EXCLUDE", "**/.ipynb_checkpoints"),
        ("HOSTNAME", "jupyter-0"),
    ];
    run_ok(lifeboat("lifeboat-sidecar", &env).arg("backup-now"));
    fs::remove_dir_all(&root).unwrap();
    run_ok(&mut lifeboat("lifeboat-restore", &env));

    // On disk: everything but the excluded checkpoints, byte for byte, with
    // owners, modes and mtimes.
    let expected: Snapshot = tree_before
        .into_iter()
        .filter(|(k, _)| !String::from_utf8_lossy(k).contains(".ipynb_checkpoints"))
        .collect();
    assert_same(&expected, &snapshot(&root));

    // Through Jupyter: the same folders list the same notebooks with the same content.
    let j = Jupyter::start(&root, &state);
    let after = (
        contents(&j),
        listing(&j, "projects"),
        listing(&j, "projects/2026/q4"),
    );
    assert_eq!(after.0, before.0);
    assert_eq!(after.2, before.2);
    assert!(
        after.1.contains(&"directory:empty folder".to_string()),
        "{:?}",
        after.1
    );
    assert_eq!(after.1, before.1);
}
