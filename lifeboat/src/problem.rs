//! One wrong setting, as every configuration error reports it: the setting,
//! the value given (with URL credentials hidden), and what would be right.
//! Below `config` and `error` both, so either can name it.

use std::fmt;

/// One wrong setting: which, the value given, and what would be right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub setting: String,
    pub value: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = hide_url_credentials(&self.value);
        write!(f, "{}={:?}: {}", self.setting, value, self.message)
    }
}

/// A value with any `scheme://user:password@` part hidden, also when it
/// does not parse as a URL (a password with an unencoded `/` in it is
/// exactly what makes it fail to parse, and must not be echoed).
pub fn hide_url_credentials(v: &str) -> std::borrow::Cow<'_, str> {
    let Some(i) = v.find("://") else {
        return v.into();
    };
    match v[i + 3..].rfind('@') {
        Some(j) => format!("{}://(credentials hidden)@{}", &v[..i], &v[i + 3 + j + 1..]).into(),
        None => v.into(),
    }
}

pub fn format_problems(ps: &[Problem]) -> String {
    ps.iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}
