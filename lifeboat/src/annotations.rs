//! The downward-API annotations file: one `key="value"` per line, the value
//! Go-quoted (strconv.Quote), as the kubelet writes it.

use std::collections::BTreeMap;

pub const PREFIX: &str = "lifeboat.dev/";
/// The annotation the sidecar patches after each committed backup.
pub const LAST_BACKUP: &str = "lifeboat.dev/last-backup";

/// Parses the whole file. Lines that do not parse are returned as errors with
/// their line number; keys without our prefix are ignored by callers.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (key, quoted) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected key=\"value\", got {line:?}", n + 1))?;
        let value = unquote(quoted.trim()).map_err(|e| format!("line {} ({key}): {e}", n + 1))?;
        out.insert(key.trim().to_string(), value);
    }
    Ok(out)
}

/// Undoes Go's strconv.Quote: `\"`, `\\`, `\n`, `\t`, `\r`, `\xNN`, `\uNNNN`, `\UNNNNNNNN`.
fn unquote(s: &str) -> Result<String, String> {
    let inner = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .ok_or_else(|| format!("value {s:?} is not double-quoted"))?;
    let mut bytes = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let esc = chars.next().ok_or("value ends with a lone backslash")?;
        let simple = match esc {
            'n' => Some(b'\n'),
            't' => Some(b'\t'),
            'r' => Some(b'\r'),
            'a' => Some(7),
            'b' => Some(8),
            'f' => Some(12),
            'v' => Some(11),
            '\\' => Some(b'\\'),
            '"' => Some(b'"'),
            '\'' => Some(b'\''),
            _ => None,
        };
        if let Some(b) = simple {
            bytes.push(b);
            continue;
        }
        let digits = match esc {
            'x' => 2,
            'u' => 4,
            'U' => 8,
            other => return Err(format!("unknown escape \\{other}")),
        };
        let hex: String = chars.by_ref().take(digits).collect();
        let v = u32::from_str_radix(&hex, 16).map_err(|_| format!("bad escape \\{esc}{hex}"))?;
        if esc == 'x' {
            bytes.push(v as u8);
        } else {
            let ch = char::from_u32(v).ok_or_else(|| format!("bad code point \\{esc}{hex}"))?;
            let mut buf = [0u8; 4];
            bytes.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
        }
    }
    String::from_utf8(bytes).map_err(|_| "value is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubelet_output() {
        let text = "kubernetes.io/config.seen=\"2026-11-23T09:00:00Z\"\n\
                    lifeboat.dev/schedule=\"*/5 * * * *\"\n\
                    lifeboat.dev/exclude=\"**/.ipynb_checkpoints/**,*.tmp\"\n\
                    note=\"a \\\"quoted\\\" \\\\ line\\nnext \\u00e9\\x41\"\n";
        let m = parse(text).unwrap();
        assert_eq!(m["lifeboat.dev/schedule"], "*/5 * * * *");
        assert_eq!(m["note"], "a \"quoted\" \\ line\nnext éA");
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn rejects_garbage_with_line_numbers() {
        assert!(parse("a=\"x\"\nb=unquoted")
            .unwrap_err()
            .starts_with("line 2"));
        assert!(parse("a=\"x\\q\"").is_err());
        assert!(parse("novalue").is_err());
    }
}
