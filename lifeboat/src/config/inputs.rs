//! Gathering the raw strings, the only I/O of settings: the environment,
//! `*_FILE` variables and the annotations file (docs/ARCHITECTURE.md §2).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::keys;
use crate::annotations::{self, PREFIX};
use crate::problem::Problem;
use crate::small_file;

pub const DEFAULT_ANNOTATIONS_FILE: &str = "/etc/lifeboat/annotations";

/// The raw strings, gathered once from the process environment and files.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub env: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Problems found while reading (`_FILE` unreadable, annotations file garbled).
    pub problems: Vec<Problem>,
}

impl Inputs {
    /// Reads the environment, resolves `*_FILE` variables, and reads the
    /// annotations file (missing is fine: it is optional).
    pub fn from_process() -> Self {
        let env: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Self::from_env(env)
    }

    pub fn from_env(raw: BTreeMap<String, String>) -> Self {
        let mut env = BTreeMap::new();
        let mut problems = Vec::new();
        for (k, v) in &raw {
            // A setting whose own name ends in _FILE (LIFEBOAT_ANNOTATIONS_FILE)
            // is a path, not the file form of another setting.
            let is_setting = keys::is_setting(k);
            let Some(base) = k.strip_suffix("_FILE").filter(|_| !is_setting) else {
                env.entry(k.clone()).or_insert_with(|| v.clone());
                continue;
            };
            if raw.contains_key(base) {
                problems.push(Problem {
                    setting: k.clone(),
                    value: v.clone(),
                    message: format!("both {base} and {k} are set; set only one"),
                });
                continue;
            }
            match small_file::read(Path::new(v), small_file::MAX_SETTING_FILE) {
                Ok(s) => {
                    env.insert(
                        base.to_string(),
                        s.trim_end_matches(['\n', '\r']).to_string(),
                    );
                }
                Err(e) if k.starts_with("LIFEBOAT_") || k.starts_with("PG") => {
                    problems.push(Problem {
                        setting: k.clone(),
                        value: v.clone(),
                        message: format!("cannot read the file: {e}"),
                    })
                }
                Err(_) => {}
            }
        }
        let mut inputs = Inputs {
            env,
            annotations: BTreeMap::new(),
            problems,
        };
        inputs.reload_annotations();
        inputs
    }

    pub fn annotations_file(&self) -> PathBuf {
        PathBuf::from(
            self.env
                .get("LIFEBOAT_ANNOTATIONS_FILE")
                .map(String::as_str)
                .unwrap_or(DEFAULT_ANNOTATIONS_FILE),
        )
    }

    /// Re-reads the annotations file. Returns whether anything changed.
    pub fn reload_annotations(&mut self) -> bool {
        let path = self.annotations_file();
        self.problems
            .retain(|p| p.setting != "LIFEBOAT_ANNOTATIONS_FILE");
        let parsed = match small_file::read(&path, small_file::MAX_ANNOTATIONS_FILE) {
            Ok(text) => match annotations::parse(&text) {
                Ok(m) => m,
                Err(e) => {
                    let message = format!("cannot parse: {e}; expected one key=\"value\" per line");
                    return self.annotations_problem(&path, message);
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return self.annotations_problem(&path, format!("cannot read: {e}")),
        };
        self.set_annotations(parsed)
    }

    /// Records why the annotations file could not be used; nothing changed.
    fn annotations_problem(&mut self, path: &Path, message: String) -> bool {
        self.problems.push(Problem {
            setting: "LIFEBOAT_ANNOTATIONS_FILE".into(),
            value: path.display().to_string(),
            message,
        });
        false
    }

    /// Takes the pod's annotations (from the file or the API). Returns
    /// whether a setting may have changed: `lifeboat.dev/last-backup` is
    /// written by the sidecar itself and does not count.
    pub fn set_annotations(&mut self, all: BTreeMap<String, String>) -> bool {
        let ours: BTreeMap<String, String> = all
            .into_iter()
            .filter(|(k, _)| k.starts_with(PREFIX) && k != crate::annotations::LAST_BACKUP)
            .collect();
        let changed = ours != self.annotations;
        self.annotations = ours;
        changed
    }
}
