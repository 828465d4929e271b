//! The manifest: the JSON commit marker written next to each artifact, last.
//! Its fields are a contract with users (documented in README.md).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
    pub source: String,
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
    /// the server once that answers (DESIGN §4, "pending load").
    Logical,
}

impl Manifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if m.format != FORMAT {
            return Err(format!(
                "unknown format {:?} (this tool reads {FORMAT})",
                m.format
            ));
        }
        crate::artifact::check_file_name(&m.artifact)?;
        Ok(m)
    }
}
