//! Kubernetes objects (JSON values) written as YAML for `kubectl apply -f`.
//!
//! Only block mappings and sequences, and scalars that read back as exactly
//! what they were: a string is left plain only when no YAML parser could
//! take it for anything else (it starts with a letter, holds only
//! `[A-Za-z0-9._/-]` and is not a word like `yes` or `null`); every other
//! string is double-quoted with escapes. No block scalars (`|`): a literal
//! block whose first line starts with a tab (a Makefile in a ConfigMap) is
//! refused by the YAML parser kubectl uses. A YAML library for this one
//! job cost more code than the writer (README, "Binary size").

use serde_json::{Map, Value};

/// Keys written first at the top, in this order, as `kubectl` shows them.
const FIRST: [&str; 3] = ["apiVersion", "kind", "metadata"];

/// `object` as a YAML document.
pub fn to_yaml(object: &Map<String, Value>) -> String {
    let mut out = String::new();
    let mut entries: Vec<(&String, &Value)> = Vec::with_capacity(object.len());
    for k in FIRST {
        if let Some((key, v)) = object.get_key_value(k) {
            entries.push((key, v));
        }
    }
    entries.extend(object.iter().filter(|(k, _)| !FIRST.contains(&k.as_str())));
    mapping(&mut out, entries, 0, false);
    out
}

fn mapping<'a>(
    out: &mut String,
    entries: impl IntoIterator<Item = (&'a String, &'a Value)>,
    indent: usize,
    first_inline: bool,
) {
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 || !first_inline {
            pad(out, indent);
        }
        scalar_string(out, k);
        out.push(':');
        match v {
            Value::Object(m) if !m.is_empty() => {
                out.push('\n');
                mapping(out, m, indent + 2, false);
            }
            Value::Array(a) if !a.is_empty() => {
                out.push('\n');
                sequence(out, a, indent);
            }
            _ => {
                out.push(' ');
                scalar(out, v);
                out.push('\n');
            }
        }
    }
}

fn sequence(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        pad(out, indent);
        out.push_str("- ");
        match item {
            Value::Object(m) if !m.is_empty() => mapping(out, m, indent + 2, true),
            Value::Array(a) if !a.is_empty() => {
                out.push('\n');
                sequence(out, a, indent + 2);
            }
            _ => {
                scalar(out, item);
                out.push('\n');
            }
        }
    }
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn scalar(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => scalar_string(out, s),
        Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
    }
}

/// Words YAML 1.1 parsers (kubectl's among them) read as booleans or null.
const SPECIAL: [&str; 9] = ["y", "n", "yes", "no", "true", "false", "on", "off", "null"];

fn is_plain(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
        && !SPECIAL.iter().any(|w| w.eq_ignore_ascii_case(s))
}

fn scalar_string(out: &mut String, s: &str) {
    if is_plain(s) {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            // Printable in YAML, minus what YAML 1.1 folds as a line break
            // (U+0085, U+2028, U+2029) and the byte-order mark.
            ' '..='~' | '\u{a0}'..='\u{2027}' | '\u{202a}'..='\u{d7ff}' => out.push(c),
            '\u{e000}'..='\u{fefe}' | '\u{ff00}'..='\u{fffd}' | '\u{10000}'.. => out.push(c),
            c if (c as u32) <= 0xffff => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_only_where_nothing_else_could_be_read() {
        for plain in [
            "v1",
            "ConfigMap",
            "obj-007",
            "app.kubernetes.io/name",
            "a_b",
        ] {
            assert!(is_plain(plain), "{plain}");
        }
        for quoted in [
            "", "true", "Yes", "NULL", "on", "0755", "1e3", ".inf", "~", "a b", "a:b", "a#b", "-a",
            "é",
        ] {
            assert!(!is_plain(quoted), "{quoted}");
        }
    }

    #[test]
    fn nesting_is_written_in_blocks_with_the_header_first() {
        let obj = json!({
            "data": {"k": "v", "empty": ""},
            "metadata": {"name": "x", "labels": {}, "finalizers": ["a", "b"]},
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "list": [{"a": 1, "b": [true, null]}, [1, 2], []],
        });
        let yaml = to_yaml(obj.as_object().unwrap());
        assert_eq!(
            yaml,
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  finalizers:\n  - a\n  - b\n  labels: {}\n  name: x\n\
             data:\n  empty: \"\"\n  k: v\nlist:\n- a: 1\n  b:\n  - true\n  - null\n- \n  - 1\n  - 2\n- []\n"
        );
    }
}
