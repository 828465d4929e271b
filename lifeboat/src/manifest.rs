//! The manifest: the JSON commit marker written next to each artifact, last.
//! Its fields are a contract with users (documented in README.md).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::source::kind::SourceKind;

pub const FORMAT: &str = "lifeboat/v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always `lifeboat/v1` for this layout.
    pub format: String,
    /// `<UTC stamp>-<source>`, e.g. `20261123T020000Z-files`.
    pub id: String,
    /// File name of the artifact beside this manifest.
    pub artifact: String,
    pub name: String,
    pub namespace: String,
    pub source: SourceKind,
    /// How the tar is laid out and put back; absent in older manifests.
    #[serde(default)]
    pub layout: Layout,
    /// Absolute paths that were backed up; with `layout: paths` tar entry
    /// names are these without the leading `/`. With `layout: logical` the
    /// first is where the init container stages the dump for loading.
    pub paths: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// `zstd:3`, `gzip:6` or `none`.
    pub compression: String,
    /// `none`, or `age` when the stored bytes are age-encrypted (after
    /// compression: `age -d | zstd -dc | tar -x`).
    pub encryption: String,
    /// With `encryption: age`: the public keys (`age1…`) it was encrypted
    /// to; any one matching secret key decrypts it. Never key material.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    /// Bytes stored (the artifact file's size).
    pub size: u64,
    /// Hex SHA-256 of the stored bytes: `sha256sum <artifact>` prints the same.
    pub sha256: String,
    /// Tar entries written (files, folders, links).
    pub entries: u64,
    /// Uncompressed bytes of file contents read from the source.
    pub bytes_in: u64,
    /// Things a person should know, e.g. files that changed while read.
    pub warnings: Vec<String>,
    pub tool_version: String,
    /// Source-specific facts (Postgres LSNs, CouchDB doc counts, ...).
    pub source_meta: serde_json::Value,
    /// With `LIFEBOAT_INCLUDE_KUBE`: objects per kind stored as YAML under
    /// `kubernetes/<kind>/<name>.yaml` (e.g. `{"configmaps": 3}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<std::collections::BTreeMap<String, u64>>,
}

/// What the entries of an artifact are, which decides how it is restored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// Files under their absolute paths (without the leading `/`): the init
    /// container puts them back before the app starts.
    #[default]
    Paths,
    /// A logical dump under `<source>/` (e.g. `postgres/app.dump`): the init
    /// container verifies and stages it, and the sidecar loads it through
    /// the server once that answers (docs/ARCHITECTURE.md, "The pending load").
    Logical,
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// Parses and checks a manifest read from a store. A manifest is
    /// untrusted input (docs/ARCHITECTURE.md, "Restore trusts nothing"): every
    /// field that names a file or a folder is checked here, once, so no
    /// caller can be led outside its history folder or its configured paths.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(format!(
                "{} bytes, more than a manifest may have ({MAX_MANIFEST_BYTES})",
                bytes.len()
            ));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(format!(
                "is empty ({} bytes): a commit that never completed, or a damaged store",
                bytes.len()
            ));
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if m.format != FORMAT {
            return Err(format!(
                "unknown format {:?} (this tool reads {FORMAT})",
                m.format
            ));
        }
        m.check()?;
        Ok(m)
    }

    /// The checks of [`Manifest::from_json`] beyond the JSON shape.
    fn check(&self) -> Result<(), String> {
        if let SourceKind::Unknown(name) = &self.source {
            return Err(format!(
                "source {name:?} is not one of files, postgres, couchdb, arangodb"
            ));
        }
        let kind = &self.source;
        // The id names the manifest, the artifact and the verified record:
        // only the canonical `<stamp>-<source>` form, which has no `/` or `.`.
        let canonical = crate::artifact::id_time(&self.id)
            .map(|t| crate::artifact::id(t, kind.as_str()))
            .filter(|c| *c == self.id);
        if canonical.is_none() {
            return Err(format!(
                "id {:?} is not of the form YYYYMMDDTHHMMSSZ-{}",
                self.id, self.source
            ));
        }
        crate::artifact::check_file_name(&self.artifact)?;
        let ext = self.artifact.strip_prefix(self.id.as_str()).unwrap_or("");
        let ext = ext
            .strip_suffix(crate::artifact::ENCRYPTED_EXTENSION)
            .unwrap_or(ext);
        if ![".tar", ".tar.zst", ".tar.gz"].contains(&ext) {
            return Err(format!(
                "artifact {:?} is not named <id>.tar[.zst|.gz][.age] for id {:?}",
                self.artifact, self.id
            ));
        }
        let layout_fits = match kind {
            SourceKind::Files => self.layout == Layout::Paths,
            SourceKind::CouchDb | SourceKind::ArangoDb => self.layout == Layout::Logical,
            SourceKind::Postgres | SourceKind::Unknown(_) => true,
        };
        if !layout_fits {
            return Err(format!(
                "a {} artifact cannot have layout {:?}",
                self.source, self.layout
            ));
        }
        if self.layout == Layout::Paths && self.paths.is_empty() {
            return Err("lists no paths".into());
        }
        for p in &self.paths {
            if !is_clean_absolute(p) {
                return Err(format!(
                    "path {p:?} is not a clean absolute path (no '.', '..', '//' or trailing '/')"
                ));
            }
        }
        Ok(())
    }
}

/// At most this many warnings go into a manifest (a backup's or a
/// verification's); the rest are counted. A volume full of churning temp
/// files must not make a manifest huge.
pub const MAX_WARNINGS: usize = 100;

/// The largest manifest read from a store (and written: a backup whose
/// manifest would be larger fails). Most are a few KiB (warnings are capped
/// at `MAX_WARNINGS`); a CouchDB or ArangoDB manifest lists each
/// database in `source_meta` (~250 bytes), so this holds ~130,000 of them.
/// Anything larger is not one of ours, and reading it whole would let a
/// store decide our memory.
pub const MAX_MANIFEST_BYTES: u64 = 32 * 1024 * 1024;

/// `/a/b`: absolute, no empty, `.` or `..` part, no trailing `/`, no NUL.
pub fn is_clean_absolute(p: &str) -> bool {
    let Some(rest) = p.strip_prefix('/') else {
        return false;
    };
    !p.contains('\0')
        && (rest.is_empty()
            || rest
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(id: &str, artifact: &str, source: &str, layout: &str, paths: &[&str]) -> Vec<u8> {
        serde_json::json!({
            "format": "lifeboat/v1", "id": id, "artifact": artifact,
            "name": "n", "namespace": "ns", "source": source, "layout": layout, "paths": paths,
            "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:00Z",
            "compression": "zstd:3", "encryption": "none", "size": 1, "sha256": "00",
            "entries": 1, "bytes_in": 1, "warnings": [], "tool_version": "t", "source_meta": {}
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn untrusted_fields_are_checked() {
        let ok = |id: &str, art: &str, src: &str, layout: &str, paths: &[&str]| {
            Manifest::from_json(&json(id, art, src, layout, paths))
        };
        let id = "20260101T000000Z-files";
        assert!(ok(id, &format!("{id}.tar.zst"), "files", "paths", &["/data"]).is_ok());
        assert!(ok(id, &format!("{id}.tar.gz.age"), "files", "paths", &["/"]).is_ok());
        for bad_id in [
            "../other/20260101T000000Z-files",
            "20260101T000000Z-files/..",
            "x",
            "20260101T000000Z-couchdb",
        ] {
            let e = ok(
                bad_id,
                "20260101T000000Z-files.tar.zst",
                "files",
                "paths",
                &["/data"],
            )
            .unwrap_err();
            assert!(e.contains("is not of the form"), "{bad_id}: {e}");
        }
        assert!(ok(
            id,
            "20260101T000001Z-files.tar.zst",
            "files",
            "paths",
            &["/d"]
        )
        .is_err());
        assert!(ok(id, &format!("{id}.tar.zst.exe"), "files", "paths", &["/d"]).is_err());
        for p in ["/../../tmp/x", "data", "/data/", "//data", "/a/./b", ""] {
            assert!(
                ok(id, &format!("{id}.tar.zst"), "files", "paths", &[p]).is_err(),
                "{p}"
            );
        }
        let logical = "20260101T000000Z-couchdb";
        assert!(ok(
            logical,
            &format!("{logical}.tar.zst"),
            "couchdb",
            "logical",
            &["/d"]
        )
        .is_ok());
        assert!(ok(
            logical,
            &format!("{logical}.tar.zst"),
            "couchdb",
            "paths",
            &["/d"]
        )
        .is_err());
        let abs = "20260101T000000Z-/tmp/evil";
        assert!(ok(
            abs,
            &format!("{abs}.tar.zst"),
            "/tmp/evil",
            "logical",
            &["/d"]
        )
        .is_err());
        assert!(ok(id, &format!("{id}.tar.zst"), "files", "logical", &["/d"]).is_err());
        let big = vec![b' '; MAX_MANIFEST_BYTES as usize + 1];
        assert!(Manifest::from_json(&big)
            .unwrap_err()
            .contains("more than a manifest"));
    }
}
