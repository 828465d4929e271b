//! What every settings section reads with: a value picked from its
//! annotation or variable (so a problem names the right one), the role the
//! settings serve, and the problems collected so far.

use std::collections::BTreeMap;

use super::inputs::Inputs;
use super::keys::{self, KEYS};
use crate::annotations::PREFIX;
use crate::problem::Problem;

/// What the process is about to do; a restore does not need a valid schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Backup,
    Restore,
    /// `list`, `verify`, `restore --to`: only targets and the history's name matter.
    Inspect,
}

/// The process's variables, read by their names in the key table.
pub(crate) struct Raw<'a>(pub &'a BTreeMap<String, String>);

impl Raw<'_> {
    /// The value of `name`, which must be in [`KEYS`].
    pub(crate) fn opt(&self, name: &str) -> Option<String> {
        debug_assert!(keys::is_setting(name), "{name} is not in the key table");
        self.0.get(name).cloned()
    }
}

/// A value with where it came from, so a problem names the right setting.
pub(super) struct Value {
    pub setting: String,
    pub text: String,
}

/// What every section reads: the raw inputs and the role they serve.
pub(super) struct Reader<'a> {
    pub inputs: &'a Inputs,
    pub raw: Raw<'a>,
    pub role: Role,
}

impl Reader<'_> {
    /// A setting's value: its annotation (from the key table) first, then
    /// its environment variable.
    pub(super) fn pick(&self, env: &str) -> Option<Value> {
        let annotation = KEYS
            .iter()
            .find(|k| k.env == env)
            .and_then(|k| k.annotation);
        if let Some(a) = annotation {
            let key = format!("{PREFIX}{a}");
            if let Some(v) = self.inputs.annotations.get(&key) {
                return Some(Value {
                    setting: format!("annotation {key}"),
                    text: v.clone(),
                });
            }
        }
        self.raw.opt(env).map(|text| Value {
            setting: env.into(),
            text,
        })
    }

    /// A backup-only setting parsed by `parse`: `None` when unset, or when
    /// wrong (then a problem, but only for the backup role: a restore does
    /// not fail over a bad schedule).
    pub(super) fn parsed<T>(
        &self,
        problems: &mut Problems,
        env: &str,
        parse: impl FnOnce(&str) -> std::result::Result<T, String>,
    ) -> Option<T> {
        let v = self.pick(env)?;
        match parse(&v.text) {
            Ok(t) => Some(t),
            Err(m) => {
                if self.role == Role::Backup {
                    problems.fail(&v, m);
                }
                None
            }
        }
    }

    /// An environment-only setting as a [`Value`], so a problem names it.
    pub(super) fn env(&self, name: &str) -> Option<Value> {
        self.raw.opt(name).map(|text| Value {
            setting: name.into(),
            text,
        })
    }
}

pub(super) struct Problems(pub Vec<Problem>);

impl Problems {
    pub(super) fn fail(&mut self, v: &Value, message: String) {
        self.0.push(Problem {
            setting: v.setting.clone(),
            value: v.text.clone(),
            message,
        });
    }

    /// A problem with an environment variable's value (empty when unset).
    pub(super) fn fail_env(&mut self, setting: &str, value: &Option<String>, message: String) {
        self.0.push(Problem {
            setting: setting.into(),
            value: value.clone().unwrap_or_default(),
            message,
        });
    }
}

pub use crate::duration::{parse_duration, MAX_DURATION};
