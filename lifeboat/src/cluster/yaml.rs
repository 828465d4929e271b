//! YAML for the two places lifeboat meets it: Kubernetes objects (JSON
//! values) written for `kubectl apply -f`, and a kubeconfig read.
//!
//! Writing:
//! Only block mappings and sequences, and scalars that read back as exactly
//! what they were: a string is left plain only when no YAML parser could
//! take it for anything else (it starts with a letter, holds only
//! `[A-Za-z0-9._/-]` and is not a word like `yes` or `null`); every other
//! string is double-quoted with escapes. No block scalars (`|`): a literal
//! block whose first line starts with a tab (a Makefile in a ConfigMap) is
//! refused by the YAML parser kubectl uses.
//!
//! Reading ([`read`]): the block YAML that `kubectl config` and cluster
//! installers write: mappings, sequences, plain and quoted scalars,
//! comments, `{}` and `[]`. Anything else (anchors, tags, flow collections
//! with content, block scalars, several documents) is refused with its line
//! number. A YAML library for these two jobs cost more code than the rest
//! of the Kubernetes support (README, "Binary size").

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

/// One meaningful line: its number, indentation and text (comment cut).
#[derive(Clone, Copy)]
struct Line<'a> {
    no: usize,
    indent: usize,
    text: &'a str,
}

fn fail(no: usize, what: &str) -> String {
    format!("line {no}: {what}")
}

/// `text` up to a comment (`#` at the start or after a space, outside
/// quotes; a quote opens only where a value or key can start).
fn uncommented(text: &str) -> &str {
    let b = text.as_bytes();
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let after = |set: &[u8]| i == 0 || set.contains(&b[i - 1]);
        match quote {
            None if c == b'#' && after(b" ") => return text[..i].trim_end(),
            None if (c == b'"' || c == b'\'') && after(b" -:[{,") => quote = Some(c),
            Some(b'"') if c == b'\\' => i += 1,
            // `''` inside single quotes is a quote, not the end.
            Some(b'\'') if c == b'\'' && b.get(i + 1) == Some(&b'\'') => i += 1,
            Some(q) if c == q => quote = None,
            _ => {}
        }
        i += 1;
    }
    text.trim_end()
}

fn is_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// A YAML document of the kind [`read`] takes, as a JSON value.
pub fn read(text: &str) -> Result<Value, String> {
    let mut lines = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let no = n + 1;
        let body = raw.trim_start_matches(' ');
        if body.starts_with('\t') {
            return Err(fail(no, "a tab in the indentation"));
        }
        let text = uncommented(body);
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        if text == "---" || text == "..." {
            if lines.is_empty() {
                continue;
            }
            return Err(fail(no, "a second document"));
        }
        let indent = raw.len() - body.len();
        lines.push(Line { no, indent, text });
    }
    if lines.is_empty() {
        return Ok(Value::Null);
    }
    let mut i = 0;
    let indent = lines[0].indent;
    let v = read_node(&mut lines, &mut i, indent)?;
    match lines.get(i) {
        Some(l) => Err(fail(l.no, "unexpected indentation")),
        None => Ok(v),
    }
}

fn read_node(lines: &mut [Line], i: &mut usize, indent: usize) -> Result<Value, String> {
    if is_item(lines[*i].text) {
        read_sequence(lines, i, indent)
    } else {
        read_mapping(lines, i, indent)
    }
}

fn read_sequence(lines: &mut [Line], i: &mut usize, indent: usize) -> Result<Value, String> {
    let mut items = Vec::new();
    while let Some(l) = lines.get(*i).copied() {
        if l.indent != indent || !is_item(l.text) {
            break;
        }
        let rest = l.text[1..].trim_start_matches(' ');
        if rest.is_empty() {
            *i += 1;
            let deeper = lines.get(*i).is_some_and(|n| n.indent > indent);
            items.push(if deeper {
                let at = lines[*i].indent;
                read_node(lines, i, at)?
            } else {
                Value::Null
            });
        } else if is_item(rest) || split_key(rest, l.no)?.is_some() {
            // `- key: value` opens a mapping (or `- - x` a sequence) whose
            // first line is the rest of this one.
            let at = indent + (l.text.len() - rest.len());
            lines[*i] = Line {
                no: l.no,
                indent: at,
                text: rest,
            };
            items.push(read_node(lines, i, at)?);
        } else {
            items.push(read_scalar(rest, l.no)?);
            *i += 1;
        }
    }
    Ok(Value::Array(items))
}

fn read_mapping(lines: &mut [Line], i: &mut usize, indent: usize) -> Result<Value, String> {
    let mut map = Map::new();
    while let Some(l) = lines.get(*i).copied() {
        if l.indent < indent {
            break;
        }
        if l.indent > indent {
            return Err(fail(l.no, "unexpected indentation"));
        }
        if is_item(l.text) {
            return Err(fail(l.no, "a list item where a key was expected"));
        }
        let (key, value) =
            split_key(l.text, l.no)?.ok_or_else(|| fail(l.no, "expected `key: value`"))?;
        *i += 1;
        let v = if !value.is_empty() {
            read_scalar(value, l.no)?
        } else {
            match lines.get(*i) {
                Some(n) if n.indent > indent => {
                    let at = n.indent;
                    read_node(lines, i, at)?
                }
                // `key:` then `- item` at the key's own indentation.
                Some(n) if n.indent == indent && is_item(n.text) => {
                    read_sequence(lines, i, indent)?
                }
                _ => Value::Null,
            }
        };
        if map.insert(key, v).is_some() {
            return Err(fail(l.no, "a key given twice"));
        }
    }
    Ok(Value::Object(map))
}

/// `key: value` (the value may be empty); `None` when the line is not one.
fn split_key(text: &str, no: usize) -> Result<Option<(String, &str)>, String> {
    let (key, rest) = if text.starts_with(['"', '\'']) {
        let end = quoted_end(text).ok_or_else(|| fail(no, "an unclosed quote"))?;
        let key = match read_scalar(&text[..end], no)? {
            Value::String(k) => k,
            _ => return Ok(None),
        };
        (key, &text[end..])
    } else {
        let at = text
            .find(": ")
            .or_else(|| text.strip_suffix(':').map(|k| k.len()));
        match at {
            Some(at) => (text[..at].trim_end().to_string(), &text[at..]),
            None => return Ok(None),
        }
    };
    match rest.strip_prefix(':') {
        Some(v) if v.is_empty() || v.starts_with(' ') => Ok(Some((key, v.trim()))),
        _ => Ok(None),
    }
}

/// Where the quoted string `text` starts with ends (past its closing quote).
fn quoted_end(text: &str) -> Option<usize> {
    let q = text.chars().next()?;
    let mut chars = text.char_indices().skip(1).peekable();
    while let Some((i, c)) = chars.next() {
        if q == '"' && c == '\\' {
            chars.next();
        } else if c == q {
            if q == '\'' && chars.peek().is_some_and(|&(_, n)| n == '\'') {
                chars.next();
                continue;
            }
            return Some(i + 1);
        }
    }
    None
}

fn read_scalar(text: &str, no: usize) -> Result<Value, String> {
    let whole_quote = |t: &str| quoted_end(t) == Some(t.len());
    Ok(match text {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        "{}" => Value::Object(Map::new()),
        "[]" => Value::Array(Vec::new()),
        t if t.starts_with('"') && whole_quote(t) => Value::String(
            serde_json::from_str(t).map_err(|e| fail(no, &format!("a quoted string: {e}")))?,
        ),
        t if t.starts_with('\'') && whole_quote(t) => {
            Value::String(t[1..t.len() - 1].replace("''", "'"))
        }
        t if t.starts_with(['"', '\'', '{', '[', '&', '*', '!', '|', '>', '%', '@', '`']) => {
            // The value is not shown: it may be a token.
            return Err(fail(
                no,
                "only plain and quoted values are read here (no anchors, tags, flow \
                 collections or block scalars)",
            ));
        }
        t => Value::String(t.to_string()),
    })
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

    #[test]
    fn a_kubeconfig_as_kubectl_and_installers_write_it_is_read() {
        let text = "# written by kind\napiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: LS0tLS1CRUdJTg==\n    server: https://127.0.0.1:6443\n  name: kind-kind\ncontexts:\n- context:\n    cluster: kind-kind\n    user: \"kind-kind\"\n  name: kind-kind # the only one\ncurrent-context: 'kind-kind'\nkind: Config\npreferences: {}\nusers:\n-   name: kind-kind\n    user:\n      token: \"a#b: c\"\n      insecure: true\n      other: 'ab''c #d'\n";
        let v = read(text).unwrap();
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
        assert_eq!(v["clusters"][0]["name"], "kind-kind");
        assert_eq!(v["contexts"][0]["context"]["user"], "kind-kind");
        assert_eq!(v["contexts"][0]["name"], "kind-kind");
        assert_eq!(v["current-context"], "kind-kind");
        assert_eq!(v["preferences"], serde_json::json!({}));
        assert_eq!(v["users"][0]["user"]["token"], "a#b: c");
        assert_eq!(v["users"][0]["user"]["insecure"], true);
        assert_eq!(v["users"][0]["user"]["other"], "ab'c #d");
        // What this writer writes, this reader reads back.
        let obj = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "labels": {"a": "b"}},
            "data": {"k": "line 1\nline \"2\"", "yes": "0755"}, "list": [{"a": "1", "b": ["c"]}]});
        let yaml = to_yaml(obj.as_object().unwrap());
        assert_eq!(read(&yaml).unwrap(), obj, "{yaml}");
        for (bad, line) in [
            ("a: 1\n b: 2\n", 2),
            ("a: &x 1\n", 1),
            ("a: |\n  text\n", 1),
            ("a: 1\n---\nb: 2\n", 2),
            ("a: 1\na: 2\n", 2),
            ("a:\n\t- b\n", 2),
        ] {
            let err = read(bad).unwrap_err();
            assert!(err.starts_with(&format!("line {line}:")), "{bad:?}: {err}");
        }
    }
}
