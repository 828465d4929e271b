//! Property-based fuzzing (proptest) of everything that parses input from
//! outside: the downward-API annotations file, the settings, manifests read
//! from storage, and the tar reader that restore trusts with the disk.
//!
//! CI runs each with proptest's default 256 cases (seconds). Longer:
//!     PROPTEST_CASES=200000 cargo test --release -p lifeboat --test fuzz
//! A failure prints the smallest input it found and stores its seed under
//! `lifeboat/proptest-regressions/`, which replays first on the next run.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lifeboat::annotations;
use lifeboat::config::{Inputs, Role, Settings, KEYS};
use lifeboat::manifest::Manifest;
use lifeboat::tar_read::{self, Mapping, Mode, Step};
use lifeboat::Error;
use proptest::prelude::*;
use sha2::Digest;

/// Go's strconv.Quote for the characters the generator makes, as the
/// kubelet writes annotation values.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

proptest! {
    #[test]
    fn annotations_parser_never_panics(text in any::<String>()) {
        let _ = annotations::parse(&text);
    }

    #[test]
    fn annotations_round_trip_through_the_kubelet_format(
        map in prop::collection::btree_map("lifeboat\\.dev/[a-z-]{1,20}", "[ -~\n\t\r\u{1}é€😀]{0,40}", 0..8)
    ) {
        let text: String = map.iter().map(|(k, v)| format!("{k}={}\n", go_quote(v))).collect();
        prop_assert_eq!(annotations::parse(&text), Ok(map));
    }

    /// Any values for the known settings: never a panic, and a refusal is
    /// a configuration error that names each setting it objects to.
    #[test]
    fn settings_parser_never_panics_and_names_the_setting(
        values in prop::collection::vec((0..KEYS.len(), "[ -~]{0,30}|.{0,30}"), 0..12),
        role in prop::sample::select(vec![Role::Backup, Role::Restore, Role::Inspect]),
    ) {
        let mut env = BTreeMap::new();
        env.insert("LIFEBOAT_ANNOTATIONS_FILE".to_string(), "/nonexistent/annotations".to_string());
        env.insert("HOSTNAME".to_string(), "nb-0".to_string());
        for (i, v) in values {
            let name = KEYS[i].env;
            if name == "LIFEBOAT_ANNOTATIONS_FILE" {
                continue;
            }
            env.insert(name.to_string(), v);
        }
        match Settings::from_inputs(&Inputs::from_env(env), role) {
            Ok(_) => {}
            Err(Error::Config(problems)) => {
                prop_assert!(!problems.is_empty());
                for p in problems {
                    prop_assert!(!p.setting.is_empty() && !p.message.is_empty(), "{:?}", p);
                }
            }
            Err(other) => prop_assert!(false, "not a configuration error: {other}"),
        }
    }

    #[test]
    fn manifest_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = Manifest::from_json(&bytes);
    }

    /// A valid manifest with one field replaced by any JSON value: parsed
    /// or refused, never a panic, and never an artifact name with a `/`.
    #[test]
    fn manifest_parser_refuses_or_accepts_a_changed_field(
        field in prop::sample::select(vec!["format", "id", "artifact", "paths", "size", "sha256", "entries", "bytes_in", "layout", "started_at", "recipients", "encryption"]),
        value in json_value(),
    ) {
        let mut v = valid_manifest_json(b"x", 0, 0);
        v[field] = value;
        if let Ok(m) = Manifest::from_json(v.to_string().as_bytes()) {
            prop_assert!(!m.artifact.contains('/') && !m.artifact.starts_with('.'));
        }
    }

    /// Crafted tar streams, mutated at random, through the restore's reader
    /// with a manifest that matches the bytes (so the checksum lets them
    /// in): never a panic, and nothing written outside the staging folder.
    #[test]
    fn tar_reader_writes_nothing_outside_its_staging_folder(
        entries in prop::collection::vec(tar_entry(), 0..8),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        claimed_entries in 0u64..12,
        claimed_bytes in 0u64..5000,
    ) {
        let mut tar = build_tar(&entries);
        for (at, byte) in flips {
            if !tar.is_empty() {
                let i = at.index(tar.len());
                tar[i] = byte;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"keep").unwrap();
        let staging = dir.path().join("stage");
        std::fs::create_dir(&staging).unwrap();
        let manifest = Manifest::from_json(
            valid_manifest_json(&tar, claimed_entries, claimed_bytes).to_string().as_bytes(),
        ).unwrap();
        let mappings = [Mapping { origin: PathBuf::from("/data"), staging: staging.clone(), only: None }];
        let progress = Arc::new(lifeboat::progress::Progress::default());
        for mode in [Mode::Verify, Mode::Extract(&mappings)] {
            let _ = tar_read::read_artifact(&tar[..], &manifest, None, mode, Step::only(), &progress, &Default::default());
        }
        let mut stray = Vec::new();
        walk(dir.path(), &mut |p: &Path| {
            if !p.starts_with(&staging) && p != outside && p != outside.join("keep") && p != staging {
                stray.push(p.to_path_buf());
            }
        });
        prop_assert!(stray.is_empty(), "written outside the staging folder: {:?}", stray);
        prop_assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"keep".to_vec());
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        f(&p);
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            walk(&p, f);
        }
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,20}".prop_map(serde_json::Value::from),
        prop::sample::select(vec![
            "../x",
            "/etc/passwd",
            ".hidden",
            "a/b",
            "",
            "lifeboat/v1",
            "age",
            "none",
            "logical"
        ])
        .prop_map(serde_json::Value::from),
        prop::collection::vec(".{0,8}", 0..3).prop_map(|v| serde_json::json!(v)),
    ]
}

/// A manifest for `stored` (uncompressed, so the bytes are the tar itself).
fn valid_manifest_json(stored: &[u8], entries: u64, bytes_in: u64) -> serde_json::Value {
    serde_json::json!({
        "format": "lifeboat/v1", "id": "20260101T000000Z-files",
        "artifact": "20260101T000000Z-files.tar",
        "name": "x-0", "namespace": "default", "source": "files",
        "paths": ["/data"],
        "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:01Z",
        "compression": "none", "encryption": "none",
        "size": stored.len(), "sha256": hex::encode(sha2::Sha256::digest(stored)),
        "entries": entries, "bytes_in": bytes_in,
        "warnings": [], "tool_version": "fuzz", "source_meta": {}
    })
}

#[derive(Debug, Clone)]
struct TarEntry {
    name: String,
    kind: u8,
    link: String,
    data: Vec<u8>,
}

/// Names and link targets from pieces that matter: `..`, absolute paths,
/// the mapped folder, and repeats so links and files meet.
fn tar_entry() -> impl Strategy<Value = TarEntry> {
    let piece = prop::sample::select(vec!["data", "a", "b", "..", ".", "", "/", "/tmp", "l"]);
    let path = prop::collection::vec(piece, 1..5).prop_map(|v| v.join("/"));
    let kind = prop::sample::select(vec![
        b'0', b'5', b'2', b'1', b'3', b'4', b'6', b'L', b'x', b'S', b'D',
    ]);
    (
        path.clone(),
        kind,
        path,
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(name, kind, link, data)| TarEntry {
            name,
            kind,
            link,
            data,
        })
}

/// Raw headers: the tar crate's setters would refuse most of these names.
fn build_tar(entries: &[TarEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let name = e.name.as_bytes();
        let n = name.len().min(99);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        let link = e.link.as_bytes();
        let n = link.len().min(99);
        h.as_old_mut().linkname[..n].copy_from_slice(&link[..n]);
        h.set_entry_type(tar::EntryType::new(e.kind));
        h.set_mode(0o755);
        h.set_size(e.data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        out.write_all(h.as_bytes()).unwrap();
        out.write_all(&e.data).unwrap();
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}
